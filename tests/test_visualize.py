import matplotlib.image
import numpy as np
import pytest

from tfattn.visualize import (
    attention_heatmap_images,
    attention_heatmap_png,
    attention_rollout,
    cls_attention_map,
    upscale_images,
)


def _random_attention(rng, *shape):
    """Row-stochastic weights of `shape` (..., T, T)."""
    logits = rng.normal(size=shape)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- PNG heatmaps -------------------------------------------------------------------------


@pytest.mark.parametrize("head", [None, 1])
def test_heatmap_png_is_a_real_png(tmp_path, head):
    w = _random_attention(np.random.default_rng(0), 3, 5, 5)
    path = attention_heatmap_png(
        w, tmp_path / "sub" / "attn.png", tokens=list("abcde"), title="layer 0", head=head
    )
    assert path == str(tmp_path / "sub" / "attn.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.05  # a drawn figure, not a blank canvas


def test_heatmap_png_cross_attention_labels(tmp_path):
    w = _random_attention(np.random.default_rng(1), 2, 4)
    path = attention_heatmap_png(w, tmp_path / "x.png", tokens=(["q0", "q1"], list("wxyz")))
    assert matplotlib.image.imread(path).shape[0] > 100


def test_heatmap_png_accepts_tensors(tmp_path):
    import keras

    w = keras.ops.softmax(keras.random.normal((2, 4, 4), seed=0), axis=-1)
    assert matplotlib.image.imread(attention_heatmap_png(w, tmp_path / "t.png")).size > 0


@pytest.mark.parametrize(
    "weights, kwargs, match",
    [
        (np.ones((1, 2, 3, 3)), {}, r"`weights` must have shape \(heads, q_len, k_len\)"),
        (np.ones((3, 3)), {"head": 0}, "`head`=0 needs `weights` of shape"),
        (np.ones((2, 3, 3)), {"head": 2}, r"`head` must be an int in \[0, 2\)"),
        (np.ones((3, 4)), {"tokens": list("abc")}, "`tokens` must label 3 queries and 4 keys"),
    ],
)
def test_heatmap_png_errors(tmp_path, weights, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_heatmap_png(weights, tmp_path / "bad.png", **kwargs)
    assert not (tmp_path / "bad.png").exists()


# --- image tensors ------------------------------------------------------------------------


def test_images_raw_maps_shape_range_and_head_mean():
    w = _random_attention(np.random.default_rng(2), 2, 3, 5, 7)
    imgs = attention_heatmap_images(w)
    assert imgs.shape == (2, 5, 7, 3) and imgs.dtype == np.float32
    assert imgs.min() >= 0.0 and imgs.max() <= 1.0
    np.testing.assert_allclose(imgs, attention_heatmap_images(w.mean(axis=1)), atol=1e-6)
    # The largest weight gets the colormap's top colour (viridis(1.0) is yellow).
    b, q, k = np.unravel_index(np.argmax(w.mean(axis=1)), (2, 5, 7))
    np.testing.assert_allclose(imgs[b, q, k], [0.993248, 0.906157, 0.143936], atol=1e-5)


def test_images_overlay_shape_range_and_blend():
    rng = np.random.default_rng(3)
    patch_maps = rng.uniform(size=(2, 3, 4))
    image = rng.integers(0, 256, size=(2, 12, 16, 3), dtype=np.uint8)
    out = attention_heatmap_images(patch_maps, grid_size=(3, 4), image=image)
    assert out.shape == (2, 12, 16, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # alpha=0 gives the image back; flat (n, gh*gw) maps equal (n, gh, gw) maps.
    plain = attention_heatmap_images(patch_maps, (3, 4), image, alpha=0.0)
    np.testing.assert_allclose(plain, image / 255.0, atol=1e-6)
    flat = attention_heatmap_images(patch_maps.reshape(2, 12), (3, 4), image)
    np.testing.assert_allclose(flat, out, atol=1e-6)


def test_images_overlay_upsampling_follows_the_hot_patch():
    maps = np.zeros((1, 2, 2))
    maps[0, 1, 0] = 1.0  # bottom-left patch
    gray = np.full((1, 8, 8, 1), 0.5, np.float32)
    heat = attention_heatmap_images(maps, (2, 2), gray, alpha=1.0)
    assert heat.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(heat[0, 7, 0], [0.993248, 0.906157, 0.143936], atol=1e-5)
    np.testing.assert_allclose(heat[0, 0, 7], [0.267004, 0.004874, 0.329415], atol=1e-5)


def test_images_grid_without_image_is_grid_resolution():
    assert attention_heatmap_images(np.ones((3, 6)), grid_size=(2, 3)).shape == (3, 2, 3, 3)


def test_upscale_images_by_a_whole_factor_keeps_pixels_as_blocks():
    images = np.arange(2 * 7 * 5 * 3, dtype=np.uint8).reshape(2, 7, 5, 3)
    big = upscale_images(images, 224)  # factor ceil(224 / 7) = 32
    assert big.shape == (2, 224, 160, 3) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[:, ::32, ::32], images)
    np.testing.assert_array_equal(big[1, 32:64, 64:96], np.broadcast_to(images[1, 1, 2], (32, 32, 3)))
    assert upscale_images(images, 7).shape == images.shape  # large enough already
    assert upscale_images(np.zeros((1, 28, 28, 3)), 224).shape == (1, 224, 224, 3)
    with pytest.raises(ValueError, match="min_size"):
        upscale_images(images, 0)
    with pytest.raises(ValueError, match=r"`images` must have shape \(n, H, W, C\)"):
        upscale_images(images[0], 224)


@pytest.mark.parametrize(
    "weights, kwargs, match",
    [
        (np.ones((4, 4)), {}, r"`weights` must have shape \(n, q_len, k_len\)"),
        (np.ones((1, 6)), {"grid_size": (2, 2)}, r"`weights` must have shape \(n, 2, 2\) or \(n, 4\)"),
        (np.ones((1, 4)), {"grid_size": (2,)}, "`grid_size` must be a pair"),
        (np.ones((1, 4)), {"grid_size": (2, 2), "image": np.ones((2, 8, 8, 3))}, r"`image` must have shape \(1, H, W"),
        (np.ones((1, 4)), {"grid_size": (2, 2), "image": np.ones((1, 8, 8, 2))}, r"`image` must have shape \(1, H, W"),
        (np.ones((1, 4, 4)), {"image": np.ones((1, 8, 8, 3))}, "`image` overlays need `grid_size"),
        (np.ones((1, 4, 4)), {"cmap": "no-such-map"}, "Unknown matplotlib colormap"),
    ],
)
def test_images_errors(weights, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_heatmap_images(weights, **kwargs)


# --- attention rollout --------------------------------------------------------------------


def test_rollout_of_identity_attention_is_identity():
    eye = np.broadcast_to(np.eye(5), (2, 3, 5, 5))
    for add_residual in (True, False):
        r = attention_rollout([eye, eye, eye], add_residual=add_residual)
        np.testing.assert_allclose(r, np.broadcast_to(np.eye(5), (2, 5, 5)), atol=1e-12)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5])
def test_rollout_rows_sum_to_one(head_fusion, discard_ratio):
    rng = np.random.default_rng(4)
    layers = [_random_attention(rng, 2, 3, 6, 6) for _ in range(4)]
    r = attention_rollout(layers, discard_ratio=discard_ratio, head_fusion=head_fusion)
    assert r.shape == (2, 6, 6)
    assert (r >= 0).all()
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-12)


