import numpy as np
import pytest

from apps.detection import evaluate as ev
from apps.detection.data import DetectionSplit, tile_windows
from apps.detection.predict import merge_nms, nms_indices

NAMES = ("cat", "dog", "eel")


def _split(areas=None):
    boxes = [np.array([[10, 10, 30, 40], [50, 5, 90, 45]], np.float32),
             np.array([[0, 0, 100, 80]], np.float32),
             np.zeros((0, 4), np.float32)]
    labels = [np.array([0, 2], np.int32), np.array([1], np.int32), np.zeros(0, np.int32)]
    return DetectionSplit("val", [7, 8, 9], [None] * 3, np.array([[100, 120]] * 3), boxes,
                          labels, None, areas)


def _perfect(split):
    return [(b.copy(), np.full(len(b), 0.9, np.float32), lab.copy())
            for b, lab in zip(split.boxes, split.labels)]


def test_perfect_detections_score_one():
    split = _split()
    gt = ev.coco_ground_truth(split, NAMES)
    metrics, per_class = ev.coco_map(gt, ev.coco_results(_perfect(split)))
    assert metrics["map"] == pytest.approx(1.0) and metrics["ap50"] == pytest.approx(1.0)
    assert set(per_class) == {1, 2, 3} and all(v == pytest.approx(1.0) for v in per_class.values())


def test_worse_detections_score_lower():
    split = _split()
    gt = ev.coco_ground_truth(split, NAMES)
    dets = _perfect(split)
    dets[0][0][0] += [6, 6, 6, 6]  # IoU ~0.5 with its box
    shifted, _ = ev.coco_map(gt, ev.coco_results(dets))
    assert 0 < shifted["map"] < 1.0
    dets = _perfect(split)
    dets[1] = (dets[1][0], dets[1][1], np.array([0], np.int32))  # wrong class
    wrong, per_class = ev.coco_map(gt, ev.coco_results(dets))
    assert wrong["map"] < 1.0 and per_class[2] == pytest.approx(0.0)
    empty, _ = ev.coco_map(gt, [])
    assert empty["map"] == 0.0


def test_areas_decide_small_medium_large():
    split = _split(areas=[np.array([500.0, 1600.0], np.float32), np.array([20000.0], np.float32),
                          np.zeros(0, np.float32)])
    gt = ev.coco_ground_truth(split, NAMES)
    assert [a["area"] for a in gt["annotations"]] == [500.0, 1600.0, 20000.0]
    metrics, _ = ev.coco_map(gt, ev.coco_results(_perfect(split)))
    assert metrics["ap_small"] == pytest.approx(1.0) and metrics["ap_large"] == pytest.approx(1.0)
    no_areas = ev.coco_ground_truth(_split(), NAMES)
    assert no_areas["annotations"][0]["area"] == pytest.approx(20 * 30)


def test_results_use_source_ids():
    split = _split()
    results = ev.coco_results(_perfect(split), split.image_ids, category_ids=(11, 12, 13))
    assert [(r["image_id"], r["category_id"]) for r in results] == [(7, 11), (7, 13), (8, 12)]
    assert results[0]["bbox"] == [10.0, 10.0, 20.0, 30.0]


def test_tile_windows_cover_the_image():
    windows = tile_windows(300, 500, 128, 0.25)
    covered = np.zeros((300, 500), bool)
    for x0, y0, x1, y1 in windows:
        assert x1 - x0 == 128 and y1 - y0 == 128
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile_windows(100, 90, 128, 0.2) == [(0, 0, 90, 100)]


def test_merge_nms_keeps_one_per_object_and_class():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([1, 1, 2, 1])
    b, s, lab = merge_nms(boxes, scores, labels, iou_threshold=0.5)
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.6]) and lab.tolist() == [1, 2, 1]


def test_class_agnostic_nms_keeps_one_label_per_object():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [30, 30, 40, 40]], np.float32)
    scores = np.array([0.5, 0.7, 0.4], np.float32)
    keep = nms_indices(boxes, scores, np.zeros(3, np.int64), 0.7, max_detections=3)
    assert keep.tolist() == [1, 2]
