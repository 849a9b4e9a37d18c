import itertools

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from apps.detection import matcher

WEIGHTS = dict(class_weight=1.0, l1_weight=5.0, giou_weight=2.0)


# --------------------------------------------------------------------------- references


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_giou(a, b):
    """GIoU of two xyxy boxes in float64, written from the definition."""
    area = lambda box: max(box[2] - box[0], 0) * max(box[3] - box[1], 0)  # noqa: E731
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    union = area(a) + area(b) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (enclosing - union) / enclosing


def np_cost(boxes_t, labels_t, logits, boxes_p, class_weight=1.0, l1_weight=5.0,
            giou_weight=2.0):
    """[Q, M_real] cost of one image, float64 loops."""
    probs = np_softmax(np.asarray(logits, np.float64))
    cost = np.zeros((len(boxes_p), len(boxes_t)))
    for q, pb in enumerate(np.asarray(boxes_p, np.float64)):
        p_xyxy = [pb[0] - pb[2] / 2, pb[1] - pb[3] / 2, pb[0] + pb[2] / 2, pb[1] + pb[3] / 2]
        for m, (tb, label) in enumerate(zip(np.asarray(boxes_t, np.float64), labels_t)):
            t_cxcywh = [(tb[0] + tb[2]) / 2, (tb[1] + tb[3]) / 2, tb[2] - tb[0], tb[3] - tb[1]]
            cost[q, m] = (-class_weight * probs[q, label]
                          + l1_weight * np.abs(pb - t_cxcywh).sum()
                          - giou_weight * np_giou(p_xyxy, tb))
    return cost


def brute_force(cost):
    """Minimum-cost injective map of columns (targets) to rows (queries), all orders tried."""
    num_queries, num_targets = cost.shape
    best, best_rows = np.inf, None
    for rows in itertools.permutations(range(num_queries), num_targets):
        total = sum(cost[r, c] for c, r in enumerate(rows))
        if total < best:
            best, best_rows = total, rows
    return np.array(best_rows, np.int32), best


def random_batch(rng, batch, queries, slots, num_classes, real_counts):
    boxes = np.zeros((batch, slots, 4), np.float32)
    labels = np.full((batch, slots), -1, np.int32)
    for b, n in enumerate(real_counts):
        # Real boxes in random slots (padding need not be at the end).
        where = rng.permutation(slots)[:n]
        xy = rng.uniform(0, 0.6, (n, 2))
        wh = rng.uniform(0.05, 0.4, (n, 2))
        boxes[b, where] = np.concatenate([xy, xy + wh], -1)
        labels[b, where] = rng.integers(0, num_classes, n)
    logits = rng.normal(0, 2, (batch, queries, num_classes + 1)).astype(np.float32)
    pred = np.concatenate([rng.uniform(0.2, 0.8, (batch, queries, 2)),
                           rng.uniform(0.05, 0.4, (batch, queries, 2))], -1).astype(np.float32)
    return {"boxes": boxes, "labels": labels}, logits, pred


def run_match(targets, logits, pred):
    targets = {k: tf.constant(v) for k, v in targets.items()}
    return matcher.hungarian_match(targets, tf.constant(logits), tf.constant(pred)).numpy()


# --------------------------------------------------------------------------- tests


def test_cost_equals_numpy_reference():
    rng = np.random.default_rng(0)
    targets, logits, pred = random_batch(rng, 2, 5, 4, 3, [4, 4])
    cost = matcher.match_cost({k: tf.constant(v) for k, v in targets.items()},
                              tf.constant(logits), tf.constant(pred), **WEIGHTS).numpy()
    for b in range(2):
        ref = np_cost(targets["boxes"][b], targets["labels"][b], logits[b], pred[b], **WEIGHTS)
        np.testing.assert_allclose(cost[b], ref, atol=1e-5)


def test_matching_equals_brute_force_per_image():
    rng = np.random.default_rng(1)
    real_counts = [0, 1, 3, 4, 2]
    targets, logits, pred = random_batch(rng, 5, 5, 6, 3, real_counts)
    assignment = run_match(targets, logits, pred)
    assert assignment.shape == (5, 6) and assignment.dtype == np.int32
    for b in range(5):
        real = np.flatnonzero(targets["labels"][b] >= 0)
        assert np.all(assignment[b, targets["labels"][b] < 0] == -1)  # padding slots
        cost = np_cost(targets["boxes"][b][real], targets["labels"][b][real], logits[b], pred[b])
        if real.size == 0:
            continue
        rows, best = brute_force(cost)
        np.testing.assert_array_equal(assignment[b, real], rows)
        # and the same as scipy run directly on the float64 reference cost
        r, c = linear_sum_assignment(cost)
        np.testing.assert_array_equal(assignment[b, real][c], r)
        assert len(set(assignment[b, real])) == real.size  # one query per target


