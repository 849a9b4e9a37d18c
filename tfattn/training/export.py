"""Export for TF Serving: SavedModel layout, named signatures, verification, REST, TFLite.

`export_for_serving` writes `<export_dir>/<name>/<version>/`, the layout the official
`tensorflow/serving` image watches, with one `serving_default` signature built from a
`keras.export.ExportArchive` endpoint. The signature's inputs are named after the
`tf.TensorSpec` names you give (not `keras_tensor_*`) and its outputs are the keys of a dict,
so raw-input preprocessing and postprocessing can live in the graph:

    def preprocess(inputs):  # {"image_png": (batch,) tf.string} -> model inputs
        decode = lambda png: tf.io.decode_png(png, channels=1)
        images = tf.map_fn(decode, inputs["image_png"], fn_output_signature=tf.uint8)
        return tf.cast(tf.reshape(images, (-1, 8, 8, 1)), tf.float32) / 255.0

    def postprocess(probabilities):  # -> named outputs
        return {"probabilities": probabilities, "class_id": tf.argmax(probabilities, -1)}

    export_for_serving(
        model, "exports", "digits", 1,
        input_signature={"image_png": tf.TensorSpec([None], tf.string)},
        preprocess=preprocess, postprocess=postprocess, verify_inputs={"image_png": pngs},
    )

Serve it with the official image and query the REST API (row format, binary strings as
`{"b64": ...}`; `rest_request_body` builds this body and `call_like_rest` runs it through the
reloaded signature the same way, without a server):

    docker run -p 8501:8501 -v "$PWD/exports/digits:/models/digits" \
        -e MODEL_NAME=digits tensorflow/serving
    curl -d '{"instances": [{"image_png": {"b64": "iVBORw0..."}}]}' \
        http://localhost:8501/v1/models/digits:predict

The `.keras` model for notebooks is saved next to the versions as
`<export_dir>/<name>/<name>_v<version>.keras`; TF Serving only loads numeric sub-directories,
so it ignores that file.
"""

import base64
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

SIGNATURE = "serving_default"
# Valid TensorFlow op/signature names; also rules out the empty string.
_NAME_RE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")
_AUTO_NAME_RE = re.compile(r"^(keras_tensor|input_layer|input)(_\d+)?$")


def _check_name(kind, name):
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"{kind} name {name!r} is not a valid signature name (letters, digits, '_', "
            "'.', '-', '/'; not empty)."
        )
    return name


