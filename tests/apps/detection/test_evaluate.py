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


def test_class_agnostic_map_and_confusion_separate_class_errors_from_misses():
    split = _split()
    gt = ev.coco_ground_truth(split, NAMES)
    dets = _perfect(split)
    dets[1] = (dets[1][0], dets[1][1], np.array([0], np.int32))  # the dog found as a cat
    results = ev.coco_results(dets)
    assert ev.coco_map(gt, results)[0]["map"] < 1.0
    assert ev.class_agnostic_map(gt, results) == {"map": pytest.approx(1.0), "ap50": pytest.approx(1.0)}
    counts = ev.confusion_matrix(gt, results)
    expected = np.zeros((3, 4), np.int64)
    expected[0, 0] = expected[2, 2] = 1  # cat and eel right
    expected[1, 0] = 1  # dog -> cat
    np.testing.assert_array_equal(counts, expected)
    # A low-scoring right-class box does not win over a higher-scoring wrong one; a box
    # under IoU 0.5 does not count; an image without detections counts as missed.
    dets[1] = (np.array([[0, 0, 100, 80], [0, 0, 100, 80]], np.float32),
               np.array([0.9, 0.3], np.float32), np.array([0, 1], np.int32))
    dets[0] = (dets[0][0] + 25, dets[0][1], dets[0][2])
    counts = ev.confusion_matrix(gt, ev.coco_results(dets))
    assert counts[1, 0] == 1 and counts[0, 3] == 1 and counts[2, 3] == 1
    counts = ev.confusion_matrix(gt, [])
    assert counts[:, 3].tolist() == [1, 1, 1] and counts[:, :3].sum() == 0
    assert ev.class_agnostic_map(gt, []) == {"map": 0.0, "ap50": 0.0}
    line = ev.confusion_summary(ev.confusion_matrix(gt, results), NAMES)
    assert "own class: 0.667" in line and "dog as cat 1" in line


def test_write_evaluation_writes_the_confusion_table(tmp_path):
    split = _split()
    gt = ev.coco_ground_truth(split, NAMES)
    results = ev.coco_results(_perfect(split))
    metrics, per_class = ev.coco_map(gt, results)
    metrics["confusion"] = ev.confusion_matrix(gt, results).tolist()
    ev.write_evaluation(tmp_path, metrics, {k: per_class[k + 1] for k in range(3)}, NAMES, results)
    rows = (tmp_path / "confusion.csv").read_text().splitlines()
    assert rows[0] == "class,cat,dog,eel,missed" and rows[2] == "dog,0,1,0,0"
    assert "confusion" not in (tmp_path / "metrics.json").read_text()
