"""Box geometry for detection, in NumPy: formats, resizing/letterboxing with the inverse
map back to original pixels, and box-aware augmentation (flip, scale jitter, crop).

Conventions: boxes are float arrays (..., 4); "xyxy" is [xmin, ymin, xmax, ymax] in
continuous pixel coordinates (x right, y down; pixel column i spans [i, i + 1]), the
form `apps/detection/data.py` loads. Other formats: "xywh" (COCO's [x, y, width,
height]), "cxcywh" (DETR's centre and size) and "yxyx" (the TF Object Detection API's
[ymin, xmin, ymax, xmax]). Normalised boxes divide x by the image width and y by its
height. Image sizes are (height, width). Images are (height, width, channels) arrays.

    image, boxes, resize = letterbox(image, boxes, 256)     # model input, boxes with it
    ...                                                      # predict boxes at 256x256
    original_boxes = resize.to_original(predicted_boxes)     # back to the image's pixels
"""

import dataclasses

import numpy as np
from PIL import Image

__all__ = [
    "FORMATS", "Resize", "box_area", "clip_boxes", "convert_boxes", "crop_boxes",
    "denormalize_boxes", "hflip", "letterbox", "letterbox_transform", "normalize_boxes",
    "random_crop", "resize", "resize_image", "scale_jitter", "stretch_transform",
]

FORMATS = ("xyxy", "xywh", "cxcywh", "yxyx")


def _boxes(boxes):
    boxes = np.asarray(boxes, dtype=np.float64 if np.asarray(boxes).dtype == np.float64
                       else np.float32)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got {boxes.shape}")
    return boxes


def _size(size, name="size"):
    """(height, width) from an int (square) or a pair."""
    if np.ndim(size) == 0:
        size = (int(size), int(size))
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"`{name}` must be positive (height, width), got {size}")
    return height, width


# --------------------------------------------------------------------------- formats


def convert_boxes(boxes, source, target):
    """Converts boxes between "xyxy", "xywh", "cxcywh" and "yxyx" (same units)."""
    for name, fmt in (("source", source), ("target", target)):
        if fmt not in FORMATS:
            raise ValueError(f"`{name}` must be one of {FORMATS}, got {fmt!r}")
    boxes = _boxes(boxes)
    a, b, c, d = np.moveaxis(boxes, -1, 0)
    if source == "xyxy":
        x0, y0, x1, y1 = a, b, c, d
    elif source == "xywh":
        x0, y0, x1, y1 = a, b, a + c, b + d
    elif source == "cxcywh":
        x0, y0, x1, y1 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    else:
        x0, y0, x1, y1 = b, a, d, c
    if target == "xyxy":
        out = (x0, y0, x1, y1)
    elif target == "xywh":
        out = (x0, y0, x1 - x0, y1 - y0)
    elif target == "cxcywh":
        out = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
    else:
        out = (y0, x0, y1, x1)
    return np.stack(out, axis=-1).astype(boxes.dtype)


def _xy_scale(image_size, fmt):
    height, width = _size(image_size, "image_size")
    if fmt not in FORMATS:
        raise ValueError(f"`fmt` must be one of {FORMATS}, got {fmt!r}")
    return np.array([height, width] * 2 if fmt == "yxyx" else [width, height] * 2)


def normalize_boxes(boxes, image_size, fmt="xyxy"):
    """Pixel boxes of an image of `image_size` (height, width) -> fractions of its sides."""
    boxes = _boxes(boxes)
    return (boxes / _xy_scale(image_size, fmt)).astype(boxes.dtype)


def denormalize_boxes(boxes, image_size, fmt="xyxy"):
    """Inverse of `normalize_boxes`."""
    boxes = _boxes(boxes)
    return (boxes * _xy_scale(image_size, fmt)).astype(boxes.dtype)


def box_area(boxes):
    """Areas of xyxy boxes (0 for inverted ones)."""
    boxes = _boxes(boxes)
    return (np.maximum(boxes[..., 2] - boxes[..., 0], 0)
            * np.maximum(boxes[..., 3] - boxes[..., 1], 0))


