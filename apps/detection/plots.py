"""Per-epoch validation mAP and the TensorBoard / PNG figures of the detection app.

`MapCallback` adds `val_map`, `val_ap50`, `val_ap75` (pycocotools on validation images)
to the epoch logs before the checkpoint and TensorBoard callbacks read them. The figures:
ground-truth (dashed) vs predicted boxes on fixed validation images, DETR's per-query
cross-attention over the feature grid, and the dense head's CBAM spatial attention.
"""

import keras
import matplotlib.pyplot as plt
import numpy as np

from apps.detection.evaluate import coco_ground_truth, coco_map, coco_results, predict_split

COLORS = plt.get_cmap("tab10").colors


class MapCallback(keras.callbacks.Callback):
    """Adds `val_map`, `val_ap50`, `val_ap75` to the logs every `every_n_epochs` epochs and
    after the last one; other epochs carry the last values (so a best-checkpoint callback
    monitoring `val_map` saves only when it improves). A detector's test-time
    augmentation (flips, crop scales) is off for this score (`Detector.without_test_time_augmentation`)."""

    def __init__(self, split, class_names, image_size, every_n_epochs=1, limit=None,
                 batch_size=32, max_detections=100, score_threshold=None):
        super().__init__()
        self.split, self.class_names, self.image_size = split, class_names, image_size
        self.every_n_epochs, self.limit, self.batch_size = every_n_epochs, limit, batch_size
        self.max_detections, self.score_threshold = max_detections, score_threshold
        self.ground_truth = coco_ground_truth(split, class_names, limit)
        self.last = {"val_map": 0.0, "val_ap50": 0.0, "val_ap75": 0.0}
        self.epochs = None

    def on_train_begin(self, logs=None):
        self.epochs = self.params.get("epochs") if self.params else None

    def on_epoch_end(self, epoch, logs=None):
        last_epoch = self.epochs is not None and epoch + 1 >= self.epochs
        stopping = getattr(self.model, "stop_training", False)
        if (epoch + 1) % self.every_n_epochs == 0 or last_epoch or stopping or epoch == 0:
            # Test-time augmentation off: this score ranks epochs, at a fraction of the cost.
            with self.model.without_test_time_augmentation():
                detections = predict_split(self.model, self.split, self.image_size,
                                           self.batch_size, self.max_detections,
                                           self.score_threshold, self.limit)
            metrics, _ = coco_map(self.ground_truth, coco_results(detections))
            self.last = {"val_map": metrics["map"], "val_ap50": metrics["ap50"],
                         "val_ap75": metrics["ap75"]}
        if logs is not None:
            logs.update(self.last)


def _draw_box(ax, box, color, label=None, dashed=False):
    x0, y0, x1, y1 = box
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                               linewidth=1.0 if dashed else 1.5, linestyle="--" if dashed else "-"))
    if label:
        ax.text(x0, y0 - 1, label, color="white", fontsize=6,
                bbox={"facecolor": color, "alpha": 0.8, "pad": 0.5, "linewidth": 0})


def boxes_figure(images, ground_truth, detections, class_names, score_threshold=0.3, title=None):
    """Images with ground-truth (dashed white) and predicted boxes (coloured by class,
    `class score`), all in each image's own pixels.

    Args:
        images: list of uint8 (h, w, 3).
        ground_truth: list of (boxes (n, 4) xyxy, labels (n,)).
        detections: list of (boxes (m, 4) xyxy, scores (m,), labels (m,)).
    """
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
    for ax, image, (gt_boxes, _), (boxes, scores, labels) in zip(
            axes[0], images, ground_truth, detections):
        ax.imshow(image)
        for box in gt_boxes:
            _draw_box(ax, box, "white", dashed=True)
        for box, score, label in zip(boxes, scores, labels):
            if score >= score_threshold:
                _draw_box(ax, box, COLORS[int(label) % 10],
                          f"{class_names[int(label)]} {score:.2f}")
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def attention_figure(input_image, maps, titles, title=None):
    """A letterboxed input image and attention maps (h', w') upsampled over it."""
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.0 * n, 2.2), squeeze=False)
    size = input_image.shape[0]
    axes[0, 0].imshow(input_image.astype(np.uint8))
    axes[0, 0].set_title("input", fontsize=7)
    for ax, attention, name in zip(axes[0, 1:], maps, titles):
        ax.imshow(input_image.astype(np.uint8))
        ax.imshow(np.asarray(attention, np.float32), cmap="inferno", alpha=0.6,
                  extent=(0, size, size, 0), interpolation="bilinear")
        ax.set_title(name, fontsize=7)
    for ax in axes[0]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def query_attention_maps(model, input_image, class_names, max_queries=4):
    """DETR: the last decoder layer's cross-attention of the top-scoring queries, with
    titles `class score`; dense head: the CBAM spatial attention of each level."""
    x = np.asarray(input_image, np.float32)[None]
    attention = model.attention_maps(x)
    if model.head == "detr":
        attention = np.asarray(attention)[0]  # (queries, h, w)
        logits = np.asarray(model(x, training=False)["logits"])[0]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        scores, labels = probs[:, :-1].max(-1), probs[:, :-1].argmax(-1)
        order = np.argsort(-scores)[:max_queries]
        return ([attention[q] for q in order],
                [f"query {q}: {class_names[labels[q]]} {scores[q]:.2f}" for q in order])
    maps = [np.asarray(m)[0] for m in attention]
    return maps, [f"stride {s}" for s in model.strides[: len(maps)]]
