"""ViT classifier: tfattn (`apps.vit.model.build_vit`) vs keras-hub `ViTImageClassifier`.

Two parts, each written under its own key of one JSON file (a run of one part keeps the
other part already in the file):

Throughput (default). Both models at the same architecture (28x28x1 images, patch 4,
class-token pooling, pre-norm blocks, GELU MLP, LayerNorm epsilon 1e-6, no dropout, no drop
path), the same parameter count and the same weights (tfattn's are copied into keras-hub's,
and the logits are checked to agree), compiled alike (AdamW with the app's weight decay,
clipping and decay exclusions, categorical cross-entropy from logits on one-hot labels, an
accuracy metric, `jit_compile=True`). keras-hub gets no preprocessor: both take the same
normalised float32 images.

- training: `model.train_on_batch(x, y)` on one fixed in-memory batch (`tf.Tensor`s), i.e.
  the XLA-compiled Keras train step that `fit` runs each step, without `tf.data`, so the
  model is timed and not the input pipeline. Each call returns Python floats, which waits
  for the step to finish.
- inference: `model.predict_on_batch(x)` (XLA-compiled predict step; returns NumPy).

Per row: a warm-up (trace, XLA compile, one step) per model and function, then
`runs` timed runs of `train_steps` (`predict_steps`) consecutive calls; tfattn and keras-hub
alternate run by run (the order rotates) so load from other processes hits both alike. The
median time per step gives img/s. Rows: the REFERENCES.md configs (4 layers, dim 128, 4
heads, MLP 256: keras-hub ~200 training img/s on 2 cores; 6 layers, dim 192, 3 heads, MLP
384: ~100 img/s). Target: tfattn >= 1.1x keras-hub in training.

Quality (`--quality`). `apps.vit.train.run` on the `fmnist` preset (Fashion-MNIST, 30-minute
time budget) with tfattn's ViT, then the same recipe (data pipeline, augmentation, AdamW,
warm-up cosine schedule, epochs, budget, callbacks) with keras-hub's ViT at the preset's
architecture minus what keras-hub lacks: the convolutional stem (or Shifted Patch
Tokenization), Locality Self-Attention and drop path. Records test accuracy, epochs, wall time. Target: tfattn >=
92.5% top-1 within 30 minutes. The JSON is rewritten after each model, so a killed run
keeps what finished.

Usage:
    python benchmarks/vit.py                          # throughput, 2 rows, 2 CPU cores: ~6 min
        # with other jobs on the machine (load ~3); less on an idle one.
    python benchmarks/vit.py --quick --out /tmp/vit.json       # smoke run, tiny row, ~1 min
    python benchmarks/vit.py --quality                # 2 x 30-minute trainings (~65 min)
    python benchmarks/vit.py --quality --budget_minutes 0.5 --max_train_examples 2000 \\
        --epochs 1 --out /tmp/vit.json   # fmnist smoke run: ~3 min a model on 2 busy cores,
                                         # most of it XLA compilation
    python benchmarks/vit.py --quality --preset test --out /tmp/vit.json   # code path, ~1 min
"""

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfattn  # noqa: E402
from apps.vit.config import PRESETS, Config  # noqa: E402
from apps.vit.model import build_vit, count_params  # noqa: E402
from benchmarks.machine import load_average as _load  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402

tf.get_logger().setLevel("ERROR")

IMPLS = ("tfattn", "keras_hub")
NUM_CLASSES = 10
TRAIN_TARGET = 1.1  # tfattn / keras-hub training img/s
QUALITY_TARGET = 0.925  # tfattn Fashion-MNIST test top-1 within the 30-minute budget
QUALITY_PRESET = "fmnist"


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    num_layers: int
    hidden_dim: int
    num_heads: int
    intermediate_dim: int
    patch_size: int = 4
    image_size: int = 28
    channels: int = 1
    batch_size: int = 128
    reference_keras_hub_train_img_s: float = None  # REFERENCES.md, same machine type


