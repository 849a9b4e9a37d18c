"""Forecast metrics against hand-computed values and scipy."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from apps.forecast import metrics

# Two origins, horizon 3.
Y = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
F = np.array([[2.0, 2.0, 1.0], [4.0, 3.0, 7.0]])
# |errors| = [[1, 0, 2], [0, 2, 1]]


def test_mae_and_rmse_per_horizon_by_hand():
    np.testing.assert_allclose(metrics.mae(Y, F), [0.5, 1.0, 1.5])
    np.testing.assert_allclose(metrics.rmse(Y, F), [math.sqrt(0.5), math.sqrt(2.0), math.sqrt(2.5)])
    # Trailing axes (targets) are kept.
    stacked = metrics.mae(np.stack([Y, 2 * Y], -1), np.stack([F, 2 * F], -1))
    np.testing.assert_allclose(stacked, [[0.5, 1.0], [1.0, 2.0], [1.5, 3.0]])


def test_smape_by_hand_with_zero_over_zero():
    y = np.array([[0.0, 1.0], [2.0, -1.0]])
    f = np.array([[0.0, 3.0], [2.0, 1.0]])
    # terms: 0/0 -> 0, 2*2/4 = 1; 0, 2*2/2 = 2 -> per horizon 100 * [0, 1.5]
    np.testing.assert_allclose(metrics.smape(y, f), [0.0, 150.0])


def test_mase_of_the_naive_forecast_is_one_on_the_scale_data():
    rng = np.random.default_rng(0)
    train = np.cumsum(rng.normal(size=(50, 2)), axis=0)  # two series
    scale = metrics.mase_scale(train)
    assert scale.shape == (2,)
    # One-step naive forecasts over the same data: y_t forecast by y_{t-1}.
    y_true, y_pred = train[1:, None, :], train[:-1, None, :]
    np.testing.assert_allclose(metrics.mase(y_true, y_pred, scale), [[1.0, 1.0]])
    # Seasonal version, m = 4.
    scale4 = metrics.mase_scale(train[:, 0], season=4)
    np.testing.assert_allclose(scale4, np.mean(np.abs(train[4:, 0] - train[:-4, 0])))
    np.testing.assert_allclose(metrics.mase(train[4:, None, 0], train[:-4, None, 0], scale4), [1.0])


def test_mase_scale_skips_nans_and_rejects_constant_series():
    np.testing.assert_allclose(metrics.mase_scale([1.0, 2.0, np.nan, 5.0, 7.0]), 1.5)  # |1|, |2|
    with pytest.raises(ValueError, match="undefined"):
        metrics.mase_scale(np.ones(10))
    with pytest.raises(ValueError, match="needs more than"):
        metrics.mase_scale([1.0, 2.0], season=2)


def test_relative_mae():
    base = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # |errors| = Y
    np.testing.assert_allclose(
        metrics.relative_mae(Y, F, base), np.array([0.5, 1.0, 1.5]) / [2.5, 3.5, 4.5]
    )


def test_directional_accuracy_by_hand_and_p_value_vs_scipy():
    y = np.array([[1.0, -2.0, 0.0], [3.0, 1.0, -1.0]])
    f = np.array([[0.5, 1.0, 2.0], [0.0, 2.0, -3.0]])
    # moves: up, down, none (left out); up, up, down -> 5 trials
    # calls: up (hit), up (miss), -, zero (miss), up (hit), down (hit) -> 3 hits
    d = metrics.directional_accuracy(y, f)
    assert (d["hits"], d["trials"]) == (3, 5)
    assert d["accuracy"] == pytest.approx(0.6)
    np.testing.assert_allclose(d["accuracy_per_horizon"], [0.5, 0.5, 1.0])
    assert d["p_value"] == pytest.approx(binomtest(3, 5, 0.5, alternative="greater").pvalue)
    # Independent check: P(X >= 3), X ~ Binomial(5, 1/2) = (10 + 5 + 1) / 32.
    assert d["p_value"] == pytest.approx(16 / 32)


def test_directional_accuracy_relative_to_the_last_value():
    last = np.array([[10.0], [20.0]])  # (origins, 1): the last observed price
    y = np.array([[11.0, 9.0], [19.0, 21.0]])
    f = np.array([[12.0, 12.0], [18.0, 20.0]])  # hit, miss, hit, zero move called -> miss
    d = metrics.directional_accuracy(y, f, reference=last)
    assert (d["hits"], d["trials"]) == (2, 4)
    assert metrics.binomial_p_value(60, 100) == pytest.approx(
        binomtest(60, 100, 0.5, alternative="greater").pvalue
    )


def test_coverage_and_pinball_by_hand():
    y = np.array([[1.0, 5.0], [3.0, 0.0]])
    lower = np.array([[0.0, 0.0], [3.0, 1.0]])
    upper = np.array([[2.0, 4.0], [4.0, 2.0]])
    np.testing.assert_allclose(
        metrics.coverage(y, lower, upper), [1.0, 0.0]
    )  # edges count as inside
    with pytest.raises(ValueError, match="lower"):
        metrics.coverage(y, upper, lower)
    # One origin, one step, quantiles (0.1, 0.9) at (0, 4), outcome 5:
    # 0.1 * 5 = 0.5 and 0.9 * 1 = 0.9 -> mean 0.7. Outcome 0: 0.9 * 0 = 0 and 0.1 * 4 = 0.4 -> 0.2.
    q = (0.1, 0.9)
    np.testing.assert_allclose(
        metrics.pinball(np.array([[5.0]]), np.array([[[0.0, 4.0]]]), q), [0.7]
    )
    np.testing.assert_allclose(
        metrics.pinball(np.array([[0.0]]), np.array([[[0.0, 4.0]]]), q), [0.2]
    )


def test_summary_collects_everything():
    yq = np.stack([F - 1.0, F, F + 1.0], axis=-1)
    s = metrics.summary(
        Y,
        F,
        naive_scale=2.0,
        y_baseline=np.zeros_like(Y),
        direction_reference=np.array([[0.0], [4.5]]),
        y_quantiles=yq,
        quantiles=(0.1, 0.5, 0.9),
    )
    assert s["mae"] == pytest.approx(1.0) and s["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert s["mase"] == pytest.approx(0.5) and s["relative_mae"] == pytest.approx(6 / 21)
    np.testing.assert_allclose(s["mae_per_horizon"], [0.5, 1.0, 1.5])
    # Inside [F - 1, F + 1]: |error| <= 1 -> 4 of 6.
    assert s["coverage"] == pytest.approx(4 / 6)
    for key in ("smape", "pinball", "direction_accuracy", "direction_p_value", "direction_trials"):
        assert key in s
    with pytest.raises(ValueError, match="same shape"):
        metrics.summary(Y, F[:, :2])


def _gaussian_band(rng, n, half_width, horizon=2):
    """Outcomes ~ N(0, 1) and a P10/P50/P90 forecast 0 +- half_width per step."""
    y = rng.standard_normal((n, horizon, 1))
    q = np.zeros((n, horizon, 1, 3))
    q[..., 0], q[..., 2] = -np.asarray(half_width), np.asarray(half_width)
    return y, q


@pytest.mark.parametrize("half_width", [3.0, 0.5])  # too wide (~99.7%), too narrow (~38%)
def test_band_scale_restores_the_nominal_coverage_on_new_outcomes(half_width):
    rng = np.random.default_rng(0)
    levels = (0.1, 0.5, 0.9)
    y, q = _gaussian_band(rng, 2000, half_width)
    scale = metrics.fit_band_scale(y, q, levels)
    assert scale.shape == (2, 1)
    # N(0, 1)'s P90 is 1.2816: the factor that makes +-half_width the true P10-P90 band.
    np.testing.assert_allclose(scale, 1.2816 / half_width, rtol=0.06)
    y_new, q_new = _gaussian_band(rng, 20000, half_width)
    scaled = metrics.apply_band_scale(q_new, levels, scale)
    covered = metrics.coverage(y_new, scaled[..., 0], scaled[..., 2])
    np.testing.assert_allclose(covered, 0.8, atol=0.02)
    np.testing.assert_array_equal(scaled[..., 1], q_new[..., 1])  # the median stays


def test_band_scale_by_hand_with_unknown_outcomes_and_asymmetric_bands():
    # Median 0, band [-1, 2]: scores max(-y / 1, y / 2); NaN outcomes are left out.
    y = np.array([-0.5, 1.0, 3.0, -2.0, np.nan]).reshape(5, 1, 1)
    q = np.tile(np.array([-1.0, 0.0, 2.0]), (5, 1, 1, 1))
    # Scores 0.5, 0.5, 1.5, 2.0 (n = 4): rank ceil(5 * 0.8) = 4 -> the largest, 2.0.
    np.testing.assert_allclose(metrics.fit_band_scale(y, q, (0.1, 0.5, 0.9)), [[2.0]])
    # Rank ceil((n + 1) * 0.5) = 3 of a P25-P75 band: 1.5.
    np.testing.assert_allclose(metrics.fit_band_scale(y, q, (0.25, 0.5, 0.75)), [[1.5]])
    # No known outcome: factor 1 (the band is left as it is).
    np.testing.assert_allclose(metrics.fit_band_scale(y[4:], q[4:], (0.1, 0.5, 0.9)), [[1.0]])
    out = metrics.apply_band_scale(q[:1], (0.1, 0.5, 0.9), np.array([[2.0]]))
    np.testing.assert_allclose(out[0, 0, 0], [-2.0, 0.0, 4.0])


def test_band_scale_rejects_bad_shapes_and_levels():
    y, q = np.zeros((4, 2, 1)), np.zeros((4, 2, 1, 3))
    with pytest.raises(ValueError, match=r"Expected quantiles \(N, H, T, 2\)"):
        metrics.fit_band_scale(y, q, (0.1, 0.9))
    with pytest.raises(ValueError, match="below and above 0.5"):
        metrics.fit_band_scale(y, q, (0.5, 0.6, 0.7))


def test_naive_weight_keeps_a_good_model_and_drops_noise():
    # Random-walk outcomes: the last value 100 plus a step; a model that sees 80% of the step
    # (plus a little noise) keeps a high weight, one that forecasts pure noise gets 0.
    rng = np.random.default_rng(0)
    step = rng.standard_normal((4000, 2, 1))
    naive = np.full_like(step, 100.0)
    y = naive + step
    good = naive + 0.8 * step + 0.1 * rng.standard_normal(step.shape)
    noise = naive + rng.standard_normal(step.shape)
    w_good = metrics.fit_naive_weight(y, good, naive)
    assert w_good.shape == (2, 1) and np.all(w_good >= 0.9)
    np.testing.assert_array_equal(metrics.fit_naive_weight(y, noise, naive), 0.0)
    # Half the signal and as much noise as signal: an interior weight (least squares would
    # give 0.5 / (0.25 + 1) = 0.4), and on the outcomes it was fitted on the combination is
    # at least as good as either end.
    mixed = naive + 0.5 * step + rng.standard_normal(step.shape)
    w = metrics.fit_naive_weight(y, mixed, naive)
    assert np.all((w > 0.2) & (w < 0.9))
    combined = metrics.apply_naive_weight(mixed, naive, w)
    assert np.all(metrics.mae(y, combined) <= metrics.mae(y, mixed))
    assert np.all(metrics.mae(y, combined) <= metrics.mae(y, naive))


def test_naive_weight_by_hand_with_unknown_outcomes_and_quantiles():
    # Outcomes 1, 1, nan against the naive 0 and a forecast of 2: |1 - 2w| is smallest at
    # w = 0.5; the unknown outcome is left out; no known outcome at all gives 1.
    y = np.array([1.0, 1.0, np.nan]).reshape(3, 1, 1)
    naive, forecast = np.zeros_like(y), np.full_like(y, 2.0)
    np.testing.assert_allclose(metrics.fit_naive_weight(y, forecast, naive), [[0.5]])
    np.testing.assert_allclose(metrics.fit_naive_weight(y[2:], forecast[2:], naive[2:]), [[1.0]])
    # Ties keep the most of the model: a forecast equal to the naive one gets weight 1.
    np.testing.assert_allclose(metrics.fit_naive_weight(y, naive, naive), [[1.0]])
    # Quantiles move with their median: P10/P50/P90 of 1/2/4 at weight 0.5 against 0.
    q = np.array([1.0, 2.0, 4.0]).reshape(1, 1, 1, 3)
    out = metrics.apply_naive_weight(q, np.zeros((1, 1, 1)), np.array([[0.5]]), (0.1, 0.5, 0.9))
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 1.0, 3.0])
    with pytest.raises(ValueError, match=r"grid must be weights in \[0, 1\]"):
        metrics.fit_naive_weight(y, forecast, naive, grid=[0.5, 2.0])
