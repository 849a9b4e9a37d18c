"""PatchEmbedding, ShiftedPatchEmbedding and ConvPatchEmbedding: NumPy references, token
order, shift directions, class token, image sizes, contract, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tfattn.layers.patch import (
    ConvPatchEmbedding,
    PatchEmbedding,
    ShiftedPatchEmbedding,
    shifted_patches,
)

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


@pytest.mark.parametrize("layer_class", [PatchEmbedding, ShiftedPatchEmbedding, ConvPatchEmbedding])
def test_any_divisible_image_size_with_unknown_static_size(layer_class):
    layer = layer_class(hidden_dim=4, patch_size=(2, 4), use_class_token=True)
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


# --- ShiftedPatchEmbedding ------------------------------------------------------------------


def _shift_numpy(images, dy, dx):
    """out[:, y, x] = images[:, y - dy, x - dx], zero where that falls outside the image."""
    _, h, w, _ = images.shape
    out = np.zeros_like(images)
    for y in range(h):
        for x in range(w):
            if 0 <= y - dy < h and 0 <= x - dx < w:
                out[:, y, x] = images[:, y - dy, x - dx]
    return out


def _shifted_patches_numpy(images, ph, pw):
    """float64 SPT features: [image, down-right, down-left, up-right, up-left] by half a patch."""
    sy, sx = ph // 2, pw // 2
    shifts = [(0, 0), (sy, sx), (sy, -sx), (-sy, sx), (-sy, -sx)]
    stacked = np.concatenate([_shift_numpy(images, dy, dx) for dy, dx in shifts], axis=-1)
    identity = np.eye(ph * pw * stacked.shape[-1])  # the raw flattened patches
    return _patches_numpy(stacked, identity, 0.0, ph, pw)


def _ref_layer_norm(x, gamma, beta, eps):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _ref_shifted_embedding(layer, images):
    ph, pw = layer.patch_size
    features = _shifted_patches_numpy(images.astype(np.float64), ph, pw)
    gamma, beta = (_np(w).astype(np.float64) for w in layer.norm.weights)
    kernel, bias = (_np(w).astype(np.float64) for w in layer.projection.weights)
    return _ref_layer_norm(features, gamma, beta, layer.layer_norm_epsilon) @ kernel + bias


def _randomize(layer, scale=0.2):
    """Non-trivial weights everywhere (LayerNorm gamma/beta included), so the reference bites."""
    for w in layer.weights:
        noise = RNG.normal(size=w.shape).astype("float32") * scale
        w.assign(noise + (1.0 if "gamma" in w.path else 0.0))


@pytest.mark.parametrize("patch_size", [4, (2, 4), (3, 2)])
def test_shifted_matches_numpy_reference(patch_size):
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    images = _images(2, 12, 8, 2)
    layer = ShiftedPatchEmbedding(hidden_dim=5, patch_size=patch_size, layer_norm_epsilon=1e-3)
    layer.build(images.shape)
    _randomize(layer)
    assert tuple(layer.projection.kernel.shape) == (ph * pw * 5 * 2, 5)
    out = _np(layer(images))
    assert out.shape == (2, (12 // ph) * (8 // pw), 5)
    np.testing.assert_allclose(out, _ref_shifted_embedding(layer, images), atol=1e-5, rtol=1e-5)
    # The pre-norm features alone match too (no LayerNorm rescaling to hide differences).
    np.testing.assert_allclose(
        _np(shifted_patches(images, patch_size)),
        _shifted_patches_numpy(images, ph, pw),
        atol=0,
    )


def _channel_groups(features, image_shape, ph, pw):
    """SPT features (1, num_patches, ph * pw * 5) of a 1-channel image -> 5 images (5, h, w)."""
    h, w = image_shape
    x = features.reshape(h // ph, w // pw, ph, pw, 5).transpose(4, 0, 2, 1, 3)
    return x.reshape(5, h, w)


def test_shift_directions_with_a_single_bright_pixel():
    # Patch (2, 4): content moves by half a patch, 1 row and 2 columns.
    image = np.zeros((1, 4, 8, 1), "float32")
    image[0, 1, 3, 0] = 1.0
    groups = _channel_groups(_np(shifted_patches(image, (2, 4))), (4, 8), 2, 4)
    # unshifted, down-right, down-left, up-right, up-left (the official channel order)
    expected = [(1, 3), (2, 5), (2, 1), (0, 5), (0, 1)]
    for g, (y, x) in enumerate(expected):
        want = np.zeros((4, 8), "float32")
        want[y, x] = 1.0
        np.testing.assert_array_equal(groups[g], want, err_msg=f"channel group {g}")
    # At the top-left corner only "down-right" keeps the pixel: zero fill, no wrap-around.
    image = np.zeros((1, 4, 8, 1), "float32")
    image[0, 0, 0, 0] = 1.0
    groups = _channel_groups(_np(shifted_patches(image, (2, 4))), (4, 8), 2, 4)
    assert groups[0, 0, 0] == 1.0 and groups[1, 1, 2] == 1.0
    assert groups[0].sum() == 1.0 and groups[1].sum() == 1.0
    np.testing.assert_array_equal(groups[2:], 0.0)


def test_shifted_class_token_comes_first():
    images = _images(3, 4, 4, 2)
    layer = ShiftedPatchEmbedding(hidden_dim=6, patch_size=2, use_class_token=True)
    layer.build(images.shape)
    _randomize(layer)
    token = _np(layer.class_token)
    out = _np(layer(images))
    assert out.shape == (3, 1 + 4, 6)
    for b in range(3):
        np.testing.assert_allclose(out[b, 0], token[0, 0], atol=0)
    np.testing.assert_allclose(
        out[:, 1:], _ref_shifted_embedding(layer, images), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(
    "init_kwargs, shape, expected",
    [
        ({"hidden_dim": 6, "patch_size": 2}, (2, 4, 6, 3), (2, 6, 6)),
        (
            {
                "hidden_dim": 4,
                "patch_size": (2, 3),
                "use_class_token": True,
                "layer_norm_epsilon": 1e-5,
                "kernel_initializer": "he_normal",
            },
            (2, 4, 6, 1),
            (2, 5, 4),
        ),
    ],
)
def test_shifted_contract(init_kwargs, shape, expected):
    check_layer_contract(
        ShiftedPatchEmbedding, init_kwargs, _images(*shape), expected_output_shape=expected
    )


def test_shifted_errors():
    with pytest.raises(ValueError, match="`hidden_dim` must be a positive int"):
        ShiftedPatchEmbedding(hidden_dim=0, patch_size=2)
    with pytest.raises(ValueError, match="`patch_size` must be a positive int or a pair"):
        ShiftedPatchEmbedding(hidden_dim=4, patch_size=(2, 0))
    layer = ShiftedPatchEmbedding(hidden_dim=4, patch_size=4)
    with pytest.raises(ValueError, match=r"image size \(10, 6\) and patch_size \(4, 4\)"):
        layer.grid_size((10, 6))
    with pytest.raises(
        ValueError, match=r"ShiftedPatchEmbedding needs .* image size \(8, 10\) and patch_size \(4, 4\)"
    ):
        layer(np.zeros((1, 8, 10, 3), "float32"))
    with pytest.raises(ValueError, match=r"image size \(6, 8\) and patch_size \(4, 4\)"):
        ShiftedPatchEmbedding(hidden_dim=4, patch_size=4)(keras.Input((6, 8, 3)))
    with pytest.raises(ValueError, match=r"\(batch, height, width, channels\)"):
        ShiftedPatchEmbedding(hidden_dim=4, patch_size=2)(np.zeros((4, 4, 3), "float32"))
    with pytest.raises(ValueError, match=r"shifted_patches needs .* image size \(4, 5\)"):
        shifted_patches(np.zeros((1, 4, 5, 1), "float32"), 2)


# --- ConvPatchEmbedding ---------------------------------------------------------------------


def _conv_same_numpy(x, kernel, strides):
    """float64 reference of a "same"-padded convolution (TF's padding: the extra pixel of
    an odd total padding goes after). x: (b, h, w, c), kernel: (kh, kw, c, f)."""
    kh, kw, _, f = kernel.shape
    (sh, sw), (b, h, w, _) = strides, x.shape
    oh, ow = -(-h // sh), -(-w // sw)
    pad_h, pad_w = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - w, 0)
    x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((b, oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            window = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            out[:, i, j] = np.tensordot(window, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


def _conv_stem_numpy(layer, images):
    """Tokens of a built ConvPatchEmbedding in inference mode, from its weights."""
    x = images.astype(np.float64)
    for conv, norm in zip(layer.convs, layer.norms):
        x = _conv_same_numpy(x, _np(conv.kernel).astype(np.float64), conv.strides)
        gamma, beta, mean, var = (_np(w).astype(np.float64) for w in (
            norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance))
        x = np.maximum((x - mean) / np.sqrt(var + norm.epsilon) * gamma + beta, 0.0)
    projection = layer.tokens.projection
    kernel = _np(projection.kernel).astype(np.float64)[0, 0]  # (filters, hidden_dim)
    x = x @ kernel + _np(projection.bias)
    return x.reshape(x.shape[0], -1, x.shape[-1])  # row-major tokens


@pytest.mark.parametrize(
    "patch_size, image_shape, depth",
    [(4, (2, 8, 12, 3), 1), ((4, 2), (2, 8, 6, 1), 1), (4, (2, 8, 12, 3), 2)],
)
def test_conv_stem_matches_numpy(patch_size, image_shape, depth):
    layer = ConvPatchEmbedding(
        hidden_dim=8, patch_size=patch_size, depth=depth, use_class_token=True
    )
    images = _images(*image_shape)
    layer(images)
    # Non-trivial BatchNorm statistics, so the reference checks how they are applied.
    for norm in layer.norms:
        n = norm.moving_mean.shape[0]
        norm.moving_mean.assign(RNG.normal(size=n).astype("float32") * 0.1)
        norm.moving_variance.assign(RNG.uniform(0.5, 2.0, size=n).astype("float32"))
        norm.gamma.assign(RNG.uniform(0.5, 1.5, size=n).astype("float32"))
        norm.beta.assign(RNG.normal(size=n).astype("float32") * 0.1)
    out = _np(layer(images, training=False))
    ph, pw = layer.patch_size
    grid = (image_shape[1] // ph, image_shape[2] // pw)
    assert layer.grid_size(image_shape[1:3]) == grid
    assert out.shape == (image_shape[0], 1 + grid[0] * grid[1], 8)
    np.testing.assert_allclose(out[:, 0], np.zeros((image_shape[0], 8)), atol=0)  # class token
    np.testing.assert_allclose(out[:, 1:], _conv_stem_numpy(layer, images), atol=1e-4, rtol=1e-4)


def test_conv_stem_layout_and_locality():
    layer = ConvPatchEmbedding(hidden_dim=16, patch_size=8)
    assert layer.strides == [(2, 2)] * 3
    assert layer.filters == [8, 8, 16]  # doubling up to hidden_dim, at least 8
    assert ConvPatchEmbedding(hidden_dim=64, patch_size=(4, 2)).strides == [(2, 2), (2, 1)]
    assert ConvPatchEmbedding(hidden_dim=64, patch_size=4).filters == [32, 64]
    deep = ConvPatchEmbedding(hidden_dim=16, patch_size=4, depth=2)
    deep.build((None, 8, 8, 1))
    # depth 2: a stride-1 convolution of the same width after each stride-2 one.
    assert [(c.name, c.strides, c.filters) for c in deep.convs] == [
        ("conv0", (2, 2), 8), ("conv0_1", (1, 1), 8), ("conv1", (2, 2), 16), ("conv1_1", (1, 1), 16)
    ]
    # A pixel reaches only tokens within the stem's receptive field (2 * patch - 1 = 7 px
    # for patch 4): here the token of its own patch and its right/lower neighbours.
    layer = ConvPatchEmbedding(hidden_dim=8, patch_size=4)
    base = np.zeros((1, 16, 16, 1), "float32")
    poke = base.copy()
    poke[0, 7, 7, 0] = 5.0  # last pixel of patch (1, 1)
    diff = np.abs(_np(layer(poke)) - _np(layer(base))).sum(-1).reshape(4, 4)
    changed = {tuple(i) for i in np.argwhere(diff > 1e-6)}
    assert (1, 1) in changed
    assert changed <= {(1, 1), (1, 2), (2, 1), (2, 2)}, changed


@pytest.mark.parametrize(
    "init_kwargs, shape, expected",
    [
        ({"hidden_dim": 6, "patch_size": 2}, (2, 4, 6, 3), (2, 6, 6)),
        (
            {"hidden_dim": 8, "patch_size": 4, "filters": [4, 12], "use_class_token": True,
             "kernel_initializer": "glorot_uniform"},
            (2, 8, 8, 1),
            (2, 5, 8),
        ),
        ({"hidden_dim": 6, "patch_size": 2, "depth": 3}, (2, 4, 6, 3), (2, 6, 6)),
    ],
)
def test_conv_stem_contract(init_kwargs, shape, expected):
    check_layer_contract(
        ConvPatchEmbedding, init_kwargs, _images(*shape), expected_output_shape=expected
    )


def test_conv_stem_errors():
    with pytest.raises(ValueError, match="`hidden_dim` must be a positive int"):
        ConvPatchEmbedding(hidden_dim=0, patch_size=2)
    with pytest.raises(ValueError, match=r"powers of two >= 2 .* got patch_size \(3, 3\)"):
        ConvPatchEmbedding(hidden_dim=4, patch_size=3)
    with pytest.raises(ValueError, match=r"powers of two >= 2 .* got patch_size \(4, 1\)"):
        ConvPatchEmbedding(hidden_dim=4, patch_size=(4, 1))
    with pytest.raises(ValueError, match=r"`filters` must be 2 positive ints .* got \[8\]"):
        ConvPatchEmbedding(hidden_dim=4, patch_size=4, filters=[8])
    with pytest.raises(ValueError, match=r"`depth` must be a positive int; got 0"):
        ConvPatchEmbedding(hidden_dim=4, patch_size=4, depth=0)
    layer = ConvPatchEmbedding(hidden_dim=4, patch_size=4)
    with pytest.raises(ValueError, match=r"ConvPatchEmbedding needs .* image size \(8, 10\)"):
        layer(np.zeros((1, 8, 10, 3), "float32"))
    with pytest.raises(ValueError, match=r"\(batch, height, width, channels\)"):
        ConvPatchEmbedding(hidden_dim=4, patch_size=2)(np.zeros((4, 4, 3), "float32"))
