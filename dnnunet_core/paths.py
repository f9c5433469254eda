"""nnU-Net's three folders (`nnUNet_raw`, `nnUNet_preprocessed`, `nnUNet_results`).

nnunetv2 reads these environment variables once, at import time. We set defaults under a
project data folder (`$DNNUNET_DATA`, else `./dnnunet_data`) before nnunetv2 is imported, and
our own code always resolves them at call time through the functions below.
"""
from __future__ import annotations

import os
from pathlib import Path

_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def data_root() -> Path:
    """The project data folder under which unset nnU-Net folders default."""
    return Path(os.environ.get("DNNUNET_DATA", "dnnunet_data")).absolute()


def set_default_environment() -> None:
    """Fill unset nnU-Net folder variables, CPU-friendly worker counts and OpenMP waiting."""
    for name in _FOLDERS:
        os.environ.setdefault(name, str(data_root() / name))
    # nnunetv2 defaults to 8 worker processes; each pays seconds of imports on a small machine.
    os.environ.setdefault("nnUNet_def_n_proc", str(min(2, os.cpu_count() or 1)))
    # torch's OpenMP threads spin 300,000 times before they sleep: when another process shares
    # the cores, those spins steal its time slices and CPU training collapsed (1.36 s instead of
    # 0.17 s per step, 2 cores). A short spin keeps the idle speed (docs/benchmarks.md). Read by
    # OpenMP when torch loads it, so it must be set before torch is imported.
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")


def trained_model_folder(dataset_name: str, trainer_class: str, plans_name: str, configuration: str) -> Path:
    """nnU-Net's results folder of one model: `<results>/<dataset>/<TrainerClass>__<plans>__<configuration>`."""
    return results() / dataset_name / f"{trainer_class}__{plans_name}__{configuration}"


def raw() -> Path:
    return Path(os.environ["nnUNet_raw"])


def preprocessed() -> Path:
    return Path(os.environ["nnUNet_preprocessed"])


def results() -> Path:
    return Path(os.environ["nnUNet_results"])
