"""Classify image files with an exported ViT SavedModel (the graph TF Serving runs).

    python -m apps.vit.predict --export runs/vit/export/vit/1 --images path/to/folder_or_file
        [--output predictions.csv] [--batch_size 64]

Prints one line per image (path, top class, probability, top-k) and writes a CSV when asked.
Files that are not decodable images are skipped with a logged count and their paths.
"""

import argparse
import csv
import logging
import os

import numpy as np
import tensorflow as tf

from tfattn.training.cli import list_images, run_cli
from tfattn.training.export import SIGNATURE

logger = logging.getLogger(__name__)


def _readable(data):
    try:
        tf.io.decode_image(data, expand_animations=False)
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return False


def predict_files(export_path, paths, batch_size=64):
    """Runs `serving_default` on the files' bytes.

    Returns:
        `(rows, skipped)`: one dict per readable file (path, class_id, class_name,
        probability, top_k_names, top_k_probabilities) and the unreadable paths.
    """
    fn = tf.saved_model.load(export_path).signatures.get(SIGNATURE)
    if fn is None:
        raise ValueError(
            f"{export_path}: the SavedModel has no {SIGNATURE!r} signature; --export must be "
            "a version folder written by apps.vit.train or apps.vit.export"
        )
    readable, skipped = [], []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        (readable if _readable(data) else skipped).append((path, data))
    skipped = [p for p, _ in skipped]
    if skipped:
        logger.warning("Skipped %d files that are not readable images: %s", len(skipped), skipped)
    rows = []
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        out = fn(image_bytes=tf.constant([d for _, d in chunk]))
        out = {k: v.numpy() for k, v in out.items()}
        for i, (path, _) in enumerate(chunk):
            rows.append(
                {
                    "path": path,
                    "class_id": int(out["class_id"][i]),
                    "class_name": out["class_name"][i].decode(),
                    "probability": float(np.max(out["probabilities"][i])),
                    "top_k_names": [n.decode() for n in out["top_k_names"][i]],
                    "top_k_probabilities": [float(p) for p in out["top_k_probabilities"][i]],
                }
            )
    return rows, skipped


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m apps.vit.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True, help="SavedModel version folder, e.g. runs/vit/export/vit/1")
    parser.add_argument("--images", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", help="CSV file to write")
    parser.add_argument("--batch_size", type=int, default=64, help="images per serving call")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.export, "saved_model.pb")):
        parser.error(f"--export: {args.export} is not a SavedModel folder (no saved_model.pb)")
    try:
        paths = list_images(args.images)
    except ValueError as err:
        parser.error(str(err))
    rows, skipped = predict_files(args.export, paths, args.batch_size)
    for row in rows:
        top = ", ".join(f"{n} {p:.2f}" for n, p in zip(row["top_k_names"], row["top_k_probabilities"]))
        print(f"{row['path']}: {row['class_name']} ({row['probability']:.3f})  [{top}]")
    if skipped:
        print(f"skipped {len(skipped)} unreadable files")
    if args.output:
        with open(args.output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "class_id", "class_name", "probability", "top_k"])
            for row in rows:
                writer.writerow(
                    [row["path"], row["class_id"], row["class_name"], f"{row['probability']:.6f}",
                     ";".join(row["top_k_names"])]
                )
    return rows, skipped


if __name__ == "__main__":
    run_cli(main)
