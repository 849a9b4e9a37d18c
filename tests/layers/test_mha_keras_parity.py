"""tfattn MultiHeadAttention == keras.layers.MultiHeadAttention given the same weights.

Every Keras 3.15 option both layers support, on TensorFlow and JAX (the Makefile's JAX lane
runs tests/layers): attention_axes (positive and negative, 3-D to 5-D inputs), masks
(padding, causal, explicit, Keras masks), output_shape forms, use_gate, sliding_window,
dropout 0. Plus the constructor, shape and config contract of the Keras layer.
"""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tfattn.layers import MultiHeadAttention

RNG = np.random.default_rng(7)
ATOL = 1e-5


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def _copied_pair(query, value, key=None, num_heads=2, key_dim=4, merge_other_axes=False, **kwargs):
    """A Keras layer and a tfattn layer built on these inputs, with Keras's weights."""
    keras_kwargs = dict(kwargs)
    if kwargs.get("value_dim", key_dim) != key_dim:
        # Keras 3.15's own fused path crashes on JAX when value_dim != key_dim; a tiny
        # dropout (inactive at inference) sends it down its explicit path instead.
        keras_kwargs["dropout"] = 1e-7
    reference = keras.layers.MultiHeadAttention(num_heads, key_dim, **keras_kwargs)
    if merge_other_axes:
        reference = _MergedOtherAxes(reference)
    reference(query, value, key=key)
    ours = MultiHeadAttention(num_heads, key_dim, **kwargs)
    ours(query, value, key=key)
    keras_weights = reference.get_weights()
    assert [w.shape for w in keras_weights] == [w.shape for w in ours.get_weights()]
    ours.set_weights(keras_weights)
    return reference, ours


def _assert_same(reference, ours, rows_valid_only=False, **call):
    """Outputs and scores with `return_attention_scores`, and outputs without it (both
    layers may then take a fused path)."""
    a, wa = reference(**call, return_attention_scores=True)
    b, wb = ours(**call, return_attention_scores=True)
    wa, wb = _np(wa), _np(wb)
    assert wa.shape == wb.shape, (wa.shape, wb.shape)
    np.testing.assert_allclose(wb, wa, atol=1e-6)
    np.testing.assert_allclose(_np(b), _np(a), atol=ATOL)
    a, b = _np(reference(**call)), _np(ours(**call))
    if rows_valid_only:
        # Keras's fused kernel averages all values for a query row with no key left (its
        # explicit path and tfattn give zero attention); compare the other rows.
        valid = wb.sum(-1).min(1) > 0  # (batch, T): 3-D inputs
        a, b = a[valid], b[valid]
    np.testing.assert_allclose(b, a, atol=ATOL)


# --- 3-D inputs: every projection option x every mask ---------------------------------------

PROJECTION_OPTIONS = [
    {},
    {"value_dim": 3, "output_shape": 5},
    {"output_shape": (3, 2)},
    {"use_bias": False, "output_shape": [6]},
    {"use_gate": True},
    {"use_gate": True, "value_dim": 6, "output_shape": (2, 3)},
    {"sliding_window": 2},
    {"sliding_window": 3, "use_gate": True, "use_bias": False},
    {"attention_axes": (1,)},
    {"attention_axes": -2, "output_shape": 4},
]


