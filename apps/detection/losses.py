"""Training losses of the detection app: DETR's set loss and FCOS's dense loss.

DETR (Carion et al. 2020), per decoder layer (the final one and each auxiliary one):

    outputs logits [B, Q, K+1], boxes [B, Q, 4] cxcywh --hungarian_match--> [B, M] query
    per target slot (no gradient)
        class: cross-entropy over K+1 classes for every query; matched queries take their
               target's class, the others no-object (K) with weight `no_object_weight`;
               weighted mean over all B * Q queries (DETR's eos_coef)
        l1:    sum over matched pairs of |cxcywh - cxcywh| / number of real boxes (>= 1)
        giou:  sum over matched pairs of 1 - GIoU / number of real boxes (>= 1)
    loss = sum over layers of class_weight * class + l1_weight * l1 + giou_weight * giou
    (+ the same three terms for denoising queries, which answer fixed target slots)

Dense (FCOS, Tian et al. 2019), everything static-shaped so it compiles with XLA:

    targets boxes [B, M, 4] xyxy, labels [B, M]  x  dense_points [N]  --dense_targets-->
        positive [B, N], class [B, N], box [B, N, 4], centerness [B, N]
    focal:      sigmoid focal loss (Lin et al. 2017) over all B * N * K (point, class)
                pairs / number of positives (>= 1)
    giou:       1 - GIoU(decoded box, target box) on positives, weighted by the centerness
                targets (and divided by their sum), as FCOS does
    centerness: binary cross-entropy of the centerness logit on positives / positives
    loss = focal_weight * focal + giou_weight * giou + centerness_weight * centerness

Crop classifier (optional second stage; `roi_crop_size` > 0), on every real target box:

    target box --jitter (centre +- N(0, jitter) x size, sides x exp(N(0, jitter)))-->
    crop of the input pixels --classifier--> logits [n, K]
    crop:       cross-entropy with the target's class, mean over the real boxes
    loss += crop

Under a `tf.distribute` strategy the normalisers (real boxes, positives) are per replica.
"""

import math

import tensorflow as tf

from apps.detection import box_ops
from apps.detection.matcher import hungarian_match
from apps.detection.postprocess import decode_boxes, dense_points

__all__ = ["crop_classifier_loss", "default_size_ranges", "dense_loss", "dense_targets",
           "detr_loss", "jittered_target_boxes"]


# --------------------------------------------------------------------------- DETR


