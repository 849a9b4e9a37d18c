"""Forecast accuracy over a rolling-origin backtest (NumPy in, arrays and dicts out).

Arrays are laid out as the backtest produces them: axis 0 = forecast origin, axis 1 =
horizon step, any further axes (targets, stations) are kept. Per-horizon metrics reduce
axis 0 only and return `(horizon, ...)`; `summary` adds the overall numbers.

    MAE   mean |y - f|                     RMSE  sqrt(mean (y - f)^2)
    sMAPE 200 * mean |y - f| / (|y| + |f|) (percent, 0..200; 0/0 counts as 0)
    MASE  MAE / scale, scale = in-sample MAE of the (seasonal) naive forecast on the
          training part, per series (Hyndman & Koehler 2006); < 1 beats that naive
          forecast's in-sample error
    relative MAE  MAE / MAE of a baseline forecast on the same test points (e.g. the random
          walk "price stays at today's close"; the stock benchmark's "MASE vs random walk")
    directional accuracy  share of steps where sign(f - ref) == sign(y - ref), with the
          one-sided binomial p-value against a coin (50%)
    coverage  share of outcomes inside [P10, P90] (nominal 80%)
    pinball   quantile loss, mean over the quantiles (as `model.PinballLoss`)

References: Hyndman & Koehler 2006, "Another look at measures of forecast accuracy"
(MASE, sMAPE's problems); Makridakis 1993 (sMAPE); Pesaran & Timmermann 1992 (direction
tests; the binomial test here assumes independent steps, so overlapping horizons or
autocorrelated errors make its p-value optimistic); Koenker & Bassett 1978 (pinball loss).
"""

import numpy as np


def _pair(y_true, y_pred):
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same shape "
            "(origins, horizon, ...); take the point forecast of a quantile output first."
        )
    if y_true.ndim < 2:
        raise ValueError(f"Expected arrays (origins, horizon, ...); got shape {y_true.shape}.")
    return y_true, y_pred


def mae(y_true, y_pred):
    """Mean absolute error per horizon step: `(horizon, ...)`."""
    y_true, y_pred = _pair(y_true, y_pred)
    return np.mean(np.abs(y_true - y_pred), axis=0)


def rmse(y_true, y_pred):
    """Root mean squared error per horizon step: `(horizon, ...)`."""
    y_true, y_pred = _pair(y_true, y_pred)
    return np.sqrt(np.mean((y_true - y_pred) ** 2, axis=0))


def smape(y_true, y_pred):
    """Symmetric MAPE in percent (0..200) per horizon step; a 0/0 term counts as 0."""
    y_true, y_pred = _pair(y_true, y_pred)
    denom = np.abs(y_true) + np.abs(y_pred)
    terms = np.divide(
        2.0 * np.abs(y_true - y_pred), denom, out=np.zeros_like(denom), where=denom > 0
    )
    return 100.0 * np.mean(terms, axis=0)


def mase_scale(train_values, season=1):
    """In-sample MAE of the (seasonal) naive forecast: the MASE denominator.

    Args:
        train_values: training part of the series, `(time,)` or `(time, series...)`, in
            the units the forecasts are scored in. NaNs (gaps) are skipped.
        season: 1 for the naive (random-walk) forecast, m for the seasonal naive one.

    Returns:
        `mean |y_t - y_{t-season}|` over the training part: a float, or one per series.
    """
    y = np.asarray(train_values, dtype=np.float64)
    if not isinstance(season, (int, np.integer)) or season < 1:
        raise ValueError(f"`season` must be a positive int; got {season!r}.")
    if y.shape[0] <= season:
        raise ValueError(
            f"The training part has {y.shape[0]} steps; MASE with season {season} needs more than {season}."
        )
    scale = np.nanmean(np.abs(y[season:] - y[:-season]), axis=0)
    if np.any(~np.isfinite(scale)) or np.any(scale == 0):
        raise ValueError(
            f"The naive forecast's in-sample MAE is {scale} (a constant or all-NaN training "
            "series): MASE is undefined for it."
        )
    return scale


def mase(y_true, y_pred, scale):
    """Mean absolute scaled error per horizon step: `mae / scale` (`scale` from `mase_scale`)."""
    return mae(y_true, y_pred) / np.asarray(scale, dtype=np.float64)