@pytest.mark.parametrize("kwargs", PROJECTION_OPTIONS, ids=str)
def test_3d_inputs_match_keras(kwargs):
    x, y, z = _normal(3, 6, 8), _normal(3, 9, 8), _normal(3, 9, 5)
    reference, ours = _copied_pair(x, y, key=z, **kwargs)
    # Separate key: both layers project it with its own kernel (last dim 5).
    _assert_same(reference, ours, rows_valid_only=True, query=x, value=y, key=z)

    reference, ours = _copied_pair(x, y, **kwargs)
    amask = RNG.random((3, 6, 9)) > 0.3
    amask[:, :, 0] = True
    value_mask = np.arange(9)[None] < np.array([[9], [4], [1]])
    cases = {
        "cross": dict(query=x, value=y),
        "self": dict(query=x, value=x),
        "attention_mask (B, T, S)": dict(query=x, value=y, attention_mask=amask),
        "attention_mask (T, S)": dict(query=x, value=y, attention_mask=amask[0]),
        "attention_mask (B, 1, T, S)": dict(query=x, value=y, attention_mask=amask[:, None]),
        "padding (value_mask)": dict(query=x, value=y, value_mask=value_mask),
        "causal": dict(query=x, value=x, use_causal_mask=True),
        "causal cross": dict(query=x, value=y, use_causal_mask=True),
        "causal + attention_mask": dict(
            query=x, value=x, use_causal_mask=True, attention_mask=amask[:, :, :6]
        ),
        "causal + padding": dict(query=x, value=y, use_causal_mask=True, value_mask=value_mask),
    }
    for name, call in cases.items():
        try:
            _assert_same(reference, ours, rows_valid_only=True, **call)
        except AssertionError as e:
            raise AssertionError(f"case {name!r}: {e}") from None


