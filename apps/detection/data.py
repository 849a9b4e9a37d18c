"""Detection data for the detection app: loaders and checks into one in-memory form.

Sources (`load_detection_data(source, ...)`):
    a COCO folder          `annotations/instances_<split>.json` with the images in
                           `images/` (as `data/make_detection_scenes.py` writes), or in
                           `images/<split>/` or `<split>/` (COCO 2017's `train2017/`); a
                           trailing year is dropped from split names (train2017 -> train).
    a COCO `.json` file    one instances file; images in `image_dir` (default `images/`
                           beside the file or beside its folder, else the file's folder);
                           one split named `split`.
    a Pascal VOC folder    `Annotations/*.xml` and `JPEGImages/`; splits from
                           `ImageSets/Main/{train,val,test}.txt` when present, else all
                           in `split`. VOC's 1-based inclusive pixel indices become
                           continuous coordinates: [xmin - 1, ymin - 1, xmax, ymax].
    a `.csv` file          header `image,xmin,ymin,xmax,ymax,label` (label names; an
                           optional `split` column), one row per box; a row with empty
                           box and label fields is an image without objects. Paths are
                           relative to the CSV's folder (or `image_dir`); coordinates are
                           continuous pixel coordinates of the original image.
    "tfds:NAME"            a TFDS detection dataset for online users ("tfds:coco/2017",
                           "tfds:voc/2012"), imported lazily; offline it fails with a
                           RuntimeError that says so. Its images are held in memory.

Every source gives a `DetectionData`: per split, image paths (or arrays), the original
image sizes, boxes as float32 [xmin, ymin, xmax, ymax] in pixels of the ORIGINAL image
(x right, y down, continuous: a box over pixel columns 3..5 is [3, ., 6, .]), and int32
labels 0..K-1. `class_names[k]` names label k and `category_ids[k]` is its id in the
source (COCO category ids, sorted; 1..K for VOC and CSV, whose classes are sorted by name
unless `class_names` fixes the order), for writing COCO-format predictions.

Bad input, in the order it is checked:
    - unreadable or malformed JSON/XML/CSV      ValueError naming the file (and line,
      missing or ill-typed fields               column, annotation id or field)
    - annotations naming unknown images or      ValueError naming the file and annotation
      categories, duplicate image ids
    - listed image files that are missing       ValueError naming the first missing file
      or unreadable, or whose size differs      and the annotation file that lists it
      from the annotation's
    - crowd annotations (COCO iscrowd=1)        dropped, counted (include_crowd=True keeps)
    - boxes with xmax < xmin or ymax < ymin     dropped, counted
    - zero-area boxes                           dropped, counted
    - boxes entirely outside the image          dropped, counted
    - boxes partly outside the image            clipped to it, counted
Images without boxes are kept (counted). `DetectionData.report` holds the counts and
the first places of each; a summary is logged when anything was dropped or clipped.

pycocotools is not needed: COCO JSON is read with the json module (the evaluation code
uses pycocotools itself).

    data = load_detection_data("data/detection/fashion_scenes")
    print(data.report.summary())
    image, boxes, labels = data.train.load_image(0), data.train.boxes[0], data.train.labels[0]
"""

import csv
import dataclasses
import json
import logging
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DetectionData", "DetectionSplit", "LoadReport", "load_detection_data", "read_image",
    "image_size", "tile_split", "tile_windows",
]

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("image", "xmin", "ymin", "xmax", "ymax", "label")
TFDS_SPLIT_NAMES = {"validation": "val", "valid": "val", "dev": "val"}

CROWD = "crowd annotations dropped (iscrowd=1)"
INVERTED = "boxes with xmax < xmin or ymax < ymin dropped"
ZERO_AREA = "zero-area boxes dropped"
OUTSIDE = "boxes entirely outside the image dropped"
CLIPPED = "boxes partly outside the image clipped to it"
NO_BOXES = "images without boxes (kept)"


# --------------------------------------------------------------------------- containers


