"""COCO evaluation of a detector with pycocotools, on any split of any supported source.

    python -m apps.detection.evaluate --workdir runs/detection --split test
    python -m apps.detection.evaluate --workdir runs/detection --data my_coco/ --split val

Predictions are made on the letterboxed inputs, mapped back to each ORIGINAL image's
pixels (`boxes.letterbox_transform`), written as a COCO results file
(`[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`, the source's image and
category ids) and scored by pycocotools' own `COCOeval` (AP@[.5:.95], AP50, AP75, APs/m/l
and the ARs) against the split's annotations. Object areas come from the source's
`area` fields when it has them (COCO: the object's pixel count), else box areas.

Diagnostics beside pycocotools' table: the same AP with classes ignored (`useCats=0`:
localisation alone; the gap is what class confusion costs) and a confusion matrix of the
class each object is detected as.

Writes `<workdir>/evaluation/<split>/`: detections.json, metrics.json, per_class.csv,
confusion.csv.
"""

import contextlib
import csv
import io
import os

import numpy as np
import tensorflow as tf

from apps.detection.boxes import letterbox_transform
from apps.detection.pipeline import input_images
from tfattn import training

# COCOeval.stats, in its order.
METRICS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
           "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


def predict_split(model, split, image_size, batch_size=32, max_detections=100,
                  score_threshold=None, limit=None):
    """Detections of every image of `split` in its original pixels.

    Returns:
        list (one per image) of (boxes (n, 4) float32 xyxy original pixels, scores (n,),
        labels (n,) int32).
    """
    n = len(split) if limit is None else min(limit, len(split))
    ds = input_images(split, image_size).take(n).batch(batch_size)
    detect = tf.function(
        lambda x: model.detect(x, max_detections=max_detections, score_threshold=score_threshold),
        reduce_retracing=True)
    results = []
    for images in ds:
        out = {k: v.numpy() for k, v in detect(images).items()}
        for b in range(len(out["num_detections"])):
            i = len(results)
            k = int(out["num_detections"][b])
            transform = letterbox_transform(tuple(split.image_sizes[i]), (image_size, image_size))
            boxes = transform.to_original(out["boxes"][b, :k] * image_size)
            results.append((boxes.astype(np.float32), out["scores"][b, :k].astype(np.float32),
                            out["classes"][b, :k].astype(np.int32)))
    return results


def coco_ground_truth(split, class_names, limit=None):
    """The split as a COCO instances dict (image ids 1..n in split order)."""
    n = len(split) if limit is None else min(limit, len(split))
    images, annotations = [], []
    for i in range(n):
        height, width = (int(v) for v in split.image_sizes[i])
        images.append({"id": i + 1, "width": width, "height": height})
        areas = split.areas[i] if split.areas is not None else None
        for j, (box, label) in enumerate(zip(split.boxes[i], split.labels[i])):
            x0, y0, x1, y1 = (float(v) for v in box)
            area = float(areas[j]) if areas is not None else (x1 - x0) * (y1 - y0)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": area, "iscrowd": 0})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(detections, image_ids=None, category_ids=None):
    """COCO results list; ids default to 1..n and label + 1 (coco_ground_truth's)."""
    out = []
    for i, (boxes, scores, labels) in enumerate(detections):
        image_id = i + 1 if image_ids is None else image_ids[i]
        for box, score, label in zip(boxes, scores, labels):
            x0, y0, x1, y1 = (float(v) for v in box)
            category = int(label) + 1 if category_ids is None else int(category_ids[label])
            out.append({"image_id": image_id, "category_id": category,
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(score), 5)})
    return out


def _cocoeval(ground_truth, results, use_cats=True):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_map(ground_truth, results):
    """pycocotools COCOeval (bbox) -> ({metric: value}, {category id: AP@[.5:.95]})."""
    if not results:  # loadRes refuses an empty list: nothing detected scores 0
        return {m: 0.0 for m in METRICS}, {c["id"]: 0.0 for c in ground_truth["categories"]}
    ev = _cocoeval(ground_truth, results)
    metrics = {m: float(v) for m, v in zip(METRICS, ev.stats)}
    precision = ev.eval["precision"]  # (iou, recall, category, area, max_dets)
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_class[cid] = float(np.mean(p[p > -1])) if np.any(p > -1) else float("nan")
    return metrics, per_class