def test_single_image_and_batched_agree():
    rng = np.random.default_rng(2)
    targets, logits, pred = random_batch(rng, 4, 6, 5, 4, [5, 0, 2, 3])
    batched = run_match(targets, logits, pred)
    for b in range(4):
        single = run_match({k: v[b:b + 1] for k, v in targets.items()}, logits[b:b + 1],
                           pred[b:b + 1])
        np.testing.assert_array_equal(single[0], batched[b])


def test_permuting_targets_permutes_assignment():
    rng = np.random.default_rng(3)
    targets, logits, pred = random_batch(rng, 2, 6, 5, 3, [4, 5])
    base = run_match(targets, logits, pred)
    perm = rng.permutation(5)
    permuted = run_match({k: v[:, perm] for k, v in targets.items()}, logits, pred)
    np.testing.assert_array_equal(permuted, base[:, perm])


def test_permuting_queries_relabels_assignment():
    rng = np.random.default_rng(4)
    targets, logits, pred = random_batch(rng, 2, 6, 4, 3, [3, 4])
    base = run_match(targets, logits, pred)
    perm = rng.permutation(6)  # new query i is old query perm[i]
    permuted = run_match(targets, logits[:, perm], pred[:, perm])
    inverse = np.argsort(perm)
    expected = np.where(base >= 0, inverse[np.maximum(base, 0)], -1)
    np.testing.assert_array_equal(permuted, expected)


def test_empty_targets_and_all_padding():
    rng = np.random.default_rng(5)
    targets, logits, pred = random_batch(rng, 3, 4, 3, 2, [0, 0, 0])
    np.testing.assert_array_equal(run_match(targets, logits, pred), -np.ones((3, 3)))


def test_more_real_targets_than_queries():
    rng = np.random.default_rng(6)
    targets, logits, pred = random_batch(rng, 1, 3, 5, 2, [5])
    assignment = run_match(targets, logits, pred)[0]
    assert sorted(assignment[assignment >= 0]) == [0, 1, 2]
    assert np.sum(assignment == -1) == 2
    cost = np_cost(targets["boxes"][0], targets["labels"][0], logits[0], pred[0])
    r, c = linear_sum_assignment(cost)
    np.testing.assert_allclose(cost[assignment[c], c].sum(), cost[r, c].sum(), rtol=1e-6)


def test_unknown_batch_size_in_tf_function_and_static_shape():
    rng = np.random.default_rng(7)
    targets, logits, pred = random_batch(rng, 3, 4, 3, 2, [1, 2, 3])

    @tf.function(input_signature=[
        {"boxes": tf.TensorSpec([None, 3, 4], tf.float32),
         "labels": tf.TensorSpec([None, 3], tf.int32)},
        tf.TensorSpec([None, 4, 3], tf.float32), tf.TensorSpec([None, 4, 4], tf.float32)])
    def match(t, lg, bx):
        out = matcher.hungarian_match(t, lg, bx)
        assert out.shape.as_list() == [None, 3]
        return out

    np.testing.assert_array_equal(match(targets, logits, pred), run_match(targets, logits, pred))


def test_non_finite_cost_does_not_crash():
    cost = np.array([[[np.nan, 1.0], [0.0, np.inf]]], np.float32)
    out = matcher.linear_sum_assignment_batch(cost, np.array([[True, True]]))
    np.testing.assert_array_equal(out, [[1, 0]])


@pytest.mark.parametrize("weights", [dict(class_weight=1.0, l1_weight=0.0, giou_weight=0.0),
                                     dict(class_weight=0.0, l1_weight=1.0, giou_weight=0.0),
                                     dict(class_weight=0.0, l1_weight=0.0, giou_weight=1.0)])
def test_each_cost_term_alone(weights):
    rng = np.random.default_rng(8)
    targets, logits, pred = random_batch(rng, 1, 4, 3, 3, [3])
    cost = matcher.match_cost({k: tf.constant(v) for k, v in targets.items()},
                              tf.constant(logits), tf.constant(pred), **weights).numpy()
    ref = np_cost(targets["boxes"][0], targets["labels"][0], logits[0], pred[0], **weights)
    np.testing.assert_allclose(cost[0], ref, atol=1e-5)
