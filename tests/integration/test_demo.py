"""The demo end to end with the tiny budget: one table row per method, a picture, PD-DDPM uncertainty."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffusion_nnunet.demo import DemoSettings, run_demo

pytestmark = pytest.mark.slow


def test_demo_writes_table_picture_and_all_methods(nnunet_dirs, tmp_path):
    out = tmp_path / "demo"
    rows = run_demo(DemoSettings(output=str(out), budget="cpu-tiny", num_train=6, num_test=2), torch.device("cpu"))
    assert [r["method"].split(" ")[0] for r in rows] == ["nnU-Net", "diffusion", "PD-DDPM", "ensemble"]
    for r in rows:
        assert 0.0 <= r["Dice"] <= 1.0
        assert r["x nnU-Net"] == pytest.approx(r["predict s/case"] / rows[0]["predict s/case"], abs=0.01)
    assert rows[0]["x nnU-Net"] == 1.0
    table = (out / "results.md").read_text()
    assert table.count("\n| ") >= 5 and "PD-DDPM" in table
    with Image.open(out / "overview.png") as img:  # rows = cases, columns = image, reference, 4 methods
        assert img.width > img.height
        assert img.size == (7 * 300, 2 * 300)  # ... and PD-DDPM's entropy map (3-inch panels at 100 dpi)
    assert len(list((out / "predictions" / "pd_ddpm" / "uncertainty").glob("*_entropy.nii.gz"))) == 2
    # the review list: every test case, least certain first, in the table too
    review = (out / "predictions" / "pd_ddpm" / "uncertainty" / "cases.csv").read_text().splitlines()
    assert len(review) == 1 + 2
    assert "Review list" in table and review[1].split(",")[1] in table.split("Review list")[1]
    # a second run reuses the trained models and gives the same table
    again = run_demo(DemoSettings(output=str(out), budget="cpu-tiny", num_train=6, num_test=2), torch.device("cpu"))
    assert [r["Dice"] for r in again] == pytest.approx([r["Dice"] for r in rows])
