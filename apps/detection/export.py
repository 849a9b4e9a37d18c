"""Export a trained detector for TF Serving: encoded images of any size in, boxes out.

    python -m apps.detection.export --workdir runs/detection [--version 2] [--overwrite]

Signature `serving_default` (decoding, letterboxing, the model, box decoding/NMS and the
map back to each original image all in the graph):

    images                 string  (batch,)         encoded PNG/JPEG/BMP/GIF files, any
                                                    size, grey/RGB/RGBA
  returns the TF Object Detection API's outputs:
    detection_boxes        float32 (batch, D, 4)    [ymin, xmin, ymax, xmax] normalised
                                                    by each ORIGINAL image's height/width
    detection_scores       float32 (batch, D)       descending; 0 past num_detections
    detection_classes      float32 (batch, D)       the source's category ids (COCO ids;
                                                    1..K for VOC/CSV), as the OD API
    detection_class_names  string  (batch, D)       "" past num_detections
    num_detections         float32 (batch,)         as the OD API

`detection_meta.json` next to the model lists the classes, input size and head.

REST (TF Serving row format; image bytes base64-encoded):

    curl -d '{"instances": [{"images": {"b64": "iVBORw0KG..."}}]}' \\
        http://localhost:8501/v1/models/detection:predict
"""

import argparse
import os

import keras
import numpy as np
import tensorflow as tf

from apps.detection.model import INFERENCE_OPTIONS
from apps.detection.pipeline import decode_image, letterbox_tf
from apps.detection.postprocess import DEFAULT_SCORE_THRESHOLD
from tfattn import training
from tfattn.training.config import parse_value

META_FILE = "detection_meta.json"


def detection_meta(cfg, class_names, category_ids):
    return {"class_names": list(class_names), "category_ids": [int(c) for c in category_ids],
            "image_size": cfg.image_size, "head": cfg.head, "backbone": cfg.backbone,
            "max_detections": cfg.max_detections,
            "signatures": {"serving_default": ["images"]}}


class ServingDetector(keras.Model):
    """The exported computation over letterboxed inputs: detect, then map boxes back to
    the original images and name the classes (wraps a trained `Detector`)."""

    def __init__(self, detector, class_names, category_ids, max_detections=100,
                 score_threshold=None, **kwargs):
        super().__init__(**kwargs)
        self.detector = detector
        self.image_size = detector.image_size
        self.class_names = tf.constant(list(class_names))
        self.category_ids = tf.constant([float(c) for c in category_ids], tf.float32)
        self.max_detections, self.score_threshold = max_detections, score_threshold

    def call(self, inputs, training=False):
        det = self.detector.detect(inputs["images"], max_detections=self.max_detections,
                                   score_threshold=self.score_threshold)
        scale = inputs["scale"][:, None, :]  # (B, 1, 2) [sx, sy]
        offset = inputs["offset"][:, None, :]
        size_xy = inputs["size"][:, None, ::-1]  # (B, 1, 2) original [w, h]
        boxes = det["boxes"] * self.image_size  # input pixels, xyxy
        lo = (boxes[..., :2] - offset) / scale / size_xy
        hi = (boxes[..., 2:] - offset) / scale / size_xy
        lo, hi = tf.clip_by_value(lo, 0.0, 1.0), tf.clip_by_value(hi, 0.0, 1.0)
        valid = tf.sequence_mask(det["num_detections"], tf.shape(det["scores"])[1])
        yxyx = tf.stack([lo[..., 1], lo[..., 0], hi[..., 1], hi[..., 0]], axis=-1)
        classes = tf.cast(det["classes"], tf.int32)
        return {
            "detection_boxes": tf.where(valid[..., None], yxyx, 0.0),
            "detection_scores": tf.where(valid, det["scores"], 0.0),
            "detection_classes": tf.where(valid, tf.gather(self.category_ids, classes), 0.0),
            "detection_class_names": tf.where(valid, tf.gather(self.class_names, classes), ""),
            "num_detections": tf.cast(det["num_detections"], tf.float32),
        }


