"""Smoke test: `benchmarks/attention.py --quick` runs end to end and writes the documented JSON."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ("tfattn", "keras", "keras_hub")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results" / "attention.json"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "attention.py"), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_quick_json_schema(quick_run):
    info, _ = quick_run
    assert info["benchmark"] == "attention" and info["date"]
    assert {"platform", "cpu_count", "cpu_model"} <= set(info["machine"])
    assert info["machine"]["cpu_count"] >= 1
    assert set(info["versions"]) == {"tensorflow", "keras", "keras_hub", "tfattn"}
    settings = info["settings"]
    assert settings["quick"] is True and settings["min_runs"] == 2
    assert (settings["hidden_dim"], settings["num_heads"], settings["key_dim"]) == (192, 3, 64)
    assert settings["memory"] and settings["keras_hub_layer"].endswith("MultiHeadAttention")
    assert len(info["results"]) == settings["cells"] == 2

    for cell in info["results"]:
        assert {"length", "batch", "return_attention_scores", "dropout", "xla"} <= set(cell)
        ms = {}
        for name in IMPLS:
            r = cell["impls"][name]
            assert r["runs"] == 2
            assert 0 < r["ms_min"] <= r["ms_median"] <= r["ms_max"]
            assert r["peak_rss_delta_mib"] >= 0 and r["first_call_s"] > 0
            ms[name] = r["ms_median"]
        assert cell["ratio_keras_over_tfattn"] == pytest.approx(ms["keras"] / ms["tfattn"], rel=1e-2)
        assert cell["ratio_keras_hub_over_tfattn"] == pytest.approx(ms["keras_hub"] / ms["tfattn"], rel=1e-2)
        degrades = (cell["dropout"] > 0 and cell["xla"]) or (
            cell["return_attention_scores"] and cell["length"] >= 1024
        )
        assert cell["target"] == (1.5 if degrades else 1.0)
        assert cell["meets_target"] == (ms["keras"] / ms["tfattn"] >= cell["target"])

    # The quick grid covers the headline case and a no-dropout cell, where copied weights must
    # make all three layers compute the same loss.
    assert any(c["dropout"] > 0 and c["xla"] and c["return_attention_scores"] for c in info["results"])
    assert [c["losses_match"] for c in info["results"] if c["dropout"] == 0] == [True]


def test_quick_prints_markdown_table(quick_run):
    info, stdout = quick_run
    rows = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| length | batch | scores | dropout | XLA | tfattn ms")
    assert len(rows) == 1 + len(info["results"])  # header + one row per cell
