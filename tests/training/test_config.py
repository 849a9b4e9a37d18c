import dataclasses
import json
import os
from typing import Literal, Optional

import pytest

from tfattn.training.config import (
    build_parser,
    check_resume,
    check_value,
    config_field,
    config_from_dict,
    config_to_dict,
    fields_without_help,
    load_config,
    parse_config,
    parse_value,
    write_config,
)


@dataclasses.dataclass
class Config:
    """Toy app config."""

    image_size: int = 28
    grid: tuple[int, int] = (4, 4)
    sizes: tuple[int, ...] = (8, 16)
    names: list[str] = dataclasses.field(default_factory=lambda: ["a", "b"])
    learning_rate: float = 1e-3
    run_name: str = "base"
    jit_compile: bool = False
    max_steps: int | None = None
    strategy: Literal["auto", "default", "mirrored"] = "auto"


PRESETS = {
    "tiny": {"image_size": 8, "grid": [2, 2], "run_name": "tiny"},
    "fast": {"learning_rate": 1e-2},
}


def _error(capsys, argv, presets=PRESETS):
    with pytest.raises(SystemExit) as info:
        parse_config(Config, argv, presets=presets)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_defaults_without_arguments():
    assert parse_config(Config, []) == Config()


def test_cli_types_from_annotations():
    cfg = parse_config(
        Config,
        [
            "--image_size", "32",
            "--grid", "3,5",
            "--sizes", "28",
            "--names", "x,y,z",
            "--learning_rate", "3e-4",
            "--run_name", "exp 1",
            "--jit_compile", "true",
            "--max_steps", "100",
            "--strategy", "mirrored",
        ],
    )  # fmt: skip
    assert cfg == Config(
        image_size=32,
        grid=(3, 5),
        sizes=(28,),
        names=["x", "y", "z"],
        learning_rate=3e-4,
        run_name="exp 1",
        jit_compile=True,
        max_steps=100,
        strategy="mirrored",
    )
    assert isinstance(cfg.learning_rate, float) and isinstance(cfg.image_size, int)


@pytest.mark.parametrize(
    ("text", "expected"), [("false", False), ("0", False), ("yes", True), ("True", True)]
)
def test_bool_flag_values(text, expected):
    assert parse_config(Config, ["--jit_compile", text]).jit_compile is expected


def test_optional_none_and_empty_tuple():
    cfg = parse_config(Config, ["--max_steps", "none", "--sizes", "", "--grid=1,2"])
    assert cfg.max_steps is None and cfg.sizes == () and cfg.grid == (1, 2)


def test_precedence_defaults_preset_file_cli(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"run_name": "from_file", "learning_rate": 0.5}))
    cfg = parse_config(
        Config,
        ["--preset", "tiny", "--config", str(path), "--learning_rate", "0.25"],
        presets=PRESETS,
    )
    assert cfg.image_size == 8 and cfg.grid == (2, 2)  # preset over defaults
    assert cfg.run_name == "from_file"  # file over preset
    assert cfg.learning_rate == 0.25  # CLI over file
    assert cfg.strategy == "auto"  # untouched default


def test_help_lists_fields_types_and_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(Config, ["--help"], presets=PRESETS)
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in [
        "--image_size",
        "int (default: 28)",
        "--grid",
        "2 comma-separated ints (default: 4,4)",
        "comma-separated strs (default: a,b)",
        "float (default: 0.001)",
        "bool (default: False)",
        "int or none (default: None)",
        "one of auto/default/mirrored (default: auto)",
        "tiny, fast",
        "--config",
    ]:
        assert text in out, text


