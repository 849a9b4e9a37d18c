"""The forecasting app end to end on two MultiWorkerMirroredStrategy workers on 127.0.0.1.

The pattern of tests/apps/vit/test_multi_worker.py with this app's command written out:
training with every TensorBoard hook (the image hooks predict on the chief alone),
restoring the best checkpoint on both workers, the test backtest on each worker (a local
predict), export on the chief only.
"""

import json
import os
import re
import sys

import numpy as np
import pytest
import tensorflow as tf

from apps.forecast import evaluate as fev
from apps.forecast import export as fex
from apps.forecast.config import Config
from tests.training.mw_worker import free_port, run_workers
from tfattn import training

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multi_worker")]

TIMEOUT = 420
COMMAND = ["-m", "apps.forecast.train", "--preset", "test", "--epochs", "2",
           "--strategy", "multi_worker", "--verbose", "0"]


def _tags(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(directory, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags.get("images", [])) | set(tags.get("tensors", [])) | set(tags.get("scalars", []))


def test_trains_backtests_and_exports_on_two_loopback_workers(tmp_path):
    workdir = str(tmp_path / "mw")
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    runs = [([*COMMAND[2:], "--workdir", workdir],
             {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
    results = run_workers(str(tmp_path), runs, timeout=TIMEOUT, command=[sys.executable, *COMMAND[:2]])
    outputs = [out for _, out in results]
    for i, (rc, out) in enumerate(results):
        assert rc == 0, f"worker {i} exited {rc}:\n{out[-4000:]}"

    # Both workers end with the chief's best weights and print the same test backtest.
    fingerprints = [re.findall(r"Weights fingerprint (\w+)", out) for out in outputs]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1], fingerprints
    maes = [re.findall(r"Test MAE (\d+\.\d+)", out) for out in outputs]
    assert len(maes[0]) == 1 and maes[0] == maes[1], maes

    # The chief wrote the run (and the export); the other worker only its emptied backup.
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["num_replicas"] == 2 and summary["epochs_run"] == 2
    assert f"{summary['test_mae']:.4f}" == maes[0][0]
    expected = {"backup_workers", "checkpoints", "config.json", "export", "model.keras",
                "preprocessing.json", "summary.json", "tensorboard"}
    assert set(os.listdir(workdir)) == expected, os.listdir(workdir)
    assert sorted(os.listdir(os.path.join(workdir, "export", "forecast"))) == [
        "1", "forecast_v1.keras"]
    assert "TF Serving:" in outputs[0] and "TF Serving:" not in outputs[1]
    images = _tags(os.path.join(workdir, "tensorboard", "images"))
    assert {"forecasts", "error_by_horizon", "attention/over_input_patches"} <= images, images

    # The printed test MAE is a single-process backtest of the exported model.
    cfg = training.load_config(Config, os.path.join(workdir, "config.json"))
    data = fev.load_data(cfg)
    w = data.windows("test", cfg.lookback, cfg.horizon, cfg.backtest_stride)
    meta = fex.read_meta(summary["saved_model"], fex.META_FILE)
    inputs = fex.raw_inputs(data, w, meta)
    serve = tf.saved_model.load(summary["saved_model"]).signatures["serving_default"]
    forecast = serve(**{k: tf.constant(v) for k, v in inputs.items()})["forecast"].numpy()
    actual = data.raw_windows(w).future_targets
    assert float(np.mean(np.abs(forecast - actual))) == pytest.approx(summary["test_mae"], rel=1e-5)
