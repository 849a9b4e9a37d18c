import numpy as np
import pytest
import tensorflow as tf

from apps.detection import postprocess as P
from tests.apps.detection.test_matcher import np_giou, np_softmax

S, STRIDES, N = 128, (8, 16, 32), 256 + 64 + 16


def np_sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def np_iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def dense_outputs(batch, num_classes, fill=-10.0):
    """Outputs with every class score low (sigmoid(-10) ~ 5e-5), deltas of 1-stride boxes."""
    return {"class_logits": np.full((batch, N, num_classes), fill, np.float32),
            "box_deltas": np.zeros((batch, N, 4), np.float32),
            "centerness": np.full((batch, N), 10.0, np.float32)}


def encode(box, x, y, stride):
    """Raw deltas that decode to a pixel xyxy `box` at point (x, y) of `stride` (pixels)."""
    return np.log(np.array([x - box[0], y - box[1], box[2] - x, box[3] - y]) / stride)


# --------------------------------------------------------------------------- points, decode


def test_dense_points_layout():
    points, strides = (t.numpy() for t in P.dense_points(S, STRIDES))
    assert points.shape == (N, 2) and strides.shape == (N,)
    np.testing.assert_allclose(points[0], [4 / S, 4 / S])
    np.testing.assert_allclose(points[1], [12 / S, 4 / S])  # column j is the inner index
    np.testing.assert_allclose(points[16], [4 / S, 12 / S])  # next row
    np.testing.assert_allclose(points[256], [8 / S, 8 / S])  # first point of stride 16
    np.testing.assert_allclose(points[-1], [112 / S, 112 / S])
    assert list(np.unique(strides, return_counts=True)[1]) == [256, 64, 16]


@pytest.mark.parametrize("image_size,strides", [(100, (8, 16, 32)), (128, (16, 8))])
def test_dense_points_rejects_bad_layouts(image_size, strides):
    with pytest.raises(ValueError, match="image_size|strides"):
        P.dense_points(image_size, strides)


def test_decode_round_trip():
    outputs = dense_outputs(1, 2)
    # P4 point (i=2, j=5): centre (88, 40) px; P5 point (i=3, j=0): centre (16, 112) px
    cases = [(256 + 2 * 8 + 5, 88, 40, 16, [70.0, 30.0, 100.0, 64.0]),
             (320 + 3 * 4 + 0, 16, 112, 32, [1.0, 90.0, 60.0, 127.0])]
    for n, x, y, s, box in cases:
        outputs["box_deltas"][0, n] = encode(box, x, y, s)
    decoded = P.decode_boxes(outputs["box_deltas"], S, STRIDES).numpy()
    for n, *_, box in cases:
        np.testing.assert_allclose(decoded[0, n] * S, box, atol=1e-3)
    # raw 0 is one stride from the point to each side; raw beyond 8 is clipped
    np.testing.assert_allclose(decoded[0, 0] * S, [-4, -4, 12, 12], atol=1e-5)
    big = P.decode_boxes(np.full((1, N, 4), 50.0, np.float32), S, STRIDES).numpy()
    np.testing.assert_allclose(big[0, 0, 2] * S, 4 + np.exp(8) * 8, rtol=1e-5)


# --------------------------------------------------------------------------- DETR


def test_postprocess_detr_matches_numpy_and_pads():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 5, 4)).astype(np.float32)
    boxes = rng.uniform(0.0, 0.7, (2, 5, 4)).astype(np.float32)
    out = P.postprocess_detr({"logits": logits, "boxes": boxes}, max_detections=7)
    probs = np_softmax(logits.astype(np.float64))[..., :3]
    for b in range(2):
        order = np.argsort(-probs[b].max(-1))
        np.testing.assert_allclose(out["scores"][b, :5], probs[b].max(-1)[order], rtol=1e-5)
        np.testing.assert_array_equal(out["classes"][b, :5], probs[b].argmax(-1)[order])
        c = boxes[b, order]
        xyxy = np.clip(np.stack([c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2,
                                 c[:, 0] + c[:, 2] / 2, c[:, 1] + c[:, 3] / 2], -1), 0, 1)
        np.testing.assert_allclose(out["boxes"][b, :5], xyxy, atol=1e-6)
    assert out["num_detections"].numpy().tolist() == [5, 5]
    assert np.all(out["scores"].numpy()[:, 5:] == 0) and np.all(out["boxes"].numpy()[:, 5:] == 0)
    assert out["classes"].dtype == tf.int32 and out["num_detections"].dtype == tf.int32


