"""End to end on real Fashion-MNIST (Debian files, installed by `make data`): train a tiny
ViT, check TensorBoard output, evaluate, export, serve image bytes, predict files."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from apps.vit import data as vd
from apps.vit import evaluate as vit_evaluate
from apps.vit import export as vit_export
from apps.vit import predict as vit_predict
from apps.vit import train as vit_train
from apps.vit.config import PRESETS, Config
from tests.killing import run_killed_after_epoch
from tfattn import training

pytestmark = pytest.mark.xdist_group("vit_e2e")  # one worker trains the shared model once

FASHION_MNIST_PRESENT = all(
    os.path.exists(os.path.join(vd.FASHION_MNIST_DIR, f)) for f in vd.FASHION_MNIST_FILES.values()
)


def _require_data():
    assert FASHION_MNIST_PRESENT, (
        f"Fashion-MNIST IDX files missing in {vd.FASHION_MNIST_DIR}: run `make data` "
        "(installs the Debian package dataset-fashion-mnist)."
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    _require_data()
    workdir = str(tmp_path_factory.mktemp("vit") / "run")
    cfg = Config(
        **dict(PRESETS["test"], max_train_examples=3000, epochs=3, hidden_dim=32, num_heads=2,
               intermediate_dim=64, patch_size=4, num_layers=2, learning_rate=3e-3,
               image_every_epochs=2),
        workdir=workdir,
    )
    summary = vit_train.run(cfg)
    return cfg, summary


def _event_tags(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(directory, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags.get("images", [])) | set(tags.get("scalars", [])) | set(tags.get("tensors", []))


def _scalars_of(directory, tag):
    """{step: value} of a scalar written with tf.summary (stored as tensors)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def test_training_outputs(trained):
    cfg, summary = trained
    workdir = cfg.workdir
    assert summary["epochs_run"] == 3 and summary["resumed_from_epoch"] == 0
    assert summary["test_accuracy"] > 0.45, summary  # 10 classes: chance is 0.1
    assert 0.0 <= summary["input_wait"]["fraction"] <= 1.0
    for name in ("config.json", "preprocessing.json", "model.keras", "summary.json",
                 "checkpoints/best.keras"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert not os.path.exists(os.path.join(workdir, "backup"))  # removed when fit completes
    assert os.path.exists(os.path.join(summary["saved_model"], "saved_model.pb"))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["hidden_dim"] == 32


def test_tensorboard_has_scalars_attention_and_app_images(trained):
    cfg, _ = trained
    images = _event_tags(os.path.join(cfg.workdir, "tensorboard", "images"))
    assert {"attention/last_layer", "attention/rollout", "confusion_matrix", "misclassified"} <= images
    # image_every_epochs=2 over 3 epochs: epoch 2 (step 1), and the last epoch (step 2).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(cfg.workdir, "tensorboard", "images"),
                           size_guidance={"tensors": 0})
    acc.Reload()
    for tag in ("attention/rollout", "confusion_matrix", "misclassified"):
        assert [e.step for e in acc.Tensors(tag)] == [1, 2], tag
    train_tags = _event_tags(os.path.join(cfg.workdir, "tensorboard", "train"))
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= train_tags
    assert "epoch_input_wait_fraction" in train_tags


def _serving_matches_python(workdir, saved_model, data, images):
    """Sends PNG bytes of `images` to the export's serving_default and checks it returns
    the reloaded Keras model's probabilities; returns (signature, outputs, probabilities)."""
    import keras

    prep = vit_export.read_preprocessing(workdir)
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"))
    python_logits = vit_evaluate.predict_logits(model, images, prep["mean"], prep["std"])
    python_probs = tf.nn.softmax(python_logits).numpy()

    fn = tf.saved_model.load(saved_model).signatures["serving_default"]
    out = fn(image_bytes=tf.constant(list(vit_export.encode_png(images))))
    np.testing.assert_allclose(out["probabilities"].numpy(), python_probs, atol=1e-5)
    np.testing.assert_array_equal(out["class_id"].numpy(), python_probs.argmax(-1))
    return fn, out, python_probs


