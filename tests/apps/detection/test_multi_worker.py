"""The detection app end to end on two MultiWorkerMirroredStrategy workers on 127.0.0.1.

The pattern of tests/apps/speech/test_multi_worker.py with this app's command: training
with the per-epoch validation mAP (a local pycocotools evaluation on each worker) and the
TensorBoard image hooks on the chief, restoring the best checkpoint on both workers, the
COCO evaluation and the export on the chief only.
"""

import json
import os
import re
import sys

import pytest

from tests.training.mw_worker import free_port, run_workers

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multi_worker")]

TIMEOUT = 420


def test_trains_evaluates_and_exports_on_two_loopback_workers(tmp_path, e2e_scenes):
    workdir = str(tmp_path / "mw")
    # With the crop classifier (the scenes preset carries it): dynamic crop counts per replica.
    command = ["--preset", "test", "--data", e2e_scenes, "--strategy", "multi_worker",
               "--batch_size", "4", "--roi_crop_size", "16", "--workdir", workdir]
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    runs = [(command, {"cluster": cluster, "task": {"type": "worker", "index": i}})
            for i in range(2)]
    results = run_workers(str(tmp_path), runs, timeout=TIMEOUT,
                          command=[sys.executable, "-m", "apps.detection.train"])
    outputs = [out for _, out in results]
    for i, (rc, out) in enumerate(results):
        assert rc == 0, f"worker {i} exited {rc}:\n{out[-4000:]}"
    fingerprints = [re.findall(r"Weights fingerprint (\w+)", out) for out in outputs]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1], fingerprints
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["num_replicas"] == 2 and summary["epochs_run"] == 2
    assert {"map", "ap50"} <= set(summary["test"])
    assert sorted(os.listdir(os.path.join(workdir, "export", "detection"))) == ["1"]
    assert "TF Serving:" in outputs[0] and "TF Serving:" not in outputs[1]
