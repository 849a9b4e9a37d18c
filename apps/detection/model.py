"""Object detectors: a backbone with a feature pyramid, then a DETR head or a dense head.

    images (B, S, S, 3) 0..255 -> (x - ImageNet mean) / std
      -> backbone, by `backbone`:
           "cnn"  conv-BN-SiLU stem (stride 2) + 4 stages (stride-2 conv + residual block;
                  widths `backbone_widths` at strides 4/8/16/32) + top-down FPN (lateral
                  1x1, nearest upsample + add, 3x3)                  [P8, P16, P32]
           "vit"  PatchEmbedding (patch 8) + learned or sine 2-D positions +
                  TransformerEncoderBlock x `num_backbone_layers` -> stride-8 map; simple
                  pyramid (ViTDet): stride-2 conv for P16, max-pool of it for P32; each
                  level 1x1 conv + LN + 3x3 conv + LN                [P8, P16, P32]
         every level (B, S/s, S/s, hidden_dim)
      -> head, by `head`:
           "detr"   P`memory_stride` flattened row-major to memory tokens (B, h*w, D)
                    + SinePositionEncoding2D -> TransformerEncoderBlock x num_encoder_layers
                    -> decoder: `num_queries` learned content queries and anchor boxes;
                    TransformerDecoderBlock x num_decoder_layers (no causal mask), each
                    layer refining its boxes; shared class / box heads on every layer
                    -> {"logits" (B, Q, K+1), "boxes" (B, Q, 4) cxcywh,
                        "aux_logits" (L-1, B, Q, K+1), "aux_boxes" (L-1, B, Q, 4)}
           "dense"  per level: SpatialChannelAttention (CBAM); shared class tower and box
                    tower (3x3 conv + GroupNorm + SiLU) x num_convs; class logits, box
                    deltas (x a learned per-level scale) and centerness (box tower)
                    -> {"class_logits" (B, N, K), "box_deltas" (B, N, 4),
                        "centerness" (B, N)}, levels concatenated in stride order,
                    each level row-major

      -> optional second stage (`roi_crop_size` > 0, either head): `CropClassifier`, a
         small CNN on the input pixels of each box resampled to a square
         (`box_ops.crop_boxes`); trained on jittered target boxes in the same step,
         (n, K) logits, cross-entropy; `detect` rescores every detection (box, class c,
         score s) as s^(1-w) * p(c | crop)^w (`postprocess.rescore_with_crops`)

`Detector.compute_loss` calls `apps.detection.losses` (DETR's Hungarian set loss, or the
FCOS loss), so `model.fit(dataset)` trains on `(images, {"boxes", "labels"})` batches with
no `loss=` in `compile`, and logs the loss components. `detect()` decodes the outputs with
`apps.detection.postprocess` (TensorFlow ops, usable inside an exported `tf.function`).

What makes the DETR head converge in a CPU budget (DETR itself needs 500 epochs on COCO):
    - anchor queries (DAB-DETR, Liu et al. 2022): each query owns a learned reference box
      (x, y, w, h), initialised spread over the image (a Halton sequence) so that every
      query starts responsible for one region; its positional query is MLP(sine(box)),
      recomputed from the current box at every layer. The (x, y) sine uses the grid
      coordinates of SinePositionEncoding2D, so query and memory positions match.
    - iterative box refinement (Deformable DETR, Zhu et al. 2021): each layer predicts a
      delta to the previous layer's box in inverse-sigmoid space; the box passed on to the
      next layer is detached (as there), so each layer learns its own correction.
    - the box MLP's last layer starts at zero, so the first boxes are the anchors;
    - optional class-prior bias (`prior_probability`, RetinaNet's init): object-class
      logits start at -log((1 - p) / p), no-object at 0. Off by default for DETR: with
      softmax and the no-object weight 0.1 it made no measurable difference in a short
      A/B run (8 epochs on 256 synthetic scenes: validation class / L1 / GIoU losses
      within noise), while it triples the first steps' class loss; the dense head's
      sigmoid focal loss keeps it (p = 0.01), as FCOS does;
    - auxiliary losses on every decoder layer through shared heads (DETR);
    - content and position kept apart (Conditional DETR, Meng et al. 2021): the
      position is added to each block's input and subtracted from its output, so it
      steers the attention of every layer without accumulating in the residual stream.
    - optional two-stage queries (`two_stage=True`; Deformable DETR's two-stage variant,
      DINO's mixed query selection): each memory token proposes a class and a box around
      its cell, trained with the same set loss; the decoder's reference boxes start at the
      top-Q proposals, so queries begin on likely objects rather than on a fixed layout.
    - optional denoising queries (`denoising_groups=G`; DN-DETR, Li et al. 2022): in
      training, G noised copies of every target box (and class) are decoded as extra
      queries that must reconstruct them, a matching-free box and class signal for the
      decoder from the first step. `Detector.train_step` calls the model on
      `(images, targets)` for that; each group is decoded as its own batch row instead of
      DN-DETR's attention mask, so no group and no matching query sees another's answer.
Why a second stage: on the Fashion-MNIST scenes the dense head finds nearly every object
(class-agnostic AP50 0.92-0.94) but gives only ~80% of them their own class, classifying
each from stride-8/16/32 pyramid features shared with localisation. The crop classifier
sees every object at one scale, from its pixels alone (Faster R-CNN's split of proposal
and classification, Ren et al. 2015, with crops of the input instead of RoIAlign on the
features, so it shares nothing with the head and costs little on 2 CPU cores).

Left out: DAB-DETR's width/height-modulated cross-attention and Conditional DETR's
concatenated spatial query (both need a custom attention; tfattn's decoder block takes
one query tensor), and multi-scale deformable attention.

Reference: Carion et al. 2020, "End-to-End Object Detection with Transformers" (DETR);
Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection"; Lin et al. 2017,
"Feature Pyramid Networks for Object Detection"; Li et al. 2022, "Exploring Plain Vision
Transformer Backbones for Object Detection" (ViTDet); Woo et al. 2018, "CBAM".
"""

import contextlib
import math

import keras
import numpy as np
from keras import ops

from tfattn.layers import (
    MLP,
    PatchEmbedding,
    PositionEmbedding,
    SinePositionEncoding2D,
    SpatialChannelAttention,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)
from tfattn.layers.functional import nonempty_batch

HEADS = ("dense", "detr")
BACKBONES = ("cnn", "vit")
STRIDES = (8, 16, 32)
VIT_PATCH_SIZE = 8  # tokens at stride 8, the finest pyramid level
PACKAGE = "tfattn_apps"
# ImageNet statistics in 0..255 pixel units.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# The optional crop classifier (either head): off; rescoring weight chosen on validation
# (apps/detection/README.md, "Crop classifier, A/B").
CROP_CLASSIFIER_WIDTHS = (24, 48, 96)  # stem, then each stage (`CropClassifier`)
SECOND_STAGE_DEFAULTS = dict(roi_crop_size=0, roi_crop_weight=0.25,
                             roi_crop_widths=CROP_CLASSIFIER_WIDTHS, roi_crop_flip=False,
                             roi_crop_views=1, roi_crop_context=None, roi_crop_classes=0,
                             roi_crop_scales=(1.0,))
# Per-head and per-backbone defaults (CPU sized); `build_detector` merges them.
DEFAULTS = {
    "dense": dict(hidden_dim=64, num_convs=2, prior_probability=0.01,
                  attention_reduction=8, attention_kernel_size=7, test_time_flip=False,
                  **SECOND_STAGE_DEFAULTS),
    "detr": dict(hidden_dim=128, num_heads=4, intermediate_dim=256, dropout_rate=0.1,
                 num_queries=32, num_encoder_layers=1, num_decoder_layers=3,
                 memory_stride=16, prior_probability=None, two_stage=False,
                 denoising_groups=0, **SECOND_STAGE_DEFAULTS),
}
BACKBONE_DEFAULTS = {
    "cnn": dict(backbone_widths=(32, 64, 128, 256), activation="silu"),
    "vit": dict(num_backbone_layers=4, num_heads=4, intermediate_dim=256, dropout_rate=0.0,
                position_embedding="learned"),
}
# The hyperparameters the training CLI exposes (apps/detection/config.py fields).
MODEL_HPARAMS = ("hidden_dim", "num_heads", "num_queries", "num_encoder_layers",
                 "num_decoder_layers", "dropout_rate", "two_stage", "denoising_groups",
                 "backbone_widths", "num_convs", "roi_crop_size", "roi_crop_widths",
                 "roi_crop_flip", "roi_crop_views", "roi_crop_context", "roi_crop_classes",
                 "roi_crop_scales", "test_time_flip")
