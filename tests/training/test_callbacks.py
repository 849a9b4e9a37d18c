"""Schedules, standard callbacks and image callbacks, checked through TensorBoard's event reader."""

import dataclasses
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from tests.training.resume_script import BATCH_SIZE, STEPS_PER_EPOCH, build_model, load_data
from tfattn.schedules import WarmupCosine, warmup_cosine
from tfattn.training.callbacks import (
    AttentionMapCallback,
    ImageHookCallback,
    LearningRateLogger,
    TimeBudget,
    figure_to_image,
    standard_callbacks,
)


@dataclasses.dataclass
class TinyConfig:
    epochs: int = 2
    hidden_dim: int = 16
    preset: str = "tiny"


def _reader(run_dir):
    acc = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def _train(workdir, epochs=2, callbacks=(), **kwargs):
    x, y, xv, yv = load_data()
    model, scores_model = build_model()
    schedule = warmup_cosine(3e-3, epochs, STEPS_PER_EPOCH, warmup_epochs=0.5)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,  # XLA compile time would dominate these tiny runs
    )
    cbs = standard_callbacks(workdir, **kwargs) + [
        cb(scores_model, xv) if callable(cb) and not isinstance(cb, keras.callbacks.Callback) else cb
        for cb in callbacks
    ]
    history = model.fit(x, y, validation_data=(xv, yv), batch_size=BATCH_SIZE, epochs=epochs,
                        callbacks=cbs, verbose=0)
    return model, history


# --- WarmupCosine --------------------------------------------------------------------------


def _expected_lr(step, peak, total, warmup, end):
    if step < warmup:
        return peak * step / warmup
    p = min((step - warmup) / (total - warmup), 1.0)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * p))


@pytest.mark.parametrize("warmup,end", [(10, 0.0), (0, 0.0), (10, 1e-4)])
def test_warmup_cosine_key_steps(warmup, end):
    peak, total = 1e-3, 110
    schedule = WarmupCosine(peak, total, warmup_steps=warmup, end_learning_rate=end)
    steps = [0, warmup // 2, warmup, warmup + (total - warmup) // 2, total - 1, total, total + 50]
    got = [float(schedule(s)) for s in steps]
    np.testing.assert_allclose(got, [_expected_lr(s, peak, total, warmup, end) for s in steps],
                               rtol=1e-6, atol=1e-10)
    assert got[2] == pytest.approx(peak)  # peak at the end of warmup
    assert got[3] == pytest.approx((peak + end) / 2)  # half way down the cosine
    assert got[-2] == pytest.approx(end) and got[-1] == pytest.approx(end)
    if warmup:
        assert got[0] == 0.0 and got[1] == pytest.approx(peak / 2)


def test_warmup_cosine_from_epochs():
    schedule = warmup_cosine(2e-3, epochs=10, steps_per_epoch=5, warmup_epochs=0.5)
    assert (schedule.total_steps, schedule.warmup_steps) == (50, 2)  # round(2.5) -> 2


def test_warmup_cosine_saved_with_optimizer(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    schedule = WarmupCosine(1e-3, 100, warmup_steps=10, end_learning_rate=1e-5)
    model.compile(optimizer=keras.optimizers.AdamW(schedule), loss="mse")
    model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=2, epochs=1, verbose=0)  # 4 steps
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = keras.optimizers.schedules.deserialize(loaded.optimizer.get_config()["learning_rate"])
    assert isinstance(restored, WarmupCosine)
    assert restored.get_config() == schedule.get_config()
    assert int(loaded.optimizer.iterations) == 4
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(schedule(4)))
    rebuilt = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(rebuilt(57)) == pytest.approx(float(schedule(57)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(peak_learning_rate=0.0, total_steps=10), "peak_learning_rate"),
        (dict(peak_learning_rate=1e-3, total_steps=0), "total_steps"),
        (dict(peak_learning_rate=1e-3, total_steps=10.5), "total_steps"),
        (dict(peak_learning_rate=1e-3, total_steps=10, warmup_steps=10), "warmup_steps"),
        (dict(peak_learning_rate=1e-3, total_steps=10, warmup_steps=-1), "warmup_steps"),
        (dict(peak_learning_rate=1e-3, total_steps=10, end_learning_rate=1e-2), "end_learning_rate"),
    ],
)
def test_warmup_cosine_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosine(**kwargs)


