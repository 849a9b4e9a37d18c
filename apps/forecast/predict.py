"""Forecast from the last rows of a CSV with an exported forecaster (the graph TF Serving runs).

    python -m apps.forecast.predict --export runs/forecast/export/forecast/1 --csv recent.csv
        [--time_col date --targets y --covariates a,b --id_col store] [--output forecast.csv]

The CSV needs the columns the model was trained on (targets and covariates, in the units
of the training data) and at least `lookback` rows (`lookback + 1` for log-return
targets) after cleaning; the column names, frequency and CSV options default to the
training run's (the export's `forecast_meta.json`), so a file shaped like the training
file needs only `--csv`. Rows are cleaned as in training (sorted, duplicates averaged,
reindexed onto the frequency, gaps up to `max_gap` interpolated). With `--id_col`, every
series of a long table is forecast from its own last window. Future times follow the
frequency's grid; on trading days ("B") they are the next weekdays, market holidays
included (the model counts steps, not dates).

Prints one row per future step (series, time, forecast, quantiles) and writes a CSV when
asked.
"""

import argparse
import csv
import logging
import os

import numpy as np
import pandas as pd
import tensorflow as tf

from apps.forecast.data import load_forecast_data
from apps.forecast.export import META_FILE, read_meta
from apps.forecast.windows import to_unix_seconds
from tfattn.training.cli import run_cli
from tfattn.training.export import SIGNATURE


def last_windows(csv_path, meta, time_col=None, targets=None, covariates=None, id_col=None,
                 skiprows=None, dayfirst=None, time_format=None):
    """The last `window_length` cleaned rows of every series in the CSV.

    Returns:
        (series ids, window float32 (S, W, targets + covariates), timestamps int64 (S, W),
        last time per series (datetime64)).
    """
    option = lambda value, key: meta.get(key) if value is None else value  # noqa: E731
    targets = targets or ",".join(meta["targets"])
    covariates = covariates if covariates is not None else ",".join(meta["covariates"])
    length = meta["window_length"]
    # The loader also fits a scaler, which warns about constant columns: not ours to use here.
    scaler_log = logging.getLogger("apps.forecast.windows")
    level = scaler_log.level
    scaler_log.setLevel(logging.ERROR)
    try:
        data = load_forecast_data(
            csv_path, time_col=option(time_col, "time_col"), targets=targets,
            covariates=covariates or [], id_col=option(id_col, "id_col"), freq=meta["freq"],
            skiprows=option(skiprows, "skiprows") or 0,
            dayfirst=bool(option(dayfirst, "dayfirst")),
            time_format=option(time_format, "time_format"), max_gap=meta.get("max_gap"),
            target_transform="none", calendar=False, split_fractions=(1.0, 0.0, 0.0),
        )
    finally:
        scaler_log.setLevel(level)
    expected = len(meta["targets"]) + len(meta["covariates"])
    got = data.num_targets + data.num_covariates
    if data.num_targets != len(meta["targets"]) or got != expected:
        raise ValueError(
            f"{csv_path}: the model takes {len(meta['targets'])} target(s) {meta['targets']} "
            f"and {len(meta['covariates'])} covariate(s) {meta['covariates']}; the columns "
            f"chosen are {list(data.target_names)} and {list(data.covariate_names)}"
        )
    ids, windows, stamps, last = [], [], [], []
    for i, sid in enumerate(data.series_ids):
        values, times = data.raw_values[i], data.timestamps[i]
        label = f"{csv_path}" + (f" series {sid!r}" if data.num_series > 1 else "")
        if len(values) < length:
            raise ValueError(
                f"{label} has {len(values)} rows (after cleaning, at frequency "
                f"{meta['freq']!r}); the model needs the last {length} rows (lookback "
                f"{meta['lookback']}{' + 1 for the first log return' if length > meta['lookback'] else ''})"
            )
        window = values[-length:]
        missing = ~np.isfinite(window)
        if missing.any():
            columns = [c for c, m in zip(data.target_names + data.covariate_names,
                                         missing.any(axis=0)) if m]
            raise ValueError(
                f"{label}: the last {length} rows have missing values in {columns} (gaps "
                f"longer than max_gap={meta.get('max_gap')} are not filled); fill them"
            )
        ids.append(sid)
        windows.append(window.astype(np.float32))
        stamps.append(to_unix_seconds(times[-length:]))
        last.append(times[-1])
    return ids, np.stack(windows), np.stack(stamps).astype(np.int64), last


