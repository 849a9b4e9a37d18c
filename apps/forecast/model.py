"""Forecasting models: PatchTST-style encoder, attention baselines and DLinear.

Every model maps one input, `past` `(batch, lookback, num_features)` (standardised, features
ordered `[targets..., covariates..., calendar...]`), to `forecast` `(batch, horizon,
num_targets)`, or `(batch, horizon, num_targets, num_quantiles)` with quantiles (sorted
ascending; the 0.5 quantile is the point forecast). All horizons come out at once (direct
multi-horizon forecasting, no autoregressive loop).

PatchTST (`build_model("patchtst", ...)`):

    past (b, L, F) -> channels: targets (b, L, T) | all (b, L, F)         C = T or F
         -> RevIN: per window and channel (x - mean) / std * gamma + beta, keeps (loc, scale)
         -> Patching: (b, C, N, P), the end padded with S copies of the last value,
            N = (L - P) // S + 2
         -> Dense(P -> D) + learned patch positions, channels folded into the batch (b*C, N, D)
         -> num_layers x TransformerEncoderBlock, each channel on its own
            [channel_mixing: after each block, a block over the C channels of each patch]
         -> LayerNorm -> flatten (b*C, N*D) -> Dense(H [* Q]) -> (b, C, H [* Q])
         -> (b, H, C [, Q]) -> target channels -> RevIN inverse
            [covariate_lookback K: + Dense(zeros init) over the last K steps of ALL F
             channels as scaled -> (b, H, T [, Q]); quantiles sorted again]
         -> forecast (b, H, T [, Q])

LSTM + additive attention (`"lstm_attention"`):

    past -> channels (default all) -> RevIN on the target channels -> LSTM encoder (b, L, U)
         + final state
         -> LSTM decoder over H learned step embeddings, started from the encoder state (b, H, U)
         -> AdditiveAttention(decoder states, encoder outputs): context (b, H, U), weights (b, H, L)
         -> Dense(tanh)([state, context]) -> Dense(T [* Q]) -> RevIN inverse -> forecast

Transformer encoder-decoder (`"transformer"`):

    past -> channels (default targets) -> RevIN on the target channels
         -> Patching (P = S = patch_len; all channels of a patch form one token)
         -> Dense(C*P -> D) + learned positions -> encoder blocks -> memory (b, N, D)
         -> H learned horizon queries -> decoder blocks (self-attention among the queries,
            cross-attention over the memory) -> Dense(T [* Q]) -> RevIN inverse -> forecast

DLinear (`"dlinear"`):

    past -> channels -> [RevIN] -> moving average (kernel 25, edges replicated): trend,
         seasonal = past - trend -> Dense(L -> H) on each, per channel (shared or individual
         weights) -> sum -> target channels -> forecast

Differences from the papers, on purpose:
- PatchTST uses BatchNorm in post-norm blocks; here the blocks are tfattn's pre-norm
  LayerNorm blocks (one block type across the project), with a final LayerNorm.
- The LSTM model scores with Bahdanau's additive score but combines the context after the
  decoder step (Luong et al. 2015's placement), so the decoder is one LSTM call over all
  horizon steps instead of a Python loop feeding the context back in.
- Quantiles are sorted in the head (rearrangement, Chernozhukov et al. 2010): they never
  cross, and sorting never raises the pinball loss of any outcome (its sum over quantiles
  is a constant minus sum_k q_k f_k, which sorting maximises).
- The multivariate models (LSTM, Transformer) normalise only the targets with RevIN: RevIN
  is there to undo the targets' level shifts, the covariates arrive globally standardised,
  and per-window scaling of an intermittent covariate (hourly precipitation, zero most
  hours) would turn one wet hour into a 13-sigma spike. PatchTST and DLinear normalise
  every channel they model, as in their papers.

`build_attention_model(model)` returns a model with every attention map (PatchTST: over
input patches; LSTM: over time steps; Transformer: over input patches) for TensorBoard.

References: Nie et al. 2023, "A Time Series is Worth 64 Words: Long-term Forecasting with
Transformers" (PatchTST); Kim et al. 2022, "Reversible Instance Normalization for Accurate
Time-Series Forecasting against Distribution Shift" (RevIN); Zeng et al. 2023, "Are
Transformers Effective for Time Series Forecasting?" (DLinear); Das et al. 2023, "Long-term
Forecasting with TiDE: Time-series Dense Encoder" (the linear covariate skip); Bahdanau et al. 2015,
"Neural Machine Translation by Jointly Learning to Align and Translate"; Luong et al. 2015,
"Effective Approaches to Attention-based Neural Machine Translation"; Zhang & Yan 2023,
"Crossformer" (attention across channels, used by `channel_mixing`); Koenker & Bassett
1978, "Regression Quantiles" (pinball loss); Chernozhukov, Fernandez-Val & Galichon 2010,
"Quantile and Probability Curves Without Crossing".
"""

