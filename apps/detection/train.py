"""Train an object detector, log to TensorBoard and export it for TF Serving.

    python -m apps.detection.train --workdir runs/detection                 # preset-free default
    python -m apps.detection.train --preset scenes_detr --workdir runs/detr # the DETR head
    python -m apps.detection.train --data my_coco/ --image_size 256 --workdir runs/mine
    python -m apps.detection.train --help                                   # every field

Config -> strategy -> data -> model -> compile -> fit -> COCO evaluation -> export. A job
killed mid-run resumes from `<workdir>/backup` when started again with the same command.
The weights kept are those with the best validation mAP (pycocotools, every
`--eval_every_epochs`); the test split is only used for the final report.

Writes under `--workdir`: config.json, detection_meta.json, model.keras, summary.json,
tensorboard/ (losses, val_map/val_ap50/val_ap75, predicted vs true boxes and attention
maps on fixed validation images), checkpoints/, evaluation/<split>/ and
export/<name>/<version>/.
"""

import os
import time

import keras
import numpy as np

from apps.detection import pipeline, plots
from apps.detection.config import PRESETS, Config
from apps.detection.data import load_detection_data, tile_split
from apps.detection.evaluate import evaluate_split, format_table, predict_split, write_evaluation
from apps.detection.export import META_FILE, detection_meta, export_detector
from apps.detection.model import INFERENCE_HPARAMS, build_detector
from tfattn import training

NO_DECAY = ["bias", "gamma", "beta", "embeddings", "query", "reference"]

# Fields that may differ when a killed run is resumed from <workdir>/backup.
# The inference options (`Detector.set_inference_options`) leave training as it is, so they
# may change on resumption too.
RESUME_MAY_CHANGE = (*training.AppConfig.RESUME_MAY_CHANGE, "sample_images",
                     "image_every_epochs", "early_stopping_patience", "score_threshold",
                     *INFERENCE_HPARAMS)


def load_data(cfg):
    """The dataset with train/val(/test) splits; a validation split is carved out of the
    training images (seeded) when the source has none."""
    data = load_detection_data(cfg.data, image_dir=cfg.image_dir, class_names=cfg.class_names)
    if cfg.val_split not in data.splits:
        train = data.split(cfg.train_split)
        order = np.random.default_rng(cfg.seed).permutation(len(train))
        n_val = max(1, round(cfg.validation_fraction * len(train)))
        if n_val >= len(train):
            raise ValueError(f"{cfg.data}: {len(train)} training images are too few to hold "
                             f"out a validation share of {cfg.validation_fraction}")
        data.splits[cfg.val_split] = train.subset(np.sort(order[:n_val]), cfg.val_split)
        data.splits[cfg.train_split] = train.subset(np.sort(order[n_val:]), cfg.train_split)
        print(f"{cfg.data}: no {cfg.val_split!r} split; held out {n_val} training images")
    if cfg.limit_images:
        for name, split in list(data.splits.items()):
            if len(split) > cfg.limit_images:
                data.splits[name] = split.subset(np.arange(cfg.limit_images), name)
    if cfg.tile_size:
        for name, split in list(data.splits.items()):
            data.splits[name] = tile_split(split, cfg.tile_size, cfg.tile_overlap, cfg.min_visible)
            print(f"{name}: {len(split)} images -> {len(data.splits[name])} tiles of "
                  f"<= {cfg.tile_size} px")
    return data