@dataclasses.dataclass
class DetectionSplit:
    """One split in memory. Image i: `image_paths[i]` (or `images[i]`), original size
    `image_sizes[i]` = (height, width), `boxes[i]` float32 (n_i, 4) [xmin, ymin, xmax,
    ymax] in that image's pixels, `labels[i]` int32 (n_i,) in 0..K-1."""

    name: str
    image_ids: list  # ids in the source: COCO image id, VOC file stem, CSV image path
    image_paths: list  # None for images held in `images`
    image_sizes: np.ndarray  # (num_images, 2) int64 (height, width)
    boxes: list
    labels: list
    images: list | None = None  # uint8 (h, w, 3) arrays, for sources without files (TFDS)
    # Object areas per box (float32 (n_i,)): COCO's `area` (the object's pixel count, what
    # pycocotools splits small/medium/large by) when the source gives it, else box area.
    areas: list | None = None
    # Tiles (`tile_split`): image i is the window [x0, y0, x1, y1] (pixels) of its file.
    windows: np.ndarray | None = None

    def __len__(self):
        return len(self.image_ids)

    @property
    def num_boxes(self):
        return int(sum(len(b) for b in self.boxes))

    def subset(self, indices, name=None):
        """A split of the images at `indices` (in that order)."""
        indices = [int(i) for i in indices]

        def pick(items):
            return None if items is None else [items[i] for i in indices]

        return DetectionSplit(name or self.name, pick(self.image_ids), pick(self.image_paths),
                              self.image_sizes[indices].reshape(-1, 2), pick(self.boxes),
                              pick(self.labels), pick(self.images), pick(self.areas),
                              None if self.windows is None else self.windows[indices])

    def load_image(self, index):
        """Image `index` as uint8 RGB (height, width, 3), as in the source."""
        if self.images is not None and self.images[index] is not None:
            image = self.images[index]
        else:
            image = read_image(self.image_paths[index])
        if self.windows is not None:
            x0, y0, x1, y1 = (int(v) for v in self.windows[index])
            image = image[y0:y1, x0:x1]
        return image


def tile_windows(height, width, tile, overlap=0.2):
    """[(x0, y0, x1, y1)] covering an image with `tile`-sized windows overlapping by at
    least `overlap` of a tile (the last row/column aligned to the border); one window
    (the whole image) when it fits in a tile."""
    def starts(length):
        if length <= tile:
            return [0]
        step = max(1, int(tile * (1 - overlap)))
        return list(range(0, length - tile, step)) + [length - tile]
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in starts(height) for x in starts(width)]


def tile_split(split, tile, overlap=0.2, min_visible=0.5, name=None):
    """Cuts the images of `split` larger than `tile` pixels into overlapping tiles, for
    training on large images at full resolution (predict with `apps.detection.predict
    --tile`, which merges the tiles' boxes with NMS). Boxes are clipped to each tile;
    a box keeps its label in a tile when at least `min_visible` of its area is inside.
    Images that fit in a tile stay whole. Tiles without boxes are kept (background).

    Returns:
        a `DetectionSplit` of tiles: `windows[i]` is tile i's window in its image, its
        id `"<image id>@<x0>,<y0>"`.
    """
    if tile < 32:
        raise ValueError(f"`tile` must be >= 32 pixels; got {tile}")
    if split.windows is not None:
        raise ValueError(f"split {split.name!r} is already tiled")
    ids, paths, sizes, boxes, labels, images, areas, windows = ([] for _ in range(8))
    for i in range(len(split)):
        height, width = (int(v) for v in split.image_sizes[i])
        b = np.asarray(split.boxes[i], np.float32).reshape(-1, 4)
        box_area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        for x0, y0, x1, y1 in tile_windows(height, width, tile, overlap):
            clipped = np.stack([np.clip(b[:, 0], x0, x1), np.clip(b[:, 1], y0, y1),
                                np.clip(b[:, 2], x0, x1), np.clip(b[:, 3], y0, y1)], -1)
            seen = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            keep = (seen > 0) & (seen >= min_visible * box_area)
            ids.append(f"{split.image_ids[i]}@{x0},{y0}")
            paths.append(split.image_paths[i])
            images.append(None if split.images is None else split.images[i])
            sizes.append((y1 - y0, x1 - x0))
            boxes.append((clipped[keep] - np.array([x0, y0, x0, y0], np.float32)).astype(np.float32))
            labels.append(np.asarray(split.labels[i])[keep])
            if split.areas is not None:
                ratio = seen[keep] / np.maximum(box_area[keep], 1e-9)
                areas.append((np.asarray(split.areas[i])[keep] * ratio).astype(np.float32))
            windows.append((x0, y0, x1, y1))
    return DetectionSplit(name or split.name, ids, paths, np.asarray(sizes, np.int64).reshape(-1, 2),
                          boxes, labels, images if split.images is not None else None,
                          areas if split.areas is not None else None,
                          np.asarray(windows, np.int64).reshape(-1, 4))