def test_warmup_cosine_helper_bad_arguments():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        warmup_cosine(1e-3, epochs=3, steps_per_epoch=0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        warmup_cosine(1e-3, epochs=3, steps_per_epoch=4, warmup_epochs=3)


# --- standard_callbacks --------------------------------------------------------------------


@pytest.mark.slow  # ~15-25 s on a busy 2-core CPU, mostly tf.function tracing
def test_standard_callbacks_write_scalars_config_and_best_model(tmp_path):
    epochs = 2
    model, history = _train(tmp_path, epochs=epochs, config=TinyConfig())
    tb = tmp_path / "tensorboard"

    train = _reader(tb / "train")
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(train.Tags()["tensors"])
    lr = _scalars(train, "epoch_learning_rate")
    schedule = warmup_cosine(3e-3, epochs, STEPS_PER_EPOCH, warmup_epochs=0.5)  # as in _train
    # The logged rate is the one for the next step, after each epoch's steps.
    want = {e: float(schedule(STEPS_PER_EPOCH * (e + 1))) for e in range(epochs)}
    assert lr.keys() == want.keys()
    for e in range(epochs):
        assert lr[e] == pytest.approx(want[e], rel=1e-6)
    assert history.history["learning_rate"] == pytest.approx([want[e] for e in range(epochs)])
    loss = _scalars(train, "epoch_loss")
    assert [loss[e] for e in range(epochs)] == pytest.approx(history.history["loss"], rel=1e-6)
    val = _reader(tb / "validation")
    assert sorted(_scalars(val, "epoch_loss")) == list(range(epochs))

    text = _reader(tb / "config")
    assert text.Tags()["tensors"] == ["config"]
    raw = tf.make_ndarray(text.Tensors("config")[0].tensor_proto)
    logged = json.loads(raw.item().decode().replace("\n    ", "\n"))
    assert logged == dataclasses.asdict(TinyConfig())

    best = tmp_path / "checkpoints" / "best.keras"
    assert best.exists()
    record = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert record["monitor"] == "val_loss"
    assert record["value"] == pytest.approx(min(history.history["val_loss"]))
    reloaded = keras.models.load_model(best)
    assert reloaded.count_params() == model.count_params()
    assert not (tmp_path / "backup").exists()  # BackupAndRestore cleans up after fit


def test_standard_callbacks_contents_and_order(tmp_path):
    cbs = standard_callbacks(tmp_path, early_stopping_patience=3, monitor="val_accuracy",
                             mode="max")
    kinds = [type(cb).__name__ for cb in cbs]
    assert kinds[:2] == ["LearningRateLogger", "TerminateOnNaN"]
    assert kinds[-1] == "BackupAndRestore"  # the backup is written last in each epoch
    assert {"ModelCheckpoint", "EarlyStopping", "TensorBoard"} <= set(kinds)
    backup = cbs[-1]
    assert backup.backup_dir == os.path.join(str(tmp_path), "backup")
    assert backup.save_freq == "epoch"
    stop = next(cb for cb in cbs if isinstance(cb, keras.callbacks.EarlyStopping))
    assert (stop.monitor, stop.patience) == ("val_accuracy", 3)


@pytest.mark.slow  # ~15-25 s on a busy 2-core CPU, mostly tf.function tracing
def test_non_chief_writes_no_tensorboard_or_checkpoints(tmp_path):
    _train(tmp_path, epochs=1, chief=False, worker_index=1, config={"a": 1})
    assert not (tmp_path / "tensorboard").exists()
    assert not (tmp_path / "checkpoints").exists()
    kinds = {type(cb).__name__ for cb in standard_callbacks(tmp_path, chief=False, worker_index=1)}
    assert kinds == {"LearningRateLogger", "TerminateOnNaN", "BackupAndRestore"}
    backup = standard_callbacks(tmp_path, chief=False, worker_index=1)[-1]
    assert backup.backup_dir.endswith(os.path.join("backup_workers", "worker_1"))


def test_non_chief_worker_index_from_tf_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {}, "task": {"type": "worker", "index": 2}}))
    assert standard_callbacks(tmp_path, chief=False)[-1].backup_dir.endswith("worker_2")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="worker_index"):
        standard_callbacks(tmp_path, chief=False)


