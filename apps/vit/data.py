"""Data for the ViT image-classification app: loaders and a tf.data pipeline.

Sources (`load_dataset(spec)`):
    "fashion_mnist"   Debian `dataset-fashion-mnist` files when present, else TFDS.
    "tfds:NAME"       any fixed-size TFDS image-classification dataset with train/test splits.
    "folder:/path"    one sub-folder per class; `train/` and `test/` sub-folders are used
                      when both exist, otherwise a seeded stratified test split is made.

The validation split always comes from the training split, never from test.

    data = load_dataset("fashion_mnist", validation_fraction=0.1)
    mean, std = compute_mean_std(data.x_train)
    train_ds = make_pipeline(data.x_train, data.y_train, 128, training=True,
                             num_classes=data.num_classes, augment=Augment(pad=2),
                             mean=mean, std=std)

Is the pipeline fast enough? `tfattn.training.benchmark_pipeline(train_ds)` gives its
images/s on its own, `tfattn.training.InputWaitCallback` the share of each training step
spent waiting for input.
"""

import dataclasses
import gzip
import logging
import math
import os
import struct

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
_INSTALL_HINT = (
    "install the Debian package `dataset-fashion-mnist` "
    "(apt-get install dataset-fashion-mnist) or go online so TFDS can download it"
)


# --------------------------------------------------------------------------- IDX files


def _read_bytes(path):
    """Whole file contents, transparently gunzipped (detected by magic bytes, not name)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err
    return raw


def _read_idx(path, magic, header_dims, what):
    data = _read_bytes(path)
    header_len = 4 * (1 + header_dims)
    if len(data) < header_len:
        raise ValueError(
            f"{path}: truncated IDX {what} file: expected a {header_len}-byte header, "
            f"got {len(data)} bytes"
        )
    fields = struct.unpack(f">{1 + header_dims}i", data[:header_len])
    if fields[0] != magic:
        raise ValueError(
            f"{path}: not an IDX {what} file: expected magic number {magic}, got {fields[0]}"
        )
    dims = fields[1:]
    if any(d < 0 for d in dims):
        raise ValueError(f"{path}: negative dimension in IDX header {dims}")
    expected = int(np.prod(dims))
    payload = len(data) - header_len
    if payload < expected:
        raise ValueError(
            f"{path}: truncated IDX {what} file: header says shape {dims} "
            f"({expected} bytes of data), file holds {payload}"
        )
    if payload > expected:
        raise ValueError(
            f"{path}: count mismatch in IDX {what} file: header says shape {dims} "
            f"({expected} bytes of data), file holds {payload}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx_images(path):
    """Reads an IDX3 unsigned-byte image file (optionally gzipped).

    Args:
        path: file with a 16-byte header (magic 2051, count, rows, cols; big-endian int32).

    Returns:
        uint8 array of shape (count, rows, cols, 1).

    Raises:
        ValueError naming the file on a wrong magic number, a truncated file or a count
        that disagrees with the data size.
    """
    return _read_idx(path, IDX_IMAGES_MAGIC, 3, "images")[..., None]


def read_idx_labels(path):
    """Reads an IDX1 unsigned-byte label file (optionally gzipped).

    Args:
        path: file with an 8-byte header (magic 2049, count; big-endian int32).

    Returns:
        int32 array of shape (count,).

    Raises:
        ValueError naming the file, as `read_idx_images`.
    """
    return _read_idx(path, IDX_LABELS_MAGIC, 1, "labels").astype(np.int32)


def _tfds_load(name, **kwargs):
    """`tfds.load`, isolated so tests can replace it (TFDS cannot download offline)."""
    import tensorflow_datasets as tfds

    return tfds.load(name, **kwargs)


def load_fashion_mnist(data_dir=None):
    """Loads Fashion-MNIST: local Debian IDX files first, then TFDS.

    Args:
        data_dir: folder holding the four `*-ubyte.gz` files; defaults to the Debian
            package's `/usr/share/datasets/fashion-mnist`.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: uint8 images (N, 28, 28, 1) and int32
        labels in 0..9 (60,000 train, 10,000 test).

    Raises:
        RuntimeError when the files are absent and TFDS cannot load the dataset.
    """
    data_dir = data_dir or FASHION_MNIST_DIR
    paths = {k: os.path.join(data_dir, f) for k, f in FASHION_MNIST_FILES.items()}
    if all(os.path.exists(p) for p in paths.values()):
        arrays = {}
        for split in ("train", "test"):
            x = read_idx_images(paths[f"x_{split}"])
            y = read_idx_labels(paths[f"y_{split}"])
            if len(x) != len(y):
                raise ValueError(
                    f"{paths[f'x_{split}']} holds {len(x)} images but "
                    f"{paths[f'y_{split}']} holds {len(y)} labels; expected equal counts"
                )
            if len(y) and y.max() >= len(CLASS_NAMES):
                raise ValueError(
                    f"{paths[f'y_{split}']}: label {y.max()} out of range 0..{len(CLASS_NAMES) - 1}"
                )
            arrays[split] = (x, y)
        return arrays["train"], arrays["test"]

    missing = [p for p in paths.values() if not os.path.exists(p)]
    logger.info("Fashion-MNIST files missing (%s); trying TFDS", ", ".join(missing))
    try:
        train, test = _tfds_load(
            "fashion_mnist", split=["train", "test"], as_supervised=True, batch_size=-1
        )
    except Exception as err:  # TFDS raises many kinds of errors when offline
        raise RuntimeError(
            f"Cannot load Fashion-MNIST: no IDX files in {data_dir} and TFDS failed "
            f"({type(err).__name__}: {err}). To fix, {_INSTALL_HINT}."
        ) from err
    return _tfds_to_numpy(train), _tfds_to_numpy(test)


def _tfds_to_numpy(split):
    x, y = split
    return np.asarray(x, dtype=np.uint8), np.asarray(y).astype(np.int32)


# --------------------------------------------------------------------------- datasets


@dataclasses.dataclass
class ImageData:
    """Train/validation/test arrays: uint8 images (N, H, W, C) and int32 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        return tuple(self.x_train.shape[1:])


