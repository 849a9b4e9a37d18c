"""Hungarian matching of DETR queries to target boxes (Carion et al. 2020, "End-to-End
Object Detection with Transformers", section 3.1).

    logits [B, Q, K+1], boxes [B, Q, 4] cxcywh  +  targets {"boxes" [B, M, 4] xyxy,
                                                           "labels" [B, M], -1 = padding}
        -> match_cost (TensorFlow)        cost [B, Q, M] = class_weight * -p(target class)
                                                         + l1_weight * L1(cxcywh)
                                                         + giou_weight * -GIoU(xyxy)
        -> one tf.numpy_function call     scipy.optimize.linear_sum_assignment per image
                                          over the real target columns only
        -> assignment int32 [B, M]        query index matched to each target slot, -1 for
                                          padding (and for real targets left over when
                                          an image has more real targets than queries)

The cost is computed in TensorFlow so it runs on the accelerator; only the [B, Q, M] cost
matrix crosses to NumPy, under `tf.stop_gradient` (the integer result has no gradient).
Because of the NumPy call, a train step that matches cannot be
XLA-compiled (DETR trains with `jit_compile=False`).

Time of one matching call for B=32, Q=32, M=8 (8 real targets per image), K=10: the
float32 cost in TensorFlow plus the scipy call, in a `tf.function` on this project's
2-core CPU development machine (shared, load ~2): median 1.7-2.2 ms per batch over 200
calls (p90 ~6 ms); the scipy part alone (32 assignments of 32 x 8) is 0.21 ms.
"""

import numpy as np
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from apps.detection import box_ops

__all__ = ["hungarian_match", "linear_sum_assignment_batch", "match_cost"]

# Stands in for non-finite costs (a diverged model): the assignment stays defined and the
# loss, computed from the same predictions, still shows the NaN.
_LARGE_COST = 1e8


def match_cost(targets, logits, boxes, class_weight=1.0, l1_weight=5.0, giou_weight=2.0):
    """DETR's matching cost between every query and every target slot.

    Args:
        targets: dict with "boxes" float [B, M, 4] normalised xyxy and "labels" int [B, M]
            (-1 = padding slot).
        logits: [B, Q, K+1] class logits (index K = no-object).
        boxes: [B, Q, 4] predicted normalised cxcywh boxes.
        class_weight, l1_weight, giou_weight: weights of the three cost terms.

    Returns:
        float32 [B, Q, M] cost; columns of padding slots hold the cost against a zero box
        and class 0 and must be ignored (`hungarian_match` does).
    """
    logits = tf.cast(logits, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    target_boxes = tf.cast(targets["boxes"], tf.float32)
    labels = tf.cast(targets["labels"], tf.int32)
    probs = tf.nn.softmax(logits, axis=-1)
    # Probability of each target's class for every query: [B, Q, M]; padding reads class 0.
    class_cost = -tf.gather(probs, tf.maximum(labels, 0), axis=2, batch_dims=1)
    target_cxcywh = box_ops.xyxy_to_cxcywh(target_boxes)
    # [B, Q, 1, 4] - [B, 1, M, 4] -> [B, Q, M]
    l1_cost = tf.reduce_sum(tf.abs(boxes[:, :, None, :] - target_cxcywh[:, None, :, :]), -1)
    giou_cost = -box_ops.generalized_box_iou(box_ops.cxcywh_to_xyxy(boxes), target_boxes)
    return class_weight * class_cost + l1_weight * l1_cost + giou_weight * giou_cost


def linear_sum_assignment_batch(cost, valid):
    """NumPy: per image, the minimum-cost assignment over its valid target columns.

    Args:
        cost: [B, Q, M] float array.
        valid: [B, M] bool array, True for real target slots.

    Returns:
        int32 [B, M]: the query assigned to each target slot, -1 for invalid slots and
        for valid ones left without a query (more real targets than queries).
    """
    cost = np.nan_to_num(np.asarray(cost, np.float64), nan=_LARGE_COST, posinf=_LARGE_COST,
                         neginf=-_LARGE_COST)
    valid = np.asarray(valid, bool)
    assignment = np.full(valid.shape, -1, np.int32)
    for b in range(cost.shape[0]):
        columns = np.flatnonzero(valid[b])
        if columns.size == 0 or cost.shape[1] == 0:
            continue
        rows, cols = linear_sum_assignment(cost[b][:, columns])
        assignment[b, columns[cols]] = rows
    return assignment


def hungarian_match(targets, logits, boxes, class_weight=1.0, l1_weight=5.0, giou_weight=2.0):
    """Matches DETR queries to real targets, per image (Hungarian algorithm, scipy).

    Args:
        targets: dict with "boxes" float [B, M, 4] normalised xyxy and "labels" int [B, M]
            (-1 = padding slot).
        logits: [B, Q, K+1] class logits (index K = no-object).
        boxes: [B, Q, 4] predicted normalised cxcywh boxes.
        class_weight, l1_weight, giou_weight: weights of the cost terms (see `match_cost`).

    Returns:
        int32 [B, M]: for each target slot the index of its matched query, or -1 for
        padding slots. Works eagerly and inside a `tf.function` (not under XLA).
    """
    cost = tf.stop_gradient(match_cost(targets, logits, boxes, class_weight, l1_weight,
                                       giou_weight))
    valid = tf.convert_to_tensor(targets["labels"]) >= 0
    assignment = tf.numpy_function(linear_sum_assignment_batch, [cost, valid], tf.int32,
                                   stateful=False)
    assignment.set_shape(valid.shape)  # [B, M], B possibly unknown
    return assignment