def relative_mae(y_true, y_pred, y_baseline):
    """MAE of `y_pred` over the MAE of `y_baseline` on the same points, per horizon step."""
    return mae(y_true, y_pred) / mae(y_true, y_baseline)


def binomial_p_value(hits, trials, p=0.5):
    """One-sided p-value of `hits` successes in `trials` against chance `p` (scipy binomtest)."""
    try:
        from scipy.stats import binomtest
    except ImportError as err:  # scipy comes with scikit-learn; the extra lists it too
        raise ImportError(
            "Directional accuracy's p-value needs scipy: pip install 'tfattn[forecast]'."
        ) from err
    if trials == 0:
        return float("nan")
    return float(binomtest(int(hits), int(trials), p, alternative="greater").pvalue)


def directional_accuracy(y_true, y_pred, reference=0.0):
    """Share of correct up/down calls relative to `reference`, with a binomial p-value.

    A call is correct when `sign(y_pred - reference) == sign(y_true - reference)`. Steps
    where the outcome does not move (`y_true == reference`) have no direction and are left
    out; a forecast of no move (`y_pred == reference`, e.g. the random walk) counts as wrong.

    Args:
        y_true, y_pred: `(origins, horizon, ...)`.
        reference: what "up" and "down" are relative to: 0 for returns, or the last observed
            value `(origins, 1, ...)` for prices.

    Returns:
        dict: `accuracy` (overall), `hits`, `trials`, `p_value` (one-sided, H1: accuracy >
        50%), `accuracy_per_horizon` `(horizon, ...)`.
    """
    y_true, y_pred = _pair(y_true, y_pred)
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.sign(y_true - reference)
    called = np.sign(y_pred - reference)
    moved = actual != 0
    hit = (actual == called) & moved
    trials = int(moved.sum())
    hits = int(hit.sum())
    per_horizon_trials = moved.sum(axis=0)
    per_horizon = np.divide(
        hit.sum(axis=0),
        per_horizon_trials,
        out=np.full(per_horizon_trials.shape, np.nan),
        where=per_horizon_trials > 0,
    )
    return {
        "accuracy": hits / trials if trials else float("nan"),
        "hits": hits,
        "trials": trials,
        "p_value": binomial_p_value(hits, trials),
        "accuracy_per_horizon": per_horizon,
    }


def coverage(y_true, lower, upper):
    """Share of outcomes with `lower <= y_true <= upper`, per horizon step."""
    y_true, lower = _pair(y_true, lower)
    _, upper = _pair(y_true, upper)
    if np.any(lower > upper):
        raise ValueError("`lower` exceeds `upper` somewhere: pass the lower quantile first.")
    return np.mean((y_true >= lower) & (y_true <= upper), axis=0)


