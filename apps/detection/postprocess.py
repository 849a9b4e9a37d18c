"""Head outputs -> detections, in TensorFlow ops only (batched, in-graph, for TF Serving).

    DETR:  logits [B, Q, K+1], boxes [B, Q, 4] cxcywh
           -> per query: best real class from the softmax, score = its probability
           -> top max_detections by score, boxes to xyxy clipped to [0, 1]
    Dense: class_logits [B, N, K], box_deltas [B, N, 4], centerness [B, N]
           -> decode_boxes at dense_points (the FCOS decode of the data contract)
           -> score = sqrt(sigmoid(class) * sigmoid(centerness)) per (point, class)
           -> top pre_nms_top_k (point, class) pairs per image
           -> per-class NMS, tf.image.combined_non_max_suppression

Both return {"boxes" float32 [B, D, 4] normalised xyxy in [0, 1], "scores" float32 [B, D]
sorted descending, "classes" int32 [B, D], "num_detections" int32 [B]}, D =
max_detections; rows past num_detections are zero. The batch size may be unknown.

The dense score is the geometric mean of class and centerness probabilities (as later
FCOS versions do): it ranks exactly like their product (Tian et al. 2019) but stays on the
probability scale, so `score_threshold` means what it means for a class probability.

References: Carion et al. 2020 (DETR); Tian et al. 2019, "FCOS: Fully Convolutional
One-Stage Object Detection".
"""

import tensorflow as tf

from apps.detection import box_ops

__all__ = ["decode_boxes", "dense_points", "postprocess_dense", "postprocess_detr",
           "rescore_with_crops"]

# The contract's clip of raw box deltas before exp: distances up to e^8 strides.
DELTA_CLIP = 8.0


def _check_strides(image_size, strides):
    strides = tuple(int(s) for s in strides)
    if not strides or any(s <= 0 for s in strides) or list(strides) != sorted(set(strides)):
        raise ValueError(f"`strides` must be positive and strictly increasing, got {strides}")
    if any(int(image_size) % s for s in strides):
        raise ValueError(f"`image_size` ({image_size}) must be divisible by every stride in "
                         f"`strides` {strides}")
    return int(image_size), strides


def dense_points(image_size, strides=(8, 16, 32)):
    """Centres of the dense head's points, levels in stride order, each row-major.

    Args:
        image_size: S, the square input size in pixels.
        strides: increasing level strides, each dividing S.

    Returns:
        (points float32 [N, 2] normalised (x, y), point_strides float32 [N]), N = sum over
        strides s of (S / s)^2; point (i, j) of level s is at ((j + 0.5) s / S, (i + 0.5) s / S).
    """
    image_size, strides = _check_strides(image_size, strides)
    points, point_strides = [], []
    for s in strides:
        n = image_size // s
        centres = (tf.range(n, dtype=tf.float32) + 0.5) * (s / image_size)
        y, x = tf.meshgrid(centres, centres, indexing="ij")  # row i outer, column j inner
        points.append(tf.reshape(tf.stack([x, y], axis=-1), [n * n, 2]))
        point_strides.append(tf.fill([n * n], float(s)))
    return tf.concat(points, axis=0), tf.concat(point_strides, axis=0)


def decode_boxes(box_deltas, image_size, strides=(8, 16, 32)):
    """Raw dense box deltas -> normalised xyxy boxes (not clipped).

    Args:
        box_deltas: [B, N, 4] raw (l, t, r, b) regression outputs.
        image_size, strides: as for `dense_points`.

    Returns:
        float32 [B, N, 4]: [x - l, y - t, x + r, y + b] with distances
        exp(clip(raw, -8, 8)) * s / S.
    """
    points, point_strides = dense_points(image_size, strides)
    scale = point_strides / float(image_size)
    # [B, N, 4] distances in normalised units
    distances = tf.exp(tf.clip_by_value(tf.cast(box_deltas, tf.float32), -DELTA_CLIP,
                                        DELTA_CLIP)) * scale[:, None]
    return tf.concat([points - distances[..., :2], points + distances[..., 2:]], axis=-1)


def _zero_padding(boxes, scores, classes, num_detections):
    """Zeroes rows at or past num_detections (the contract's padding)."""
    valid = tf.sequence_mask(num_detections, tf.shape(scores)[1])  # [B, D]
    return {
        "boxes": tf.where(valid[..., None], boxes, 0.0),
        "scores": tf.where(valid, scores, 0.0),
        "classes": tf.where(valid, classes, 0),
        "num_detections": num_detections,
    }


# A head's score threshold when none is given (`Detector.detect(score_threshold=None)`).
DEFAULT_SCORE_THRESHOLD = {"detr": 0.0, "dense": 0.05}