def stratified_split(y, fraction, seed=0):
    """Seeded per-class split of indices.

    Args:
        y: int labels (N,).
        fraction: share of each class (rounded) that goes to the second part.
        seed: NumPy seed.

    Returns:
        `(keep, held_out)` sorted index arrays that are disjoint and cover range(N).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        held.append(idx[: int(round(len(idx) * fraction))])
    held = np.sort(np.concatenate(held)) if held else np.zeros((0,), np.int64)
    keep = np.setdiff1d(np.arange(len(y)), held)
    return keep, held


def convert_channels(images, channels):
    """Converts uint8 images (..., H, W, C) with C in 1..4 to 1 (grey) or 3 (RGB) channels.

    Alpha channels are dropped; RGB → grey uses the ITU-R 601 luma weights.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    c = images.shape[-1]
    if c not in (1, 2, 3, 4):
        raise ValueError(f"expected 1 to 4 channels, got shape {images.shape}")
    if c in (2, 4):
        images = images[..., : c - 1]
        c -= 1
    if c == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


def _decode_file(path):
    with open(path, "rb") as f:
        contents = f.read()
    # expand_animations=False: a GIF gives its first frame as (H, W, C) like other formats.
    return tf.io.decode_image(contents, channels=0, expand_animations=False).numpy()


def _list_class_dirs(root):
    return sorted(
        d
        for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )


