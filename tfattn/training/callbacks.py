"""Callbacks shared by the apps: resumable backups, best checkpoint, TensorBoard and image logs.

Layout under an app's workdir:

    <workdir>/backup/                  BackupAndRestore state (deleted when fit completes)
    <workdir>/checkpoints/best.keras   best model by `monitor` (+ best.json: its value, epoch)
    <workdir>/tensorboard/train        epoch scalars: loss, metrics, learning_rate (+ profile)
    <workdir>/tensorboard/validation   epoch scalars of the validation data
    <workdir>/tensorboard/config       the resolved config as text
    <workdir>/tensorboard/images       suggested `log_dir` for attention maps and app images

Example:
>>> callbacks = standard_callbacks(workdir, config, chief=is_chief(strategy))
>>> if is_chief(strategy):
...     callbacks.append(AttentionMapCallback(x_val[:8], attention_model,
...                                           os.path.join(workdir, "tensorboard", "images"),
...                                           grid_size=(4, 4)))
>>> model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks)
"""

import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tfattn.training.strategy import mean_over_workers
from tfattn.visualize import (
    attention_heatmap_images,
    attention_rollout,
    cls_attention_map,
    upscale_images,
)

BEST_MODEL = os.path.join("checkpoints", "best.keras")
BEST_VALUE = os.path.join("checkpoints", "best.json")


def _check_every_n_epochs(value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`every_n_epochs` must be a positive int; got {value!r}.")


def _make_dir(path, name):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"`{name}`={path!r} is not a writable directory: {e}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"`{name}`={path!r} is not a writable directory (permission denied).")


def _config_dict(config):
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return dict(config)
    raise ValueError(
        f"`config` must be a dataclass instance or a dict; got {type(config).__name__}."
    )


def fit_epochs(history):
    """`{"epochs_run", "resumed_from_epoch"}` of a `fit`'s History, resumed epochs included.

    A run resumed from its backup starts at a later epoch: `history.epoch` holds only the
    epochs this `fit` ran, so `epochs_run` counts from epoch 0 and `resumed_from_epoch` says
    where it took over (0 for a fresh run).
    """
    epochs = list(getattr(history, "epoch", None) or [])
    return {
        "epochs_run": epochs[-1] + 1 if epochs else 0,
        "resumed_from_epoch": epochs[0] if epochs else 0,
    }


def epochs_text(summary):
    """`"4 epochs (12 s)"`, or `"4 epochs (resumed after epoch 2: 2 epochs in 6 s)"`, from
    a summary with `fit_epochs`'s keys and `train_seconds` (this run's seconds)."""
    epochs, resumed = summary["epochs_run"], summary.get("resumed_from_epoch", 0)
    took = f"{summary['train_seconds']:.0f} s"
    if resumed:
        took = f"resumed after epoch {resumed}: {epochs - resumed} epochs in {took}"
    return f"{epochs} epochs ({took})"


def current_learning_rate(optimizer):
    """The optimizer's learning rate at its current step (schedules evaluated), as a float."""
    # LossScaleOptimizer (mixed_float16) wraps the optimizer that owns the schedule.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `learning_rate` (the rate for the next step) to each epoch's logs.

    The value then reaches `History`, `CSVLogger`, and TensorBoard as `epoch_learning_rate`.
    (Keras 3's TensorBoard callback also collects it; this makes it part of the public logs
    rather than relying on that private helper.) Place it before the callbacks that read logs.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.model.optimizer is not None:
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)


