"""ConformerConvModule / ConformerBlock / ConvSubsampling: float64 references, masking, contract."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tests.reference import ref_layer_norm
from tfattn.layers.conformer import ConformerBlock, ConformerConvModule, ConvSubsampling

RNG = np.random.default_rng(0)
B, T, D, HEADS, K = 3, 10, 8, 2, 5
LENGTHS = [T, 7, 3]


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def _lengths_mask(lengths, length):
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def _randomize_weights(layer, scale=0.5):
    """Non-trivial weights everywhere (norm gamma/beta, BatchNorm moving stats included)."""
    for w in layer.weights:
        value = RNG.normal(size=w.shape) * scale
        if "gamma" in w.path or "moving_variance" in w.path:
            value = np.abs(value) + 0.5
        w.assign(value.astype("float32"))


def _silu(x):
    return x / (1.0 + np.exp(-x))


def ref_conv_module(module, x, padding_mask):
    """`ConformerConvModule` in float64, the depthwise convolution as an explicit loop."""
    x = np.asarray(x, np.float64)
    h = x @ _np(module.pointwise_conv1.kernel) + _np(module.pointwise_conv1.bias)
    dim = x.shape[-1]
    h = h[..., :dim] / (1.0 + np.exp(-h[..., dim:]))  # GLU
    h = np.where(padding_mask[..., None], h, 0.0)
    kernel = _np(module.depthwise_conv.kernel)[:, :, 0]  # (k, dim)
    k, r = kernel.shape[0], kernel.shape[0] // 2
    conv = np.zeros_like(h)
    for t in range(h.shape[1]):
        for a in range(k):
            s = t + a - r  # "same" cross-correlation, zeros outside the sequence
            if 0 <= s < h.shape[1]:
                conv[:, t] += kernel[a] * h[:, s]
    h = conv + _np(module.depthwise_conv.bias)
    norm = module.conv_norm
    if module.norm == "layer_norm":
        h = ref_layer_norm(norm, h)
    else:  # inference: moving statistics
        h = (h - _np(norm.moving_mean)) / np.sqrt(_np(norm.moving_variance) + norm.epsilon)
        h = h * _np(norm.gamma) + _np(norm.beta)
    return _silu(h) @ _np(module.pointwise_conv2.kernel) + _np(module.pointwise_conv2.bias)


def ref_swish_mlp(mlp, x):
    h = _silu(x @ _np(mlp.fc1.kernel) + _np(mlp.fc1.bias))
    return h @ _np(mlp.fc2.kernel) + _np(mlp.fc2.bias)


# --- ConformerConvModule ------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["layer_norm", "batch_norm"])
def test_conv_module_matches_float64_reference(norm):
    x = _normal(B, T, D)
    padding_mask = _lengths_mask(LENGTHS, T)
    module = ConformerConvModule(kernel_size=K, norm=norm)
    module(x)
    _randomize_weights(module)
    out = _np(module(x, padding_mask=padding_mask))
    np.testing.assert_allclose(out, ref_conv_module(module, x, padding_mask), atol=1e-4, rtol=1e-4)
    # Without a mask every frame is real: the reference with an all-True mask.
    full = np.ones((B, T), bool)
    np.testing.assert_allclose(_np(module(x)), ref_conv_module(module, x, full), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm,training", [("layer_norm", False), ("batch_norm", False), ("batch_norm", True)])
def test_conv_module_padded_frames_do_not_reach_valid_outputs(norm, training):
    module = ConformerConvModule(kernel_size=K, norm=norm)
    padding_mask = _lengths_mask(LENGTHS, T)
    x = _normal(B, T, D)
    x2 = np.where(padding_mask[..., None], x, 100.0 * _normal(B, T, D))
    # In training, BatchNorm's statistics come from the valid frames only.
    a = _np(module(x, padding_mask=padding_mask, training=training))
    b = _np(module(x2, padding_mask=padding_mask, training=training))
    np.testing.assert_allclose(a[padding_mask], b[padding_mask], atol=1e-5)
    # ... and a valid frame next to the padding sees what it sees in an unpadded sequence.
    if not training:
        for i, n in enumerate(LENGTHS):
            alone = _np(module(x[i : i + 1, :n]))
            np.testing.assert_allclose(a[i, :n], alone[0], atol=1e-5)


def test_conv_module_batch_norm_statistics_exclude_padding():
    # Padded frames are zero before the depthwise convolution, so their contents cannot move
    # the statistics; their number can. More padding must change neither the batch
    # statistics (momentum 0: the moving mean is the last batch mean) nor the valid outputs.
    module = ConformerConvModule(kernel_size=K, norm="batch_norm", batch_norm_momentum=0.0)
    padding_mask = _lengths_mask(LENGTHS, T)
    x = _normal(B, T, D)
    a = _np(module(x, padding_mask=padding_mask, training=True))
    mean = _np(module.conv_norm.moving_mean)
    longer = np.concatenate([x, _normal(B, 6, D)], axis=1)
    b = _np(module(longer, padding_mask=_lengths_mask(LENGTHS, T + 6), training=True))
    np.testing.assert_allclose(_np(module.conv_norm.moving_mean), mean, atol=1e-5)
    np.testing.assert_allclose(b[:, :T][padding_mask], a[padding_mask], atol=1e-4)


# --- ConformerBlock -----------------------------------------------------------------------


def _zero_branch_outputs(block, keep=()):
    """Zeroes the last projection of every residual branch except those in `keep`."""
    last = {
        "ffn1": block.ffn1.fc2,
        "self_attention": block.self_attention.output_dense,
        "conv_module": block.conv_module.pointwise_conv2,
        "ffn2": block.ffn2.fc2,
    }
    for name, layer in last.items():
        if name not in keep:
            for w in layer.weights:
                w.assign(np.zeros(w.shape, "float32"))


@pytest.mark.parametrize("ffn", [None, "ffn1", "ffn2"])
def test_block_macaron_residuals_with_zeroed_branches(ffn):
    x = _normal(B, T, D)
    block = ConformerBlock(D, HEADS, 16, conv_kernel_size=K)
    block(x)
    _randomize_weights(block)
    _zero_branch_outputs(block, keep=() if ffn is None else (ffn,))
    out = _np(block(x, padding_mask=_lengths_mask(LENGTHS, T)))
    x64 = np.asarray(x, np.float64)
    if ffn is None:
        expected = ref_layer_norm(block.output_norm, x64)  # every branch adds zero
    else:
        # The one live feed-forward module adds a half step: x + 1/2 FFN(LayerNorm(x)).
        mlp, norm = getattr(block, ffn), getattr(block, f"{ffn}_norm")
        expected = ref_layer_norm(block.output_norm, x64 + 0.5 * ref_swish_mlp(mlp, ref_layer_norm(norm, x64)))
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("conv_norm,training", [("layer_norm", False), ("batch_norm", True)])
def test_block_padded_frames_do_not_change_valid_outputs(conv_norm, training):
    block = ConformerBlock(D, HEADS, 16, conv_kernel_size=K, conv_norm=conv_norm)
    padding_mask = _lengths_mask(LENGTHS, T)
    x = _normal(B, T, D)
    x2 = np.where(padding_mask[..., None], x, 100.0 * _normal(B, T, D))
    block(x)
    _randomize_weights(block)
    a, w = block(x, padding_mask=padding_mask, training=training, return_attention_scores=True)
    b = block(x2, padding_mask=padding_mask, training=training)
    a, w = _np(a), _np(w)
    np.testing.assert_allclose(a[padding_mask], _np(b)[padding_mask], atol=1e-4)
    assert w.shape == (B, HEADS, T, T)
    # Padded frames are never keys; the rows of valid queries sum to one.
    assert np.all(w[:, :, :, :][~np.broadcast_to(padding_mask[:, None, None, :], w.shape)] == 0)
    rows = w.sum(-1)[np.broadcast_to(padding_mask[:, None, :], (B, HEADS, T))]
    np.testing.assert_allclose(rows, 1.0, atol=1e-5)
    if not training:  # same as each sequence alone, unpadded
        for i, n in enumerate(LENGTHS):
            np.testing.assert_allclose(a[i, :n], _np(block(x[i : i + 1, :n]))[0], atol=1e-4)


def test_block_reads_keras_mask_and_relative_position_bias_is_used():
    x = _normal(B, T, D)
    padding_mask = _lengths_mask(LENGTHS, T)
    masked = keras.layers.Masking()(np.where(padding_mask[..., None], x, 0.0).astype("float32"))
    block = ConformerBlock(D, HEADS, 16, conv_kernel_size=K, max_relative_position=3)
    _, w_keras = block(masked, return_attention_scores=True)
    _, w_explicit = block(_np(masked), padding_mask=padding_mask, return_attention_scores=True)
    np.testing.assert_allclose(_np(w_keras), _np(w_explicit), atol=1e-6)
    assert tuple(block.self_attention.relative_position_bias.shape) == (2 * 3 + 1, HEADS)
    # A non-zero bias changes the attention; without it there is no such weight.
    before = _np(block(x))
    block.self_attention.relative_position_bias.assign(_normal(7, HEADS))
    assert not np.allclose(_np(block(x)), before, atol=1e-4)
    plain = ConformerBlock(D, HEADS, 16, conv_kernel_size=K, max_relative_position=None)
    plain(x)
    assert not any("relative_position_bias" in w.path for w in plain.weights)


def test_block_dropout_and_drop_path_only_in_training():
    x = _normal(B, T, D)
    block = ConformerBlock(
        D, HEADS, 16, conv_kernel_size=K, dropout_rate=0.3, attention_dropout_rate=0.3,
        drop_path_rate=0.5, seed=1,
    )
    # Inference is deterministic (the seed generators advance, so any dropout would show).
    np.testing.assert_array_equal(_np(block(x)), _np(block(x)))
    assert not np.allclose(_np(block(x, training=True)), _np(block(x)), atol=1e-3)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="`kernel_size` must be an odd positive int"):
        ConformerConvModule(kernel_size=4)
    with pytest.raises(ValueError, match="`norm` must be one of"):
        ConformerConvModule(norm="group_norm")
    with pytest.raises(ValueError, match="`conv_kernel_size` must be an odd positive int"):
        ConformerBlock(D, HEADS, 16, conv_kernel_size=0)
    with pytest.raises(ValueError, match="must be divisible by `num_heads`"):
        ConformerBlock(9, HEADS, 16)
    with pytest.raises(ValueError, match=r"hidden_dim=8"):
        ConformerBlock(D, HEADS, 16)(_normal(B, T, 6))
    with pytest.raises(ValueError, match="`padding_mask` must have shape"):
        ConformerBlock(D, HEADS, 16)(_normal(B, T, D), padding_mask=np.ones((B, T, 1), bool))
    with pytest.raises(ValueError, match="num_features >= 7"):
        ConvSubsampling(D)(_normal(B, 20, 6))


# --- ConvSubsampling ----------------------------------------------------------------------


@pytest.mark.parametrize("reduction", [4, 2])
def test_subsampling_output_lengths_match_output_shapes(reduction):
    sub = ConvSubsampling(D, filters=4, time_reduction=reduction)
    assert sub.time_reduction == reduction and sub.min_length == 7
    assert ConvSubsampling(D).time_reduction == 4
    lengths = [7, 8, 9, 10, 29]  # every remainder mod 4, from the receptive field on
    for n in lengths:
        out = sub(_normal(1, n, 12))
        assert tuple(out.shape) == (1, sub.output_lengths(n), D), n
        # Frame t reads inputs Rt .. Rt + 6, so there is one per t with Rt + 6 <= n - 1.
        assert sub.output_lengths(n) == -(-(n - 6) // reduction)
    assert [sub.output_lengths(n) for n in range(7)] == [0] * 7
    assert _np(sub.output_lengths(np.array(lengths))).tolist() == [sub.output_lengths(n) for n in lengths]


def test_subsampling_rejects_other_time_reductions():
    for bad in (1, 3, 8, True, "4"):
        with pytest.raises(ValueError, match="time_reduction"):
            ConvSubsampling(D, time_reduction=bad)


@pytest.mark.parametrize("reduction", [4, 2])
def test_subsampling_padding_does_not_leak_and_mask_is_exact(reduction):
    sub = ConvSubsampling(D, filters=4, time_reduction=reduction)
    lengths = [40, 29, 8]
    padding_mask = _lengths_mask(lengths, 40)
    x = _normal(3, 40, 12)
    x2 = np.where(padding_mask[..., None], x, 100.0 * _normal(3, 40, 12))
    a, b = _np(sub(x)), _np(sub(x2))
    out_lengths = _np(sub.output_lengths(np.array(lengths)))
    out_mask = _lengths_mask(out_lengths, a.shape[1])
    np.testing.assert_allclose(a[out_mask], b[out_mask], atol=1e-5)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(a[i, : out_lengths[i]], _np(sub(x[i : i + 1, :n]))[0], atol=1e-5)
    # The Keras mask of the padded batch becomes exactly the output-length mask.
    masked = keras.layers.Masking()(np.where(padding_mask[..., None], x, 0.0).astype("float32"))
    np.testing.assert_array_equal(_np(sub.compute_mask(masked, ops.convert_to_tensor(padding_mask))), out_mask)


def test_encoder_model_mask_flows_from_front_end_to_block():
    """Masking -> ConvSubsampling -> ConformerBlock: the subsampled mask reaches the attention."""
    inputs = keras.Input((None, 12))
    x = keras.layers.Masking()(inputs)
    x = ConvSubsampling(D, filters=4)(x)
    x = ConformerBlock(D, HEADS, 16, conv_kernel_size=3, conv_norm="batch_norm", dropout_rate=0.1, seed=0)(x)
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    lengths = [30, 19]
    feats = np.where(_lengths_mask(lengths, 30)[..., None], _normal(2, 30, 12), 0.0).astype("float32")
    out = _np(model(feats))
    # The padded utterance's valid frames equal its unpadded run: the mask reached the block.
    n = ConvSubsampling(D).output_lengths(lengths[1])
    np.testing.assert_allclose(out[1, :n], _np(model(feats[1:, : lengths[1]]))[0], atol=1e-4)


# --- Contract -----------------------------------------------------------------------------


# One configuration each, dropout on, between them both norms (BatchNorm's moving statistics
# in the module, LayerNorm in the block) and the relative-position bias: the contract is slow.
def test_conv_module_contract():
    check_layer_contract(
        ConformerConvModule,
        {"kernel_size": 3, "norm": "batch_norm", "dropout_rate": 0.1, "seed": 2},
        _normal(4, T, D),
        expected_output_shape=(4, T, D),
    )


def test_block_contract():
    check_layer_contract(
        ConformerBlock,
        {
            "hidden_dim": D, "num_heads": HEADS, "intermediate_dim": 16, "conv_kernel_size": 3,
            "dropout_rate": 0.1, "attention_dropout_rate": 0.1,
            "drop_path_rate": 0.1, "max_relative_position": 4, "key_dim": 3, "seed": 1,
        },
        _normal(4, T, D),
        call_kwargs={"return_attention_scores": True},
        expected_output_shape=(4, T, D),
    )


def test_subsampling_contract():
    check_layer_contract(
        ConvSubsampling,
        {"hidden_dim": D, "filters": 4, "dropout_rate": 0.1, "seed": 0},
        _normal(4, 23, 12),
        expected_output_shape=(4, 5, D),
    )


def test_conv_subsampling_handles_an_empty_batch():
    layer = ConvSubsampling(hidden_dim=8)
    full = layer(keras.random.normal((2, 40, 20)))
    empty = layer(ops.zeros((0, 40, 20)))
    assert tuple(empty.shape) == (0, *full.shape[1:])
