"""keras-hub detectors as peers of our detection heads: build, data, compile, detect.

`benchmarks/detection.py` trains keras-hub's `RetinaNetObjectDetector` and
`DFineObjectDetector` on the same data and budget as our heads. This module hides how
keras-hub wants its inputs, so the benchmark can treat a peer like one of ours:

    model = build_peer("dfine", num_classes, image_size)          # from config, no download
    compile_peer(model, "dfine", learning_rate=2e-4)
    model.fit(peer_dataset(train_ds, "dfine", image_size), ...)   # our (images, targets) batches
    detections = peer_detect(model, images, "dfine")               # the contract's dict

Data flow (S = image_size; our batches are `images` float32 [B, S, S, 3] 0..255,
letterboxed, and targets {"boxes": [B, M, 4] normalised xyxy, "labels": [B, M], -1 = pad}):

    images ──► keras-hub preprocessor (inside fit / peer_detect) ──► pixel scaling below
    targets ─► to_peer_targets ─► RetinaNet: pixel xyxy, padding box and label -1
                                  D-FINE:    normalised cx, cy, w, h, real boxes first,
                                             padding box 0 and label -1
    model output ─► keras-hub's decode_predictions (decode + NMS) ─► peer_detect:
                    normalised xyxy clipped to [0, 1], scores descending, zero padding

Configs (from config only: `from_preset` needs a download; no pretrained weights):

- "retinanet": ResNet-18 (basic blocks [2, 2, 2, 2], 64-512 filters, 7x7 stem; 11.19 M
  parameters) under keras-hub's RetinaNet FPN P3-P7 (P6 from C5 as in the paper) and its
  4-conv, 256-filter heads with 9 anchors per location: 19.23 M parameters with 3
  classes. Images: ImageNet mean/std normalisation (torchvision's RetinaNet convention).
  Anchors: keras-hub's 3 scales x 3 ratios, but 2 strides wide instead of 4 (16-256 px
  on P3-P7) since our inputs are ~128 px, not 800. Heads re-initialised as in the paper.
  Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
- "dfine": D-FINE-N, the hyper-parameters of keras-hub's `dfine_nano_coco` preset (the
  D-FINE repo's `dfine_hgnetv2_n_coco`): HGNetV2-B0 backbone (1.86 M), hybrid encoder dim
  128 on strides 16 and 32, 3 decoder layers, 6 sampling points, dim 128, FFN 512; 3.75 M
  parameters with 3 classes (the preset: 3.79 M with 80). Images: x / 255 (the D-FINE
  processor rescales and does not normalise). Peng et al., "D-FINE: Redefine Regression
  Task in DETRs as Fine-grained Distribution Refinement", ICLR 2025.

Where this departs from keras-hub 0.32 and why (each found in its source and reproduced):

- RetinaNet: keras-hub gives the focal-loss prior bias (-log(99)) to the *box* head and
  a zero bias to the *class* head (`use_prior_probability` sits on the wrong head). That
  is harmless for ported weights but not from scratch, so `build_peer` re-initialises
  the heads as the paper says (class bias: prior 0.01; box bias: 0; kernels N(0, 0.01)
  where keras-hub uses 0.05): initial class loss ~1.5, where keras-hub's init gives
  hundreds and an untrained model that reports every anchor at score 1.
- D-FINE, num_queries: queries are the top-k encoder tokens, so k <= (S/16)^2 + (S/32)^2
  (80 at S=128, 20 at S=64); `build_peer` uses min(300, that).
- D-FINE, matcher precision: keras-hub pads the cost matrix with 1e9 in float32, where
  one unit in the last place is 64, so costs of order 1-10 vanish and the Hungarian
  assignment is near arbitrary (14 of 15 random 20x(1-7) problems suboptimal against
  scipy). Scaling the three matcher costs by 1e5 (same argmin) restores optimal
  assignments (0 of 15 suboptimal); the loss weights are unchanged.
- D-FINE, batches: keras-hub's loss flattens all targets to [B * M] and then indexes
  them with per-image target indices, so every image past the first is trained towards
  image 0's boxes; it also counts every padding slot as an object. The peer runs
  keras-hub's own loss image by image (`tf.map_fn`, batch 1) on that image's real boxes
  and averages over images that have boxes (an image without boxes adds no loss: the
  keras-hub matcher cannot take zero targets).
- D-FINE, denoising: keras-hub bakes the denoising groups from `labels` given at
  construction (fixed, not the batch's boxes), so `num_denoising=0`.

Training speed, S=128, batch 16, 3 classes, 1-8 boxes in 32 slots, `fit` on a cached
batch, median of steps 3+ on this 2-core CPU (TF 2.21, keras-hub 0.32):

    retinanet  jit_compile=False  1.25 s/step  12.8 img/s  (first step 13 s)
    retinanet  jit_compile=True   3.10 s/step   5.2 img/s  (first step 25 s): XLA slower
    dfine      jit_compile=False  ~40 s/step    0.4 img/s  (first step 132 s)
    dfine as shipped (batched loss, wrong targets, see above), for reference only:
               jit_compile=False  13-21 s/step  ~1 img/s   (measured under other load)
               jit_compile=True   2.4 s/step    6.7 img/s  (first step 151 s)

D-FINE's cost is keras-hub's Hungarian written as nested `keras.ops` while loops over a
Q x Q matrix (Q = 80 here), run for the last decoder layer, each auxiliary layer and the
encoder (5 matchings per image); XLA compiles those loops well, but the per-image loss
needs each image's box count as a shape, which XLA cannot take.
"""