@pytest.mark.parametrize(
    "kwargs", [{}, {"use_gate": True, "output_shape": (2, 4)}, {"sliding_window": 2}], ids=str
)
def test_keras_masks_match_keras(kwargs):
    """Masks that Keras attaches to the inputs (Embedding(mask_zero=True)) are used the same way."""
    tokens = np.array([[3, 4, 5, 0, 0], [1, 2, 6, 7, 0]])
    memory_tokens = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0]])
    embedding = keras.layers.Embedding(10, 8, mask_zero=True)
    reference, ours = _copied_pair(embedding(tokens), embedding(memory_tokens), **kwargs)

    def embedded(query_tokens, value_tokens, self_attention):
        # Fresh tensors for every call: Keras's layer deletes the masks of its inputs.
        query = embedding(query_tokens)
        return query, (query if self_attention else embedding(value_tokens))

    for query_tokens, value_tokens, self_attention in [
        (tokens, memory_tokens, False),
        (tokens, tokens, True),
        (memory_tokens, tokens, False),
    ]:
        valid = query_tokens != 0
        a, wa = reference(
            *embedded(query_tokens, value_tokens, self_attention), return_attention_scores=True
        )
        b, wb = ours(
            *embedded(query_tokens, value_tokens, self_attention), return_attention_scores=True
        )
        np.testing.assert_allclose(_np(wb), _np(wa), atol=1e-6)
        np.testing.assert_allclose(_np(b), _np(a), atol=ATOL)
        # Key padding is masked: no weight on padded keys.
        assert np.all(
            _np(wb)[
                ..., ~(value_tokens != 0)[:, None, None, :].repeat(len(valid[0]), 2).repeat(2, 1)
            ]
            == 0
        )
        # Without scores Keras may take its fused kernel, which gives query rows with no key
        # left (padded queries, windows over padding) an average of the values; compare the others.
        rows = _np(wb).sum(-1).min(1) > 0
        a = _np(reference(*embedded(query_tokens, value_tokens, self_attention)))
        b = ours(*embedded(query_tokens, value_tokens, self_attention))
        np.testing.assert_allclose(_np(b)[rows], a[rows], atol=ATOL)
        if len(b.shape) == 3:
            # The query mask propagates to the output: a mask-aware mean skips padded positions.
            pooled = _np(keras.layers.GlobalAveragePooling1D()(b))
            expected = (_np(b) * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
            np.testing.assert_allclose(pooled, expected, atol=1e-6)


# --- attention_axes on 4-D and 5-D inputs -----------------------------------------------------

AXES_CASES = [
    # (attention_axes, query shape, value shape)
    (None, (2, 3, 5, 8), (2, 2, 4, 8)),
    ((1, 2), (2, 3, 5, 8), (2, 2, 4, 8)),
    ((2, 1), (2, 3, 5, 8), (2, 2, 4, 8)),
    ((2,), (2, 3, 5, 8), (2, 3, 6, 8)),
    ((1,), (2, 4, 5, 8), (2, 6, 5, 8)),
    (-2, (2, 3, 5, 8), (2, 3, 6, 8)),
    ((-3,), (2, 4, 5, 8), (2, 6, 5, 8)),
    (None, (2, 2, 3, 4, 8), (2, 3, 2, 2, 8)),
    ((2, 3), (2, 3, 4, 5, 8), (2, 3, 2, 6, 8)),
    ((1, 3), (2, 3, 4, 5, 8), (2, 2, 4, 6, 8)),
    ((3, 1), (2, 3, 4, 5, 8), (2, 2, 4, 6, 8)),
    ((-2,), (2, 3, 4, 5, 8), (2, 3, 4, 6, 8)),
    ((-4, -2), (2, 3, 4, 5, 8), (2, 2, 4, 6, 8)),
]


def _keras_scores_shape(query_shape, value_shape, axes):
    """Keras's score layout: (batch, *other axes, heads, *query attention axes, *key attention axes)."""
    rank = len(query_shape)
    axes = (
        tuple(range(1, rank - 1)) if axes is None else ((axes,) if isinstance(axes, int) else axes)
    )
    axes = tuple(a + rank if a < 0 else a for a in axes)
    others = [a for a in range(1, rank - 1) if a not in axes]
    return (
        (query_shape[0],)
        + tuple(query_shape[a] for a in others)
        + (2,)
        + tuple(query_shape[a] for a in axes)
        + tuple(value_shape[a] for a in axes)
    )


class _MergedOtherAxes:
    """Calls a Keras layer built for `attention_axes=(-2,)` with axes 1 and 2 of 5-D inputs
    merged (the attention runs independently over them), and splits them again."""

    def __init__(self, layer):
        self.layer = layer

    def get_weights(self):
        return self.layer.get_weights()

    def __call__(self, query, value, key=None, attention_mask=None, return_attention_scores=False):
        b, d1, d2 = query.shape[:3]

        def merge(t):
            return None if t is None else np.reshape(t, (b, d1 * d2) + tuple(t.shape[3:]))

        if attention_mask is not None and attention_mask.ndim == 5:
            attention_mask = merge(attention_mask)
        out = self.layer(
            merge(query),
            merge(value),
            key=merge(key),
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
        )
        if not return_attention_scores:
            return np.reshape(_np(out), (b, d1, d2) + tuple(out.shape[2:]))
        out, scores = out
        return (
            np.reshape(_np(out), (b, d1, d2) + tuple(out.shape[2:])),
            np.reshape(_np(scores), (b, d1, d2) + tuple(scores.shape[2:])),
        )


@pytest.mark.parametrize("axes, query_shape, value_shape", AXES_CASES, ids=str)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"use_gate": True, "output_shape": (3, 2), "value_dim": 5}],
    ids=["plain", "gate"],
)
def test_attention_axes_match_keras(axes, query_shape, value_shape, kwargs):
    x, y = _normal(*query_shape), _normal(*value_shape)
    key = _normal(*value_shape[:-1], 6)
    # On TF, Keras's 6-D softmax (one attention axis of 5-D inputs) hits TF's rank-5
    # limit; the same Keras layer on 4-D inputs, the two other position axes merged, is
    # the reference there.
    merge = keras.backend.backend() == "tensorflow" and len(query_shape) == 5 and axes == (-2,)
    reference, ours = _copied_pair(
        x, y, key=key, attention_axes=axes, merge_other_axes=merge, **kwargs
    )
    scores_shape = _keras_scores_shape(query_shape, value_shape, axes)
    _, w = ours(x, y, key=key, return_attention_scores=True)
    assert tuple(w.shape) == scores_shape
    _assert_same(reference, ours, query=x, value=y, key=key)
    # Keras's attention_mask convention: broadcastable to the scores, missing axes are
    # inserted before the attention axes (so a mask without the heads axis works).
    n_axes = (
        len(query_shape) - 2 if axes is None else len(axes if isinstance(axes, tuple) else (axes,))
    )
    heads_axis = len(scores_shape) - 2 * n_axes - 1
    amask = RNG.random(scores_shape[:heads_axis] + scores_shape[heads_axis + 1 :]) > 0.3
    _assert_same(reference, ours, query=x, value=y, key=key, attention_mask=amask)
    # Only the attention axes: one mask for every batch element and other position.
    shared = amask[(0,) * (amask.ndim - 2 * n_axes)]
    _assert_same(reference, ours, query=x, value=y, key=key, attention_mask=shared)


