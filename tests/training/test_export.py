import base64
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from tfattn.layers import (
    AttentionPooling,
    PatchEmbedding,
    PositionEmbedding,
    TransformerEncoderBlock,
)
from tfattn.training.export import (
    call_like_rest,
    export_for_serving,
    export_tflite,
    rest_request_body,
    verify_export,
)

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _digits_model(input_name="image", hidden_dim=32):
    inputs = keras.Input((8, 8, 1), name=input_name)
    x = PatchEmbedding(hidden_dim=hidden_dim, patch_size=2)(inputs)  # (batch, 16, hidden)
    x = x + PositionEmbedding(sequence_length=16)(x)
    x = TransformerEncoderBlock(num_heads=2, intermediate_dim=2 * hidden_dim, seed=0)(x)
    x = AttentionPooling(num_heads=2)(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)


# One worker runs the module, so its module-scoped fixture is built once under xdist.
pytestmark = pytest.mark.xdist_group("training_test_export")


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]  # (1797, 8, 8, 1) in [0, 1]
    return images[:1500], data.target[:1500], images[1500:], data.target[1500:]


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    x, y, x_test, y_test = digits
    model = _digits_model()
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    print("digits test accuracy:", accuracy)
    assert accuracy > 0.7, accuracy  # a real, if tiny, classifier
    return model


def _png_batch(images):
    pixels = np.round(images * 255).astype("uint8")
    return np.array([tf.io.encode_png(p).numpy() for p in pixels], dtype=object)


def _decode_pngs(inputs):
    """Raw PNG bytes (batch,) -> float images (batch, 8, 8, 1) in [0, 1], in the graph."""
    decode = lambda png: tf.io.decode_png(png, channels=1)  # noqa: E731
    images = tf.map_fn(decode, inputs["image_png"], fn_output_signature=tf.uint8)
    return tf.cast(tf.reshape(images, (-1, 8, 8, 1)), tf.float32) / 255.0


def _top_k(probabilities):
    top = tf.math.top_k(probabilities, k=3)
    return {
        "probabilities": probabilities,
        "top_ids": top.indices,
        "top_names": tf.gather(tf.constant(CLASS_NAMES), top.indices),
    }


@pytest.mark.slow
def test_export_layout_names_and_verification(trained, digits, tmp_path):
    x_test = digits[2]
    result = export_for_serving(
        trained, tmp_path / "exports", "digits", 3, verify_inputs=x_test[:5]
    )
    version_dir = tmp_path / "exports" / "digits" / "3"
    assert result["path"] == str(version_dir)
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    # Only the version and the notebook .keras file: no staging directory left behind.
    assert sorted(os.listdir(tmp_path / "exports" / "digits")) == ["3", "digits_v3.keras"]
    assert result["inputs"] == ["image"] and result["outputs"] == ["probabilities"]

    report = result["verify"]
    assert report["cli"] is True and report["batch_sizes"] == [5, 1, 6]
    assert report["max_abs_diff"]["probabilities"] < 1e-5

    serve = tf.saved_model.load(result["path"]).signatures["serving_default"]
    got = serve(image=tf.constant(x_test[:7]))["probabilities"].numpy()
    np.testing.assert_allclose(got, trained.predict(x_test[:7], verbose=0), atol=1e-5)

    reloaded = keras.saving.load_model(result["keras_path"])
    np.testing.assert_allclose(
        reloaded.predict(x_test[:4], verbose=0), trained.predict(x_test[:4], verbose=0), atol=1e-6
    )


def test_unnamed_input_and_multiple_inputs_outputs_get_meaningful_names(tmp_path):
    unnamed = keras.Input((3,))  # Keras calls this "keras_tensor_<n>"
    single = keras.Model(unnamed, keras.layers.Dense(2)(unnamed))
    result = export_for_serving(single, tmp_path, "single", 1, save_keras=False)
    assert result["inputs"] == ["inputs"] and result["keras_path"] is None

    a, b = keras.Input((4,)), keras.Input((2,))
    hidden = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], [keras.layers.Dense(3)(hidden), keras.layers.Dense(1)(hidden)])
    rng = np.random.default_rng(0)
    samples = {"features": rng.normal(size=(4, 4)), "extra": rng.normal(size=(4, 2))}
    samples = {k: v.astype("float32") for k, v in samples.items()}
    result = export_for_serving(
        model,
        tmp_path,
        "two",
        1,
        input_names=["features", "extra"],
        output_names=["logits", "score"],
        verify_inputs=samples,
        save_keras=False,
    )
    assert result["inputs"] == ["extra", "features"]
    assert result["outputs"] == ["logits", "score"]
    logits, score = model.predict([samples["features"], samples["extra"]], verbose=0)
    serve = tf.saved_model.load(result["path"]).signatures["serving_default"]
    out = serve(features=tf.constant(samples["features"]), extra=tf.constant(samples["extra"]))
    np.testing.assert_allclose(out["logits"].numpy(), logits, atol=1e-6)
    np.testing.assert_allclose(out["score"].numpy(), score, atol=1e-6)


