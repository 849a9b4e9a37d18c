"""Builds a COCO-format object detection dataset from real Fashion-MNIST objects, offline.

    python data/make_detection_scenes.py --out data/detection/fashion_scenes --seed 0

(With the defaults: 10,000 train / 1,000 val / 1,000 test images of 96-128 px, 1-6
objects each, 3.3 on average; about 3.5 s per 1,000 images on one of this project's
shared CPU cores, so ~45 s in all; ~28 KB per PNG, ~340 MB in all: `--format jpg` is
smaller, at the cost of JPEG artefacts.)

Writes, under `--out`:
    images/<split>_<index>.png          RGB scenes (`--format jpg` for JPEG, quality 95)
    annotations/instances_<split>.json  COCO "instances" format: `images` (id, file_name,
                                        width, height), `annotations` (id, image_id,
                                        category_id 1..10, bbox [x, y, w, h] in pixels,
                                        area, iscrowd 0), `categories` (the 10 classes)
    README.txt                          what this is, its source and licence, the command

Each scene is a textured background (smooth value noise, a linear gradient, stripes or a
checkerboard, with pixel noise) with 1..`--max_objects` Fashion-MNIST items pasted on it,
each item recoloured with a random tint, possibly mirrored, and scaled so that its 28x28
cell is `--min_object_size`..`--max_object_size` pixels wide (log-uniform). Items may
overlap a little: a new item is placed only where its box covers at most `--max_overlap`
of the smaller box of each item already there (intersection over the smaller area), so a
later item can hide part of an earlier one. Classes are drawn from shuffled decks of all
ten, so every split holds all classes in near-equal numbers once it has 10 objects.

Boxes are the tight box of the pasted item's nonzero (opaque) pixels, not its 28x28 cell;
they include any part a later item hides. `area` is the item's pixel count (COCO's
`area` is the object's, not the box's), which is what pycocotools uses for the
small/medium/large split. Each annotation also carries `"source": [file, index]`, the
Fashion-MNIST image it was cut from.

Splits do not share object images: train pastes the 60,000 Fashion-MNIST training images;
val and test paste disjoint halves of the 10,000 test images (split by `--seed`). Same
arguments and seed -> byte-identical files (every scene has its own random generator
seeded by (seed, split, index)).

Fashion-MNIST comes from the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist; `make data` installs it when run as root with apt),
else from TFDS for users who are online. Licence: MIT, (c) 2017 Zalando SE.
"""

import argparse
import gzip
import json
import os
import shlex
import struct
import sys
import time

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SPLITS = ("train", "val", "test")
BACKGROUNDS = ("noise", "gradient", "stripes", "checker")
# Resized items keep a faint halo from interpolation; values at or below this (of 255)
# are transparent, so the box is the extent of what a viewer sees as the item.
ALPHA_FLOOR = 10
ALPHA_RAMP = 30  # values above ALPHA_FLOOR + ALPHA_RAMP are fully opaque
PLACEMENT_TRIES = 30

README = """\
Fashion-MNIST detection scenes (COCO format)
============================================

Made by data/make_detection_scenes.py of the tfattn project with:

    {command}

Splits: {counts}
Images: {min_size}-{max_size} px per side ({shape}), {min_objects}-{max_objects} objects
each, item cells {min_object_size}-{max_object_size} px, overlap <= {max_overlap} of the
smaller box.

What this is, honestly: the OBJECTS ARE REAL (photographs of Zalando articles, as
downscaled greyscale 28x28 Fashion-MNIST images, here recoloured with a random tint and
rescaled) but the LAYOUT IS SYNTHETIC: objects are pasted at random places and scales on
generated textures (noise, gradients, stripes, checkerboards). There are no real scenes,
no context, no lighting, no perspective and no real occlusion. A detector that does well
here has learnt to find these pasted items; that is not evidence that it works on
photographs.

Boxes: COCO [x, y, width, height] in pixels, the tight box of each pasted item's
opaque pixels (not its 28x28 cell), including any part that a later item hides. `area`
is the item's pixel count. `source` in each annotation names the Fashion-MNIST file
(train or t10k) and index of the item. Train uses only Fashion-MNIST's training images,
val and test disjoint halves of its test images.

Source and licence of the objects:
    Fashion-MNIST, Han Xiao, Kashif Rasul, Roland Vollgraf, "Fashion-MNIST: a Novel Image
    Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747 (2017).
    https://github.com/zalandoresearch/fashion-mnist
    Copyright (c) 2017 Zalando SE. MIT licence ("Expat"): permission is granted, free of
    charge, to use, copy, modify, merge, publish, distribute, sublicense and/or sell
    copies, provided the copyright notice and this permission notice are included.
    Read here from {fashion_source}.
"""