def test_postprocess_detr_threshold_and_top_k():
    logits = np.full((1, 4, 3), -10.0, np.float32)
    logits[0, :, 2] = 0.0  # no-object wins everywhere ...
    logits[0, 1, 0] = 5.0  # ... except queries 1 and 3
    logits[0, 3, 1] = 3.0
    boxes = np.tile(np.array([0.5, 0.5, 0.2, 0.2], np.float32), (1, 4, 1))
    out = P.postprocess_detr({"logits": logits, "boxes": boxes}, max_detections=2,
                             score_threshold=0.5)
    assert out["scores"].shape == (1, 2)
    assert out["num_detections"].numpy().tolist() == [2]
    np.testing.assert_array_equal(out["classes"].numpy(), [[0, 1]])
    strict = P.postprocess_detr({"logits": logits, "boxes": boxes}, max_detections=2,
                                score_threshold=0.97)  # 0.993 and 0.953
    assert strict["num_detections"].numpy().tolist() == [1]
    assert strict["scores"].numpy()[0, 1] == 0 and strict["classes"].numpy()[0, 1] == 0


# --------------------------------------------------------------------------- dense


def place(outputs, b, n, x, y, s, box, cls, logit):
    outputs["box_deltas"][b, n] = encode(box, x, y, s)
    outputs["class_logits"][b, n, cls] = logit


def test_nms_removes_duplicates_and_keeps_other_class_overlaps():
    outputs = dense_outputs(2, 3)
    box = [40.0, 40.0, 80.0, 80.0]
    # image 0: the same box from three P3 points, two of class 1 and one of class 2
    place(outputs, 0, 5 * 16 + 5, 44, 44, 8, box, 1, 4.0)
    place(outputs, 0, 5 * 16 + 6, 52, 44, 8, box, 1, 2.0)
    place(outputs, 0, 6 * 16 + 6, 52, 52, 8, box, 2, 1.0)
    # and a far box of class 1 that must survive
    place(outputs, 0, 1 * 16 + 1, 12, 12, 8, [2.0, 2.0, 30.0, 20.0], 1, 0.0)
    out = P.postprocess_dense(outputs, S, STRIDES, max_detections=6)
    scores = np.sqrt(np_sigmoid([4.0, 1.0, 0.0]) * np_sigmoid(10.0))
    assert out["num_detections"].numpy().tolist() == [3, 0]
    np.testing.assert_allclose(out["scores"][0, :3], scores, rtol=1e-5)
    np.testing.assert_array_equal(out["classes"][0, :3], [1, 2, 1])
    np.testing.assert_allclose(out["boxes"][0, 0] * S, box, atol=1e-3)
    np.testing.assert_allclose(out["boxes"][0, 1] * S, box, atol=1e-3)
    # padded rows, and the whole empty image: zeros
    for key in ("boxes", "scores", "classes"):
        assert np.all(out[key].numpy()[0, 3:] == 0) and np.all(out[key].numpy()[1] == 0)


def np_dense_reference(outputs, max_detections, score_threshold, iou_threshold):
    """Per-class greedy NMS over all (point, class) pairs, float64 loops."""
    points, strides = (t.numpy().astype(np.float64) for t in P.dense_points(S, STRIDES))
    d = np.exp(np.clip(outputs["box_deltas"].astype(np.float64), -8, 8)) * (strides / S)[:, None]
    boxes = np.clip(np.concatenate([points - d[..., :2], points + d[..., 2:]], -1), 0, 1)
    scores = np.sqrt(np_sigmoid(outputs["class_logits"])
                     * np_sigmoid(outputs["centerness"])[..., None])
    results = []
    for b in range(boxes.shape[0]):
        kept = []
        for c in range(scores.shape[-1]):
            order = [n for n in np.argsort(-scores[b, :, c]) if scores[b, n, c] > score_threshold]
            chosen = []
            for n in order:
                if all(np_iou(boxes[b, n], boxes[b, m]) <= iou_threshold for m in chosen):
                    chosen.append(n)
            kept += [(scores[b, n, c], c, n) for n in chosen]
        kept.sort(key=lambda t: -t[0])
        results.append(kept[:max_detections])
    return results, boxes