def class_agnostic_map(ground_truth, results):
    """AP@[.5:.95] and AP50 with the classes ignored (pycocotools' `useCats=0`): how well
    the boxes are found and placed, whatever class they are given. The gap to `coco_map`
    is what class confusion costs."""
    if not results:
        return {"map": 0.0, "ap50": 0.0}
    stats = _cocoeval(ground_truth, results, use_cats=False).stats
    return {"map": float(stats[0]), "ap50": float(stats[1])}


def confusion_matrix(ground_truth, results, iou_threshold=0.5):
    """Which class each ground-truth object gets: `(K, K + 1)` counts, row = the object's
    class, column = the class of the highest-scoring detection of ANY class that overlaps
    it at IoU >= `iou_threshold`; the last column counts objects no detection overlaps.
    Classes in `ground_truth["categories"]` order; crowd annotations are left out."""
    from pycocotools import mask as mask_utils

    index = {c["id"]: k for k, c in enumerate(ground_truth["categories"])}
    counts = np.zeros((len(index), len(index) + 1), np.int64)
    detections = {}
    for r in results:
        detections.setdefault(r["image_id"], []).append(r)
    objects = {}
    for a in ground_truth["annotations"]:
        if not a.get("iscrowd", 0):
            objects.setdefault(a["image_id"], []).append(a)
    for image_id, anns in objects.items():
        dets = detections.get(image_id, [])
        rows = [index[a["category_id"]] for a in anns]
        if not dets:
            np.add.at(counts, (rows, len(index)), 1)
            continue
        iou = np.asarray(mask_utils.iou([d["bbox"] for d in dets], [a["bbox"] for a in anns],
                                        [0] * len(anns)))  # (detections, objects)
        scores = np.array([d["score"] for d in dets])
        for j, row in enumerate(rows):
            hits = np.flatnonzero(iou[:, j] >= iou_threshold)
            if len(hits) == 0:
                counts[row, -1] += 1
            else:
                counts[row, index[dets[hits[np.argmax(scores[hits])]]["category_id"]]] += 1
    return counts


def evaluate_split(model, split, class_names, image_size, category_ids=None, batch_size=32,
                   max_detections=100, score_threshold=None, limit=None):
    """(metrics, per-class AP by label, detections, COCO results with the source's ids).

    `metrics` holds COCOeval's stats (`METRICS`), the class-agnostic `agnostic_map` and
    `agnostic_ap50`, and `confusion` (`confusion_matrix` as nested lists).
    """
    detections = predict_split(model, split, image_size, batch_size, max_detections,
                               score_threshold, limit)
    ground_truth = coco_ground_truth(split, class_names, limit)
    scored = coco_results(detections)  # ids of `ground_truth`
    metrics, per_class = coco_map(ground_truth, scored)
    agnostic = class_agnostic_map(ground_truth, scored)
    metrics.update(agnostic_map=agnostic["map"], agnostic_ap50=agnostic["ap50"],
                   confusion=confusion_matrix(ground_truth, scored).tolist())
    per_label = {k: per_class.get(k + 1, float("nan")) for k in range(len(class_names))}
    ids = [i if isinstance(i, int) else str(i) for i in split.image_ids[: len(detections)]]
    results = coco_results(detections, ids, category_ids)
    return metrics, per_label, detections, results


