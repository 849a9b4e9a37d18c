"""tf.distribute strategies for `model.fit`: selection, TF_CONFIG, batches, precision.

Apps build the strategy first and create the model, optimizer and metrics inside its
scope; `model.fit` stays the trainer:

    strategy = resolve_strategy(config.strategy)
    set_precision(config.precision)
    batch_size = global_batch_size(config.batch_size, strategy)
    dataset = dataset.batch(batch_size).with_options(dataset_options())
    with strategy.scope():
        model = build_model(config)
        model.compile(..., jit_compile=resolve_jit_compile(config.jit_compile))
    enable_multi_worker_fit(model)  # no-op unless the strategy is multi-worker
    model.fit(dataset, ...)
    with worker_dir(workdir, strategy) as out:  # the chief writes to workdir
        model.save(os.path.join(out, "model.keras"))
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = (None, "float32", "mixed_float16", "mixed_bfloat16")
TASK_TYPES = ("chief", "worker", "evaluator")
COORDINATED_TASK_TYPES = ("chief", "worker")  # the tasks the coordination service tracks
# How long the multi-worker coordination service waits for a worker's heartbeat before it
# declares the worker dead and aborts every collective. TensorFlow's default is 10 s, which a
# busy host (two workers tracing big graphs on two shared cores) can exceed with no worker
# failing at all; a real crash still ends the job, only up to this much later.
HEARTBEAT_TIMEOUT_ENV = "TFATTN_HEARTBEAT_TIMEOUT_S"
DEFAULT_HEARTBEAT_TIMEOUT_S = 60.0


class TPUNotFoundError(RuntimeError):
    """Raised by `resolve_strategy("tpu")` when no TPU cluster resolves."""


def resolve_strategy(name="auto", tpu=None):
    """Returns the `tf.distribute.Strategy` named by `--strategy`.

    Args:
        name: one of `STRATEGIES`. "auto" picks a TPU if one resolves, "mirrored" with
            more than one GPU, "one_device" with one GPU, else "default" (CPU).
            "mirrored" uses all GPUs, or all logical CPUs when there is no GPU.
            "multi_worker" reads the cluster from `TF_CONFIG` (see `parse_tf_config`).
        tpu: TPU name or address for `TPUClusterResolver`; None reads it from the
            environment (`TPU_NAME`, Cloud TPU VM metadata).

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: unknown `name`, or a malformed `TF_CONFIG` for "multi_worker".
        TPUNotFoundError: `name="tpu"` and no TPU resolves.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of: {', '.join(STRATEGIES)}.")
    if name == "auto":
        try:
            return _tpu_strategy(tpu)
        except TPUNotFoundError as e:
            logger.info("strategy=auto: %s Falling back to GPU/CPU.", e)
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy(gpus[0].name)
        return tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        parse_tf_config()  # fail with a clear message before TF parses it
        _configure_coordination_service(heartbeat_timeout_s())
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu)


def heartbeat_timeout_s(env=None):
    """The coordination-service heartbeat timeout in seconds, from `TFATTN_HEARTBEAT_TIMEOUT_S`.

    Defaults to `DEFAULT_HEARTBEAT_TIMEOUT_S`. Raises ValueError naming the variable when it
    is not a positive number.
    """
    env = os.environ if env is None else env
    raw = env.get(HEARTBEAT_TIMEOUT_ENV)
    if raw is None or raw == "":
        return DEFAULT_HEARTBEAT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(
            f"{HEARTBEAT_TIMEOUT_ENV}={raw!r}: expected a positive number of seconds "
            f"(default {DEFAULT_HEARTBEAT_TIMEOUT_S:g})."
        )
    return value


