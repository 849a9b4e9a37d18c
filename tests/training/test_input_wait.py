"""Input-pipeline measurement: the wait share of each training step, the pipeline's own speed."""

import json
import math
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfattn.training import InputWaitCallback, benchmark_pipeline


def _model():
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _dataset(batches, batch_size=16, sleep_s=0.0):
    """`batches` batches of (4, 4, 1) images; each sleeps `sleep_s` on the consumer's side."""
    x = np.random.default_rng(0).random((batches * batch_size, 4, 4, 1), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(len(x)) % 3)).batch(batch_size)
    if sleep_s:

        def slow(images, labels):
            done = tf.py_function(lambda: time.sleep(sleep_s) or 0, [], tf.int32)
            with tf.control_dependencies([done]):
                return tf.identity(images), labels

        ds = ds.map(slow)
    return ds


def _fit_with_input_wait(sleep_s):
    wait = InputWaitCallback(warmup=3)
    history = _model().fit(wait.wrap(_dataset(24, sleep_s=sleep_s)), epochs=2, callbacks=[wait],
                           verbose=0)
    return wait, history


def test_input_wait_callback_sees_a_slow_pipeline():
    slow, slow_history = _fit_with_input_wait(0.03)
    fast, _ = _fit_with_input_wait(0.0)
    slow_summary, fast_summary = slow.summary(), fast.summary()
    assert slow_summary["steps"] == fast_summary["steps"] == 2 * 24 - 3
    assert slow_summary["mean_wait_ms"] >= 15
    assert fast_summary["mean_wait_ms"] < slow_summary["mean_wait_ms"]
    assert fast.input_wait_fraction < slow.input_wait_fraction <= 1.0
    assert slow_summary["fraction"] == slow.input_wait_fraction
    assert slow_summary["mean_step_ms"] >= slow_summary["mean_wait_ms"]
    assert slow_summary["images_per_s"] > 0
    fractions = slow_history.history["input_wait_fraction"]
    assert len(fractions) == 2 and all(0.2 < f <= 1.0 for f in fractions)
    json.dumps(slow_summary)  # goes into the app's summary.json


def test_an_epoch_without_measured_steps_logs_no_value_not_nan(tmp_path):
    # 4 steps an epoch, 5 warm-up steps: epoch 1 has nothing measured, epoch 2 three steps.
    wait = InputWaitCallback(warmup=5)
    logged = []
    spy = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logged.append(dict(logs)))
    tensorboard = keras.callbacks.TensorBoard(str(tmp_path), write_graph=False)
    history = _model().fit(wait.wrap(_dataset(4)), epochs=2, verbose=0,
                           callbacks=[wait, spy, tensorboard])
    assert "input_wait_fraction" not in logged[0]
    assert 0.0 <= logged[1]["input_wait_fraction"] <= 1.0
    assert len(history.history["input_wait_fraction"]) == 1
    assert wait.summary()["steps"] == 3

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0})
    events.Reload()
    scalars = {e.step: float(tf.make_ndarray(e.tensor_proto))
               for e in events.Tensors("epoch_input_wait_fraction")}
    assert list(scalars) == [1] and math.isfinite(scalars[1])


def test_input_wait_callback_without_wrap_logs_nothing_and_warns(caplog):
    x = np.zeros((32, 4), np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    wait = InputWaitCallback(warmup=0)
    ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(8)
    with caplog.at_level("WARNING", logger="tfattn.training.input_wait"):
        history = model.fit(ds, epochs=1, callbacks=[wait], verbose=0)
    summary = wait.summary()
    assert summary["steps"] == 4 and summary["mean_step_ms"] > 0
    assert math.isnan(summary["fraction"]) and math.isnan(summary["mean_wait_ms"])
    assert "input_wait_fraction" not in history.history
    assert "wrap(train_ds)" in caplog.text


def test_benchmark_pipeline_returns_throughput():
    ds = _dataset(3, batch_size=8).unbatch().take(20).batch(8)  # batches of 8, 8, 4
    result = benchmark_pipeline(ds, steps=7, warmup=2)  # 3 batches an epoch: repeats
    assert result["steps"] == 7 and result["seconds"] > 0
    assert result["batches_per_s"] > 0
    # Epochs are batches of 8, 8, 4: after the warm-up 8, 8 come 4, 8, 8, 4, 8, 8, 4.
    np.testing.assert_allclose(result["images_per_s"] / result["batches_per_s"], 44 / 7)
    with pytest.raises(ValueError, match="no batches"):
        benchmark_pipeline(ds.take(0), steps=1)
    with pytest.raises(ValueError, match="steps >= 1"):
        benchmark_pipeline(ds, steps=0)