def write_evaluation(out_dir, metrics, per_label, class_names, results):
    """metrics.json, detections.json, per_class.csv and (when `metrics` has one)
    confusion.csv: rows the objects' classes, columns the class they were detected as
    (`confusion_matrix`) and `missed`."""
    os.makedirs(out_dir, exist_ok=True)
    metrics = dict(metrics)
    confusion = metrics.pop("confusion", None)
    training.write_json(os.path.join(out_dir, "metrics.json"), metrics)
    training.write_json(os.path.join(out_dir, "detections.json"), results)
    with open(os.path.join(out_dir, "per_class.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "class", "ap"])
        for k, name in enumerate(class_names):
            writer.writerow([k, name, f"{per_label[k]:.4f}"])
    if confusion is not None:
        with open(os.path.join(out_dir, "confusion.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", *class_names, "missed"])
            for name, row in zip(class_names, confusion):
                writer.writerow([name, *row])


def confusion_summary(confusion, class_names, top=5):
    """One line: the share of objects detected with their own class (IoU >= 0.5, the
    highest-scoring overlapping detection) and the most frequent confusions."""
    counts = np.asarray(confusion)
    total = counts.sum()
    if total == 0:
        return "no ground-truth objects"
    k = len(class_names)
    off = [(counts[i, j], class_names[i], class_names[j])
           for i in range(k) for j in range(k) if i != j and counts[i, j]]
    off.sort(key=lambda t: -t[0])
    worst = ", ".join(f"{a} as {b} {n}" for n, a, b in off[:top]) or "none"
    return (f"objects given their own class: {np.trace(counts[:, :k]) / total:.3f}, "
            f"missed at IoU 0.5: {counts[:, k].sum() / total:.3f}; most confused: {worst}")


def format_table(metrics, per_label=None, class_names=None):
    lines = ["  ".join(f"{m:>9}" for m in METRICS), "  ".join(f"{metrics[m]:>9.4f}" for m in METRICS)]
    if "agnostic_map" in metrics:
        lines.append(f"class-agnostic: AP {metrics['agnostic_map']:.4f}, "
                     f"AP50 {metrics['agnostic_ap50']:.4f}")
    if per_label is not None:
        lines.append("per class AP@[.5:.95]: " + ", ".join(
            f"{name} {per_label[k]:.3f}" for k, name in enumerate(class_names)))
    if "confusion" in metrics and class_names is not None:
        lines.append(confusion_summary(metrics["confusion"], class_names))
    return "\n".join(lines)


def main(argv=None):
    import argparse

    from apps.detection.export import add_inference_args, apply_inference_args, load_run
    from apps.detection.train import load_data

    parser = argparse.ArgumentParser(prog="python -m apps.detection.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training run's folder (config.json, model.keras)")
    parser.add_argument("--split", default="test", help="split to evaluate (train, val, test, ...)")
    parser.add_argument("--data", default=None, help="another dataset (same classes); default: the run's")
    parser.add_argument("--image_dir", default=None, help="images of a COCO .json or CSV --data")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    parser.add_argument("--score_threshold", type=float, default=None, help="default: the run's")
    parser.add_argument("--out", default=None, help="default: <workdir>/evaluation/<split>")
    add_inference_args(parser)
    args = parser.parse_args(argv)
    cfg, model, meta = load_run(args.workdir)
    options = apply_inference_args(model, args)
    if args.data:
        cfg.data, cfg.image_dir = args.data, args.image_dir
        cfg.limit_images = None
    data = load_data(cfg)
    if list(data.class_names) != list(meta["class_names"]):
        raise ValueError(f"{cfg.data}: classes {list(data.class_names)} differ from the model's "
                         f"{meta['class_names']} (pass --class_names in training, or map them)")
    split = data.split(args.split)
    metrics, per_label, _, results = evaluate_split(
        model, split, data.class_names, cfg.image_size, data.category_ids,
        batch_size=cfg.batch_size, max_detections=cfg.max_detections,
        score_threshold=args.score_threshold, limit=args.limit)
    out = args.out or os.path.join(args.workdir, "evaluation", args.split)
    write_evaluation(out, metrics, per_label, data.class_names, results)
    print(f"{cfg.data} [{args.split}], {len(results)} detections on "
          f"{args.limit or len(split)} images"
          + "".join(f", --{k} {v}" for k, v in options.items()))
    print(format_table(metrics, per_label, data.class_names))
    print(f"wrote {out}/metrics.json, detections.json, per_class.csv, confusion.csv")
    return metrics


if __name__ == "__main__":
    training.run_cli(main)
