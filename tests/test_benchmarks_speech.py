"""Smoke test: `benchmarks/speech.py --quick` runs end to end (tiny Conformer and keras.io
baseline on a few utterances of the digits corpus) and writes the documented JSON."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINE = ("cer", "wer", "baseline_cer", "baseline_wer", "train_minutes", "real_time_factor")

pytestmark = pytest.mark.slow  # ~80 s: two tiny trainings, exports and transcriptions


def test_quick_json_schema(tmp_path):
    if not os.path.exists(os.path.join(ROOT, "data", "speech", "digits", "metadata.csv")):
        pytest.skip("data/speech/digits missing: run `make data-speech` (make test does)")
    out = tmp_path / "speech.json"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "speech.py"), "--quick", "--out", str(out),
         "--workdir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        info = json.load(f)
    assert info["benchmark"] == "speech" and info["quick"] is True and info["date"]
    assert {"platform", "cpu_count", "cpu_model"} <= set(info["machine"])
    for key in HEADLINE:
        value = info["headline"][key]
        assert isinstance(value, float) and math.isfinite(value), key
    for name in ("conformer", "ctc_baseline"):
        model = info["models"][name]
        assert set(model["test"]) == {"greedy", "beam", "beam_lm"}
        assert model["headline_decoder"] in model["test"]
        assert model["transcribed_files"] == model["test_utterances"] == 24
    assert "| conformer |" in proc.stdout and "| ctc_baseline |" in proc.stdout
