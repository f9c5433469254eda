"""nnU-Net's three folders (`nnUNet_raw`, `nnUNet_preprocessed`, `nnUNet_results`).

nnunetv2 reads these environment variables once, at import time. We set defaults under a
project data folder (`$DNNUNET_DATA`, else `./dnnunet_data`) before nnunetv2 is imported, and
our own code always resolves them at call time through the functions below.
`find_dataset_folder` resolves a dataset id or name to its folder under any of them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from dnnunet_core.errors import UserInputError

_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
_DATASET_FOLDER = re.compile(r"^Dataset(?P<id>\d+)_(?P<name>.+)$")


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


def find_dataset_folder(raw_root: Path, dataset: str | int) -> Path:
    """Resolve a dataset given by id or by folder name to its folder under ``nnUNet_raw``.

    Works the same for ``nnUNet_preprocessed`` and ``nnUNet_results``, which use the same names.

    Args:
        raw_root: the ``nnUNet_raw`` folder (or another folder of ``DatasetXXX_Name`` folders).
        dataset: dataset id (``501``, ``"501"``, ``"5"``) or full folder name (``"Dataset501_Liver"``).

    Returns:
        The dataset folder.

    Raises:
        UserInputError: the dataset does not exist (the message lists the datasets that do) or
            the id matches several folders.
    """
    raw_root = Path(raw_root)
    if isinstance(dataset, bool) or not isinstance(dataset, (int, str)):
        raise UserInputError(f"dataset must be an id like 501 or a folder name like Dataset501_Name, got {dataset!r}")
    text = str(dataset).strip()
    if not raw_root.is_dir():
        what = "is not a folder" if raw_root.exists() else "does not exist"
        raise UserInputError(f"cannot find dataset {text}: the folder {raw_root} {what} "
                             "(check the nnUNet_raw / nnUNet_preprocessed / DNNUNET_DATA variables)")
    existing = sorted(p.name for p in raw_root.iterdir() if p.is_dir() and _DATASET_FOLDER.match(p.name))

    if text.isdigit():
        dataset_id = int(text)
        matches = [name for name in existing if int(_DATASET_FOLDER.match(name)["id"]) == dataset_id]
        if len(matches) == 1:
            return raw_root / matches[0]
        if len(matches) > 1:
            raise UserInputError(
                f"dataset id {dataset_id} is ambiguous: several folders in {raw_root} have it: {', '.join(matches)}; "
                "give the full folder name or rename one"
            )
        wanted = f"dataset id {dataset_id} (folder Dataset{dataset_id:03d}_<Name>)"
    elif _DATASET_FOLDER.match(text):
        if (raw_root / text).is_dir():
            return raw_root / text
        wanted = f"dataset {text}"
    else:
        raise UserInputError(
            f"{text!r} is not a dataset id (e.g. 501) or dataset folder name (e.g. Dataset501_Liver)"
        )
    if existing:
        found = "datasets found there: " + ", ".join(existing)
    elif any(raw_root.iterdir()):
        found = "it contains no DatasetXXX_Name folders"
    else:
        found = "it is empty"
    raise UserInputError(f"{wanted} not found in {raw_root}; {found}")
