"""Validation of partially labelled datasets: images without labels are fine only when declared."""
from __future__ import annotations

import pytest

from planning.checks import validate_raw_dataset
from tests.helpers import SIZE_3D, image_array, make_dataset, write_image
from tests.planning.helpers import error_of, set_json


@pytest.fixture
def ds(tmp_path):
    return make_dataset(tmp_path)


def add_image_only(ds, case="case_c"):
    write_image(ds / "imagesTr" / f"{case}_0000.nii.gz", image_array(SIZE_3D, seed=7))


def test_undeclared_image_without_label_is_an_error_with_hint(ds):
    add_image_only(ds)
    msg = error_of(ds)
    assert "labelsTr/case_c.nii.gz" in msg and "missing label" in msg and "unlabelled" in msg


def test_declared_unlabelled_case_passes(ds):
    add_image_only(ds)
    set_json(ds, unlabelled=["case_c"], numTraining=3)
    report = validate_raw_dataset(ds)
    assert report.case_ids == ["case_a", "case_b"] and report.num_cases == 2
    assert report.unlabelled_case_ids == ["case_c"]


def test_num_training_may_count_labelled_only(ds):
    add_image_only(ds)
    set_json(ds, unlabelled=["case_c"], numTraining=2)
    assert validate_raw_dataset(ds).unlabelled_case_ids == ["case_c"]
    set_json(ds, numTraining=5)
    assert "numTraining is 5" in error_of(ds) and "1 unlabelled" in error_of(ds)


def test_allow_unlabelled_opt_in(ds):
    add_image_only(ds, "case_c")
    add_image_only(ds, "case_d")
    set_json(ds, allow_unlabelled=True, numTraining=4)
    assert validate_raw_dataset(ds).unlabelled_case_ids == ["case_c", "case_d"]


def test_declared_unlabelled_but_has_label(ds):
    set_json(ds, unlabelled=["case_b"])
    msg = error_of(ds)
    assert "labelsTr/case_b.nii.gz" in msg and "'unlabelled'" in msg


def test_declared_unlabelled_without_image(ds):
    set_json(ds, unlabelled=["case_z"])
    msg = error_of(ds)
    assert "case_z" in msg and "imagesTr" in msg


def test_bad_unlabelled_types(ds):
    set_json(ds, unlabelled="case_c")
    assert "'unlabelled' must be a list" in error_of(ds)
    set_json(ds, unlabelled=None, allow_unlabelled="yes")
    assert "'allow_unlabelled' must be true or false" in error_of(ds)


def test_unlabelled_images_are_still_content_checked(ds):
    import numpy as np

    arr = image_array(SIZE_3D)
    arr[0, 0, 0] = np.nan
    write_image(ds / "imagesTr" / "case_c_0000.nii.gz", arr)
    set_json(ds, unlabelled=["case_c"], numTraining=3)
    assert "case_c_0000.nii.gz" in error_of(ds) and "NaN" in error_of(ds)


def test_labels_tr_must_still_hold_labels(ds):
    for f in (ds / "labelsTr").iterdir():
        f.unlink()
    set_json(ds, allow_unlabelled=True)
    assert "labelsTr" in error_of(ds)


def test_unlabelled_with_explicit_file_list_is_rejected(ds):
    set_json(ds, unlabelled=["case_c"], dataset={"case_a": {"images": ["imagesTr/case_a_0000.nii.gz"],
                                                            "label": "labelsTr/case_a.nii.gz"}})
    assert "only supported with imagesTr/labelsTr" in error_of(ds)

