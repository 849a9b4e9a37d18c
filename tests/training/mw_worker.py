"""Subprocess worker for the distributed-training tests (not collected by pytest).

Trains a tiny attention classifier (PatchEmbedding -> TransformerEncoderBlock ->
AttentionPooling -> Dense) on the first 256 scikit-learn digits with `model.fit`, fixed
order, no shuffling, global batch 32, and writes `<out>/result.json` (per-step and
per-epoch losses, number of replicas, chief flag, evaluations on sizes that leave a
partial last batch, predictions: on all workers after fit and on the chief alone during
it) and `<out>/weights.npz` (final weights). With `--workdir`, every worker then loads the
chief's best checkpoint (`load_weights_everywhere`) and writes `<out>/restored.npz`.

    python tests/training/mw_worker.py --out DIR --strategy multi_worker [--no-fix]
        [--logical-cpus 2] [--workdir DIR] [--numpy]

`TF_CONFIG` selects the cluster for `--strategy multi_worker`. `--logical-cpus N` splits
the CPU into N logical devices before TensorFlow initialises (for `mirrored`).
`--no-fix` calls plain `model.fit` without `enable_multi_worker_fit` (reproduces
keras-team/keras#20585). With `--workdir`, each worker writes a marker file into
`worker_dir(workdir, strategy)`, so the test can check that only the chief's files remain.
"""

import argparse
import json
import os
import socket
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

GLOBAL_BATCH = 32
NUM_SAMPLES = 256
EVAL_SIZES = (250, 225)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(out_dir, runs, timeout=300, command=None):
    """Starts `runs` = [(worker args, TF_CONFIG dict or None)] at once and waits for all.

    `command` is what the args follow (default: this script; an app test passes
    `[sys.executable, "-m", "apps.<app>.train"]`). Returns [(returncode, log text)]. Every
    process still running at the end (timeout, error) is killed, so no worker outlives
    the test.
    """
    command = command or [sys.executable, os.path.abspath(__file__)]
    procs, logs = [], []
    try:
        for i, (args, tf_config) in enumerate(runs):
            env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONUNBUFFERED="1")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
            env.pop("TF_CONFIG", None)
            if tf_config is not None:
                env["TF_CONFIG"] = json.dumps(tf_config)
            log_path = os.path.join(out_dir, f"process{i}.log")
            logs.append(log_path)
            with open(log_path, "w") as log:
                procs.append(
                    subprocess.Popen(
                        [*command, *args],
                        env=env,
                        cwd=REPO_ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for proc, log_path in zip(procs, logs):
        with open(log_path) as f:
            results.append((proc.returncode, f.read()))
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--logical-cpus", type=int, default=0)
    parser.add_argument("--no-fix", action="store_true")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--numpy", action="store_true", help="fit on NumPy arrays with batch_size, not tf.data"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    if args.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus
        )

    import keras

    if os.environ.get("MW_DEBUG"):
        keras.config.disable_traceback_filtering()
    import numpy as np
    from sklearn.datasets import load_digits

    from tfattn.layers import AttentionPooling, PatchEmbedding, TransformerEncoderBlock
    from tfattn.training import strategy as strategy_lib

    keras.utils.set_random_seed(0)
    strategy = strategy_lib.resolve_strategy(args.strategy)

    digits = load_digits()
    x = (digits.images[:NUM_SAMPLES, :, :, None] / 16.0).astype("float32")
    y = digits.target[:NUM_SAMPLES].astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    dataset = dataset.with_options(strategy_lib.dataset_options())

    with strategy.scope():
        inputs = keras.Input((8, 8, 1), name="image")
        h = PatchEmbedding(hidden_dim=16, patch_size=2)(inputs)
        h = TransformerEncoderBlock(num_heads=2, intermediate_dim=32)(h)
        h = AttentionPooling(num_heads=2)(h)
        outputs = keras.layers.Dense(10, name="logits")(h)
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer=keras.optimizers.Adam(3e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    if not args.no_fix:
        strategy_lib.enable_multi_worker_fit(model)

    step_losses = []
    chief_predictions = []

    class RecordStepLoss(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step_losses.append(float(logs["loss"]))

    class ChiefOnlyPredict(keras.callbacks.Callback):
        """A per-epoch hook that predicts on the chief only, as the apps' image hooks do
        (Keras's distributed predict fails here: collective mismatch, issue 14)."""

        def on_epoch_end(self, epoch, logs=None):
            chief_predictions.append(model.predict(x[:40], batch_size=16, verbose=0).tolist())

    callbacks = [RecordStepLoss()]
    if strategy_lib.is_chief(strategy):
        callbacks.append(ChiefOnlyPredict())
    if args.workdir:
        # The runtime's callbacks under the patched fit: only the chief may write
        # TensorBoard logs and checkpoints; every worker keeps its own backup.
        from tfattn.training.callbacks import standard_callbacks

        chief = strategy_lib.is_chief(strategy)
        callbacks += standard_callbacks(args.workdir, chief=chief, monitor="loss")
    fit_data = {"x": x, "y": y, "batch_size": GLOBAL_BATCH} if args.numpy else {"x": dataset}
    history = model.fit(
        **fit_data, epochs=args.epochs, shuffle=False, verbose=0, callbacks=callbacks
    )

    eval_logs = model.evaluate(dataset, verbose=0, return_dict=True)
    # Sizes that leave a partial last global batch (250: 26 examples) and one so small
    # (225: 1 example) that a worker's share of it is empty.
    uneven_eval = {}
    for n in EVAL_SIZES:
        ds = tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).batch(GLOBAL_BATCH)
        logs = model.evaluate(ds.with_options(strategy_lib.dataset_options()), verbose=0,
                              return_dict=True)
        uneven_eval[str(n)] = {k: float(v) for k, v in logs.items()}
    predictions = model.predict(x[:50], batch_size=16, verbose=0)
    os.makedirs(args.out, exist_ok=True)
    final_weights = [np.asarray(w) for w in model.get_weights()]
    restored = None
    if args.workdir:
        # The best checkpoint exists on the chief only; every worker must end with it.
        best = os.path.join(args.workdir, "checkpoints", "best.keras")
        strategy_lib.load_weights_everywhere(model, best, strategy)
        restored = strategy_lib.weights_fingerprint(model)
        np.savez(os.path.join(args.out, "restored.npz"), *model.get_weights())
    if args.workdir:
        with strategy_lib.worker_dir(args.workdir, strategy) as write_dir:
            with open(os.path.join(write_dir, "marker.txt"), "w") as f:
                f.write(f"task={os.environ.get('TF_CONFIG', '')}\n")
        if strategy_lib.is_chief(strategy):
            from tfattn.training.export import export_for_serving

            export_for_serving(model, os.path.join(args.workdir, "export"), "mw", 1, save_keras=False)
    from tensorflow.python.eager import context

    coordination = context.context().coordination_service
    result = {
        "num_replicas": strategy.num_replicas_in_sync,
        "heartbeat_timeout_ms": coordination.heartbeat_timeout_in_ms if coordination else None,
        "is_chief": strategy_lib.is_chief(strategy),
        "step_losses": step_losses,
        "epoch_losses": [float(v) for v in history.history["loss"]],
        "epoch_accuracy": [float(v) for v in history.history["accuracy"]],
        "eval_loss": float(eval_logs["loss"]),
        "uneven_eval": uneven_eval,
        "predictions": predictions.tolist(),
        "chief_predictions": chief_predictions,
        "restored_fingerprint": restored,
    }
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f)
    np.savez(os.path.join(args.out, "weights.npz"), *final_weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