import math
import weakref

import keras
import keras_hub
import numpy as np
import tensorflow as tf

__all__ = [
    "PEERS", "build_peer", "compile_peer", "dfine_num_queries", "from_peer_targets",
    "peer_dataset", "peer_detect", "to_peer_targets",
]

PEERS = ("retinanet", "dfine")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keras-hub's D-FINE matcher costs (class 2, L1 5, CIoU 2) times this factor: the argmin
# is the same, and float32 keeps them apart next to the 1e9 padding of the cost matrix.
DFINE_MATCHER_COST_SCALE = 1e5


def _check_name(name):
    if name not in PEERS:
        raise ValueError(f"`name` must be one of {PEERS}, got {name!r}")


def _check_image_size(image_size):
    if not isinstance(image_size, (int, np.integer)) or image_size <= 0 or image_size % 32:
        raise ValueError(f"`image_size` must be a positive multiple of 32, got {image_size!r}")


def dfine_num_queries(image_size):
    """D-FINE-N's query count at `image_size`: 300, capped by the encoder's token count.

    The decoder's queries are the top-k of the encoder tokens at strides 16 and 32.
    """
    _check_image_size(image_size)
    return min(300, (image_size // 16) ** 2 + (image_size // 32) ** 2)


# --------------------------------------------------------------------------- build


def _retinanet(num_classes, image_size, max_detections, score_threshold, iou_threshold,
               anchor_size, seed):
    shape = (image_size, image_size, 3)
    resnet18 = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block", image_shape=shape)
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=resnet18, min_level=3, max_level=7, use_p5=False, image_shape=shape)
    # Scale then offset per channel: (x / 255 - mean) / std.
    converter = keras_hub.layers.RetinaNetImageConverter(
        scale=[1.0 / (255.0 * s) for s in IMAGENET_STD],
        offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    anchors = keras_hub.layers.AnchorGenerator(
        bounding_box_format="xyxy", min_level=3, max_level=7, num_scales=3,
        aspect_ratios=[0.5, 1.0, 2.0], anchor_size=anchor_size)
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format="xyxy",
        anchor_generator=anchors,
        preprocessor=keras_hub.models.RetinaNetObjectDetectorPreprocessor(converter),
        prediction_decoder=keras_hub.layers.NonMaxSuppression(
            bounding_box_format="xyxy", from_logits=True, iou_threshold=iou_threshold,
            confidence_threshold=score_threshold, max_detections=max_detections))
    # The paper's initialisation (Sec. 4.1): head kernels N(0, 0.01) (keras-hub: 0.05),
    # prior bias on the class logits (keras-hub puts it on the box head).
    rng = np.random.default_rng(seed)
    for head in (model.classification_head, model.box_head):
        for conv in [*head.conv_layers, head.prediction_layer]:
            conv.kernel.assign(rng.normal(0.0, 0.01, conv.kernel.shape).astype(np.float32))
    prior = -math.log((1.0 - 0.01) / 0.01)
    cls_bias = model.classification_head.prediction_layer.bias
    cls_bias.assign(np.full(cls_bias.shape, prior, np.float32))
    box_bias = model.box_head.prediction_layer.bias
    box_bias.assign(np.zeros(box_bias.shape, np.float32))
    return model


@keras.saving.register_keras_serializable(package="tfattn")
class PerImageDFineObjectDetector(keras_hub.models.DFineObjectDetector):
    """`DFineObjectDetector` whose loss is keras-hub's own, run one image at a time.

    keras-hub 0.32's batched D-FINE loss indexes the flattened [B * M] targets with
    per-image indices and treats padding slots as objects; on a batch of one with the
    padding removed it is right. Expects targets from `to_peer_targets(..., "dfine")`
    (real boxes first, label -1 for padding).
    """

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, **kwargs):
        parent = keras_hub.models.DFineObjectDetector.compute_loss
        keys = sorted(y_pred)

        def one_image(args):
            boxes, labels, *preds = args
            count = tf.reduce_sum(tf.cast(labels >= 0, tf.int32))

            def loss():
                # (1, n, 4) and (1, n): this image's real boxes only.
                y_one = {"boxes": boxes[None, :count], "labels": labels[None, :count]}
                pred_one = {k: p[None] for k, p in zip(keys, preds)}
                return tf.cast(parent(self, x=None, y=y_one, y_pred=pred_one,
                                      sample_weight=None), tf.float32)

            return tf.cond(count > 0, loss, lambda: tf.constant(0.0))

        per_image = tf.map_fn(
            one_image, [y["boxes"], y["labels"], *[y_pred[k] for k in keys]],
            fn_output_signature=tf.TensorSpec([], tf.float32))  # (batch,)
        has_boxes = tf.cast(tf.reduce_any(y["labels"] >= 0, axis=1), tf.float32)
        return tf.reduce_sum(per_image) / tf.maximum(tf.reduce_sum(has_boxes), 1.0)


