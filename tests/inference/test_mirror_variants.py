"""nnU-Net's mirror variants as an ensemble (diffusion_nnunet.inference.mirror_variants)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.inference.mirror_variants import predict_mirror_variants
from diffusion_nnunet.inference.predictor import predict_folder

pytestmark = pytest.mark.slow


def test_mirror_variants_keep_nnunets_prediction_and_give_case_scores(env, tmp_path):
    model, images = env["model"], env["raw"] / "imagesTs"
    predict_folder(model, images, tmp_path / "plain", folds=[0], save_probabilities=True)
    result = predict_mirror_variants(model, images, tmp_path / "variants", folds=[0], save_probabilities=True)
    cases = sorted(p.name[:-7] for p in (env["raw"] / "labelsTs").iterdir())
    assert sorted(result["order"]) == cases and result["flagged"] is None
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plain" / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "variants" / f"{case}.nii.gz")))
        assert np.mean(a == b) > 0.999  # nnU-Net's mean of the variants' logits (half-precision sums aside)
        pa = np.load(tmp_path / "plain" / f"{case}.npz")["probabilities"]
        pb = np.load(tmp_path / "variants" / f"{case}.npz")["probabilities"]
        assert np.abs(pa - pb).max() < 0.02
    with open(tmp_path / "variants" / "uncertainty" / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == result["order"]
    assert all(r["num_samples"] == "4" for r in rows)  # 2D: none, x, y, both
    assert all(0.0 <= float(r["disagreement"]) <= 1.0 for r in rows)