def test_postprocess_dense_matches_greedy_nms_reference():
    rng = np.random.default_rng(1)
    outputs = {"class_logits": rng.normal(-4, 2, (2, N, 3)).astype(np.float32),
               "box_deltas": rng.normal(1.0, 0.4, (2, N, 4)).astype(np.float32),
               "centerness": rng.normal(0, 1, (2, N)).astype(np.float32)}
    out = P.postprocess_dense(outputs, S, STRIDES, max_detections=20, score_threshold=0.3,
                              iou_threshold=0.5)
    ref, boxes = np_dense_reference(outputs, 20, 0.3, 0.5)
    for b in range(2):
        k = len(ref[b])
        assert k > 5 and out["num_detections"].numpy()[b] == k
        np.testing.assert_allclose(out["scores"][b, :k], [t[0] for t in ref[b]], rtol=1e-5)
        np.testing.assert_array_equal(out["classes"][b, :k], [t[1] for t in ref[b]])
        np.testing.assert_allclose(out["boxes"][b, :k], boxes[b, [t[2] for t in ref[b]]],
                                   atol=1e-5)
        assert np.all(np.diff(out["scores"].numpy()[b]) <= 0)


def test_unknown_batch_size_in_serving_signature():
    spec = {"class_logits": tf.TensorSpec([None, N, 2], tf.float32),
            "box_deltas": tf.TensorSpec([None, N, 4], tf.float32),
            "centerness": tf.TensorSpec([None, N], tf.float32)}
    dense = tf.function(lambda o: P.postprocess_dense(o, S, STRIDES, max_detections=5),
                        input_signature=[spec])
    detr = tf.function(lambda o: P.postprocess_detr(o, max_detections=5), input_signature=[
        {"logits": tf.TensorSpec([None, 4, 3], tf.float32),
         "boxes": tf.TensorSpec([None, 4, 4], tf.float32)}])
    outputs = dense_outputs(3, 2)
    place(outputs, 2, 0, 4, 4, 8, [0.0, 0.0, 10.0, 9.0], 1, 3.0)
    for batch in (1, 3):
        out = dense({k: v[:batch] for k, v in outputs.items()})
        assert out["boxes"].shape == (batch, 5, 4) and out["num_detections"].shape == (batch,)
    assert out["num_detections"].numpy().tolist() == [0, 0, 1]
    assert out["classes"].numpy()[2, 0] == 1
    rng = np.random.default_rng(2)
    out = detr({"logits": rng.normal(size=(2, 4, 3)).astype(np.float32),
                "boxes": rng.uniform(0.2, 0.5, (2, 4, 4)).astype(np.float32)})
    assert out["scores"].shape == (2, 5) and out["num_detections"].numpy().tolist() == [4, 4]
    assert np_giou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0  # the shared reference is sane


# --------------------------------------------------------------------------- crop rescoring


def test_rescore_with_crops_matches_numpy_and_keeps_padding():
    rng = np.random.default_rng(4)
    B, D, K, w = 2, 6, 3, 0.5
    scores = np.sort(rng.uniform(0.1, 1.0, (B, D)).astype("float32"), axis=1)[:, ::-1].copy()
    num = np.array([4, 0], "int32")  # the second image has no detections
    scores[np.arange(D)[None, :] >= num[:, None]] = 0.0
    boxes = rng.uniform(0, 1, (B, D, 4)).astype("float32")
    classes = rng.integers(0, K, (B, D)).astype("int32")
    probs = rng.dirichlet(np.ones(K), B * D).astype("float32").reshape(B, D, K)
    seen = []

    def classify(crop_boxes, image_index):
        # Probabilities looked up by the box (each box is unique), so any order works.
        seen.append((crop_boxes.numpy(), image_index.numpy()))
        rows = [np.argwhere(np.all(boxes == b, axis=-1))[0] for b in crop_boxes.numpy()]
        return tf.constant(np.array([probs[i, j] for i, j in rows]).reshape(-1, K))

    detections = {"boxes": tf.constant(boxes), "scores": tf.constant(scores),
                  "classes": tf.constant(classes), "num_detections": tf.constant(num)}
    got = {k: v.numpy() for k, v in P.rescore_with_crops(detections, classify, w, 0.3).items()}
    # classify saw exactly the valid detections, with their image.
    np.testing.assert_array_equal(seen[0][1], [0] * 4)
    np.testing.assert_array_equal(seen[0][0], boxes[0, :4])
    new = scores[0, :4] ** (1 - w) * probs[0, np.arange(4), classes[0, :4]] ** w
    order = np.argsort(-new, kind="stable")
    n = int(np.sum(new > 0.3))
    assert got["num_detections"][0] == n and 0 < n < 4, new
    np.testing.assert_allclose(got["scores"][0, :n], new[order][:n], rtol=1e-5)
    np.testing.assert_array_equal(got["classes"][0, :n], classes[0, :4][order][:n])
    np.testing.assert_allclose(got["boxes"][0, :n], boxes[0, :4][order][:n])
    assert not got["scores"][0, n:].any()  # rescored below the threshold: padding
    assert got["num_detections"][1] == 0 and not got["scores"][1].any()
    assert not got["boxes"][0, got["num_detections"][0]:].any()


