"""Attention pooling: learned query tokens attend over a sequence (MAP head / Set Transformer PMA)."""

import keras
from keras import ops

from tfattn.layers.functional import dropout
from tfattn.layers.multi_head_attention import MultiHeadAttention
from tfattn.layers.regularization import MLP

MERGES = ("mean", "flatten", "none")


@keras.saving.register_keras_serializable(package="tfattn")
class AttentionPooling(keras.layers.Layer):
    """Pools a set of tokens into `num_queries` vectors with learned attention queries.

    `num_queries` learned query tokens attend over the input tokens with multi-head
    attention (the output projection fuses the heads). If `intermediate_dim` is set, a
    pre-norm residual MLP follows, `x + MLP(LayerNorm(x))`, as in big_vision's MAP head.
    The pooled tokens are then averaged (`merge="mean"`), concatenated (`"flatten"`) or
    returned as they are (`"none"`).

    Unlike Set Transformer's PMA, there is no residual from the query tokens to the
    attention output (big_vision's choice): the output depends on the inputs only
    through attention.

    Args:
        num_heads: number of attention heads.
        num_queries: number of learned query tokens.
        key_dim: size of each head; defaults to `hidden_dim // num_heads`.
        intermediate_dim: hidden width of the optional MLP after pooling; None = no MLP.
        merge: "mean" (default), "flatten" or "none", how the pooled tokens are combined.
        dropout_rate: dropout on the attention output and inside the MLP.
        attention_dropout_rate: dropout on the attention weights.
        layer_norm_epsilon: epsilon of the LayerNormalization before the MLP.
        activation: MLP hidden activation.
        kernel_initializer: for the query tokens and the projections.
        seed: optional int seed for dropout.

    Call arguments:
        inputs: `(batch, seq_len, hidden_dim)`, or `(batch, *positions, hidden_dim)` such
            as `(batch, H, W, C)`: all position axes are pooled jointly.
        padding_mask: optional bool `(batch, seq_len)`, True = real token (for more than
            one position axis, `(batch, num_positions)` in row-major order). Defaults to
            the Keras mask attached to `inputs`. A sample with no valid token pools to
            the output projection's bias.
        return_attention_scores: also return the attention weights.
        training: enables dropout.
        mask: the Keras mask, filled in by Keras; use `padding_mask` instead.

    Returns:
        `(batch, hidden_dim)` for "mean", `(batch, num_queries * hidden_dim)` for
        "flatten", `(batch, num_queries, hidden_dim)` for "none"; and the weights
        `(batch, num_heads, num_queries, seq_len)` if `return_attention_scores`.

    Example:
    >>> pool = AttentionPooling(num_heads=4, intermediate_dim=256)
    >>> y = pool(keras.random.normal((2, 197, 64)))  # (2, 64)

    Reference: Lee et al. 2019, "Set Transformer" (pooling by multihead attention);
    Zhai et al. 2022, "Scaling Vision Transformers" (MAP head).
    """

    def __init__(
        self,
        num_heads,
        num_queries=1,
        key_dim=None,
        intermediate_dim=None,
        merge="mean",
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        activation="gelu",
        kernel_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value, optional in (
            ("num_heads", num_heads, False),
            ("num_queries", num_queries, False),
            ("key_dim", key_dim, True),
            ("intermediate_dim", intermediate_dim, True),
        ):
            if value is None and optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                suffix = " or None" if optional else ""
                raise ValueError(f"`{name}` must be a positive int{suffix}; got {value!r}.")
        if merge not in MERGES:
            raise ValueError(f"`merge` must be one of {MERGES}; got {merge!r}.")
        for name, rate in (
            ("dropout_rate", dropout_rate),
            ("attention_dropout_rate", attention_dropout_rate),
        ):
            if not 0.0 <= float(rate) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1); got {rate!r}.")
        self.num_heads = num_heads
        self.num_queries = num_queries
        self.key_dim = key_dim
        self.intermediate_dim = intermediate_dim
        self.merge = merge
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout_rate > 0 else None

    def build(self, inputs_shape):
        if len(inputs_shape) < 3:
            raise ValueError(
                "`inputs` must have rank >= 3 (batch, *positions, hidden_dim); "
                f"got shape {inputs_shape}."
            )
        hidden_dim = inputs_shape[-1]
        if hidden_dim is None:
            raise ValueError(
                "The last input dim (`hidden_dim`) must be known when the layer is built."
            )
        key_dim = self.key_dim
        if key_dim is None:
            if hidden_dim % self.num_heads:
                raise ValueError(
                    f"`hidden_dim` (the last input dim, {hidden_dim}) must be divisible by "
                    f"`num_heads`={self.num_heads} when `key_dim` is None; pass `key_dim` explicitly."
                )
            key_dim = hidden_dim // self.num_heads
        self.query_tokens = self.add_weight(
            name="query_tokens",
            shape=(self.num_queries, hidden_dim),
            initializer=self.kernel_initializer,
        )
        self.attention = MultiHeadAttention(
            self.num_heads,
            key_dim,
            dropout=self.attention_dropout_rate,
            kernel_initializer=self.kernel_initializer,
            seed=None if self.seed is None else self.seed + 1,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention.build((None, self.num_queries, hidden_dim), inputs_shape)
        self.mlp_norm = None
        self.mlp = None
        if self.intermediate_dim is not None:
            pooled_shape = (None, self.num_queries, hidden_dim)
            self.mlp_norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="mlp_norm"
            )
            self.mlp = MLP(
                self.intermediate_dim,
                activation=self.activation,
                dropout_rate=self.dropout_rate,
                kernel_initializer=self.kernel_initializer,
                seed=None if self.seed is None else self.seed + 2,
                dtype=self.dtype_policy,
                name="mlp",
            )
            self.mlp_norm.build(pooled_shape)
            self.mlp.build(pooled_shape)

    def call(
        self, inputs, padding_mask=None, return_attention_scores=False, training=None, mask=None
    ):
        if padding_mask is None:
            padding_mask = mask
        if padding_mask is not None and len(padding_mask.shape) != 2:
            raise ValueError(
                f"`padding_mask` must have shape (batch, seq_len); got shape {padding_mask.shape}."
            )
        batch_size, hidden_dim = ops.shape(inputs)[0], inputs.shape[-1]
        queries = ops.cast(self.query_tokens, self.compute_dtype)
        queries = ops.broadcast_to(queries[None], (batch_size, self.num_queries, hidden_dim))
        x = self.attention(
            queries,
            inputs,
            value_mask=padding_mask,
            return_attention_scores=return_attention_scores,
            training=training,
        )
        if return_attention_scores:
            x, scores = x  # scores: (batch, heads, num_queries, seq_len)
        # x: (batch, num_queries, hidden_dim)
        if training and self.dropout_rate > 0:
            x = dropout(x, self.dropout_rate, self.seed_generator)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x), training=training)
        if self.merge == "mean":
            x = ops.mean(x, axis=1)  # (batch, hidden_dim)
        elif self.merge == "flatten":
            x = ops.reshape(x, (batch_size, self.num_queries * hidden_dim))
        if return_attention_scores:
            return x, scores
        return x

    def compute_mask(self, inputs, mask=None):
        # The sequence axis is pooled away.
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "num_queries": self.num_queries,
                "key_dim": self.key_dim,
                "intermediate_dim": self.intermediate_dim,
                "merge": self.merge,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "seed": self.seed,
            }
        )
        return config
