import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from apps.detection import box_ops, losses
from tests.apps.detection.test_matcher import np_cost, np_giou, np_softmax, random_batch

# --------------------------------------------------------------------------- box_ops


def np_pairwise_giou(a, b):
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = np_giou(a[i], b[j])
    return out


def test_giou_matches_float64_reference_on_random_and_special_boxes():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 0.7, (6, 2))
    random = np.concatenate([xy, xy + rng.uniform(0.01, 0.3, (6, 2))], -1)
    special = np.array([
        [0.1, 0.1, 0.3, 0.3],    # identical to the next
        [0.1, 0.1, 0.3, 0.3],
        [0.15, 0.15, 0.2, 0.25],  # contained in the first
        [0.6, 0.6, 0.9, 0.8],    # disjoint from the first
        [0.3, 0.1, 0.5, 0.3],    # touches the first at x = 0.3
    ])
    boxes = np.concatenate([random, special]).astype(np.float32)
    got = box_ops.generalized_box_iou(boxes, boxes).numpy()
    np.testing.assert_allclose(got, np_pairwise_giou(boxes.astype(np.float64), boxes), atol=2e-6)
    assert got[6, 7] == pytest.approx(1.0)
    # contained: enclosing = the outer box = the union, so GIoU = IoU = area ratio
    assert got[6, 8] == pytest.approx(0.05 * 0.1 / 0.04, rel=1e-5)
    # disjoint: IoU 0, GIoU = -(enclosing - union) / enclosing
    union, enclosing = 0.04 + 0.06, 0.8 * 0.7
    assert got[6, 9] == pytest.approx(-(enclosing - union) / enclosing, rel=1e-5)
    assert got[6, 10] == pytest.approx(0.0, abs=1e-6)  # touching: no gap, no overlap
    iou = box_ops.box_iou(boxes, boxes).numpy()
    assert iou[6, 8] == pytest.approx(0.125, rel=1e-5) and iou[6, 9] == 0.0
    np.testing.assert_allclose(box_ops.elementwise_giou(boxes, boxes[::-1]).numpy(),
                               np.diag(np_pairwise_giou(boxes, boxes[::-1])), atol=2e-6)


def test_giou_batched_shapes_and_format_round_trip():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.1, 0.4, (2, 3, 4)).astype(np.float32)
    b = rng.uniform(0.1, 0.4, (2, 5, 4)).astype(np.float32)
    assert box_ops.generalized_box_iou(a, b).shape == (2, 3, 5)
    np.testing.assert_allclose(box_ops.xyxy_to_cxcywh(box_ops.cxcywh_to_xyxy(a)), a, atol=1e-6)
    np.testing.assert_allclose(box_ops.cxcywh_to_xyxy([[0.5, 0.5, 0.2, 0.4]]),
                               [[0.4, 0.3, 0.6, 0.7]], atol=1e-7)


def test_zero_size_boxes_give_finite_values_and_gradients():
    pred = tf.Variable([[0.0, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2], [0.1, 0.1, 0.3, 0.3],
                        [0.5, 0.5, 0.4, 0.4]])  # zero, point, normal, inverted
    target = tf.constant([[0.0, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0],
                          [0.1, 0.1, 0.3, 0.3]])
    with tf.GradientTape() as tape:
        values = tf.concat([box_ops.elementwise_giou(pred, target),
                            tf.reshape(box_ops.generalized_box_iou(pred, target), [-1]),
                            tf.reshape(box_ops.box_iou(pred, target), [-1])], 0)
        total = tf.reduce_sum(values)
    assert np.all(np.isfinite(values.numpy()))
    assert np.all(np.isfinite(tape.gradient(total, pred).numpy()))
    assert box_ops.box_area(pred).numpy()[3] == 0.0  # inverted counts as empty


# --------------------------------------------------------------------------- detr_loss