@dataclasses.dataclass
class LoadReport:
    """What loading changed: reason -> [(where, detail)] (all dropped or clipped boxes and
    images without boxes), plus totals."""

    source: str = ""
    images: int = 0
    boxes_read: int = 0
    boxes_kept: int = 0
    changes: dict = dataclasses.field(default_factory=dict)

    def add(self, reason, where, detail=""):
        self.changes.setdefault(reason, []).append((where, detail))

    def count(self, reason):
        return len(self.changes.get(reason, ()))

    def summary(self, max_places=5):
        lines = [f"{self.source}: {self.images} images, {self.boxes_read} boxes read, "
                 f"{self.boxes_kept} kept"]
        for reason, items in self.changes.items():
            shown = "; ".join(f"{w} ({d})" if d else str(w) for w, d in items[:max_places])
            more = f" and {len(items) - max_places} more" if len(items) > max_places else ""
            lines.append(f"  {len(items)} {reason}: {shown}{more}")
        return "\n".join(lines)


@dataclasses.dataclass
class DetectionData:
    splits: dict  # name -> DetectionSplit
    class_names: tuple  # label k -> name
    category_ids: tuple  # label k -> category id in the source
    report: LoadReport
    source: str = ""

    @property
    def num_classes(self):
        return len(self.class_names)

    def split(self, name):
        if name not in self.splits:
            raise KeyError(f"{self.source}: no split {name!r}; splits are {list(self.splits)}")
        return self.splits[name]

    @property
    def train(self):
        return self.split("train")

    @property
    def val(self):
        return self.split("val")

    @property
    def test(self):
        return self.split("test")

    def describe(self):
        return "\n".join(f"{name:<8}{len(s):>7} images {s.num_boxes:>8} boxes"
                         for name, s in self.splits.items())


@dataclasses.dataclass
class _Record:
    """One image as read from a source, before checks: boxes float64 xyxy, with the
    category (COCO id or label name) and the place (for messages) of each box."""

    image_id: object
    path: str | None
    size: tuple | None  # (height, width) from the annotation, if it says
    boxes: list = dataclasses.field(default_factory=list)
    categories: list = dataclasses.field(default_factory=list)
    places: list = dataclasses.field(default_factory=list)
    array: np.ndarray | None = None
    areas: dict = dataclasses.field(default_factory=dict)  # box index -> source's area


# --------------------------------------------------------------------------- images


def _open(path):
    try:
        return Image.open(path)
    except FileNotFoundError as err:
        raise ValueError(f"{path}: image file not found") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot read the image ({err})") from err


def image_size(path):
    """(height, width) of an image file, from its header."""
    with _open(path) as image:
        return image.height, image.width