def postprocess_detr(outputs, max_detections=100,
                     score_threshold=DEFAULT_SCORE_THRESHOLD["detr"]):
    """DETR head outputs -> the top `max_detections` queries as detections.

    Args:
        outputs: dict with "logits" [B, Q, K+1] (index K = no-object) and "boxes" [B, Q, 4]
            normalised cxcywh (other keys ignored).
        max_detections: D; when D > Q the rows past Q are padding.
        score_threshold: detections need a score above this.

    Returns:
        The contract's detection dict (see the module docstring). No NMS: DETR's set
        loss already discourages duplicates.
    """
    logits = tf.cast(outputs["logits"], tf.float32)
    num_queries = logits.shape[1]
    if num_queries is None:
        raise ValueError("`outputs['logits']` needs a static number of queries (axis 1)")
    probs = tf.nn.softmax(logits, axis=-1)[..., :-1]  # [B, Q, K], no-object dropped
    scores = tf.reduce_max(probs, axis=-1)  # [B, Q]
    classes = tf.argmax(probs, axis=-1, output_type=tf.int32)
    boxes = tf.clip_by_value(box_ops.cxcywh_to_xyxy(tf.cast(outputs["boxes"], tf.float32)),
                             0.0, 1.0)
    k = min(int(max_detections), num_queries)
    scores, order = tf.math.top_k(scores, k=k)  # [B, k], descending
    classes = tf.gather(classes, order, batch_dims=1)
    boxes = tf.gather(boxes, order, batch_dims=1)
    pad = int(max_detections) - k
    if pad:
        scores = tf.pad(scores, [[0, 0], [0, pad]])
        classes = tf.pad(classes, [[0, 0], [0, pad]])
        boxes = tf.pad(boxes, [[0, 0], [0, pad], [0, 0]])
    # Sorted descending, so the detections above the threshold are a prefix.
    num_detections = tf.reduce_sum(tf.cast(scores > score_threshold, tf.int32), axis=1)
    return _zero_padding(boxes, scores, classes, num_detections)


def postprocess_dense(outputs, image_size, strides=(8, 16, 32), max_detections=100,
                      score_threshold=DEFAULT_SCORE_THRESHOLD["dense"], iou_threshold=0.6,
                      pre_nms_top_k=1000):
    """Dense (FCOS-style) head outputs -> per-class NMS detections.

    Args:
        outputs: dict with "class_logits" [B, N, K], "box_deltas" [B, N, 4] raw and
            "centerness" [B, N] logits.
        image_size, strides: the points' layout (see `dense_points`).
        max_detections: D, detections kept per image (over all classes).
        score_threshold: candidates need a score above this (score =
            sqrt(sigmoid(class) * sigmoid(centerness))).
        iou_threshold: NMS suppresses same-class boxes overlapping more than this.
        pre_nms_top_k: (point, class) candidates per image kept before NMS.

    Returns:
        The contract's detection dict (see the module docstring).
    """
    class_logits = tf.cast(outputs["class_logits"], tf.float32)
    num_points, num_classes = class_logits.shape[1], class_logits.shape[2]
    if num_points is None or num_classes is None:
        raise ValueError("`outputs['class_logits']` needs static points and classes axes, "
                         f"got shape {class_logits.shape}")
    boxes = tf.clip_by_value(decode_boxes(outputs["box_deltas"], image_size, strides), 0.0, 1.0)
    if boxes.shape[1] != num_points:
        raise ValueError(f"{num_points} points in `outputs` but image_size={image_size}, "
                         f"strides={tuple(strides)} give {boxes.shape[1]}")
    centerness = tf.sigmoid(tf.cast(outputs["centerness"], tf.float32))
    scores = tf.sqrt(tf.sigmoid(class_logits) * centerness[..., None])  # [B, N, K]

    # Candidates are (point, class) pairs, as FCOS ranks them: [B, N * K] -> [B, k].
    k = min(int(pre_nms_top_k), num_points * num_classes)
    top_scores, flat = tf.math.top_k(tf.reshape(scores, [-1, num_points * num_classes]), k=k)
    point_index, class_index = flat // num_classes, flat % num_classes
    candidate_boxes = tf.gather(boxes, point_index, batch_dims=1)  # [B, k, 4]
    # Each candidate scores only for its own class, so combined NMS (per class) sees it
    # once; boxes are shared over classes: [B, k, 1, 4] and scores [B, k, K].
    candidate_scores = tf.one_hot(class_index, num_classes) * top_scores[..., None]
    # combined NMS keeps scores strictly above its threshold; the zeros of the other
    # classes must never pass, so the threshold is at least 0.
    nms = tf.image.combined_non_max_suppression(
        candidate_boxes[:, :, None, :], candidate_scores,
        max_output_size_per_class=int(max_detections), max_total_size=int(max_detections),
        iou_threshold=float(iou_threshold), score_threshold=max(float(score_threshold), 0.0),
        pad_per_class=False, clip_boxes=False)
    # IoU is symmetric in x and y, so xyxy boxes work where the op documents yxyx.
    return _zero_padding(nms.nmsed_boxes, nms.nmsed_scores,
                         tf.cast(nms.nmsed_classes, tf.int32), nms.valid_detections)


