"""One helper that checks a layer's contract; every tfattn layer test calls it.

Checks: config round trip (every config key is a constructor parameter), symbolic and
eager output shapes agree, `.keras` save/load gives equal outputs, a few `fit` steps lower
the loss, and the layer runs under the `mixed_float16` policy.
"""

import inspect
import os
import tempfile

import keras
import numpy as np

BASE_CONFIG_KEYS = {"name", "trainable", "dtype"}


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def _constructor_params(cls):
    params = set()
    for klass in cls.__mro__:
        if klass is keras.layers.Layer:
            break
        init = klass.__dict__.get("__init__")
        if init is not None:
            params |= {
                p.name
                for p in inspect.signature(init).parameters.values()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"
            }
    return params


def check_config(layer_cls, init_kwargs, package="tfattn"):
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    params = _constructor_params(layer_cls)
    extra = set(config) - params - BASE_CONFIG_KEYS
    assert not extra, f"{layer_cls.__name__} config keys that are not constructor args: {extra}"
    missing = set(init_kwargs) - set(config)
    assert not missing, f"{layer_cls.__name__} constructor args missing from config: {missing}"
    restored = layer_cls.from_config(config)
    assert restored.get_config() == config
    # Registered for serialisation under the library's (or an app's) package.
    name = keras.saving.get_registered_name(layer_cls)
    assert name == f"{package}>{layer_cls.__name__}", name
    return layer


def check_layer_contract(
    layer_cls,
    init_kwargs,
    inputs,
    call_kwargs=None,
    expected_output_shape=None,
    run_fit=True,
    mixed_precision=True,
    atol=1e-5,
    package="tfattn",
):
    """Runs every contract check.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor kwargs.
        inputs: a NumPy array or a list of arrays passed positionally to `call`.
        call_kwargs: extra keyword arguments for `call` (static Python values only).
        expected_output_shape: the first output's shape, if the caller knows it.
        run_fit: check that a few SGD steps through the layer lower an MSE loss.
        mixed_precision: check the layer runs under `mixed_float16`.
        package: the package the layer is registered under ("tfattn"; an app's layers
            use their own, e.g. "tfattn_forecast").
    """
    call_kwargs = call_kwargs or {}
    inputs = _as_list(inputs)
    check_config(layer_cls, init_kwargs, package)

    # Eager call vs symbolic (functional) call.
    layer = layer_cls(**init_kwargs)
    eager = layer(*inputs, **call_kwargs)
    eager_shapes = [tuple(np.shape(o)) for o in _as_list(eager)]
    if expected_output_shape is not None:
        assert eager_shapes[0] == tuple(expected_output_shape), (eager_shapes, expected_output_shape)

    sym_inputs = [
        keras.Input(shape=x.shape[1:], dtype=str(x.dtype), name=f"in{i}") for i, x in enumerate(inputs)
    ]
    layer2 = layer_cls(**init_kwargs)
    sym_out = layer2(*sym_inputs, **call_kwargs)
    sym_shapes = [tuple(o.shape) for o in _as_list(sym_out)]
    assert len(sym_shapes) == len(eager_shapes)
    for s, e in zip(sym_shapes, eager_shapes):
        assert s[1:] == e[1:] or all(a is None or a == b for a, b in zip(s[1:], e[1:])), (s, e)

    # .keras save/load round trip gives identical outputs.
    model = keras.Model(sym_inputs, sym_out)
    before = [np.asarray(o) for o in _as_list(model(inputs, training=False))]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    after = [np.asarray(o) for o in _as_list(loaded(inputs, training=False))]
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)

    if run_fit:
        _check_fit_lowers_loss(layer_cls, init_kwargs, inputs, call_kwargs)
    if mixed_precision:
        _check_mixed_precision(layer_cls, init_kwargs, inputs, call_kwargs)


def _check_fit_lowers_loss(layer_cls, init_kwargs, inputs, call_kwargs):
    keras.utils.set_random_seed(0)
    sym_inputs = [keras.Input(shape=x.shape[1:], dtype=str(x.dtype)) for x in inputs]
    layer = layer_cls(**init_kwargs)
    feeds = list(sym_inputs)
    # A layer without weights of its own still has to pass gradients: put a Dense in front.
    probe = layer_cls(**init_kwargs)
    probe(*inputs, **call_kwargs)
    if not probe.trainable_weights and np.issubdtype(inputs[0].dtype, np.floating):
        feeds[0] = keras.layers.Dense(inputs[0].shape[-1])(feeds[0])
    out = _first(layer(*feeds, **call_kwargs))
    model = keras.Model(sym_inputs, out)
    if not model.trainable_weights:
        return
    y = np.random.default_rng(1).normal(size=(inputs[0].shape[0],) + tuple(out.shape[1:]))
    y = y.astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = inputs if len(inputs) > 1 else inputs[0]
    loss0 = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=inputs[0].shape[0], verbose=0, shuffle=False)
    loss1 = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss1) and loss1 < loss0, (layer_cls.__name__, loss0, loss1)


def _check_mixed_precision(layer_cls, init_kwargs, inputs, call_kwargs):
    kwargs = dict(init_kwargs, dtype="mixed_float16")
    layer = layer_cls(**kwargs)
    out = _as_list(layer(*inputs, **call_kwargs))
    first = np.asarray(keras.ops.convert_to_numpy(out[0]))
    assert keras.backend.standardize_dtype(out[0].dtype) == "float16", out[0].dtype
    assert np.all(np.isfinite(first.astype("float32")))
