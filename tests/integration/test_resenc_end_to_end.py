"""ResEnc plans end to end: `-pl ResEncM`, the baseline and `recycle` train on them, stock nnunetv2 predicts.

Slow (about a minute on 2 cores): marked `slow`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.cli.main import main

pytestmark = pytest.mark.slow

DATASET_ID = 537
PLANS = "nnUNetResEncUNetMPlans_cpu-tiny"


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def resenc(tmp_path_factory):
    """A tiny 2D dataset planned with -pl ResEncM (cpu-tiny), baseline and recycle trained (2 x 3 iterations)."""
    from diffusion_nnunet.datasets import make_dataset

    root = tmp_path_factory.mktemp("resenc")
    env = {name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        raw = make_dataset("synthetic-us2d", Path(env["nnUNet_raw"]), DATASET_ID, num_train=6, num_test=2, seed=1)
        assert main(["plan-and-preprocess", "-d", str(DATASET_ID), "--budget", "cpu-tiny", "-pl", "ResEncM",
                     "-c", "2d", "-np", "1"]) == 0
        for trainer in ("baseline", "recycle"):
            assert main(["train", "-d", str(DATASET_ID), "-c", "2d", "-f", "0", "-tr", trainer, "-p", PLANS,
                         "-device", "cpu", "--seed", "0"]) == 0
        yield {"env": env, "raw": raw, "results": Path(env["nnUNet_results"]) / raw.name}  # the nnU-Net variables stay set until the module ends


def test_both_trainers_train_a_residual_encoder_unet(resenc):
    for folder in ("DnnBaselineTrainer__" + PLANS + "__2d", "DnnDiffusionTrainer_recycle__" + PLANS + "__2d"):
        model = resenc["results"] / folder
        plans = json.loads((model / "plans.json").read_text())
        arch = plans["configurations"]["2d"]["architecture"]
        assert arch["network_class_name"].endswith("ResidualEncoderUNet")
        assert plans["plans_name"] == PLANS and "training_budget" in plans["configurations"]["2d"]
        assert (model / "fold_0" / "checkpoint_final.pth").is_file()


def test_stock_nnunetv2_predicts_the_resenc_baseline_and_recycle_predicts(resenc, tmp_path):
    raw = resenc["raw"]
    ours, stock, diffusion = tmp_path / "ours", tmp_path / "stock", tmp_path / "recycle"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(ours), "-d", str(DATASET_ID), "-c", "2d",
                 "-f", "0", "-p", PLANS, "-device", "cpu"]) == 0
    ext = subprocess.run([sys.executable, "-m", "diffusion_nnunet", "ext-trainer-path"], capture_output=True,
                         text=True, check=True).stdout.strip()
    exe = Path(sys.executable).parent / "nnUNetv2_predict"
    r = subprocess.run([str(exe), "-i", str(raw / "imagesTs"), "-o", str(stock), "-d", str(DATASET_ID), "-c", "2d",
                        "-f", "0", "-tr", "DnnBaselineTrainer", "-p", PLANS, "-device", "cpu", "-npp", "1", "-nps",
                        "1"], env={**os.environ, **resenc["env"], "nnUNet_extTrainer": ext}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    names = sorted(p.name for p in ours.glob("*.nii.gz"))
    assert names and names == sorted(p.name for p in stock.glob("*.nii.gz"))
    for n in names:
        np.testing.assert_array_equal(_read(ours / n), _read(stock / n))
    # the diffusion head on the same ResEnc plans samples a full prediction
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(diffusion), "-d", str(DATASET_ID), "-c", "2d",
                 "-f", "0", "-tr", "recycle", "-p", PLANS, "-device", "cpu", "--disable-tta"]) == 0
    for n in names:
        assert _read(diffusion / n).shape == _read(ours / n).shape
