"""Transformer encoder and decoder blocks: attention + MLP residual branches, pre- or post-norm."""

import keras

from tfattn.layers.functional import check_score, dropout
from tfattn.layers.multi_head_attention import MultiHeadAttention, check_learned_scale
from tfattn.layers.regularization import MLP, DropPath, LayerScale, check_local_mlp_args


def _check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive int{' or None' if allow_none else ''}; got {value!r}."
        )


def _check_rate(name, value):
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1); got {value!r}.")


def _check_block_args(num_heads, intermediate_dim, key_dim, rates, layer_scale_init_value):
    _check_positive_int("num_heads", num_heads)
    _check_positive_int("intermediate_dim", intermediate_dim)
    _check_positive_int("key_dim", key_dim, allow_none=True)
    for name, rate in rates.items():
        _check_rate(name, rate)
    if layer_scale_init_value is not None and not float(layer_scale_init_value) > 0.0:
        raise ValueError(
            f"`layer_scale_init_value` must be a positive float or None; got {layer_scale_init_value!r}."
        )


def _head_dim(hidden_dim, num_heads, key_dim):
    """`key_dim`, defaulting to hidden_dim // num_heads."""
    if hidden_dim is None:
        raise ValueError("The last input dim (`hidden_dim`) must be known when the block is built.")
    if key_dim is not None:
        return key_dim
    if hidden_dim % num_heads:
        raise ValueError(
            f"`hidden_dim` (the last input dim, {hidden_dim}) must be divisible by "
            f"`num_heads`={num_heads} when `key_dim` is None; pass `key_dim` explicitly."
        )
    return hidden_dim // num_heads


def _sub_seed(seed, offset):
    # Distinct seeds per sublayer, so their dropout masks are not identical.
    return None if seed is None else seed + offset


def _check_token_mask(name, mask):
    if mask is not None and len(mask.shape) != 2:
        raise ValueError(f"`{name}` must have shape (batch, seq_len); got shape {mask.shape}.")


def _layer_norm(block, name):
    return keras.layers.LayerNormalization(
        epsilon=block.layer_norm_epsilon, dtype=block.dtype_policy, name=name
    )


def _drop_path(block, name, seed_offset):
    return DropPath(
        block.drop_path_rate,
        seed=_sub_seed(block.seed, seed_offset),
        dtype=block.dtype_policy,
        name=name,
    )


def _layer_scale(block, name):
    if block.layer_scale_init_value is None:
        return None
    return LayerScale(block.layer_scale_init_value, dtype=block.dtype_policy, name=name)


def _mlp(block, seed_offset, local_kernel_size=None, num_prefix_tokens=0):
    return MLP(
        block.intermediate_dim,
        local_kernel_size=local_kernel_size,
        num_prefix_tokens=num_prefix_tokens,
        activation=block.activation,
        dropout_rate=block.dropout_rate,
        kernel_initializer=block.kernel_initializer,
        bias_initializer=block.bias_initializer,
        seed=_sub_seed(block.seed, seed_offset),
        dtype=block.dtype_policy,
        name="mlp",
    )


def _residual(block, x, branch, norm, layer_scale, drop_path, training):
    """Adds a branch output to `x`: pre-norm returns x + b, post-norm returns norm(x + b)."""
    if layer_scale is not None:
        branch = layer_scale(branch)
    x = x + drop_path(branch, training=training)
    return x if block.norm_first else norm(x)


def _attention_residual(
    block,
    x,
    value,
    attention,
    norm,
    layer_scale,
    drop_path,
    return_attention_scores,
    training,
    num_queries=None,
    **attention_kwargs,
):
    """An attention residual branch; `value=None` means self-attention. Returns (x, scores).

    `num_queries` (self-attention only): only the first `num_queries` tokens are queries;
    all tokens stay keys and values, and the returned `x` holds the first tokens only.
    """
    h = norm(x) if block.norm_first else x
    keys = h if value is None else value
    if num_queries is not None:
        x, h = x[:, :num_queries], h[:, :num_queries]
    h = attention(
        h,
        keys,
        return_attention_scores=return_attention_scores,
        training=training,
        **attention_kwargs,
    )
    scores = None
    if return_attention_scores:
        h, scores = h  # scores: (batch, heads, query_len, key_len)
    if training and block.dropout_rate > 0:
        h = dropout(h, block.dropout_rate, block.seed_generator)
    return _residual(block, x, h, norm, layer_scale, drop_path, training), scores


