import numpy as np
import pytest

from apps.detection import boxes as B


def _random_boxes(rng, n, height, width):
    x = np.sort(rng.uniform(0, width, size=(n, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, size=(n, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def _painted(height, width, box, channels=3):
    """An image with the whole pixels of an integer xyxy box set to 255, the rest 0."""
    image = np.zeros((height, width, channels), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 255
    return image


def _bright_extent(image, level=128):
    """xyxy of the pixels brighter than `level` (whole-pixel edges)."""
    mask = image.max(axis=-1) > level
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], float)


# --------------------------------------------------------------------------- formats


def test_convert_known_values():
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0]])
    assert np.allclose(B.convert_boxes(xyxy, "xyxy", "xywh"), [[10, 20, 40, 60]])
    assert np.allclose(B.convert_boxes(xyxy, "xyxy", "cxcywh"), [[30, 50, 40, 60]])
    assert np.allclose(B.convert_boxes(xyxy, "xyxy", "yxyx"), [[20, 10, 80, 50]])
    assert np.allclose(B.convert_boxes([[30, 50, 40, 60]], "cxcywh", "xywh"), [[10, 20, 40, 60]])


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh", "yxyx"])
def test_convert_round_trip_keeps_batch_shape(fmt):
    boxes = _random_boxes(np.random.default_rng(0), 12, 90, 130).reshape(3, 4, 4)
    there = B.convert_boxes(boxes, "xyxy", fmt)
    assert there.shape == (3, 4, 4)
    assert np.allclose(B.convert_boxes(there, fmt, "xyxy"), boxes)


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh", "yxyx"])
def test_normalize_round_trip_and_range(fmt):
    height, width = 90, 130
    boxes = B.convert_boxes(_random_boxes(np.random.default_rng(1), 8, height, width), "xyxy", fmt)
    normal = B.normalize_boxes(boxes, (height, width), fmt)
    assert np.allclose(B.denormalize_boxes(normal, (height, width), fmt), boxes)
    xyxy = B.convert_boxes(normal, fmt, "xyxy")
    assert xyxy.min() >= 0 and xyxy.max() <= 1
    # x is divided by the width, y by the height, whatever the order
    assert np.allclose(xyxy[:, [0, 2]] * width,
                       B.convert_boxes(boxes, fmt, "xyxy")[:, [0, 2]])


def test_bad_format_and_shape_are_named():
    with pytest.raises(ValueError, match="`target` must be one of"):
        B.convert_boxes([[0, 0, 1, 1]], "xyxy", "xyz")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        B.convert_boxes([[0, 0, 1]], "xyxy", "xywh")


def test_clip_and_area():
    boxes = np.array([[-5, -5, 10, 10], [90, 40, 120, 70], [20, 20, 10, 30]], float)
    clipped = B.clip_boxes(boxes, (60, 100))
    assert np.array_equal(clipped, [[0, 0, 10, 10], [90, 40, 100, 60], [20, 20, 10, 30]])
    assert np.allclose(B.box_area(clipped), [100, 200, 0])


# --------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("original", [(90, 130), (130, 90), (64, 64), (300, 41), (17, 500),
                                      (1000, 700)])
@pytest.mark.parametrize("input_size", [128, (96, 160)])
def test_letterbox_round_trip(original, input_size):
    boxes = _random_boxes(np.random.default_rng(2), 16, *original)
    transform = B.letterbox_transform(original, input_size)
    in_h, in_w = transform.input_size
    inside = transform.to_input(boxes)
    # inside the input, and the aspect ratio of every box kept up to whole-pixel rounding
    assert inside.min() >= -1e-6 and inside[:, [0, 2]].max() <= in_w + 1e-6
    assert inside[:, [1, 3]].max() <= in_h + 1e-6
    assert abs(transform.scale_x - transform.scale_y) <= 1 / min(original) + 1e-9
    np.testing.assert_allclose(transform.to_original(inside), boxes, atol=1e-4)
    np.testing.assert_allclose(transform.to_original(inside.astype(np.float32)), boxes,
                               atol=1e-4 * max(original))  # float32 input: relative error


def test_letterbox_image_and_boxes_agree():
    box = (30, 10, 70, 40)
    image = _painted(50, 100, box)
    out, boxes, transform = B.letterbox(image, np.array([box], float), 200, fill=7)
    assert out.shape == (200, 200, 3) and out.dtype == np.uint8
    assert transform.offset_x == 0 and transform.offset_y == 50 and transform.scale_x == 2
    assert np.array_equal(boxes[0], [60, 70, 140, 130])
    np.testing.assert_allclose(_bright_extent(out), boxes[0], atol=1)
    assert (out[:50] == 7).all() and (out[150:] == 7).all()  # padding above and below
    np.testing.assert_allclose(transform.to_original(boxes), [box])