@pytest.mark.parametrize("kwargs", [{}, {"sliding_window": 2}, {"use_gate": True}], ids=str)
def test_single_attention_axis_causal_and_window_match_keras(kwargs):
    """Keras builds the causal and sliding-window masks from axis 1; with attention over
    axis 1 of a 4-D input (frames of a video) both layers agree."""
    x, y = _normal(2, 5, 3, 8), _normal(2, 7, 3, 8)
    reference, ours = _copied_pair(x, y, attention_axes=(1,), **kwargs)
    _assert_same(reference, ours, query=x, value=x, use_causal_mask=True)
    _assert_same(reference, ours, query=x, value=y, use_causal_mask=True)
    _assert_same(reference, ours, query=x, value=y)


def test_keras_config_builds_an_equal_tfattn_layer():
    """A Keras MultiHeadAttention config (e.g. from a saved model) loads into tfattn."""
    x = _normal(2, 4, 3, 8)
    reference = keras.layers.MultiHeadAttention(
        2, 4, value_dim=3, output_shape=(2, 5), attention_axes=(1,), use_gate=True, sliding_window=2
    )
    reference(x, x)
    ours = MultiHeadAttention.from_config(reference.get_config())
    ours(x, x)
    ours.set_weights(reference.get_weights())
    _assert_same(reference, ours, query=x, value=x)


# --- shapes, constructor, config ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, shapes",
    [
        ({}, [(None, 5, 8), (None, 6, 4)]),
        ({"output_shape": 7}, [(3, 5, 8), (3, 6, 4), (3, 6, 2)]),
        ({"output_shape": (3, 2)}, [(None, 5, 8), (None, 6, 4)]),
        ({"attention_axes": (2,)}, [(None, 3, 5, 8), (None, 3, 6, 4)]),
        ({"attention_axes": (1, 3), "output_shape": [4, 2]}, [(2, 3, 4, 5, 8), (2, 6, 4, 7, 8)]),
    ],
    ids=str,
)
def test_compute_output_shape_matches_keras(kwargs, shapes):
    expected = keras.layers.MultiHeadAttention(2, 4, **kwargs).compute_output_shape(*shapes)
    assert MultiHeadAttention(2, 4, **kwargs).compute_output_shape(*shapes) == tuple(expected)
    assert MultiHeadAttention(2, 4, **kwargs).compute_output_shape(
        *shapes[:2], key_shape=shapes[-1]
    ) == tuple(expected)


def test_symbolic_shapes_equal_eager_shapes():
    x = _normal(2, 3, 5, 8)
    for kwargs in ({"attention_axes": (2,), "output_shape": (3, 2)}, {}, {"attention_axes": -3}):
        layer = MultiHeadAttention(2, 4, **kwargs)
        eager = layer(x, x, return_attention_scores=True)
        inputs = keras.Input(x.shape[1:])
        symbolic = MultiHeadAttention(2, 4, **kwargs)(inputs, inputs, return_attention_scores=True)
        for s, e in zip(symbolic, eager):
            assert tuple(s.shape)[1:] == tuple(e.shape)[1:], (kwargs, s.shape, e.shape)


def test_key_value_mismatch_errors_name_the_tensors():
    reference_error = "All dimensions of `value` and `key`, except the last one, must be equal"
    for q, v, k in [((2, 5, 8), (2, 6, 8), (2, 7, 8)), ((2, 3, 5, 8), (2, 3, 6, 8), (2, 4, 6, 8))]:
        for layer_cls in (keras.layers.MultiHeadAttention, MultiHeadAttention):
            with pytest.raises(ValueError, match=reference_error):
                layer_cls(2, 4)(_normal(*q), _normal(*v), key=_normal(*k))
            with pytest.raises(ValueError, match=reference_error):
                layer_cls(2, 4).compute_output_shape(q, v, k)
    with pytest.raises(ValueError, match=r"value shape \(2, 6, 8\) and key shape \(2, 7, 8\)"):
        MultiHeadAttention(2, 4)(_normal(2, 5, 8), _normal(2, 6, 8), key=_normal(2, 7, 8))