def fit_band_scale(y_true, y_quantiles, quantiles):
    """Split-conformal width factors for a quantile forecast's band (normalised CQR).

    The band is the outermost quantiles `[q_lo, q_hi]` (nominal coverage `q_hi - q_lo`,
    80% for P10-P90). Scaling every quantile's distance from the median by `s`,
    `median + s * (q - median)`, gives the band `[m - s (m - lo), m + s (hi - m)]`; it
    covers an outcome `y` iff `s >= max((m - y) / (m - lo), (y - m) / (hi - m))`, the
    outcome's conformity score. `s` is the `ceil((n + 1) * coverage) / n` empirical quantile
    of the scores of `n` held-out outcomes (Romano et al. 2019, "Conformalized Quantile
    Regression", with a multiplicative instead of an additive correction, so one factor
    fits prices of any level): on exchangeable data the scaled band covers a new outcome
    with probability >= the nominal coverage (and at most 1/(n + 1) more). A band too wide
    gets `s < 1`, too narrow `s > 1`; quantile order is kept (`s >= 0`).

    Args:
        y_true: outcomes `(N, H, T)`; NaN (outcomes past the data) are left out.
        y_quantiles: `(N, H, T, Q)` quantile forecasts, levels ascending.
        quantiles: the Q levels; must include levels below and above 0.5.

    Returns:
        float64 `(H, T)`: a factor per horizon step and target (1 where no outcome is known).
    """
    y_true = np.asarray(y_true, np.float64)
    q = np.asarray(y_quantiles, np.float64)
    levels = np.asarray(quantiles, np.float64)
    if q.ndim != 4 or q.shape[:3] != y_true.shape or q.shape[-1] != len(levels):
        raise ValueError(f"Expected quantiles (N, H, T, {len(levels)}) for outcomes "
                         f"{y_true.shape}; got {q.shape}.")
    if not (levels[0] < 0.5 < levels[-1]):
        raise ValueError(f"A band needs levels below and above 0.5; got {tuple(quantiles)}.")
    median = q[..., int(np.argmin(np.abs(levels - 0.5)))]
    tiny = 1e-12 * np.maximum(np.abs(median), 1.0)
    below = (median - y_true) / np.maximum(median - q[..., 0], tiny)
    above = (y_true - median) / np.maximum(q[..., -1] - median, tiny)
    scores = np.maximum(below, above)  # (N, H, T); NaN where the outcome is unknown
    nominal = levels[-1] - levels[0]
    out = np.ones(scores.shape[1:])
    for index in np.ndindex(*scores.shape[1:]):
        column = np.sort(scores[(slice(None), *index)])
        column = column[~np.isnan(column)]
        n = len(column)
        if n:
            rank = min(int(np.ceil((n + 1) * nominal)), n)
            out[index] = max(column[rank - 1], 0.0)
    return out


def apply_band_scale(y_quantiles, quantiles, scale):
    """`median + scale * (q - median)` for every level: `fit_band_scale`'s factors
    `(H, T)` applied to quantile forecasts `(N, H, T, Q)`."""
    q = np.asarray(y_quantiles, np.float64)
    median = q[..., int(np.argmin(np.abs(np.asarray(quantiles) - 0.5))), None]
    return median + np.asarray(scale, np.float64)[None, :, :, None] * (q - median)


NAIVE_WEIGHT_GRID = np.linspace(0.0, 1.0, 101)


def fit_naive_weight(y_true, y_pred, y_naive, grid=NAIVE_WEIGHT_GRID):
    """The weight `w` in [0, 1] of a forecast combined with the naive one, per horizon step
    and target: `naive + w * (forecast - naive)` with the smallest MAE on these outcomes.

    A combination of forecasts (Bates & Granger 1969) with the weights fitted on held-out
    data; with the random walk as the naive forecast it is shrinkage toward "no change",
    the usual remedy when a model's signal on returns is weaker than its noise (the random
    walk is hard to beat on asset prices: Meese & Rogoff 1983, Welch & Goyal 2008). `w = 1`
    keeps the model, `w = 0` is the naive forecast. MAE has no closed form, so `w` is the
    best of `grid` (ties: the largest weight, i.e. the most of the model).

    Args:
        y_true, y_pred, y_naive: `(N, H, T)` outcomes, forecasts, naive forecasts; NaN
            outcomes (past the data) are left out.
        grid: candidate weights.

    Returns:
        float64 `(H, T)` (1 where no outcome is known).
    """
    y_true, y_pred = _pair(y_true, y_pred)
    _, y_naive = _pair(y_true, y_naive)
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 1 or not len(grid) or np.any((grid < 0) | (grid > 1)):
        raise ValueError(f"grid must be weights in [0, 1]; got {grid}")
    step = y_pred - y_naive
    # (G, N, H, T) absolute errors of every candidate; NaN outcomes drop out of the mean.
    errors = np.abs(y_true[None] - y_naive[None] - grid[:, None, None, None] * step[None])
    known = ~np.isnan(y_true)
    mean = np.where(known, errors, 0.0).sum(axis=1) / np.maximum(known.sum(axis=0), 1)
    best = len(grid) - 1 - np.argmin(mean[::-1], axis=0)  # the largest of equal minima
    out = grid[best]
    return np.where(known.any(axis=0), out, 1.0)


