"""Rolling-origin backtest of a trained forecaster and the baselines, side by side.

    python -m apps.forecast.evaluate --workdir runs/forecast
        [--baselines naive,seasonal_naive,AutoETS,AutoTheta,MSTL] [--backtest_stride 24]

Reads `<workdir>/config.json` and `<workdir>/model.keras`, reloads the configured series
with the same cleaning and splits, and forecasts from every origin of the test period:
origins advance `--backtest_stride` steps (default: the config's `eval_stride`, i.e. the
horizon, so forecast periods do not overlap: every test step is scored once, the errors
are closer to independent (the direction test's binomial p-value assumes that) and the
statistical models take seconds; `--backtest_stride 1` scores every origin). All models
see the same origins and are scored on the same outcomes, in the original units (prices,
not returns, for log-return targets):

    MAE, RMSE, sMAPE   per horizon step and overall
    MASE               MAE over the in-sample MAE of the seasonal naive forecast (season
                       `--season`, default from the frequency: 24 hourly, 7 daily, 1 on
                       trading days, i.e. the random walk) on the training part
    relative_mae       MAE over the naive forecast's (random walk: "the value stays at the
                       last observation") on the same points: the stock benchmark's "MASE
                       vs the random walk"
    direction_*        (log-return targets) share of correct up/down calls against the
                       last price, and the one-sided binomial p-value against 50%
    coverage           share of outcomes inside P10-P90 (quantile models; the statistical
                       models' 80% intervals)

The workdir's own model.keras is scored with the adjustments training fitted on validation
(written into <workdir>/preprocessing.json; the export applies them too): with
`--shrink_to_naive`, its forecast combined with the random walk (`mae_uncombined` reports
the model alone), and for quantile runs the band scaled to its nominal coverage
(`coverage_uncalibrated` reports the raw band).

Writes `<workdir>/evaluation/`: metrics.csv (one row per model and horizon step, "all" for
the overall row), metrics.json, forecast_vs_actual.png and error_by_horizon.png.
Baselines: `naive`, `seasonal_naive`, and statsforecast's `AutoETS`, `AutoTheta`, `MSTL`
(fitted once on the rows before the test period, states updated at every origin; see
`apps/forecast/baselines.py`).
"""

import argparse
import csv
import json
import math
import os
import time

import numpy as np

from apps.forecast import baselines as fb
from apps.forecast import metrics as fm
from apps.forecast.data import load_forecast_data
from apps.forecast.export import read_meta
from apps.forecast.model import point_forecast
from apps.forecast.windows import freq_seconds
from tfattn import training

DAY = 86400
CHEAP_BASELINES = ("naive", "seasonal_naive")
ALL_BASELINES = CHEAP_BASELINES + fb.STATISTICAL_MODELS


def load_data(cfg):
    """The config's series, cleaned and split (`ForecastData`)."""
    transform = None if cfg.target_transform == "auto" else cfg.target_transform
    return load_forecast_data(
        cfg.data, time_col=cfg.time_col, targets=cfg.targets, covariates=cfg.covariates,
        id_col=cfg.id_col, freq=cfg.freq, skiprows=cfg.skiprows, dayfirst=cfg.dayfirst,
        time_format=cfg.time_format, max_gap=cfg.max_gap, target_transform=transform,
        calendar=cfg.calendar, split_fractions=cfg.split_fractions, lookback=cfg.lookback,
        horizon=cfg.horizon, strict=cfg.strict,
    )


def default_season(freq):
    """Season length for seasonal naive and MASE: the steps per day for sub-daily data,
    7 for daily, 52 weekly, 12 monthly, 4 quarterly; 1 (the random walk) for trading days
    and anything else."""
    if freq.upper().startswith(("B", "C")):  # business / custom business days: markets
        return 1
    step = freq_seconds(freq)
    if step < DAY:
        return max(1, round(DAY / step))
    for length, season in ((DAY, 7), (7 * DAY, 52), (31 * DAY, 12), (92 * DAY, 4)):
        if step <= length:
            return season
    return 1


def default_seasonal_periods(freq):
    """MSTL's periods: a day and a week for sub-daily data, else the season (and 5 trading
    days for business-day data)."""
    step = freq_seconds(freq)
    if step < DAY:
        return (round(DAY / step), round(7 * DAY / step))
    if freq.upper().startswith(("B", "C")):
        return (5,)
    return (default_season(freq),)