def test_resumed_run_keeps_best_value(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.json").write_text(
        json.dumps({"monitor": "val_loss", "value": 0.25, "epoch": 3}))
    fresh = next(cb for cb in standard_callbacks(tmp_path)
                 if isinstance(cb, keras.callbacks.ModelCheckpoint))
    assert fresh.best is None  # no backup: a new run, an old record is ignored
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 4, "batch": 0}')
    resumed = next(cb for cb in standard_callbacks(tmp_path)
                   if isinstance(cb, keras.callbacks.ModelCheckpoint))
    assert resumed.best == 0.25
    (tmp_path / "checkpoints" / "best.json").write_text("{not json")
    with pytest.raises(ValueError, match="best.json"):
        standard_callbacks(tmp_path)


@pytest.mark.slow  # ~15-25 s on a busy 2-core CPU, mostly tf.function tracing
def test_profiler_writes_trace(tmp_path):
    _train(tmp_path, epochs=1, profile_batches=(2, 3))
    profile = tmp_path / "tensorboard" / "train" / "plugins" / "profile"
    files = [f for _, _, fs in os.walk(profile) for f in fs]
    assert any(f.endswith(".xplane.pb") for f in files), files


def test_terminate_on_nan_stops_training(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e3), loss="mse")
    x = np.full((64, 2), 1e20, "float32")
    history = model.fit(x, np.ones((64, 1)), batch_size=8, epochs=5, verbose=0,
                        callbacks=standard_callbacks(tmp_path, monitor="loss"))
    assert len(history.history.get("loss", [])) <= 1  # stopped in the first epoch


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="lowest"), "mode"),
        (dict(monitor=""), "monitor"),
        (dict(early_stopping_patience=-1), "early_stopping_patience"),
        (dict(profile_batches=(3, 1)), "profile_batches"),
        (dict(profile_batches="1,2"), "profile_batches"),
        (dict(backup_save_freq=0), "backup_save_freq"),
        (dict(config=["not", "a", "dict"]), "config"),
        (dict(chief=False, worker_index=-1), "worker_index"),
    ],
)
def test_standard_callbacks_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        standard_callbacks(tmp_path, **kwargs)


def test_standard_callbacks_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="workdir"):
        standard_callbacks(blocker / "run")


def test_learning_rate_logger_unwraps_loss_scale_optimizer():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.125)), "mse")
    history = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=1, verbose=0,
                        callbacks=[LearningRateLogger()])
    assert history.history["learning_rate"] == [0.125]


# --- image callbacks ------------------------------------------------------------------------


@pytest.mark.slow  # ~15-25 s on a busy 2-core CPU, mostly tf.function tracing
def test_attention_map_callback_writes_images(tmp_path):
    log_dir = tmp_path / "tensorboard" / "images"
    _train(tmp_path, epochs=2, callbacks=[
        lambda scores_model, xv: AttentionMapCallback(xv[:4], scores_model, log_dir,
                                                      grid_size=(4, 4))])
    images = _reader(log_dir)
    tags = set(images.Tags()["tensors"])
    assert {"attention/last_layer", "attention/rollout"} <= tags
    # Stored enlarged to >= 224 px (x14 for the 16x16 token map, x28 for the 8x8 images).
    for tag, size in (("attention/last_layer", (224, 224)), ("attention/rollout", (224, 224))):
        events = images.Tensors(tag)
        assert [e.step for e in events] == [0, 1]
        # Image summaries hold [width, height, png_1, ..., png_n].
        blobs = tf.make_ndarray(events[-1].tensor_proto)
        assert [int(b) for b in blobs[:2]] == [size[1], size[0]] and len(blobs) == 2 + 4
        png = tf.io.decode_png(blobs[2])
        assert png.shape == (*size, 3)


