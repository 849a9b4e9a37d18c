"""Detection app: both tfattn heads vs keras-hub RetinaNet and D-FINE, same data and budget.

Every model gets the same data, splits, letterboxed inputs, augmentation and wall-clock
budget, one after the other on this machine (so each has it to itself):

    dataset (COCO folder) --apps.detection.train.load_data--> train / val / test splits
      dense, detr:  apps.detection.train.run (presets scenes / scenes_detr): AdamW,
                    warm-up + cosine fitted to the budget, the best checkpoint by
                    validation mAP, test COCO metrics, SavedModel export
      retinanet,    pipeline.make_dataset (the app config's Augment settings)
      dfine:          --peer_dataset--> model.fit with a warm-up + cosine schedule fitted
                    to the budget by TimeBudget; the FINAL weights are evaluated (no
                    validation-based checkpoint selection: the peers never see val)
    test split --input_images--> detections --letterbox_transform.to_original-->
      original pixels --coco_results--> pycocotools (apps.detection.evaluate.coco_map)

Peers (benchmarks/detection_peers.py; built from config, no pretrained weights):
RetinaNet (ResNet-18 FPN, Adam) and D-FINE-N (AdamW, clip 0.1), batches of
PEER_BATCH_SIZE = 16 (RetinaNet's paper batch; the speeds measured in detection_peers).
Their learning rate: linear warm-up for `warmup_steps` then cosine decay to the app's
`min_learning_rate`, planned over the app's `epochs` and shortened by `TimeBudget` to end
when the budget does, i.e. the same schedule shape as our heads; the peak rates are
`compile_peer`'s default 1e-4 for RetinaNet and 2e-4 (the rate of detection_peers' usage
example) for D-FINE. TimeBudget stops at epoch ends, so a peer's "epoch" for the budget
is `chunk_steps` steps (~30-40 s on 2 CPU cores; D-FINE takes ~40 s per step), and the
epochs reported are data epochs (steps x batch / training images). XLA is off for both
(slower or impossible on this CPU, see detection_peers).

Reported per model: test mAP@[.5:.95], AP50, AP75, AP small/medium/large (pycocotools),
training minutes, epochs (and steps for peers), training images per second (the first
step's graph building included, as for our heads), parameters; for our heads also the
serving latency through the reloaded SavedModel (`serving_default` on encoded PNG bytes of
the test images, batch 1 and batch 32, ms per image after warm-up calls).

Usage:
    python benchmarks/detection.py                          # 4 x 60 min + evaluation
    python benchmarks/detection.py --minutes 30 --models dense,detr
    python benchmarks/detection.py --quick --models dense,detr,retinanet --out /tmp/d.json
    python benchmarks/detection.py --merge heads.json peers.json --out detection.json
    python benchmarks/detection.py --models dense --workdir_root runs/bench --reuse_runs \
        --out dense.json    # a finished run, evaluated again under the preset's inference options

`--merge` joins results files of separate runs of the same setting (budget, data, splits,
input size; checked) into one: `models` from every file (a later file's entry replaces an
earlier one's), the headline recomputed, `runs` listing each run's models, date, machine
and versions. Four models at 60 minutes are over four hours: longer than one session.

`--quick` generates a tiny scene set in a temporary folder (64-96 px images, 48/12/8
images), trains 64-px models (the app's "test" preset: hidden_dim 32) for at most 2
epochs or `--minutes` (default 0.25) each: the code path in a few minutes, not a result.

Models not in `--models` are absent from `models`; their headline keys are null (and
`map`, `ap50`, `train_minutes` are null when neither tfattn head ran).
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

from apps.detection import pipeline  # noqa: E402
from apps.detection import train as app  # noqa: E402
from apps.detection.boxes import letterbox_transform  # noqa: E402
from apps.detection.config import PRESETS, Config  # noqa: E402
from apps.detection.evaluate import coco_ground_truth, coco_map, coco_results  # noqa: E402
from apps.detection.export import encode_png  # noqa: E402
from apps.detection.model import INFERENCE_HPARAMS, MODEL_HPARAMS  # noqa: E402
from benchmarks import detection_peers as peers  # noqa: E402
from benchmarks.machine import load_average, machine_info  # noqa: E402
from tfattn import training  # noqa: E402

tf.get_logger().setLevel("ERROR")

TARGETS = {"map": ">= 0.60 for the better tfattn head in 60 min", "ap50": ">= 0.90",
           "vs_peers": "better tfattn head ahead of both keras-hub detectors"}
DATASET = os.path.join("data", "detection", "fashion_scenes")
HEADS = {"dense": "scenes", "detr": "scenes_detr"}  # model name -> app preset
# Config fields that act at inference only (`Detector.set_inference_options`): --reuse_runs
# lets them differ from the run's.
INFERENCE_FIELDS = INFERENCE_HPARAMS
MODELS = (*HEADS, *peers.PEERS)
PEER_BATCH_SIZE = 16
# Peak learning rate, warm-up steps, and steps per TimeBudget "epoch" (~30-40 s each).
PEER_RECIPES = {
    "retinanet": {"learning_rate": 1e-4, "warmup_steps": 100, "chunk_steps": 25},
    "dfine": {"learning_rate": 2e-4, "warmup_steps": 5, "chunk_steps": 1},
}
# --quick: a tiny scene set (as tests/apps/detection/conftest.py's E2E_ARGS).
QUICK_SCENES = ["--train", "48", "--val", "12", "--test", "8", "--seed", "3", "--min_size", "64",
                "--max_size", "96", "--max_objects", "4", "--min_object_size", "12",
                "--max_object_size", "40"]
QUICK_EPOCHS = 2
QUICK_MINUTES = 0.25
LATENCY_CALLS = {1: 64, 32: 8}  # timed serving calls per batch size (after warm-up)
HEADLINE_MODELS = {"detr_map": "detr", "dense_map": "dense",
                   "keras_hub_retinanet_map": "retinanet", "keras_hub_dfine_map": "dfine"}


def ensure_dataset(path, quick_args=None):
    """Generates the scene set at `path` if it has no test annotations."""
    if os.path.exists(os.path.join(path, "annotations", "instances_test.json")):
        return
    print(f"generating {path}", flush=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "data", "make_detection_scenes.py"),
                    "--out", path, *(quick_args or ["--seed", "0"])], check=True)


def base_config(args, data):
    """The app config every model shares (sizes, augmentation, schedule bounds): the "test"
    preset's tiny models with --quick, else the "scenes" preset less its model
    hyperparameters, which stay with the dense head's preset."""
    if args.quick:
        overrides = dict(PRESETS["test"])
    else:
        overrides = {k: v for k, v in PRESETS["scenes"].items() if k not in MODEL_HPARAMS}
    overrides.update(data=data, time_budget_minutes=args.minutes,
                     verbose=0 if args.quick else 2)
    if args.quick:  # no TensorBoard images: seconds saved, nothing the benchmark reports
        overrides.update(epochs=QUICK_EPOCHS, sample_images=0)
    return overrides


