"""tf.data input pipelines of the detection app: decode, letterbox, augment, pad, batch.

    files / arrays --decode--> uint8 (h, w, 3) --letterbox_tf--> float32 (S, S, 3) 0..255
        boxes (original pixels) --Resize.to_input / S--> normalised xyxy in the S x S input
    training: cache -> shuffle -> random flip + scale jitter (zoom in = crop, zoom out =
        pad; boxes clipped, mostly-hidden boxes dropped) -> batch
    every batch: (images (B, S, S, 3) float32, {"boxes": (B, M, 4), "labels": (B, M) int32})
        with label -1 in unused box slots (M = max_boxes)

`letterbox_tf` is the one resize both the pipeline and the exported SavedModel use, so
served images see exactly the training preprocessing; its geometry is
`apps.detection.boxes.letterbox_transform`'s (the same whole-pixel rounding), which maps
predictions back to each original image.
"""

import logging

import numpy as np
import tensorflow as tf

from apps.detection.boxes import letterbox_transform

logger = logging.getLogger(__name__)

FILL = 0.0  # letterbox padding value (black), as `boxes.letterbox`


def letterbox_tf(image, size, fill=FILL):
    """One uint8/float image (h, w, 3) -> float32 (size, size, 3) in 0..255, aspect ratio
    kept, centred (bilinear with antialiasing, as PIL's BILINEAR when shrinking).

    Returns:
        (canvas, scale (2,) [sx, sy], offset (2,) [ox, oy]): input x = x * sx + ox.
    """
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    scale = tf.minimum(size / height, size / width)
    # Python's round() in letterbox_transform rounds half to even, as tf.round does.
    new_h = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), 1)
    new_w = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), 1)
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_h, new_w]),
                              method="bilinear", antialias=True)
    # Whole intensity levels: the training cache stores uint8, so serving rounds too.
    resized = tf.round(tf.clip_by_value(resized, 0.0, 255.0))
    off_y, off_x = (size - new_h) // 2, (size - new_w) // 2
    canvas = tf.pad(resized - fill, [[off_y, size - new_h - off_y],
                                     [off_x, size - new_w - off_x], [0, 0]]) + fill
    canvas = tf.ensure_shape(canvas, (size, size, 3))
    scale_xy = tf.cast(tf.stack([tf.cast(new_w, tf.float64) / width,
                                 tf.cast(new_h, tf.float64) / height]), tf.float32)
    offset_xy = tf.cast(tf.stack([off_x, off_y]), tf.float32)
    return canvas, scale_xy, offset_xy


