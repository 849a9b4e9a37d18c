"""Forecast models: layer contracts, NumPy references (RevIN, patching, decomposition, pinball),
channel independence, batch independence, shapes, attention maps, save/load, a short fit."""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from apps.forecast.metrics import pinball
from apps.forecast.model import (
    DEFAULTS,
    MODELS,
    PACKAGE,
    LearnedQueries,
    Patching,
    PinballLoss,
    PointMAE,
    RevIN,
    RevINInverse,
    SeriesDecomposition,
    build_attention_model,
    build_model,
    count_params,
    num_patches,
    pinball_loss,
    point_forecast,
)
from tests import contract

RNG = np.random.default_rng(0)
B, L, H, F, T = 3, 32, 6, 4, 2
QUANTILES = (0.1, 0.5, 0.9)
# Tiny hparams: every model builds and runs in a second or two.
TINY = {
    "patchtst": {
        "patch_len": 8,
        "stride": 4,
        "hidden_dim": 8,
        "num_heads": 2,
        "intermediate_dim": 16,
        "num_layers": 2,
    },
    "lstm_attention": {"units": 8, "attention_dim": 4},
    "transformer": {
        "patch_len": 4,
        "hidden_dim": 8,
        "num_heads": 2,
        "intermediate_dim": 16,
        "num_encoder_layers": 1,
    },
    "dlinear": {"kernel_size": 5},
}


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


@pytest.fixture
def check_layer_contract():
    """`contract.check_layer_contract` for the app's layers (their own registered package)."""
    return functools.partial(contract.check_layer_contract, package=PACKAGE)


# ---------------------------------------------------------------------------------------
# Layer contracts


def test_revin_contract(check_layer_contract):
    check_layer_contract(
        RevIN, {"affine": True, "epsilon": 1e-5}, _normal(B, L, F), expected_output_shape=(B, L, F)
    )


def test_revin_inverse_contract(check_layer_contract):
    loc, scale = _normal(B, 1, T), np.abs(_normal(B, 1, T)) + 0.5
    check_layer_contract(
        RevINInverse, {}, [_normal(B, H, T), loc, scale], expected_output_shape=(B, H, T)
    )
    check_layer_contract(
        RevINInverse,
        {},
        [_normal(B, H, T, 3), loc, scale],
        expected_output_shape=(B, H, T, 3),
        run_fit=False,
    )


def test_patching_contract(check_layer_contract):
    n = num_patches(L, 8, 4)
    check_layer_contract(
        Patching,
        {"patch_len": 8, "stride": 4, "pad_end": True},
        _normal(B, L, F),
        expected_output_shape=(B, F, n, 8),
    )


def test_series_decomposition_contract(check_layer_contract):
    check_layer_contract(
        SeriesDecomposition, {"kernel_size": 5}, _normal(B, L, F), expected_output_shape=(B, L, F)
    )


def test_learned_queries_contract(check_layer_contract):
    check_layer_contract(
        LearnedQueries,
        {"num_queries": H, "hidden_dim": 8, "initializer": "truncated_normal"},
        _normal(B, L, F),
        expected_output_shape=(B, H, 8),
    )


# ---------------------------------------------------------------------------------------
# Layers against NumPy


def test_revin_matches_numpy_and_inverts_exactly():
    x = _normal(B, L, F) * 3.0 + 5.0
    layer = RevIN()
    layer.build(x.shape)
    gamma, beta = _normal(F) + 1.5, _normal(F)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    normalised, loc, scale = (_np(t) for t in layer(x))
    x64 = x.astype(np.float64)
    std = np.sqrt(x64.var(axis=1, keepdims=True) + 1e-5)
    ref = (x64 - x64.mean(axis=1, keepdims=True)) / std * (gamma + 1e-10) + beta
    np.testing.assert_allclose(normalised, ref, atol=1e-5)
    assert loc.shape == scale.shape == (B, 1, F)
    np.testing.assert_allclose(_np(RevINInverse()(normalised, loc, scale)), x, rtol=1e-5, atol=1e-5)
    # With a quantile axis the same statistics apply to every quantile.
    stacked = np.stack([normalised, normalised], axis=-1)
    restored = _np(RevINInverse()(stacked, loc, scale))
    np.testing.assert_allclose(restored[..., 1], x, rtol=1e-5, atol=1e-5)


