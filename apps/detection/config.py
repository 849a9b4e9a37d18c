"""Detection app configuration: one dataclass, named presets, CLI flags from the fields.

Presets (`python -m apps.detection.train --preset NAME --workdir DIR`; any field can be
overridden, e.g. `--head detr --epochs 80`):

    test         seconds; unit tests only: a tiny generated scene set, 64 px, 2 epochs.
    scenes       the default: the Fashion-MNIST scene set (`make data-detection`), 128 px
                 letterboxed inputs, small CNN + FPN, dense FCOS-style head with CBAM
                 attention, a crop classifier rescoring its detections (32-px crops),
                 test-time flips of the head and the crops, crops at three box scales,
                 60-minute budget on 2 CPU cores.
    scenes_detr  the same data and budget for the DETR head (anchor queries, iterative box
                 refinement, auxiliary losses), the benchmark's side-by-side.
    coco         GPU scale, for your own COCO-format data: 512 px, ViT backbone (patch 8),
                 batches of 16 per replica, 50 epochs.

Your own data (COCO folder or .json, Pascal VOC folder, CSV `image,xmin,ymin,xmax,ymax,label`):

    python -m apps.detection.train --data my_coco/ --workdir runs/my_det
    python -m apps.detection.train --data boxes.csv --image_size 256 --head detr
"""

import dataclasses
from typing import Literal

from apps.detection.model import (
    BACKBONES,
    CROP_CLASSIFIER_WIDTHS,
    HEADS,
    MODEL_HPARAMS,
    check_inference_options,
    hparam_names,
)
from tfattn.training import AppConfig, config_field

Head = Literal[HEADS]
# Model counts where 0 means "none of it" (no encoder block, no denoising queries).
COUNTS_FROM_ZERO = ("num_encoder_layers", "denoising_groups", "roi_crop_size",
                    "roi_crop_classes")
Backbone = Literal[BACKBONES]