def test_rescore_weight_zero_keeps_the_head_scores():
    scores = tf.constant([[0.9, 0.5, 0.0]])
    detections = {"boxes": tf.constant([[[0, 0, .5, .5], [.5, .5, 1, 1], [0, 0, 0, 0]]],
                                       tf.float32),
                  "scores": scores, "classes": tf.constant([[1, 0, 0]]),
                  "num_detections": tf.constant([2])}
    got = P.rescore_with_crops(detections, lambda b, i: tf.fill([tf.shape(b)[0], 2], 0.5), 0.0)
    np.testing.assert_allclose(got["scores"], scores)
    np.testing.assert_array_equal(got["num_detections"], [2])


def test_rescore_crop_classes_adds_the_crops_classes_then_per_class_nms():
    # Image 0: box A (head: class 0, 0.8) whose crop says class 2; box B (class 1, 0.6)
    # far from A, crop agrees. Image 1: box C (class 2, 0.5) and C2, nearly the same box
    # (IoU > 0.6), that the head called class 3 at 0.4; both crops say class 3.
    A, B_, C, C2 = [0, 0, .4, .4], [.6, .6, 1, 1], [.1, .1, .5, .5], [.11, .1, .5, .51]
    boxes = np.array([[A, B_, [0] * 4], [C, C2, [0] * 4]], "float32")
    scores = np.array([[0.8, 0.6, 0], [0.5, 0.4, 0]], "float32")
    classes = np.array([[0, 1, 0], [2, 3, 0]], "int32")
    keys = np.array([A, B_, C, C2], "float32")
    table = np.array([[.3, 0, .6, .1], [0, .9, .05, .05], [0, 0, .2, .8], [0, 0, .3, .7]],
                     "float32")

    def lookup(crop_boxes):  # each box's probabilities, found by the box
        return table[[int(np.argmin(np.abs(keys - b).sum(-1))) for b in crop_boxes]]

    def classify(crop_boxes, image_index):
        return tf.constant(lookup(crop_boxes.numpy()))

    detections = {"boxes": tf.constant(boxes), "scores": tf.constant(scores),
                  "classes": tf.constant(classes), "num_detections": tf.constant([2, 2])}
    w = 0.5
    plain = P.rescore_with_crops(detections, classify, w, 0.05)
    got = {k: v.numpy() for k, v in
           P.rescore_with_crops(detections, classify, w, 0.05, crop_classes=1).items()}

    def s(score, p):
        return score ** (1 - w) * p ** w

    # Image 0: the head's (A, 0) and (B, 1) as without crop classes, plus (A, 2).
    want0 = sorted([(s(.8, .6), 2, A), (s(.6, .9), 1, B_), (s(.8, .3), 0, A)], reverse=True)
    assert got["num_detections"][0] == 3
    np.testing.assert_allclose(got["scores"][0], [x[0] for x in want0], rtol=1e-5)
    np.testing.assert_array_equal(got["classes"][0], [x[1] for x in want0])
    np.testing.assert_allclose(got["boxes"][0], [x[2] for x in want0], atol=1e-6)
    # Image 1: (C, 3) from C's crop outranks the head's own (C2, 3), which NMS removes.
    want1 = sorted([(s(.5, .8), 3, C), (s(.5, .2), 2, C)], reverse=True)
    assert got["num_detections"][1] == 2
    np.testing.assert_allclose(got["scores"][1, :2], [x[0] for x in want1], rtol=1e-5)
    np.testing.assert_array_equal(got["classes"][1, :2], [x[1] for x in want1])
    assert not got["scores"][1, 2:].any() and not got["boxes"][1, 2:].any()
    # Without crop classes nothing is added: the head's classes only.
    np.testing.assert_array_equal(np.sort(plain["classes"].numpy()[0, :2]), [0, 1])
    # Traced with an unknown batch size (the serving signature), the same detections.
    fn = tf.function(lambda b, sc, c, n: P.rescore_with_crops(
        {"boxes": b, "scores": sc, "classes": c, "num_detections": n},
        lambda bx, i: tf.ensure_shape(tf.numpy_function(lookup, [bx], tf.float32,
                                                        stateful=False), [None, 4]),
        w, 0.05, crop_classes=1),
        input_signature=[tf.TensorSpec((None, 3, 4)), tf.TensorSpec((None, 3)),
                         tf.TensorSpec((None, 3), tf.int32), tf.TensorSpec((None,), tf.int32)])
    traced = fn(*(detections[k] for k in ("boxes", "scores", "classes", "num_detections")))
    for key in got:
        np.testing.assert_allclose(traced[key], got[key], rtol=1e-5, err_msg=key)
