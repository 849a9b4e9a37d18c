"""What the forecasting models consume: calendar features, splits, scaling, windows, tf.data.

`apps.forecast.data.load_forecast_data` cleans a source into a `ForecastData`; everything
from there on lives here:

    rows of each series ──split_bounds──▶ train | val | test        (chronological)
    features per step = [targets..., covariates..., calendar...]    (targets first)
    mean/std fitted on training rows only; calendar channels are not scaled
    window at origin o:   past   = rows o-lookback+1 .. o   (lookback, num_features)
                          future = rows o+1 .. o+horizon    (horizon, num_targets)

A window belongs to a split when its first future step is in that split; it must also keep
its whole future inside that split, so no training target comes from validation or test
rows (the `horizon - 1` windows at each split boundary are left out). Validation and test
windows may look back into earlier splits. Windows that touch a missing value (a gap
longer than `max_gap`, or the first row of a log-return series) are dropped and counted.

    data = load_forecast_data("weather_nyc")
    w = data.windows("test", lookback=168, horizon=24)  # w.past (N, 168, F), w.future (N, 24, 1)
    ds = data.make_dataset("train", 168, 24, batch_size=64, shuffle=True, seed=0)
    forecast = data.to_original_units(predicted_future, w)  # (N, 24, 1) in °F (or prices)

`calendar_features` (NumPy) and `calendar_features_tf` (TensorFlow, for serving graphs)
are one implementation run on two array libraries.
"""

import dataclasses
import logging
import math
import types
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import tensorflow as tf
from pandas.tseries.frequencies import to_offset

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
SECONDS_PER_DAY = 86400

# --------------------------------------------------------------------------- calendar


def freq_seconds(freq):
    """Typical length of one step of a pandas frequency alias, in seconds ("B" → 86400)."""
    try:
        offset = to_offset(freq)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"`freq` {freq!r} is not a pandas frequency alias (e.g. 'h', '15min', 'D', 'B', "
            f"'W', 'MS')"
        ) from err
    try:
        return offset.nanos / 1e9
    except ValueError:  # calendar-dependent offsets (B, W, MS, ...): measure a few steps
        steps = pd.date_range("2001-01-01", periods=9, freq=offset)
        return float(np.median(np.diff(steps.asi8))) / 1e9


def calendar_feature_names(freq):
    """Names of the calendar channels for a frequency, in the order the features use.

    Hour of day for sub-daily data, day of week for data finer than weekly, position in the
    year for data finer than yearly; each as a sin/cos pair.
    """
    step = freq_seconds(freq)
    names = []
    if step < SECONDS_PER_DAY:
        names += ["hour_sin", "hour_cos"]
    if step < 7 * SECONDS_PER_DAY:
        names += ["weekday_sin", "weekday_cos"]
    if step < 300 * SECONDS_PER_DAY:
        names += ["year_sin", "year_cos"]
    return tuple(names)


_NUMPY_OPS = types.SimpleNamespace(
    floordiv=np.floor_divide,
    mod=np.mod,
    where=np.where,
    to_float=lambda x: np.asarray(x, np.float64),
    sin=np.sin,
    cos=np.cos,
    stack=lambda xs: np.stack(xs, axis=-1),
)
_TF_OPS = types.SimpleNamespace(
    floordiv=tf.math.floordiv,
    mod=tf.math.floormod,
    where=lambda c, a, b: tf.where(c, tf.cast(a, tf.int64), tf.cast(b, tf.int64)),
    to_float=lambda x: tf.cast(x, tf.float64),
    sin=tf.sin,
    cos=tf.cos,
    stack=lambda xs: tf.stack(xs, axis=-1),
)


