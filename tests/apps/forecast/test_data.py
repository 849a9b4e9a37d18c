import logging

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from apps.forecast import data as fd
from apps.forecast import windows as fw


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Overrides the conftest fixture: no Keras state here, and clear_session costs ~0.5 s."""
    yield


def _hourly_frame(n=200, start="2021-03-01 00:00", seed=0, covariate=True):
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=n, freq="h")
    frame = pd.DataFrame({
        "date": t.strftime("%Y-%m-%d %H:%M:%S"),
        "load": 10 + np.sin(np.arange(n) / 4) + rng.normal(0, 0.1, n),
    })
    if covariate:
        frame["temp"] = 5 + rng.normal(0, 1, n)
    return frame


def _write(tmp_path, frame, name="series.csv", preamble=""):
    path = tmp_path / name
    path.write_text(preamble + frame.to_csv(index=False))
    return str(path)


def _load(path, **kwargs):
    kwargs.setdefault("time_col", "date")
    kwargs.setdefault("targets", "load")
    return fd.load_forecast_data(path, **kwargs)


# --------------------------------------------------------------------------- wide / long


def test_wide_csv_features_windows_and_scaler(tmp_path):
    frame = _hourly_frame(200)
    data = _load(_write(tmp_path, frame), covariates="temp")
    assert data.freq == "h" and data.report.freq_inferred
    assert data.feature_names == ("load", "temp", "hour_sin", "hour_cos", "weekday_sin",
                                  "weekday_cos", "year_sin", "year_cos")
    assert (data.num_targets, data.num_features) == (1, 8)
    assert data.split_bounds == [(140, 160)]
    values = frame[["load", "temp"]].to_numpy()
    np.testing.assert_allclose(data.scaler.mean[:2], values[:140].mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.scaler.std[:2], values[:140].std(0), rtol=1e-6)
    np.testing.assert_array_equal(data.scaler.mean[2:], 0)
    np.testing.assert_array_equal(data.scaler.std[2:], 1)

    w = data.windows("val", lookback=24, horizon=6)
    # First future step in val (rows 140..159) and the whole future inside val.
    np.testing.assert_array_equal(w.origin, np.arange(139, 154))
    assert w.past.shape == (15, 24, 8) and w.future.shape == (15, 6, 1)
    assert w.past.dtype == np.float32 and w.future.dtype == np.float32
    scaled = (values - values[:140].mean(0)) / values[:140].std(0)
    np.testing.assert_allclose(w.past[0, :, :2], scaled[116:140], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.future[0, :, 0], scaled[140:146, 0], rtol=1e-5, atol=1e-6)
    unix = pd.to_datetime(frame["date"]).to_numpy().astype("datetime64[s]").astype(np.int64)
    np.testing.assert_allclose(w.past[0, :, 2:], fd.calendar_features(unix[116:140], "h"))
    assert len(data.windows("train", 24, 6).origin) == 140 - 24 - 6 + 1
    assert data.windows("test", 24, 6).origin[-1] == 200 - 1 - 6

    raw = data.raw_windows(w)
    np.testing.assert_allclose(raw.future_targets[0, :, 0], values[140:146, 0])
    np.testing.assert_allclose(raw.last_targets[:, 0], values[w.origin, 0])
    assert raw.future_times[0, 0] == np.datetime64("2021-03-06T20:00")  # row 140
    np.testing.assert_allclose(data.to_original_units(w.future, w)[..., 0],
                               raw.future_targets[..., 0], rtol=1e-5)


def test_long_form_many_series(tmp_path, caplog):
    parts = []
    for k, n in (("a", 120), ("b", 150), ("tiny", 20)):
        f = _hourly_frame(n, seed=len(parts), covariate=False)
        parts.append(pd.DataFrame({"unique_id": k, "ds": f["date"], "y": f["load"] + 10 * len(parts)}))
    path = _write(tmp_path, pd.concat(parts))
    with caplog.at_level(logging.WARNING):
        data = fd.load_forecast_data(path, id_col="unique_id", time_col="ds", targets="y",
                                     lookback=24, horizon=6)
    assert data.series_ids == ("a", "b")
    assert data.report.series_skipped == {"tiny": 20}
    assert "skipped 1 of 3 series" in caplog.text
    w = data.windows("train", 24, 6)
    assert set(w.series_index) == {0, 1}
    for i, n in ((0, 120), (1, 150)):
        train_end = data.split_bounds[i][0]
        assert train_end == int(0.7 * n)
        assert (w.origin[w.series_index == i] + 6 < train_end).all()
    # The second series' windows come from the second series only (offset by 10).
    b = w.past[w.series_index == 1, :, 0] * data.scaler.std[0] + data.scaler.mean[0]
    assert b.min() > 15
    only_b = fd.load_forecast_data(path, id_col="unique_id", time_col="ds", targets="y", ids="b")
    assert only_b.series_ids == ("b",)


def test_preamble_lines_need_skiprows(tmp_path):
    path = _write(tmp_path, _hourly_frame(60), preamble="Station: X\nExported 2021,by,someone,today\n")
    with pytest.raises(ValueError, match="skiprows"):
        _load(path)
    data = _load(path, skiprows=2)
    assert len(data.timestamps[0]) == 60


def test_dayfirst_dates(tmp_path):
    t = pd.date_range("2021-01-01", periods=40, freq="D")
    frame = pd.DataFrame({"date": t.strftime("%d/%m/%Y"), "load": np.arange(40.0) + 1})
    path = _write(tmp_path, frame)
    with pytest.raises(ValueError, match=r"'13/01/2021'.*dayfirst=True"):
        _load(path)
    data = _load(path, dayfirst=True)
    np.testing.assert_array_equal(data.timestamps[0], t.to_numpy())
    assert data.freq == "D" and "hour_sin" not in data.feature_names


def test_separate_date_and_time_columns(tmp_path):
    frame = _hourly_frame(50)
    stamps = pd.to_datetime(frame.pop("date"))
    frame.insert(0, "day", stamps.dt.strftime("%Y-%m-%d"))
    frame.insert(1, "clock", stamps.dt.strftime("%H:%M"))
    data = _load(_write(tmp_path, frame), time_col="day,clock")
    np.testing.assert_array_equal(data.timestamps[0], stamps.to_numpy())
    assert data.freq == "h"


def test_utc_offsets_become_utc_wall_time(tmp_path):
    frame = _hourly_frame(30)
    frame["date"] = pd.to_datetime(frame["date"]).dt.tz_localize("Etc/GMT+5").astype(str)
    data = _load(_write(tmp_path, frame))
    assert data.timestamps[0][0] == np.datetime64("2021-03-01T05:00")


def test_duplicates_averaged_first_kept_or_rejected(tmp_path, caplog):
    frame = _hourly_frame(60)
    dup = frame.iloc[[10]].assign(load=frame["load"].iloc[10] + 2.0)
    path = _write(tmp_path, pd.concat([frame.iloc[:11], dup, frame.iloc[11:]]))
    with caplog.at_level(logging.WARNING):
        data = _load(path)
    assert "1 rows repeat an earlier timestamp; averaged" in caplog.text
    assert data.report.duplicate_rows == 1 and len(data.timestamps[0]) == 60
    assert data.raw_values[0][10, 0] == pytest.approx(frame["load"].iloc[10] + 1.0)
    first = _load(path, duplicates="first")
    assert first.raw_values[0][10, 0] == pytest.approx(frame["load"].iloc[10])
    with pytest.raises(ValueError, match=r"1 rows repeating an earlier timestamp \(first 2021-03-01 10:00"):
        _load(path, strict=True)


def test_unsorted_rows_sorted_or_rejected(tmp_path, caplog):
    frame = _hourly_frame(60)
    path = _write(tmp_path, frame.iloc[np.r_[0:20, 30:60, 20:30]])
    with caplog.at_level(logging.WARNING):
        data = _load(path)
    assert "sorted by time" in caplog.text and data.report.unsorted_rows == 1
    np.testing.assert_allclose(data.raw_values[0][:, 0], frame["load"].to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="not sorted.*strict=False"):
        _load(path, strict=True)


def test_gaps_reindexed_interpolated_and_long_gaps_drop_windows(tmp_path):
    frame = _hourly_frame(200)
    frame.loc[50, "temp"] = np.nan  # a missing value: filled
    frame.loc[80:81, "load"] = np.nan
    keep = np.ones(200, bool)
    keep[20:22] = False  # 2 missing steps: filled
    keep[100:110] = False  # 10 missing steps: longer than max_gap, left missing
    data = _load(_write(tmp_path, frame[keep]), covariates="temp", max_gap=3)
    report = data.report
    assert report.inserted_rows == 12 and len(data.timestamps[0]) == 200
    assert report.interpolated == {"load": 4, "temp": 3}
    assert report.still_missing == {"load": 10, "temp": 10} and report.gaps_left == 2
    raw = data.raw_values[0]
    np.testing.assert_allclose(raw[20:22, 0], np.interp([20, 21], [19, 22], raw[[19, 22], 0]))
    assert np.isnan(raw[100:110]).all() and np.isfinite(raw[:100]).all()
    w = data.windows("train", lookback=12, horizon=4)
    assert len(w.origin) == 140 - 16 + 1 - (10 + 12 + 4 - 1)
    touches = (w.origin + 4 >= 100) & (w.origin - 11 <= 109)
    assert not touches.any() and np.isfinite(w.past).all()
    assert "missing steps inserted: 12" in report.summary()


def test_given_and_median_frequency(tmp_path):
    frame = _hourly_frame(100)
    frame = frame.drop(index=[5, 17, 40, 41, 63])  # irregular holes: infer_freq gives up
    path = _write(tmp_path, frame)
    assert _load(path).freq == "h"
    ten_minutes = _load(path, freq="30min", max_gap=1)
    assert ten_minutes.freq == "30min" and len(ten_minutes.timestamps[0]) == 199
    days = pd.bdate_range("2021-01-04", periods=30).delete([7, 15])  # two "holidays"
    stock = pd.DataFrame({"date": days, "load": np.linspace(10, 20, 28)})
    data = _load(_write(tmp_path, stock, "stock.csv"))
    assert data.freq == "B" and len(data.timestamps[0]) == 28
    assert data.report.absent_business_days == 2 and data.report.inserted_rows == 0


def test_covariates_all_and_no_calendar(tmp_path):
    frame = _hourly_frame(60).assign(extra=1.5, label="x")
    data = _load(_write(tmp_path, frame), covariates="all", calendar=False)
    assert data.feature_names == ("load", "temp", "extra")
    assert data.windows("train", 6, 2).past.shape[-1] == 3


def test_interpolation_does_not_use_later_splits(tmp_path):
    frame = _hourly_frame(100)
    frame.loc[68:71, "load"] = np.nan  # straddles the train/val boundary (row 70)
    data = _load(_write(tmp_path, frame), max_gap=10)
    raw = data.raw_values[0][:, 0]
    assert np.isnan(raw[68:70]).all()  # train rows: the next known value is in val
    assert np.isfinite(raw[70:72]).all()  # val rows may use train values


# --------------------------------------------------------------------------- leakage


@pytest.mark.parametrize("transform", ["none", "log_return"])
def test_test_period_values_do_not_reach_training(tmp_path, transform):
    frame = _hourly_frame(300)
    frame.loc[200:203, "load"] = np.nan
    frame.loc[238:241, "load"] = np.nan  # gaps across the val/test boundary (row 240):
    frame.loc[239:242, "temp"] = np.nan  # val rows must not be filled from test rows
    kwargs = dict(covariates="temp", max_gap=6, target_transform=transform)
    base = _load(_write(tmp_path, frame, "a.csv"), **kwargs)
    test_start = base.split_bounds[0][1]
    assert test_start == 240
    changed = frame.copy()
    rng = np.random.default_rng(1)
    changed.loc[test_start:, ["load", "temp"]] = rng.uniform(50, 90, (300 - test_start, 2))
    other = _load(_write(tmp_path, changed, "b.csv"), **kwargs)
    np.testing.assert_array_equal(base.scaler.mean, other.scaler.mean)
    np.testing.assert_array_equal(base.scaler.std, other.scaler.std)
    for split in ("train", "val"):
        a, b = base.windows(split, 24, 6), other.windows(split, 24, 6)
        np.testing.assert_array_equal(a.origin, b.origin)
        np.testing.assert_array_equal(a.past, b.past)
        np.testing.assert_array_equal(a.future, b.future)
    a, b = base.windows("test", 24, 6), other.windows("test", 24, 6)
    assert not np.array_equal(a.future, b.future)  # the test itself did change something


def test_every_single_test_value_is_invisible_to_training(tmp_path):
    frame = _hourly_frame(60)
    base = _load(_write(tmp_path, frame, "a.csv"), covariates="temp")
    reference = base.windows("train", 8, 2)
    for row in range(base.split_bounds[0][1], 60):
        for column in ("load", "temp"):
            changed = frame.copy()
            changed.loc[row, column] += 100.0
            other = _load(changed, time_col="date", targets="load", covariates="temp")
            w = other.windows("train", 8, 2)
            np.testing.assert_array_equal(w.past, reference.past)
            np.testing.assert_array_equal(w.future, reference.future)
            np.testing.assert_array_equal(other.scaler.mean, base.scaler.mean)


# --------------------------------------------------------------------------- bad input


def test_missing_columns_list_the_columns_present(tmp_path):
    path = _write(tmp_path, _hourly_frame(30))
    with pytest.raises(ValueError, match=r"target column\(s\) \['price'\] not found; columns present: \['date', 'load', 'temp'\]"):
        _load(path, targets="price")
    with pytest.raises(ValueError, match=r"covariate column\(s\) \['wind'\] not found"):
        _load(path, covariates="temp,wind")
    with pytest.raises(ValueError, match=r"time column\(s\) \['when'\] not found"):
        _load(path, time_col="when")


def test_non_numeric_target_names_column_value_and_row(tmp_path):
    frame = _hourly_frame(30)
    frame["load"] = frame["load"].astype(object)
    frame.loc[7, "load"] = "n/a?"
    with pytest.raises(ValueError, match=r"target column 'load' is not numeric: value 'n/a\?' at row 7 \(line 9 of the file\)"):
        _load(_write(tmp_path, frame))


def test_log_return_needs_positive_prices(tmp_path):
    frame = _hourly_frame(40)
    frame.loc[12, "load"] = 0.0
    with pytest.raises(ValueError, match="needs positive prices.*2021-03-01 12:00"):
        _load(_write(tmp_path, frame), target_transform="log_return")


def test_series_shorter_than_lookback_plus_horizon(tmp_path):
    path = _write(tmp_path, _hourly_frame(100))
    with pytest.raises(ValueError, match=r"has 100 rows, too few for lookback 96 \+ horizon 24 .*train has 70 rows, needs 120.*at least 237 rows long"):
        _load(path, lookback=96, horizon=24)
    data = _load(path)
    with pytest.raises(ValueError, match=r"No train windows: .*at least 237 rows long"):
        data.windows("train", 96, 24)
    with pytest.raises(ValueError, match=r"val has 10 rows, needs 24"):
        data.windows("val", 4, 24)
    assert fw.required_length(96, 24) == 237
    assert fw.length_problem(237, 96, 24, fw.DEFAULT_SPLIT_FRACTIONS) is None
    assert fw.length_problem(236, 96, 24, fw.DEFAULT_SPLIT_FRACTIONS) is not None


def test_all_nan_column(tmp_path):
    frame = _hourly_frame(30).assign(temp=np.nan)
    with pytest.raises(ValueError, match=r"column\(s\) \['temp'\] hold no numbers .*drop them"):
        _load(_write(tmp_path, frame), covariates="temp")


def test_column_missing_from_training_split(tmp_path):
    frame = _hourly_frame(30)
    frame.loc[:25, "temp"] = np.nan
    with pytest.raises(ValueError, match=r"\['temp'\] have no values in the training split"):
        _load(_write(tmp_path, frame), covariates="temp")


def test_every_id_too_short_is_an_error(tmp_path):
    frame = pd.concat([
        pd.DataFrame({"id": k, **_hourly_frame(n, covariate=False)}) for k, n in (("a", 30), ("b", 40))
    ])
    with pytest.raises(ValueError, match=r"All 2 series are too short; e\.g\. series 'a' has 30 rows.*at least 57 rows"):
        _load(_write(tmp_path, frame), id_col="id", lookback=24, horizon=6)
    with pytest.raises(ValueError, match=r"series id\(s\) \['c'\] not in column 'id'; ids present: \['a', 'b'\]"):
        _load(_write(tmp_path, frame), id_col="id", ids=["c"])


def test_missing_file_and_unknown_names():
    with pytest.raises(ValueError, match=r"nowhere/prices\.csv: no such file.*built-in name"):
        fd.load_forecast_data("nowhere/prices.csv", time_col="date", targets="close")
    with pytest.raises(ValueError, match=r"Unknown weather station\(s\) \['XYZ'\]"):
        fd.load_forecast_data("weather_nyc:XYZ")
    with pytest.raises(ValueError, match="target_transform"):
        fd.load_forecast_data("sp500", target_transform="pct")


def test_unparseable_frequency_and_empty_split(tmp_path):
    path = _write(tmp_path, _hourly_frame(60))
    with pytest.raises(ValueError, match="not a pandas frequency alias"):
        _load(path, freq="hourly")
    data = _load(path, split_fractions=(0.8, 0.0, 0.2))
    with pytest.raises(ValueError, match="The val split is empty"):
        data.windows("val", 8, 2)
    with pytest.raises(ValueError, match="must sum to 1"):
        _load(path, split_fractions=(0.7, 0.2, 0.2))


# --------------------------------------------------------------------------- calendar


def test_calendar_numpy_and_tensorflow_agree():
    rng = np.random.default_rng(0)
    # 1890..2110, both sides of 1970 and of leap days/centuries.
    seconds = rng.integers(-80 * 365 * 86400, 140 * 365 * 86400, 5000)
    seconds = np.concatenate([seconds, [0, -1, 951782400, 951868800, 4107542400]])
    for freq in ("15min", "h", "D", "B", "W", "MS"):
        expected = fd.calendar_features(seconds, freq)
        got = fd.calendar_features_tf(tf.constant(seconds, tf.int64), freq).numpy()
        assert expected.shape == (len(seconds), len(fd.calendar_feature_names(freq)))
        np.testing.assert_allclose(got, expected, atol=1e-6)
    traced = tf.function(lambda s: fd.calendar_features_tf(s, "h"))
    np.testing.assert_allclose(traced(tf.constant(seconds[:10].astype(np.float64))).numpy(),
                               fd.calendar_features(seconds[:10], "h"), atol=1e-6)
    with pytest.raises(ValueError, match="float32"):
        fd.calendar_features_tf(tf.constant([1.0], tf.float32), "h")


def test_calendar_matches_pandas_calendar():
    t = pd.date_range("1899-12-25", "2101-01-05", freq="37h")
    seconds = t.asi8 // 10**9
    features = fd.calendar_features(seconds, "h")
    hours = t.hour + t.minute / 60
    np.testing.assert_allclose(features[:, 0], np.sin(2 * np.pi * hours / 24), atol=1e-6)
    np.testing.assert_allclose(features[:, 3], np.cos(2 * np.pi * t.dayofweek / 7), atol=1e-6)
    days_in_year = np.where(t.is_leap_year, 366, 365)
    position = (t.dayofyear - 1 + hours / 24) / days_in_year
    np.testing.assert_allclose(features[:, 4], np.sin(2 * np.pi * position), atol=1e-6)
    np.testing.assert_allclose(features[:, 5], np.cos(2 * np.pi * position), atol=1e-6)
    assert fd.calendar_feature_names("D") == (
        "weekday_sin", "weekday_cos", "year_sin", "year_cos")
    assert fd.calendar_feature_names("MS") == ("year_sin", "year_cos")
    assert fd.calendar_feature_names("YS") == ()


# --------------------------------------------------------------------------- tf.data, prices


def test_make_dataset_matches_windows(tmp_path):
    frame = pd.concat([pd.DataFrame({"id": k, **_hourly_frame(80, seed=j)}) for j, k in enumerate("ab")])
    data = _load(_write(tmp_path, frame), id_col="id", covariates="temp")
    w = data.windows("test", 12, 3)
    ds = data.make_dataset("test", 12, 3, batch_size=5)
    batches = list(ds.as_numpy_iterator())
    assert [len(b[0]) for b in batches] == [5] * (len(w.origin) // 5) + [len(w.origin) % 5] * (len(w.origin) % 5 > 0)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), w.past)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), w.future)
    train = data.windows("train", 12, 3)
    shuffled = np.concatenate([b[1] for b in data.make_dataset("train", 12, 3, 16, seed=3)])
    assert not np.array_equal(shuffled, train.future)
    order = lambda x: x[np.lexsort(x.reshape(len(x), -1).T)]  # noqa: E731
    np.testing.assert_array_equal(order(shuffled), order(train.future))
    assert ds.element_spec[0].shape.as_list() == [None, 12, data.num_features]


def test_log_returns_and_price_reconstruction(tmp_path):
    days = pd.bdate_range("2020-01-01", periods=120)
    prices = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, 120)))
    path = _write(tmp_path, pd.DataFrame({"Date": days, "Close": prices}))
    data = fd.load_forecast_data(path, targets="Close", target_transform="log_return")
    np.testing.assert_allclose(data.values[0][1:, 0], np.diff(np.log(prices)))
    assert np.isnan(data.values[0][0, 0])
    w = data.windows("test", 10, 5)
    raw = data.raw_windows(w)
    np.testing.assert_allclose(data.to_original_units(w.future, w), raw.future_targets, rtol=1e-5)
    np.testing.assert_allclose(
        fd.returns_to_prices(prices[9], np.diff(np.log(prices[9:14]))), prices[10:14])
    q = np.stack([w.future] * 3, axis=-1)  # (N, H, T, quantiles)
    assert data.to_original_units(q, w).shape == w.future.shape + (3,)
    longer = data.raw_windows(w, lookback=11)  # one more price, to turn into 10 returns
    np.testing.assert_allclose(longer.past_values[:, 1:], raw.past_values)


# --------------------------------------------------------------------------- bundled data


def test_bundled_stock_series():
    sp500 = fd.load_forecast_data("sp500")
    t = sp500.timestamps[0]
    assert len(t) == 5031 and sp500.freq == "B"
    assert (t[0], t[-1]) == (np.datetime64("1999-01-04"), np.datetime64("2018-12-31"))
    assert sp500.target_names == ("Close",) and sp500.target_transform == "log_return"
    assert sp500.raw_values[0][-1, 0] == pytest.approx(2506.850098)
    msft = fd.load_forecast_data("msft", target_transform="none")
    t = msft.timestamps[0]
    assert len(t) == 7983
    assert (t[0], t[-1]) == (np.datetime64("1986-03-13"), np.datetime64("2017-11-10"))
    raw = pd.read_csv(fd.os.path.join(fd.DATA_DIR, "sp500.csv.gz"))
    assert list(raw.columns) == ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]


def test_bundled_weather():
    raw = pd.read_csv(fd.os.path.join(fd.DATA_DIR, "nyc_weather_2013.csv.gz"))
    assert len(raw) == 26115 and sorted(raw["origin"].unique()) == list(fd.WEATHER_STATIONS)
    data = fd.load_forecast_data("weather_nyc:all")
    assert data.series_ids == ("EWR", "JFK", "LGA") and data.freq == "h"
    assert data.target_names == ("temp",) and "wind_gust" not in data.feature_names
    for t in data.timestamps:  # EST: 2013-01-01 06:00 UTC .. 2013-12-30 23:00 UTC
        assert len(t) == 8730
        assert (t[0], t[-1]) == (np.datetime64("2013-01-01T01:00"), np.datetime64("2013-12-30T18:00"))
    assert all(np.isfinite(v).all() for v in data.values)  # every gap <= max_gap 12
    two = fd.load_forecast_data("weather_nyc:EWR", targets="temp,humid")
    assert two.target_names == ("temp", "humid") and "humid" not in two.covariate_names
    assert two.windows("test", 24, 6).future.shape[-1] == 2
    jfk = fd.load_forecast_data("weather_nyc")
    assert jfk.series_ids == ("JFK",)
    w = jfk.windows("test", 168, 24)
    r = jfk.raw_windows(w)
    # The reference number: seasonal naive (24 h) MAE on the last 20% of 2013.
    assert np.abs(r.future_targets - r.past_values[:, -24:, :1]).mean() == pytest.approx(6.43, abs=0.01)
