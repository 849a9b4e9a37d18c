"""Export a trained forecaster for TF Serving: a raw window in original units in, forecasts out.

    python -m apps.forecast.export --workdir runs/forecast [--version 2] [--overwrite]

The `serving_default` signature takes

    window      float32 (batch, W, targets + covariates)  the last W rows, in the CSV's units,
                                                           targets first, then covariates
    timestamps  int64   (batch, W)                         their times, seconds since
                                                           1970-01-01 (wall clock as UTC)

with W = lookback, or lookback + 1 for log-return targets (the first row only gives the
first return). In the graph it does what training did in Python: log returns of the target
prices (log-return targets), scaling with the training mean/std, calendar channels from the
timestamps (`calendar_features_tf`); then it runs the model (RevIN is part of it) and undoes
the scaling and the returns. It returns

    forecast    float32 (batch, horizon, targets)          point forecast, original units
                                                           (prices for log-return targets)
    quantiles   float32 (batch, horizon, targets, Q)       quantile models only, same units

For log-return targets the quantile prices compound each step's quantile return, exact at
the first step and an approximation after it (as `ForecastData.to_original_units`); the
adjustments training fitted on validation are applied as in evaluation: with
`--shrink_to_naive` the forecast is combined with the window's last value (`naive_weight`
in the meta: `last + w * (forecast - last)`, quantiles shifted with their median), then the
conformal width factors (`band_scale`) scale each step's band around the median.

What the signature needs (lookback, frequency, column names, transform, scaler) is written
next to the model as `<version>/forecast_meta.json`; `apps.forecast.predict` reads it.

REST (TF Serving row format):

    curl -d '{"instances": [{"window": [[39.0, 28.0, ...], ...], "timestamps": [1388534400, ...]}]}' \\
        http://localhost:8501/v1/models/forecast:predict
"""

import argparse
import json
import os

import numpy as np
import tensorflow as tf

from apps.forecast.data import BUILTINS, DEFAULT_MAX_GAP
from apps.forecast.windows import calendar_features_tf
from tfattn import training

META_FILE = "forecast_meta.json"
PREPROCESSING_FILE = "preprocessing.json"


def forecast_meta(cfg, data):
    """What serving and `predict` need to turn raw rows into a forecast (JSON-ready)."""
    window_length = cfg.lookback + (1 if data.target_transform == "log_return" else 0)
    k = data.num_targets + data.num_covariates
    return {
        "model": cfg.model,
        "source": data.source,
        "freq": data.freq,
        "time_col": cfg.time_col,
        "id_col": cfg.id_col,
        "skiprows": cfg.skiprows,
        "dayfirst": cfg.dayfirst,
        "time_format": cfg.time_format,
        "max_gap": resolved_max_gap(cfg),
        "targets": list(data.target_names),
        "covariates": list(data.covariate_names),
        "calendar": list(data.calendar_names),
        "target_transform": data.target_transform,
        "lookback": cfg.lookback,
        "window_length": window_length,
        "horizon": cfg.horizon,
        "quantiles": None if cfg.quantiles is None else list(cfg.quantiles),
        "mean": [float(v) for v in data.scaler.mean[:k]],
        "std": [float(v) for v in data.scaler.std[:k]],
        "last_training_time": str(np.datetime_as_string(
            max(t[b[0] - 1] for t, b in zip(data.timestamps, data.split_bounds)), unit="s")),
    }


def resolved_max_gap(cfg):
    """The `max_gap` the loader used: the flag, else the built-in's, else the default."""
    if cfg.max_gap is not None:
        return cfg.max_gap
    spec = BUILTINS.get(cfg.data.partition(":")[0])
    return spec.max_gap if spec is not None else DEFAULT_MAX_GAP


def write_meta(directory, meta, name=PREPROCESSING_FILE):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)
    return path


def read_meta(directory, name=PREPROCESSING_FILE):
    return training.read_json(os.path.join(directory, name), "python -m apps.forecast.train")


def raw_inputs(data, windows, meta):
    """The serving inputs of `windows` (from `data`): {"window", "timestamps"} arrays."""
    raw = data.raw_windows(windows, lookback=meta["window_length"])
    return {"window": raw.past_values.astype(np.float32),
            "timestamps": raw.past_unix_seconds.astype(np.int64)}


