"""MLP, DropPath and LayerScale: contract, behaviour at train/inference time, errors."""

import keras
import numpy as np
import pytest
from keras import ops

import tfattn.layers.regularization as regularization
from tests.contract import check_layer_contract
from tfattn.layers import MLP, DropPath, LayerScale
from tfattn.layers.regularization import depthwise_conv_tokens

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 6, 8)).astype("float32")


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.mark.parametrize(
    "layer_cls, kwargs",
    [
        (MLP, dict(intermediate_dim=16)),
        (MLP, dict(intermediate_dim=16, output_dim=5, activation="relu", dropout_rate=0.1, seed=3)),
        # X's 6 tokens as 2 prefix tokens + a 2x2 grid.
        (MLP, dict(intermediate_dim=16, local_kernel_size=3, num_prefix_tokens=2)),
        (DropPath, dict(rate=0.2, seed=1)),
        (LayerScale, dict(init_value=0.1)),
    ],
)
def test_contract(layer_cls, kwargs):
    out_dim = kwargs.get("output_dim", 8)
    check_layer_contract(layer_cls, kwargs, X, expected_output_shape=(4, 6, out_dim))


def test_mlp_matches_numpy():
    layer = MLP(intermediate_dim=16, activation="relu")
    out = _np(layer(X))
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in layer.get_weights())
    ref = np.maximum(X @ w1 + b1, 0.0) @ w2 + b2
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_mlp_dropout_only_in_training():
    layer = MLP(intermediate_dim=16, dropout_rate=0.5, seed=0)
    a, b = _np(layer(X)), _np(layer(X))
    np.testing.assert_array_equal(a, b)
    c = _np(layer(X, training=True))
    assert not np.allclose(a, c)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    layer = DropPath(rate=0.5, seed=0)
    x = np.ones((256, 3, 4), "float32")
    np.testing.assert_array_equal(_np(layer(x)), x)  # inference: identity
    y = _np(layer(x, training=True))
    per_sample = y.reshape(256, -1)
    # Every sample is either dropped entirely (0) or kept and rescaled by 1 / (1 - rate).
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert abs(per_sample.mean() - 1.0) < 0.2


def test_layer_scale_scales_channels():
    layer = LayerScale(init_value=0.5)
    np.testing.assert_allclose(_np(layer(X)), 0.5 * X, atol=1e-7)
    layer.gamma.assign(np.arange(8, dtype="float32"))
    np.testing.assert_allclose(_np(layer(X)), X * np.arange(8), atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="`intermediate_dim` must be a positive int"):
        MLP(intermediate_dim=0)
    with pytest.raises(ValueError, match="DropPath `rate` must be in"):
        DropPath(rate=1.0)


def test_mixed_precision_mlp_output_dtype():
    layer = MLP(intermediate_dim=16, dtype="mixed_float16")
    assert keras.backend.standardize_dtype(layer(X).dtype) == "float16"


# Local (convolutional) MLP: depthwise convolution over the token grid.


def _depthwise_reference(tokens, kernel, grid):
    """Direct loops: out[i, j] = sum_ab kernel[a, b] * x[i + a - r, j + b - r], zero outside."""
    batch, _, channels = tokens.shape
    k = kernel.shape[0]
    r = k // 2
    x = tokens.reshape(batch, grid[0], grid[1], channels)
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(grid[0]):
        for j in range(grid[1]):
            for a in range(k):
                for b in range(k):
                    ii, jj = i + a - r, j + b - r
                    if 0 <= ii < grid[0] and 0 <= jj < grid[1]:
                        out[:, i, j] += kernel[a, b] * x[:, ii, jj]
    return out.reshape(batch, -1, channels)


@pytest.mark.parametrize("banded", [True, False])
@pytest.mark.parametrize("grid, k", [((4, 4), 3), ((3, 5), 3), ((5, 4), 5), ((2, 3), 1)])
def test_depthwise_conv_tokens_matches_loops_and_keras(monkeypatch, banded, grid, k):
    if not banded:  # force the shifted-sum form
        monkeypatch.setattr(regularization, "_BANDED_MAX_ELEMENTS", 0)
    tokens = RNG.normal(size=(2, grid[0] * grid[1], 6)).astype("float32")
    kernel = RNG.normal(size=(k, k, 6)).astype("float32")
    out = _np(depthwise_conv_tokens(tokens, kernel, grid))
    np.testing.assert_allclose(out, _depthwise_reference(tokens, kernel, grid), atol=1e-5)
    keras_out = ops.depthwise_conv(
        tokens.reshape(2, grid[0], grid[1], 6), kernel[..., None], padding="same"
    )
    np.testing.assert_allclose(out, _np(keras_out).reshape(out.shape), atol=1e-5)


def test_local_mlp_starts_as_the_plain_mlp_then_mixes_neighbours():
    tokens = RNG.normal(size=(2, 1 + 16, 8)).astype("float32")  # class token + 4x4 grid
    local = MLP(intermediate_dim=16, local_kernel_size=3, num_prefix_tokens=1)
    plain = MLP(intermediate_dim=16)
    out = _np(local(tokens))
    plain(tokens)
    plain.set_weights([w for w in local.get_weights() if w.ndim != 3])
    np.testing.assert_allclose(out, _np(plain(tokens)), atol=1e-6)  # identity kernel

    local.local_kernel.assign(RNG.normal(size=(3, 3, 16)).astype("float32"))
    out = _np(local(tokens))
    changed = tokens.copy()
    changed[:, 1 + 0] += 1.0  # grid cell (0, 0)
    diff = np.abs(_np(local(changed)) - out).max(axis=(0, 2))
    # The class token skips the convolution; (0, 0) reaches its 3x3 neighbours only.
    neighbours = {1 + 0, 1 + 1, 1 + 4, 1 + 5}
    assert diff[0] == 0.0
    assert all(diff[i] > 1e-4 for i in neighbours)
    assert all(diff[i] == 0.0 for i in range(1, 17) if i not in neighbours)
    # An explicit grid: the same tokens as a 2x8 grid mix differently.
    assert not np.allclose(_np(local(tokens, grid_size=(2, 8))), out)


def test_local_mlp_with_only_prefix_tokens_skips_the_convolution():
    layer = MLP(intermediate_dim=16, local_kernel_size=3, num_prefix_tokens=1)
    layer(RNG.normal(size=(2, 1 + 9, 8)).astype("float32"))
    layer.local_kernel.assign(RNG.normal(size=(3, 3, 16)).astype("float32"))
    cls = RNG.normal(size=(2, 1, 8)).astype("float32")
    plain = MLP(intermediate_dim=16)
    plain(cls)
    plain.set_weights([w for w in layer.get_weights() if w.ndim != 3])
    np.testing.assert_allclose(_np(layer(cls)), _np(plain(cls)), atol=1e-6)


def test_local_mlp_errors():
    with pytest.raises(ValueError, match="`local_kernel_size` must be an odd positive int"):
        MLP(16, local_kernel_size=2)
    with pytest.raises(ValueError, match="`num_prefix_tokens` must be an int >= 0"):
        MLP(16, local_kernel_size=3, num_prefix_tokens=-1)
    layer = MLP(16, local_kernel_size=3, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="12 patch tokens do not form a square grid"):
        layer(np.zeros((1, 13, 8), "float32"))
    with pytest.raises(ValueError, match=r"`grid_size` \(3, 3\) has 9 cells but the input has 12"):
        layer(np.zeros((1, 13, 8), "float32"), grid_size=(3, 3))