def test_help_text_of_each_field_is_shown_with_type_and_default(capsys):
    @dataclasses.dataclass
    class Helped:
        image_size: int = config_field(28, "side of the input images, px")
        names: list[str] = config_field(help="class names", default_factory=lambda: ["a"])
        share: float = config_field(0.5, "100% is all")  # argparse formats with %
        bare: bool = False

    assert fields_without_help(Helped) == ["bare"]
    assert dataclasses.fields(Helped)[0].metadata["help"] == "side of the input images, px"
    assert Helped().names == ["a"] and Helped().names is not Helped().names
    with pytest.raises(SystemExit):
        parse_config(Helped, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--image_size IMAGE_SIZE side of the input images, px (int, default: 28)" in out
    assert "--names NAMES class names (comma-separated strs, default: a)" in out
    assert "100% is all (float, default: 0.5)" in out
    assert "--bare BARE bool (default: False)" in out
    assert fields_without_help(Config) == list(dataclasses.asdict(Config()))


def test_unknown_preset_lists_presets(capsys):
    err = _error(capsys, ["--preset", "huge"])
    assert "unknown preset 'huge'" in err and "tiny, fast" in err


def test_unknown_field_named_with_suggestion(capsys):
    err = _error(capsys, ["--image_sise", "3"])
    assert "'image_sise'" in err and "did you mean 'image_size'" in err


def test_abbreviated_flag_is_not_accepted(capsys):
    err = _error(capsys, ["--learning", "0.1"])
    assert "unknown field(s) 'learning'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image_size", "3.5"], "--image_size: expected int; got '3.5'"),
        (["--learning_rate", "fast"], "--learning_rate: expected float; got 'fast'"),
        (["--jit_compile", "maybe"], "--jit_compile: expected bool; got 'maybe'"),
        (["--grid", "4"], "--grid: expected 2 comma-separated ints; got '4'"),
        (["--sizes", "4,x"], "--sizes: expected comma-separated ints; got '4,x'"),
        (["--strategy", "tpu9"], "--strategy: expected one of auto/default/mirrored"),
        (["--max_steps", "many"], "--max_steps: expected int or none; got 'many'"),
    ],
)
def test_wrong_type_names_field_and_type(capsys, argv, message):
    assert message in _error(capsys, argv)


def test_config_file_unknown_key_and_wrong_type(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"image_size": 8, "batchsize": 3}))
    err = _error(capsys, ["--config", str(path)])
    assert str(path) in err and "'batchsize'" in err

    path.write_text(json.dumps({"image_size": "8"}))
    err = _error(capsys, ["--config", str(path)])
    assert "field 'image_size' expected int; got '8'" in err and str(path) in err

    path.write_text("{not json")
    assert "is not valid JSON" in _error(capsys, ["--config", str(path)])
    assert "does not exist" in _error(capsys, ["--config", str(tmp_path / "missing.json")])


def test_bad_preset_values_are_checked(capsys):
    err = _error(capsys, ["--preset", "bad"], presets={"bad": {"grid": [1, 2, 3]}})
    assert "preset 'bad'" in err and "field 'grid'" in err


def test_post_init_error_is_reported(capsys):
    @dataclasses.dataclass
    class Checked:
        hidden_dim: int = 8

        def __post_init__(self):
            if self.hidden_dim <= 0:
                raise ValueError(f"hidden_dim must be positive; got {self.hidden_dim}")

    with pytest.raises(SystemExit):
        parse_config(Checked, ["--hidden_dim", "-1"])
    assert "hidden_dim must be positive; got -1" in capsys.readouterr().err


def test_non_exiting_api():
    assert config_from_dict(Config, {"grid": [1, 1]}).grid == (1, 1)
    assert config_from_dict(Config, {"learning_rate": 1}).learning_rate == 1.0
    with pytest.raises(ValueError, match=r"unknown field\(s\) 'gird' \(did you mean 'grid'\?\)"):
        config_from_dict(Config, {"gird": [1, 1]})
    with pytest.raises(ValueError, match="field 'jit_compile' expected bool; got 1"):
        config_from_dict(Config, {"jit_compile": 1})
    with pytest.raises(ValueError, match="field 'image_size' expected int; got True"):
        check_value("image_size", int, True)
    with pytest.raises(ValueError, match="--grid: expected 2 comma-separated ints"):
        parse_value("grid", tuple[int, int], "1,2,3")
    assert parse_value("seed", Optional[int], "null") is None  # noqa: UP045
    assert parse_value("seed", Optional[int], "7") == 7  # noqa: UP045


def test_write_config_round_trip(tmp_path):
    cfg = parse_config(Config, ["--preset", "tiny", "--names", "p,q"], presets=PRESETS)
    path = write_config(cfg, tmp_path / "work" / "run1")
    assert path == os.path.join(tmp_path, "work", "run1", "config.json")
    data = json.loads(open(path).read())
    assert data == config_to_dict(cfg)
    assert data["grid"] == [2, 2] and data["max_steps"] is None
    assert load_config(Config, path) == cfg
    assert parse_config(Config, ["--config", path]) == cfg
    assert sorted(os.listdir(os.path.dirname(path))) == ["config.json"]  # no temp files left