def _day_of_year(days, ops):
    """0-based day of the year and the year's length for int64 days since 1970-01-01.

    Proleptic Gregorian calendar via H. Hinnant's `civil_from_days`/`days_from_civil`
    (integer-only, exact for any day), so NumPy and TensorFlow agree bit for bit.
    """
    z = days + 719468  # days since 0000-03-01
    era = ops.floordiv(z, 146097)
    doe = z - era * 146097  # day of the 400-year era, [0, 146096]
    yoe = ops.floordiv(
        doe - ops.floordiv(doe, 1460) + ops.floordiv(doe, 36524) - ops.floordiv(doe, 146096),
        365,
    )
    day_from_march = doe - (365 * yoe + ops.floordiv(yoe, 4) - ops.floordiv(yoe, 100))
    month_from_march = ops.floordiv(5 * day_from_march + 2, 153)  # 0 = March
    year = yoe + era * 400 + ops.where(month_from_march >= 10, 1, 0)
    # Days from 1970-01-01 to January 1 of `year` (days_from_civil with March-based years).
    y = year - 1
    era1 = ops.floordiv(y, 400)
    yoe1 = y - era1 * 400
    jan1 = era1 * 146097 + 365 * yoe1 + ops.floordiv(yoe1, 4) - ops.floordiv(yoe1, 100) + 306
    jan1 = jan1 - 719468
    leap = ops.where(
        (ops.mod(year, 4) == 0) & ((ops.mod(year, 100) != 0) | (ops.mod(year, 400) == 0)), 1, 0
    )
    return days - jan1, 365 + leap


def _calendar(seconds, names, ops):
    days = ops.floordiv(seconds, SECONDS_PER_DAY)
    day_fraction = ops.to_float(seconds - days * SECONDS_PER_DAY) / SECONDS_PER_DAY
    columns = []
    if "hour_sin" in names:
        angle = 2 * math.pi * day_fraction
        columns += [ops.sin(angle), ops.cos(angle)]
    if "weekday_sin" in names:
        weekday = ops.mod(days + 3, 7)  # 1970-01-01 was a Thursday; Monday = 0
        angle = (2 * math.pi / 7) * ops.to_float(weekday)
        columns += [ops.sin(angle), ops.cos(angle)]
    if "year_sin" in names:
        day, year_length = _day_of_year(days, ops)
        angle = 2 * math.pi * (ops.to_float(day) + day_fraction) / ops.to_float(year_length)
        columns += [ops.sin(angle), ops.cos(angle)]
    return ops.stack(columns)


def calendar_features(unix_seconds, freq):
    """Calendar channels (sin/cos of hour of day, day of week, position in the year).

    A pure function of time, so the same numbers can be made inside a serving graph
    (`calendar_features_tf`). Times are wall-clock times written as if they were UTC: the
    loaders turn timestamps into seconds without any time-zone shift.

    Args:
        unix_seconds: integer seconds since 1970-01-01 00:00, any shape (..., ) (int64 or
            float64; float32 cannot hold today's seconds exactly).
        freq: pandas frequency alias of the series; it decides which channels exist
            (`calendar_feature_names(freq)`).

    Returns:
        float32 array (..., len(calendar_feature_names(freq))).

    Example:
        >>> calendar_features(np.array([0]), "h").round(3)   # Thursday 1970-01-01 00:00
        array([[ 0.   ,  1.   ,  0.434, -0.901,  0.   ,  1.   ]], dtype=float32)
    """
    names = calendar_feature_names(freq)
    seconds = np.asarray(unix_seconds)
    if seconds.dtype.kind == "f":
        if seconds.dtype.itemsize < 8:
            raise ValueError(
                f"`unix_seconds` has dtype {seconds.dtype}, which cannot hold today's seconds "
                "exactly; pass int64 or float64"
            )
        seconds = np.floor(seconds)
    seconds = seconds.astype(np.int64)
    if not names:
        return np.zeros(seconds.shape + (0,), np.float32)
    return _calendar(seconds, names, _NUMPY_OPS).astype(np.float32)


def calendar_features_tf(unix_seconds, freq):
    """TensorFlow twin of `calendar_features`, for tf.data and serving graphs.

    Args:
        unix_seconds: int64 (or int32/float64) tensor of seconds since 1970-01-01, any shape.
        freq: pandas frequency alias (a Python string: it fixes the channels at trace time).

    Returns:
        float32 tensor (..., len(calendar_feature_names(freq))).
    """
    names = calendar_feature_names(freq)
    seconds = tf.convert_to_tensor(unix_seconds)
    if seconds.dtype.is_floating:
        if seconds.dtype != tf.float64:
            raise ValueError(
                f"`unix_seconds` has dtype {seconds.dtype.name}, which cannot hold today's "
                "seconds exactly; pass int64 or float64"
            )
        seconds = tf.floor(seconds)
    seconds = tf.cast(seconds, tf.int64)
    if not names:
        return tf.zeros(tf.concat([tf.shape(seconds), [0]], axis=0), tf.float32)
    return tf.cast(_calendar(seconds, names, _TF_OPS), tf.float32)