def coco_metrics(metrics):
    """The reported COCO metrics; pycocotools' -1 (no ground truth of that size) -> None."""
    return {k: (float(metrics[k]) if metrics[k] >= 0 else None)
            for k in ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1",
                      "ar10", "ar100")}


# --------------------------------------------------------------------------- tfattn heads


def encoded_test_images(split, n):
    """The first `n` test images as encoded PNG bytes (the files themselves when PNG)."""
    out = []
    for i in range(min(n, len(split))):
        path = split.image_paths[i] if split.image_paths is not None else None
        if path and path.lower().endswith(".png"):
            with open(path, "rb") as f:
                out.append(f.read())
        else:
            out.append(encode_png(split.load_image(i)))
    return out


def serving_latency(serve, encoded, batch_size, calls, warmup_calls=2):
    """ms per image of a SavedModel's `serving_default` function at `batch_size`.

    Batches cycle through `encoded`; the warm-up calls are not timed.
    """
    n = len(encoded)
    batches = [tf.constant([encoded[(k * batch_size + j) % n] for j in range(batch_size)])
               for k in range(calls)]
    for k in range(warmup_calls):
        serve(images=batches[k % calls])
    start = time.perf_counter()
    for batch in batches:
        serve(images=batch)["num_detections"].numpy()
    return 1000.0 * (time.perf_counter() - start) / (calls * batch_size)


