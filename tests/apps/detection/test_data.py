import filecmp
import importlib.util
import json
import logging
import os
import types

import numpy as np
import pytest
from PIL import Image

from apps.detection import data as dd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_spec = importlib.util.spec_from_file_location(
    "make_detection_scenes", os.path.join(ROOT, "data", "make_detection_scenes.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

TINY = ["--train", "24", "--val", "6", "--test", "6", "--seed", "5", "--min_size", "64",
        "--max_size", "96", "--max_objects", "4", "--min_object_size", "12",
        "--max_object_size", "48"]


def _generate(out, *extra):
    assert os.path.exists(os.path.join(gen.FASHION_MNIST_DIR, gen.FASHION_MNIST_FILES["train"][0])), (
        "Fashion-MNIST is needed: run `make data` (installs the Debian package "
        "dataset-fashion-mnist as root) or apt-get install dataset-fashion-mnist"
    )
    return gen.generate(gen.parse_args(["--out", str(out)] + TINY + list(extra)), log=lambda m: None)


# One worker runs the module, so its module-scoped fixture is built once under xdist.
pytestmark = pytest.mark.xdist_group("apps_detection_test_data")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "tiny"
    _generate(out)
    return out


def _coco(scenes, split):
    with open(scenes / "annotations" / f"instances_{split}.json") as f:
        return json.load(f)


# --------------------------------------------------------------------------- generator


def test_generator_is_deterministic(scenes, tmp_path):
    again = tmp_path / "again"
    _generate(again)
    names = sorted(os.listdir(scenes / "images"))
    assert names == sorted(os.listdir(again / "images")) and len(names) == 36
    _, mismatch, errors = filecmp.cmpfiles(scenes, again, [
        f"annotations/instances_{s}.json" for s in gen.SPLITS] + [f"images/{n}" for n in names],
        shallow=False)
    assert not mismatch and not errors
    readme = (again / "README.txt").read_text().replace(str(again), str(scenes))
    assert readme == (scenes / "README.txt").read_text()  # differs only in --out
    other = tmp_path / "other"
    _generate(other, "--seed", "6")
    assert _coco(other, "train")["annotations"] != _coco(scenes, "train")["annotations"]


def test_generated_coco_is_valid(scenes):
    seen_classes, counts, shapes = set(), [], set()
    for split, count in (("train", 24), ("val", 6), ("test", 6)):
        coco = _coco(scenes, split)
        assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
        assert tuple(c["name"] for c in coco["categories"]) == gen.CLASS_NAMES
        images = {im["id"]: im for im in coco["images"]}
        assert len(images) == count
        for im in images.values():
            assert 64 <= im["width"] <= 96 and 64 <= im["height"] <= 96
            with Image.open(scenes / "images" / im["file_name"]) as pil:
                assert pil.size == (im["width"], im["height"]) and pil.mode == "RGB"
            shapes.add(im["width"] == im["height"])
        ids = [a["id"] for a in coco["annotations"]]
        assert len(set(ids)) == len(ids)
        per_image = {}
        for a in coco["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= im["width"] and y + h <= im["height"]
            assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
            assert 1 <= a["category_id"] <= 10
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
            if split == "train":
                seen_classes.add(a["category_id"])
        assert set(per_image) == set(images)  # 1..N objects: none empty
        counts += per_image.values()
    assert seen_classes == set(range(1, 11))
    assert max(counts) > 1 and max(counts) <= 4
    assert shapes == {True, False} or shapes == {False}  # non-square images by default

    data = dd.load_detection_data(scenes)
    assert list(data.splits) == ["train", "val", "test"]
    assert data.class_names == gen.CLASS_NAMES and data.category_ids == tuple(range(1, 11))
    assert not data.report.changes  # nothing clipped or dropped
    train = data.train
    coco = _coco(scenes, "train")
    first = [a for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]]
    x, y, w, h = first[0]["bbox"]
    assert np.array_equal(train.boxes[0][0], [x, y, x + w, y + h])
    assert train.labels[0][0] == first[0]["category_id"] - 1
    assert set(np.concatenate(train.labels).tolist()) == set(range(10))
    image = train.load_image(0)
    assert image.shape == (*train.image_sizes[0], 3) and image.dtype == np.uint8


def test_generator_splits_share_no_object_images(scenes):
    fashion, _ = gen.load_fashion_mnist()
    sources = {}
    for split in gen.SPLITS:
        annotations = _coco(scenes, split)["annotations"]
        sources[split] = {tuple(a["source"]) for a in annotations}
        for a in annotations:  # the pasted item's Fashion-MNIST label is the box's class
            key, index = a["source"]
            assert fashion[key][1][index] == a["category_id"] - 1
    assert {k for k, _ in sources["train"]} == {"train"}
    assert {k for k, _ in sources["val"] | sources["test"]} == {"t10k"}
    assert not sources["val"] & sources["test"]
    pools = gen.object_pools(fashion, seed=5)
    val_pool = set(np.concatenate(pools["val"][1]).tolist())
    test_pool = set(np.concatenate(pools["test"][1]).tolist())
    assert not val_pool & test_pool and len(val_pool | test_pool) == 10000


def test_boxes_are_tight_around_the_pasted_item():
    fashion, _ = gen.load_fashion_mnist()
    images, labels = fashion["train"]
    trouser = images[np.flatnonzero(labels == 1)[0]]  # narrow: far from its 28x28 cell
    alpha, shade = gen.render_object(trouser, 56, mirror=False)
    x0, y0, x1, y1 = gen.tight_box(alpha)
    assert x1 - x0 < 40 and (alpha[:, :x0] == 0).all() and (alpha[:, x1:] == 0).all()
    assert alpha[y0:y1, x0].any() and alpha[y0:y1, x1 - 1].any()
    assert alpha[y0, x0:x1].any() and alpha[y1 - 1, x0:x1].any()
    canvas = np.full((70, 80, 3), 0.5, np.float32)
    gen.paste(canvas, alpha, shade, np.array([1.0, 0.2, 0.2]), 10, 6)
    changed = np.flatnonzero((canvas != 0.5).any(axis=(0, 2)))
    rows = np.flatnonzero((canvas != 0.5).any(axis=(1, 2)))
    assert [changed[0], rows[0], changed[-1] + 1, rows[-1] + 1] == [10 + x0, 6 + y0, 10 + x1,
                                                                     6 + y1]


def test_generator_readme_is_honest(scenes):
    text = (scenes / "README.txt").read_text()
    for phrase in ("OBJECTS ARE REAL", "LAYOUT IS SYNTHETIC", "MIT", "Zalando",
                   "arXiv:1708.07747", "--seed 5"):
        assert phrase in text


@pytest.mark.parametrize("bad", [["--max_size", "50"], ["--max_objects", "0"],
                                 ["--max_overlap", "1.5"], ["--min_object_size", "2"]])
def test_generator_rejects_bad_arguments(bad, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gen.parse_args(["--out", str(tmp_path)] + TINY + bad)
    assert bad[0] in capsys.readouterr().err


# --------------------------------------------------------------------------- helpers


def _image(path, size=(40, 30), mode="RGB", colour=None):
    """Writes an image of (width, height) `size` in `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is None:
        colour = {"L": 100, "LA": (100, 200), "RGBA": (10, 20, 30, 128), "P": 3,
                  "I;16": 40000, "CMYK": (0, 255, 0, 0)}.get(mode, (10, 20, 30))
    Image.new(mode, size, colour).save(path)
    return path


def _write_json(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def _coco_file(tmp_path, annotations, images=None, categories=None):
    images = images or [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
    ]
    for im in images:
        if not (tmp_path / "images" / im["file_name"]).exists():
            _image(tmp_path / "images" / im["file_name"], (im["width"], im["height"]))
    categories = categories or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"},
                                {"id": 90, "name": "zebra"}]
    return _write_json(tmp_path / "annotations" / "instances_train.json",
                       {"images": images, "annotations": annotations, "categories": categories})


def _ann(aid, image_id, category_id, bbox, **extra):
    return {"id": aid, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


# --------------------------------------------------------------------------- COCO


def test_coco_file_maps_non_contiguous_categories(tmp_path):
    path = _coco_file(tmp_path, [_ann(1, 1, 90, [1, 2, 10, 5]), _ann(2, 1, 3, [0, 0, 4, 4]),
                                 _ann(3, 2, 7, [5.5, 6, 2, 3])])
    data = dd.load_detection_data(path)
    assert list(data.splits) == ["train"] and data.num_classes == 3
    assert data.class_names == ("cat", "dog", "zebra") and data.category_ids == (3, 7, 90)
    split = data.train
    assert split.image_ids == [1, 2]
    assert split.image_paths[0] == str(tmp_path / "images" / "a.png")
    assert np.array_equal(split.image_sizes, [[30, 40], [30, 40]])
    assert split.boxes[0].dtype == np.float32
    assert np.array_equal(split.boxes[0], [[1, 2, 11, 7], [0, 0, 4, 4]])
    assert split.labels[0].tolist() == [2, 0] and split.labels[1].tolist() == [1]
    assert split.labels[0].dtype == np.int32
    assert np.array_equal(split.boxes[1], [[5.5, 6, 7.5, 9]])
    assert [data.category_ids[k] for k in split.labels[0]] == [90, 3]
    assert split.num_boxes == 3 and len(split) == 2


def test_coco_folder_splits_and_image_folders(tmp_path):
    categories = [{"id": 1, "name": "a"}]
    for name in ("train2017", "val2017"):
        _image(tmp_path / name / "x.jpg", (20, 10))
        _write_json(tmp_path / "annotations" / f"instances_{name}.json", {
            "images": [{"id": 5, "file_name": "x.jpg", "width": 20, "height": 10}],
            "annotations": [_ann(1, 5, 1, [1, 1, 3, 3])], "categories": categories})
    data = dd.load_detection_data(tmp_path)
    assert list(data.splits) == ["train", "val"]
    assert data.val.image_paths == [str(tmp_path / "val2017" / "x.jpg")]
    with pytest.raises(KeyError, match="no split 'test'"):
        data.split("test")


def test_images_without_annotations_are_kept(tmp_path):
    path = _coco_file(tmp_path, [_ann(1, 1, 3, [1, 1, 5, 5])])
    data = dd.load_detection_data(path)
    assert data.train.boxes[1].shape == (0, 4) and data.train.labels[1].shape == (0,)
    assert data.report.count(dd.NO_BOXES) == 1
    path = _coco_file(tmp_path / "no_annotations_list", [])
    content = json.loads(path.read_text())
    del content["annotations"]  # COCO's test-dev files have none
    path.write_text(json.dumps(content))
    assert dd.load_detection_data(path).train.num_boxes == 0


def test_boxes_partly_outside_are_clipped_and_counted(tmp_path, caplog):
    path = _coco_file(tmp_path, [_ann(1, 1, 3, [-5, 20, 15, 20]),  # left and bottom
                                 _ann(2, 1, 3, [30, 2, 15, 4]),    # right
                                 _ann(3, 2, 3, [1, 1, 4, 4])])
    with caplog.at_level(logging.WARNING, logger="apps.detection.data"):
        data = dd.load_detection_data(path)
    assert np.array_equal(data.train.boxes[0], [[0, 20, 10, 30], [30, 2, 40, 6]])
    assert data.report.count(dd.CLIPPED) == 2
    assert data.report.boxes_read == 3 and data.report.boxes_kept == 3
    assert "2 boxes partly outside the image clipped" in caplog.text
    assert "instances_train.json annotation 1" in caplog.text


def test_zero_area_inverted_outside_and_crowd_boxes_are_dropped_and_counted(tmp_path, caplog):
    path = _coco_file(tmp_path, [_ann(1, 1, 3, [5, 5, 0, 10]),      # zero width
                                 _ann(2, 1, 3, [5, 5, 10, 0]),      # zero height
                                 _ann(3, 1, 3, [50, 5, 10, 10]),    # right of the image
                                 _ann(4, 1, 3, [5, -20, 10, 10]),   # above it
                                 _ann(5, 1, 3, [5, 5, -3, 4]),      # negative width
                                 _ann(6, 1, 3, [1, 1, 8, 8], iscrowd=1),
                                 _ann(7, 1, 7, [1, 1, 8, 8])])
    with caplog.at_level(logging.WARNING, logger="apps.detection.data"):
        data = dd.load_detection_data(path)
    report = data.report
    assert report.count(dd.ZERO_AREA) == 2 and report.count(dd.OUTSIDE) == 2
    assert report.count(dd.INVERTED) == 1 and report.count(dd.CROWD) == 1
    assert report.boxes_read == 6 and report.boxes_kept == 1  # crowd is not read as a box
    assert data.train.labels[0].tolist() == [1]
    assert "2 zero-area boxes dropped" in caplog.text and "annotation 1" in caplog.text
    assert dd.load_detection_data(path, include_crowd=True).train.num_boxes == 2


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "RGB"])
def test_any_channel_count_is_read_as_rgb(tmp_path, mode):
    path = _image(tmp_path / f"x_{mode.replace(';', '')}.png", (13, 7), mode)
    image = dd.read_image(path)
    assert image.shape == (7, 13, 3) and image.dtype == np.uint8
    expected = {"L": (100,) * 3, "LA": (100,) * 3, "RGBA": (10, 20, 30), "RGB": (10, 20, 30),
                "I;16": (156,) * 3}.get(mode)
    if expected:
        assert tuple(image[0, 0]) == expected
    assert dd.image_size(path) == (7, 13)


def test_cmyk_jpeg_and_large_images_in_a_coco_file(tmp_path):
    _image(tmp_path / "images" / "c.jpg", (300, 20), "CMYK")
    path = _coco_file(tmp_path, [_ann(1, 1, 3, [0, 0, 300, 20])],
                      images=[{"id": 1, "file_name": "c.jpg", "width": 300, "height": 20}])
    data = dd.load_detection_data(path)
    assert data.train.load_image(0).shape == (20, 300, 3)


def test_missing_image_file_is_named(tmp_path):
    path = _coco_file(tmp_path, [])
    os.remove(tmp_path / "images" / "b.png")
    with pytest.raises(ValueError, match=r"instances_train.json: 1 of 2 listed image files are "
                                         r"missing; first: .*b\.png \(image 2\)"):
        dd.load_detection_data(path)


def test_unreadable_image_is_named(tmp_path):
    path = _coco_file(tmp_path, [])
    (tmp_path / "images" / "a.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"a\.png: cannot read the image"):
        dd.load_detection_data(path)


def test_image_size_disagreeing_with_annotation_is_named(tmp_path):
    path = _coco_file(tmp_path, [])
    _image(tmp_path / "images" / "b.png", (41, 30))
    with pytest.raises(ValueError, match=r"image 2 is annotated as 40x30 .*/b\.png is 41x30"):
        dd.load_detection_data(path)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "instances_train.json"
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(ValueError, match=r"instances_train\.json: malformed JSON at line 2"):
        dd.load_detection_data(path)


@pytest.mark.parametrize("annotation, message", [
    ({"id": 9, "image_id": 1, "category_id": 3}, r"annotations\[0\] \(id 9\): no 'bbox' field"),
    (_ann(9, 1, 3, [1, 2, 3]), r"annotations\[0\] \(id 9\): 'bbox' must be 4 finite numbers"),
    (_ann(9, 1, 3, "1,2,3,4"), r"annotations\[0\] \(id 9\): 'bbox' must be list"),
    (_ann(9, 1, 4, [1, 2, 3, 4]), r"annotations\[0\] \(id 9\): category_id 4 is not in 'categories' \(ids \[3, 7, 90\]\)"),
    (_ann(9, 8, 3, [1, 2, 3, 4]), r"annotations\[0\] \(id 9\): image_id 8 is not in 'images'"),
])
def test_bad_coco_annotations_are_named(tmp_path, annotation, message):
    path = _coco_file(tmp_path, [annotation])
    with pytest.raises(ValueError, match=r"instances_train\.json: " + message):
        dd.load_detection_data(path)


def test_bad_coco_images_and_categories_are_named(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}] * 2
    with pytest.raises(ValueError, match=r"images\[1\] \(id 1\): image id 1 appears twice"):
        dd.load_detection_data(_coco_file(tmp_path, [], images=images))
    path = _write_json(tmp_path / "x.json", {"images": [], "annotations": []})
    with pytest.raises(ValueError, match=r"x\.json: no 'categories' list"):
        dd.load_detection_data(path)
    path = _write_json(tmp_path / "y.json", {"images": [{"id": 1, "file_name": "a.png",
                                                         "width": "40", "height": 30}],
                                            "categories": []})
    with pytest.raises(ValueError, match=r"y\.json: images\[0\] \(id 1\): 'width' must be int or float"):
        dd.load_detection_data(path)


def test_splits_with_different_categories_are_rejected(tmp_path):
    _coco_file(tmp_path, [])
    _write_json(tmp_path / "annotations" / "instances_val.json",
                {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]})
    with pytest.raises(ValueError, match=r"instances_val\.json: its categories differ"):
        dd.load_detection_data(tmp_path)


def test_unknown_source_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown detection source"):
        dd.load_detection_data(tmp_path / "boxes.txt")
    with pytest.raises(ValueError, match="not a detection dataset folder"):
        dd.load_detection_data(tmp_path)


# --------------------------------------------------------------------------- Pascal VOC

VOC_XML = """<annotation>
  <filename>{stem}.jpg</filename>
  {size}
  <object><name>{first}</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>
  <object><name>bird</name>
    <bndbox><xmin>5</xmin><ymin>5</ymin><xmax>60</xmax><ymax>8</ymax></bndbox></object>
</annotation>
"""


def _voc(root, stems=("000001", "000002"), lists=None, first="person", size=True):
    (root / "Annotations").mkdir(parents=True)
    for stem in stems:
        size_xml = "<size><width>40</width><height>30</height><depth>3</depth></size>"
        (root / "Annotations" / f"{stem}.xml").write_text(
            VOC_XML.format(stem=stem, first=first, size=size_xml if size else ""))
        _image(root / "JPEGImages" / f"{stem}.jpg", (40, 30))
    for name, members in (lists or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(members) + "\n")
    return root


def test_voc_folder_with_split_lists(tmp_path):
    root = _voc(tmp_path / "VOC2012", lists={"train": ["000001"], "val": ["000002"]})
    data = dd.load_detection_data(root)
    assert list(data.splits) == ["train", "val"]
    assert data.class_names == ("bird", "person") and data.category_ids == (1, 2)
    train = data.train
    assert train.image_ids == ["000001"]
    assert train.image_paths == [str(root / "JPEGImages" / "000001.jpg")]
    # 1-based inclusive pixel indices -> continuous coordinates; the bird is clipped
    assert np.array_equal(train.boxes[0], [[0, 1, 10, 12], [4, 4, 40, 8]])
    assert train.labels[0].tolist() == [1, 0]
    assert data.report.count(dd.CLIPPED) == 2  # one per split
    plain = dd.load_detection_data(root, voc_one_based=False, class_names=["person", "bird"])
    assert np.array_equal(plain.train.boxes[0][0], [1, 2, 10, 12])
    assert plain.train.labels[0].tolist() == [0, 1]


def test_voc_without_lists_or_sizes(tmp_path):
    root = _voc(tmp_path / "voc", size=False)
    data = dd.load_detection_data(root, split="test")
    assert list(data.splits) == ["test"] and len(data.test) == 2
    assert np.array_equal(data.test.image_sizes, [[30, 40], [30, 40]])  # read from the files


def test_voc_malformed_xml_names_file_and_line(tmp_path):
    root = _voc(tmp_path / "voc")
    (root / "Annotations" / "000002.xml").write_text("<annotation>\n<object>\n</annotation>")
    with pytest.raises(ValueError, match=r"000002\.xml: malformed XML at line 3"):
        dd.load_detection_data(root)


def test_voc_missing_tags_are_named(tmp_path):
    root = _voc(tmp_path / "voc")
    path = root / "Annotations" / "000001.xml"
    path.write_text(path.read_text().replace("<ymax>12</ymax>", ""))
    with pytest.raises(ValueError, match=r"000001\.xml: <object> 1 \(person\) <bndbox>: no <ymax>"):
        dd.load_detection_data(root)
    path.write_text(path.read_text().replace("<xmin>1</xmin>", "<xmin>one</xmin>"))
    with pytest.raises(ValueError, match=r"<xmin> must be a number, got 'one'"):
        dd.load_detection_data(root)


def test_voc_missing_image_and_listed_xml_are_named(tmp_path):
    root = _voc(tmp_path / "voc", lists={"train": ["000001", "000009"]})
    with pytest.raises(ValueError, match=r"train\.txt: lists '000009' but .*000009\.xml does not"):
        dd.load_detection_data(root)
    root = _voc(tmp_path / "voc2")
    os.remove(root / "JPEGImages" / "000002.jpg")
    with pytest.raises(ValueError, match=r"Annotations: 1 of 2 listed image files are missing; "
                                         r"first: .*000002\.jpg"):
        dd.load_detection_data(root)


# --------------------------------------------------------------------------- CSV


def _csv(tmp_path, text):
    for name in ("a.png", "b.png", "c.png"):
        _image(tmp_path / "imgs" / name, (40, 30), "L")
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    return path


def test_csv_with_labels_splits_and_empty_images(tmp_path):
    path = _csv(tmp_path, "image,xmin,ymin,xmax,ymax,label,split\n"
                          "imgs/a.png,1,2,11,12,shoe,train\n"
                          "imgs/a.png,0,0,50,5,bag,train\n"
                          "imgs/b.png,,,,,,train\n"
                          "imgs/c.png,3.5,4,8,9,bag,val\n")
    data = dd.load_detection_data(path)
    assert list(data.splits) == ["train", "val"] and data.class_names == ("bag", "shoe")
    train = data.train
    assert train.image_ids == ["imgs/a.png", "imgs/b.png"]
    assert np.array_equal(train.boxes[0], [[1, 2, 11, 12], [0, 0, 40, 5]])
    assert train.labels[0].tolist() == [1, 0] and train.boxes[1].shape == (0, 4)
    assert np.array_equal(data.val.boxes[0], [[3.5, 4, 8, 9]])
    assert data.report.count(dd.CLIPPED) == 1 and data.report.count(dd.NO_BOXES) == 1
    assert train.load_image(0).shape == (30, 40, 3)


def test_csv_without_split_column_uses_image_dir(tmp_path):
    path = _csv(tmp_path, "image,xmin,ymin,xmax,ymax,label\na.png,1,2,3,4,x\n")
    data = dd.load_detection_data(path, image_dir=tmp_path / "imgs", split="val")
    assert list(data.splits) == ["val"] and data.val.image_paths[0] == str(tmp_path / "imgs" / "a.png")


@pytest.mark.parametrize("body, message", [
    ("image,xmin,ymin,xmax,label\n", r"missing column\(s\) \['ymax'\]"),
    ("image,xmin,ymin,xmax,ymax,label\nimgs/a.png,1,2,three,4,x\n",
     r"line 2: column 'xmax' must be a number, got 'three'"),
    ("image,xmin,ymin,xmax,ymax,label\nimgs/a.png,1,2,3,4,x\nimgs/a.png,1,2,3,4\n",
     r"line 3: expected 6 fields, got 5"),
    ("image,xmin,ymin,xmax,ymax,label\nimgs/a.png,1,2,3,4,\n", r"line 2: empty 'label'"),
    ("image,xmin,ymin,xmax,ymax,label\nimgs/a.png,1,2,nan,4,x\n", r"line 2: column 'xmax' must "
                                                                  r"be finite"),
    ("image,xmin,ymin,xmax,ymax,label\n", r"no rows"),
    ("image,xmin,ymin,xmax,ymax,label\nimgs/zzz.png,1,2,3,4,x\n", r"1 of 1 listed image files "
                                                                  r"are missing; first: .*zzz"),
])
def test_bad_csv_is_named(tmp_path, body, message):
    path = _csv(tmp_path, body)
    with pytest.raises(ValueError, match=r"boxes\.csv:? .*" + message):
        dd.load_detection_data(path)


def test_csv_label_outside_class_names_is_named(tmp_path):
    path = _csv(tmp_path, "image,xmin,ymin,xmax,ymax,label\nimgs/a.png,1,2,3,4,x\n")
    with pytest.raises(ValueError, match=r"boxes\.csv line 2: label 'x' is not in `class_names`"):
        dd.load_detection_data(path, class_names=["y"])


# --------------------------------------------------------------------------- TFDS


def test_tfds_offline_says_so(monkeypatch):
    def offline(name, **kwargs):
        raise ConnectionError("name resolution failed")

    monkeypatch.setattr(dd, "_tfds_load", offline)
    with pytest.raises(RuntimeError, match=r"Cannot load TFDS dataset 'coco/2017' "
                                           r"\(ConnectionError.*network access"):
        dd.load_detection_data("tfds:coco/2017")


def test_tfds_examples_become_a_split(monkeypatch):
    example = {
        "image": np.zeros((20, 50, 3), np.uint8), "image/id": 42,
        "objects": {"bbox": np.array([[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], np.float32),
                    "label": np.array([1, 0]), "is_crowd": np.array([False, True])},
    }
    dataset = types.SimpleNamespace(as_numpy_iterator=lambda: iter([example]))
    label = types.SimpleNamespace(names=["cat", "dog"])
    info = types.SimpleNamespace(features={"objects": {"label": label}})
    monkeypatch.setattr(dd, "_tfds_load", lambda name, **kw: ({"validation": dataset}, info))
    data = dd.load_detection_data("tfds:voc/2012")
    split = data.val
    assert data.class_names == ("cat", "dog") and split.image_ids == [42]
    assert split.image_paths == [None] and split.load_image(0).shape == (20, 50, 3)
    np.testing.assert_allclose(split.boxes[0], [[10, 2, 30, 10]], atol=1e-5)
    assert split.labels[0].tolist() == [1]