def test_attention_map_callback_every_n_epochs_and_callable(tmp_path):
    calls = []

    def fake_scores(x):
        calls.append(len(x))
        w = np.random.default_rng(0).random((len(x), 2, 17, 17))
        return [w / w.sum(-1, keepdims=True)]  # one layer, class token + 4x4 patches

    cb = AttentionMapCallback(np.zeros((3, 8, 8, 1), "float32"), fake_scores, tmp_path,
                              every_n_epochs=2, grid_size=(4, 4), num_prefix_tokens=1)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 1)), np.ones((4, 1)), epochs=5, verbose=0, callbacks=[cb])
    events = _reader(tmp_path).Tensors("attention/rollout")
    # Epochs 2 and 4 (steps 1, 3), and the last epoch run (step 4) at train end.
    assert [e.step for e in events] == [1, 3, 4]
    assert len(calls) == 1 + 3  # the train-begin check plus three logged epochs


def test_attention_map_callback_stores_readable_image_sizes(tmp_path):
    def fake_scores(x):
        w = np.random.default_rng(0).random((len(x), 2, 50, 50))
        return [w / w.sum(-1, keepdims=True)]  # class token + 7x7 patches

    images = np.random.default_rng(1).random((2, 28, 28, 1)).astype("float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    sizes = {}
    for min_size in (224, 100):
        cb = AttentionMapCallback(images, fake_scores, tmp_path / str(min_size), grid_size=(7, 7),
                                  num_prefix_tokens=1, min_image_size=min_size)
        model.fit(np.ones((4, 1)), np.ones((4, 1)), epochs=1, verbose=0, callbacks=[cb])
        reader = _reader(tmp_path / str(min_size))
        for tag in ("attention/last_layer", "attention/rollout"):
            blobs = tf.make_ndarray(reader.Tensors(tag)[-1].tensor_proto)
            sizes[min_size, tag] = tf.io.decode_png(blobs[2]).shape
    assert sizes[224, "attention/rollout"] == (224, 224, 3)  # the 28x28 overlay, x8
    assert sizes[224, "attention/last_layer"] == (250, 250, 3)  # the 50x50 token map, x5
    assert sizes[100, "attention/rollout"] == (112, 112, 3)
    with pytest.raises(ValueError, match="min_image_size"):
        AttentionMapCallback(images, fake_scores, tmp_path, min_image_size=0)


@pytest.mark.parametrize("epochs,steps", [(3, [2]), (4, [2, 3]), (2, [1])])
def test_image_hook_every_n_epochs_writes_last_epoch_once(tmp_path, epochs, steps):
    written = []

    def draw(model, epoch):
        written.append(epoch)
        return np.zeros((1, 4, 4, 3), np.float32)

    hook = ImageHookCallback(draw, tmp_path, "img", every_n_epochs=3)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 1)), np.ones((4, 1)), epochs=epochs, verbose=0, callbacks=[hook])
    assert written == steps
    assert [e.step for e in _reader(tmp_path).Tensors("img")] == steps


def test_attention_map_callback_shape_errors_before_training(tmp_path):
    x, y, xv, _ = load_data()
    model, scores_model = build_model()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    epochs_run = []
    spy = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epochs_run.append(e))
    bad_grid = AttentionMapCallback(xv[:2], scores_model, tmp_path, grid_size=(3, 3))
    with pytest.raises(ValueError, match="grid_size"):
        model.fit(x[:32], y[:32], epochs=1, verbose=0, callbacks=[bad_grid, spy])
    assert epochs_run == []
    not_scores = AttentionMapCallback(xv[:2], lambda inputs: np.zeros((2, 10)), tmp_path)
    with pytest.raises(ValueError, match="attention_model_or_fn"):
        model.fit(x[:32], y[:32], epochs=1, verbose=0, callbacks=[not_scores])
    with pytest.raises(ValueError, match="attention_model_or_fn"):
        AttentionMapCallback(xv[:2], "scores", tmp_path)
    with pytest.raises(ValueError, match="every_n_epochs"):
        AttentionMapCallback(xv[:2], scores_model, tmp_path, every_n_epochs=0)


