"""Box geometry in TensorFlow for the detection losses, matcher and postprocessing.

    cxcywh (DETR head) --cxcywh_to_xyxy--> xyxy --box_iou / generalized_box_iou--> [.., N, M]
                                                --elementwise_giou-------------> [.., N]

Boxes are float tensors (..., 4); "xyxy" is [xmin, ymin, xmax, ymax] and "cxcywh" is
[centre x, centre y, width, height], in any one unit (the app uses coordinates normalised
to the input). `apps/detection/boxes.py` is the NumPy counterpart for data preparation.

Zero-size boxes (the zero padding slots of the targets, or a collapsed prediction) are
safe: every denominator is at least `EPSILON`, and inverted boxes (xmax < xmin) count as
empty, so neither the values nor their gradients are NaN.

Reference: Rezatofighi et al. 2019, "Generalized Intersection over Union" (GIoU).
"""

import tensorflow as tf

__all__ = [
    "EPSILON", "box_area", "box_iou", "crop_boxes", "cxcywh_to_xyxy", "elementwise_giou",
    "generalized_box_iou", "scale_boxes", "xyxy_to_cxcywh",
]

# Smallest denominator. Normalised boxes of the app have areas >= ~1e-2; 1e-7 only matters
# when the union (or enclosing box) is empty, where IoU and GIoU are then 0.
EPSILON = 1e-7


def cxcywh_to_xyxy(boxes):
    """[cx, cy, w, h] -> [xmin, ymin, xmax, ymax], shape (..., 4) kept."""
    cx, cy, w, h = tf.unstack(boxes, 4, axis=-1)
    return tf.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_cxcywh(boxes):
    """[xmin, ymin, xmax, ymax] -> [cx, cy, w, h], shape (..., 4) kept."""
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=-1)
    return tf.stack([0.5 * (x0 + x1), 0.5 * (y0 + y1), x1 - x0, y1 - y0], axis=-1)


def box_area(boxes):
    """Areas of xyxy boxes (..., 4) -> (...); inverted boxes have area 0."""
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=-1)
    return tf.nn.relu(x1 - x0) * tf.nn.relu(y1 - y0)


def _iou_and_giou(boxes1, boxes2):
    """IoU and GIoU of xyxy boxes that broadcast against each other."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lo = tf.maximum(boxes1[..., :2], boxes2[..., :2])
    hi = tf.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter_wh = tf.nn.relu(hi - lo)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area1 + area2 - inter
    iou = inter / tf.maximum(union, EPSILON)
    # Smallest box enclosing both; relu keeps it empty (not negative) for inverted inputs.
    enclosing_wh = tf.nn.relu(tf.maximum(boxes1[..., 2:], boxes2[..., 2:])
                              - tf.minimum(boxes1[..., :2], boxes2[..., :2]))
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    giou = iou - (enclosing - union) / tf.maximum(enclosing, EPSILON)
    return iou, giou


def _pairwise(boxes1, boxes2):
    boxes1 = tf.convert_to_tensor(boxes1)
    boxes2 = tf.convert_to_tensor(boxes2, dtype=boxes1.dtype)
    # (..., N, 1, 4) against (..., 1, M, 4) -> (..., N, M)
    return _iou_and_giou(boxes1[..., :, None, :], boxes2[..., None, :, :])


def box_iou(boxes1, boxes2):
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: (..., N, 4) xyxy boxes.
        boxes2: (..., M, 4) xyxy boxes (leading dimensions broadcast against `boxes1`'s).

    Returns:
        (..., N, M) IoU in [0, 1]; 0 where both boxes are empty.
    """
    return _pairwise(boxes1, boxes2)[0]


def generalized_box_iou(boxes1, boxes2):
    """Pairwise generalized IoU, IoU - |C \\ (A u B)| / |C| with C the enclosing box.

    Args:
        boxes1: (..., N, 4) xyxy boxes.
        boxes2: (..., M, 4) xyxy boxes (leading dimensions broadcast against `boxes1`'s).

    Returns:
        (..., N, M) GIoU in [-1, 1]; 1 for identical non-empty boxes, towards -1 for small
        boxes far apart.
    """
    return _pairwise(boxes1, boxes2)[1]


def elementwise_giou(boxes1, boxes2):
    """GIoU of matching pairs: (..., 4) and (..., 4) xyxy boxes -> (...)."""
    boxes1 = tf.convert_to_tensor(boxes1)
    boxes2 = tf.convert_to_tensor(boxes2, dtype=boxes1.dtype)
    return _iou_and_giou(boxes1, boxes2)[1]


def square_context_boxes(boxes, context):
    """Squares around xyxy `boxes` (n, 4) on a square image: each centred on its box, of side
    `(1 + 2 * context)` times the box's longer side, so a crop of it keeps the object's
    aspect ratio and shows `context` of that side around it (R-CNN's context padding,
    Girshick et al. 2014, appendix A). Coordinates may leave [0, 1]."""
    boxes = tf.cast(boxes, tf.float32)
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=-1)
    half = 0.5 * (1.0 + 2.0 * context) * tf.maximum(x1 - x0, y1 - y0)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return tf.stack([cx - half, cy - half, cx + half, cy + half], -1)


def scale_boxes(boxes, factor):
    """xyxy `boxes` (n, 4) grown (factor > 1) or shrunk about their centres, each side
    times `factor`. Coordinates may leave [0, 1] (`crop_boxes` reads zeros there)."""
    boxes = tf.cast(boxes, tf.float32)
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    half = 0.5 * float(factor) * (boxes[:, 2:] - boxes[:, :2])
    return tf.concat([centre - half, centre + half], axis=-1)


def crop_boxes(images, boxes, box_indices, crop_size):
    """Crops of xyxy boxes resized to `crop_size` squares (bilinear; RoIAlign-like).

    Args:
        images: (B, H, W, C) images.
        boxes: (n, 4) normalised xyxy boxes; parts outside the image read as zeros.
        box_indices: (n,) int32, the image of each box.
        crop_size: side of the square crops, pixels.

    Returns:
        (n, crop_size, crop_size, C) float32.
    """
    boxes = tf.cast(boxes, tf.float32)
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=-1)
    return tf.image.crop_and_resize(tf.cast(images, tf.float32), tf.stack([y0, x0, y1, x1], -1),
                                    tf.cast(box_indices, tf.int32), (crop_size, crop_size))
