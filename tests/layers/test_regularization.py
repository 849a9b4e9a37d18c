"""MLP, DropPath and LayerScale: contract, behaviour at train/inference time, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tfattn.layers import MLP, DropPath, LayerScale

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 6, 8)).astype("float32")


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.mark.parametrize(
    "layer_cls, kwargs",
    [
        (MLP, dict(intermediate_dim=16)),
        (MLP, dict(intermediate_dim=16, output_dim=5, activation="relu", dropout_rate=0.1, seed=3)),
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