def future_times(last_time, horizon, freq):
    """The `horizon` timestamps after `last_time` on the frequency's grid."""
    return pd.date_range(pd.Timestamp(last_time), periods=horizon + 1, freq=freq)[1:]


def predict_csv(export_path, csv_path, **csv_options):
    """Forecast rows for the last window of each series in `csv_path`.

    Returns:
        (rows, meta): one dict per series and future step with `series`, `time`, every
        target's point forecast and, for quantile models, `<target>_p<level>` columns.
    """
    if not os.path.isfile(os.path.join(export_path, "saved_model.pb")):
        raise ValueError(f"--export: {export_path} is not a SavedModel folder (no saved_model.pb)")
    meta = read_meta(export_path, META_FILE)
    fn = tf.saved_model.load(export_path).signatures.get(SIGNATURE)
    if fn is None:
        raise ValueError(f"{export_path}: the SavedModel has no {SIGNATURE!r} signature")
    ids, window, stamps, last = last_windows(csv_path, meta, **csv_options)
    out = fn(window=tf.constant(window), timestamps=tf.constant(stamps))
    forecast = out["forecast"].numpy()  # (S, H, T)
    quantiles = out["quantiles"].numpy() if "quantiles" in out else None
    rows = []
    for s, sid in enumerate(ids):
        for h, when in enumerate(future_times(last[s], meta["horizon"], meta["freq"])):
            row = {"series": sid, "time": when.isoformat(sep=" ")}
            for t, name in enumerate(meta["targets"]):
                row[name] = float(forecast[s, h, t])
                if quantiles is not None:
                    for q, level in enumerate(meta["quantiles"]):
                        row[f"{name}_p{100 * level:g}"] = float(quantiles[s, h, t, q])
            rows.append(row)
    return rows, meta


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m apps.forecast.predict",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True,
                        help="SavedModel version folder, e.g. runs/forecast/export/forecast/1")
    parser.add_argument("--csv", required=True, help="CSV whose last rows are the model's input")
    parser.add_argument("--time_col", help="time column (default: the training run's)")
    parser.add_argument("--targets", help="target column(s), comma-separated (default: the training run's)")
    parser.add_argument("--covariates", help="covariate column(s), comma-separated (default: the training run's)")
    parser.add_argument("--id_col", help="series-id column of a long table (default: the training run's)")
    parser.add_argument("--skiprows", type=int, help="lines before the header (default: the training run's)")
    parser.add_argument("--dayfirst", choices=("true", "false"), help="day/month/year dates")
    parser.add_argument("--time_format", help="strftime format of the time column")
    parser.add_argument("--output", help="CSV file to write the forecast to")
    args = parser.parse_args(argv)
    rows, meta = predict_csv(
        args.export, args.csv, time_col=args.time_col, targets=args.targets,
        covariates=args.covariates, id_col=args.id_col, skiprows=args.skiprows,
        dayfirst=None if args.dayfirst is None else args.dayfirst == "true",
        time_format=args.time_format,
    )
    columns = list(rows[0])
    print("  ".join(f"{c:>19}" for c in columns))
    for row in rows:
        print("  ".join(f"{v:>19.4f}" if isinstance(v, float) else f"{v!s:>19}"
                        for v in row.values()))
    if args.output:
        with open(args.output, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.output}")
    return rows


if __name__ == "__main__":
    run_cli(main)
