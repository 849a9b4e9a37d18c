import gzip
import logging
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from apps.vit import data as vd

DEBIAN_DIR = vd.FASHION_MNIST_DIR
DEBIAN_FILES_PRESENT = all(
    os.path.exists(os.path.join(DEBIAN_DIR, f)) for f in vd.FASHION_MNIST_FILES.values()
)


def _write_idx_images(path, images, magic=2051, count=None, gz=True):
    n, rows, cols = images.shape
    header = struct.pack(">4i", magic, n if count is None else count, rows, cols)
    payload = header + images.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)


def _write_idx_labels(path, labels, magic=2049, count=None, gz=True):
    header = struct.pack(">2i", magic, len(labels) if count is None else count)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + labels.astype(np.uint8).tobytes())


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], np.uint8)
    _write_idx_images(tmp_path / "img", images, gz=gz)
    _write_idx_labels(tmp_path / "lab", labels, gz=gz)
    got = vd.read_idx_images(str(tmp_path / "img"))
    assert got.shape == (5, 3, 4, 1) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], images)
    np.testing.assert_array_equal(vd.read_idx_labels(str(tmp_path / "lab")), labels)


def test_idx_wrong_magic_names_file(tmp_path):
    path = tmp_path / "bad-images.gz"
    _write_idx_images(path, np.zeros((2, 2, 2)), magic=2049)
    with pytest.raises(ValueError, match=r"bad-images\.gz.*expected magic number 2051, got 2049"):
        vd.read_idx_images(str(path))
    labels = tmp_path / "bad-labels.gz"
    _write_idx_images(labels, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"bad-labels\.gz.*expected magic number 2049"):
        vd.read_idx_labels(str(labels))


def test_idx_truncated_header_and_data(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">2i", 2051, 3))
    with pytest.raises(ValueError, match=r"short: truncated .*16-byte header, got 8"):
        vd.read_idx_images(str(short))
    cut = tmp_path / "cut"
    _write_idx_images(cut, np.zeros((3, 2, 2)), count=4, gz=False)
    with pytest.raises(ValueError, match=r"cut: truncated .*\(4, 2, 2\)"):
        vd.read_idx_images(str(cut))


def test_idx_count_mismatch(tmp_path):
    path = tmp_path / "labels"
    _write_idx_labels(path, np.arange(5), count=3)
    with pytest.raises(ValueError, match=r"labels: count mismatch .*\(3,\).*holds 5"):
        vd.read_idx_labels(str(path))


def test_idx_truncated_gzip_names_file(tmp_path):
    path = tmp_path / "x.gz"
    _write_idx_images(path, np.ones((4, 8, 8)))
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"x\.gz: corrupt or truncated gzip"):
        vd.read_idx_images(str(path))


def test_load_fashion_mnist_from_files_and_label_count_check(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("t10k", 4)):
        _write_idx_images(
            tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28))
        )
        _write_idx_labels(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    (x_train, y_train), (x_test, y_test) = vd.load_fashion_mnist(str(tmp_path))
    assert x_train.shape == (6, 28, 28, 1) and y_test.shape == (4,)
    _write_idx_labels(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3))
    with pytest.raises(ValueError, match=r"t10k-images.*4 images.*3 labels"):
        vd.load_fashion_mnist(str(tmp_path))


