"""`dnnunet predict` with several diffusion samples writes the review list (and the contact sheet)."""
from __future__ import annotations

import csv
import json

import pytest

from diffusion_nnunet.cli.main import main
from tests.conftest import DATASET_ID

pytestmark = pytest.mark.slow


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_predict_writes_the_review_list_and_marks_flagged_cases(env, recycle_model, tmp_path, capsys):
    raw = env["raw"]
    cases = sorted(p.name[:-len(".nii.gz")] for p in (raw / "labelsTs").iterdir())
    base = ["predict", "-i", str(raw / "imagesTs"), "-d", str(DATASET_ID), "-tr", "recycle", "-f", "0",
            "-device", "cpu", "--num-samples", "3", "--disable-tta"]
    assert main(base + ["-o", str(tmp_path / "a"), "--overview"]) == 0
    out = capsys.readouterr().out
    assert "least certain cases (by disagreement)" in out and "flagged" not in out
    rows = _rows(tmp_path / "a" / "uncertainty" / "cases.csv")
    assert sorted(r["case"] for r in rows) == cases  # complete
    values = [float(r["disagreement"]) for r in rows]
    assert values == sorted(values, reverse=True)  # least certain first
    assert all(r["num_samples"] == "3" and r["volume_unit"] == "mm2" for r in rows)
    assert (tmp_path / "a" / "uncertainty" / "contact_sheet.png").stat().st_size > 1000
    # a fitted flag in the model's inference defaults: predict marks the cases and says how many
    exact = json.loads((tmp_path / "a" / "uncertainty" / "cases.json").read_text())["cases"]
    threshold = sorted(c["entropy_boundary"] for c in exact)[-2]  # flag the two least certain (score >= it)
    defaults = recycle_model / "inference_defaults.json"
    defaults.write_text(json.dumps({"review_flag": {"score": "entropy_boundary", "threshold": threshold}}))
    try:
        assert main(base + ["-o", str(tmp_path / "b")]) == 0
    finally:
        defaults.unlink()
    out = capsys.readouterr().out
    assert f"flagged for review: 2 of {len(cases)} cases" in out
    rows = _rows(tmp_path / "b" / "uncertainty" / "cases.csv")
    assert [r["flagged"] for r in rows] == ["True", "True"] + ["False"] * (len(cases) - 2)
    assert not (tmp_path / "b" / "uncertainty" / "contact_sheet.png").exists()
    # one sample: no review list
    assert main(base[:-3] + ["--num-samples", "1", "--disable-tta", "-o", str(tmp_path / "c")]) == 0
    assert not (tmp_path / "c" / "uncertainty" / "cases.csv").exists()