# --------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path, magic, dims):
    with open(path, "rb") as f:
        raw = f.read()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    header = 4 * (1 + dims)
    fields = struct.unpack(f">{1 + dims}i", data[:header]) if len(data) >= header else (0,)
    if fields[0] != magic:
        raise ValueError(f"{path}: not an IDX file with magic number {magic}")
    shape = fields[1:]
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape}, data holds {len(data) - header} bytes")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(data_dir=FASHION_MNIST_DIR):
    """{"train": (images (N, 28, 28) uint8, labels (N,)), "t10k": (...)}: Debian files, else TFDS."""
    paths = {k: [os.path.join(data_dir, f) for f in files]
             for k, files in FASHION_MNIST_FILES.items()}
    if all(os.path.exists(p) for pair in paths.values() for p in pair):
        out = {}
        for key, (images, labels) in paths.items():
            x, y = _read_idx(images, 2051, 3), _read_idx(labels, 2049, 1)
            if len(x) != len(y):
                raise ValueError(f"{images} holds {len(x)} images but {labels} {len(y)} labels")
            out[key] = (x, y.astype(np.int64))
        return out, data_dir
    try:
        import tensorflow_datasets as tfds

        train, test = tfds.load("fashion_mnist", split=["train", "test"], as_supervised=True,
                                batch_size=-1)
    except Exception as err:  # TFDS raises many kinds of errors offline
        raise SystemExit(
            f"Fashion-MNIST not found: no IDX files in {data_dir} and TFDS failed "
            f"({type(err).__name__}: {err}). Install the Debian package dataset-fashion-mnist "
            "(`make data` as root), pass --fashion_mnist_dir, or go online for TFDS."
        ) from err
    out = {key: (np.asarray(x)[..., 0].astype(np.uint8), np.asarray(y).astype(np.int64))
           for key, (x, y) in (("train", train), ("t10k", test))}
    return out, "TFDS fashion_mnist"