def _read_class_folders(root):
    """{class_name: [decoded images]} plus the unreadable paths, for one split folder."""
    files = []
    for name in _list_class_dirs(root):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames.sort()
            files += [(name, os.path.join(dirpath, f)) for f in sorted(filenames)]
    images, skipped = {name: [] for name in _list_class_dirs(root)}, []
    # A progress bar on a terminal (tqdm disables itself when stderr is not a TTY).
    for name, path in tqdm(files, desc=f"decoding {root}", unit="file", disable=None):
        try:
            images[name].append((path, _decode_file(path)))
        except (tf.errors.OpError, OSError):
            skipped.append(path)
    return images, skipped


def _stack(items, class_index, channels, image_size):
    """(path, image, class) triples → uint8 (N, H, W, C), int32 (N,)."""
    if not items:
        return np.zeros((0, 1, 1, channels), np.uint8), np.zeros((0,), np.int32)
    xs, ys = [], []
    for path, image, name in items:
        image = convert_channels(image, channels)
        if image_size is not None and image.shape[:2] != tuple(image_size):
            image = tf.image.resize(image, image_size, antialias=True).numpy()
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        xs.append((path, image))
        ys.append(class_index[name])
    shapes = {x.shape for _, x in xs}
    if len(shapes) > 1:
        first = xs[0]
        other = next(x for x in xs if x[1].shape != first[1].shape)
        raise ValueError(
            f"Images differ in size ({first[0]}: {first[1].shape[:2]}, "
            f"{other[0]}: {other[1].shape[:2]}); pass image_size=(height, width)"
        )
    return np.stack([x for _, x in xs]), np.asarray(ys, np.int32)


def load_image_folder(
    root, *, channels=None, image_size=None, test_fraction=0.2, seed=0, strict=False
):
    """Loads a folder with one sub-folder per class (`root/<class>/**/<image>`).

    When `root/train` and `root/test` both exist they are the train and test splits
    (each with class sub-folders); otherwise a seeded stratified `test_fraction` of every
    class becomes the test split.

    Args:
        root: the folder.
        channels: 1 or 3; None picks 3 when any image has colour, else 1.
        image_size: (height, width) to resize to; needed when image sizes differ.
        test_fraction: share of each class held out for test without train/test folders.
        seed: seed of that split.
        strict: raise instead of skipping files that are not readable images.

    Returns:
        `((x_train, y_train), (x_test, y_test), class_names)`; class names sorted, and
        class folders without any image left out (with a warning naming them).

    Raises:
        ValueError when no class folder or only one holds an image, or (with `strict`)
        listing the unreadable files.
    """
    if not os.path.isdir(root):
        raise ValueError(f"{root}: image folder does not exist")
    has_splits = all(os.path.isdir(os.path.join(root, s)) for s in ("train", "test"))
    split_dirs = (
        {s: os.path.join(root, s) for s in ("train", "test")} if has_splits else {"all": root}
    )

    per_split, skipped = {}, []
    for split, directory in split_dirs.items():
        per_split[split], split_skipped = _read_class_folders(directory)
        skipped += split_skipped
    if skipped:
        if strict:
            raise ValueError(
                f"{len(skipped)} files under {root} are not readable images "
                f"(JPEG, PNG, BMP or GIF expected): {skipped}"
            )
        logger.warning(
            "Skipped %d files under %s that are not readable images: %s",
            len(skipped),
            root,
            skipped,
        )

    all_names = sorted({n for images in per_split.values() for n in images})
    class_names = sorted(
        n for n in all_names if any(images.get(n) for images in per_split.values())
    )
    empty = [n for n in all_names if n not in class_names]
    if not class_names:
        raise ValueError(
            f"{root}: no class sub-folder holds a readable image "
            f"(class folders found: {all_names or 'none'})"
        )
    if len(class_names) == 1:  # a 1-class classifier trains to 100% and learns nothing
        raise ValueError(
            f"{root}: only one class folder holds images ({class_names[0]!r}); a classifier "
            "needs at least two: one sub-folder of images per class"
            + (" under train/ and test/" if has_splits else "")
        )
    if empty:
        logger.warning("Class folders under %s with no images (left out): %s", root, empty)

    if channels is None:
        colour = any(
            img.shape[-1] >= 3
            for images in per_split.values()
            for items in images.values()
            for _, img in items
        )
        channels = 3 if colour else 1
    class_index = {n: i for i, n in enumerate(class_names)}

    def triples(images):
        return [(p, img, n) for n in class_names for p, img in images.get(n, [])]

    if has_splits:
        train = _stack(triples(per_split["train"]), class_index, channels, image_size)
        test = _stack(triples(per_split["test"]), class_index, channels, image_size)
    else:
        x, y = _stack(triples(per_split["all"]), class_index, channels, image_size)
        keep, held = stratified_split(y, test_fraction, seed)
        train, test = (x[keep], y[keep]), (x[held], y[held])
    return train, test, tuple(class_names)


