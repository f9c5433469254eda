"""issue 15 items 1, 3, 5, 6: plan-and-preprocess state: completion markers, splits, refused data and plans."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from dnnunet_core.errors import InvalidDataError, UserInputError
from planning.budget import get_budget
from planning.pipeline import plan_and_preprocess
from planning.preprocessing_state import MARKER_FOLDER, check_splits, require_complete

NAME = "Dataset521_State"


def write_raw(raw_root, images, labels, name=NAME):
    """A 2D raw dataset (numpy arrays (y, x)) in nnU-Net's layout."""
    folder = raw_root / name
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / "imagesTr" / f"c{i:02d}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label.astype(np.uint8)), str(folder / "labelsTr" / f"c{i:02d}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "US"}, "labels": {"background": 0, "object": 1}, "numTraining": len(images),
        "file_ending": ".nii.gz"}))
    return folder


def cases(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.normal(size=(size, size)).astype(np.float32) for _ in range(n)]
    labels = []
    for _ in range(n):
        label = np.zeros((size, size), np.uint8)
        label[size // 4: size // 2, size // 4: size // 2] = 1
        labels.append(label)
    return images, labels


@pytest.fixture
def planned(nnunet_dirs):
    write_raw(nnunet_dirs["nnUNet_raw"], *cases(6))
    plan_and_preprocess(NAME, get_budget("cpu-tiny"), ["2d"], num_processes=1)
    data = nnunet_dirs["nnUNet_preprocessed"] / NAME / "dnnunetPlans_2d"
    return nnunet_dirs, data


def test_all_background_labels_are_refused_before_the_fingerprint(nnunet_dirs):
    images, labels = cases(3)
    write_raw(nnunet_dirs["nnUNet_raw"], images, [0 * label for label in labels])
    with pytest.raises(InvalidDataError, match="all 3 label files contain only background"):
        plan_and_preprocess(NAME, get_budget("cpu-tiny"), num_processes=1)
    assert list(nnunet_dirs["nnUNet_preprocessed"].iterdir()) == []  # nothing left behind


def test_intensities_that_overflow_float32_normalisation_are_refused(nnunet_dirs):
    images, labels = cases(3)
    images[1] = images[1] * np.float32(1e37)  # finite, but squares overflow float32
    write_raw(nnunet_dirs["nnUNet_raw"], images, labels)
    with pytest.raises(InvalidDataError, match=r"c01_0000.nii.gz: intensities up to .*e\+37 overflow the float32"):
        plan_and_preprocess(NAME, get_budget("cpu-tiny"), num_processes=1)
    assert list(nnunet_dirs["nnUNet_preprocessed"].iterdir()) == []


@pytest.mark.slow  # fingerprint / preprocessing in worker processes: tens of seconds
def test_plans_too_small_for_nnunet_training_are_refused_before_preprocessing(nnunet_dirs):
    write_raw(nnunet_dirs["nnUNet_raw"], *cases(6, size=8))
    with pytest.raises(UserInputError, match=r"too small.*2d: patch \(8, 8\).*2 resolution stage.*at least 3"):
        plan_and_preprocess(NAME, get_budget("cpu-tiny"), num_processes=1)
    base = nnunet_dirs["nnUNet_preprocessed"] / NAME
    assert not (base / "dnnunetPlans.json").exists() and not (base / "dnnunetPlans_2d").exists()


@pytest.mark.slow
def test_completion_marker_is_written_last_and_train_refuses_without_it(planned, monkeypatch, capsys):
    dirs, data = planned
    marker = data.parent / MARKER_FOLDER / f"{data.name}__2d.json"
    record = json.loads(marker.read_text())
    assert record["num_cases"] == 6 and record["cases"] == [f"c{i:02d}" for i in range(6)]
    require_complete(NAME, "2d", "dnnunetPlans")  # complete: accepted

    # an interrupted preprocessing: the preprocessor dies after writing some cases
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    def die_half_way(self, dataset, configuration, plans, num_processes):
        shutil.rmtree(data)
        data.mkdir()
        for name in sorted(saved)[: len(saved) // 2]:
            (data / name).write_bytes(saved[name])
        raise KeyboardInterrupt  # as a kill would end it

    record_files = [p for p in data.iterdir() if p.name.startswith("c0")]
    saved = {p.name: p.read_bytes() for p in record_files}
    original_run = DefaultPreprocessor.run
    monkeypatch.setattr(DefaultPreprocessor, "run", die_half_way)
    with pytest.raises(KeyboardInterrupt):
        plan_and_preprocess(NAME, get_budget("cpu-tiny"), ["2d"], num_processes=1)
    assert not marker.exists()
    from diffusion_nnunet.cli.main import main

    assert main(["train", "-d", NAME, "-f", "0", "-device", "cpu"]) == 2
    assert "preprocessed data of Dataset521_State / 2d" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="incomplete.*plan-and-preprocess -d Dataset521_State -c 2d"):
        require_complete(NAME, "2d", "dnnunetPlans")
    assert not (dirs["nnUNet_preprocessed"] / NAME / "splits_final.json").exists()  # no split of 3 cases

    monkeypatch.setattr(DefaultPreprocessor, "run", original_run)  # re-running completes the data
    plan_and_preprocess(NAME, get_budget("cpu-tiny"), ["2d"], num_processes=1)
    require_complete(NAME, "2d", "dnnunetPlans")
    assert sorted(saved) == sorted(p.name for p in data.iterdir() if p.name.startswith("c0"))


@pytest.mark.slow  # fingerprint / preprocessing in worker processes: tens of seconds
def test_data_of_other_plans_or_cases_is_refused(planned):
    dirs, data = planned
    plans_file = dirs["nnUNet_preprocessed"] / NAME / "dnnunetPlans.json"
    plans = json.loads(plans_file.read_text())
    original = plans_file.read_text()
    plans["configurations"]["2d"]["spacing"] = [2.0, 2.0]  # re-planned without preprocessing again
    plans_file.write_text(json.dumps(plans))
    with pytest.raises(UserInputError, match="made with other plans"):
        require_complete(NAME, "2d", "dnnunetPlans")
    plans_file.write_text(original)
    plans["configurations"]["2d"]["batch_size"] = 1  # training-only entries do not invalidate the data
    plans["configurations"]["2d"]["spacing"] = json.loads(original)["configurations"]["2d"]["spacing"]
    plans_file.write_text(json.dumps(plans))
    require_complete(NAME, "2d", "dnnunetPlans")
    for f in data.glob("c03*"):
        f.unlink()
    with pytest.raises(UserInputError, match=r"1 missing \(c03\)"):
        require_complete(NAME, "2d", "dnnunetPlans")


@pytest.mark.slow  # fingerprint / preprocessing in worker processes: tens of seconds
def test_splits_of_other_cases_are_refused(planned):
    dirs, data = planned
    splits_file = dirs["nnUNet_preprocessed"] / NAME / "splits_final.json"
    all_cases = [f"c{i:02d}" for i in range(6)]
    splits_file.write_text(json.dumps([{"train": all_cases[1:3], "val": all_cases[:1]}] * 5))  # made on 3 cases
    with pytest.raises(UserInputError, match=r"fold 0 covers other cases.*3 missing.*Delete it"):
        check_splits(splits_file, data, 0)
    check_splits(splits_file, data, "all")  # 'all' uses no split
    splits_file.write_text(json.dumps([{"train": all_cases[1:], "val": all_cases[:1]}] * 5))
    check_splits(splits_file, data, 0)


@pytest.mark.slow
def test_replanning_warns_about_trained_models_that_use_the_plans(planned, caplog):
    dirs, _ = planned
    plans = json.loads((dirs["nnUNet_preprocessed"] / NAME / "dnnunetPlans.json").read_text())
    model = dirs["nnUNet_results"] / NAME / "DnnBaselineTrainer__dnnunetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"trained")
    (model / "plans.json").write_text(json.dumps(plans))
    with caplog.at_level(logging.WARNING):
        plan_and_preprocess(NAME, get_budget("cpu-tiny"), ["2d"], num_processes=1)
    assert "rewrites" not in caplog.text  # the same plans: nothing to warn about
    plans["configurations"]["2d"]["diffusion"]["start_step"] = 0  # as find-best records it in the model
    (model / "plans.json").write_text(json.dumps(plans))
    with caplog.at_level(logging.WARNING):
        plan_and_preprocess(NAME, get_budget("cpu-tiny"), ["2d"], num_processes=1)
    assert "rewrites" not in caplog.text  # the network and data are the same: the model still fits
    with caplog.at_level(logging.WARNING):
        plan_and_preprocess(NAME, get_budget("cpu-small"), ["2d"], num_processes=1)
    assert "rewrites the plans 'dnnunetPlans' that trained models use" in caplog.text
    assert str(model) in caplog.text and "-p dnnunetPlans_NEW" in caplog.text


@pytest.mark.slow
def test_train_refuses_a_split_of_other_cases(planned, capsys):
    from diffusion_nnunet.cli.main import main

    dirs, _ = planned
    all_cases = [f"c{i:02d}" for i in range(6)]
    splits_file = dirs["nnUNet_preprocessed"] / NAME / "splits_final.json"
    splits_file.write_text(json.dumps([{"train": all_cases[1:3], "val": all_cases[:1]}] * 5))
    assert main(["train", "-d", NAME, "-f", "0", "-device", "cpu", "--epochs", "1", "--iterations", "1"]) == 2
    assert "splits_final.json: fold 0 covers other cases" in capsys.readouterr().err
    assert not list((dirs["nnUNet_results"] / NAME).glob("*/fold_0/checkpoint_*.pth"))
