"""Forecasting app: tfattn PatchTST vs attention, linear and statistical baselines.

Every model sees the same data, the same chronological splits (70/10/20% of each series)
and the same rolling-origin backtest (`apps.forecast.evaluate.backtest`): origins every
`horizon` steps over the test period, forecasts scored in original units. Neural models are
trained by the app's own `apps.forecast.train.run` (AdamW, warm-up + cosine, early stopping
on validation loss with the best weights restored, the SavedModel export), one at a time.

Weather (`weather_nyc`, hourly temperature, horizon 24 h, test = the last 20% of 2013):
- trained on JFK: tfattn PatchTST (the recipe below, chosen on the validation split only),
  LSTM + additive attention, Transformer encoder-decoder, DLinear (longer schedule, early
  stopping), a ridge regression on the last 168 hours of temperature and one on the last
  24 hours of every channel (covariates and calendar; alphas chosen on validation);
- naive, seasonal naive (24 h), statsforecast AutoETS / AutoTheta (season 24) and MSTL
  (24 h and 168 h), fitted once before the test period, states updated at every origin;
- EWR and LGA: the JFK-trained models applied to those stations' windows (scaled with each
  station's own training statistics, no retraining); naive and statistical models fitted
  on each station itself.
Stocks (`stock_sp500`, daily log returns, P10/P50/P90 quantile heads), horizons 1 and 5,
PatchTST with RevIN on and off: MAE of the price forecast over the random walk's ("the
price stays at today's close"), directional accuracy with a one-sided binomial p-value,
P10-P90 coverage of the realised price.
Per model: training seconds, epochs, parameters and the serving latency of one window
through the reloaded SavedModel's `serving_default` (median of `latency_calls` calls).

Usage:
    python benchmarks/forecast.py                 # both parts: weather 15 min, stocks 14 min
                                                  # on 2 CPU cores shared with other jobs (load ~5)
    python benchmarks/forecast.py --part stock    # one part; the other is kept in the JSON
    python benchmarks/forecast.py --quick --out /tmp/forecast.json   # tiny models: 150 s at
                                                  # load ~6, well under a minute on idle cores
"""

import argparse
import contextlib
import datetime
import io
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from apps.forecast import train  # noqa: E402
from apps.forecast.config import PRESETS, Config  # noqa: E402
from apps.forecast.evaluate import ADJUSTMENTS, backtest, load_data  # noqa: E402
from apps.forecast.export import META_FILE, raw_inputs, read_meta  # noqa: E402
from benchmarks.machine import load_average, machine_info  # noqa: E402
from tfattn import training  # noqa: E402

tf.get_logger().setLevel("ERROR")

STATISTICAL = ("AutoETS", "AutoTheta", "MSTL")
STATIONS = ("JFK", "EWR", "LGA")
# Targets (issue 18): PatchTST MAE <= 0.95 x DLinear's, below the best statistical model,
# <= 0.70 x seasonal naive; stocks: MAE / random walk <= 1.0, P10-P90 coverage 80% +- 5.
TARGETS = {"vs_dlinear": 0.95, "vs_seasonal_naive": 0.70, "stock_mase": 1.0,
           "coverage": (0.75, 0.85)}

# The PatchTST recipe: the `weather_nyc` preset (lookback 168, covariate head over 24 h),
# chosen on validation MAE only; every variant tried is listed in benchmarks/README.md.
PATCHTST_WEATHER = []

FULL = {
    # Lookback 168 h for every model: better than the preset's 336 on validation for both
    # PatchTST (3.16 vs 3.38 °F) and DLinear (3.12 vs 3.20).
    "weather_base": ["--preset", "weather_nyc", "--lookback", "168"],
    "weather_models": {
        "patchtst": PATCHTST_WEATHER,
        "lstm_attention": ["--model", "lstm_attention", "--time_budget_minutes", "5"],
        "transformer": ["--model", "transformer", "--time_budget_minutes", "5"],
        # Linear: a longer schedule and more patience, so it converges.
        "dlinear": ["--model", "dlinear", "--epochs", "60", "--early_stopping_patience", "10"],
    },
    "statistical": STATISTICAL,
    "ridge_lookback": 168,
    "ridge_all_lookback": 24,
    "ridge_alphas": (0.1, 1.0, 10.0, 100.0, 1000.0),
    "stations": STATIONS,
    "fit_window": None,
    "stock_base": ["--preset", "stock_sp500"],
    "stock_horizons": (1, 5),
    "latency_calls": 100,
}