FULL = dict(
    rows=(
        Row("L4-D128-H4-M256", 4, 128, 4, 256, reference_keras_hub_train_img_s=200),
        Row("L6-D192-H3-M384", 6, 192, 3, 384, reference_keras_hub_train_img_s=100),
    ),
    runs=9, train_steps=3, predict_steps=4,
)
QUICK = dict(
    rows=(Row("quick-L2-D32-H2-M64-P7", 2, 32, 2, 64, patch_size=7, batch_size=32),),
    runs=2, train_steps=1, predict_steps=1,
)


# --- models -----------------------------------------------------------------------------------


# Config fields that only tfattn's ViT implements; build_keras_hub_vit ignores them.
KERAS_HUB_IGNORES = (
    "spt", "conv_stem", "conv_stem_depth", "lsa", "drop_path_rate", "layer_scale_init_value"
)


def build_keras_hub_vit(cfg, num_classes, channels, name="vit"):
    """keras-hub's ViT at `cfg`'s architecture; the `build_model` signature of `apps.vit.train.run`.

    keras-hub has no shifted patch tokenization, convolutional stem, locality
    self-attention, drop path, LayerScale or attention pooling: the `KERAS_HUB_IGNORES`
    fields are ignored (the benchmark records that), pooling "attention" is an error. No preprocessor: the model takes the app's normalised float images.
    """
    if cfg.pooling not in ("cls", "gap"):
        raise ValueError(f"keras-hub's ViTImageClassifier has no pooling {cfg.pooling!r}.")
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(cfg.image_size, cfg.image_size, channels),
        patch_size=cfg.patch_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,  # required: keras-hub has no default
        hidden_dim=cfg.hidden_dim,
        mlp_dim=cfg.intermediate_dim,
        dropout_rate=cfg.dropout_rate,
        attention_dropout=cfg.attention_dropout_rate,
        layer_norm_epsilon=1e-6,  # tfattn's blocks and final norm use 1e-6 too
        use_class_token=cfg.pooling == "cls",
    )
    model = keras_hub.models.ViTImageClassifier(
        backbone=backbone,
        num_classes=num_classes,
        preprocessor=None,
        pooling="token" if cfg.pooling == "cls" else "gap",
        activation=None,  # logits, like tfattn's head
        name=name,
    )
    return model, None


def row_config(row):
    return Config(
        image_size=row.image_size, patch_size=row.patch_size, num_layers=row.num_layers,
        hidden_dim=row.hidden_dim, num_heads=row.num_heads, intermediate_dim=row.intermediate_dim,
        pooling="cls", dropout_rate=0.0, attention_dropout_rate=0.0, drop_path_rate=0.0,
        batch_size=row.batch_size,
    )


def compile_like_app(model, cfg):
    """AdamW (weight decay, global clipnorm, decay exclusions as `apps.vit.train`), XLA."""
    from apps.vit.train import NO_DECAY

    optimizer = keras.optimizers.AdamW(
        cfg.learning_rate, weight_decay=cfg.weight_decay, global_clipnorm=cfg.gradient_clip_norm
    )
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=True,
    )


def copy_weights(source, target):
    """Copies `source`'s weights into `target` when both list the same shapes in order."""
    src, dst = source.get_weights(), target.get_weights()
    if [w.shape for w in src] != [w.shape for w in dst]:
        return False
    target.set_weights(src)
    return True


# --- throughput -------------------------------------------------------------------------------


def _timed(fn, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) * 1e3 / steps  # ms per step


