"""Predict-time input checks: each test corrupts one thing in a valid input folder and expects a clear error."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from diffusion_nnunet.inference.input_checks import validate_prediction_inputs
from dnnunet_core.errors import InvalidDataError
from tests.helpers import SIZE_3D, image_array, write_image

CHANNELS2 = {"0": "T1", "1": "T2"}


@pytest.fixture
def pred_dir(tmp_path) -> Path:
    folder = tmp_path / "input"
    for case in ("p1", "p2"):
        for c in range(2):
            write_image(folder / f"{case}_{c:04d}.nii.gz", image_array(SIZE_3D, seed=c))
    return folder


def pred_error(folder: Path, channels=CHANNELS2) -> str:
    with pytest.raises(InvalidDataError) as info:
        validate_prediction_inputs(folder, channels, ".nii.gz")
    return str(info.value)


def test_prediction_inputs_valid(pred_dir):
    (pred_dir / "readme.txt").write_text("ignored")
    assert validate_prediction_inputs(pred_dir, CHANNELS2, ".nii.gz") == ["p1", "p2"]


def test_prediction_input_folder_missing_or_empty(tmp_path):
    assert "does not exist" in pred_error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "empty" in pred_error(tmp_path / "empty")
    (tmp_path / "empty" / "a_0000.nrrd").write_bytes(b"x")
    assert "no files ending in '.nii.gz'" in pred_error(tmp_path / "empty")


def test_prediction_case_missing_channel(pred_dir):
    (pred_dir / "p2_0001.nii.gz").unlink()
    msg = pred_error(pred_dir)
    assert "p2_0001.nii.gz" in msg and "'p2'" in msg and "p2_0000.nii.gz, p2_0001.nii.gz" in msg


def test_prediction_case_extra_channel(pred_dir):
    write_image(pred_dir / "p1_0002.nii.gz", image_array(SIZE_3D))
    msg = pred_error(pred_dir)
    assert "p1_0002.nii.gz" in msg and "channel index 0002" in msg and "2 channel(s)" in msg


def test_prediction_unreadable_file(pred_dir):
    (pred_dir / "p1_0000.nii.gz").write_bytes(os.urandom(1000))
    msg = pred_error(pred_dir)
    assert "p1_0000.nii.gz" in msg and "cannot be read" in msg


def test_prediction_nan(pred_dir):
    arr = image_array(SIZE_3D)
    arr[0, 0, :] = np.inf
    write_image(pred_dir / "p2_0001.nii.gz", arr)
    msg = pred_error(pred_dir)
    assert "p2_0001.nii.gz" in msg and "8 Inf" in msg


def test_prediction_channel_geometry_mismatch(pred_dir):
    write_image(pred_dir / "p1_0001.nii.gz", image_array((8, 8, 6)))
    write_image(pred_dir / "p2_0001.nii.gz", image_array(SIZE_3D), spacing=(1.0, 1.0, 3.0))
    msg = pred_error(pred_dir)
    assert "2 problems" in msg
    assert "p1_0001.nii.gz: size 8x8x6" in msg and "p2_0001.nii.gz: spacing" in msg