import keras
import numpy as np
from keras import ops

from tfattn.layers import (
    AdditiveAttention,
    PositionEmbedding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)

PACKAGE = "tfattn_forecast"
register = keras.saving.register_keras_serializable(package=PACKAGE)


def _check_positive_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    return int(value)


# ---------------------------------------------------------------------------------------
# Layers


@register
class RevIN(keras.layers.Layer):
    """Reversible instance normalisation: per window and channel, with an exact inverse.

    Each input window is standardised over time, channel by channel, with its own mean and
    standard deviation, then (with `affine`) scaled and shifted by learned per-channel
    `gamma` and `beta`. The layer returns the `loc` and `scale` that undo all of it:
    `normalised * scale + loc == inputs`, so `RevINInverse` needs no weights of its own.

    A constant window has zero variance: `std = sqrt(var + epsilon)` keeps it finite (the
    normalised window is then all zeros, or `beta`). `gamma` is used as `gamma + epsilon**2`
    in both directions (as the paper's code does in the inverse), so the inverse stays exact.

    Args:
        affine: learn a per-channel `gamma` (init 1) and `beta` (init 0).
        epsilon: added to the variance.

    Call arguments:
        inputs: `(batch, time, channels)`.

    Returns:
        `(normalised, loc, scale)`: `normalised` `(batch, time, channels)` in the compute
        dtype; `loc` and `scale` `(batch, 1, channels)` in float32.

    Example:
    >>> x_norm, loc, scale = RevIN()(past)  # past: (batch, lookback, channels)
    >>> forecast = RevINInverse()(model_output, loc, scale)

    Reference: Kim et al. 2022, "Reversible Instance Normalization for Accurate Time-Series
    Forecasting against Distribution Shift".
    """

    def __init__(self, affine=True, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        if not float(epsilon) > 0.0:
            raise ValueError(f"`epsilon` must be > 0; got {epsilon!r}.")
        self.affine = bool(affine)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"RevIN expects inputs (batch, time, channels) with known channels; got {input_shape}."
            )
        if self.affine:
            channels = input_shape[-1]
            self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
            self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

    def call(self, inputs):
        # Statistics in float32 also under mixed precision (like BatchNorm's moving stats).
        x = ops.cast(inputs, "float32")
        mean = ops.mean(x, axis=1, keepdims=True)  # (batch, 1, channels)
        std = ops.sqrt(ops.var(x, axis=1, keepdims=True) + self.epsilon)
        loc, scale = mean, std
        if self.affine:
            gamma = ops.cast(self.gamma, "float32") + self.epsilon**2
            beta = ops.cast(self.beta, "float32")
            # (x - mean) / std * gamma + beta == (x - loc) / scale with:
            scale = std / gamma
            loc = mean - beta * scale
        normalised = (x - loc) / scale
        return ops.cast(normalised, self.compute_dtype), loc, scale

    def compute_output_spec(self, inputs):
        stats_shape = (inputs.shape[0], 1, inputs.shape[2])
        return (
            keras.KerasTensor(inputs.shape, dtype=self.compute_dtype),
            keras.KerasTensor(stats_shape, dtype="float32"),
            keras.KerasTensor(stats_shape, dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"affine": self.affine, "epsilon": self.epsilon})
        return config


