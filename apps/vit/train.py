"""Train a Vision Transformer classifier, log to TensorBoard and export it for TF Serving.

    python -m apps.vit.train --preset tiny --workdir runs/vit          # `make demo`
    python -m apps.vit.train --preset fmnist --workdir runs/fmnist     # quality benchmark
    python -m apps.vit.train --dataset folder:/data/flowers --image_size 64 --channels 3
    python -m apps.vit.train --help                                    # every field

Config -> strategy -> data -> model -> compile -> fit -> test evaluation -> export. A job
killed mid-run resumes from `<workdir>/backup` when started again with the same command.
The model kept is the best on the validation split (carved out of the training split);
the test split is only used for the final report.

Writes under `--workdir`: config.json, preprocessing.json, model.keras, summary.json,
tensorboard/ (scalars, config, attention rollout on test images, validation confusion
matrix and misclassified examples), checkpoints/, evaluation/ and export/<name>/<version>/.
"""

import math
import os
import time

import keras
import numpy as np

from apps.vit import data as vit_data
from apps.vit.config import PRESETS, Config
from apps.vit.evaluate import (
    classification_report,
    confusion_figure,
    misclassified_figure,
    predict_logits,
)
from apps.vit.export import export_vit, read_preprocessing, write_preprocessing
from apps.vit.model import build_vit, count_params, num_prefix_tokens
from tfattn import training

# Weights that AdamW leaves undecayed: biases, norms, embeddings, tokens, temperatures.
NO_DECAY = ["bias", "gamma", "beta", "embeddings", "class_token", "logit_scale", "query_tokens"]
MONITOR_EXAMPLES = 2000  # validation images behind the per-epoch confusion matrix