def _mlp_residual(block, x, training, grid_size=None):
    # The MLP applies `dropout_rate` itself (after the activation and after fc2); `grid_size`
    # is used only by a local MLP.
    h = block.mlp(block.mlp_norm(x) if block.norm_first else x, training=training, grid_size=grid_size)
    return _residual(
        block, x, h, block.mlp_norm, block.mlp_layer_scale, block.mlp_drop_path, training
    )


@keras.saving.register_keras_serializable(package="tfattn")
class TransformerEncoderBlock(keras.layers.Layer):
    """Transformer encoder block: self-attention and MLP residual branches.

    Pre-norm (`norm_first=True`, ViT / GPT-2): `x + f(norm(x))` per branch.
    Post-norm (`norm_first=False`, Vaswani et al.): `norm(x + f(x))` per branch.
    Each branch is dropout -> optional LayerScale -> DropPath before the residual add.
    `hidden_dim` is the last input dim; the output has the same shape as the input.

    Args:
        num_heads: number of attention heads.
        intermediate_dim: hidden width of the MLP.
        key_dim: size of each attention head; defaults to `hidden_dim // num_heads`.
        dropout_rate: dropout on the attention output and inside the MLP.
        attention_dropout_rate: dropout on the attention weights.
        drop_path_rate: stochastic-depth rate of each residual branch.
        layer_scale_init_value: if set, scale each branch by a learned per-channel
            vector initialised to this value (CaiT); None disables LayerScale.
        norm_first: pre-norm (True) or post-norm (False).
        layer_norm_epsilon: epsilon of the LayerNormalization layers.
        activation: MLP hidden activation.
        score, window_size, use_relative_position_bias, max_relative_position,
        learned_scale, exclude_self: passed to `tfattn.layers.MultiHeadAttention`
            (`learned_scale` + `exclude_self` = Locality Self-Attention, Lee et al. 2021).
        mlp_local_kernel_size: odd int: a depthwise convolution of this size over the
            token grid inside the MLP (`tfattn.layers.MLP`, PVTv2 / LocalViT), or None.
        num_prefix_tokens: leading non-grid tokens (class token) that skip that convolution.
        kernel_initializer, bias_initializer: for the attention and MLP projections.
        seed: optional int seed for dropout and drop path.

    Call arguments:
        inputs: `(batch, seq_len, hidden_dim)`.
        padding_mask: optional bool `(batch, seq_len)`, True = real token. Padded keys
            are ignored; padded queries get a zero attention output. Defaults to the
            Keras mask attached to `inputs` (e.g. from `Embedding(mask_zero=True)`).
        attention_mask: optional bool `(batch, seq_len, seq_len)` or `(seq_len, seq_len)`.
        use_causal_mask: query i attends only to keys j <= i.
        return_attention_scores: also return the attention weights.
        training: enables dropout and drop path.
        mask: the Keras mask, filled in by Keras; use `padding_mask` instead.
        num_queries: if set, only the first `num_queries` tokens are updated: they attend
            to all tokens, go through the MLP and are returned, `(batch, num_queries,
            hidden_dim)`; the other tokens serve only as keys and values. Exact for what
            it returns, and skips the queries, attention rows, output projection and MLP
            of the other tokens: e.g. `num_queries=1` in the last block of a class-token
            classifier, whose head reads only the class token. With
            `mlp_local_kernel_size`, `num_queries` may not exceed `num_prefix_tokens` (the
            grid would be incomplete).
        grid_size: `(grid_h, grid_w)` of the patch tokens for `mlp_local_kernel_size`; None
            infers a square grid from the static token count.

    Returns:
        `(batch, seq_len, hidden_dim)` (`seq_len` = `num_queries` if set), and the weights
        `(batch, num_heads, seq_len, seq_len)` (`(..., num_queries, seq_len)`) if
        `return_attention_scores`.

    Example:
    >>> block = TransformerEncoderBlock(num_heads=4, intermediate_dim=128, drop_path_rate=0.1)
    >>> y = block(keras.random.normal((2, 16, 64)), padding_mask=ops.ones((2, 16), "bool"))

    Reference: Vaswani et al. 2017, "Attention Is All You Need"; pre-norm as in
    Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words".
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        key_dim=None,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        drop_path_rate=0.0,
        layer_scale_init_value=None,
        norm_first=True,
        layer_norm_epsilon=1e-6,
        activation="gelu",
        score="scaled_dot",
        window_size=None,
        use_relative_position_bias=False,
        max_relative_position=None,
        learned_scale=False,
        exclude_self=False,
        mlp_local_kernel_size=None,
        num_prefix_tokens=0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_block_args(
            num_heads,
            intermediate_dim,
            key_dim,
            {
                "dropout_rate": dropout_rate,
                "attention_dropout_rate": attention_dropout_rate,
                "drop_path_rate": drop_path_rate,
            },
            layer_scale_init_value,
        )
        check_score(score)
        check_learned_scale(learned_scale, score)
        if use_relative_position_bias and max_relative_position is None and window_size is None:
            raise ValueError(
                "`use_relative_position_bias=True` needs `max_relative_position` "
                "(or `window_size`, which it defaults to)."
            )
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.key_dim = key_dim
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_scale_init_value = layer_scale_init_value
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = keras.activations.get(activation)
        self.score = score
        self.window_size = window_size
        self.use_relative_position_bias = use_relative_position_bias
        self.max_relative_position = max_relative_position
        self.learned_scale = learned_scale
        self.exclude_self = exclude_self
        self.mlp_local_kernel_size = mlp_local_kernel_size
        self.num_prefix_tokens = num_prefix_tokens
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout_rate > 0 else None
        self.supports_masking = True
        check_local_mlp_args(mlp_local_kernel_size, num_prefix_tokens, prefix="mlp_")

    def build(self, inputs_shape):
        if len(inputs_shape) != 3:
            raise ValueError(
                f"`inputs` must have shape (batch, seq_len, hidden_dim); got shape {inputs_shape}."
            )
        hidden_dim = inputs_shape[-1]
        key_dim = _head_dim(hidden_dim, self.num_heads, self.key_dim)
        self.self_attention_norm = _layer_norm(self, "self_attention_norm")
        self.self_attention = MultiHeadAttention(
            self.num_heads,
            key_dim,
            dropout=self.attention_dropout_rate,
            score=self.score,
            window_size=self.window_size,
            use_relative_position_bias=self.use_relative_position_bias,
            max_relative_position=self.max_relative_position,
            learned_scale=self.learned_scale,
            exclude_self=self.exclude_self,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            seed=_sub_seed(self.seed, 1),
            dtype=self.dtype_policy,
            name="self_attention",
        )
        self.mlp_norm = _layer_norm(self, "mlp_norm")
        self.mlp = _mlp(self, 2, self.mlp_local_kernel_size, self.num_prefix_tokens)
        self.self_attention_drop_path = _drop_path(self, "self_attention_drop_path", seed_offset=3)
        self.mlp_drop_path = _drop_path(self, "mlp_drop_path", seed_offset=4)
        self.self_attention_layer_scale = _layer_scale(self, "self_attention_layer_scale")
        self.mlp_layer_scale = _layer_scale(self, "mlp_layer_scale")

        self.self_attention_norm.build(inputs_shape)
        self.self_attention.build(inputs_shape, inputs_shape)
        self.mlp_norm.build(inputs_shape)
        self.mlp.build(inputs_shape)
        for scale in (self.self_attention_layer_scale, self.mlp_layer_scale):
            if scale is not None:
                scale.build(inputs_shape)

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        mask=None,
        num_queries=None,
        grid_size=None,
    ):
        if num_queries is not None:
            if not isinstance(num_queries, int) or num_queries <= 0:
                raise ValueError(f"`num_queries` must be a positive int or None; got {num_queries!r}.")
            if self.mlp_local_kernel_size and num_queries > self.num_prefix_tokens:
                raise ValueError(
                    f"`num_queries`={num_queries} with `mlp_local_kernel_size` must be <= "
                    f"`num_prefix_tokens`={self.num_prefix_tokens}: the MLP's convolution "
                    "needs the whole token grid."
                )
            if mask is not None:
                # Keras would attach the full-length input mask to the shorter output.
                raise ValueError(
                    "`num_queries` with a Keras mask on `inputs` is not supported; pass the "
                    "mask as `padding_mask` to a tensor without one."
                )
        if padding_mask is None:
            padding_mask = mask
        _check_token_mask("padding_mask", padding_mask)
        query_mask = padding_mask
        if num_queries is not None:
            if query_mask is not None:
                query_mask = query_mask[:, :num_queries]
            if attention_mask is not None:
                attention_mask = attention_mask[..., :num_queries, :]
        x, scores = _attention_residual(
            self,
            inputs,
            None,
            self.self_attention,
            self.self_attention_norm,
            self.self_attention_layer_scale,
            self.self_attention_drop_path,
            return_attention_scores,
            training,
            num_queries=num_queries,
            query_mask=query_mask,
            value_mask=padding_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
        )
        x = _mlp_residual(self, x, training, grid_size=grid_size)
        if return_attention_scores:
            return x, scores
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "key_dim": self.key_dim,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "drop_path_rate": self.drop_path_rate,
                "layer_scale_init_value": self.layer_scale_init_value,
                "norm_first": self.norm_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": keras.activations.serialize(self.activation),
                "score": self.score,
                "window_size": self.window_size,
                "use_relative_position_bias": self.use_relative_position_bias,
                "max_relative_position": self.max_relative_position,
                "learned_scale": self.learned_scale,
                "exclude_self": self.exclude_self,
                "mlp_local_kernel_size": self.mlp_local_kernel_size,
                "num_prefix_tokens": self.num_prefix_tokens,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfattn")
class TransformerDecoderBlock(keras.layers.Layer):
    """Transformer decoder block: causal self-attention, cross-attention over memory, MLP.

    Same residual layout as `TransformerEncoderBlock` (pre- or post-norm, dropout ->
    optional LayerScale -> DropPath per branch), with a cross-attention branch between
    self-attention and the MLP. `hidden_dim` is the last dim of `inputs`; `memory` may
    have a different last dim.

    Args:
        num_heads: number of heads in both attention layers.
        intermediate_dim: hidden width of the MLP.
        key_dim: size of each attention head; defaults to `hidden_dim // num_heads`.
        dropout_rate: dropout on both attention outputs and inside the MLP.
        attention_dropout_rate: dropout on the attention weights.
        drop_path_rate: stochastic-depth rate of each residual branch.
        layer_scale_init_value: if set, per-channel LayerScale on each branch; None disables it.
        norm_first: pre-norm (True) or post-norm (False).
        layer_norm_epsilon: epsilon of the LayerNormalization layers.
        activation: MLP hidden activation.
        score: attention scoring function of both attention layers (see `MultiHeadAttention`).
        kernel_initializer, bias_initializer: for the attention and MLP projections.
        seed: optional int seed for dropout and drop path.

    Call arguments:
        inputs: target sequence `(batch, target_len, hidden_dim)`.
        memory: encoder output `(batch, source_len, memory_dim)`.
        decoder_padding_mask: optional bool `(batch, target_len)`, True = real token.
        memory_padding_mask: optional bool `(batch, source_len)`, True = real token.
        use_causal_mask: target position i attends only to target positions j <= i.
        return_attention_scores: also return both attention weights.
        training: enables dropout and drop path.

    Returns:
        `(batch, target_len, hidden_dim)`; with `return_attention_scores` also the
        self-attention weights `(batch, num_heads, target_len, target_len)` and the
        cross-attention weights `(batch, num_heads, target_len, source_len)`.

    Example:
    >>> block = TransformerDecoderBlock(num_heads=4, intermediate_dim=128)
    >>> y = block(keras.random.normal((2, 10, 64)), keras.random.normal((2, 16, 32)))

    Reference: Vaswani et al. 2017, "Attention Is All You Need".
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        key_dim=None,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        drop_path_rate=0.0,
        layer_scale_init_value=None,
        norm_first=True,
        layer_norm_epsilon=1e-6,
        activation="gelu",
        score="scaled_dot",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_block_args(
            num_heads,
            intermediate_dim,
            key_dim,
            {
                "dropout_rate": dropout_rate,
                "attention_dropout_rate": attention_dropout_rate,
                "drop_path_rate": drop_path_rate,
            },
            layer_scale_init_value,
        )
        check_score(score)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.key_dim = key_dim
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_scale_init_value = layer_scale_init_value
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = keras.activations.get(activation)
        self.score = score
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout_rate > 0 else None
        self.supports_masking = True

    def build(self, inputs_shape, memory_shape):
        for name, shape in (("inputs", inputs_shape), ("memory", memory_shape)):
            if len(shape) != 3:
                raise ValueError(
                    f"`{name}` must have shape (batch, seq_len, dim); got shape {shape}."
                )
        hidden_dim = inputs_shape[-1]
        key_dim = _head_dim(hidden_dim, self.num_heads, self.key_dim)
        self.self_attention_norm = _layer_norm(self, "self_attention_norm")
        self.self_attention = self._attention(key_dim, "self_attention", seed_offset=1)
        self.cross_attention_norm = _layer_norm(self, "cross_attention_norm")
        self.cross_attention = self._attention(key_dim, "cross_attention", seed_offset=2)
        self.mlp_norm = _layer_norm(self, "mlp_norm")
        self.mlp = _mlp(self, seed_offset=3)
        self.self_attention_drop_path = _drop_path(self, "self_attention_drop_path", seed_offset=4)
        self.cross_attention_drop_path = _drop_path(
            self, "cross_attention_drop_path", seed_offset=5
        )
        self.mlp_drop_path = _drop_path(self, "mlp_drop_path", seed_offset=6)
        self.self_attention_layer_scale = _layer_scale(self, "self_attention_layer_scale")
        self.cross_attention_layer_scale = _layer_scale(self, "cross_attention_layer_scale")
        self.mlp_layer_scale = _layer_scale(self, "mlp_layer_scale")

        for norm in (self.self_attention_norm, self.cross_attention_norm, self.mlp_norm):
            norm.build(inputs_shape)
        self.self_attention.build(inputs_shape, inputs_shape)
        self.cross_attention.build(inputs_shape, memory_shape)
        self.mlp.build(inputs_shape)
        for scale in (
            self.self_attention_layer_scale,
            self.cross_attention_layer_scale,
            self.mlp_layer_scale,
        ):
            if scale is not None:
                scale.build(inputs_shape)

    def _attention(self, key_dim, name, seed_offset):
        return MultiHeadAttention(
            self.num_heads,
            key_dim,
            dropout=self.attention_dropout_rate,
            score=self.score,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            seed=_sub_seed(self.seed, seed_offset),
            dtype=self.dtype_policy,
            name=name,
        )

    def call(
        self,
        inputs,
        memory,
        decoder_padding_mask=None,
        memory_padding_mask=None,
        use_causal_mask=True,
        return_attention_scores=False,
        training=None,
    ):
        _check_token_mask("decoder_padding_mask", decoder_padding_mask)
        _check_token_mask("memory_padding_mask", memory_padding_mask)
        x, self_scores = _attention_residual(
            self,
            inputs,
            None,
            self.self_attention,
            self.self_attention_norm,
            self.self_attention_layer_scale,
            self.self_attention_drop_path,
            return_attention_scores,
            training,
            query_mask=decoder_padding_mask,
            value_mask=decoder_padding_mask,
            use_causal_mask=use_causal_mask,
        )
        x, cross_scores = _attention_residual(
            self,
            x,
            memory,
            self.cross_attention,
            self.cross_attention_norm,
            self.cross_attention_layer_scale,
            self.cross_attention_drop_path,
            return_attention_scores,
            training,
            query_mask=decoder_padding_mask,
            value_mask=memory_padding_mask,
        )
        x = _mlp_residual(self, x, training)
        if return_attention_scores:
            return x, self_scores, cross_scores
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "key_dim": self.key_dim,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "drop_path_rate": self.drop_path_rate,
                "layer_scale_init_value": self.layer_scale_init_value,
                "norm_first": self.norm_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": keras.activations.serialize(self.activation),
                "score": self.score,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
            }
        )
        return config