def _detr_layer_loss(targets, logits, boxes, num_classes, num_boxes, no_object_weight,
                     class_weight, l1_weight, giou_weight):
    """Class, L1 and GIoU losses of one decoder layer (matched on its own outputs)."""
    logits = tf.cast(logits, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    labels = tf.cast(targets["labels"], tf.int32)
    target_boxes = tf.cast(targets["boxes"], tf.float32)
    assignment = tf.stop_gradient(hungarian_match(
        targets, logits, boxes, class_weight, l1_weight, giou_weight))  # [B, M]
    matched = assignment >= 0

    # Query-side targets: one_hot of -1 is all zeros, so unmatched slots add nothing.
    slot_to_query = tf.one_hot(assignment, tf.shape(logits)[1], dtype=tf.int32)  # [B, M, Q]
    query_matched = tf.reduce_sum(slot_to_query, axis=1) > 0  # [B, Q]
    query_class = tf.reduce_sum(slot_to_query * labels[..., None], axis=1)
    query_class = tf.where(query_matched, query_class, num_classes)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(query_class, logits)
    weights = tf.where(query_matched, 1.0, no_object_weight)
    class_loss = tf.reduce_sum(weights * cross_entropy) / tf.reduce_sum(weights)

    # Box terms over matched (target slot, query) pairs: [B, M, 4].
    matched_boxes = tf.gather(boxes, tf.maximum(assignment, 0), batch_dims=1)
    mask = tf.cast(matched, tf.float32)
    l1 = tf.reduce_sum(tf.abs(matched_boxes - box_ops.xyxy_to_cxcywh(target_boxes)), axis=-1)
    l1_loss = tf.reduce_sum(mask * l1) / num_boxes
    giou = box_ops.elementwise_giou(box_ops.cxcywh_to_xyxy(matched_boxes), target_boxes)
    giou_loss = tf.reduce_sum(mask * (1.0 - giou)) / num_boxes
    total = class_weight * class_loss + l1_weight * l1_loss + giou_weight * giou_loss
    return total, class_loss, l1_loss, giou_loss


def _denoising_loss(targets, logits, boxes, groups, class_weight, l1_weight, giou_weight):
    """The denoising queries' reconstruction loss over all decoder layers: query j of group
    g answers target slot j, so no matching; class cross-entropy (true class) averaged and
    L1 + GIoU summed over the real slots, divided by their number."""
    labels = tf.cast(targets["labels"], tf.int32)  # [B, M]
    target_boxes = tf.cast(targets["boxes"], tf.float32)
    valid = tf.cast(tf.tile(labels >= 0, [1, groups]), tf.float32)  # [B, G*M]
    labels = tf.tile(tf.maximum(labels, 0), [1, groups])
    target_boxes = tf.tile(target_boxes, [1, groups, 1])
    count = tf.maximum(tf.reduce_sum(valid), 1.0)
    total = 0.0
    for i in range(logits.shape[0]):
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, tf.cast(logits[i], tf.float32))
        layer_boxes = tf.cast(boxes[i], tf.float32)
        l1 = tf.reduce_sum(tf.abs(layer_boxes - box_ops.xyxy_to_cxcywh(target_boxes)), axis=-1)
        giou = box_ops.elementwise_giou(box_ops.cxcywh_to_xyxy(layer_boxes), target_boxes)
        total += (class_weight * tf.reduce_sum(valid * cross_entropy)
                  + l1_weight * tf.reduce_sum(valid * l1)
                  + giou_weight * tf.reduce_sum(valid * (1.0 - giou))) / count
    return total


def detr_loss(targets, outputs, num_classes, no_object_weight=0.1, class_weight=1.0,
              l1_weight=5.0, giou_weight=2.0, denoising_groups=0):
    """DETR's Hungarian set loss, auxiliary decoder layers included.

    Args:
        targets: dict with "boxes" float32 [B, M, 4] normalised xyxy and "labels" int32
            [B, M] (-1 = padding slot). Images may have no real box.
        outputs: dict with "logits" [B, Q, K+1] (index K = no-object), "boxes" [B, Q, 4]
            normalised cxcywh, and optionally "aux_logits" [L-1, B, Q, K+1] and
            "aux_boxes" [L-1, B, Q, 4] of the intermediate decoder layers, and
            "enc_logits"/"enc_boxes" of two-stage proposals (one more set loss term), and
            "dn_logits" [L, B, G*M, K+1] / "dn_boxes" [L, B, G*M, 4] of denoising queries
            (slot j of group g reconstructs target slot j: no matching).
        num_classes: K.
        no_object_weight: cross-entropy weight of the no-object class (DETR's eos_coef).
        class_weight, l1_weight, giou_weight: weights of the terms, in the matching cost
            and in the loss alike (as in DETR).
        denoising_groups: G of "dn_logits" (required with them).

    Returns:
        dict of scalar float32 tensors: "loss" (weighted sum over all decoder layers, the
        training objective) and the unweighted "class_loss", "l1_loss", "giou_loss" of the
        final layer.
    """
    logits = outputs["logits"]
    if logits.shape[-1] is not None and logits.shape[-1] != num_classes + 1:
        raise ValueError(f"`outputs['logits']` must have num_classes + 1 = {num_classes + 1} "
                         f"classes (the last is no-object), got shape {logits.shape}")
    # Normaliser of the box terms: real boxes in the batch, at least 1 (empty batches).
    num_boxes = tf.maximum(
        tf.reduce_sum(tf.cast(tf.convert_to_tensor(targets["labels"]) >= 0, tf.float32)), 1.0)
    layer = (num_classes, num_boxes, no_object_weight, class_weight, l1_weight, giou_weight)
    total, class_loss, l1_loss, giou_loss = _detr_layer_loss(
        targets, logits, outputs["boxes"], *layer)
    if "aux_logits" in outputs:
        aux_logits, aux_boxes = outputs["aux_logits"], outputs["aux_boxes"]
        if aux_logits.shape[0] is None:
            raise ValueError("`outputs['aux_logits']` needs a static number of layers (axis 0)")
        for i in range(aux_logits.shape[0]):
            total += _detr_layer_loss(targets, aux_logits[i], aux_boxes[i], *layer)[0]
    if "enc_logits" in outputs:  # two-stage proposals: the same set loss over memory tokens
        total += _detr_layer_loss(targets, outputs["enc_logits"], outputs["enc_boxes"], *layer)[0]
    if "dn_logits" in outputs:
        if denoising_groups < 1:
            raise ValueError("`outputs` has denoising queries: pass their `denoising_groups`")
        total += _denoising_loss(targets, outputs["dn_logits"], outputs["dn_boxes"],
                                 denoising_groups, class_weight, l1_weight, giou_weight)
    return {"loss": total, "class_loss": class_loss, "l1_loss": l1_loss,
            "giou_loss": giou_loss}


