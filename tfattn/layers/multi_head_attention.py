"""Multi-head attention, a drop-in for `keras.layers.MultiHeadAttention`."""

import math
import numbers

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
            f'got score={score!r} ("cosine" already learns its temperature, "additive" '
            "has no logit scale)."
        )


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _normalize_output_shape(output_shape):
    """Keras's rule: a falsy value projects back to the query's last dim; an int is a 1-tuple."""
    if output_shape is None or (_is_int(output_shape) and output_shape == 0):
        return None
    dims = (output_shape,) if _is_int(output_shape) else output_shape
    if not isinstance(dims, (list, tuple)) or not all(_is_int(d) and d > 0 for d in dims):
        raise ValueError(
            f"Invalid `output_shape`: {output_shape!r}. When specified, the `output_shape` "
            "should be of type tuple, list, or int, with positive int dims (the output shape "
            "besides the batch and position axes), e.g. 64 or (4, 16)."
        )
    return tuple(int(d) for d in dims) or None


def _normalize_attention_axes(attention_axes):
    if attention_axes is None:
        return None
    axes = (attention_axes,) if _is_int(attention_axes) else attention_axes
    if not isinstance(axes, (list, tuple)) or not axes or not all(_is_int(a) for a in axes):
        raise ValueError(
            "`attention_axes` must be an int, list, or tuple of ints (position axes of the "
            f"inputs), or None for all position axes; got attention_axes={attention_axes!r}."
        )
    return tuple(int(a) for a in axes)


def _same_dims(a, b):
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


class _Layout:
    """How `(batch, *positions, features)` inputs map to the `(batch', length, features)`
    sequences that the attention kernel runs on, and back.

    Position axes outside `attention_axes` fold into the batch; the attention axes, in the
    order given, flatten into one sequence axis. A softmax over the flattened axis is the
    joint softmax over the attention axes that Keras computes with a multi-axis softmax.
    """

    def __init__(self, rank, axes):
        self.rank = rank
        self.axes = axes
        self.others = tuple(a for a in range(1, rank - 1) if a not in axes)
        self.perm = (0,) + self.others + axes + (rank - 1,)
        # Rank 3 with its one position axis: the tensors are used as they are (fast path).
        self.trivial = rank == 3 and axes == (1,)

    def to_sequences(self, x):
        """`(batch, *positions, features)` -> `(batch * other dims, attention length, features)`."""
        if self.trivial:
            return x
        shape = ops.shape(x)
        if self.perm != tuple(range(self.rank)):
            x = ops.transpose(x, self.perm)
        length = math.prod(shape[a] for a in self.axes)
        return ops.reshape(x, (-1, length, shape[-1]))

    def mask_to_sequences(self, mask, x):
        """Token mask of `x`, `(batch, *positions)` or flattened `(batch, positions)`, ->
        `(batch', length)`."""
        if self.trivial:
            return mask
        shape = ops.shape(x)
        mask = ops.reshape(ops.cast(mask, "bool"), shape[:-1])
        if self.perm != tuple(range(self.rank)):
            mask = ops.transpose(mask, self.perm[:-1])
        return ops.reshape(mask, (-1, math.prod(shape[a] for a in self.axes)))

    def from_sequences(self, y, x_shape, tail):
        """`(batch', length, *tail)` -> `(batch, *positions, *tail)`, `x_shape` the input's shape."""
        if self.trivial:
            return y
        permuted = [x_shape[a] for a in self.perm[:-1]] + list(tail)
        y = ops.reshape(y, permuted)
        if self.perm != tuple(range(self.rank)):
            inverse = [self.perm.index(a) for a in range(self.rank - 1)]
            y = ops.transpose(y, inverse + list(range(self.rank - 1, self.rank - 1 + len(tail))))
        return y


