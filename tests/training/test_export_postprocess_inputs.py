"""`export_for_serving`'s postprocess can read the raw serving inputs: `fn(outputs, inputs)`."""

import keras
import numpy as np
import tensorflow as tf

from tfattn import training
from tfattn.training.export import _takes_inputs


def test_two_argument_postprocess_gets_the_raw_inputs(tmp_path):
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inputs))
    x = np.arange(12, dtype=np.float32).reshape(4, 3)

    def preprocess(raw):
        return raw["x"] * 2.0

    def postprocess(outputs, raw):  # e.g. returns compounded from the window's last price
        return {"y": outputs + raw["x"][:, -1:], "last": raw["x"][:, -1]}

    report = training.export_for_serving(
        model, str(tmp_path), "m", 1, input_signature={"x": tf.TensorSpec([None, 3], tf.float32)},
        preprocess=preprocess, postprocess=postprocess, verify_inputs={"x": x}, save_keras=False,
    )
    assert report["verify"]["outputs"] == ["last", "y"]
    served = tf.saved_model.load(report["path"]).signatures["serving_default"](x=tf.constant(x))
    want = model.predict(x * 2.0, verbose=0) + x[:, -1:]
    np.testing.assert_allclose(served["y"].numpy(), want, rtol=1e-6)
    np.testing.assert_array_equal(served["last"].numpy(), x[:, -1])


def test_only_required_positional_parameters_count():
    assert _takes_inputs(lambda outputs, inputs: outputs)
    assert not _takes_inputs(lambda outputs: outputs)
    assert not _takes_inputs(lambda outputs, top_k=5: outputs)  # a default: outputs only
    assert not _takes_inputs(lambda *outputs: outputs)
