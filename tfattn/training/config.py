"""App configs: one dataclass per app, presets, JSON config files and generated CLI flags.

    @dataclasses.dataclass
    class Config:
        image_size: int = config_field(28, "side of the square input images, px")
        grid: tuple[int, int] = config_field((4, 4), "patch grid (rows, columns)")
        learning_rate: float = config_field(1e-3, "peak learning rate")
        strategy: Literal["auto", "default", "mirrored"] = config_field("auto", "tf.distribute")
        jit_compile: bool = config_field(False, "compile the train step with XLA")
        max_steps: Optional[int] = config_field(None, "stop after this many steps")

    PRESETS = {"tiny": {"image_size": 8, "grid": (2, 2)}}

    cfg = parse_config(Config, presets=PRESETS)
    # python -m apps.vit.train --preset tiny --config run.json --learning_rate 3e-4 --grid 4,4

Each field's help, a few words on what it does, is written once, with its default
(`config_field(default, help)`, i.e. `dataclasses.field(metadata={"help": ...})`); `--help`
shows it with the type and the default. An app's tests check `fields_without_help(Config)`
is empty, so a new field cannot arrive undocumented.

Precedence: dataclass defaults < `--preset NAME` < `--config file.json` < `--field value`.
A config class may define `adapt_preset(preset_values, resolved) -> preset_values` (a
classmethod) to drop preset settings that the finally chosen settings do not use, e.g. a
preset's PatchTST hyperparameters under `--model dlinear`; the dropped ones are named on
stderr.
Flag values by annotation: `int`, `float`, `str`; `bool` as `true/false` (also `1/0`,
`yes/no`); `Optional[X]` also takes `none`/`null`; `tuple[int, ...]`, `tuple[int, int]` and
`list[X]` as comma-separated values (`--grid 4,4`, `--sizes 28`, `--sizes ''` for empty);
`Literal[...]` as one of its values. CLI errors exit with code 2 and a message naming the
flag (argparse); `config_from_dict` and `load_config` raise `ValueError` instead.
"""

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
import tempfile
import types
import typing

_RESERVED = {"help", "preset", "config"}
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"none", "null"}


def config_field(default=dataclasses.MISSING, help=None, **kwargs):
    """A dataclass field with the help text `--help` shows for its flag.

    Args:
        default: the field's default (or pass `default_factory=` for a list).
        help: what the field does, in a few words (the type and default are added).
        **kwargs: other `dataclasses.field` arguments.
    """
    metadata = dict(kwargs.pop("metadata", None) or {}, help=help)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def fields_without_help(config_cls):
    """Names of `config_cls`'s flag fields that have no help text (see `config_field`)."""
    return [name for name, (f, _) in _fields(config_cls).items() if not f.metadata.get("help")]


def _fields(config_cls):
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"`config_cls` must be a dataclass type; got {config_cls!r}.")
    hints = typing.get_type_hints(config_cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(config_cls) if f.init}


def _optional_inner(annotation):
    """`Optional[X]` / `X | None` -> X, else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0]
        raise TypeError(f"Unsupported union annotation {annotation!r}; use Optional[X].")
    return None


def type_name(annotation):
    """Readable name of a supported annotation, used in help and errors."""
    inner = _optional_inner(annotation)
    if inner is not None:
        return f"{type_name(inner)} or none"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + "/".join(str(a) for a in typing.get_args(annotation))
    if origin in (tuple, list):
        args = typing.get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"{len(args)} comma-separated {type_name(args[0])}s"
        return f"comma-separated {type_name(args[0]) if args else 'str'}s"
    return getattr(annotation, "__name__", str(annotation))


def _check_supported(name, annotation):
    inner = _optional_inner(annotation)
    if inner is not None:
        return _check_supported(name, inner)
    origin = typing.get_origin(annotation)
    if annotation in (int, float, str, bool) or origin is typing.Literal:
        return
    if origin in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if args and len(set(args)) == 1 and args[0] in (int, float, str, bool):
            return
    raise TypeError(
        f"Config field {name!r} has unsupported type {annotation!r}; use int, float, str, "
        "bool, Optional[...], Literal[...], or tuple/list of int/float/str/bool."
    )


def _parse_scalar(text, annotation):
    text = text.strip()
    if annotation is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError
    if annotation is int:
        return int(text)
    if annotation is float:
        return float(text)
    return text


def _parse_text(annotation, text):
    """Raises a bare ValueError; `parse_value` adds the field name and expected type."""
    inner = _optional_inner(annotation)
    if inner is not None:
        return None if text.strip().lower() in _NONE else _parse_text(inner, text)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        for choice in typing.get_args(annotation):
            if str(choice) == text:
                return choice
        raise ValueError
    if origin in (tuple, list):
        args = typing.get_args(annotation)
        parts = text.split(",") if text.strip() else []
        value = [_parse_scalar(p, args[0] if args else str) for p in parts]
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ValueError
        return tuple(value) if origin is tuple else value
    return _parse_scalar(text, annotation)


def parse_value(name, annotation, text):
    """Command-line text -> value of the field's type; `ValueError` names the field."""
    try:
        return _parse_text(annotation, text)
    except ValueError:
        raise ValueError(f"--{name}: expected {type_name(annotation)}; got {text!r}.") from None