@keras.saving.register_keras_serializable(package="tfattn")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention with a choice of scoring function and local windows.

    Drop-in for `keras.layers.MultiHeadAttention` (Keras 3.15): the same constructor
    arguments (in the same order), call arguments, sublayers (`query_dense`, `key_dense`,
    `value_dense`, `output_dense`, and `gate_dense` with `use_gate`) and kernel layout, so
    weights copy across with `set_weights`, and LoRA (`layer.query_dense.enable_lora(rank)`,
    keras-hub's `backbone.enable_lora(rank)`) and `model.quantize("int8")` work on it.
    Given the same weights it computes the same outputs and attention scores.

    Beyond Keras: scoring functions, banded (local) attention with an optional learned
    relative-position bias, Locality Self-Attention's learned temperature and diagonal
    masking, attention dropout that stays cheap under XLA, and a self-attention fast path
    that projects q, k and v with one matmul. Differences from Keras: an explicit
    `query_mask` argument is used (Keras only reads the query's Keras mask), a query row
    with no key to attend to gives a zero attention output on every path (Keras's fused
    path averages the values), and `flash_attention=True` calls
    `keras.ops.dot_product_attention` and lets the backend pick its kernel (Keras demands
    a flash kernel and raises where there is none, e.g. on TensorFlow or a CPU).

    Inputs are `(batch, *positions, features)`. With `attention_axes=None` attention runs
    over all position axes jointly; otherwise over the given axes jointly, independently for
    every index of the other position axes (axial attention, e.g. `attention_axes=(2,)` on
    `(batch, rows, cols, features)` attends along each row). Masks, the causal mask, windows
    and relative positions apply to the attention axes flattened in the order given.

    Args:
        num_heads: number of heads.
        key_dim: size of each head for query and key.
        value_dim: size of each head for value; defaults to `key_dim`.
        dropout: attention-weight dropout rate (Keras's name for it).
        use_bias: whether the projections use a bias.
        output_shape: output shape besides the batch and position axes: an int or a tuple
            (e.g. `(4, 16)`); defaults to the query's last dim.
        attention_axes: position axes to attend over (int or tuple; negative axes count
            from the end, -2 being the last position axis); None = all position axes.
        sliding_window: Keras's name for a local window: query i attends to keys j with
            |i - j| < sliding_window. The same mask as `window_size` (which is
            `sliding_window - 1`); pass one of the two. Unlike `window_size` it allows a
            query longer than the key, as Keras does (positions aligned at the start).
        flash_attention: Keras's name for `use_fused`; `True` also refuses dropout and
            returned scores, as Keras does. With both None,
            `keras.config.disable_flash_attention()` turns the fused path off.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in Keras.
        use_gate: gate the attention output of every head with a sigmoid projection of the
            query before the output projection (Qiu et al. 2025); adds sublayer `gate_dense`.
        seed: seed of the attention dropout.
        score: "scaled_dot" (default), "dot", "cosine" (learned per-head temperature,
            Swin V2, Liu et al. 2022) or "additive" (v^T tanh(Wq + Uk), Bahdanau et al. 2015).
        window_size: if set, query i attends only to keys j with |i - j| <= window_size
            (self-attention: query position i is key position i, so the query is the
            key sequence or a leading slice of it).
        use_relative_position_bias: add a learned per-head bias indexed by the clipped
            relative distance j - i (T5 / Swin style, 1-D).
        max_relative_position: clipping distance for that bias; defaults to the window.
        learned_scale: for "scaled_dot" and "dot", learn a per-head logit multiplier
            (weight `logit_scale`, initialised to 1/sqrt(key_dim) resp. 1) instead of the
            fixed one: LSA's learnable temperature (Lee et al. 2021).
        exclude_self: query i may not attend to key i (LSA's diagonal masking;
            self-attention, as for `window_size`).
        use_fused: route eligible calls to `keras.ops.dot_product_attention`;
            `None` = automatic (see `tfattn.layers.dot_product_attention`).

    Call arguments:
        query: `(batch, T, dim)` (or more position axes).
        value: `(batch, S, dim)` (or more position axes).
        key: optional `(batch, S, dim)`; defaults to `value`.
        query_mask, value_mask, key_mask: optional bool `(batch, T)` / `(batch, S)` (or
            `(batch, *positions)`); Keras masks attached to the inputs (e.g.
            `Embedding(mask_zero=True)`) are filled in by Keras, and the query mask
            propagates to the output.
        attention_mask: optional bool mask broadcastable to the attention scores, as in
            Keras: `(batch, T, S)`, `(T, S)` or `(batch, heads, T, S)` for 3-D inputs; in
            general missing axes are inserted before the attention axes. For a query and key
            of different ranks, over the flattened positions, as for 3-D inputs.
        return_attention_scores: also return the attention weights.
        training: enables attention dropout.
        use_causal_mask: mask out keys j > i.

    Returns:
        `(batch, *query positions, *output_shape)`, and, if requested, the attention
        weights `(batch, *other positions, heads, *query attention positions,
        *key attention positions)`: `(batch, heads, T, S)` for 3-D inputs, Keras's layout.
        A query and key of different ranks (e.g. pooling queries over an image) give
        `(batch, heads, T, S)` with each one's positions flattened.

    Example:
    >>> x = keras.random.normal((2, 16, 64))
    >>> mha = MultiHeadAttention(num_heads=4, key_dim=16, score="cosine", window_size=3)
    >>> y, w = mha(x, x, return_attention_scores=True)  # y: (2, 16, 64), w: (2, 4, 16, 16)
    >>> lsa = MultiHeadAttention(num_heads=4, key_dim=16, learned_scale=True, exclude_self=True)
    >>> video = keras.random.normal((2, 8, 49, 64))  # (batch, frames, patches, features)
    >>> y = MultiHeadAttention(4, 16, attention_axes=(1,))(video, video)  # over frames

    Reference: Vaswani et al. 2017, "Attention Is All You Need"; Lee, Lee & Song 2021,
    "Vision Transformer for Small-Size Datasets" (LSA); Qiu et al. 2025, "Gated Attention
    for Large Language Models" (`use_gate`).
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
        sliding_window=None,
        flash_attention=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_gate=False,
        seed=None,
        score="scaled_dot",
        window_size=None,
        use_relative_position_bias=False,
        max_relative_position=None,
        learned_scale=False,
        exclude_self=False,
        use_fused=None,
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
        check_score(score)
        check_learned_scale(learned_scale, score)
        if window_size is not None and (not isinstance(window_size, int) or window_size < 0):
            raise ValueError(
                f"`window_size` must be a non-negative int or None; got {window_size!r}."
            )
        if sliding_window is not None and (
            not isinstance(sliding_window, int) or sliding_window <= 0
        ):
            raise ValueError(
                f"`sliding_window` must be None or a positive int; got {sliding_window!r}."
            )
        if window_size is not None and sliding_window is not None:
            raise ValueError(
                f"Pass one of `window_size`={window_size} and `sliding_window`={sliding_window}: "
                "they are the same window (`window_size` = `sliding_window` - 1)."
            )
        if (
            use_relative_position_bias
            and max_relative_position is None
            and (window_size is None and sliding_window is None)
        ):
            raise ValueError(
                "`use_relative_position_bias=True` needs `max_relative_position` "
                "(or `window_size` / `sliding_window`, the window it defaults to)."
            )
        if flash_attention is not None and use_fused is not None and flash_attention != use_fused:
            raise ValueError(
                f"`flash_attention`={flash_attention} and `use_fused`={use_fused} disagree; "
                "they are the same switch (Keras's and tfattn's name), pass one."
            )
        if flash_attention and float(dropout) > 0.0:
            raise ValueError(
                "Dropout is not supported when flash attention is enabled "
                f"(`flash_attention=True`, `dropout`={dropout}): set `dropout=0.0`, or use "
                "`use_fused=True`, which keeps dropout and fuses only the calls without it."
            )
        self.supports_masking = True
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim or key_dim
        self.dropout = float(dropout)
        self.use_bias = use_bias
        self._output_dims = _normalize_output_shape(output_shape)
        # As given (an int stays an int), in plain Python types for the config.
        self.output_shape_arg = (
            int(output_shape) if _is_int(output_shape) and self._output_dims else self._output_dims
        )
        self.attention_axes = _normalize_attention_axes(attention_axes)
        self.sliding_window = sliding_window
        self.flash_attention = flash_attention
        self.use_gate = bool(use_gate)
        self.score = score
        self.window_size = window_size
        # One window mechanism under both names: |i - j| <= window.
        self._window = window_size if sliding_window is None else sliding_window - 1
        self.use_relative_position_bias = use_relative_position_bias
        self.max_relative_position = max_relative_position
        self.learned_scale = learned_scale
        self.exclude_self = exclude_self
        self.use_fused = use_fused
        fused = flash_attention if flash_attention is not None else use_fused
        if fused is None and keras.config.is_flash_attention_enabled() is False:
            fused = False
        self._use_fused = fused
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout > 0 else None

    def _dense(self, equation, output_shape, bias_axes, name, activation=None):
        # One initializer per sublayer, as Keras does: an initializer fixes its seed when it is
        # created, so a shared one gave query, key and value the same initial kernel.
        return keras.layers.EinsumDense(
            equation,
            output_shape=output_shape,
            activation=activation,
            bias_axes=bias_axes if self.use_bias else None,
            kernel_initializer=self.kernel_initializer.from_config(
                self.kernel_initializer.get_config()
            ),
            bias_initializer=self.bias_initializer.from_config(self.bias_initializer.get_config()),
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape=None, key_shape=None):
        query_shape = tuple(query_shape)
        value_shape = query_shape if value_shape is None else tuple(value_shape)
        key_shape = value_shape if key_shape is None else tuple(key_shape)
        self._check_shapes(query_shape, value_shape, key_shape)
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if shape[-1] is None:
                raise ValueError(
                    f"The last dim of `{name}` must be known to build the layer; got shape {shape}."
                )
        out_dims = self._output_dims or (query_shape[-1],)
        # Same sublayer names, creation order (so `set_weights` order) and kernel shapes as
        # keras.layers.MultiHeadAttention. Positions are flattened before the projections,
        # so the equations are those of 3-D inputs for every input rank.
        heads_q = (None, self.num_heads, self.key_dim)
        heads_v = (None, self.num_heads, self.value_dim)
        out_letters = "efghij"[: len(out_dims)]
        self.query_dense = self._dense("abc,cde->abde", heads_q, "de", "query")
        self.key_dense = self._dense("abc,cde->abde", heads_q, "de", "key")
        if self.use_gate:
            self.gate_dense = self._dense(
                "abc,cde->abde", heads_v, "de", "gate", activation="sigmoid"
            )
        self.value_dense = self._dense("abc,cde->abde", heads_v, "de", "value")
        self.output_dense = self._dense(
            f"abcd,cd{out_letters}->ab{out_letters}",
            (None,) + out_dims,
            out_letters,
            "attention_output",
        )
        self.query_dense.build((None, None, query_shape[-1]))
        self.key_dense.build((None, None, key_shape[-1]))
        if self.use_gate:
            self.gate_dense.build((None, None, query_shape[-1]))
        self.value_dense.build((None, None, value_shape[-1]))
        self.output_dense.build((None, None, self.num_heads, self.value_dim))
        self._input_dims = {
            "query": query_shape[-1],
            "value": value_shape[-1],
            "key": key_shape[-1],
        }
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
        return (
            self.max_relative_position if self.max_relative_position is not None else self._window
        )

    # --- shapes ---------------------------------------------------------------------------

    def _attention_axes_for(self, rank):
        """`attention_axes` as non-negative axes of rank-`rank` inputs (Keras's counting)."""
        positions = tuple(range(1, rank - 1))
        if self.attention_axes is None:
            return positions
        axes = tuple(a + rank if a < 0 else a for a in self.attention_axes)
        if not all(a in positions for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(
                f"`attention_axes`={self.attention_axes} must name distinct position axes of the "
                f"(batch, *positions, features) inputs: for rank-{rank} inputs, axes 1..{rank - 2} "
                f"or {-(rank - 1)}..-2 (axis 0 is the batch, axis -1 the features)."
            )
        return axes

    def _layouts(self, query_rank, key_rank):
        """Layouts of the query and of key/value. With `attention_axes=None` the query and
        the key may have different numbers of position axes (all of them are attended)."""
        query_layout = _Layout(query_rank, self._attention_axes_for(query_rank))
        if self.attention_axes is None:
            return query_layout, _Layout(key_rank, tuple(range(1, key_rank - 1)))
        return query_layout, query_layout

    def _check_shapes(self, query_shape, value_shape, key_shape):
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if len(shape) < 3:
                raise ValueError(
                    f"`{name}` must have rank >= 3 (batch, *positions, features); got shape {shape}."
                )
        if not _same_dims(value_shape[:-1], key_shape[:-1]):
            raise ValueError(
                "All dimensions of `value` and `key`, except the last one, must be equal; got "
                f"value shape {value_shape} and key shape {key_shape} (`key` defaults to `value`)."
            )
        if not _same_dims(query_shape[:1], value_shape[:1]):
            raise ValueError(
                f"`query` and `value` must have the same batch size; got query shape {query_shape} "
                f"and value shape {value_shape}."
            )
        query_layout, _ = self._layouts(len(query_shape), len(key_shape))
        if self.attention_axes is not None:
            if len(query_shape) != len(value_shape):
                raise ValueError(
                    f"`attention_axes`={self.attention_axes} needs `query` and `value` of the same "
                    f"rank; got query shape {query_shape} and value shape {value_shape}."
                )
            others = query_layout.others
            if not _same_dims([query_shape[a] for a in others], [value_shape[a] for a in others]):
                raise ValueError(
                    f"`query` and `value` must have equal sizes on the position axes {others} "
                    f"outside `attention_axes`={self.attention_axes}; got query shape "
                    f"{query_shape} and value shape {value_shape}."
                )
        if self.built:
            for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
                expected = self._input_dims[name]
                if shape[-1] is not None and shape[-1] != expected:
                    raise ValueError(
                        f"`{name}` has last dim {shape[-1]}, but this layer was built for a "
                        f"`{name}` last dim of {expected} (its `{name}` projection kernel is "
                        f"({expected}, heads, head size)); got query shape {query_shape}, value "
                        f"shape {value_shape} and key shape {key_shape}."
                    )

    def _flat_scores(self, query_rank, key_rank):
        """Whether scores and `attention_mask` use flattened positions `(batch, heads, T, S)`:
        3-D inputs, and query and key of different ranks (a tfattn extension Keras has no
        layout for); otherwise Keras's layout with one axis per position axis."""
        return query_rank == key_rank == 3 or query_rank != key_rank

    def _scores_shape(self, query_shape, key_shape):
        if self._flat_scores(len(query_shape), len(key_shape)):
            q_len, k_len = (
                None if None in shape[1:-1] else math.prod(shape[1:-1])
                for shape in (query_shape, key_shape)
            )
            return (query_shape[0], self.num_heads, q_len, k_len)
        query_layout, key_layout = self._layouts(len(query_shape), len(key_shape))
        return (
            (query_shape[0],)
            + tuple(query_shape[a] for a in query_layout.others)
            + (self.num_heads,)
            + tuple(query_shape[a] for a in query_layout.axes)
            + tuple(key_shape[a] for a in key_layout.axes)
        )

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        query_shape = tuple(query_shape)
        value_shape = tuple(value_shape)
        key_shape = value_shape if key_shape is None else tuple(key_shape)
        self._check_shapes(query_shape, value_shape, key_shape)
        return query_shape[:-1] + (self._output_dims or (query_shape[-1],))

    def compute_output_spec(
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
        key_shape = value.shape if key is None else key.shape
        out = keras.KerasTensor(
            self.compute_output_shape(query.shape, value.shape, key_shape), dtype=self.compute_dtype
        )
        if not return_attention_scores:
            return out
        scores = keras.KerasTensor(
            self._scores_shape(query.shape, key_shape), dtype=self.compute_dtype
        )
        return out, scores

    # --- call -----------------------------------------------------------------------------

    def _position_terms(self, q_len, k_len):
        """Position mask (q, k) (window, self-exclusion) and relative-position bias
        (1, heads, q, k); either may be None."""
        rel = ops.arange(k_len, dtype="int32")[None, :] - ops.arange(q_len, dtype="int32")[:, None]
        mask = None if self._window is None else ops.less_equal(ops.abs(rel), self._window)
        if self.exclude_self:
            mask = merge_masks(mask, ops.logical_not(window_mask(q_len, k_len, 0)))
        bias = None
        if self.use_relative_position_bias:
            span = self._max_distance()
            idx = ops.clip(rel, -span, span) + span
            bias = ops.take(self.relative_position_bias, idx, axis=0)  # (q, k, heads)
            bias = ops.transpose(bias, (2, 0, 1))[None]
        return mask, bias

    def _plain_projections(self, denses):
        return all(
            not getattr(d, "lora_enabled", False) and getattr(d, "quantization_mode", None) is None
            for d in denses
        )

    def _gemm_projection(self, x, dense):
        """`x (batch, T, d)` through one of the q/gate/k/v sublayers' kernels as a 2-D GEMM
        on the flattened `(batch * T, d)` input -> `(batch, T, heads, size)`, before any
        activation.

        One GEMM over the concatenated q/k/v kernels was slower on both backends: on JAX by
        ~2.5 ms at length 64 under XLA CPU (`benchmarks/attention_jax.py`), on TensorFlow
        by 1-5% with and without XLA at lengths 64 and 197 (forward + backward, 2 AMD EPYC
        cores, 2026-11-30: the concat of the kernels and the split of the output cost more
        than the larger GEMM saved).
        """
        length = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
        kernel = ops.reshape(dense.kernel, (dense.kernel.shape[0], -1))
        bias = ops.reshape(dense.bias, (-1,)) if self.use_bias else None
        y = _gemm(x, kernel, bias)  # (batch, T, heads * size)
        return ops.reshape(y, (-1, length, self.num_heads, dense.kernel.shape[-1]))

    def _output_projection(self, x):
        """`output_dense` on `(batch, T, heads, value_dim)`: a 2-D GEMM over the flattened
        heads when the sublayer is plain (no LoRA, not quantised), else the sublayer."""
        dense = self.output_dense
        if not self._plain_projections([dense]):
            return dense(x)
        out_dims = tuple(dense.kernel.shape[2:])
        kernel = ops.reshape(dense.kernel, (self.num_heads * self.value_dim, -1))
        bias = ops.reshape(dense.bias, (-1,)) if self.use_bias else None
        batch = ops.shape(x)[0]
        length = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
        y = _gemm(ops.reshape(x, (batch, length, self.num_heads * self.value_dim)), kernel, bias)
        return ops.reshape(y, (batch, length, *out_dims))

    def _project(self, query, key, value, self_attention, shared_key_value, masked):
        """q, k, v `(batch, T|S, heads, size)` and the gate `(batch, T, heads, value_dim)` or None.

        `masked`: the inputs may carry Keras masks. The sublayers do not support masking and
        would warn about them, so they get mask-free copies (the masks are already in the
        token masks; Keras's layer deletes them from the caller's tensors instead).
        """
        denses = [self.query_dense, self.key_dense, self.value_dense]
        denses += [self.gate_dense] if self.use_gate else []
        if self._plain_projections(denses):
            # A 2-D GEMM per projection (faster than the sublayers' 3-D einsums under XLA);
            # `call` already passes shared inputs as the same tensor.
            inputs = [query, key, value] + ([query] if self.use_gate else [])
            q, k, v, *gate = (self._gemm_projection(x, d) for x, d in zip(inputs, denses))
            # The GEMM skips gate_dense's sigmoid activation.
            return q, k, v, ops.sigmoid(gate[0]) if gate else None
        strip = _without_keras_mask if masked else (lambda x: x)
        query = strip(query)
        value = query if self_attention else strip(value)
        key = value if shared_key_value else strip(key)
        q = self.query_dense(query)  # (batch, T, heads, key_dim)
        k = self.key_dense(key)  # (batch, S, heads, key_dim)
        v = self.value_dense(value)  # (batch, S, heads, value_dim)
        return q, k, v, self.gate_dense(query) if self.use_gate else None

    def _sequence_attention_mask(self, attention_mask, query_layout, key_layout, query, key):
        """Keras's attention mask, broadcastable to the scores `(batch, *others, heads,
        *query axes, *key axes)` (missing axes are inserted before the attention axes), ->
        `(batch', heads|1, T', S')` on the flattened sequences."""
        attention_rank = len(query_layout.axes) + len(key_layout.axes)
        q_shape, k_shape = ops.shape(query), ops.shape(key)
        target = (
            [q_shape[0]]
            + [q_shape[a] for a in query_layout.others]
            + [self.num_heads]
            + [q_shape[a] for a in query_layout.axes]
            + [k_shape[a] for a in key_layout.axes]
        )
        static_target = self._scores_shape(tuple(query.shape), tuple(key.shape))
        rank = len(attention_mask.shape)
        if not attention_rank <= rank <= len(target):
            raise ValueError(
                f"`attention_mask` must broadcast to the attention scores {static_target} "
                "(batch, *other positions, heads, *query attention positions, *key attention "
                f"positions), with rank {attention_rank}..{len(target)}; got shape {attention_mask.shape}."
            )
        mask = ops.cast(attention_mask, "bool")
        for _ in range(len(target) - rank):
            mask = ops.expand_dims(mask, -attention_rank - 1)
        for got, want in zip(mask.shape, static_target):
            if got is not None and want is not None and got not in (1, want):
                raise ValueError(
                    f"`attention_mask` shape {attention_mask.shape} does not broadcast to the "
                    f"attention scores {static_target} (batch, *other positions, heads, *query "
                    "attention positions, *key attention positions)."
                )
        heads_axis = 1 + len(query_layout.others)
        heads = 1 if mask.shape[heads_axis] == 1 else self.num_heads
        target[heads_axis] = heads
        mask = ops.broadcast_to(mask, target)
        q_len = math.prod(target[heads_axis + 1 : heads_axis + 1 + len(query_layout.axes)])
        k_len = math.prod(target[heads_axis + 1 + len(query_layout.axes) :])
        return ops.reshape(mask, (-1, heads, q_len, k_len))

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
        if return_attention_scores and self.flash_attention:
            raise ValueError(
                "Returning attention scores is not supported when flash attention is enabled "
                "(`flash_attention=True`): use `flash_attention=None` or `use_fused=True`, which "
                "compute the scores explicitly when they are requested."
            )
        query_shape = tuple(query.shape)
        self._check_shapes(query_shape, tuple(value.shape), tuple(key.shape))
        query_layout, key_layout = self._layouts(len(query.shape), len(key.shape))
        # Identity decides which projections share an input; test it before any reshape.
        self_attention = query is value and key is value
        shared_key_value = key is value
        out_shape = ops.shape(query)
        query_in, key_in = query, key
        query = query_layout.to_sequences(query)
        key = query if self_attention else key_layout.to_sequences(key)
        value = key if shared_key_value else key_layout.to_sequences(value)
        has_masks = any(m is not None for m in (query_mask, value_mask, key_mask))
        if query_mask is not None:
            query_mask = query_layout.mask_to_sequences(query_mask, query_in)
        value_mask, key_mask = (
            None if m is None else key_layout.mask_to_sequences(m, key_in)
            for m in (value_mask, key_mask)
        )

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
        flat_scores = self._flat_scores(len(query_in.shape), len(key_in.shape))
        if attention_mask is not None and not flat_scores:
            attention_mask = self._sequence_attention_mask(
                attention_mask, query_layout, key_layout, query_in, key_in
            )
        if attention_mask is not None and len(attention_mask.shape) not in (2, 3, 4):
            raise ValueError(
                "`attention_mask` must have shape (batch, T, S), (T, S) or (batch, heads, T, S); "
                f"got shape {attention_mask.shape}."
            )
        if attention_mask is not None and len(attention_mask.shape) == 4:
            attention_mask = ops.cast(attention_mask, "bool")
            mask = (
                attention_mask if mask is None else ops.logical_and(mask[:, None], attention_mask)
            )
        else:
            mask = merge_masks(mask, attention_mask)

        position_mask, bias = self._position_terms(ops.shape(query)[1], ops.shape(key)[1])
        mask = merge_masks(mask, position_mask)

        q, k, v, gate = self._project(
            query,
            key,
            value,
            self_attention,
            shared_key_value,
            masked=query_layout.trivial and has_masks,
        )
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
            use_fused=self._use_fused,
        )
        if return_attention_scores:
            out, weights = out  # weights: (batch', heads, T', S')
        if gate is not None:
            out = out * gate  # (batch', T', heads, value_dim)
        out = self._output_projection(out)  # (batch', T', *output_shape)
        out = query_layout.from_sequences(out, out_shape, out.shape[2:])
        if not return_attention_scores:
            return out
        if not flat_scores:
            q_shape, k_shape = ops.shape(query_in), ops.shape(key_in)
            weights = ops.reshape(
                weights,
                [q_shape[0]]
                + [q_shape[a] for a in query_layout.others]
                + [self.num_heads]
                + [q_shape[a] for a in query_layout.axes]
                + [k_shape[a] for a in key_layout.axes],
            )
        return out, weights

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
                "sliding_window": self.sliding_window,
                "flash_attention": self.flash_attention,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
                "use_gate": self.use_gate,
                "seed": self.seed,
                "score": self.score,
                "window_size": self.window_size,
                "use_relative_position_bias": self.use_relative_position_bias,
                "max_relative_position": self.max_relative_position,
                "learned_scale": self.learned_scale,
                "exclude_self": self.exclude_self,
                "use_fused": self.use_fused,
            }
        )
        return config


def _gemm(x, kernel, bias=None):
    """`x (batch, T, d) @ kernel (d, n) + bias` as one 2-D matmul -> `(batch, T, n)`.

    XLA's CPU backend ran the 3-D matmul (a broadcast batch matmul) ~20% slower than the
    same product on `(batch * T, d)` (benchmarks/attention_jax.py, JAX 0.10, 2 cores).
    """
    batch = ops.shape(x)[0]
    length = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
    y = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), ops.cast(kernel, x.dtype))
    if bias is not None:
        y = y + ops.cast(bias, y.dtype)
    return ops.reshape(y, (batch, length, kernel.shape[-1]))


def _without_keras_mask(x):
    """A new tensor equal to `x`, without the Keras mask attached to `x` (free under jit)."""
    return x + ops.zeros((), x.dtype)


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