# What `Detector.set_inference_options` changes after training (no retraining needed), and
# those of them that are training-config fields (a resumed or re-scored run may change them).
INFERENCE_OPTIONS = ("roi_crop_weight", "roi_crop_classes", "roi_crop_flip", "roi_crop_scales",
                     "test_time_flip")
# Box scale factors `roi_crop_scales` may take (a crop 4x its box shows mostly background).
CROP_SCALE_RANGE = (0.5, 2.0)
INFERENCE_HPARAMS = tuple(k for k in INFERENCE_OPTIONS if k in MODEL_HPARAMS)


def mirror_dense_outputs(outputs, image_size, strides=STRIDES):
    """Dense head outputs of left-right mirrored images mapped onto the original points.

    Every level's grid is symmetric (S = n * s), so point (i, j) of a level n points wide
    sits where point (i, n - 1 - j) of the mirror does; its left and right distances swap.

    Args:
        outputs: the dense head's dict ("class_logits" (B, N, K), "box_deltas" (B, N, 4)
            as (l, t, r, b), "centerness" (B, N)) of mirrored images.
        image_size, strides: the points' layout (`postprocess.dense_points`).

    Returns:
        The same dict for the unmirrored images' points.
    """
    sides = [image_size // s for s in strides]
    bounds = np.cumsum([n * n for n in sides])[:-1].tolist()

    def mirror(x):
        if len(x.shape) == 2:  # centerness (B, N)
            return mirror(x[..., None])[..., 0]
        parts = ops.split(x, bounds, axis=1) if bounds else [x]
        return ops.concatenate(
            [ops.reshape(ops.flip(ops.reshape(part, (-1, n, n, x.shape[-1])), axis=2),
                         (-1, n * n, x.shape[-1]))
             for part, n in zip(parts, sides)], axis=1)

    return {"class_logits": mirror(outputs["class_logits"]),
            "box_deltas": ops.take(mirror(outputs["box_deltas"]), [2, 1, 0, 3], axis=-1),
            "centerness": mirror(outputs["centerness"])}


def check_inference_options(roi_crop_weight=None, roi_crop_classes=None, test_time_flip=None,
                             head="dense", roi_crop_scales=None):
    """Raises ValueError for a crop-rescoring weight, class count or crop scale out of
    range, or a test-time flip on a head other than the dense one (None: unset)."""
    if test_time_flip and head != "dense":
        raise ValueError("`test_time_flip` averages the dense head's outputs over each image "
                         f"and its mirror; the {head} head has no such option.")
    if roi_crop_weight is not None and not 0.0 <= roi_crop_weight <= 1.0:
        raise ValueError(f"`roi_crop_weight` must be in [0, 1]; got {roi_crop_weight!r}.")
    if roi_crop_classes is not None and (not isinstance(roi_crop_classes, int)
                                         or roi_crop_classes < 0):
        raise ValueError(f"`roi_crop_classes` must be an int >= 0 (0: the head's classes "
                         f"only); got {roi_crop_classes!r}.")
    if roi_crop_scales is not None:
        low, high = CROP_SCALE_RANGE
        if (isinstance(roi_crop_scales, (str, bytes)) or not len(roi_crop_scales)
                or not all(isinstance(f, (int, float)) and not isinstance(f, bool)
                           and low <= f <= high for f in roi_crop_scales)):
            raise ValueError(f"`roi_crop_scales` must be one or more box scale factors in "
                             f"[{low}, {high}] (1: the box itself); got {roi_crop_scales!r}.")


def _upsample2x(x):
    """Nearest-neighbour x2 upsampling (B, h, w, C) -> (B, 2h, 2w, C)."""
    return ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)


