"""Random resized crop and RandAugment in the pipeline (also under the JAX backend)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from apps.vit import data as vd

SEED = tf.constant([3, 4], tf.int64)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def _ramps(n, height, width):
    """Channel 0 is the row index, channel 1 the column index (bilinear resizing is exact)."""
    rows = tf.broadcast_to(tf.range(height, dtype=tf.float32)[:, None], (height, width))
    cols = tf.broadcast_to(tf.range(width, dtype=tf.float32)[None, :], (height, width))
    return tf.broadcast_to(tf.stack([rows, cols], -1), (n, height, width, 2))


# --------------------------------------------------------------------------- resized crop


def test_random_resized_crop_shapes_and_dtypes():
    images = tf.random.stateless_uniform((5, 12, 10, 3), [0, 0])
    out = vd.random_resized_crop(images, (0.35, 1.0), (3 / 4, 4 / 3), SEED)
    assert out.shape == (5, 12, 10, 3) and out.dtype == tf.float32
    half = vd.random_resized_crop(tf.cast(images, tf.float16), (0.35, 1.0), (0.75, 1.3), SEED)
    assert half.dtype == tf.float16
    # Traced with an unknown batch, as in tf.data: the static image shape is kept.
    traced = tf.function(
        lambda x: vd.random_resized_crop(x, (0.5, 1.0), (1.0, 1.0), SEED),
        input_signature=[tf.TensorSpec((None, 12, 10, 3), tf.float32)],
    )
    assert traced.get_concrete_function().structured_outputs.shape.as_list() == [None, 12, 10, 3]


@pytest.mark.parametrize("size", [(9, 9), (12, 10)])
def test_random_resized_crop_full_scale_square_ratio_is_identity(size):
    # (12, 10): a square box of the whole area does not fit, so the whole-image fallback runs.
    images = tf.random.stateless_uniform((4, *size, 2), [1, 1])
    out = vd.random_resized_crop(images, (1.0, 1.0), (1.0, 1.0), SEED)
    np.testing.assert_allclose(out, images, atol=1e-5)


def test_random_resized_crop_boxes_follow_scale_and_ratio():
    n, height, width = 64, 12, 10
    out = vd.random_resized_crop(_ramps(n, height, width), (0.2, 0.6), (0.5, 1.0), SEED).numpy()
    # Row (column) ramps resample to ramps whose slope is the box height (width) fraction.
    box_h = out[:, 1, 0, 0] - out[:, 0, 0, 0]
    box_w = out[:, 0, 1, 1] - out[:, 0, 0, 1]
    area = box_h * box_w
    aspect = (box_w * width) / (box_h * height)
    assert np.all((area > 0.2 - 1e-4) & (area < 0.6 + 1e-4)), area
    assert np.all((aspect > 0.5 - 1e-3) & (aspect < 1.0 + 1e-3)), aspect
    assert out[..., 0].min() >= -1e-4 and out[..., 0].max() <= height - 1 + 1e-4  # inside
    assert out[..., 1].min() >= -1e-4 and out[..., 1].max() <= width - 1 + 1e-4
    # Every image gets its own box and position.
    assert len(np.unique(np.round(area, 4))) > n // 2
    assert len(np.unique(np.round(out[:, 0, 0, 0], 4))) > n // 2


def test_random_resized_crop_differs_across_the_batch_and_replaces_pad_crop():
    image = tf.random.stateless_uniform((1, 16, 16, 1), [2, 2])
    out = vd.random_resized_crop(tf.tile(image, [8, 1, 1, 1]), (0.35, 1.0), (0.75, 4 / 3), SEED)
    flat = out.numpy().reshape(8, -1)
    assert all(not np.allclose(flat[i], flat[j]) for i in range(8) for j in range(i))

    x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 1), dtype=np.uint8)
    y = np.arange(8) % 2
    augment = vd.Augment(pad=4, random_resized_crop=True, crop_scale=(1.0, 1.0), crop_ratio=(1, 1))
    images, labels = next(iter(vd.make_pipeline(x, y, 8, training=True, augment=augment)))
    # Whole-image crops: no pad-and-crop shift happened (images come back shuffled).
    order = [np.flatnonzero((x == img).all(axis=(1, 2, 3)))[0] for img in np.round(images * 255)]
    np.testing.assert_allclose(images, x[order] / 255.0, atol=1e-5)


# --------------------------------------------------------------------------- RandAugment


def _pipeline_batches(channels, augment, n=32, batch=8):
    x = np.random.default_rng(channels).integers(0, 256, (n, 12, 12, channels), dtype=np.uint8)
    y = np.arange(n) % 3
    ds = vd.make_pipeline(x, y, batch, training=True, augment=augment, seed=5)
    return [(images.numpy(), labels.numpy()) for images, labels in ds]


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_in_pipeline_stays_in_range_and_changes_images(channels):
    plain = _pipeline_batches(channels, vd.Augment(pad=0))
    augmented = _pipeline_batches(
        channels, vd.Augment(pad=0, randaugment_layers=2, randaugment_magnitude=0.5)
    )
    assert len(augmented) == 4
    for (images, labels), (_, plain_labels) in zip(augmented, plain):
        assert images.shape == (8, 12, 12, channels) and images.dtype == np.float32
        assert np.all(np.isfinite(images))
        assert images.min() >= 0.0 and images.max() <= 1.0 + 1e-6
        np.testing.assert_array_equal(labels, plain_labels)  # same shuffle, labels untouched
    # Ops are drawn per batch and a few are near-identity on noise (colour degeneration on
    # grey, auto-contrast), so look at all four batches together.
    difference = np.mean([np.abs(a[0] - p[0]).mean() for a, p in zip(augmented, plain)])
    assert difference > 0.02


def test_randaugment_on_grey_matches_the_rgb_round_trip():
    # Grey needs no conversion: the layer on (…, 1) equals grey -> RGB -> layer -> grey.
    grey = tf.random.stateless_uniform((16, 12, 12, 1), [7, 7])
    out_grey = vd.randaugment_layer(2, 0.5, seed=11)(grey, training=True)
    rgb = vd.randaugment_layer(2, 0.5, seed=11)(tf.image.grayscale_to_rgb(grey), training=True)
    out_rgb = tf.image.rgb_to_grayscale(rgb)
    assert out_grey.shape == grey.shape
    close = np.abs(out_grey.numpy() - out_rgb.numpy()) < 1e-3
    assert close.mean() > 0.99  # a few pixels may sit on a solarize/posterize threshold
    assert not np.allclose(out_grey, grey, atol=1e-2)


def test_randaugment_keeps_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")  # reset by the conftest fixture
    x = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)
    augment = vd.Augment(pad=0, randaugment_layers=1)
    images, _ = next(iter(vd.make_pipeline(x, np.arange(8) % 2, 8, True, augment=augment)))
    assert images.dtype == tf.float32


@pytest.mark.slow  # 20-50 s on a busy 2-core CPU: imports, tracing RandAugment, JIT
def test_randaugment_pipeline_and_input_wait_under_jax_backend():
    script = textwrap.dedent(
        """
        import json, numpy as np, keras
        from apps.vit import data as vd
        from tfattn.training import InputWaitCallback
        x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
        y = np.arange(64) % 3
        augment = vd.Augment(pad=1, randaugment_layers=2, random_resized_crop=True)
        ds = vd.make_pipeline(x, y, 16, True, num_classes=3, augment=augment, one_hot=True)
        images, _ = next(iter(ds))
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(3)])
        model.compile("sgd", "categorical_crossentropy")
        wait = InputWaitCallback(warmup=1)
        model.fit(wait.wrap(ds), epochs=1, callbacks=[wait], verbose=0)
        print(json.dumps({"backend": keras.backend.backend(), "min": float(images.numpy().min()),
                          "max": float(images.numpy().max()), **wait.summary()}))
        """
    )
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    assert 0.0 <= result["min"] and result["max"] <= 1.0 + 1e-6
    assert result["steps"] == 3 and 0.0 <= result["fraction"] <= 1.0


# --------------------------------------------------------------------------- Augment checks


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"crop_scale": 0.5}, "crop_scale"),
        ({"crop_ratio": (-1.0, 2.0)}, "crop_ratio"),
        ({"crop_ratio": (0.0, 1.0)}, "crop_ratio"),
        ({"randaugment_layers": -1}, "randaugment_layers"),
        ({"randaugment_layers": 1.5}, "randaugment_layers"),
        ({"randaugment_magnitude": 1.5}, "randaugment_magnitude"),
        ({"pad": -1}, "pad"),
        ({"mixup_alpha": -0.2}, "mixup_alpha"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_augment_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"Augment\.{field}\b"):
        vd.Augment(**kwargs)


def test_augment_accepts_lists_from_json_configs():
    augment = vd.Augment(crop_scale=[0.08, 1], crop_ratio=[0.75, 1.25])
    assert augment.crop_scale == (0.08, 1.0) and augment.crop_ratio == (0.75, 1.25)
