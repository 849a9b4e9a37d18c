"""TransformerEncoderBlock / TransformerDecoderBlock: float64 reference, invariants, contract, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tests.reference import ref_layer_norm, ref_mha, ref_mlp
from tfattn.layers.transformer import TransformerDecoderBlock, TransformerEncoderBlock

RNG = np.random.default_rng(0)
B, T, S, D, HEADS = 3, 6, 5, 8, 2


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def _lengths_mask(lengths, length):
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def _randomize_weights(layer, scale=0.5):
    """Non-trivial weights everywhere (LayerNorm gamma/beta included), so the reference test bites."""
    for w in layer.weights:
        w.assign(
            RNG.normal(size=w.shape).astype("float32") * scale + (1.0 if "gamma" in w.path else 0.0)
        )


def _ref_residual(block, x, branch_fn, norm, layer_scale):
    if block.norm_first:
        h = branch_fn(ref_layer_norm(norm, x))
    else:
        h = branch_fn(x)
    if layer_scale is not None:
        h = h * _np(layer_scale.gamma)
    return x + h if block.norm_first else ref_layer_norm(norm, x + h)


def ref_encoder(block, x, padding_mask):
    mask = padding_mask[:, :, None] & padding_mask[:, None, :]
    x = _ref_residual(
        block,
        np.asarray(x, np.float64),
        lambda h: ref_mha(block.self_attention, h, h, mask)[0],
        block.self_attention_norm,
        block.self_attention_layer_scale,
    )
    return _ref_residual(
        block, x, lambda h: ref_mlp(block.mlp, h), block.mlp_norm, block.mlp_layer_scale
    )


def ref_decoder(block, x, memory, decoder_mask, memory_mask):
    causal = np.tril(np.ones((x.shape[1], x.shape[1]), bool))
    self_mask = decoder_mask[:, :, None] & decoder_mask[:, None, :] & causal
    cross_mask = decoder_mask[:, :, None] & memory_mask[:, None, :]
    x = _ref_residual(
        block,
        np.asarray(x, np.float64),
        lambda h: ref_mha(block.self_attention, h, h, self_mask)[0],
        block.self_attention_norm,
        block.self_attention_layer_scale,
    )
    x = _ref_residual(
        block,
        x,
        lambda h: ref_mha(block.cross_attention, h, memory, cross_mask)[0],
        block.cross_attention_norm,
        block.cross_attention_layer_scale,
    )
    return _ref_residual(
        block, x, lambda h: ref_mlp(block.mlp, h), block.mlp_norm, block.mlp_layer_scale
    )


# --- Numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("layer_scale_init_value", [None, 0.5])
def test_encoder_matches_float64_reference(norm_first, layer_scale_init_value):
    x = _normal(B, T, D)
    padding_mask = _lengths_mask([T, 4, 1], T)
    block = TransformerEncoderBlock(
        HEADS, 16, norm_first=norm_first, layer_scale_init_value=layer_scale_init_value
    )
    block(x)
    _randomize_weights(block)
    out = _np(block(x, padding_mask=padding_mask))
    ref = ref_encoder(block, x, padding_mask)
    # Padded positions are not meaningful outputs, but they are well defined: compare all.
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_matches_float64_reference(norm_first):
    x, memory = _normal(B, T, D), _normal(B, S, 4)
    decoder_mask, memory_mask = _lengths_mask([T, 3, 5], T), _lengths_mask([S, 2, 4], S)
    block = TransformerDecoderBlock(HEADS, 16, norm_first=norm_first, layer_scale_init_value=0.5)
    block(x, memory)
    _randomize_weights(block)
    out = block(x, memory, decoder_padding_mask=decoder_mask, memory_padding_mask=memory_mask)
    ref = ref_decoder(block, x, memory, decoder_mask, memory_mask)
    np.testing.assert_allclose(_np(out), ref, atol=1e-4, rtol=1e-4)


# --- Invariants -----------------------------------------------------------------------------


def test_encoder_output_independent_of_batch_size():
    block = TransformerEncoderBlock(
        HEADS, 16, score="cosine", window_size=2, use_relative_position_bias=True
    )
    x = _normal(B, T, D)
    padding_mask = _lengths_mask([T, 4, 2], T)
    full = _np(block(x, padding_mask=padding_mask))
    for i in range(B):
        alone = _np(block(x[i : i + 1], padding_mask=padding_mask[i : i + 1]))
        np.testing.assert_allclose(alone[0], full[i], atol=1e-5)


def test_decoder_output_independent_of_batch_size():
    block = TransformerDecoderBlock(HEADS, 16)
    x, memory = _normal(B, T, D), _normal(B, S, D)
    memory_mask = _lengths_mask([S, 3, 1], S)
    full = _np(block(x, memory, memory_padding_mask=memory_mask))
    for i in range(B):
        alone = _np(
            block(x[i : i + 1], memory[i : i + 1], memory_padding_mask=memory_mask[i : i + 1])
        )
        np.testing.assert_allclose(alone[0], full[i], atol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_padded_tokens_do_not_change_valid_outputs(norm_first):
    block = TransformerEncoderBlock(HEADS, 16, norm_first=norm_first)
    lengths = [T, 4, 2]
    padding_mask = _lengths_mask(lengths, T)
    x = _normal(B, T, D)
    x2 = np.where(padding_mask[..., None], x, 100.0 * _normal(B, T, D))
    a, b = _np(block(x, padding_mask=padding_mask)), _np(block(x2, padding_mask=padding_mask))
    np.testing.assert_allclose(a[padding_mask], b[padding_mask], atol=1e-5)
    # Without the mask the padded tokens do leak into the valid outputs.
    assert not np.allclose(_np(block(x))[padding_mask], _np(block(x2))[padding_mask], atol=1e-3)


def test_encoder_reads_keras_mask_from_embedding():
    tokens = np.array([[3, 4, 5, 1, 0, 0], [1, 2, 0, 0, 0, 0]])
    embedded = keras.layers.Embedding(10, D, mask_zero=True)(tokens)  # carries a Keras mask
    block = TransformerEncoderBlock(HEADS, 16)
    _, w_keras = block(embedded, return_attention_scores=True)
    plain = ops.convert_to_tensor(_np(embedded))  # same values, no mask attached
    _, w_explicit = block(plain, padding_mask=tokens != 0, return_attention_scores=True)
    np.testing.assert_allclose(_np(w_keras), _np(w_explicit), atol=1e-6)
    assert np.all(_np(w_keras)[0, :, :, 4:] == 0) and np.all(_np(w_keras)[1, :, :, 2:] == 0)


def test_encoder_scores_rows_sum_to_one_and_masked_keys_get_zero():
    block = TransformerEncoderBlock(HEADS, 16)
    padding_mask = _lengths_mask([T, 4, 2], T)
    _, w = block(
        _normal(B, T, D),
        padding_mask=padding_mask,
        use_causal_mask=True,
        return_attention_scores=True,
    )
    w = _np(w)
    assert w.shape == (B, HEADS, T, T)
    allowed = (padding_mask[:, None, :, None] & padding_mask[:, None, None, :]) & np.tril(
        np.ones((T, T), bool)
    )
    allowed = np.broadcast_to(allowed, w.shape)
    assert np.all(w[~allowed] == 0.0)
    valid_rows = np.broadcast_to(padding_mask[:, None, :], w.shape[:-1])
    np.testing.assert_allclose(w.sum(-1)[valid_rows], 1.0, atol=1e-5)
    np.testing.assert_array_equal(w.sum(-1)[~valid_rows], 0.0)  # padded queries attend nowhere


def test_encoder_window_and_attention_mask():
    block = TransformerEncoderBlock(HEADS, 16, window_size=1)
    x = _normal(B, T, D)
    _, w = block(x, return_attention_scores=True)
    band = np.abs(np.arange(T)[None] - np.arange(T)[:, None]) <= 1
    assert np.all(_np(w)[..., ~band] == 0) and np.all(_np(w)[..., band] > 0)
    attention_mask = np.ones((B, T, T), bool)
    attention_mask[:, :, 0] = False
    _, w = block(x, attention_mask=attention_mask, return_attention_scores=True)
    assert np.all(_np(w)[..., 0] == 0)


def test_decoder_is_causal():
    block = TransformerDecoderBlock(HEADS, 16)
    x, memory = _normal(B, T, D), _normal(B, S, D)
    base, self_w, cross_w = block(x, memory, return_attention_scores=True)
    assert tuple(self_w.shape) == (B, HEADS, T, T) and tuple(cross_w.shape) == (B, HEADS, T, S)
    assert np.all(_np(self_w)[..., np.triu(np.ones((T, T), bool), 1)] == 0)
    for t in range(T):
        x2 = x.copy()
        x2[:, t] = 50.0 * _normal(B, D)  # change target token t
        out = _np(block(x2, memory))
        np.testing.assert_allclose(out[:, :t], _np(base)[:, :t], atol=1e-5)
        assert not np.allclose(out[:, t], _np(base)[:, t], atol=1e-3)
    # Without the causal mask the future does leak.
    assert not np.allclose(
        _np(block(x2, memory, use_causal_mask=False))[:, 0],
        _np(block(x, memory, use_causal_mask=False))[:, 0],
    )


def test_decoder_ignores_padded_memory_and_scores_are_normalised():
    block = TransformerDecoderBlock(HEADS, 16, norm_first=False)
    x, memory = _normal(B, T, D), _normal(B, S, D)
    memory_mask = _lengths_mask([S, 3, 1], S)
    memory2 = np.where(memory_mask[..., None], memory, 100.0 * _normal(B, S, D))
    a, _, cross_w = block(x, memory, memory_padding_mask=memory_mask, return_attention_scores=True)
    b = block(x, memory2, memory_padding_mask=memory_mask)
    np.testing.assert_allclose(_np(a), _np(b), atol=1e-5)
    cross_w = _np(cross_w)
    assert np.all(cross_w[np.broadcast_to(~memory_mask[:, None, None, :], cross_w.shape)] == 0)
    np.testing.assert_allclose(cross_w.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("cls", [TransformerEncoderBlock, TransformerDecoderBlock])
def test_dropout_and_drop_path_only_in_training(cls):
    x, memory = _normal(B, T, D), _normal(B, S, D)
    args = [x] if cls is TransformerEncoderBlock else [x, memory]
    noisy = cls(HEADS, 16, dropout_rate=0.3, attention_dropout_rate=0.3, drop_path_rate=0.5, seed=1)
    clean = cls(HEADS, 16)
    noisy(*args)
    clean(*args)
    clean.set_weights(noisy.get_weights())
    expected = _np(clean(*args))
    np.testing.assert_allclose(_np(noisy(*args, training=False)), expected, atol=1e-6)
    np.testing.assert_allclose(_np(noisy(*args)), expected, atol=1e-6)
    assert not np.allclose(_np(noisy(*args, training=True)), expected, atol=1e-3)


def test_drop_path_drops_whole_branches_per_sample():
    # Pre-norm, no dropout: a sample whose two branches are both dropped comes out unchanged.
    block = TransformerEncoderBlock(HEADS, 16, drop_path_rate=0.5, seed=3)
    x = _normal(16, T, D)
    untouched = 0
    for _ in range(4):
        out = _np(block(x, training=True))
        same = np.all(np.abs(out - x) < 1e-6, axis=(1, 2))
        untouched += same.sum()
        assert not same.all()
    # P(both dropped) = 0.25 per sample: expect ~16 of 64, the bounds are > 4 sigma wide.
    assert 4 <= untouched <= 30, untouched


def test_pre_norm_with_tiny_layer_scale_is_near_identity_and_post_norm_normalises():
    x = _normal(B, T, D)
    pre = TransformerEncoderBlock(HEADS, 16, layer_scale_init_value=1e-6)
    np.testing.assert_allclose(_np(pre(x)), x, atol=1e-4)
    post = TransformerEncoderBlock(HEADS, 16, norm_first=False)
    y = _np(post(x))  # ends in a LayerNorm with gamma=1, beta=0 at init
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1.0, atol=1e-3)


def test_encoder_locality_self_attention_reaches_the_attention_layer():
    block = TransformerEncoderBlock(HEADS, 16, learned_scale=True, exclude_self=True)
    _, w = block(_normal(B, T, D), return_attention_scores=True)
    w = _np(w)
    assert np.all(np.diagonal(w, axis1=-2, axis2=-1) == 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    initial = 1.0 / np.sqrt(D // HEADS)  # key_dim defaults to hidden_dim // num_heads
    np.testing.assert_allclose(_np(block.self_attention.logit_scale), initial, rtol=1e-6)
    default = TransformerEncoderBlock(HEADS, 16)
    default(_normal(B, T, D))
    assert not hasattr(default.self_attention, "logit_scale")


def test_key_dim_defaults_to_hidden_over_heads_and_can_differ():
    block = TransformerEncoderBlock(4, 16)
    block(_normal(B, T, D))
    assert tuple(block.self_attention.query_dense.kernel.shape) == (D, 4, 2)
    block = TransformerEncoderBlock(3, 16, key_dim=5)
    assert tuple(block(_normal(B, T, D)).shape) == (B, T, D)
    assert tuple(block.self_attention.query_dense.kernel.shape) == (D, 3, 5)


# --- Contract -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, call_kwargs",
    [
        (dict(num_heads=2, intermediate_dim=16), {}),
        (
            dict(
                num_heads=2,
                intermediate_dim=16,
                norm_first=False,
                layer_scale_init_value=0.1,
                dropout_rate=0.1,
                attention_dropout_rate=0.1,
                drop_path_rate=0.1,
                seed=0,
            ),
            {"return_attention_scores": True},
        ),
        (
            dict(
                num_heads=2,
                intermediate_dim=16,
                key_dim=3,
                score="cosine",
                window_size=2,
                use_relative_position_bias=True,
                activation="relu",
            ),
            {"use_causal_mask": True},
        ),
        (
            dict(num_heads=2, intermediate_dim=16, learned_scale=True, exclude_self=True),
            {"return_attention_scores": True},
        ),
        (  # T = 6 tokens: 2 prefix tokens + a 2x2 grid through the local MLP
            dict(num_heads=2, intermediate_dim=16, mlp_local_kernel_size=3, num_prefix_tokens=2),
            {},
        ),
    ],
)
def test_encoder_contract(kwargs, call_kwargs):
    check_layer_contract(
        TransformerEncoderBlock,
        kwargs,
        _normal(4, T, D),
        call_kwargs=call_kwargs,
        expected_output_shape=(4, T, D),
    )


def test_encoder_contract_with_padding_mask_input():
    mask = _lengths_mask([T, 4, 2, 1], T)
    check_layer_contract(
        TransformerEncoderBlock,
        dict(num_heads=2, intermediate_dim=16),
        [_normal(4, T, D), mask],
        expected_output_shape=(4, T, D),
    )


@pytest.mark.parametrize(
    "kwargs, call_kwargs",
    [
        (dict(num_heads=2, intermediate_dim=16), {}),
        (
            dict(
                num_heads=2,
                intermediate_dim=16,
                norm_first=False,
                layer_scale_init_value=0.1,
                dropout_rate=0.1,
                drop_path_rate=0.1,
                score="dot",
                seed=0,
            ),
            {"return_attention_scores": True},
        ),
    ],
)
def test_decoder_contract(kwargs, call_kwargs):
    check_layer_contract(
        TransformerDecoderBlock,
        kwargs,
        [_normal(4, T, D), _normal(4, S, 6)],
        call_kwargs=call_kwargs,
        expected_output_shape=(4, T, D),
    )


# --- Errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TransformerEncoderBlock, TransformerDecoderBlock])
def test_constructor_errors(cls):
    with pytest.raises(ValueError, match="`num_heads` must be a positive int"):
        cls(0, 16)
    with pytest.raises(ValueError, match="`intermediate_dim` must be a positive int"):
        cls(2, None)
    with pytest.raises(ValueError, match="`key_dim` must be a positive int or None"):
        cls(2, 16, key_dim=2.5)
    with pytest.raises(ValueError, match=r"`dropout_rate` must be in \[0, 1\)"):
        cls(2, 16, dropout_rate=1.0)
    with pytest.raises(ValueError, match=r"`attention_dropout_rate` must be in \[0, 1\)"):
        cls(2, 16, attention_dropout_rate=-0.1)
    with pytest.raises(ValueError, match=r"`drop_path_rate` must be in \[0, 1\)"):
        cls(2, 16, drop_path_rate=1.5)
    with pytest.raises(ValueError, match="`layer_scale_init_value` must be a positive float"):
        cls(2, 16, layer_scale_init_value=0.0)
    with pytest.raises(ValueError, match="Unknown attention `score`"):
        cls(2, 16, score="bilinear")


def test_encoder_build_and_call_errors():
    with pytest.raises(ValueError, match="max_relative_position"):
        TransformerEncoderBlock(2, 16, use_relative_position_bias=True)
    with pytest.raises(ValueError, match="`learned_scale=True` supports score 'scaled_dot' or 'dot'"):
        TransformerEncoderBlock(2, 16, score="cosine", learned_scale=True)
    with pytest.raises(
        ValueError, match="must be divisible by `num_heads`=3 when `key_dim` is None"
    ):
        TransformerEncoderBlock(3, 16)(_normal(B, T, D))
    with pytest.raises(
        ValueError, match=r"`inputs` must have shape \(batch, seq_len, hidden_dim\)"
    ):
        TransformerEncoderBlock(2, 16)(_normal(B, D))
    with pytest.raises(ValueError, match=r"`padding_mask` must have shape \(batch, seq_len\)"):
        TransformerEncoderBlock(2, 16)(_normal(B, T, D), padding_mask=np.ones((B, T, T), bool))


def test_decoder_build_and_call_errors():
    x = _normal(B, T, D)
    with pytest.raises(ValueError, match="must be divisible by `num_heads`=3"):
        TransformerDecoderBlock(3, 16)(x, x)
    with pytest.raises(ValueError, match=r"`memory` must have shape \(batch, seq_len, dim\)"):
        TransformerDecoderBlock(2, 16)(x, _normal(B, D))
    with pytest.raises(
        ValueError, match=r"`memory_padding_mask` must have shape \(batch, seq_len\)"
    ):
        TransformerDecoderBlock(2, 16)(x, x, memory_padding_mask=np.ones((B,), bool))
    with pytest.raises(
        ValueError, match=r"`decoder_padding_mask` must have shape \(batch, seq_len\)"
    ):
        TransformerDecoderBlock(2, 16)(x, x, decoder_padding_mask=np.ones((B, T, 1), bool))


# --- num_queries: only the leading tokens are updated -----------------------------------------


@pytest.mark.parametrize(
    "kwargs, call_kwargs",
    [
        ({}, {}),
        ({"norm_first": False}, {}),
        ({"learned_scale": True, "exclude_self": True, "layer_scale_init_value": 0.5}, {}),
        ({"window_size": 1, "use_relative_position_bias": True}, {}),
        ({}, {"padding_mask": _lengths_mask([T, 4, 2], T), "use_causal_mask": True}),
        ({}, {"attention_mask": RNG.random((B, T, T)) > 0.3}),
    ],
)
@pytest.mark.parametrize("num_queries", [1, 3, T])
def test_encoder_num_queries_equals_the_leading_rows_of_the_full_block(kwargs, call_kwargs, num_queries):
    block = TransformerEncoderBlock(HEADS, 16, **kwargs)
    x = _normal(B, T, D)
    block(x)  # build
    _randomize_weights(block)
    full, w_full = block(x, return_attention_scores=True, **call_kwargs)
    part, w_part = block(x, return_attention_scores=True, num_queries=num_queries, **call_kwargs)
    assert part.shape == (B, num_queries, D) and w_part.shape == (B, HEADS, num_queries, T)
    np.testing.assert_allclose(_np(part), _np(full)[:, :num_queries], atol=2e-5)
    np.testing.assert_allclose(_np(w_part), _np(w_full)[:, :, :num_queries], atol=1e-6)
    # Also symbolic (functional models) and without the scores.
    y = block(keras.Input((T, D)), num_queries=num_queries)
    assert tuple(y.shape) == (None, num_queries, D)


def test_encoder_num_queries_errors():
    block = TransformerEncoderBlock(HEADS, 16)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="`num_queries` must be a positive int or None"):
            block(_normal(B, T, D), num_queries=bad)
    embedded = keras.layers.Embedding(10, D, mask_zero=True)(np.array([[3, 4, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="`num_queries` with a Keras mask.*`padding_mask`"):
        block(embedded, num_queries=1)


# --- local MLP: depthwise convolution over the token grid inside the MLP ----------------------


def test_encoder_local_mlp_class_token_only_and_grid():
    x = _normal(B, 1 + 9, D)  # class token + 3x3 grid
    block = TransformerEncoderBlock(HEADS, 16, mlp_local_kernel_size=3, num_prefix_tokens=1)
    block(x)
    _randomize_weights(block)
    full = _np(block(x))
    np.testing.assert_allclose(_np(block(x, num_queries=1)), full[:, :1], atol=2e-5)
    # The grid matters: a 1x9 grid mixes other neighbours than 3x3.
    assert not np.allclose(_np(block(x, grid_size=(1, 9))), full, atol=1e-4)
    # Without the convolution (plain MLP) the outputs differ too: the kernel is used.
    plain = TransformerEncoderBlock(HEADS, 16)
    plain(x)
    plain.set_weights([_np(w) for w in block.weights if "local_kernel" not in w.path])
    assert not np.allclose(_np(plain(x)), full, atol=1e-4)
    with pytest.raises(ValueError, match="`num_queries`=2 with `mlp_local_kernel_size` must be <= "):
        block(x, num_queries=2)
    with pytest.raises(ValueError, match="`mlp_local_kernel_size` must be an odd positive int"):
        TransformerEncoderBlock(HEADS, 16, mlp_local_kernel_size=4)