def clip_boxes(boxes, image_size):
    """xyxy boxes clipped to an image of `image_size` (height, width)."""
    height, width = _size(image_size, "image_size")
    boxes = _boxes(boxes)
    return np.clip(boxes, 0, np.array([width, height, width, height])).astype(boxes.dtype)


# --------------------------------------------------------------------------- resizing


@dataclasses.dataclass(frozen=True)
class Resize:
    """How an original image was placed in the model input: input x = x * scale_x +
    offset_x (and y likewise). `to_input` maps boxes of the original image into the
    input; `to_original` maps (predicted) input boxes back to original pixels."""

    original_size: tuple  # (height, width)
    input_size: tuple  # (height, width)
    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    def _affine(self):
        return (np.array([self.scale_x, self.scale_y] * 2),
                np.array([self.offset_x, self.offset_y] * 2))

    def to_input(self, boxes):
        boxes = _boxes(boxes)
        scale, offset = self._affine()
        return (boxes * scale + offset).astype(boxes.dtype)

    def to_original(self, boxes, clip=True):
        """Input-pixel xyxy boxes -> original-image pixels (clipped to it by default)."""
        boxes = _boxes(boxes)
        scale, offset = self._affine()
        out = ((boxes.astype(np.float64) - offset) / scale).astype(boxes.dtype)
        return clip_boxes(out, self.original_size) if clip else out


def letterbox_transform(original_size, input_size):
    """The `Resize` of letterboxing: scaled to fit `input_size` with the aspect ratio kept
    (up to rounding to whole pixels), centred, the rest padding."""
    height, width = _size(original_size, "original_size")
    in_h, in_w = _size(input_size, "input_size")
    scale = min(in_h / height, in_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    # The scales are those of the whole-pixel resized image, so boxes follow its pixels.
    return Resize((height, width), (in_h, in_w), new_w / width, new_h / height,
                  float((in_w - new_w) // 2), float((in_h - new_h) // 2))


def stretch_transform(original_size, input_size):
    """The `Resize` of a plain resize to `input_size` (aspect ratio not kept)."""
    height, width = _size(original_size, "original_size")
    in_h, in_w = _size(input_size, "input_size")
    return Resize((height, width), (in_h, in_w), in_w / width, in_h / height)


def resize_image(image, size):
    """An image resized to `size` (height, width), bilinear with antialiasing (PIL).
    uint8 images stay uint8; other dtypes are resized as float32 per channel."""
    image = np.asarray(image)
    height, width = _size(size)
    squeeze = image.ndim == 2
    if squeeze:
        image = image[..., None]
    if image.shape[:2] == (height, width):
        out = image.copy()
    elif image.dtype == np.uint8 and image.shape[-1] in (1, 3, 4):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        out = np.asarray(pil.resize((width, height), Image.BILINEAR)).reshape(
            height, width, image.shape[-1])
    else:
        channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F")
                               .resize((width, height), Image.BILINEAR))
                    for c in range(image.shape[-1])]
        out = np.stack(channels, axis=-1).astype(image.dtype)
    return out[..., 0] if squeeze else out


def _apply(image, boxes, transform, fill):
    in_h, in_w = transform.input_size
    new_h = round(transform.original_size[0] * transform.scale_y)
    new_w = round(transform.original_size[1] * transform.scale_x)
    resized = resize_image(image, (new_h, new_w))
    canvas = np.full((in_h, in_w) + resized.shape[2:], fill, dtype=resized.dtype)
    y, x = int(transform.offset_y), int(transform.offset_x)
    canvas[y : y + new_h, x : x + new_w] = resized
    return canvas, transform.to_input(boxes)


def letterbox(image, boxes, input_size, fill=0):
    """Fits `image` into a `input_size` canvas keeping its aspect ratio (centred, padded
    with `fill`); boxes (xyxy pixels) move with it.

    Returns:
        (input image, input boxes, `Resize`); `Resize.to_original` maps boxes back.
    """
    transform = letterbox_transform(np.shape(image)[:2], input_size)
    return (*_apply(image, boxes, transform, fill), transform)


def resize(image, boxes, input_size):
    """Stretches `image` to `input_size`; returns (image, boxes, `Resize`)."""
    transform = stretch_transform(np.shape(image)[:2], input_size)
    return (*_apply(image, boxes, transform, 0), transform)


# --------------------------------------------------------------------------- augmentation


def hflip(image, boxes):
    """Mirrors an image left-right, and its xyxy boxes with it."""
    image = np.asarray(image)
    width = image.shape[1]
    boxes = _boxes(boxes)
    flipped = np.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0],
                        boxes[..., 3]], axis=-1).astype(boxes.dtype)
    return image[:, ::-1].copy(), flipped


