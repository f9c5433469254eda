"""Partially labelled datasets: `make-dataset --labelled-fraction` and the unlabelled-case lookup."""
from __future__ import annotations

import json

import pytest

from diffusion_nnunet.cli.main import main
from diffusion_nnunet.datasets import make_dataset
from diffusion_nnunet.datasets.partial_labels import choose_labelled, num_labelled
from dnnunet_core.errors import UserInputError
from dnnunet_core.partial_labels import find_unlabelled_cases
from planning.checks import validate_raw_dataset


def _ids(folder, sub):
    return sorted(p.name[: -len(".nii.gz")] for p in (folder / sub).iterdir())


def test_num_labelled_rounds_and_keeps_one():
    assert num_labelled(60, 0.1) == 6
    assert num_labelled(10, 0.25) == 3  # 2.5 rounds half up
    assert num_labelled(5, 0.01) == 1
    assert num_labelled(7, 1.0) == 7
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(UserInputError):
            num_labelled(10, bad)


def test_choice_is_deterministic_per_seed_and_order_free():
    ids = [f"c{i:02d}" for i in range(20)]
    a = choose_labelled(ids, 0.2, seed=3)
    assert a == choose_labelled(list(reversed(ids)), 0.2, seed=3)
    assert len(a) == 4 and set(a) <= set(ids)
    assert any(choose_labelled(ids, 0.2, seed=s) != a for s in range(4, 10))


def test_make_dataset_with_labelled_fraction(tmp_path):
    folder = make_dataset("synthetic-us2d", tmp_path / "a", num_train=10, num_test=2, seed=4, labelled_fraction=0.3)
    meta = json.loads((folder / "dataset.json").read_text())
    labelled = _ids(folder, "labelsTr")
    images = sorted({n[:-5] for n in _ids(folder, "imagesTr")})
    assert len(images) == 10 and len(labelled) == 3
    assert meta["unlabelled"] == sorted(set(images) - set(labelled))
    assert meta["numTraining"] == 10
    assert len(_ids(folder, "labelsTs")) == 2  # test labels are kept for evaluation
    assert sorted(find_unlabelled_cases(folder)) == meta["unlabelled"]
    report = validate_raw_dataset(folder)
    assert report.case_ids == labelled and report.unlabelled_case_ids == meta["unlabelled"]

    again = make_dataset("synthetic-us2d", tmp_path / "b", num_train=10, num_test=2, seed=4, labelled_fraction=0.3)
    assert _ids(again, "labelsTr") == labelled
    other = make_dataset("synthetic-us2d", tmp_path / "c", num_train=10, num_test=2, seed=5, labelled_fraction=0.3)
    assert _ids(other, "labelsTr") != labelled


def test_bad_fraction_is_rejected_before_writing(tmp_path):
    with pytest.raises(UserInputError, match="labelled fraction"):
        make_dataset("synthetic-us2d", tmp_path, num_train=4, num_test=0, labelled_fraction=0.0)
    assert not list(tmp_path.glob("Dataset*"))


def test_cli_option(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert main(["make-dataset", "synthetic-us2d", "--num-train", "6", "--num-test", "0",
                 "--labelled-fraction", "0.5"]) == 0
    folder = next(tmp_path.glob("Dataset501_*"))
    assert len(_ids(folder, "labelsTr")) == 3
    assert len(json.loads((folder / "dataset.json").read_text())["unlabelled"]) == 3


def test_fully_labelled_dataset_has_no_unlabelled_cases(tmp_path):
    folder = make_dataset("synthetic-us2d", tmp_path, num_train=3, num_test=0)
    assert find_unlabelled_cases(folder) == {}
