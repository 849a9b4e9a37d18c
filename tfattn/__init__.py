"""tfattn: attention layers, Transformer blocks and a shared TF training runtime for Keras 3."""

from tfattn import layers
from tfattn.layers import *  # noqa: F401,F403  (the public layer API, re-exported)

__version__ = "0.1.0"