def test_fashion_mnist_offline_error_says_how_to_fix(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(vd, "_tfds_load", offline)
    with pytest.raises(RuntimeError, match=r"dataset-fashion-mnist.*go online") as info:
        vd.load_fashion_mnist(str(tmp_path))
    assert str(tmp_path) in str(info.value)
    with pytest.raises(RuntimeError, match=r"'cifar10'.*network"):
        vd.load_dataset("tfds:cifar10")


def test_tfds_spec_uses_builder_class_names(monkeypatch):
    class Label:
        names = ["a", "b", "c"]

    class Info:
        supervised_keys = ("image", "label")
        features = {"label": Label()}

    x = np.zeros((10, 4, 4, 3), np.uint8)
    y = np.arange(10) % 3

    def fake_load(name, **kwargs):
        assert name == "my_ds" and kwargs["split"] == ["train", "test"]
        return [(tf.constant(x), tf.constant(y)), (tf.constant(x[:4]), tf.constant(y[:4]))], Info()

    monkeypatch.setattr(vd, "_tfds_load", fake_load)
    data = vd.load_dataset("tfds:my_ds", validation_fraction=0.2, channels=1)
    assert data.class_names == ("a", "b", "c")
    assert data.x_train.shape[-1] == 1 and len(data.x_test) == 4
    assert len(data.x_train) + len(data.x_val) == 10


@pytest.mark.skipif(
    not DEBIAN_FILES_PRESENT,
    reason=f"Debian package dataset-fashion-mnist not installed (no files in {DEBIAN_DIR}); "
    "install it with apt-get install dataset-fashion-mnist",
)
def test_real_fashion_mnist_files():
    (x_train, y_train), (x_test, y_test) = vd.load_fashion_mnist()
    assert x_train.shape == (60000, 28, 28, 1) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28, 1)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train.min() == 0 and y_train.max() == 9
    np.testing.assert_array_equal(np.bincount(y_train), np.full(10, 6000))
    assert 0 < x_train.mean() < 255
    data = vd.load_dataset("fashion_mnist", validation_fraction=0.1)
    assert len(data.x_train) == 54000 and len(data.x_val) == 6000
    assert len(data.x_test) == 10000 and data.num_classes == 10


# --------------------------------------------------------------------------- folders


def _save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    encode = tf.io.encode_png if path.suffix == ".png" else tf.io.encode_jpeg
    path.write_bytes(encode(image).numpy())


def _image(seed, channels, size=(8, 8)):
    return np.random.default_rng(seed).integers(0, 256, (*size, channels), dtype=np.uint8)


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "images"
    for i in range(5):
        _save(root / "cat" / f"grey{i}.png", _image(i, 1))
        _save(root / "dog" / f"rgb{i}.jpg", _image(10 + i, 3))
    _save(root / "dog" / "nested" / "rgb.png", _image(20, 3))
    _save(root / "cat" / "rgb.png", _image(21, 3))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "empty").mkdir()
    return root


def test_folder_loader_skips_bad_files_and_reports_empty_class(image_tree, caplog):
    with caplog.at_level(logging.WARNING, logger="apps.vit.data"):
        (x_train, y_train), (x_test, y_test), names = vd.load_image_folder(
            str(image_tree), test_fraction=0.25, seed=0
        )
    assert names == ("cat", "dog")
    assert x_train.dtype == np.uint8 and x_train.shape[1:] == (8, 8, 3)  # colour seen → RGB
    assert len(x_train) + len(x_test) == 12
    assert sorted(np.bincount(y_test)) == [2, 2]  # stratified: round(6 * 0.25) per class
    messages = caplog.text
    assert "Skipped 2 files" in messages
    assert "notes.txt" in messages and "broken.png" in messages
    assert "no images" in messages and "'empty'" in messages


def test_folder_loader_strict_lists_bad_files(image_tree):
    with pytest.raises(ValueError, match=r"2 files .*not readable.*(broken\.png|notes\.txt)"):
        vd.load_image_folder(str(image_tree), strict=True)


def test_folder_loader_grey_conversion_and_resize(image_tree):
    (x_train, _), (x_test, _), _ = vd.load_image_folder(
        str(image_tree), channels=1, image_size=(5, 6)
    )
    assert x_train.shape[1:] == (5, 6, 1) and x_test.shape[1:] == (5, 6, 1)


def test_folder_loader_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("text")
    with pytest.raises(ValueError, match=r"no class sub-folder holds a readable image"):
        vd.load_image_folder(str(tmp_path))
    _save(tmp_path / "a" / "small.png", _image(0, 1, (4, 4)))
    _save(tmp_path / "b" / "large.png", _image(0, 1, (6, 6)))
    with pytest.raises(ValueError, match=r"differ in size.*image_size"):
        vd.load_image_folder(str(tmp_path))
    with pytest.raises(ValueError, match=r"does not exist"):
        vd.load_image_folder(str(tmp_path / "missing"))