def check_value(name, annotation, value, source="config"):
    """A JSON/Python value -> value of the field's type (lists become tuples for tuple fields).

    Raises `ValueError` naming the field, the expected type and `source` (e.g. a file).
    """

    def fail():
        raise ValueError(
            f"{source}: field {name!r} expected {type_name(annotation)}; got {value!r} "
            f"({type(value).__name__})."
        )

    inner = _optional_inner(annotation)
    if inner is not None:
        return None if value is None else check_value(name, inner, value, source)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in typing.get_args(annotation)):
            fail()
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            fail()
        args = typing.get_args(annotation)
        element = args[0] if args else str
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            fail()
        try:
            items = [check_value(name, element, v, source) for v in value]
        except ValueError:
            fail()
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            fail()
        return value
    fail()


def _unknown_keys_error(keys, known, source):
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ValueError(
        f"{source}: unknown field(s) {', '.join(hints)}; fields are {', '.join(sorted(known))}."
    )


def _checked_overrides(config_cls, mapping, source):
    fields = _fields(config_cls)
    if not isinstance(mapping, dict):
        raise ValueError(
            f"{source}: expected a JSON object of fields; got {type(mapping).__name__}."
        )
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise _unknown_keys_error(unknown, list(fields), source)
    return {k: check_value(k, fields[k][1], v, source) for k, v in mapping.items()}


def config_from_dict(config_cls, mapping, base=None, source="config"):
    """`config_cls` from `base` (default: its defaults) with `mapping` applied; checks types.

    Raises `ValueError` naming unknown keys or the field with a wrong type (and `source`).
    """
    overrides = _checked_overrides(config_cls, mapping, source)
    if base is None:
        return config_cls(**overrides)
    return dataclasses.replace(base, **overrides)


def load_config(config_cls, path, base=None):
    """`config_cls` with the fields of JSON file `path` applied (`ValueError` names the file)."""
    path = os.fspath(path)
    return config_from_dict(config_cls, _read_json(path), base=base, source=f"config file {path!r}")


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"Config file {path!r} does not exist.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"Config file {path!r} is not valid JSON: {err}.") from None
    except OSError as err:
        raise ValueError(f"Config file {path!r} cannot be read: {err}.") from None


def build_parser(config_cls, presets=None, prog=None, description=None):
    """argparse parser with `--preset`, `--config` and one `--<field>` flag per field.

    Field flags default to "not given" (`argparse.SUPPRESS`) so that only flags on the
    command line override presets and config files; `--help` shows each field's help text
    (`config_field`), type and dataclass default.
    """
    fields = _fields(config_cls)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or (config_cls.__doc__ or "").strip().split("\n")[0] or None,
        allow_abbrev=False,  # `--lr` must not silently mean `--learning_rate`.
    )
    if presets:
        parser.add_argument(
            "--preset",
            metavar="NAME",
            help=f"named overrides, one of: {', '.join(presets)}",
        )
    parser.add_argument("--config", metavar="FILE.json", help="JSON object of field values")
    group = parser.add_argument_group("config fields (dataclass defaults shown)")
    for name, (field, annotation) in fields.items():
        if name in _RESERVED:
            raise TypeError(f"Config field name {name!r} clashes with the --{name} flag.")
        _check_supported(name, annotation)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = "required"
        if isinstance(default, (tuple, list)):
            default = ",".join(str(v) for v in default) or "''"
        about = field.metadata.get("help")
        kind = type_name(annotation)
        text = f"{about} ({kind}, default: {default})" if about else f"{kind} (default: {default})"
        group.add_argument(
            f"--{name}",
            metavar=name.upper(),
            default=argparse.SUPPRESS,
            help=text.replace("%", "%%"),
        )
    return parser