# --------------------------------------------------------------------------- dense


def default_size_ranges(strides):
    """FCOS level ranges of the max regression distance (pixels) for small inputs.

    Level k takes points whose max(l, t, r, b) lies in [3 * s_{k-1}, 3 * s_k) (the first
    from 0, the last to infinity); for strides (8, 16, 32): (0, 24), (24, 48), (48, inf).
    Why: a centred point's max distance is half the object's longer side, so stride s
    gets objects about 3-6 strides long (FCOS's COCO ranges, (0, 64) at stride 8, give
    8-16 strides, with a much deeper backbone). Measured on 512 boxes of log-uniform
    14-96 px sides (aspect up to 1.6) on 128 px inputs: 40 / 57 / 46 % of the boxes have
    positives on P3 / P4 / P5, median 6 positives, none without one. Factor 2 left 4 % of
    the boxes without any positive (off-centre points overshoot the small ranges) and 4
    crowds P3 (57 / 61 / 28 %); FCOS's (0, 64, 128) puts nearly all on P3, and those
    ranges scaled by 128 / 800 nearly all on P5.

    Args:
        strides: increasing level strides.

    Returns:
        tuple of (low, high) pixel pairs, one per stride.
    """
    bounds = [0.0] + [3.0 * s for s in strides[:-1]] + [math.inf]
    return tuple(zip(bounds[:-1], bounds[1:]))


