"""Figures of the forecasting app and the TensorBoard image hooks that draw them.

Figures (matplotlib `Figure`s, headless): forecast vs actual with quantile bands, the
error of each horizon step, and the attention a PatchTST pays to the patches of its input.
`image_callbacks` logs them every `--image_every_epochs` epochs on fixed validation
windows (in original units), the same windows every time.
"""

import os

import numpy as np
from matplotlib.figure import Figure

from apps.forecast.model import build_attention_model
from tfattn import training

HISTORY_SHOWN = 4  # plot this many horizons of history before each forecast (at most)


def forecast_figure(past_times, past_values, future_times, actual, forecasts, bands=None,
                    titles=None, ylabel="value"):
    """One panel per window: history, outcome, forecasts and an optional band.

    Args:
        past_times, past_values: (n, L) times and target values before each origin.
        future_times, actual: (n, H) times and outcomes after it.
        forecasts: {name: (n, H)} point forecasts.
        bands: optional {name: (lo (n, H), hi (n, H))}, drawn shaded.
        titles: optional title per panel.
    """
    n = len(past_values)
    cols = min(2, n)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(5.0 * cols, 2.6 * rows), dpi=80)
    shown = min(past_values.shape[1], HISTORY_SHOWN * actual.shape[1])
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(past_times[i, -shown:], past_values[i, -shown:], color="0.4", lw=1, label="history")
        ax.plot(future_times[i], actual[i], color="black", lw=1.5, label="actual")
        for name, (lo, hi) in (bands or {}).items():
            ax.fill_between(future_times[i], lo[i], hi[i], alpha=0.25, label=f"{name} band")
        for name, f in forecasts.items():
            ax.plot(future_times[i], f[i], lw=1.5, label=name)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.tick_params(axis="x", rotation=30)
        if i == 0:
            ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def horizon_error_figure(errors, ylabel="MAE"):
    """Error per horizon step, one line per model: {name: (H,) or (H, T)}."""
    fig = Figure(figsize=(5.5, 3.2), dpi=80)
    ax = fig.add_subplot()
    for name, per in errors.items():
        per = np.asarray(per, np.float64)
        per = per.mean(axis=tuple(range(1, per.ndim))) if per.ndim > 1 else per
        ax.plot(np.arange(1, len(per) + 1), per, marker="o", ms=3, label=name)
    ax.set_xlabel("horizon step")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def attention_figure(past_values, patch_weights, patch_len, stride, titles=None):
    """The target history with the attention each input patch receives, shaded.

    Args:
        past_values: (n, L) scaled target history.
        patch_weights: (n, N) attention received by each patch (mean over heads and
            queries of the last encoder block).
        patch_len, stride: how the patches were cut (the last ones reach into the padding).
    """
    n, length = past_values.shape
    fig = Figure(figsize=(6.0, 1.9 * n), dpi=80)
    for i in range(n):
        ax = fig.add_subplot(n, 1, i + 1)
        w = patch_weights[i] / max(float(patch_weights[i].max()), 1e-12)
        for p, weight in enumerate(w):
            start = p * stride
            ax.axvspan(start, min(start + patch_len, length), color="tab:orange",
                       alpha=0.6 * float(weight) / max(1.0, patch_len / stride), lw=0)
        ax.plot(np.arange(length), past_values[i], color="black", lw=1)
        ax.set_xlim(0, length)
        ax.tick_params(labelsize=6)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    caption = "input window (scaled target); shading: attention each patch receives"
    # Above the first panel's own title, which it would otherwise replace.
    fig.axes[0].set_title(caption if titles is None else f"{caption}\n{titles[0]}", fontsize=8)
    fig.axes[-1].set_xlabel("input step", fontsize=8)
    fig.tight_layout()
    return fig


def backtest_forecast_figure(result, data, num_windows=4):
    """Forecast vs actual of every model on `num_windows` evenly spaced backtest origins
    (first target), with the quantile models' outer band."""
    n = len(result["actual"])
    pick = np.unique(np.linspace(0, n - 1, min(num_windows, n)).astype(int))
    raw = result["raw"]
    forecasts = {k: v[pick, :, 0] for k, v in result["forecasts"].items()}
    bands = {k: (v[pick, :, 0, 0], v[pick, :, 0, -1])
             for k, v in result["quantile_forecasts"].items()}
    titles = [f"origin {np.datetime_as_string(raw.past_times[i, -1], unit='m')}" for i in pick]
    return forecast_figure(raw.past_times[pick], raw.past_values[pick, :, 0],
                           raw.future_times[pick], result["actual"][pick, :, 0], forecasts,
                           bands, titles, ylabel=data.target_names[0])


# --------------------------------------------------------------------------- TensorBoard