class TimeBudget(keras.callbacks.Callback):
    """Ends `fit` within a wall-clock budget, at an epoch boundary.

    Epochs are never cut short (a partial epoch would leave the learning-rate schedule and
    the backups out of step). Without a schedule, training stops after the first epoch that
    ends past the budget. With a resizable `WarmupCosine` (`schedule=`), the callback also
    plans ahead: after each epoch it estimates the time of the epochs left (the mean epoch
    so far, the first epoch's compilation excluded, with a margin for the epoch-to-epoch
    spread kept in hand) and, when
    fewer epochs than planned still fit, shortens the schedule so the cosine reaches its
    end on the last epoch that fits, then stops there (a later, faster estimate can give
    epochs back, up to the original plan). The learning rate is thus fully
    decayed when the budget runs out, instead of being cut off mid-decay. Overrunning
    epochs (a slower machine than estimated) still stop after the epoch that crosses it.

    The clock starts at `on_train_begin`, so a resumed job gets a fresh budget (and its
    schedule, rebuilt by the app, its full planned length again).

    Args:
        minutes: the budget; None or 0 disables the callback.
        schedule: optional resizable `WarmupCosine` to fit into the budget.
        steps_per_epoch: optimizer steps per epoch; required with `schedule`.

    Attributes:
        stopped_epoch: 0-based epoch after which the budget stopped training, or None.
        planned_epochs: epochs the schedule ends on (None without a schedule).
    """

    clock = staticmethod(time.monotonic)  # seconds; tests substitute a fake clock

    def __init__(self, minutes, schedule=None, steps_per_epoch=None):
        super().__init__()
        if minutes is not None and (isinstance(minutes, bool) or not minutes >= 0):
            raise ValueError(f"`minutes` must be None or a non-negative number; got {minutes!r}.")
        if schedule is not None:
            if not getattr(schedule, "resizable", False):
                raise ValueError(
                    "`schedule` must be a WarmupCosine built with resizable=True; "
                    f"got {schedule!r}."
                )
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(
                    "`steps_per_epoch` must be a positive int with `schedule`; "
                    f"got {steps_per_epoch!r}."
                )
        self.minutes = minutes
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.stopped_epoch = None
        self._full_epochs = None
        self._start = None
        self._last = None
        self._durations = []

    def on_train_begin(self, logs=None):
        self._start = self._last = self.clock()
        self._durations = []
        self.stopped_epoch = None
        if self.schedule is not None:
            self._full_epochs = self.planned_epochs

    def on_epoch_end(self, epoch, logs=None):
        if not self.minutes:
            return
        now = self.clock()
        # Every worker of a multi-worker run must stop on the same epoch and plan the same
        # schedule: they use the mean of their clocks (a no-op in a single process).
        duration, elapsed = mean_over_workers(
            [now - self._last, now - self._start], getattr(self.model, "distribute_strategy", None)
        )
        self._durations.append(float(duration))
        self._last = now
        remaining = 60.0 * self.minutes - float(elapsed)
        if remaining <= 0:
            self._stop(epoch)
            return
        if self.schedule is None or len(self._durations) < 2:
            return  # plan from steady epochs only: the first one includes compilation
        # The mean steady epoch: the expected cost of each epoch left. (The slower of the
        # last and the median epoch was tried: one slow epoch on a shared machine cut a
        # 19-epoch plan to 14.)
        steady = self._durations[1:]
        next_epoch = float(np.mean(steady))
        # Keep a margin in hand, so a plan that ends just inside the budget does not overrun
        # it when its last epoch is a slow one: three median absolute deviations of the epoch
        # time (~2 standard deviations for normally spread times; unlike the standard
        # deviation, one outlying epoch does not inflate it), once 3 steady epochs give one.
        margin = 0.0
        if len(steady) >= 3:
            margin = 3.0 * float(np.median(np.abs(np.asarray(steady) - np.median(steady))))
        fit = epoch + 1 + max(0, int((remaining - margin) // next_epoch))  # end within budget
        plan = min(fit, self._full_epochs)
        if plan != self.planned_epochs and plan * self.steps_per_epoch > self.schedule.warmup_steps:
            self.schedule.resize(plan * self.steps_per_epoch)
            print(
                f"TimeBudget: {fit} epochs fit in {self.minutes:g} minutes "
                f"(~{next_epoch:.0f} s per epoch); the learning-rate schedule now ends "
                f"after epoch {plan} (planned: {self._full_epochs}).",
                flush=True,
            )
        if plan < self._full_epochs and epoch + 1 >= self.planned_epochs:
            self._stop(epoch)  # the shortened plan is done (a full plan ends by itself)

    @property
    def planned_epochs(self):
        """Epochs the schedule now ends on (None without a schedule)."""
        if self.schedule is None:
            return None
        return math.ceil(self.schedule.total_steps / self.steps_per_epoch)

    def _stop(self, epoch):
        self.stopped_epoch = epoch
        self.model.stop_training = True


class ConfigTextLogger(keras.callbacks.Callback):
    """Writes a config as indented JSON to TensorBoard's text tab, once at train begin.

    Args:
        log_dir: run folder for the text summary.
        config: dataclass instance or dict (values JSON-serialisable, others via `str`).
        tag: summary tag.
    """

    def __init__(self, log_dir, config, tag="config"):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.tag = tag
        self.config_json = json.dumps(_config_dict(config), indent=2, sort_keys=True, default=str)

    def on_train_begin(self, logs=None):
        # Indented lines render as a code block in TensorBoard's markdown.
        markdown = "\n".join("    " + line for line in self.config_json.splitlines())
        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default():
            tf.summary.text(self.tag, markdown, step=0)
        writer.close()


class _BestValueRecorder(keras.callbacks.Callback):
    """Keeps `<workdir>/checkpoints/best.json` in step with `ModelCheckpoint.best`.

    A resumed job reads it back (`initial_value_threshold`), so its first epoch does not
    overwrite a better `best.keras` from before the interruption.
    """

    def __init__(self, checkpoint, path):
        super().__init__()
        self.checkpoint = checkpoint
        self.path = path
        self._last = checkpoint.best

    def on_epoch_end(self, epoch, logs=None):
        best = self.checkpoint.best
        if best is None or best == self._last:
            return
        self._last = best
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"monitor": self.checkpoint.monitor, "value": float(best), "epoch": epoch}, f)
        os.replace(tmp, self.path)  # atomic: a kill never leaves half a file