def load_tfds(name, channels=None):
    """Loads the train and test splits of a fixed-size TFDS image-classification dataset.

    Returns:
        `((x_train, y_train), (x_test, y_test), class_names)`.

    Raises:
        RuntimeError when TFDS cannot load it (offline and not yet downloaded).
    """
    try:
        (train, test), info = _tfds_load(
            name, split=["train", "test"], as_supervised=True, batch_size=-1, with_info=True
        )
    except Exception as err:  # TFDS raises many kinds of errors when offline
        raise RuntimeError(
            f"Cannot load TFDS dataset {name!r} with train/test splits "
            f"({type(err).__name__}: {err}). TFDS needs network access to download it "
            "once; offline, use a folder:/path dataset or the fashion_mnist Debian files."
        ) from err
    label_key = info.supervised_keys[1]
    class_names = tuple(info.features[label_key].names)
    (x_train, y_train), (x_test, y_test) = _tfds_to_numpy(train), _tfds_to_numpy(test)
    if channels is not None:
        x_train, x_test = convert_channels(x_train, channels), convert_channels(x_test, channels)
    return (x_train, y_train), (x_test, y_test), class_names


def load_dataset(
    spec="fashion_mnist",
    *,
    validation_fraction=0.1,
    seed=0,
    channels=None,
    image_size=None,
    test_fraction=0.2,
    strict=False,
    data_dir=None,
):
    """Loads an image-classification dataset and splits validation off its training split.

    Args:
        spec: "fashion_mnist", "tfds:NAME" or "folder:/path" (see the module docstring).
        validation_fraction: seeded stratified share of the training split used for
            validation; the test split is never touched.
        seed: seed of the validation (and folder test) split.
        channels: 1 or 3 to convert images to; None keeps the source's channels.
        image_size: (height, width) folder images are resized to (other sources keep their
            size; `make_pipeline` resizes).
        test_fraction: folder datasets without train/test sub-folders only.
        strict: folder datasets: raise on unreadable files instead of skipping them.
        data_dir: fashion_mnist only: folder of the IDX files.

    Returns:
        `ImageData`.
    """
    if spec == "fashion_mnist":
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir)
        if channels is not None:
            x_train = convert_channels(x_train, channels)
            x_test = convert_channels(x_test, channels)
        class_names = CLASS_NAMES
    elif spec.startswith("tfds:"):
        (x_train, y_train), (x_test, y_test), class_names = load_tfds(spec[5:], channels)
    elif spec.startswith("folder:"):
        (x_train, y_train), (x_test, y_test), class_names = load_image_folder(
            spec[7:],
            channels=channels,
            image_size=image_size,
            test_fraction=test_fraction,
            seed=seed,
            strict=strict,
        )
    else:
        raise ValueError(
            f"Unknown dataset spec {spec!r}: expected 'fashion_mnist', 'tfds:NAME' or "
            "'folder:/path'"
        )
    keep, val = stratified_split(y_train, validation_fraction, seed)
    return ImageData(
        x_train=x_train[keep],
        y_train=y_train[keep],
        x_val=x_train[val],
        y_val=y_train[val],
        x_test=x_test,
        y_test=y_test,
        class_names=tuple(class_names),
    )


