"""Train a forecaster, log to TensorBoard, backtest it on the test period and export it.

    python -m apps.forecast.train --preset weather_nyc --workdir runs/weather
    python -m apps.forecast.train --preset stock_sp500 --workdir runs/sp500
    python -m apps.forecast.train --data my.csv --time_col date --targets y --lookback 96 --horizon 12
    python -m apps.forecast.train --help                                   # every field

Config -> strategy -> data -> model -> compile -> fit -> test backtest -> export. A job
killed mid-run resumes from `<workdir>/backup` when started again with the same command.
The weights kept are the best on the validation windows (`val_loss`); the test period is
only used for the final report.

Writes under `--workdir`: config.json, preprocessing.json (what serving needs), model.keras,
summary.json, tensorboard/ (scalars, config, forecasts with quantile bands on fixed
validation windows, validation error per horizon step, attention), checkpoints/ and
export/<name>/<version>/.
"""

import math
import os
import time

import keras
import numpy as np

from apps.forecast import plots
from apps.forecast.config import PRESETS, Config
from apps.forecast.evaluate import backtest, fit_adjustments, load_data
from apps.forecast.export import (
    export_forecaster,
    forecast_meta,
    raw_inputs,
    write_meta,
)
from apps.forecast.model import PointMAE, build_model, count_params, pinball_loss
from tfattn import training

# Weights that AdamW leaves undecayed: biases, norms (RevIN's too), embeddings, queries.
NO_DECAY = ["bias", "gamma", "beta", "embeddings", "queries"]

# Fields that may differ when a killed run is resumed from <workdir>/backup.
RESUME_MAY_CHANGE = (
    *training.AppConfig.RESUME_MAY_CHANGE, "plot_windows", "image_every_epochs",
    "early_stopping_patience", "eval_stride", "season", "calibrate_quantiles",
    "shrink_to_naive",
)


def make_loss(cfg):
    if cfg.quantiles is not None:
        return pinball_loss(cfg.quantiles)
    return {"mse": keras.losses.MeanSquaredError(), "mae": keras.losses.MeanAbsoluteError()}[cfg.loss]


