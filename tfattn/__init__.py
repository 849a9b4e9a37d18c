"""tfattn: attention layers, Transformer blocks and a shared TF training runtime for Keras 3.

`import tfattn` registers every object the apps save in `.keras` files (the layers and the
learning-rate schedules), so `keras.saving.load_model(path)` needs nothing else.
"""

from tfattn import _env

if _env.is_command():  # `python -m apps.<app>.<command>`: before Keras loads TensorFlow
    _env.quiet_startup()

from tfattn import layers, schedules  # noqa: E402
from tfattn.layers import *  # noqa: E402, F403  (the public layer API, re-exported)
from tfattn.layers import __all__ as _layer_names  # noqa: E402

__version__ = "0.1.0"
__all__ = ["layers", "schedules", *_layer_names]