def run_row(row, settings):
    cfg = row_config(row)
    keras.utils.set_random_seed(0)
    models = {
        "tfattn": build_vit(cfg, NUM_CLASSES, row.channels, name="tfattn_vit")[0],
        "keras_hub": build_keras_hub_vit(cfg, NUM_CLASSES, row.channels, name="keras_hub_vit")[0],
    }
    params = {name: count_params(m) for name, m in models.items()}
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(row.batch_size, row.image_size, row.image_size, row.channels)),
                    tf.float32)
    y = tf.one_hot(rng.integers(0, NUM_CLASSES, row.batch_size), NUM_CLASSES)

    # Same weights in both: equal logits show that the two models compute the same function.
    copied = copy_weights(models["tfattn"], models["keras_hub"])
    logits = {name: np.asarray(m(x, training=False)) for name, m in models.items()}
    diff = float(np.max(np.abs(logits["tfattn"] - logits["keras_hub"])))

    res = {name: {} for name in IMPLS}
    first_loss = {}
    for name, model in models.items():
        compile_like_app(model, cfg)
        res[name]["jit_compile"] = bool(model.jit_compile)
        t0 = time.perf_counter()
        first_loss[name] = float(model.train_on_batch(x, y, return_dict=True)["loss"])
        res[name]["train_first_call_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        model.predict_on_batch(x)
        res[name]["predict_first_call_s"] = round(time.perf_counter() - t0, 2)

    times = {(name, kind): [] for name in IMPLS for kind in ("train", "predict")}
    for i in range(settings["runs"]):
        order = IMPLS[i % 2 :] + IMPLS[: i % 2]  # alternate which model goes first
        for name in order:
            times[name, "train"].append(
                _timed(lambda m=models[name]: m.train_on_batch(x, y), settings["train_steps"])
            )
        for name in order:
            times[name, "predict"].append(
                _timed(lambda m=models[name]: m.predict_on_batch(x), settings["predict_steps"])
            )
    for name in IMPLS:
        for kind in ("train", "predict"):
            ms = times[name, kind]
            med = statistics.median(ms)
            res[name].update({
                f"{kind}_ms_per_step_median": round(med, 2),
                f"{kind}_ms_per_step_min": round(min(ms), 2),
                f"{kind}_ms_per_step_max": round(max(ms), 2),
                f"{kind}_img_s": round(row.batch_size * 1e3 / med, 1),
            })
        res[name]["parameters"] = params[name]

    ratio_train = res["tfattn"]["train_img_s"] / res["keras_hub"]["train_img_s"]
    ratio_predict = res["tfattn"]["predict_img_s"] / res["keras_hub"]["predict_img_s"]
    ref = row.reference_keras_hub_train_img_s
    return {
        "name": row.name,
        "architecture": {
            "image_size": row.image_size, "channels": row.channels, "patch_size": row.patch_size,
            "num_layers": row.num_layers, "hidden_dim": row.hidden_dim,
            "num_heads": row.num_heads, "intermediate_dim": row.intermediate_dim,
            "pooling": "cls", "dropout_rate": 0.0, "drop_path_rate": 0.0,
        },
        "batch_size": row.batch_size,
        "parameters_equal": params["tfattn"] == params["keras_hub"],
        "weights_copied": copied,
        "max_abs_logit_diff": diff,
        # Same weights, same batch, no randomness: the first training losses must agree too.
        "first_losses": first_loss,
        "first_losses_match": abs(first_loss["tfattn"] - first_loss["keras_hub"])
        <= 1e-4 * abs(first_loss["keras_hub"]),
        "impls": res,
        "ratio_train_tfattn_over_keras_hub": round(ratio_train, 3),
        "ratio_predict_tfattn_over_keras_hub": round(ratio_predict, 3),
        "target_train": TRAIN_TARGET,
        "meets_target": ratio_train >= TRAIN_TARGET,
        "reference_keras_hub_train_img_s": ref,
        "keras_hub_train_over_reference": (
            round(res["keras_hub"]["train_img_s"] / ref, 2) if ref else None
        ),
    }


def throughput_table(rows):
    head = (
        "| row | batch | params tfattn / keras-hub | train img/s tfattn | keras-hub | ratio "
        "| target | meets | predict img/s tfattn | keras-hub | ratio | keras-hub train ref |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        t, h = r["impls"]["tfattn"], r["impls"]["keras_hub"]
        ref = r["reference_keras_hub_train_img_s"]
        lines.append(
            f"| {r['name']} | {r['batch_size']} | {t['parameters']:,} / {h['parameters']:,} "
            f"| {t['train_img_s']:.0f} | {h['train_img_s']:.0f} "
            f"| {r['ratio_train_tfattn_over_keras_hub']:.2f}x | >= {r['target_train']}x "
            f"| {'yes' if r['meets_target'] else 'NO'} "
            f"| {t['predict_img_s']:.0f} | {h['predict_img_s']:.0f} "
            f"| {r['ratio_predict_tfattn_over_keras_hub']:.2f}x "
            f"| {f'~{ref:.0f}' if ref else '-'} |"
        )
    return "\n".join(lines)


THROUGHPUT_NOTES = [
    "Same architecture and the same parameter count: patch embedding (Conv2D with bias), "
    "class token, one learned position embedding of (1 + patches) rows, pre-norm blocks "
    "(LayerNorm eps 1e-6, MHA with biases, key_dim = hidden_dim / num_heads, GELU MLP with "
    "biases), final LayerNorm, class-token pooling, Dense head. The weight lists have the "
    "same shapes in the same order; tfattn's weights are copied into keras-hub's model "
    "before timing and max_abs_logit_diff / first_losses_match check they compute the same.",
    "Initialisers differ (tfattn: zero class token, Glorot position embedding, zero biases; "
    "keras-hub: N(0, 0.05) class token, N(0, 0.02) positions, N(0, 1e-6) MLP biases); the "
    "weight copy removes that difference here.",
    "keras-hub's dropout layers have rate 0 (identity); tfattn is built with "
    "drop_path_rate=0 and dropout 0. keras-hub has preprocessor=None and takes the same "
    "normalised float32 images as tfattn.",
    "tfattn's build_vit calls its blocks with return_attention_scores=True (its attention "
    "model shares them); the classifier does not output the weights.",
    "Where the margin comes from: with class-token pooling, tfattn's last block updates "
    "only the class token (TransformerEncoderBlock num_queries=1): keys and values still "
    "come from every token, but the other tokens' queries, attention rows, output "
    "projection and MLP, which the head never reads, are not computed. The logits are the "
    "same (max_abs_logit_diff). keras-hub computes the full last block. Before this "
    "(session 7, all tokens in the last block) the ratios were 1.10x (L4) and 1.04x (L6): "
    "fused QKV projection and Philox dropout alone.",
    "Training = Model.train_on_batch on a fixed in-memory batch (the compiled Keras train step "
    "fit runs, without tf.data); inference = Model.predict_on_batch. Both XLA-compiled.",
]


def run_throughput(args, settings):
    rows = settings["rows"]
    part = {
        "date": _now(),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "quick": args.quick,
            "runs": settings["runs"],
            "train_steps_per_run": settings["train_steps"],
            "predict_steps_per_run": settings["predict_steps"],
            "rows": len(rows),
            "backend": keras.backend.backend(),
            "xla": True,
            "optimizer": "AdamW(lr=1e-3, weight_decay=0.05, global_clipnorm=1.0, no decay on "
            "biases/norms/embeddings/class token)",
            "loss": "CategoricalCrossentropy(from_logits=True) on one-hot labels; "
            "CategoricalAccuracy metric",
            "inputs": "fixed N(0, 1) float32 images and random one-hot labels, tf.Tensor in memory",
            "training": "Model.train_on_batch(x, y): the XLA-compiled train step (forward, "
            "loss, backward, AdamW update, metric); returns Python floats, so each call waits "
            "for its step",
            "inference": "Model.predict_on_batch(x): the XLA-compiled predict step",
            "timing": "warm-up call per model and function (trace + XLA compile + 1 step), "
            "then `runs` timed runs of `steps_per_run` consecutive calls, tfattn and keras-hub "
            "alternating run by run; img/s = batch / median ms per step",
        },
        "results": [],
        "notes": THROUGHPUT_NOTES,
    }
    t_start = time.perf_counter()
    for i, row in enumerate(rows):
        t0 = time.perf_counter()
        result = run_row(row, settings)
        part["results"].append(result)
        r = result["impls"]
        print(
            f"[{i + 1}/{len(rows)}] {row.name} batch {row.batch_size}: parameters tfattn "
            f"{r['tfattn']['parameters']:,}, keras-hub {r['keras_hub']['parameters']:,}; train "
            f"{r['tfattn']['train_img_s']:.0f} vs {r['keras_hub']['train_img_s']:.0f} img/s, "
            f"predict {r['tfattn']['predict_img_s']:.0f} vs {r['keras_hub']['predict_img_s']:.0f} "
            f"img/s; max |logit diff| {result['max_abs_logit_diff']:.1e} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        keras.backend.clear_session()
    part["machine"]["load_average_end"] = _load()
    part["total_s"] = round(time.perf_counter() - t_start, 1)
    for r in part["results"]:
        if not r["parameters_equal"]:
            part["notes"].append(f"{r['name']}: parameter counts differ, see impls.*.parameters.")
    print()
    print(throughput_table(part["results"]))
    m = part["machine"]
    print(
        f"\nTF {tf.__version__}, Keras {keras.__version__}, keras-hub {keras_hub.__version__}; "
        f"{m['cpu_model']} x{m['cpu_count']}; load {_fmt_load(m['load_average_start'])} -> "
        f"{_fmt_load(m['load_average_end'])}; {part['total_s']:.0f} s total. Ratios > 1: tfattn "
        "faster. Training: train_on_batch on a fixed batch (no input pipeline)."
    )
    return part


# --- quality ----------------------------------------------------------------------------------


QUALITY_NOTES = [
    "keras-hub's ViT has no convolutional stem, no Shifted Patch Tokenization, no Locality "
    "Self-Attention and no drop path (stochastic depth): its run uses the fmnist preset's "
    "architecture (patch, depth, width, heads, MLP, class token) with a plain patchify "
    "stem and without the others. Everything else is the same "
    "recipe: apps.vit.train.run with the same data pipeline and augmentation, AdamW, "
    "warm-up cosine schedule, clipping, weight-decay exclusions, epochs, time budget and "
    "callbacks (less the attention-map images: keras-hub returns no attention model). "
    "Without its stem and LSA tfattn's ViT has keras-hub's parameter count; the stem's "
    "convolutions (or SPT's patch LayerNorm and wider projection) and LSA's learned "
    "temperatures add the difference in `parameters`.",
    "A keras-hub result is kept across runs that differ only in fields keras-hub ignores "
    "(KERAS_HUB_IGNORES): its training is the same computation.",
    "The time budget fits the cosine schedule into the budget (TimeBudget with a resizable "
    "schedule: after each epoch, the epochs that still fit are estimated and the decay is "
    "shortened to end on the last of them; schedule_epochs says where it ended). An epoch "
    "slower than estimated still stops training only after the epoch that crosses the "
    "budget, so train_seconds can exceed it (within_30_minutes records that).",
    "The two trainings run one after the other, not interleaved: load from other processes "
    "changes how many epochs fit in the budget (load averages are recorded per run).",
]


def quality_config(args, impl):
    overrides = dict(PRESETS[args.preset])
    if args.budget_minutes is not None:
        overrides["time_budget_minutes"] = args.budget_minutes
    if args.max_train_examples is not None:
        overrides["max_train_examples"] = args.max_train_examples
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
        # The preset's warm-up must stay shorter than the run (Config checks it).
        overrides["warmup_epochs"] = min(overrides.get("warmup_epochs", 1.0), args.epochs / 2)
    overrides["workdir"] = os.path.join(args.workdir, impl)
    overrides["overwrite"] = True
    overrides["verbose"] = 2
    return Config(**overrides)


def same_quality_run(earlier, current, ignore=()):
    """Whether two quality parts' settings describe the same training (models aside).

    The recipe (every Config field but the workdir) is compared, not only the preset name:
    a result trained with an older version of a preset never pairs with a new one.
    `ignore` names recipe fields that do not matter (those a model does not implement).
    """
    if earlier.get("recipe") is None or current.get("recipe") is None:
        return False
    keys = ("preset", "budget_minutes", "max_train_examples", "epochs")
    if any(_jsonable(earlier.get(k)) != _jsonable(current.get(k)) for k in keys):
        return False
    recipes = [
        {k: v for k, v in _jsonable(part["recipe"]).items() if k not in ignore}
        for part in (earlier, current)
    ]
    return recipes[0] == recipes[1]


def run_quality(args, write, out=None):
    from apps.vit.train import run

    part = {
        "date": _now(),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "preset": args.preset,
            "budget_minutes": args.budget_minutes,
            "max_train_examples": args.max_train_examples,
            "epochs": args.epochs,
            "workdir": args.workdir,
            "smoke": args.preset != QUALITY_PRESET or any(
                v is not None for v in (args.budget_minutes, args.max_train_examples, args.epochs)
            ),
        },
        "results": {},
        "notes": QUALITY_NOTES,
    }
    # The recipe itself (the preset's fields), so an edited preset never pairs with an old run.
    recipe = dataclasses.asdict(quality_config(args, "tfattn"))
    recipe.pop("workdir")
    part["settings"]["recipe"] = recipe
    # Training one model (--models) keeps the other's result from an earlier run of the same
    # settings and recipe, so the two 30-minute runs can happen in separate sessions.
    earlier = read_results(out).get("quality", {}) if out else {}
    for impl, result in earlier.get("results", {}).items():
        ignore = KERAS_HUB_IGNORES if impl == "keras_hub" else ()
        if impl not in args.models and same_quality_run(
            earlier.get("settings", {}), part["settings"], ignore=ignore
        ):
            part["results"][impl] = result
    builders = {"tfattn": build_vit, "keras_hub": build_keras_hub_vit}
    builders = {k: v for k, v in builders.items() if k in args.models}
    part["settings"]["models"] = list(builders)
    for impl, build in builders.items():
        cfg = quality_config(args, impl)
        if impl == "tfattn":
            part["settings"]["config"] = dataclasses.asdict(cfg)
        # A benchmark trains from scratch: a backup left by a killed run would be resumed
        # (and its train_seconds would only count the rest).
        backup = os.path.join(cfg.workdir, "backup")
        if os.path.isdir(backup):
            print(f"removing {backup} left by an earlier, unfinished run", flush=True)
            shutil.rmtree(backup)
        load_start = _load()
        t0 = time.perf_counter()
        summary = run(cfg, build_model=build)
        result = {
            "test_accuracy": summary["test_accuracy"],
            "test_loss": summary["test_loss"],
            "best_val_accuracy": summary["best_val_accuracy"],
            "epochs_run": summary["epochs_run"],
            "stopped_by_time_budget": summary["stopped_by_time_budget"],
            "schedule_epochs": summary["schedule_epochs"],
            "train_seconds": summary["train_seconds"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "parameters": summary["parameters"],
            "input_wait": _finite(summary.get("input_wait")),
            "load_average_start": load_start,
            "load_average_end": _load(),
        }
        if impl == "tfattn":
            result["target_test_accuracy"] = QUALITY_TARGET
            # Measured training time, not the budget: the budget stops training only after
            # the epoch that crosses it, so a run can overrun it.
            result["within_30_minutes"] = summary["train_seconds"] <= 30 * 60
            result["meets_target"] = (
                summary["test_accuracy"] >= QUALITY_TARGET and result["within_30_minutes"]
            )
        else:
            result["ignored_config"] = {k: getattr(cfg, k) for k in KERAS_HUB_IGNORES}
        part["results"][impl] = result
        print(
            f"{impl}: test accuracy {result['test_accuracy']:.4f} after {result['epochs_run']} "
            f"epochs, {result['train_seconds']:.0f} s training, {result['parameters']:,} "
            "parameters",
            flush=True,
        )
        write(part)  # keep what finished if the next run dies
        keras.backend.clear_session()

    print()
    print("| model | parameters | epochs | train s | test top-1 | target |")
    print("|---|---|---|---|---|---|")
    for impl, r in part["results"].items():
        target = (f">= {QUALITY_TARGET:.1%}: {'yes' if r['meets_target'] else 'NO'}"
                  if "meets_target" in r else "-")
        print(f"| {impl} | {r['parameters']:,} | {r['epochs_run']} | {r['train_seconds']:.0f} "
              f"| {r['test_accuracy']:.2%} | {target} |")
    return part


# --- metadata and output ----------------------------------------------------------------------


def _jsonable(value):
    """`value` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finite(tree):
    """NaN/inf -> None in a nest of dicts, so the JSON stays standard."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    if isinstance(tree, float) and not np.isfinite(tree):
        return None
    return tree


def _fmt_load(load):
    return "/".join(f"{v:.1f}" for v in load) if load else "?"


def versions():
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "tfattn": tfattn.__version__,
    }


def read_results(path):
    """The existing results file (to merge into), or a fresh one."""
    if not os.path.exists(path):
        return {"benchmark": "vit"}
    with open(path) as f:
        try:
            info = json.load(f)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--out {path}: not valid JSON ({e}); move it away or pick another --out") from e
    if not isinstance(info, dict) or info.get("benchmark") != "vit":
        raise SystemExit(f"--out {path}: not a benchmarks/vit.py results file (no benchmark: vit)")
    return info


def write_part(path, key, part):
    info = read_results(path)
    info[key] = part
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="throughput: one tiny row, 2 runs of 1 step (smoke test)")
    parser.add_argument("--quality", action="store_true",
                        help="run the Fashion-MNIST quality part instead of throughput")
    parser.add_argument("--out", help="results JSON, merged with its other part if it exists "
                        "(default benchmarks/results/vit.json; with --quick a file in the temp dir)")
    parser.add_argument("--runs", type=int, help="throughput: timed runs per model and function")
    parser.add_argument("--preset", default=QUALITY_PRESET, choices=sorted(PRESETS),
                        help=f"quality: apps/vit/config.py preset (default {QUALITY_PRESET}; "
                        "`test` for a seconds-long smoke run)")
    parser.add_argument("--budget_minutes", type=float,
                        help="quality: time budget per training (preset: 30)")
    parser.add_argument("--models", nargs="+", default=["tfattn", "keras_hub"],
                        choices=["tfattn", "keras_hub"], help="quality: which models to train")
    parser.add_argument("--max_train_examples", type=int, help="quality: subsample training data")
    parser.add_argument("--epochs", type=int, help="quality: epochs (default: the preset's)")
    parser.add_argument("--workdir", default=os.path.join("runs", "benchmark_vit"),
                        help="quality: training outputs go to <workdir>/{tfattn,keras_hub}")
    args = parser.parse_args(argv)
    if args.quick and args.quality:
        parser.error("--quick is for throughput; shorten --quality with --budget_minutes, "
                     "--max_train_examples and --epochs")
    if not args.quality and (args.preset != QUALITY_PRESET or any(
        v is not None for v in (args.budget_minutes, args.max_train_examples, args.epochs)
    )):
        parser.error("--preset, --budget_minutes, --max_train_examples and --epochs need --quality")
    if args.runs is not None and args.runs < 1:
        parser.error(f"--runs must be >= 1; got {args.runs}")
    out = args.out or (
        os.path.join(tempfile.gettempdir(), "vit_quick.json") if args.quick
        else os.path.join("benchmarks", "results", "vit.json")
    )
    read_results(out)  # fail now, not after an hour, if --out cannot be merged into

    if args.quality:
        part = run_quality(args, lambda p: write_part(out, "quality", p), out)
        info = write_part(out, "quality", part)
    else:
        settings = dict(QUICK if args.quick else FULL)
        if args.runs is not None:
            settings["runs"] = args.runs
        info = write_part(out, "throughput", run_throughput(args, settings))
    print(f"wrote {out}")
    return info


if __name__ == "__main__":
    main()