def apply_naive_weight(y_pred, y_naive, weight, quantiles=None):
    """`naive + weight * (forecast - naive)` with `fit_naive_weight`'s `(H, T)` weights.

    `y_pred` is a point forecast `(N, H, T)`, or with `quantiles` a quantile forecast
    `(N, H, T, Q)` whose median is combined and every other level shifted with it (the
    band keeps its shape; `fit_band_scale` then fits its width around the new median).
    """
    y_pred = np.asarray(y_pred, np.float64)
    y_naive = np.asarray(y_naive, np.float64)
    weight = np.asarray(weight, np.float64)[None]
    if quantiles is None:
        return y_naive + weight * (y_pred - y_naive)
    median = y_pred[..., int(np.argmin(np.abs(np.asarray(quantiles) - 0.5)))]
    shift = (1.0 - weight) * (y_naive - median)
    return y_pred + shift[..., None]


def pinball(y_true, y_quantiles, quantiles):
    """Pinball loss per horizon step, averaged over the quantiles.

    Args:
        y_true: `(origins, horizon, ...)`.
        y_quantiles: `(origins, horizon, ..., num_quantiles)`.
        quantiles: the levels of the last axis.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_quantiles = np.asarray(y_quantiles, dtype=np.float64)
    q = np.asarray(quantiles, dtype=np.float64)
    if y_quantiles.shape != y_true.shape + q.shape:
        raise ValueError(
            f"y_quantiles {y_quantiles.shape} must be y_true's shape {y_true.shape} plus "
            f"({len(q)},) quantiles."
        )
    error = y_true[..., None] - y_quantiles
    return np.mean(np.maximum(q * error, (q - 1.0) * error), axis=(0, -1))


def summary(
    y_true,
    y_pred,
    *,
    naive_scale=None,
    y_baseline=None,
    direction_reference=None,
    y_quantiles=None,
    quantiles=None,
    interval=(0.1, 0.9),
):
    """Every metric that applies, overall and per horizon step.

    Args:
        y_true, y_pred: `(origins, horizon, ...)` outcomes and point forecasts.
        naive_scale: the MASE denominator from `mase_scale()`; adds `mase`.
        y_baseline: a baseline's forecasts at the same points; adds `relative_mae`.
        direction_reference: adds the directional accuracy relative to it (0 for returns,
            the last observed value for levels).
        y_quantiles, quantiles: quantile forecasts `(..., num_quantiles)` and their levels;
            add `pinball` and, when both `interval` levels are present, `coverage`.
        interval: the quantile levels whose band `coverage` measures.

    Returns:
        dict of floats (overall) and `<name>_per_horizon` arrays `(horizon, ...)`.
    """
    y_true, y_pred = _pair(y_true, y_pred)
    out = {}

    def add(name, per_horizon, overall):
        out[name] = float(overall)
        out[f"{name}_per_horizon"] = per_horizon

    add("mae", mae(y_true, y_pred), np.mean(np.abs(y_true - y_pred)))
    add("rmse", rmse(y_true, y_pred), np.sqrt(np.mean((y_true - y_pred) ** 2)))
    per_smape = smape(y_true, y_pred)
    add("smape", per_smape, np.mean(per_smape))
    if naive_scale is not None:
        per = mase(y_true, y_pred, naive_scale)
        add("mase", per, np.mean(per))
    if y_baseline is not None:
        base = np.mean(np.abs(y_true - np.asarray(y_baseline, dtype=np.float64)))
        add("relative_mae", relative_mae(y_true, y_pred, y_baseline), out["mae"] / base)
    if direction_reference is not None:
        d = directional_accuracy(y_true, y_pred, direction_reference)
        add("direction_accuracy", d["accuracy_per_horizon"], d["accuracy"])
        out["direction_p_value"] = d["p_value"]
        out["direction_trials"] = d["trials"]
    if y_quantiles is not None:
        if quantiles is None:
            raise ValueError("`y_quantiles` needs the `quantiles` levels.")
        per = pinball(y_true, y_quantiles, quantiles)
        add("pinball", per, np.mean(per))
        levels = [float(v) for v in quantiles]
        if all(any(np.isclose(level, v) for v in levels) for level in interval):
            lo, hi = (int(np.argmin(np.abs(np.asarray(levels) - v))) for v in interval)
            y_quantiles = np.asarray(y_quantiles)
            per = coverage(y_true, y_quantiles[..., lo], y_quantiles[..., hi])
            add("coverage", per, np.mean(per))
    return out
