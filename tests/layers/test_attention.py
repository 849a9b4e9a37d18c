"""dot_product_attention and MultiHeadAttention: numerics, Keras equivalence, contract, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tests.reference import attention as ref_attention
from tfattn.layers import (
    MultiHeadAttention,
    causal_mask,
    dot_product_attention,
    merge_masks,
    padding_mask,
    window_mask,
)

RNG = np.random.default_rng(0)
B, TQ, TK, H, D = 2, 5, 7, 2, 4


def _qkv(tq=TQ, tk=TK, dv=D):
    q = RNG.normal(size=(B, tq, H, D)).astype("float32")
    k = RNG.normal(size=(B, tk, H, D)).astype("float32")
    v = RNG.normal(size=(B, tk, H, dv)).astype("float32")
    return q, k, v


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _masks(tq, tk):
    lengths = np.array([tk, tk - 3])
    pad = _np(padding_mask(lengths, tk))[:, None, :]  # (b, 1, tk)
    out = {"none": None, "padding": np.broadcast_to(pad, (B, tq, tk))}
    if tq == tk:
        out["causal"] = _np(causal_mask(tq))
        out["window"] = _np(window_mask(tq, tk, 1))
        out["causal+padding"] = _np(merge_masks(causal_mask(tq), pad))
    return out


@pytest.mark.parametrize("score", ["scaled_dot", "dot", "cosine", "additive"])
@pytest.mark.parametrize("self_attention", [True, False])
def test_matches_float64_reference(score, self_attention):
    tk = TQ if self_attention else TK
    q, k, v = _qkv(tk=tk)
    if self_attention:
        k = q.copy()
    additive_weight = RNG.normal(size=(H, D)).astype("float32") if score == "additive" else None
    scale = 3.0 if score == "cosine" else None
    for name, mask in _masks(TQ, tk).items():
        out, w = dot_product_attention(
            q, k, v, mask=mask, score=score, scale=scale, additive_weight=additive_weight,
            return_weights=True,
        )
        ref_out, ref_w = ref_attention(q, k, v, mask, score, scale=scale, additive_weight=additive_weight)
        np.testing.assert_allclose(_np(w), ref_w, atol=2e-5, err_msg=f"{score}/{name}")
        np.testing.assert_allclose(_np(out), ref_out, atol=2e-5, err_msg=f"{score}/{name}")
        w = _np(w)
        if mask is not None:
            m = np.broadcast_to(np.asarray(mask)[:, None] if mask.ndim == 3 else mask, w.shape)
            assert np.all(w[~m] == 0.0), "masked positions must get exactly zero weight"
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = _qkv()
    mask = np.ones((B, TQ, TK), bool)
    mask[0, 2] = False  # query 2 of sample 0 sees nothing
    for fused in (False, True):
        out, = (dot_product_attention(q, k, v, mask=mask, use_fused=fused),)
        out = _np(out)
        assert np.all(np.isfinite(out))
        np.testing.assert_array_equal(out[0, 2], 0.0)
    _, w = dot_product_attention(q, k, v, mask=mask, return_weights=True)
    np.testing.assert_array_equal(_np(w)[0, :, 2], 0.0)


def test_bias_and_tensor_scale_match_reference():
    q, k, v = _qkv()
    bias = RNG.normal(size=(1, H, TQ, TK)).astype("float32")
    out, w = dot_product_attention(q, k, v, bias=bias, return_weights=True)
    ref_out, ref_w = ref_attention(q, k, v, bias=bias)
    np.testing.assert_allclose(_np(w), ref_w, atol=2e-5)
    scale = np.array([0.5, 2.0], "float32").reshape(1, H, 1, 1)
    out, w = dot_product_attention(q, k, v, score="cosine", scale=scale, return_weights=True)
    _, ref_w = ref_attention(q, k, v, score="cosine", scale=scale)
    np.testing.assert_allclose(_np(w), ref_w, atol=2e-5)


@pytest.mark.parametrize("score", ["scaled_dot", "dot"])
def test_fused_path_equals_explicit_path(score):
    q, k, v = _qkv(tk=TQ)
    for mask in [None, _masks(TQ, TQ)["padding"], _masks(TQ, TQ)["window"]]:
        for causal in (False, True):
            bias = RNG.normal(size=(1, H, TQ, TQ)).astype("float32")
            a = dot_product_attention(q, q, v, mask=mask, score=score, bias=bias, is_causal=causal, use_fused=True)
            b = dot_product_attention(q, q, v, mask=mask, score=score, bias=bias, is_causal=causal, use_fused=False)
            np.testing.assert_allclose(_np(a), _np(b), atol=2e-5)


def test_fused_path_with_tensor_scale_equals_explicit_path():
    q, _, v = _qkv(tk=TQ)
    scales = {
        "per head": np.array([0.3, 2.0], "float32").reshape(1, H, 1, 1),
        "per batch and query": RNG.uniform(0.5, 2.0, size=(B, 1, TQ, 1)).astype("float32"),
        "scalar tensor": np.array(0.7, "float32"),
        # Varies along keys: cannot be folded into the query, takes the explicit path.
        "per key": RNG.uniform(0.5, 2.0, size=(1, 1, 1, TQ)).astype("float32"),
    }
    for name, scale in scales.items():
        for mask in [None, _masks(TQ, TQ)["padding"]]:
            for score in ("scaled_dot", "dot"):
                a = dot_product_attention(q, q, v, mask=mask, score=score, scale=scale, use_fused=True)
                b = dot_product_attention(q, q, v, mask=mask, score=score, scale=scale, use_fused=False)
                np.testing.assert_allclose(_np(a), _np(b), atol=2e-5, err_msg=f"{name}/{score}")
    # The explicit path against the float64 reference, one head at a time (scalar scales).
    _, w = dot_product_attention(q, q, v, scale=scales["per head"], return_weights=True)
    for h, head_scale in enumerate((0.3, 2.0)):
        sl = slice(h, h + 1)
        _, ref_w = ref_attention(q[:, :, sl], q[:, :, sl], v[:, :, sl], scale=head_scale)
        np.testing.assert_allclose(_np(w)[:, sl], ref_w, atol=2e-5)


def test_dropout_is_inverted_and_seeded():
    q, k, v = _qkv()
    v = np.ones_like(v)
    gen = keras.random.SeedGenerator(1)
    outs = [
        _np(dot_product_attention(q, k, v, dropout_rate=0.5, training=True, seed_generator=gen))
        for _ in range(200)
    ]
    # E[dropout(w)] = w, and sum_k w = 1, so the mean output is 1 (values are all ones).
    np.testing.assert_allclose(np.mean(outs), 1.0, atol=0.02)
    assert np.std(outs) > 0.1  # masks differ from call to call
    # Inference leaves the weights alone.
    np.testing.assert_allclose(
        _np(dot_product_attention(q, k, v, dropout_rate=0.5, training=False)), 1.0, atol=1e-5
    )


def test_function_argument_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="Unknown attention `score`"):
        dot_product_attention(q, k, v, score="bilinear")
    with pytest.raises(ValueError, match="rank 4"):
        dot_product_attention(q[..., 0, :], k, v)
    with pytest.raises(ValueError, match="same last dim"):
        dot_product_attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match="`mask` must have rank"):
        dot_product_attention(q, k, v, mask=np.ones((TK,), bool))
    with pytest.raises(ValueError, match="does not match the key length"):
        dot_product_attention(q, k, v, mask=np.ones((B, TQ, TK + 1), bool))
    with pytest.raises(ValueError, match="additive_weight"):
        dot_product_attention(q, k, v, score="additive")
    with pytest.raises(ValueError, match="seed_generator"):
        dot_product_attention(q, k, v, dropout_rate=0.1, training=True)


# --- MultiHeadAttention -------------------------------------------------------------------


def _copied_pair(num_heads=2, key_dim=4, **kwargs):
    x = RNG.normal(size=(3, 6, 8)).astype("float32")
    y = RNG.normal(size=(3, 9, 8)).astype("float32")
    keras_kwargs = dict(kwargs)
    if kwargs.get("value_dim", key_dim) != key_dim:
        # Keras 3.15's own fused path crashes on JAX when value_dim != key_dim; a tiny
        # dropout (inactive at inference) sends it down its explicit path instead.
        keras_kwargs["dropout"] = 1e-7
    km = keras.layers.MultiHeadAttention(num_heads, key_dim, **keras_kwargs)
    km(x, y)
    ours = MultiHeadAttention(num_heads, key_dim, **kwargs)
    ours(x, y)
    assert [w.shape for w in km.get_weights()] == [w.shape for w in ours.get_weights()]
    ours.set_weights(km.get_weights())
    return km, ours, x, y


@pytest.mark.parametrize("kwargs", [{}, {"value_dim": 3, "output_shape": 5}, {"use_bias": False}])
def test_equivalent_to_keras_mha_with_copied_weights(kwargs):
    km, ours, x, y = _copied_pair(**kwargs)
    amask = RNG.random((3, 6, 9)) > 0.3
    amask[:, :, 0] = True
    cases = [
        dict(query=x, value=y),
        dict(query=x, value=y, key=RNG.normal(size=y.shape).astype("float32")),
        dict(query=x, value=y, attention_mask=amask),
        dict(query=x, value=x, use_causal_mask=True),
        dict(query=x, value=x, use_causal_mask=True, attention_mask=amask[:, :, :6]),
        dict(query=x, value=y, value_mask=np.arange(9)[None].repeat(3, 0) < np.array([[9], [4], [1]])),
    ]
    for case in cases:
        a, wa = km(**case, return_attention_scores=True)
        b, wb = ours(**case, return_attention_scores=True)
        np.testing.assert_allclose(_np(a), _np(b), atol=1e-5, err_msg=str(case.keys()))
        np.testing.assert_allclose(_np(wa), _np(wb), atol=1e-6)
        # Without scores both layers may take their fused path.
        np.testing.assert_allclose(_np(km(**case)), _np(ours(**case)), atol=1e-5)


def test_keras_mask_from_embedding_is_used():
    tokens = np.array([[3, 4, 5, 0, 0], [1, 2, 0, 0, 0]])
    emb = keras.layers.Embedding(10, 8, mask_zero=True)
    x = emb(tokens)
    ours = MultiHeadAttention(2, 4)
    _, w = ours(x, x, return_attention_scores=True)
    w = _np(w)
    assert np.all(w[0, :, :3, 3:] == 0) and np.all(w[1, :, :2, 2:] == 0)


def test_output_independent_of_batch_size():
    layer = MultiHeadAttention(2, 4, score="cosine", window_size=2, use_relative_position_bias=True)
    x = RNG.normal(size=(4, 6, 8)).astype("float32")
    full = _np(layer(x, x))
    for i in range(4):
        np.testing.assert_allclose(_np(layer(x[i : i + 1], x[i : i + 1]))[0], full[i], atol=1e-5)


def test_window_and_relative_position_bias():
    x = RNG.normal(size=(2, 8, 8)).astype("float32")
    layer = MultiHeadAttention(2, 4, window_size=2, use_relative_position_bias=True)
    _, w = layer(x, x, return_attention_scores=True)
    w = _np(w)
    band = np.abs(np.arange(8)[None] - np.arange(8)[:, None]) <= 2
    assert np.all(w[..., ~band] == 0) and np.all(w[..., band] > 0)
    # Bias table rows map to distances j - i in [-2, 2]; a large bias on +1 dominates.
    table = np.zeros((5, 2), "float32")
    table[3] = 30.0
    layer.relative_position_bias.assign(table)
    _, w = layer(x, x, return_attention_scores=True)
    w = _np(w)
    np.testing.assert_allclose(np.diagonal(w, offset=1, axis1=-2, axis2=-1), 1.0, atol=1e-4)


def test_cosine_temperature_is_learned_and_clamped():
    x = RNG.normal(size=(2, 5, 8)).astype("float32")
    layer = MultiHeadAttention(2, 4, score="cosine")
    _, w1 = layer(x, x, return_attention_scores=True)
    layer.logit_scale.assign(np.full((2, 1, 1), 10.0, "float32"))  # e^10 > 100: clamped to 100
    _, w2 = layer(x, x, return_attention_scores=True)
    layer.logit_scale.assign(np.full((2, 1, 1), np.log(100.0), "float32"))
    _, w3 = layer(x, x, return_attention_scores=True)
    assert not np.allclose(_np(w1), _np(w2))
    np.testing.assert_allclose(_np(w2), _np(w3), atol=1e-6)


def test_image_shaped_inputs_attend_over_all_positions():
    x = RNG.normal(size=(2, 3, 4, 8)).astype("float32")
    layer = MultiHeadAttention(2, 4)
    y, w = layer(x, x, return_attention_scores=True)
    # Keras's score layout: (batch, heads, *query positions, *key positions).
    assert tuple(y.shape) == (2, 3, 4, 8) and tuple(w.shape) == (2, 2, 3, 4, 3, 4)
    flat, w_flat = layer(x.reshape(2, 12, 8), x.reshape(2, 12, 8), return_attention_scores=True)
    np.testing.assert_allclose(_np(y).reshape(2, 12, 8), _np(flat), atol=1e-6)
    np.testing.assert_allclose(_np(w).reshape(2, 2, 12, 12), _np(w_flat), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_heads=2, key_dim=4),
        dict(num_heads=2, key_dim=4, dropout=0.1, score="dot"),
        dict(num_heads=2, key_dim=4, score="cosine", window_size=2, use_relative_position_bias=True),
        dict(num_heads=1, key_dim=3, score="additive", value_dim=2, output_shape=6),
        dict(num_heads=2, key_dim=4, learned_scale=True, exclude_self=True),
        dict(num_heads=2, key_dim=4, score="dot", learned_scale=True, window_size=1),
    ],
)
def test_layer_contract(kwargs):
    x = RNG.normal(size=(4, 6, 8)).astype("float32")
    y = RNG.normal(size=(4, 6, 8)).astype("float32")
    out_dim = kwargs.get("output_shape", 8)
    check_layer_contract(
        MultiHeadAttention, kwargs, [x, y], call_kwargs={"return_attention_scores": True},
        expected_output_shape=(4, 6, out_dim),
    )


def test_layer_contract_causal():
    x = RNG.normal(size=(4, 6, 8)).astype("float32")
    check_layer_contract(
        MultiHeadAttention, dict(num_heads=2, key_dim=4), [x, x], call_kwargs={"use_causal_mask": True},
        mixed_precision=False, run_fit=False,
    )


def test_layer_contract_locality_self_attention_fused():
    x = RNG.normal(size=(4, 6, 8)).astype("float32")
    check_layer_contract(
        MultiHeadAttention,
        dict(num_heads=2, key_dim=4, learned_scale=True, exclude_self=True, use_fused=True),
        [x, x],
        expected_output_shape=(4, 6, 8),
    )


def test_mixed_precision_weights_stay_finite_and_close():
    x = RNG.normal(size=(2, 6, 8)).astype("float32")
    full = MultiHeadAttention(2, 4)
    half = MultiHeadAttention(2, 4, dtype="mixed_float16")
    full(x, x)
    half(x, x)
    half.set_weights(full.get_weights())
    a, wa = full(x, x, return_attention_scores=True)
    b, wb = half(x, x, return_attention_scores=True)
    assert keras.backend.standardize_dtype(b.dtype) == "float16"
    np.testing.assert_allclose(_np(b).astype("float32"), _np(a), atol=2e-2)
    np.testing.assert_allclose(_np(wb).astype("float32").sum(-1), 1.0, atol=1e-2)


def test_constructor_and_call_errors():
    with pytest.raises(ValueError, match="`num_heads` must be a positive int"):
        MultiHeadAttention(0, 4)
    with pytest.raises(ValueError, match="`key_dim` must be a positive int"):
        MultiHeadAttention(2, 4.5)
    with pytest.raises(ValueError, match="Unknown attention `score`"):
        MultiHeadAttention(2, 4, score="bilinear")
    with pytest.raises(ValueError, match="`attention_axes`=\\(0,\\) must name distinct position axes"):
        MultiHeadAttention(2, 4, attention_axes=0)(RNG.normal(size=(2, 5, 8)), RNG.normal(size=(2, 5, 8)))
    with pytest.raises(ValueError, match="`dropout` must be in"):
        MultiHeadAttention(2, 4, dropout=1.0)
    with pytest.raises(ValueError, match="max_relative_position"):
        MultiHeadAttention(2, 4, use_relative_position_bias=True)
    x = RNG.normal(size=(2, 5, 8)).astype("float32")
    y = RNG.normal(size=(2, 7, 8)).astype("float32")
    with pytest.raises(ValueError, match="`window_size` needs self-attention.*query length 7 and key length 5"):
        MultiHeadAttention(2, 4, window_size=2)(y, x)
    with pytest.raises(ValueError, match="does not match the key length"):
        MultiHeadAttention(2, 4)(x, y, attention_mask=np.ones((2, 5, 6), bool))
    with pytest.raises(ValueError, match="`attention_mask` must have shape"):
        MultiHeadAttention(2, 4)(x, y, attention_mask=np.ones((7,), bool))
    with pytest.raises(ValueError, match="rank >= 3"):
        MultiHeadAttention(2, 4)(x[:, 0], x[:, 0])
    for score in ("cosine", "additive"):
        with pytest.raises(
            ValueError,
            match=f"`learned_scale=True` supports score 'scaled_dot' or 'dot'; got score='{score}'",
        ):
            MultiHeadAttention(2, 4, score=score, learned_scale=True)
    with pytest.raises(ValueError, match="`exclude_self` needs self-attention"):
        MultiHeadAttention(2, 4, exclude_self=True)(y, x)


# --- Locality Self-Attention (learned_scale, exclude_self) ---------------------------------


def _copy_weights_by_name(src, dst):
    """Assigns each of `src`'s weights to the `dst` weight with the same path below the layer."""
    dst_weights = {w.path.split("/", 1)[1]: w for w in dst.weights}
    for w in src.weights:
        dst_weights[w.path.split("/", 1)[1]].assign(w)


