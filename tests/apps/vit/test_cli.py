"""The ViT commands as a user meets them: flag help, a quiet start, one-line user errors."""

import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from apps.vit import data as vd
from apps.vit import evaluate as vit_evaluate
from apps.vit import export as vit_export
from apps.vit import predict as vit_predict
from apps.vit import train as vit_train
from apps.vit.config import PRESETS, Config
from tfattn import training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} |^WARNING: All log messages before absl")


def _command_env(**extra):
    """The environment of a user's shell: no test-suite log settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFATTN_VERBOSE")}
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    return dict(env, **extra)


def _run(*args, timeout=300, **env):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=_command_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def test_every_config_field_has_help_text_shown_by_help(capsys):
    assert training.fields_without_help(Config) == []
    with pytest.raises(SystemExit) as info:
        training.parse_config(Config, ["--help"], presets=PRESETS)
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(Config):
        about = " ".join(field.metadata["help"].split())
        assert f"--{field.name} {field.name.upper()} {about} (" in out, field.name


def _user_error(capsys, main, argv):
    """Runs `main` as its command does; returns the stderr of the exit-2 error."""
    with pytest.raises(SystemExit) as info:
        training.run_cli(main, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_data_errors_of_train_are_one_line(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path / "run")]
    err = _user_error(capsys, vit_train.main, ["--dataset", f"folder:{tmp_path}/missing", *workdir])
    assert err.startswith("python -m apps.vit.train: error: ") and "does not exist" in err
    (tmp_path / "empty").mkdir()
    err = _user_error(capsys, vit_train.main, ["--dataset", f"folder:{tmp_path}/empty", *workdir])
    assert "no class sub-folder holds a readable image" in err
    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    (one / "a.png").write_bytes(vit_export.encode_png(np.zeros((1, 4, 4, 1), "uint8"))[0])
    err = _user_error(capsys, vit_train.main, ["--dataset", f"folder:{one.parent}", *workdir])
    assert "only one class folder holds images ('cat')" in err


def test_workdir_errors_of_evaluate_export_predict_are_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    err = _user_error(capsys, vit_evaluate.main, ["--workdir", missing])
    assert err.startswith("python -m apps.vit.evaluate: error: ") and "config.json" in err
    err = _user_error(capsys, vit_export.main, ["--workdir", missing])
    assert err.startswith("python -m apps.vit.export: error: ") and "preprocessing.json" in err
    # A SavedModel, but not one of ours: no serving_default signature.
    tf.saved_model.save(tf.Module(), str(tmp_path / "other"))
    (tmp_path / "img.png").write_bytes(vit_export.encode_png(np.zeros((1, 4, 4, 1), "uint8"))[0])
    err = _user_error(capsys, vit_predict.main,
                      ["--export", str(tmp_path / "other"), "--images", str(tmp_path / "img.png")])
    assert err.startswith("python -m apps.vit.predict: error: ") and "'serving_default'" in err


def test_a_bug_keeps_its_traceback():
    def main(argv):
        raise KeyError("a bug, not a user error")

    with pytest.raises(KeyError):
        training.run_cli(main, [])


def test_command_error_is_one_line_on_a_quiet_start(tmp_path):
    """The whole stderr of a failing command: the error line, no TensorFlow start-up log."""
    result = _run("apps.vit.train", "--dataset", f"folder:{tmp_path}/missing",
                  "--workdir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"python -m apps.vit.train: error: {tmp_path}/missing: image folder does not exist"
    ]


@pytest.mark.slow  # two tiny training runs in subprocesses, ~20 s each on 2 busy cores
def test_training_starts_quiet_and_tfattn_verbose_brings_the_logs_back(tmp_path):
    assert all(os.path.exists(os.path.join(vd.FASHION_MNIST_DIR, f))
               for f in vd.FASHION_MNIST_FILES.values()), "run `make data`"
    args = ["apps.vit.train", "--preset", "test", "--max_train_examples", "64",
            "--attention_images", "0"]
    # What TensorFlow itself logs on this machine when it starts (machine-dependent lines).
    reference = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices()"],
        env=_command_env(), capture_output=True, text=True, timeout=300,
    )
    tf_lines = [line for line in reference.stderr.splitlines() if TF_LOG_LINE.match(line)]

    quiet = _run(*args, "--workdir", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert not [line for line in quiet.stderr.splitlines() if TF_LOG_LINE.match(line)], quiet.stderr
    assert "rebuild TensorFlow" not in quiet.stderr and "cuInit" not in quiet.stderr
    assert "`shuffle=True` was passed" not in quiet.stderr
    assert "Test accuracy" in quiet.stdout

    loud = _run(*args, "--workdir", str(tmp_path / "loud"), TFATTN_VERBOSE="1")
    assert loud.returncode == 0, loud.stderr[-3000:]
    # (Keras's `shuffle=True ... ignored` warning is gone at its source: the app passes
    # shuffle=False with its already shuffled tf.data input, so it is not expected here.)
    for line in tf_lines:  # each line of TensorFlow's own start-up log is back
        assert line.split("] ", 1)[-1] in loud.stderr, line