def _dfine(num_classes, image_size, max_detections, score_threshold, iou_threshold, seed):
    shape = (image_size, image_size, 3)
    num_queries = dfine_num_queries(image_size)
    # HGNetV2-B0: per stage [in, mid, out, blocks, layers, kernel].
    hgnetv2 = keras_hub.models.HGNetV2Backbone(
        stem_channels=[3, 16, 16],
        stackwise_stage_filters=[[16, 16, 64, 1, 3, 3], [64, 32, 256, 1, 3, 3],
                                 [256, 64, 512, 2, 3, 5], [512, 128, 1024, 1, 3, 5]],
        apply_downsample=[False, True, True, True],
        use_lightweight_conv_block=[False, False, True, True], depths=[1, 1, 2, 1],
        hidden_sizes=[64, 256, 512, 1024], embedding_size=16,
        use_learnable_affine_block=True, hidden_act="relu", image_shape=shape,
        out_features=["stage3", "stage4"])
    backbone = keras_hub.models.DFineBackbone(
        backbone=hgnetv2, decoder_in_channels=[128, 128], encoder_hidden_dim=128,
        num_labels=num_classes, num_denoising=0, learn_initial_query=False,
        num_queries=num_queries, anchor_image_size=(image_size, image_size),
        feat_strides=[16, 32], num_feature_levels=2, hidden_dim=128,
        encoder_in_channels=[512, 1024], encode_proj_layers=[1], num_attention_heads=8,
        encoder_ffn_dim=512, num_encoder_layers=1, hidden_expansion=0.34,
        depth_multiplier=0.5, eval_idx=-1, num_decoder_layers=3, decoder_attention_heads=8,
        decoder_ffn_dim=512, decoder_n_points=[6, 6], lqe_hidden_dim=64, num_lqe_layers=2,
        out_features=["stage3", "stage4"], image_shape=shape, seed=seed)
    converter = keras_hub.layers.DFineImageConverter(scale=1.0 / 255.0)
    # keras-hub's decode_predictions hands NMS yxyx pixel boxes whatever the format, so
    # the detector keeps "yxyx" and peer_detect reorders.
    scale = DFINE_MATCHER_COST_SCALE
    return PerImageDFineObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format="yxyx",
        preprocessor=keras_hub.models.DFineObjectDetectorPreprocessor(converter),
        matcher_class_cost=2.0 * scale, matcher_bbox_cost=5.0 * scale,
        matcher_ciou_cost=2.0 * scale,
        prediction_decoder=keras_hub.layers.NonMaxSuppression(
            bounding_box_format="yxyx", from_logits=True, iou_threshold=iou_threshold,
            confidence_threshold=score_threshold,
            max_detections=min(max_detections, num_queries)))


