"""Attention modules for convolutional feature maps."""

import keras
from keras import ops

from tfattn.layers.regularization import MLP


@keras.saving.register_keras_serializable(package="tfattn")
class SpatialChannelAttention(keras.layers.Layer):
    """CBAM: reweights a feature map's channels, then its positions, with sigmoid gates.

    Channel attention: a shared MLP (C -> C / reduction -> C) over the average- and
    max-pooled spatial descriptors, summed, sigmoid, multiplied into each channel.
    Spatial attention: a `kernel_size` x `kernel_size` convolution over the channel-wise
    average and max maps, sigmoid, multiplied into each position. Channels last.

    The official CBAM code puts a BatchNorm after the spatial convolution; we follow the
    paper's equation (conv then sigmoid), which keeps the layer free of batch statistics.

    Args:
        reduction: channel reduction ratio of the MLP's hidden layer (at least 1 unit).
        kernel_size: size of the spatial attention convolution.
        use_channel: apply channel attention.
        use_spatial: apply spatial attention.
        kernel_initializer: for the MLP and the convolution.

    Call arguments:
        inputs: `(batch, H, W, C)`.
        return_attention_scores: also return the spatial attention map
            (needs `use_spatial=True`).

    Returns:
        `(batch, H, W, C)`, and the spatial attention map `(batch, H, W, 1)` in [0, 1]
        if `return_attention_scores`.

    Example:
    >>> y = SpatialChannelAttention(reduction=8)(keras.random.normal((2, 14, 14, 64)))

    Reference: Woo et al. 2018, "CBAM: Convolutional Block Attention Module".
    """

    def __init__(
        self,
        reduction=16,
        kernel_size=7,
        use_channel=True,
        use_spatial=True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("reduction", reduction), ("kernel_size", kernel_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        if not (use_channel or use_spatial):
            raise ValueError("At least one of `use_channel` and `use_spatial` must be True.")
        self.reduction = reduction
        self.kernel_size = kernel_size
        self.use_channel = use_channel
        self.use_spatial = use_spatial
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape):
        if len(inputs_shape) != 4 or inputs_shape[-1] is None:
            raise ValueError(
                "`inputs` must have shape (batch, H, W, C) with known C (channels last); "
                f"got shape {inputs_shape}."
            )
        channels = inputs_shape[-1]
        self.channel_mlp = None
        self.spatial_conv = None
        if self.use_channel:
            self.channel_mlp = MLP(
                max(channels // self.reduction, 1),
                output_dim=channels,
                activation="relu",
                kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy,
                name="channel_mlp",
            )
            self.channel_mlp.build((None, channels))
        if self.use_spatial:
            self.spatial_conv = keras.layers.Conv2D(
                1,
                self.kernel_size,
                padding="same",
                kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy,
                name="spatial_conv",
            )
            self.spatial_conv.build(tuple(inputs_shape[:-1]) + (2,))

    def call(self, inputs, return_attention_scores=False):
        if return_attention_scores and not self.use_spatial:
            raise ValueError(
                "`return_attention_scores=True` returns the spatial attention map, "
                "which needs `use_spatial=True`."
            )
        x = inputs
        if self.use_channel:
            # Both descriptors go through the same MLP: (batch, C) each.
            logits = self.channel_mlp(ops.mean(x, axis=(1, 2))) + self.channel_mlp(
                ops.max(x, axis=(1, 2))
            )
            x = x * ops.sigmoid(logits)[:, None, None, :]  # gate (batch, 1, 1, C)
        if self.use_spatial:
            descriptors = ops.concatenate(
                [ops.mean(x, axis=-1, keepdims=True), ops.max(x, axis=-1, keepdims=True)], axis=-1
            )  # (batch, H, W, 2)
            spatial = ops.sigmoid(self.spatial_conv(descriptors))  # (batch, H, W, 1)
            x = x * spatial
        if return_attention_scores:
            return x, spatial
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reduction": self.reduction,
                "kernel_size": self.kernel_size,
                "use_channel": self.use_channel,
                "use_spatial": self.use_spatial,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