def test_existing_version_is_refused_unless_overwrite(tmp_path):
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    export_for_serving(model, tmp_path, "m", 1, save_keras=False)
    with pytest.raises(FileExistsError, match=r"already exists: '.*m/1'.*overwrite=True"):
        export_for_serving(model, tmp_path, "m", 1, save_keras=False)

    model.layers[-1].kernel.assign(np.ones((3, 2), "float32"))
    export_for_serving(model, tmp_path, "m", 1, overwrite=True, save_keras=False)
    serve = tf.saved_model.load(str(tmp_path / "m" / "1")).signatures["serving_default"]
    out = serve(x=tf.constant([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(next(iter(out.values())).numpy(), [[6.0, 6.0]])
    export_for_serving(model, tmp_path, "m", 2, save_keras=False)
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]


def test_bad_arguments_are_named(tmp_path):
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    for version in (-1, "1", True, 1.0):
        with pytest.raises(ValueError, match="`version` must be a non-negative int"):
            export_for_serving(model, tmp_path, "m", version)
    with pytest.raises(ValueError, match="`name` must be a non-empty directory name"):
        export_for_serving(model, tmp_path, "a/b", 1)
    with pytest.raises(ValueError, match="`input_signature` is required with `preprocess`"):
        export_for_serving(model, tmp_path, "m", 1, preprocess=lambda d: d["x"])
    with pytest.raises(ValueError, match="specs need names"):
        export_for_serving(model, tmp_path, "m", 1, input_signature=[tf.TensorSpec([None, 3])])
    with pytest.raises(ValueError, match="`input_names` has 2 names but the model has 1"):
        export_for_serving(model, tmp_path, "m", 1, input_names=["a", "b"])
    with pytest.raises(ValueError, match="input name 'bad name' is not a valid"):
        export_for_serving(model, tmp_path, "m", 1, input_names=["bad name"])
    with pytest.raises(ValueError, match=r"`sample_inputs` keys must match.*unknown \['y'\]"):
        export_for_serving(model, tmp_path, "m", 1, verify_inputs={"y": np.zeros((2, 3))})
    # A failed export leaves no version behind (and no staging directory).
    assert os.listdir(tmp_path / "m") == []


def test_verify_export_detects_a_different_model(tmp_path):
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="y")(inputs))
    result = export_for_serving(model, tmp_path, "m", 1, save_keras=False)
    samples = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    report = verify_export(result["path"], model, samples, run_cli=False)
    assert report["max_abs_diff"]["y"] < 1e-6

    model.layers[-1].kernel.assign(model.layers[-1].kernel + 0.01)
    with pytest.raises(AssertionError, match="Exported output 'y' differs from the model"):
        verify_export(result["path"], model, samples, run_cli=False)


@pytest.mark.slow
def test_raw_png_input_with_postprocess_through_rest(trained, digits, tmp_path):
    x_test, y_test = digits[2][:6], digits[3][:6]
    pngs = _png_batch(x_test)
    result = export_for_serving(
        trained,
        tmp_path,
        "digits_raw",
        1,
        input_signature={"image_png": tf.TensorSpec([None], tf.string)},
        preprocess=_decode_pngs,
        postprocess=_top_k,
        verify_inputs={"image_png": pngs},
    )
    assert result["inputs"] == ["image_png"]
    assert result["outputs"] == ["probabilities", "top_ids", "top_names"]
    assert result["verify"]["max_abs_diff"]["probabilities"] < 1e-5

    body = rest_request_body({"image_png": pngs})
    parsed = json.loads(body)
    assert len(parsed["instances"]) == 6
    first = parsed["instances"][0]["image_png"]
    assert base64.b64decode(first["b64"]) == pngs[0]

    response = call_like_rest(tf.saved_model.load(result["path"]), body)
    predictions = response["predictions"]
    assert len(predictions) == 6 and set(predictions[0]) == {
        "probabilities",
        "top_ids",
        "top_names",
    }
    # PNG stores uint8 pixels: compare with the model on the same quantised images.
    expected = trained.predict(np.round(x_test * 255) / 255, verbose=0)
    got = np.array([p["probabilities"] for p in predictions])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    top_ids = np.array([p["top_ids"] for p in predictions])
    np.testing.assert_array_equal(top_ids[:, 0], expected.argmax(-1))
    assert [p["top_names"][0] for p in predictions] == [CLASS_NAMES[i] for i in top_ids[:, 0]]
    assert np.mean(top_ids[:, 0] == y_test) >= 0.5