def scale_jitter(image, boxes, rng, scale_range=(0.75, 1.33), aspect_range=(1.0, 1.0)):
    """Resizes an image by a random factor (log-uniform in `scale_range`, times a width
    stretch log-uniform in `aspect_range`); boxes follow the whole-pixel result."""
    image = np.asarray(image)
    (low, high), (a_low, a_high) = scale_range, aspect_range
    if not 0 < low <= high or not 0 < a_low <= a_high:
        raise ValueError(f"`scale_range` and `aspect_range` must be 0 < low <= high, got "
                         f"{scale_range} and {aspect_range}")
    scale = np.exp(rng.uniform(np.log(low), np.log(high)))
    aspect = np.exp(rng.uniform(np.log(a_low), np.log(a_high)))
    height, width = image.shape[:2]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale * aspect))
    transform = stretch_transform((height, width), (new_h, new_w))
    return resize_image(image, (new_h, new_w)), transform.to_input(boxes)


def crop_boxes(boxes, window, min_visible=0.3):
    """Boxes seen through a crop `window` [x0, y0, x1, y1]: clipped to it and shifted to
    its origin; boxes with less than `min_visible` of their area inside are dropped.

    Returns:
        (boxes (m, 4), indices (m,) of the kept input boxes).
    """
    boxes = _boxes(boxes).reshape(-1, 4)
    x0, y0, x1, y1 = (float(v) for v in window)
    clipped = np.stack([np.clip(boxes[:, 0], x0, x1), np.clip(boxes[:, 1], y0, y1),
                        np.clip(boxes[:, 2], x0, x1), np.clip(boxes[:, 3], y0, y1)], axis=-1)
    area = box_area(boxes)
    inside = box_area(clipped)
    keep = np.flatnonzero((inside > 0) & (inside >= min_visible * area))
    shifted = clipped[keep] - np.array([x0, y0, x0, y0])
    return shifted.astype(boxes.dtype), keep


def random_crop(image, boxes, labels, rng, min_scale=0.5, min_visible=0.3, tries=20):
    """A random crop of each side `min_scale`..1 of the image, keeping the boxes that
    stay at least `min_visible` inside it (clipped). A crop that would lose every box of
    an image that has some is redrawn, up to `tries` times; then the image is returned
    unchanged.

    Returns:
        (image, boxes, labels) of the crop.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if not 0 < min_scale <= 1:
        raise ValueError(f"`min_scale` must be in (0, 1], got {min_scale}")
    height, width = image.shape[:2]
    boxes = _boxes(boxes).reshape(-1, 4)
    for _ in range(tries):
        crop_h = max(1, round(height * rng.uniform(min_scale, 1)))
        crop_w = max(1, round(width * rng.uniform(min_scale, 1)))
        y0 = int(rng.integers(0, height - crop_h + 1))
        x0 = int(rng.integers(0, width - crop_w + 1))
        kept_boxes, keep = crop_boxes(boxes, (x0, y0, x0 + crop_w, y0 + crop_h), min_visible)
        if len(keep) or not len(boxes):
            return image[y0 : y0 + crop_h, x0 : x0 + crop_w].copy(), kept_boxes, labels[keep]
    return image.copy(), boxes.copy(), labels.copy()