def _num_groups(channels):
    """GroupNorm groups: up to 32 (FCOS), at least 4 channels per group."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


def _build_sublayers(layer, *shapes, **kwargs):
    """Builds the sublayers that `layer.build` created by one symbolic call."""
    layer.call(*[keras.KerasTensor(shape) for shape in shapes], **kwargs)


def _check_output_strides(output_strides):
    output_strides = tuple(int(s) for s in output_strides)
    if not output_strides or list(output_strides) != sorted(set(output_strides)) or not set(
            output_strides) <= set(STRIDES):
        raise ValueError(f"`output_strides` must be increasing strides from {STRIDES}; got "
                         f"{output_strides!r}.")
    return output_strides


def inverse_sigmoid(x, eps=1e-5):
    x = ops.clip(x, eps, 1.0 - eps)
    return ops.log(x / (1.0 - x))


def sine_table(positions, dim, max_wavelength=10000.0):
    """(...,) float positions -> (..., dim): sin in even channels, cos in odd ones, with
    frequency max_wavelength ** (-2i / dim) for channels 2i and 2i + 1 (the table of
    `tfattn.layers.SinePositionEncoding2D`)."""
    channel = np.arange(dim)
    inv_freq = np.exp(-math.log(max_wavelength) * (2 * (channel // 2)) / dim).astype("float32")
    angles = positions[..., None] * inv_freq  # (..., dim)
    return ops.where(channel % 2 == 0, ops.sin(angles), ops.cos(angles))


def box_sine_embedding(boxes, grid_size, dim):
    """cxcywh boxes (B, Q, 4) in [0, 1] -> (B, Q, 2 * dim) sine features.

    The first `dim` channels are laid out like `SinePositionEncoding2D(dim)` of a
    `grid_size` memory (rows, then columns, in cell units with cell (i, j) centred at
    ((j + 0.5) / w, (i + 0.5) / h)): a box centred on a memory cell gets that cell's
    position code. Height and width follow in the same units.
    """
    grid_h, grid_w = grid_size
    cx, cy, w, h = ops.unstack(boxes, 4, axis=-1)
    half = dim // 2
    parts = [cy * grid_h - 0.5, cx * grid_w - 0.5, h * grid_h, w * grid_w]
    return ops.concatenate([sine_table(p, half) for p in parts], axis=-1)


def halton(index, base):
    """The `index`-th (1-based) element of the van der Corput sequence in `base`."""
    value, fraction = 0.0, 1.0
    while index > 0:
        fraction /= base
        value += fraction * (index % base)
        index //= base
    return value


def anchor_boxes(num_queries, size=0.2):
    """(num_queries, 4) cxcywh anchors: centres on a 2-D Halton sequence (bases 2, 3),
    which covers the image evenly for any count, all `size` x `size`."""
    centres = [(halton(i + 1, 2), halton(i + 1, 3)) for i in range(num_queries)]
    centres = 0.05 + 0.9 * np.asarray(centres, "float32")  # keep off the borders
    return np.concatenate([centres, np.full((num_queries, 2), size, "float32")], axis=-1)


# --------------------------------------------------------------------------- backbones


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvBNAct(keras.layers.Layer):
    """Conv2D (no bias) -> BatchNormalization -> activation.

    Args:
        filters, kernel_size, strides: of the convolution ("same" padding).
        activation: activation name, or None for none.
        zero_gamma: start the BatchNorm scale at 0 (the last layer of a residual branch,
            Goyal et al. 2017: each block starts as the identity).
    """

    def __init__(self, filters, kernel_size=3, strides=1, activation="silu", zero_gamma=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.activation = activation
        self.zero_gamma = zero_gamma

    def build(self, input_shape):
        self.conv = keras.layers.Conv2D(self.filters, self.kernel_size, self.strides,
                                        padding="same", use_bias=False, name="conv")
        self.conv.build(input_shape)
        # momentum 0.9: moving statistics settle within short CPU runs.
        self.norm = keras.layers.BatchNormalization(
            momentum=0.9, gamma_initializer="zeros" if self.zero_gamma else "ones", name="bn")
        self.norm.build(self.conv.compute_output_shape(input_shape))

    def call(self, x, training=None):
        x = self.norm(self.conv(x), training=training)
        return x if self.activation is None else keras.activations.get(self.activation)(x)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      activation=self.activation, zero_gamma=self.zero_gamma)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class CNNBackbone(keras.layers.Layer):
    """Small residual CNN + top-down FPN: images -> [P8, P16, P32] at `hidden_dim`.

    Args:
        hidden_dim: channels of the pyramid levels.
        backbone_widths: channels of the 4 stages (strides 4, 8, 16, 32); the stem
            (stride 2) has half the first.
        activation: of the conv blocks.
        output_strides: the levels to return, a subset of (8, 16, 32) (the DETR head reads
            one; the FPN then builds only the path to it).

    Call arguments:
        images: normalised `(B, S, S, 3)`, S divisible by 32.

    Returns:
        `[(B, S/s, S/s, hidden_dim) for s in output_strides]`.
    """

    def __init__(self, hidden_dim, backbone_widths=(32, 64, 128, 256), activation="silu",
                 output_strides=STRIDES, **kwargs):
        super().__init__(**kwargs)
        if len(backbone_widths) != 4:
            raise ValueError(f"`backbone_widths` must give 4 stage widths (strides 4, 8, 16, "
                             f"32); got {backbone_widths!r}.")
        self.hidden_dim = hidden_dim
        self.backbone_widths = tuple(int(w) for w in backbone_widths)
        self.activation = activation
        self.output_strides = _check_output_strides(output_strides)

    def build(self, input_shape):
        act = self.activation
        self.stem = ConvBNAct(max(self.backbone_widths[0] // 2, 8), 3, 2, act, name="stem")
        self.downsample, self.block_a, self.block_b = [], [], []
        for i, width in enumerate(self.backbone_widths):
            self.downsample.append(ConvBNAct(width, 3, 2, act, name=f"stage{i}_down"))
            # One residual bottleneck per stage (1x1 to half width, 3x3 back; as YOLOv5's
            # C3 bottleneck): a quarter of a basic block's multiply-adds.
            self.block_a.append(ConvBNAct(width // 2, 1, 1, act, name=f"stage{i}_conv1"))
            self.block_b.append(ConvBNAct(width, 3, 1, None, zero_gamma=True,
                                          name=f"stage{i}_conv2"))
        # The top-down path runs from stride 32 to the finest level asked for.
        self.fpn_strides = tuple(s for s in STRIDES if s >= min(self.output_strides))
        self.lateral = [keras.layers.Conv2D(self.hidden_dim, 1, name=f"fpn_lateral{s}")
                        for s in self.fpn_strides]
        self.output_convs = [keras.layers.Conv2D(self.hidden_dim, 3, padding="same",
                                                 name=f"fpn_output{s}")
                             for s in self.output_strides]
        _build_sublayers(self, input_shape)

    def call(self, images, training=None):
        act = keras.activations.get(self.activation)
        x = self.stem(images, training=training)
        stages = []
        for down, conv1, conv2 in zip(self.downsample, self.block_a, self.block_b):
            x = down(x, training=training)
            x = act(x + conv2(conv1(x, training=training), training=training))
            stages.append(x)  # strides 4, 8, 16, 32
        laterals = [conv(f) for conv, f in zip(self.lateral, stages[-len(self.lateral):])]
        # Top-down: the coarser level, upsampled, is added to the finer lateral.
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            merged.insert(0, lateral + _upsample2x(merged[0]))
        merged = dict(zip(self.fpn_strides, merged))
        return [conv(merged[s]) for conv, s in zip(self.output_convs, self.output_strides)]

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, backbone_widths=self.backbone_widths,
                      activation=self.activation, output_strides=self.output_strides)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViTBackbone(keras.layers.Layer):
    """Plain ViT over 8 x 8 patches + a simple feature pyramid (ViTDet).

    ViTDet builds every level from the last ViT map alone; its stride-16 ViT gets strides
    8/16/32 from a deconvolution, the map itself and a max-pool. Our tokens are at stride
    8 (small inputs need the resolution), so P8 is the map, P16 a stride-2 2x2 conv and
    P32 a max-pool of that; each level then has ViTDet's 1x1 conv + LN + 3x3 conv + LN.

    Args:
        hidden_dim: token and pyramid width.
        image_size: S (fixes the learned position grid).
        num_backbone_layers, num_heads, intermediate_dim, dropout_rate: encoder blocks.
        position_embedding: "learned" (`PositionEmbedding`) or "sine"
            (`SinePositionEncoding2D`).
        output_strides: the levels to return, a subset of (8, 16, 32).

    Call arguments:
        images: normalised `(B, S, S, 3)`.

    Returns:
        `[(B, S/s, S/s, hidden_dim) for s in output_strides]`.
    """

    def __init__(self, hidden_dim, image_size, num_backbone_layers=4, num_heads=4,
                 intermediate_dim=256, dropout_rate=0.0, position_embedding="learned",
                 output_strides=STRIDES, **kwargs):
        super().__init__(**kwargs)
        if position_embedding not in ("learned", "sine"):
            raise ValueError("`position_embedding` must be 'learned' or 'sine'; got "
                             f"{position_embedding!r}.")
        self.hidden_dim = hidden_dim
        self.image_size = image_size
        self.num_backbone_layers = num_backbone_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout_rate = dropout_rate
        self.position_embedding = position_embedding
        self.output_strides = _check_output_strides(output_strides)

    @property
    def grid(self):
        return self.image_size // VIT_PATCH_SIZE

    def build(self, input_shape):
        self.patches = PatchEmbedding(self.hidden_dim, VIT_PATCH_SIZE, name="patches")
        if self.position_embedding == "learned":
            self.positions = PositionEmbedding(grid_size=self.grid, name="positions")
        else:
            self.positions = SinePositionEncoding2D(name="positions")
        self.blocks = [
            TransformerEncoderBlock(self.num_heads, self.intermediate_dim,
                                    dropout_rate=self.dropout_rate, name=f"block{i}")
            for i in range(self.num_backbone_layers)
        ]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")
        self.downsample = None
        if max(self.output_strides) > 8:
            self.downsample = keras.layers.Conv2D(self.hidden_dim, 2, strides=2,
                                                  name="downsample")
        self.level_layers = []
        for s in self.output_strides:
            self.level_layers.append([
                keras.layers.Conv2D(self.hidden_dim, 1, use_bias=False, name=f"p{s}_lateral"),
                keras.layers.LayerNormalization(epsilon=1e-6, name=f"p{s}_lateral_norm"),
                keras.layers.Conv2D(self.hidden_dim, 3, padding="same", use_bias=False,
                                    name=f"p{s}_output"),
                keras.layers.LayerNormalization(epsilon=1e-6, name=f"p{s}_output_norm"),
            ])
        _build_sublayers(self, input_shape)

    def call(self, images, training=None):
        grid = self.grid
        x = self.patches(images)  # (B, grid * grid, D), row-major
        if self.position_embedding == "learned":
            x = x + self.positions(x)
        else:
            x = x + ops.reshape(self.positions(ops.reshape(x, (-1, grid, grid, self.hidden_dim))),
                                (-1, grid * grid, self.hidden_dim))
        for block in self.blocks:
            x = block(x, training=training)
        maps = {8: ops.reshape(self.norm(x), (-1, grid, grid, self.hidden_dim))}
        if self.downsample is not None:
            maps[16] = self.downsample(maps[8])  # (B, grid / 2, grid / 2, D)
            maps[32] = ops.max_pool(maps[16], 2, 2)  # (B, grid / 4, grid / 4, D)
        levels = []
        for s, (lateral, lateral_norm, conv, conv_norm) in zip(self.output_strides,
                                                                self.level_layers):
            levels.append(conv_norm(conv(lateral_norm(lateral(maps[s])))))
        return levels

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, image_size=self.image_size,
                      num_backbone_layers=self.num_backbone_layers, num_heads=self.num_heads,
                      intermediate_dim=self.intermediate_dim, dropout_rate=self.dropout_rate,
                      position_embedding=self.position_embedding,
                      output_strides=self.output_strides)
        return config


# --------------------------------------------------------------------------- heads


def prior_bias(probability):
    """Logit bias that makes sigmoid(bias) = `probability` (RetinaNet's prior init)."""
    return -math.log((1.0 - probability) / probability)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DETRHead(keras.layers.Layer):
    """DETR decoder with anchor queries and iterative box refinement (see the module
    docstring for the convergence aids and why).

    Args:
        num_classes: K (the logits have K + 1, the last = no-object).
        hidden_dim, num_heads, intermediate_dim, dropout_rate: of the Transformer blocks.
        num_queries: Q, object queries (more than objects per image).
        num_encoder_layers: encoder blocks over the memory (0 = none).
        num_decoder_layers: L decoder blocks.
        prior_probability: initial probability of each object class (None: zero bias).
        two_stage: every memory token also predicts a class and a box (a proposal around
            its grid cell, trained with the same set loss as the decoder); the decoder's
            reference boxes start at the top-Q proposals (detached) instead of the learned
            anchors (Deformable DETR's two-stage variant, Zhu et al. 2021; DINO's "mixed
            query selection", Zhang et al. 2023: boxes selected, content queries learned).
            Where the memory has fewer than Q tokens the rest keep their learned anchors.
        denoising_groups: G > 0 adds DN-DETR's denoising task in training (Li et al. 2022):
            every target box, its centre moved by up to `box_noise` x half its size and its
            sides scaled by up to 1 +- `box_noise`, its class flipped to a random one with
            probability `label_noise`, becomes a query (content: a learned embedding of
            its class; reference: the noised box) that must reconstruct the box and class,
            G noised copies of each. Those queries need no matching, so the decoder gets a
            stable box-regression signal from the first step, which is what shortens
            DETR's training there. Here each group is decoded as its own batch row (DN-DETR
            masks attention instead): no group sees another's answers and the matching
            queries never see any. Inference is unchanged.
        seed: seed of the denoising noise.

    Call arguments:
        features: the memory level `(B, h, w, hidden_dim)`.
        return_attention: also return the last layer's cross-attention `(B, Q, h, w)`,
            averaged over heads.
        targets: training targets {"boxes" (B, M, 4) normalised xyxy, "labels" (B, M),
            -1 = padding}: with `denoising_groups` the outputs gain "dn_logits"
            `(L, B, G*M, K+1)` and "dn_boxes" `(L, B, G*M, 4)` (slot order, group after
            group).

    Returns:
        dict "logits" `(B, Q, K+1)`, "boxes" `(B, Q, 4)` cxcywh in (0, 1), and for L > 1
        "aux_logits" `(L-1, B, Q, K+1)`, "aux_boxes" `(L-1, B, Q, 4)`; with `two_stage`
        also "enc_logits" `(B, h*w, K+1)` and "enc_boxes" `(B, h*w, 4)`; float32.
    """

    def __init__(self, num_classes, hidden_dim=128, num_heads=4, intermediate_dim=256,
                 dropout_rate=0.0, num_queries=32, num_encoder_layers=1, num_decoder_layers=3,
                 prior_probability=None, two_stage=False, denoising_groups=0, box_noise=0.4,
                 label_noise=0.2, seed=None, **kwargs):
        super().__init__(**kwargs)
        if denoising_groups < 0:
            raise ValueError(f"`denoising_groups` must be >= 0; got {denoising_groups}.")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout_rate = dropout_rate
        self.num_queries = num_queries
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.prior_probability = prior_probability
        self.two_stage = bool(two_stage)
        self.denoising_groups = int(denoising_groups)
        self.box_noise = float(box_noise)
        self.label_noise = float(label_noise)
        self.seed = seed
        if self.denoising_groups:
            self.seed_generator = keras.random.SeedGenerator(seed, name="denoising_seed")

    def build(self, features_shape):
        dim, block_args = self.hidden_dim, (self.num_heads, self.intermediate_dim)
        self.memory_positions = SinePositionEncoding2D(name="memory_positions")
        self.encoder = [TransformerEncoderBlock(*block_args, dropout_rate=self.dropout_rate,
                                                name=f"encoder{i}")
                        for i in range(self.num_encoder_layers)]
        self.memory_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="memory_norm")
        self.decoder = [TransformerDecoderBlock(*block_args, dropout_rate=self.dropout_rate,
                                                name=f"decoder{i}")
                        for i in range(self.num_decoder_layers)]
        self.decoder_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")
        # Box sine features (2 * dim) -> positional query (DAB-DETR), shared by the layers.
        self.query_position = MLP(dim, output_dim=dim, activation="relu", name="query_position")
        self.class_head = keras.layers.Dense(self.num_classes + 1, name="class_head")
        self.box_head = [keras.layers.Dense(dim, activation="relu", name="box_hidden1"),
                         keras.layers.Dense(dim, activation="relu", name="box_hidden2"),
                         keras.layers.Dense(4, kernel_initializer="zeros", name="box_output")]
        self.query_embeddings = self.add_weight(
            name="query_embeddings", shape=(self.num_queries, dim),
            initializer=keras.initializers.RandomNormal(stddev=0.1))
        # Learned anchors as logits; set to the Halton layout (the saved values win on load).
        self.reference_logits = self.add_weight(
            name="reference_logits", shape=(self.num_queries, 4), initializer="zeros")
        anchors = anchor_boxes(self.num_queries)
        self.reference_logits.assign(np.log(anchors / (1.0 - anchors)))
        if self.denoising_groups:  # content queries of the denoising boxes, by class
            self.label_embeddings = self.add_weight(
                name="label_embeddings", shape=(self.num_classes, dim),
                initializer=keras.initializers.RandomNormal(stddev=0.1))
        if self.two_stage:
            self.proposal_norm = keras.layers.LayerNormalization(epsilon=1e-6,
                                                                 name="proposal_norm")
            self.proposal_class = keras.layers.Dense(self.num_classes + 1, name="proposal_class")
            self.proposal_box = [keras.layers.Dense(dim, activation="relu", name="proposal_hidden"),
                                 keras.layers.Dense(4, kernel_initializer="zeros",
                                                    name="proposal_box")]
        _build_sublayers(self, features_shape)
        if self.prior_probability is not None:
            bias = np.full((self.num_classes + 1,), prior_bias(self.prior_probability), "float32")
            bias[-1] = 0.0  # no-object
            self.class_head.bias.assign(bias)
            if self.two_stage:
                self.proposal_class.bias.assign(bias)

    def _proposals(self, memory, grid):
        """Per memory token: logits `(B, hw, K+1)` and a box `(B, hw, 4)` refined from
        the token's cell anchor (centre of the cell, two cells wide)."""
        h, w = grid
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel(), np.full(h * w, min(2.0 / w, 0.9)),
                          np.full(h * w, min(2.0 / h, 0.9))], -1).astype("float32")
        x = self.proposal_norm(memory)
        logits = self.proposal_class(x)
        delta = x
        for dense in self.proposal_box:
            delta = dense(delta)
        boxes = ops.sigmoid(ops.cast(delta, "float32") + inverse_sigmoid(ops.convert_to_tensor(cells)))
        return ops.cast(logits, "float32"), boxes

    def _heads(self, x, reference):
        """Shared heads on one layer's output: logits, boxes refined from `reference`."""
        h = self.decoder_norm(x)
        logits = self.class_head(h)
        delta = h
        for dense in self.box_head:
            delta = dense(delta)
        boxes = ops.sigmoid(ops.cast(delta, "float32") + inverse_sigmoid(reference))
        return ops.cast(logits, "float32"), boxes

    def _decode(self, content, reference, memory, grid, training, padding_mask=None,
                return_attention=False):
        """The decoder layers from content queries `(B, N, D)` and reference boxes
        `(B, N, 4)`: per-layer logits and boxes (lists), and the last layer's
        cross-attention if asked for."""
        all_logits, all_boxes, attention = [], [], None
        for i, block in enumerate(self.decoder):
            query_pos = self.query_position(box_sine_embedding(reference, grid, self.hidden_dim))
            query_pos = ops.cast(query_pos, content.dtype)
            if i == len(self.decoder) - 1 and return_attention:
                x, _, attention = block(content + query_pos, memory, use_causal_mask=False,
                                        decoder_padding_mask=padding_mask,
                                        return_attention_scores=True, training=training)
            else:
                x = block(content + query_pos, memory, use_causal_mask=False,
                          decoder_padding_mask=padding_mask, training=training)
            content = x - query_pos  # position steers the block, content carries on
            logits, boxes = self._heads(content, reference)
            all_logits.append(logits)
            all_boxes.append(boxes)
            # Deformable DETR: the next layer refines a detached box.
            reference = ops.stop_gradient(boxes)
        return all_logits, all_boxes, attention

    def _denoise(self, targets, memory, grid, training):
        """DN-DETR's denoising queries: every real target box, noised, in
        `denoising_groups` groups; each group is decoded on its own (as separate batch
        rows: no group and no matching query sees another's answer) and must reconstruct
        its boxes and classes. Returns logits `(L, B, G*M, K+1)` and boxes `(L, B, G*M, 4)`
        in the targets' slot order, group after group."""
        groups = self.denoising_groups
        boxes = ops.cast(targets["boxes"], "float32")  # (B, M, 4) xyxy
        labels = ops.cast(targets["labels"], "int32")  # (B, M), -1 = padding
        m = boxes.shape[1] if boxes.shape[1] is not None else ops.shape(boxes)[1]
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2.0
        size = ops.maximum(boxes[..., 2:] - boxes[..., :2], 1e-3)
        centre, size = ops.repeat(centre, groups, axis=0), ops.repeat(size, groups, axis=0)
        valid = ops.repeat(labels >= 0, groups, axis=0)  # (B*G, M), group-major per image
        labels = ops.repeat(ops.maximum(labels, 0), groups, axis=0)
        # Box noise (DN-DETR): the centre moves up to `box_noise` x half the size, each side
        # length scales by up to 1 +- `box_noise`; labels flip to a random class.
        shape = ops.shape(centre)
        shift = keras.random.uniform(shape, -1.0, 1.0, seed=self.seed_generator)
        scale = keras.random.uniform(shape, -1.0, 1.0, seed=self.seed_generator)
        centre = centre + shift * size * (self.box_noise / 2.0)
        size = size * (1.0 + scale * self.box_noise)
        noised = ops.clip(ops.concatenate([centre, size], axis=-1), 1e-3, 1.0 - 1e-3)
        flip = keras.random.uniform(ops.shape(labels), seed=self.seed_generator) < self.label_noise
        random_labels = ops.cast(keras.random.randint(ops.shape(labels), 0, self.num_classes,
                                                      seed=self.seed_generator), "int32")
        labels = ops.where(flip, random_labels, labels)
        content = ops.cast(ops.take(self.label_embeddings, labels, axis=0), memory.dtype)
        # (B*G, hw, D); an empty batch's filler image (see `nonempty_batch`) is dropped.
        memory = ops.repeat(memory[: ops.shape(boxes)[0]], groups, axis=0)
        logits, out_boxes, _ = self._decode(content, ops.stop_gradient(noised), memory, grid,
                                            training, padding_mask=valid)
        k1 = self.num_classes + 1
        logits = ops.reshape(ops.stack(logits), (len(self.decoder), -1, groups * m, k1))
        out_boxes = ops.reshape(ops.stack(out_boxes), (len(self.decoder), -1, groups * m, 4))
        return logits, out_boxes

    def call(self, features, training=None, return_attention=False, targets=None):
        grid = (features.shape[1], features.shape[2])
        dim = self.hidden_dim
        positions = self.memory_positions(features)  # (B, h, w, D)
        memory = ops.reshape(features + positions, (-1, grid[0] * grid[1], dim))  # (B, hw, D)
        for block in self.encoder:
            memory = block(memory, training=training)
        memory = self.memory_norm(memory)
        if self.two_stage:
            enc_logits, enc_boxes = self._proposals(memory, grid)
        # Positions again after the encoder: the keys of every decoder layer see them.
        memory = memory + ops.reshape(positions, (-1, grid[0] * grid[1], dim))

        batch = ops.shape(memory)[0]
        content = ops.broadcast_to(ops.cast(self.query_embeddings, memory.dtype)[None],
                                   (batch, self.num_queries, dim))  # (B, Q, D)
        # Anchors (B, Q, 4); their gradient reaches the weights through layer 0 only.
        reference = ops.broadcast_to(ops.sigmoid(self.reference_logits)[None],
                                     (batch, self.num_queries, 4))
        if self.two_stage:
            # The most confident proposals (object probability = 1 - no-object) become the
            # first references, detached as in Deformable DETR's two-stage variant.
            chosen = min(self.num_queries, grid[0] * grid[1])
            objectness = 1.0 - ops.softmax(enc_logits, axis=-1)[..., -1]  # (B, hw)
            _, top = ops.top_k(ops.stop_gradient(objectness), chosen)
            picked = ops.stop_gradient(ops.take_along_axis(enc_boxes, top[..., None], axis=1))
            reference = ops.concatenate([picked, reference[:, chosen:]], axis=1)
        all_logits, all_boxes, attention = self._decode(content, reference, memory, grid,
                                                        training,
                                                        return_attention=return_attention)
        outputs = {"logits": all_logits[-1], "boxes": all_boxes[-1]}
        if len(self.decoder) > 1:
            outputs["aux_logits"] = ops.stack(all_logits[:-1])  # (L-1, B, Q, K+1)
            outputs["aux_boxes"] = ops.stack(all_boxes[:-1])  # (L-1, B, Q, 4)
        if self.two_stage:
            outputs["enc_logits"], outputs["enc_boxes"] = enc_logits, enc_boxes
        if targets is not None and self.denoising_groups:
            outputs["dn_logits"], outputs["dn_boxes"] = self._denoise(targets, memory, grid,
                                                                      training)
        if return_attention:
            attention = ops.mean(ops.cast(attention, "float32"), axis=1)  # (B, Q, hw)
            return outputs, ops.reshape(attention, (-1, self.num_queries, *grid))
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, hidden_dim=self.hidden_dim,
                      num_heads=self.num_heads, intermediate_dim=self.intermediate_dim,
                      dropout_rate=self.dropout_rate, num_queries=self.num_queries,
                      num_encoder_layers=self.num_encoder_layers,
                      num_decoder_layers=self.num_decoder_layers,
                      prior_probability=self.prior_probability, two_stage=self.two_stage,
                      denoising_groups=self.denoising_groups, box_noise=self.box_noise,
                      label_noise=self.label_noise, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseHead(keras.layers.Layer):
    """FCOS-style anchor-free head with CBAM attention on each level.

    Args:
        num_classes: K.
        hidden_dim: tower width (the pyramid's width).
        num_convs: 3x3 conv + GroupNorm + SiLU layers per tower (FCOS: 4).
        prior_probability: initial sigmoid class probability (focal loss init).
        attention_reduction, attention_kernel_size: `SpatialChannelAttention` settings.

    Call arguments:
        features: list of `(B, S/s, S/s, hidden_dim)`, strides increasing.
        return_attention: also return each level's CBAM spatial map `(B, h, w)`.

    Returns:
        dict "class_logits" `(B, N, K)`, "box_deltas" `(B, N, 4)`, "centerness" `(B, N)`,
        float32; N = sum of h * w, levels in order, each row-major.
    """

    def __init__(self, num_classes, hidden_dim=64, num_convs=2, prior_probability=0.01,
                 attention_reduction=8, attention_kernel_size=7, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_convs = num_convs
        self.prior_probability = prior_probability
        self.attention_reduction = attention_reduction
        self.attention_kernel_size = attention_kernel_size

    def build(self, features_shape):
        dim, groups = self.hidden_dim, _num_groups(self.hidden_dim)
        # RetinaNet / FCOS: head convs start from N(0, 0.01).
        init = keras.initializers.RandomNormal(stddev=0.01)

        def tower(name):
            layers = []
            for i in range(self.num_convs):
                layers.append(keras.layers.Conv2D(dim, 3, padding="same", use_bias=False,
                                                  kernel_initializer=init,
                                                  name=f"{name}_conv{i}"))
                layers.append(keras.layers.GroupNormalization(groups, name=f"{name}_norm{i}"))
            return layers

        self.attention = [
            SpatialChannelAttention(self.attention_reduction, self.attention_kernel_size,
                                    name=f"attention{i}")
            for i in range(len(features_shape))
        ]
        self.class_tower, self.box_tower = tower("class_tower"), tower("box_tower")
        bias = 0.0 if self.prior_probability is None else prior_bias(self.prior_probability)
        self.class_output = keras.layers.Conv2D(
            self.num_classes, 3, padding="same", kernel_initializer=init,
            bias_initializer=keras.initializers.Constant(bias), name="class_output")
        self.box_output = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer=init,
                                              name="box_output")
        self.centerness_output = keras.layers.Conv2D(1, 3, padding="same",
                                                     kernel_initializer=init,
                                                     name="centerness_output")
        # FCOS's per-level scale of the box regression (levels share the towers).
        self.level_scales = self.add_weight(name="level_scales", shape=(len(features_shape),),
                                            initializer="ones")
        self.call([keras.KerasTensor(shape) for shape in features_shape])  # builds sublayers

    def _tower(self, layers, x):
        for layer in layers:
            x = layer(x)
            if isinstance(layer, keras.layers.GroupNormalization):
                x = ops.silu(x)
        return x

    def call(self, features, return_attention=False):
        class_logits, box_deltas, centerness, maps = [], [], [], []
        for i, x in enumerate(features):
            x, spatial = self.attention[i](x, return_attention_scores=True)
            maps.append(ops.cast(spatial[..., 0], "float32"))  # (B, h, w)
            cls = self.class_output(self._tower(self.class_tower, x))  # (B, h, w, K)
            box = self._tower(self.box_tower, x)
            deltas = self.box_output(box) * ops.cast(self.level_scales[i], box.dtype)
            ctr = self.centerness_output(box)  # (B, h, w, 1)
            points = x.shape[1] * x.shape[2]
            # NHWC reshapes are row-major: point index i * w + j.
            class_logits.append(ops.reshape(cls, (-1, points, self.num_classes)))
            box_deltas.append(ops.reshape(deltas, (-1, points, 4)))
            centerness.append(ops.reshape(ctr, (-1, points)))
        outputs = {
            "class_logits": ops.cast(ops.concatenate(class_logits, axis=1), "float32"),
            "box_deltas": ops.cast(ops.concatenate(box_deltas, axis=1), "float32"),
            "centerness": ops.cast(ops.concatenate(centerness, axis=1), "float32"),
        }
        return (outputs, maps) if return_attention else outputs

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, hidden_dim=self.hidden_dim,
                      num_convs=self.num_convs, prior_probability=self.prior_probability,
                      attention_reduction=self.attention_reduction,
                      attention_kernel_size=self.attention_kernel_size)
        return config