@dataclasses.dataclass
class Config(AppConfig):
    """Object detection with a dense attention head or a DETR head (tfattn detection app)."""

    workdir: str = config_field("runs/detection", AppConfig.WORKDIR_HELP)
    export_name: str = config_field("detection", AppConfig.EXPORT_NAME_HELP)
    jit_compile: bool = config_field(
        False, "compile the train step with XLA (dense head only: DETR's matcher runs scipy; "
        "off by default: on 2 CPU cores XLA trained the dense head at 37-73 img/s vs 92-96)"
    )

    # Data
    data: str = config_field(
        "data/detection/fashion_scenes", "a COCO folder or instances .json, a Pascal VOC "
        "folder, a .csv (image,xmin,ymin,xmax,ymax,label[,split]) or tfds:NAME (online)"
    )
    image_dir: str | None = config_field(None, "image folder of a COCO .json or CSV; none: beside it")
    class_names: tuple[str, ...] | None = config_field(
        None, "label order of VOC/CSV/TFDS classes; none: sorted names"
    )
    train_split: str = config_field("train", "split to train on")
    val_split: str = config_field("val", "split that picks the best checkpoint (mAP)")
    test_split: str = config_field("test", "split of the final report; absent: skipped")
    validation_fraction: float = config_field(
        0.1, "share of the training images held out when the data has no --val_split"
    )
    limit_images: int | None = config_field(
        None, "use at most this many images of each split (quick runs); none: all"
    )
    image_size: int = config_field(128, "square model input (letterboxed), divisible by 32")
    max_boxes: int = config_field(32, "box slots per image; images with more keep the largest")
    tile_size: int | None = config_field(
        None, "cut images larger than this (pixels) into overlapping tiles for training and "
        "evaluation (large images, small objects; predict with --tile); none: whole images"
    )
    tile_overlap: float = config_field(0.2, "overlap of neighbouring tiles (share of a tile)")

    # Augmentation (training only)
    flip: bool = config_field(True, "random left-right flips")
    scale_range: tuple[float, float] = config_field(
        (0.6, 1.6), "random zoom range: > 1 crops, < 1 pads; 1,1: off"
    )
    min_visible: float = config_field(0.3, "a cropped box keeps its label if this share stays in view")
    brightness: float = config_field(0.2, "random brightness/contrast change (0: off)")

    # Model
    head: Head = config_field("dense", "dense (FCOS-style with CBAM attention) or detr")
    backbone: Backbone = config_field("cnn", "cnn (small CNN + FPN) or vit (patch 8, ViTDet pyramid)")
    hidden_dim: int | None = config_field(None, "feature/decoder width; none: the head's default")
    backbone_widths: tuple[int, ...] | None = config_field(
        None, "cnn: channels of the 4 backbone stages (strides 4/8/16/32); none: default"
    )
    num_convs: int | None = config_field(
        None, "dense: 3x3 conv + GroupNorm layers in each of the class and box towers; none: default"
    )
    num_heads: int | None = config_field(None, "attention heads; none: default")
    num_queries: int | None = config_field(None, "detr: object queries; none: default")
    num_decoder_layers: int | None = config_field(None, "detr: decoder blocks; none: default")
    num_encoder_layers: int | None = config_field(
        None, "detr: encoder blocks over the memory; none: default"
    )
    dropout_rate: float | None = config_field(None, "dropout; none: default")
    two_stage: bool | None = config_field(
        None, "detr: queries start at the encoder's top proposals (two-stage); none: default (off)"
    )
    denoising_groups: int | None = config_field(
        None, "detr: training adds this many noised copies of every target box as queries "
        "that must reconstruct it (DN-DETR); none: default (0, off)"
    )
    roi_crop_size: int | None = config_field(
        None, "a second stage: a small CNN classifies each box's pixels resampled to this "
        "square (trained on jittered target boxes) and rescores the detections; none: "
        "default (0, off)"
    )
    roi_crop_widths: tuple[int, ...] | None = config_field(
        None, "with --roi_crop_size: the crop classifier's stem and stage widths; none: "
        f"default ({','.join(map(str, CROP_CLASSIFIER_WIDTHS))})"
    )
    roi_crop_flip: bool | None = config_field(
        None, "with --roi_crop_size: classify each crop and its mirror image and average "
        "(test-time flip; twice the crops at inference); none: default (off)"
    )
    roi_crop_views: int | None = config_field(
        None, "with --roi_crop_size: training classifies this many independently jittered "
        "crops of every target box per step; none: default (1)"
    )
    roi_crop_context: float | None = config_field(
        None, "with --roi_crop_size: crop the square of side (1 + 2C) x each box's longer "
        "side around its centre (aspect ratio kept, surroundings shown) instead of the box "
        "warped to a square; none: default (the box itself)"
    )
    roi_crop_classes: int | None = config_field(
        None, "with --roi_crop_size: detection also gives each box the crop classifier's "
        "k most probable classes (then per-class NMS), not only the head's; inference "
        "only; none: default (0, the head's classes)"
    )
    roi_crop_scales: tuple[float, ...] | None = config_field(
        None, "with --roi_crop_size: classify each detection's box also grown/shrunk by these "
        "factors about its centre and average (test-time augmentation, inference only; "
        "e.g. 1,1.15); none: default (1, the box itself)"
    )
    test_time_flip: bool | None = config_field(
        None, "dense: detection averages the head's outputs over each image and its mirror "
        "image (test-time flip; twice the work at inference); none: default (off)"
    )

    # Loss, decoding
    no_object_weight: float = config_field(0.1, "detr: weight of the no-object class in the CE")
    score_threshold: float | None = config_field(
        None, "detections below this score are dropped; none: the head's default"
    )
    max_detections: int = config_field(100, "detections per image (COCO evaluates 100)")

    # Optimisation
    epochs: int = config_field(60, "training epochs: the cosine schedule's length")
    batch_size: int = config_field(32, "images per batch per replica")
    learning_rate: float = config_field(
        2e-3, "peak AdamW rate on one replica, scaled linearly with the number of replicas"
    )
    weight_decay: float = config_field(1e-4, "AdamW decoupled weight decay")
    warmup_epochs: float = config_field(1.0, "linear warm-up before the cosine decay, epochs")
    min_learning_rate: float = config_field(1e-5, "rate at the end of the cosine decay")
    gradient_clip_norm: float | None = config_field(10.0, "global gradient norm clip; none: off")
    eval_every_epochs: int = config_field(
        2, "COCO mAP on the validation split every n epochs (and the last): picks the best "
        "checkpoint, logged as val_map/val_ap50"
    )
    eval_images: int | None = config_field(
        500, "validation images behind the per-epoch mAP; none: all"
    )
    early_stopping_patience: int | None = config_field(
        None, "stop after this many mAP evaluations without improvement; none: off"
    )

    # Logging
    sample_images: int = config_field(
        4, "validation images whose boxes (and attention maps) TensorBoard shows"
    )
    image_every_epochs: int = config_field(5, "log TensorBoard images every n epochs and after the last")

    def __post_init__(self):
        super().__post_init__()
        for name in ("epochs", "batch_size", "max_boxes", "max_detections",
                     "eval_every_epochs", "image_every_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1; got {getattr(self, name)}.")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"`image_size` must be a multiple of 32 (the coarsest feature "
                             f"stride); got {self.image_size}.")
        for name in ("limit_images", "eval_images", *MODEL_HPARAMS):
            value = getattr(self, name)
            low = 0 if name in COUNTS_FROM_ZERO else 1
            if isinstance(value, int) and not isinstance(value, bool) and value < low:
                raise ValueError(f"`{name}` must be >= {low} or none; got {value}.")
        if self.tile_size is not None and self.tile_size < 32:
            raise ValueError(f"`tile_size` must be >= 32 pixels or none; got {self.tile_size}.")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ValueError(f"`tile_overlap` must be in [0, 1); got {self.tile_overlap}.")
        for name in ("validation_fraction", "min_visible", "brightness"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1]; got {getattr(self, name)}.")
        known = hparam_names(self.head, self.backbone)
        unused = [n for n in MODEL_HPARAMS if getattr(self, n) is not None and n not in known]
        if unused:
            raise ValueError(
                f"--head {self.head} on --backbone {self.backbone} has no "
                f"{', '.join('--' + n for n in unused)}; of the model flags it takes "
                f"{', '.join('--' + n for n in MODEL_HPARAMS if n in known)}.")
        if self.jit_compile and self.roi_crop_size:
            raise ValueError("--roi_crop_size crops a dynamic number of boxes, which XLA does "
                             "not compile: drop --jit_compile or set --roi_crop_size 0.")
        if not self.roi_crop_size and (self.roi_crop_widths is not None
                                       or self.roi_crop_flip is not None
                                       or self.roi_crop_views is not None
                                       or self.roi_crop_context is not None
                                       or self.roi_crop_classes is not None
                                       or self.roi_crop_scales is not None):
            raise ValueError("--roi_crop_widths, --roi_crop_flip, --roi_crop_views, "
                             "--roi_crop_context, --roi_crop_classes and --roi_crop_scales "
                             "configure the crop classifier: add --roi_crop_size N (N > 0).")
        check_inference_options(roi_crop_scales=self.roi_crop_scales)
        if self.roi_crop_widths is not None and (
                not self.roi_crop_widths or min(self.roi_crop_widths) < 1):
            raise ValueError(f"`roi_crop_widths` must be positive widths (stem, then each "
                             f"stage); got {self.roi_crop_widths}.")
        if self.roi_crop_context is not None and not 0.0 <= self.roi_crop_context <= 2.0:
            raise ValueError(f"`roi_crop_context` must be in [0, 2] (a share of the box's "
                             f"longer side) or none; got {self.roi_crop_context}.")
        if self.backbone_widths is not None and (
                len(self.backbone_widths) != 4 or min(self.backbone_widths) < 1):
            raise ValueError(f"`backbone_widths` must be 4 positive stage widths (strides 4, 8, "
                             f"16, 32); got {self.backbone_widths}.")
        if self.dropout_rate is not None and not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"`dropout_rate` must be in [0, 1); got {self.dropout_rate}.")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"`scale_range` must be 0 < low <= high; got {self.scale_range}.")
        if not 0.0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be in [0, epochs={self.epochs}); got {self.warmup_epochs}.")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0; got {self.learning_rate}.")
        if self.score_threshold is not None and not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"`score_threshold` must be in [0, 1); got {self.score_threshold}.")

    def model_hparams(self):
        """Model hyperparameters given on the command line (unset ones keep the defaults)."""
        return {n: getattr(self, n) for n in MODEL_HPARAMS if getattr(self, n) is not None}