def read_image(path):
    """Any image PIL reads (greyscale, 16-bit, palette, RGB, RGBA, CMYK) as uint8 RGB
    (height, width, 3). Alpha is dropped; EXIF orientation is ignored, as COCO's
    annotations are of the stored pixels."""
    with _open(path) as image:
        try:
            image.load()
        except OSError as err:
            raise ValueError(f"{path}: cannot decode the image ({err})") from err
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # deep greyscale
            pixels = np.asarray(image, np.float64)
            top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
            grey = np.clip(pixels / top * 255 + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"), np.uint8)


def _to_rgb(array, where):
    """An image array from memory (TFDS) as uint8 RGB."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an image (h, w[, 1|3|4]), got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3]).astype(np.uint8)


# --------------------------------------------------------------------------- COCO


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise ValueError(f"{path}: annotation file not found") from err
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err


def _field(item, key, kind, path, where):
    """item[key], checked to be of `kind` (a type or tuple of types)."""
    if not isinstance(item, dict):
        raise ValueError(f"{path}: {where}: expected an object, got {type(item).__name__}")
    if key not in item:
        raise ValueError(f"{path}: {where}: no {key!r} field")
    value = item[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{path}: {where}: {key!r} must be {expected}, got {value!r}")
    return value


def _list_field(data, key, path, required=True):
    if key not in data:
        if required:
            raise ValueError(f"{path}: no {key!r} list (expected a COCO instances file)")
        return []
    if not isinstance(data[key], list):
        raise ValueError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data[key]


def _read_coco(path, image_dir, include_crowd, report):
    """(records, {category id: name}) of one COCO instances file."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with images/annotations/categories")
    number = (int, float)
    categories = {}
    for i, cat in enumerate(_list_field(data, "categories", path)):
        cid = _field(cat, "id", int, path, f"categories[{i}]")
        name = _field(cat, "name", str, path, f"categories[{i}] (id {cid})")
        if cid in categories:
            raise ValueError(f"{path}: categories[{i}]: category id {cid} appears twice")
        categories[cid] = name
    records = {}
    for i, image in enumerate(_list_field(data, "images", path)):
        iid = _field(image, "id", (int, str), path, f"images[{i}]")
        where = f"images[{i}] (id {iid})"
        file_name = _field(image, "file_name", str, path, where)
        size = None
        if "width" in image or "height" in image:
            size = tuple(_field(image, key, (int, float), path, where)
                         for key in ("height", "width"))
            if min(size) <= 0 or any(v != int(v) for v in size):
                raise ValueError(f"{path}: {where}: width and height must be whole numbers > 0, "
                                 f"got {size[1]} x {size[0]}")
            size = (int(size[0]), int(size[1]))
        if iid in records:
            raise ValueError(f"{path}: {where}: image id {iid} appears twice")
        records[iid] = _Record(iid, os.path.join(image_dir, file_name), size)
    for i, ann in enumerate(_list_field(data, "annotations", path, required=False)):
        aid = ann.get("id", i) if isinstance(ann, dict) else i
        where = f"annotations[{i}] (id {aid})"
        iid = _field(ann, "image_id", (int, str), path, where)
        cid = _field(ann, "category_id", int, path, where)
        bbox = _field(ann, "bbox", list, path, where)
        if iid not in records:
            raise ValueError(f"{path}: {where}: image_id {iid} is not in 'images'")
        if cid not in categories:
            raise ValueError(
                f"{path}: {where}: category_id {cid} is not in 'categories' "
                f"(ids {sorted(categories)})"
            )
        if len(bbox) != 4 or not all(isinstance(v, number) and not isinstance(v, bool)
                                     for v in bbox) or not np.all(np.isfinite(bbox)):
            raise ValueError(f"{path}: {where}: 'bbox' must be 4 finite numbers [x, y, w, h], "
                             f"got {bbox!r}")
        if ann.get("iscrowd", 0) and not include_crowd:
            report.add(CROWD, f"{os.path.basename(path)} annotation {aid}")
            continue
        x, y, w, h = (float(v) for v in bbox)
        record = records[iid]
        area = ann.get("area")
        if isinstance(area, number) and not isinstance(area, bool) and area > 0:
            record.areas[len(record.boxes)] = float(area)
        record.boxes.append((x, y, x + w, y + h))
        record.categories.append(cid)
        record.places.append(f"{os.path.basename(path)} annotation {aid}")
    return list(records.values()), categories