# Tiny models on the same data, two of the neural models, two stations, one stock horizon:
# the code path in well under a minute.
_TINY_WINDOWS = ["--lookback", "48", "--horizon", "24", "--train_stride", "24",
                 "--val_stride", "24", "--epochs", "1", "--warmup_epochs", "0.2",
                 "--jit_compile", "false"]
QUICK = {
    "weather_base": ["--preset", "weather_nyc", *_TINY_WINDOWS, "--time_budget_minutes", "none"],
    "weather_models": {
        "patchtst": ["--hidden_dim", "8", "--num_heads", "2", "--intermediate_dim", "16",
                     "--num_layers", "1"],
        "dlinear": ["--model", "dlinear", "--lookback", "72"],  # a second lookback group
    },
    "statistical": ("AutoTheta",),
    "ridge_lookback": 48,
    "ridge_all_lookback": 12,
    "ridge_alphas": (1.0, 10.0),
    "stations": ("JFK", "EWR"),
    "fit_window": 336,
    "stock_base": ["--preset", "stock_sp500", "--lookback", "20", "--train_stride", "20",
                   "--val_stride", "5", "--epochs", "1", "--warmup_epochs", "0.2",
                   "--jit_compile", "false", "--hidden_dim", "8", "--num_heads", "2",
                   "--intermediate_dim", "16", "--num_layers", "1",
                   "--time_budget_minutes", "none"],
    "stock_horizons": (1,),
    "latency_calls": 3,
}


# --------------------------------------------------------------------------- training


def train_model(args, workdir):
    """`apps.forecast.train.run` on `args` (CLI flags) in `workdir`: (cfg, summary, model)."""
    cfg = training.parse_config(
        Config, [*args, "--workdir", workdir, "--plot_windows", "0", "--verbose", "0"],
        presets=PRESETS,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own report; ours follows
        summary = train.run(cfg)
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"), compile=False)
    return cfg, summary, model


def serving_latency_ms(saved_model, data, lookback, horizon, calls):
    """Median and min ms of `serving_default` on one raw test window (batch 1), reloaded."""
    meta = read_meta(saved_model, META_FILE)
    inputs = raw_inputs(data, data.windows("test", lookback, horizon, horizon), meta)
    one = {k: tf.constant(v[:1]) for k, v in inputs.items()}
    fn = tf.saved_model.load(saved_model).signatures["serving_default"]
    fn(**one)  # first call: tracing
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        out = fn(**one)
        _ = out["forecast"].numpy()
        times.append(1e3 * (time.perf_counter() - start))
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
            "calls": calls}


def ridge_forecasts(data, lookback, horizon, alphas, stride, channels="targets"):
    """Ridge regression from the last `lookback` scaled target values (`channels="all"`:
    every input channel, covariates and calendar too) to the next `horizon`, fitted on
    every training window, alpha chosen on the validation MAE; test forecasts in original
    units at the backtest's origins, and the choice."""
    from sklearn.linear_model import Ridge

    used = slice(None) if channels == "all" else slice(0, data.num_targets)

    def xy(split, step=1):
        w = data.windows(split, lookback, horizon, step)
        return w, w.past[:, :, used].reshape(len(w.origin), -1), w.future

    _, x_train, y_train = xy("train")
    w_val, x_val, y_val = xy("val")
    n_train, t = len(x_train), data.num_targets
    scores = {}
    for alpha in alphas:
        fit = Ridge(alpha=alpha).fit(x_train, y_train.reshape(n_train, -1))
        pred = fit.predict(x_val).reshape(-1, horizon, t)
        scores[alpha] = float(np.mean(np.abs(
            data.to_original_units(pred, w_val) - data.to_original_units(y_val, w_val))))
    best = min(scores, key=scores.get)
    start = time.perf_counter()
    fit = Ridge(alpha=best).fit(x_train, y_train.reshape(n_train, -1))
    seconds = time.perf_counter() - start
    w_test, x_test, _ = xy("test", stride)
    forecast = data.to_original_units(fit.predict(x_test).reshape(-1, horizon, t), w_test)
    return forecast, {"alpha": best, "val_mae_by_alpha": scores, "train_seconds": round(seconds, 2),
                      "parameters": int(fit.coef_.size + fit.intercept_.size)}