@pytest.mark.parametrize("score, initial", [("scaled_dot", 0.5), ("dot", 1.0)])
def test_learned_scale_starts_at_the_fixed_scale(score, initial):
    x = RNG.normal(size=(3, 6, 8)).astype("float32")
    y = RNG.normal(size=(3, 9, 8)).astype("float32")
    fixed = MultiHeadAttention(2, 4, score=score, use_fused=False)
    learned = MultiHeadAttention(2, 4, score=score, learned_scale=True, use_fused=False)
    learned_fused = MultiHeadAttention(2, 4, score=score, learned_scale=True, use_fused=True)
    for layer in (fixed, learned, learned_fused):
        layer(x, y)
    assert not hasattr(fixed, "logit_scale")
    np.testing.assert_array_equal(_np(learned.logit_scale), np.full((2, 1, 1), initial, "float32"))
    _copy_weights_by_name(fixed, learned)
    _copy_weights_by_name(fixed, learned_fused)
    for case in [dict(query=x, value=y), dict(query=x, value=x, use_causal_mask=True)]:
        a, wa = fixed(**case, return_attention_scores=True)
        b, wb = learned(**case, return_attention_scores=True)
        np.testing.assert_allclose(_np(b), _np(a), atol=1e-5)
        np.testing.assert_allclose(_np(wb), _np(wa), atol=1e-6)
        np.testing.assert_allclose(_np(learned_fused(**case)), _np(a), atol=1e-5)