@register
class RevINInverse(keras.layers.Layer):
    """Undoes `RevIN` on a forecast: `inputs * scale + loc`, channel by channel.

    Call arguments:
        inputs: forecast in normalised units, `(batch, horizon, channels)` or, with
            quantiles, `(batch, horizon, channels, num_quantiles)`.
        loc, scale: `(batch, 1, channels)` from `RevIN` (slice them to the channels the
            forecast has).

    Returns:
        The forecast in the units `RevIN` saw, same shape as `inputs`.

    Reference: Kim et al. 2022 (RevIN).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def call(self, inputs, loc, scale):
        if len(inputs.shape) not in (3, 4):
            raise ValueError(
                "RevINInverse expects inputs (batch, horizon, channels) or (batch, horizon, "
                f"channels, quantiles); got {inputs.shape}."
            )
        if len(inputs.shape) == 4:  # a quantile axis: (batch, 1, channels, 1)
            loc, scale = loc[..., None], scale[..., None]
        y = ops.cast(inputs, "float32") * ops.cast(scale, "float32") + ops.cast(loc, "float32")
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, inputs_shape, loc_shape, scale_shape):
        return inputs_shape


def num_patches(length, patch_len, stride, pad_end=True):
    """Patches that `Patching` cuts from `length` steps (PatchTST: (L - P) // S + 2)."""
    padded = length + (stride if pad_end else 0)
    if padded < patch_len:
        raise ValueError(
            f"A window of {length} steps{' (+ stride padding)' if pad_end else ''} is shorter "
            f"than `patch_len`={patch_len}: use a longer lookback or a shorter patch."
        )
    return (padded - patch_len) // stride + 1


@register
class Patching(keras.layers.Layer):
    """Cuts each channel of a window into (overlapping) patches, as PatchTST does.

    With `pad_end`, the series is first extended by `stride` copies of its last value
    (PatchTST's replication padding), so the last steps start a patch of their own.

    Args:
        patch_len: steps per patch (P).
        stride: steps between patch starts (S); `stride == patch_len` gives disjoint patches.
        pad_end: replicate the last value `stride` times before cutting.

    Call arguments:
        inputs: `(batch, time, channels)` with a static `time`.

    Returns:
        `(batch, channels, num_patches, patch_len)`; patch n of channel c holds
        `padded[n * stride : n * stride + patch_len, c]`.

    Example:
    >>> Patching(patch_len=16, stride=8)(keras.ops.zeros((2, 336, 7))).shape
    (2, 7, 42, 16)

    Reference: Nie et al. 2023, "A Time Series is Worth 64 Words" (PatchTST), section 3.1.
    """

    def __init__(self, patch_len, stride, pad_end=True, **kwargs):
        super().__init__(**kwargs)
        self.patch_len = _check_positive_int("patch_len", patch_len)
        self.stride = _check_positive_int("stride", stride)
        self.pad_end = bool(pad_end)

    def _num_patches(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None:
            raise ValueError(
                f"Patching expects inputs (batch, time, channels) with a static time; got {input_shape}."
            )
        return num_patches(input_shape[1], self.patch_len, self.stride, self.pad_end)

    def call(self, inputs):
        n = self._num_patches(inputs.shape)
        x = ops.transpose(inputs, (0, 2, 1))  # (batch, channels, time)
        if self.pad_end:
            x = ops.concatenate([x, ops.repeat(x[:, :, -1:], self.stride, axis=2)], axis=2)
        starts = np.arange(n)[:, None] * self.stride
        index = starts + np.arange(self.patch_len)[None, :]  # (num_patches, patch_len)
        return ops.take(x, index, axis=2)  # (batch, channels, num_patches, patch_len)

    def compute_output_shape(self, input_shape):
        n = self._num_patches(input_shape)
        return (input_shape[0], input_shape[2], n, self.patch_len)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_len": self.patch_len, "stride": self.stride, "pad_end": self.pad_end})
        return config


@register
class SeriesDecomposition(keras.layers.Layer):
    """Moving-average trend and the seasonal remainder of each channel (DLinear, Autoformer).

    The window is padded at both ends by repeating its first and last values, so the trend
    has the input's length; `kernel_size // 2` steps on each side for odd kernels (an even
    kernel puts the extra step at the end).

    Args:
        kernel_size: moving-average length (DLinear: 25).

    Call arguments:
        inputs: `(batch, time, channels)`.

    Returns:
        `(seasonal, trend)`, each `(batch, time, channels)`, `seasonal + trend == inputs`.

    Example:
    >>> seasonal, trend = SeriesDecomposition(25)(past)

    Reference: Zeng et al. 2023, "Are Transformers Effective for Time Series Forecasting?"
    (DLinear); Wu et al. 2021, "Autoformer" (the decomposition block).
    """

    def __init__(self, kernel_size=25, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = _check_positive_int("kernel_size", kernel_size)

    def call(self, inputs):
        if len(inputs.shape) != 3:
            raise ValueError(
                f"SeriesDecomposition expects inputs (batch, time, channels); got {inputs.shape}."
            )
        front = (self.kernel_size - 1) // 2
        back = self.kernel_size - 1 - front
        padded = ops.concatenate(
            [
                ops.repeat(inputs[:, :1], front, axis=1),
                inputs,
                ops.repeat(inputs[:, -1:], back, axis=1),
            ],
            axis=1,
        )  # (batch, time + kernel_size - 1, channels)
        trend = ops.average_pool(
            padded, self.kernel_size, strides=1, padding="valid", data_format="channels_last"
        )  # (batch, time, channels)
        return inputs - trend, trend

    def compute_output_shape(self, input_shape):
        return input_shape, input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size})
        return config


@register
class LearnedQueries(keras.layers.Layer):
    """A learned vector per output position, broadcast over the batch (DETR's object queries).

    Used as the horizon-step inputs of the decoders: query h asks for the forecast h steps
    ahead; the decoder fills it in from the history.

    Args:
        num_queries: number of queries (the horizon).
        hidden_dim: width of each query.
        initializer: initializer of the `queries` weight.

    Call arguments:
        inputs: any tensor `(batch, ...)`; only its batch size is used.

    Returns:
        `(batch, num_queries, hidden_dim)`.

    Example:
    >>> queries = LearnedQueries(num_queries=24, hidden_dim=64)(memory)  # (batch, 24, 64)

    Reference: Carion et al. 2020, "End-to-End Object Detection with Transformers" (DETR).
    """

    def __init__(self, num_queries, hidden_dim, initializer="truncated_normal", **kwargs):
        super().__init__(**kwargs)
        self.num_queries = _check_positive_int("num_queries", num_queries)
        self.hidden_dim = _check_positive_int("hidden_dim", hidden_dim)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.queries = self.add_weight(
            name="queries", shape=(self.num_queries, self.hidden_dim), initializer=self.initializer
        )

    def call(self, inputs):
        batch = ops.shape(inputs)[0]
        queries = ops.cast(self.queries, self.compute_dtype)[None]
        return ops.broadcast_to(queries, (batch, self.num_queries, self.hidden_dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_queries, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_queries": self.num_queries,
                "hidden_dim": self.hidden_dim,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config


# ---------------------------------------------------------------------------------------
# Loss


def _check_quantiles(quantiles):
    q = [float(v) for v in quantiles]
    if not q or any(not 0.0 < v < 1.0 for v in q) or any(a >= b for a, b in zip(q, q[1:])):
        raise ValueError(
            f"`quantiles` must be strictly increasing values in (0, 1), e.g. (0.1, 0.5, 0.9); got {quantiles!r}."
        )
    return tuple(q)


@register
class PinballLoss(keras.losses.Loss):
    """Pinball (quantile) loss, averaged over the quantiles.

    For a target `y` and quantile forecast `f_q`: `max(q * (y - f_q), (q - 1) * (y - f_q))`.
    With the single quantile 0.5 it is half the absolute error.

    Args:
        quantiles: the quantile levels of the last axis of `y_pred`, ascending.
        name, reduction, dtype: as for `keras.losses.Loss`.

    Call arguments:
        y_true: `(batch, horizon, targets)`.
        y_pred: `(batch, horizon, targets, num_quantiles)`.

    Example:
    >>> model.compile(optimizer="adam", loss=pinball_loss((0.1, 0.5, 0.9)))

    Reference: Koenker & Bassett 1978, "Regression Quantiles".
    """

    def __init__(self, quantiles, name="pinball", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.quantiles = _check_quantiles(quantiles)

    def call(self, y_true, y_pred):
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != len(self.quantiles):
            raise ValueError(
                f"y_pred's last axis has {y_pred.shape[-1]} quantiles but the loss was built "
                f"for {len(self.quantiles)}: {self.quantiles}."
            )
        y_pred = ops.convert_to_tensor(y_pred)
        error = ops.cast(y_true, y_pred.dtype)[..., None] - y_pred  # (batch, H, T, Q)
        q = ops.convert_to_tensor(self.quantiles, dtype=y_pred.dtype)
        return ops.mean(ops.maximum(q * error, (q - 1.0) * error), axis=-1)  # (batch, H, T)

    def get_config(self):
        return {
            "quantiles": list(self.quantiles),
            "name": self.name,
            "reduction": self.reduction,
            "dtype": self.dtype,
        }


def pinball_loss(quantiles):
    """`PinballLoss(quantiles)`: the loss for models built with `quantiles`."""
    return PinballLoss(quantiles)


def _point_abs_error(y_true, y_pred, median_index):
    if median_index is not None:  # (batch, H, T, Q) -> the quantile nearest to 0.5
        y_pred = y_pred[..., median_index]
    return ops.mean(ops.abs(ops.cast(y_true, y_pred.dtype) - y_pred), axis=-1)


@register
class PointMAE(keras.metrics.MeanMetricWrapper):
    """Mean absolute error of the point forecast, for point and quantile models alike.

    Args:
        quantiles: the model's quantile levels (the one nearest to 0.5 is the point
            forecast), or None for a point model.
        name, dtype: as for `keras.metrics.Metric`.

    Example:
    >>> model.compile(loss=pinball_loss(q), metrics=[PointMAE(q)])
    """

    def __init__(self, quantiles=None, name="mae", dtype=None):
        self.quantiles = None if quantiles is None else _check_quantiles(quantiles)
        index = None
        if self.quantiles is not None:
            index = int(np.argmin(np.abs(np.asarray(self.quantiles) - 0.5)))
        super().__init__(_point_abs_error, name=name, dtype=dtype, median_index=index)

    def get_config(self):
        quantiles = None if self.quantiles is None else list(self.quantiles)
        return {"quantiles": quantiles, "name": self.name, "dtype": self.dtype}


def point_forecast(predictions, quantiles=None):
    """The point forecast of a model output: itself, or the quantile nearest to 0.5.

    Args:
        predictions: NumPy `(..., horizon, targets)` or `(..., horizon, targets, Q)`.
        quantiles: the model's quantiles, or None for a point model.
    """
    predictions = np.asarray(predictions)
    if quantiles is None:
        return predictions
    index = int(np.argmin(np.abs(np.asarray(quantiles) - 0.5)))
    return predictions[..., index]


# ---------------------------------------------------------------------------------------
# Models

CHANNELS = ("targets", "all")

DEFAULTS = {
    # The paper's small-data setting (ETTh: 3 layers, 4 heads, FF 128, dropout 0.3, D=16)
    # with D=32: on JFK temperature (lookback 168, 24 h) D=32 / dropout 0.3 reached a
    # lower validation loss than D=64 / dropout 0.2 (0.052 vs 0.057, one run each).
    "patchtst": {
        "patch_len": 16,
        "stride": 8,
        "hidden_dim": 32,
        "num_heads": 4,
        "intermediate_dim": 128,
        "num_layers": 3,
        "dropout_rate": 0.3,
        "attention_dropout_rate": 0.0,
        "head_dropout_rate": 0.0,
        "channels": "targets",
        # Off: on JFK temperature, channels="all" + mixing trained 15x slower on CPU and
        # reached a validation loss no better than targets-only CI (0.059 vs 0.057 at D=64).
        "channel_mixing": False,
        # > 0: a linear map from the last `covariate_lookback` steps of every input channel
        # (as scaled: targets, covariates, calendar) to the targets' forecast, added after
        # the RevIN inverse, in the units a ridge regression on those inputs would use
        # (TiDE's linear skip, Das et al. 2023); the encoder learns the rest.
        # Zero-initialised: training starts from plain PatchTST. Added inside RevIN instead
        # (targets normalised per window) it reached a validation MAE of 2.90 on JFK
        # temperature, here 2.78 (the all-channel ridge: 2.81).
        "covariate_lookback": 0,
        "revin": True,
        "revin_affine": True,
    },
    "lstm_attention": {
        "units": 64,
        "attention_dim": 32,
        "dropout_rate": 0.1,
        "channels": "all",
        "revin": True,
        "revin_affine": True,
    },
    # channels="targets": on JFK temperature the encoder-decoder overfit the covariates
    # (validation loss 0.14-0.17 with them, 0.065 without; the LSTM gained from them).
    "transformer": {
        "patch_len": 4,
        "hidden_dim": 64,
        "num_heads": 4,
        "intermediate_dim": 128,
        "num_encoder_layers": 2,
        "num_decoder_layers": 1,
        "dropout_rate": 0.1,
        "attention_dropout_rate": 0.0,
        "channels": "targets",
        "revin": True,
        "revin_affine": True,
    },
    "dlinear": {
        "kernel_size": 25,
        "individual": False,
        "channels": "targets",
        "revin": False,
        "revin_affine": True,
    },
}


def _select_channels(past, channels, num_targets):
    if channels not in CHANNELS:
        raise ValueError(f"`channels` must be one of {CHANNELS}; got {channels!r}.")
    return past[:, :, :num_targets] if channels == "targets" else past


def _normalise(x, revin, revin_affine, num_targets=None):
    """RevIN (or nothing): returns (x, loc, scale).

    With `num_targets`, only the first `num_targets` channels are normalised and the rest
    pass through unchanged.
    """
    if not revin:
        return x, None, None
    revin = RevIN(affine=revin_affine, name="revin")
    if num_targets is None or num_targets == x.shape[-1]:
        return revin(x)
    targets, loc, scale = revin(x[:, :, :num_targets])
    x = keras.layers.Concatenate(name="revin_targets_and_covariates")(
        [targets, x[:, :, num_targets:]]
    )
    return x, loc, scale


def _forecast_head(x, horizon, channels, quantiles):
    """Reshape a flat head output to (b, H, C[, Q]) with sorted quantiles.

    `x` is `(batch, channels, horizon * Q)` (channel-wise heads) with `channels` given, or
    `(batch, horizon, channels * Q)` (per-step heads) with `channels=None`.
    """
    q = len(quantiles) if quantiles else 1
    if channels is not None:
        x = ops.reshape(x, (-1, channels, horizon, q))
        x = ops.transpose(x, (0, 2, 1, 3))  # (batch, horizon, channels, Q)
    else:
        x = ops.reshape(x, (-1, horizon, x.shape[-1] // q, q))
    if not quantiles:
        return x[..., 0]  # (batch, horizon, channels)
    return ops.sort(x, axis=-1)  # (batch, horizon, channels, Q): no crossing quantiles


def _finish(past, y, loc, scale, num_targets, name, residual=None):
    """Target channels -> RevIN inverse [-> + residual, quantiles sorted again] -> float32
    `forecast` -> keras.Model."""
    y = y[:, :, :num_targets]
    if loc is not None:
        y = RevINInverse(dtype="float32", name="revin_inverse")(
            y, loc[:, :, :num_targets], scale[:, :, :num_targets]
        )
    if residual is not None:
        y = ops.cast(y, "float32") + ops.cast(residual, "float32")
        if len(y.shape) == 4:
            y = ops.sort(y, axis=-1)
    # A named float32 output also under mixed precision; export keys use this name.
    y = keras.layers.Activation("linear", dtype="float32", name="forecast")(y)
    return keras.Model(past, y, name=name)


def _patchtst(past, horizon, num_targets, quantiles, name, hp):
    x = _select_channels(past, hp["channels"], num_targets)
    channels = x.shape[-1]
    x, loc, scale = _normalise(x, hp["revin"], hp["revin_affine"])
    x = Patching(hp["patch_len"], hp["stride"], name="patching")(x)  # (b, C, N, P)
    n = x.shape[2]
    d = hp["hidden_dim"]
    x = keras.layers.Dense(d, name="patch_embedding")(x)  # (b, C, N, D)
    x = ops.reshape(x, (-1, n, d))  # (b*C, N, D): channel independence
    x = x + PositionEmbedding(sequence_length=n, name="positions")(x)
    if hp["dropout_rate"]:
        x = keras.layers.Dropout(hp["dropout_rate"], name="embedding_dropout")(x)
    block_args = dict(
        num_heads=hp["num_heads"],
        intermediate_dim=hp["intermediate_dim"],
        dropout_rate=hp["dropout_rate"],
        attention_dropout_rate=hp["attention_dropout_rate"],
    )
    channel_embedding = None
    for i in range(hp["num_layers"]):
        # Scores are always returned: `build_attention_model` reads them from the graph.
        x, _ = TransformerEncoderBlock(**block_args, name=f"encoder_{i}")(
            x, return_attention_scores=True
        )
        if hp["channel_mixing"]:
            # Crossformer's second stage: at each patch, the channels attend to each other.
            x = ops.reshape(x, (-1, channels, n, d))
            x = ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, channels, d))  # (b*N, C, D)
            if channel_embedding is None:  # which variable a token is: attention is order-blind
                channel_embedding = PositionEmbedding(
                    sequence_length=channels, name="channel_embedding"
                )
                x = x + channel_embedding(x)
            x, _ = TransformerEncoderBlock(**block_args, name=f"channel_mixer_{i}")(
                x, return_attention_scores=True
            )
            x = ops.reshape(x, (-1, n, channels, d))
            x = ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, n, d))  # (b*C, N, D)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    x = ops.reshape(x, (-1, channels, n * d))  # (b, C, N*D): the flatten head
    if hp["head_dropout_rate"]:
        x = keras.layers.Dropout(hp["head_dropout_rate"], name="head_dropout")(x)
    q = len(quantiles) if quantiles else 1
    x = keras.layers.Dense(horizon * q, name="head")(x)  # (b, C, H*Q), shared by the channels
    residual = None
    if hp["covariate_lookback"]:
        residual = _covariate_head(past, num_targets, horizon, q, hp)
    y = _forecast_head(x, horizon, channels, quantiles)
    return _finish(past, y, loc, scale, num_targets, name, residual)


def _covariate_head(past, num_targets, horizon, q, hp):
    """A linear forecast (b, H, T[, Q]) in the model's output units (the globally scaled
    targets) from the last `covariate_lookback` steps of every channel as scaled: a ridge
    regression's map, added after the RevIN inverse (see DEFAULTS["patchtst"])."""
    k = hp["covariate_lookback"]
    recent = ops.reshape(past[:, -k:, :], (-1, k * past.shape[-1]))
    linear = keras.layers.Dense(horizon * num_targets * q, kernel_initializer="zeros",
                                name="covariate_head")(recent)
    shape = (-1, horizon, num_targets, q) if q > 1 else (-1, horizon, num_targets)
    return ops.reshape(linear, shape)


def _lstm_attention(past, horizon, num_targets, quantiles, name, hp):
    x = _select_channels(past, hp["channels"], num_targets)
    x, loc, scale = _normalise(x, hp["revin"], hp["revin_affine"], num_targets)
    units = hp["units"]
    encoded, state_h, state_c = keras.layers.LSTM(
        units, return_sequences=True, return_state=True, dropout=hp["dropout_rate"], name="encoder"
    )(x)  # (b, L, U)
    steps = LearnedQueries(horizon, units, name="horizon_queries")(encoded)  # (b, H, U)
    decoded = keras.layers.LSTM(units, return_sequences=True, name="decoder")(
        steps, initial_state=[state_h, state_c]
    )  # (b, H, U)
    context, _ = AdditiveAttention(hp["attention_dim"], name="attention")(
        decoded, encoded, return_attention_scores=True
    )  # (b, H, U), weights (b, H, L)
    h = keras.layers.Concatenate(name="state_and_context")([decoded, context])
    h = keras.layers.Dense(units, activation="tanh", name="attentional_state")(h)
    if hp["dropout_rate"]:
        h = keras.layers.Dropout(hp["dropout_rate"], name="head_dropout")(h)
    q = len(quantiles) if quantiles else 1
    x = keras.layers.Dense(num_targets * q, name="head")(h)  # (b, H, T*Q)
    y = _forecast_head(x, horizon, None, quantiles)
    return _finish(past, y, loc, scale, num_targets, name)


def _transformer(past, horizon, num_targets, quantiles, name, hp):
    x = _select_channels(past, hp["channels"], num_targets)
    lookback, features = x.shape[1], x.shape[2]
    x, loc, scale = _normalise(x, hp["revin"], hp["revin_affine"], num_targets)
    p = hp["patch_len"]
    # Disjoint patches; the end is padded only when the lookback is not a multiple of P.
    x = Patching(p, p, pad_end=lookback % p != 0, name="patching")(x)  # (b, F, N, P)
    n = x.shape[2]
    x = ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, n, features * p))  # (b, N, F*P)
    d = hp["hidden_dim"]
    x = keras.layers.Dense(d, name="token_embedding")(x)  # (b, N, D)
    x = x + PositionEmbedding(sequence_length=n, name="positions")(x)
    if hp["dropout_rate"]:
        x = keras.layers.Dropout(hp["dropout_rate"], name="embedding_dropout")(x)
    block_args = dict(
        num_heads=hp["num_heads"],
        intermediate_dim=hp["intermediate_dim"],
        dropout_rate=hp["dropout_rate"],
        attention_dropout_rate=hp["attention_dropout_rate"],
    )
    for i in range(hp["num_encoder_layers"]):
        x, _ = TransformerEncoderBlock(**block_args, name=f"encoder_{i}")(
            x, return_attention_scores=True
        )
    memory = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    y = LearnedQueries(horizon, d, name="horizon_queries")(memory)  # (b, H, D)
    for i in range(hp["num_decoder_layers"]):
        # No causal mask: the queries carry no targets, every horizon is predicted at once.
        y, _, _ = TransformerDecoderBlock(**block_args, name=f"decoder_{i}")(
            y, memory, use_causal_mask=False, return_attention_scores=True
        )
    y = keras.layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")(y)
    q = len(quantiles) if quantiles else 1
    y = keras.layers.Dense(num_targets * q, name="head")(y)  # (b, H, T*Q)
    y = _forecast_head(y, horizon, None, quantiles)
    return _finish(past, y, loc, scale, num_targets, name)