def to_unix_seconds(timestamps):
    """datetime64 wall-clock timestamps → int64 seconds since 1970-01-01 (no time zones)."""
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    return ts.astype(np.int64) // 10**9


# --------------------------------------------------------------------------- transforms


def log_returns(prices):
    """log(p_t / p_{t-1}) along axis 0; the first row is NaN (it has no previous price)."""
    prices = np.asarray(prices, np.float64)
    out = np.full_like(prices, np.nan)
    out[1:] = np.log(prices[1:] / prices[:-1])
    return out


def returns_to_prices(last_price, returns, axis=None):
    """Prices after a path of log returns: `last_price * exp(cumsum(returns))`.

    Args:
        last_price: the price at the forecast origin: a scalar for `returns` of shape (H,),
            (N,) for (N, H), (N, T) for (N, H, T).
        returns: log returns, the horizon on `axis`.
        axis: horizon axis of `returns`; None: 0 for 1-D `returns`, else 1. `last_price`
            gets a new axis there (for extra trailing axes such as quantiles, pass
            `last_price[..., None]`).

    Returns:
        float64 prices with the shape of `returns`. Exact for point forecasts; for quantile
        forecasts the cumulative sum of per-step quantiles is only an approximation of the
        quantile of the multi-step return (exact at horizon 1).
    """
    returns = np.asarray(returns, np.float64)
    if axis is None:
        axis = 0 if returns.ndim == 1 else 1
    last = np.expand_dims(np.asarray(last_price, np.float64), axis)
    return last * np.exp(np.cumsum(returns, axis=axis))


# --------------------------------------------------------------------------- splits