def _coco_image_dir(json_path, split_file_name):
    """images/<split>, <split>/ (COCO 2017), images/ beside annotations/, else JSON's folder."""
    folder = os.path.dirname(os.path.abspath(json_path))
    root = os.path.dirname(folder) if os.path.basename(folder) == "annotations" else folder
    for candidate in (os.path.join(root, "images", split_file_name),
                      os.path.join(root, split_file_name), os.path.join(root, "images"),
                      os.path.join(folder, "images")):
        if os.path.isdir(candidate):
            return candidate
    return folder


# --------------------------------------------------------------------------- Pascal VOC


def _xml_text(element, tag, path, where, kind=str):
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise ValueError(f"{path}: {where}: no <{tag}>")
    text = found.text.strip()
    if kind is str:
        return text
    try:
        value = kind(float(text)) if kind is int else kind(text)
    except ValueError as err:
        raise ValueError(f"{path}: {where}: <{tag}> must be a number, got {text!r}") from err
    if not np.isfinite(value):
        raise ValueError(f"{path}: {where}: <{tag}> must be finite, got {text!r}")
    return value


def _read_voc_xml(path, image_dir, one_based):
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        line, column = err.position
        raise ValueError(f"{path}: malformed XML at line {line} column {column + 1}") from err
    stem = os.path.splitext(os.path.basename(path))[0]
    file_name = root.findtext("filename")
    file_name = file_name.strip() if file_name and file_name.strip() else stem + ".jpg"
    size = None
    size_element = root.find("size")
    if size_element is not None and size_element.find("width") is not None:
        size = (_xml_text(size_element, "height", path, "<size>", int),
                _xml_text(size_element, "width", path, "<size>", int))
        if min(size) <= 0:  # some VOC-style tools write 0 when unknown: read the file
            size = None
    record = _Record(stem, os.path.join(image_dir, file_name), size)
    shift = 1.0 if one_based else 0.0
    for i, obj in enumerate(root.findall("object"), 1):
        where = f"<object> {i}"
        name = _xml_text(obj, "name", path, where)
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: {where} ({name}): no <bndbox>")
        xmin, ymin, xmax, ymax = (_xml_text(box, t, path, f"{where} ({name}) <bndbox>", float)
                                  for t in ("xmin", "ymin", "xmax", "ymax"))
        record.boxes.append((xmin - shift, ymin - shift, xmax, ymax))
        record.categories.append(name)
        record.places.append(f"{os.path.basename(path)} object {i}")
    return record


def _read_voc(folder, split, one_based):
    annotations = os.path.join(folder, "Annotations")
    image_dir = os.path.join(folder, "JPEGImages")
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(annotations)
                   if f.lower().endswith(".xml"))
    if not stems:
        raise ValueError(f"{annotations}: no .xml files (expected Pascal VOC annotations)")
    lists = os.path.join(folder, "ImageSets", "Main")
    by_split = {}
    for name in ("train", "val", "test"):
        list_path = os.path.join(lists, f"{name}.txt")
        if os.path.isfile(list_path):
            with open(list_path) as f:
                by_split[name] = [line.split()[0] for line in f if line.strip()]
    listed_in = {name: os.path.join(lists, f"{name}.txt") for name in by_split}
    if not by_split:
        by_split, listed_in = {split: stems}, {split: annotations}
    out = {}
    for name, names in by_split.items():
        records = []
        for stem in names:
            xml_path = os.path.join(annotations, stem + ".xml")
            if not os.path.isfile(xml_path):
                raise ValueError(f"{listed_in[name]}: lists {stem!r} but "
                                 f"{xml_path} does not exist")
            records.append(_read_voc_xml(xml_path, image_dir, one_based))
        out[name] = (records, listed_in[name])
    return out


# --------------------------------------------------------------------------- CSV