def preprocess_bytes(image_size):
    """{"images": string (B,)} -> the `ServingDetector` inputs."""

    def one(data):
        image = decode_image(data)
        canvas, scale, offset = letterbox_tf(image, image_size)
        return canvas, scale, offset, tf.cast(tf.shape(image)[:2], tf.float32)

    def preprocess(inputs):
        canvas, scale, offset, size = tf.map_fn(
            one, inputs["images"], fn_output_signature=(
                tf.TensorSpec((image_size, image_size, 3), tf.float32),
                tf.TensorSpec((2,), tf.float32), tf.TensorSpec((2,), tf.float32),
                tf.TensorSpec((2,), tf.float32)))
        return {"images": canvas, "scale": scale, "offset": offset, "size": size}

    return preprocess


def encode_png(image):
    """uint8 (h, w, c) -> PNG bytes (for verification inputs and tests)."""
    return tf.io.encode_png(np.asarray(image, np.uint8)).numpy()


def detections_compare(score_threshold, tie=1e-4):
    """`verify_export`'s `compare` for detection outputs, which elementwise tolerance
    cannot judge: two detections whose scores agree to the last bits (an untrained model
    has many) can come out of NMS in either order, and the one kept first suppresses its
    overlapping rival, so everything after such a tie may legitimately differ between the
    Python model and the SavedModel (other kernels, other batch sizes).

    Per image: the top score always matches; the rows before the first near-tie (scores
    within `tie` of a neighbour) match in score, box, class and name; the counts match
    unless a tie came first or a score sits within `tie` of `score_threshold`.
    Returns the max abs diff per output over the rows compared.
    """

    def compare(got, want, atol, rtol):
        diffs = dict.fromkeys(want, 0.0)

        def check(key, a, b, close=True):
            if close:
                diff = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                                    initial=0.0))
                ok = np.allclose(a, b, atol=atol, rtol=rtol)
            else:
                diff, ok = 0.0, np.array_equal(a, b)
            if not ok:
                raise AssertionError(f"Exported output {key!r} differs from the model "
                                     f"(image {i}): {a!r} vs {b!r}.")
            diffs[key] = max(diffs[key], diff)

        for i in range(len(want["num_detections"])):
            n_got, n_want = int(got["num_detections"][i]), int(want["num_detections"][i])
            g, w = got["detection_scores"][i], want["detection_scores"][i]
            if n_got and n_want:
                check("detection_scores", g[:1], w[:1])
            elif n_got or n_want:
                if max(g[0], w[0]) - score_threshold > tie:
                    raise AssertionError(f"Exported 'num_detections' {n_got} vs {n_want} (image {i}).")
                continue
            tied = np.flatnonzero(np.diff(w[:n_want]) > -tie)  # rows i, i+1 within tie
            stable = min(n_got, n_want, tied[0] if len(tied) else n_want)
            rows = slice(0, stable)
            check("detection_scores", g[rows], w[rows])
            check("detection_boxes", got["detection_boxes"][i][rows], want["detection_boxes"][i][rows])
            check("detection_classes", got["detection_classes"][i][rows],
                  want["detection_classes"][i][rows], close=False)
            check("detection_class_names", got["detection_class_names"][i][rows],
                  want["detection_class_names"][i][rows], close=False)
            near_threshold = min(g[n_got - 1], w[n_want - 1]) - score_threshold <= tie
            if n_got != n_want and not len(tied) and not near_threshold:
                raise AssertionError(f"Exported 'num_detections' {n_got} vs {n_want} (image {i}).")
        return diffs

    return compare


