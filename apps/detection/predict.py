"""Draw detections on image files with an exported detector (the graph TF Serving runs).

    python -m apps.detection.predict --export runs/detection/export/detection/1 \\
        --images path/to/folder_or_file --out predictions/ [--score_threshold 0.3]
    python -m apps.detection.predict ... --tile 512 --tile_overlap 0.2   # large images

Writes under `--out`: `<image name>.png` with the boxes drawn, `predictions.json`
(per image: size, boxes [xmin, ymin, xmax, ymax] in the image's pixels, scores, class
names and category ids) and `predictions.csv` (`image,xmin,ymin,xmax,ymax,label,score`,
the training CSV's format plus a score). Files that are not decodable images are skipped
with a logged count and their paths.

`--tile S`: images larger than S pixels on a side are cut into overlapping S x S tiles;
each tile is detected on its own (so small objects keep their resolution) and the boxes of
all tiles are merged with per-class non-maximum suppression.
"""

import argparse
import csv
import logging
import os

import numpy as np
import tensorflow as tf

from apps.detection.data import tile_windows
from apps.detection.export import encode_png
from tfattn.training.cli import list_images, run_cli
from tfattn.training.export import SIGNATURE

logger = logging.getLogger(__name__)


def _decode(data):
    try:
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return None


def nms_indices(boxes, scores, labels, iou_threshold=0.5, max_detections=100):
    """Indices kept by per-class NMS (xyxy boxes), highest score first."""
    keep = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        yxyx = boxes[idx][:, [1, 0, 3, 2]]
        chosen = tf.image.non_max_suppression(yxyx, scores[idx], len(idx), iou_threshold).numpy()
        keep.extend(idx[chosen])
    return np.array(sorted(keep, key=lambda i: -scores[i])[:max_detections], np.int64)


def merge_nms(boxes, scores, labels, iou_threshold=0.5, max_detections=100):
    """Per-class NMS over boxes from several tiles; returns the kept (boxes, scores, labels)."""
    if not len(boxes):
        return boxes, scores, labels
    keep = nms_indices(boxes, scores, labels, iou_threshold, max_detections)
    return boxes[keep], scores[keep], labels[keep]


class Predictor:
    """Calls an exported detector's `serving_default` and returns pixel boxes."""

    def __init__(self, export_path):
        self.fn = tf.saved_model.load(export_path).signatures.get(SIGNATURE)
        if self.fn is None:
            raise ValueError(f"{export_path}: the SavedModel has no {SIGNATURE!r} signature; "
                             "--export must be a version folder written by apps.detection")

    def __call__(self, encoded, sizes):
        """Encoded images and their (height, width) -> [(boxes xyxy px, scores, names, ids)]."""
        out = {k: v.numpy() for k, v in self.fn(images=tf.constant(encoded)).items()}
        results = []
        for i, (height, width) in enumerate(sizes):
            n = int(out["num_detections"][i])
            ymin, xmin, ymax, xmax = out["detection_boxes"][i, :n].T
            boxes = np.stack([xmin * width, ymin * height, xmax * width, ymax * height], -1)
            results.append((boxes.astype(np.float32), out["detection_scores"][i, :n],
                            np.array([s.decode() for s in out["detection_class_names"][i, :n]]),
                            out["detection_classes"][i, :n].astype(np.int64)))
        return results


def predict_image(predictor, image, data, tile=None, overlap=0.2, iou_threshold=0.5):
    """Detections of one image (uint8 array and its encoded bytes), tiled when asked."""
    height, width = image.shape[:2]
    if not tile or (height <= tile and width <= tile):
        return predictor([data], [(height, width)])[0]
    windows = tile_windows(height, width, tile, overlap)
    crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    parts = predictor([encode_png(c) for c in crops], [c.shape[:2] for c in crops])
    boxes = np.concatenate([b + np.array([x0, y0, x0, y0], np.float32)
                            for (b, *_), (x0, y0, _, _) in zip(parts, windows)])
    scores = np.concatenate([p[1] for p in parts])
    names = np.concatenate([p[2] for p in parts])
    ids = np.concatenate([p[3] for p in parts])
    boxes, scores, ids_kept = merge_nms(boxes, scores, ids, iou_threshold)
    name_of = dict(zip(ids.tolist(), names.tolist()))
    return boxes, scores, np.array([name_of[i] for i in ids_kept.tolist()]), ids_kept


