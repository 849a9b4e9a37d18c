"""AdditiveAttention: float64 reference, masks, a GRU encoder-decoder that fits, contract, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tests.reference import attention as ref_attention
from tfattn.layers.additive_attention import AdditiveAttention

RNG = np.random.default_rng(0)
B, TQ, TK, DQ, DV, UNITS = 3, 4, 6, 5, 7, 8


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def _lengths_mask(lengths, length):
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def _ref(layer, query, value, key=None, query_mask=None, value_mask=None):
    """Projects q/k in float64 and runs the single-head additive reference."""
    key = value if key is None else key
    q = np.asarray(query, np.float64) @ _np(layer.query_dense.kernel)
    if layer.use_bias:
        q = q + _np(layer.query_dense.bias)
    k = np.asarray(key, np.float64) @ _np(layer.key_dense.kernel)
    mask = np.ones((query.shape[0], query.shape[1], key.shape[1]), bool)
    if query_mask is not None:
        mask &= query_mask[:, :, None]
    if value_mask is not None:
        mask &= value_mask[:, None, :]
    with np.errstate(invalid="ignore"):  # fully masked rows: the reference maps NaN to 0
        out, w = ref_attention(
            q[:, :, None],
            k[:, :, None],
            np.asarray(value, np.float64)[:, :, None],
            mask,
            score="additive",
            additive_weight=_np(layer.additive_weight),
        )
    return out[:, :, 0], w[:, 0]


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("separate_key", [False, True])
def test_matches_float64_reference(use_bias, separate_key):
    query, value = _normal(B, TQ, DQ), _normal(B, TK, DV)
    key = _normal(B, TK, 3) if separate_key else None
    layer = AdditiveAttention(UNITS, use_bias=use_bias)
    layer(query, value, key)
    for w in layer.weights:
        w.assign(_normal(*w.shape))
    query_mask, value_mask = _lengths_mask([TQ, 2, 3], TQ), _lengths_mask([TK, 4, 1], TK)
    for masks in (
        {},
        {"value_mask": value_mask},
        {"query_mask": query_mask, "value_mask": value_mask},
    ):
        context, weights = layer(query, value, key, return_attention_scores=True, **masks)
        ref_context, ref_weights = _ref(layer, query, value, key, **masks)
        np.testing.assert_allclose(_np(weights), ref_weights, atol=1e-5, err_msg=str(list(masks)))
        np.testing.assert_allclose(_np(context), ref_context, atol=1e-5, err_msg=str(list(masks)))


def test_masks_rows_sum_to_one_and_padded_queries_get_zero_context():
    layer = AdditiveAttention(UNITS)
    query, value = _normal(B, TQ, DQ), _normal(B, TK, DV)
    query_mask, value_mask = _lengths_mask([TQ, 2, 3], TQ), _lengths_mask([TK, 4, 1], TK)
    context, w = layer(
        query, value, query_mask=query_mask, value_mask=value_mask, return_attention_scores=True
    )
    context, w = _np(context), _np(w)
    assert context.shape == (B, TQ, DV) and w.shape == (B, TQ, TK)
    assert np.all(w[np.broadcast_to(~value_mask[:, None, :], w.shape)] == 0)
    np.testing.assert_allclose(w.sum(-1)[query_mask], 1.0, atol=1e-5)
    assert np.all(w[~query_mask] == 0) and np.all(context[~query_mask] == 0)
    # Padded values do not change the context of anything.
    value2 = np.where(value_mask[..., None], value, 100.0 * _normal(B, TK, DV))
    np.testing.assert_allclose(
        _np(layer(query, value2, query_mask=query_mask, value_mask=value_mask)), context, atol=1e-5
    )


def test_reads_keras_masks_from_inputs():
    tokens = np.array([[3, 4, 5, 1, 0, 0], [1, 2, 0, 0, 0, 0]])
    value = keras.layers.Embedding(10, DV, mask_zero=True)(tokens)
    query = _normal(2, TQ, DQ)
    layer = AdditiveAttention(UNITS)
    _, w = layer(query, value, return_attention_scores=True)
    _, w_explicit = layer(
        query,
        ops.convert_to_tensor(_np(value)),
        value_mask=tokens != 0,
        return_attention_scores=True,
    )
    np.testing.assert_allclose(_np(w), _np(w_explicit), atol=1e-6)
    assert np.all(_np(w)[0, :, 4:] == 0) and np.all(_np(w)[1, :, 2:] == 0)


def test_output_independent_of_batch_size():
    layer = AdditiveAttention(UNITS)
    query, value = _normal(B, TQ, DQ), _normal(B, TK, DV)
    value_mask = _lengths_mask([TK, 4, 1], TK)
    full = _np(layer(query, value, value_mask=value_mask))
    for i in range(B):
        alone = _np(layer(query[i : i + 1], value[i : i + 1], value_mask=value_mask[i : i + 1]))
        np.testing.assert_allclose(alone[0], full[i], atol=1e-5)


def test_attention_dropout_only_in_training():
    layer = AdditiveAttention(UNITS, attention_dropout_rate=0.5, seed=2)
    query, value = _normal(B, TQ, DQ), _normal(B, TK, DV)
    clean = _np(layer(query, value))
    np.testing.assert_allclose(_np(layer(query, value, training=False)), clean, atol=1e-6)
    assert not np.allclose(_np(layer(query, value, training=True)), clean, atol=1e-3)


def test_gru_encoder_decoder_learns_to_reverse():
    """Reversal task. The decoder GRU gets no encoder state: attention is its only path to the source."""
    vocab, length, n = 8, 6, 512
    rng = np.random.default_rng(0)
    source = rng.integers(1, vocab, size=(n, length))
    target = source[:, ::-1]
    decoder_inputs = np.concatenate([np.zeros((n, 1), int), target[:, :-1]], axis=1)  # 0 = start

    source_in = keras.Input((length,), dtype="int32")
    target_in = keras.Input((length,), dtype="int32")
    encoder_outputs = keras.layers.GRU(32, return_sequences=True)(
        keras.layers.Embedding(vocab, 16)(source_in)
    )
    decoder_states = keras.layers.GRU(24, return_sequences=True)(
        keras.layers.Embedding(vocab, 16)(target_in)
    )
    context = AdditiveAttention(16)(decoder_states, encoder_outputs)  # (batch, length, 32)
    logits = keras.layers.Dense(vocab)(keras.layers.Concatenate()([decoder_states, context]))
    model = keras.Model([source_in, target_in], logits)
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit([source, decoder_inputs], target, epochs=10, batch_size=64, verbose=0)
    _, accuracy = model.evaluate([source, decoder_inputs], target, verbose=0)
    # Without attention the decoder cannot beat chance (1/7): target tokens are independent.
    assert accuracy > 0.8, accuracy


@pytest.mark.parametrize(
    "kwargs, n_inputs, call_kwargs",
    [
        (dict(key_dim=UNITS), 2, {}),
        (
            dict(key_dim=UNITS, use_bias=False, attention_dropout_rate=0.1, seed=0),
            2,
            {"return_attention_scores": True},
        ),
        (dict(key_dim=3), 3, {}),
    ],
)
def test_contract(kwargs, n_inputs, call_kwargs):
    inputs = [_normal(4, TQ, DQ), _normal(4, TK, DV), _normal(4, TK, 2)][:n_inputs]
    check_layer_contract(
        AdditiveAttention,
        kwargs,
        inputs,
        call_kwargs=call_kwargs,
        expected_output_shape=(4, TQ, DV),
    )


def test_errors():
    with pytest.raises(ValueError, match="`key_dim` must be a positive int"):
        AdditiveAttention(0)
    with pytest.raises(ValueError, match=r"`attention_dropout_rate` must be in \[0, 1\)"):
        AdditiveAttention(4, attention_dropout_rate=1.0)
    query, value = _normal(B, TQ, DQ), _normal(B, TK, DV)
    with pytest.raises(ValueError, match=r"`query` must have shape \(batch, length, dim\)"):
        AdditiveAttention(4)(query[:, 0], value)
    with pytest.raises(ValueError, match=r"`value_mask` must have shape \(batch, 6\)"):
        AdditiveAttention(4)(query, value, value_mask=np.ones((B, TQ, TK), bool))
    with pytest.raises(ValueError, match=r"`value_mask` must have shape \(batch, 6\)"):
        AdditiveAttention(4)(query, value, value_mask=np.ones((B, TK + 1), bool))
    with pytest.raises(ValueError, match=r"`query_mask` must have shape \(batch, 4\)"):
        AdditiveAttention(4)(query, value, query_mask=np.ones((B, TK), bool))