def test_rollout_one_layer_without_residual_is_the_fused_attention():
    w = _random_attention(np.random.default_rng(5), 2, 4, 5, 5)
    np.testing.assert_allclose(attention_rollout([w], add_residual=False), w.mean(axis=1), atol=1e-12)
    # Max fusion re-normalises the rows of the per-head maximum.
    m = w.max(axis=1)
    np.testing.assert_allclose(
        attention_rollout([w], head_fusion="max", add_residual=False),
        m / m.sum(-1, keepdims=True),
        atol=1e-12,
    )


def test_rollout_two_layers_by_hand():
    # Layer 1: an identity head and a swap head, mean [[.5, .5], [.5, .5]];
    #   with the residual: A1' = [[.75, .25], [.25, .75]].
    # Layer 2: both heads attend to token 0, mean [[1, 0], [1, 0]]; A2' = [[1, 0], [.5, .5]].
    # Rollout = A2' @ A1' = [[.75, .25], [.5, .5]].
    layer1 = np.array([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    layer2 = np.array([[[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]]])
    r = attention_rollout([layer1, layer2])
    np.testing.assert_allclose(r, [[[0.75, 0.25], [0.5, 0.5]]], atol=1e-12)
    # Order matters: the first list entry is the first (lowest) layer.
    # A1' @ A2' = [[.75 + .125, .125], [.25 + .375, .375]].
    r_swapped = attention_rollout([layer2, layer1])
    np.testing.assert_allclose(r_swapped, [[[0.875, 0.125], [0.625, 0.375]]], atol=1e-12)


def test_rollout_discard_ratio_zeroes_the_weakest_weights():
    # One layer, one head, no residual: dropping the 2 smallest of 4 leaves the row maxima.
    w = np.array([[[[0.9, 0.1], [0.3, 0.7]]]])
    r = attention_rollout([w], discard_ratio=0.5, add_residual=False)
    np.testing.assert_allclose(r, [[[1.0, 0.0], [0.0, 1.0]]], atol=1e-12)


def test_rollout_accepts_a_stacked_array():
    layers = np.stack([_random_attention(np.random.default_rng(6), 1, 2, 3, 3) for _ in range(2)])
    np.testing.assert_allclose(attention_rollout(layers), attention_rollout(list(layers)))


@pytest.mark.parametrize(
    "layers, kwargs, match",
    [
        ([], {}, "at least one layer"),
        ([np.ones((2, 4, 4))], {}, r"`attention_weights\[0\]` must have shape \(batch, heads, T, T\)"),
        ([np.ones((1, 2, 4, 5))], {}, r"`attention_weights\[0\]` must have shape .*square: self-attention"),
        ([np.ones((1, 2, 4, 4)), np.ones((1, 2, 5, 5))], {}, r"`attention_weights\[1\]` has shape"),
        (np.ones((1, 2, 4, 4)), {}, "single array of shape"),
        ([np.ones((1, 2, 4, 4))], {"head_fusion": "sum"}, "Unknown `head_fusion`"),
        ([np.ones((1, 2, 4, 4))], {"discard_ratio": 1.0}, "`discard_ratio` must be in"),
    ],
)
def test_rollout_errors(layers, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_rollout(layers, **kwargs)


# --- CLS maps -----------------------------------------------------------------------------


def test_cls_attention_map_shape_range_and_values():
    rng = np.random.default_rng(7)
    r = attention_rollout([_random_attention(rng, 2, 3, 13, 13) for _ in range(2)])
    m = cls_attention_map(r, grid_size=(3, 4))
    assert m.shape == (2, 3, 4)
    assert m.min() >= 0.0 and m.max() == pytest.approx(1.0)
    expected = r[:, 0, 1:] / r[:, 0, 1:].max(-1, keepdims=True)
    np.testing.assert_allclose(m.reshape(2, 12), expected, atol=1e-12)
    # Register tokens: patches start after all prefix tokens.
    m2 = cls_attention_map(r[:, :, :], grid_size=(2, 5), num_prefix_tokens=3)
    np.testing.assert_allclose(m2.reshape(2, 10), r[:, 0, 3:] / r[:, 0, 3:].max(-1, keepdims=True))


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((1, 13, 13), {"grid_size": (3, 3)}, r"`rollout` must have shape \(batch, 10, 10\)"),
        ((13, 13), {"grid_size": (3, 4)}, r"`rollout` must have shape \(batch, 13, 13\)"),
        ((1, 13, 13), {"grid_size": (3, 4), "num_prefix_tokens": 0}, "`num_prefix_tokens` must be"),
        ((1, 13, 13), {"grid_size": (3, -4)}, "`grid_size` must be a pair"),
    ],
)
def test_cls_attention_map_errors(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls_attention_map(np.ones(shape), **kwargs)
