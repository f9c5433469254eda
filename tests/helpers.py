"""Helpers shared by several test modules (instead of tests importing each other)."""
from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def hold_lock_in_subprocess(lock_file: Path, seconds: int = 300) -> subprocess.Popen:
    """Another process that holds `lock_file` (filelock's soft lock, as a training run does) until
    it is killed or `seconds` pass; returns once the lock is held."""
    code = ("import sys, time; from filelock import SoftFileLock; l = SoftFileLock(sys.argv[1], timeout=0); "
            f"l.acquire(); print('held', flush=True); time.sleep({int(seconds)})")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@contextmanager
def planned_with_cpu_tiny(raw_info: dict, dataset_id: int):
    """Plan and preprocess a generated dataset under `raw_info["root"]` with the cpu-tiny budget,
    nnU-Net's folder variables pointing there while the context lasts; yields `raw_info` plus
    "env" (the variables) and "results" (the dataset's results folder)."""
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess

    root = raw_info["root"]
    env = {name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        plan_and_preprocess(str(dataset_id), get_budget("cpu-tiny"), num_processes=1)
        yield {**raw_info, "env": env, "results": Path(env["nnUNet_results"]) / raw_info["raw"].name}


# Tiny raw images and datasets (the raw-data checks, the predict-time input checks)

CASES = ("case_a", "case_b")
LABELS = {"background": 0, "liver": 1, "tumor": 2}
SIZE_3D = (8, 8, 4)  # SimpleITK order (x, y, z)
SIZE_2D = (8, 8)


def write_image(path: Path, array: np.ndarray, spacing=None, origin=None, direction=None) -> Path:
    """Write a numpy array (numpy order z, y, x) as an image with the given geometry."""
    image = sitk.GetImageFromArray(array)
    dim = image.GetDimension()
    image.SetSpacing(spacing or (1.0,) * dim)
    image.SetOrigin(origin or (0.0,) * dim)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def np_shape(size):
    return tuple(reversed(size))


def image_array(size, seed=0):
    return np.random.default_rng(seed).normal(size=np_shape(size)).astype(np.float32)


def label_array(size):
    arr = np.zeros(np_shape(size), dtype=np.uint8)
    arr.reshape(-1)[: arr.size // 2] = 1
    arr.reshape(-1)[:3] = 2
    return arr


def make_dataset(root: Path, n_channels: int = 1, dim: int = 3, cases=CASES, ending: str = ".nii.gz",
                 name: str = "Dataset501_Test") -> Path:
    """A valid nnU-Net raw dataset: `cases`, `n_channels` channels, 8x8x4 (3D) or 8x8 (2D)."""
    folder = root / name
    size = SIZE_3D if dim == 3 else SIZE_2D
    for i, case in enumerate(cases):
        for c in range(n_channels):
            arr = image_array(size, seed=i * 10 + c)
            if ending == ".png":  # PNG holds 8/16-bit unsigned integers only
                arr = (np.abs(arr) * 50).astype(np.uint8)
            write_image(folder / "imagesTr" / f"{case}_{c:04d}{ending}", arr)
        write_image(folder / "labelsTr" / f"{case}{ending}", label_array(size))
    dataset_json = {
        "channel_names": {str(c): ("CT" if c == 0 else f"MR{c}") for c in range(n_channels)},
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": ending,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder
