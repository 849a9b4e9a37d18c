"""The forecasting app end to end on the bundled real series: train (weather, and S&P 500
with quantiles), TensorBoard output, backtest with baselines, export in original units,
REST, predict from a CSV, and the command line."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from apps.forecast import evaluate as fev
from apps.forecast import export as fex
from apps.forecast import metrics as fm
from apps.forecast import predict as fpr
from apps.forecast import train as ftr
from apps.forecast.config import PRESETS, Config
from tests.killing import run_killed_after_epoch
from tfattn import training

pytestmark = pytest.mark.xdist_group("forecast_e2e")  # one worker trains the shared runs once

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
# S&P 500 closes as log returns, quantiles P10/P50/P90; every 5th window keeps it quick.
STOCK = dict(PRESETS["test"], data="sp500", lookback=20, horizon=5, quantiles=(0.1, 0.5, 0.9),
             patch_len=5, patch_stride=5, train_stride=5, val_stride=5, eval_stride=5,
             shrink_to_naive=True)


@pytest.fixture(scope="module")
def weather(tmp_path_factory):
    # Combined with the random walk at weights fitted on validation (the point-forecast path).
    cfg = Config(**PRESETS["test"], shrink_to_naive=True,
                 workdir=str(tmp_path_factory.mktemp("weather") / "run"))
    return cfg, ftr.run(cfg)


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    cfg = Config(**STOCK, workdir=str(tmp_path_factory.mktemp("stock") / "run"))
    return cfg, ftr.run(cfg)


def _tags(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(directory, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags.get("images", [])) | set(tags.get("scalars", [])) | set(tags.get("tensors", []))


def test_weather_run_writes_everything(weather):
    cfg, summary = weather
    for name in ("config.json", "preprocessing.json", "model.keras", "summary.json",
                 "checkpoints/best.keras"):
        assert os.path.exists(os.path.join(cfg.workdir, name)), name
    assert not os.path.exists(os.path.join(cfg.workdir, "backup"))
    assert summary["epochs_run"] == 2 and summary["num_replicas"] == 1
    assert len(summary["test_mae_per_horizon"]) == cfg.horizon
    assert np.isfinite(summary["test_mae"]) and summary["test_mae"] > 0
    # Temperatures in °F: an untrained-looking model is still within a few tens of degrees,
    # and the baselines are the known ones on the last 20% of 2013 (JFK).
    assert summary["test_mae"] < 20 and 2 < summary["test_mae_naive"] < 6
    assert summary["season"] == 24 and summary["test_origins"] > 100
    with open(os.path.join(cfg.workdir, "summary.json")) as f:
        assert json.load(f)["test_mae"] == pytest.approx(summary["test_mae"])
    assert os.path.exists(os.path.join(summary["saved_model"], fex.META_FILE))

    tb = os.path.join(cfg.workdir, "tensorboard")
    assert {"epoch_loss", "epoch_mae", "epoch_learning_rate",
            "epoch_input_wait_fraction"} <= _tags(os.path.join(tb, "train"))
    assert {"epoch_loss", "epoch_mae"} <= _tags(os.path.join(tb, "validation"))
    assert {"forecasts", "error_by_horizon", "attention/over_input_patches",
            "attention/last_layer"} <= _tags(os.path.join(tb, "images"))


def test_stock_run_forecasts_quantile_prices(stock):
    cfg, summary = stock
    assert summary["units"] == "Close" and summary["season"] == 1  # trading days: random walk
    assert 0.0 <= summary["test_coverage"] <= 1.0
    assert 0.0 <= summary["test_direction_accuracy"] <= 1.0
    assert 0.0 <= summary["test_direction_p_value"] <= 1.0
    # Prices (~2000-2900 in the test years), not returns.
    assert 5 < summary["test_mae_naive"] < 100 and summary["test_mae"] < 200
    meta = fex.read_meta(summary["saved_model"], fex.META_FILE)
    assert meta["window_length"] == cfg.lookback + 1 and meta["target_transform"] == "log_return"
    # The random-walk weights and the band's conformal factors: one per horizon step, in
    # the summary, the workdir and the export's meta; the backtest scores the adjusted
    # forecasts and reports the model alone next to them.
    fitted = fev.read_adjustments(cfg.workdir)
    weight, scale = fitted["naive_weight"], fitted["band_scale"]
    assert scale.shape == weight.shape == (cfg.horizon, 1) and np.all(scale > 0)
    assert np.all((weight >= 0) & (weight <= 1))
    assert meta["band_scale"] == summary["band_scale"] == scale.tolist()
    assert meta["naive_weight"] == summary["naive_weight"] == weight.tolist()
    data = fev.load_data(cfg)
    model = keras.saving.load_model(os.path.join(cfg.workdir, "model.keras"), compile=False)
    args = (data, cfg.lookback, cfg.horizon, {"patchtst": model}, cfg.quantiles)
    adjusted = fev.backtest(*args, stride=cfg.backtest_stride, adjustments={"patchtst": fitted})
    combined = fev.backtest(*args, stride=cfg.backtest_stride,
                            adjustments={"patchtst": {"naive_weight": weight}})
    raw = fev.backtest(*args, stride=cfg.backtest_stride)
    mine = adjusted["metrics"]["patchtst"]
    assert mine["coverage"] == pytest.approx(summary["test_coverage"])
    assert mine["mae"] == pytest.approx(summary["test_mae"])
    assert mine["mae_uncombined"] == pytest.approx(raw["metrics"]["patchtst"]["mae"])
    evaluated = fev.evaluate_workdir(cfg.workdir, baselines=("naive",))  # reads the factors
    assert evaluated["metrics"]["patchtst"]["coverage"] == pytest.approx(summary["test_coverage"])
    assert evaluated["metrics"]["patchtst"]["mae"] == pytest.approx(summary["test_mae"])
    # The band's factors leave the median (the point forecast) where the combination put it.
    assert mine["mae"] == pytest.approx(combined["metrics"]["patchtst"]["mae"])
    assert mine["coverage_uncalibrated"] == pytest.approx(
        combined["metrics"]["patchtst"]["coverage"])
    assert "coverage_uncalibrated" not in raw["metrics"]["patchtst"]
    assert "mae_uncombined" not in raw["metrics"]["patchtst"]
    naive = adjusted["forecasts"]["naive"]
    np.testing.assert_allclose(
        adjusted["forecasts"]["patchtst"],
        naive + weight[None] * (raw["forecasts"]["patchtst"] - naive), rtol=1e-12)
    np.testing.assert_allclose(adjusted["quantile_forecasts"]["patchtst"], fm.apply_band_scale(
        combined["quantile_forecasts"]["patchtst"], cfg.quantiles, scale))
    # On the validation windows they were fitted on, the combination is no worse than the
    # model alone and the band covers at least its 80%.
    w = data.windows("val", cfg.lookback, cfg.horizon, 1)
    point, values = fev.model_forecast(model, data, w, cfg.quantiles)
    val_raw = data.raw_windows(w, lookback=cfg.lookback)
    actual = val_raw.future_targets
    val_naive = np.repeat(val_raw.last_targets[:, None, :], cfg.horizon, axis=1)
    new_point, values = fev.adjust(point, values, val_naive, cfg.quantiles, fitted)
    assert np.all(fm.mae(actual, new_point) <= fm.mae(actual, point) + 1e-9)
    # (less one window for the boundary outcome's rounding)
    assert np.all(fm.coverage(actual, values[..., 0], values[..., -1]) >= 0.8 - 1 / len(w.origin))
    assert _tags(os.path.join(cfg.workdir, "tensorboard", "images")) >= {"forecasts"}


def _python_and_served(cfg, summary):
    """The Python path (model.predict on scaled windows, then to_original_units) and the
    export's serving_default on the same windows given as raw rows."""
    data = fev.load_data(cfg)
    model = keras.saving.load_model(os.path.join(cfg.workdir, "model.keras"), compile=False)
    w = data.windows("test", cfg.lookback, cfg.horizon, cfg.backtest_stride)
    python = data.to_original_units(model.predict(w.past, verbose=0), w)
    # What training fitted on validation: the random-walk weights, the band's factors.
    fitted = fev.read_adjustments(cfg.workdir)
    assert "naive_weight" in fitted
    last = data.raw_windows(w, lookback=cfg.lookback).last_targets
    naive = np.repeat(last[:, None, :], cfg.horizon, axis=1)
    if cfg.quantiles is None:
        python, _ = fev.adjust(python, None, naive, None, fitted)
    else:
        _, python = fev.adjust(fev.point_forecast(python, cfg.quantiles), python, naive,
                               cfg.quantiles, fitted)
    meta = fex.read_meta(summary["saved_model"], fex.META_FILE)
    inputs = fex.raw_inputs(data, w, meta)
    fn = tf.saved_model.load(summary["saved_model"]).signatures["serving_default"]
    served = {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    return data, w, python, inputs, served


@pytest.mark.parametrize("run", ["weather", "stock"])
def test_export_matches_python_in_original_units(run, request):
    cfg, summary = request.getfixturevalue(run)
    _, w, python, inputs, served = _python_and_served(cfg, summary)
    assert inputs["window"].shape == (len(w.origin), fex.read_meta(
        summary["saved_model"], fex.META_FILE)["window_length"], inputs["window"].shape[2])
    if cfg.quantiles is None:
        assert set(served) == {"forecast"}
        np.testing.assert_allclose(served["forecast"], python, rtol=1e-5, atol=1e-5)
    else:  # prices: relative tolerance
        assert set(served) == {"forecast", "quantiles"}
        np.testing.assert_allclose(served["quantiles"], python, rtol=1e-5)
        np.testing.assert_allclose(served["forecast"], python[..., 1], rtol=1e-5)


def test_rest_body_round_trip(stock):
    cfg, summary = stock
    _, _, python, inputs, served = _python_and_served(cfg, summary)
    body = training.rest_request_body({k: v[:3] for k, v in inputs.items()})
    response = training.call_like_rest(summary["saved_model"], body)
    got = np.array([p["quantiles"] for p in response["predictions"]])
    np.testing.assert_allclose(got, python[:3], rtol=1e-5)
    np.testing.assert_allclose([p["forecast"] for p in response["predictions"]],
                               served["forecast"][:3], rtol=1e-6)


def _write_recent_csv(data, origin, length, path, extra_rows=0):
    """Rows ending at `origin` of series 0, as a user's CSV (time + target + covariates)."""
    rows = slice(origin - length + 1 - extra_rows, origin + 1)
    frame = pd.DataFrame(data.raw_values[0][rows],
                         columns=list(data.target_names + data.covariate_names))
    frame.insert(0, "time", pd.DatetimeIndex(data.timestamps[0][rows]).strftime("%Y-%m-%d %H:%M"))
    frame.to_csv(path, index=False)
    return frame


@pytest.mark.parametrize("run", ["weather", "stock"])
def test_predict_cli_gives_the_export_forecast(run, request, tmp_path, capsys):
    cfg, summary = request.getfixturevalue(run)
    data, w, python, inputs, served = _python_and_served(cfg, summary)
    meta = fex.read_meta(summary["saved_model"], fex.META_FILE)
    i = len(w.origin) // 2
    path = tmp_path / "recent.csv"
    _write_recent_csv(data, int(w.origin[i]), meta["window_length"], path, extra_rows=3)
    out = tmp_path / "forecast.csv"
    rows = fpr.main(["--export", summary["saved_model"], "--csv", str(path),
                     "--output", str(out)])
    target = data.target_names[0]
    np.testing.assert_allclose([r[target] for r in rows], served["forecast"][i, :, 0], rtol=1e-6)
    origin_time = pd.Timestamp(data.timestamps[0][w.origin[i]])
    if data.freq == "B":  # the next weekdays: market holidays are not known ahead
        expected_times = pd.bdate_range(origin_time, periods=cfg.horizon + 1)[1:]
    else:  # hourly: the rows that follow the origin in the data
        expected_times = pd.DatetimeIndex(data.timestamps[0][w.origin[i] + 1:][: cfg.horizon])
    assert [pd.Timestamp(r["time"]) for r in rows] == list(expected_times)
    written = pd.read_csv(out)
    assert len(written) == cfg.horizon and target in written.columns
    if cfg.quantiles is not None:
        assert {f"{target}_p10", f"{target}_p50", f"{target}_p90"} <= set(written.columns)
    assert target in capsys.readouterr().out


def test_predict_errors_say_what_is_needed(weather, tmp_path, capsys):
    cfg, summary = weather
    data = fev.load_data(cfg)
    short = tmp_path / "short.csv"
    frame = _write_recent_csv(data, 500, 10, short)
    err = _user_error(capsys, fpr.main, ["--export", summary["saved_model"], "--csv", str(short)])
    assert "has 10 rows" in err and f"needs the last {cfg.lookback} rows" in err
    frame.drop(columns=["dewp"]).to_csv(tmp_path / "nodewp.csv", index=False)
    err = _user_error(capsys, fpr.main,
                      ["--export", summary["saved_model"], "--csv", str(tmp_path / "nodewp.csv")])
    assert "covariate column(s) ['dewp'] not found; columns present:" in err


def _user_error(capsys, main, argv):
    with pytest.raises(SystemExit) as info:
        training.run_cli(main, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_evaluate_writes_the_table_with_every_requested_baseline(weather, capsys):
    cfg, summary = weather
    fev.main(["--workdir", cfg.workdir, "--baselines", "naive,seasonal_naive"])
    printed = capsys.readouterr().out
    out_dir = os.path.join(cfg.workdir, "evaluation")
    table = pd.read_csv(os.path.join(out_dir, "metrics.csv"))
    assert set(table["model"]) == {"patchtst", "naive", "seasonal_naive"}
    assert len(table) == 3 * (cfg.horizon + 1)
    assert {"mae", "rmse", "mase", "smape"} <= set(table.columns)
    overall = table[table["horizon"] == "all"].set_index("model")
    # The same backtest as train's summary.
    assert overall.loc["patchtst", "mae"] == pytest.approx(summary["test_mae"], rel=1e-6)
    assert overall.loc["naive", "mae"] == pytest.approx(summary["test_mae_naive"], rel=1e-9)
    for name in ("metrics.json", "forecast_vs_actual.png", "error_by_horizon.png"):
        assert os.path.exists(os.path.join(out_dir, name)), name
    assert "seasonal_naive" in printed and "patchtst" in printed


def test_backtest_with_autoets_on_the_stock_series(stock):
    """statsforecast's AutoETS next to the model: same origins, coverage from its 80% band."""
    cfg, _ = stock
    data = fev.load_data(cfg)
    model = keras.saving.load_model(os.path.join(cfg.workdir, "model.keras"), compile=False)
    result = fev.backtest(data, cfg.lookback, cfg.horizon, {"patchtst": model}, cfg.quantiles,
                          stride=50, baselines=("naive", "AutoETS"))
    m = result["metrics"]
    assert set(m) == {"patchtst", "naive", "AutoETS"}
    assert m["naive"]["relative_mae"] == pytest.approx(1.0)
    assert 0.9 < m["AutoETS"]["relative_mae"] < 1.2  # ETS on prices is close to a random walk
    assert 0.0 <= m["AutoETS"]["coverage"] <= 1.0 and "direction_p_value" in m["AutoETS"]
    assert result["forecasts"]["AutoETS"].shape == result["actual"].shape


def test_every_config_field_has_help_shown_by_help(capsys):
    assert training.fields_without_help(Config) == []
    with pytest.raises(SystemExit) as info:
        training.parse_config(Config, ["--help"], presets=PRESETS)
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for field in Config.__dataclass_fields__.values():
        about = " ".join(field.metadata["help"].split())
        assert f"--{field.name} {field.name.upper()} {about} (" in out, field.name


def test_a_preset_works_with_another_model(capsys):
    cfg = training.parse_config(Config, ["--preset", "weather_nyc", "--model", "dlinear"],
                                presets=PRESETS)
    assert cfg.model == "dlinear" and cfg.covariate_lookback is None and cfg.lookback == 168
    assert "covariate_lookback=24" in capsys.readouterr().err
    cfg = training.parse_config(Config, ["--preset", "stock_sp500", "--model", "transformer"],
                                presets=PRESETS)
    # The transformer has patches (disjoint: no stride); quantiles are not a model setting.
    assert cfg.patch_len == 10 and cfg.patch_stride is None and cfg.quantiles is not None
    assert training.parse_config(Config, ["--preset", "weather_nyc"],
                                 presets=PRESETS).covariate_lookback == 24


def test_config_rejects_hyperparameters_of_another_model():
    with pytest.raises(ValueError, match="--model dlinear has no --num_heads"):
        Config(model="dlinear", num_heads=4)
    with pytest.raises(ValueError, match="quantiles"):
        Config(quantiles=(0.9, 0.1))
    assert Config(model="transformer", num_layers=3).model_hparams() == {"num_encoder_layers": 3}


def test_bad_csv_errors_are_one_line_from_the_command(tmp_path):
    """Subprocesses, as a user runs them: exit 2 and one line naming the problem."""
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=50, freq="D")
                          .strftime("%Y-%m-%d"), "sales": np.arange(50.0)})
    frame.to_csv(tmp_path / "sales.csv", index=False)
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "apps.forecast.train", *args,
             "--workdir", str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=300)

    result = run("--data", str(tmp_path / "sales.csv"), "--targets", "units")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        f"python -m apps.forecast.train: error: {tmp_path}/sales.csv: target column(s) "
        "['units'] not found; columns present: ['date', 'sales']."]
    result = run("--data", str(tmp_path / "sales.csv"), "--lookback", "60", "--horizon", "7")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "must be at least" in result.stderr and "rows long" in result.stderr


def test_workdir_errors_of_evaluate_export_predict_are_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    err = _user_error(capsys, fev.main, ["--workdir", missing])
    assert err.startswith("python -m apps.forecast.evaluate: error: ") and "config.json" in err
    err = _user_error(capsys, fex.main, ["--workdir", missing])
    assert err.startswith("python -m apps.forecast.export: error: ") and "preprocessing.json" in err
    err = _user_error(capsys, fpr.main, ["--export", missing, "--csv", "recent.csv"])
    assert err.startswith("python -m apps.forecast.predict: error: ") and "no saved_model.pb" in err
    with pytest.raises(SystemExit) as info:
        fev.main(["--workdir", missing, "--baselines", "naive,prophet"])
    assert info.value.code == 2 and "unknown ['prophet']" in capsys.readouterr().err


def test_predict_forecasts_every_series_of_a_long_csv(weather, tmp_path):
    """A long table (`--id_col`): each series is forecast from its own last window."""
    cfg, summary = weather
    data, w, _, _, served = _python_and_served(cfg, summary)
    i = 3
    one = _write_recent_csv(data, int(w.origin[i]), cfg.lookback, tmp_path / "one.csv")
    other = one.assign(temp=one["temp"] + 5.0)
    pd.concat([one.assign(station="A"), other.assign(station="B")]).to_csv(
        tmp_path / "long.csv", index=False)
    rows, _ = fpr.predict_csv(summary["saved_model"], str(tmp_path / "long.csv"), id_col="station")
    assert [r["series"] for r in rows] == ["A"] * cfg.horizon + ["B"] * cfg.horizon
    a = np.array([r["temp"] for r in rows[: cfg.horizon]])
    b = np.array([r["temp"] for r in rows[cfg.horizon:]])
    np.testing.assert_allclose(a, served["forecast"][i, :, 0], rtol=1e-6)
    assert not np.allclose(a, b)  # B's warmer history gives another forecast


