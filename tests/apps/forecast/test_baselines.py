"""Baselines: naive and seasonal naive by hand, window helpers, statsforecast wrappers on a
short synthetic series (protocol, no look-ahead, intervals, errors)."""

import sys

import numpy as np
import pytest

from apps.forecast import baselines
from apps.forecast.baselines import (
    future_at,
    history_at,
    naive_forecast,
    seasonal_naive_forecast,
    statistical_backtest,
    stl_jumps,
)


def test_naive_forecast_by_hand():
    windows = np.array([[1.0, 2.0, 3.0], [5.0, 4.0, 7.0]])
    np.testing.assert_array_equal(naive_forecast(windows, 2), [[3.0, 3.0], [7.0, 7.0]])
    # Trailing axes (several series) are kept.
    out = naive_forecast(np.stack([windows, -windows], -1), 2)
    assert out.shape == (2, 2, 2)
    np.testing.assert_array_equal(out[..., 1], -out[..., 0])


def test_seasonal_naive_forecast_by_hand():
    windows = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    # season 2: the last season is (4, 5), repeated.
    np.testing.assert_array_equal(
        seasonal_naive_forecast(windows, 5, 2), [[4.0, 5.0, 4.0, 5.0, 4.0]]
    )
    # season 1 is the naive forecast.
    np.testing.assert_array_equal(
        seasonal_naive_forecast(windows, 3, 1), naive_forecast(windows, 3)
    )
    with pytest.raises(ValueError, match="at least 7 steps"):
        seasonal_naive_forecast(windows, 3, 7)


def test_history_and_future_at_origins():
    series = np.arange(10.0)
    np.testing.assert_array_equal(history_at(series, [2, 5], 3), [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    np.testing.assert_array_equal(future_at(series, [2, 5], 2), [[3.0, 4.0], [6.0, 7.0]])
    with pytest.raises(ValueError, match="fewer than 4 rows"):
        history_at(series, [2], 4)
    with pytest.raises(ValueError, match="runs past"):
        future_at(series, [8], 2)


def test_stl_jumps_follow_r():
    # period 24, seasonal window 11: trend window = odd >= 36 / (1 - 1.5 / 11) = 41.7 -> 43,
    # low-pass = 25 -> jumps ceil(4.3) = 5 and ceil(2.5) = 3.
    assert stl_jumps(24, 11) == {"trend_jump": 5, "low_pass_jump": 3}


def _synthetic(n=24 * 14, seed=0):
    """Hourly-like series: daily cycle + slow trend + noise, all positive."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return 50.0 + 10.0 * np.sin(2 * np.pi * t / 24) + 0.01 * t + rng.normal(scale=0.5, size=n)


HORIZON = 6


# One worker runs the module, so its module-scoped fixture is built once under xdist.
pytestmark = pytest.mark.xdist_group("apps_forecast_test_baselines")


@pytest.fixture(scope="module")
def backtest():
    y = _synthetic()
    origins = np.arange(24 * 10, len(y) - HORIZON, 24)  # 4 origins
    out = statistical_backtest(
        y, origins, HORIZON, season_length=24, seasonal_periods=(12, 24), level=80
    )
    return y, origins, out


def test_statistical_backtest_shapes_intervals_and_accuracy(backtest):
    y, origins, out = backtest
    truth = future_at(y, origins, HORIZON)
    seasonal = seasonal_naive_forecast(history_at(y, origins, 24), HORIZON, 24)
    seasonal_mae = np.abs(truth - seasonal).mean()
    for name in ("AutoETS", "AutoTheta", "MSTL"):
        mean = out[name]
        assert mean.shape == (len(origins), HORIZON) and np.all(np.isfinite(mean))
        lo, hi = out[f"{name}-lo-80"], out[f"{name}-hi-80"]
        assert np.all(lo <= mean) and np.all(mean <= hi)
        # A clean daily cycle: every model is about as good as the seasonal naive forecast.
        assert np.abs(truth - mean).mean() < 2.0 * seasonal_mae + 0.5, name


def test_statistical_backtest_does_not_look_ahead(backtest):
    y, origins, out = backtest
    # Rows after the first origin changed: that origin's forecast (fitted and updated on
    # rows up to it) must not move, the later ones must.
    changed = y.copy()
    changed[origins[0] + 1 :] += 100.0
    models = ("AutoETS", "AutoTheta", "MSTL")
    again = statistical_backtest(
        changed, origins, HORIZON, models=models, seasonal_periods=(12, 24)
    )
    for name in models:
        np.testing.assert_allclose(again[name][0], out[name][0], rtol=1e-10)
        assert np.abs(again[name][1:] - out[name][1:]).min() > 1.0, name


def test_statistical_backtest_refit_window_and_model_objects():
    from statsforecast.models import SeasonalNaive

    y = _synthetic(24 * 8)
    origins = np.array([24 * 5, 24 * 6])
    out = statistical_backtest(
        y,
        origins,
        HORIZON,
        models=("AutoTheta", SeasonalNaive(season_length=24)),
        fit_window=24 * 4,
        refit_every=1,
    )
    assert set(out) == {"AutoTheta", "SeasonalNaive"}
    # statsforecast's seasonal naive equals ours.
    expected = seasonal_naive_forecast(history_at(y, origins, 24), HORIZON, 24)
    np.testing.assert_allclose(out["SeasonalNaive"], expected)


def test_statistical_backtest_fits_after_the_last_gap():
    # A leading NaN (the first log return) or a long gap: each fit uses the rows after it.
    y = _synthetic(24 * 8)
    holed = y.copy()
    holed[[0, 30]] = np.nan
    out = statistical_backtest(holed, [24 * 5, 24 * 6], HORIZON, models=("AutoTheta",))
    ref = statistical_backtest(y[31:], [24 * 5 - 31, 24 * 6 - 31], HORIZON, models=("AutoTheta",))
    np.testing.assert_allclose(out["AutoTheta"], ref["AutoTheta"])


def test_statistical_backtest_errors(monkeypatch):
    y = _synthetic(24 * 4)
    with pytest.raises(ValueError, match="Unknown statistical model"):
        statistical_backtest(y, [48], 6, models=("ARIMA",))
    with pytest.raises(ValueError, match="strictly increasing"):
        statistical_backtest(y, [48, 48], 6)
    with pytest.raises(ValueError, match="1-D"):
        statistical_backtest(np.stack([y, y], -1), [48], 6)
    holed = y.copy()
    holed[48] = np.nan
    with pytest.raises(ValueError, match=r"no value at origin\(s\) \[48\]"):
        statistical_backtest(holed, [48], 6)
    monkeypatch.setitem(sys.modules, "statsforecast", None)
    with pytest.raises(ImportError, match=r"pip install 'tfattn\[forecast\]'"):
        baselines.make_statistical_model("AutoETS")