def model_forecast(model, data, windows, quantiles=None, batch_size=256):
    """A Keras forecaster on `windows`, in original units: (point (N, H, T), quantiles
    (N, H, T, Q) or None)."""
    predicted = np.asarray(model.predict(windows.past, batch_size=batch_size, verbose=0))
    if quantiles is None and predicted.ndim == 4:
        raise ValueError(
            f"{model.name} forecasts {predicted.shape[-1]} quantiles; pass their levels"
        )
    values = data.to_original_units(predicted, windows)
    if quantiles is None:
        return values, None
    return point_forecast(values, quantiles), values


ADJUSTMENTS = ("naive_weight", "band_scale")


def fit_adjustments(model, data, lookback, horizon, quantiles=None, *, naive_weight=False,
                    band_scale=True, split="val", batch_size=256):
    """What training fits on every window of `split` (validation: never the test period),
    in original units, to put on top of the model's forecasts, in this order:

    - `naive_weight` `(H, T)`: the model's point forecast combined with the random walk,
      `last + w * (forecast - last)`, `w` in [0, 1] with the smallest MAE
      (`metrics.fit_naive_weight`); quantiles move with their median.
    - `band_scale` `(H, T)`, quantile models: conformal width factors of the band around the
      (combined) median (`metrics.fit_band_scale`); they also correct the approximation of
      compounding per-step quantile returns into prices.

    Returns ({name: factors} of the ones asked for, the number of windows).
    """
    w = data.windows(split, lookback, horizon, 1)
    if not len(w.origin):
        raise ValueError(f"The {split} split has no window of lookback {lookback} + horizon "
                         f"{horizon} to fit the forecast adjustments on")
    point, values = model_forecast(model, data, w, quantiles, batch_size)
    raw = data.raw_windows(w, lookback=lookback)
    naive = fb.naive_forecast(raw.past_values[..., : data.num_targets], horizon)
    fitted = {}
    if naive_weight:
        fitted["naive_weight"] = fm.fit_naive_weight(raw.future_targets, point, naive)
    point, values = adjust(point, values, naive, quantiles, fitted)
    if band_scale and values is not None:
        fitted["band_scale"] = fm.fit_band_scale(raw.future_targets, values, quantiles)
    return fitted, len(w.origin)


def adjust(point, values, naive, quantiles, adjustments):
    """`fit_adjustments`'s factors applied to a model's forecasts in original units:
    (point (N, H, T), quantiles (N, H, T, Q) or None) -> the same, adjusted. `naive`: the
    random walk `(N, H, T)` (the last value at each origin)."""
    weight = (adjustments or {}).get("naive_weight")
    if weight is not None:
        if values is None:
            point = fm.apply_naive_weight(point, naive, weight)
        else:
            values = fm.apply_naive_weight(values, naive, weight, quantiles)
            point = point_forecast(values, quantiles)
    scale = (adjustments or {}).get("band_scale")
    if scale is not None and values is not None:
        values = fm.apply_band_scale(values, quantiles, scale)
    return point, values


def _mase_scales(data, windows, season):
    """Per window (N, 1, T): the in-sample seasonal-naive MAE of its series' training part."""
    scales = {}
    for i in np.unique(windows.series_index):
        train_end = data.split_bounds[i][0]
        scales[i] = fm.mase_scale(data.raw_values[i][:train_end, : data.num_targets], season)
    return np.stack([scales[i] for i in windows.series_index])[:, None, :]


def score(actual, forecast, scale, naive, last=None, quantile_values=None, quantiles=None,
          band=None):
    """`metrics.summary` plus MASE with per-window scales and interval coverage."""
    out = fm.summary(
        actual, forecast, y_baseline=naive,
        direction_reference=None if last is None else last[:, None, :],
        y_quantiles=quantile_values, quantiles=quantiles,
    )
    per = fm.mae(actual / scale, forecast / scale)
    out["mase"], out["mase_per_horizon"] = float(np.mean(per)), per
    if band is not None:
        per = fm.coverage(actual, *band)
        out["coverage"], out["coverage_per_horizon"] = float(np.mean(per)), per
    return out


