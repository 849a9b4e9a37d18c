"""Running an app's `main()` as a command: a user error is one line, not a traceback.

    def main(argv=None):
        cfg = parse_config(Config, argv, presets=PRESETS, prog="python -m apps.vit.train")
        ...

    if __name__ == "__main__":
        run_cli(main)

Flag errors already end as argparse's `prog: error: message` with exit status 2. `run_cli`
gives the errors found later in the same form: a missing data folder, an empty one, a
workdir that holds no model, ... (a `ValueError` or a missing/unreadable file, which the
apps raise with messages that name the path and say what was expected). `TFATTN_VERBOSE=1`
shows the traceback instead.
"""

import os
import sys

from tfattn import _env

USAGE_ERROR = 2  # argparse's exit status for a bad command line
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _prog(main):
    module = sys.modules.get(getattr(main, "__module__", None))
    spec = getattr(module, "__spec__", None)  # `python -m` runs the module as `__main__`
    return f"python -m {spec.name}" if spec is not None else getattr(main, "__module__", "main")


def run_cli(main, argv=None, prog=None):
    """Calls `main(argv)`; a user error prints `prog: error: message` and exits with status 2.

    Args:
        main: the app's `main(argv=None)`.
        argv: command-line arguments (default: `sys.argv[1:]`, read by `main`'s parser).
        prog: the command's name in the message (default: `python -m <main's module>`).

    Returns:
        what `main` returns. Errors other than `USER_ERRORS` (bugs) keep their traceback.
    """
    try:
        return main(argv)
    except USER_ERRORS as err:
        if _env.verbose():
            raise
        message = " ".join(str(err).split()) or type(err).__name__  # one line
        print(f"{prog or _prog(main)}: error: {message}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def list_images(path):
    """A file, or every image file (by extension) under a folder, sorted (the `--images`
    argument of the apps' predict commands)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ValueError(f"--images: {path} is neither a file nor a folder")
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise ValueError(f"--images: no {'/'.join(IMAGE_EXTENSIONS)} files under {path}")
    return files
