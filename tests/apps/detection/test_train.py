"""The detection app end to end on a few generated scenes, both heads: train, TensorBoard
output, COCO evaluation, export (image bytes of any size -> boxes), REST, and the
predict/evaluate/export command lines."""

import base64
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from apps.detection import export as dex
from apps.detection import train as dtrain
from apps.detection.config import PRESETS, Config
from apps.detection.evaluate import predict_split
from apps.detection.model import build_detector
from tfattn import training

pytestmark = pytest.mark.xdist_group("detection_e2e")  # one worker trains the shared runs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


@pytest.fixture(scope="module", params=["dense", "detr"])
def run(request, e2e_scenes, tmp_path_factory):
    # The dense run carries the crop classifier (the `scenes` preset's second stage), so
    # its export, REST and CLIs are checked with it; DETR's runs without.
    extra = {"roi_crop_size": 16} if request.param == "dense" else {}
    cfg = Config(**PRESETS["test"], **extra, head=request.param, data=e2e_scenes,
                 workdir=str(tmp_path_factory.mktemp(request.param) / "run"))
    return cfg, dtrain.run(cfg)


def _tags(root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for folder, _, files in os.walk(root):
        if any(f.startswith("events.") for f in files):
            acc = EventAccumulator(folder, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
            acc.Reload()
            for kind in ("images", "scalars", "tensors"):
                tags |= set(acc.Tags().get(kind, []))
    return tags


def test_run_writes_summary_evaluation_and_tensorboard(run):
    cfg, summary = run
    assert summary["epochs_run"] == 2
    for split in ("val", "test"):
        assert {"map", "ap50", "ap75", "ap_small", "ar100", "agnostic_map",
                "agnostic_ap50"} <= set(summary[split])
        assert all(0.0 <= v <= 1.0 or v == -1.0 for v in summary[split].values())
        folder = os.path.join(cfg.workdir, "evaluation", split)
        assert sorted(os.listdir(folder)) == [
            "confusion.csv", "detections.json", "metrics.json", "per_class.csv"]
        with open(os.path.join(folder, "confusion.csv")) as f:
            rows = list(csv.reader(f))
        assert len(rows) == 11 and rows[0][-1] == "missed" and len(rows[1]) == 12
    with open(os.path.join(cfg.workdir, "evaluation", "test", "detections.json")) as f:
        detections = json.load(f)
    if detections:  # COCO results format with the source's image and category ids
        assert {"image_id", "category_id", "bbox", "score"} == set(detections[0])
        assert 1 <= detections[0]["category_id"] <= 10
    tags = _tags(os.path.join(cfg.workdir, "tensorboard"))
    assert {"epoch_loss", "epoch_map", "epoch_ap50", "boxes", "attention"} <= tags, tags
    loss_parts = {"dense": "epoch_focal_loss", "detr": "epoch_giou_loss"}[cfg.head]
    assert loss_parts in tags, tags


def test_saved_model_matches_python_on_any_size_and_rest(run, e2e_scenes):
    cfg, summary = run
    _, model, meta = dex.load_run(cfg.workdir)
    loaded = tf.saved_model.load(summary["saved_model"])
    fn = loaded.signatures["serving_default"]
    from apps.detection.train import load_data

    data = load_data(cfg)
    split = data.split("test")
    images = [split.load_image(i) for i in range(3)]
    # Other people's images: grey, RGBA, a large one.
    images.append(np.asarray(Image.fromarray(images[0]).convert("L").resize((150, 90))))
    rgba = np.concatenate([images[1], np.full(images[1].shape[:2] + (1,), 255, np.uint8)], -1)
    images.append(rgba)
    encoded = [dex.encode_png(im if im.ndim == 3 else im[..., None]) for im in images]
    out = {k: v.numpy() for k, v in fn(images=tf.constant(encoded)).items()}
    assert set(out) == {"detection_boxes", "detection_scores", "detection_classes",
                        "detection_class_names", "num_detections"}
    assert out["detection_boxes"].shape == (5, cfg.max_detections, 4)
    assert np.all((out["detection_boxes"] >= 0) & (out["detection_boxes"] <= 1))
    # Python reference for the first three (same pipeline, boxes in original pixels).
    reference = predict_split(model, split, cfg.image_size, limit=3,
                              max_detections=cfg.max_detections,
                              score_threshold=cfg.score_threshold)
    for i, (boxes, scores, labels) in enumerate(reference):
        n = int(out["num_detections"][i])
        assert n == len(scores)
        np.testing.assert_allclose(out["detection_scores"][i, :n], scores, atol=1e-4)
        height, width = split.image_sizes[i]
        ymin, xmin, ymax, xmax = out["detection_boxes"][i, :n].T
        np.testing.assert_allclose(np.stack([xmin * width, ymin * height, xmax * width,
                                             ymax * height], -1), boxes, atol=0.05)
        ids = [meta["category_ids"][k] for k in labels]
        assert out["detection_classes"][i, :n].tolist() == ids
        names = [meta["class_names"][k] for k in labels]
        assert [s.decode() for s in out["detection_class_names"][i, :n]] == names
        assert np.all(out["detection_scores"][i, n:] == 0)
    body = {"instances": [{"images": {"b64": base64.b64encode(encoded[0]).decode()}}]}
    rest = training.call_like_rest(loaded, body)
    got = rest["predictions"][0]
    np.testing.assert_allclose(got["detection_scores"], out["detection_scores"][0], atol=1e-5)


def test_predict_evaluate_and_export_clis(run, e2e_scenes, tmp_path):
    cfg, summary = run
    folder = tmp_path / "mine"
    folder.mkdir()
    src = os.path.join(e2e_scenes, "images")
    for name in sorted(os.listdir(src))[:2]:
        Image.open(os.path.join(src, name)).convert("RGB").save(folder / (name[:-4] + ".jpg"))
    (folder / "broken.png").write_bytes(b"not an image")
    big = np.asarray(Image.open(os.path.join(src, sorted(os.listdir(src))[0])).resize((300, 260)))
    Image.fromarray(big).save(folder / "big.png")
    out = tmp_path / "pred"
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "apps.detection.predict", "--export", summary["saved_model"],
         "--images", str(folder), "--out", str(out), "--score_threshold", "0.0",
         "--tile", "128"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 1 unreadable files" in proc.stdout
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 3 and {r["width"] for r in records} >= {300}
    assert (out / "predictions.csv").read_text().startswith("image,xmin,ymin,xmax,ymax,label,score")
    assert len(list(out.glob("*.png"))) == 3
    proc = subprocess.run(
        [sys.executable, "-m", "apps.detection.evaluate", "--workdir", cfg.workdir,
         "--split", "val", "--out", str(tmp_path / "ev")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["map"] == pytest.approx(summary["val"]["map"], abs=1e-6)
    assert metrics["agnostic_map"] == pytest.approx(summary["val"]["agnostic_map"], abs=1e-6)
    assert "class-agnostic: AP" in proc.stdout and "objects given their own class" in proc.stdout
    assert (tmp_path / "ev" / "confusion.csv").exists()
    # Inference options, chosen after training (dense: it has a crop classifier).
    proc = subprocess.run(
        [sys.executable, "-m", "apps.detection.evaluate", "--workdir", cfg.workdir,
         "--split", "val", "--out", str(tmp_path / "ev2"), "--roi_crop_classes", "2",
         "--roi_crop_weight", "0.5", "--test_time_flip", "true", "--roi_crop_scales", "1,1.2"],
        capture_output=True,
        text=True, env=env, cwd=REPO, timeout=300)
    if cfg.head == "dense":
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "--roi_crop_classes 2" in proc.stdout and "--roi_crop_weight 0.5" in proc.stdout
        assert "--test_time_flip True" in proc.stdout and "--roi_crop_scales (1.0, 1.2)" in proc.stdout
        assert (tmp_path / "ev2" / "metrics.json").exists()
    else:
        assert proc.returncode != 0 and "no crop classifier" in proc.stderr, proc.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "apps.detection.export", "--workdir", cfg.workdir,
         "--export_dir", str(tmp_path / "exp"), "--version", "3"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.exists(tmp_path / "exp" / cfg.export_name / "3" / dex.META_FILE)


def test_config_counts_that_may_be_zero(tmp_path):
    # 0 denoising groups / encoder blocks mean "none" (the model's own meaning); other
    # counts still need >= 1, and negatives are refused with the field's name.
    base = dict(PRESETS["test"], head="detr", workdir=str(tmp_path / "run"))
    cfg = Config(**base, denoising_groups=0, num_encoder_layers=0)
    assert cfg.model_hparams()["denoising_groups"] == 0
    with pytest.raises(ValueError, match=r"`denoising_groups` must be >= 0 or none; got -1"):
        Config(**base, denoising_groups=-1)
    with pytest.raises(ValueError, match=r"`num_queries` must be >= 1 or none; got 0"):
        Config(**base, num_queries=0)


def test_config_model_widths(tmp_path):
    # --backbone_widths / --num_convs reach the model; a wrong count or width is refused
    # by name, and a head that has no towers refuses --num_convs.
    base = dict(PRESETS["test"], workdir=str(tmp_path / "run"))
    cfg = Config(**base, backbone_widths=(8, 16, 24, 32), num_convs=1)
    model = build_detector(cfg.head, cfg.backbone, 3, cfg.image_size, **cfg.model_hparams())
    assert model.get_config()["backbone_widths"] == (8, 16, 24, 32)
    assert len(model.detection_head.class_tower) == 2  # one conv + one GroupNorm
    with pytest.raises(ValueError, match=r"`backbone_widths` must be 4 positive"):
        Config(**base, backbone_widths=(8, 16, 32))
    with pytest.raises(ValueError, match=r"--head detr on --backbone cnn has no --num_convs"):
        Config(**dict(base, head="detr"), num_convs=2)
    with pytest.raises(ValueError, match=r"--head detr on --backbone cnn has no --test_time_flip"):
        Config(**dict(base, head="detr"), test_time_flip=True)
    cfg = Config(**base, test_time_flip=True)
    assert build_detector(cfg.head, cfg.backbone, 3, cfg.image_size,
                          **cfg.model_hparams()).hparams["test_time_flip"]


def test_config_roi_crop_size(tmp_path):
    # --roi_crop_size adds the crop classifier on either head; XLA cannot compile its
    # dynamic number of crops, so the pair is refused by name.
    base = dict(PRESETS["test"], workdir=str(tmp_path / "run"))
    for head in ("dense", "detr"):
        cfg = Config(**dict(base, head=head), roi_crop_size=16)
        model = build_detector(cfg.head, cfg.backbone, 3, cfg.image_size, **cfg.model_hparams())
        assert model.crop_classifier is not None and model.get_config()["roi_crop_size"] == 16
    assert build_detector("dense", "cnn", 3, 64).crop_classifier is None
    with pytest.raises(ValueError, match=r"--roi_crop_size .* --jit_compile"):
        Config(**base, roi_crop_size=16, jit_compile=True)
    with pytest.raises(ValueError, match=r"`roi_crop_size` must be >= 0"):
        Config(**base, roi_crop_size=-1)
    for flag in (dict(roi_crop_flip=True), dict(roi_crop_widths=(8, 16)), dict(roi_crop_views=2),
                 dict(roi_crop_context=0.1), dict(roi_crop_classes=2),
                 dict(roi_crop_scales=(1.0, 1.2))):
        with pytest.raises(ValueError, match=r"add --roi_crop_size"):
            Config(**base, **flag)
    with pytest.raises(ValueError, match=r"`roi_crop_widths` must be positive"):
        Config(**base, roi_crop_size=16, roi_crop_widths=(8, 0))
    with pytest.raises(ValueError, match=r"`roi_crop_views` must be >= 1"):
        Config(**base, roi_crop_size=16, roi_crop_views=0)
    with pytest.raises(ValueError, match=r"`roi_crop_classes` must be >= 0"):
        Config(**base, roi_crop_size=16, roi_crop_classes=-1)
    cfg = Config(**base, roi_crop_size=16, roi_crop_classes=2)
    assert build_detector("dense", "cnn", 3, 64, **cfg.model_hparams()).hparams[
        "roi_crop_classes"] == 2
    with pytest.raises(ValueError, match=r"`roi_crop_scales` must be one or more box scale"):
        Config(**base, roi_crop_size=16, roi_crop_scales=(1.0, 3.0))
    cfg = Config(**base, roi_crop_size=16, roi_crop_scales=(1.0, 1.2))
    assert build_detector("dense", "cnn", 3, 64, **cfg.model_hparams()).hparams[
        "roi_crop_scales"] == (1.0, 1.2)
    with pytest.raises(ValueError, match=r"`roi_crop_context` must be in \[0, 2\]"):
        Config(**base, roi_crop_size=16, roi_crop_context=2.5)
    cfg = Config(**base, roi_crop_size=16, roi_crop_widths=(8, 16), roi_crop_flip=True,
                 roi_crop_views=3, roi_crop_context=0.1)
    model = build_detector(cfg.head, cfg.backbone, 3, cfg.image_size, **cfg.model_hparams())
    assert model.crop_classifier.widths == (8, 16) and model.hparams["roi_crop_flip"]
    assert model.hparams["roi_crop_views"] == 3 and model.hparams["roi_crop_context"] == 0.1
