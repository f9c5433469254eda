"""Shared fixtures: every test gets its own nnU-Net folders (nnunetv2 reads them at call time)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # as the package sets it (see dnnunet_core/paths.py)


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Point nnUNet_raw / _preprocessed / _results at fresh folders under tmp_path."""
    dirs = {}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        d = tmp_path / name
        d.mkdir()
        monkeypatch.setenv(name, str(d))
        dirs[name] = d
    return dirs


DATASET_ID = 511
TRAINER_DIR = "DnnBaselineTrainer__dnnunetPlans__2d"


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A generated 2D dataset, planned with the cpu-tiny budget, and fold 0 trained for 2 x 3 iterations."""
    root = tmp_path_factory.mktemp("e2e")
    env = {name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from diffusion_nnunet.cli.main import main
        from diffusion_nnunet.datasets import make_dataset
        from planning.budget import get_budget
        from planning.pipeline import plan_and_preprocess

        raw = make_dataset("synthetic-us2d", Path(env["nnUNet_raw"]), DATASET_ID, num_train=8, num_test=3, seed=1)
        plan_and_preprocess(str(DATASET_ID), get_budget("cpu-tiny"), num_processes=1)
        assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-device", "cpu", "--seed", "0"]) == 0
        yield {"root": root, "env": env, "raw": raw,
               "model": Path(env["nnUNet_results"]) / raw.name / TRAINER_DIR}


@pytest.fixture
def env(workspace, monkeypatch):
    for k, v in workspace["env"].items():
        monkeypatch.setenv(k, v)
    return workspace




RECYCLE_DIR = "DnnDiffusionTrainer_recycle__dnnunetPlans__2d"


@pytest.fixture(scope="session")
def recycle_model(workspace):
    """The `recycle` diffusion trainer on the same tiny dataset (2 epochs x 3 iterations)."""
    from diffusion_nnunet.cli.main import main

    with pytest.MonkeyPatch.context() as mp:
        for k, v in workspace["env"].items():
            mp.setenv(k, v)
        assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", "recycle", "-device", "cpu",
                     "--seed", "0"]) == 0
    return Path(workspace["env"]["nnUNet_results"]) / workspace["raw"].name / RECYCLE_DIR


def stock_copy(model: Path, parent: Path) -> Path:
    """A results folder as stock nnunetv2 would write it (trainer_name nnUNetTrainer) from our model's fold 0."""
    import torch

    stock = parent / "nnUNetTrainer__dnnunetPlans__2d"
    (stock / "fold_0").mkdir(parents=True)
    for f in ("plans.json", "dataset.json"):
        shutil.copy(model / f, stock / f)
    ckpt = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    ckpt["trainer_name"] = "nnUNetTrainer"
    torch.save(ckpt, stock / "fold_0" / "checkpoint_final.pth")
    return stock
