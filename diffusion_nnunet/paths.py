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
    # OpenMP threads that spin while waiting make torch's CPU kernels collapse when another
    # process shares the cores (measured on 2 cores: 1.36 s instead of 0.17 s per training step);
    # sleeping waits cost little on an idle machine. Read by OpenMP when torch loads it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def raw() -> Path:
    return Path(os.environ["nnUNet_raw"])


def preprocessed() -> Path:
    return Path(os.environ["nnUNet_preprocessed"])


def results() -> Path:
    return Path(os.environ["nnUNet_results"])