def draw(image, boxes, scores, names, ids, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10").colors
    height, width = image.shape[:2]
    fig = plt.figure(figsize=(max(2.0, width / 100), max(2.0, height / 100)), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(image)
    for box, score, name, cid in zip(boxes, scores, names, ids):
        color = colors[int(cid) % 10]
        x0, y0, x1, y1 = box
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5))
        ax.text(x0, y0, f"{name} {score:.2f}", color="white", fontsize=7, va="bottom",
                bbox={"facecolor": color, "alpha": 0.8, "pad": 0.5, "linewidth": 0})
    ax.set_axis_off()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m apps.detection.predict",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True, help="SavedModel version folder, e.g. runs/detection/export/detection/1")
    parser.add_argument("--images", required=True, help="an image file or a folder of images")
    parser.add_argument("--out", required=True, help="folder for the drawn images, predictions.json and .csv")
    parser.add_argument("--score_threshold", type=float, default=0.3, help="keep detections scoring at least this")
    parser.add_argument("--tile", type=int, default=None, help="tile images larger than this many pixels")
    parser.add_argument("--tile_overlap", type=float, default=0.2, help="overlap of neighbouring tiles (share)")
    parser.add_argument("--agnostic_iou", type=float, default=0.7,
                        help="one label per object: drop a box overlapping a higher-scoring box "
                             "of another class by more than this IoU (1: keep all, as COCO "
                             "evaluation does)")
    parser.add_argument("--no_draw", action="store_true", help="write JSON/CSV only")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.export, "saved_model.pb")):
        parser.error(f"--export: {args.export} is not a SavedModel folder (no saved_model.pb)")
    if args.tile is not None and args.tile < 32:
        parser.error(f"--tile must be >= 32 pixels; got {args.tile}")
    if not 0 < args.agnostic_iou <= 1:
        parser.error(f"--agnostic_iou must be in (0, 1]; got {args.agnostic_iou}")
    if not 0 <= args.tile_overlap < 1:
        parser.error(f"--tile_overlap must be in [0, 1); got {args.tile_overlap}")
    try:
        paths = list_images(args.images)
    except ValueError as err:
        parser.error(str(err))
    predictor = Predictor(args.export)
    os.makedirs(args.out, exist_ok=True)
    records, skipped = [], []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        image = _decode(data)
        if image is None:
            skipped.append(path)
            continue
        boxes, scores, names, ids = predict_image(predictor, image, data, args.tile, args.tile_overlap)
        keep = scores >= args.score_threshold
        boxes, scores, names, ids = boxes[keep], scores[keep], names[keep], ids[keep]
        if args.agnostic_iou < 1 and len(scores):
            keep = nms_indices(boxes, scores, np.zeros(len(scores), np.int64),
                               args.agnostic_iou, max_detections=len(scores))
            boxes, scores, names, ids = boxes[keep], scores[keep], names[keep], ids[keep]
        records.append({"image": path, "height": int(image.shape[0]), "width": int(image.shape[1]),
                        "boxes": np.round(boxes, 2).tolist(), "scores": np.round(scores, 4).tolist(),
                        "class_names": names.tolist(), "category_ids": ids.tolist()})
        if not args.no_draw:
            stem = os.path.splitext(os.path.basename(path))[0]
            draw(image, boxes, scores, names, ids, os.path.join(args.out, f"{stem}.png"))
        print(f"{path}: {len(scores)} objects" + "".join(
            f"\n  {n} {s:.2f} [{', '.join(f'{v:.0f}' for v in b)}]" for b, s, n in zip(boxes, scores, names)))
    if skipped:
        logger.warning("Skipped %d files that are not readable images: %s", len(skipped), skipped)
        print(f"skipped {len(skipped)} unreadable files")
    from tfattn.training import write_json

    write_json(os.path.join(args.out, "predictions.json"), records)
    with open(os.path.join(args.out, "predictions.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "xmin", "ymin", "xmax", "ymax", "label", "score"])
        for r in records:
            for box, score, name in zip(r["boxes"], r["scores"], r["class_names"]):
                writer.writerow([r["image"], *box, name, score])
    print(f"wrote {args.out}/predictions.json, predictions.csv" + ("" if args.no_draw else " and drawn images"))
    return records, skipped


if __name__ == "__main__":
    run_cli(main)
