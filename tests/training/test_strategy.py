"""In-process tests of tfattn.training.strategy (selection, TF_CONFIG, batches, precision).

Multi-worker and mirrored training run in subprocesses: test_multi_worker.py and
test_mirrored.py.
"""

import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfattn.training import strategy as strategy_lib

VALID_TF_CONFIG = {
    "cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]},
    "task": {"type": "worker", "index": 1},
}


def _env(config):
    return {"TF_CONFIG": config if isinstance(config, str) else json.dumps(config)}


def test_unknown_strategy_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown strategy 'gpu'.*auto, default, one_device"):
        strategy_lib.resolve_strategy("gpu")


def test_default_one_device_and_auto_on_cpu():
    assert not tf.config.list_logical_devices("GPU"), "this test assumes a CPU-only machine"
    default = strategy_lib.resolve_strategy("default")
    assert default is tf.distribute.get_strategy()
    one = strategy_lib.resolve_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert one.num_replicas_in_sync == 1
    # No TPU and no GPU: auto falls through (without raising) to the default strategy.
    assert strategy_lib.resolve_strategy("auto") is tf.distribute.get_strategy()


def test_mirrored_on_cpu_uses_the_cpu_devices():
    mirrored = strategy_lib.resolve_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == len(tf.config.list_logical_devices("CPU"))


def test_tpu_without_tpu_raises_clear_error():
    with pytest.raises(strategy_lib.TPUNotFoundError, match=r"No TPU found for strategy='tpu'"):
        strategy_lib.resolve_strategy("tpu")


def _fake_resolver_failure(monkeypatch, where):
    class FakeResolver:
        def __init__(self, tpu=None):
            if where == "resolver":
                raise ValueError("Please provide a TPU Name to connect to.")

    def fail_connect(resolver):
        raise tf.errors.NotFoundError(None, None, "TPUs not found in the cluster.")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", FakeResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", fail_connect)


@pytest.mark.parametrize("where", ["resolver", "connect"])
def test_tpu_failures_are_clear_and_auto_falls_back(monkeypatch, caplog, where):
    _fake_resolver_failure(monkeypatch, where)
    expected = "Please provide a TPU Name" if where == "resolver" else "TPUs not found"
    with pytest.raises(strategy_lib.TPUNotFoundError, match=rf"tpu='my-tpu'.*{expected}"):
        strategy_lib.resolve_strategy("tpu", tpu="my-tpu")
    with caplog.at_level(logging.INFO, logger=strategy_lib.__name__):
        strategy = strategy_lib.resolve_strategy("auto", tpu="my-tpu")
    assert strategy is tf.distribute.get_strategy()
    assert "Falling back" in caplog.text and expected in caplog.text


def test_multi_worker_with_bad_tf_config_fails_before_tf(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        strategy_lib.resolve_strategy("multi_worker")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="TF_CONFIG is not set"):
        strategy_lib.resolve_strategy("multi_worker")


def test_heartbeat_timeout_from_environment():
    env_name = strategy_lib.HEARTBEAT_TIMEOUT_ENV
    assert strategy_lib.heartbeat_timeout_s({}) == strategy_lib.DEFAULT_HEARTBEAT_TIMEOUT_S
    assert strategy_lib.heartbeat_timeout_s({env_name: ""}) == strategy_lib.DEFAULT_HEARTBEAT_TIMEOUT_S
    assert strategy_lib.heartbeat_timeout_s({env_name: "300"}) == 300.0
    for bad in ("0", "-5", "abc", "nan"):
        with pytest.raises(ValueError, match=f"{env_name}=.*positive number of seconds"):
            strategy_lib.heartbeat_timeout_s({env_name: bad})


def test_parse_tf_config_valid():
    config = strategy_lib.parse_tf_config(_env(VALID_TF_CONFIG))
    assert config == VALID_TF_CONFIG
    with_chief = {
        "cluster": {"chief": ["localhost:1"], "worker": ["localhost:2"]},
        "task": {"type": "chief", "index": 0},
    }
    assert strategy_lib.parse_tf_config(_env(with_chief)) == with_chief


def _with(**changes):
    config = json.loads(json.dumps(VALID_TF_CONFIG))
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        if value is KeyError:
            del node[key]
        else:
            node[key] = value
    return config


@pytest.mark.parametrize(
    "config, match",
    [
        ("", "TF_CONFIG is not set"),
        ('{"cluster": ', "TF_CONFIG is not valid JSON"),
        ("[1, 2]", "TF_CONFIG must be a JSON object; got list"),
        (_with(cluster=KeyError), "TF_CONFIG must have a 'cluster' object"),
        (_with(task=KeyError), "TF_CONFIG must have a 'task' object"),
        (_with(task="worker"), "TF_CONFIG must have a 'task' object"),
        (_with(cluster__ps=["h:1"]), "parameter-server training is not supported"),
        (
            {"cluster": {"evaluator": ["h:1"]}, "task": {"type": "evaluator", "index": 0}},
            "needs a 'worker' or 'chief' list",
        ),
        (_with(cluster__master=["h:1"]), "unknown task type 'master'"),
        (_with(cluster__worker=[]), r"cluster\['worker'\] must be a non-empty list"),
        (_with(cluster__worker="h:1"), r"cluster\['worker'\] must be a non-empty list"),
        (_with(cluster__worker=["localhost"]), "address 'localhost'; expected 'host:port'"),
        (_with(cluster__worker=["h:port"]), "address 'h:port'"),
        (_with(task__type="chief"), "task type 'chief' is not in the cluster"),
        (_with(task__type=KeyError), "task type None is not in the cluster"),
        (_with(task__index="1"), "task index must be an int; got '1'"),
        (_with(task__index=True), "task index must be an int; got True"),
        (_with(task__index=KeyError), "task index must be an int; got None"),
        (_with(task__index=2), "task index 2 is out of range for 'worker' with 2"),
        (_with(task__index=-1), "task index -1 is out of range"),
    ],
)
def test_parse_tf_config_errors(config, match):
    with pytest.raises(ValueError, match=match):
        strategy_lib.parse_tf_config(_env(config))