def test_to_original_clips_predictions_in_the_padding():
    transform = B.letterbox_transform((50, 100), 200)
    predicted = np.array([[-10.0, 20.0, 210.0, 60.0]])  # reaches into the padding
    assert np.array_equal(transform.to_original(predicted), [[0, 0, 100, 5]])
    assert transform.to_original(predicted, clip=False)[0, 0] == -5


def test_stretch_resize_round_trip_and_image():
    box = (8, 4, 24, 20)
    image = _painted(32, 40, box)
    out, boxes, transform = B.resize(image, np.array([box], float), (64, 120))
    assert out.shape == (64, 120, 3)
    assert np.allclose(boxes, [[24, 8, 72, 40]])
    np.testing.assert_allclose(_bright_extent(out), boxes[0], atol=1)
    np.testing.assert_allclose(transform.to_original(boxes), [box], atol=1e-6)


def test_resize_image_grey_and_float():
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    assert B.resize_image(grey, (6, 5)).shape == (6, 5)
    floats = np.random.default_rng(0).random((12, 10, 2)).astype(np.float32)
    out = B.resize_image(floats, 24)
    assert out.shape == (24, 24, 2) and out.dtype == np.float32
    assert floats.min() - 1e-6 <= out.min() and out.max() <= floats.max() + 1e-6


# --------------------------------------------------------------------------- augmentation


def test_hflip_moves_pixels_and_boxes_together():
    box = (5, 3, 12, 9)
    image = _painted(20, 30, box)
    flipped, boxes = B.hflip(image, np.array([box], float))
    assert np.array_equal(boxes, [[18, 3, 25, 9]])
    assert np.array_equal(_bright_extent(flipped), boxes[0])
    again, back = B.hflip(flipped, boxes)
    assert np.array_equal(again, image) and np.array_equal(back, [box])
    assert np.array_equal(B.box_area(boxes), B.box_area(np.array([box], float)))


def test_scale_jitter_boxes_follow_pixels():
    box = (20, 10, 44, 30)
    image = _painted(40, 60, box)
    rng = np.random.default_rng(3)
    for _ in range(5):
        out, boxes = B.scale_jitter(image, np.array([box], float), rng, (0.5, 2.0), (0.8, 1.25))
        height, width = out.shape[:2]
        assert np.allclose(boxes[0] / [width, height, width, height],
                           np.array(box) / [60, 40, 60, 40])
        np.testing.assert_allclose(_bright_extent(out), boxes[0], atol=1.01)


def test_crop_boxes_clips_shifts_and_drops():
    boxes = np.array([[0, 0, 10, 10],     # 25% inside the window: dropped at 0.3
                      [10, 10, 20, 20],   # wholly inside
                      [18, 5, 30, 15],    # half inside: clipped
                      [40, 40, 50, 50]],  # outside
                     float)
    out, keep = B.crop_boxes(boxes, (5, 5, 25, 25), min_visible=0.3)
    assert keep.tolist() == [1, 2]
    assert np.array_equal(out, [[5, 5, 15, 15], [13, 0, 20, 10]])
    _, keep = B.crop_boxes(boxes, (5, 5, 25, 25), min_visible=0.2)
    assert keep.tolist() == [0, 1, 2]


def test_random_crop_invariants():
    rng = np.random.default_rng(4)
    height, width = 80, 100
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    boxes = _random_boxes(rng, 6, height, width)
    labels = np.arange(6)
    for _ in range(20):
        crop, out, kept_labels = B.random_crop(image, boxes, labels, rng, min_scale=0.4,
                                               min_visible=0.5)
        ch, cw = crop.shape[:2]
        assert len(out) == len(kept_labels) >= 1
        assert out.min() >= 0 and (out[:, [0, 2]] <= cw).all() and (out[:, [1, 3]] <= ch).all()
        assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()
        # the crop is a window of the image; find it and check the kept boxes' visibility
        y0, x0 = [(y, x) for y in range(height - ch + 1) for x in range(width - cw + 1)
                  if np.array_equal(image[y : y + ch, x : x + cw], crop)][0]
        original = boxes[kept_labels]
        visible = B.box_area(out) / B.box_area(original)
        assert (visible >= 0.5 - 1e-6).all()
        expected = np.clip(original - [x0, y0, x0, y0], 0, [cw, ch, cw, ch])
        assert np.allclose(out, expected)


def test_random_crop_without_boxes_and_when_every_crop_loses_them():
    rng = np.random.default_rng(5)
    image = np.zeros((40, 40, 3), np.uint8)
    crop, out, labels = B.random_crop(image, np.zeros((0, 4)), np.zeros(0, int), rng)
    assert out.shape == (0, 4) and labels.shape == (0,) and crop.shape[0] <= 40
    whole = np.array([[0, 0, 40, 40]], float)  # wholly visible only in a full-size crop
    crop, out, labels = B.random_crop(image, whole, [3], rng, min_scale=0.5, min_visible=1.0,
                                      tries=3)
    assert crop.shape == image.shape and np.array_equal(out, whole) and labels.tolist() == [3]