def test_revin_is_finite_on_a_constant_window():
    x = np.full((2, L, 3), 7.0, "float32")
    normalised, loc, scale = (_np(t) for t in RevIN(affine=False)(x))
    assert np.all(np.isfinite(normalised)) and np.all(normalised == 0.0)
    np.testing.assert_allclose(_np(RevINInverse()(normalised, loc, scale)), x)


def _patches_numpy(x, patch_len, stride, pad_end):
    """(b, L, C) -> (b, C, N, P) with loops, PatchTST's ReplicationPad1d((0, stride))."""
    x = np.transpose(x, (0, 2, 1))
    if pad_end:
        x = np.concatenate([x, np.repeat(x[..., -1:], stride, axis=-1)], axis=-1)
    patches, start = [], 0
    while start + patch_len <= x.shape[-1]:
        patches.append(x[..., start : start + patch_len])
        start += stride
    return np.stack(patches, axis=2)


@pytest.mark.parametrize(
    "length, patch_len, stride, pad_end",
    [(32, 8, 4, True), (30, 8, 8, False), (30, 5, 3, True), (336, 16, 8, True)],
)
def test_patching_matches_numpy(length, patch_len, stride, pad_end):
    x = _normal(2, length, 3)
    out = _np(Patching(patch_len, stride, pad_end=pad_end)(x))
    ref = _patches_numpy(x, patch_len, stride, pad_end)
    assert out.shape == ref.shape and out.shape[2] == num_patches(
        length, patch_len, stride, pad_end
    )
    np.testing.assert_array_equal(out, ref)
    if (length, patch_len, stride) == (336, 16, 8):
        assert out.shape[2] == 42  # the paper's PatchTST/42


def _moving_average_numpy(x, kernel):
    front, back = (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
    padded = np.pad(x.astype(np.float64), ((0, 0), (front, back), (0, 0)), mode="edge")
    trend = np.stack(
        [
            np.convolve(padded[b, :, c], np.ones(kernel) / kernel, mode="valid")
            for b in range(x.shape[0])
            for c in range(x.shape[2])
        ]
    ).reshape(x.shape[0], x.shape[2], x.shape[1])
    return np.transpose(trend, (0, 2, 1))


@pytest.mark.parametrize("kernel", [25, 4, 1])
def test_series_decomposition_matches_numpy(kernel):
    x = np.cumsum(_normal(2, 40, 3), axis=1)
    seasonal, trend = (_np(t) for t in SeriesDecomposition(kernel)(x))
    np.testing.assert_allclose(trend, _moving_average_numpy(x, kernel), atol=1e-5)
    np.testing.assert_allclose(seasonal + trend, x, atol=1e-5)


def test_learned_queries_broadcast_over_the_batch():
    layer = LearnedQueries(4, 6)
    out = _np(layer(_normal(5, 3, 2)))
    assert out.shape == (5, 4, 6)
    np.testing.assert_array_equal(out[0], _np(layer.queries))
    np.testing.assert_array_equal(out[3], out[0])


# ---------------------------------------------------------------------------------------
# Pinball loss


def test_pinball_loss_matches_numpy():
    y = _normal(4, H, T)
    pred = np.sort(_normal(4, H, T, 3), axis=-1)
    loss = float(_np(PinballLoss(QUANTILES)(y, pred)))
    error = y[..., None].astype(np.float64) - pred
    q = np.asarray(QUANTILES)
    ref = np.mean(np.where(error >= 0, q * error, (q - 1) * error))
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(loss, pinball(y, pred, QUANTILES).mean(), rtol=1e-5)
    # One quantile 0.5: half the absolute error.
    half = float(_np(pinball_loss((0.5,))(y, pred[..., 1:2])))
    np.testing.assert_allclose(half, 0.5 * np.mean(np.abs(y - pred[..., 1])), rtol=1e-5)


def test_pinball_loss_config_and_errors():
    loss = pinball_loss(QUANTILES)
    config = loss.get_config()
    assert config["quantiles"] == list(QUANTILES)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, PinballLoss) and restored.quantiles == QUANTILES
    with pytest.raises(ValueError, match="strictly increasing"):
        PinballLoss((0.9, 0.1))
    with pytest.raises(ValueError, match="quantiles"):
        PinballLoss((0.1, 0.9))(_normal(2, H, T), _normal(2, H, T, 3))