def dense_targets(targets, image_size, strides=(8, 16, 32), size_ranges=None,
                  center_radius=1.5):
    """FCOS targets of every point, in-graph and static-shaped (XLA-compatible).

    A point is positive for a real box when it lies strictly inside the box's centre
    region (the square of half-side `center_radius` strides around the box centre,
    clipped to the box) and its max(l, t, r, b) in pixels lies in its level's range.
    A point positive for several boxes takes the one of smallest area.

    Args:
        targets: dict with "boxes" [B, M, 4] normalised xyxy and "labels" [B, M]
            (-1 = padding).
        image_size, strides: the points' layout (see `postprocess.dense_points`).
        size_ranges: per stride a (low, high) pixel range of the max regression
            distance; default `default_size_ranges(strides)`.
        center_radius: centre-sampling radius in strides.

    Returns:
        dict: "positive" bool [B, N], "labels" int32 [B, N] (-1 where negative), "boxes"
        float32 [B, N, 4] normalised xyxy (zeros where negative) and "centerness" float32
        [B, N] (0 where negative).
    """
    strides = tuple(int(s) for s in strides)
    size_ranges = default_size_ranges(strides) if size_ranges is None else size_ranges
    if len(size_ranges) != len(strides) or any(len(r) != 2 for r in size_ranges):
        raise ValueError(f"`size_ranges` must hold one (low, high) pair per stride {strides}, "
                         f"got {size_ranges}")
    points, point_strides = dense_points(image_size, strides)  # [N, 2], [N]
    # Per point, the (low, high) range of its level: [N]
    low = tf.concat([tf.fill([(image_size // s) ** 2], float(r[0]))
                     for s, r in zip(strides, size_ranges)], axis=0)
    high = tf.concat([tf.fill([(image_size // s) ** 2], float(r[1]))
                      for s, r in zip(strides, size_ranges)], axis=0)

    boxes = tf.cast(targets["boxes"], tf.float32)
    labels = tf.cast(targets["labels"], tf.int32)
    x, y = points[None, :, None, 0], points[None, :, None, 1]  # [1, N, 1]
    x0, y0, x1, y1 = (boxes[:, None, :, i] for i in range(4))  # [B, 1, M] each
    # Distances of every point to every box's sides: [B, N, M, 4] (normalised units).
    distances = tf.stack([x - x0, y - y0, x1 - x, y1 - y], axis=-1)

    radius = center_radius * point_strides[None, :, None] / float(image_size)  # [1, N, 1]
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    in_centre = ((x > tf.maximum(x0, cx - radius)) & (x < tf.minimum(x1, cx + radius))
                 & (y > tf.maximum(y0, cy - radius)) & (y < tf.minimum(y1, cy + radius)))
    max_distance = tf.reduce_max(distances, axis=-1) * float(image_size)  # pixels
    in_level = (max_distance >= low[None, :, None]) & (max_distance < high[None, :, None])
    candidate = in_centre & in_level & (labels[:, None, :] >= 0)  # [B, N, M]

    area = box_ops.box_area(boxes)[:, None, :]  # [B, 1, M]
    area = tf.where(candidate, area, math.inf)
    best = tf.argmin(area, axis=-1, output_type=tf.int32)  # [B, N] smallest-area box
    positive = tf.reduce_any(candidate, axis=-1)
    point_labels = tf.where(positive, tf.gather(labels, best, batch_dims=1), -1)
    point_boxes = tf.where(positive[..., None], tf.gather(boxes, best, batch_dims=1), 0.0)
    ltrb = tf.gather(distances, best[..., None], batch_dims=2)[:, :, 0]  # [B, N, 4]
    ltrb = tf.where(positive[..., None], ltrb, 0.0)
    # sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), 0 off the positives.
    horizontal = tf.minimum(ltrb[..., 0], ltrb[..., 2]) / tf.maximum(
        tf.maximum(ltrb[..., 0], ltrb[..., 2]), box_ops.EPSILON)
    vertical = tf.minimum(ltrb[..., 1], ltrb[..., 3]) / tf.maximum(
        tf.maximum(ltrb[..., 1], ltrb[..., 3]), box_ops.EPSILON)
    centerness = tf.sqrt(tf.nn.relu(horizontal * vertical))
    return {"positive": positive, "labels": point_labels, "boxes": point_boxes,
            "centerness": centerness}


def sigmoid_focal_loss(labels, logits, alpha=0.25, gamma=2.0):
    """Elementwise sigmoid focal loss (Lin et al. 2017): labels and logits of one shape."""
    probs = tf.sigmoid(logits)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    p_true = labels * probs + (1.0 - labels) * (1.0 - probs)
    alpha_true = labels * alpha + (1.0 - labels) * (1.0 - alpha)
    return alpha_true * tf.pow(1.0 - p_true, gamma) * cross_entropy


def dense_loss(targets, outputs, image_size, strides=(8, 16, 32), size_ranges=None,
               center_radius=1.5, focal_alpha=0.25, focal_gamma=2.0, focal_weight=1.0,
               giou_weight=1.0, centerness_weight=1.0):
    """FCOS loss of the dense head (focal + centerness-weighted GIoU + centerness BCE).

    Runs under `tf.function(jit_compile=True)`: no NumPy calls, static shapes.

    Args:
        targets: dict with "boxes" float32 [B, M, 4] normalised xyxy and "labels" int32
            [B, M] (-1 = padding slot).
        outputs: dict with "class_logits" [B, N, K], "box_deltas" [B, N, 4] raw and
            "centerness" [B, N] logits.
        image_size: S, the square input size in pixels.
        strides: increasing level strides (each dividing S).
        size_ranges: per-level (low, high) pixel ranges of the max regression distance;
            default `default_size_ranges(strides)` (see there why).
        center_radius: centre-sampling radius in strides.
        focal_alpha, focal_gamma: focal loss parameters.
        focal_weight, giou_weight, centerness_weight: weights of the terms in "loss".

    Returns:
        dict of scalar float32 tensors {"loss", "focal_loss", "giou_loss",
        "centerness_loss"} (the last three unweighted).
    """
    class_logits = tf.cast(outputs["class_logits"], tf.float32)
    num_classes = class_logits.shape[-1]
    dense = dense_targets(targets, image_size, strides, size_ranges, center_radius)
    if class_logits.shape[1] is not None and class_logits.shape[1] != dense["labels"].shape[1]:
        raise ValueError(f"`outputs['class_logits']` has {class_logits.shape[1]} points but "
                         f"image_size={image_size}, strides={tuple(strides)} give "
                         f"{dense['labels'].shape[1]}")
    positive = tf.cast(dense["positive"], tf.float32)  # [B, N]
    num_positive = tf.maximum(tf.reduce_sum(positive), 1.0)

    # one_hot of -1 (negatives) is all zeros: every class is background there.
    class_targets = tf.one_hot(dense["labels"], num_classes, dtype=tf.float32)  # [B, N, K]
    focal = sigmoid_focal_loss(class_targets, class_logits, focal_alpha, focal_gamma)
    focal_loss = tf.reduce_sum(focal) / num_positive

    predicted = decode_boxes(outputs["box_deltas"], image_size, strides)  # [B, N, 4]
    giou = box_ops.elementwise_giou(predicted, dense["boxes"])
    ctr_weight = dense["centerness"] * positive
    giou_loss = tf.reduce_sum(ctr_weight * (1.0 - giou)) / tf.maximum(
        tf.reduce_sum(ctr_weight), box_ops.EPSILON)

    centerness_bce = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=dense["centerness"], logits=tf.cast(outputs["centerness"], tf.float32))
    centerness_loss = tf.reduce_sum(positive * centerness_bce) / num_positive

    loss = (focal_weight * focal_loss + giou_weight * giou_loss
            + centerness_weight * centerness_loss)
    return {"loss": loss, "focal_loss": focal_loss, "giou_loss": giou_loss,
            "centerness_loss": centerness_loss}


# --------------------------------------------------------------------------- crop classifier


def jittered_target_boxes(targets, jitter=0.1, views=1):
    """The real target boxes of a batch, flattened and randomly moved like detections.

    Args:
        targets: dict with "boxes" float32 [B, M, 4] normalised xyxy and "labels" int32
            [B, M] (-1 = padding slot).
        jitter: standard deviation of the centre shift (share of the box's width / height)
            and of the log-scale of each side; 0: the boxes as they are. 0.1 gives crops
            of IoU ~0.75 with their box, the quality of a typical detection.
        views: copies of every box, each jittered independently (view-major order).

    Returns:
        (boxes [n, 4] normalised xyxy clipped to [0, 1], image_index int32 [n],
        labels int32 [n]), n = views x the number of real boxes (dynamic).
    """
    labels = tf.cast(targets["labels"], tf.int32)
    where = tf.where(labels >= 0)  # [n, 2] (image, slot)
    if views > 1:
        where = tf.tile(where, [views, 1])
    boxes = tf.gather_nd(tf.cast(targets["boxes"], tf.float32), where)
    if jitter:
        cxcywh = box_ops.xyxy_to_cxcywh(boxes)
        centre, size = cxcywh[:, :2], tf.maximum(cxcywh[:, 2:], 1e-3)
        n = tf.shape(boxes)[0]
        centre = centre + tf.random.normal([n, 2], stddev=jitter) * size
        size = size * tf.exp(tf.random.normal([n, 2], stddev=jitter))
        boxes = box_ops.cxcywh_to_xyxy(tf.concat([centre, size], axis=-1))
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    return boxes, tf.cast(where[:, 0], tf.int32), tf.gather_nd(labels, where)


def crop_classifier_loss(labels, logits):
    """{"crop_loss": mean cross-entropy, "crop_accuracy": share of argmax hits} over the
    crops (both 0 when there are none: a batch of empty images)."""
    logits = tf.cast(logits, tf.float32)
    count = tf.maximum(tf.cast(tf.shape(labels)[0], tf.float32), 1.0)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32)
    return {"crop_loss": tf.reduce_sum(cross_entropy) / count,
            "crop_accuracy": tf.reduce_sum(hits) / count}
