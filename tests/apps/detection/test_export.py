"""`detections_compare`: the export check tolerates NMS reorderings of tied scores and
nothing else."""

import numpy as np
import pytest

from apps.detection.export import detections_compare

D = 6


def _outputs(scores, boxes=None, classes=None):
    """One image's serving outputs, padded to D rows as the SavedModel pads them."""
    n = len(scores)
    boxes = np.asarray(boxes if boxes is not None else
                       [[0.1 * k, 0.1, 0.1 * k + 0.2, 0.3] for k in range(n)], np.float32)
    classes = np.asarray(classes if classes is not None else [k + 1 for k in range(n)], np.float32)
    pad = D - n
    names = np.array([f"c{int(c)}".encode() for c in classes] + [b""] * pad, dtype=object)
    return {
        "detection_scores": np.pad(np.asarray(scores, np.float32), (0, pad))[None],
        "detection_boxes": np.pad(boxes.reshape(n, 4), ((0, pad), (0, 0)))[None],
        "detection_classes": np.pad(classes, (0, pad))[None],
        "detection_class_names": names[None],
        "num_detections": np.array([n], np.float32),
    }


def _compare(got, want, threshold=0.05):
    return detections_compare(threshold)(got, want, 1e-5, 1e-4)


def test_identical_outputs_pass_with_zero_difference():
    out = _outputs([0.9, 0.5, 0.2])
    assert set(_compare(out, out).values()) == {0.0}


def test_tied_scores_may_come_out_in_either_order_or_suppress_differently():
    want = _outputs([0.9, 0.40001, 0.4, 0.2])
    # Rows 1 and 2 tie: swapped, and the second survivor suppressed the last detection.
    got = _outputs([0.9, 0.4, 0.40001], boxes=[[0.0, 0.1, 0.2, 0.3], [0.2, 0.1, 0.4, 0.3],
                                               [0.1, 0.1, 0.3, 0.3]], classes=[1, 3, 2])
    diffs = _compare(got, want)
    assert diffs["detection_scores"] == 0.0  # only the rows before the tie are compared


@pytest.mark.parametrize("change, message", [
    (lambda o: o["detection_scores"].__setitem__((0, 0), 0.8), "detection_scores"),
    (lambda o: o["detection_boxes"].__setitem__((0, 1, 2), 0.9), "detection_boxes"),
    (lambda o: o["detection_classes"].__setitem__((0, 0), 7.0), "detection_classes"),
    (lambda o: o["detection_class_names"].__setitem__((0, 1), b"other"), "detection_class_names"),
])
def test_a_real_difference_before_any_tie_is_reported(change, message):
    want = _outputs([0.9, 0.5, 0.2])
    got = _outputs([0.9, 0.5, 0.2])
    change(got)
    with pytest.raises(AssertionError, match=message):
        _compare(got, want)


def test_counts_must_agree_unless_a_score_sits_at_the_threshold():
    want = _outputs([0.9, 0.5, 0.2])
    with pytest.raises(AssertionError, match="num_detections"):
        _compare(_outputs([0.9, 0.5]), want)
    # The last detection is at the threshold: in one graph it passed, in the other not.
    assert _compare(_outputs([0.9, 0.5]), _outputs([0.9, 0.5, 0.05004]), threshold=0.05)
    # No detection at all on one side: fine only when the other's are all at the threshold.
    with pytest.raises(AssertionError, match="num_detections"):
        _compare(_outputs([]), want)
    assert _compare(_outputs([]), _outputs([0.05002]), threshold=0.05) is not None


def test_the_top_score_is_always_compared():
    want = _outputs([0.9, 0.9, 0.2])  # a tie at the very top
    with pytest.raises(AssertionError, match="detection_scores"):
        _compare(_outputs([0.7, 0.7, 0.2]), want)