def _confusion_figure(model, epoch):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5), dpi=50)
    ax = fig.add_subplot()
    ax.imshow(np.eye(3) * (epoch + 1))
    ax.set_title(f"epoch {epoch}")
    return figure_to_image(fig)


def test_image_hook_callback_and_figure_to_image(tmp_path):
    image = _confusion_figure(None, 0)
    assert image.shape == (1, 75, 100, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0

    hook = ImageHookCallback(_confusion_figure, tmp_path, "confusion_matrix")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 1)), np.ones((4, 1)), epochs=2, verbose=0, callbacks=[hook])
    events = _reader(tmp_path).Tensors("confusion_matrix")
    assert [e.step for e in events] == [0, 1]
    png = tf.io.decode_png(tf.make_ndarray(events[0].tensor_proto)[2])
    assert png.shape == (75, 100, 3)


@pytest.mark.parametrize(
    "images,match",
    [(np.full((1, 4, 4, 3), 2.0), r"\[0, 1\]"), (np.zeros((4, 4)), "shape"),
     (np.zeros((1, 4, 4, 2)), "shape")],
)
def test_image_hook_callback_bad_images(tmp_path, images, match):
    hook = ImageHookCallback(lambda model, epoch: images, tmp_path, "bad")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=match):
        model.fit(np.ones((4, 1)), np.ones((4, 1)), epochs=1, verbose=0, callbacks=[hook])


def test_image_hook_and_figure_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="fn"):
        ImageHookCallback("not callable", tmp_path, "x")
    with pytest.raises(ValueError, match="name"):
        ImageHookCallback(lambda m, e: None, tmp_path, "")
    with pytest.raises(ValueError, match="fig"):
        figure_to_image(np.zeros((4, 4)))


# --- resizable schedule + TimeBudget --------------------------------------------------------


def test_resizable_warmup_cosine_changes_plan_inside_a_compiled_step():
    schedule = WarmupCosine(1e-3, 100, warmup_steps=10, end_learning_rate=1e-5, resizable=True)
    fixed = WarmupCosine(1e-3, 60, warmup_steps=10, end_learning_rate=1e-5)
    rate = tf.function(lambda step: schedule(step), jit_compile=True)  # traced once
    assert float(rate(50)) == pytest.approx(float(WarmupCosine(1e-3, 100, 10, 1e-5)(50)))
    schedule.resize(60)
    for step in (5, 30, 59, 60, 80):  # the compiled function sees the new plan
        assert float(rate(step)) == pytest.approx(float(fixed(step)), rel=1e-6)
    assert schedule.get_config()["total_steps"] == 60
    rebuilt = WarmupCosine.from_config(schedule.get_config())
    assert rebuilt.resizable and float(rebuilt(30)) == pytest.approx(float(fixed(30)))
    with pytest.raises(ValueError, match=r"`total_steps` \(10\) must be > `warmup_steps` \(10\)"):
        schedule.resize(10)
    with pytest.raises(ValueError, match="resizable=False"):
        fixed.resize(50)


