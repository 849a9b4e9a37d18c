"""A real TensorBoard server lists the scalar, image and text tags our callbacks write."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import pytest

from tests.training.resume_script import BATCH_SIZE, build_model, load_data
from tfattn.training.callbacks import AttentionMapCallback, standard_callbacks

TENSORBOARD = Path(sys.executable).with_name("tensorboard")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


def _wait_for(fetch, ready, proc, timeout):
    """Polls `fetch()` until `ready(result)`; fails with the last result or error."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"tensorboard exited early (rc={proc.returncode}); see tensorboard.log")
        try:
            last = fetch()
            if ready(last):
                return last
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
            last = e
        time.sleep(0.5)
    pytest.fail(f"tensorboard not ready within {timeout} s; last answer: {last!r}")


@pytest.mark.slow
def test_tensorboard_server_lists_run_tags(tmp_path):
    x, y, xv, yv = load_data()
    model, scores_model = build_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks = standard_callbacks(tmp_path, config={"model": "tiny"})
    callbacks.append(AttentionMapCallback(xv[:4], scores_model,
                                          tmp_path / "tensorboard" / "images", grid_size=(4, 4)))
    model.fit(x, y, validation_data=(xv, yv), batch_size=BATCH_SIZE, epochs=2,
              callbacks=callbacks, verbose=0)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    log = open(tmp_path / "tensorboard.log", "wb")  # a file, not a pipe: it never fills up
    proc = subprocess.Popen(
        [str(TENSORBOARD), "--logdir", str(tmp_path / "tensorboard"), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        runs = _wait_for(lambda: _get_json(f"{base}/data/runs"),
                         lambda r: {"train", "validation", "config", "images"} <= set(r),
                         proc, timeout=120)
        assert {"train", "validation", "config", "images"} <= set(runs)

        scalars = _wait_for(lambda: _get_json(f"{base}/data/plugin/scalars/tags"),
                            lambda t: "epoch_learning_rate" in t.get("train", {}), proc, 60)
        assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(scalars["train"])
        assert {"epoch_loss", "epoch_accuracy"} <= set(scalars["validation"])

        images = _get_json(f"{base}/data/plugin/images/tags")
        assert {"attention/last_layer", "attention/rollout"} <= set(images["images"])
        assert images["images"]["attention/rollout"]["samples"] == 4

        text = _get_json(f"{base}/data/plugin/text/tags")
        assert text["config"] == ["config"]

        loss = _get_json(f"{base}/data/plugin/scalars/scalars?run=train&tag=epoch_loss")
        assert [step for _, step, _ in loss] == [0, 1]  # [wall_time, step, value] per epoch
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()