def test_serving_bytes_match_python_predictions(trained):
    cfg, summary = trained
    data = vd.load_dataset("fashion_mnist", validation_fraction=0.1, seed=0)
    images = data.x_test[:16]
    fn, out, python_probs = _serving_matches_python(
        cfg.workdir, summary["saved_model"], data, images
    )
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [data.class_names[i] for i in python_probs.argmax(-1)]
    assert out["top_k_ids"].shape == (16, 5) and out["top_k_names"].shape == (16, 5)

    # The same images as RGB JPEG at 2x size still decode, convert and resize in the graph.
    def jpeg_rgb(img):
        buf = io.BytesIO()
        Image.fromarray(np.repeat(img, 3, -1)).resize((56, 56)).save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    out_rgb = fn(image_bytes=tf.constant([jpeg_rgb(i) for i in images]))
    agree = np.mean(out_rgb["class_id"].numpy() == python_probs.argmax(-1))
    assert agree >= 0.75, agree

    # TF Serving's REST mapping: {"instances": [{"image_bytes": {"b64": ...}}]}.
    body = training.rest_request_body({"image_bytes": vit_export.encode_png(images[:3])})
    response = training.call_like_rest(summary["saved_model"], body)
    assert [p["class_name"] for p in response["predictions"]] == names[:3]


def test_evaluate_and_other_resolution(trained):
    cfg, summary = trained
    report = vit_evaluate.evaluate_workdir(cfg.workdir)
    assert report["examples"] == 10000
    assert abs(report["accuracy"] - summary["test_accuracy"]) < 0.05  # subset vs full test set
    for name in ("metrics.json", "confusion_matrix.png", "misclassified.png"):
        assert os.path.exists(os.path.join(report["output_dir"], name))
    assert len(report["per_class_accuracy"]) == 10
    # Trained at 28 px, evaluated at 56 px (position embedding interpolated).
    big = vit_evaluate.evaluate_workdir(cfg.workdir, image_size=56)
    assert big["image_size"] == 56
    assert big["accuracy"] > 0.3, big["accuracy"]  # chance is 0.1


def test_predict_folder_skips_unreadable_files(trained, tmp_path, caplog):
    _, summary = trained
    data = vd.load_dataset("fashion_mnist", validation_fraction=0.1, seed=0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(data.x_test[i, ..., 0]).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    rows, skipped = vit_predict.predict_files(summary["saved_model"], vit_predict.list_images(str(folder)))
    assert len(rows) == 3 and skipped == [str(folder / "broken.png")]
    assert all(r["class_name"] in data.class_names for r in rows)


def test_export_refuses_existing_version_and_cli_overwrites(trained):
    cfg, summary = trained
    version = int(os.path.basename(summary["saved_model"]))
    cmd = [sys.executable, "-m", "apps.vit.export", "--workdir", cfg.workdir, "--version", str(version)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "already exists" in result.stderr
    result = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "serving_default" not in result.stderr


def test_cli_errors_name_the_problem():
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "apps.vit.train", *args], capture_output=True, text=True, timeout=120
    )
    result = run("--preset", "huge")
    assert result.returncode == 2 and "unknown preset 'huge'" in result.stderr
    result = run("--hidden_dims", "8")
    assert result.returncode == 2 and "did you mean 'hidden_dim'" in result.stderr
    result = run("--patch_size", "5")
    assert result.returncode == 2 and "divisible by `patch_size`" in result.stderr
    result = run("--help")
    assert result.returncode == 0 and "--randaugment_layers" in result.stdout


@pytest.mark.slow
def test_trains_under_mirrored_strategy_on_two_logical_cpus(tmp_path):
    """The app under MirroredStrategy (2 logical CPUs, set before TF starts: a subprocess)."""
    _require_data()
    workdir = tmp_path / "mirrored"
    script = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from apps.vit import train\n"
        "train.main(sys.argv[1:])\n"
    )
    args = ["--preset", "test", "--strategy", "mirrored", "--batch_size", "32",
            "--time_budget_minutes", "30",  # the resizable schedule's variable under the strategy
            "--workdir", str(workdir), "--verbose", "0"]
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    assert summary["num_replicas"] == 2 and summary["global_batch_size"] == 64
    assert np.isfinite(summary["test_loss"]) and summary["test_accuracy"] > 0.1
    assert os.path.exists(os.path.join(summary["saved_model"], "saved_model.pb"))


def test_trains_at_a_size_other_than_the_source_images(tmp_path):
    """28 px Fashion-MNIST trained at 32 px: the pipeline, the per-epoch image hooks, the
    attention samples and the export all resize (TFDS sources keep their own size too)."""
    _require_data()
    cfg = Config(**dict(PRESETS["test"], image_size=32, patch_size=8, max_train_examples=256,
                        tflite=True), workdir=str(tmp_path / "run32"))
    summary = vit_train.run(cfg)
    assert summary["epochs_run"] == 1 and np.isfinite(summary["test_loss"])
    assert vit_export.read_preprocessing(cfg.workdir)["image_size"] == 32
    assert summary["tflite"]["quantized_bytes"] > 0


