"""What `import tfattn` does: registers what the apps save, stays light, and (as a command)
quiets TensorFlow's start-up."""

import os
import subprocess
import sys
import textwrap

import keras
import pytest

from apps.vit import train as vit_train
from apps.vit.config import PRESETS, Config
from apps.vit.model import build_vit
from tfattn import _env, training

REPO = os.path.dirname(os.path.dirname(__file__))


def _python(script, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _compiled_vit(**overrides):
    """A ViT compiled as `apps.vit.train.run` compiles it (AdamW on a WarmupCosine)."""
    cfg = Config(**dict(PRESETS["test"], **overrides))
    model, _ = build_vit(cfg, num_classes=3, channels=1)
    schedule = training.warmup_cosine(1e-3, 2, 10, warmup_epochs=0.5, resizable=True)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.05, global_clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=vit_train.NO_DECAY)
    model.compile(optimizer, keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                           keras.metrics.TopKCategoricalAccuracy(k=2, name="top2")])
    return model


@pytest.mark.slow  # a fresh Python that imports TensorFlow: ~10 s
def test_import_tfattn_is_enough_to_load_what_the_apps_save(tmp_path):
    # Every tokeniser, pooling and block option: each of their layers must be registered.
    variants = {
        "plain": {},
        "conv_lsa": {"conv_stem": True, "conv_stem_depth": 2, "lsa": True, "patch_size": 4,
                     "mlp_local_kernel_size": 3, "pooling": "attention"},
        "spt": {"spt": True, "pooling": "gap", "layer_scale_init_value": 1e-4,
                "dropout_rate": 0.1},
    }
    for name, overrides in variants.items():
        _compiled_vit(**overrides).save(tmp_path / f"{name}.keras")
    result = _python(f"""
        import sys, keras, tfattn
        for name in {list(variants)}:
            model = keras.saving.load_model("{tmp_path}/" + name + ".keras")
            print(name, model.optimizer.get_config()["learning_rate"]["registered_name"])
        print("tfattn.training" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")
    assert lines[: len(variants)] == [f"{name} tfattn>WarmupCosine" for name in variants]
    assert lines[len(variants)] == "False"  # loaded without the training runtime


@pytest.mark.slow  # a fresh Python: ~5 s
def test_import_tfattn_under_jax_does_not_load_tensorflow():
    result = _python("""
        import os, sys
        os.environ["KERAS_BACKEND"] = "jax"
        import tfattn
        print(sorted(m for m in ("tensorflow", "tfattn.training") if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "apps.vit.train", "--epochs", "2"], True),
    (["python", "-X", "dev", "-W", "error", "-u", "-m", "tfattn.demo"], True),
    (["python", "-mapps.forecast.train"], True),
    (["python", "-m", "pytest", "tests", "-m", "apps.x"], False),
    (["python", "-c", "import tfattn", "-m", "apps.vit.train"], False),
    (["python", "benchmarks/vit.py", "-m", "apps.vit"], False),
    (["ipykernel_launcher.py", "-f", "kernel.json"], False),
    (["python"], False),
])
def test_commands_are_recognised_from_the_interpreter_arguments(argv, expected):
    assert _env.is_command(argv) is expected


@pytest.mark.parametrize("value, expected", [("", False), ("0", False), ("false", False),
                                             ("1", True), ("yes", True), ("2", True)])
def test_tfattn_verbose_values(monkeypatch, value, expected):
    monkeypatch.setenv(_env.VERBOSE_ENV, value)
    assert _env.verbose() is expected