def np_detr_layer(targets, logits, pred, num_classes, eos=0.1, w=(1.0, 5.0, 2.0)):
    """DETR's loss terms in float64 with scipy on the reference cost."""
    batch, queries = logits.shape[:2]
    num_boxes = max((targets["labels"] >= 0).sum(), 1)
    ce_sum = weight_sum = l1 = giou = 0.0
    for b in range(batch):
        real = np.flatnonzero(targets["labels"][b] >= 0)
        boxes_t, labels_t = targets["boxes"][b][real].astype(np.float64), targets["labels"][b][real]
        query_class = np.full(queries, num_classes)
        if real.size:
            rows, cols = linear_sum_assignment(np_cost(boxes_t, labels_t, logits[b], pred[b],
                                                       *w))
            query_class[rows] = labels_t[cols]
            for r, c in zip(rows, cols):
                p = pred[b, r].astype(np.float64)
                t = boxes_t[c]
                l1 += np.abs(p - [(t[0] + t[2]) / 2, (t[1] + t[3]) / 2, t[2] - t[0],
                                  t[3] - t[1]]).sum()
                giou += 1 - np_giou([p[0] - p[2] / 2, p[1] - p[3] / 2, p[0] + p[2] / 2,
                                     p[1] + p[3] / 2], t)
        log_probs = np.log(np_softmax(logits[b].astype(np.float64)))
        weights = np.where(query_class == num_classes, eos, 1.0)
        ce_sum += (weights * -log_probs[np.arange(queries), query_class]).sum()
        weight_sum += weights.sum()
    cls, l1, giou = ce_sum / weight_sum, l1 / num_boxes, giou / num_boxes
    return cls, l1, giou, w[0] * cls + w[1] * l1 + w[2] * giou


def tf_targets(targets):
    return {k: tf.constant(v) for k, v in targets.items()}


def test_detr_loss_matches_numpy_reference():
    rng = np.random.default_rng(2)
    targets, logits, pred = random_batch(rng, 3, 6, 5, 4, [3, 0, 5])
    out = losses.detr_loss(tf_targets(targets), {"logits": logits, "boxes": pred}, 4)
    cls, l1, giou, total = np_detr_layer(targets, logits, pred, 4)
    assert set(out) == {"loss", "class_loss", "l1_loss", "giou_loss"}
    for key, ref in [("class_loss", cls), ("l1_loss", l1), ("giou_loss", giou), ("loss", total)]:
        assert out[key].dtype == tf.float32 and out[key].shape == ()
        assert out[key].numpy() == pytest.approx(ref, rel=1e-4), key


def test_detr_loss_is_zero_for_a_perfect_prediction():
    targets = {"boxes": np.array([[[0.1, 0.2, 0.4, 0.6], [0.5, 0.5, 0.9, 0.8], [0, 0, 0, 0]]],
                                 np.float32),
               "labels": np.array([[2, 0, -1]], np.int32)}
    num_classes, queries = 3, 5
    logits = np.full((1, queries, num_classes + 1), -30.0, np.float32)
    logits[0, :, num_classes] = 30.0  # no-object everywhere ...
    logits[0, 3, [2, 3]] = [30.0, -30.0]  # ... but queries 3 and 1 hold the targets
    logits[0, 1, [0, 3]] = [30.0, -30.0]
    pred = np.tile(np.array([0.5, 0.5, 0.2, 0.2], np.float32), (1, queries, 1))
    pred[0, 3] = [0.25, 0.4, 0.3, 0.4]
    pred[0, 1] = [0.7, 0.65, 0.4, 0.3]
    out = losses.detr_loss(tf_targets(targets), {"logits": logits, "boxes": pred}, num_classes)
    for key in ("class_loss", "l1_loss", "giou_loss", "loss"):
        assert abs(out[key].numpy()) < 1e-5, key


