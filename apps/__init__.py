"""Task apps built on tfattn, each a `python -m apps.<app>.<command>` command.

`tfattn` is imported here, before an app module loads TensorFlow: run as a command, its
import quiets TensorFlow's start-up log, which only works before TensorFlow loads
(`tfattn/_env.py`; `TFATTN_VERBOSE=1` keeps the log).
"""

import tfattn  # noqa: F401
