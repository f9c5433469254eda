"""Binary and reduced-class datasets: `make-dataset NAME --keep-classes A [B ...]`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.cli.main import main
from diffusion_nnunet.datasets import make_dataset
from diffusion_nnunet.datasets.keep_classes import relabel_table, resolve_kept_classes
from dnnunet_core.errors import UserInputError
from planning.checks import validate_raw_dataset


def _labels(folder, split):
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted((folder / split).iterdir())}


def test_synthetic_us_with_the_lesion_only_is_binary_and_matches_the_full_labels(tmp_path):
    full = make_dataset("synthetic-us2d", tmp_path / "full", num_train=3, num_test=1, seed=2)
    binary = make_dataset("synthetic-us2d", tmp_path / "bin", num_train=3, num_test=1, seed=2, keep_classes=["lesion"])
    meta = json.loads((binary / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["kept_classes"] == {"lesion": 2}
    for split in ("labelsTr", "labelsTs"):
        before, after = _labels(full, split), _labels(binary, split)
        assert before.keys() == after.keys() and after
        for name, label in before.items():
            np.testing.assert_array_equal(after[name], (label == 2).astype(after[name].dtype))
            assert set(np.unique(label)) == {0, 1, 2}  # the layer really was there, and is now background
    assert validate_raw_dataset(binary).num_cases == 3  # the raw-dataset checks pass (they raise otherwise)


def test_mni_tissue_white_matter_against_the_rest_by_value_and_two_classes_renumbered(tmp_path):
    wm = make_dataset("mni-tissue2d", tmp_path / "wm", num_train=2, num_test=0, seed=1, keep_classes=["3"])
    assert json.loads((wm / "dataset.json").read_text())["labels"] == {"background": 0, "wm": 1}
    two = make_dataset("mni-tissue2d", tmp_path / "two", num_train=2, num_test=0, seed=1, keep_classes=["wm", "csf_other"])
    meta = json.loads((two / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "csf_other": 1, "wm": 2}  # in the order of the original values
    full = make_dataset("mni-tissue2d", tmp_path / "full", num_train=2, num_test=0, seed=1)
    for name, label in _labels(full, "labelsTr").items():
        np.testing.assert_array_equal(_labels(wm, "labelsTr")[name], (label == 3).astype(np.uint8))
        expected = np.select([label == 1, label == 3], [1, 2], 0)
        np.testing.assert_array_equal(_labels(two, "labelsTr")[name], expected)


def test_keep_classes_with_labelled_fraction_relabels_the_labels_that_stay(tmp_path):
    folder = make_dataset("synthetic-us2d", tmp_path, num_train=6, num_test=1, seed=3, labelled_fraction=0.5,
                          keep_classes=["layer"])
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "layer": 1} and len(meta["unlabelled"]) == 3
    labels = _labels(folder, "labelsTr")
    assert len(labels) == 3 and all(set(np.unique(a)) == {0, 1} for a in labels.values())
    assert len(list((folder / "imagesTr").iterdir())) == 6


def test_every_bad_class_is_reported_at_once_before_anything_is_written(tmp_path):
    labels = {"background": 0, "layer": 1, "lesion": 2}
    with pytest.raises(UserInputError) as err:
        resolve_kept_classes(labels, ["tumour", "0", "lesion", "2", "7"])
    message = str(err.value)
    assert "'tumour'" in message and "background" in message and "named twice" in message and "'7'" in message
    with pytest.raises(UserInputError, match="region"):
        resolve_kept_classes({"background": 0, "whole": [1, 2]}, ["whole"])
    with pytest.raises(UserInputError, match="tumour"):
        make_dataset("synthetic-us2d", tmp_path, num_train=2, num_test=0, keep_classes=["tumour"])
    assert list(tmp_path.iterdir()) == []  # refused before any folder was made
    np.testing.assert_array_equal(relabel_table(labels, [("lesion", 2)]), [0, 0, 1])


def test_cli_option(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert main(["make-dataset", "mni-tissue2d", "--id", "513", "--num-train", "2", "--num-test", "0",
                 "--keep-classes", "wm"]) == 0
    folder = next(tmp_path.glob("Dataset513_*"))
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "wm": 1}
    assert main(["make-dataset", "mni-tissue2d", "--id", "514", "--num-train", "2", "--num-test", "0",
                 "--keep-classes", "bone"]) == 2