def _dlinear(past, horizon, num_targets, quantiles, name, hp):
    x = _select_channels(past, hp["channels"], num_targets)
    channels = x.shape[-1]
    x, loc, scale = _normalise(x, hp["revin"], hp["revin_affine"])
    seasonal, trend = SeriesDecomposition(hp["kernel_size"], name="decomposition")(x)
    q = len(quantiles) if quantiles else 1
    outputs = []
    for part, series in (("seasonal", seasonal), ("trend", trend)):
        series = keras.layers.Permute((2, 1), name=f"{part}_by_channel")(series)  # (b, C, L)
        if hp["individual"]:
            linear = keras.layers.EinsumDense(
                "bcl,clh->bch",
                output_shape=(channels, horizon * q),
                bias_axes="ch",
                name=f"{part}_linear",
            )
        else:
            linear = keras.layers.Dense(horizon * q, name=f"{part}_linear")
        outputs.append(linear(series))  # (b, C, H*Q)
    x = keras.layers.Add(name="seasonal_plus_trend")(outputs)
    y = _forecast_head(x, horizon, channels, quantiles)
    return _finish(past, y, loc, scale, num_targets, name)


_BUILDERS = {
    "patchtst": _patchtst,
    "lstm_attention": _lstm_attention,
    "transformer": _transformer,
    "dlinear": _dlinear,
}
MODELS = tuple(_BUILDERS)


