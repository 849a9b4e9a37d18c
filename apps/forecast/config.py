"""Forecasting app configuration: one dataclass, named presets, CLI flags generated from the fields.

Presets (run with `python -m apps.forecast.train --preset NAME --workdir DIR`; any field can
be overridden, e.g. `--model dlinear --epochs 30`):

    test         seconds; unit tests only: the bundled JFK weather, lookback 48, horizon 12,
                 a 1-layer PatchTST of width 16, every 12th window, 2 epochs.
    weather_nyc  hourly temperature at JFK (2013), lookback 168 h, horizon 24 h; PatchTST
                 (patches of 16 h every 8 h) over the temperature channel, plus the
                 covariate head: a linear map from the last 24 h of every channel (the
                 other weather variables and the calendar) to the forecast; early stopping
                 on validation loss, 20-minute budget:
                     python -m apps.forecast.train --preset weather_nyc --workdir runs/weather
                 benchmarks/forecast.py (2026-11-30, 2 CPU cores, 64k parameters): early
                 stopping after 25 epochs, 107 s of training, test MAE 3.77 °F over 72
                 origins 24 h apart (seasonal naive 6.44, naive 5.18, DLinear 4.42).
    stock_sp500  S&P 500 daily closes 1999-2018, log returns as the target (prices rebuilt
                 for the metrics), lookback 60 trading days, horizon 5, quantiles 0.1/0.5/0.9:
                     python -m apps.forecast.train --preset stock_sp500 --workdir runs/sp500
                 combined with the random walk at weights fitted on validation:
                 benchmarks/forecast.py (2026-11-30, 2 CPU cores, 45k parameters): 30
                 epochs, 57 s of training; test price MAE 22.11 over 201 origins 5 days
                 apart, 0.992 x the random walk's 22.28 (the model alone 1.007); P10-P90
                 coverage 81.0% after the validation calibration (94.2% before).

Your own CSV (wide: a time column and value columns; long: add `--id_col`):

    python -m apps.forecast.train --data sales.csv --time_col date --targets units \\
        --covariates price,promo --lookback 96 --horizon 14 --workdir runs/sales
"""

import dataclasses
from typing import Literal

from apps.forecast.model import DEFAULTS, MODELS
from tfattn.training import AppConfig, config_field

ModelName = Literal[MODELS]
Loss = Literal["mse", "mae"]
Channels = Literal["targets", "all"]
TargetTransform = Literal["auto", "none", "log_return"]

# Config fields that are model hyperparameters: passed to `build_model` when set (None keeps
# the chosen model's own default, see apps/forecast/model.py DEFAULTS).
MODEL_HPARAMS = (
    "patch_len", "patch_stride", "hidden_dim", "num_heads", "intermediate_dim", "num_layers",
    "num_decoder_layers", "units", "attention_dim", "kernel_size", "individual", "channels",
    "channel_mixing", "covariate_lookback", "revin", "dropout_rate", "attention_dropout_rate",
    "head_dropout_rate",
)


