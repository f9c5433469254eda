"""Model zips of trained models: ours install with nnunetv2 and predict there, nnunetv2's install
with ours, and a diffusion model predicts the same after the round trip."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.cli.main import main
from tests.conftest import stock_copy

pytestmark = pytest.mark.slow

# nnunetv2 only, in a fresh process: its installer, then its predictor on the installed folder
_STOCK_INSTALL_AND_PREDICT = """
import os, sys, torch
from nnunetv2.model_sharing.model_import import install_model_from_zip_file
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
zip_file, model, images, out = sys.argv[1:]
os.makedirs(out)
install_model_from_zip_file(zip_file)
p = nnUNetPredictor(perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
p.initialize_from_trained_model_folder(model, use_folds=(0,))
p.predict_from_files_sequential(images, out, save_probabilities=False, overwrite=True)
"""


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _same_segmentations(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.nii.gz"))
    assert names and names == sorted(p.name for p in b.glob("*.nii.gz"))
    for n in names:
        np.testing.assert_array_equal(_read(a / n), _read(b / n))


def test_our_baseline_zip_installs_and_predicts_with_stock_nnunetv2(env, tmp_path):
    raw, model = env["raw"], env["model"]
    zip_file = tmp_path / "baseline.zip"
    assert main(["export-model", "-m", str(model), "-o", str(zip_file)]) == 0
    assert main(["predict", "-m", str(model), "-f", "0", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "ours"),
                 "-device", "cpu"]) == 0
    results = tmp_path / "stock_results"
    ext = subprocess.run([sys.executable, "-m", "diffusion_nnunet", "ext-trainer-path"], capture_output=True,
                         text=True, check=True).stdout.strip()
    installed = results / model.parent.name / model.name
    proc_env = {**os.environ, **env["env"], "nnUNet_results": str(results), "nnUNet_extTrainer": ext}
    r = subprocess.run([sys.executable, "-c", _STOCK_INSTALL_AND_PREDICT, str(zip_file), str(installed),
                        str(raw / "imagesTs"), str(tmp_path / "stock")], env=proc_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (installed / "fold_0" / "training_config.json").is_file()  # our files travel along
    _same_segmentations(tmp_path / "ours", tmp_path / "stock")


def test_a_zip_from_nnunetv2s_export_installs_and_predicts_with_ours(env, tmp_path, monkeypatch):
    """A stock-layout model (trainer nnUNetTrainer) zipped by nnunetv2's own export function."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    raw, model = env["raw"], env["model"]
    stock_results = tmp_path / "stock_results"
    stock = stock_copy(model, stock_results / model.parent.name)
    for f in ("dataset_fingerprint.json", "fold_0/progress.png", "fold_0/validation/summary.json"):
        (stock / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model / f, stock / f)
    monkeypatch.setenv("nnUNet_results", str(stock_results))
    export_pretrained_model(model.parent.name, str(tmp_path / "stock.zip"), configurations=("2d",),
                            trainer="nnUNetTrainer", plans_identifier="dnnunetPlans", folds=(0,))
    ours = tmp_path / "our_results"
    monkeypatch.setenv("nnUNet_results", str(ours))
    assert main(["install-model", str(tmp_path / "stock.zip")]) == 0
    installed = ours / model.parent.name / stock.name
    assert main(["predict", "-m", str(installed), "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "a"),
                 "-device", "cpu"]) == 0
    assert main(["predict", "-m", str(stock), "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "b"),
                 "-device", "cpu"]) == 0
    _same_segmentations(tmp_path / "a", tmp_path / "b")
    assert main(["install-model", str(tmp_path / "stock.zip")]) == 2  # installed: refused


def test_a_diffusion_model_round_trips_and_predicts_the_same(env, recycle_model, tmp_path, monkeypatch):
    raw = env["raw"]
    zip_file = tmp_path / "recycle.zip"
    assert main(["export-model", "-d", env["raw"].name, "-tr", "recycle", "-c", "2d", "-f", "0",
                 "-o", str(zip_file)]) == 0
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "installed"))
    assert main(["install-model", str(zip_file)]) == 0
    installed = tmp_path / "installed" / recycle_model.parent.name / recycle_model.name
    args = ["-i", str(raw / "imagesTs"), "-device", "cpu", "--num-samples", "2", "--save-probabilities"]
    assert main(["predict", "-m", str(installed), "-o", str(tmp_path / "a")] + args) == 0
    assert main(["predict", "-m", str(recycle_model), "-f", "0", "-o", str(tmp_path / "b")] + args) == 0
    _same_segmentations(tmp_path / "a", tmp_path / "b")
    for npz in sorted((tmp_path / "a").glob("*.npz")):
        np.testing.assert_array_equal(np.load(npz)["probabilities"],
                                      np.load(tmp_path / "b" / npz.name)["probabilities"])
    assert (tmp_path / "a" / "uncertainty" / "cases.csv").is_file()