def decode_image(data):
    """Encoded bytes (PNG, JPEG, BMP, GIF first frame) -> uint8 (h, w, 3): grey images are
    repeated to RGB, an alpha channel is dropped."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.ensure_shape(image, (None, None, 3))


def padded_targets(split, image_size, max_boxes, name="split"):
    """Boxes of every image as normalised input xyxy, padded: ((n, M, 4) float32,
    (n, M) int32 with -1 padding). Images with more than `max_boxes` boxes keep the
    largest `max_boxes` (logged with a count)."""
    n = len(split)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    labels = np.full((n, max_boxes), -1, np.int32)
    truncated = 0
    for i in range(n):
        b, lab = np.asarray(split.boxes[i], np.float32).reshape(-1, 4), split.labels[i]
        if len(b) > max_boxes:
            truncated += 1
            keep = np.argsort(-(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), kind="stable")
            b, lab = b[np.sort(keep[:max_boxes])], lab[np.sort(keep[:max_boxes])]
        transform = letterbox_transform(tuple(split.image_sizes[i]), (image_size, image_size))
        boxes[i, : len(b)] = np.clip(transform.to_input(b) / image_size, 0.0, 1.0)
        labels[i, : len(b)] = lab
    if truncated:
        logger.warning("%s: %d images have more than max_boxes=%d boxes; kept the largest "
                       "%d of each (raise --max_boxes to keep all)", name, truncated,
                       max_boxes, max_boxes)
    return boxes, labels


def _images(split):
    """A dataset of uint8 (h, w, 3) images of a split (tiles cut out), in order."""
    if split.images is not None:
        def generate():
            for i in range(len(split)):
                yield split.load_image(i)
        return tf.data.Dataset.from_generator(
            generate, output_signature=tf.TensorSpec((None, None, 3), tf.uint8))
    paths = tf.data.Dataset.from_tensor_slices([str(p) for p in split.image_paths])
    if split.windows is None:
        return paths.map(lambda p: decode_image(tf.io.read_file(p)),
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def crop(path, window):
        image = decode_image(tf.io.read_file(path))
        return image[window[1]:window[3], window[0]:window[2]]

    windows = tf.data.Dataset.from_tensor_slices(split.windows.astype(np.int32))
    return tf.data.Dataset.zip((paths, windows)).map(
        crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def input_images(split, image_size):
    """A dataset of the letterboxed float32 (S, S, 3) input images of a split, in order."""
    return _images(split).map(lambda im: letterbox_tf(im, image_size)[0],
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class Augment:
    """Box-aware training augmentation on letterboxed inputs (TensorFlow ops, per image).

    Args:
        flip: random left-right flip (probability 0.5).
        scale_range: zoom factor range (log-uniform): > 1 enlarges and crops a random
            window, < 1 shrinks and pads at a random place; (1, 1) disables it.
        min_visible: a box keeps its label if at least this share of its area stays in
            the image after cropping; otherwise it becomes padding.
        brightness: random brightness/contrast change (0: off).
        seed: op seed.
    """

    def __init__(self, flip=True, scale_range=(0.6, 1.6), min_visible=0.3, brightness=0.2,
                 seed=0):
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"`scale_range` must be 0 < low <= high; got {scale_range}.")
        if not 0 <= min_visible <= 1:
            raise ValueError(f"`min_visible` must be in [0, 1]; got {min_visible}.")
        self.flip, self.scale_range, self.min_visible = flip, tuple(scale_range), min_visible
        self.brightness, self.seed = brightness, seed

    def __call__(self, image, boxes, labels):
        size = image.shape[0]
        if self.flip:
            flip = tf.random.uniform(()) < 0.5
            image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
            flipped = tf.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], -1)
            boxes = tf.where(flip, flipped, boxes)
        low, high = self.scale_range
        if (low, high) != (1.0, 1.0):
            image, boxes, labels = self._zoom(image, boxes, labels, size)
        if self.brightness:
            image = image * tf.random.uniform((), 1 - self.brightness, 1 + self.brightness)
            image = image + tf.random.uniform((), -self.brightness, self.brightness) * 255 / 4
            image = tf.clip_by_value(image, 0.0, 255.0)
        return image, boxes, labels

    def _zoom(self, image, boxes, labels, size):
        low, high = (float(np.log(v)) for v in self.scale_range)
        zoom = tf.exp(tf.random.uniform((), low, high))
        new = tf.maximum(tf.cast(tf.round(size * zoom), tf.int32), 1)
        resized = tf.image.resize(image, tf.stack([new, new]), antialias=True)
        room = tf.abs(new - size)
        off_x = tf.random.uniform((), 0, room + 1, dtype=tf.int32)
        off_y = tf.random.uniform((), 0, room + 1, dtype=tf.int32)
        bigger = new >= size

        def crop():
            return resized[off_y : off_y + size, off_x : off_x + size]

        def pad():
            return tf.image.pad_to_bounding_box(resized, off_y, off_x, size, size)

        image = tf.ensure_shape(tf.cond(bigger, crop, pad), (size, size, 3))
        sign = tf.where(bigger, -1.0, 1.0)
        shift = sign * tf.cast(tf.stack([off_x, off_y, off_x, off_y]), tf.float32)
        moved = (boxes * tf.cast(new, tf.float32) + shift) / size
        clipped = tf.clip_by_value(moved, 0.0, 1.0)
        area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
        seen = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = (labels >= 0) & (seen > 0) & (seen >= self.min_visible * area) & (
            (clipped[:, 2] - clipped[:, 0]) * size >= 1) & ((clipped[:, 3] - clipped[:, 1]) * size >= 1)
        labels = tf.where(keep, labels, -1)
        boxes = tf.where(keep[:, None], clipped, 0.0)
        return image, boxes, labels


def make_dataset(split, image_size, batch_size, training, max_boxes=32, augment=None,
                 seed=0, cache=True, name=None):
    """Batches of (images, {"boxes", "labels"}) from a `DetectionSplit`.

    Images are decoded and letterboxed once and cached in memory as uint8 when `cache`
    (the bundled 10k-image set at 128 px is ~0.5 GB); without it they are read each epoch.
    Training batches are shuffled, augmented and full (drop_remainder); evaluation batches
    keep the split's order and its last partial batch.
    """
    if not len(split):
        raise ValueError(f"split {name or split.name!r} has no images")
    boxes, labels = padded_targets(split, image_size, max_boxes, name=name or split.name)
    images = input_images(split, image_size).map(
        lambda im: tf.cast(im, tf.uint8), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices((boxes, labels))))
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(len(split), 10_000), seed=seed, reshuffle_each_iteration=True)

    def to_float(image, targets):
        return tf.cast(image, tf.float32), targets[0], targets[1]

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda im, b, lab: (im, {"boxes": b, "labels": lab}),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=training and len(split) >= batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)