@dataclasses.dataclass
class Config(AppConfig):
    """Time-series forecasting with attention models (tfattn forecast app)."""

    # Runtime and export: AppConfig's fields (first in --help); these change their default
    # or help text.
    workdir: str = config_field("runs/forecast", AppConfig.WORKDIR_HELP)
    seed: int = config_field(0, "seed of the shuffling and the initialisation")
    export_name: str = config_field("forecast", AppConfig.EXPORT_NAME_HELP)

    # Data
    data: str = config_field(
        "weather_nyc", 'series: "weather_nyc[:EWR|JFK|LGA|all]", "sp500", "msft", or a CSV '
        "path or URL"
    )
    time_col: str | None = config_field(
        None, 'time column ("date,time" joins two); none: the bundled series\' own, or a '
        "column named date/ds/time/timestamp/datetime"
    )
    targets: str | None = config_field(
        None, "column(s) to forecast, comma-separated; none: the bundled series' own or the "
        "only numeric one"
    )
    covariates: str | None = config_field(
        None, 'input column(s), comma-separated, or "all" other numeric columns; none: '
        "the bundled series' own, else none"
    )
    id_col: str | None = config_field(
        None, "series id column of a long table (many series in one file); none: one series"
    )
    freq: str | None = config_field(None, "pandas frequency alias (h, 15min, D, B, W); none: inferred")
    skiprows: int = config_field(0, "lines before the CSV header")
    dayfirst: bool = config_field(False, "read 01/02/2013 as 1 February")
    time_format: str | None = config_field(None, "strftime format of the time column, or mixed")
    max_gap: int | None = config_field(
        None, "longest run of missing steps interpolated; none: 12 for weather_nyc, else 3"
    )
    target_transform: TargetTransform = config_field(
        "auto", "none, log_return (prices: forecast log returns, prices rebuilt), or auto "
        "(log_return for sp500/msft, else none)"
    )
    calendar: bool = config_field(
        True, "add calendar inputs (hour, weekday, day of year as sine and cosine)"
    )
    split_fractions: tuple[float, float, float] = config_field(
        (0.7, 0.1, 0.2), "chronological train, validation, test shares of each series"
    )
    strict: bool = config_field(
        False, "make unsorted or duplicate timestamps and off-grid rows errors"
    )

    # Windows
    lookback: int = config_field(336, "input steps per window")
    horizon: int = config_field(24, "steps forecast at once")
    train_stride: int = config_field(1, "steps between training window origins (>1: fewer windows)")
    val_stride: int = config_field(1, "steps between validation window origins")
    eval_stride: int | None = config_field(
        None, "steps between test origins in the backtest; none: the horizon (forecast "
        "periods that do not overlap)"
    )
    season: int | None = config_field(
        None, "season length for seasonal naive and MASE; none: from the frequency "
        "(24 hourly, 7 daily, 1 trading days)"
    )

    # Model
    model: ModelName = config_field("patchtst", "architecture (apps/forecast/model.py)")
    quantiles: tuple[float, ...] | None = config_field(
        None, "quantile levels to forecast, e.g. 0.1,0.5,0.9 (pinball loss); none: a point forecast"
    )
    calibrate_quantiles: bool = config_field(
        True, "quantile models: scale the band's width per horizon step so that it covers its "
        "nominal share of the validation outcomes (split conformal; applied in evaluation "
        "and the export)"
    )
    shrink_to_naive: bool = config_field(
        False, "after training, combine the forecast with the random walk (the last value): "
        "last + w * (forecast - last), w in [0, 1] per horizon step fitted on validation MAE "
        "(1: the model alone); for series where the model's signal is weak against its noise, "
        "e.g. asset prices (applied in evaluation and the export)"
    )
    loss: Loss = config_field("mse", "point-forecast loss on the scaled targets")
    patch_len: int | None = config_field(None, "patchtst/transformer: steps per patch; none: model default")
    patch_stride: int | None = config_field(None, "patchtst: steps between patch starts; none: model default")
    hidden_dim: int | None = config_field(None, "patchtst/transformer: token width; none: model default")
    num_heads: int | None = config_field(None, "attention heads; none: model default")
    intermediate_dim: int | None = config_field(None, "MLP width in each block; none: model default")
    num_layers: int | None = config_field(
        None, "encoder blocks (patchtst; transformer encoder); none: model default"
    )
    num_decoder_layers: int | None = config_field(None, "transformer: decoder blocks; none: model default")
    units: int | None = config_field(None, "lstm_attention: LSTM units; none: model default")
    attention_dim: int | None = config_field(
        None, "lstm_attention: additive attention width; none: model default"
    )
    kernel_size: int | None = config_field(None, "dlinear: moving-average length; none: model default")
    individual: bool | None = config_field(
        None, "dlinear: one linear map per channel; none: model default"
    )
    channels: Channels | None = config_field(
        None, "patchtst/dlinear: model the target channels or all channels; none: model default"
    )
    channel_mixing: bool | None = config_field(
        None, "patchtst: attention across channels after each block (needs channels all)"
    )
    covariate_lookback: int | None = config_field(
        None, "patchtst: add a linear forecast from the last N steps of every channel "
        "(covariates, calendar) to the targets' forecast; none: model default (off)"
    )
    revin: bool | None = config_field(None, "reversible instance normalisation; none: model default")
    dropout_rate: float | None = config_field(None, "dropout; none: model default")
    attention_dropout_rate: float | None = config_field(
        None, "dropout on attention weights; none: model default"
    )
    head_dropout_rate: float | None = config_field(None, "patchtst: dropout before the head")

    # Optimisation
    epochs: int = config_field(30, "training epochs: the cosine schedule's length")
    batch_size: int = config_field(64, "windows per batch per replica")
    learning_rate: float = config_field(
        1e-3, "peak AdamW rate on one replica, scaled linearly with the number of replicas"
    )
    weight_decay: float = config_field(1e-4, "AdamW decoupled weight decay")
    warmup_epochs: float = config_field(1.0, "linear warm-up before the cosine decay, epochs")
    min_learning_rate: float = config_field(1e-5, "rate at the end of the cosine decay")
    gradient_clip_norm: float | None = config_field(1.0, "global gradient norm clip; none: off")
    early_stopping_patience: int | None = config_field(
        5, "stop after this many epochs without a better val_loss; none: off"
    )

    # Runtime
    plot_windows: int = config_field(
        4, "fixed validation windows whose forecasts TensorBoard shows (0: none)"
    )
    image_every_epochs: int = config_field(
        1, "log TensorBoard images (forecasts, attention, error by horizon) every n epochs "
        "and after the last"
    )

    def __post_init__(self):
        super().__post_init__()
        positive = ("lookback", "horizon", "train_stride", "val_stride", "epochs", "batch_size",
                    "image_every_epochs")
        for name in positive:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1; got {value}.")
        for name in ("eval_stride", "season", *MODEL_HPARAMS):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ValueError(f"`{name}` must be >= 1 or none; got {value}.")
        for name in ("dropout_rate", "attention_dropout_rate", "head_dropout_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1); got {value}.")
        if self.quantiles is not None:
            q = self.quantiles
            if not q or any(not 0.0 < v < 1.0 for v in q) or any(a >= b for a, b in zip(q, q[1:])):
                raise ValueError(
                    f"`quantiles` must be increasing levels in (0, 1), e.g. 0.1,0.5,0.9; got {q}."
                )
        unused = [n for n in MODEL_HPARAMS if getattr(self, n) is not None
                  and not _model_takes(self.model, n)]
        if unused:
            raise ValueError(
                f"--model {self.model} has no {', '.join('--' + n for n in unused)}; its "
                f"hyperparameters: {', '.join(sorted(DEFAULTS[self.model]))}."
            )
        if not 0.0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be in [0, epochs={self.epochs}); got {self.warmup_epochs}."
            )
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0; got {self.learning_rate}.")
        if self.plot_windows < 0:
            raise ValueError(f"`plot_windows` must be >= 0; got {self.plot_windows}.")

    @classmethod
    def adapt_preset(cls, preset, resolved):
        """A preset's model hyperparameters that the chosen `--model` lacks are dropped (so
        `--preset weather_nyc --model dlinear` works); ones given by the user still error."""
        model = resolved.get("model", cls.__dataclass_fields__["model"].default)
        return {k: v for k, v in preset.items() if k not in MODEL_HPARAMS or _model_takes(model, k)}

    def model_hparams(self):
        """The hyperparameters given for `build_model` (unset ones keep the model's defaults)."""
        return {_hparam_key(n, self.model): getattr(self, n) for n in MODEL_HPARAMS
                if getattr(self, n) is not None}

    @property
    def backtest_stride(self):
        return self.eval_stride or self.horizon