def backtest(
    data,
    lookback,
    horizon,
    models=None,
    quantiles=None,
    *,
    stride=None,
    split="test",
    baselines=CHEAP_BASELINES,
    forecasts=None,
    season=None,
    seasonal_periods=None,
    fit_window=None,
    level=80,
    batch_size=256,
    adjustments=None,
):
    """Rolling-origin forecasts of models and baselines on one split, scored side by side.

    Args:
        data: a `ForecastData`.
        lookback, horizon: the windows' (the neural models' input and output lengths).
        models: `{name: keras model}` taking scaled windows (as `train.py` builds them).
        quantiles: the quantile levels of the models that forecast quantiles: one tuple
            for all, or `{name: levels}`.
        stride: steps between origins; None: `horizon`.
        split: "test" (or "val").
        baselines: names from `ALL_BASELINES`.
        forecasts: more `{name: (N, H, T)}` forecasts in original units at these origins
            (e.g. from a model trained elsewhere).
        season: seasonal naive / MASE season; None: `default_season(data.freq)`.
        seasonal_periods: MSTL's periods; None: `default_seasonal_periods(data.freq)`.
        fit_window, level: passed to `baselines.statistical_backtest` (level 80: P10-P90).
        batch_size: prediction batch.
        adjustments: `{name: {"naive_weight": (H, T), "band_scale": (H, T)}}`, either
            optional: what training fitted on validation (`fit_adjustments`).

    Returns:
        dict: `windows`, `raw` (RawWindows), `actual` (N, H, T), `forecasts` {name: (N, H,
        T)}, `quantile_forecasts` {name: (N, H, T, Q)}, `bands` {name: (lo, hi)},
        `metrics` {name: `score` dict; with a band scale also "coverage_uncalibrated"; with
        a naive weight also "mae_uncombined"},
        `seconds` {name: s}, `season`, `stride`.
    """
    unknown = [b for b in baselines if b not in ALL_BASELINES]
    if unknown:
        raise ValueError(f"Unknown baseline(s) {unknown}; choose from {list(ALL_BASELINES)}")
    stride = stride or horizon
    season = season or default_season(data.freq)
    seasonal_periods = seasonal_periods or default_seasonal_periods(data.freq)
    w = data.windows(split, lookback, horizon, stride)
    raw = data.raw_windows(w, lookback=max(lookback, season))
    targets = slice(0, data.num_targets)
    actual = raw.future_targets
    history = raw.past_values[..., targets]  # (N, max(L, m), T), original units
    result = {"windows": w, "raw": raw, "actual": actual, "forecasts": {},
              "quantile_forecasts": {}, "bands": {}, "seconds": {}, "season": season,
              "stride": stride, "quantile_levels": {}, "raw_bands": {}}

    naive = fb.naive_forecast(history, horizon)
    uncombined = {}
    for name, model in (models or {}).items():
        levels = quantiles.get(name) if isinstance(quantiles, dict) else quantiles
        if len(model.outputs[0].shape) == 3:
            levels = None
        start = time.perf_counter()
        point, values = model_forecast(model, data, w, levels, batch_size)
        result["seconds"][name] = time.perf_counter() - start
        fitted = (adjustments or {}).get(name) or {}
        if fitted.get("naive_weight") is not None:  # keep the model's own error for the report
            uncombined[name] = fm.mae(actual, point)
            point, values = adjust(point, values, naive, levels,
                                   {"naive_weight": fitted["naive_weight"]})
        if values is not None and fitted.get("band_scale") is not None:  # and the raw band's
            result["raw_bands"][name] = (values[..., 0], values[..., -1])
            point, values = adjust(point, values, naive, levels,
                                   {"band_scale": fitted["band_scale"]})
        result["forecasts"][name] = point
        if values is not None:
            result["quantile_forecasts"][name] = values
            result["quantile_levels"][name] = tuple(levels)
    result["forecasts"].update(forecasts or {})

    if "naive" in baselines:
        result["forecasts"]["naive"] = naive
    if "seasonal_naive" in baselines:
        result["forecasts"]["seasonal_naive"] = fb.seasonal_naive_forecast(history, horizon, season)
    statistical = [b for b in baselines if b in fb.STATISTICAL_MODELS]
    if "MSTL" in statistical and max(seasonal_periods) < 2:
        raise ValueError(
            f"MSTL needs a seasonal period of at least 2; the {data.freq!r} series has "
            f"{seasonal_periods}. Leave MSTL out of the baselines"
        )
    if statistical:
        _statistical(data, w, horizon, statistical, season, seasonal_periods, fit_window,
                     level, result)

    last = raw.last_targets if data.target_transform == "log_return" else None
    scale = _mase_scales(data, w, season)
    result["metrics"] = {}
    for name, forecast in result["forecasts"].items():
        result["metrics"][name] = score(
            actual, forecast, scale, naive, last,
            result["quantile_forecasts"].get(name), result["quantile_levels"].get(name),
            result["bands"].get(name),
        )
        if name in result["raw_bands"]:
            per = fm.coverage(actual, *result["raw_bands"][name])
            result["metrics"][name]["coverage_uncalibrated"] = float(np.mean(per))
            result["metrics"][name]["coverage_uncalibrated_per_horizon"] = per
        if name in uncombined:
            result["metrics"][name]["mae_uncombined"] = float(np.mean(uncombined[name]))
            result["metrics"][name]["mae_uncombined_per_horizon"] = uncombined[name]
    return result