def test_last_dim_mismatch_after_build_names_the_tensor():
    layer = MultiHeadAttention(2, 4)
    layer(_normal(2, 5, 8), _normal(2, 6, 8))
    with pytest.raises(
        ValueError,
        match="`query` has last dim 6, but this layer was built for a `query` last dim of 8",
    ):
        layer(_normal(2, 5, 6), _normal(2, 6, 8))
    with pytest.raises(
        ValueError,
        match="`value` has last dim 4, but this layer was built for a `value` last dim of 8",
    ):
        layer(_normal(2, 3, 5, 8), _normal(2, 3, 6, 4))
    with pytest.raises(ValueError, match="`key` has last dim 3"):
        layer(_normal(2, 5, 8), _normal(2, 6, 8), key=_normal(2, 6, 3))
    with pytest.raises(ValueError, match="`query` and `value` must have the same batch size"):
        layer(_normal(2, 5, 8), _normal(3, 6, 8))


def test_attention_axes_errors():
    x4, y4 = _normal(2, 3, 5, 8), _normal(2, 4, 6, 8)
    for axes in (0, 3, -1, (1, 1), (-4,)):
        with pytest.raises(
            ValueError, match="must name distinct position axes.*rank-4 inputs, axes 1..2 or -3..-2"
        ):
            MultiHeadAttention(2, 4, attention_axes=axes)(x4, x4)
    for axes in ("x", (), (1.0,)):
        with pytest.raises(ValueError, match="`attention_axes` must be an int, list, or tuple"):
            MultiHeadAttention(2, 4, attention_axes=axes)
    with pytest.raises(
        ValueError, match=r"equal sizes on the position axes \(1,\) outside `attention_axes`=\(2,\)"
    ):
        MultiHeadAttention(2, 4, attention_axes=(2,))(x4, y4)
    with pytest.raises(ValueError, match="needs `query` and `value` of the same rank"):
        MultiHeadAttention(2, 4, attention_axes=(1,))(x4, _normal(2, 6, 8))
    with pytest.raises(ValueError, match="does not broadcast to the attention scores"):
        MultiHeadAttention(2, 4, attention_axes=(2,))(
            x4, x4, attention_mask=np.ones((2, 3, 4, 5), bool)
        )


def test_output_shape_validation_like_keras():
    for bad in (1.5, "ab", (3, 0), (None,), (2.0,), [3, -1]):
        with pytest.raises(ValueError, match="Invalid `output_shape`"):
            MultiHeadAttention(2, 4, output_shape=bad)
    x = _normal(2, 5, 8)
    for falsy in (None, 0, ()):  # Keras: project back to the query's last dim
        assert tuple(MultiHeadAttention(2, 4, output_shape=falsy)(x, x).shape) == (2, 5, 8)
    assert tuple(MultiHeadAttention(2, 4, output_shape=(3, 2))(x, x).shape) == (2, 5, 3, 2)
    assert tuple(MultiHeadAttention(2, 4, output_shape=np.int64(6))(x, x).shape) == (2, 5, 6)


def test_keras_properties_and_sublayers():
    layer = MultiHeadAttention(2, 4, use_gate=True)
    x = _normal(2, 5, 8)
    layer(x, x)
    assert (layer.num_heads, layer.key_dim, layer.value_dim, layer.dropout, layer.use_bias) == (
        2,
        4,
        4,
        0.0,
        True,
    )
    for name, shape in [
        ("query_dense", (8, 2, 4)),
        ("key_dense", (8, 2, 4)),
        ("value_dense", (8, 2, 4)),
        ("gate_dense", (8, 2, 4)),
        ("output_dense", (2, 4, 8)),
    ]:
        assert tuple(getattr(layer, name).kernel.shape) == shape, name
    # Gate in Keras's place: weights in the order query, key, gate, value, output.
    assert [w.path.split("/")[-2] for w in layer.weights[::2]] == [
        "query",
        "key",
        "gate",
        "value",
        "attention_output",
    ]