def rescore_with_crops(detections, classify, crop_weight=0.25, score_threshold=0.0,
                       crop_classes=0, iou_threshold=0.6):
    """Detections rescored by a second-stage classifier of their crops, re-sorted.

    Each detection (box b, class c, score s) gets s^(1 - w) * p(c | crop of b)^w, the
    weighted geometric mean of the head's score and the crop classifier's probability of
    the same class; boxes and classes are kept. A box the head gave several classes keeps
    all of them, so the crop's opinion decides their order (Faster R-CNN's split of
    localisation and classification, applied as a rescoring).

    With `crop_classes` = k > 0 each detection also proposes its box for the crop
    classifier's k most probable classes, scored s^(1 - w) * p(c' | crop of b)^w: the
    head's score stands for "an object is here", the crop says which. The candidates then
    go through per-class NMS (`iou_threshold`), so a class the head also found at nearly
    the same box is kept once, at the better score. This gives a look-alike class the
    head missed a (lower-ranked) detection instead of none, as Faster R-CNN's second stage
    scores every RoI for every class.

    Args:
        detections: the contract's detection dict (`postprocess_dense` /
            `postprocess_detr`).
        classify: `classify(boxes [n, 4] xyxy, image_index int32 [n]) -> probabilities
            [n, K]`, called once on the valid detections of the whole batch.
        crop_weight: w in [0, 1]; 0 keeps the head's scores.
        score_threshold: rescored detections need a score above this.
        crop_classes: k >= 0, the crop classifier's top classes each detection adds.
        iou_threshold: with `crop_classes` > 0, the per-class NMS overlap.

    Returns:
        The contract's detection dict, scores descending.
    """
    scores = detections["scores"]
    max_detections = scores.shape[1] if scores.shape[1] is not None else tf.shape(scores)[1]
    valid = tf.sequence_mask(detections["num_detections"], tf.shape(scores)[1])
    where = tf.where(valid)  # [n, 2] (image, row)
    probs = tf.cast(classify(tf.gather_nd(detections["boxes"], where),
                             tf.cast(where[:, 0], tf.int32)), tf.float32)  # [n, K]
    own = tf.gather_nd(detections["classes"], where)  # [n]
    old = tf.gather_nd(scores, where)
    if crop_classes:
        num_classes = probs.shape[-1]
        if num_classes is None:
            raise ValueError("`classify` must return a static number of classes for "
                             f"`crop_classes` > 0; got shape {probs.shape}.")
        k = min(int(crop_classes), num_classes)
        top = tf.math.top_k(probs, k=k).indices  # [n, k]
        keep = tf.reduce_max(tf.one_hot(top, num_classes), axis=1) + tf.one_hot(own, num_classes)
        candidates = tf.where(keep > 0, tf.pow(old, 1.0 - crop_weight)[:, None]
                              * tf.pow(probs, crop_weight), 0.0)  # [n, K]
        shape = tf.concat([tf.shape(scores, out_type=tf.int64), [num_classes]], axis=0)
        candidate_scores = tf.scatter_nd(where, candidates, shape)  # [B, D, K]; padding 0
        # combined NMS keeps scores strictly above its threshold: the zeros never pass.
        nms = tf.image.combined_non_max_suppression(
            detections["boxes"][:, :, None, :], candidate_scores,
            max_output_size_per_class=max_detections, max_total_size=max_detections,
            iou_threshold=float(iou_threshold), score_threshold=max(float(score_threshold), 0.0),
            pad_per_class=False, clip_boxes=False)
        return _zero_padding(nms.nmsed_boxes, nms.nmsed_scores,
                             tf.cast(nms.nmsed_classes, tf.int32), nms.valid_detections)
    p = tf.gather(probs, own, batch_dims=1)  # [n]
    new = tf.pow(old, 1.0 - crop_weight) * tf.pow(p, crop_weight)
    rescored = tf.scatter_nd(where, new, tf.shape(scores, out_type=tf.int64))
    rescored, order = tf.math.top_k(rescored, k=max_detections)
    num_detections = tf.reduce_sum(
        tf.cast((rescored > score_threshold) & tf.gather(valid, order, batch_dims=1), tf.int32),
        axis=1)
    return _zero_padding(tf.gather(detections["boxes"], order, batch_dims=1), rescored,
                         tf.gather(detections["classes"], order, batch_dims=1), num_detections)