def make_preprocess(meta):
    """`{"window", "timestamps"}` raw rows -> the scaled model input (batch, lookback, F)."""
    t = len(meta["targets"])
    mean = tf.constant(np.asarray(meta["mean"], np.float64))
    std = tf.constant(np.asarray(meta["std"], np.float64))
    log_return = meta["target_transform"] == "log_return"

    def preprocess(inputs):
        window = tf.cast(inputs["window"], tf.float64)  # (batch, W, targets + covariates)
        seconds = inputs["timestamps"]
        if log_return:
            prices = window[:, :, :t]
            returns = tf.math.log(prices[:, 1:] / prices[:, :-1])  # (batch, lookback, T)
            window = tf.concat([returns, window[:, 1:, t:]], axis=-1)
            seconds = seconds[:, 1:]
        scaled = tf.cast((window - mean) / std, tf.float32)
        if not meta["calendar"]:
            return scaled
        calendar = calendar_features_tf(seconds, meta["freq"])  # (batch, lookback, C)
        return tf.concat([scaled, calendar], axis=-1)

    return preprocess


def make_postprocess(meta):
    """Scaled model output (+ the raw inputs) -> forecasts in original units."""
    t = len(meta["targets"])
    mean = tf.constant(np.asarray(meta["mean"][:t], np.float64))
    std = tf.constant(np.asarray(meta["std"][:t], np.float64))
    quantiles = meta["quantiles"]
    log_return = meta["target_transform"] == "log_return"
    band_scale = meta.get("band_scale")  # (H, T) conformal width factors, quantiles only
    naive_weight = meta.get("naive_weight")  # (H, T) model weight against the random walk
    median = None if not quantiles else int(np.argmin(np.abs(np.asarray(quantiles) - 0.5)))

    def postprocess(outputs, inputs):
        y = tf.cast(outputs, tf.float64)  # (batch, H, T) or (batch, H, T, Q)
        extra = [1] if quantiles else []
        y = y * tf.reshape(std, [t, *extra]) + tf.reshape(mean, [t, *extra])
        last = tf.cast(inputs["window"][:, -1, :t], tf.float64)  # (batch, T): the origin
        last = tf.reshape(last, [-1, 1, t, *extra])
        if log_return:
            y = last * tf.exp(tf.cumsum(y, axis=1))
        if naive_weight is not None:  # as metrics.apply_naive_weight
            weight = tf.constant(np.asarray(naive_weight, np.float64)[:, :, None])
            if quantiles:
                mid = y[..., median : median + 1]
                y = y + (1.0 - weight) * (last - mid)
            else:
                y = last + weight[..., 0] * (y - last)
        if not quantiles:
            return {"forecast": tf.cast(y, tf.float32)}
        if band_scale is not None:  # as metrics.apply_band_scale
            mid = y[..., median : median + 1]
            y = mid + tf.constant(np.asarray(band_scale, np.float64)[:, :, None]) * (y - mid)
        return {"forecast": tf.cast(y[..., median], tf.float32),
                "quantiles": tf.cast(y, tf.float32)}

    return postprocess


def export_forecaster(model, export_dir, name, version, meta, overwrite=False,
                      verify_inputs=None):
    """Writes `<export_dir>/<name>/<version>/` (+ forecast_meta.json) with the raw-window
    signature; `verify_inputs` ({"window", "timestamps"}) checks the reloaded SavedModel
    against the Keras model (`training.verify_export`)."""
    w, k = meta["window_length"], len(meta["targets"]) + len(meta["covariates"])
    report = training.export_for_serving(
        model, export_dir, name, version,
        input_signature={"window": tf.TensorSpec([None, w, k], tf.float32),
                         "timestamps": tf.TensorSpec([None, w], tf.int64)},
        preprocess=make_preprocess(meta), postprocess=make_postprocess(meta),
        overwrite=overwrite, verify_inputs=verify_inputs,
    )
    write_meta(report["path"], meta, META_FILE)
    return report


def main(argv=None):
    import keras

    parser = argparse.ArgumentParser(
        prog="python -m apps.forecast.export",
        description="Export a trained forecaster for TF Serving (raw window in, forecast out).")
    parser.add_argument("--workdir", required=True, help="folder written by apps.forecast.train")
    parser.add_argument("--model", help="a .keras file (default: <workdir>/model.keras)")
    parser.add_argument("--export_dir", help="folder of the exports (default: <workdir>/export)")
    parser.add_argument("--name", default="forecast", help="model name TF Serving serves")
    parser.add_argument("--version", type=int, help="SavedModel version (default: one above the newest)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    args = parser.parse_args(argv)

    meta = read_meta(args.workdir)
    model_path = args.model or os.path.join(args.workdir, "model.keras")
    if not os.path.exists(model_path):
        parser.error(f"--model: {model_path} does not exist")
    model = keras.saving.load_model(model_path, compile=False)
    export_dir = args.export_dir or os.path.join(args.workdir, "export")
    version = args.version if args.version is not None else training.next_version(export_dir, args.name)
    try:
        report = export_forecaster(model, export_dir, args.name, version, meta, args.overwrite)
    except FileExistsError as err:
        parser.error(str(err))
    print(f"SavedModel: {report['path']}  inputs {report['inputs']}  outputs {report['outputs']}")
    return report


if __name__ == "__main__":
    training.run_cli(main)
