"""SpatialChannelAttention (CBAM): float64 reference, gate invariants, contract, errors."""

import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tfattn.layers.cnn_attention import SpatialChannelAttention

RNG = np.random.default_rng(0)
B, H, W, C = 3, 5, 6, 8


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _ref_cbam(layer, x):
    """CBAM in float64 with an explicit loop convolution ("same" padding, odd kernel)."""
    x = np.asarray(x, np.float64)
    spatial = None
    if layer.use_channel:
        mlp = layer.channel_mlp

        def shared_mlp(d):
            h = np.maximum(d @ _np(mlp.fc1.kernel) + _np(mlp.fc1.bias), 0.0)
            return h @ _np(mlp.fc2.kernel) + _np(mlp.fc2.bias)

        gate = _sigmoid(shared_mlp(x.mean(axis=(1, 2))) + shared_mlp(x.max(axis=(1, 2))))
        x = x * gate[:, None, None, :]
    if layer.use_spatial:
        descriptors = np.stack([x.mean(-1), x.max(-1)], axis=-1)  # (b, h, w, 2)
        k = layer.kernel_size
        pad = k // 2
        padded = np.pad(descriptors, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        kernel, bias = _np(layer.spatial_conv.kernel)[..., 0], _np(layer.spatial_conv.bias)[0]
        logits = np.full(descriptors.shape[:3], bias)
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                logits[:, i, j] += np.einsum("bijc,ijc->b", padded[:, i : i + k, j : j + k], kernel)
        spatial = _sigmoid(logits)[..., None]
        x = x * spatial
    return x, spatial


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(reduction=4, kernel_size=3),
        dict(reduction=2, kernel_size=5, use_channel=False),
        dict(reduction=3, use_spatial=False),
    ],
)
def test_matches_float64_reference(kwargs):
    x = _normal(B, H, W, C)
    layer = SpatialChannelAttention(**kwargs)
    layer(x)
    for w in layer.weights:
        w.assign(_normal(*w.shape))
    out = layer(x, return_attention_scores=layer.use_spatial)
    ref_out, ref_spatial = _ref_cbam(layer, x)
    if layer.use_spatial:
        out, spatial = out
        np.testing.assert_allclose(_np(spatial), ref_spatial, atol=1e-5)
    np.testing.assert_allclose(_np(out), ref_out, atol=1e-4, rtol=1e-4)


def test_gates_are_in_unit_interval_and_channel_gate_is_per_channel():
    x = _normal(B, H, W, C)
    out, spatial = SpatialChannelAttention(reduction=4)(x, return_attention_scores=True)
    spatial = _np(spatial)
    assert spatial.shape == (B, H, W, 1) and np.all((spatial > 0) & (spatial < 1))
    # Channel attention alone rescales each channel of each sample by one factor in (0, 1).
    ratio = _np(SpatialChannelAttention(reduction=4, use_spatial=False)(x)) / x
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1, :1, :], ratio.shape), rtol=1e-4)
    assert np.all((ratio > 0) & (ratio < 1))


def test_reduction_larger_than_channels_keeps_one_hidden_unit():
    layer = SpatialChannelAttention(reduction=16)
    assert tuple(layer(_normal(B, H, W, C)).shape) == (B, H, W, C)
    assert tuple(layer.channel_mlp.fc1.kernel.shape) == (C, 1)


def test_output_independent_of_batch_size():
    layer = SpatialChannelAttention(reduction=4, kernel_size=3)
    x = _normal(B, H, W, C)
    full = _np(layer(x))
    for i in range(B):
        np.testing.assert_allclose(_np(layer(x[i : i + 1]))[0], full[i], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, call_kwargs",
    [
        (dict(reduction=4), {}),
        (dict(reduction=2, kernel_size=3, use_channel=False), {"return_attention_scores": True}),
        (dict(reduction=4, use_spatial=False), {}),
    ],
)
def test_contract(kwargs, call_kwargs):
    check_layer_contract(
        SpatialChannelAttention,
        kwargs,
        _normal(4, H, W, C),
        call_kwargs=call_kwargs,
        expected_output_shape=(4, H, W, C),
    )


def test_errors():
    with pytest.raises(ValueError, match="`reduction` must be a positive int"):
        SpatialChannelAttention(reduction=0)
    with pytest.raises(ValueError, match="`kernel_size` must be a positive int"):
        SpatialChannelAttention(kernel_size=(3, 3))
    with pytest.raises(ValueError, match="At least one of `use_channel` and `use_spatial`"):
        SpatialChannelAttention(use_channel=False, use_spatial=False)
    with pytest.raises(ValueError, match=r"`inputs` must have shape \(batch, H, W, C\)"):
        SpatialChannelAttention()(_normal(B, W, C))
    with pytest.raises(ValueError, match="needs `use_spatial=True`"):
        SpatialChannelAttention(use_spatial=False)(
            _normal(B, H, W, C), return_attention_scores=True
        )
