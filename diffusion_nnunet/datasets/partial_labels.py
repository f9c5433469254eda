"""Partially labelled raw datasets (semi-supervised training, methods.md section 7).

The convention (which images are unlabelled, how dataset.json declares them, where their
preprocessed data lives) is ``dnnunet_core.partial_labels``; this module holds the generators' side.

`apply_labelled_fraction` turns a fully labelled dataset into such a dataset (used by
``dnnunet make-dataset NAME --labelled-fraction F``).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from dnnunet_core.atomic import write_json
from dnnunet_core.errors import UserInputError
from dnnunet_core.partial_labels import UNLABELLED_KEY

logger = logging.getLogger(__name__)


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