def image_callbacks(cfg, data, log_dir):
    """Predicted vs true boxes and attention maps on fixed validation images."""
    split = data.split(cfg.val_split)
    n = min(cfg.sample_images, len(split))
    if not n:
        return []
    images = [split.load_image(i) for i in range(n)]
    truth = [(split.boxes[i], split.labels[i]) for i in range(n)]
    inputs = [pipeline.letterbox_tf(im, cfg.image_size)[0].numpy() for im in images]
    sample = split.subset(np.arange(n), "samples")

    def boxes(model, epoch):
        detections = predict_split(model, sample, cfg.image_size, n, cfg.max_detections,
                                   cfg.score_threshold)
        fig = plots.boxes_figure(images, truth, detections, data.class_names,
                                 title=f"validation, epoch {epoch + 1} (dashed: truth)")
        return training.figure_to_image(fig)

    def attention(model, epoch):
        maps, titles = plots.query_attention_maps(model, inputs[0], data.class_names)
        fig = plots.attention_figure(inputs[0], maps, titles, title=f"epoch {epoch + 1}")
        return training.figure_to_image(fig)

    every = cfg.image_every_epochs
    return [training.ImageHookCallback(boxes, log_dir, "boxes", every_n_epochs=every),
            training.ImageHookCallback(attention, log_dir, "attention", every_n_epochs=every)]


