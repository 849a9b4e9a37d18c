"""tfattn: attention layers, Transformer blocks and a shared TF training runtime for Keras 3."""

from tfattn import layers
from tfattn.layers import *  # noqa: F403  (the public layer API, re-exported)
from tfattn.layers import __all__ as _layer_names

__version__ = "0.1.0"
__all__ = ["layers", *_layer_names]