def _read_csv(path, image_dir, split):
    root = image_dir or os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError as err:
        raise ValueError(f"{path}: annotation file not found") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: cannot read as CSV ({err})") from err
    header = [h.strip().lower() for h in lines[0]] if lines else []
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected the header "
                         f"{','.join(CSV_COLUMNS)} (and optionally split), got {header}")
    column = {name: header.index(name) for name in header}
    by_split = {}
    for number, line in enumerate(lines[1:], 2):
        if not any(c.strip() for c in line):
            continue
        if len(line) != len(header):
            raise ValueError(f"{path} line {number}: expected {len(header)} fields, got "
                             f"{len(line)}: {','.join(line)[:80]!r}")
        row = {name: line[i].strip() for name, i in column.items()}
        if not row["image"]:
            raise ValueError(f"{path} line {number}: empty 'image'")
        row_split = row.get("split") or split
        if row_split not in ("train", "val", "test"):
            raise ValueError(f"{path} line {number}: split {row_split!r}; expected train, "
                             "val or test")
        records = by_split.setdefault(row_split, {})
        key = row["image"]
        if key not in records:
            full = key if os.path.isabs(key) else os.path.join(root, key)
            records[key] = _Record(key, full, None)
        fields = [row[c] for c in ("xmin", "ymin", "xmax", "ymax", "label")]
        if not any(fields):
            continue  # an image without objects
        for name in ("xmin", "ymin", "xmax", "ymax", "label"):
            if not row[name]:
                raise ValueError(f"{path} line {number}: empty {name!r} (leave all of "
                                 "xmin,ymin,xmax,ymax,label empty for an image without objects)")
        values = []
        for name in ("xmin", "ymin", "xmax", "ymax"):
            try:
                value = float(row[name])
            except ValueError as err:
                raise ValueError(f"{path} line {number}: column {name!r} must be a number, "
                                 f"got {row[name]!r}") from err
            if not np.isfinite(value):
                raise ValueError(f"{path} line {number}: column {name!r} must be finite, "
                                 f"got {row[name]!r}")
            values.append(value)
        records[key].boxes.append(tuple(values))
        records[key].categories.append(row["label"])
        records[key].places.append(f"{os.path.basename(path)} line {number}")
    if not by_split:
        raise ValueError(f"{path}: no rows (expected one row per box after the header)")
    return {name: (list(records.values()), path) for name, records in by_split.items()}


# --------------------------------------------------------------------------- TFDS


def _tfds_load(name, **kwargs):
    """`tfds.load`, isolated so tests can replace it (TFDS cannot download offline)."""
    import tensorflow_datasets as tfds

    return tfds.load(name, **kwargs)


def _read_tfds(name, max_images):
    """({split: records}, class names) of a TFDS detection dataset (coco, voc)."""
    try:
        datasets, info = _tfds_load(name, split=None, with_info=True)
    except Exception as err:  # TFDS raises many kinds of errors when offline
        raise RuntimeError(
            f"Cannot load TFDS dataset {name!r} ({type(err).__name__}: {err}). TFDS needs "
            "network access to download it; offline, use a COCO-format folder (e.g. "
            "`python data/make_detection_scenes.py --out data/detection/fashion_scenes`), "
            "Pascal VOC folders or a CSV file."
        ) from err
    names = tuple(info.features["objects"]["label"].names)
    out = {}
    for split_name, dataset in datasets.items():
        split = TFDS_SPLIT_NAMES.get(split_name, split_name)
        records = []
        for i, example in enumerate(dataset.as_numpy_iterator()):
            if max_images is not None and i >= max_images:
                break
            where = f"tfds:{name}/{split_name}[{i}]"
            image = _to_rgb(example["image"], where)
            h, w = image.shape[:2]
            image_id = example.get("image/id", i)
            record = _Record(int(image_id), None, (h, w), array=image)
            boxes = np.asarray(example["objects"]["bbox"], np.float64).reshape(-1, 4)
            labels = np.asarray(example["objects"]["label"]).reshape(-1)
            crowd = np.asarray(example["objects"].get("is_crowd", np.zeros(len(labels), bool)))
            for j, ((ymin, xmin, ymax, xmax), label) in enumerate(zip(boxes, labels)):
                if crowd.size and crowd.reshape(-1)[j]:
                    continue
                record.boxes.append((xmin * w, ymin * h, xmax * w, ymax * h))
                record.categories.append(names[int(label)])
                record.places.append(f"{where} object {j}")
            records.append(record)
        out[split] = (records, f"tfds:{name}/{split_name}")
    return out, names