def reevaluate_run(cfg):
    """The summary of the finished run in `cfg.workdir`, trained under `cfg` (checked:
    only the inference options may differ), evaluated and exported
    again with `cfg`'s inference options: a changed preset's inference options measured
    on the same training run, not a new one. The training figures (minutes, epochs,
    images/s) stay the run's."""
    from apps.detection.export import load_run

    stored, model, meta = load_run(cfg.workdir)
    # Where the run lies is not a training setting: a run moved or linked into
    # --workdir_root is the same run.
    changed = sorted(k for k, v in dataclasses.asdict(cfg).items()
                     if k not in (*INFERENCE_FIELDS, "workdir") and json.loads(json.dumps(v)) !=
                     json.loads(json.dumps(getattr(stored, k))))
    if changed:
        raise ValueError(f"--reuse_runs: {cfg.workdir} was trained with other settings "
                         f"({', '.join(changed)}); train it again instead.")
    options = {k: getattr(cfg, k) for k in INFERENCE_FIELDS if getattr(cfg, k) is not None}
    model.set_inference_options(**options)
    print(f"{os.path.basename(cfg.workdir)}: reusing the trained run in {cfg.workdir}, "
          f"evaluated again with {options or 'its own inference options'}", flush=True)
    with open(os.path.join(cfg.workdir, "summary.json")) as f:
        summary = json.load(f)
    summary["reevaluated"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inference_options": options}
    data = app.load_data(cfg)
    return app.evaluate_and_export(cfg, model, data, meta, summary)


def run_head(name, args, overrides, root, test_split):
    # The head's preset under the shared settings (with --quick the "test" preset's sizes
    # over scenes_detr's head, rates and clipping).
    cfg = Config(**{**PRESETS[HEADS[name]], **overrides, "workdir": os.path.join(root, name)})
    if args.reuse_runs and os.path.exists(os.path.join(cfg.workdir, "summary.json")):
        summary = reevaluate_run(cfg)
    else:
        print(f"{name}: training ({cfg.time_budget_minutes:g} min budget, at most {cfg.epochs} "
              "epochs)", flush=True)
        summary = app.run(cfg)
    encoded = encoded_test_images(test_split, 256)
    calls = {b: max(2, c // 8) if args.quick else c for b, c in LATENCY_CALLS.items()}
    loaded = tf.saved_model.load(summary["saved_model"])  # as TF Serving would load it
    latency = {f"batch_{b}": serving_latency(loaded.signatures["serving_default"], encoded, b,
                                             calls[b]) for b in (1, 32)}
    return {
        "kind": "tfattn", "head": cfg.head, "preset": HEADS[name],
        "parameters": int(summary["parameters"]),
        "train_minutes": round(summary["train_seconds"] / 60, 2),
        "epochs_run": int(summary["epochs_run"]),
        "stopped_by_time_budget": summary["stopped_by_time_budget"],
        "train_images_per_second": float(summary["train_images_per_second"]),
        "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
        "weights": "best validation mAP checkpoint",
        "best_val_map": summary["best_val_map"],
        "val": coco_metrics(summary["val"]), "test": coco_metrics(summary["test"]),
        **coco_metrics(summary["test"]),
        "serving_ms_per_image": latency,
        **({"reevaluated": summary["reevaluated"]} if "reevaluated" in summary else {}),
    }


# --------------------------------------------------------------------------- keras-hub peers


def evaluate_peer(model, name, split, class_names, image_size, batch_size, max_detections):
    """COCO metrics of a peer on `split`, boxes mapped back to original pixels."""
    detections = []
    for images in pipeline.input_images(split, image_size).batch(batch_size):
        out = {k: v.numpy() for k, v in
               peers.peer_detect(model, images, name, max_detections).items()}
        for b in range(len(out["num_detections"])):
            i, k = len(detections), int(out["num_detections"][b])
            transform = letterbox_transform(tuple(split.image_sizes[i]), (image_size, image_size))
            # Normalised xyxy in the S x S input -> input pixels -> original pixels.
            boxes = transform.to_original(out["boxes"][b, :k] * image_size)
            detections.append((boxes, out["scores"][b, :k], out["classes"][b, :k]))
    metrics, _ = coco_map(coco_ground_truth(split, class_names), coco_results(detections))
    return metrics


def run_peer(name, args, overrides, data):
    cfg = Config(**{**overrides, "workdir": "unused"})
    recipe = dict(PEER_RECIPES[name])
    batch_size = cfg.batch_size if args.quick else PEER_BATCH_SIZE
    if args.quick:
        recipe.update(warmup_steps=0, chunk_steps=2)
    train_split = data.split(cfg.train_split)
    keras.utils.set_random_seed(cfg.seed)
    augment = pipeline.Augment(flip=cfg.flip, scale_range=cfg.scale_range,
                               min_visible=cfg.min_visible, brightness=cfg.brightness,
                               seed=cfg.seed)
    ds = pipeline.make_dataset(train_split, cfg.image_size, batch_size, True, cfg.max_boxes,
                               augment, seed=cfg.seed)
    ds = peers.peer_dataset(ds, name, cfg.image_size).repeat()

    # The app's schedule shape over the same planned data epochs, in budget "epochs" of
    # chunk_steps steps, so TimeBudget can shorten it at a fine grain.
    chunk = recipe["chunk_steps"]
    data_steps = max(1, len(train_split) // batch_size)
    planned = math.ceil(cfg.epochs * data_steps / chunk)
    warmup_steps = min(recipe["warmup_steps"], data_steps)
    peak = recipe["learning_rate"]
    schedule = training.warmup_cosine(peak, planned, chunk, warmup_epochs=warmup_steps / chunk,
                                      end_learning_rate=min(cfg.min_learning_rate, peak),
                                      resizable=True)
    model = peers.build_peer(name, data.num_classes, cfg.image_size,
                             max_detections=cfg.max_detections, seed=cfg.seed)
    peers.compile_peer(model, name, learning_rate=schedule)
    budget = training.TimeBudget(cfg.time_budget_minutes, schedule=schedule,
                                 steps_per_epoch=chunk)
    print(f"{name}: training ({cfg.time_budget_minutes:g} min budget, batch {batch_size}, "
          f"peak rate {peak:g}, {model.count_params():,} parameters)", flush=True)
    start = time.time()
    history = model.fit(ds, epochs=planned, steps_per_epoch=chunk, callbacks=[budget],
                        verbose=cfg.verbose, shuffle=False)
    train_seconds = time.time() - start
    steps = training.fit_epochs(history)["epochs_run"] * chunk
    test = evaluate_peer(model, name, data.split(cfg.test_split), data.class_names,
                         cfg.image_size, batch_size, cfg.max_detections)
    losses = history.history.get("loss", [float("nan")])
    return {
        "kind": "keras_hub", "architecture": type(model).__name__,
        "parameters": int(model.count_params()),
        "train_minutes": round(train_seconds / 60, 2),
        "epochs_run": round(steps * batch_size / len(train_split), 3),
        "steps_run": steps,
        "stopped_by_time_budget": budget.stopped_epoch is not None,
        "train_images_per_second": round(steps * batch_size / max(train_seconds, 1e-9), 2),
        "batch_size": batch_size, "learning_rate": peak, "warmup_steps": warmup_steps,
        "schedule": "warm-up + cosine fitted to the budget (TimeBudget)",
        "weights": "final (no checkpoint selection)",
        "final_loss": float(losses[-1]),
        "test": coco_metrics(test), **coco_metrics(test),
        "serving_ms_per_image": None,
    }


# --------------------------------------------------------------------------- report


def headline(models):
    heads = [m for m in HEADS if m in models]
    best = max(heads, key=lambda m: models[m]["map"]) if heads else None
    out = {"best_tfattn_head": best}
    for key in ("map", "ap50", "train_minutes"):
        out[key] = float(models[best][key]) if best else None
    for key, name in HEADLINE_MODELS.items():
        out[key] = float(models[name]["map"]) if name in models else None
    return out


# Settings that must agree for results of separate runs to share one table.
MERGE_KEYS = ("minutes", "dataset", "sizes", "num_classes", "image_size", "max_boxes", "augment")


def merge_results(infos, names):
    """One results dict from several runs' (`infos`, read from the files `names`)."""
    if not infos:
        raise ValueError("--merge: no results files given")
    first = infos[0]
    merged = {k: v for k, v in first.items() if k not in ("models", "headline", "runs")}
    merged["models"], merged["runs"] = {}, []
    for info, name in zip(infos, names):
        if info.get("benchmark") != "detection" or "models" not in info:
            raise ValueError(f"--merge: {name} is not a detection benchmark results file")
        for key in MERGE_KEYS:
            if info["config"].get(key) != first["config"].get(key):
                raise ValueError(
                    f"--merge: {name} has config {key}={info['config'].get(key)!r}, "
                    f"{names[0]} has {first['config'].get(key)!r}: not the same benchmark")
        # A model in a later file replaces the earlier run's (a rerun of one head): the
        # earlier run no longer lists it, and a run left with no model is dropped.
        for run in merged["runs"]:
            run["models"] = [m for m in run["models"] if m not in info["models"]]
        merged["runs"] = [run for run in merged["runs"] if run["models"]]
        merged["models"].update(info["models"])
        merged["runs"] += [dict(run) for run in info.get("runs") or [
            {"models": list(info["models"]), "date": info["date"], "machine": info["machine"],
             "versions": info.get("versions")}]]
    merged["date"] = max(run["date"] for run in merged["runs"])
    merged["headline"] = headline(merged["models"])
    return merged


def table(info):
    rows = ["| model | params | train min | epochs | img/s | mAP | AP50 | AP75 | APs | APm | "
            "APl | serve ms/img b1 | b32 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in info["models"].items():
        serve = r["serving_ms_per_image"] or {}
        cells = [f"{serve[k]:.1f}" if k in serve else "-" for k in ("batch_1", "batch_32")]
        ap = [f"{r[k]:.4f}" if r[k] is not None else "-"
              for k in ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")]
        rows.append(
            f"| {name} | {r['parameters']:,} | {r['train_minutes']:.1f} | {r['epochs_run']:g} | "
            f"{r['train_images_per_second']:.1f} | {' | '.join(ap)} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny generated scenes, 64-px models, seconds each: the code path")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"training budget per model (default 60; --quick: {QUICK_MINUTES})")
    parser.add_argument("--data", help=f"COCO-format dataset folder (default {DATASET}, "
                        "generated if missing; --quick: a tiny one, in a temporary folder unless --data)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/detection.json; "
                        "with --quick a file in the temp dir)")
    parser.add_argument("--workdir_root", help="where the runs go (default: a temporary folder)")
    parser.add_argument("--reuse_runs", action="store_true",
                        help="a tfattn head whose run in --workdir_root finished (summary.json) "
                        "is not trained again: evaluated and exported again with the preset's "
                        "inference options (only those may differ from the run's config)")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                        help="join these results files into --out instead of training")
    args = parser.parse_args(argv)
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out")
        infos = []
        for name in args.merge:
            try:
                with open(name) as f:
                    infos.append(json.load(f))
            except (OSError, json.JSONDecodeError) as e:
                parser.error(f"--merge: cannot read {name} as a results JSON ({e})")
        try:
            info = merge_results(infos, args.merge)
        except ValueError as e:
            parser.error(str(e))
        with open(args.out, "w") as f:
            json.dump(info, f, indent=2, default=float)
        print(table(info))
        print("\nheadline:", json.dumps(info["headline"], indent=1))
        print(f"wrote {args.out}")
        return info
    models = [m for m in args.models.split(",") if m]
    if not models or any(m not in MODELS for m in models):
        parser.error(f"--models: choose from {', '.join(MODELS)}; got {args.models!r}")
    if args.minutes is None:
        args.minutes = QUICK_MINUTES if args.quick else 60.0
    if not args.minutes > 0:
        parser.error(f"--minutes must be > 0; got {args.minutes}")
    out = args.out or (os.path.join(tempfile.gettempdir(), "detection_quick.json") if args.quick
                       else os.path.join("benchmarks", "results", "detection.json"))

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir_root or tmp
        if args.data:
            data_path = args.data
            if args.quick:  # the tiny scene set, generated there when missing
                ensure_dataset(data_path, QUICK_SCENES)
        elif args.quick:
            data_path = os.path.join(tmp, "scenes")
            ensure_dataset(data_path, QUICK_SCENES)
        else:
            data_path = DATASET
            ensure_dataset(data_path)
        overrides = base_config(args, data_path)
        cfg = Config(**overrides)
        data = app.load_data(cfg)
        if cfg.test_split not in data.splits:
            parser.error(f"--data: {data_path} has no {cfg.test_split!r} split (splits: "
                         f"{', '.join(data.splits)}); every model is scored on it")
        sizes = {s: len(data.split(s)) for s in (cfg.train_split, cfg.val_split, cfg.test_split)}
        info = {
            "benchmark": "detection", "quick": args.quick,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                         "keras_hub": keras_hub.__version__},
            "targets": TARGETS,
            "config": {
                "minutes": args.minutes, "dataset": data_path, "sizes": sizes,
                "num_classes": data.num_classes, "image_size": cfg.image_size,
                "max_boxes": cfg.max_boxes, "max_epochs": cfg.epochs,
                "augment": {"flip": cfg.flip, "scale_range": list(cfg.scale_range),
                            "min_visible": cfg.min_visible, "brightness": cfg.brightness},
                "peer_batch_size": cfg.batch_size if args.quick else PEER_BATCH_SIZE,
                "peer_recipes": PEER_RECIPES,
                "evaluation": "pycocotools on the test split, original pixels",
            },
            "models": {},
        }
        for name in models:
            start, load = time.perf_counter(), load_average()
            if name in HEADS:
                result = run_head(name, args, overrides, root, data.split(cfg.test_split))
            else:
                result = run_peer(name, args, overrides, data)
            result.update(seconds=round(time.perf_counter() - start, 1),
                          load_average_start=load, load_average_end=load_average())
            info["models"][name] = result
            info["headline"] = headline(info["models"])
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump(info, f, indent=2, default=float)
            print(f"{name}: test mAP {result['map']:.4f}, AP50 {result['ap50']:.4f} "
                  f"({result['seconds']:.0f} s)", flush=True)
    print(table(info))
    print("\nheadline:", json.dumps(info["headline"], indent=1))
    print(f"wrote {out}")
    return info


if __name__ == "__main__":
    main()
