import numpy as np
import pytest
import tensorflow as tf

from apps.detection import boxes as bx
from apps.detection import pipeline
from apps.detection.data import DetectionSplit


def _split(images, boxes, labels, name="train"):
    n = len(images)
    return DetectionSplit(name, list(range(n)), [None] * n,
                          np.array([im.shape[:2] for im in images], np.int64),
                          [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes],
                          [np.asarray(lab, np.int32) for lab in labels], list(images))


@pytest.mark.parametrize("shape", [(125, 113), (60, 200), (64, 64), (300, 97)])
def test_letterbox_tf_matches_numpy_letterbox(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    canvas, scale, offset = pipeline.letterbox_tf(image, 64)
    ref, _, transform = bx.letterbox(image, np.zeros((0, 4)), 64)
    np.testing.assert_allclose(scale.numpy(), [transform.scale_x, transform.scale_y], rtol=1e-6)
    np.testing.assert_allclose(offset.numpy(), [transform.offset_x, transform.offset_y])
    # Same geometry; TF's and PIL's antialiased bilinear kernels differ slightly.
    assert np.abs(canvas.numpy() - ref).mean() < 3.0
    inside = np.zeros((64, 64), bool)
    ox, oy = int(transform.offset_x), int(transform.offset_y)
    new_h, new_w = round(shape[0] * transform.scale_y), round(shape[1] * transform.scale_x)
    inside[oy:oy + new_h, ox:ox + new_w] = True
    assert np.all(canvas.numpy()[~inside] == pipeline.FILL)
    assert np.all(canvas.numpy() == np.round(canvas.numpy()))


def test_padded_targets_normalise_and_keep_largest():
    images = [np.zeros((50, 100, 3), np.uint8)]
    boxes = [[[0, 0, 10, 10], [20, 10, 60, 40], [70, 0, 72, 2]]]
    split = _split(images, boxes, [[3, 1, 2]])
    b, lab = pipeline.padded_targets(split, 64, max_boxes=2)
    assert lab.tolist() == [[3, 1]]  # the 2x2 box is the smallest: dropped
    t = bx.letterbox_transform((50, 100), (64, 64))
    np.testing.assert_allclose(b[0, 1], t.to_input(np.array([20, 10, 60, 40], np.float32)) / 64, rtol=1e-6)
    b, lab = pipeline.padded_targets(split, 64, max_boxes=5)
    assert lab.tolist() == [[3, 1, 2, -1, -1]] and np.all(b[0, 3:] == 0)


def _box_mask(size, box):
    mask = np.zeros((size, size), bool)
    x0, y0, x1, y1 = (np.asarray(box) * size).round().astype(int)
    mask[y0:y1, x0:x1] = True
    return mask


def test_augment_moves_boxes_with_pixels():
    """A white square on black: after flip + zoom the box still frames the white pixels."""
    tf.random.set_seed(3)
    size = 64
    image = np.zeros((size, size, 3), np.float32)
    image[10:30, 20:44] = 255.0
    box = np.array([[20 / 64, 10 / 64, 44 / 64, 30 / 64]], np.float32)
    augment = pipeline.Augment(scale_range=(0.5, 2.0), min_visible=0.3, brightness=0.0)
    kept = dropped = 0
    for _ in range(30):
        out, b, lab = augment(tf.constant(image), tf.constant(box), tf.constant([4]))
        out, b, lab = out.numpy(), b.numpy(), lab.numpy()
        white = out[..., 0] > 127
        if lab[0] == -1:
            dropped += 1
            assert np.all(b == 0)
            continue
        kept += 1
        assert white.any()
        ys, xs = np.nonzero(white)
        np.testing.assert_allclose(b[0] * size, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.5)
    assert kept > 10


def test_make_dataset_batches_and_order():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8) for i in range(5)]
    boxes = [[[1, 1, 20, 20]]] * 4 + [np.zeros((0, 4))]
    split = _split(images, boxes, [[0]] * 4 + [[]], name="val")
    ds = pipeline.make_dataset(split, 32, 2, training=False, max_boxes=3)
    batches = list(ds)
    assert [len(x) for x, _ in batches] == [2, 2, 1]  # evaluation keeps the last partial batch
    x, y = batches[-1]
    assert x.dtype == tf.float32 and x.shape[1:] == (32, 32, 3)
    assert y["labels"].numpy().tolist() == [[-1, -1, -1]]  # an image without boxes
    first = pipeline.letterbox_tf(images[0], 32)[0].numpy()
    np.testing.assert_array_equal(batches[0][0][0].numpy(), first)
    train = pipeline.make_dataset(split, 32, 2, training=True, max_boxes=3,
                                  augment=pipeline.Augment())
    assert [len(x) for x, _ in train] == [2, 2]  # full batches only


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        pipeline.make_dataset(_split([], [], [], name="val"), 32, 2, False)


def test_tile_split_cuts_images_and_boxes(tmp_path):
    from PIL import Image

    from apps.detection.data import tile_split

    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
    path = tmp_path / "big.png"
    Image.fromarray(image).save(path)
    # One box inside the first tile, one across the tiles' border, one small one.
    boxes = np.array([[5, 5, 40, 40], [50, 60, 120, 100], [180, 130, 190, 140]], np.float32)
    split = DetectionSplit("train", [1], [str(path)], np.array([[150, 200]]), [boxes],
                           [np.array([0, 1, 2], np.int32)], None, [np.array([1000.0, 2000.0, 80.0], np.float32)])
    tiles = tile_split(split, 100, overlap=0.2, min_visible=0.5)
    assert tiles.windows.tolist() == [[0, 0, 100, 100], [80, 0, 180, 100], [100, 0, 200, 100],
                                      [0, 50, 100, 150], [80, 50, 180, 150], [100, 50, 200, 150]]
    assert tiles.image_ids[1] == "1@80,0" and tiles.image_sizes.tolist() == [[100, 100]] * 6
    np.testing.assert_array_equal(tiles.load_image(4), image[50:150, 80:180])
    # Box 1 spans x 50-120: in tile 0 (x 0-100) 50/70 of it is visible -> kept, clipped.
    assert tiles.labels[0].tolist() == [0, 1]
    np.testing.assert_allclose(tiles.boxes[0][1], [50, 60, 100, 100])
    np.testing.assert_allclose(tiles.areas[0][1], 2000.0 * 50 / 70, rtol=1e-5)
    # Tile 5 (x 100-200, y 50-150): box 1 shows 20 of its 70 px width (< 0.5): dropped.
    assert tiles.labels[5].tolist() == [2]
    np.testing.assert_allclose(tiles.boxes[5][0], [80, 80, 90, 90])


def test_pipeline_reads_tiles_from_files(tmp_path):
    from PIL import Image

    from apps.detection.data import tile_split

    image = np.random.default_rng(3).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "wide.png")
    split = DetectionSplit("val", [0], [str(tmp_path / "wide.png")], np.array([[90, 160]]),
                           [np.array([[10, 10, 30, 30]], np.float32)], [np.array([3], np.int32)])
    tiles = tile_split(split, 96, overlap=0.0)
    assert len(tiles) == 2
    x, y = next(iter(pipeline.make_dataset(tiles, 32, 2, training=False, max_boxes=2)))
    expected = pipeline.letterbox_tf(image[:, 64:160], 32)[0].numpy()
    np.testing.assert_array_equal(x[1].numpy(), expected)
    assert y["labels"].numpy().tolist() == [[3, -1], [-1, -1]]