def _model_takes(model, field):
    """Whether `model` has the hyperparameter behind config field `field`."""
    return _hparam_key(field, model) in DEFAULTS[model]


def _hparam_key(field, model):
    """Config field -> `build_model` keyword (`patch_stride` is the models' `stride`;
    `num_layers` is the transformer's `num_encoder_layers`)."""
    if field == "num_layers" and model == "transformer":
        return "num_encoder_layers"
    return {"patch_stride": "stride"}.get(field, field)


PRESETS = {
    "test": {
        "data": "weather_nyc",
        "lookback": 48,
        "horizon": 12,
        "train_stride": 12,
        "val_stride": 12,
        "eval_stride": 12,
        "patch_len": 8,
        "patch_stride": 8,
        "hidden_dim": 16,
        "num_heads": 2,
        "intermediate_dim": 32,
        "num_layers": 1,
        "epochs": 2,
        "batch_size": 64,
        "warmup_epochs": 0.2,
        "jit_compile": False,
        "plot_windows": 2,
    },
    # PatchTST (Nie et al. 2023: P=16, S=8) on a week of hours, plus the covariate head on the
    # last day of every channel. Chosen on the validation split (val MAE, every hour): lookback
    # 336 3.38 °F, 168 3.16, + covariate head over 24 h 2.78 (inside RevIN: 24 h 2.90, 48 h
    # 2.93, 168 h 3.21); benchmarks/README.md lists every variant tried.
    "weather_nyc": {
        "data": "weather_nyc",
        "lookback": 168,
        "horizon": 24,
        "model": "patchtst",  # its defaults: patches of 16 steps every 8
        "covariate_lookback": 24,
        "epochs": 30,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "early_stopping_patience": 5,
        "time_budget_minutes": 20.0,
    },
    "stock_sp500": {
        "data": "sp500",
        "lookback": 60,
        "horizon": 5,
        "model": "patchtst",
        "patch_len": 10,
        "patch_stride": 5,
        "quantiles": (0.1, 0.5, 0.9),
        "shrink_to_naive": True,
        "epochs": 30,
        "batch_size": 64,
        "learning_rate": 5e-4,
        "early_stopping_patience": 5,
        "time_budget_minutes": 10.0,
    },
}