def test_learned_scale_multiplies_each_heads_logits():
    x = RNG.normal(size=(2, 5, 8)).astype("float32")
    layer = MultiHeadAttention(2, 4, learned_scale=True)
    layer(x, x)
    layer.logit_scale.assign(np.array([0.1, 3.0], "float32").reshape(2, 1, 1))
    _, w = layer(x, x, return_attention_scores=True)
    q = np.einsum("btd,dhk->bthk", x, _np(layer.query_dense.kernel)) + _np(layer.query_dense.bias)
    k = np.einsum("btd,dhk->bthk", x, _np(layer.key_dense.kernel)) + _np(layer.key_dense.bias)
    for h, head_scale in enumerate((0.1, 3.0)):
        sl = slice(h, h + 1)
        _, ref_w = ref_attention(q[:, :, sl], k[:, :, sl], k[:, :, sl], scale=head_scale)
        np.testing.assert_allclose(_np(w)[:, sl], ref_w, atol=1e-5)


@pytest.mark.parametrize("use_fused", [False, True])
def test_learned_scale_is_trained(use_fused):
    x = RNG.normal(size=(4, 6, 8)).astype("float32")
    target = RNG.normal(size=(4, 6, 8)).astype("float32")
    inputs = keras.Input((6, 8))
    layer = MultiHeadAttention(2, 4, learned_scale=True, exclude_self=True, use_fused=use_fused)
    model = keras.Model(inputs, layer(inputs, inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = _np(layer.logit_scale).copy()
    model.fit(x, target, epochs=1, batch_size=4, verbose=0)
    assert np.all(_np(layer.logit_scale) != before), "every head's scale gets a gradient"


def test_exclude_self_zeroes_the_diagonal_and_rows_stay_normalised():
    x = RNG.normal(size=(2, 6, 8)).astype("float32")
    value_mask = np.arange(6)[None] < np.array([[6], [4]])
    layer = MultiHeadAttention(2, 4, exclude_self=True)
    _, w = layer(x, x, value_mask=value_mask, return_attention_scores=True)
    w = _np(w)
    allowed = ~np.eye(6, dtype=bool)[None, None] & value_mask[:, None, None, :]
    allowed = np.broadcast_to(allowed, w.shape)
    assert np.all(np.diagonal(w, axis1=-2, axis2=-1) == 0.0)
    assert np.all(w[~allowed] == 0.0) and np.all(w[allowed] > 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    # Merged with a window: only the two neighbours remain.
    _, w = MultiHeadAttention(2, 4, exclude_self=True, window_size=1)(
        x, x, return_attention_scores=True
    )
    neighbours = np.abs(np.arange(6)[None] - np.arange(6)[:, None]) == 1
    w = _np(w)
    assert np.all(w[..., ~neighbours] == 0.0) and np.all(w[..., neighbours] > 0.0)


def test_exclude_self_equals_an_explicit_mask_on_every_path():
    x = RNG.normal(size=(3, 6, 8)).astype("float32")
    base = MultiHeadAttention(2, 4, use_fused=False)
    base(x, x)
    not_self = ~np.eye(6, dtype=bool)
    expected = _np(base(x, x, attention_mask=not_self, use_causal_mask=False))
    for use_fused in (False, True):
        layer = MultiHeadAttention(2, 4, exclude_self=True, use_fused=use_fused)
        layer(x, x)
        layer.set_weights(base.get_weights())
        np.testing.assert_allclose(_np(layer(x, x)), expected, atol=1e-5, err_msg=str(use_fused))
    # With the causal mask query 0 has no key left: a zero row, not NaN.
    layer = MultiHeadAttention(2, 4, exclude_self=True)
    _, w = layer(x, x, use_causal_mask=True, return_attention_scores=True)
    w = _np(w)
    assert np.all(np.isfinite(w)) and np.all(w[:, :, 0] == 0.0)
    np.testing.assert_allclose(w[:, :, 1:].sum(-1), 1.0, atol=1e-6)


def test_leading_query_slice_equals_the_leading_rows_of_self_attention():
    """A query that is the first positions of the keys (key = value: fused K/V projection)
    gives the first rows of full self-attention, position terms (LSA diagonal, window,
    relative bias) included."""
    x = RNG.normal(size=(2, 7, 8)).astype("float32")
    for kwargs in ({}, {"learned_scale": True, "exclude_self": True},
                   {"window_size": 2, "use_relative_position_bias": True}):
        mha = MultiHeadAttention(2, 4, **kwargs)
        full, w_full = mha(x, x, return_attention_scores=True)
        part, w_part = mha(x[:, :3], x, return_attention_scores=True)
        np.testing.assert_allclose(np.asarray(part), np.asarray(full)[:, :3], atol=1e-5)
        np.testing.assert_allclose(np.asarray(w_part), np.asarray(w_full)[:, :, :3], atol=1e-6)
