"""Helpers shared by the planning tests (instead of test modules importing each other)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dnnunet_core.errors import InvalidDataError
from planning.checks import validate_raw_dataset


def set_json(folder: Path, **changes) -> None:
    content = json.loads((folder / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    (folder / "dataset.json").write_text(json.dumps(content, indent=2))


def error_of(folder: Path, **kwargs) -> str:
    with pytest.raises(InvalidDataError) as info:
        validate_raw_dataset(folder, **kwargs)
    return str(info.value)


def _fake_dataset(nnunet_dirs, name, shape_zyx, spacing_zyx, n_cases=20, labels=("background", "a", "b")):
    """A raw dataset with one real tiny image (nnU-Net reads one to pick the reader) and a fingerprint."""
    raw = nnunet_dirs["nnUNet_raw"] / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    img = sitk.GetImageFromArray(np.zeros((2, 4, 4), np.float32))
    sitk.WriteImage(img, str(raw / "imagesTr" / "case_000_0000.nii.gz"))
    sitk.WriteImage(sitk.Cast(img, sitk.sitkUInt8), str(raw / "labelsTr" / "case_000.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {n: i for i, n in enumerate(labels)},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    pre = nnunet_dirs["nnUNet_preprocessed"] / name
    pre.mkdir()
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [list(spacing_zyx)] * n_cases, "shapes_after_crop": [list(shape_zyx)] * n_cases,
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1000.0, "mean": 50.0, "median": 40.0, "min": -1000.0, "percentile_00_5": -900.0,
            "percentile_99_5": 900.0, "std": 100.0}},
    }))
    return name
