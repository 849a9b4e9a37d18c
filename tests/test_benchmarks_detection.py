"""Smoke test: `benchmarks/detection.py --quick` runs end to end (tiny dense and DETR heads
and keras-hub RetinaNet on a generated scene set) and writes the documented JSON.

D-FINE is left out (`--models dense,detr,retinanet`): building its training graph alone
takes ~100 s on 2 CPU cores (keras-hub's Hungarian matcher as nested while loops), which
would double this test; its code path is the same `run_peer` as RetinaNet's, and
tests/test_detection_peers.py trains and decodes it.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINE = ("map", "ap50", "detr_map", "dense_map", "keras_hub_retinanet_map",
            "keras_hub_dfine_map", "train_minutes")
METRICS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
RUN = ("dense", "detr", "retinanet")

# ~3 min: three tiny trainings, two exports, COCO evaluations; one worker runs the module (its fixture is built once).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_benchmarks_detection")]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "d.json"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "detection.py"), "--quick",
         "--models", ",".join(RUN), "--out", str(out), "--workdir_root", str(tmp / "runs"),
         "--data", str(tmp / "scenes")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout, tmp


def test_quick_json_schema(quick_run):
    info, stdout, _ = quick_run
    assert info["benchmark"] == "detection" and info["quick"] is True and info["date"]
    assert {"platform", "cpu_count", "cpu_model", "memory_gib"} <= set(info["machine"])
    assert set(info["targets"]) == {"map", "ap50", "vs_peers"}
    config = info["config"]
    assert config["minutes"] > 0 and config["image_size"] == 64
    assert config["sizes"] == {"train": 48, "val": 12, "test": 8}  # the quick scene set
    assert set(info["models"]) == set(RUN)  # dfine not run: absent
    for name in RUN:
        model = info["models"][name]
        for key in METRICS:  # None only where the test split has no object of that size
            value = model[key]
            assert value is None or 0.0 <= value <= 1.0, (name, key, value)
            assert model["test"][key] == value
        for key in ("map", "ap50", "ap75"):
            assert model[key] is not None, (name, key)
        assert model["parameters"] > 0 and model["train_minutes"] > 0
        assert model["epochs_run"] > 0 and model["train_images_per_second"] > 0
        assert f"| {name} |" in stdout
    for name in ("dense", "detr"):
        serve = info["models"][name]["serving_ms_per_image"]
        assert set(serve) == {"batch_1", "batch_32"}
        assert all(isinstance(v, float) and v > 0 for v in serve.values())
    retinanet = info["models"]["retinanet"]
    assert retinanet["kind"] == "keras_hub" and retinanet["steps_run"] > 0
    assert retinanet["serving_ms_per_image"] is None


def test_quick_headline(quick_run):
    info, _, _ = quick_run
    headline, models = info["headline"], info["models"]
    assert set(HEADLINE) <= set(headline)
    assert headline["keras_hub_dfine_map"] is None  # not run
    for key in HEADLINE:
        if key == "keras_hub_dfine_map":
            continue
        value = headline[key]
        assert isinstance(value, float) and math.isfinite(value), key
        if key != "train_minutes":
            assert 0.0 <= value <= 1.0, (key, value)
    # The better head by test mAP supplies map, ap50 and train_minutes.
    best = max(("dense", "detr"), key=lambda m: models[m]["map"])
    assert headline["best_tfattn_head"] == best
    assert headline["map"] == models[best]["map"] == max(headline["dense_map"],
                                                          headline["detr_map"])
    assert headline["ap50"] == models[best]["ap50"]
    assert headline["train_minutes"] == models[best]["train_minutes"]
    assert headline["keras_hub_retinanet_map"] == models["retinanet"]["map"]


def test_reuse_runs_evaluates_a_finished_run_again(quick_run):
    """--reuse_runs does not train a head whose run finished: it evaluates and exports it
    again under the preset's inference options, keeping the run's training figures; a run
    trained under other settings is refused by name. The run is moved first: where it
    lies is not a setting."""
    info, _, tmp = quick_run
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    shutil.copytree(tmp / "runs", tmp / "moved")
    args = [sys.executable, os.path.join("benchmarks", "detection.py"), "--quick", "--models",
            "dense", "--workdir_root", str(tmp / "moved"), "--data", str(tmp / "scenes"),
            "--reuse_runs"]
    out = tmp / "again.json"
    proc = subprocess.run(args + ["--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reusing the trained run" in proc.stdout and "training (" not in proc.stdout
    first, again = info["models"]["dense"], json.loads(out.read_text())["models"]["dense"]
    for key in ("train_minutes", "epochs_run", "train_images_per_second", "parameters"):
        assert again[key] == first[key], key
    # The preset's inference options are the run's own: the same detections.
    assert again["map"] == pytest.approx(first["map"], abs=1e-6)
    assert "inference_options" in again["reevaluated"]
    assert again["serving_ms_per_image"]["batch_1"] > 0
    proc = subprocess.run(args + ["--out", str(tmp / "refused.json"), "--minutes", "0.5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "trained with other settings (time_budget_minutes)" in \
        proc.stderr, proc.stderr[-3000:]


def test_merge_joins_separate_runs(tmp_path):
    """Results of separate runs (the heads, then the peers) join into one file: the same
    models and headline as one run; a file of another setting is refused by name. Uses the
    committed 12-minute results (all four models) split in two."""
    with open(os.path.join(ROOT, "benchmarks", "results", "detection_12min.json")) as f:
        info = json.load(f)
    info.pop("runs")
    heads = {**info, "models": {k: info["models"][k] for k in ("dense", "detr")}}
    peers = {**info, "models": {k: info["models"][k] for k in ("retinanet", "dfine")},
             "date": "2099-01-01T00:00:00+00:00"}
    paths = []
    for name, part in (("heads", heads), ("peers", peers)):
        paths.append(str(tmp_path / f"{name}.json"))
        with open(paths[-1], "w") as f:
            json.dump(part, f)
    out = tmp_path / "merged.json"
    script = os.path.join("benchmarks", "detection.py")
    proc = subprocess.run([sys.executable, script, "--merge", *paths, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads(out.read_text())
    assert merged["models"] == info["models"] and merged["headline"] == info["headline"]
    assert [r["models"] for r in merged["runs"]] == [["dense", "detr"], ["retinanet", "dfine"]]
    assert merged["date"] == "2099-01-01T00:00:00+00:00" and merged["config"] == info["config"]

    # A rerun of one head, merged last, replaces that head (table, headline, runs).
    rerun = {**info, "models": {"dense": {**info["models"]["dense"], "map": 0.99}},
             "date": "2099-02-01T00:00:00+00:00"}
    rerun_path = str(tmp_path / "rerun.json")
    with open(rerun_path, "w") as f:
        json.dump(rerun, f)
    proc = subprocess.run([sys.executable, script, "--merge", str(out), rerun_path, "--out",
                           str(tmp_path / "again.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["models"]["dense"]["map"] == 0.99 and again["headline"]["map"] == 0.99
    assert set(again["models"]) == set(info["models"])
    assert [r["models"] for r in again["runs"]] == [["detr"], ["retinanet", "dfine"], ["dense"]]

    other = {**peers, "config": {**info["config"], "minutes": info["config"]["minutes"] * 2}}
    with open(paths[1], "w") as f:
        json.dump(other, f)
    proc = subprocess.run([sys.executable, script, "--merge", *paths, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "peers.json has config minutes=" in proc.stderr

    (tmp_path / "broken.json").write_text("{not json")
    proc = subprocess.run([sys.executable, script, "--merge", paths[0], str(tmp_path / "broken.json"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "broken.json" in proc.stderr