def _configure_coordination_service(timeout_s):
    """Sets up the coordination service as `MultiWorkerMirroredStrategy` would, but with
    `timeout_s` as the heartbeat timeout (the strategy keeps a service configured before
    it). Chief and worker tasks only; a no-op once the context has one.
    """
    # The proto module moves between TF releases; take it from the strategy that uses it.
    from tensorflow.python.distribute import collective_all_reduce_strategy, multi_worker_util
    from tensorflow.python.eager import context

    ctx = context.context()
    if ctx.coordination_service is not None:
        return
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster_spec = resolver.cluster_spec()
    if resolver.task_type not in COORDINATED_TASK_TYPES:
        return
    jobs = [
        collective_all_reduce_strategy.coordination_config_pb2.CoordinatedJob(
            name=job, num_tasks=cluster_spec.num_tasks(job)
        )
        for job in COORDINATED_TASK_TYPES
        if job in cluster_spec.jobs
    ]
    ctx.configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=int(timeout_s * 1000),
    )


def _tpu_strategy(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TPUNotFoundError(
            f"No TPU found for strategy='tpu' (tpu={tpu!r}): {first_line}. Run on a TPU VM, "
            "set TPU_NAME, or pass the TPU name/address; use --strategy auto to fall "
            "back to GPU/CPU."
        ) from e
    return tf.distribute.TPUStrategy(resolver)


def parse_tf_config(env=None):
    """Reads and validates `TF_CONFIG` for multi-worker training.

    Expected form (one entry per process; `task` says which one this process is):
    `{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker",
    "index": 0}}`. A "chief" list is optional; parameter servers are not supported.

    Args:
        env: mapping to read `TF_CONFIG` from; defaults to `os.environ`.

    Returns:
        The parsed dict, with `task["index"]` as int.

    Raises:
        ValueError: `TF_CONFIG` unset, not JSON, or inconsistent; the message names
            the field.
    """
    env = os.environ if env is None else env
    raw = env.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "TF_CONFIG is not set; multi-worker training needs it, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}.'
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}.") from e
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object; got {type(config).__name__}.")
    for key in ("cluster", "task"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"TF_CONFIG must have a {key!r} object; got {config.get(key)!r}.")
    cluster, task = config["cluster"], config["task"]
    if "ps" in cluster:
        raise ValueError(
            "TF_CONFIG cluster has 'ps' tasks; parameter-server training is not supported, "
            "use 'chief'/'worker' tasks for MultiWorkerMirroredStrategy."
        )
    if not ("worker" in cluster or "chief" in cluster):
        raise ValueError(f"TF_CONFIG cluster needs a 'worker' or 'chief' list; got {cluster!r}.")
    for task_type, addresses in cluster.items():
        if task_type not in TASK_TYPES:
            raise ValueError(
                f"TF_CONFIG cluster has unknown task type {task_type!r}; expected one of "
                f"{', '.join(TASK_TYPES)}."
            )
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(
                f"TF_CONFIG cluster[{task_type!r}] must be a non-empty list of 'host:port'; "
                f"got {addresses!r}."
            )
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not isinstance(address, str) or not host or not port.isdigit():
                raise ValueError(
                    f"TF_CONFIG cluster[{task_type!r}] has address {address!r}; "
                    "expected 'host:port'."
                )
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise ValueError(
            f"TF_CONFIG task type {task_type!r} is not in the cluster ({', '.join(cluster)})."
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"TF_CONFIG task index must be an int; got {index!r}.")
    if not 0 <= index < len(cluster[task_type]):
        raise ValueError(
            f"TF_CONFIG task index {index} is out of range for {task_type!r} with "
            f"{len(cluster[task_type])} address(es)."
        )
    return config