def build_peer(name, num_classes, image_size, *, max_detections=100, score_threshold=0.05,
               iou_threshold=0.5, anchor_size=2.0, seed=0):
    """Builds a keras-hub detector from config (no download, random weights).

    Args:
        name: "retinanet" (ResNet-18 FPN) or "dfine" (D-FINE-N); see the module docstring.
        num_classes: int K, labels 0..K-1.
        image_size: int S, the square input size, a multiple of 32 (static: D-FINE's
            anchors and query count depend on it).
        max_detections: detections kept by keras-hub's NMS per image (D-FINE: at most its
            query count; `peer_detect` pads).
        score_threshold: NMS confidence threshold; 0.05 is the usual one for COCO mAP.
        iou_threshold: NMS IoU threshold (keras-hub's default 0.5).
        anchor_size: RetinaNet only: anchor side in strides (keras-hub's default 4, i.e.
            32-512 px anchors on P3-P7 for 800-px images; 2 gives 16-256 px, scaled to
            our small inputs, else objects under ~23 px never reach IoU 0.5 with one).
        seed: D-FINE's seed and RetinaNet's head re-initialisation (other weights follow
            `keras.utils.set_random_seed`).

    Returns:
        A `keras_hub.models.ObjectDetector` whose preprocessor scales 0..255 images.
    """
    _check_name(name)
    _check_image_size(image_size)
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
    if name == "retinanet":
        return _retinanet(num_classes, image_size, max_detections, score_threshold,
                          iou_threshold, anchor_size, seed)
    return _dfine(num_classes, image_size, max_detections, score_threshold, iou_threshold,
                  seed)


def compile_peer(model, name, learning_rate=1e-4, *, weight_decay=1e-4, clipnorm=None,
                 jit_compile=False):
    """Compiles a peer with the losses keras-hub gives it and a documented optimizer.

    RetinaNet: keras-hub's defaults, `BinaryFocalCrossentropy` (gamma 2, no alpha
    balancing) on the class logits and `Huber` (delta 1, i.e. smooth L1) on the box
    deltas, both summed and divided by the number of positive anchors; Adam as
    keras-hub's default (at `learning_rate`, no clipping unless `clipnorm`). D-FINE: its own
    loss (VFL, L1, CIoU, FGL, DDF with keras-hub's weights 1, 5, 2, 0.15, 1.5, over the 3
    decoder layers and the encoder), run per image; AdamW with weight decay 1e-4 and
    gradient clipping at norm 0.1 as in the D-FINE recipe.

    XLA on TF 2.21 CPU: RetinaNet compiles but trains 2.5x slower (module docstring), so
    the default is off; D-FINE's per-image loss has data-dependent shapes, so it must
    run with `jit_compile=False`.

    Args:
        model: from `build_peer(name, ...)`.
        name: "retinanet" or "dfine".
        learning_rate: float or a `keras.optimizers.schedules.LearningRateSchedule`.
        weight_decay: AdamW weight decay (D-FINE only).
        clipnorm: global gradient-norm clip; None gives the per-peer default above.
        jit_compile: passed to `compile`; must be False for D-FINE.

    Returns:
        The model, compiled.
    """
    _check_name(name)
    if name == "retinanet":
        optimizer = keras.optimizers.Adam(learning_rate, global_clipnorm=clipnorm)
        model.compile(optimizer=optimizer, box_loss="auto", classification_loss="auto",
                      jit_compile=jit_compile)
        return model
    if jit_compile:
        raise ValueError("`jit_compile` must be False for 'dfine': its per-image loss has "
                         "data-dependent shapes (the number of real boxes per image)")
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay,
                                       global_clipnorm=clipnorm or 0.1)
    # The compiled losses are unused: D-FINE's compute_loss does not call them.
    model.compile(optimizer=optimizer, jit_compile=False)
    return model