def _statistical(data, w, horizon, names, season, periods, fit_window, level, result):
    n, t = len(w.origin), data.num_targets
    means = {m: np.full((n, horizon, t), np.nan) for m in names}
    bands = {m: (np.full((n, horizon, t), np.nan), np.full((n, horizon, t), np.nan))
             for m in names}
    seconds = dict.fromkeys(names, 0.0)
    for i in np.unique(w.series_index):
        rows = np.flatnonzero(w.series_index == i)
        for j in range(t):
            for m in names:  # one at a time: each gets its own time
                start = time.perf_counter()
                out = fb.statistical_backtest(
                    data.raw_values[i][:, j], w.origin[rows], horizon, models=[m],
                    season_length=min(season, 24) if season > 1 else 1,
                    seasonal_periods=periods, fit_window=fit_window, level=level,
                )
                seconds[m] += time.perf_counter() - start
                means[m][rows, :, j] = out[m]
                bands[m][0][rows, :, j] = out[f"{m}-lo-{level}"]
                bands[m][1][rows, :, j] = out[f"{m}-hi-{level}"]
    for m in names:
        result["forecasts"][m] = means[m]
        result["bands"][m] = bands[m]
        result["seconds"][m] = seconds[m]


# --------------------------------------------------------------------------- reporting

TABLE_METRICS = ("mae", "mae_uncombined", "rmse", "mase", "smape", "relative_mae",
                 "direction_accuracy", "coverage", "coverage_uncalibrated", "pinball")


def metric_rows(result):
    """One dict per model and horizon step (1-based; "all" for the overall numbers)."""
    rows = []
    for name, m in result["metrics"].items():
        horizon = len(m["mae_per_horizon"])
        for h in ["all", *range(1, horizon + 1)]:
            row = {"model": name, "horizon": h}
            for key in TABLE_METRICS:
                if key not in m:
                    continue
                value = m[key] if h == "all" else np.mean(m[f"{key}_per_horizon"][h - 1])
                row[key] = float(value)
            if h == "all" and "direction_p_value" in m:
                row["direction_p_value"] = m["direction_p_value"]
            rows.append(row)
    return rows


