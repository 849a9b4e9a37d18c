"""Tests for benchmarks/detection_peers.py: keras-hub RetinaNet and D-FINE as peers.

Tiny shapes (S=64, 2 images, 2 classes), seeded. References are NumPy (box formats, the
contract's value ranges), scipy (optimal assignments) and keras-hub's own decoded output.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from benchmarks import detection_peers as dp

S = 64
K = 2


def _targets(seed=0, batch=2, max_boxes=5):
    """Normalised xyxy boxes of 16-38 px (at S=64), padding slots (-1) scattered."""
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    labels = -np.ones((batch, max_boxes), np.int32)
    for b in range(batch):
        slots = rng.permutation(max_boxes)[: 2 + b]
        for j in slots:
            x0, y0 = rng.uniform(0.0, 0.4, 2)
            w, h = rng.uniform(0.25, 0.6, 2)
            boxes[b, j] = [x0, y0, min(x0 + w, 1.0), min(y0 + h, 1.0)]
            labels[b, j] = rng.integers(0, K)
    return {"boxes": boxes, "labels": labels}


def _dataset(targets, seed=0):
    images = np.random.default_rng(seed).uniform(0, 255, (2, S, S, 3)).astype(np.float32)
    return images, tf.data.Dataset.from_tensors((images, targets)).repeat()


def test_retinanet_targets_pixels_and_round_trip():
    targets = _targets()
    peer = dp.to_peer_targets(targets, S, "retinanet")
    valid = targets["labels"] >= 0
    np.testing.assert_allclose(peer["boxes"].numpy()[valid], targets["boxes"][valid] * S,
                               rtol=1e-6)
    assert np.all(peer["boxes"].numpy()[~valid] == -1.0)
    np.testing.assert_array_equal(peer["labels"].numpy(), targets["labels"])
    back = dp.from_peer_targets(peer, S, "retinanet")
    np.testing.assert_allclose(back["boxes"].numpy(), targets["boxes"], atol=1e-6)
    np.testing.assert_array_equal(back["labels"].numpy(), targets["labels"])


def test_dfine_targets_cxcywh_real_first_and_round_trip():
    targets = _targets(seed=1)
    peer = dp.to_peer_targets(targets, S, "dfine")
    for b in range(2):
        keep = targets["labels"][b] >= 0
        n = int(keep.sum())
        x0, y0, x1, y1 = targets["boxes"][b][keep].T
        want = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)
        # Real boxes first, in their original order; then padding (box 0, label -1).
        np.testing.assert_allclose(peer["boxes"].numpy()[b, :n], want, atol=1e-6)
        np.testing.assert_array_equal(peer["labels"].numpy()[b, :n], targets["labels"][b][keep])
        assert np.all(peer["labels"].numpy()[b, n:] == -1)
        assert np.all(peer["boxes"].numpy()[b, n:] == 0.0)
        back = dp.from_peer_targets(peer, S, "dfine")
        np.testing.assert_allclose(back["boxes"].numpy()[b, :n], targets["boxes"][b][keep],
                                   atol=1e-6)
        assert np.all(back["boxes"].numpy()[b, n:] == 0.0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="name"):
        dp.build_peer("yolo", K, S)
    with pytest.raises(ValueError, match="image_size"):
        dp.build_peer("dfine", K, 100)
    _, ds = _dataset(_targets(max_boxes=24))
    with pytest.raises(ValueError, match="queries"):  # 20 queries at S=64 < 24 slots
        dp.peer_dataset(ds, "dfine", S)
    with pytest.raises(ValueError, match="images"):
        dp.peer_dataset(ds, "retinanet", 128)


def test_dfine_matcher_cost_scale_gives_optimal_assignments():
    # keras-hub's Hungarian on a float32 cost matrix padded with 1e9 (as its matcher does):
    # at scale 1 it is suboptimal, at DFINE_MATCHER_COST_SCALE it matches scipy.
    from keras_hub.src.models.d_fine.d_fine_utils import hungarian_assignment

    rng = np.random.default_rng(0)
    queries, real = 8, 3
    base = rng.uniform(0, 10, (queries, real))
    _, best = linear_sum_assignment(base.T)  # rows of `base` picked per column
    optimum = base[best, np.arange(real)].sum()
    excess = {}
    for scale in (1.0, dp.DFINE_MATCHER_COST_SCALE):
        cost = np.full((queries, queries), 1e9, np.float32)
        cost[:, :real] = base * scale
        rows, cols, _ = (t.numpy() for t in hungarian_assignment(cost, queries))
        picked = sum(base[r, c] for r, c in zip(rows, cols) if c < real)
        excess[scale] = picked - optimum
    assert excess[1.0] > 1e-3
    assert abs(excess[dp.DFINE_MATCHER_COST_SCALE]) < 1e-6


def _check_contract(detections, batch, max_detections, score_threshold):
    boxes = detections["boxes"].numpy()
    scores = detections["scores"].numpy()
    classes = detections["classes"].numpy()
    num = detections["num_detections"].numpy()
    assert boxes.shape == (batch, max_detections, 4) and boxes.dtype == np.float32
    assert scores.shape == (batch, max_detections) and classes.dtype == np.int32
    assert num.shape == (batch,) and num.dtype == np.int32
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(np.diff(scores, axis=1) <= 0)
    for b in range(batch):
        n = num[b]
        assert np.all(scores[b, :n] > score_threshold)
        assert np.all(scores[b, n:] == 0) and np.all(classes[b, n:] == 0)
        assert np.all(boxes[b, n:] == 0)
        assert np.all((classes[b, :n] >= 0) & (classes[b, :n] < K))


def _train_and_detect(name):
    # Threshold 0 keeps every NMS survivor of the untrained model (scores ~0.01).
    model = dp.build_peer(name, K, S, score_threshold=0.0)
    dp.compile_peer(model, name, learning_rate=1e-4)
    images, ds = _dataset(_targets())
    history = model.fit(dp.peer_dataset(ds, name, S), steps_per_epoch=2, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and history.history["loss"][0] > 0
    detections = dp.peer_detect(model, images, name, max_detections=30)
    _check_contract(detections, 2, 30, score_threshold=0.0)
    # Reference: keras-hub's own decoded output in pixels, from the same compiled graph
    # (an eager rerun can reorder near-tied scores of the untrained model).
    raw = dp._detect_fn(model)(tf.constant(images))
    return detections, raw


def _assert_rows_match(detections, raw, name):
    """peer_detect's rows are keras-hub's pixel boxes / S (xyxy), ranked by score."""
    for b in range(2):
        n = int(detections["num_detections"].numpy()[b])
        assert n >= 1
        pixels = raw["boxes"].numpy()[b, :n]
        if name == "dfine":  # keras-hub's D-FINE decodes to yxyx
            pixels = pixels[:, [1, 0, 3, 2]]
        order = np.argsort(-raw["confidence"].numpy()[b, :n], kind="stable")
        np.testing.assert_allclose(detections["boxes"].numpy()[b, :n],
                                   np.clip(pixels / S, 0, 1)[order], atol=1e-5)
        np.testing.assert_allclose(detections["scores"].numpy()[b, :n],
                                   raw["confidence"].numpy()[b, :n][order], atol=1e-6)


def test_retinanet_trains_and_detects():
    detections, raw = _train_and_detect("retinanet")
    _assert_rows_match(detections, raw, "retinanet")


def test_peer_detect_takes_a_smaller_last_batch():
    """An evaluation's last partial batch: keras-hub's NMS needs a static batch size, so a
    second batch size must trace again rather than relax to an unknown one."""
    model = dp.build_peer("retinanet", K, S, score_threshold=0.0)
    images, _ = _dataset(_targets())
    full = dp.peer_detect(model, images, "retinanet", max_detections=10)
    last = dp.peer_detect(model, images[:1], "retinanet", max_detections=10)
    three = dp.peer_detect(model, np.concatenate([images, images[:1]]), "retinanet",
                           max_detections=10)
    _check_contract(last, 1, 10, score_threshold=0.0)
    np.testing.assert_allclose(last["scores"].numpy()[0], full["scores"].numpy()[0], atol=1e-5)
    np.testing.assert_allclose(three["scores"].numpy()[2], full["scores"].numpy()[0], atol=1e-5)


@pytest.mark.slow  # keras-hub's keras.ops Hungarian loops take ~1.5 min to trace on 2 cores
def test_dfine_trains_and_detects():
    detections, raw = _train_and_detect("dfine")
    # 20 queries at S=64: keras-hub's NMS keeps at most 20, peer_detect pads to 30.
    assert np.all(detections["num_detections"].numpy() <= 20)
    _assert_rows_match(detections, raw, "dfine")