def run(cfg):
    """Trains, backtests and exports as `cfg` says; returns the summary dict."""
    keras.utils.set_random_seed(cfg.seed)
    strategy = training.resolve_strategy(cfg.strategy, cfg.tpu)
    chief = training.is_chief(strategy)
    training.set_precision(cfg.precision)
    workdir = cfg.workdir
    training.check_resume(cfg, workdir, ignore=RESUME_MAY_CHANGE)
    training.write_config(cfg, workdir)

    # Data: cleaned series in memory; tf.data cuts (past, future) windows from them.
    data = load_data(cfg)
    print(data.describe())
    print(data.report.summary())
    meta = forecast_meta(cfg, data)
    if chief:
        write_meta(workdir, meta)
    lookback, horizon = cfg.lookback, cfg.horizon
    global_batch = training.global_batch_size(cfg.batch_size, strategy)
    train_ds = data.make_dataset("train", lookback, horizon, global_batch, shuffle=True,
                                 seed=cfg.seed, stride=cfg.train_stride)
    val_ds = data.make_dataset("val", lookback, horizon, global_batch, stride=cfg.val_stride)
    test_ds = data.make_dataset("test", lookback, horizon, global_batch, stride=cfg.backtest_stride)
    options = training.dataset_options()
    train_ds, val_ds, test_ds = (ds.with_options(options) for ds in (train_ds, val_ds, test_ds))
    num_train = len(data.window_index("train", lookback, horizon, cfg.train_stride)[1])
    steps_per_epoch = math.ceil(num_train / global_batch)

    with strategy.scope():
        model = build_model(cfg.model, lookback, horizon, data.num_features, data.num_targets,
                            quantiles=cfg.quantiles, **cfg.model_hparams())
        peak = cfg.learning_rate * global_batch / cfg.batch_size  # linear in the replicas
        fit_to_budget = bool(cfg.time_budget_minutes) and cfg.fit_schedule_to_budget
        schedule = training.warmup_cosine(
            peak, cfg.epochs, steps_per_epoch, warmup_epochs=cfg.warmup_epochs,
            end_learning_rate=min(cfg.min_learning_rate, peak), resizable=fit_to_budget,
        )
        optimizer = keras.optimizers.AdamW(
            schedule, weight_decay=cfg.weight_decay, global_clipnorm=cfg.gradient_clip_norm
        )
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
        model.compile(optimizer=optimizer, loss=make_loss(cfg), metrics=[PointMAE(cfg.quantiles)],
                      jit_compile=cfg.jit_compile, steps_per_execution=cfg.steps_per_execution)
    # Multi-worker: fit/evaluate as collectives, predict locally (the image hooks and the
    # backtest predict on each worker alone). A no-op for other strategies.
    training.enable_multi_worker_fit(model)
    print(f"{model.name}: {count_params(model):,} parameters, {num_train:,} training windows "
          f"(lookback {lookback}, horizon {horizon}), global batch {global_batch} on "
          f"{strategy.num_replicas_in_sync} replica(s)")

    callbacks = training.standard_callbacks(
        workdir, config=cfg, chief=chief, monitor="val_loss", mode="min",
        early_stopping_patience=cfg.early_stopping_patience,
    )
    input_wait = training.InputWaitCallback()
    budget = training.TimeBudget(
        cfg.time_budget_minutes, schedule=schedule if fit_to_budget else None,
        steps_per_epoch=steps_per_epoch,
    )
    callbacks[:0] = [input_wait, budget]  # before the loggers, so their values reach TensorBoard
    if chief:
        callbacks += plots.image_callbacks(cfg, model, data, plots.tensorboard_image_dir(workdir))

    start = time.time()
    history = model.fit(input_wait.wrap(train_ds), validation_data=val_ds, epochs=cfg.epochs,
                        callbacks=callbacks, verbose=cfg.verbose,
                        shuffle=False)  # the tf.data pipeline shuffles (Keras would warn)
    train_seconds = time.time() - start

    # Keep the weights that did best on validation. Only the chief holds that checkpoint;
    # under multi-worker it sends them to every other worker.
    best = os.path.join(workdir, "checkpoints", "best.keras")
    training.load_weights_everywhere(model, best, strategy, missing_ok=True)
    test = model.evaluate(test_ds, verbose=0, return_dict=True)  # every worker, exact
    training.print_weights_fingerprint(model, strategy)  # multi-worker: equal everywhere

    # Fitted on validation windows: the combination with the random walk (if asked for),
    # then the quantile band's conformal width factors.
    fitted = {}
    if cfg.shrink_to_naive or (cfg.quantiles and cfg.calibrate_quantiles):
        fitted, n = fit_adjustments(model, data, lookback, horizon, cfg.quantiles,
                                    naive_weight=cfg.shrink_to_naive,
                                    band_scale=bool(cfg.quantiles and cfg.calibrate_quantiles))
        meta.update({k: v.tolist() for k, v in fitted.items()})
        if "naive_weight" in fitted:
            print(f"Combined with the random walk on {n} validation windows: model weight "
                  f"{', '.join(f'{v:.2f}' for v in fitted['naive_weight'].mean(axis=-1))} "
                  "by horizon step")
        if "band_scale" in fitted:
            print(f"Quantile band calibrated on {n} validation windows: width x "
                  f"{', '.join(f'{v:.2f}' for v in fitted['band_scale'].mean(axis=-1))} "
                  "by horizon step")
        if chief:  # evaluate and a later export read them from there
            write_meta(workdir, meta)

    # The test backtest in original units, next to the naive and seasonal naive forecasts.
    result = backtest(data, lookback, horizon, {cfg.model: model}, cfg.quantiles,
                      stride=cfg.backtest_stride, season=cfg.season,
                      adjustments={cfg.model: fitted})
    metrics = result["metrics"]
    mine = metrics[cfg.model]
    summary = {
        "test_mae": mine["mae"],
        "test_rmse": mine["rmse"],
        "test_mase": mine["mase"],
        "test_smape": mine["smape"],
        "test_mae_per_horizon": np.mean(mine["mae_per_horizon"], axis=-1).tolist(),
        "test_rmse_per_horizon": np.mean(mine["rmse_per_horizon"], axis=-1).tolist(),
        "test_mase_per_horizon": np.mean(mine["mase_per_horizon"], axis=-1).tolist(),
        "test_mae_naive": metrics["naive"]["mae"],
        "test_mae_seasonal_naive": metrics["seasonal_naive"]["mae"],
        "test_relative_mae_vs_naive": mine["relative_mae"],
        "season": result["season"],
        "test_origins": int(len(result["windows"].origin)),
        "backtest_stride": result["stride"],
        "units": data.target_names[0] if data.num_targets == 1 else list(data.target_names),
        "test_loss": float(test["loss"]),
        "best_val_loss": float(min(history.history.get("val_loss", [float("nan")]))),
        **training.fit_epochs(history),  # epochs_run (resumed ones too), resumed_from_epoch
        "stopped_by_time_budget": budget.stopped_epoch is not None,
        "schedule_epochs": budget.planned_epochs or cfg.epochs,
        "train_seconds": round(train_seconds, 1),
        "input_wait": input_wait.summary(),
        "parameters": count_params(model),
        "num_replicas": strategy.num_replicas_in_sync,
        "global_batch_size": global_batch,
    }
    for key in ("mae_uncombined", "coverage", "coverage_uncalibrated", "direction_accuracy",
                "direction_p_value", "pinball"):
        if key in mine:
            summary[f"test_{key}"] = mine[key]
    summary.update({k: v.tolist() for k, v in fitted.items()})
    if chief:
        model.save(os.path.join(workdir, "model.keras"))
        export_dir = os.path.join(workdir, "export")
        version = cfg.export_version or training.next_version(export_dir, cfg.export_name)
        verify = raw_inputs(data, data.windows("test", lookback, horizon, cfg.backtest_stride), meta)
        report = export_forecaster(
            model, export_dir, cfg.export_name, version, meta, overwrite=cfg.overwrite,
            verify_inputs={k: v[:4] for k, v in verify.items()},
        )
        summary["saved_model"] = report["path"]
        training.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def print_next_steps(cfg, summary):
    print(f"\nTest MAE {summary['test_mae']:.4f} ({summary['units']}) over {summary['test_origins']} "
          f"origins (naive {summary['test_mae_naive']:.4f}, seasonal naive "
          f"{summary['test_mae_seasonal_naive']:.4f}; MASE {summary['test_mase']:.3f}) after "
          f"{training.epochs_text(summary)}")
    if "test_mae_uncombined" in summary:
        print(f"(combined with the random walk at the weights fitted on validation; the model "
              f"alone: test MAE {summary['test_mae_uncombined']:.4f})")
    if "test_coverage" in summary:
        raw = summary.get("test_coverage_uncalibrated")
        print(f"P{100 * cfg.quantiles[0]:g}-P{100 * cfg.quantiles[-1]:g} coverage "
              f"{100 * summary['test_coverage']:.1f}%"
              + ("" if raw is None else f" (before the validation calibration: {100 * raw:.1f}%)"))
    if "saved_model" in summary:
        training.print_next_steps(cfg.workdir, summary["saved_model"], cfg.export_name, [
            ("Evaluate", f"python -m apps.forecast.evaluate --workdir {cfg.workdir}  "
                         "(every baseline, per-horizon table and plots)"),
            ("Predict", f"python -m apps.forecast.predict --export {summary['saved_model']} "
                        "--csv <recent rows>.csv"),
        ])


def main(argv=None):
    cfg = training.parse_config(Config, argv, presets=PRESETS, prog="python -m apps.forecast.train")
    summary = run(cfg)
    print_next_steps(cfg, summary)
    return summary


if __name__ == "__main__":
    training.run_cli(main)