def compute_mean_std(x):
    """Per-channel mean and std of uint8 images on the [0, 1] scale, as float32 (C,)."""
    x = np.asarray(x, np.float64) / 255.0
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes).astype(np.float32), x.std(axis=axes).astype(np.float32)


# --------------------------------------------------------------------------- augmentation
# Batch-level functions on float images (batch, H, W, C); `seed` is a stateless seed (2,).


def random_pad_crop(images, pad, seed):
    """Zero-pads each side by `pad` pixels, then crops a random (H, W) window per image."""
    if pad <= 0:
        return images
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.stateless_uniform(
        (batch, 2), seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)[None]  # (batch, H)
    cols = offsets[:, 1:] + tf.range(width)[None]  # (batch, W)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # (batch, H, W + 2 pad, C)
    return tf.gather(out, cols, axis=2, batch_dims=1)  # (batch, H, W, C)


RESIZED_CROP_ATTEMPTS = 10  # candidate boxes per image, as torchvision


def random_resized_crop(images, scale, ratio, seed):
    """Inception-style random resized crop, resized back to the input size.

    Each image gets a box whose area is a fraction of the image drawn uniformly from
    `scale` and whose aspect ratio (width / height, in pixels) is drawn log-uniformly from
    `ratio`, placed uniformly at random, then resized bilinearly to (H, W) in one batched
    `tf.image.crop_and_resize`. As torchvision, the first of 10 candidate boxes that fits
    inside the image is used, and the whole image when none does. Boxes are not rounded
    to whole pixels.

    Args:
        images: float (batch, H, W, C).
        scale: (min, max) area fraction, within (0, 1].
        ratio: (min, max) aspect ratio, both > 0.
        seed: stateless seed (2,).

    Returns:
        float (batch, H, W, C) of the same dtype.

    Reference:
        Szegedy et al., "Going deeper with convolutions", CVPR 2015.
    """
    shape = tf.shape(images)
    batch = shape[0]
    size = images.shape[1:3] if images.shape[1:3].is_fully_defined() else shape[1:3]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    candidates = (batch, RESIZED_CROP_ATTEMPTS)
    area = tf.random.stateless_uniform(candidates, seeds[0], scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform(
        candidates, seeds[1], math.log(ratio[0]), math.log(ratio[1])
    )
    aspect = tf.exp(log_ratio)
    # Box sides as fractions of the image sides: (h H) (w W) = area H W, (w W) / (h H) = aspect.
    box_h = tf.sqrt(area * width / (aspect * height))  # (batch, attempts)
    box_w = tf.sqrt(area * aspect * height / width)
    fits = (box_h <= 1.0) & (box_w <= 1.0)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)  # (batch,)
    any_fits = tf.reduce_any(fits, axis=1)
    box_h = tf.where(any_fits, tf.gather(box_h, first, batch_dims=1), 1.0)  # (batch,)
    box_w = tf.where(any_fits, tf.gather(box_w, first, batch_dims=1), 1.0)
    corner = tf.random.stateless_uniform((batch, 2), seeds[2])
    top = corner[:, 0] * (1.0 - box_h)
    left = corner[:, 1] * (1.0 - box_w)
    boxes = tf.stack([top, left, top + box_h, left + box_w], axis=1)  # (batch, 4) normalised
    out = tf.image.crop_and_resize(images, boxes, tf.range(batch), size)  # (batch, H, W, C)
    return tf.cast(out, images.dtype)