def test_rest_float_input_row_formats(tmp_path):
    inputs = keras.Input((4,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3, name="scores")(inputs))
    result = export_for_serving(model, tmp_path, "m", 1, save_keras=False)
    loaded = tf.saved_model.load(result["path"])
    x = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    expected = model.predict(x, verbose=0)

    for body in (rest_request_body({"features": x}), rest_request_body(x)):
        # One output -> TF Serving returns one bare value per instance.
        response = call_like_rest(loaded, json.loads(body))
        np.testing.assert_allclose(np.array(response["predictions"]), expected, atol=1e-5)
    assert json.loads(rest_request_body(x))["instances"][0] == x[0].tolist()

    named = rest_request_body({"features": x}, signature_name="serving_default")
    assert len(call_like_rest(result["path"], named)["predictions"]) == 3

    with pytest.raises(ValueError, match='"instances"'):
        call_like_rest(loaded, {"inputs": x.tolist()})
    with pytest.raises(ValueError, match=r"instances\[0\] has keys \['feature'\]"):
        call_like_rest(loaded, {"instances": [{"feature": x[0].tolist()}]})
    with pytest.raises(ValueError, match="signature_name 'other' not found"):
        call_like_rest(loaded, {"instances": [x[0].tolist()], "signature_name": "other"})
    with pytest.raises(ValueError, match="input 'features': cannot make a float32 batch"):
        call_like_rest(loaded, {"instances": [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0]]})
    with pytest.raises(ValueError, match="same batch size"):
        rest_request_body({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})


@pytest.mark.slow
def test_export_tflite_dynamic_range_report(trained, digits, tmp_path):
    x_test, y_test = digits[2], digits[3]
    report = export_tflite(
        trained, tmp_path / "tflite" / "digits.tflite", eval_inputs=x_test, eval_labels=y_test
    )
    print("tflite report:", report)
    assert os.path.getsize(report["path"]) == report["quantized_bytes"]
    # int8 weights; measured 53,680 vs 86,104 bytes (0.62): TFLite keeps tensors under 1024
    # elements (biases, norms, the 16x32 position table) in float, so not the ideal 0.25.
    assert report["quantized_bytes"] < 0.75 * report["float_bytes"]
    assert report["keras_vs_float_max_abs_diff"] < 1e-4  # float TFLite == Keras
    assert 0 < report["max_abs_output_change"] < 0.1
    assert abs(report["accuracy_change"]) <= 0.03
    assert report["accuracy_float"] > 0.7

    exported = export_for_serving(trained, tmp_path, "digits", 1, save_keras=False)
    from_dir = export_tflite(exported["path"], tmp_path / "f.tflite", quantize=None)
    assert from_dir["float_bytes"] == os.path.getsize(tmp_path / "f.tflite")
    assert "quantized_bytes" not in from_dir

    with pytest.raises(ValueError, match="`quantize` must be 'dynamic_range' or None"):
        export_tflite(trained, tmp_path / "x.tflite", quantize="int4")
    with pytest.raises(ValueError, match="is not a SavedModel directory"):
        export_tflite(str(tmp_path), tmp_path / "x.tflite")


def test_print_next_steps_names_tensorboard_serving_and_extra_commands(capsys):
    from tfattn.training import print_next_steps

    print_next_steps("runs/x", os.path.join("runs", "x", "export", "m", "3"), "m",
                     [("Predict", "python -m apps.x.predict --export runs/x/export/m/3")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["TensorBoard", "TF Serving", "Predict"]
    assert "--logdir runs/x/tensorboard" in lines[0]
    model_dir = os.path.abspath(os.path.join("runs", "x", "export", "m"))
    assert f'-v "{model_dir}:/models/m" -e MODEL_NAME=m' in lines[1]


def test_next_version_counts_numeric_folders_only(tmp_path):
    from tfattn.training import next_version

    assert next_version(str(tmp_path), "m") == 1
    for name in ("1", "7", "notes", "3"):
        os.makedirs(tmp_path / "m" / name)
    assert next_version(str(tmp_path), "m") == 8
