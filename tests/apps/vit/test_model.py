import dataclasses
import warnings

import keras
import numpy as np
import pytest

from apps.vit.config import PRESETS, Config
from apps.vit.model import attention_model_of, build_vit, drop_path_rates, resize_vit


def _cfg(**overrides):
    base = dict(PRESETS["test"], hidden_dim=16, num_heads=2, patch_size=7)
    base.update(overrides)
    return Config(**base)


@pytest.mark.parametrize(
    "overrides, prefix",
    [
        ({"pooling": "cls"}, 1),
        ({"pooling": "gap"}, 0),
        ({"pooling": "attention"}, 0),
        ({"pooling": "cls", "spt": True, "lsa": True, "num_layers": 2}, 1),
        ({"pooling": "cls", "conv_stem": True, "lsa": True, "patch_size": 4}, 1),
        ({"pooling": "cls", "num_layers": 2, "patch_size": 4, "mlp_local_kernel_size": 3}, 1),
        ({"pooling": "gap", "num_layers": 2, "patch_size": 4, "mlp_local_kernel_size": 3}, 0),
    ],
)
def test_shapes_and_attention_outputs(overrides, prefix):
    cfg = _cfg(**overrides)
    model, attention_model = build_vit(cfg, num_classes=10, channels=1)
    x = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype("float32")
    logits = model(x)
    assert logits.shape == (3, 10) and keras.backend.standardize_dtype(logits.dtype) == "float32"
    scores = attention_model(x)
    scores = scores if isinstance(scores, (list, tuple)) else [scores]  # one block: a tensor
    assert len(scores) == cfg.num_layers
    tokens = prefix + cfg.grid_size[0] * cfg.grid_size[1]
    for s in scores:
        s = np.asarray(s)
        assert s.shape == (3, cfg.num_heads, tokens, tokens)
        np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)
    if cfg.lsa:  # locality self-attention: no token attends to itself
        diag = np.asarray(scores[0])[..., np.arange(tokens), np.arange(tokens)]
        assert np.all(diag == 0.0)


def test_mixed_precision_gives_float32_logits():
    keras.config.set_dtype_policy("mixed_float16")
    model, _ = build_vit(_cfg(), num_classes=4, channels=3)
    assert keras.backend.standardize_dtype(model(np.zeros((2, 28, 28, 3), "float32")).dtype) == "float32"