def test_detr_loss_invariant_to_target_and_query_permutations():
    rng = np.random.default_rng(3)
    targets, logits, pred = random_batch(rng, 2, 6, 5, 3, [4, 2])
    base = losses.detr_loss(tf_targets(targets), {"logits": logits, "boxes": pred}, 3)
    slot_perm, query_perm = rng.permutation(5), rng.permutation(6)
    by_targets = losses.detr_loss(tf_targets({k: v[:, slot_perm] for k, v in targets.items()}),
                                  {"logits": logits, "boxes": pred}, 3)
    by_queries = losses.detr_loss(tf_targets(targets), {"logits": logits[:, query_perm],
                                                        "boxes": pred[:, query_perm]}, 3)
    for key in base:
        assert by_targets[key].numpy() == pytest.approx(base[key].numpy(), rel=1e-5)
        assert by_queries[key].numpy() == pytest.approx(base[key].numpy(), rel=1e-5)


def test_detr_loss_with_empty_targets_is_the_no_object_term():
    rng = np.random.default_rng(4)
    targets, logits, pred = random_batch(rng, 2, 4, 3, 2, [0, 0])
    out = losses.detr_loss(tf_targets(targets), {"logits": logits, "boxes": pred}, 2)
    log_probs = np.log(np_softmax(logits.astype(np.float64)))
    # every query is no-object with the same weight: the weighted mean is the plain mean
    assert out["class_loss"].numpy() == pytest.approx(-log_probs[..., 2].mean(), rel=1e-5)
    assert out["l1_loss"].numpy() == 0.0 and out["giou_loss"].numpy() == 0.0
    assert out["loss"].numpy() == pytest.approx(out["class_loss"].numpy())


def test_detr_loss_adds_auxiliary_layers_matched_separately():
    rng = np.random.default_rng(5)
    targets, logits, pred = random_batch(rng, 2, 5, 4, 3, [2, 4])
    _, aux_logits, aux_pred = random_batch(rng, 2, 5, 4, 3, [0, 0])
    _, aux_logits2, aux_pred2 = random_batch(rng, 2, 5, 4, 3, [0, 0])
    out = losses.detr_loss(tf_targets(targets), {
        "logits": logits, "boxes": pred, "aux_logits": np.stack([aux_logits, aux_logits2]),
        "aux_boxes": np.stack([aux_pred, aux_pred2])}, 3)
    expected = sum(np_detr_layer(targets, lg, bx, 3)[3]
                   for lg, bx in [(logits, pred), (aux_logits, aux_pred), (aux_logits2, aux_pred2)])
    assert out["loss"].numpy() == pytest.approx(expected, rel=1e-4)
    final = np_detr_layer(targets, logits, pred, 3)
    assert out["class_loss"].numpy() == pytest.approx(final[0], rel=1e-4)


def test_detr_loss_decreases_under_gradient_steps_with_finite_gradients():
    rng = np.random.default_rng(6)
    targets, logits, pred = random_batch(rng, 2, 6, 4, 3, [3, 0])
    targets = tf_targets(targets)
    logit_var = tf.Variable(logits)
    box_var = tf.Variable(np.log(pred / (1 - pred)))  # sigmoid(box_var) = pred
    values = []
    for _ in range(8):
        with tf.GradientTape() as tape:
            loss = losses.detr_loss(targets, {"logits": logit_var,
                                              "boxes": tf.sigmoid(box_var)}, 3)["loss"]
        grads = tape.gradient(loss, [logit_var, box_var])
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)
        for var, grad in zip([logit_var, box_var], grads):
            var.assign_sub(0.1 * grad)
        values.append(loss.numpy())
    assert values[-1] < 0.8 * values[0], values


def test_detr_loss_gradients_finite_for_degenerate_predictions():
    targets = tf_targets({"boxes": np.array([[[0.1, 0.1, 0.3, 0.3], [0, 0, 0, 0]]], np.float32),
                          "labels": np.array([[1, -1]], np.int32)})
    boxes = tf.Variable(np.zeros((1, 3, 4), np.float32))  # all zero-size
    logits = tf.Variable(np.zeros((1, 3, 3), np.float32))
    with tf.GradientTape() as tape:
        loss = losses.detr_loss(targets, {"logits": logits, "boxes": boxes}, 2)["loss"]
    assert np.isfinite(loss.numpy())
    assert all(np.all(np.isfinite(g.numpy())) for g in tape.gradient(loss, [logits, boxes]))