# --------------------------------------------------------------------------- checks


def _check_files(records, listed_in):
    """Every listed image exists and has the annotated size; fills in missing sizes."""
    missing = [r for r in records if r.array is None and not os.path.isfile(r.path)]
    if missing:
        raise ValueError(
            f"{listed_in}: {len(missing)} of {len(records)} listed image files are missing; "
            f"first: {missing[0].path} (image {missing[0].image_id!r})"
        )
    for record in records:
        if record.array is not None:
            continue
        actual = image_size(record.path)
        if record.size is None:
            record.size = actual
        elif tuple(record.size) != actual:
            raise ValueError(
                f"{listed_in}: image {record.image_id!r} is annotated as {record.size[1]}x"
                f"{record.size[0]} (width x height) but {record.path} is {actual[1]}x"
                f"{actual[0]}; its boxes would not match the pixels"
            )


def _clean_boxes(record, report):
    """(float32 (n, 4) boxes, kept indices): drops inverted, zero-area and outside boxes,
    clips the rest to the image."""
    height, width = record.size
    kept_boxes, kept = [], []
    for i, (box, place) in enumerate(zip(record.boxes, record.places)):
        x0, y0, x1, y1 = box
        detail = f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}] in a {width}x{height} image"
        if x1 < x0 or y1 < y0:
            report.add(INVERTED, place, detail)
            continue
        if x1 == x0 or y1 == y0:
            report.add(ZERO_AREA, place, detail)
            continue
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            report.add(OUTSIDE, place, detail)
            continue
        clipped = (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
                   min(max(x1, 0.0), width), min(max(y1, 0.0), height))
        if clipped != (x0, y0, x1, y1):
            report.add(CLIPPED, place, detail)
        kept_boxes.append(clipped)
        kept.append(i)
    return np.asarray(kept_boxes, np.float32).reshape(-1, 4), kept


def _finish_split(name, records, listed_in, label_of, report):
    _check_files(records, listed_in)
    ids, paths, sizes, boxes, labels, arrays, areas = [], [], [], [], [], [], []
    for record in records:
        kept_boxes, kept = _clean_boxes(record, report)
        report.boxes_read += len(record.boxes)
        report.boxes_kept += len(kept)
        if not kept:
            report.add(NO_BOXES, record.path or record.image_id)
        ids.append(record.image_id)
        paths.append(record.path)
        sizes.append(record.size)
        boxes.append(kept_boxes)
        labels.append(np.asarray([label_of[record.categories[i]] for i in kept], np.int32))
        box_areas = (kept_boxes[:, 2] - kept_boxes[:, 0]) * (kept_boxes[:, 3] - kept_boxes[:, 1])
        areas.append(np.asarray([record.areas.get(i, a) for i, a in zip(kept, box_areas)],
                                np.float32))
        arrays.append(record.array)
    report.images += len(records)
    in_memory = any(a is not None for a in arrays)
    return DetectionSplit(name, ids, paths, np.asarray(sizes, np.int64).reshape(-1, 2),
                          boxes, labels, arrays if in_memory else None, areas)


def _named_classes(by_split, class_names):
    """(class names, category ids) for sources that name their classes (VOC, CSV, TFDS)."""
    seen = {c for records, _ in by_split.values() for r in records for c in r.categories}
    if class_names is None:
        class_names = sorted(seen)
    else:
        class_names = list(class_names)
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"`class_names` has duplicates: {class_names}")
        for records, _ in by_split.values():
            for record in records:
                for category, place in zip(record.categories, record.places):
                    if category not in class_names:
                        raise ValueError(f"{place}: label {category!r} is not in `class_names` "
                                         f"{class_names}")
    return tuple(class_names), tuple(range(1, len(class_names) + 1))


# --------------------------------------------------------------------------- loading


def _split_name(file_stem):
    name = file_stem[len("instances_"):] if file_stem.startswith("instances_") else file_stem
    return re.sub(r"(?<=[a-z])\d{4}$", "", name) or name