def _as_list(value):
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _default_input_signature(model, input_names):
    """TensorSpecs from `model.inputs`, named by `input_names` or the Keras input names."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            "`input_signature` is required: the model has no symbolic `inputs` (build it "
            "with keras.Input or pass input_signature={name: tf.TensorSpec(...)})."
        )
    if input_names is None:
        names = [getattr(t, "name", "") or "" for t in inputs]
        if any(_AUTO_NAME_RE.match(n) for n in names):
            # Unnamed keras.Input -> "keras_tensor_12"; replace with stable names.
            names = ["inputs"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    else:
        names = _as_list(input_names)
        if len(names) != len(inputs):
            raise ValueError(
                f"`input_names` has {len(names)} names but the model has {len(inputs)} "
                f"inputs; got {names!r}."
            )
    specs = {
        name: tf.TensorSpec(tuple(t.shape), tf.as_dtype(t.dtype)) for name, t in zip(names, inputs)
    }
    if len(specs) != len(names):
        raise ValueError(f"Input names must be unique; got {names!r}.")
    return _normalise_input_signature(specs, None)


def _normalise_input_signature(input_signature, input_names):
    """dict | TensorSpec | list of TensorSpec -> {name: TensorSpec(name=name)}."""
    if isinstance(input_signature, dict):
        items = list(input_signature.items())
    else:
        specs = _as_list(input_signature)
        if input_names is not None:
            names = _as_list(input_names)
            if len(names) != len(specs):
                raise ValueError(
                    f"`input_names` has {len(names)} names but `input_signature` has "
                    f"{len(specs)} specs."
                )
        else:
            names = [getattr(s, "name", None) for s in specs]
            if any(not n for n in names):
                raise ValueError(
                    "`input_signature` specs need names: pass a dict {name: tf.TensorSpec}, "
                    "TensorSpecs with `name=`, or `input_names`."
                )
        items = list(zip(names, specs))
    signature = {}
    for name, spec in items:
        if not isinstance(spec, tf.TensorSpec):
            raise ValueError(
                f"`input_signature[{name!r}]` must be a tf.TensorSpec; got {type(spec).__name__}."
            )
        _check_name("input", name)
        if name in signature:
            raise ValueError(f"Duplicate input name {name!r} in `input_signature`.")
        signature[name] = tf.TensorSpec(spec.shape, spec.dtype, name=name)
    if not signature:
        raise ValueError("`input_signature` is empty.")
    return signature


def _model_inputs(inputs, num_model_inputs, model_order=None):
    """Serving inputs dict -> what `model(...)` takes when there is no preprocess.

    `model_order` lists the serving names in the order of `model.inputs`. It matters: a
    reloaded signature lists its inputs sorted by name, not in the model's order.
    """
    values = [inputs[name] for name in model_order] if model_order else list(inputs.values())
    if num_model_inputs == 1 and len(values) == 1:
        return values[0]
    return values


def _name_outputs(outputs, output_names):
    """Model/postprocess outputs -> {name: tensor}."""
    if isinstance(outputs, dict):
        named = dict(outputs)
    else:
        values = _as_list(outputs)
        names = _as_list(output_names)
        if len(names) != len(values):
            raise ValueError(
                f"`output_names` has {len(names)} names but there are {len(values)} outputs; "
                f"got {names!r}."
            )
        named = dict(zip(names, values))
    for name in named:
        _check_name("output", name)
    return named


def _default_output_names(model):
    names = list(getattr(model, "output_names", None) or [])
    num_outputs = len(getattr(model, "outputs", None) or [None])
    if len(names) != num_outputs or any(_AUTO_NAME_RE.match(n) for n in names):
        names = ["outputs"] if num_outputs == 1 else [f"output_{i}" for i in range(num_outputs)]
    return names


def _takes_inputs(postprocess):
    """Whether `postprocess` takes the serving inputs too: `fn(outputs, inputs)`."""
    try:
        parameters = inspect.signature(postprocess).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: outputs only
        return False
    required = [
        p for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(required) >= 2


def _apply_postprocess(postprocess, outputs, inputs):
    """`postprocess(outputs)`, or `postprocess(outputs, inputs)` when it takes the inputs."""
    if _takes_inputs(postprocess):
        return postprocess(outputs, inputs)
    return postprocess(outputs)


def _serving_fn(model, signature, preprocess, postprocess, output_names):
    """The Python function behind `serving_default`; also used eagerly as the reference."""
    num_model_inputs = len(getattr(model, "inputs", None) or [None])
    names = list(signature)

    def serve(*args):
        inputs = dict(zip(names, args))
        model_inputs = (
            preprocess(inputs) if preprocess else _model_inputs(inputs, num_model_inputs, names)
        )
        outputs = model(model_inputs, training=False)
        if postprocess:
            outputs = _apply_postprocess(postprocess, outputs, inputs)
        return _name_outputs(outputs, output_names)

    return serve


def _check_version(version):
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(
            f"`version` must be a non-negative int (TF Serving version directory); got {version!r}."
        )
    return int(version)


def next_version(export_dir, name):
    """The next free version number under `<export_dir>/<name>/` (1 for a new model).

    TF Serving serves the highest numeric version folder, so each export of a run gets a
    new one by default and an older version stays available for rollback.
    """
    model_dir = os.path.join(export_dir, name)
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(v) for v in os.listdir(model_dir) if v.isdigit()]
    return max(versions, default=0) + 1


def export_for_serving(
    model,
    export_dir,
    name,
    version,
    input_signature=None,
    preprocess=None,
    postprocess=None,
    input_names=None,
    output_names=None,
    overwrite=False,
    verify_inputs=None,
    save_keras=True,
    extra_signatures=None,
    compare=None,
):
    """Writes `<export_dir>/<name>/<version>/` as a SavedModel for TF Serving.

    The version is written to a temporary sibling directory, verified (when `verify_inputs`
    are given) and only then renamed into place, so TF Serving never picks up a half-written
    or unverified version.

    Args:
        model: a built Keras model.
        export_dir: base directory of the model server (holds one folder per model name).
        name: model name (the `MODEL_NAME` TF Serving serves).
        version: non-negative int, the version directory.
        input_signature: `{name: tf.TensorSpec}` (or named TensorSpecs) of the raw serving
            inputs. Default: the model's `inputs`, named by `input_names` or by the names
            given to `keras.Input` (`inputs` / `input_<i>` if those were auto-generated).
            Required with `preprocess`.
        preprocess: `fn({name: tensor}) -> model inputs`, traced into the graph (e.g. decode
            PNG bytes, resize, normalise). Default: pass the inputs through.
        postprocess: `fn(model outputs) -> {name: tensor}` (or a tensor/list named by
            `output_names`), traced into the graph (e.g. top-k ids and class names). A
            function of two arguments is called as `fn(model outputs, {name: raw input})`,
            for outputs that need the raw inputs (e.g. forecast returns compounded from a
            window's last price).
        input_names: names of the model's inputs when `input_signature` is not given.
        output_names: names of the outputs when they are not a dict. Default:
            `model.output_names` (`outputs` / `output_<i>` if auto-generated).
        overwrite: replace an existing version directory; otherwise `FileExistsError`.
        verify_inputs: `{input name: array}` (or an array for one input) of raw serving
            inputs; when given, `verify_export` checks the written SavedModel against the
            model on them and its report is returned under `"verify"`.
        save_keras: also save `<export_dir>/<name>/<name>_v<version>.keras`.
        extra_signatures: `{signature name: {"input_signature": ..., "preprocess": ...,
            "postprocess": ..., "output_names": ...}}`, more signatures next to
            `serving_default` over the same model (e.g. encoded audio bytes in, next to a
            waveform); each entry's keys mean what the arguments above do. Callers check
            them themselves (`verify_inputs` covers `serving_default`).
        compare: how `verify_export` compares the outputs (see there); default elementwise.

    Returns:
        dict with `path` (version directory), `keras_path` (or None), `inputs` and `outputs`
        (signature names), and `verify` (the `verify_export` report or None).
    """
    version = _check_version(version)
    if not isinstance(name, str) or not name or os.sep in name or name in (".", ".."):
        raise ValueError(f"`name` must be a non-empty directory name; got {name!r}.")
    if preprocess is not None and input_signature is None:
        raise ValueError(
            "`input_signature` is required with `preprocess`: the raw serving inputs differ "
            "from the model inputs (e.g. {'image_png': tf.TensorSpec([None], tf.string)})."
        )
    model_dir = os.path.join(os.fspath(export_dir), name)
    path = os.path.join(model_dir, str(version))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"Export version already exists: {path!r}. Use a new version or overwrite=True "
            "(--overwrite)."
        )

    if input_signature is None:
        signature = _default_input_signature(model, input_names)
    else:
        signature = _normalise_input_signature(input_signature, input_names)
    if output_names is None:
        output_names = _default_output_names(model)
    serve = _serving_fn(model, signature, preprocess, postprocess, output_names)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serve, input_signature=list(signature.values()))
    for extra_name, extra in (extra_signatures or {}).items():
        _check_name("signature", extra_name)
        unknown = set(extra) - {"input_signature", "preprocess", "postprocess", "output_names"}
        if extra_name == SIGNATURE or unknown or "input_signature" not in extra:
            raise ValueError(
                f"`extra_signatures[{extra_name!r}]` must be a dict with `input_signature` and "
                "optional `preprocess`, `postprocess`, `output_names`, under a name other "
                f"than {SIGNATURE!r}; got keys {sorted(extra)}."
            )
        extra_spec = _normalise_input_signature(extra["input_signature"], None)
        extra_serve = _serving_fn(model, extra_spec, extra.get("preprocess"),
                                  extra.get("postprocess"),
                                  extra.get("output_names") or output_names)
        archive.add_endpoint(extra_name, extra_serve, input_signature=list(extra_spec.values()))

    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as err:
        raise ValueError(f"Cannot create export directory {model_dir!r}: {err}") from err
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    try:
        archive.write_out(staging, verbose=False)
        report = None
        if verify_inputs is not None:
            report = verify_export(
                staging,
                model,
                verify_inputs,
                preprocess=preprocess,
                postprocess=postprocess,
                output_names=output_names,
                input_names=list(signature),
                compare=compare,
            )
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    if report is not None:
        report["path"] = path

    keras_path = None
    if save_keras:
        keras_path = os.path.join(model_dir, f"{name}_v{version}.keras")
        model.save(keras_path)
    loaded = tf.saved_model.load(path).signatures[SIGNATURE]
    return {
        "path": path,
        "keras_path": keras_path,
        "inputs": sorted(loaded.structured_input_signature[1]),
        "outputs": sorted(loaded.structured_outputs),
        "verify": report,
    }


def _inputs_dict(sample_inputs, input_keys):
    if isinstance(sample_inputs, dict):
        unknown = sorted(set(sample_inputs) - set(input_keys))
        missing = sorted(set(input_keys) - set(sample_inputs))
        if unknown or missing:
            raise ValueError(
                f"`sample_inputs` keys must match the signature inputs {sorted(input_keys)}; "
                f"unknown {unknown}, missing {missing}."
            )
        return {k: np.asarray(sample_inputs[k]) for k in input_keys}
    values = _as_list(sample_inputs)
    if len(values) != len(input_keys):
        raise ValueError(
            f"`sample_inputs` has {len(values)} arrays but the signature has inputs "
            f"{sorted(input_keys)}; pass a dict by name."
        )
    return {k: np.asarray(v) for k, v in zip(input_keys, values)}


def _to_numpy(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _max_abs_diff(name, got, want, atol, rtol):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise AssertionError(
            f"Exported output {name!r} has shape {got.shape}, model gives {want.shape}."
        )
    if got.dtype.kind in "SUO" or want.dtype.kind in "SUO":
        if not np.array_equal(got, want):
            raise AssertionError(f"Exported output {name!r} differs from the model.")
        return 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
    if not np.allclose(got, want, atol=atol, rtol=rtol):
        raise AssertionError(
            f"Exported output {name!r} differs from the model: max |diff| {diff:.3g} > "
            f"atol {atol} + rtol {rtol}."
        )
    return diff


def saved_model_cli_path():
    """`saved_model_cli` next to the running Python (the venv), else on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if os.path.exists(candidate):
        return candidate
    found = shutil.which("saved_model_cli")
    if found is None:
        raise FileNotFoundError(
            f"`saved_model_cli` not found next to {sys.executable} or on PATH; it ships "
            "with the tensorflow package."
        )
    return found


def verify_export(
    path,
    model,
    sample_inputs,
    preprocess=None,
    postprocess=None,
    output_names=None,
    atol=1e-5,
    rtol=1e-4,
    run_cli=True,
    timeout=120,
    input_names=None,
    compare=None,
):
    """Reloads a SavedModel and checks its `serving_default` against the Keras model.

    Checks (raising `AssertionError` naming the output on a mismatch):
    1. `tf.saved_model.load(path)` outputs on `sample_inputs` equal the reference within
       `atol + rtol * |ref|`. The reference is `model.predict` on the eagerly preprocessed
       inputs, postprocessed eagerly with the same `preprocess`/`postprocess` functions.
    2. A different batch size works: batch 1 and batch n + 1 (the samples plus a repeat of
       the first) give the matching rows of the reference.
    3. `saved_model_cli show --all --dir path` lists `serving_default` with every input
       and output name (skipped with `run_cli=False`).

    `input_names`: the serving input names in the order of `model.inputs`; needed for a
    multi-input model without `preprocess` (the reloaded signature sorts its inputs).

    `compare`: `fn(got, want, atol, rtol) -> {output name: max abs diff}` over the output
    dicts of one batch, raising `AssertionError` naming the output on a mismatch; for
    outputs that legitimately differ beyond elementwise tolerance (e.g. the order of
    detections whose scores tie to the last bits after NMS). Default: every output
    elementwise within `atol + rtol * |ref|`.

    Returns:
        dict: `inputs`, `outputs`, `batch_sizes` checked, `max_abs_diff` per output, `cli`
        (True when the CLI check ran).
    """
    path = os.fspath(path)
    loaded = tf.saved_model.load(path)
    if SIGNATURE not in loaded.signatures:
        raise AssertionError(f"{path!r} has no {SIGNATURE!r} signature.")
    fn = loaded.signatures[SIGNATURE]
    input_specs = fn.structured_input_signature[1]
    input_keys = list(input_specs)
    inputs = _inputs_dict(sample_inputs, input_keys)
    batch = len(next(iter(inputs.values())))

    # Reference: model.predict on the (eagerly run) preprocessing, then postprocessing.
    if output_names is None:
        output_names = _default_output_names(model)
    tensors = {k: tf.convert_to_tensor(v, input_specs[k].dtype) for k, v in inputs.items()}
    num_model_inputs = len(getattr(model, "inputs", None) or [None])
    if not preprocess and num_model_inputs > 1 and input_names is None:
        raise ValueError(
            "`input_names` (serving names in the order of `model.inputs`) is required to "
            f"verify a model with {num_model_inputs} inputs and no `preprocess`."
        )
    model_inputs = (
        preprocess(tensors) if preprocess else _model_inputs(tensors, num_model_inputs, input_names)
    )
    if isinstance(model_inputs, (list, tuple)):
        model_inputs = [_to_numpy(x) for x in model_inputs]
    elif isinstance(model_inputs, dict):
        model_inputs = {k: _to_numpy(x) for k, x in model_inputs.items()}
    else:
        model_inputs = _to_numpy(model_inputs)
    predicted = model.predict(model_inputs, verbose=0)
    if postprocess:
        predicted = _apply_postprocess(
            postprocess, tf.nest.map_structure(tf.convert_to_tensor, predicted), tensors
        )
    reference = {k: _to_numpy(v) for k, v in _name_outputs(predicted, output_names).items()}
    if sorted(reference) != sorted(fn.structured_outputs):
        raise AssertionError(
            f"Exported outputs {sorted(fn.structured_outputs)} differ from the reference "
            f"outputs {sorted(reference)}."
        )

    def run(rows):
        feed = {k: tf.constant(v[rows], dtype=input_specs[k].dtype) for k, v in inputs.items()}
        return {k: v.numpy() for k, v in fn(**feed).items()}

    max_diff = {}
    checks = [np.arange(batch), np.array([0]), np.concatenate([np.arange(batch), [0]])]
    for rows in checks:
        got = run(rows)
        want = {key: value[rows] for key, value in reference.items()}
        if compare is None:
            diffs = {key: _max_abs_diff(key, got[key], want[key], atol, rtol) for key in want}
        else:
            diffs = compare(got, want, atol, rtol)
        for key, diff in diffs.items():
            max_diff[key] = max(max_diff.get(key, 0.0), diff)

    cli = False
    if run_cli:
        result = subprocess.run(
            [saved_model_cli_path(), "show", "--all", "--dir", path],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        listing = result.stdout
        if result.returncode != 0 or f"signature_def['{SIGNATURE}']" not in listing:
            raise AssertionError(
                f"`saved_model_cli show --all --dir {path}` does not list {SIGNATURE!r} "
                f"(exit {result.returncode}): {result.stderr[-2000:]}"
            )
        for key in list(input_keys) + list(reference):
            if f"['{key}']" not in listing:
                raise AssertionError(f"`saved_model_cli show` does not list tensor {key!r}.")
        cli = True
    return {
        "inputs": sorted(input_keys),
        "outputs": sorted(reference),
        "batch_sizes": [len(rows) for rows in checks],
        "max_abs_diff": max_diff,
        "atol": atol,
        "rtol": rtol,
        "cli": cli,
    }


# ----------------------------------------------------------------------------- REST


def _rest_value(value):
    """numpy / bytes value -> JSON-able value; bytes become {"b64": ...} as TF Serving wants."""
    if isinstance(value, (bytes, np.bytes_)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [_rest_value(v) for v in value]
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_rest_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def rest_request_body(instances, signature_name=None):
    """TF Serving REST `predict` body in row format, as a JSON string.

    Args:
        instances: `{input name: batch array}` (one dict per example in the body), or a
            single batch array / list (one value per example, for one-input signatures).
            Binary strings (bytes) are sent as `{"b64": base64}`.
        signature_name: optional; TF Serving uses `serving_default` when absent.

    Returns:
        `'{"instances": [...]}'`.
    """
    if isinstance(instances, dict):
        columns = {k: list(v) for k, v in instances.items()}
        sizes = {k: len(v) for k, v in columns.items()}
        if not sizes:
            raise ValueError("`instances` is an empty dict; expected {input name: batch}.")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"`instances` arrays must have the same batch size; got {sizes}.")
        rows = [
            {k: _rest_value(columns[k][i]) for k in columns}
            for i in range(next(iter(sizes.values())))
        ]
    else:
        rows = [_rest_value(v) for v in instances]
    body = {"instances": rows}
    if signature_name is not None:
        body["signature_name"] = signature_name
    return json.dumps(body)


def _decode_rest_value(value, field):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(
                f"{field}: an object value must be {{'b64': ...}}; got keys {sorted(value)}."
            )
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_rest_value(v, field) for v in value]
    return value


def call_like_rest(loaded, body):
    """Runs a TF Serving REST row-format body through a reloaded SavedModel's signature.

    Maps the JSON the way TF Serving's REST API does for `{"instances": [...]}`: each
    instance is an object `{input name: value}` (or a bare value when the signature has one
    input); the values of all instances are stacked into one batched tensor per input, cast
    to the signature's dtype; `{"b64": ...}` becomes bytes. The response is TF Serving's:
    `{"predictions": [...]}` with one object per instance (or one value per instance when the
    signature has one output).

    Args:
        loaded: the object from `tf.saved_model.load` (or a directory path).
        body: the request body, a JSON string or the parsed dict.
    """
    if isinstance(loaded, (str, os.PathLike)):
        loaded = tf.saved_model.load(os.fspath(loaded))
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    if not isinstance(body, dict) or "instances" not in body:
        raise ValueError('REST body must be a JSON object with "instances" (row format).')
    signature_name = body.get("signature_name", SIGNATURE)
    if signature_name not in loaded.signatures:
        raise ValueError(
            f"signature_name {signature_name!r} not found; have {sorted(loaded.signatures)}."
        )
    fn = loaded.signatures[signature_name]
    specs = fn.structured_input_signature[1]
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ValueError('"instances" must be a non-empty list.')

    columns = {k: [] for k in specs}
    for i, instance in enumerate(instances):
        if isinstance(instance, dict) and set(instance) != {"b64"}:
            if set(instance) != set(specs):
                raise ValueError(
                    f"instances[{i}] has keys {sorted(instance)}; the signature inputs are "
                    f"{sorted(specs)}."
                )
            for k in specs:
                columns[k].append(_decode_rest_value(instance[k], f"instances[{i}][{k!r}]"))
        else:
            if len(specs) != 1:
                raise ValueError(
                    f"instances[{i}] is a bare value but the signature has inputs "
                    f"{sorted(specs)}; send objects keyed by input name."
                )
            (k,) = specs
            columns[k].append(_decode_rest_value(instance, f"instances[{i}]"))
    feed = {}
    for k, spec in specs.items():
        try:
            feed[k] = tf.constant(columns[k], dtype=spec.dtype)
        except (TypeError, ValueError) as err:
            raise ValueError(f"input {k!r}: cannot make a {spec.dtype.name} batch: {err}") from err
    outputs = {k: v.numpy() for k, v in fn(**feed).items()}
    rows = [
        {k: _response_value(k, v[i]) for k, v in outputs.items()} for i in range(len(instances))
    ]
    if len(outputs) == 1:
        rows = [next(iter(row.values())) for row in rows]
    return {"predictions": rows}


def _response_value(name, value):
    """Output row -> JSON value as TF Serving writes it: strings as text, b64 for `*_bytes`."""

    def convert(item):
        if isinstance(item, list):
            return [convert(v) for v in item]
        if isinstance(item, bytes):
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(item).decode("ascii")}
            return item.decode("utf-8")
        return item

    return convert(np.asarray(value).tolist())