def _resumed_best(workdir, backup_dir, monitor):
    """The recorded best `monitor` value if this run resumes from a backup, else None."""
    path = os.path.join(workdir, BEST_VALUE)
    if not os.path.exists(os.path.join(backup_dir, "training_metadata.json")):
        return None  # a fresh run: an old best.json from a finished run must not block saving
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        value = float(record["value"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"Cannot read the best-checkpoint record {path!r} (expected JSON with a numeric "
            f"'value'): {e}. Delete it to restart best-model tracking."
        ) from e
    return value if record.get("monitor") == monitor else None


def _profile_batch(profile_batches):
    if profile_batches is None or profile_batches == 0:
        return 0
    is_int = isinstance(profile_batches, int) and not isinstance(profile_batches, bool)
    if is_int and profile_batches > 0:
        return profile_batches
    if (
        isinstance(profile_batches, (tuple, list))
        and len(profile_batches) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) for b in profile_batches)
        and 0 < profile_batches[0] <= profile_batches[1]
    ):
        return tuple(profile_batches)
    raise ValueError(
        "`profile_batches` must be None, a positive batch number, or a pair (start, stop) with "
        f"0 < start <= stop (1-based batches from the start of fit); got {profile_batches!r}."
    )


def _worker_index(worker_index):
    if worker_index is not None:
        if not isinstance(worker_index, int) or isinstance(worker_index, bool) or worker_index < 0:
            raise ValueError(f"`worker_index` must be a non-negative int; got {worker_index!r}.")
        return worker_index
    try:
        return int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(
            "`worker_index` is needed when `chief=False` (each worker backs up to its own "
            "folder); pass it, or set TF_CONFIG with task.index."
        ) from e