class CropClassifier(keras.layers.Layer):
    """Second-stage classifier of box crops (normalised pixels, not backbone features).

    A small VGG-style CNN: a stride-2 ConvBNAct 3x3 (SiLU) stem, then per stage a 2x2
    max-pool and two ConvBNAct 3x3, global average pool, dropout, a linear layer to K
    logits. It reads the input pixels of each box resampled to a fixed square, so every
    object is classified at one scale, whatever its size in the image.

    Args:
        num_classes: K.
        widths: channels of the stem and of each later stage.
        dropout_rate: before the linear layer.

    Call arguments:
        crops: `(n, c, c, 3)` normalised pixels.

    Returns:
        `(n, K)` float32 logits.
    """

    def __init__(self, num_classes, widths=CROP_CLASSIFIER_WIDTHS, dropout_rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.widths = tuple(widths)
        self.dropout_rate = dropout_rate

    def build(self, input_shape):
        # A stride-2 stem, then two convs per stage: 3x cheaper than full-resolution
        # first convs at 28 px, within 1-3 points of their crop accuracy in a short test.
        first, *rest = self.widths
        self.stages = [[ConvBNAct(first, 3, 2, name="stage0_conv0")]] + [
            [ConvBNAct(w, 3, 1, name=f"stage{i}_conv{j}") for j in range(2)]
            for i, w in enumerate(rest, 1)]
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier")
        _build_sublayers(self, input_shape)

    def call(self, crops, training=None):
        x = crops
        for i, stage in enumerate(self.stages):
            if i:
                x = ops.max_pool(x, 2, 2)
            for layer in stage:
                x = layer(x, training=training)
        x = self.dropout(ops.mean(x, axis=(1, 2)), training=training)
        return ops.cast(self.classifier(x), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, widths=self.widths,
                      dropout_rate=self.dropout_rate)
        return config


# --------------------------------------------------------------------------- the model


def trim_target_slots(targets):
    """`targets` cut after the batch's last real slot (label >= 0; at least one slot).

    Targets are padded to `max_boxes` slots (32 in the `scenes` presets) while an image
    holds a few objects; denoising queries are built per slot, so the trim spares the
    decoder the padding's queries. Holes (padding between real slots) are kept, so no real
    box is lost; every loss ignores padding, so the loss is the same.
    """
    labels = targets["labels"]
    position = ops.arange(1, ops.shape(labels)[1] + 1, dtype="int32")
    last = ops.max(ops.where(labels >= 0, position[None, :], 0))
    n = ops.maximum(last, 1)
    return {key: value[:, :n] for key, value in targets.items()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Detector(keras.Model):
    """Object detector: images in, the head's raw outputs out (see the module docstring).

    Args:
        num_classes: K, labels 0..K-1.
        head: "dense" (FCOS-style, CBAM attention) or "detr".
        backbone: "cnn" (residual CNN + FPN) or "vit" (patch-8 ViT + simple pyramid).
        image_size: S, the square input size, divisible by 32.
        hidden_dim: pyramid, head and Transformer width (divisible by 4 and `num_heads`).
        num_heads, intermediate_dim, dropout_rate: Transformer blocks (DETR head, ViT).
        activation: CNN backbone activation.
        backbone_widths: CNN stage widths at strides 4, 8, 16, 32.
        num_backbone_layers, position_embedding: ViT blocks and "learned" / "sine" positions.
        num_queries, num_encoder_layers, num_decoder_layers: DETR head sizes.
        memory_stride: the pyramid level DETR attends to (8, 16 or 32).
        num_convs, attention_reduction, attention_kernel_size: dense head towers and CBAM.
        prior_probability: initial object-class probability (both heads; None: zero bias).
        no_object_weight: DETR's cross-entropy weight of the no-object class (the dense
            head ignores it).
        two_stage: DETR: queries start at the encoder's top proposals (see `DETRHead`).
        denoising_groups: DETR: noised copies of the targets as extra training queries
            (DN-DETR, see `DETRHead`); 0 = off.
        roi_crop_size: > 0 adds a second stage (either head): a `CropClassifier` of the
            input pixels in each box, resampled to this square, trained on jittered target
            boxes beside the head's loss; `detect` rescores every detection with it
            (`postprocess.rescore_with_crops`). 0 = off.
        roi_crop_weight: the crop classifier's weight w in the rescored detection score
            `score^(1 - w) * p(class | crop)^w`.
        roi_crop_widths: the crop classifier's stem and stage widths (`CropClassifier`).
        roi_crop_flip: `detect` averages the crop classifier's logits over each crop and
            its left-right mirror (test-time augmentation; twice the crops to classify).
        roi_crop_views: training classifies this many independently jittered crops of
            every target box per step (the classifier's batch grows, the detector's
            does not).
        roi_crop_context: None crops each box itself, warped to the square; a number C
            >= 0 crops the square of side (1 + 2C) x the box's longer side around its
            centre instead (`box_ops.square_context_boxes`: keeps the aspect ratio,
            shows the surroundings), in training and inference alike.
        roi_crop_classes: k > 0: `detect` also gives each detection's box the crop
            classifier's k most probable classes, then per-class NMS
            (`postprocess.rescore_with_crops`); inference only. 0 = the head's classes.
        roi_crop_scales: box scale factors: `detect` classifies each detection's box
            grown or shrunk about its centre by each factor (`box_ops.scale_boxes`) and
            averages the logits (test-time augmentation, like `roi_crop_flip`, with which
            it combines: scales x flips views). (1.0,) = the box itself.
        test_time_flip: dense head: `detect` averages the head's outputs (class and
            centerness logits, log box distances) over each image and its left-right
            mirror, point by point (`mirror_dense_outputs`), before decoding and NMS;
            inference only, twice the backbone and head work.

    Inputs: images `(B, S, S, 3)` float32, RGB 0..255.
    Outputs: the head's dict (apps/detection's data contract), float32.

    Example:
    >>> model = build_detector("dense", "cnn", num_classes=10, image_size=128)
    >>> model.compile(optimizer="adam")  # the loss is the head's: no `loss=`
    >>> model.fit(train_ds)  # (images, {"boxes": xyxy [B, M, 4], "labels": [B, M]})
    >>> model.detect(images)["boxes"]  # (B, 100, 4) normalised xyxy
    """

    def __init__(self, num_classes, head="dense", backbone="cnn", image_size=128, *,
                 hidden_dim=64, num_heads=4, intermediate_dim=256, dropout_rate=0.0,
                 activation="silu", backbone_widths=(32, 64, 128, 256), num_backbone_layers=4,
                 position_embedding="learned", num_queries=32, num_encoder_layers=1,
                 num_decoder_layers=3, memory_stride=16, num_convs=2, attention_reduction=8,
                 attention_kernel_size=7, prior_probability=0.01, no_object_weight=0.1,
                 two_stage=False, denoising_groups=0, roi_crop_size=0, roi_crop_weight=0.25,
                 roi_crop_widths=CROP_CLASSIFIER_WIDTHS, roi_crop_flip=False, roi_crop_views=1,
                 roi_crop_context=None, roi_crop_classes=0, roi_crop_scales=(1.0,),
                 test_time_flip=False, **kwargs):
        super().__init__(**kwargs)
        if head not in HEADS:
            raise ValueError(f"`head` must be one of {HEADS}; got {head!r}.")
        if backbone not in BACKBONES:
            raise ValueError(f"`backbone` must be one of {BACKBONES}; got {backbone!r}.")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}.")
        if not isinstance(image_size, int) or image_size < 32 or image_size % 32:
            raise ValueError(f"`image_size` must be a positive multiple of 32 (the coarsest "
                             f"stride); got {image_size!r}.")
        if hidden_dim % 4:
            raise ValueError(f"`hidden_dim` must be divisible by 4 (2-D sine positions); got "
                             f"{hidden_dim}.")
        if memory_stride not in STRIDES:
            raise ValueError(f"`memory_stride` must be one of {STRIDES}; got {memory_stride!r}.")
        if not isinstance(roi_crop_size, int) or roi_crop_size < 0:
            raise ValueError(f"`roi_crop_size` must be an int >= 0 (0: no crop classifier); got "
                             f"{roi_crop_size!r}.")
        roi_crop_widths = tuple(roi_crop_widths)  # JSON configs give lists
        if not roi_crop_widths or not all(isinstance(w, int) and w > 0 for w in roi_crop_widths):
            raise ValueError(f"`roi_crop_widths` must be positive ints (stem, then each stage); "
                             f"got {roi_crop_widths!r}.")
        if not isinstance(roi_crop_views, int) or roi_crop_views < 1:
            raise ValueError(f"`roi_crop_views` must be an int >= 1; got {roi_crop_views!r}.")
        if roi_crop_context is not None and not 0.0 <= roi_crop_context <= 2.0:
            raise ValueError(f"`roi_crop_context` must be None or in [0, 2] (a share of the "
                             f"box's longer side); got {roi_crop_context!r}.")
        check_inference_options(roi_crop_weight, roi_crop_classes, test_time_flip, head,
                                 roi_crop_scales)
        if prior_probability is not None and not 0.0 < prior_probability < 1.0:
            raise ValueError(f"`prior_probability` must be in (0, 1) or None; got "
                             f"{prior_probability!r}.")
        self.num_classes = num_classes
        self.head = head
        self.backbone_name = backbone
        self.image_size = image_size
        self.strides = STRIDES
        self.hparams = dict(
            hidden_dim=hidden_dim, num_heads=num_heads, intermediate_dim=intermediate_dim,
            dropout_rate=dropout_rate, activation=activation,
            backbone_widths=tuple(backbone_widths), num_backbone_layers=num_backbone_layers,
            position_embedding=position_embedding, num_queries=num_queries,
            num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers,
            memory_stride=memory_stride, num_convs=num_convs,
            attention_reduction=attention_reduction,
            attention_kernel_size=attention_kernel_size, prior_probability=prior_probability,
            no_object_weight=no_object_weight, two_stage=bool(two_stage),
            denoising_groups=int(denoising_groups), roi_crop_size=roi_crop_size,
            roi_crop_weight=float(roi_crop_weight), roi_crop_widths=roi_crop_widths,
            roi_crop_flip=bool(roi_crop_flip), roi_crop_views=roi_crop_views,
            roi_crop_context=None if roi_crop_context is None else float(roi_crop_context),
            roi_crop_classes=roi_crop_classes,
            roi_crop_scales=tuple(float(f) for f in roi_crop_scales),
            test_time_flip=bool(test_time_flip))

        # DETR reads one level: the backbone builds only what leads to it.
        levels = (memory_stride,) if head == "detr" else STRIDES
        if backbone == "cnn":
            self.backbone = CNNBackbone(hidden_dim, backbone_widths, activation, levels,
                                        name="backbone")
        else:
            self.backbone = ViTBackbone(hidden_dim, image_size, num_backbone_layers, num_heads,
                                        intermediate_dim, dropout_rate, position_embedding,
                                        levels, name="backbone")
        if head == "detr":
            self.detection_head = DETRHead(
                num_classes, hidden_dim, num_heads, intermediate_dim, dropout_rate, num_queries,
                num_encoder_layers, num_decoder_layers, prior_probability, two_stage,
                denoising_groups, name="detr_head")
            names = ("class_loss", "l1_loss", "giou_loss")
        else:
            self.detection_head = DenseHead(num_classes, hidden_dim, num_convs,
                                            prior_probability, attention_reduction,
                                            attention_kernel_size, name="dense_head")
            names = ("focal_loss", "giou_loss", "centerness_loss")
        self.crop_classifier = None
        if roi_crop_size:
            self.crop_classifier = CropClassifier(num_classes, widths=roi_crop_widths,
                                                  name="crop_classifier")
            names += ("crop_loss", "crop_accuracy")
        # Loss components as metrics: fit / evaluate log them (val_ prefixed).
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in names]

    def build(self, input_shape=None):
        # Creates every weight with one symbolic pass (also what `.keras` loading calls).
        self._forward(keras.KerasTensor((1, self.image_size, self.image_size, 3)))
        if self.crop_classifier is not None:
            size = self.hparams["roi_crop_size"]
            self.crop_classifier.build((None, size, size, 3))
        self.built = True

    def _normalise(self, images):
        mean = ops.cast(np.asarray(PIXEL_MEAN, "float32"), images.dtype)
        std = ops.cast(np.asarray(PIXEL_STD, "float32"), images.dtype)
        return (images - mean) / std

    def _forward(self, images, training=None, return_attention=False, targets=None):
        expected = (self.image_size, self.image_size, 3)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"`images` must have shape (batch, {self.image_size}, "
                             f"{self.image_size}, 3) (image_size={self.image_size}); got "
                             f"{tuple(images.shape)}.")
        # oneDNN convolutions mis-shape an empty batch (multi-worker evaluation can send
        # one): run a zero image instead and drop it.
        images, batch = nonempty_batch(ops.cast(images, self.compute_dtype))
        levels = self.backbone(self._normalise(images), training=training)
        if self.head == "detr":
            result = self.detection_head(levels[0], training=training,
                                         return_attention=return_attention, targets=targets)
        else:
            result = self.detection_head(levels, return_attention=return_attention)
        outputs, attention = result if return_attention else (result, None)
        if not isinstance(batch, int) or batch == 0:  # drop the filler row, if any
            outputs = {key: (value[:, :batch] if key.startswith(("aux_", "dn_")) else value[:batch])
                       for key, value in outputs.items()}
            if attention is not None:
                attention = ([a[:batch] for a in attention] if isinstance(attention, list)
                             else attention[:batch])
        return outputs, attention

    def call(self, images, training=None):
        targets = None
        if isinstance(images, (tuple, list)):  # (images, targets) from train_step
            images, targets = images
        return self._forward(images, training=training, targets=targets)[0]

    def train_step(self, data):
        """Keras's train step; with DETR denoising queries the model is called on
        `(images, targets)`, since those queries are built from the targets."""
        if self.head == "detr" and self.hparams["denoising_groups"]:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            y = trim_target_slots(y)
            data = keras.utils.pack_x_y_sample_weight((x, y), y, sample_weight)
        return super().train_step(data)

    def set_inference_options(self, roi_crop_weight=None, roi_crop_classes=None,
                              roi_crop_flip=None, roi_crop_scales=None, test_time_flip=None):
        """Changes how `detect` works, not the weights (None: keep).

        These options act at inference only, so they can be chosen on a validation split
        after training (`python -m apps.detection.evaluate --roi_crop_classes 2 ...`) and
        are saved with the model (`get_config`), so an export serves them.

        Raises:
            ValueError: for an option out of range, a crop classifier option on a detector
                without one, or `test_time_flip` on the DETR head.
        """
        crop = {k: v for k, v in dict(roi_crop_weight=roi_crop_weight,
                                      roi_crop_classes=roi_crop_classes,
                                      roi_crop_flip=roi_crop_flip,
                                      roi_crop_scales=roi_crop_scales).items() if v is not None}
        if crop and self.crop_classifier is None:
            raise ValueError(f"{', '.join(crop)}: this detector has no crop classifier "
                             "(trained with roi_crop_size=0).")
        check_inference_options(roi_crop_weight, roi_crop_classes, test_time_flip, self.head,
                                 roi_crop_scales)
        cast = {"roi_crop_weight": float, "roi_crop_flip": bool,
                "roi_crop_scales": lambda v: tuple(float(f) for f in v)}
        self.hparams.update({k: cast.get(k, lambda v: v)(v) for k, v in crop.items()})
        if test_time_flip is not None:
            self.hparams["test_time_flip"] = bool(test_time_flip)
        return self

    @contextlib.contextmanager
    def without_test_time_augmentation(self):
        """Inside the block `detect` runs without `test_time_flip`, `roi_crop_flip` and
        `roi_crop_scales` (training's per-epoch validation score: the extra views would
        multiply its cost inside the time budget); the options are restored on exit."""
        plain = {"test_time_flip": False, "roi_crop_flip": False, "roi_crop_scales": (1.0,)}
        saved = {k: self.hparams[k] for k in plain}
        self.hparams.update(plain)
        try:
            yield self
        finally:
            self.hparams.update(saved)

    def _flip_averaged_outputs(self, images):
        """Dense head outputs averaged over `images` and their mirrors (`test_time_flip`)."""
        images = ops.convert_to_tensor(images)
        both = self(ops.concatenate([images, ops.flip(images, axis=2)], axis=0), training=False)
        batch = ops.shape(images)[0]
        mirrored = mirror_dense_outputs({k: v[batch:] for k, v in both.items()},
                                        self.image_size, self.strides)
        return {k: 0.5 * (both[k][:batch] + mirrored[k]) for k in mirrored}

    def classify_boxes(self, images, boxes, image_index, training=False, flip=False,
                       scales=(1.0,)):
        """Crop classifier logits `(n, K)` of normalised xyxy `boxes` `(n, 4)` in
        `images[image_index]` (`images` `(B, S, S, 3)` 0..255); needs `roi_crop_size`.
        `flip`: the mean over each crop and its left-right mirror; `scales`: the mean over
        the box scaled by each factor about its centre (with `flip`: every combination),
        all views in one classifier call."""
        from apps.detection import box_ops

        if self.crop_classifier is None:
            raise ValueError("this detector has no crop classifier (roi_crop_size=0).")
        if self.hparams["roi_crop_context"] is not None:
            boxes = box_ops.square_context_boxes(boxes, self.hparams["roi_crop_context"])
        size = self.hparams["roi_crop_size"]
        # An empty set of boxes (no targets, no detections) runs one zero crop, dropped.
        per_scale = [nonempty_batch(ops.cast(box_ops.crop_boxes(
            images, boxes if f == 1.0 else box_ops.scale_boxes(boxes, f), image_index, size),
            self.compute_dtype)) for f in scales]
        n = per_scale[0][1]
        crops = ops.concatenate([c for c, _ in per_scale], axis=0)
        if flip:
            crops = ops.concatenate([crops, ops.flip(crops, axis=2)], axis=0)
        logits = self.crop_classifier(self._normalise(crops), training=training)
        num_views = len(scales) * (2 if flip else 1)
        if num_views == 1:
            return logits[:n]
        # View-major rows: (flip, scale, box); every view has the same (non-empty) rows.
        logits = ops.reshape(logits, (num_views, -1, ops.shape(logits)[-1]))
        return ops.mean(logits, axis=0)[:n]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        from apps.detection import losses  # the matcher imports scipy; only when training

        if y is None:
            raise ValueError("Detector.compute_loss needs targets `y` = {'boxes', 'labels'}.")
        if y_pred is None:
            y_pred = self(x, training=training)
        if self.head == "detr":
            parts = losses.detr_loss(y, y_pred, self.num_classes,
                                     no_object_weight=self.hparams["no_object_weight"],
                                     denoising_groups=self.hparams["denoising_groups"])
        else:
            parts = losses.dense_loss(y, y_pred, self.image_size, self.strides)
        if self.crop_classifier is not None:
            images = x[0] if isinstance(x, (tuple, list)) else x
            boxes, index, labels = losses.jittered_target_boxes(
                y, jitter=0.1 if training else 0.0,
                views=self.hparams["roi_crop_views"] if training else 1)
            logits = self.classify_boxes(images, boxes, index, training=training)
            parts.update(losses.crop_classifier_loss(labels, logits))
            parts["loss"] = parts["loss"] + parts["crop_loss"]
        for tracker in self.loss_trackers:
            tracker.update_state(parts[tracker.name])
        loss = parts["loss"]
        if self.losses:  # regularisers
            loss = loss + ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
        return loss

    def detect(self, images, max_detections=100, score_threshold=None):
        """Detections of a batch: the postprocess dict (TensorFlow ops; export-safe).

        Args:
            images: `(B, S, S, 3)` float32 0..255.
            max_detections: D, detections per image.
            score_threshold: minimum score; None: the head's default (DETR 0.0, dense 0.05).

        Returns:
            dict "boxes" `(B, D, 4)` normalised xyxy, "scores" `(B, D)` descending,
            "classes" `(B, D)` int32, "num_detections" `(B,)` int32.
        """
        from apps.detection import postprocess

        if self.hparams["test_time_flip"]:
            outputs = self._flip_averaged_outputs(images)
        else:
            outputs = self(images, training=False)
        kwargs = {} if score_threshold is None else {"score_threshold": score_threshold}
        if self.head == "detr":
            detections = postprocess.postprocess_detr(outputs, max_detections, **kwargs)
        else:
            detections = postprocess.postprocess_dense(outputs, self.image_size, self.strides,
                                                       max_detections, **kwargs)
        if self.crop_classifier is None:
            return detections
        threshold = (postprocess.DEFAULT_SCORE_THRESHOLD[self.head] if score_threshold is None
                     else score_threshold)
        return postprocess.rescore_with_crops(
            detections,
            lambda boxes, index: ops.softmax(self.classify_boxes(
                images, boxes, index, flip=self.hparams["roi_crop_flip"],
                scales=self.hparams["roi_crop_scales"])),
            crop_weight=self.hparams["roi_crop_weight"], score_threshold=threshold,
            crop_classes=self.hparams["roi_crop_classes"])

    def attention_maps(self, images):
        """Attention to draw (inference mode).

        Returns:
            DETR: the last decoder layer's cross-attention averaged over heads,
            `(B, Q, h, w)` on the memory grid (h = w = S / memory_stride).
            Dense: the CBAM spatial map of each level, `[(B, S/s, S/s)]` in stride order.
        """
        return self._forward(ops.convert_to_tensor(images, "float32"), training=False,
                             return_attention=True)[1]

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, head=self.head,
                      backbone=self.backbone_name, image_size=self.image_size, **self.hparams)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone_widths", "roi_crop_widths", "roi_crop_scales"):  # JSON: lists
            if key in config:
                config[key] = tuple(config[key])
        return cls(**config)