def build_model(name, lookback, horizon, num_features, num_targets, quantiles=None, **hparams):
    """Builds a forecasting model (uncompiled).

    Args:
        name: "patchtst", "lstm_attention", "transformer" or "dlinear".
        lookback: input window length L.
        horizon: forecast steps H.
        num_features: input channels F (targets first, then covariates and calendar).
        num_targets: the first T channels are forecast.
        quantiles: None for a point forecast, or ascending levels such as (0.1, 0.5, 0.9):
            the output gets a last axis of that size (train with `pinball_loss(quantiles)`).
        **hparams: overrides of `DEFAULTS[name]`:
            patchtst: patch_len, stride (P, S), hidden_dim, num_heads, intermediate_dim,
                num_layers, dropout_rate, attention_dropout_rate, head_dropout_rate,
                channels ("targets": the target channels only; "all": every channel,
                each on its own, then the targets' forecasts are kept), channel_mixing
                (after each block, attention across channels per patch; needs
                channels="all" to see covariates), covariate_lookback (0: off; K: add a
                linear forecast from the last K steps of every channel, covariates
                included, to the targets' forecast), revin, revin_affine.
            lstm_attention: units (encoder and decoder LSTMs), attention_dim (additive
                attention's hidden size), dropout_rate, channels ("all": the encoder reads
                every channel; "targets": the targets only), revin, revin_affine.
            transformer: patch_len (steps per encoder token, all channels; 1 = one token
                per step), hidden_dim, num_heads, intermediate_dim, num_encoder_layers,
                num_decoder_layers, dropout_rate, attention_dropout_rate, channels (as for
                lstm_attention), revin, revin_affine.
            dlinear: kernel_size (moving average), individual (a linear map per channel
                instead of one shared), channels, revin, revin_affine.

    Returns:
        A `keras.Model` named `name` with input `past` `(batch, lookback, num_features)` and
        output `forecast` `(batch, horizon, num_targets)` or `(..., num_quantiles)`.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown model {name!r}; choose one of {MODELS}.")
    lookback = _check_positive_int("lookback", lookback)
    horizon = _check_positive_int("horizon", horizon)
    num_features = _check_positive_int("num_features", num_features)
    num_targets = _check_positive_int("num_targets", num_targets)
    if num_targets > num_features:
        raise ValueError(
            f"`num_targets`={num_targets} exceeds `num_features`={num_features}: the targets "
            "are the first channels of `past`."
        )
    unknown = set(hparams) - set(DEFAULTS[name])
    if unknown:
        raise ValueError(
            f"Unknown hparams for {name!r}: {sorted(unknown)}; valid: {sorted(DEFAULTS[name])}."
        )
    hp = dict(DEFAULTS[name], **hparams)
    if hp.get("channel_mixing") and hp.get("channels") != "all":
        raise ValueError(
            "`channel_mixing=True` mixes the modelled channels; with channels='targets' it "
            "sees no covariates. Pass channels='all'."
        )
    k = hp.get("covariate_lookback", 0)
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= lookback:
        raise ValueError(f"`covariate_lookback` must be an int in [0, lookback={lookback}]; got {k!r}.")
    if quantiles is not None:
        quantiles = _check_quantiles(quantiles)
    past = keras.Input((lookback, num_features), name="past")
    return _BUILDERS[name](past, horizon, num_targets, quantiles, name, hp)


def build_attention_model(model):
    """A model with every attention map of a `build_model` model (also a reloaded one).

    Returns a `keras.Model` from `past` to a dict, sharing the model's layers:
        patchtst: `encoder_i` `(batch, channels, heads, patches, patches)` (self-attention
            over input patches, per channel); `channel_mixer_i` `(batch, patches, heads,
            channels, channels)` with channel mixing.
        lstm_attention: `attention` `(batch, horizon, lookback)` (decoder step over time steps).
        transformer: `encoder_i` `(batch, heads, patches, patches)` and `decoder_i`
            `(batch, heads, horizon, patches)` (cross-attention of each horizon step over
            the history's patches).

    Raises:
        ValueError: for a model without attention (DLinear).
    """
    patching = [layer for layer in model.layers if isinstance(layer, Patching)]
    # PatchTST folds channels into the batch (its patches are embedded per channel).
    channel_independent = any(layer.name == "patch_embedding" for layer in model.layers)
    maps = {}
    for layer in model.layers:
        if isinstance(layer, TransformerEncoderBlock):
            weights = layer.output[1]  # (rows, heads, q, k)
            if channel_independent:
                # Rows of the batch are (sample, channel), or (sample, patch) for mixers.
                _, c, n, _ = patching[0].output.shape
                heads, q, k = weights.shape[1:]
                rows = c if layer.name.startswith("encoder") else n
                weights = ops.reshape(weights, (-1, rows, heads, q, k))
            maps[layer.name] = weights
        elif isinstance(layer, TransformerDecoderBlock):
            maps[layer.name] = layer.output[2]  # cross-attention (batch, heads, H, N)
        elif isinstance(layer, AdditiveAttention):
            maps[layer.name] = layer.output[1]  # (batch, H, L)
    if not maps:
        raise ValueError(f"Model {model.name!r} has no attention layers.")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, maps, name=f"{model.name}_attention")


def count_params(model):
    """Number of trainable parameters."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