def test_point_mae_metric_scores_the_median():
    y, pred = _normal(4, H, T), _normal(4, H, T, 3)
    for quantiles, point in ((QUANTILES, pred[..., 1]), (None, pred[..., 0])):
        metric = PointMAE(quantiles)
        metric.update_state(y, pred if quantiles else point)
        np.testing.assert_allclose(
            float(_np(metric.result())), np.mean(np.abs(y - point)), rtol=1e-5
        )
        restored = PointMAE.from_config(metric.get_config())
        assert restored.quantiles == metric.quantiles and restored.name == "mae"


def test_point_forecast_takes_the_median():
    pred = _normal(2, H, T, 3)
    np.testing.assert_array_equal(point_forecast(pred, QUANTILES), pred[..., 1])
    np.testing.assert_array_equal(point_forecast(pred[..., 0]), pred[..., 0])


# ---------------------------------------------------------------------------------------
# Models


def _build(name, quantiles=None, **overrides):
    return build_model(name, L, H, F, T, quantiles=quantiles, **dict(TINY[name], **overrides))


# A compiled, never-trained model saves an unbuilt optimizer; Keras warns when reloading it.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
@pytest.mark.parametrize("name", MODELS)
def test_shapes_save_load_and_attention(name, tmp_path):
    x = _normal(B, L, F)
    for quantiles in (None, QUANTILES):
        model = _build(name, quantiles)
        assert model.input.name == "past" and model.layers[-1].name == "forecast"
        y = _np(model(x))
        expected = (B, H, T) if quantiles is None else (B, H, T, 3)
        assert y.shape == expected and y.dtype == np.float32
        if quantiles:
            assert np.all(np.diff(y, axis=-1) >= 0), "quantiles cross"
            model.compile(optimizer="adam", loss=pinball_loss(quantiles))
        path = str(tmp_path / f"{name}_{len(quantiles or ())}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        np.testing.assert_allclose(_np(loaded(x)), y, atol=1e-6)
        if quantiles:
            assert isinstance(loaded.loss, PinballLoss) and loaded.loss.quantiles == QUANTILES
    if name == "dlinear":
        with pytest.raises(ValueError, match="no attention"):
            build_attention_model(loaded)
        return
    maps = {k: _np(v) for k, v in build_attention_model(loaded)(x).items()}
    assert maps
    for key, weights in maps.items():
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5, err_msg=key)
    n = num_patches(L, 8, 4)
    expected = {
        "patchtst": {f"encoder_{i}": (B, T, 2, n, n) for i in range(2)},
        "lstm_attention": {"attention": (B, H, L)},
        "transformer": {
            "encoder_0": (B, 2, L // 4, L // 4),
            "decoder_0": (B, 2, H, L // 4),
        },
    }[name]
    assert {k: v.shape for k, v in maps.items()} == expected


def test_patchtst_channel_mixing_attention_maps():
    model = _build("patchtst", channels="all", channel_mixing=True, num_layers=1)
    maps = build_attention_model(model)(_normal(B, L, F))
    n = num_patches(L, 8, 4)
    assert tuple(maps["encoder_0"].shape) == (B, F, 2, n, n)
    assert tuple(maps["channel_mixer_0"].shape) == (B, n, 2, F, F)


def _outputs_after_changing_channel(model, channel):
    x = _normal(B, L, F)
    x2 = x.copy()
    x2[:, :, channel] += _normal(B, L) * 3.0
    return _np(model(x)), _np(model(x2))


@pytest.mark.parametrize("name", ["patchtst", "dlinear"])
def test_channel_independence(name):
    # channels="all": every channel is modelled, each on its own; target 0 must not see
    # target 1 or the covariates.
    model = _build(name, channels="all")
    for channel in (1, F - 1):
        y, y2 = _outputs_after_changing_channel(model, channel)
        np.testing.assert_allclose(y2[..., 0], y[..., 0], atol=1e-6)
        if channel < T:
            assert np.abs(y2[..., channel] - y[..., channel]).max() > 1e-3
    # channels="targets": covariates are not read at all.
    y, y2 = _outputs_after_changing_channel(_build(name), F - 1)
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("name", ["lstm_attention", "transformer"])
def test_multivariate_models_read_covariates_unless_told_not_to(name):
    y, y2 = _outputs_after_changing_channel(_build(name, channels="all"), F - 1)
    assert np.abs(y2 - y).max() > 1e-4
    y, y2 = _outputs_after_changing_channel(_build(name, channels="targets"), F - 1)
    np.testing.assert_array_equal(y2, y)


def test_channel_mixing_lets_covariates_in():
    model = _build("patchtst", channels="all", channel_mixing=True)
    y, y2 = _outputs_after_changing_channel(model, F - 1)
    assert np.abs(y2[..., 0] - y[..., 0]).max() > 1e-4


@pytest.mark.parametrize("channels", ["targets", "all"])
@pytest.mark.parametrize("quantiles", [None, QUANTILES])
def test_covariate_head_reads_the_last_steps_of_every_channel(channels, quantiles):
    k = 5
    model = _build("patchtst", quantiles, channels=channels, covariate_lookback=k)
    head = model.get_layer("covariate_head")
    q = len(quantiles) if quantiles else 1
    assert tuple(head.kernel.shape) == (k * F, T * H * q)
    x = _normal(B, L, F)
    y = _np(model(x))
    # Zero-initialised: at first the forecast is the channel-independent one.
    plain = _build("patchtst", quantiles, channels=channels)
    plain.set_weights([w for w in model.get_weights() if w.shape not in
                       {tuple(head.kernel.shape), tuple(head.bias.shape)}])
    np.testing.assert_allclose(y, _np(plain(x)), atol=1e-6)
    head.set_weights([_normal(*head.kernel.shape), _normal(*head.bias.shape)])
    y = _np(model(x))
    x2 = x.copy()
    x2[:, -k:, F - 1] += 3.0  # a covariate within the last k steps: every target moves
    moved = np.abs(_np(model(x2)) - y)
    assert all(moved[:, :, t].max() > 1e-3 for t in range(T))
    if quantiles is None:
        # The head adds in the output's own (scaled) units, after the RevIN inverse: a
        # covariate's change moves the forecast by exactly kernel . change, as a ridge.
        change = (x2 - x)[:, -k:, :].reshape(B, -1) @ _np(head.kernel)
        np.testing.assert_allclose(_np(model(x2)) - y, change.reshape(B, H, T), atol=1e-4)
    x3 = x.copy()
    x3[:, : L - k, F - 1] += 3.0  # before them: only a channels="all" encoder could see it
    unmoved = np.abs(_np(model(x3)) - y)
    if channels == "targets":
        np.testing.assert_array_equal(unmoved, 0.0)
    else:  # the covariate channel's own forecast is not an output
        assert unmoved.max() < 1e-5
    if quantiles:  # quantiles stay sorted
        assert np.all(np.diff(_np(model(x2)), axis=-1) >= 0)


@pytest.mark.parametrize("name", MODELS)
def test_forecast_depends_only_on_its_own_window(name):
    # No statistics across the batch (RevIN is per window; no BatchNorm): sample i's forecast
    # is the same alone or in a batch, and the batch's other windows do not leak into it.
    model = _build(name, quantiles=QUANTILES)
    x = _normal(4, L, F)
    batched = _np(model(x))
    for i in range(4):
        np.testing.assert_allclose(_np(model(x[i : i + 1]))[0], batched[i], atol=1e-5)
    x2 = x.copy()
    x2[1:] = _normal(3, L, F) * 10.0
    np.testing.assert_allclose(_np(model(x2))[0], batched[0], atol=1e-5)


@pytest.mark.parametrize("name", ["patchtst", "lstm_attention", "transformer"])
def test_revin_makes_forecasts_follow_the_targets_units(name):
    # Targets shifted by c and scaled by s give a forecast shifted by c and scaled by s.
    # Multivariate models normalise only the targets: the covariates stay as they are.
    model = _build(name, channels="all")
    x = _normal(2, L, F)
    moved = x.copy()
    moved[..., :T] = x[..., :T] * 4.0 + 100.0
    np.testing.assert_allclose(_np(model(moved)), _np(model(x)) * 4.0 + 100.0, rtol=1e-4, atol=2e-3)


def _sine_windows(n=256, lookback=L, horizon=H, features=F, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n + lookback + horizon)
    target = np.sin(2 * np.pi * t / 12.0) + 0.1 * rng.normal(size=t.size)
    series = np.stack(
        [target, np.cos(2 * np.pi * t / 12.0), *(rng.normal(size=(features - 2, t.size)))], axis=-1
    ).astype("float32")
    idx = np.arange(n)[:, None] + np.arange(lookback + horizon)[None, :]
    windows = series[idx]
    return windows[:, :lookback], windows[:, lookback:, :1]


@pytest.mark.parametrize(
    "name, quantiles",
    [
        ("patchtst", None),
        ("lstm_attention", None),
        ("transformer", None),
        ("dlinear", None),
        ("dlinear", QUANTILES),
    ],
)
def test_one_epoch_on_a_sine_lowers_the_loss(name, quantiles):
    keras.utils.set_random_seed(0)
    past, future = _sine_windows()
    model = build_model(name, L, H, F, 1, quantiles=quantiles, **TINY[name])
    loss = pinball_loss(quantiles) if quantiles else keras.losses.MeanSquaredError()
    # Eager losses before and after: one traced function (the train step), no XLA compile.
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, jit_compile=False)
    before = float(_np(loss(future, model(past))))
    model.fit(past, future, epochs=1, batch_size=16, verbose=0)
    after = float(_np(loss(future, model(past))))
    assert np.isfinite(after) and after < 0.9 * before, (name, before, after)


def test_mixed_precision_forecast_is_float32():
    keras.config.set_dtype_policy("mixed_float16")
    model = _build("patchtst", quantiles=QUANTILES)
    y = model(_normal(2, L, F))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert np.all(np.isfinite(_np(y)))


def test_default_hparams_build_at_the_weather_size():
    # A weather-sized input (lookback 336, 24 h, 9 features, 1 target) at the defaults; the
    # counts are golden values (from this code), so a change of architecture shows here.
    counts = {}
    for name in MODELS:
        model = build_model(
            name, 336, 24, 9, 1, quantiles=QUANTILES if name == "patchtst" else None
        )
        counts[name] = count_params(model)
    assert counts == {
        "patchtst": 136906,
        "lstm_attention": 65987,
        "transformer": 124739,
        "dlinear": 16176,
    }, counts


def test_build_model_errors():
    with pytest.raises(ValueError, match="Unknown model"):
        build_model("tcn", L, H, F, T)
    with pytest.raises(ValueError, match="Unknown hparams.*valid"):
        build_model("dlinear", L, H, F, T, hidden_dim=8)
    with pytest.raises(ValueError, match="num_targets"):
        build_model("dlinear", L, H, 2, 3)
    with pytest.raises(ValueError, match="channels='all'"):
        build_model("patchtst", L, H, F, T, channel_mixing=True)
    with pytest.raises(ValueError, match="channels"):
        build_model("dlinear", L, H, F, T, channels="some")
    with pytest.raises(ValueError, match="quantiles"):
        build_model("dlinear", L, H, F, T, quantiles=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"`covariate_lookback` must be an int in \[0, lookback=32\]"):
        build_model("patchtst", L, H, F, T, covariate_lookback=L + 1)
    with pytest.raises(ValueError, match="shorter than `patch_len`"):
        build_model("patchtst", 4, H, F, T, patch_len=16, stride=8)
    assert set(DEFAULTS) == set(MODELS)