# ----------------------------------------------------------------------------- TFLite


def _tflite_convert(model_or_dir, quantize, workdir):
    if isinstance(model_or_dir, (str, os.PathLike)):
        saved_model_dir = os.fspath(model_or_dir)
        if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
            raise ValueError(
                f"{saved_model_dir!r} is not a SavedModel directory (no saved_model.pb)."
            )
    else:
        saved_model_dir = os.path.join(workdir, "saved_model")
        model_or_dir.export(saved_model_dir, format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[SIGNATURE]
    )
    if quantize == "dynamic_range":
        # Without a representative dataset, DEFAULT = weights int8, activations float.
        # TFLite leaves weight tensors under 1024 elements in float.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _tflite_predict(flatbuffer, inputs):
    try:  # LiteRT replaces tf.lite.Interpreter (deprecated, still in TF 2.21).
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interpreter = (Interpreter or tf.lite.Interpreter)(model_content=flatbuffer)
    runner = interpreter.get_signature_runner(SIGNATURE)
    input_details = runner.get_input_details()
    if len(input_details) != 1:
        raise ValueError(
            f"TFLite accuracy check supports one input; the signature has {sorted(input_details)}."
        )
    (key,) = input_details
    dtype = input_details[key]["dtype"]
    outputs = runner(**{key: np.asarray(inputs, dtype=dtype)})
    if len(outputs) != 1:
        raise ValueError(f"TFLite accuracy check needs one output; got {sorted(outputs)}.")
    return next(iter(outputs.values()))


