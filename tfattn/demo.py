"""Layer demo: a tiny Vision Transformer on scikit-learn's real 8x8 digits.

    python -m tfattn.demo --workdir runs/demo

Trains in about a minute on 2 CPU cores (expect ~95% test accuracy) under the auto-selected
`tf.distribute` strategy, logs scalars and attention maps to TensorBoard, writes attention
heatmaps (PNG) and exports a verified SavedModel for TF Serving (a new version per run).
`make demo-layers` runs it; it uses only public tfattn APIs.
"""

import argparse
import json
import os
import time

import keras
import numpy as np
from matplotlib.image import imsave  # no pyplot: a notebook importing this keeps its backend

from tfattn import training
from tfattn.layers import (
    AttentionPooling,
    PatchEmbedding,
    PositionEmbedding,
    TransformerEncoderBlock,
)
from tfattn.visualize import (
    attention_heatmap_images,
    attention_heatmap_png,
    attention_rollout,
    upscale_images,
)

ROLLOUT_PIXELS = 128  # side of each 8x8 digit in attention_rollout.png


def load_digits_split(seed=0, test_fraction=0.2):
    """Real handwritten digits (UCI, shipped with scikit-learn): (x, y) train and test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]  # (n, 8, 8, 1) in [0, 1]
    y = digits.target.astype("int32")
    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def build_model(hidden_dim=32, num_heads=4, num_layers=2, patch_size=2, num_classes=10):
    """Patches -> learned positions -> encoder blocks -> attention pooling -> logits.

    Returns the classifier and a model that also outputs each block's attention weights.
    """
    images = keras.Input((8, 8, 1), name="image")
    x = PatchEmbedding(hidden_dim, patch_size, name="patches")(images)  # (b, 16, hidden)
    x = x + PositionEmbedding(sequence_length=x.shape[1], name="positions")(x)
    scores = []
    for i in range(num_layers):
        x, s = TransformerEncoderBlock(
            num_heads=num_heads, intermediate_dim=2 * hidden_dim, dropout_rate=0.1, name=f"block{i}"
        )(x, return_attention_scores=True)
        scores.append(s)  # (b, heads, 16, 16)
    pooled = AttentionPooling(num_heads=num_heads, name="pool")(x)  # (b, hidden)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(images, logits, name="digits_vit"), keras.Model(images, scores)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo", help="output folder")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    x_train, x_test, y_train, y_test = load_digits_split(args.seed)
    strategy = training.resolve_strategy("auto")
    with strategy.scope():
        model, attention_model = build_model()
        steps_per_epoch = int(np.ceil(0.9 * len(x_train) / args.batch_size))
        schedule = training.warmup_cosine(3e-3, args.epochs, steps_per_epoch, warmup_epochs=args.epochs / 10)
        model.compile(
            optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    tb_dir = os.path.join(args.workdir, "tensorboard")
    callbacks = training.standard_callbacks(args.workdir, config=vars(args), monitor="val_accuracy", mode="max")
    callbacks.append(
        training.AttentionMapCallback(
            x_test[:8], attention_model, os.path.join(tb_dir, "images"), grid_size=(4, 4), num_prefix_tokens=0
        )
    )
    start = time.time()
    model.fit(
        x_train, y_train, validation_split=0.1, epochs=args.epochs, batch_size=args.batch_size,
        callbacks=callbacks, verbose=2,
    )
    train_seconds = time.time() - start
    _, test_acc = model.evaluate(x_test, y_test, verbose=0)

    # Attention of the last block for one test digit, and rollout over all blocks.
    scores = [np.asarray(s) for s in attention_model.predict(x_test[:8], verbose=0)]
    heatmap = attention_heatmap_png(
        scores[-1][0], os.path.join(args.workdir, "attention_last_block.png"),
        title=f"digit {y_test[0]}: last block",
    )
    rollout = attention_rollout(scores)  # (8, 16, 16)
    # No class token: a patch's relevance is the rollout averaged over all query tokens.
    relevance = rollout.mean(axis=1)  # (8, 16) over the 4x4 patch grid
    overlays = attention_heatmap_images(relevance, grid_size=(4, 4), image=x_test[:8])
    rollout_png = os.path.join(args.workdir, "attention_rollout.png")
    digits = upscale_images(overlays, ROLLOUT_PIXELS)  # (8, 128, 128, 3)
    gap = np.ones((ROLLOUT_PIXELS, ROLLOUT_PIXELS // 16, 3), np.float32)  # white
    imsave(rollout_png, np.concatenate([part for d in digits for part in (d, gap)][:-1], axis=1))

    export_root = os.path.join(args.workdir, "export")
    model_dir = os.path.join(export_root, "digits_vit")
    versions = [int(v) for v in os.listdir(model_dir) if v.isdigit()] if os.path.isdir(model_dir) else []
    exported = training.export_for_serving(
        model, export_root, "digits_vit", max(versions, default=0) + 1,
        output_names=["logits"], verify_inputs={"image": x_test[:4]},
    )
    export_dir = exported["path"]
    summary = {
        "test_accuracy": float(test_acc),
        "train_seconds": round(train_seconds, 1),
        "epochs": args.epochs,
        "heatmaps": [heatmap, rollout_png],
        "tensorboard": tb_dir,
        "saved_model": export_dir,
    }
    with open(os.path.join(args.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    print(f"\nTest accuracy: {test_acc:.4f}")
    print(f"TensorBoard:   .venv/bin/tensorboard --logdir {tb_dir}")
    print(
        "TF Serving:    docker run -p 8501:8501 "
        f"-v \"{os.path.abspath(model_dir)}:/models/digits_vit\" -e MODEL_NAME=digits_vit tensorflow/serving"
    )
    return summary


if __name__ == "__main__":
    training.run_cli(main)
