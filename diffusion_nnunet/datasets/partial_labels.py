"""Partially labelled raw datasets (semi-supervised training, methods.md section 7).

Convention: an image in ``imagesTr`` without a label file in ``labelsTr`` is *unlabelled*. It
must be declared in dataset.json, either listed in ``"unlabelled": [case ids]`` or covered by
``"allow_unlabelled": true`` (see ``planning/validate.py``), so that a forgotten label file is
still reported as an error. ``numTraining`` counts all training images.

`apply_labelled_fraction` turns a fully labelled dataset into such a dataset (used by
``dnnunet make-dataset NAME --labelled-fraction F``); `find_unlabelled_cases` lists the
unlabelled images of a raw dataset for fingerprinting and preprocessing.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from diffusion_nnunet.errors import UserInputError
from diffusion_nnunet.utils.atomic import write_json

logger = logging.getLogger(__name__)

UNLABELLED_KEY = "unlabelled"
ALLOW_KEY = "allow_unlabelled"


def num_labelled(num_cases: int, fraction: float) -> int:
    """How many of `num_cases` keep their label: ``round(fraction * n)``, at least 1.

    Args:
        num_cases: training cases.
        fraction: labelled share in (0, 1].
    """
    if not 0 < fraction <= 1 or math.isnan(fraction):
        raise UserInputError(f"labelled fraction must be in (0, 1], got {fraction}")
    return min(num_cases, max(1, int(math.floor(fraction * num_cases + 0.5))))


def choose_labelled(case_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The cases that keep their labels: a seeded random subset, the same for the same inputs.

    Args:
        case_ids: all training case ids (order does not matter).
        fraction: labelled share in (0, 1].
        seed: random seed (a stream separate from the generators' per-case streams).
    """
    ordered = sorted(case_ids)
    n = num_labelled(len(ordered), fraction)
    rng = np.random.default_rng([int(seed), 5])
    picked = rng.choice(len(ordered), size=n, replace=False)
    return sorted(ordered[i] for i in picked)


def apply_labelled_fraction(folder: Path, fraction: float, seed: int) -> list[str]:
    """Delete the label files of all but a `fraction` of the training cases; declare them unlabelled.

    Test cases keep their labels (they are for evaluation). dataset.json gets
    ``"unlabelled": [ids]`` and ``numTraining`` keeps counting all training images.

    Args:
        folder: a complete raw dataset folder (imagesTr, labelsTr, dataset.json).
        fraction: labelled share in (0, 1].
        seed: random seed for the choice.

    Returns:
        The unlabelled case ids, sorted.
    """
    folder = Path(folder)
    meta = json.loads((folder / "dataset.json").read_text())
    ending = meta["file_ending"]
    labels = {p.name[: -len(ending)]: p for p in (folder / "labelsTr").iterdir() if p.name.endswith(ending)}
    keep = set(choose_labelled(list(labels), fraction, seed))
    unlabelled = sorted(set(labels) - keep)
    for case_id in unlabelled:
        labels[case_id].unlink()
    meta[UNLABELLED_KEY] = unlabelled
    write_json(meta, folder / "dataset.json")
    logger.info("%s: %d labelled, %d unlabelled training cases (fraction %.3g, seed %d)", folder.name, len(keep),
                len(unlabelled), fraction, seed)
    return unlabelled


def find_unlabelled_cases(raw_folder: Path, dataset_json: dict | None = None) -> dict[str, list[str]]:
    """Training images without a label file, as case id -> channel files (sorted by channel).

    Only images declared unlabelled count (``"unlabelled"`` list or ``"allow_unlabelled": true``);
    run ``planning.validate.validate_raw_dataset`` first to report undeclared ones.

    Args:
        raw_folder: the raw dataset folder.
        dataset_json: its dataset.json content (read from the folder if None).
    """
    raw_folder = Path(raw_folder)
    meta = json.loads((raw_folder / "dataset.json").read_text()) if dataset_json is None else dataset_json
    declared = set(meta.get(UNLABELLED_KEY) or [])
    allow_all = bool(meta.get(ALLOW_KEY, False))
    if not declared and not allow_all or "dataset" in meta:
        return {}
    ending = meta["file_ending"]
    images: dict[str, list[str]] = {}
    for p in sorted((raw_folder / "imagesTr").iterdir()):
        name = p.name
        if name.startswith(".") or not name.endswith(ending) or len(name) < len(ending) + 6:
            continue
        stem = name[: -len(ending)]
        images.setdefault(stem[:-5], []).append(str(p))
    out = {}
    for case_id, files in sorted(images.items()):
        if (raw_folder / "labelsTr" / f"{case_id}{ending}").is_file():
            continue
        if allow_all or case_id in declared:
            out[case_id] = sorted(files)
    return out


UNLABELLED_FOLDER_SUFFIX = "_unlabelled"


def unlabelled_folder_name(data_identifier: str) -> str:
    """Preprocessed folder of the unlabelled images of a configuration, beside nnU-Net's own.

    nnU-Net's ``<data_identifier>`` folder holds only labelled cases (its loaders and splits need
    a segmentation per case); the unlabelled ones live in ``<data_identifier>_unlabelled``.

    Args:
        data_identifier: the configuration's ``data_identifier`` from the plans.
    """
    return f"{data_identifier}{UNLABELLED_FOLDER_SUFFIX}"