def is_chief(strategy=None):
    """True if this process should write checkpoints, exports and TensorBoard logs.

    Single-process strategies are always chief. Under multi-worker training the chief
    is task "chief", or "worker" 0 when the cluster has no chief.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:  # local (single-worker) MultiWorkerMirroredStrategy
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


@contextlib.contextmanager
def worker_dir(workdir, strategy=None):
    """Yields the directory this process writes checkpoints/exports/logs to.

    The chief gets `workdir` (created if needed). Other workers must still run the same
    save code (saving can involve collectives), so they get a fresh temporary directory
    that is deleted on exit. Only the chief's files remain.
    """
    if is_chief(strategy):
        os.makedirs(workdir, exist_ok=True)
        yield workdir
        return
    tmp = tempfile.mkdtemp(prefix="tfattn_worker_")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def global_batch_size(per_replica_batch, strategy=None):
    """Per-replica batch × replicas in sync: the batch size to give `dataset.batch`."""
    if (
        isinstance(per_replica_batch, bool)
        or not isinstance(per_replica_batch, int)
        or per_replica_batch < 1
    ):
        raise ValueError(f"`per_replica_batch` must be a positive int; got {per_replica_batch!r}.")
    strategy = strategy or tf.distribute.get_strategy()
    return per_replica_batch * strategy.num_replicas_in_sync


def dataset_options(file_based=False):
    """`tf.data.Options` with the auto-shard policy for multi-worker input.

    DATA (the default here): every worker reads the whole dataset and keeps its share
    of each global batch. Right for in-memory or tensor-sliced data and for few files;
    with `fit` every worker sees the same global batches as single-process training.
    FILE (`file_based=True`): each worker reads a disjoint subset of the files
    (TFRecord shards); needs at least as many files as workers, and the global batches
    then differ from single-process training. Apply with `dataset.with_options(...)`
    before `fit`; single-process strategies ignore it.
    """
    policy = tf.data.experimental.AutoShardPolicy
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy.FILE if file_based else policy.DATA
    return options


def set_precision(policy=None):
    """Sets the global Keras dtype policy: None/"float32", "mixed_float16", "mixed_bfloat16".

    Call it before building the model. With "mixed_float16", `model.compile` wraps the
    optimizer in a `LossScaleOptimizer` itself. Returns the policy name.
    """
    if policy not in PRECISIONS:
        raise ValueError(
            f"Unknown precision {policy!r}; expected None, 'float32', 'mixed_float16' or "
            "'mixed_bfloat16'."
        )
    name = policy or "float32"
    keras.config.set_dtype_policy(name)
    return name


def resolve_jit_compile(jit_compile=None):
    """Maps a config's `jit_compile` field to `model.compile(jit_compile=...)`.

    None or "auto" → "auto" (Keras decides: XLA on GPU/TPU, not on CPU); True/False
    pass through. Config files and CLIs may give the strings "true"/"false".
    """
    if jit_compile is None or jit_compile == "auto":
        return "auto"
    if isinstance(jit_compile, bool):
        return jit_compile
    if isinstance(jit_compile, str) and jit_compile.lower() in ("true", "false"):
        return jit_compile.lower() == "true"
    raise ValueError(f"`jit_compile` must be True, False, 'auto' or None; got {jit_compile!r}.")


def enable_multi_worker_fit(model):
    """Makes `fit`, `evaluate` and `predict` work under `MultiWorkerMirroredStrategy`; returns `model`.

    Keras 3's `fit` fails under multi-worker strategies (keras-team/keras#20585,
    tensorflow#72388; reproduced with Keras 3.15.1 / TF 2.21 in
    tests/training/test_multi_worker.py): (1) before training, `fit` all-reduces a
    nested data batch only to read its shapes, which `MultiWorkerMirroredStrategy.reduce`
    cannot do ("Attempt to convert a value (PerReplica...)"); (2) each step reduces the
    scalar logs with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars.

    This replaces three methods on this model instance (not on the class): the symbolic
    build reads shapes from this worker's first replica batch (no collective), and
    `make_train_function` / `make_test_function` run `train_step`/`test_step` with
    `strategy.run` and average the logs across workers with
    `strategy.reduce("MEAN", v, axis=None)`. Gradients are all-reduced by the optimizer
    as usual, so training matches single-process training on the same global batches
    (tested: two workers vs one process). `steps_per_execution` is honoured, one
    tf.function call per step.

    `evaluate` stays distributed: each worker runs its share of every batch and the
    metrics' sync-on-read state (totals and counts) is summed over all workers when the
    result is read, so the result is the exact metric over the whole dataset, the same on
    every worker. It is a collective: every worker must call it, with the same data.

    `predict` is made local (`predict_locally`): each worker runs the whole input through
    its own copy of the weights, with no collective at all. Keras's distributed `predict`
    gathers each batch's outputs from all workers (`_multi_worker_concat`), so a `predict`
    on the chief alone (a per-epoch image hook, a report) waits in a collective that the
    other workers never join, or meets their next training step's all-reduce ("Collective
    ops is aborted by: ... expected type 0 and data_type 1 but got type 2 and data_type 3").
    The replicas hold identical weights, so the local result is the distributed one; it
    costs each worker the whole input instead of its share, which is cheap next to
    training. Call `predict` outside `strategy.scope()`.

    No-op unless the model was created under a `MultiWorkerMirroredStrategy` scope; call it
    after `compile` (or on an uncompiled model that only predicts, such as an attention
    model sharing the classifier's layers).
    """
    strategy = model.distribute_strategy
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model
    if not (hasattr(model, "_maybe_symbolic_build") and hasattr(model, "_symbolic_build")):
        raise RuntimeError(
            f"enable_multi_worker_fit was written for Keras 3.x <= 3.15 and this Keras "
            f"({keras.__version__}) has no Trainer._maybe_symbolic_build; check whether "
            "keras-team/keras#20585 is fixed and drop the workaround."
        )
    if getattr(model, "_tfattn_multi_worker_fit", False):
        return model

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = next(it)
                break
        # Only shapes and dtypes are needed: take this worker's first replica.
        data_batch = tf.nest.map_structure(
            lambda v: (
                strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v
            ),
            data_batch,
        )
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def make_function(step_function):
        def one_step_on_data(data):
            outputs = strategy.run(step_function, args=(data,))
            # Logs are per-worker running means over equal batches: their mean across
            # workers is the global value.
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), outputs)

        if not model.run_eagerly:
            one_step_on_data = tf.function(
                one_step_on_data, reduce_retracing=True, jit_compile=model.jit_compile
            )

        def function(iterator):
            outputs = None
            for _ in range(model.steps_per_execution):
                # All workers agree on whether a next batch exists (the distributed
                # iterator synchronises this), so none is left waiting in a collective.
                optional = iterator.get_next_as_optional()
                if not bool(optional.has_value()):
                    break
                outputs = one_step_on_data(optional.get_value())
            if outputs is None:
                raise StopIteration
            return outputs

        return function

    def make_train_function(force=False):
        if model.train_function is None or force:
            model.train_function = make_function(model.train_step)
        return model.train_function

    def make_test_function(force=False):
        if model.test_function is None or force:
            model.test_function = make_function(model.test_step)
        return model.test_function

    model._maybe_symbolic_build = maybe_symbolic_build
    model.make_train_function = make_train_function
    model.make_test_function = make_test_function
    model.predict = predict_locally(model)
    model.train_function = None
    model.test_function = None
    model._tfattn_multi_worker_fit = True
    return model


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def predict_locally(model):
    """Returns `model.predict` run without the model's strategy: no collectives.

    `enable_multi_worker_fit` installs it as `model.predict` under
    `MultiWorkerMirroredStrategy` (see there why). Keras's own `predict` then runs as in a
    single process: the input is not sharded, every batch goes through this worker's copy
    of the (mirrored) weights, and progress bars, callbacks and `steps_per_execution`
    behave as usual. The compiled predict function is kept apart from the distributed one.
    """
    predict = type(model).predict.__get__(model)

    def local_predict(*args, **kwargs):
        if tf.distribute.has_strategy():
            raise RuntimeError(
                "Under MultiWorkerMirroredStrategy, call `predict` outside "
                "`strategy.scope()`: it runs locally on each worker, without the strategy."
            )
        saved = model._distribute_strategy, model.predict_function
        model._distribute_strategy = None
        model.predict_function = getattr(model, "_tfattn_local_predict_function", None)
        try:
            return predict(*args, **kwargs)
        finally:
            model._tfattn_local_predict_function = model.predict_function
            model._distribute_strategy, model.predict_function = saved

    return local_predict


def broadcast_from_chief(variables, strategy=None):
    """Sets `variables` on every worker to the chief's values (a collective; all call it).

    For state that only the chief has, e.g. weights it loaded from a checkpoint file that
    only the chief wrote. The chief's first local replica contributes its values and every
    other replica zeros to one all-reduce sum per dtype, so the result is exactly the
    chief's values. A no-op outside `MultiWorkerMirroredStrategy`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    variables = list(variables)
    if not _is_multi_worker(strategy) or not variables:
        return
    chief = is_chief(strategy)
    by_dtype = {}
    for v in variables:
        by_dtype.setdefault(tf.as_dtype(v.dtype), []).append(v)
    for group in by_dtype.values():
        flat = tf.concat([tf.reshape(tf.convert_to_tensor(v.value), [-1]) for v in group], 0)
        calls = []

        def contribution(ctx, flat=flat, calls=calls):
            first_local = not calls  # called once per local replica, in order
            calls.append(ctx.replica_id_in_sync_group)
            return tf.identity(flat) if chief and first_local else tf.zeros_like(flat)

        per_replica = strategy.experimental_distribute_values_from_function(contribution)
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        sizes = [int(np.prod(v.shape)) for v in group]
        for v, part in zip(group, tf.split(total, sizes)):
            v.assign(tf.reshape(part, v.shape))


def load_weights_everywhere(model, path, strategy=None, missing_ok=False):
    """`model.load_weights(path)` on every worker, where only the chief has the file.

    Single-process strategies just load it. Under `MultiWorkerMirroredStrategy` the chief
    loads the file and `broadcast_from_chief` copies the weights to every other worker
    (all workers must call this, and all learn from the chief whether the file exists).

    Returns:
        True if the weights were loaded; False if the file is missing and `missing_ok`.

    Raises:
        FileNotFoundError: the chief has no file at `path` and not `missing_ok`.
    """
    strategy = strategy or model.distribute_strategy
    chief = is_chief(strategy)
    found = chief and os.path.exists(path)
    if _is_multi_worker(strategy):
        found = bool(mean_over_workers([float(found)], strategy)[0] > 0)
    if not found:
        if missing_ok:
            return False
        raise FileNotFoundError(f"No weights file at {path!r} on the chief.")
    if chief:
        model.load_weights(path)
    broadcast_from_chief(model.weights, strategy)
    return True


def mean_over_workers(values, strategy=None):
    """The mean of a float vector over all workers (a collective; all call it).

    For decisions every worker must take alike, such as a time budget measured on each
    worker's own clock. Outside `MultiWorkerMirroredStrategy` returns `values` as floats.
    """
    values = np.asarray(values, np.float64)
    strategy = strategy or tf.distribute.get_strategy()
    if not _is_multi_worker(strategy):
        return values
    tensor = tf.constant(values)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.identity(tensor)
    )
    total = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
    return np.asarray(total, np.float64)


def print_weights_fingerprint(model, strategy=None):
    """Under `MultiWorkerMirroredStrategy`, prints `weights_fingerprint` on every worker.

    The apps call it after restoring the best checkpoint: the lines of all workers must
    agree (tests compare them). Prints nothing in a single process.
    """
    strategy = strategy or model.distribute_strategy
    if _is_multi_worker(strategy):
        role = "the chief" if is_chief(strategy) else "a worker"
        print(f"Weights fingerprint {weights_fingerprint(model)} (the same on every worker; "
              f"this is {role})", flush=True)


def weights_fingerprint(model):
    """Short SHA-256 of every weight's bytes: equal on all workers when replicas agree."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()[:16]