PRESETS = {
    "test": {
        "image_size": 64, "epochs": 2, "batch_size": 4, "hidden_dim": 32, "max_boxes": 8, "eval_every_epochs": 1,
        "eval_images": None, "sample_images": 2, "image_every_epochs": 1, "warmup_epochs": 0.0,
        "scale_range": (0.8, 1.25), "verbose": 0,
    },
    # Test-time flips of the head and the crops (AP50 +0.007, AP +0.021 on two 60-minute
    # runs) and crops of each box at 0.9/1/1.1 its size (AP50 +0.002, AP +0.002 over the
    # flips): chosen on validation (apps/detection/README.md), inference only.
    "scenes": {"time_budget_minutes": 60.0, "roi_crop_size": 32, "roi_crop_flip": True,
               "roi_crop_scales": (0.9, 1.0, 1.1), "test_time_flip": True},
    "scenes_detr": {
        "head": "detr", "time_budget_minutes": 60.0, "learning_rate": 4e-4,
        "gradient_clip_norm": 0.1, "warmup_epochs": 2.0, "two_stage": True,
    },
    "coco": {
        "data": "tfds:coco/2017", "image_size": 512, "backbone": "vit", "batch_size": 16,
        "epochs": 50, "max_boxes": 100, "eval_images": 1000, "learning_rate": 5e-4,
        "precision": "mixed_bfloat16",
    },
}