def standard_callbacks(
    workdir,
    config=None,
    chief=True,
    monitor="val_loss",
    mode="min",
    early_stopping_patience=None,
    profile_batches=None,
    backup_save_freq="epoch",
    worker_index=None,
):
    """The callbacks every app passes to `model.fit`: resume, best model, NaN guard, TensorBoard.

    In order: `LearningRateLogger`, `TerminateOnNaN`, best-model `ModelCheckpoint` (chief),
    optional `EarlyStopping`, `TensorBoard` and the config as text (chief), and last
    `BackupAndRestore`, so a backup is only written after the epoch's other outputs.

    Resuming: a killed job started again with the same command restores the weights,
    optimizer state (step count included) and epoch number from `<workdir>/backup` and runs
    only the remaining epochs. With the default `backup_save_freq="epoch"` the backup is the
    state at the end of the last completed epoch, so the resumed run ends at the same
    `optimizer.iterations` as an uninterrupted one. An int `backup_save_freq` (every N
    batches) loses less work, but Keras 3.15 restores only the epoch number, not the batch:
    the interrupted epoch is re-run from its first batch on top of weights that already saw
    part of it (extra optimizer steps). The backup is removed when `fit` completes.
    `EarlyStopping`'s patience counter restarts on resume; the best checkpoint's value does not
    (it is kept in `checkpoints/best.json`).

    Multi-worker: pass `chief=is_chief(strategy)`. Only the chief writes TensorBoard and
    the best checkpoint; every worker keeps its own backup (chief: `<workdir>/backup`,
    others: `<workdir>/backup_workers/worker_<index>`) because all replicas must restore.

    Args:
        workdir: the run's output folder (created).
        config: optional resolved config (dataclass or dict), logged as text.
        chief: whether this process writes TensorBoard and checkpoints.
        monitor: metric for the best checkpoint and early stopping, e.g. "val_loss" or
            "val_accuracy" (use "loss" when there is no validation data).
        mode: "min" or "max" for `monitor`.
        early_stopping_patience: epochs without improvement before stopping; None disables.
        profile_batches: None, a batch, or `(start, stop)`: profile those batches (1-based,
            counted from the start of this `fit`, as Keras' `profile_batch`) into
            `<workdir>/tensorboard/train/plugins/profile` (view with tensorboard-plugin-profile).
        backup_save_freq: "epoch" (see Resuming) or an int number of batches.
        worker_index: this worker's index when `chief=False` (default: TF_CONFIG task.index).

    Returns:
        A list of Keras callbacks; append app-specific ones (image logs) as needed.
    """
    workdir = os.fspath(workdir)
    _make_dir(workdir, "workdir")
    if mode not in ("min", "max"):
        raise ValueError(f"`mode` must be 'min' or 'max'; got {mode!r}.")
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"`monitor` must be a metric name such as 'val_loss'; got {monitor!r}.")
    if early_stopping_patience is not None and (
        not isinstance(early_stopping_patience, int)
        or isinstance(early_stopping_patience, bool)
        or early_stopping_patience < 0
    ):
        raise ValueError(
            f"`early_stopping_patience` must be None or a non-negative int; got "
            f"{early_stopping_patience!r}."
        )
    if backup_save_freq != "epoch" and (
        not isinstance(backup_save_freq, int)
        or isinstance(backup_save_freq, bool)
        or backup_save_freq < 1
    ):
        raise ValueError(
            f"`backup_save_freq` must be 'epoch' or a positive int; got {backup_save_freq!r}."
        )
    profile_batch = _profile_batch(profile_batches)
    config_text = None
    if config is not None:  # validates `config` before training starts
        config_text = ConfigTextLogger(os.path.join(workdir, "tensorboard", "config"), config)

    if chief:
        backup_dir = os.path.join(workdir, "backup")
    else:
        index = _worker_index(worker_index)
        backup_dir = os.path.join(workdir, "backup_workers", f"worker_{index}")

    callbacks = [LearningRateLogger(), keras.callbacks.TerminateOnNaN()]
    if chief:
        _make_dir(os.path.join(workdir, "checkpoints"), "workdir")
        checkpoint = keras.callbacks.ModelCheckpoint(
            os.path.join(workdir, BEST_MODEL),
            monitor=monitor,
            mode=mode,
            save_best_only=True,
            initial_value_threshold=_resumed_best(workdir, backup_dir, monitor),
        )
        callbacks += [checkpoint, _BestValueRecorder(checkpoint, os.path.join(workdir, BEST_VALUE))]
    if early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor, patience=early_stopping_patience, mode=mode)
        )
    if chief:
        callbacks.append(
            keras.callbacks.TensorBoard(
                os.path.join(workdir, "tensorboard"),
                write_graph=False,  # Keras 3 writes only a model summary here; keep files small
                profile_batch=profile_batch,
            )
        )
        if config_text is not None:
            callbacks.append(config_text)
    callbacks.append(
        keras.callbacks.BackupAndRestore(
            backup_dir,
            save_freq=backup_save_freq,
            # Keep the previous backup too: a kill while writing falls back to it.
            double_checkpoint=True,
        )
    )
    return callbacks


