"""The unlabelled-case convention of partially labelled raw datasets (semi-supervised training).

The one place that says which training images are unlabelled and where their preprocessed data
lives; planning (fingerprint, preprocessing, the raw-data checks), training and the dataset
generators (``diffusion_nnunet.datasets.partial_labels``) all read it from here.

Convention: an image in ``imagesTr`` without a label file in ``labelsTr`` is *unlabelled*. It
must be declared in dataset.json, either listed in ``"unlabelled": [case ids]`` or covered by
``"allow_unlabelled": true`` (checked by ``planning.checks``), so that a forgotten label file is
still reported as an error. ``numTraining`` counts all training images.
"""
from __future__ import annotations

import json
from pathlib import Path

UNLABELLED_KEY = "unlabelled"
ALLOW_KEY = "allow_unlabelled"


def find_unlabelled_cases(raw_folder: Path, dataset_json: dict | None = None) -> dict[str, list[str]]:
    """Training images without a label file, as case id -> channel files (sorted by channel).

    Only images declared unlabelled count (``"unlabelled"`` list or ``"allow_unlabelled": true``);
    run ``planning.checks.validate_raw_dataset`` first to report undeclared ones.

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