def check_split_fractions(fractions):
    """Returns (train, val, test) floats; ValueError unless they are >= 0 and sum to 1."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] == 0:
        raise ValueError(
            f"`split_fractions` must be three shares (train, val, test) with train > 0 and "
            f"none negative; got {fractions}"
        )
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"`split_fractions` must sum to 1; got {fractions} (sum {sum(fractions)})")
    return fractions


def split_bounds(num_rows, fractions=DEFAULT_SPLIT_FRACTIONS):
    """(train_end, val_end): rows [0, train_end) train, [train_end, val_end) val, rest test."""
    train, val, _ = check_split_fractions(fractions)
    train_end = int(math.floor(num_rows * train + 1e-9))
    val_end = int(math.floor(num_rows * (train + val) + 1e-9))
    return train_end, val_end


def _split_requirements(lookback, horizon, fractions):
    """Rows each split needs so that it holds at least one window."""
    need = {"train": lookback + horizon}
    for name, share in zip(SPLITS[1:], fractions[1:]):
        if share > 0:
            need[name] = horizon
    return need


def _split_sizes(num_rows, fractions):
    train_end, val_end = split_bounds(num_rows, fractions)
    return {"train": train_end, "val": val_end - train_end, "test": num_rows - val_end}


def required_length(lookback, horizon, fractions=DEFAULT_SPLIT_FRACTIONS):
    """Fewest rows from which on every series length has a window in every non-empty split.

    Training needs `lookback + horizon` rows inside the training split; validation and test
    need `horizon` rows each (they may look back into earlier splits).
    """
    fractions = check_split_fractions(fractions)
    need = _split_requirements(lookback, horizon, fractions)

    def enough(n):
        sizes = _split_sizes(n, fractions)
        return all(sizes[k] >= rows for k, rows in need.items())

    # Rounded split sizes are within one row of n * share, so every n from `n` on works;
    # walk down while the next smaller length still does.
    n = max(math.ceil((rows + 1) / fractions[SPLITS.index(k)]) for k, rows in need.items())
    while n > 1 and enough(n - 1):
        n -= 1
    return n


def length_problem(num_rows, lookback, horizon, fractions, name="the series"):
    """A sentence saying why `num_rows` rows are too few, or None when they are enough."""
    fractions = check_split_fractions(fractions)
    need = _split_requirements(lookback, horizon, fractions)
    sizes = _split_sizes(num_rows, fractions)
    short = [k for k, rows in need.items() if sizes[k] < rows]
    if not short:
        return None
    detail = ", ".join(f"{k} has {sizes[k]} rows, needs {need[k]}" for k in short)
    return (
        f"{name} has {num_rows} rows, too few for lookback {lookback} + horizon {horizon} "
        f"with split fractions {fractions} ({detail}; a training window needs lookback + "
        f"horizon rows inside the training split, validation/test windows `horizon` rows "
        f"inside theirs): it must be at least "
        f"{required_length(lookback, horizon, fractions)} rows long. Use a shorter lookback "
        f"or horizon, other split fractions, or a longer series"
    )


# --------------------------------------------------------------------------- scaling


@dataclasses.dataclass
class Scaler:
    """Per-feature mean and std (float32, over `feature_names`); calendar channels 0 and 1.

    Targets come first, so `inverse(y)` on an array whose last axis holds the targets only
    uses the targets' statistics.
    """

    mean: np.ndarray
    std: np.ndarray

    def transform(self, x):
        k = np.shape(x)[-1]
        return (np.asarray(x) - self.mean[:k]) / self.std[:k]

    def inverse(self, x):
        k = np.shape(x)[-1]
        return np.asarray(x) * self.std[:k] + self.mean[:k]


def fit_scaler(train_values, names, num_calendar):
    """Scaler from training rows (float64 (rows, features), NaN allowed) + calendar channels."""
    with np.errstate(all="ignore"):
        count = np.isfinite(train_values).sum(axis=0)
        empty = [n for n, c in zip(names, count) if c == 0]
        if empty:
            raise ValueError(
                f"Columns {empty} have no values in the training split of any series; "
                f"drop them from targets/covariates, fill them in the file, or give training "
                f"a larger share (`split_fractions`)"
            )
        mean = np.nanmean(train_values, axis=0)
        std = np.nanstd(train_values, axis=0)
    constant = [n for n, s in zip(names, std) if not s > 1e-12]
    if constant:
        logger.warning("Constant in the training split (std set to 1): %s", constant)
        std = np.where(std > 1e-12, std, 1.0)
    mean = np.concatenate([mean, np.zeros(num_calendar)]).astype(np.float32)
    std = np.concatenate([std, np.ones(num_calendar)]).astype(np.float32)
    return Scaler(mean=mean, std=std)


# --------------------------------------------------------------------------- windows


class Windows(NamedTuple):
    """Model inputs and targets of N windows (`past, future, series_index, origin = w`)."""

    past: np.ndarray  # float32 (N, lookback, num_features), scaled
    future: np.ndarray  # float32 (N, horizon, num_targets), scaled
    series_index: np.ndarray  # int32 (N,): which series
    origin: np.ndarray  # int64 (N,): row of the last past step in that series


class RawWindows(NamedTuple):
    """The same windows in original units (untransformed, unscaled), for plots and metrics."""

    past_times: np.ndarray  # datetime64[ns] (N, lookback); NaT before the series starts
    future_times: np.ndarray  # datetime64[ns] (N, horizon)
    past_unix_seconds: np.ndarray  # int64 (N, lookback); input of calendar_features(_tf)
    past_values: np.ndarray  # float64 (N, lookback, num_targets + num_covariates)
    future_targets: np.ndarray  # float64 (N, horizon, num_targets)
    last_targets: np.ndarray  # float64 (N, num_targets): the value at the origin


@dataclasses.dataclass
class ForecastData:
    """Cleaned series, their chronological splits and scaler, and the windows models use.

    Built by `apps.forecast.data.load_forecast_data`. Per series i (rows on a regular grid,
    or trading days for business-day data):

    Fields:
        source: what was loaded (built-in name, path or "DataFrame").
        freq: pandas frequency alias of every series.
        target_names, covariate_names, calendar_names: the feature groups, in feature order.
        target_transform: "none" or "log_return" (targets in `values` are log returns).
        series_ids: one name per series (station, symbol, `id_col` value).
        timestamps: per series, datetime64[ns] (T_i,) wall-clock times.
        raw_values: per series, float64 (T_i, targets + covariates) in original units after
            cleaning (short gaps interpolated; NaN where a gap was too long).
        values: per series, the same with the target transform applied (unscaled).
        split_bounds: per series, (train_end, val_end) row indices.
        split_fractions: (train, val, test) shares used for `split_bounds`.
        scaler: `Scaler` over `feature_names`, fitted on training rows of all series.
        report: the loader's `CleaningReport` (counts of what cleaning changed).
    """

    source: str
    freq: str
    target_names: tuple
    covariate_names: tuple
    calendar_names: tuple
    target_transform: str
    series_ids: tuple
    timestamps: list
    raw_values: list
    values: list
    split_bounds: list
    split_fractions: tuple
    scaler: Scaler
    report: Any = None

    def __post_init__(self):
        self._unix = [to_unix_seconds(t) for t in self.timestamps]
        self._features = []  # float32 (T_i, F) scaled model inputs
        self._valid = []  # bool (T_i,): every target and covariate present
        if self.calendar_names and tuple(self.calendar_names) != calendar_feature_names(self.freq):
            raise ValueError(
                f"calendar_names {self.calendar_names} are not the channels of freq "
                f"{self.freq!r}: {calendar_feature_names(self.freq)}"
            )
        for values, unix in zip(self.values, self._unix):
            calendar = (calendar_features(unix, self.freq) if self.calendar_names
                        else np.zeros((len(unix), 0), np.float32))
            scaled = self.scaler.transform(values).astype(np.float32)
            self._features.append(np.concatenate([scaled, calendar], axis=1))
            self._valid.append(np.isfinite(values).all(axis=1))

    # ------------------------------------------------------------------ names

    @property
    def num_targets(self):
        return len(self.target_names)

    @property
    def num_covariates(self):
        return len(self.covariate_names)

    @property
    def num_features(self):
        return len(self.feature_names)

    @property
    def feature_names(self):
        return tuple(self.target_names) + tuple(self.covariate_names) + tuple(self.calendar_names)

    @property
    def num_series(self):
        return len(self.series_ids)

    def unix_seconds(self, series_index):
        """int64 (T_i,) seconds of series `series_index`, the input of calendar_features."""
        return self._unix[series_index]

    def features(self, series_index):
        """float32 (T_i, num_features): the scaled model inputs of a whole series."""
        return self._features[series_index]

    def split_range(self, series_index, split):
        """(first row, end row) of `split` in series `series_index`."""
        train_end, val_end = self.split_bounds[series_index]
        start, end = {"train": (0, train_end), "val": (train_end, val_end),
                      "test": (val_end, len(self.timestamps[series_index]))}[_check_split(split)]
        return start, end

    def required_length(self, lookback, horizon):
        """Fewest rows a series needs for one window in every non-empty split."""
        return required_length(lookback, horizon, self.split_fractions)

    def describe(self):
        """One line per series: rows, date range and rows per split."""
        lines = [
            f"{self.source}: {self.num_series} series, freq {self.freq}, features "
            f"{list(self.feature_names)}, target transform {self.target_transform}"
        ]
        for i, name in enumerate(self.series_ids):
            t = self.timestamps[i]
            sizes = [end - start for start, end in (self.split_range(i, s) for s in SPLITS)]
            lines.append(
                f"  {name}: {len(t)} rows {pd.Timestamp(t[0])} .. {pd.Timestamp(t[-1])}; "
                f"train/val/test rows {sizes[0]}/{sizes[1]}/{sizes[2]}"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ windows

    def window_index(self, split, lookback, horizon, stride=1):
        """(series_index int32 (N,), origin int64 (N,)) of the windows of `split`.

        Origins start at the split's first possible window and advance by `stride`.

        Raises:
            ValueError when the split has no window: the message says how long each series
            must be, or that missing values removed every window.
        """
        split = _check_split(split)
        for name, value in (("lookback", lookback), ("horizon", horizon), ("stride", stride)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}")
        if split != "train" and self.split_fractions[SPLITS.index(split)] == 0:
            raise ValueError(
                f"The {split} split is empty: split_fractions {self.split_fractions} give it "
                f"no rows. Load with a share > 0 for {split}"
            )
        series, origins, possible = [], [], 0
        for i in range(self.num_series):
            start, end = self.split_range(i, split)
            # First future step (o + 1) in [start, end), whole future before `end`, whole
            # past inside the series.
            first, last = max(start - 1, lookback - 1), end - 1 - horizon
            if last < first:
                continue
            o = np.arange(first, last + 1, stride, dtype=np.int64)
            possible += len(o)
            missing = np.concatenate([[0], np.cumsum(~self._valid[i])])
            bad = missing[o + horizon + 1] - missing[o - lookback + 1]
            o = o[bad == 0]
            series.append(np.full(len(o), i, np.int32))
            origins.append(o)
        if possible == 0:
            problems = [
                length_problem(len(t), lookback, horizon, self.split_fractions,
                               f"series {self.series_ids[i]!r}")
                for i, t in enumerate(self.timestamps)
            ]
            problem = next((p for p in problems if p), "every series is too short")
            raise ValueError(f"No {split} windows: {problem}.")
        series = np.concatenate(series) if series else np.zeros(0, np.int32)
        origins = np.concatenate(origins) if origins else np.zeros(0, np.int64)
        dropped = possible - len(origins)
        if dropped:
            logger.info(
                "%s: %d of %d %s windows dropped: they touch missing values (gaps longer "
                "than max_gap, or a log-return series' first row)",
                self.source, dropped, possible, split,
            )
        if len(origins) == 0:
            raise ValueError(
                f"No {split} windows left: all {possible} touch missing values. Load with a "
                f"larger `max_gap` (gaps up to it are interpolated), fill the gaps in the "
                f"file, or drop the covariates that have them"
            )
        return series, origins

    def windows(self, split, lookback, horizon, stride=1):
        """Windows of `split` as NumPy arrays (see the module docstring for the rules).

        Returns:
            `Windows(past, future, series_index, origin)`: past float32 (N, lookback,
            num_features) and future float32 (N, horizon, num_targets), both scaled.
        """
        series, origins = self.window_index(split, lookback, horizon, stride)
        past = np.empty((len(origins), lookback, self.num_features), np.float32)
        future = np.empty((len(origins), horizon, self.num_targets), np.float32)
        past_offsets = np.arange(-lookback + 1, 1)
        future_offsets = np.arange(1, horizon + 1)
        for i in np.unique(series):
            rows = series == i
            o = origins[rows][:, None]
            past[rows] = self._features[i][o + past_offsets]
            future[rows] = self._features[i][o + future_offsets, : self.num_targets]
        return Windows(past, future, series, origins)

    def make_dataset(
        self, split, lookback, horizon, batch_size, shuffle=None, seed=0, stride=1
    ):
        """tf.data pipeline of `(past, future)` batches, the same values as `windows()`.

        Windows are cut inside the pipeline from the scaled series (only their indices are
        shuffled), so memory stays at one copy of the data whatever the lookback.

        Args:
            split: "train", "val" or "test".
            lookback, horizon, stride: as in `windows`.
            batch_size: windows per batch; the last batch may be smaller.
            shuffle: reshuffle the windows every epoch; None shuffles only "train".
            seed: shuffle seed.

        Returns:
            Dataset of (float32 (batch, lookback, num_features), float32 (batch, horizon,
            num_targets)).
        """
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1; got {batch_size}")
        series, origins = self.window_index(split, lookback, horizon, stride)
        lengths = [len(t) for t in self.timestamps]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        rows = offsets[series] + origins  # origin row in the concatenated series
        features = tf.constant(np.concatenate(self._features, axis=0))
        targets = features[:, : self.num_targets]
        past_offsets = tf.range(-lookback + 1, 1, dtype=tf.int64)
        future_offsets = tf.range(1, horizon + 1, dtype=tf.int64)

        def cut(origin):  # (batch,) → (batch, lookback, F), (batch, horizon, T)
            past = tf.gather(features, origin[:, None] + past_offsets)
            future = tf.gather(targets, origin[:, None] + future_offsets)
            return past, future

        if shuffle is None:
            shuffle = split == "train"
        ds = tf.data.Dataset.from_tensor_slices(rows)
        if shuffle:
            ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=False)
        ds = ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    # ------------------------------------------------------------------ original units

    def raw_windows(self, windows, lookback=None, horizon=None):
        """Timestamps and original-unit values of windows (for plots, price metrics, serving).

        Args:
            windows: a `Windows` (or anything with `series_index` and `origin`).
            lookback, horizon: default to the windows' own; a longer lookback (e.g. one
                more price to turn into returns) gives NaN/NaT before the series starts.

        Returns:
            `RawWindows`; future rows past the series end are NaN/NaT.
        """
        lookback = windows.past.shape[1] if lookback is None else lookback
        horizon = windows.future.shape[1] if horizon is None else horizon
        n, k = len(windows.origin), self.num_targets + self.num_covariates
        out = RawWindows(
            past_times=np.full((n, lookback), np.datetime64("NaT"), "datetime64[ns]"),
            future_times=np.full((n, horizon), np.datetime64("NaT"), "datetime64[ns]"),
            past_unix_seconds=np.zeros((n, lookback), np.int64),
            past_values=np.full((n, lookback, k), np.nan),
            future_targets=np.full((n, horizon, self.num_targets), np.nan),
            last_targets=np.full((n, self.num_targets), np.nan),
        )
        series, origin = np.asarray(windows.series_index), np.asarray(windows.origin)
        for i in np.unique(series):
            sel = np.flatnonzero(series == i)
            o = origin[sel][:, None]
            t, raw, unix = self.timestamps[i], self.raw_values[i], self._unix[i]
            rows = o + np.arange(-lookback + 1, 1)  # (n_i, lookback)
            ok, r = (rows >= 0) & (rows < len(t)), np.clip(rows, 0, len(t) - 1)
            out.past_times[sel] = np.where(ok, t[r], np.datetime64("NaT"))
            out.past_unix_seconds[sel] = np.where(ok, unix[r], 0)
            out.past_values[sel] = np.where(ok[..., None], raw[r], np.nan)
            rows = o + np.arange(1, horizon + 1)  # (n_i, horizon)
            ok, r = (rows >= 0) & (rows < len(t)), np.clip(rows, 0, len(t) - 1)
            out.future_times[sel] = np.where(ok, t[r], np.datetime64("NaT"))
            out.future_targets[sel] = np.where(ok[..., None], raw[r, : self.num_targets], np.nan)
            out.last_targets[sel] = raw[o[:, 0], : self.num_targets]
        return out

    def to_original_units(self, future, windows):
        """Scaled target forecasts (N, horizon, num_targets, ...) → original units.

        Undoes the scaling, then for log-return targets compounds the returns from the price
        at each window's origin (`returns_to_prices`). Extra trailing axes (e.g. quantiles)
        are carried along.

        Returns:
            float64 array of the same shape.
        """
        future = np.asarray(future, np.float64)
        if future.ndim < 3 or future.shape[2] != self.num_targets:
            raise ValueError(
                f"Expected forecasts shaped (N, horizon, {self.num_targets}, ...); got "
                f"{future.shape}"
            )
        extra = (1,) * (future.ndim - 3)
        mean = self.scaler.mean[: self.num_targets].reshape((self.num_targets,) + extra)
        std = self.scaler.std[: self.num_targets].reshape((self.num_targets,) + extra)
        values = future * std + mean
        if self.target_transform == "log_return":
            last = np.stack([
                self.raw_values[i][o, : self.num_targets]
                for i, o in zip(windows.series_index, windows.origin)
            ]) if len(windows.origin) else np.zeros((0, self.num_targets))
            values = returns_to_prices(last.reshape(last.shape + extra), values, axis=1)
        return values


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}")
    return split