class _EpochImageWriter(keras.callbacks.Callback):
    """Opens one summary writer per `fit` and calls `_write(epoch)` every n epochs.

    The last epoch `fit` ran is always written (at train end, when the every-n cadence
    skipped it), so the images of the final model are there whichever epoch training
    ends on (a time budget or early stopping can end it on any epoch).
    """

    def __init__(self, log_dir, every_n_epochs):
        super().__init__()
        _check_every_n_epochs(every_n_epochs)
        self.log_dir = os.fspath(log_dir)
        self.every_n_epochs = every_n_epochs
        self._writer = None
        self._pending = None  # last epoch ended and not written

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)
        self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            self._pending = epoch
            return
        self._pending = None
        self._write_epoch(epoch)

    def _write_epoch(self, epoch):
        with self._writer.as_default():
            self._write(epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is None:
            return
        try:
            if self._pending is not None:
                self._write_epoch(self._pending)
        finally:
            self._writer.close()
            self._writer = None
            self._pending = None

    def _write(self, epoch):
        raise NotImplementedError


class AttentionMapCallback(_EpochImageWriter):
    """Logs attention maps of a fixed sample batch to TensorBoard's image tab each epoch.

    Writes, at step `epoch` (the step Keras uses for epoch scalars):
    - `<name>/last_layer`: the last layer's `(T, T)` attention, mean over heads;
    - `<name>/rollout` (with `grid_size`): attention rollout over all layers
      (`tfattn.visualize.attention_rollout`) as a heatmap over the patch grid, overlaid on
      `images` when given. With `num_prefix_tokens >= 1` the map is the CLS token's row
      (`cls_attention_map`); with 0 (no class token, e.g. attention pooling) it is the
      rollout averaged over all query tokens.

    The attention model is run once in `on_train_begin` so a shape mistake fails before
    the first epoch rather than after it.

    Args:
        sample_inputs: a fixed batch, as the attention model takes it (array, tuple or dict).
        attention_model_or_fn: a `keras.Model` sharing the trained layers, or a callable
            `fn(sample_inputs)`, returning per-layer attention weights `(batch, heads, T, T)`
            (a list, first layer first, or one array for a single layer), i.e. the layers'
            `return_attention_scores=True` outputs.
        log_dir: run folder, e.g. `<workdir>/tensorboard/images`.
        every_n_epochs: log after every n-th epoch, and after the last one `fit` runs.
        grid_size: `(gh, gw)` patch grid for the rollout image; None skips it.
        images: `(batch, H, W, 1 or 3)` images to overlay the rollout on; defaults to
            `sample_inputs` when those are such images.
        num_prefix_tokens: tokens before the patches (1 for a class token).
        name: tag prefix.
        max_outputs: most samples written per tag.
        min_image_size: images are written enlarged (`tfattn.visualize.upscale_images`)
            to at least this many pixels on their longer side: TensorBoard shows them at
            their stored size, where a 28x28 rollout is a speck.

    Example:
    >>> scores_model = keras.Model(model.input, [s1, s2])  # from return_attention_scores=True
    >>> AttentionMapCallback(x_val[:8], scores_model, tb_images_dir, grid_size=(4, 4))
    """

    def __init__(
        self,
        sample_inputs,
        attention_model_or_fn,
        log_dir,
        every_n_epochs=1,
        grid_size=None,
        images=None,
        num_prefix_tokens=0,
        name="attention",
        max_outputs=8,
        min_image_size=224,
    ):
        super().__init__(log_dir, every_n_epochs)
        if not callable(attention_model_or_fn):
            raise ValueError(
                "`attention_model_or_fn` must be a keras.Model or a callable returning "
                f"per-layer attention weights; got {type(attention_model_or_fn).__name__}."
            )
        if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
            raise ValueError(
                f"`num_prefix_tokens` must be a non-negative int; got {num_prefix_tokens!r}."
            )
        if images is None and grid_size is not None:
            candidate = np.asarray(sample_inputs) if not isinstance(sample_inputs, dict) else None
            if candidate is not None and candidate.ndim == 4 and candidate.shape[-1] in (1, 3):
                images = candidate
        self.sample_inputs = sample_inputs
        self.attention_fn = attention_model_or_fn
        self.grid_size = grid_size
        self.images = images
        self.num_prefix_tokens = num_prefix_tokens
        if type(min_image_size) is not int or min_image_size < 1:
            raise ValueError(f"`min_image_size` must be a positive int; got {min_image_size!r}.")
        self.name = name
        self.max_outputs = max_outputs
        self.min_image_size = min_image_size

    def attention_scores(self):
        """Runs the attention model on the sample batch: a list of float arrays per layer."""
        if isinstance(self.attention_fn, keras.Model):
            outputs = self.attention_fn(self.sample_inputs, training=False)
        else:
            outputs = self.attention_fn(self.sample_inputs)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        scores = [np.asarray(keras.ops.convert_to_numpy(s), dtype=np.float32) for s in outputs]
        for i, s in enumerate(scores):
            if s.ndim != 4:
                raise ValueError(
                    f"`attention_model_or_fn` must return per-layer attention weights of shape "
                    f"(batch, heads, q_len, k_len); output {i} has shape {s.shape}."
                )
        return scores

    def images_for(self, scores):
        """`{tag: float images (n, H, W, 3)}` for the given per-layer scores."""
        out = {f"{self.name}/last_layer": attention_heatmap_images(scores[-1])}
        if self.grid_size is not None:
            rollout = attention_rollout(scores)  # (batch, T, T)
            if self.num_prefix_tokens:
                maps = cls_attention_map(rollout, self.grid_size, self.num_prefix_tokens)
            else:
                gh, gw = self.grid_size
                if rollout.shape[-1] != gh * gw:
                    raise ValueError(
                        f"`grid_size`={tuple(self.grid_size)} needs {gh * gw} tokens with "
                        f"`num_prefix_tokens`=0; the attention has {rollout.shape[-1]} "
                        "(set `num_prefix_tokens` for class/register tokens)."
                    )
                maps = rollout.mean(axis=1)  # (batch, T): how much each patch feeds all tokens
            out[f"{self.name}/rollout"] = attention_heatmap_images(
                maps, self.grid_size, self.images
            )
        return out

    def on_train_begin(self, logs=None):
        self.images_for(self.attention_scores())  # fail early on shape mistakes
        super().on_train_begin(logs)

    def _write(self, epoch):
        for tag, images in self.images_for(self.attention_scores()).items():
            images = upscale_images(images[: self.max_outputs], self.min_image_size)
            tf.summary.image(tag, images, step=epoch, max_outputs=self.max_outputs)


class ImageHookCallback(_EpochImageWriter):
    """Logs the images an app draws (boxes, spectrograms, forecasts, confusion matrices).

    Args:
        fn: `fn(model, epoch) -> images`, float `(n, H, W, C)` with C in (1, 3, 4) and values
            in [0, 1] (a single `(H, W, C)` image is accepted). `figure_to_image` turns a
            matplotlib figure into such an array.
        log_dir: run folder, e.g. `<workdir>/tensorboard/images`.
        name: summary tag.
        every_n_epochs: log after every n-th epoch, and after the last one `fit` runs.
        max_outputs: most images written per epoch.

    Example:
    >>> def confusion(model, epoch):
    ...     return figure_to_image(plot_confusion(model.predict(x_val), y_val))
    >>> ImageHookCallback(confusion, tb_images_dir, "confusion_matrix")
    """

    def __init__(self, fn, log_dir, name, every_n_epochs=1, max_outputs=8):
        super().__init__(log_dir, every_n_epochs)
        if not callable(fn):
            raise ValueError(f"`fn` must be callable as fn(model, epoch); got {type(fn).__name__}.")
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string tag; got {name!r}.")
        self.fn = fn
        self.name = name
        self.max_outputs = max_outputs

    def _write(self, epoch):
        images = np.asarray(self.fn(self.model, epoch), dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"ImageHookCallback `fn` for {self.name!r} must return float images of shape "
                f"(n, H, W, C) with C in (1, 3, 4); got shape {images.shape}."
            )
        if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
            raise ValueError(
                f"ImageHookCallback `fn` for {self.name!r} must return finite values in [0, 1]; "
                f"got range [{np.nanmin(images)}, {np.nanmax(images)}]."
            )
        tf.summary.image(self.name, images, step=epoch, max_outputs=self.max_outputs)


def figure_to_image(fig, dpi=None):
    """Renders a matplotlib figure to a float32 `(1, H, W, 3)` batch in [0, 1].

    Draws on an Agg canvas, so it works headless and with `matplotlib.figure.Figure`
    (preferred over `pyplot` in callbacks: no global figure registry to leak into).

    Args:
        fig: a `matplotlib.figure.Figure`.
        dpi: optional resolution; the figure's own by default.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise ValueError(f"`fig` must be a matplotlib.figure.Figure; got {type(fig).__name__}.")
    if dpi is not None:
        fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # (H, W, 4) uint8
    return (rgba[None, ..., :3] / 255.0).astype(np.float32)