# --------------------------------------------------------------------------- targets


def to_peer_targets(targets, image_size, name):
    """Converts our targets to what the peer's `fit` expects (TensorFlow ops, batched).

    Args:
        targets: {"boxes": float32 [B, M, 4] normalised xyxy, "labels": int [B, M]},
            label -1 marks padding.
        image_size: int S.
        name: "retinanet" or "dfine".

    Returns:
        {"boxes": float32 [B, M, 4], "labels": int32 [B, M]}. RetinaNet: pixel xyxy in
        the S x S input, padding slots box -1 and label -1 (keras-hub's convention; a -1
        box overlaps no anchor). D-FINE: normalised [cx, cy, w, h] (its loss reads this
        whatever the detector's `bounding_box_format`), real boxes first in their order,
        then padding with box 0 and label -1.
    """
    _check_name(name)
    boxes = tf.convert_to_tensor(targets["boxes"], tf.float32)
    labels = tf.cast(targets["labels"], tf.int32)
    if boxes.shape.rank != 3 or boxes.shape[-1] != 4 or labels.shape.rank != 2:
        raise ValueError("`targets` must hold 'boxes' [B, M, 4] and 'labels' [B, M], got "
                         f"{boxes.shape} and {labels.shape}")
    valid = (labels >= 0)[..., None]  # (B, M, 1)
    if name == "retinanet":
        pixels = boxes * float(image_size)
        return {"boxes": tf.where(valid, pixels, -1.0),
                "labels": tf.where(valid[..., 0], labels, -1)}
    x0, y0, x1, y1 = tf.unstack(boxes, axis=-1)
    cxcywh = tf.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)
    cxcywh = tf.where(valid, cxcywh, 0.0)
    labels = tf.where(valid[..., 0], labels, -1)
    # Stable sort on "is padding" moves real boxes to the front, keeping their order.
    order = tf.argsort(tf.cast(labels < 0, tf.int32), axis=1, stable=True)  # (B, M)
    return {"boxes": tf.gather(cxcywh, order, batch_dims=1),
            "labels": tf.gather(labels, order, batch_dims=1)}


def from_peer_targets(peer_targets, image_size, name):
    """Inverse of `to_peer_targets` (up to the order of slots for D-FINE).

    Returns:
        {"boxes": float32 [B, M, 4] normalised xyxy, zeros for padding, "labels": int32
        [B, M], -1 for padding}.
    """
    _check_name(name)
    boxes = tf.convert_to_tensor(peer_targets["boxes"], tf.float32)
    labels = tf.cast(peer_targets["labels"], tf.int32)
    valid = (labels >= 0)[..., None]
    if name == "retinanet":
        xyxy = boxes / float(image_size)
    else:
        cx, cy, w, h = tf.unstack(boxes, axis=-1)
        xyxy = tf.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    return {"boxes": tf.where(valid, xyxy, 0.0), "labels": tf.where(valid[..., 0], labels, -1)}