def _patch_attention(model):
    """fn(past) -> (n, N) attention received per input patch (PatchTST: target channel 0,
    last encoder block, mean over heads and queries), or None for other models."""
    if not any(layer.name == "patch_embedding" for layer in model.layers):
        return None
    attention_model = build_attention_model(model)
    last = max((k for k in attention_model.output if k.startswith("encoder_")),
               key=lambda k: int(k.rsplit("_", 1)[1]))  # encoder_10 comes after encoder_9

    def fn(past):
        scores = np.asarray(attention_model(past, training=False)[last])  # (b, C, heads, N, N)
        return scores[:, 0].mean(axis=(1, 2))  # (b, N)

    return fn


def _layer_order(outputs):
    """Attention map names in the model's order: encoder blocks by number, then decoder
    blocks (so "last layer" is the last one run); PatchTST's channel-mixer maps
    (b, N, heads, C, C: channels, not time) are left out."""
    def key(name):
        stem, _, index = name.rpartition("_")
        rank = {"encoder": 0, "decoder": 1}.get(stem, 2)
        return rank, int(index) if index.isdigit() else 0, name

    return sorted((n for n in outputs if not n.startswith("channel_mixer")), key=key)


def _attention_scores(model):
    """fn(past) -> [per-layer (b, heads, q, k)] for AttentionMapCallback, or None (DLinear)."""
    try:
        attention_model = build_attention_model(model)
    except ValueError:
        return None

    def fn(past):
        outputs = attention_model(past, training=False)
        maps = []
        for name in _layer_order(outputs):
            s = np.asarray(outputs[name])
            if s.ndim == 5:  # PatchTST (b, C, heads, N, N): the first target's channel
                s = s[:, 0]
            elif s.ndim == 3:  # LSTM (b, H, L): one "head"
                s = s[:, None]
            maps.append(s)
        return maps

    return fn


def image_callbacks(cfg, model, data, log_dir):
    """TensorBoard image hooks (chief only): forecasts with bands on fixed validation
    windows, the validation error per horizon step, and the model's attention."""
    w = data.windows("val", cfg.lookback, cfg.horizon, cfg.val_stride)
    n = len(w.origin)
    pick = np.unique(np.linspace(0, n - 1, min(max(cfg.plot_windows, 1), n)).astype(int))
    raw = data.raw_windows(w)
    cache = {}

    def val_forecast(model, epoch):
        if cache.get("epoch") != epoch:  # one prediction per epoch for every hook
            predicted = np.asarray(model.predict(w.past, batch_size=256, verbose=0))
            cache.update(epoch=epoch, values=data.to_original_units(predicted, w))
        return cache["values"]

    def point(values):
        if cfg.quantiles is None:
            return values
        return values[..., int(np.argmin(np.abs(np.asarray(cfg.quantiles) - 0.5)))]

    def forecasts(model, epoch):
        values = val_forecast(model, epoch)[pick]
        bands = None
        if cfg.quantiles is not None:
            bands = {f"P{100 * cfg.quantiles[0]:g}-P{100 * cfg.quantiles[-1]:g}":
                     (values[:, :, 0, 0], values[:, :, 0, -1])}
        titles = [f"validation, origin {np.datetime_as_string(raw.past_times[i, -1], unit='m')}"
                  for i in pick]
        fig = forecast_figure(raw.past_times[pick], raw.past_values[pick, :, 0],
                              raw.future_times[pick], raw.future_targets[pick, :, 0],
                              {cfg.model: point(values)[:, :, 0]}, bands, titles,
                              ylabel=data.target_names[0])
        return training.figure_to_image(fig)

    def horizon_error(model, epoch):
        error = np.abs(point(val_forecast(model, epoch)) - raw.future_targets).mean(axis=0)
        fig = horizon_error_figure({cfg.model: error}, f"validation MAE, epoch {epoch + 1}")
        return training.figure_to_image(fig)

    every = cfg.image_every_epochs
    callbacks = [
        training.ImageHookCallback(horizon_error, log_dir, "error_by_horizon", every_n_epochs=every),
    ]
    if cfg.plot_windows:
        callbacks.append(
            training.ImageHookCallback(forecasts, log_dir, "forecasts", every_n_epochs=every))
    patch_attention = _patch_attention(model)
    if patch_attention is not None and cfg.plot_windows:
        hp = model.get_layer("patching")

        def attention_over_input(model, epoch):
            fig = attention_figure(w.past[pick, :, 0], patch_attention(w.past[pick]),
                                   hp.patch_len, hp.stride)
            return training.figure_to_image(fig)

        callbacks.append(training.ImageHookCallback(
            attention_over_input, log_dir, "attention/over_input_patches", every_n_epochs=every))
    scores = _attention_scores(model)
    if scores is not None and cfg.plot_windows:
        callbacks.append(training.AttentionMapCallback(
            w.past[pick], scores, log_dir, every_n_epochs=every))
    return callbacks


def tensorboard_image_dir(workdir):
    return os.path.join(workdir, "tensorboard", "images")