def test_conv_stem_trains_exports_and_serves(tmp_path):
    """The convolutional stem (BatchNorm inside) through train, TFLite and the byte export:
    serving must use the moving statistics, i.e. match the reloaded model's predictions."""
    _require_data()
    cfg = Config(**dict(PRESETS["test"], patch_size=4, conv_stem=True, conv_stem_depth=2, lsa=True,
                        max_train_examples=256, tflite=True), workdir=str(tmp_path / "conv"))
    summary = vit_train.run(cfg)
    assert summary["epochs_run"] == 1 and np.isfinite(summary["test_loss"])
    assert summary["tflite"]["quantized_bytes"] > 0
    data = vd.load_dataset("fashion_mnist", validation_fraction=0.1, seed=0)
    _serving_matches_python(cfg.workdir, summary["saved_model"], data, data.x_test[:8])


def test_time_budget_shortens_the_schedule_and_stops_decayed(tmp_path, monkeypatch):
    """A 30 s budget with a fake clock: 12 s for the first epoch (compilation), then 5 s
    each, so 4 of the 6 planned epochs fit; the schedule is shortened to end on the 4th."""
    _require_data()
    ticks = iter([0.0, 12.0, 17.0, 22.0, 27.0, 32.0, 37.0])  # train begin, then epoch ends
    monkeypatch.setattr(training.TimeBudget, "clock", staticmethod(lambda: next(ticks)))
    cfg = Config(**dict(PRESETS["test"], epochs=6, warmup_epochs=1, max_train_examples=256,
                        time_budget_minutes=0.5, attention_images=0),
                 workdir=str(tmp_path / "budget"))
    summary = vit_train.run(cfg)
    assert summary["epochs_run"] == 4 and summary["schedule_epochs"] == 4
    assert summary["stopped_by_time_budget"]
    # The rate logged for the last epoch is the schedule's end value, not a mid-decay one.
    lr = _scalars_of(os.path.join(cfg.workdir, "tensorboard", "train"), "epoch_learning_rate")
    assert len(lr) == 4 and lr[3] == pytest.approx(cfg.min_learning_rate, rel=1e-3)
    assert lr[1] > lr[2] > lr[3]


def test_attention_images_zero_turns_the_attention_maps_off(tmp_path):
    _require_data()
    cfg = Config(**dict(PRESETS["test"], max_train_examples=128, attention_images=0),
                 workdir=str(tmp_path / "no_attention"))
    summary = vit_train.run(cfg)
    assert summary["epochs_run"] == 1 and np.isfinite(summary["test_loss"])
    images = _event_tags(os.path.join(cfg.workdir, "tensorboard", "images"))
    assert {"confusion_matrix", "misclassified"} <= images
    assert not any(t.startswith("attention") for t in images), images
    with pytest.raises(ValueError, match="attention_images"):
        Config(attention_images=-1)
    with pytest.raises(ValueError, match="image_every_epochs"):
        Config(image_every_epochs=0)


def test_a_resumed_run_counts_every_epoch_and_says_it_resumed(tmp_path, monkeypatch, capsys):
    _require_data()
    cfg = Config(**dict(PRESETS["test"], epochs=4, max_train_examples=128, attention_images=0),
                 workdir=str(tmp_path / "run"))
    run_killed_after_epoch(monkeypatch, vit_train, "image_callbacks", lambda: vit_train.run(cfg), 1)
    assert (tmp_path / "run" / "backup").is_dir()
    summary = vit_train.run(cfg)  # the same command again resumes
    assert summary["epochs_run"] == 4 and summary["resumed_from_epoch"] == 2
    vit_train.print_next_steps(cfg, summary)
    assert "after 4 epochs (resumed after epoch 2: 2 epochs in " in capsys.readouterr().out


def test_refuses_to_resume_a_backup_of_another_architecture(tmp_path):
    # A killed 128-wide run leaves backup/; starting a 64-wide run in the same workdir must
    # fail up front naming the field, not deep inside Keras's restore.
    workdir = tmp_path / "run"
    training.write_config(Config(**dict(PRESETS["test"], hidden_dim=32)), workdir)
    (workdir / "backup").mkdir()
    with pytest.raises(ValueError, match=r"hidden_dim: 32 -> 16"):
        vit_train.run(Config(**PRESETS["test"], workdir=str(workdir), verbose=0))
