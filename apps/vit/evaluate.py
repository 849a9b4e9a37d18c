"""Evaluate a trained ViT on the test split: accuracy, per-class accuracy, confusion matrix.

    python -m apps.vit.evaluate --workdir runs/vit [--image_size 56]

Reads `<workdir>/config.json`, `<workdir>/preprocessing.json` and `<workdir>/model.keras`,
reloads the test split of the configured dataset and writes `<workdir>/evaluation/`:
`metrics.json` (top-1, top-k, per-class accuracy), `confusion_matrix.png` and
`misclassified.png`. `--image_size` evaluates at another resolution (positions resized).
"""

import argparse
import json
import os

import keras
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from apps.vit import data as vit_data
from apps.vit.config import Config
from apps.vit.export import read_preprocessing
from apps.vit.model import resize_vit
from tfattn import training


def predict_logits(model, images, mean, std, batch_size=256, image_size=None):
    """Logits for uint8 images, processed as the evaluation pipeline does."""
    ds = vit_data.make_pipeline(
        images, np.zeros(len(images), np.int32), batch_size, training=False,
        image_size=image_size, mean=mean, std=std,
    ).map(lambda x, y: x)
    return np.asarray(model.predict(ds, verbose=0))


def classification_report(y_true, logits, class_names, top_k=5):
    """Top-1 / top-k accuracy, per-class accuracy and the confusion matrix (rows = truth)."""
    y_true = np.asarray(y_true)
    pred = np.argmax(logits, -1)
    k = min(top_k, len(class_names))
    top = np.argsort(-logits, axis=-1)[:, :k]
    cm = confusion_matrix(y_true, pred, labels=np.arange(len(class_names)))
    support = cm.sum(axis=1)
    per_class = {
        name: (float(cm[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(class_names)
    }
    return {
        "examples": int(len(y_true)),
        "accuracy": float(np.mean(pred == y_true)),
        f"top{k}_accuracy": float(np.mean(np.any(top == y_true[:, None], axis=-1))),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
    }


def confusion_figure(cm, class_names, title="confusion matrix"):
    """Row-normalised confusion matrix as a matplotlib Figure (counts written in cells)."""
    cm = np.asarray(cm)
    n = len(class_names)
    fig = Figure(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n), dpi=80)
    ax = fig.add_subplot()
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6, color=color)
    fig.tight_layout()
    return fig


def misclassified_figure(images, y_true, logits, class_names, max_images=16):
    """Grid of misclassified images titled `true -> predicted (p)`; None if none are wrong."""
    pred = np.argmax(logits, -1)
    wrong = np.flatnonzero(pred != np.asarray(y_true))[:max_images]
    if not len(wrong):
        return None
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    cols = min(4, len(wrong))
    rows = int(np.ceil(len(wrong) / cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows), dpi=80)
    for n, i in enumerate(wrong):
        ax = fig.add_subplot(rows, cols, n + 1)
        image = np.asarray(images[i])
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        ax.set_title(
            f"{class_names[y_true[i]]} ->\n{class_names[pred[i]]} ({probs[i, pred[i]]:.2f})",
            fontsize=7,
        )
        ax.axis("off")
    fig.tight_layout()
    return fig


def evaluate_workdir(workdir, image_size=None, model_path=None):
    """Evaluates `<workdir>/model.keras` on the test split; writes `<workdir>/evaluation/`."""
    cfg = training.load_config(Config, os.path.join(workdir, "config.json"))
    prep = read_preprocessing(workdir)
    model = keras.saving.load_model(model_path or os.path.join(workdir, "model.keras"))
    size = image_size or cfg.image_size
    if size != cfg.image_size:
        model, _ = resize_vit(model, cfg, len(prep["class_names"]), prep["channels"], size)
    data = vit_data.load_dataset(
        cfg.dataset, validation_fraction=cfg.validation_fraction, seed=cfg.seed,
        channels=prep["channels"], image_size=(cfg.image_size,) * 2, strict=cfg.strict,
        data_dir=cfg.data_dir,
    )
    logits = predict_logits(model, data.x_test, prep["mean"], prep["std"], image_size=size)
    report = classification_report(data.y_test, logits, prep["class_names"], cfg.top_k)
    report["image_size"] = size
    out_dir = os.path.join(workdir, "evaluation" if size == cfg.image_size else f"evaluation_{size}")
    os.makedirs(out_dir, exist_ok=True)
    confusion_figure(report["confusion_matrix"], prep["class_names"]).savefig(
        os.path.join(out_dir, "confusion_matrix.png")
    )
    fig = misclassified_figure(data.x_test, data.y_test, logits, prep["class_names"])
    if fig is not None:
        fig.savefig(os.path.join(out_dir, "misclassified.png"))
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    report["output_dir"] = out_dir
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m apps.vit.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="folder written by apps.vit.train")
    parser.add_argument("--model", help="a .keras file (default: <workdir>/model.keras)")
    parser.add_argument("--image_size", type=int, help="evaluate at another resolution")
    args = parser.parse_args(argv)
    report = evaluate_workdir(args.workdir, args.image_size, args.model)
    print(f"test accuracy {report['accuracy']:.4f} on {report['examples']} images "
          f"({report['image_size']} px)")
    for name, acc in report["per_class_accuracy"].items():
        print(f"  {name:>16s}  {acc if acc is None else f'{acc:.4f}'}")
    print(f"wrote {report['output_dir']}")
    return report


if __name__ == "__main__":
    training.run_cli(main)