def load_detection_data(
    source,
    *,
    image_dir=None,
    split="train",
    class_names=None,
    include_crowd=False,
    voc_one_based=True,
    tfds_max_images=None,
):
    """Loads and checks a detection dataset into a `DetectionData`.

    Args:
        source: COCO folder or `.json` file, Pascal VOC folder, `.csv` file, or
            "tfds:NAME" (see the module docstring).
        image_dir: folder of the images of a COCO `.json` file or a CSV (defaults in the
            module docstring).
        split: name of the only split of a single COCO file, a VOC folder without
            `ImageSets/Main` lists, or a CSV without a `split` column.
        class_names: label order for VOC, CSV and TFDS sources (default: sorted names);
            a box whose label is not listed is an error. COCO uses its category ids.
        include_crowd: keep COCO `iscrowd=1` annotations (DETR and pycocotools' training
            practice drops them).
        voc_one_based: VOC coordinates are 1-based pixel indices (the VOC devkit's
            convention); False reads them as continuous coordinates.
        tfds_max_images: read at most this many images per TFDS split.

    Returns:
        `DetectionData` with one `DetectionSplit` per split and the `LoadReport`.

    Raises:
        ValueError naming the file (and line, annotation or field) for bad input;
        RuntimeError when TFDS cannot load the dataset.
    """
    source = os.fspath(source)
    report = LoadReport(source=source)
    coco_categories = None
    if source.startswith("tfds:"):
        by_split, names = _read_tfds(source[5:], tfds_max_images)
        names, category_ids = _named_classes(by_split, class_names or names)
    elif os.path.isdir(os.path.join(source, "Annotations")):
        by_split = _read_voc(source, split, voc_one_based)
        names, category_ids = _named_classes(by_split, class_names)
    elif os.path.isdir(source) or source.lower().endswith(".json"):
        if os.path.isdir(source):
            folder = os.path.join(source, "annotations")
            files = sorted(f for f in os.listdir(folder) if f.startswith("instances_")
                           and f.endswith(".json")) if os.path.isdir(folder) else []
            if not files:
                raise ValueError(
                    f"{source}: not a detection dataset folder: expected "
                    "annotations/instances_<split>.json (COCO) or Annotations/*.xml (VOC)"
                )
            jobs = [(_split_name(f[:-5]), os.path.join(folder, f)) for f in files]
            order = ("train", "val", "test")
            jobs.sort(key=lambda job: (order.index(job[0]) if job[0] in order else 3, job[0]))
        else:
            jobs = [(split, source)]
        by_split = {}
        for name, path in jobs:
            stem = os.path.splitext(os.path.basename(path))[0]
            file_split = stem[len("instances_"):] if stem.startswith("instances_") else stem
            directory = image_dir or _coco_image_dir(path, file_split)
            records, categories = _read_coco(path, directory, include_crowd, report)
            if coco_categories is None:
                coco_categories, first = categories, path
            elif categories != coco_categories:
                raise ValueError(f"{path}: its categories differ from those of {first}; "
                                 "all splits must share one category list")
            by_split[name] = (records, path)
        category_ids = tuple(sorted(coco_categories))
        names = tuple(coco_categories[c] for c in category_ids)
    elif source.lower().endswith(".csv"):
        by_split = _read_csv(source, image_dir, split)
        names, category_ids = _named_classes(by_split, class_names)
    else:
        raise ValueError(
            f"unknown detection source {source!r}: expected a COCO folder or .json file, a "
            "Pascal VOC folder (Annotations/, JPEGImages/), a .csv file or 'tfds:NAME'"
        )
    if coco_categories is not None:
        label_of = {cid: k for k, cid in enumerate(category_ids)}
    else:
        label_of = {name: k for k, name in enumerate(names)}
    splits = {name: _finish_split(name, records, listed_in, label_of, report)
              for name, (records, listed_in) in by_split.items()}
    data = DetectionData(splits, tuple(names), tuple(int(c) for c in category_ids), report,
                         source)
    dropped = [r for r in report.changes if r != NO_BOXES]
    if dropped:
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())
    return data