# --------------------------------------------------------------------------- reporting


def model_metrics(m):
    """The numbers of one backtest `score` dict (per-horizon lists averaged over targets)."""
    out = {}
    for key in ("mae", "mae_uncombined", "rmse", "mase", "smape", "relative_mae",
                "direction_accuracy", "direction_p_value", "direction_trials", "coverage", "coverage_uncalibrated",
                "pinball"):
        if key in m:
            out[key] = float(m[key])
        per = m.get(f"{key}_per_horizon")
        if per is not None:
            per = np.asarray(per, np.float64)
            out[f"{key}_per_horizon"] = [float(v) for v in per.reshape(len(per), -1).mean(-1)]
    return out


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _f(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def weather_table(part):
    jfk = part["stations"]["JFK"]["models"]
    horizon = len(next(iter(jfk.values()))["mae_per_horizon"])
    steps = sorted({1, 6, 12, horizon} & set(range(1, horizon + 1)))
    header = ["model", *[f"MAE {s}" for s in STATIONS if s in part["stations"]],
              "RMSE", "MASE", "sMAPE %", *[f"MAE h{s}" for s in steps],
              "train s", "params", "serve ms"]
    rows = []
    for name in sorted(jfk, key=lambda k: jfk[k]["mae"]):
        m, info = jfk[name], part["models"].get(name, {})
        rows.append([
            name, *[_f(part["stations"][s]["models"].get(name, {}).get("mae"), 2)
                    for s in STATIONS if s in part["stations"]],
            _f(m["rmse"], 2), _f(m["mase"]), _f(m["smape"], 2),
            *[_f(m["mae_per_horizon"][s - 1], 2) for s in steps],
            _f(info.get("train_seconds"), 0), info.get("parameters", "-"),
            _f(info.get("latency", {}).get("median_ms"), 2),
        ])
    return markdown(header, rows)


def stock_table(part):
    header = ["horizon", "model", "price MAE", "MAE / random walk", "model alone / RW",
              "direction", "p-value", "P10-P90 coverage", "uncalibrated", "train s", "epochs",
              "params", "serve ms"]
    rows = []
    for h, run in part["horizons"].items():
        naive = run["models"]["naive"]["mae"]
        for name in sorted(run["models"], key=lambda k: run["models"][k]["mae"]):
            m, info = run["models"][name], part["models"].get(f"h{h}_{name}", {})
            alone = m.get("mae_uncombined")
            rows.append([
                h, name, _f(m["mae"], 2), _f(m["relative_mae"]),
                _f(None if alone is None else alone / naive),
                # The random walk makes no up/down call: no direction for it.
                *([_f(None)] * 2 if name == "naive" else
                  [_f(m.get("direction_accuracy")), _f(m.get("direction_p_value"), 3)]),
                _f(m.get("coverage")), _f(m.get("coverage_uncalibrated")),
                _f(info.get("train_seconds"), 0),
                info.get("epochs", "-"), info.get("parameters", "-"),
                _f(info.get("latency", {}).get("median_ms"), 2),
            ])
    return markdown(header, rows)


# --------------------------------------------------------------------------- parts


def run_weather(settings, root):
    part = {"models": {}, "stations": {}, "recipe": {}}
    models, cfgs = {}, {}
    for name, extra in settings["weather_models"].items():
        args = [*settings["weather_base"], *extra]
        cfg, summary, model = train_model(args, os.path.join(root, f"weather_{name}"))
        models[name], cfgs[name] = model, cfg
        part["recipe"][name] = " ".join(args)
        part["models"][name] = {
            "train_seconds": summary["train_seconds"], "epochs": summary["epochs_run"],
            "stopped_by_time_budget": summary["stopped_by_time_budget"],
            "parameters": summary["parameters"], "best_val_loss": summary["best_val_loss"],
            "saved_model": summary["saved_model"],
        }
        print(f"  {name}: {summary['parameters']:,} parameters, {summary['epochs_run']} epochs, "
              f"{summary['train_seconds']:.0f} s", flush=True)
    horizon = cfgs["patchtst"].horizon
    if any(c.horizon != horizon for c in cfgs.values()):
        raise ValueError("The weather models must share the horizon (one backtest).")
    lookbacks = sorted({c.lookback for c in cfgs.values()})

    for station in settings["stations"]:
        data = load_data(training.parse_config(
            Config, [*settings["weather_base"], "--data", f"weather_nyc:{station}"],
            presets=PRESETS))
        ridge, ridge_info = ridge_forecasts(data, settings["ridge_lookback"], horizon,
                                            settings["ridge_alphas"], horizon)
        # The linear bar for models that read covariates: the same ridge on the last
        # hours of every channel (weather covariates and calendar).
        ridge_all, ridge_all_info = ridge_forecasts(
            data, settings["ridge_all_lookback"], horizon, settings["ridge_alphas"], horizon,
            channels="all")
        start = time.perf_counter()
        # Models with different lookbacks forecast from the same test origins (the split
        # starts long after either lookback); each group runs on its own windows.
        forecasts, seconds, origins = {"ridge": ridge, "ridge_all": ridge_all}, {}, None
        for lookback in lookbacks:
            group = {k: m for k, m in models.items() if cfgs[k].lookback == lookback}
            r = backtest(data, lookback, horizon, group, baselines=())
            if origins is not None and not np.array_equal(origins, r["windows"].origin):
                raise ValueError("Lookbacks with different test origins: not one backtest.")
            origins = r["windows"].origin
            forecasts.update(r["forecasts"])
            seconds.update(r["seconds"])
        result = backtest(data, lookbacks[0], horizon, baselines=(
            "naive", "seasonal_naive", *settings["statistical"]), forecasts=forecasts,
            seasonal_periods=(24, 168), fit_window=settings["fit_window"])
        assert np.array_equal(origins, result["windows"].origin)
        part["stations"][station] = {
            "origins": int(len(result["windows"].origin)), "stride": result["stride"],
            "season": result["season"],
            "test_start": str(result["raw"].future_times[0, 0]),
            "backtest_seconds": {k: round(v, 2) for k, v in {**seconds, **result["seconds"]}.items()},
            "ridge": ridge_info,
            "ridge_all": ridge_all_info,
            "models": {k: model_metrics(m) for k, m in result["metrics"].items()},
        }
        if station == "JFK":
            part["models"]["ridge"] = {k: ridge_info[k] for k in ("train_seconds", "parameters")}
            part["models"]["ridge_all"] = {k: ridge_all_info[k]
                                           for k in ("train_seconds", "parameters")}
            data_jfk = data
        print(f"  {station}: backtest of {len(result['metrics'])} models in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    for name, info in part["models"].items():
        if "saved_model" in info:
            info["latency"] = serving_latency_ms(
                info.pop("saved_model"), data_jfk, cfgs[name].lookback, horizon,
                settings["latency_calls"])
    return part


def run_stock(settings, root):
    part = {"models": {}, "horizons": {}, "recipe": {}}
    for h in settings["stock_horizons"]:
        models, adjustments, data, cfg = {}, {}, None, None
        for revin in (True, False):
            name = f"patchtst_revin_{'on' if revin else 'off'}"
            args = [*settings["stock_base"], "--horizon", str(h), "--revin", str(revin).lower()]
            cfg, summary, model = train_model(args, os.path.join(root, f"stock_h{h}_{name}"))
            models[name] = model
            # What training fitted on validation: the random-walk weight, the band factors.
            adjustments[name] = {k: np.asarray(summary[k]) for k in ADJUSTMENTS if k in summary}
            part["recipe"][f"h{h}_{name}"] = " ".join(args)
            part["models"][f"h{h}_{name}"] = {
                "train_seconds": summary["train_seconds"], "epochs": summary["epochs_run"],
                "parameters": summary["parameters"], "best_val_loss": summary["best_val_loss"],
                "saved_model": summary["saved_model"],
            }
            print(f"  h={h} {name}: {summary['epochs_run']} epochs, "
                  f"{summary['train_seconds']:.0f} s", flush=True)
        data = load_data(cfg)
        result = backtest(data, cfg.lookback, h, models, cfg.quantiles, baselines=("naive",),
                          adjustments=adjustments)
        raw = result["raw"]
        up = raw.future_targets > raw.last_targets[:, None, :]
        part["horizons"][str(h)] = {
            "origins": int(len(result["windows"].origin)), "stride": result["stride"],
            "test_start": str(raw.future_times[0, 0]),
            # "Always up" scores this: the drift any directional accuracy competes with.
            "share_of_up_moves": float(np.mean(up)),
            "models": {k: model_metrics(m) for k, m in result["metrics"].items()},
        }
        for key, info in part["models"].items():
            if key.startswith(f"h{h}_") and "saved_model" in info:
                info["latency"] = serving_latency_ms(info.pop("saved_model"), data,
                                                     cfg.lookback, h, settings["latency_calls"])
    return part


def headline(info):
    out = {}
    weather, stock = info.get("weather"), info.get("stock")
    if weather:
        jfk = weather["stations"]["JFK"]["models"]
        out["weather_mae_tfattn"] = jfk["patchtst"]["mae"]
        out["weather_mae_seasonal_naive"] = jfk["seasonal_naive"]["mae"]
        out["weather_mae_dlinear"] = jfk["dlinear"]["mae"]
        best = min((k for k in jfk if k in STATISTICAL), key=lambda k: jfk[k]["mae"])
        out["weather_mae_best_statistical"] = jfk[best]["mae"]
        out["weather_best_statistical_model"] = best
        out["weather_mae_ridge"] = jfk["ridge"]["mae"]
        out["weather_mae_ridge_all_channels"] = jfk["ridge_all"]["mae"]
        out["weather_targets"] = {
            "patchtst_le_0.95_dlinear": jfk["patchtst"]["mae"] <= 0.95 * jfk["dlinear"]["mae"],
            "patchtst_below_best_statistical": jfk["patchtst"]["mae"] < jfk[best]["mae"],
            "patchtst_le_0.70_seasonal_naive":
                jfk["patchtst"]["mae"] <= 0.70 * jfk["seasonal_naive"]["mae"],
        }
    if stock:
        h1 = stock["horizons"]["1"]["models"]["patchtst_revin_on"]
        out["stock_mase_h1"] = h1["relative_mae"]
        out["stock_direction_accuracy_h1"] = h1["direction_accuracy"]
        out["stock_direction_p_value_h1"] = h1["direction_p_value"]
        coverages = [run["models"]["patchtst_revin_on"]["coverage"]
                     for run in stock["horizons"].values()]
        out["stock_p10_p90_coverage"] = float(np.mean(coverages))  # over horizons 1 and 5
    return out


# --------------------------------------------------------------------------- main


def read_results(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models: the code path in ~1 min")
    parser.add_argument("--part", choices=("all", "weather", "stock"), default="all")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/forecast.json; "
                        "with --quick a file in the temp dir)")
    parser.add_argument("--workdir", help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = args.out or (os.path.join(tempfile.gettempdir(), "forecast_quick.json") if args.quick
                       else os.path.join("benchmarks", "results", "forecast.json"))
    settings = QUICK if args.quick else FULL
    info = read_results(out)
    if info.get("quick") != args.quick:
        info = {}  # never mix quick and full parts
    for name in ("weather", "stock"):  # a part kept from an earlier run keeps its date
        if name in info and "date" not in info[name]:
            info[name]["date"] = info.get("date")
    info.update({
        "benchmark": "forecast", "quick": args.quick,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "targets": TARGETS,
    })
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        for name, fn in (("weather", run_weather), ("stock", run_stock)):
            if args.part in ("all", name):
                print(f"{name}:", flush=True)
                start, load = time.perf_counter(), load_average()
                date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                info[name] = fn(settings, root)
                # Parts may run separately (--part): each keeps its date and the load.
                info[name].update(date=date, seconds=round(time.perf_counter() - start, 1),
                                  load_average_start=load, load_average_end=load_average())
                info["headline"] = headline(info)
                os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
                with open(out, "w") as f:
                    json.dump(info, f, indent=2, default=float)
    if "weather" in info:
        print("\nWeather, JFK-trained models, test period; MAE in °F:")
        print(weather_table(info["weather"]))
    if "stock" in info:
        print("\nS&P 500, test period, prices:")
        print(stock_table(info["stock"]))
    print("\nheadline:", json.dumps(info.get("headline", {}), indent=1))
    print(f"wrote {out}")
    return info


if __name__ == "__main__":
    main()
