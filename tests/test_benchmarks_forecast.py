"""Smoke test: `benchmarks/forecast.py --quick` runs end to end (tiny models on the bundled
weather and S&P 500 series) and writes the documented JSON, headline included."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINE = ("weather_mae_tfattn", "weather_mae_seasonal_naive", "weather_mae_dlinear",
            "weather_mae_best_statistical", "stock_mase_h1", "stock_direction_accuracy_h1",
            "stock_direction_p_value_h1", "stock_p10_p90_coverage")

# ~45 s: four tiny trainings and exports; one worker runs the module (its fixture is built once).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_benchmarks_forecast")]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "forecast.json"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "forecast.py"), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_quick_json_schema(quick_run):
    info, _ = quick_run
    assert info["benchmark"] == "forecast" and info["quick"] is True and info["date"]
    assert {"platform", "cpu_count", "cpu_model"} <= set(info["machine"])
    for key in HEADLINE:
        value = info["headline"][key]
        assert isinstance(value, float) and math.isfinite(value), key
    assert 0 <= info["headline"]["stock_direction_p_value_h1"] <= 1
    assert 0 <= info["headline"]["stock_p10_p90_coverage"] <= 1

    weather = info["weather"]
    jfk = weather["stations"]["JFK"]
    assert {"patchtst", "dlinear", "ridge", "naive", "seasonal_naive", "AutoTheta"} <= set(
        jfk["models"])
    assert set(weather["stations"]) == {"JFK", "EWR"}
    for station in weather["stations"].values():
        assert station["stride"] == 24 and station["origins"] > 0
        for m in station["models"].values():
            assert len(m["mae_per_horizon"]) == 24
            assert m["mae"] == pytest.approx(sum(m["mae_per_horizon"]) / 24, rel=1e-6)
            assert {"rmse", "mase", "smape", "relative_mae"} <= set(m)
    assert info["headline"]["weather_mae_tfattn"] == jfk["models"]["patchtst"]["mae"]
    for name in ("patchtst", "dlinear"):
        model = weather["models"][name]
        assert model["parameters"] > 0 and model["train_seconds"] > 0
        assert model["latency"]["median_ms"] > 0 and model["latency"]["calls"] == 3
    assert 0 < jfk["ridge"]["alpha"]

    h1 = info["stock"]["horizons"]["1"]
    assert set(h1["models"]) == {"naive", "patchtst_revin_on", "patchtst_revin_off"}
    assert h1["models"]["naive"]["relative_mae"] == pytest.approx(1.0)
    for name in ("patchtst_revin_on", "patchtst_revin_off"):
        m = h1["models"][name]
        assert {"direction_accuracy", "direction_p_value", "coverage",
                "coverage_uncalibrated"} <= set(m)
    assert info["headline"]["stock_mase_h1"] == h1["models"]["patchtst_revin_on"]["relative_mae"]
    assert 0 < h1["share_of_up_moves"] < 1


def test_quick_prints_tables(quick_run):
    _, stdout = quick_run
    rows = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| model | MAE JFK | MAE EWR |")
    assert any(ln.startswith("| horizon | model | price MAE | MAE / random walk") for ln in rows)
    assert "headline:" in stdout