def test_write_config_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"workdir '.*a_file/run' is not writable"):
        write_config(Config(), blocker / "run")


def test_check_resume_refuses_a_backup_from_another_config(tmp_path):
    workdir = tmp_path / "run"
    saved = Config(image_size=28, grid=(2, 2))
    write_config(saved, workdir)
    check_resume(Config(image_size=32), workdir)  # no backup: nothing to resume, any config
    (workdir / "backup").mkdir()
    check_resume(saved, workdir)  # the same config resumes
    check_resume(dataclasses.replace(saved, max_steps=5), workdir, ignore=("max_steps",))
    with pytest.raises(ValueError) as err:
        check_resume(dataclasses.replace(saved, image_size=32, learning_rate=0.1), workdir)
    message = str(err.value)
    assert "unfinished run" in message and str(workdir) in message
    assert "image_size: 28 -> 32" in message and "learning_rate: 0.001 -> 0.1" in message
    assert "grid" not in message  # tuple vs its JSON list is no difference


def test_unsupported_field_type_and_reserved_name():
    @dataclasses.dataclass
    class BadType:
        mapping: dict = dataclasses.field(default_factory=dict)

    @dataclasses.dataclass
    class Reserved:
        config: str = "x"

    with pytest.raises(TypeError, match="field 'mapping' has unsupported type"):
        build_parser(BadType)
    with pytest.raises(TypeError, match="'config' clashes with the --config flag"):
        build_parser(Reserved)
    with pytest.raises(TypeError, match="must be a dataclass type"):
        parse_config(dict, [])


def test_write_json_is_valid_json_for_nan_and_numpy(tmp_path):
    import math

    import numpy as np

    from tfattn.training import write_json

    path = write_json(tmp_path / "summary.json", {
        "fraction": math.nan, "inf": math.inf, "f32": np.float32(0.5), "array": np.arange(2),
        "nested": {"wait": [np.nan, 1.0]}, "ok": "text",
    })
    with open(path) as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"fraction": None, "inf": None, "f32": 0.5, "array": [0, 1],
                                "nested": {"wait": [None, 1.0]}, "ok": "text"}
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left behind


def test_read_json_names_the_file_and_the_command_that_writes_it(tmp_path):
    from tfattn.training import read_json, write_json

    with pytest.raises(ValueError, match=r"prep\.json not found: .*`python -m apps\.x\.train`"):
        read_json(tmp_path / "prep.json", "python -m apps.x.train")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        read_json(tmp_path / "bad.json", "python -m apps.x.train")
    write_json(tmp_path / "ok.json", {"a": 1})
    assert read_json(tmp_path / "ok.json", "python -m apps.x.train") == {"a": 1}


@dataclasses.dataclass
class ModelConfig:
    """Toy config whose `depth` only the "deep" model has."""

    model: Literal["deep", "linear"] = "deep"
    depth: int | None = None
    learning_rate: float = 1e-3

    def __post_init__(self):
        if self.model == "linear" and self.depth is not None:
            raise ValueError("--model linear has no --depth")

    @classmethod
    def adapt_preset(cls, preset, resolved):
        if resolved.get("model", "deep") == "deep":
            return preset
        return {k: v for k, v in preset.items() if k != "depth"}


def test_adapt_preset_drops_preset_settings_the_chosen_model_lacks(capsys):
    presets = {"big": {"depth": 12, "learning_rate": 1e-2}}
    cfg = parse_config(ModelConfig, ["--preset", "big", "--model", "linear"], presets=presets)
    assert cfg == ModelConfig(model="linear", depth=None, learning_rate=1e-2)
    assert "preset 'big': not used with these settings: depth=12" in capsys.readouterr().err
    # Kept when the model has it; a flag the user gives is never dropped.
    assert parse_config(ModelConfig, ["--preset", "big"], presets=presets).depth == 12
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        parse_config(ModelConfig, ["--preset", "big", "--model", "linear", "--depth", "3"],
                     presets=presets)
    assert "--model linear has no --depth" in capsys.readouterr().err