def test_folder_with_a_single_class_is_refused(tmp_path):
    for i in range(4):
        _save(tmp_path / "flat" / "cat" / f"{i}.png", _image(i, 1))
        _save(tmp_path / "split" / "train" / "cat" / f"{i}.png", _image(i, 1))
        _save(tmp_path / "split" / "test" / "cat" / f"{i}.png", _image(i, 1))
    (tmp_path / "flat" / "dog").mkdir()  # an empty class folder does not count
    with pytest.raises(ValueError, match=r"flat: only one class folder holds images \('cat'\)"):
        vd.load_dataset(f"folder:{tmp_path / 'flat'}")
    with pytest.raises(ValueError, match=r"only one class folder.*under train/ and test/"):
        vd.load_image_folder(str(tmp_path / "split"))


def test_folder_train_test_subfolders_and_validation_split(tmp_path):
    for split, n in (("train", 10), ("test", 3)):
        for c, name in enumerate(("b", "a")):
            for i in range(n):
                _save(tmp_path / split / name / f"{i}.png", _image(100 * c + i, 1))
    data = vd.load_dataset(f"folder:{tmp_path}", validation_fraction=0.2, seed=3)
    assert data.class_names == ("a", "b")
    assert len(data.x_test) == 6 and len(data.x_train) == 16 and len(data.x_val) == 4
    np.testing.assert_array_equal(np.bincount(data.y_val), [2, 2])
    # Validation images come from the training split and are disjoint from what is left.
    train_set = {x.tobytes() for x in data.x_train}
    val_set = {x.tobytes() for x in data.x_val}
    test_set = {x.tobytes() for x in data.x_test}
    assert not train_set & val_set and not val_set & test_set and len(train_set) == 16


def test_stratified_split_is_seeded_and_disjoint():
    y = np.repeat(np.arange(3), [10, 20, 30])
    keep, held = vd.stratified_split(y, 0.1, seed=5)
    assert not set(keep) & set(held) and len(keep) + len(held) == 60
    np.testing.assert_array_equal(np.bincount(y[held]), [1, 2, 3])
    np.testing.assert_array_equal(held, vd.stratified_split(y, 0.1, seed=5)[1])
    assert not np.array_equal(held, vd.stratified_split(y, 0.1, seed=6)[1])
    assert len(vd.stratified_split(y, 0.0)[1]) == 0


def test_convert_channels():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255
    grey = vd.convert_channels(rgb, 1)
    assert grey.shape == (2, 2, 1) and grey[0, 0, 0] == 76  # round(0.299 * 255)
    assert vd.convert_channels(grey, 3).shape == (2, 2, 3)
    rgba = np.full((2, 2, 4), 7, np.uint8)
    np.testing.assert_array_equal(vd.convert_channels(rgba, 3), rgba[..., :3])


# --------------------------------------------------------------------------- augmentation

SEED = tf.constant([1, 2], tf.int64)


def _batch(n=6, size=8, channels=1):
    return tf.random.stateless_uniform((n, size, size, channels), [0, 0])