class _Clock:
    """Stands in for TimeBudget's clock; the test advances `now`."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run_budget(monkeypatch, minutes, epoch_seconds, epochs, schedule=None, steps=10):
    clock = _Clock()
    monkeypatch.setattr(TimeBudget, "clock", clock)
    budget = TimeBudget(minutes, schedule=schedule, steps_per_epoch=steps)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    budget.set_model(model)
    model.stop_training = False
    budget.on_train_begin()
    ran = 0
    for epoch in range(epochs):  # what fit does: stop after the epoch that asked for it
        clock.now += epoch_seconds[epoch]
        budget.on_epoch_end(epoch)
        ran += 1
        if model.stop_training:
            break
    return budget, ran, clock.now


def test_time_budget_without_schedule_stops_after_crossing(monkeypatch):
    budget, ran, elapsed = _run_budget(monkeypatch, 1.0, [25.0] * 10, epochs=10)
    assert (ran, budget.stopped_epoch, elapsed) == (3, 2, 75.0)  # 75 s: crossed the 60 s budget
    budget, ran, _ = _run_budget(monkeypatch, None, [25.0] * 10, epochs=10)
    assert (ran, budget.stopped_epoch) == (10, None)


def test_time_budget_fits_the_schedule_into_the_budget(monkeypatch):
    # 10 planned epochs of 10 steps; the first epoch (compilation) takes 20 s, then 9 s each:
    # 20 + 9 * 8 = 92 s <= 100 s, a 10th epoch would end at 101 s. So 9 epochs fit.
    schedule = warmup_cosine(1e-3, 10, 10, warmup_epochs=1, resizable=True)
    budget, ran, elapsed = _run_budget(
        monkeypatch, 100 / 60, [20.0] + [9.0] * 9, epochs=10, schedule=schedule
    )
    assert (ran, budget.planned_epochs, schedule.total_steps, budget.stopped_epoch) == (9, 9, 90, 8)
    assert elapsed <= 100
    assert float(schedule(90)) == pytest.approx(0.0, abs=1e-9)  # fully decayed at the stop
    # A slow epoch shortens the plan (mean epoch 19.5 s: 5 epochs fit); faster ones give
    # epochs back, up to what the time left allows.
    schedule = warmup_cosine(1e-3, 10, 10, warmup_epochs=1, resizable=True)
    budget, ran, elapsed = _run_budget(
        monkeypatch, 100 / 60, [20.0, 9.0, 30.0] + [9.0] * 7, epochs=10, schedule=schedule
    )
    assert (ran, budget.planned_epochs, budget.stopped_epoch) == (7, 7, 6) and elapsed <= 100
    # Enough time: the plan is kept and the run ends by itself (not "stopped by the budget").
    schedule = warmup_cosine(1e-3, 4, 10, warmup_epochs=1, resizable=True)
    budget, ran, _ = _run_budget(monkeypatch, 10.0, [20.0] * 4, epochs=4, schedule=schedule)
    assert (ran, budget.planned_epochs, schedule.total_steps, budget.stopped_epoch) == (4, 4, 40, None)


def test_time_budget_keeps_a_margin_for_epoch_spread(monkeypatch):
    # Steady epochs alternate 8 / 12 s (median absolute deviation 2 s: a 6 s margin). After
    # epoch 8 (89 s) a 9th epoch of mean length would end at ~99 s, inside the 100 s budget,
    # but a 12 s one would not: with the margin the plan ends on epoch 8 instead.
    schedule = warmup_cosine(1e-3, 10, 10, warmup_epochs=1, resizable=True)
    budget, ran, elapsed = _run_budget(
        monkeypatch, 100 / 60, [20.0, 8, 12, 8, 12, 8, 12, 9, 12, 12], epochs=10,
        schedule=schedule,
    )
    assert (ran, budget.planned_epochs, budget.stopped_epoch, elapsed) == (8, 8, 7, 89.0)
    assert float(schedule(80)) == pytest.approx(0.0, abs=1e-9)


def test_time_budget_rejects_a_fixed_schedule():
    with pytest.raises(ValueError, match="resizable=True"):
        TimeBudget(30, schedule=warmup_cosine(1e-3, 4, 10))
    with pytest.raises(ValueError, match="`steps_per_epoch` must be a positive int"):
        TimeBudget(30, schedule=warmup_cosine(1e-3, 4, 10, resizable=True))


def test_fit_epochs_counts_resumed_epochs():
    from tfattn.training import fit_epochs

    class History:
        epoch = [2, 3]

    assert fit_epochs(History()) == {"epochs_run": 4, "resumed_from_epoch": 2}
    History.epoch = [0, 1, 2]
    assert fit_epochs(History()) == {"epochs_run": 3, "resumed_from_epoch": 0}
    History.epoch = []
    assert fit_epochs(History()) == {"epochs_run": 0, "resumed_from_epoch": 0}


def test_epochs_text_says_when_a_run_resumed():
    from tfattn.training import epochs_text

    fresh = {"epochs_run": 4, "resumed_from_epoch": 0, "train_seconds": 12.4}
    assert epochs_text(fresh) == "4 epochs (12 s)"
    resumed = dict(fresh, resumed_from_epoch=2, train_seconds=6.0)
    assert epochs_text(resumed) == "4 epochs (resumed after epoch 2: 2 epochs in 6 s)"