def run(cfg):
    """Trains, evaluates and exports as `cfg` says; returns the summary dict."""
    keras.utils.set_random_seed(cfg.seed)
    strategy = training.resolve_strategy(cfg.strategy, cfg.tpu)
    chief = training.is_chief(strategy)
    training.set_precision(cfg.precision)
    workdir = cfg.workdir
    training.check_resume(cfg, workdir, ignore=RESUME_MAY_CHANGE)
    training.write_config(cfg, workdir)

    data = load_data(cfg)
    train, val = data.split(cfg.train_split), data.split(cfg.val_split)
    meta = detection_meta(cfg, data.class_names, data.category_ids)
    if chief:
        training.write_json(os.path.join(workdir, META_FILE), meta)
    global_batch = training.global_batch_size(cfg.batch_size, strategy)
    augment = pipeline.Augment(flip=cfg.flip, scale_range=cfg.scale_range,
                               min_visible=cfg.min_visible, brightness=cfg.brightness,
                               seed=cfg.seed)
    train_ds = pipeline.make_dataset(train, cfg.image_size, global_batch, True, cfg.max_boxes,
                                     augment, seed=cfg.seed)
    val_ds = pipeline.make_dataset(val, cfg.image_size, global_batch, False, cfg.max_boxes)
    options = training.dataset_options()
    train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    steps_per_epoch = max(1, len(train) // global_batch)

    jit_compile = cfg.jit_compile and cfg.head != "detr"  # DETR's matcher runs scipy
    with strategy.scope():
        model = build_detector(cfg.head, cfg.backbone, data.num_classes, cfg.image_size,
                               no_object_weight=cfg.no_object_weight, **cfg.model_hparams())
        peak = cfg.learning_rate * global_batch / 32  # linear scaling rule (32: the default batch)
        fit_to_budget = bool(cfg.time_budget_minutes) and cfg.fit_schedule_to_budget
        schedule = training.warmup_cosine(
            peak, cfg.epochs, steps_per_epoch, warmup_epochs=cfg.warmup_epochs,
            end_learning_rate=min(cfg.min_learning_rate, peak), resizable=fit_to_budget)
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay,
                                           global_clipnorm=cfg.gradient_clip_norm)
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
        model.compile(optimizer=optimizer, jit_compile=jit_compile,
                      steps_per_execution=cfg.steps_per_execution)
    training.enable_multi_worker_fit(model)
    print(f"{cfg.head} head on a {cfg.backbone} backbone: {model.count_params():,} parameters; "
          f"{len(train):,} training / {len(val):,} validation images ({data.num_classes} "
          f"classes), global batch {global_batch} on {strategy.num_replicas_in_sync} replica(s)")

    callbacks = training.standard_callbacks(
        workdir, config=cfg, chief=chief, monitor="val_map", mode="max",
        early_stopping_patience=cfg.early_stopping_patience)
    input_wait = training.InputWaitCallback()
    budget = training.TimeBudget(cfg.time_budget_minutes,
                                 schedule=schedule if fit_to_budget else None,
                                 steps_per_epoch=steps_per_epoch)
    val_map = plots.MapCallback(val, data.class_names, cfg.image_size, cfg.eval_every_epochs,
                                cfg.eval_images, cfg.batch_size, cfg.max_detections,
                                cfg.score_threshold)
    # Before the loggers and the checkpoint, so val_map reaches TensorBoard and picks the best.
    callbacks[:0] = [input_wait, budget, val_map]
    if chief:
        callbacks += image_callbacks(cfg, data, os.path.join(workdir, "tensorboard", "images"))

    start = time.time()
    history = model.fit(input_wait.wrap(train_ds), validation_data=val_ds, epochs=cfg.epochs,
                        callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
    train_seconds = time.time() - start
    best = os.path.join(workdir, "checkpoints", "best.keras")
    training.load_weights_everywhere(model, best, strategy, missing_ok=True)
    training.print_weights_fingerprint(model, strategy)  # multi-worker: equal everywhere

    summary = {
        "best_val_map": float(max(history.history.get("val_map", [float("nan")]))),
        **training.fit_epochs(history),
        "stopped_by_time_budget": budget.stopped_epoch is not None,
        "schedule_epochs": budget.planned_epochs or cfg.epochs,
        "train_seconds": round(train_seconds, 1),
        "train_images_per_second": round(
            training.fit_epochs(history)["epochs_run"] * steps_per_epoch * global_batch
            / max(train_seconds, 1e-9), 1),
        "input_wait": input_wait.summary(),
        "parameters": model.count_params(),
        "num_replicas": strategy.num_replicas_in_sync,
        "global_batch_size": global_batch,
    }
    if chief:
        evaluate_and_export(cfg, model, data, meta, summary)
    return summary


def evaluate_and_export(cfg, model, data, meta, summary):
    """The chief's end of a run: pycocotools on the validation and test splits (under
    `<workdir>/evaluation/`), model.keras, the SavedModel export and summary.json.
    Updates `summary` with the metrics and the export's path."""
    workdir = cfg.workdir
    for name in (cfg.val_split, cfg.test_split):
        if name not in data.splits:
            continue
        metrics, per_label, _, results = evaluate_split(
            model, data.split(name), data.class_names, cfg.image_size, data.category_ids,
            cfg.batch_size, cfg.max_detections, cfg.score_threshold)
        write_evaluation(os.path.join(workdir, "evaluation", name), metrics, per_label,
                         data.class_names, results)
        summary[name] = {k: v for k, v in metrics.items() if k != "confusion"}  # csv
        print(f"{name}: {len(data.split(name))} images\n"
              f"{format_table(metrics, class_names=data.class_names)}")
    model.save(os.path.join(workdir, "model.keras"))
    export_dir = os.path.join(workdir, "export")
    version = cfg.export_version or training.next_version(export_dir, cfg.export_name)
    val = data.split(cfg.val_split)
    report = export_detector(model, export_dir, cfg.export_name, version, meta,
                             overwrite=cfg.overwrite,
                             verify_images=[val.load_image(i) for i in range(min(2, len(val)))],
                             score_threshold=cfg.score_threshold)
    summary["saved_model"] = report["path"]
    training.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def print_next_steps(cfg, summary):
    result = summary.get(cfg.test_split) or summary.get(cfg.val_split) or {}
    if result:
        print(f"\nmAP@[.5:.95] {result['map']:.4f}, AP50 {result['ap50']:.4f} after "
              f"{training.epochs_text(summary)}")
    if "saved_model" in summary:
        training.print_next_steps(cfg.workdir, summary["saved_model"], cfg.export_name, [
            ("Draw boxes", f"python -m apps.detection.predict --export {summary['saved_model']} "
                           "--images <image file or folder> --out predictions/"),
            ("Evaluate", f"python -m apps.detection.evaluate --workdir {cfg.workdir} --split test"),
        ])


def main(argv=None):
    cfg = training.parse_config(Config, argv, presets=PRESETS, prog="python -m apps.detection.train")
    summary = run(cfg)
    print_next_steps(cfg, summary)
    return summary


if __name__ == "__main__":
    training.run_cli(main)
