"""The layer demo (`make demo-layers`) end to end, one epoch."""

import json

import matplotlib.image
import pytest

from tfattn import demo


@pytest.mark.slow  # one epoch, two PNGs and a SavedModel export: ~20 s on 2 busy cores
def test_demo_writes_readable_attention_pngs_and_an_export(tmp_path):
    summary = demo.main(["--epochs", "1", "--workdir", str(tmp_path)])
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 1
    assert (tmp_path / "export" / "digits_vit" / "1" / "saved_model.pb").exists()
    heatmap, rollout = (matplotlib.image.imread(p) for p in summary["heatmaps"])
    assert min(heatmap.shape[:2]) >= 300
    # 8 digits of 8x8 pixels, each drawn 128 px high, 8 px apart (it was 64x8 pixels).
    size = demo.ROLLOUT_PIXELS
    assert rollout.shape[:2] == (size, 8 * size + 7 * size // 16)