def export_detector(detector, export_dir, name, version, meta, overwrite=False,
                    verify_images=None, score_threshold=None):
    """Writes `<export_dir>/<name>/<version>/` (+ detection_meta.json); returns the report.

    `verify_images`: uint8 images checked through the reloaded SavedModel against the
    Python model (via `verify_export`)."""
    server = ServingDetector(detector, meta["class_names"], meta["category_ids"],
                             meta["max_detections"], score_threshold)
    preprocess = preprocess_bytes(meta["image_size"])
    verify = None
    if verify_images is not None and len(verify_images):
        verify = {"images": np.array([encode_png(im) for im in verify_images], dtype=object)}
    server(preprocess({"images": tf.constant(verify["images"] if verify else
                                            [encode_png(np.zeros((8, 8, 3), np.uint8))])}))
    report = training.export_for_serving(
        server, export_dir, name, version,
        input_signature={"images": tf.TensorSpec([None], tf.string, name="images")},
        preprocess=preprocess, overwrite=overwrite, verify_inputs=verify, save_keras=False,
        compare=detections_compare(DEFAULT_SCORE_THRESHOLD[detector.head] if score_threshold is None
                                   else score_threshold))
    training.write_json(os.path.join(report["path"], META_FILE), meta)
    return report


def add_inference_args(parser):
    """The inference options (`Detector.set_inference_options`) as flags."""
    group = parser.add_argument_group("inference options (default: the run's)")
    group.add_argument("--test_time_flip", type=lambda text: parse_value("test_time_flip", bool, text),
                       default=None, help="dense head: average its outputs over each image "
                       "and its mirror image (true/false)")
    group.add_argument("--roi_crop_weight", type=float, default=None,
                       help="weight w of the crop's class probability in score^(1-w) * p^w")
    group.add_argument("--roi_crop_classes", type=int, default=None,
                       help="also give each box the crop classifier's k likeliest classes (0: off)")
    group.add_argument("--roi_crop_flip", type=lambda text: parse_value("roi_crop_flip", bool, text), default=None,
                       help="average each crop's logits with its mirror image's (true/false)")
    group.add_argument("--roi_crop_scales",
                       type=lambda text: parse_value("roi_crop_scales", tuple[float, ...], text),
                       default=None, help="average each crop's logits over its box scaled by "
                       "these factors about its centre (e.g. 1,1.15; 1: off)")


def apply_inference_args(detector, args):
    """Applies `add_inference_args` flags to `detector`; returns the options changed."""
    options = {k: getattr(args, k) for k in INFERENCE_OPTIONS if getattr(args, k) is not None}
    try:
        detector.set_inference_options(**options)
    except ValueError as error:
        raise ValueError(f"--{' --'.join(options)}: {error}") from None
    return options


def load_run(workdir, model_path=None):
    """(config, detector, meta) of a training run's folder."""
    from apps.detection.config import Config

    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"--workdir: {config_path} does not exist (run apps.detection.train first)")
    cfg = training.load_config(Config, config_path)
    model_path = model_path or os.path.join(workdir, "model.keras")
    if not os.path.exists(model_path):
        raise ValueError(f"--model: {model_path} does not exist (training did not finish?)")
    meta = training.read_json(os.path.join(workdir, META_FILE), "apps.detection.train")
    return cfg, keras.saving.load_model(model_path, compile=False), meta


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m apps.detection.export",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="folder written by apps.detection.train")
    parser.add_argument("--model", help="a .keras file (default: <workdir>/model.keras)")
    parser.add_argument("--export_dir", help="folder of the exports (default: <workdir>/export)")
    parser.add_argument("--name", default=None, help="model name TF Serving serves (default: the run's)")
    parser.add_argument("--version", type=int, help="SavedModel version (default: one above the newest)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    add_inference_args(parser)
    args = parser.parse_args(argv)
    cfg, detector, meta = load_run(args.workdir, args.model)
    apply_inference_args(detector, args)
    export_dir = args.export_dir or os.path.join(args.workdir, "export")
    name = args.name or cfg.export_name
    version = args.version or training.next_version(export_dir, name)
    report = export_detector(detector, export_dir, name, version, meta, args.overwrite,
                             score_threshold=cfg.score_threshold)
    print(f"exported {report['path']} (inputs {report['inputs']}, outputs {report['outputs']})")
    return report


if __name__ == "__main__":
    training.run_cli(main)