def test_parse_tf_config_reads_os_environ(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(VALID_TF_CONFIG))
    assert strategy_lib.parse_tf_config()["task"]["index"] == 1


def test_is_chief_and_worker_dir_single_process(tmp_path):
    assert strategy_lib.is_chief()
    assert strategy_lib.is_chief(strategy_lib.resolve_strategy("one_device"))
    workdir = tmp_path / "new" / "workdir"
    with strategy_lib.worker_dir(str(workdir)) as out:
        assert out == str(workdir)
        (workdir / "file.txt").write_text("x")
    assert (workdir / "file.txt").exists()


def test_worker_dir_non_chief_writes_to_deleted_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(strategy_lib, "is_chief", lambda strategy=None: False)
    monkeypatch.setattr(strategy_lib.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    workdir = tmp_path / "workdir"
    with strategy_lib.worker_dir(str(workdir)) as out:
        assert out != str(workdir)
        with open(f"{out}/checkpoint", "w") as f:
            f.write("x")
    assert not workdir.exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_global_batch_size():
    assert strategy_lib.global_batch_size(16) == 16
    mirrored = strategy_lib.resolve_strategy("mirrored")
    assert strategy_lib.global_batch_size(16, mirrored) == 16 * mirrored.num_replicas_in_sync
    for bad in (0, -2, 1.5, "8", True, None):
        with pytest.raises(ValueError, match="`per_replica_batch` must be a positive int"):
            strategy_lib.global_batch_size(bad)


def test_dataset_options_shard_policy():
    policy = tf.data.experimental.AutoShardPolicy
    assert strategy_lib.dataset_options().experimental_distribute.auto_shard_policy == policy.DATA
    options = strategy_lib.dataset_options(file_based=True)
    assert options.experimental_distribute.auto_shard_policy == policy.FILE
    dataset = tf.data.Dataset.range(4).with_options(strategy_lib.dataset_options())
    assert dataset.options().experimental_distribute.auto_shard_policy == policy.DATA


@pytest.mark.parametrize(
    "policy, expected",
    [
        (None, "float32"),
        ("float32", "float32"),
        ("mixed_float16", "mixed_float16"),
        ("mixed_bfloat16", "mixed_bfloat16"),
    ],
)
def test_set_precision(policy, expected):
    assert strategy_lib.set_precision(policy) == expected
    assert keras.config.dtype_policy().name == expected
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    assert layer.variable_dtype == "float32"
    assert (
        layer.compute_dtype
        == {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}[
            expected
        ]
    )


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", "mixed_float32", 16])
def test_set_precision_rejects_unknown(bad):
    with pytest.raises(ValueError, match=r"Unknown precision .*expected None, 'float32'"):
        strategy_lib.set_precision(bad)


def test_resolve_jit_compile():
    assert strategy_lib.resolve_jit_compile() == "auto"
    assert strategy_lib.resolve_jit_compile("auto") == "auto"
    assert strategy_lib.resolve_jit_compile(True) is True
    assert strategy_lib.resolve_jit_compile(False) is False
    assert strategy_lib.resolve_jit_compile("False") is False
    assert strategy_lib.resolve_jit_compile("true") is True
    for bad in ("yes", 1, 0.0):
        with pytest.raises(ValueError, match="`jit_compile` must be True, False, 'auto'"):
            strategy_lib.resolve_jit_compile(bad)


def _tiny_model(steps_per_execution=1):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=steps_per_execution)
    return model


def test_enable_multi_worker_fit_is_noop_without_multi_worker():
    model = _tiny_model()
    make_train_function = model.make_train_function
    assert strategy_lib.enable_multi_worker_fit(model) is model
    assert model.make_train_function == make_train_function
    assert not getattr(model, "_tfattn_multi_worker_fit", False)
    x = np.ones((8, 4), "float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_enable_multi_worker_fit_single_worker_mwms(monkeypatch, steps_per_execution):
    """Patched fit/evaluate also run under a local (single-worker) MWMS, in process;
    4 batches per epoch, so steps_per_execution=3 also runs a partial execution."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = _tiny_model(steps_per_execution)
    assert strategy_lib.enable_multi_worker_fit(model) is model
    assert strategy_lib.enable_multi_worker_fit(model) is model  # idempotent
    assert strategy_lib.is_chief(strategy)
    history = model.fit(dataset, epochs=3, shuffle=False, verbose=0)

    keras.utils.set_random_seed(0)
    reference = _tiny_model()
    expected = reference.fit(dataset, epochs=3, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)
    assert int(model.optimizer.iterations.numpy()) == 12
    assert int(reference.optimizer.iterations.numpy()) == 12
    np.testing.assert_allclose(
        model.evaluate(dataset, verbose=0), reference.evaluate(dataset, verbose=0), rtol=1e-5
    )
