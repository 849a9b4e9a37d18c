"""Kill a training process mid-epoch with SIGKILL, start it again, and check the resume.

The backup is written at every epoch end (`backup_save_freq="epoch"`, the default of
`standard_callbacks`): Keras 3.15's BackupAndRestore restores only the epoch number, so a
mid-epoch backup would replay the interrupted epoch's first batches (extra optimizer steps).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("resume_script.py")
REPO = Path(__file__).resolve().parents[2]
EPOCHS = 4
STEPS_PER_EPOCH = 8
KILL_AT = (2, 3)  # (epoch, batch): epochs 0 and 1 done, epoch 2 under way


def _command(workdir, batch_sleep):
    return [
        sys.executable, str(SCRIPT), "--workdir", str(workdir),
        "--epochs", str(EPOCHS), "--batch_sleep", str(batch_sleep),
    ]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _log(workdir):
    path = Path(workdir) / "epochs.log"
    return path.read_text().splitlines() if path.exists() else []


def _ends(lines):
    """[(epoch, iterations, loss)] from the `end` lines."""
    return [(int(p[1]), int(p[2]), float(p[3])) for p in (ln.split() for ln in lines) if p[0] == "end"]


def _kill_when_logged(proc, workdir, line, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in _log(workdir):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited (rc={proc.returncode}) before logging {line!r}")
        time.sleep(0.02)
    pytest.fail(f"training did not log {line!r} within {timeout} s")


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_without_lost_or_repeated_epochs(tmp_path):
    resumed, reference = tmp_path / "resumed", tmp_path / "reference"
    batch_sleep = 0.2  # ~1.6 s per epoch: the kill lands well inside epoch 2
    procs = []
    try:
        # The uninterrupted reference runs alongside the run that gets killed.
        ref = subprocess.Popen(_command(reference, 0.0), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        procs.append(ref)
        first = subprocess.Popen(_command(resumed, batch_sleep), env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(first)
        _kill_when_logged(first, resumed, "batch {} {}".format(*KILL_AT), timeout=240)
        assert first.returncode == -signal.SIGKILL

        killed_log = _log(resumed)
        assert [e for e, _, _ in _ends(killed_log)] == [0, 1]  # killed inside epoch 2...
        last_epoch, last_batch = map(int, killed_log[-1].split()[1:])
        assert last_epoch == 2 and last_batch < STEPS_PER_EPOCH - 1  # ...not at its end
        meta = json.loads((resumed / "backup" / "training_metadata.json").read_text())
        assert meta["epoch"] == 2  # the backup holds the state after epoch 1

        second = subprocess.run(_command(resumed, batch_sleep), env=_env(), timeout=300,
                                capture_output=True, text=True)
        assert second.returncode == 0, second.stderr[-3000:]
        _, ref_err = ref.communicate(timeout=300)
        assert ref.returncode == 0, ref_err.decode()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    lines = _log(resumed)
    resumed_lines = lines[len(killed_log):]
    # The second process starts at epoch 2: nothing lost, nothing repeated.
    assert resumed_lines[0] == "start" and resumed_lines[1].startswith("batch 2 0")
    ends = _ends(lines)
    assert [e for e, _, _ in ends] == list(range(EPOCHS))
    assert [it for _, it, _ in ends] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]

    ref_ends = _ends(_log(reference))
    got = json.loads((resumed / "result.json").read_text())
    want = json.loads((reference / "result.json").read_text())
    assert got["iterations"] == want["iterations"] == EPOCHS * STEPS_PER_EPOCH
    # Same data order (shuffle=False), no dropout, optimizer state restored: the resumed
    # run follows the uninterrupted one (float32 on CPU, single-threaded; measured max
    # weight difference 0.0, the tolerance only allows for other CPUs' kernels).
    np.testing.assert_allclose([loss for *_, loss in ends], [loss for *_, loss in ref_ends],
                               rtol=1e-5)
    for g, w in zip(got["weights"], want["weights"]):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
    assert not (resumed / "backup").exists()  # removed once fit completed
    assert (resumed / "checkpoints" / "best.keras").exists()
