"""Export a trained ViT for TF Serving: encoded image bytes in, probabilities and top-k out.

    python -m apps.vit.export --workdir runs/vit [--version 2] [--overwrite] [--tflite]

The `serving_default` signature takes `image_bytes`, a batch of encoded images (JPEG, PNG,
BMP or GIF; any size; grey, RGB or with alpha) and does in the graph what training did in
Python: decode, drop alpha, convert grey <-> RGB as the model needs (ITU-R 601 luma),
resize to the training size (bilinear, antialiased), scale to [0, 1] and normalise with the
training mean/std. It returns `probabilities` (batch, classes), `top_k_ids`,
`top_k_probabilities` and `top_k_names` (batch, k), and `class_id` / `class_name` (batch,).

REST request (TF Serving base64-encodes binary inputs as {"b64": ...}):

    curl -d '{"instances": [{"image_bytes": {"b64": "'"$(base64 -w0 shoe.png)"'"}}]}' \
        http://localhost:8501/v1/models/vit:predict
"""

import argparse
import json
import os

import numpy as np
import tensorflow as tf

from tfattn import training

PREPROCESSING_FILE = "preprocessing.json"
LUMA = (0.299, 0.587, 0.114)  # same weights as apps.vit.data.convert_channels


def write_preprocessing(workdir, image_size, channels, mean, std, class_names):
    """Stores what serving needs to reproduce training's input processing."""
    info = {
        "image_size": int(image_size),
        "channels": int(channels),
        "mean": [float(v) for v in np.ravel(mean)],
        "std": [float(v) for v in np.ravel(std)],
        "class_names": list(class_names),
    }
    path = os.path.join(workdir, PREPROCESSING_FILE)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
    return path


def read_preprocessing(workdir):
    return training.read_json(os.path.join(workdir, PREPROCESSING_FILE),
                              "python -m apps.vit.train")


def decode_image(data, image_size, channels):
    """Encoded image bytes (scalar tf.string) -> float32 (image_size, image_size, channels) in
    [0, 255], converted and resized as the training data was."""
    image = tf.io.decode_image(data, channels=0, expand_animations=False)  # (h, w, 1..4) uint8
    image = tf.cast(image, tf.float32)
    native = tf.shape(image)[-1]
    image = tf.cond(native % 2 == 0, lambda: image[..., : native - 1], lambda: image)  # no alpha
    if channels == 1:
        image = tf.cond(
            tf.shape(image)[-1] == 3,
            lambda: tf.round(tf.reduce_sum(image * tf.constant(LUMA), -1, keepdims=True)),
            lambda: image,
        )
    else:
        image = tf.cond(
            tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image
        )
    image = tf.ensure_shape(image, [None, None, channels])
    same_size = tf.reduce_all(tf.shape(image)[:2] == image_size)
    image = tf.cond(
        same_size,
        lambda: image,
        lambda: tf.image.resize(image, (image_size, image_size), antialias=True),
    )
    return tf.reshape(image, (image_size, image_size, channels))


def make_preprocess(image_size, channels, mean, std):
    """`{"image_bytes": (batch,) tf.string}` -> normalised float images for the model."""
    mean = tf.constant(np.asarray(mean, np.float32))
    std = tf.constant(np.asarray(std, np.float32))

    def preprocess(inputs):
        images = tf.map_fn(
            lambda data: decode_image(data, image_size, channels),
            inputs["image_bytes"],
            fn_output_signature=tf.TensorSpec((image_size, image_size, channels), tf.float32),
        )
        return (images / 255.0 - mean) / std

    return preprocess


def make_postprocess(class_names, top_k):
    """Logits -> probabilities, top-k ids/probabilities/names and the top class."""
    names = tf.constant(list(class_names))
    k = min(int(top_k), len(class_names))

    def postprocess(logits):
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        top = tf.math.top_k(probabilities, k=k)
        return {
            "probabilities": probabilities,
            "top_k_ids": top.indices,
            "top_k_probabilities": top.values,
            "top_k_names": tf.gather(names, top.indices),
            "class_id": top.indices[:, 0],
            "class_name": tf.gather(names, top.indices[:, 0]),
        }

    return postprocess


def encode_png(images):
    """uint8 images (n, H, W, C) -> array of PNG byte strings (object dtype)."""
    return np.array([tf.io.encode_png(img).numpy() for img in np.asarray(images, np.uint8)], object)


def export_vit(
    model,
    export_dir,
    name,
    version,
    preprocessing,
    top_k=5,
    overwrite=False,
    verify_images=None,
):
    """Writes `<export_dir>/<name>/<version>/` with the raw-bytes `serving_default` signature.

    Args:
        model: the trained classifier (normalised float images -> logits).
        preprocessing: dict from `read_preprocessing` (image_size, channels, mean, std,
            class_names).
        verify_images: optional uint8 images (n, H, W, C); encoded as PNG and used to check
            that the reloaded SavedModel matches the Keras model (`training.verify_export`).

    Returns:
        `tfattn.training.export_for_serving`'s report.
    """
    preprocess = make_preprocess(
        preprocessing["image_size"], preprocessing["channels"], preprocessing["mean"],
        preprocessing["std"],
    )
    postprocess = make_postprocess(preprocessing["class_names"], top_k)
    verify = None if verify_images is None else {"image_bytes": encode_png(verify_images)}
    return training.export_for_serving(
        model,
        export_dir,
        name,
        version,
        input_signature={"image_bytes": tf.TensorSpec([None], tf.string)},
        preprocess=preprocess,
        postprocess=postprocess,
        overwrite=overwrite,
        verify_inputs=verify,
    )


def main(argv=None):
    import keras

    parser = argparse.ArgumentParser(
        prog="python -m apps.vit.export", description="Export a trained ViT for TF Serving."
    )
    parser.add_argument("--workdir", required=True, help="folder written by apps.vit.train")
    parser.add_argument("--model", help="a .keras file (default: <workdir>/model.keras)")
    parser.add_argument("--export_dir", help="folder of the exports (default: <workdir>/export)")
    parser.add_argument("--name", default="vit", help="model name TF Serving serves")
    parser.add_argument(
        "--version", type=int, help="SavedModel version (default: one above the newest)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    parser.add_argument("--top_k", type=int, default=5, help="classes in the top-k outputs")
    parser.add_argument("--tflite", action="store_true", help="also write a quantised TFLite model")
    args = parser.parse_args(argv)

    preprocessing = read_preprocessing(args.workdir)
    model_path = args.model or os.path.join(args.workdir, "model.keras")
    if not os.path.exists(model_path):
        parser.error(f"--model: {model_path} does not exist")
    model = keras.saving.load_model(model_path)
    export_dir = args.export_dir or os.path.join(args.workdir, "export")
    version = args.version if args.version is not None else training.next_version(export_dir, args.name)
    try:
        report = export_vit(
            model, export_dir, args.name, version, preprocessing, args.top_k, args.overwrite
        )
    except FileExistsError as err:
        parser.error(str(err))
    print(f"SavedModel: {report['path']}  inputs {report['inputs']}  outputs {report['outputs']}")
    if args.tflite:
        tflite = training.export_tflite(model, os.path.join(export_dir, f"{args.name}.tflite"))
        print(f"TFLite:     {tflite['path']} ({tflite['quantized_bytes']} bytes)")
    return report


if __name__ == "__main__":
    training.run_cli(main)