def load_data(cfg):
    data = vit_data.load_dataset(
        cfg.dataset, validation_fraction=cfg.validation_fraction, seed=cfg.seed,
        channels=cfg.channels, image_size=(cfg.image_size,) * 2, strict=cfg.strict,
        data_dir=cfg.data_dir,
    )
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(data.x_train):
        keep = np.random.default_rng(cfg.seed).permutation(len(data.x_train))[: cfg.max_train_examples]
        data.x_train, data.y_train = data.x_train[np.sort(keep)], data.y_train[np.sort(keep)]
        n_eval = max(cfg.max_train_examples // 4, 64)  # quick runs: evaluate quickly too
        data.x_val, data.y_val = data.x_val[:n_eval], data.y_val[:n_eval]
        data.x_test, data.y_test = data.x_test[:n_eval], data.y_test[:n_eval]
    return data


def make_augment(cfg):
    return vit_data.Augment(
        pad=cfg.pad, flip=cfg.flip, random_resized_crop=cfg.random_resized_crop,
        crop_scale=cfg.crop_scale,
        randaugment_layers=cfg.randaugment_layers, randaugment_magnitude=cfg.randaugment_magnitude,
        mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
        label_smoothing=cfg.label_smoothing,
    )


def normalised_batch(images, cfg, mean, std):
    """uint8 images -> one float batch as the model takes it (resized like training data:
    TFDS sources keep their own size until the pipeline resizes them)."""
    labels = np.zeros(len(images), np.int32)
    ds = vit_data.make_pipeline(images, labels, len(images), False, image_size=cfg.image_size,
                                mean=mean, std=std)
    return next(iter(ds))[0].numpy()


def image_callbacks(cfg, attention_model, data, mean, std, log_dir):
    """Attention rollout on fixed test images; confusion matrix and errors on validation."""
    samples = data.x_test[: cfg.attention_images]
    x_val, y_val = data.x_val[:MONITOR_EXAMPLES], data.y_val[:MONITOR_EXAMPLES]
    cache = {}

    def val_logits(model, epoch):
        if cache.get("epoch") != epoch:  # one prediction per epoch for both image hooks
            logits = predict_logits(model, x_val, mean, std, image_size=cfg.image_size)
            cache.update(epoch=epoch, logits=logits)
        return cache["logits"]

    def confusion(model, epoch):
        report = classification_report(y_val, val_logits(model, epoch), data.class_names)
        fig = confusion_figure(report["confusion_matrix"], data.class_names, f"validation, epoch {epoch + 1}")
        return training.figure_to_image(fig)

    def misclassified(model, epoch):
        fig = misclassified_figure(x_val, y_val, val_logits(model, epoch), data.class_names)
        return np.ones((1, 8, 8, 3), np.float32) if fig is None else training.figure_to_image(fig)

    every = cfg.image_every_epochs
    callbacks = [
        training.ImageHookCallback(confusion, log_dir, "confusion_matrix", every_n_epochs=every),
        training.ImageHookCallback(misclassified, log_dir, "misclassified", every_n_epochs=every),
    ]
    if attention_model is not None and len(samples):  # attention_images=0: no attention maps
        callbacks.append(
            training.AttentionMapCallback(
                normalised_batch(samples, cfg, mean, std), attention_model, log_dir, grid_size=cfg.grid_size,
                images=samples.astype("float32") / 255.0, num_prefix_tokens=num_prefix_tokens(cfg),
                every_n_epochs=every,
            )
        )
    return callbacks


# Fields that may differ when a killed run is resumed from <workdir>/backup.
RESUME_MAY_CHANGE = (
    *training.AppConfig.RESUME_MAY_CHANGE, "top_k", "tflite", "profile_batches", "attention_images",
    "image_every_epochs", "early_stopping_patience",
)


def run(cfg, build_model=build_vit):
    """Trains, evaluates and exports as `cfg` says; returns the summary dict.

    `build_model(cfg, num_classes, channels, name=...)` returns `(classifier, attention_model)`
    (attention_model may be None); benchmarks pass another architecture through it.
    """
    keras.utils.set_random_seed(cfg.seed)
    strategy = training.resolve_strategy(cfg.strategy, cfg.tpu)
    chief = training.is_chief(strategy)
    training.set_precision(cfg.precision)
    workdir = cfg.workdir
    training.check_resume(cfg, workdir, ignore=RESUME_MAY_CHANGE)
    training.write_config(cfg, workdir)

    # Data: uint8 arrays in memory; tf.data does scaling, augmentation and batching.
    data = load_data(cfg)
    channels = data.image_shape[-1]
    mean, std = vit_data.compute_mean_std(data.x_train)
    if chief:
        write_preprocessing(workdir, cfg.image_size, channels, mean, std, data.class_names)
    global_batch = training.global_batch_size(cfg.batch_size, strategy)
    augment = make_augment(cfg)
    pipeline = dict(image_size=cfg.image_size, num_classes=data.num_classes, mean=mean, std=std,
                    one_hot=True, seed=cfg.seed)
    train_ds = vit_data.make_pipeline(data.x_train, data.y_train, global_batch, True, augment=augment, **pipeline)
    val_ds = vit_data.make_pipeline(data.x_val, data.y_val, global_batch, False, **pipeline)
    test_ds = vit_data.make_pipeline(data.x_test, data.y_test, global_batch, False, **pipeline)
    options = training.dataset_options()
    train_ds, val_ds, test_ds = (ds.with_options(options) for ds in (train_ds, val_ds, test_ds))
    steps_per_epoch = math.ceil(len(data.x_train) / global_batch)

    with strategy.scope():
        model, attention_model = build_model(cfg, data.num_classes, channels, name=cfg.export_name)
        peak = cfg.learning_rate * global_batch / 128  # linear scaling rule
        fit_to_budget = bool(cfg.time_budget_minutes) and cfg.fit_schedule_to_budget
        schedule = training.warmup_cosine(
            peak, cfg.epochs, steps_per_epoch, warmup_epochs=cfg.warmup_epochs,
            end_learning_rate=min(cfg.min_learning_rate, peak), resizable=fit_to_budget,
        )
        optimizer = keras.optimizers.AdamW(
            schedule, weight_decay=cfg.weight_decay, global_clipnorm=cfg.gradient_clip_norm
        )
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
        top_k = min(cfg.top_k, data.num_classes)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=[
                keras.metrics.CategoricalAccuracy(name="accuracy"),
                keras.metrics.TopKCategoricalAccuracy(k=top_k, name=f"top{top_k}"),
            ],
            jit_compile=cfg.jit_compile,
            steps_per_execution=cfg.steps_per_execution,
        )
    # Multi-worker: fit/evaluate as collectives, predict locally (the image hooks predict
    # on the chief alone). A no-op for other strategies.
    training.enable_multi_worker_fit(model)
    if attention_model is not None:
        training.enable_multi_worker_fit(attention_model)
    print(f"{model.name}: {count_params(model):,} parameters, {len(data.x_train):,} training / "
          f"{len(data.x_val):,} validation / {len(data.x_test):,} test images, global batch "
          f"{global_batch} on {strategy.num_replicas_in_sync} replica(s)")

    callbacks = training.standard_callbacks(
        workdir, config=cfg, chief=chief, monitor="val_accuracy", mode="max",
        early_stopping_patience=cfg.early_stopping_patience, profile_batches=cfg.profile_batches,
    )
    input_wait = training.InputWaitCallback()
    budget = training.TimeBudget(
        cfg.time_budget_minutes, schedule=schedule if fit_to_budget else None,
        steps_per_epoch=steps_per_epoch,
    )
    callbacks[:0] = [input_wait, budget]  # before the loggers, so their values reach TensorBoard
    if chief:
        log_dir = os.path.join(workdir, "tensorboard", "images")
        callbacks += image_callbacks(cfg, attention_model, data, mean, std, log_dir)

    start = time.time()
    history = model.fit(
        input_wait.wrap(train_ds),  # times each batch fetch; shuffled by the pipeline
        validation_data=val_ds,
        epochs=cfg.epochs,
        callbacks=callbacks,
        verbose=cfg.verbose,
        shuffle=False,  # tf.data input: Keras would warn that it ignores shuffle=True
    )
    train_seconds = time.time() - start

    # Keep the weights that did best on validation. Only the chief holds that checkpoint;
    # under multi-worker it sends them to every other worker.
    best = os.path.join(workdir, "checkpoints", "best.keras")
    training.load_weights_everywhere(model, best, strategy, missing_ok=True)
    test = model.evaluate(test_ds, verbose=0, return_dict=True)  # every worker, exact
    training.print_weights_fingerprint(model, strategy)  # multi-worker: equal everywhere

    summary = {
        "test_accuracy": float(test["accuracy"]),
        f"test_top{top_k}_accuracy": float(test[f"top{top_k}"]),
        "test_loss": float(test["loss"]),
        "best_val_accuracy": float(max(history.history.get("val_accuracy", [float("nan")]))),
        **training.fit_epochs(history),  # epochs_run (resumed ones too), resumed_from_epoch
        "stopped_by_time_budget": budget.stopped_epoch is not None,
        "schedule_epochs": budget.planned_epochs or cfg.epochs,
        "train_seconds": round(train_seconds, 1),
        "input_wait": input_wait.summary(),
        "parameters": count_params(model),
        "num_replicas": strategy.num_replicas_in_sync,
        "global_batch_size": global_batch,
    }
    if chief:
        model.save(os.path.join(workdir, "model.keras"))
        export_dir = os.path.join(workdir, "export")
        version = cfg.export_version or training.next_version(export_dir, cfg.export_name)
        report = export_vit(
            model, export_dir, cfg.export_name, version, read_preprocessing(workdir), cfg.top_k,
            overwrite=cfg.overwrite, verify_images=data.x_test[:4],
        )
        summary["saved_model"] = report["path"]
        if cfg.tflite:
            x_eval = normalised_batch(data.x_test[:500], cfg, mean, std)
            summary["tflite"] = training.export_tflite(
                model, os.path.join(export_dir, f"{cfg.export_name}.tflite"),
                eval_inputs=x_eval, eval_labels=data.y_test[:500],
            )
        training.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def print_next_steps(cfg, summary):
    wait = summary["input_wait"]["fraction"]
    wait = ("input wait not measured (too few steps)" if math.isnan(wait)
            else f"input wait {100 * wait:.1f}% of step time")
    print(f"\nTest accuracy {summary['test_accuracy']:.4f} after {training.epochs_text(summary)}; "
          f"{wait}")
    if "saved_model" in summary:
        training.print_next_steps(cfg.workdir, summary["saved_model"], cfg.export_name, [
            ("Predict", f"python -m apps.vit.predict --export {summary['saved_model']} "
                        "--images <image file or folder>"),
        ])


def main(argv=None):
    cfg = training.parse_config(Config, argv, presets=PRESETS, prog="python -m apps.vit.train")
    summary = run(cfg)
    print_next_steps(cfg, summary)
    return summary


if __name__ == "__main__":
    training.run_cli(main)
