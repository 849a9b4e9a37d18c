"""PatchEmbedding: NumPy reference, token order, class token, image sizes, contract, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tfattn.layers.patch import PatchEmbedding

RNG = np.random.default_rng(0)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _images(*shape):
    return RNG.normal(size=shape).astype("float32")


def _patches_numpy(images, kernel, bias, ph, pw):
    """float64 reference: token r * grid_w + c = flatten(patch (r, c)) @ kernel + bias."""
    b, h, w, c = images.shape
    kernel = np.asarray(kernel, np.float64).reshape(ph * pw * c, -1)
    tokens = []
    for r in range(h // ph):
        for col in range(w // pw):
            patch = images[:, r * ph : (r + 1) * ph, col * pw : (col + 1) * pw, :].astype(
                np.float64
            )
            tokens.append(patch.reshape(b, -1) @ kernel + bias)
    return np.stack(tokens, axis=1)  # (b, num_patches, hidden_dim)


@pytest.mark.parametrize("patch_size", [4, (2, 3)])
def test_matches_numpy_patches_row_major(patch_size):
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    images = _images(2, 8, 12, 3)
    layer = PatchEmbedding(hidden_dim=5, patch_size=patch_size)
    out = _np(layer(images))
    kernel, bias = (_np(w) for w in layer.projection.weights)
    assert kernel.shape == (ph, pw, 3, 5)
    assert out.shape == (2, (8 // ph) * (12 // pw), 5)
    np.testing.assert_allclose(out, _patches_numpy(images, kernel, bias, ph, pw), atol=1e-5)


def test_class_token_comes_first():
    images = _images(3, 4, 4, 2)
    layer = PatchEmbedding(hidden_dim=6, patch_size=2, use_class_token=True)
    layer.build(images.shape)
    token = RNG.normal(size=(1, 1, 6)).astype("float32")
    layer.class_token.assign(token)
    out = _np(layer(images))
    assert out.shape == (3, 1 + 4, 6)
    for b in range(3):
        np.testing.assert_allclose(out[b, 0], token[0, 0], atol=0)
    kernel, bias = (_np(w) for w in layer.projection.weights)
    np.testing.assert_allclose(out[:, 1:], _patches_numpy(images, kernel, bias, 2, 2), atol=1e-5)


def test_independent_of_batch_size():
    images = _images(4, 6, 6, 3)
    layer = PatchEmbedding(hidden_dim=4, patch_size=3, use_class_token=True)
    full = _np(layer(images))
    for b in range(4):
        np.testing.assert_allclose(_np(layer(images[b : b + 1]))[0], full[b], atol=1e-6)


def test_any_divisible_image_size_with_unknown_static_size():
    layer = PatchEmbedding(hidden_dim=4, patch_size=(2, 4), use_class_token=True)
    inputs = keras.Input((None, None, 3))
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, None, 4)
    model = keras.Model(inputs, outputs)
    for h, w in [(4, 8), (6, 16)]:
        images = _images(2, h, w, 3)
        out = model.predict(images, verbose=0)
        assert out.shape == (2, 1 + (h // 2) * (w // 4), 4)
        np.testing.assert_allclose(out, _np(layer(images)), atol=1e-5)
        assert layer.grid_size((h, w)) == (h // 2, w // 4)


def test_grid_size_helper():
    layer = PatchEmbedding(hidden_dim=8, patch_size=(4, 2))
    assert layer.grid_size((16, 6)) == (4, 3)
    assert layer.grid_size(8) == (2, 4)
    with pytest.raises(ValueError, match=r"image size \(10, 6\) and patch_size \(4, 2\)"):
        layer.grid_size((10, 6))


@pytest.mark.parametrize(
    "init_kwargs, shape, expected",
    [
        ({"hidden_dim": 6, "patch_size": 2}, (2, 4, 6, 3), (2, 6, 6)),
        ({"hidden_dim": 4, "patch_size": (2, 3), "use_class_token": True}, (2, 4, 6, 1), (2, 5, 4)),
        (
            {"hidden_dim": 4, "patch_size": [4, 2], "kernel_initializer": "he_normal"},
            (2, 4, 4, 2),
            (2, 2, 4),
        ),
    ],
)
def test_contract(init_kwargs, shape, expected):
    check_layer_contract(
        PatchEmbedding, init_kwargs, _images(*shape), expected_output_shape=expected
    )


def test_errors():
    with pytest.raises(ValueError, match="`hidden_dim` must be a positive int"):
        PatchEmbedding(hidden_dim=0, patch_size=2)
    with pytest.raises(ValueError, match="`patch_size` must be a positive int or a pair"):
        PatchEmbedding(hidden_dim=4, patch_size=(2, 0))
    with pytest.raises(ValueError, match="`patch_size` must be a positive int or a pair"):
        PatchEmbedding(hidden_dim=4, patch_size=(2, 2, 2))
    layer = PatchEmbedding(hidden_dim=4, patch_size=4)
    with pytest.raises(ValueError, match=r"image size \(8, 10\) and patch_size \(4, 4\)"):
        layer(np.zeros((1, 8, 10, 3), "float32"))
    with pytest.raises(ValueError, match=r"image size \(6, 8\) and patch_size \(4, 4\)"):
        PatchEmbedding(hidden_dim=4, patch_size=4)(keras.Input((6, 8, 3)))  # symbolic, static size
    with pytest.raises(ValueError, match=r"\(batch, height, width, channels\)"):
        PatchEmbedding(hidden_dim=4, patch_size=2)(np.zeros((4, 4, 3), "float32"))