def test_attention_maps_are_logged_in_layer_order_without_channel_mixers():
    from apps.forecast.plots import _layer_order

    names = {"encoder_10": 0, "encoder_2": 0, "decoder_0": 0, "channel_mixer_1": 0}
    assert _layer_order(names) == ["encoder_2", "encoder_10", "decoder_0"]  # last = decoder
    assert _layer_order({"attention": 0}) == ["attention"]


def test_a_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    from apps.forecast import plots

    cfg = Config(**dict(PRESETS["test"], epochs=4, plot_windows=1, early_stopping_patience=None),
                 workdir=str(tmp_path / "run"))
    run_killed_after_epoch(monkeypatch, plots, "image_callbacks", lambda: ftr.run(cfg), 1)
    assert (tmp_path / "run" / "backup").is_dir()
    assert not (tmp_path / "run" / "summary.json").exists()
    summary = ftr.run(cfg)  # the same command again resumes
    assert summary["epochs_run"] == 4 and summary["resumed_from_epoch"] == 2
    assert not (tmp_path / "run" / "backup").exists()  # removed once training finished
    ftr.print_next_steps(cfg, summary)
    assert "after 4 epochs (resumed after epoch 2: 2 epochs in " in capsys.readouterr().out
    # A different model in the same workdir is refused before anything is overwritten.
    training.write_config(cfg, tmp_path / "other")
    (tmp_path / "other" / "backup").mkdir()
    other = Config(**dict(PRESETS["test"], hidden_dim=8), workdir=str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"hidden_dim: 16 -> 8"):
        ftr.run(other)