def random_flip(images, seed):
    """Flips each image left-right with probability 1/2."""
    flip = tf.random.stateless_uniform((tf.shape(images)[0],), seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _sample_beta(shape, alpha, seed):
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
    b = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
    return a / (a + b)


def _partner(batch, seed):
    """A random permutation of the batch: each example's mixing partner."""
    return tf.argsort(tf.random.stateless_uniform((batch,), seed))


def mixup(images, labels, alpha, seed):
    """Mixup (Zhang et al., 2018) with one λ ~ Beta(alpha, alpha) per example.

    Args:
        images: float (batch, H, W, C).
        labels: one-hot or soft float labels (batch, classes).

    Returns:
        Mixed `(images, labels)`; label rows still sum to 1.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(images)[0]
    lam = _sample_beta((batch,), alpha, seeds[0])
    perm = _partner(batch, seeds[1])
    lam_x = tf.cast(lam, images.dtype)[:, None, None, None]
    lam_y = tf.cast(lam, labels.dtype)[:, None]
    images = lam_x * images + (1.0 - lam_x) * tf.gather(images, perm)
    labels = lam_y * labels + (1.0 - lam_y) * tf.gather(labels, perm)
    return images, labels


def cutmix(images, labels, alpha, seed):
    """CutMix (Yun et al., 2019): pastes a random box from a partner into each image.

    The box area follows 1 - λ with λ ~ Beta(alpha, alpha); labels are mixed by the area
    actually pasted after clipping the box to the image, so rows still sum to 1.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    lam = _sample_beta((batch,), alpha, seeds[0])
    ratio = tf.sqrt(1.0 - lam)
    centre = tf.random.stateless_uniform((batch, 2), seeds[1]) * tf.stack([h, w])
    half = 0.5 * ratio[:, None] * tf.stack([h, w])[None]
    top_left = tf.cast(tf.round(tf.maximum(centre - half, 0.0)), tf.int32)
    bottom_right = tf.cast(tf.round(tf.minimum(centre + half, tf.stack([h, w]))), tf.int32)
    rows, cols = tf.range(height)[None], tf.range(width)[None]
    in_rows = (rows >= top_left[:, :1]) & (rows < bottom_right[:, :1])  # (batch, H)
    in_cols = (cols >= top_left[:, 1:]) & (cols < bottom_right[:, 1:])  # (batch, W)
    box = in_rows[:, :, None] & in_cols[:, None, :]  # (batch, H, W)
    perm = _partner(batch, seeds[2])
    images = tf.where(box[..., None], tf.gather(images, perm), images)
    pasted = tf.reduce_mean(tf.cast(box, labels.dtype), axis=[1, 2])[:, None]
    labels = (1.0 - pasted) * labels + pasted * tf.gather(labels, perm)
    return images, labels


def smooth_labels(labels, smoothing):
    """Label smoothing: (1 - smoothing) * labels + smoothing / classes."""
    classes = tf.cast(tf.shape(labels)[-1], labels.dtype)
    return labels * (1.0 - smoothing) + smoothing / classes


def randaugment_layer(num_ops, magnitude, seed=None):
    """Keras's `RandAugment` set up for this pipeline's float images in [0, 1].

    Works inside `tf.data.Dataset.map` under any Keras backend (Keras preprocessing layers
    switch to TensorFlow ops in a tf.data graph). Grey images need no conversion: all its
    ops accept one channel, and colour degeneration is the identity on grey.

    Args:
        num_ops: ops applied to each image in turn.
        magnitude: Keras's `factor`, in [0, 1] (see `Augment.randaugment_magnitude`).
        seed: int seed of the layer's own random state.

    Returns:
        A `keras.layers.RandAugment` to call on float (batch, H, W, C) images with
        `training=True`.
    """
    # float32 and channels_last whatever the global dtype policy (mixed precision) and
    # image data format are: these are pipeline images, not model activations.
    return keras.layers.RandAugment(
        value_range=(0.0, 1.0),
        num_ops=num_ops,
        factor=magnitude,
        seed=seed,
        data_format="channels_last",
        dtype="float32",
    )


def _check_range(name, value, high=None):
    """(min, max) with 0 < min <= max (<= high); as a tuple, since JSON configs give lists."""
    try:
        low, top = (float(v) for v in value)
    except (TypeError, ValueError):
        low = top = math.nan
    if not (0 < low <= top and (high is None or top <= high)):
        bound = "" if high is None else f" <= {high}"
        raise ValueError(
            f"Augment.{name} must be (min, max) with 0 < min <= max{bound}, got {value!r}"
        )
    return (low, top)


@dataclasses.dataclass
class Augment:
    """Training-time augmentation settings for `make_pipeline`.

    Each training batch goes through: crop (random resized crop, or pad-and-crop) → flip →
    RandAugment → mixup or CutMix → label smoothing.

    Args:
        pad: pixels of zero padding before the random crop (0 turns it off; 2–4 is usual).
        random_resized_crop: Inception-style random resized crop (`random_resized_crop`)
            instead of the pad-and-crop, which is then skipped. The usual crop for
            ImageNet-scale ViTs; too strong for 28x28 digits or clothes.
        crop_scale: (min, max) share of the image area a crop covers, within (0, 1].
            (0.08, 1) is the Inception/torchvision default; a larger minimum is gentler.
        crop_ratio: (min, max) aspect ratio (width / height) of a crop, both > 0, sampled
            log-uniformly.
        flip: random horizontal flips; leave off for digits-like data.
        randaugment_layers: RandAugment ops applied to each image (Keras's `num_ops`;
            0 turns it off; 2 is usual).
        randaugment_magnitude: Keras's RandAugment `factor`, in [0, 1]. It is not the
            paper's M out of 10 or 30: each op draws its strength per image uniformly from
            [0, magnitude] times its full range, e.g. rotations of up to magnitude x 360
            degrees and translations of up to magnitude x the image side, both in one
            direction only (shear is symmetric, brightness and contrast only increase).
            So 0.1 already allows 36-degree rotations; timm's rand-m9 rotates up to 27.
        mixup_alpha: Beta parameter of mixup; 0 turns it off.
        cutmix_alpha: Beta parameter of CutMix; 0 turns it off. With both on, each batch
            uses one of them with probability 1/2.
        label_smoothing: label smoothing factor for training batches.

    Raises:
        ValueError naming the field when a value is out of range.

    Reference:
        Cubuk et al., "RandAugment: Practical automated data augmentation with a reduced
        search space", CVPR Workshops 2020.
    """

    pad: int = 4
    random_resized_crop: bool = False
    crop_scale: tuple = (0.35, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip: bool = False
    randaugment_layers: int = 0
    randaugment_magnitude: float = 0.5
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self):
        self.crop_scale = _check_range("crop_scale", self.crop_scale, high=1)
        self.crop_ratio = _check_range("crop_ratio", self.crop_ratio)
        layers = self.randaugment_layers
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ValueError(
                f"Augment.randaugment_layers must be an int >= 0 (0 turns RandAugment off), "
                f"got {layers!r}"
            )
        if not 0 <= self.randaugment_magnitude <= 1:
            raise ValueError(
                "Augment.randaugment_magnitude must be in [0, 1] (Keras's RandAugment "
                f"factor), got {self.randaugment_magnitude!r}"
            )
        for name in ("pad", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"Augment.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(
                f"Augment.label_smoothing must be in [0, 1), got {self.label_smoothing!r}"
            )

    @property
    def soft_labels(self):
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.label_smoothing > 0


def _augment_batch(images, labels, augment, seed, randaugment=None):
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if augment.random_resized_crop:
        images = random_resized_crop(images, augment.crop_scale, augment.crop_ratio, seeds[0])
    else:
        images = random_pad_crop(images, augment.pad, seeds[0])
    if augment.flip:
        images = random_flip(images, seeds[1])
    if randaugment is not None:
        # Keras draws the ops once per batch (all images get the same ops, each with its own
        # strength), where the paper draws them per image.
        images = randaugment(images, training=True)
    if augment.mixup_alpha > 0 and augment.cutmix_alpha > 0:
        use_mixup = tf.random.stateless_uniform((), seeds[2]) < 0.5
        images, labels = tf.cond(
            use_mixup,
            lambda: mixup(images, labels, augment.mixup_alpha, seeds[3]),
            lambda: cutmix(images, labels, augment.cutmix_alpha, seeds[3]),
        )
    elif augment.mixup_alpha > 0:
        images, labels = mixup(images, labels, augment.mixup_alpha, seeds[3])
    elif augment.cutmix_alpha > 0:
        images, labels = cutmix(images, labels, augment.cutmix_alpha, seeds[3])
    if augment.label_smoothing > 0:
        labels = smooth_labels(labels, augment.label_smoothing)
    return images, labels


# --------------------------------------------------------------------------- pipeline


def make_pipeline(
    x,
    y,
    batch_size,
    training,
    image_size=None,
    num_classes=None,
    augment=None,
    *,
    mean=None,
    std=None,
    one_hot=None,
    seed=0,
):
    """Builds a batched tf.data pipeline from uint8 images and int labels.

    Images come out float32: scaled to [0, 1], then `(x - mean) / std` per channel when
    `mean` and `std` are given (see `compute_mean_std`, on the same [0, 1] scale).
    Augmentation runs before normalisation (on [0, 1] images), so padding is black.

    Args:
        x: uint8 images (N, H, W, C).
        y: int labels (N,).
        batch_size: examples per batch (the last batch may be smaller).
        training: shuffle (seeded, reshuffled each epoch) and augment.
        image_size: (height, width) or int; images are resized (bilinear) when different.
        num_classes: needed for one-hot labels; defaults to max(y) + 1.
        augment: an `Augment`, or None for none. Only applied when `training`.
        mean, std: per-channel normalisation; None keeps [0, 1].
        one_hot: float one-hot labels instead of int; defaults to `augment.soft_labels`.
            Pass the same `augment` to the evaluation pipeline so label formats match.
        seed: seed of shuffling and augmentation. Batches are reproducible for a given
            seed except with RandAugment: Keras's layer keeps its own random state, which
            the parallel map's calls advance in whichever order they run.

    Returns:
        tf.data.Dataset of `(images (batch, H, W, C) float32, labels)`, labels int32
        (batch,) or float32 (batch, num_classes).
    """
    x, y = np.asarray(x), np.asarray(y).astype(np.int32)
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(
            f"expected x (N, H, W, C) and y (N,) with equal N, got {x.shape} and {y.shape}"
        )
    if one_hot is None:
        one_hot = augment is not None and augment.soft_labels
    if training and augment is not None and augment.soft_labels and not one_hot:
        raise ValueError("mixup, cutmix and label smoothing need one_hot=True labels")
    if one_hot and num_classes is None:
        num_classes = int(y.max()) + 1
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    resize = image_size is not None and tuple(image_size) != tuple(x.shape[1:3])
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither")

    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def prepare(images, labels):
        images = tf.cast(images, tf.float32) / 255.0
        if resize:
            images = tf.image.resize(images, image_size)
        if one_hot:
            labels = tf.one_hot(labels, num_classes, dtype=tf.float32)
        return images, labels

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None:
        randaugment = None
        if augment.randaugment_layers > 0:
            randaugment = randaugment_layer(
                augment.randaugment_layers, augment.randaugment_magnitude, seed
            )
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: _augment_batch(*batch, augment, s, randaugment),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if mean is not None:
        mean_t = tf.constant(np.asarray(mean, np.float32))
        std_t = tf.constant(np.asarray(std, np.float32))
        ds = ds.map(lambda i, lab: ((i - mean_t) / std_t, lab), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