def peer_dataset(ds, name, image_size):
    """Maps a `tf.data` dataset of batched (images, targets) to the peer's format.

    Images pass unchanged (0..255; the peer's preprocessor scales them inside `fit`).

    Args:
        ds: yields (images float32 [B, S, S, 3], targets dict as in `to_peer_targets`).
        name: "retinanet" or "dfine".
        image_size: int S.

    Returns:
        A dataset of (images, peer targets).
    """
    _check_name(name)
    _check_image_size(image_size)
    images_spec, targets_spec = ds.element_spec
    if tuple(images_spec.shape[1:]) != (image_size, image_size, 3):
        raise ValueError(f"`ds` images must be [B, {image_size}, {image_size}, 3] "
                         f"(batched, letterboxed to image_size), got {images_spec.shape}")
    max_boxes = targets_spec["labels"].shape[-1]
    if name == "dfine" and max_boxes is not None and max_boxes > dfine_num_queries(image_size):
        raise ValueError(f"D-FINE at image_size {image_size} has "
                         f"{dfine_num_queries(image_size)} queries, fewer than the "
                         f"{max_boxes} target slots of `ds`; use fewer max_boxes")
    return ds.map(lambda images, targets: (images, to_peer_targets(targets, image_size, name)),
                  num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- detect

_DETECT_FNS = weakref.WeakKeyDictionary()


def _detect_fn(model):
    """One compiled preprocess -> forward -> keras-hub decode + NMS per model."""
    if model not in _DETECT_FNS:
        # A trace per batch size (at most two in an evaluation): keras-hub's NMS needs a
        # static batch dimension (an unknown one fails in `ops.zeros([batch_size])`).
        @tf.function(reduce_retracing=False)
        def detect(images):
            x = model.preprocessor(images)
            return model.decode_predictions(model(x, training=False), x)

        _DETECT_FNS[model] = detect
    return _DETECT_FNS[model]


def peer_detect(model, images, name, max_detections=100):
    """Runs a peer on our images and returns the contract's postprocess dict.

    Uses keras-hub's own decoding (`decode_predictions`: anchor/box decoding, sigmoid,
    the best class per box, then NMS with the thresholds given to `build_peer`).

    Args:
        model: from `build_peer(name, ...)`.
        images: float32 [B, S, S, 3], 0..255, S the model's image size.
        name: "retinanet" or "dfine".
        max_detections: D, rows per image (padded with zeros past keras-hub's count).

    Returns:
        {"boxes": float32 [B, D, 4] normalised xyxy clipped to [0, 1], "scores": float32
        [B, D] descending, "classes": int32 [B, D], "num_detections": int32 [B]}; rows
        past num_detections have score 0, class 0 and zero boxes.
    """
    _check_name(name)
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape.rank != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"`images` must be [B, S, S, 3], got {images.shape}")
    size = float(images.shape[1])
    out = _detect_fn(model)(images)
    boxes = tf.cast(out["boxes"], tf.float32) / size
    if name == "dfine":  # keras-hub's D-FINE decodes to yxyx pixels.
        boxes = tf.gather(boxes, [1, 0, 3, 2], axis=-1)
    scores = tf.cast(out["confidence"], tf.float32)
    classes = tf.cast(out["labels"], tf.int32)
    kept = tf.shape(scores)[1]
    num = tf.minimum(tf.cast(out["num_detections"], tf.int32), kept)
    valid = tf.range(kept)[None, :] < num[:, None]  # (B, kept)
    scores = tf.where(valid, scores, 0.0)
    order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
    boxes = tf.where(valid[..., None], tf.clip_by_value(boxes, 0.0, 1.0), 0.0)
    boxes = tf.gather(boxes, order, batch_dims=1)
    classes = tf.gather(tf.where(valid, classes, 0), order, batch_dims=1)
    scores = tf.gather(scores, order, batch_dims=1)
    # Pad or cut the kept rows to D.
    pad = tf.maximum(max_detections - kept, 0)
    boxes = tf.pad(boxes, [[0, 0], [0, pad], [0, 0]])[:, :max_detections]
    scores = tf.pad(scores, [[0, 0], [0, pad]])[:, :max_detections]
    classes = tf.pad(classes, [[0, 0], [0, pad]])[:, :max_detections]
    return {"boxes": boxes, "scores": scores, "classes": classes,
            "num_detections": tf.minimum(num, max_detections)}
