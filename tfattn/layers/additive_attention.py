"""Bahdanau (additive) attention for RNN encoder-decoders."""

import keras

from tfattn.layers.functional import dot_product_attention
from tfattn.layers.masks import attention_mask_from_padding


@keras.saving.register_keras_serializable(package="tfattn")
class AdditiveAttention(keras.layers.Layer):
    """Additive attention of decoder states over encoder outputs, `v^T tanh(W q + U k)`.

    Single-head attention whose score is a one-hidden-layer MLP of the query and key:
    `W` and `U` project them to `key_dim`, `v` reduces the tanh to a logit. The context
    is the weighted sum of the (unprojected) values, as in Bahdanau et al.

    Unlike `keras.layers.AdditiveAttention`, which adds q and k directly and so needs
    them to have equal dims, the projections here let decoder and encoder widths differ,
    as in the paper. There is no `use_scale`: its learned scale vector is `v` itself.

    Args:
        key_dim: width of the projected query/key (the alignment MLP's hidden units).
        use_bias: add a bias to `W q`. One bias is enough: a second on `U k` would add to it.
        attention_dropout_rate: dropout on the attention weights.
        kernel_initializer: for `W`, `U` and `v`.
        bias_initializer: for the bias of `W q`.
        seed: optional int seed for dropout.

    Call arguments:
        query: decoder states `(batch, Tq, query_dim)`.
        value: encoder outputs `(batch, Tk, value_dim)`.
        key: optional `(batch, Tk, key_input_dim)`; defaults to `value`.
        query_mask: optional bool `(batch, Tq)`; padded queries get a zero context.
        value_mask: optional bool `(batch, Tk)`; padded keys get zero weight.
            Both default to the Keras masks attached to `query` / `value`.
        return_attention_scores: also return the attention weights.
        training: enables attention dropout.

    Returns:
        The context `(batch, Tq, value_dim)`, and the weights `(batch, Tq, Tk)` if
        `return_attention_scores`.

    Example:
    >>> encoder_outputs = keras.layers.GRU(32, return_sequences=True)(source_embeddings)
    >>> decoder_states = keras.layers.GRU(24, return_sequences=True)(target_embeddings)
    >>> context = AdditiveAttention(key_dim=16)(decoder_states, encoder_outputs)  # (b, Tq, 32)

    Reference: Bahdanau et al. 2015, "Neural Machine Translation by Jointly Learning to
    Align and Translate".
    """

    def __init__(
        self,
        key_dim,
        use_bias=True,
        attention_dropout_rate=0.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(key_dim, int) or isinstance(key_dim, bool) or key_dim <= 0:
            raise ValueError(f"`key_dim` must be a positive int; got {key_dim!r}.")
        if not 0.0 <= float(attention_dropout_rate) < 1.0:
            raise ValueError(
                f"`attention_dropout_rate` must be in [0, 1); got {attention_dropout_rate!r}."
            )
        self.key_dim = key_dim
        self.use_bias = use_bias
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.seed_generator = (
            keras.random.SeedGenerator(seed) if self.attention_dropout_rate > 0 else None
        )
        self.supports_masking = True

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if len(shape) != 3:
                raise ValueError(
                    f"`{name}` must have shape (batch, length, dim); got shape {shape}."
                )
        self.query_dense = keras.layers.Dense(
            self.key_dim,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
            name="query_dense",
        )
        self.key_dense = keras.layers.Dense(
            self.key_dim,
            use_bias=False,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="key_dense",
        )
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        # `v`, with a leading heads axis of 1 as `dot_product_attention` expects.
        self.additive_weight = self.add_weight(
            name="additive_weight",
            shape=(1, self.key_dim),
            initializer=self.kernel_initializer,
        )

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        return_attention_scores=False,
        training=None,
    ):
        if key is None:
            key = value
        for name, m, length in (
            ("query_mask", query_mask, query.shape[1]),
            ("value_mask", value_mask, key.shape[1]),
        ):
            if m is None:
                continue
            if len(m.shape) != 2 or (None not in (m.shape[1], length) and m.shape[1] != length):
                raise ValueError(
                    f"`{name}` must have shape (batch, {length}) to match its sequence; got shape {m.shape}."
                )
        q = self.query_dense(query)[:, :, None, :]  # (batch, Tq, 1, key_dim)
        k = self.key_dense(key)[:, :, None, :]  # (batch, Tk, 1, key_dim)
        v = value[:, :, None, :]  # (batch, Tk, 1, value_dim)
        context = dot_product_attention(
            q,
            k,
            v,
            mask=attention_mask_from_padding(query_mask, value_mask),  # (batch, Tq|1, Tk)
            score="additive",
            additive_weight=self.additive_weight,
            dropout_rate=self.attention_dropout_rate,
            training=training,
            seed_generator=self.seed_generator,
            return_weights=return_attention_scores,
        )
        if return_attention_scores:
            context, weights = context
            return context[:, :, 0, :], weights[:, 0]  # (batch, Tq, value_dim), (batch, Tq, Tk)
        return context[:, :, 0, :]  # (batch, Tq, value_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "key_dim": self.key_dim,
                "use_bias": self.use_bias,
                "attention_dropout_rate": self.attention_dropout_rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
            }
        )
        return config