def test_losses_in_tf_function_with_unknown_batch_size():
    rng = np.random.default_rng(13)
    targets, logits, pred = random_batch(rng, 3, 4, 3, 2, [2, 0, 3])
    target_spec = {"boxes": tf.TensorSpec([None, 3, 4], tf.float32),
                   "labels": tf.TensorSpec([None, 3], tf.int32)}
    detr = tf.function(lambda t, o: losses.detr_loss(t, o, 2), input_signature=[
        target_spec, {"logits": tf.TensorSpec([None, 4, 3], tf.float32),
                      "boxes": tf.TensorSpec([None, 4, 4], tf.float32)}])
    got = detr(targets, {"logits": logits, "boxes": pred})["loss"].numpy()
    assert got == pytest.approx(np_detr_layer(targets, logits, pred, 2)[3], rel=1e-4)
    outputs = random_dense_outputs(rng, 3, 2)
    dense = tf.function(lambda t, o: losses.dense_loss(t, o, S, STRIDES), input_signature=[
        target_spec, {k: tf.TensorSpec([None, *v.shape[1:]], tf.float32)
                      for k, v in outputs.items()}])
    assert dense(targets, outputs)["loss"].numpy() == pytest.approx(
        sum(np_dense_loss(targets, outputs).values()), rel=1e-4)


def test_detr_loss_rejects_wrong_class_count():
    rng = np.random.default_rng(7)
    targets, logits, pred = random_batch(rng, 1, 3, 2, 3, [1])
    with pytest.raises(ValueError, match="num_classes"):
        losses.detr_loss(tf_targets(targets), {"logits": logits, "boxes": pred}, 4)


# --------------------------------------------------------------------------- dense targets

S, STRIDES = 128, (8, 16, 32)
LEVEL_START = {8: 0, 16: 256, 32: 320}