def test_sliding_window_is_window_size_plus_one():
    x = _normal(2, 9, 8)
    a = MultiHeadAttention(2, 4, sliding_window=3)
    b = MultiHeadAttention(2, 4, window_size=2)
    a(x, x)
    b(x, x)
    b.set_weights(a.get_weights())
    _, wa = a(x, x, return_attention_scores=True)
    _, wb = b(x, x, return_attention_scores=True)
    np.testing.assert_array_equal(_np(wa), _np(wb))
    band = np.abs(np.arange(9)[None] - np.arange(9)[:, None]) < 3
    assert np.all(_np(wa)[..., ~band] == 0) and np.all(_np(wa)[..., band] > 0)
    # The relative-position bias defaults to the window under either name.
    c = MultiHeadAttention(2, 4, sliding_window=3, use_relative_position_bias=True)
    c(x, x)
    assert tuple(c.relative_position_bias.shape) == (5, 2)
    with pytest.raises(ValueError, match="Pass one of `window_size`=2 and `sliding_window`=3"):
        MultiHeadAttention(2, 4, window_size=2, sliding_window=3)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="`sliding_window` must be None or a positive int"):
            MultiHeadAttention(2, 4, sliding_window=bad)


def test_flash_attention_is_use_fused():
    x = _normal(2, 6, 8)
    explicit = MultiHeadAttention(2, 4, flash_attention=False)
    fused = MultiHeadAttention(2, 4, flash_attention=True)
    explicit(x, x)
    fused(x, x)
    fused.set_weights(explicit.get_weights())
    assert (explicit._use_fused, fused._use_fused) == (False, True)
    np.testing.assert_allclose(
        _np(fused(x, x, use_causal_mask=True)), _np(explicit(x, x, use_causal_mask=True)), atol=ATOL
    )
    # Keras's rules for an explicit flash_attention=True.
    with pytest.raises(
        ValueError, match="Dropout is not supported when flash attention is enabled"
    ):
        MultiHeadAttention(2, 4, flash_attention=True, dropout=0.1)
    with pytest.raises(
        ValueError, match="Returning attention scores is not supported when flash attention"
    ):
        fused(x, x, return_attention_scores=True)
    with pytest.raises(ValueError, match="`flash_attention`=True and `use_fused`=False disagree"):
        MultiHeadAttention(2, 4, flash_attention=True, use_fused=False)
    # keras.config.disable_flash_attention() is followed when neither switch is given
    # (enabled, Keras's default, means "automatic", as use_fused=None).
    keras.config.disable_flash_attention()
    try:
        assert MultiHeadAttention(2, 4)._use_fused is False
        assert MultiHeadAttention(2, 4, use_fused=True)._use_fused is True
    finally:
        keras.config.enable_flash_attention()
    assert MultiHeadAttention(2, 4)._use_fused is None


@pytest.mark.parametrize(
    "kwargs, query_shape",
    [
        (dict(num_heads=2, key_dim=4, attention_axes=(2,), output_shape=(3, 2)), (4, 3, 5, 8)),
        (dict(num_heads=2, key_dim=4, use_gate=True, sliding_window=2), (4, 6, 8)),
        (dict(num_heads=2, key_dim=4, attention_axes=-3, use_gate=True, value_dim=3), (4, 3, 5, 8)),
        (dict(num_heads=2, key_dim=4, flash_attention=True), (4, 6, 8)),
    ],
    ids=str,
)
def test_layer_contract_with_keras_options(kwargs, query_shape):
    x = _normal(*query_shape)
    out_dims = kwargs.get("output_shape", (query_shape[-1],))
    check_layer_contract(
        MultiHeadAttention, kwargs, [x, x], expected_output_shape=query_shape[:-1] + tuple(out_dims)
    )
