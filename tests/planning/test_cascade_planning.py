"""issue 19 item 4: `make-dataset synthetic-ct3d --shape` volumes make the planner add nnU-Net's cascade,
and 3d_cascade_fullres shares 3d_fullres's preprocessed data (one folder, markers for both)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.datasets import make_dataset
from dnnunet_core.errors import UserInputError
from planning.budget import get_budget
from planning.pipeline import plan_and_preprocess
from planning.preprocessing_state import MARKER_FOLDER, mark_incomplete, require_complete

# the smallest shape (of those tried: 28/32 slices x 88/96 pixels) that makes cpu-small plan the cascade
CASCADE_SHAPE = (32, 96, 96)


def test_shape_resamples_every_case(nnunet_dirs):
    folder = make_dataset("synthetic-ct3d", nnunet_dirs["nnUNet_raw"], 530, num_train=2, num_test=1,
                          shape=(20, 40, 48))
    for image_file in sorted((folder / "imagesTr").glob("*.nii.gz")) + sorted((folder / "imagesTs").glob("*.nii.gz")):
        image = sitk.ReadImage(str(image_file))
        assert sitk.GetArrayFromImage(image).shape == (20, 40, 48)
        assert image.GetSpacing() == pytest.approx((0.8, 0.8, 3.0))  # the spacing is kept
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "ct_tr_0000.nii.gz")))
    assert label.shape == (20, 40, 48) and set(np.unique(label)) == {0, 1, 2, 3, 4}


def test_shape_refused_where_it_does_not_apply(nnunet_dirs):
    with pytest.raises(UserInputError, match="--shape is for synthetic-ct3d"):
        make_dataset("synthetic-us2d", nnunet_dirs["nnUNet_raw"], 531, num_train=1, num_test=0, shape=(8, 8, 8))
    with pytest.raises(UserInputError, match="three sizes Z Y X of at least 8"):
        make_dataset("synthetic-ct3d", nnunet_dirs["nnUNet_raw"], 531, num_train=1, num_test=0, shape=(4, 64, 64))
    assert not list(nnunet_dirs["nnUNet_raw"].glob("Dataset531_*"))


def test_planner_makes_the_cascade_for_the_shape_dataset(nnunet_dirs):
    make_dataset("synthetic-ct3d", nnunet_dirs["nnUNet_raw"], 532, num_train=3, num_test=0, shape=CASCADE_SHAPE)
    plans = plan_and_preprocess("532", get_budget("cpu-small"), preprocess=False, validate=False)
    configurations = plans["configurations"]
    assert configurations["3d_lowres"]["next_stage"] == "3d_cascade_fullres"
    assert configurations["3d_cascade_fullres"] == {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    # nnU-Net's rule: the fullres patch covers under a quarter of the median image
    assert np.prod(configurations["3d_fullres"]["patch_size"]) / np.prod(CASCADE_SHAPE) < 0.25
    assert configurations["3d_lowres"]["spacing"][1] > configurations["3d_fullres"]["spacing"][1]

    make_dataset("synthetic-ct3d", nnunet_dirs["nnUNet_raw"], 533, num_train=3, num_test=0)  # default geometry
    plans = plan_and_preprocess("533", get_budget("cpu-small"), preprocess=False, validate=False)
    assert "3d_lowres" not in plans["configurations"] and "3d_cascade_fullres" not in plans["configurations"]


def test_cascade_shares_the_fullres_data_folder(nnunet_dirs, caplog):
    folder = make_dataset("synthetic-ct3d", nnunet_dirs["nnUNet_raw"], 534, num_train=2, num_test=0,
                          shape=CASCADE_SHAPE)
    name = folder.name
    with caplog.at_level(logging.INFO, logger="planning.pipeline"):
        plans = plan_and_preprocess("534", get_budget("cpu-tiny"), ["3d_fullres", "3d_cascade_fullres"], validate=False)
    assert "3d_cascade_fullres" in plans["configurations"]
    preprocessing = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Preprocessing")]
    assert preprocessing == [f"Preprocessing {name} / 3d_fullres + 3d_cascade_fullres"]  # written once
    markers = nnunet_dirs["nnUNet_preprocessed"] / name / MARKER_FOLDER
    assert sorted(p.name for p in markers.iterdir()) == ["dnnunetPlans_3d_fullres__3d_cascade_fullres.json",
                                                         "dnnunetPlans_3d_fullres__3d_fullres.json"]
    for cfg in ("3d_fullres", "3d_cascade_fullres"):
        require_complete(name, cfg, "dnnunetPlans")
    # either configuration's marker vouches for the shared folder ...
    (markers / "dnnunetPlans_3d_fullres__3d_fullres.json").unlink()
    require_complete(name, "3d_fullres", "dnnunetPlans")
    assert json.loads((markers / "dnnunetPlans_3d_fullres__3d_cascade_fullres.json").read_text())["num_cases"] == 2
    # ... and preprocessing one of them again invalidates both until it completes
    mark_incomplete(name, "3d_fullres", "dnnunetPlans")
    for cfg in ("3d_fullres", "3d_cascade_fullres"):
        with pytest.raises(UserInputError, match="incomplete"):
            require_complete(name, cfg, "dnnunetPlans")