def parse_config(config_cls, argv=None, presets=None, prog=None, description=None):
    """Builds `config_cls` from defaults < `--preset` < `--config` < `--field value` flags.

    Args:
        config_cls: the app's `@dataclass` config class.
        argv: command-line arguments (default: `sys.argv[1:]`).
        presets: `{name: {field: value}}`; enables `--preset NAME`.

    Returns:
        the config instance. On bad input (unknown preset, field or file key, wrong type,
        unreadable config file, a `__post_init__` ValueError) prints usage and a message
        naming the problem and exits with code 2.
    """
    parser = build_parser(config_cls, presets, prog=prog, description=description)
    args, extra = parser.parse_known_args(argv)
    fields = _fields(config_cls)
    if extra:
        flags = [a for a in extra if a.startswith("-")]
        if flags:
            names = [f.lstrip("-").split("=")[0] for f in flags]
            parser.error(str(_unknown_keys_error(names, list(fields), "command line")))
        parser.error(f"unexpected argument(s) {' '.join(extra)}")
    given = {k: v for k, v in vars(args).items() if k in fields}
    try:
        from_preset, overrides = {}, {}
        preset = getattr(args, "preset", None)
        if preset is not None:
            if preset not in presets:
                raise ValueError(
                    f"--preset: unknown preset {preset!r}; presets are {', '.join(presets)}."
                )
            from_preset = _checked_overrides(config_cls, presets[preset], f"preset {preset!r}")
        if args.config is not None:
            source = f"config file {args.config!r}"
            overrides.update(_checked_overrides(config_cls, _read_json(args.config), source))
        for name, text in given.items():
            overrides[name] = parse_value(name, fields[name][1], text)
        # A preset's settings for one model must not make `--preset X --model Y` fail: the
        # config class may drop those that the finally chosen settings do not use.
        adapt = getattr(config_cls, "adapt_preset", None)
        if from_preset and adapt is not None:
            kept = adapt(dict(from_preset), {**from_preset, **overrides})
            dropped = sorted(set(from_preset) - set(kept))
            if dropped:
                print(f"preset {preset!r}: not used with these settings: "
                      + ", ".join(f"{k}={from_preset[k]!r}" for k in dropped), file=sys.stderr)
            from_preset = kept
        return config_cls(**{**from_preset, **overrides})
    except (ValueError, TypeError) as err:
        parser.error(str(err))


def config_to_dict(cfg):
    """Dataclass instance -> JSON-ready dict (tuples as lists)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"`cfg` must be a dataclass instance; got {cfg!r}.")
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def check_resume(cfg, workdir, ignore=()):
    """Refuses to resume `<workdir>/backup` under a config other than the one it was saved with.

    A killed run resumes from `<workdir>/backup` when started again with the same command;
    restoring it into a model of another shape (or another recipe) would fail deep inside
    Keras or, worse, train on silently. Call this before `write_config`.

    Args:
        cfg: the new run's config dataclass.
        workdir: the run directory.
        ignore: field names that may differ on resumption (verbosity, export options, ...).

    Raises:
        ValueError: naming the workdir and the differing fields, when a backup exists and
            `<workdir>/config.json` differs from `cfg` outside `ignore`.
    """
    workdir = os.fspath(workdir)
    stored_path = os.path.join(workdir, "config.json")
    if not (os.path.isdir(os.path.join(workdir, "backup")) and os.path.exists(stored_path)):
        return
    stored = _read_json(stored_path)
    current = json.loads(json.dumps(config_to_dict(cfg)))
    changed = sorted(
        k for k in set(stored) | set(current)
        if k not in ignore and stored.get(k) != current.get(k)
    )
    if changed:
        listed = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ValueError(
            f"workdir {workdir!r} holds an unfinished run (backup/) saved with another config "
            f"({listed}{more}). Resume it with its own config ({stored_path}), use another "
            f"--workdir, or delete {os.path.join(workdir, 'backup')} to start over."
        )


def write_config(cfg, workdir):
    """Writes the resolved config to `<workdir>/config.json` (creating `workdir`).

    Returns:
        the path written. Raises `ValueError` naming `workdir` when it cannot be created or
        written (e.g. a path under a file, no permission).
    """
    workdir = os.fspath(workdir)
    data = json.dumps(config_to_dict(cfg), indent=2, sort_keys=True) + "\n"
    path = os.path.join(workdir, "config.json")
    try:
        os.makedirs(workdir, exist_ok=True)
        # Write then rename so a crash never leaves a truncated config.json.
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=workdir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as err:
        raise ValueError(f"workdir {workdir!r} is not writable: {err}") from err
    return path


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # NumPy values
        return _json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # a quantity with no samples (NaN) is null, not invalid JSON
    return value


def write_json(path, value):
    """Writes `value` as indented JSON, atomically (write, then rename).

    NumPy arrays and scalars become lists and numbers; NaN and infinities (e.g. an input
    wait that was never measured) become `null`, so the file is valid JSON for any reader.
    """
    path = os.fspath(path)
    data = json.dumps(_json_ready(value), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_json(path, written_by):
    """Reads a JSON file a command wrote, e.g. an app's `<workdir>/preprocessing.json`.

    Raises `ValueError` naming the file and the command that writes it when it is missing
    (a wrong `--workdir` or `--export`), or when it is not valid JSON.
    """
    path = os.fspath(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(
            f"{path} not found: expected a folder written by `{written_by}`"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun `{written_by}`") from None
