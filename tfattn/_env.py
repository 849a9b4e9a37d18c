"""A quiet start for tfattn's commands (standard library only: this runs before TensorFlow loads).

Without it, `python -m apps.vit.train` opens with TensorFlow's start-up log (absl's "All log
messages before absl::InitializeLog()" notice, the oneDNN note, the CPU instruction (AVX)
rebuild hint, "Could not find cuda drivers", a `failed call to cuInit` error on machines
without a GPU) and Keras's `shuffle=True ... will be ignored` warning on every `fit` of a
`tf.data.Dataset`. Commands start quiet; `TFATTN_VERBOSE=1` shows all of it.

Why at import: TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` once, when it loads, and its first lines
are written before absl's logging is set up, where no log level reaches them, so they can
only be held back by importing TensorFlow with stderr captured. A command's `main()` runs
after its module's imports have loaded TensorFlow, too late for both. What runs first in
`python -m apps.<app>.<command>` is the package `__init__` code: `apps/__init__.py` imports
`tfattn`, whose `__init__` calls `quiet_startup()` before it imports Keras, when
`is_command()`. A library user's `import tfattn` changes nothing.
"""

import os
import sys
import tempfile
import warnings

VERBOSE_ENV = "TFATTN_VERBOSE"
COMMAND_PACKAGES = ("apps", "tfattn")  # `python -m <package>.<module>` is a tfattn command
# Keras 3 warns on every `fit` of a dataset, which is how every app trains (the pipelines
# shuffle themselves).
KERAS_SHUFFLE_WARNING = r"`shuffle=True` was passed, but will be ignored"


def verbose():
    """Whether `TFATTN_VERBOSE` asks for TensorFlow's and Keras's logs (any value but 0/false)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def is_command(argv=None):
    """Whether this process was started as `python -m apps.<...>` or `python -m tfattn.<...>`."""
    args = iter((sys.orig_argv if argv is None else argv)[1:])
    for arg in args:  # the interpreter's options, up to the script, `-c` or `-m`
        if arg.startswith("-m"):
            module = arg[2:] or next(args, "")
            return module.split(".")[0] in COMMAND_PACKAGES
        if arg in ("-W", "-X"):
            next(args, None)  # the option's value
        elif arg.startswith("-c") or not arg.startswith("-") or arg == "-":
            return False
    return False


def quiet_startup():
    """Holds back TensorFlow's start-up log and Keras's dataset `shuffle` warning.

    Unless `verbose()`: sets `TF_CPP_MIN_LOG_LEVEL=3` (if unset) and imports TensorFlow with
    stderr captured (the capture is written out if the import fails), when TensorFlow is not
    loaded yet; ignores Keras's `shuffle=True ... will be ignored` warning; and sets absl's
    Python logging (TFDS, SavedModel notes) to errors only. Idempotent.
    """
    if verbose():
        return
    warnings.filterwarnings("ignore", message=KERAS_SHUFFLE_WARNING, category=UserWarning)
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # 3: also the cuInit error
        _import_tensorflow_with_stderr_captured()
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


def _import_tensorflow_with_stderr_captured():
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to capture
        import tensorflow  # noqa: F401

        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            captured.seek(0)
            os.write(2, captured.read())  # the import failed: its log may say why
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
