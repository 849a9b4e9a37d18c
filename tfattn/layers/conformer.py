"""Conformer: convolution module, macaron Conformer block and the convolutional subsampling front end.

Data flow of a Conformer encoder (Gulati et al. 2020, figure 1):

    features (batch, T, mel) -> ConvSubsampling -> (batch, ~T/4, hidden_dim)
      -> ConformerBlock x N:  x + 1/2 FFN(x) -> x + MHSA(x) -> x + Conv(x) -> x + 1/2 FFN(x) -> LayerNorm
"""

import numbers

import keras
from keras import ops

from tfattn.layers.functional import dropout, nonempty_batch
from tfattn.layers.multi_head_attention import MultiHeadAttention
from tfattn.layers.regularization import MLP, DropPath
from tfattn.layers.transformer import (
    _check_positive_int,
    _check_rate,
    _check_token_mask,
    _head_dim,
    _sub_seed,
)

CONV_NORMS = ("layer_norm", "batch_norm")


def _check_conv_args(kernel_size, norm, name_prefix=""):
    if (
        not isinstance(kernel_size, int)
        or isinstance(kernel_size, bool)
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise ValueError(
            f"`{name_prefix}kernel_size` must be an odd positive int (a centred 'same' "
            f"convolution over time); got {kernel_size!r}."
        )
    if norm not in CONV_NORMS:
        raise ValueError(f"`{name_prefix}norm` must be one of {CONV_NORMS}; got {norm!r}.")


def _zero_padded_frames(x, padding_mask):
    if padding_mask is None:
        return x
    return ops.where(ops.cast(padding_mask, "bool")[..., None], x, ops.zeros_like(x))


@keras.saving.register_keras_serializable(package="tfattn")
class ConformerConvModule(keras.layers.Layer):
    """Conformer convolution module: pointwise conv -> GLU -> depthwise conv -> norm -> swish
    -> pointwise conv -> dropout.

    The pre-LayerNorm and the residual connection belong to `ConformerBlock`; this layer is
    the branch alone. The pointwise convolutions are `Dense` layers (the same maps, kernels
    `(in, out)`); the depthwise convolution runs over time with "same" zero padding.

    Padding: padded frames (`padding_mask` False) are set to zero before the depthwise
    convolution, so a valid frame next to the padding sees exactly what it would see at the
    end of an unpadded sequence, and padded contents never reach valid outputs.
    `norm="layer_norm"` (default) normalises each frame on its own: no batch statistics,
    identical in training and inference, independent of batch size and of the padding.
    `norm="batch_norm"` is the paper's choice: in training its statistics are computed over
    the valid frames only (the mask goes to `keras.layers.BatchNormalization`, which takes
    masked moments), and its moving averages are used in inference; outputs then depend on
    the batch in training, and multi-replica training normalises per replica.

    Args:
        kernel_size: odd size of the depthwise convolution over time (default 31).
        dropout_rate: dropout on the module's output.
        norm: "layer_norm" (default) or "batch_norm", after the depthwise convolution.
        layer_norm_epsilon: epsilon of the LayerNormalization.
        batch_norm_momentum: momentum of the BatchNormalization moving statistics.
        kernel_initializer, bias_initializer: for the pointwise and depthwise convolutions.
        seed: optional int seed for dropout.

    Call arguments:
        inputs: `(batch, T, dim)`.
        padding_mask: optional bool `(batch, T)`, True = real frame. Defaults to the Keras
            mask attached to `inputs`.
        training: enables dropout and BatchNorm's batch statistics.
        mask: the Keras mask, filled in by Keras; use `padding_mask` instead.

    Returns:
        `(batch, T, dim)`.

    Example:
    >>> conv = ConformerConvModule(kernel_size=15, dropout_rate=0.1)
    >>> lengths = ops.array([50, 40])
    >>> y = conv(keras.random.normal((2, 50, 64)), padding_mask=padding_mask(lengths, 50))  # (2, 50, 64)

    Reference: Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for
    Speech Recognition", section 2.2 and figure 2.
    """

    def __init__(
        self,
        kernel_size=31,
        dropout_rate=0.0,
        norm="layer_norm",
        layer_norm_epsilon=1e-6,
        batch_norm_momentum=0.99,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_conv_args(kernel_size, norm)
        _check_rate("dropout_rate", dropout_rate)
        self.kernel_size = kernel_size
        self.dropout_rate = float(dropout_rate)
        self.norm = norm
        self.layer_norm_epsilon = layer_norm_epsilon
        self.batch_norm_momentum = batch_norm_momentum
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout_rate > 0 else None
        self.supports_masking = True

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(
                f"`inputs` must have shape (batch, T, dim) with a known dim; got shape {inputs_shape}."
            )
        dim = inputs_shape[-1]
        common = dict(
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
        )
        self.pointwise_conv1 = keras.layers.Dense(2 * dim, name="pointwise_conv1", **common)
        self.depthwise_conv = keras.layers.DepthwiseConv1D(
            self.kernel_size,
            padding="same",
            depthwise_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
            name="depthwise_conv",
        )
        if self.norm == "layer_norm":
            self.conv_norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="conv_norm"
            )
        else:
            self.conv_norm = keras.layers.BatchNormalization(
                momentum=self.batch_norm_momentum, dtype=self.dtype_policy, name="conv_norm"
            )
        self.pointwise_conv2 = keras.layers.Dense(dim, name="pointwise_conv2", **common)
        self.pointwise_conv1.build(inputs_shape)
        self.depthwise_conv.build(inputs_shape)
        self.conv_norm.build(inputs_shape)
        self.pointwise_conv2.build(inputs_shape)

    def call(self, inputs, padding_mask=None, training=None, mask=None):
        if padding_mask is None:
            padding_mask = mask
        _check_token_mask("padding_mask", padding_mask)
        x = self.pointwise_conv1(inputs)  # (batch, T, 2 * dim)
        x = ops.glu(x, axis=-1)  # (batch, T, dim): first half * sigmoid(second half)
        x = _zero_padded_frames(x, padding_mask)
        x = self.depthwise_conv(x)
        if self.norm == "batch_norm":
            bn_mask = None if padding_mask is None else ops.cast(padding_mask, "bool")
            x = self.conv_norm(x, training=training, mask=bn_mask)
        else:
            x = self.conv_norm(x)
        x = self.pointwise_conv2(ops.silu(x))
        if training and self.dropout_rate > 0:
            x = dropout(x, self.dropout_rate, self.seed_generator)
        return x

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "dropout_rate": self.dropout_rate,
                "norm": self.norm,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "batch_norm_momentum": self.batch_norm_momentum,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfattn")
class ConformerBlock(keras.layers.Layer):
    """Conformer block: macaron feed-forward halves around self-attention and convolution.

    `x + 1/2 FFN(x) -> x + MHSA(x) -> x + Conv(x) -> x + 1/2 FFN(x) -> LayerNorm`, every
    branch pre-LayerNorm and ending in dropout -> DropPath before its residual add. The FFNs
    are `tfattn.layers.MLP` (Dense -> swish -> dropout -> Dense -> dropout), the convolution
    is `ConformerConvModule`.

    Positions: the paper uses Transformer-XL's relative sinusoidal encoding. Here the
    attention is `tfattn.layers.MultiHeadAttention` with its learned relative-position bias
    (one scalar per head and clipped distance j - i, T5 / Swin style, `max_relative_position`
    = 64 by default): relative like the paper's, translation invariant, and without extra
    projections. The depthwise convolution adds local relative position as well.
    `max_relative_position=None` drops the bias (positions come from the convolution only).

    Args:
        hidden_dim: model width; must equal the last input dim.
        num_heads: number of attention heads.
        intermediate_dim: hidden width of each feed-forward module (paper: 4 * hidden_dim).
        conv_kernel_size: odd depthwise kernel size of the convolution module (default 31).
        key_dim: size of each attention head; defaults to `hidden_dim // num_heads`.
        dropout_rate: dropout at the end of every module and inside the FFNs.
        attention_dropout_rate: dropout on the attention weights.
        drop_path_rate: stochastic-depth rate of each residual branch.
        max_relative_position: clipping distance of the attention's learned relative
            position bias, or None for no position bias.
        conv_norm: "layer_norm" (default) or "batch_norm" inside the convolution module
            (see `ConformerConvModule` for how each treats padding).
        layer_norm_epsilon: epsilon of the LayerNormalization layers.
        activation: FFN hidden activation (default "silu", the paper's swish).
        kernel_initializer, bias_initializer: for all projections and convolutions.
        seed: optional int seed for dropout and drop path.

    Call arguments:
        inputs: `(batch, T, hidden_dim)`.
        padding_mask: optional bool `(batch, T)`, True = real frame. Padded frames are
            ignored as keys, get a zero attention output, and are zeroed before the
            depthwise convolution, so valid outputs do not depend on padded contents.
            Defaults to the Keras mask attached to `inputs`.
        return_attention_scores: also return the attention weights.
        training: enables dropout, drop path and BatchNorm's batch statistics.
        mask: the Keras mask, filled in by Keras; use `padding_mask` instead.

    Returns:
        `(batch, T, hidden_dim)`, and the weights `(batch, num_heads, T, T)` if
        `return_attention_scores`.

    Example:
    >>> block = ConformerBlock(hidden_dim=144, num_heads=4, intermediate_dim=576, drop_path_rate=0.1)
    >>> mask = padding_mask(ops.array([50, 40]), 50)  # tfattn.layers.padding_mask
    >>> y = block(keras.random.normal((2, 50, 144)), padding_mask=mask)  # (2, 50, 144)

    Reference: Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for
    Speech Recognition"; macaron feed-forward from Lu et al. 2019, "Understanding and
    Improving Transformer From a Multi-Particle Dynamic System Point of View".
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        conv_kernel_size=31,
        key_dim=None,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        drop_path_rate=0.0,
        max_relative_position=64,
        conv_norm="layer_norm",
        layer_norm_epsilon=1e-6,
        activation="silu",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int("hidden_dim", hidden_dim)
        _check_positive_int("num_heads", num_heads)
        _check_positive_int("intermediate_dim", intermediate_dim)
        _check_positive_int("key_dim", key_dim, allow_none=True)
        _check_positive_int("max_relative_position", max_relative_position, allow_none=True)
        for name, rate in (
            ("dropout_rate", dropout_rate),
            ("attention_dropout_rate", attention_dropout_rate),
            ("drop_path_rate", drop_path_rate),
        ):
            _check_rate(name, rate)
        _check_conv_args(conv_kernel_size, conv_norm, name_prefix="conv_")
        _head_dim(hidden_dim, num_heads, key_dim)  # raises early if hidden_dim % num_heads
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.conv_kernel_size = conv_kernel_size
        self.key_dim = key_dim
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.max_relative_position = max_relative_position
        self.conv_norm = conv_norm
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout_rate > 0 else None
        self.supports_masking = True

    def _layer_norm(self, name):
        return keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )

    def _ffn(self, name, seed_offset):
        return MLP(
            self.intermediate_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            seed=_sub_seed(self.seed, seed_offset),
            dtype=self.dtype_policy,
            name=name,
        )

    def _drop_path(self, name, seed_offset):
        return DropPath(
            self.drop_path_rate,
            seed=_sub_seed(self.seed, seed_offset),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] != self.hidden_dim:
            raise ValueError(
                f"`inputs` must have shape (batch, T, hidden_dim={self.hidden_dim}); got shape "
                f"{inputs_shape}."
            )
        key_dim = _head_dim(self.hidden_dim, self.num_heads, self.key_dim)
        self.ffn1_norm = self._layer_norm("ffn1_norm")
        self.ffn1 = self._ffn("ffn1", seed_offset=1)
        self.self_attention_norm = self._layer_norm("self_attention_norm")
        self.self_attention = MultiHeadAttention(
            self.num_heads,
            key_dim,
            dropout=self.attention_dropout_rate,
            use_relative_position_bias=self.max_relative_position is not None,
            max_relative_position=self.max_relative_position,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            seed=_sub_seed(self.seed, 2),
            dtype=self.dtype_policy,
            name="self_attention",
        )
        self.conv_module_norm = self._layer_norm("conv_module_norm")
        self.conv_module = ConformerConvModule(
            self.conv_kernel_size,
            dropout_rate=self.dropout_rate,
            norm=self.conv_norm,
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            seed=_sub_seed(self.seed, 3),
            dtype=self.dtype_policy,
            name="conv_module",
        )
        self.ffn2_norm = self._layer_norm("ffn2_norm")
        self.ffn2 = self._ffn("ffn2", seed_offset=4)
        self.output_norm = self._layer_norm("output_norm")
        self.ffn1_drop_path = self._drop_path("ffn1_drop_path", 5)
        self.self_attention_drop_path = self._drop_path("self_attention_drop_path", 6)
        self.conv_module_drop_path = self._drop_path("conv_module_drop_path", 7)
        self.ffn2_drop_path = self._drop_path("ffn2_drop_path", 8)

        for layer in (
            self.ffn1_norm,
            self.ffn1,
            self.self_attention_norm,
            self.conv_module_norm,
            self.conv_module,
            self.ffn2_norm,
            self.ffn2,
            self.output_norm,
        ):
            layer.build(inputs_shape)
        self.self_attention.build(inputs_shape, inputs_shape)

    def call(
        self,
        inputs,
        padding_mask=None,
        return_attention_scores=False,
        training=None,
        mask=None,
    ):
        if padding_mask is None:
            padding_mask = mask
        _check_token_mask("padding_mask", padding_mask)
        x = inputs
        # Macaron: each feed-forward module contributes a half step.
        h = self.ffn1(self.ffn1_norm(x), training=training)
        x = x + 0.5 * self.ffn1_drop_path(h, training=training)

        h = self.self_attention_norm(x)
        h = self.self_attention(
            h,
            h,
            query_mask=padding_mask,
            value_mask=padding_mask,
            return_attention_scores=return_attention_scores,
            training=training,
        )
        scores = None
        if return_attention_scores:
            h, scores = h  # scores: (batch, heads, T, T)
        if training and self.dropout_rate > 0:
            h = dropout(h, self.dropout_rate, self.seed_generator)
        x = x + self.self_attention_drop_path(h, training=training)

        h = self.conv_module(self.conv_module_norm(x), padding_mask=padding_mask, training=training)
        x = x + self.conv_module_drop_path(h, training=training)

        h = self.ffn2(self.ffn2_norm(x), training=training)
        x = x + 0.5 * self.ffn2_drop_path(h, training=training)
        x = self.output_norm(x)
        if return_attention_scores:
            return x, scores
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "conv_kernel_size": self.conv_kernel_size,
                "key_dim": self.key_dim,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "drop_path_rate": self.drop_path_rate,
                "max_relative_position": self.max_relative_position,
                "conv_norm": self.conv_norm,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
            }
        )
        return config


def _valid_conv_length(length, kernel_size, stride):
    """Output length of a 'valid' convolution; Python ints stay ints, tensors stay tensors."""
    if isinstance(length, numbers.Integral):
        return max((length - kernel_size) // stride + 1, 0)
    return ops.maximum((length - kernel_size) // stride + 1, 0)


@keras.saving.register_keras_serializable(package="tfattn")
class ConvSubsampling(keras.layers.Layer):
    """Convolutional front end: two strided Conv2D over (time, feature) + ReLU, then a Dense.

    Reduces features by 4 and time by `time_reduction` (4: both convolutions stride 2 in
    time, the paper's 40 ms frames from a 10 ms hop; 2: only the first does, 20 ms frames):
    `(batch, T, num_features)` -> `(batch, T', hidden_dim)` with `T' = output_lengths(T)`.
    Character CTC needs at least one frame per label (two for a doubled letter), so fast
    speech or short words can need the finer frames. Both convolutions use 'valid' padding (as ESPnet's
    `Conv2dSubsampling`), so an output frame within an utterance's output length reads only
    that utterance's valid input frames: padded frames never leak into valid outputs, and
    the Keras mask of a padded batch maps to the exact output mask (`compute_mask`, which
    assumes the valid frames come first).

    Args:
        hidden_dim: output width (the Dense projection's units).
        filters: channels of both convolutions; defaults to `hidden_dim`.
        time_reduction: 4 (default) or 2, the stride of the whole front end over time.
        kernel_size: size of both (square) convolution kernels (default 3).
        dropout_rate: dropout after the projection.
        kernel_initializer, bias_initializer: for the convolutions and the projection.
        seed: optional int seed for dropout.

    Call arguments:
        inputs: `(batch, T, num_features)` (e.g. log-mel frames); `num_features` must be
            static and leave at least one feature after the two convolutions.
        training: enables dropout.

    Returns:
        `(batch, output_lengths(T), hidden_dim)`.

    Attributes:
        time_reduction: the stride of the whole front end over time (4 or 2).
        min_length: input frames one output frame reads (7 with the default kernel).

    Example:
    >>> sub = ConvSubsampling(hidden_dim=144)
    >>> y = sub(keras.random.normal((2, 100, 80)))  # (2, 24, 144)
    >>> sub.output_lengths(ops.array([100, 57]))  # [24, 13]

    Reference: Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for
    Speech Recognition", figure 1 ("Convolution Subsampling").
    """

    TIME_REDUCTIONS = (2, 4)
    _strides = 2  # over features, both convolutions
    _num_convs = 2

    def __init__(
        self,
        hidden_dim,
        filters=None,
        kernel_size=3,
        time_reduction=4,
        dropout_rate=0.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int("hidden_dim", hidden_dim)
        _check_positive_int("filters", filters, allow_none=True)
        _check_positive_int("kernel_size", kernel_size)
        _check_rate("dropout_rate", dropout_rate)
        if time_reduction not in self.TIME_REDUCTIONS or isinstance(time_reduction, bool):
            raise ValueError(
                f"`time_reduction` must be one of {self.TIME_REDUCTIONS}; got {time_reduction!r}."
            )
        self.hidden_dim = hidden_dim
        self.filters = filters
        self.kernel_size = kernel_size
        self.time_reduction = time_reduction
        self._time_strides = (2, 2) if time_reduction == 4 else (2, 1)
        self.dropout_rate = float(dropout_rate)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout_rate > 0 else None

    @property
    def min_length(self):
        """Fewest input frames (or features) that give one output frame: the receptive field."""
        # 1 + (k - 1) * (1 + first stride); the same over time for either time_reduction.
        return self.kernel_size + (self.kernel_size - 1) * self._strides

    def output_lengths(self, lengths):
        """Output frames for `lengths` input frames (int, or int tensor `(batch,)`); 0 when
        an input is shorter than `min_length`."""
        if isinstance(lengths, numbers.Integral):
            lengths = int(lengths)
        else:
            lengths = ops.cast(ops.convert_to_tensor(lengths), "int32")
        for stride in self._time_strides:
            lengths = _valid_conv_length(lengths, self.kernel_size, stride)
        return lengths

    def _num_output_features(self, num_features):
        out = num_features
        for _ in range(self._num_convs):
            out = _valid_conv_length(out, self.kernel_size, self._strides)
        return out

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(
                "`inputs` must have shape (batch, T, num_features) with a static num_features; "
                f"got shape {inputs_shape}."
            )
        if self._num_output_features(inputs_shape[-1]) < 1:
            raise ValueError(
                f"ConvSubsampling needs num_features >= {self.min_length} for kernel_size="
                f"{self.kernel_size} (two stride-2 'valid' convolutions); got {inputs_shape[-1]}."
            )
        filters = self.filters or self.hidden_dim
        common = dict(
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
        )
        self.convs = [
            keras.layers.Conv2D(
                filters,
                self.kernel_size,
                strides=(time_stride, self._strides),
                padding="valid",
                activation="relu",
                name=f"conv{i + 1}",
                **common,
            )
            for i, time_stride in enumerate(self._time_strides)
        ]
        self.projection = keras.layers.Dense(self.hidden_dim, name="projection", **common)
        shape = (None, None, inputs_shape[-1], 1)
        for conv in self.convs:
            conv.build(shape)
            shape = (None, None, _valid_conv_length(shape[2], self.kernel_size, self._strides), filters)
        self.projection.build((None, None, shape[2] * filters))

    def call(self, inputs, training=None):
        inputs, batch = nonempty_batch(inputs)  # TF's oneDNN Conv2D mishandles batch 0
        x = ops.expand_dims(inputs, -1)  # (batch, T, features, 1)
        for conv in self.convs:
            x = conv(x)  # (batch, T', features', filters)
        x = x[:batch]
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], x.shape[2] * x.shape[3]))  # (batch, T', features' * filters)
        x = self.projection(x)
        if training and self.dropout_rate > 0:
            x = dropout(x, self.dropout_rate, self.seed_generator)
        return x

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        # Output frame t reads input frames Rt .. Rt + min_length - 1 (R = time_reduction; for
        # R = 2 the second conv's stride-1 window spans 3 first-conv frames = 7 inputs, as for
        # R = 4), so with the valid frames
        # first it is valid iff its last input frame is; slicing keeps the shape static.
        return mask[:, self.min_length - 1 :: self.time_reduction]

    def compute_output_shape(self, inputs_shape):
        frames = inputs_shape[1]
        frames = None if frames is None else self.output_lengths(frames)
        return (inputs_shape[0], frames, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "time_reduction": self.time_reduction,
                "dropout_rate": self.dropout_rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
            }
        )
        return config
