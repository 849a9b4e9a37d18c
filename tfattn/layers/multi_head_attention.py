"""Multi-head attention, call-compatible with `keras.layers.MultiHeadAttention`."""

import itertools
import math

import keras
from keras import ops

from tfattn.layers.functional import check_score, dot_product_attention
from tfattn.layers.masks import merge_masks, window_mask

# Scores whose fixed logit scale `learned_scale=True` can replace by a learned one.
_LEARNED_SCALE_SCORES = ("scaled_dot", "dot")


def check_learned_scale(learned_scale, score):
    """Raises if `learned_scale=True` is combined with a score that has no fixed scale."""
    if learned_scale and score not in _LEARNED_SCALE_SCORES:
        raise ValueError(
            f"`learned_scale=True` supports score {' or '.join(map(repr, _LEARNED_SCALE_SCORES))}; "
            f"got score={score!r} (\"cosine\" already learns its temperature, \"additive\" "
            "has no logit scale)."
        )


@keras.saving.register_keras_serializable(package="tfattn")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention with a choice of scoring function and local windows.

    Drop-in for `keras.layers.MultiHeadAttention`: same call arguments, same constructor
    names where they overlap, same kernel layout (so weights can be copied across with
    `set_weights`). Adds scoring functions, banded (local) attention with an optional
    learned relative-position bias, Locality Self-Attention's learned temperature and
    diagonal masking, and attention dropout that stays cheap under XLA.

    Inputs may have any rank >= 3: `(batch, *positions, features)`; attention runs over
    all position axes jointly (Keras's default `attention_axes=None`).

    Args:
        num_heads: number of heads.
        key_dim: size of each head for query and key.
        value_dim: size of each head for value; defaults to `key_dim`.
        dropout: attention-weight dropout rate (Keras's name for it).
        use_bias: whether the projections use a bias.
        output_shape: last dim of the output (int or 1-tuple); defaults to the query's.
        attention_axes: only `None` (all position axes) is supported.
        score: "scaled_dot" (default), "dot", "cosine" (learned per-head temperature,
            Swin V2, Liu et al. 2022) or "additive" (v^T tanh(Wq + Uk), Bahdanau et al. 2015).
        window_size: if set, query i attends only to keys j with |i - j| <= window_size
            (self-attention: query position i is key position i, so the query is the
            key sequence or a leading slice of it).
        use_relative_position_bias: add a learned per-head bias indexed by the clipped
            relative distance j - i (T5 / Swin style, 1-D).
        max_relative_position: clipping distance for that bias; defaults to `window_size`.
        learned_scale: for "scaled_dot" and "dot", learn a per-head logit multiplier
            (weight `logit_scale`, initialised to 1/sqrt(key_dim) resp. 1) instead of the
            fixed one: LSA's learnable temperature (Lee et al. 2021).
        exclude_self: query i may not attend to key i (LSA's diagonal masking;
            self-attention, as for `window_size`).
        use_fused: route eligible calls to `keras.ops.dot_product_attention`;
            `None` = automatic (see `tfattn.layers.dot_product_attention`).
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint, seed: as in Keras.

    Call arguments:
        query: `(batch, T, dim)` (or more position axes).
        value: `(batch, S, dim)`.
        key: optional `(batch, S, dim)`; defaults to `value`.
        query_mask, value_mask, key_mask: optional bool `(batch, T)` / `(batch, S)`;
            Keras masks attached to the inputs (e.g. `Embedding(mask_zero=True)`) are
            filled in by Keras, and the query mask propagates to the output.
        attention_mask: optional bool `(batch, T, S)`, `(T, S)` or `(batch, heads, T, S)`.
        return_attention_scores: also return weights `(batch, heads, T, S)`.
        training: enables attention dropout.
        use_causal_mask: mask out keys j > i.

    Returns:
        `(batch, T, output_dim)`, and the attention weights if requested.

    Example:
    >>> x = keras.random.normal((2, 16, 64))
    >>> mha = MultiHeadAttention(num_heads=4, key_dim=16, score="cosine", window_size=3)
    >>> y, w = mha(x, x, return_attention_scores=True)  # y: (2, 16, 64), w: (2, 4, 16, 16)
    >>> lsa = MultiHeadAttention(num_heads=4, key_dim=16, learned_scale=True, exclude_self=True)

    Reference: Lee, Lee & Song 2021, "Vision Transformer for Small-Size Datasets" (LSA).
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_shape=None,
        attention_axes=None,
        score="scaled_dot",
        window_size=None,
        use_relative_position_bias=False,
        max_relative_position=None,
        learned_scale=False,
        exclude_self=False,
        use_fused=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        for name, v in (("num_heads", num_heads), ("key_dim", key_dim)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"`{name}` must be a positive int; got {v!r}.")
        if value_dim is not None and (not isinstance(value_dim, int) or value_dim <= 0):
            raise ValueError(f"`value_dim` must be a positive int or None; got {value_dim!r}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
        if attention_axes is not None:
            raise ValueError(
                "tfattn MultiHeadAttention attends over all position axes jointly; "
                f"`attention_axes` must be None, got {attention_axes!r}."
            )
        if isinstance(output_shape, (list, tuple)):
            if len(output_shape) != 1:
                raise ValueError(
                    f"`output_shape` must be an int or a 1-tuple; got {output_shape!r}."
                )
            output_shape = int(output_shape[0])
        check_score(score)
        check_learned_scale(learned_scale, score)
        if window_size is not None and (not isinstance(window_size, int) or window_size < 0):
            raise ValueError(f"`window_size` must be a non-negative int or None; got {window_size!r}.")
        if use_relative_position_bias and max_relative_position is None and window_size is None:
            raise ValueError(
                "`use_relative_position_bias=True` needs `max_relative_position` "
                "(or `window_size`, which it defaults to)."
            )
        self.supports_masking = True
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.dropout = float(dropout)
        self.use_bias = use_bias
        self.output_shape_arg = output_shape
        self.attention_axes = attention_axes
        self.score = score
        self.window_size = window_size
        self.use_relative_position_bias = use_relative_position_bias
        self.max_relative_position = max_relative_position
        self.learned_scale = learned_scale
        self.exclude_self = exclude_self
        self.use_fused = use_fused
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout > 0 else None

    def _dense(self, equation, output_shape, bias_axes, name):
        return keras.layers.EinsumDense(
            equation,
            output_shape=output_shape,
            bias_axes=bias_axes if self.use_bias else None,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        v_dim = self.value_dim or self.key_dim
        out_dim = self.output_shape_arg or query_shape[-1]
        # Same sublayer names and kernel shapes as keras.layers.MultiHeadAttention.
        self.query_dense = self._dense("abc,cde->abde", (None, self.num_heads, self.key_dim), "de", "query")
        self.key_dense = self._dense("abc,cde->abde", (None, self.num_heads, self.key_dim), "de", "key")
        self.value_dense = self._dense("abc,cde->abde", (None, self.num_heads, v_dim), "de", "value")
        self.output_dense = self._dense("abcd,cde->abe", (None, out_dim), "e", "attention_output")
        self.query_dense.build((None, None, query_shape[-1]))
        self.key_dense.build((None, None, key_shape[-1]))
        self.value_dense.build((None, None, value_shape[-1]))
        self.output_dense.build((None, None, self.num_heads, v_dim))
        # `logit_scale` is either cosine's log-temperature or learned_scale's multiplier,
        # never both (`check_learned_scale`).
        if self.score == "cosine":
            # Swin V2: per-head learned log-temperature, init log(10), clamped at log(100).
            self.logit_scale = self.add_weight(
                name="logit_scale",
                shape=(self.num_heads, 1, 1),
                initializer=keras.initializers.Constant(math.log(10.0)),
            )
        elif self.learned_scale:
            # LSA learns one temperature for all heads; one per head generalises it.
            initial = 1.0 / math.sqrt(self.key_dim) if self.score == "scaled_dot" else 1.0
            self.logit_scale = self.add_weight(
                name="logit_scale",
                shape=(self.num_heads, 1, 1),
                initializer=keras.initializers.Constant(initial),
            )
        if self.score == "additive":
            self.additive_weight = self.add_weight(
                name="additive_weight",
                shape=(self.num_heads, self.key_dim),
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
            )
        if self.use_relative_position_bias:
            span = self._max_distance()
            self.relative_position_bias = self.add_weight(
                name="relative_position_bias",
                shape=(2 * span + 1, self.num_heads),
                initializer="zeros",
            )

    def _max_distance(self):
        return self.max_relative_position if self.max_relative_position is not None else self.window_size

    def _flatten_positions(self, x, name):
        if len(x.shape) < 3:
            raise ValueError(
                f"`{name}` must have rank >= 3 (batch, *positions, features); got shape {x.shape}."
            )
        if len(x.shape) == 3:
            return x
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], -1, shape[-1]))

    def _position_terms(self, q_len, k_len):
        """Position mask (q, k) (window, self-exclusion) and relative-position bias
        (1, heads, q, k); either may be None."""
        rel = ops.arange(k_len, dtype="int32")[None, :] - ops.arange(q_len, dtype="int32")[:, None]
        mask = None if self.window_size is None else ops.less_equal(ops.abs(rel), self.window_size)
        if self.exclude_self:
            mask = merge_masks(mask, ops.logical_not(window_mask(q_len, k_len, 0)))
        bias = None
        if self.use_relative_position_bias:
            span = self._max_distance()
            idx = ops.clip(rel, -span, span) + span
            bias = ops.take(self.relative_position_bias, idx, axis=0)  # (q, k, heads)
            bias = ops.transpose(bias, (2, 0, 1))[None]
        return mask, bias

    def _can_fuse_projections(self):
        return all(
            not getattr(d, "lora_enabled", False) and getattr(d, "quantization_mode", None) is None
            for d in (self.query_dense, self.key_dense, self.value_dense)
        )

    def _fused_projection(self, x, denses):
        """`x` through several of the q/k/v projections as one matmul.

        The kernels are laid side by side, so the weights (and their format) stay those of
        the separate projections; the forward and backward passes run one GEMM instead of
        one per projection. Returns one `(batch, T, heads, size)` tensor per dense.
        """
        kernel = ops.concatenate([ops.reshape(d.kernel, (d.kernel.shape[0], -1)) for d in denses], -1)
        y = ops.matmul(x, ops.cast(kernel, x.dtype))  # (batch, T, heads * sum of sizes)
        if self.use_bias:
            bias = ops.concatenate([ops.reshape(d.bias, (-1,)) for d in denses], 0)
            y = y + ops.cast(bias, y.dtype)
        sizes = [d.kernel.shape[-1] for d in denses]
        splits = list(itertools.accumulate(self.num_heads * size for size in sizes))[:-1]
        length = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
        return tuple(
            ops.reshape(t, (-1, length, self.num_heads, size))
            for t, size in zip(ops.split(y, splits, axis=-1), sizes)
        )

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        if key is None:
            key = value
        out_positions = ops.shape(query)[:-1]
        query = self._flatten_positions(query, "query")
        value = self._flatten_positions(value, "value")
        key = self._flatten_positions(key, "key")
        q_len, k_len = query.shape[1], key.shape[1]
        if q_len is not None and k_len is not None and q_len > k_len:
            for name, used in (
                ("window_size", self.window_size is not None),
                ("exclude_self", self.exclude_self),
            ):
                if used:
                    raise ValueError(
                        f"`{name}` needs self-attention: query position i is key position i, "
                        "so the query can be no longer than the key (a shorter query is the "
                        f"leading positions); got query length {q_len} and key length {k_len}."
                    )

        mask = _token_masks(query_mask, value_mask, key_mask)
        if attention_mask is not None and len(attention_mask.shape) not in (2, 3, 4):
            raise ValueError(
                "`attention_mask` must have shape (batch, T, S), (T, S) or (batch, heads, T, S); "
                f"got shape {attention_mask.shape}."
            )
        if attention_mask is not None and len(attention_mask.shape) == 4:
            attention_mask = ops.cast(attention_mask, "bool")
            mask = attention_mask if mask is None else ops.logical_and(mask[:, None], attention_mask)
        else:
            mask = merge_masks(mask, attention_mask)

        position_mask, bias = self._position_terms(ops.shape(query)[1], ops.shape(key)[1])
        mask = merge_masks(mask, position_mask)

        fuse = self._can_fuse_projections()
        if query is value and key is value and fuse:
            q, k, v = self._fused_projection(query, (self.query_dense, self.key_dense, self.value_dense))
        elif key is value and fuse:
            # E.g. queries that are a leading slice of the tokens (a class token).
            q = self.query_dense(query)
            k, v = self._fused_projection(value, (self.key_dense, self.value_dense))
        else:
            q = self.query_dense(query)  # (batch, T, heads, key_dim)
            k = self.key_dense(key)  # (batch, S, heads, key_dim)
            v = self.value_dense(value)  # (batch, S, heads, value_dim)
        scale = None
        if self.score == "cosine":
            scale = ops.exp(ops.minimum(self.logit_scale, math.log(100.0)))[None]
        elif self.learned_scale:
            scale = ops.convert_to_tensor(self.logit_scale)[None]  # (1, heads, 1, 1)
        out = dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            score=self.score,
            scale=scale,
            bias=bias,
            additive_weight=getattr(self, "additive_weight", None),
            is_causal=use_causal_mask,
            dropout_rate=self.dropout,
            training=training,
            seed_generator=self.seed_generator,
            return_weights=return_attention_scores,
            use_fused=self.use_fused,
        )
        if return_attention_scores:
            out, weights = out
        out = self.output_dense(out)  # (batch, T, output_dim)
        if len(out_positions) > 2:
            out = ops.reshape(out, tuple(out_positions) + (out.shape[-1],))
        if return_attention_scores:
            return out, weights
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "output_shape": self.output_shape_arg,
                "attention_axes": self.attention_axes,
                "score": self.score,
                "window_size": self.window_size,
                "use_relative_position_bias": self.use_relative_position_bias,
                "max_relative_position": self.max_relative_position,
                "learned_scale": self.learned_scale,
                "exclude_self": self.exclude_self,
                "use_fused": self.use_fused,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
                "seed": self.seed,
            }
        )
        return config


def _token_masks(query_mask, value_mask, key_mask):
    """(batch, T) / (batch, S) token masks -> (batch, T, S), (batch, 1, S) or None."""
    mask = None
    if query_mask is not None:
        mask = ops.expand_dims(ops.cast(query_mask, "bool"), -1)
    for m in (value_mask, key_mask):
        if m is not None:
            m = ops.expand_dims(ops.cast(m, "bool"), -2)
            mask = m if mask is None else ops.logical_and(mask, m)
    return mask
