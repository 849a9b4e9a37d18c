"""The speech app end to end on two MultiWorkerMirroredStrategy workers on 127.0.0.1.

The pattern of tests/apps/vit/test_multi_worker.py with this app's command: training with
the validation WER/CER callback (a local decode on each worker) and every TensorBoard hook
(spectrograms, attention, transcripts on the chief), restoring the best checkpoint on both
workers, the test evaluation on each worker, export on the chief only.
"""

import json
import os
import re
import sys

import pytest

from tests.training.mw_worker import free_port, run_workers

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multi_worker")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
CORPUS = os.path.join(REPO, "data", "speech", "digits")
TIMEOUT = 420
COMMAND = ["-m", "apps.speech.train", "--preset", "test", "--epochs", "2", "--data", CORPUS,
           "--limit_utterances", "48", "--batch_size", "4",
           "--strategy", "multi_worker", "--verbose", "0"]


def test_trains_evaluates_and_exports_on_two_loopback_workers(tmp_path):
    if not os.path.exists(os.path.join(CORPUS, "metadata.csv")):
        pytest.skip("data/speech/digits missing: run `make data-speech` (make test does)")
    workdir = str(tmp_path / "mw")
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    runs = [([*COMMAND[2:], "--workdir", workdir],
             {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
    results = run_workers(str(tmp_path), runs, timeout=TIMEOUT,
                          command=[sys.executable, *COMMAND[:2]])
    outputs = [out for _, out in results]
    for i, (rc, out) in enumerate(results):
        assert rc == 0, f"worker {i} exited {rc}:\n{out[-4000:]}"

    # Both workers end with the chief's best weights and print the same test result.
    fingerprints = [re.findall(r"Weights fingerprint (\w+)", out) for out in outputs]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1], fingerprints
    wers = [re.findall(r"Test WER (\d+\.\d+)%, CER (\d+\.\d+)%", out) for out in outputs]
    assert len(wers[0]) == 1 and wers[0] == wers[1], wers

    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["num_replicas"] == 2 and summary["epochs_run"] == 2
    assert f"{100 * summary['test_wer']:.2f}" == wers[0][0][0]
    expected = {"backup_workers", "checkpoints", "config.json", "export", "model.keras",
                "summary.json", "tensorboard", "eval_test.csv", "eval_test.json"}
    assert set(os.listdir(workdir)) == expected, os.listdir(workdir)
    assert sorted(os.listdir(os.path.join(workdir, "export", "speech"))) == ["1", "speech_v1.keras"]
    assert "TF Serving:" in outputs[0] and "TF Serving:" not in outputs[1]