def object_pools(fashion, seed):
    """Per split: (file name, indices by class). val/test split the t10k images in two."""
    x_test_labels = fashion["t10k"][1]
    order = np.random.default_rng([seed, 99]).permutation(len(x_test_labels))
    halves = {"val": np.sort(order[: len(order) // 2]), "test": np.sort(order[len(order) // 2:])}
    pools = {"train": ("train", np.arange(len(fashion["train"][1])))}
    pools.update({name: ("t10k", idx) for name, idx in halves.items()})
    out = {}
    for split, (key, indices) in pools.items():
        labels = fashion[key][1][indices]
        out[split] = (key, [indices[labels == c] for c in range(len(CLASS_NAMES))])
    return out


# --------------------------------------------------------------------------- drawing


def _random_colour(rng, low=0.0, high=1.0):
    return rng.uniform(low, high, size=3)


def make_background(rng, height, width):
    """A float32 (height, width, 3) texture in [0, 1]: noise, gradient, stripes or checker."""
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b = _random_colour(rng), _random_colour(rng)
    if kind == "noise":  # smooth value noise: a coarse random grid upsampled bicubically
        cells = int(rng.integers(3, 12))
        grid = (rng.uniform(0, 255, size=(cells, cells, 3))).astype(np.uint8)
        t = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC),
                       np.float32) / 255.0
        image = 0.3 * a + 0.7 * t
    else:
        angle = rng.uniform(0, np.pi)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        if kind == "gradient":
            t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        elif kind == "stripes":
            period = rng.uniform(6, 30)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
        else:
            across = -xs * np.sin(angle) + ys * np.cos(angle)
            cell = rng.uniform(8, 32)
            t = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
        image = a + (b - a) * t[..., None]
    image = image + rng.normal(0, rng.uniform(0.0, 0.06), size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def render_object(item, size, mirror):
    """An item scaled to a `size`-pixel cell: (alpha (size, size) float32 in [0, 1], shade
    (size, size) float32 in [0, 1]); alpha is 0 exactly where the item is transparent."""
    source = item[:, ::-1] if mirror else item
    scaled = np.asarray(Image.fromarray(np.ascontiguousarray(source)).resize(
        (size, size), Image.BILINEAR), np.float32)
    alpha = np.clip((scaled - ALPHA_FLOOR) / ALPHA_RAMP, 0, 1)
    return alpha.astype(np.float32), scaled / 255.0


def tight_box(alpha):
    """[x0, y0, x1, y1] (x1, y1 exclusive) of the nonzero pixels of `alpha`, or None."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if not len(rows):
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _overlap_ok(box, placed, max_overlap):
    for other in placed:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            smaller = min((box[2] - box[0]) * (box[3] - box[1]),
                          (other[2] - other[0]) * (other[3] - other[1]))
            if iw * ih > max_overlap * smaller:
                return False
    return True


def paste(canvas, alpha, shade, tint, x, y):
    """Composites an item onto `canvas` (in place) with its top-left cell corner at (x, y)."""
    h, w = alpha.shape
    colour = tint * (0.2 + 0.8 * shade[..., None])  # keep the item's own shading
    region = canvas[y : y + h, x : x + w]
    region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]


class ClassDeck:
    """Classes in shuffled decks of all ten, so every class appears once per ten draws."""

    def __init__(self, rng):
        self.rng, self.cards = rng, []

    def draw(self):
        if not self.cards:
            self.cards = list(self.rng.permutation(len(CLASS_NAMES)))
        return int(self.cards.pop())

    def put_back(self, label):
        self.cards.append(label)


def make_scene(rng, deck, pool, images, args):
    """One scene: (uint8 (h, w, 3) image, [(class, [x0, y0, x1, y1], area, source index)])."""
    width = int(rng.integers(args.min_size, args.max_size + 1))
    height = width if args.square else int(rng.integers(args.min_size, args.max_size + 1))
    canvas = make_background(rng, height, width)
    wanted = int(rng.integers(args.min_objects, args.max_objects + 1))
    objects, placed = [], []
    largest = min(args.max_object_size, height, width)
    smallest = min(args.min_object_size, largest)
    for _ in range(wanted):
        label = deck.draw()
        index = int(rng.choice(pool[label]))
        size = int(round(np.exp(rng.uniform(np.log(smallest), np.log(largest + 1)))))
        size = min(max(size, smallest), largest)
        alpha, shade = render_object(images[index], size, mirror=bool(rng.integers(2)))
        box = tight_box(alpha)
        for _ in range(PLACEMENT_TRIES):
            if box is None:
                break
            x = int(rng.integers(-box[0], width - box[2] + 1))  # cell may stick out, item not
            y = int(rng.integers(-box[1], height - box[3] + 1))
            where = [x + box[0], y + box[1], x + box[2], y + box[3]]
            if _overlap_ok(where, placed, args.max_overlap):
                break
        else:
            deck.put_back(label)  # no room left: this scene keeps the items it has
            break
        if box is None:
            deck.put_back(label)
            continue
        # Crop the cell to the canvas (only transparent pixels are cut off).
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + size, width), min(y + size, height)
        a = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
        s = shade[y0 - y : y1 - y, x0 - x : x1 - x]
        paste(canvas, a, s, _random_colour(rng, 0.15, 1.0), x0, y0)
        placed.append(where)
        objects.append((label, where, int((a > 0).sum()), index))
    return (np.clip(canvas * 255 + 0.5, 0, 255)).astype(np.uint8), objects


# --------------------------------------------------------------------------- writing


def generate(args, log=print):
    """Writes the dataset described by the parsed `args`; returns {split: (images, objects)}."""
    fashion, fashion_source = load_fashion_mnist(args.fashion_mnist_dir)
    pools = object_pools(fashion, args.seed)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "annotations"), exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "fashion"}
                  for i, n in enumerate(CLASS_NAMES)]
    counts = {}
    for split_number, split in enumerate(SPLITS):
        count = getattr(args, split)
        key, pool = pools[split]
        images = fashion[key][0]
        deck = ClassDeck(np.random.default_rng([args.seed, split_number, 1 << 30]))
        coco_images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([args.seed, split_number, i])
            image, objects = make_scene(rng, deck, pool, images, args)
            file_name = f"{split}_{i:06d}.{args.format}"
            path = os.path.join(args.out, "images", file_name)
            if args.format == "png":
                Image.fromarray(image).save(path, compress_level=1)
            else:
                Image.fromarray(image).save(path, quality=95)
            coco_images.append({"id": i + 1, "file_name": file_name,
                                "width": image.shape[1], "height": image.shape[0]})
            for label, (x0, y0, x1, y1), area, index in objects:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": 0,
                    "source": [key, index],
                })
        coco = {
            "info": {"description": "Fashion-MNIST detection scenes: real objects, synthetic "
                                    "layout (data/make_detection_scenes.py)",
                     "version": "1.0", "year": 2024},
            "licenses": [{"id": 1, "name": "MIT (Fashion-MNIST, (c) 2017 Zalando SE)",
                          "url": "https://github.com/zalandoresearch/fashion-mnist"}],
            "images": coco_images, "annotations": annotations, "categories": categories,
        }
        with open(os.path.join(args.out, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f, separators=(",", ":"))
        counts[split] = (count, len(annotations))
        log(f"{split}: {count} images, {len(annotations)} objects")
    command = " ".join(shlex.quote(a) for a in ["python", "data/make_detection_scenes.py"]
                       + list(args.argv))
    with open(os.path.join(args.out, "README.txt"), "w") as f:
        f.write(README.format(
            command=command, fashion_source=fashion_source,
            counts=", ".join(f"{s} {n} images / {k} objects" for s, (n, k) in counts.items()),
            shape="square" if args.square else "width and height drawn independently",
            **{k: getattr(args, k) for k in (
                "min_size", "max_size", "min_objects", "max_objects", "min_object_size",
                "max_object_size", "max_overlap")}))
    return counts


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=10000, help="train images")
    p.add_argument("--val", type=int, default=1000, help="val images")
    p.add_argument("--test", type=int, default=1000, help="test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min_size", type=int, default=96, help="smallest image side (px)")
    p.add_argument("--max_size", type=int, default=128, help="largest image side (px)")
    p.add_argument("--square", action="store_true", help="square images (default: width "
                   "and height drawn independently)")
    p.add_argument("--min_objects", type=int, default=1)
    p.add_argument("--max_objects", type=int, default=6)
    p.add_argument("--min_object_size", type=int, default=14,
                   help="smallest side of an item's 28x28 cell after scaling (px)")
    p.add_argument("--max_object_size", type=int, default=72,
                   help="largest side of an item's cell (px; at most the image side)")
    p.add_argument("--max_overlap", type=float, default=0.3,
                   help="largest intersection between two items' boxes, as a fraction of "
                        "the smaller box")
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.add_argument("--fashion_mnist_dir", default=FASHION_MNIST_DIR)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    checks = [
        (args.min_size >= 8, "--min_size must be >= 8"),
        (args.max_size >= args.min_size, "--max_size must be >= --min_size"),
        (1 <= args.min_objects <= args.max_objects, "need 1 <= --min_objects <= --max_objects"),
        (4 <= args.min_object_size <= args.max_object_size,
         "need 4 <= --min_object_size <= --max_object_size"),
        (0 <= args.max_overlap <= 1, "--max_overlap must be in [0, 1]"),
        (min(args.train, args.val, args.test) >= 0, "image counts must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    generate(args)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
