"""AttentionPooling: float64 reference, masking, merges, contract, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tests.reference import ref_layer_norm, ref_mha, ref_mlp
from tfattn.layers.pooling import AttentionPooling

RNG = np.random.default_rng(0)
B, T, D, HEADS = 3, 6, 8, 2


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def _lengths_mask(lengths, length):
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def _ref_pooling(layer, x, padding_mask):
    queries = np.broadcast_to(
        _np(layer.query_tokens)[None], (x.shape[0],) + tuple(layer.query_tokens.shape)
    )
    mask = np.broadcast_to(padding_mask[:, None, :], (x.shape[0], layer.num_queries, x.shape[1]))
    out, w = ref_mha(layer.attention, queries.astype(np.float64), np.asarray(x, np.float64), mask)
    if layer.mlp is not None:
        out = out + ref_mlp(layer.mlp, ref_layer_norm(layer.mlp_norm, out))
    return out, w  # (batch, num_queries, hidden), (batch, heads, num_queries, seq)


@pytest.mark.parametrize("intermediate_dim", [None, 16])
def test_matches_float64_reference(intermediate_dim):
    layer = AttentionPooling(HEADS, num_queries=3, intermediate_dim=intermediate_dim, merge="none")
    x = _normal(B, T, D)
    padding_mask = _lengths_mask([T, 4, 1], T)
    layer(x)
    for w in layer.weights:
        w.assign(
            RNG.normal(size=w.shape).astype("float32") * 0.5 + (1.0 if "gamma" in w.path else 0.0)
        )
    out, w = layer(x, padding_mask=padding_mask, return_attention_scores=True)
    ref_out, ref_w = _ref_pooling(layer, x, padding_mask)
    np.testing.assert_allclose(_np(w), ref_w, atol=1e-5)
    np.testing.assert_allclose(_np(out), ref_out, atol=1e-4, rtol=1e-4)


def test_merge_modes_agree():
    x = _normal(B, T, D)
    layers = {
        m: AttentionPooling(HEADS, num_queries=3, intermediate_dim=16, merge=m)
        for m in ("mean", "flatten", "none")
    }
    for layer in layers.values():
        layer(x)
    for layer in layers.values():
        layer.set_weights(layers["none"].get_weights())
    tokens = _np(layers["none"](x))
    assert tokens.shape == (B, 3, D)
    np.testing.assert_allclose(_np(layers["mean"](x)), tokens.mean(1), atol=1e-6)
    np.testing.assert_allclose(_np(layers["flatten"](x)), tokens.reshape(B, 3 * D), atol=1e-6)


def test_padded_tokens_are_ignored_and_scores_are_normalised():
    layer = AttentionPooling(HEADS, num_queries=2)
    padding_mask = _lengths_mask([T, 4, 1], T)
    x = _normal(B, T, D)
    x2 = np.where(padding_mask[..., None], x, 100.0 * _normal(B, T, D))
    a, w = layer(x, padding_mask=padding_mask, return_attention_scores=True)
    np.testing.assert_allclose(_np(layer(x2, padding_mask=padding_mask)), _np(a), atol=1e-5)
    assert not np.allclose(_np(layer(x2)), _np(layer(x)), atol=1e-3)
    w = _np(w)
    assert w.shape == (B, HEADS, 2, T)
    assert np.all(w[np.broadcast_to(~padding_mask[:, None, None, :], w.shape)] == 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_all_padded_sample_is_finite():
    layer = AttentionPooling(HEADS, intermediate_dim=16)
    out = _np(layer(_normal(B, T, D), padding_mask=_lengths_mask([T, 0, 2], T)))
    assert np.all(np.isfinite(out))


def test_reads_keras_mask_from_embedding():
    tokens = np.array([[3, 4, 5, 1, 0, 0], [1, 2, 0, 0, 0, 0]])
    embedded = keras.layers.Embedding(10, D, mask_zero=True)(tokens)
    layer = AttentionPooling(HEADS)
    out, w = layer(embedded, return_attention_scores=True)
    plain = ops.convert_to_tensor(_np(embedded))
    np.testing.assert_allclose(_np(out), _np(layer(plain, padding_mask=tokens != 0)), atol=1e-6)
    assert np.all(_np(w)[0, ..., 4:] == 0) and np.all(_np(w)[1, ..., 2:] == 0)


def test_output_independent_of_batch_size():
    layer = AttentionPooling(HEADS, num_queries=2, intermediate_dim=16)
    x = _normal(B, T, D)
    padding_mask = _lengths_mask([T, 3, 5], T)
    full = _np(layer(x, padding_mask=padding_mask))
    for i in range(B):
        alone = _np(layer(x[i : i + 1], padding_mask=padding_mask[i : i + 1]))
        np.testing.assert_allclose(alone[0], full[i], atol=1e-5)


def test_pools_image_feature_maps_over_all_positions():
    layer = AttentionPooling(HEADS, merge="none")
    x = _normal(B, 3, 4, D)
    out, w = layer(x, return_attention_scores=True)
    assert tuple(out.shape) == (B, 1, D) and tuple(w.shape) == (B, HEADS, 1, 12)
    np.testing.assert_allclose(_np(layer(x.reshape(B, 12, D))), _np(out), atol=1e-6)


def test_dropout_only_in_training():
    layer = AttentionPooling(
        HEADS, intermediate_dim=16, dropout_rate=0.3, attention_dropout_rate=0.3, seed=1
    )
    x = _normal(B, T, D)
    np.testing.assert_allclose(_np(layer(x)), _np(layer(x, training=False)), atol=1e-6)
    assert not np.allclose(_np(layer(x, training=True)), _np(layer(x)), atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, call_kwargs, x_shape, out_shape",
    [
        (dict(num_heads=2), {}, (4, T, D), (4, D)),
        (
            dict(
                num_heads=2,
                num_queries=3,
                key_dim=3,
                intermediate_dim=16,
                merge="flatten",
                dropout_rate=0.1,
                attention_dropout_rate=0.1,
                seed=0,
            ),
            {"return_attention_scores": True},
            (4, T, D),
            (4, 3 * D),
        ),
        (dict(num_heads=2, num_queries=2, merge="none"), {}, (4, 3, 2, D), (4, 2, D)),
    ],
)
def test_contract(kwargs, call_kwargs, x_shape, out_shape):
    check_layer_contract(
        AttentionPooling,
        kwargs,
        _normal(*x_shape),
        call_kwargs=call_kwargs,
        expected_output_shape=out_shape,
    )


def test_contract_with_padding_mask_input():
    check_layer_contract(
        AttentionPooling,
        dict(num_heads=2, intermediate_dim=8),
        [_normal(4, T, D), _lengths_mask([T, 4, 2, 1], T)],
        expected_output_shape=(4, D),
    )


def test_errors():
    with pytest.raises(ValueError, match="`num_heads` must be a positive int"):
        AttentionPooling(0)
    with pytest.raises(ValueError, match="`num_queries` must be a positive int"):
        AttentionPooling(2, num_queries=0)
    with pytest.raises(ValueError, match="`intermediate_dim` must be a positive int or None"):
        AttentionPooling(2, intermediate_dim=-1)
    with pytest.raises(ValueError, match="`merge` must be one of"):
        AttentionPooling(2, merge="sum")
    with pytest.raises(ValueError, match=r"`attention_dropout_rate` must be in \[0, 1\)"):
        AttentionPooling(2, attention_dropout_rate=1.0)
    with pytest.raises(
        ValueError, match="must be divisible by `num_heads`=3 when `key_dim` is None"
    ):
        AttentionPooling(3)(_normal(B, T, D))
    with pytest.raises(ValueError, match="`inputs` must have rank >= 3"):
        AttentionPooling(2)(_normal(B, D))
    with pytest.raises(ValueError, match=r"`padding_mask` must have shape \(batch, seq_len\)"):
        AttentionPooling(2)(_normal(B, T, D), padding_mask=np.ones((B, T, 1), bool))
