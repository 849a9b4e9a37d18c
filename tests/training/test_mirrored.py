"""MirroredStrategy on two logical CPU devices vs one device (keras#21069, #21172).

Logical devices must be configured before TensorFlow initialises, so each run is a
fresh subprocess (tests/training/mw_worker.py). Same data, model and global batches
as the multi-worker test; tolerances: per-step losses rtol 1e-4 (measured 1.1e-7),
final weights atol 1e-3 (measured 4.1e-5 with tf.data input, 3.4e-5 with NumPy
arrays), no NaN.
"""

import json
import os

import numpy as np
import pytest

from tests.training.mw_worker import run_workers


def _load(out):
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    with np.load(os.path.join(out, "weights.npz")) as weights:
        return result, [weights[f"arr_{i}"] for i in range(len(weights.files))]


@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_one_device(tmp_path):
    mirrored = ["--strategy", "mirrored", "--logical-cpus", "2"]
    runs = [
        (["--out", str(tmp_path / "mirrored"), *mirrored], None),
        # NumPy arrays + batch_size: the input path of the NaN reports (keras#21061).
        (["--out", str(tmp_path / "mirrored_numpy"), *mirrored, "--numpy"], None),
        (["--out", str(tmp_path / "single"), "--strategy", "one_device"], None),
    ]
    for rc, log in run_workers(str(tmp_path), runs, timeout=300):
        assert rc == 0, log[-3000:]
    single, w_single = _load(tmp_path / "single")
    assert single["num_replicas"] == 1
    assert single["step_losses"][-1] < single["step_losses"][0] - 0.1
    for name in ("mirrored", "mirrored_numpy"):
        result, weights = _load(tmp_path / name)
        assert result["num_replicas"] == 2
        assert np.all(np.isfinite(result["step_losses"])), name
        np.testing.assert_allclose(result["step_losses"], single["step_losses"], rtol=1e-4)
        np.testing.assert_allclose(result["eval_loss"], single["eval_loss"], rtol=1e-4)
        for a, b in zip(weights, w_single):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)
