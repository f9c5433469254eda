"""Bad-input checks: each test corrupts one thing in a tiny valid dataset and expects a clear error."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dnnunet_core.errors import InvalidDataError
from planning.checks import ValidationReport, validate_raw_dataset
from tests.helpers import CASES, LABELS, SIZE_2D, SIZE_3D, image_array, label_array, make_dataset, write_image
from tests.planning.helpers import error_of, set_json


@pytest.fixture
def ds(tmp_path) -> Path:
    return make_dataset(tmp_path)


@pytest.fixture
def ds2(tmp_path) -> Path:
    return make_dataset(tmp_path, n_channels=2)


# --------------------------------------------------------------------------------------------- valid data


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("n_channels", [1, 2])
def test_valid_dataset_passes(tmp_path, dim, n_channels):
    folder = make_dataset(tmp_path, n_channels=n_channels, dim=dim)
    report = validate_raw_dataset(folder)
    assert isinstance(report, ValidationReport)
    assert (report.num_cases, report.num_channels, report.file_ending) == (2, n_channels, ".nii.gz")
    assert report.case_ids == list(CASES)
    assert report.warnings == []


def test_valid_png_rgb_dataset_with_one_file_for_three_channels(tmp_path):
    folder = tmp_path / "Dataset120_Rgb"
    rng = np.random.default_rng(0)
    for case in CASES:
        rgb = sitk.GetImageFromArray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), isVector=True)
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(rgb, str(folder / "imagesTr" / f"{case}_0000.png"))
        write_image(folder / "labelsTr" / f"{case}.png", label_array(SIZE_2D))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": LABELS, "numTraining": 2, "file_ending": ".png"}))
    assert validate_raw_dataset(folder).num_channels == 3


def test_region_labels_and_ignore_label_accepted(ds):
    set_json(ds, labels={"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, regions_class_order=[1, 2])
    label = ds / "labelsTr" / "case_a.nii.gz"
    arr = label_array(SIZE_3D)
    arr[0, 0, 0] = 3
    write_image(label, arr)
    report = validate_raw_dataset(ds)
    assert report.num_cases == len(CASES) and not report.warnings, report.warnings


def test_explicit_dataset_file_list_in_dataset_json(ds):
    set_json(ds, dataset={c: {"images": [f"imagesTr/{c}_0000.nii.gz"], "label": f"labelsTr/{c}.nii.gz"}
                          for c in CASES})
    assert validate_raw_dataset(ds).num_cases == 2
    set_json(ds, dataset={"case_a": {"images": ["imagesTr/nope_0000.nii.gz"], "label": "labelsTr/case_a.nii.gz"}},
             numTraining=1)
    msg = error_of(ds)
    assert "nope_0000.nii.gz" in msg and "missing" in msg


def test_tiny_origin_difference_within_tolerance_passes(ds):
    write_image(ds / "labelsTr" / "case_a.nii.gz", label_array(SIZE_3D), origin=(1e-5, 0.0, 0.0))
    report = validate_raw_dataset(ds)
    assert report.num_cases == len(CASES) and not report.warnings, report.warnings


def test_float_label_with_integer_values_is_a_warning_only(ds):
    write_image(ds / "labelsTr" / "case_a.nii.gz", label_array(SIZE_3D).astype(np.float32))
    report = validate_raw_dataset(ds)
    assert any("case_a.nii.gz" in w and "float32" in w for w in report.warnings)


def test_stray_file_is_a_warning_only(ds):
    (ds / "imagesTr" / "notes.txt").write_text("hello")
    (ds / "labelsTr" / "case_a.nrrd").write_bytes(b"x")
    report = validate_raw_dataset(ds)
    assert any("notes.txt" in w and ".nii.gz" in w for w in report.warnings)
    assert any("case_a.nrrd" in w for w in report.warnings)


def test_unused_label_is_a_warning(ds):
    set_json(ds, labels={**LABELS, "vessel": 3})
    report = validate_raw_dataset(ds)
    assert any("vessel (3)" in w for w in report.warnings)


# --------------------------------------------------------------------------------------------- dataset.json


def test_missing_dataset_json(ds):
    (ds / "dataset.json").unlink()
    msg = error_of(ds)
    assert "dataset.json" in msg and "missing" in msg


def test_dataset_json_not_valid_json_names_the_line(ds):
    (ds / "dataset.json").write_text('{\n  "channel_names": {"0": "CT"},\n  "labels": {"background": 0}\n  "x": 1\n}')
    msg = error_of(ds)
    assert "dataset.json" in msg and "not valid JSON" in msg and "line 4" in msg


def test_dataset_json_missing_keys(ds):
    set_json(ds, file_ending=None, numTraining=None)
    msg = error_of(ds)
    assert "dataset.json" in msg and "numTraining" in msg and "file_ending" in msg


def test_dataset_json_v1_modality_key_gets_a_hint(ds):
    set_json(ds, channel_names=None, modality={"0": "CT"})
    msg = error_of(ds)
    assert "channel_names" in msg and "modality" in msg


def test_dataset_json_labels_not_consecutive(ds):
    set_json(ds, labels={"background": 0, "liver": 1, "tumor": 3})
    msg = error_of(ds)
    assert "dataset.json" in msg and "consecutive" in msg and "[2]" in msg


def test_dataset_json_without_background(ds):
    set_json(ds, labels={"liver": 1, "tumor": 2})
    assert "background" in error_of(ds)


# --------------------------------------------------------------------------------------------- layout


def test_images_tr_missing(ds):
    for f in (ds / "imagesTr").iterdir():
        f.unlink()
    (ds / "imagesTr").rmdir()
    msg = error_of(ds)
    assert "imagesTr" in msg and "missing folder" in msg


def test_labels_tr_empty(ds):
    for f in (ds / "labelsTr").iterdir():
        f.unlink()
    msg = error_of(ds)
    assert "labelsTr" in msg and "empty" in msg


def test_wrong_file_ending_hint(ds):
    set_json(ds, file_ending=".nii")
    msg = error_of(ds)
    assert "imagesTr" in msg and "'.nii.gz'" in msg and "file_ending" in msg


def test_num_training_mismatch(ds):
    set_json(ds, numTraining=3)
    msg = error_of(ds)
    assert "dataset.json" in msg and "numTraining is 3" in msg and "2 label files" in msg


def test_label_without_image(ds):
    write_image(ds / "labelsTr" / "case_c.nii.gz", label_array(SIZE_3D))
    set_json(ds, numTraining=3)
    msg = error_of(ds)
    assert "case_c.nii.gz" in msg and "no image files" in msg and "case_c_0000.nii.gz" in msg


def test_image_without_label(ds):
    write_image(ds / "imagesTr" / "case_c_0000.nii.gz", image_array(SIZE_3D))
    msg = error_of(ds)
    assert "labelsTr/case_c.nii.gz" in msg and "missing label" in msg


def test_missing_channel_file(ds2):
    (ds2 / "imagesTr" / "case_b_0001.nii.gz").unlink()
    msg = error_of(ds2)
    assert "case_b_0001.nii.gz" in msg and "missing channel" in msg and "2 channel(s)" in msg


def test_channel_index_beyond_channel_count(ds):
    write_image(ds / "imagesTr" / "case_a_0001.nii.gz", image_array(SIZE_3D))
    msg = error_of(ds)
    assert "case_a_0001.nii.gz" in msg and "channel index 0001" in msg and "1 channel(s)" in msg


def test_image_name_without_channel_index(ds):
    (ds / "imagesTr" / "case_a_0000.nii.gz").rename(ds / "imagesTr" / "case_a.nii.gz")
    msg = error_of(ds)
    assert "case_a.nii.gz" in msg and "4-digit channel index" in msg


def test_hidden_macos_file_is_an_error(ds):
    (ds / "imagesTr" / "._case_a_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    msg = error_of(ds)
    assert "._case_a_0000.nii.gz" in msg and "hidden file" in msg


# --------------------------------------------------------------------------------------------- unreadable


def test_random_bytes_file_is_unreadable(ds):
    (ds / "imagesTr" / "case_a_0000.nii.gz").write_bytes(os.urandom(2000))
    msg = error_of(ds)
    assert "case_a_0000.nii.gz" in msg and "cannot be read" in msg


def test_empty_file(ds):
    (ds / "labelsTr" / "case_b.nii.gz").write_bytes(b"")
    msg = error_of(ds)
    assert "case_b.nii.gz" in msg and "empty file" in msg


@pytest.mark.parametrize("which", ["imagesTr/case_a_0000.nii.gz", "labelsTr/case_b.nii.gz"])
def test_truncated_gzip_file(tmp_path, which):
    folder = make_dataset(tmp_path)
    # big enough that half of the compressed stream still holds a readable header
    size = (64, 64, 16)
    if which.startswith("images"):
        write_image(folder / which, image_array(size))
    else:
        write_image(folder / which, label_array(size))
    data = (folder / which).read_bytes()
    (folder / which).write_bytes(data[: len(data) // 2])
    msg = error_of(folder)
    assert which.split("/")[1] in msg and "truncated" in msg


def test_truncated_uncompressed_nifti(tmp_path):
    folder = make_dataset(tmp_path, ending=".nii")
    path = folder / "imagesTr" / "case_b_0000.nii"
    path.write_bytes(path.read_bytes()[:500])
    msg = error_of(folder)
    assert "case_b_0000.nii" in msg and "truncated" in msg


def test_check_intensities_false_reads_headers_only(ds):
    arr = image_array(SIZE_3D)
    arr[0, 0, 0] = np.nan
    write_image(ds / "imagesTr" / "case_a_0000.nii.gz", arr)
    validate_raw_dataset(ds, check_intensities=False)
    assert "NaN" in error_of(ds)


# --------------------------------------------------------------------------------------------- geometry


def test_image_label_shape_mismatch(ds):
    write_image(ds / "labelsTr" / "case_a.nii.gz", label_array((8, 8, 5)))
    msg = error_of(ds)
    assert "labelsTr/case_a.nii.gz" in msg and "size 8x8x5" in msg and "8x8x4" in msg


def test_channel_shape_mismatch(ds2):
    write_image(ds2 / "imagesTr" / "case_b_0001.nii.gz", image_array((8, 9, 4)))
    msg = error_of(ds2)
    assert "case_b_0001.nii.gz" in msg and "size 8x9x4" in msg and "case_b_0000.nii.gz" in msg


def test_2d_label_for_3d_image(ds):
    write_image(ds / "labelsTr" / "case_a.nii.gz", label_array(SIZE_2D))
    msg = error_of(ds)
    assert "case_a.nii.gz" in msg and "2-D vs 3-D" in msg


def test_spacing_mismatch(ds):
    write_image(ds / "labelsTr" / "case_b.nii.gz", label_array(SIZE_3D), spacing=(1.0, 1.0, 2.5))
    msg = error_of(ds)
    assert "labelsTr/case_b.nii.gz" in msg and "spacing (1, 1, 2.5)" in msg and "case_b_0000.nii.gz" in msg


def test_spacing_mismatch_between_channels(ds2):
    write_image(ds2 / "imagesTr" / "case_a_0001.nii.gz", image_array(SIZE_3D), spacing=(0.5, 0.5, 1.0))
    msg = error_of(ds2)
    assert "case_a_0001.nii.gz" in msg and "spacing" in msg


def test_origin_mismatch(ds):
    write_image(ds / "labelsTr" / "case_a.nii.gz", label_array(SIZE_3D), origin=(10.0, 0.0, 0.0))
    msg = error_of(ds)
    assert "labelsTr/case_a.nii.gz" in msg and "origin" in msg and "10 mm" in msg


def test_direction_mismatch(ds):
    flipped = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    write_image(ds / "labelsTr" / "case_a.nii.gz", label_array(SIZE_3D), direction=flipped)
    msg = error_of(ds)
    assert "labelsTr/case_a.nii.gz" in msg and "direction" in msg


# --------------------------------------------------------------------------------------------- voxel values


def test_label_values_not_in_dataset_json(ds):
    arr = label_array(SIZE_3D)
    arr[0, 0, :2] = 5
    arr[1, 1, 1] = 255
    write_image(ds / "labelsTr" / "case_b.nii.gz", arr)
    msg = error_of(ds)
    assert "case_b.nii.gz" in msg and "not declared" in msg and "5 (2 voxels)" in msg and "255 (1 voxels)" in msg


def test_float_label_with_fractional_values(ds):
    arr = label_array(SIZE_3D).astype(np.float32)
    arr[0, 0, 0] = 0.5
    write_image(ds / "labelsTr" / "case_a.nii.gz", arr)
    msg = error_of(ds)
    assert "case_a.nii.gz" in msg and "non-integer" in msg and "0.5" in msg and "float32" in msg


def test_nan_and_inf_in_image_counted(ds):
    arr = image_array(SIZE_3D)
    arr[0, 0, :3] = np.nan
    arr[1, 1, 1] = np.inf
    write_image(ds / "imagesTr" / "case_b_0000.nii.gz", arr)
    msg = error_of(ds)
    assert "case_b_0000.nii.gz" in msg and "3 NaN and 1 Inf" in msg


def test_rgb_label_is_wrong_file_type(tmp_path):
    folder = make_dataset(tmp_path, dim=2, ending=".png")
    rgb = sitk.GetImageFromArray(np.zeros((8, 8, 3), dtype=np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(folder / "labelsTr" / "case_a.png"))
    msg = error_of(folder)
    assert "case_a.png" in msg and "3 components" in msg


# --------------------------------------------------------------------------------------------- reporting


def test_all_problems_reported_in_one_error(ds2):
    set_json(ds2, numTraining=5)
    (ds2 / "imagesTr" / "case_a_0001.nii.gz").unlink()
    write_image(ds2 / "labelsTr" / "case_b.nii.gz", label_array(SIZE_3D), spacing=(2.0, 1.0, 1.0))
    arr = image_array(SIZE_3D)
    arr[0, 0, 0] = np.nan
    write_image(ds2 / "imagesTr" / "case_b_0001.nii.gz", arr)
    with pytest.raises(InvalidDataError) as info:
        validate_raw_dataset(ds2)
    msg = str(info.value)
    assert "4 problems" in msg
    for expected in ("dataset.json: numTraining is 5", "imagesTr/case_a_0001.nii.gz: missing channel",
                     "labelsTr/case_b.nii.gz: spacing", "imagesTr/case_b_0001.nii.gz: contains 1 NaN"):
        assert expected in msg
    assert len(info.value.problems) == 4


def test_files_of_incomplete_cases_are_still_checked(ds2):
    (ds2 / "imagesTr" / "case_a_0001.nii.gz").unlink()
    arr = label_array(SIZE_3D)
    arr[0, 0, 0] = 7
    write_image(ds2 / "labelsTr" / "case_a.nii.gz", arr)
    msg = error_of(ds2)
    assert "case_a_0001.nii.gz: missing channel" in msg and "labelsTr/case_a.nii.gz: label values" in msg


def test_images_ts_problems_are_warnings_only(ds):
    write_image(ds / "imagesTs" / "test_1_0000.nii.gz", image_array(SIZE_3D))
    write_image(ds / "imagesTs" / "test_2_0003.nii.gz", image_array(SIZE_3D))
    report = validate_raw_dataset(ds)
    assert any("imagesTs/test_2_0003.nii.gz" in w and "channel index 0003" in w for w in report.warnings)


def test_many_identical_warnings_are_summarised(tmp_path):
    folder = make_dataset(tmp_path, cases=[f"c{i}" for i in range(8)])
    for i in range(8):
        write_image(folder / "labelsTr" / f"c{i}.nii.gz", label_array(SIZE_3D).astype(np.float32))
    warnings = validate_raw_dataset(folder).warnings
    assert len(warnings) == 1 and warnings[0].startswith("8 files: label stored as float32")


def test_worker_processes_give_the_same_answer(ds, monkeypatch):
    monkeypatch.setattr("planning.checks.runner.PARALLEL_MIN_BYTES", 0)
    write_image(ds / "labelsTr" / "case_b.nii.gz", label_array(SIZE_3D), origin=(0.0, 3.0, 0.0))
    msg = error_of(ds, num_processes=2)
    assert "case_b.nii.gz" in msg and "origin" in msg
