"""Tiny attention classifier trained with `standard_callbacks`, for the kill/resume test.

    python tests/training/resume_script.py --workdir W --epochs 4 [--batch_sleep 0.05]

Real 8x8 digits (scikit-learn), a fixed 256/64 split, batch 32 -> 8 steps per epoch,
`shuffle=False` and no dropout, so an interrupted-and-resumed run can be compared with an
uninterrupted one weight for weight. Appends to `<workdir>/epochs.log` (flushed and
fsynced, so a SIGKILL loses nothing written):

    start                      once per process
    batch <epoch> <batch>      after every batch
    end <epoch> <optimizer.iterations> <loss>
    done <optimizer.iterations>

and writes `<workdir>/result.json` (final step count and weights checksum) when fit returns.
The tests import `build_model` and `load_data` from here too.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

STEPS_PER_EPOCH = 8
BATCH_SIZE = 32


def load_data(num_train=STEPS_PER_EPOCH * BATCH_SIZE, num_val=64):
    """(x_train, y_train, x_val, y_val): float32 (n, 8, 8, 1) digits in [0, 1], int32 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    return x[:num_train], y[:num_train], x[num_train : num_train + num_val], y[
        num_train : num_train + num_val
    ]


def build_model(hidden_dim=16, num_heads=2, num_layers=2, seed=0):
    """Patches (4x4 grid) -> encoder blocks -> attention pooling -> 10 logits.

    Returns the classifier and a model with the same layers that outputs each block's
    attention weights `(batch, heads, 16, 16)`.
    """
    from tfattn.layers import AttentionPooling, PatchEmbedding, TransformerEncoderBlock

    keras.utils.set_random_seed(seed)
    images = keras.Input((8, 8, 1), name="image")
    x = PatchEmbedding(hidden_dim, 2, name="patches")(images)  # (batch, 16, hidden_dim)
    scores = []
    for i in range(num_layers):
        x, s = TransformerEncoderBlock(
            num_heads=num_heads, intermediate_dim=2 * hidden_dim, name=f"block{i}"
        )(x, return_attention_scores=True)
        scores.append(s)
    pooled = AttentionPooling(num_heads=num_heads, name="pool")(x)
    logits = keras.layers.Dense(10, name="logits")(pooled)
    return keras.Model(images, logits), keras.Model(images, scores)


def compile_model(model, epochs, peak_learning_rate=3e-3):
    from tfattn.schedules import warmup_cosine

    schedule = warmup_cosine(peak_learning_rate, epochs, STEPS_PER_EPOCH, warmup_epochs=1)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


class EpochLog(keras.callbacks.Callback):
    def __init__(self, path, batch_sleep):
        super().__init__()
        self.path = path
        self.batch_sleep = batch_sleep
        self.epoch = None

    def _write(self, line):
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def on_train_begin(self, logs=None):
        self._write("start")  # the next `batch` line shows the epoch fit resumed at

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._write(f"batch {self.epoch} {batch}")
        time.sleep(self.batch_sleep)  # widens the kill window; does not change the math

    def on_epoch_end(self, epoch, logs=None):
        iterations = int(self.model.optimizer.iterations)
        self._write(f"end {epoch} {iterations} {logs['loss']:.8f}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch_sleep", type=float, default=0.0)
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tfattn.training.callbacks import standard_callbacks

    x_train, y_train, x_val, y_val = load_data()
    model, _ = build_model()
    compile_model(model, args.epochs)
    callbacks = standard_callbacks(args.workdir, config=vars(args), monitor="val_loss")
    callbacks.append(EpochLog(os.path.join(args.workdir, "epochs.log"), args.batch_sleep))
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        batch_size=BATCH_SIZE,
        epochs=args.epochs,
        shuffle=False,
        callbacks=callbacks,
        verbose=0,
    )
    iterations = int(model.optimizer.iterations)
    weights = [w.tolist() for w in model.get_weights()]
    with open(os.path.join(args.workdir, "result.json"), "w") as f:
        json.dump({"iterations": iterations, "weights": weights}, f)
    EpochLog(os.path.join(args.workdir, "epochs.log"), 0)._write(f"done {iterations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
