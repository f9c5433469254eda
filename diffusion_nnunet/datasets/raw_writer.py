"""Write cases and dataset.json in the nnU-Net v2 raw-dataset layout.

Layout (``file_ending`` is ``.nii.gz``)::

    DatasetXXX_Name/
        dataset.json
        imagesTr/{case}_{channel:04d}.nii.gz   labelsTr/{case}.nii.gz
        imagesTs/{case}_{channel:04d}.nii.gz   labelsTs/{case}.nii.gz

2D datasets are written as 2D NIfTI images (a 2D array, two spacings). nnunetv2's
`SimpleITKIO` reads those as arrays of shape ``(channels, 1, H, W)`` with a dummy slice
spacing of 999 x the largest in-plane spacing, so the fingerprint's median shape has a single
slice and the planner makes only the ``2d`` configuration (no ``3d_fullres``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from diffusion_nnunet.datasets.base import Case, DatasetGenerator
from dnnunet_core.atomic import write_json

logger = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
SPLIT_FOLDERS = {"Tr": ("imagesTr", "labelsTr"), "Ts": ("imagesTs", "labelsTs")}


def image_path(folder: Path, split: str, case_id: str, channel: int) -> Path:
    """Path of one channel of a case, e.g. ``imagesTr/us_0000_0000.nii.gz``.

    Args:
        folder: dataset folder.
        split: ``"Tr"`` or ``"Ts"``.
        case_id: case identifier.
        channel: channel index.
    """
    return folder / SPLIT_FOLDERS[split][0] / f"{case_id}_{channel:04d}{FILE_ENDING}"


def label_path(folder: Path, split: str, case_id: str) -> Path:
    """Path of the label map of a case, e.g. ``labelsTr/us_0000.nii.gz``.

    Args:
        folder: dataset folder.
        split: ``"Tr"`` or ``"Ts"``.
        case_id: case identifier.
    """
    return folder / SPLIT_FOLDERS[split][1] / f"{case_id}{FILE_ENDING}"


def write_array(array: np.ndarray, spacing: tuple[float, ...], destination: Path) -> None:
    """Write a 2D or 3D array as a NIfTI image with the given spacing.

    Origin is zero and direction the identity.

    Args:
        array: ``(H, W)`` or ``(Z, Y, X)`` array.
        spacing: spacing in the array axis order; reversed here for SimpleITK (x first).
        destination: output file (``.nii.gz``).
    """
    if array.ndim not in (2, 3) or len(spacing) != array.ndim:
        raise ValueError(f"array of shape {array.shape} does not match spacing {spacing}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    image.SetOrigin((0.0,) * array.ndim)
    image.SetDirection(tuple(np.eye(array.ndim).ravel().tolist()))
    sitk.WriteImage(image, str(destination), True)


def write_case(folder: Path, case: Case) -> None:
    """Write every channel and the label map of one case.

    Args:
        folder: dataset folder (split sub-folders are created as needed).
        case: the case to write.
    """
    shapes = {c.shape for c in case.channels} | {case.label.shape}
    if len(shapes) != 1:
        raise ValueError(f"case {case.case_id}: channel and label shapes differ: {sorted(shapes)}")
    for sub in SPLIT_FOLDERS[case.split]:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for channel, array in enumerate(case.channels):
        write_array(array, case.spacing, image_path(folder, case.split, case.case_id, channel))
    write_array(case.label.astype(np.uint8), case.spacing, label_path(folder, case.split, case.case_id))


def write_dataset_json(folder: Path, generator: DatasetGenerator, num_training: int, num_test: int) -> None:
    """Write dataset.json for nnU-Net v2.

    Args:
        folder: dataset folder.
        generator: supplies channel names, labels and descriptive fields.
        num_training: number of cases in imagesTr (nnU-Net checks this).
        num_test: number of cases in imagesTs (informative only).
    """
    content = {
        "channel_names": dict(generator.channel_names),
        "labels": {name: list(v) if isinstance(v, tuple) else v for name, v in generator.labels.items()},
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        # SimpleITKIO is what nnunetv2 would pick for .nii.gz anyway; being explicit pins the
        # 2D handling described in this module's docstring.
        "overwrite_image_reader_writer": "SimpleITKIO",
        "name": generator.folder_name,
        "description": generator.description,
        "reference": generator.reference,
        "licence": generator.licence,
        "numTest": int(num_test),
    }
    if generator.regions_class_order is not None:
        content["regions_class_order"] = list(generator.regions_class_order)
    write_json(content, folder / "dataset.json")


def write_cases(folder: Path, generator: DatasetGenerator, cases: Iterable[Case]) -> tuple[int, int]:
    """Write all cases and then dataset.json; return ``(num_training, num_test)``.

    Args:
        folder: dataset folder (created; should be empty).
        generator: the dataset description.
        cases: the cases to write.
    """
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    counts = {"Tr": 0, "Ts": 0}
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise ValueError(f"duplicate case id {case.case_id}")
        seen.add(case.case_id)
        write_case(folder, case)
        counts[case.split] += 1
    write_dataset_json(folder, generator, counts["Tr"], counts["Ts"])
    logger.info("wrote %d training and %d test cases to %s", counts["Tr"], counts["Ts"], folder)
    return counts["Tr"], counts["Ts"]