def test_drop_path_rates_grow_linearly():
    assert drop_path_rates(0.1, 1) == [0.1]
    np.testing.assert_allclose(drop_path_rates(0.3, 4), [0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    "overrides",
    [
        {"spt": True},
        {"conv_stem": True, "patch_size": 4, "conv_stem_depth": 2},
        {"patch_size": 4, "mlp_local_kernel_size": 3},
    ],
    ids=["spt", "conv_stem", "local_mlp"],
)
def test_keras_round_trip_with_tokenisers_and_lsa(tmp_path, overrides):
    cfg = _cfg(lsa=True, layer_scale_init_value=0.1, pooling="attention", **overrides)
    model, _ = build_vit(cfg, num_classes=5, channels=1)
    x = np.random.default_rng(1).normal(size=(2, 28, 28, 1)).astype("float32")
    path = str(tmp_path / "vit.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize(
    "conv_stem, local", [(False, None), (True, None), (False, 3)], ids=["patchify", "conv_stem", "local_mlp"]
)
def test_resize_keeps_weights_and_runs_at_new_size(conv_stem, local):
    cfg = _cfg(patch_size=4, conv_stem=conv_stem, mlp_local_kernel_size=local)
    model, _ = build_vit(cfg, num_classes=10, channels=1)
    bigger, attention = resize_vit(model, cfg, 10, 1, 56)
    assert bigger.input_shape == (None, 56, 56, 1)
    for a, b in zip(model.get_weights(), bigger.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(2).normal(size=(2, 56, 56, 1)).astype("float32")
    assert bigger(x).shape == (2, 10)
    assert np.asarray(attention(x)).shape[-1] == 1 + 14 * 14  # one block
    # Same size: identical outputs.
    same, _ = resize_vit(model, cfg, 10, 1, 28)
    x28 = x[:, ::2, ::2]
    np.testing.assert_allclose(same(x28), model(x28), atol=1e-6)


def test_resized_model_fine_tunes_at_the_new_size():
    cfg = _cfg(patch_size=4)
    model, _ = build_vit(cfg, num_classes=3, channels=1)
    bigger, _ = resize_vit(model, cfg, 3, 1, 56)
    bigger.compile(keras.optimizers.AdamW(3e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 56, 56, 1)).astype("float32")
    y = rng.integers(0, 3, 8)
    before = bigger.get_layer("positions").get_weights()[0].copy()
    losses = bigger.fit(x, y, epochs=5, batch_size=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The stored (28 px) grid is what trains: gradients flow through the interpolation.
    after = bigger.get_layer("positions").get_weights()[0]
    assert after.shape == before.shape and not np.allclose(after, before)


def test_bad_image_size_for_patch():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        build_vit(_cfg(patch_size=7), 10, 1, image_size=30)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 30, "patch_size": 4}, "divisible by `patch_size`"),
        ({"hidden_dim": 30, "num_heads": 4}, "divisible by `num_heads`"),
        ({"channels": 2}, "`channels` must be 1, 3"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"warmup_epochs": 5.0, "epochs": 2}, "warmup_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"conv_stem": True, "spt": True}, "`conv_stem` and `spt`"),
        ({"conv_stem": True, "patch_size": 7}, "power-of-two `patch_size`"),
        ({"conv_stem": True, "conv_stem_depth": 0}, "`conv_stem_depth` must be >= 1"),
        ({"mlp_local_kernel_size": 2}, "`mlp_local_kernel_size` must be an odd positive int"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(Config(), **overrides)


def test_presets_are_valid_configs():
    for name, overrides in PRESETS.items():
        cfg = Config(**overrides)
        assert cfg.image_size % cfg.patch_size == 0, name


def test_class_token_model_computes_only_the_class_token_in_the_last_block():
    """The classifier's last block updates only the class token (`num_queries=1`); its
    logits equal those from the full last block (the attention model's call of it)."""
    cfg = _cfg(pooling="cls", num_layers=2, lsa=True)
    model, attention_model = build_vit(cfg, num_classes=10, channels=1)
    last = model.get_layer(f"block{cfg.num_layers - 1}")
    classifier_call, full_call = last._inbound_nodes[:2]
    assert tuple(classifier_call.output_tensors[0].shape) == (None, 1, cfg.hidden_dim)
    full_tokens = keras.Model(model.inputs, full_call.output_tensors[0])
    x = np.random.default_rng(1).normal(size=(4, 28, 28, 1)).astype("float32")
    tokens = full_tokens(x)
    assert tokens.shape[1] == 1 + cfg.grid_size[0] * cfg.grid_size[1]
    expected = model.get_layer("head")(model.get_layer("norm")(tokens)[:, 0])
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(expected), atol=1e-5)


@pytest.mark.parametrize("local", [None, 3], ids=["plain_mlp", "local_mlp"])
def test_attention_model_of_a_reloaded_class_token_model_gives_full_maps(tmp_path, local):
    """After save/load only the class-token call of the last block is left in the graph;
    `attention_model_of` calls that block again in full, matching build_vit's maps."""
    cfg = _cfg(pooling="cls", num_layers=2, patch_size=4 if local else 7, mlp_local_kernel_size=local)
    model, attention_model = build_vit(cfg, num_classes=10, channels=1)
    path = str(tmp_path / "vit.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = np.random.default_rng(2).normal(size=(2, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(model(x)), atol=1e-6)
    expected = [np.asarray(s) for s in attention_model(x)]
    with warnings.catch_warnings():  # it takes an image batch as the classifier does: no
        warnings.simplefilter("error")  # "The structure of `inputs` doesn't match" warning
        got = [np.asarray(s) for s in attention_model_of(reloaded)(x)]
    tokens = 1 + cfg.grid_size[0] * cfg.grid_size[1]
    assert [s.shape for s in got] == [(2, cfg.num_heads, tokens, tokens)] * cfg.num_layers
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-6)