def hparam_names(head, backbone):
    """The hyperparameters `build_detector(head, backbone, ...)` accepts."""
    return sorted(set(DEFAULTS[head]) | set(BACKBONE_DEFAULTS[backbone]))


def build_detector(head, backbone, num_classes, image_size=128, *, no_object_weight=0.1,
                   name=None, **hparams):
    """A built `Detector`: `BACKBONE_DEFAULTS[backbone]` and `DEFAULTS[head]` (the head's
    win where both set one) updated by `hparams`.

    Raises:
        ValueError: for an unknown head or backbone, or a hyperparameter that neither the
            head nor the backbone takes (the message lists the ones they do).
    """
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {HEADS}; got {head!r}.")
    if backbone not in BACKBONES:
        raise ValueError(f"`backbone` must be one of {BACKBONES}; got {backbone!r}.")
    known = hparam_names(head, backbone)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise ValueError(f"the {head} head on a {backbone} backbone has no hyperparameter(s) "
                         f"{unknown}; it takes {known}.")
    kwargs = {**BACKBONE_DEFAULTS[backbone], **DEFAULTS[head], **hparams}
    model = Detector(num_classes, head, backbone, image_size, no_object_weight=no_object_weight,
                     name=name or f"{head}_{backbone}", **kwargs)
    model.build((None, image_size, image_size, 3))
    return model


def count_params(model):
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
