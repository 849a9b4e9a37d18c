"""LoRA and int8 quantization on every tfattn block that uses MultiHeadAttention.

LoRA is enabled on the attention's public sublayers (`query_dense.enable_lora(rank)`, or
keras-hub's `backbone.enable_lora(rank)`, which finds them by name); the fused q/k/v
projection must then step aside so the low-rank update is used, and saving merges it.
"""

import os

import keras
import numpy as np
import pytest
from keras import ops

from tfattn.layers import (
    AttentionPooling,
    ConformerBlock,
    MultiHeadAttention,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)

RNG = np.random.default_rng(3)
BATCH, LENGTH, DIM = 2, 6, 8


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _model(kind):
    """A small functional model around one block, its input arrays, and its attention layers."""
    keras.utils.set_random_seed(1)
    x = keras.Input((LENGTH, DIM))
    inputs = [x]
    arrays = [RNG.normal(size=(BATCH, LENGTH, DIM)).astype("float32")]
    if kind == "mha":
        block = MultiHeadAttention(2, 4)
        out = block(x, x)
        attentions = [block]
    elif kind == "mha_gate_cross":
        memory = keras.Input((LENGTH + 1, DIM))
        inputs.append(memory)
        arrays.append(RNG.normal(size=(BATCH, LENGTH + 1, DIM)).astype("float32"))
        block = MultiHeadAttention(2, 4, use_gate=True, output_shape=(2, 4))
        out = keras.layers.Reshape((LENGTH, DIM))(block(x, memory))
        attentions = [block]
    elif kind == "encoder":
        block = TransformerEncoderBlock(2, 16)
        out = block(x)
        attentions = [block.self_attention]
    elif kind == "decoder":
        memory = keras.Input((LENGTH + 1, DIM))
        inputs.append(memory)
        arrays.append(RNG.normal(size=(BATCH, LENGTH + 1, DIM)).astype("float32"))
        block = TransformerDecoderBlock(2, 16)
        out = block(x, memory)
        attentions = [block.self_attention, block.cross_attention]
    elif kind == "pooling":
        block = AttentionPooling(2, num_queries=2, intermediate_dim=16)
        out = block(x)
        attentions = [block.attention]
    elif kind == "conformer":
        block = ConformerBlock(DIM, 2, 16, conv_kernel_size=3)
        out = block(x)
        attentions = [block.self_attention]
    else:
        raise ValueError(kind)
    model = keras.Model(inputs, out)
    for layer in attentions:
        assert isinstance(layer, MultiHeadAttention)
    return model, arrays, attentions


KINDS = ["mha", "mha_gate_cross", "encoder", "decoder", "pooling", "conformer"]


@pytest.mark.parametrize("kind", KINDS)
def test_int8_quantization(kind):
    model, arrays, attentions = _model(kind)
    before = _np(model(arrays))
    model.quantize("int8")
    for layer in attentions:
        for dense in (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense):
            assert dense.quantization_mode == "int8", dense.name
    after = _np(model(arrays))
    assert np.all(np.isfinite(after))
    # int8 weights (per-channel) and int8 activations: a few percent of the output scale.
    scale = np.abs(before).max()
    np.testing.assert_allclose(after, before, atol=0.05 * scale)
    assert not np.array_equal(after, before), "the quantized kernels must be the ones used"
    # (A quantized model does not reload from .keras, as with keras.layers.MultiHeadAttention
    # in Keras 3.15: the attention's config rebuilds float sublayers.)


def _enable_lora(attentions, rank=2):
    for layer in attentions:
        layer.query_dense.enable_lora(rank)
        layer.value_dense.enable_lora(rank)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_trains_saves_and_merges_into_a_plain_model(kind, tmp_path):
    model, arrays, attentions = _model(kind)
    before = _np(model(arrays))
    _enable_lora(attentions)
    # LoRA's B factor starts at zero: the model is unchanged.
    np.testing.assert_allclose(_np(model(arrays)), before, atol=1e-6)
    frozen = [_np(layer.query_dense.kernel).copy() for layer in attentions]
    target = RNG.normal(size=before.shape).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = arrays if len(arrays) > 1 else arrays[0]
    model.fit(x, target, epochs=2, batch_size=BATCH, verbose=0)
    for layer, kernel in zip(attentions, frozen):
        assert layer.query_dense.lora_enabled and layer.value_dense.lora_enabled
        # The base kernel is frozen; the LoRA factors trained.
        np.testing.assert_array_equal(_np(layer.query_dense._kernel), kernel)
        assert np.abs(_np(layer.query_dense.lora_kernel_b)).max() > 0
        assert np.abs(_np(layer.value_dense.lora_kernel_b)).max() > 0
    trained = _np(model(arrays))
    assert np.abs(trained - before).max() > 1e-4, "the LoRA update must reach the output"

    path = os.path.join(tmp_path, "lora.keras")
    model.save(path)
    np.testing.assert_allclose(_np(keras.saving.load_model(path)(arrays)), trained, atol=1e-5)
    # .weights.h5 holds the merged kernels: they load into the same model without LoRA.
    weights_path = os.path.join(tmp_path, "lora.weights.h5")
    model.save_weights(weights_path)
    plain, _, plain_attentions = _model(kind)
    plain.load_weights(weights_path)
    assert not any(layer.query_dense.lora_enabled for layer in plain_attentions)
    np.testing.assert_allclose(_np(plain(arrays)), trained, atol=1e-5)


def test_keras_hub_enable_lora_finds_the_attention_projections(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(2)

    def backbone():
        tokens = keras.Input((LENGTH, DIM))
        h = TransformerEncoderBlock(2, 16, name="encoder")(tokens)
        h = AttentionPooling(2, num_queries=1, name="pool")(h)
        return keras_hub.models.Backbone(inputs=tokens, outputs=h)

    model = backbone()
    x = RNG.normal(size=(BATCH, LENGTH, DIM)).astype("float32")
    before = _np(model(x))
    model.enable_lora(2)
    attentions = [model.get_layer("encoder").self_attention, model.get_layer("pool").attention]
    for layer in attentions:
        assert layer.query_dense.lora_enabled and layer.value_dense.lora_enabled
        assert not layer.key_dense.lora_enabled and not layer.output_dense.lora_enabled
    assert len(model._lora_enabled_layers) == 4
    # Everything else is frozen; LoRA-enabled layers train their factors (and biases).
    trainable = {w.path for w in model.trainable_weights}
    assert all(p.split("/")[-2] in ("query", "value") for p in trainable), trainable
    assert sum("lora_kernel" in p for p in trainable) == 8, trainable

    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(x, RNG.normal(size=before.shape).astype("float32"), epochs=2, verbose=0)
    trained = _np(model(x))
    assert np.abs(trained - before).max() > 1e-4
    # keras-hub's LoRA-only checkpoint restores the update on a fresh copy of the backbone.
    lora_path = os.path.join(tmp_path, "adapter.lora.h5")
    model.save_lora_weights(lora_path)
    fresh = backbone()
    trained_weights = {w.path: w for w in model.weights}
    for w in fresh.weights:  # the base weights (biases of LoRA layers trained too)
        w.assign(trained_weights[w.path])
    fresh.load_lora_weights(lora_path)
    np.testing.assert_allclose(_np(fresh(x)), trained, atol=1e-5)