def format_table(result):
    """The overall numbers of every model, one line each, best MAE first."""
    columns = [c for c in (*TABLE_METRICS, "direction_p_value")
               if any(c in m for m in result["metrics"].values())]
    widths = [max(len(c), 7) + 2 for c in columns]
    lines = [f"{'model':<16}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
    order = sorted(result["metrics"], key=lambda k: result["metrics"][k]["mae"])
    for name in order:
        m = result["metrics"][name]
        cells = "".join(f"{m[c]:>{w}.4g}" if c in m else f"{'-':>{w}}"
                        for c, w in zip(columns, widths))
        lines.append(f"{name:<16}{cells}")
    return "\n".join(lines)


def write_report(result, out_dir, data, plot_windows=4):
    """metrics.csv, metrics.json and the two PNGs under `out_dir`; returns the rows."""
    from apps.forecast import plots

    os.makedirs(out_dir, exist_ok=True)
    rows = metric_rows(result)
    fields = ["model", "horizon"] + [k for k in (*TABLE_METRICS, "direction_p_value")
                                     if any(k in r for r in rows)]
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    report = {
        "split_windows": int(len(result["windows"].origin)),
        "stride": result["stride"],
        "season": result["season"],
        "targets": list(data.target_names),
        "seconds": {k: round(v, 2) for k, v in result["seconds"].items()},
        "models": {name: {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                          for k, v in m.items()} for name, m in result["metrics"].items()},
    }
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    plots.backtest_forecast_figure(result, data, plot_windows).savefig(
        os.path.join(out_dir, "forecast_vs_actual.png"))
    plots.horizon_error_figure(
        {k: m["mae_per_horizon"] for k, m in result["metrics"].items()},
        f"test MAE ({', '.join(data.target_names)})",
    ).savefig(os.path.join(out_dir, "error_by_horizon.png"))
    return rows


def read_adjustments(workdir):
    """`{name: (H, T) array}` of the adjustments training fitted on validation and wrote into
    the run's preprocessing meta (what the export applies); empty if none."""
    meta = read_meta(workdir)
    return {k: np.asarray(meta[k]) for k in ADJUSTMENTS if meta.get(k) is not None}


def evaluate_workdir(workdir, baselines=CHEAP_BASELINES, stride=None, model_path=None,
                     season=None, fit_window=None):
    """Backtests `<workdir>/model.keras` against `baselines`; writes `<workdir>/evaluation/`."""
    import keras

    from apps.forecast.config import Config

    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(
            f"{config_path} not found: --workdir must be a folder written by "
            "`python -m apps.forecast.train`"
        )
    cfg = training.load_config(Config, config_path)
    default_model = os.path.join(workdir, "model.keras")
    model_path = model_path or default_model
    if not os.path.exists(model_path):
        raise ValueError(f"{model_path} not found: the run did not finish (no model.keras)")
    model = keras.saving.load_model(model_path, compile=False)
    data = load_data(cfg)
    fitted = read_adjustments(workdir) if model_path == default_model else {}
    result = backtest(
        data, cfg.lookback, cfg.horizon, {cfg.model: model}, cfg.quantiles,
        stride=stride or cfg.backtest_stride, baselines=baselines,
        season=season or cfg.season, fit_window=fit_window,
        adjustments={cfg.model: fitted},
    )
    out_dir = os.path.join(workdir, "evaluation")
    write_report(result, out_dir, data, cfg.plot_windows or 4)
    result["output_dir"] = out_dir
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m apps.forecast.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="folder written by apps.forecast.train")
    parser.add_argument("--model", help="a .keras file (default: <workdir>/model.keras)")
    parser.add_argument(
        "--baselines", default=",".join(ALL_BASELINES),
        help=f"comma-separated, from {','.join(ALL_BASELINES)} (default: all; 'none': no baseline)")
    parser.add_argument("--backtest_stride", type=int,
                        help="steps between origins (default: the config's eval_stride, the horizon)")
    parser.add_argument("--season", type=int, help="seasonal naive / MASE season (default: from the frequency)")
    parser.add_argument("--fit_window", type=int,
                        help="rows the statistical models fit and update on (default: all before the origin)")
    args = parser.parse_args(argv)
    names = [] if args.baselines.strip() == "none" else [
        b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = [b for b in names if b not in ALL_BASELINES]
    if unknown:
        parser.error(f"--baselines: unknown {unknown}; choose from {','.join(ALL_BASELINES)}")
    if args.backtest_stride is not None and args.backtest_stride < 1:
        parser.error("--backtest_stride must be >= 1")
    result = evaluate_workdir(args.workdir, tuple(names), args.backtest_stride, args.model,
                              args.season, args.fit_window)
    n = len(result["windows"].origin)
    print(f"Backtest: {n} origins every {result['stride']} steps over the test period, "
          f"season {result['season']}, original units")
    print(format_table(result))
    slowest = max(result["seconds"].items(), key=lambda kv: kv[1], default=None)
    if slowest and not math.isnan(slowest[1]):
        print(f"(slowest: {slowest[0]} {slowest[1]:.1f} s)")
    print(f"wrote {result['output_dir']}")
    return result


if __name__ == "__main__":
    training.run_cli(main)
