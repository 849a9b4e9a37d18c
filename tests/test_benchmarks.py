"""Smoke tests: `benchmarks/attention.py --quick`, `benchmarks/attention_jax.py --quick` and
`benchmarks/vit.py --quick` (and its `--quality` part on the `test` preset) run end to end
and write the documented JSON."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ("tfattn", "keras", "keras_hub")


# One worker runs the module, so its module-scoped fixture is built once under xdist.
pytestmark = pytest.mark.xdist_group("test_benchmarks")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results" / "attention.json"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "attention.py"), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_quick_json_schema(quick_run):
    info, _ = quick_run
    assert info["benchmark"] == "attention" and info["date"]
    assert {"platform", "cpu_count", "cpu_model"} <= set(info["machine"])
    assert info["machine"]["cpu_count"] >= 1
    assert set(info["versions"]) == {"tensorflow", "keras", "keras_hub", "tfattn"}
    settings = info["settings"]
    assert settings["quick"] is True and settings["min_runs"] == 2
    assert (settings["hidden_dim"], settings["num_heads"], settings["key_dim"]) == (192, 3, 64)
    assert settings["memory"] and settings["keras_hub_layer"].endswith("MultiHeadAttention")
    assert len(info["results"]) == settings["cells"] == 2

    for cell in info["results"]:
        assert {"length", "batch", "return_attention_scores", "dropout", "xla"} <= set(cell)
        ms = {}
        for name in IMPLS:
            r = cell["impls"][name]
            assert r["runs"] == 2
            assert 0 < r["ms_min"] <= r["ms_median"] <= r["ms_max"]
            assert r["peak_rss_delta_mib"] >= 0 and r["first_call_s"] > 0
            ms[name] = r["ms_median"]
        assert cell["ratio_keras_over_tfattn"] == pytest.approx(ms["keras"] / ms["tfattn"], rel=1e-2)
        assert cell["ratio_keras_hub_over_tfattn"] == pytest.approx(ms["keras_hub"] / ms["tfattn"], rel=1e-2)
        degrades = (cell["dropout"] > 0 and cell["xla"]) or (
            cell["return_attention_scores"] and cell["length"] >= 1024
        )
        assert cell["target"] == (1.5 if degrades else 1.0)
        assert cell["meets_target"] == (ms["keras"] / ms["tfattn"] >= cell["target"])

    # The quick grid covers the headline case and a no-dropout cell, where copied weights must
    # make all three layers compute the same loss.
    assert any(c["dropout"] > 0 and c["xla"] and c["return_attention_scores"] for c in info["results"])
    assert [c["losses_match"] for c in info["results"] if c["dropout"] == 0] == [True]


def test_quick_prints_markdown_table(quick_run):
    info, stdout = quick_run
    rows = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| length | batch | scores | dropout | XLA | tfattn ms")
    assert len(rows) == 1 + len(info["results"])  # header + one row per cell


# --- benchmarks/attention_jax.py ----------------------------------------------------------------


def test_attention_jax_quick_json_and_table(tmp_path):
    out = tmp_path / "attention_jax.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "attention_jax.py"), "--quick",
         "--cells", "plain,dropout", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(out.read_text())
    assert info["benchmark"] == "attention_jax" and info["date"] and info["device"]
    assert {"platform", "cpu_count", "cpu_model", "load_average_end"} <= set(info["machine"])
    assert set(info["versions"]) == {"jax", "keras"} and info["settings"]["runs"] == 3
    assert [(r["cell"], r["length"]) for r in info["results"]] == [("plain", 64), ("dropout", 64)]
    plain, dropout = info["results"]
    assert plain["tfattn_default"] == "explicit"  # a JAX CPU: the explicit kernel
    assert plain["tfattn_fused_ms"] > 0 and "tfattn_fused_ms" not in dropout  # other kernel: plain only
    for row in info["results"]:
        assert row["keras_ms"] > 0 and row["tfattn_ms"] > 0
        assert row["ratio_keras_over_tfattn"] == pytest.approx(row["keras_ms"] / row["tfattn_ms"], rel=1e-2)
        assert row["meets_target"] == (row["ratio_keras_over_tfattn"] >= 1.0)
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| cell | input | keras ms | tfattn ms") and len(table) == 3
    bad = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "attention_jax.py"), "--cells", "plain,flash"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and "--cells: unknown ['flash']" in bad.stderr


# --- benchmarks/vit.py ------------------------------------------------------------------------


def _run_vit(*args):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, os.path.join("benchmarks", "vit.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.fixture(scope="module")
def vit_quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results" / "vit.json"
    proc = _run_vit("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout, out


def test_vit_quick_json_schema(vit_quick_run):
    info, _, _ = vit_quick_run
    assert info["benchmark"] == "vit" and set(info) == {"benchmark", "throughput"}
    part = info["throughput"]
    assert part["date"] and part["notes"]
    assert {"platform", "cpu_count", "cpu_model", "load_average_start", "load_average_end"} <= set(
        part["machine"]
    )
    assert set(part["versions"]) == {"tensorflow", "keras", "keras_hub", "tfattn"}
    settings = part["settings"]
    assert settings["quick"] is True and settings["xla"] is True
    assert (settings["runs"], settings["train_steps_per_run"], settings["predict_steps_per_run"]) == (2, 1, 1)
    assert "train_on_batch" in settings["training"] and "predict_on_batch" in settings["inference"]
    assert len(part["results"]) == settings["rows"] == 1

    row = part["results"][0]
    arch = row["architecture"]
    assert (arch["image_size"], arch["channels"], arch["pooling"], arch["drop_path_rate"]) == (28, 1, "cls", 0.0)
    # Same architecture: equal parameter counts, tfattn's weights load into keras-hub's model
    # and give the same logits and the same first training loss.
    assert row["parameters_equal"] and row["weights_copied"]
    assert row["impls"]["tfattn"]["parameters"] == row["impls"]["keras_hub"]["parameters"] > 0
    assert row["max_abs_logit_diff"] <= 1e-4
    assert row["first_losses_match"]
    img_s = {}
    for name in ("tfattn", "keras_hub"):
        r = row["impls"][name]
        assert r["jit_compile"] is True
        assert r["train_first_call_s"] > 0 and r["predict_first_call_s"] > 0
        for kind in ("train", "predict"):
            assert 0 < r[f"{kind}_ms_per_step_min"] <= r[f"{kind}_ms_per_step_median"] <= r[f"{kind}_ms_per_step_max"]
            assert r[f"{kind}_img_s"] == pytest.approx(
                row["batch_size"] * 1e3 / r[f"{kind}_ms_per_step_median"], rel=1e-2
            )
        img_s[name] = r
    ratio = img_s["tfattn"]["train_img_s"] / img_s["keras_hub"]["train_img_s"]
    assert row["ratio_train_tfattn_over_keras_hub"] == pytest.approx(ratio, rel=1e-2)
    assert row["ratio_predict_tfattn_over_keras_hub"] == pytest.approx(
        img_s["tfattn"]["predict_img_s"] / img_s["keras_hub"]["predict_img_s"], rel=1e-2
    )
    assert row["target_train"] == 1.1 and row["meets_target"] == (ratio >= 1.1)


def test_vit_quick_prints_markdown_table(vit_quick_run):
    info, stdout, _ = vit_quick_run
    rows = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| row | batch | params tfattn / keras-hub | train img/s tfattn")
    assert len(rows) == 1 + len(info["throughput"]["results"])


@pytest.mark.slow
def test_vit_quality_smoke_merges_into_existing_results(vit_quick_run, tmp_path):
    # The `test` preset (seconds) instead of `fmnist` (30 minutes); the same code path.
    throughput, _, quick_out = vit_quick_run
    out = tmp_path / "vit.json"
    out.write_text(quick_out.read_text())
    proc = _run_vit("--quality", "--preset", "test", "--epochs", "1", "--max_train_examples", "256",
                    "--budget_minutes", "5", "--out", str(out), "--workdir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(out.read_text())
    assert info["throughput"] == throughput["throughput"]  # the other part is kept
    part = info["quality"]
    assert part["date"] and part["notes"] and set(part["versions"]) >= {"tfattn", "keras_hub"}
    settings = part["settings"]
    assert settings["preset"] == "test" and settings["smoke"] is True
    assert settings["config"]["epochs"] == 1 and settings["config"]["time_budget_minutes"] == 5
    results = part["results"]
    assert set(results) == {"tfattn", "keras_hub"}
    for r in results.values():
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["epochs_run"] == 1
        assert r["wall_seconds"] >= r["train_seconds"] > 0
    # Without SPT/LSA (the test preset) both builds have the same architecture.
    assert results["tfattn"]["parameters"] == results["keras_hub"]["parameters"]
    assert results["tfattn"]["within_30_minutes"] is (results["tfattn"]["train_seconds"] <= 1800)
    assert results["tfattn"]["meets_target"] == (results["tfattn"]["test_accuracy"] >= 0.925)
    assert results["keras_hub"]["ignored_config"]["drop_path_rate"] == settings["config"]["drop_path_rate"]
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")][0].startswith("| model |")
    assert settings["recipe"]["epochs"] == 1 and "workdir" not in settings["recipe"]

    # Training one model again with the same settings keeps the other model's result.
    proc = _run_vit("--quality", "--preset", "test", "--epochs", "1", "--max_train_examples", "256",
                    "--budget_minutes", "5", "--out", str(out), "--workdir", str(tmp_path / "runs2"),
                    "--models", "tfattn")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(out.read_text())["quality"]
    assert again["settings"]["models"] == ["tfattn"]
    assert again["results"]["keras_hub"] == results["keras_hub"]


def test_vit_quality_pairs_results_only_from_the_same_recipe():
    sys.path.insert(0, ROOT)
    from benchmarks.vit import same_quality_run

    base = {"preset": "fmnist", "budget_minutes": None, "max_train_examples": None, "epochs": None,
            "workdir": "runs/a", "models": ["tfattn"],
            "recipe": {"hidden_dim": 128, "crop_scale": (0.35, 1.0)}}
    # JSON turns tuples into lists; the workdir and the models do not matter.
    read_back = json.loads(json.dumps(dict(base, workdir="runs/b", models=["keras_hub"])))
    assert same_quality_run(read_back, base)
    # An edited preset (same name, other fields) or a result from before recipes were stored.
    assert not same_quality_run(dict(read_back, recipe={"hidden_dim": 64, "crop_scale": [0.35, 1.0]}), base)
    assert not same_quality_run({k: v for k, v in read_back.items() if k != "recipe"}, base)
    assert not same_quality_run(dict(read_back, epochs=3), base)
    # Fields a model does not implement may differ when pairing that model's result.
    stem = dict(base, recipe={"hidden_dim": 128, "crop_scale": (0.35, 1.0), "conv_stem": True})
    spt = dict(read_back, recipe={"hidden_dim": 128, "crop_scale": [0.35, 1.0], "conv_stem": False})
    assert not same_quality_run(spt, stem)
    assert same_quality_run(spt, stem, ignore=("conv_stem",))
    assert not same_quality_run(dict(spt, epochs=3), stem, ignore=("conv_stem",))


def test_vit_refuses_to_merge_into_a_foreign_file(tmp_path):
    out = tmp_path / "attention.json"
    out.write_text(json.dumps({"benchmark": "attention"}))
    proc = _run_vit("--quick", "--out", str(out))
    assert proc.returncode != 0 and "not a benchmarks/vit.py results file" in proc.stderr
    assert json.loads(out.read_text()) == {"benchmark": "attention"}


def test_machine_info_tells_hosts_of_one_name_apart(tmp_path, monkeypatch):
    # The CPU's family/model/stepping, clock and cache come from the first processor of
    # /proc/cpuinfo; without the file they are None, not an error.
    from benchmarks import machine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
                       "stepping\t: 1\ncpu MHz\t\t: 2445.424\ncache size\t: 512 KB\n\n"
                       "processor\t: 1\ncpu MHz\t\t: 1.0\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    info = machine._cpuinfo()
    assert info["cpu MHz"] == "2445.424" and info["model name"] == "AMD EPYC"
    monkeypatch.setattr(machine, "_gpus", lambda: [])
    described = machine.machine_info()
    assert described["cpu_model"] == "AMD EPYC"
    assert described["cpu_family_model_stepping"] == "25/1/1"
    assert described["cpu_mhz"] == 2445.424 and described["cpu_cache"] == "512 KB"
    cpuinfo.unlink()
    described = machine.machine_info()
    assert described["cpu_mhz"] is None and described["cpu_family_model_stepping"] is None