def export_tflite(model, path, quantize="dynamic_range", eval_inputs=None, eval_labels=None):
    """Converts a Keras model (or a SavedModel directory) to TFLite, optionally quantised.

    `quantize="dynamic_range"` stores weights as int8 and keeps float activations (no
    calibration data needed); `quantize=None` writes the float model. Both are converted so
    the report can compare them; only the requested one is written to `path`.

    Args:
        model: a Keras model, or a SavedModel directory with a `serving_default` signature.
        path: the `.tflite` file to write.
        quantize: `"dynamic_range"` or None.
        eval_inputs: optional batch for the one-input signature, run with the TFLite
            interpreter through both models (and `model.predict` for a Keras model).
        eval_labels: optional integer class ids; adds accuracies (argmax of the output).

    Returns:
        dict: `path`, `float_bytes`, `quantized_bytes`, `size_ratio`, and with `eval_inputs`
        `max_abs_output_change` (quantised vs float TFLite), `keras_vs_float_max_abs_diff`,
        and with `eval_labels` `accuracy_float`, `accuracy_quantized`, `accuracy_change`.
    """
    if quantize not in ("dynamic_range", None):
        raise ValueError(f"`quantize` must be 'dynamic_range' or None; got {quantize!r}.")
    if eval_labels is not None and eval_inputs is None:
        raise ValueError("`eval_labels` needs `eval_inputs`.")
    path = os.fspath(path)
    with tempfile.TemporaryDirectory() as workdir:
        float_model = _tflite_convert(model, None, workdir)
        quantized = _tflite_convert(model, "dynamic_range", workdir) if quantize else None
    parent = os.path.dirname(path) or "."
    try:
        os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as f:
            f.write(quantized if quantize else float_model)
    except OSError as err:
        raise ValueError(f"Cannot write TFLite model to {path!r}: {err}") from err
    report = {"path": path, "quantize": quantize, "float_bytes": len(float_model)}
    if quantized is not None:
        report["quantized_bytes"] = len(quantized)
        report["size_ratio"] = len(quantized) / len(float_model)
    if eval_inputs is not None:
        float_out = _tflite_predict(float_model, eval_inputs)
        if not isinstance(model, (str, os.PathLike)):
            keras_out = np.asarray(model.predict(np.asarray(eval_inputs), verbose=0))
            report["keras_vs_float_max_abs_diff"] = float(np.max(np.abs(keras_out - float_out)))
        if quantized is not None:
            quant_out = _tflite_predict(quantized, eval_inputs)
            report["max_abs_output_change"] = float(np.max(np.abs(quant_out - float_out)))
        if eval_labels is not None:
            labels = np.asarray(eval_labels).reshape(-1)
            report["accuracy_float"] = float(np.mean(np.argmax(float_out, -1) == labels))
            if quantized is not None:
                report["accuracy_quantized"] = float(np.mean(np.argmax(quant_out, -1) == labels))
                report["accuracy_change"] = report["accuracy_quantized"] - report["accuracy_float"]
    return report


def print_next_steps(workdir, saved_model, export_name, commands=()):
    """Prints the commands that look at and serve a finished run (the apps' last lines).

    Args:
        workdir: the run's folder (TensorBoard logs under `<workdir>/tensorboard`).
        saved_model: the export's version folder, `<export_dir>/<name>/<version>`.
        export_name: the model name TF Serving serves it under.
        commands: more `(label, command)` lines, e.g. the app's predict command.
    """
    model_dir = os.path.abspath(os.path.dirname(saved_model))
    lines = [
        ("TensorBoard", f".venv/bin/tensorboard --logdir {workdir}/tensorboard  "
                        "(http://localhost:6006)"),
        ("TF Serving", f'docker run -p 8501:8501 -v "{model_dir}:/models/{export_name}" '
                       f"-e MODEL_NAME={export_name} tensorflow/serving"),
        *commands,
    ]
    for label, command in lines:
        print(f"{label + ':':<12} {command}")
