"""The ViT app end to end on two MultiWorkerMirroredStrategy workers on 127.0.0.1.

Runs the multi-worker recipe of tfattn/training/README.md exactly as written there, with
free ports and a temporary workdir substituted: training with every TensorBoard hook
(the per-epoch image hooks predict on the chief alone), restoring the best checkpoint on
both workers, test evaluation, export on the chief. New apps copy this test.
"""

import json
import os
import re
import shlex
import sys

import numpy as np
import pytest
import tensorflow as tf

from apps.vit import export as vit_export
from apps.vit import train as vit_train
from apps.vit.config import Config
from tests.training.mw_worker import REPO_ROOT, free_port, run_workers
from tfattn import training

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multi_worker")]

README = os.path.join(REPO_ROOT, "tfattn", "training", "README.md")
TIMEOUT = 420


def readme_recipe():
    """[(TF_CONFIG dict, module, argv)] of the README's multi-worker block, in order."""
    with open(README) as f:
        text = f.read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    recipe = [b for b in blocks if "--strategy multi_worker" in b and "TF_CONFIG=" in b]
    assert len(recipe) == 1, f"expected one multi-worker recipe block in {README}"
    commands = []
    for line in recipe[0].replace("\\\n", " ").splitlines():
        match = re.fullmatch(r"\s*TF_CONFIG='(.*?)'\s+python -m (\S+)\s+(.*?)\s*&?\s*", line)
        if match:
            tf_config, module, args = match.groups()
            commands.append((json.loads(tf_config), module, shlex.split(args)))
    return commands


def _substitute(value, mapping):
    if isinstance(value, str):
        for old, new in mapping.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    return value


def _image_tags(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(directory, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags.get("images", [])) | set(tags.get("tensors", [])) | set(tags.get("scalars", []))


def test_readme_recipe_runs_on_two_loopback_workers(tmp_path):
    commands = readme_recipe()
    assert len(commands) == 2
    addresses = commands[0][0]["cluster"]["worker"]
    workdir_flag = commands[0][2][commands[0][2].index("--workdir") + 1]
    workdir = str(tmp_path / "mw")
    mapping = {a: f"127.0.0.1:{free_port()}" for a in addresses}
    mapping[workdir_flag] = workdir

    runs = []
    for i, (tf_config, module, args) in enumerate(commands):
        assert tf_config["task"] == {"type": "worker", "index": i}
        assert module == commands[0][1]
        runs.append((_substitute(args, mapping), _substitute(tf_config, mapping)))
    results = run_workers(str(tmp_path), runs, timeout=TIMEOUT,
                          command=[sys.executable, "-m", commands[0][1]])
    outputs = [out for _, out in results]
    for i, (rc, out) in enumerate(results):
        assert rc == 0, f"worker {i} exited {rc}:\n{out[-4000:]}"

    # Both workers end with the same weights (the best checkpoint, sent by the chief) and
    # report the same test accuracy.
    fingerprints = [re.findall(r"Weights fingerprint (\w+)", out) for out in outputs]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1], fingerprints
    accuracies = [re.findall(r"Test accuracy (\d\.\d+)", out) for out in outputs]
    assert len(accuracies[0]) == 1 and accuracies[0] == accuracies[1], accuracies

    # The chief wrote the run; the other worker left nothing but its (emptied) backup.
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["num_replicas"] == 2
    assert f"{summary['test_accuracy']:.4f}" == accuracies[0][0]
    expected = {"backup_workers", "checkpoints", "config.json", "export", "model.keras",
                "preprocessing.json", "summary.json", "tensorboard"}
    assert set(os.listdir(workdir)) == expected, os.listdir(workdir)
    backups = os.path.join(workdir, "backup_workers")
    assert not os.listdir(backups) or os.listdir(backups) == ["worker_1"] and not os.listdir(
        os.path.join(backups, "worker_1")), os.listdir(backups)

    # Every TensorBoard hook wrote: scalars, the config, and the per-epoch images.
    cfg = training.load_config(Config, os.path.join(workdir, "config.json"))
    assert cfg.strategy == "multi_worker" and cfg.epochs >= 2
    image_tags = _image_tags(os.path.join(workdir, "tensorboard", "images"))
    assert {"confusion_matrix", "misclassified", "attention/last_layer",
            "attention/rollout"} <= image_tags, image_tags
    assert {"epoch_loss", "epoch_accuracy"} <= _image_tags(
        os.path.join(workdir, "tensorboard", "train"))
    assert "epoch_accuracy" in _image_tags(os.path.join(workdir, "tensorboard", "validation"))

    # The printed test accuracy is a single-process evaluation of the exported model.
    data = vit_train.load_data(cfg)
    serve = tf.saved_model.load(summary["saved_model"]).signatures["serving_default"]
    out = serve(image_bytes=tf.constant(list(vit_export.encode_png(data.x_test))))
    served_accuracy = float(np.mean(out["class_id"].numpy() == data.y_test))
    assert len(data.x_test) == 128
    assert served_accuracy == pytest.approx(summary["test_accuracy"], abs=1e-9)