def test_random_pad_crop_is_a_shifted_window():
    images = _batch()
    out = vd.random_pad_crop(images, 2, SEED)
    assert out.shape == images.shape
    padded = np.pad(images.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)])
    for i in range(6):
        windows = [padded[i, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(np.array_equal(out[i].numpy(), w) for w in windows)
    assert vd.random_pad_crop(images, 0, SEED) is images


def test_random_flip_flips_some_and_keeps_others():
    images = _batch(n=32)
    out = vd.random_flip(images, SEED).numpy()
    flipped = [np.array_equal(out[i], images[i].numpy()[:, ::-1]) for i in range(32)]
    kept = [np.array_equal(out[i], images[i].numpy()) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 32


def test_mixup_and_cutmix_labels_sum_to_one_and_values_stay_in_range():
    images = _batch(n=16, channels=3)
    labels = tf.one_hot(np.arange(16) % 4, 4)
    for fn in (vd.mixup, vd.cutmix):
        out, mixed = fn(images, labels, 1.0, SEED)
        assert out.shape == images.shape and mixed.shape == labels.shape
        np.testing.assert_allclose(tf.reduce_sum(mixed, -1), np.ones(16), atol=1e-6)
        assert tf.reduce_min(out) >= 0.0 and tf.reduce_max(out) <= 1.0
        assert tf.reduce_min(mixed) >= 0.0
        assert np.any(mixed.numpy().max(-1) < 1.0)  # some labels actually mixed


def test_cutmix_label_weight_equals_pasted_area():
    # Images constant per example: the share of the partner's value equals the pasted area.
    n = 8
    images = tf.reshape(tf.range(n, dtype=tf.float32), (n, 1, 1, 1)) * tf.ones((n, 10, 10, 1))
    labels = tf.one_hot(np.arange(n), n)
    out, mixed = vd.cutmix(images, labels, 1.0, SEED)
    for i in range(n):
        own = np.mean(out[i].numpy() == i)
        np.testing.assert_allclose(mixed[i, i], own, atol=1e-6)


def test_smooth_labels():
    out = vd.smooth_labels(tf.one_hot([0, 2], 4), 0.1)
    np.testing.assert_allclose(out[0], [0.925, 0.025, 0.025, 0.025], atol=1e-6)
    np.testing.assert_allclose(tf.reduce_sum(out, -1), [1.0, 1.0], atol=1e-6)


# --------------------------------------------------------------------------- pipeline


def _arrays(n=10, size=8, channels=1):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), np.arange(n) % 3


def test_pipeline_eval_shapes_dtypes_and_order():
    x, y = _arrays()
    batches = list(vd.make_pipeline(x, y, 4, training=False))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    images, labels = batches[0]
    assert images.dtype == tf.float32 and labels.dtype == tf.int32
    np.testing.assert_allclose(images, x[:4] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(labels, y[:4])


def test_pipeline_normalises_resizes_and_one_hot():
    x, y = _arrays(channels=3)
    mean, std = vd.compute_mean_std(x)
    ds = vd.make_pipeline(
        x, y, 10, training=False, image_size=12, num_classes=5, one_hot=True, mean=mean, std=std
    )
    images, labels = next(iter(ds))
    assert images.shape == (10, 12, 12, 3) and labels.shape == (10, 5)
    ds = vd.make_pipeline(x, y, 10, training=False, mean=mean, std=std)
    images, _ = next(iter(ds))
    np.testing.assert_allclose(np.mean(images, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.std(images, axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_pipeline_training_shuffles_seeded_and_augments():
    x, y = _arrays(n=20)
    augment = vd.Augment(pad=2, flip=True, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
    ds = vd.make_pipeline(x, y, 8, training=True, num_classes=3, augment=augment, seed=1)
    first = [b for b in ds]
    assert [b[0].shape for b in first] == [(8, 8, 8, 1), (8, 8, 8, 1), (4, 8, 8, 1)]
    for images, labels in first:
        assert labels.shape[1] == 3 and labels.dtype == tf.float32
        np.testing.assert_allclose(tf.reduce_sum(labels, -1), 1.0, atol=1e-5)
        assert tf.reduce_min(images) >= 0.0 and tf.reduce_max(images) <= 1.0
    again = [
        b for b in vd.make_pipeline(x, y, 8, training=True, num_classes=3, augment=augment, seed=1)
    ]
    np.testing.assert_array_equal(first[0][0], again[0][0])  # seeded

    plain = vd.make_pipeline(x, y, 20, training=True, seed=1)
    epoch1, epoch2 = [next(iter(plain))[1].numpy() for _ in range(2)]
    assert sorted(epoch1) == sorted(y) and not np.array_equal(epoch1, y)
    assert not np.array_equal(epoch1, epoch2)  # reshuffled each epoch


def test_pipeline_rejects_soft_augment_with_int_labels():
    x, y = _arrays()
    with pytest.raises(ValueError, match="one_hot=True"):
        vd.make_pipeline(x, y, 4, training=True, augment=vd.Augment(mixup_alpha=0.2), one_hot=False)


def test_load_dataset_rejects_unknown_spec():
    with pytest.raises(ValueError, match=r"'imagenet'.*folder:/path"):
        vd.load_dataset("imagenet")