def point_index(stride, i, j):
    return LEVEL_START[stride] + i * (S // stride) + j


def np_dense_targets(boxes, labels, size_ranges, radius=1.5):
    """FCOS targets by loops over points and boxes (pixels, float64)."""
    points = []
    for s, (lo, hi) in zip(STRIDES, size_ranges):
        for i in range(S // s):
            for j in range(S // s):
                points.append(((j + 0.5) * s, (i + 0.5) * s, s, lo, hi))
    batch, slots = labels.shape
    out_labels = np.full((batch, len(points)), -1)
    out_boxes = np.zeros((batch, len(points), 4))
    out_ctr = np.zeros((batch, len(points)))
    for b in range(batch):
        for n, (x, y, s, lo, hi) in enumerate(points):
            best_area, best = np.inf, None
            for m in range(slots):
                if labels[b, m] < 0:
                    continue
                x0, y0, x1, y1 = boxes[b, m].astype(np.float64) * S
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                inside = (max(x0, cx - radius * s) < x < min(x1, cx + radius * s)
                          and max(y0, cy - radius * s) < y < min(y1, cy + radius * s))
                ltrb = (x - x0, y - y0, x1 - x, y1 - y)
                area = (x1 - x0) * (y1 - y0)
                if inside and lo <= max(ltrb) < hi and area < best_area:
                    best_area, best = area, (m, ltrb)
            if best is not None:
                m, (left, top, right, bottom) = best
                out_labels[b, n] = labels[b, m]
                out_boxes[b, n] = boxes[b, m]
                out_ctr[b, n] = math.sqrt(min(left, right) / max(left, right)
                                          * min(top, bottom) / max(top, bottom))
    return out_labels, out_boxes, out_ctr


def test_default_size_ranges():
    assert losses.default_size_ranges((8, 16, 32)) == ((0.0, 24.0), (24.0, 48.0),
                                                       (48.0, math.inf))


def test_hand_made_boxes_get_positives_at_expected_levels_and_points():
    # a 32 px box centred at (56, 56) and a 96 px box centred at (64, 64), separate images
    boxes = np.array([[[40, 40, 72, 72]], [[16, 16, 112, 112]]], np.float32) / S
    labels = np.array([[3], [1]], np.int32)
    dense = losses.dense_targets({"boxes": boxes, "labels": labels}, S, STRIDES)
    small = {point_index(8, i, j) for i in (6, 7) for j in (6, 7)}  # P3 centres 52, 60
    large = {point_index(32, i, j) for i in (1, 2) for j in (1, 2)}  # P5 centres 48, 80
    assert set(np.flatnonzero(dense["positive"][0])) == small
    assert set(np.flatnonzero(dense["positive"][1])) == large
    np.testing.assert_array_equal(dense["labels"].numpy()[0, sorted(small)], 3)
    assert np.all(dense["labels"].numpy()[0, ~dense["positive"].numpy()[0]] == -1)
    # P3 point (52, 52) of the small box: l = t = 12, r = b = 20 -> sqrt(0.6 * 0.6)
    np.testing.assert_allclose(dense["centerness"].numpy()[0, sorted(small)], 0.6, atol=1e-5)
    # P5 point (48, 48) of the large box: l = 32, r = 64 -> 0.5
    np.testing.assert_allclose(dense["centerness"].numpy()[1, sorted(large)], 0.5, atol=1e-5)
    np.testing.assert_allclose(dense["boxes"].numpy()[1, sorted(large)], boxes[1, [0] * 4])


def test_ambiguous_points_take_the_smallest_box_and_padding_is_ignored():
    everything = ((0.0, math.inf),) * 3
    boxes = np.array([[[0, 0, 128, 128], [48, 48, 80, 80], [50, 50, 70, 70]]], np.float32) / S
    labels = np.array([[0, 1, -1]], np.int32)  # the smallest box is padding
    dense = losses.dense_targets({"boxes": boxes, "labels": labels}, S, STRIDES,
                                 size_ranges=everything)
    centre = point_index(8, 7, 7)  # (60, 60), inside both real boxes' centre regions
    assert dense["labels"].numpy()[0, centre] == 1
    ref_labels, _, _ = np_dense_targets(boxes, labels, everything)
    np.testing.assert_array_equal(dense["labels"].numpy(), ref_labels)


def test_dense_targets_match_loop_reference_on_random_boxes():
    rng = np.random.default_rng(8)
    targets, _, _ = random_batch(rng, 3, 1, 6, 4, [6, 0, 3])
    ranges = losses.default_size_ranges(STRIDES)
    dense = losses.dense_targets(tf_targets(targets), S, STRIDES)
    ref_labels, ref_boxes, ref_ctr = np_dense_targets(targets["boxes"], targets["labels"],
                                                      ranges)
    assert (ref_labels >= 0).sum() > 20  # the comparison covers many positives
    np.testing.assert_array_equal(dense["labels"].numpy(), ref_labels)
    np.testing.assert_allclose(dense["boxes"].numpy(), ref_boxes, atol=1e-6)
    np.testing.assert_allclose(dense["centerness"].numpy(), ref_ctr, atol=1e-5)


# --------------------------------------------------------------------------- dense_loss


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_dense_loss(targets, outputs, alpha=0.25, gamma=2.0):
    labels, boxes, ctr = np_dense_targets(targets["boxes"], targets["labels"],
                                          losses.default_size_ranges(STRIDES))
    logits = outputs["class_logits"].astype(np.float64)
    num_classes = logits.shape[-1]
    onehot = (labels[..., None] == np.arange(num_classes)).astype(np.float64)
    p = np_sigmoid(logits)
    focal = np.where(onehot == 1, -alpha * (1 - p) ** gamma * np.log(p),
                     -(1 - alpha) * p ** gamma * np.log(1 - p))
    positive = labels >= 0
    num_pos = max(positive.sum(), 1)
    giou_sum = weight_sum = 0.0
    for b, n in zip(*np.nonzero(positive)):
        s = STRIDES[0] if n < 256 else STRIDES[1] if n < 320 else STRIDES[2]
        local = n - LEVEL_START[s]
        x, y = ((local % (S // s)) + 0.5) * s / S, ((local // (S // s)) + 0.5) * s / S
        d = np.exp(np.clip(outputs["box_deltas"][b, n].astype(np.float64), -8, 8)) * s / S
        pred = [x - d[0], y - d[1], x + d[2], y + d[3]]
        giou_sum += ctr[b, n] * (1 - np_giou(pred, boxes[b, n]))
        weight_sum += ctr[b, n]
    c = np_sigmoid(outputs["centerness"].astype(np.float64))
    bce = -(ctr * np.log(c) + (1 - ctr) * np.log(1 - c))
    return {"focal_loss": focal.sum() / num_pos,
            "giou_loss": giou_sum / weight_sum if weight_sum else 0.0,
            "centerness_loss": (bce * positive).sum() / num_pos}


def random_dense_outputs(rng, batch, num_classes):
    n = 256 + 64 + 16
    return {"class_logits": rng.normal(-2, 1, (batch, n, num_classes)).astype(np.float32),
            "box_deltas": rng.normal(0.5, 0.5, (batch, n, 4)).astype(np.float32),
            "centerness": rng.normal(0, 1, (batch, n)).astype(np.float32)}


def test_dense_loss_matches_reference_eager_and_under_xla():
    rng = np.random.default_rng(9)
    targets, _, _ = random_batch(rng, 2, 1, 4, 3, [4, 1])
    outputs = random_dense_outputs(rng, 2, 3)
    ref = np_dense_loss(targets, outputs)
    eager = losses.dense_loss(tf_targets(targets), outputs, S, STRIDES)
    compiled = tf.function(lambda t, o: losses.dense_loss(t, o, S, STRIDES),
                           jit_compile=True)(tf_targets(targets),
                                             {k: tf.constant(v) for k, v in outputs.items()})
    assert set(eager) == {"loss", "focal_loss", "giou_loss", "centerness_loss"}
    for key, value in ref.items():
        assert eager[key].numpy() == pytest.approx(value, rel=1e-4), key
        assert compiled[key].numpy() == pytest.approx(value, rel=1e-4), key
    assert eager["loss"].numpy() == pytest.approx(sum(ref.values()), rel=1e-4)


def test_dense_loss_with_empty_targets_is_focal_background_only():
    rng = np.random.default_rng(10)
    targets, _, _ = random_batch(rng, 2, 1, 3, 2, [0, 0])
    outputs = random_dense_outputs(rng, 2, 2)
    out = tf.function(lambda t, o: losses.dense_loss(t, o, S, STRIDES), jit_compile=True)(
        tf_targets(targets), {k: tf.constant(v) for k, v in outputs.items()})
    ref = np_dense_loss(targets, outputs)
    assert out["giou_loss"].numpy() == 0.0 and out["centerness_loss"].numpy() == 0.0
    assert out["focal_loss"].numpy() == pytest.approx(ref["focal_loss"], rel=1e-4)


def test_dense_loss_decreases_under_gradient_steps_with_finite_gradients():
    rng = np.random.default_rng(11)
    targets = tf_targets(random_batch(rng, 2, 1, 3, 2, [3, 0])[0])
    variables = {k: tf.Variable(v) for k, v in random_dense_outputs(rng, 2, 2).items()}

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            loss = losses.dense_loss(targets, variables, S, STRIDES)["loss"]
        grads = tape.gradient(loss, list(variables.values()))
        for var, grad in zip(variables.values(), grads):
            var.assign_sub(5.0 * grad)
        return loss, tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])

    values = []
    for _ in range(6):
        loss, finite = step()
        assert finite.numpy()
        values.append(loss.numpy())
    assert values[-1] < 0.8 * values[0], values


def test_dense_loss_rejects_a_point_count_mismatch():
    rng = np.random.default_rng(12)
    targets = tf_targets(random_batch(rng, 1, 1, 2, 2, [1])[0])
    with pytest.raises(ValueError, match="points"):
        losses.dense_loss(targets, random_dense_outputs(rng, 1, 2), 96, STRIDES)


# --------------------------------------------------------------------------- crop classifier


def test_jittered_target_boxes_flatten_real_slots_and_stay_near_them():
    boxes = np.zeros((3, 4, 4), "float32")
    labels = np.full((3, 4), -1, "int32")
    boxes[0, 0], labels[0, 0] = [0.1, 0.2, 0.5, 0.6], 2
    boxes[0, 2], labels[0, 2] = [0.6, 0.6, 0.9, 1.0], 0  # a hole before it stays a hole
    boxes[2, 1], labels[2, 1] = [0.0, 0.0, 0.3, 0.2], 1  # image 1 has no boxes
    targets = {"boxes": tf.constant(boxes), "labels": tf.constant(labels)}
    exact, index, got_labels = losses.jittered_target_boxes(targets, jitter=0.0)
    np.testing.assert_allclose(exact, boxes[[0, 0, 2], [0, 2, 1]])
    np.testing.assert_array_equal(index, [0, 0, 2])
    np.testing.assert_array_equal(got_labels, [2, 0, 1])
    # views: the real boxes repeated view after view, each copy jittered on its own
    exact3, index3, labels3 = losses.jittered_target_boxes(targets, jitter=0.0, views=3)
    np.testing.assert_allclose(exact3, np.tile(boxes[[0, 0, 2], [0, 2, 1]], (3, 1)))
    np.testing.assert_array_equal(index3, [0, 0, 2] * 3)
    np.testing.assert_array_equal(labels3, [2, 0, 1] * 3)
    moved3, _, _ = losses.jittered_target_boxes(targets, jitter=0.1, views=3)
    assert moved3.shape == (9, 4) and not np.allclose(moved3[:3], moved3[3:6], atol=1e-3)

    tf.random.set_seed(0)
    many = {"boxes": tf.tile(tf.constant(boxes), [200, 1, 1]),
            "labels": tf.tile(tf.constant(labels), [200, 1])}
    moved, _, _ = losses.jittered_target_boxes(many, jitter=0.1)
    moved = moved.numpy()
    assert moved.min() >= 0.0 and moved.max() <= 1.0
    assert np.all(moved[:, 2:] >= moved[:, :2])
    original = np.tile(boxes[[0, 0, 2], [0, 2, 1]], (200, 1))
    iou = np.diagonal(box_ops.box_iou(moved, original).numpy())
    assert 0.6 < np.median(iou) < 0.95 and np.mean(iou > 0.4) > 0.95, np.median(iou)
    assert np.mean(np.all(np.isclose(moved, original), axis=1)) < 0.05  # they did move


def test_crop_classifier_loss_matches_numpy_and_is_zero_without_boxes():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 4)).astype("float32")
    labels = np.array([0, 3, 1, 1, 2], "int32")
    got = losses.crop_classifier_loss(tf.constant(labels), tf.constant(logits))
    p = np_softmax(logits)
    np.testing.assert_allclose(got["crop_loss"], -np.mean(np.log(p[np.arange(5), labels])),
                               rtol=1e-5)
    np.testing.assert_allclose(got["crop_accuracy"], np.mean(p.argmax(-1) == labels))
    empty = losses.crop_classifier_loss(tf.zeros([0], tf.int32), tf.zeros([0, 4]))
    assert float(empty["crop_loss"]) == 0.0 and float(empty["crop_accuracy"]) == 0.0


def test_crop_boxes_reads_the_box_region():
    images = np.zeros((2, 32, 32, 3), "float32")
    images[1, 8:16, 16:32] = [10.0, 20.0, 30.0]  # rows 8-15, columns 16-31 of image 1
    crops = box_ops.crop_boxes(images, [[0.5, 0.25, 1.0, 0.5], [0.0, 0.0, 1.0, 1.0]], [1, 0], 6)
    assert crops.shape == (2, 6, 6, 3)
    # Interior samples of the box lie inside the painted block; image 0 is black.
    np.testing.assert_allclose(crops[0, 1:-1, 1:-1], np.broadcast_to([10.0, 20.0, 30.0],
                                                                     (4, 4, 3)), atol=1e-4)
    assert not crops.numpy()[1].any()
