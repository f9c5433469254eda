"""State between trainings (issue 15): the fold lock, folds outside the split, one plans per model
folder, an earlier run set aside, resume from the newest checkpoint, NaN losses, Ctrl-C.

The fast tests use a fake preprocessed dataset (a plans file and a split, no images): every check
they exercise runs before the trainer is built. The slow ones train a tiny plan.
"""
from __future__ import annotations

import json
import signal
import types
from pathlib import Path

import pytest
import torch

from diffusion_nnunet.training import fold_lock, fold_state
from dnnunet_core.errors import UserInputError
from tests.helpers import hold_lock_in_subprocess

FAKE_ID = 541
FAKE_NAME = f"Dataset{FAKE_ID}_Fake"
MODEL_DIR = "DnnBaselineTrainer__dnnunetPlans__2d"


def _plans(features=(8, 16)) -> dict:
    return {"dataset_name": FAKE_NAME, "plans_name": "dnnunetPlans", "transpose_forward": [0, 1, 2],
            "configurations": {
                "2d": {"data_identifier": "dnnunetPlans_2d", "patch_size": [64, 64], "batch_size": 2,
                       "architecture": {"arch_kwargs": {"features_per_stage": list(features)}}},
                "3d_fullres": {"patch_size": [8, 8, 8]}}}


@pytest.fixture
def fake(nnunet_dirs, monkeypatch):
    """A preprocessed dataset as far as the pre-training checks read it: plans, dataset.json, a 3-fold split.

    It has no preprocessed images, so the completeness check of the data (tested in
    tests/planning/test_preprocessing_state.py) is taken as passed here."""
    monkeypatch.setattr("diffusion_nnunet.training.run.require_complete_preprocessing", lambda *args: None)
    pre = nnunet_dirs["nnUNet_preprocessed"] / FAKE_NAME
    pre.mkdir()
    (pre / "dnnunetPlans.json").write_text(json.dumps(_plans()))
    (pre / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}}))
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["a"], "val": ["b"]}] * 3))
    model = nnunet_dirs["nnUNet_results"] / FAKE_NAME / MODEL_DIR
    return types.SimpleNamespace(pre=pre, model=model, results=nnunet_dirs["nnUNet_results"])


def _main(*args: str) -> int:
    from diffusion_nnunet.cli.main import main

    return main(["train", "-d", str(FAKE_ID), "-device", "cpu", *args])


def _fake_checkpoint(path: Path, epoch: int, plans: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {}, "current_epoch": epoch, "init_args": {"plans": plans or _plans()}}, path)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))} \
        if folder.exists() else {}


# ----------------------------------------------------------------------------- item 10: folds of the split
def test_folds_outside_the_split_are_refused(tmp_path):
    splits = tmp_path / "splits_final.json"
    assert fold_state.check_fold("all", splits) == "all"
    assert fold_state.check_fold("4", splits) == 4  # no split yet: nnU-Net will write 5 folds
    with pytest.raises(UserInputError, match="0..4"):
        fold_state.check_fold("5", splits)
    splits.write_text(json.dumps([{"train": [], "val": []}] * 3))
    assert fold_state.check_fold("2", splits) == 2
    for bad in ("3", "5", "-1"):  # -1 would be fold 2 through a negative index, 3 and 5 a random split
        with pytest.raises(UserInputError, match=r"not in the split: .*3 fold\(s\); choose one of 0..2"):
            fold_state.check_fold(bad, splits)
    with pytest.raises(UserInputError, match="neither a fold number nor 'all'"):
        fold_state.check_fold("abc", splits)


def test_train_refuses_a_fold_outside_the_split_before_any_work(fake, capsys):
    for fold in ("3", "-1", "abc"):
        assert _main("-f", fold) == 2
        assert "fold" in capsys.readouterr().err
    assert not fake.model.exists()  # nothing written, not even the model folder


# ----------------------------------------------------------------------------- item 4: one run per fold
def test_a_second_run_of_a_fold_is_refused_naming_the_lock_and_its_holder(fake, capsys):
    lock_file = fold_lock.fold_lock_path(fake.model, 1)
    (fake.model / "fold_1").mkdir(parents=True)
    holder = hold_lock_in_subprocess(lock_file)
    try:
        before = _tree(fake.model)
        assert _main("-f", "1") == 2
        err = capsys.readouterr().err
        assert str(lock_file) in err and f"PID {holder.pid}" in err and "being trained by another run" in err
        assert _tree(fake.model) == before  # refused before any work
        assert _main("-f", "1", "--continue") == 2  # a resume too
        with pytest.raises(fold_lock.FoldLockedError):  # another fold's --overwrite must wait for this one
            with fold_lock.all_fold_locks(fake.model, ["0", "1"]):
                pass
        assert not fold_lock.fold_lock_path(fake.model, 0).exists()  # the lock it took was given back
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over_and_released_on_exit(tmp_path):
    lock_file = fold_lock.fold_lock_path(tmp_path, 0)
    holder = hold_lock_in_subprocess(lock_file)
    with pytest.raises(fold_lock.FoldLockedError, match=f"PID {holder.pid}"):
        with fold_lock.fold_lock(tmp_path, 0):
            pass
    holder.send_signal(signal.SIGKILL)  # no clean-up: the lock file stays
    holder.wait()
    assert lock_file.exists()
    with fold_lock.fold_lock(tmp_path, 0):  # its PID is gone: stale, taken over
        assert lock_file.exists()
    assert not lock_file.exists()  # released


def test_a_lock_held_on_another_host_is_refused_with_that_host(tmp_path):
    lock_file = fold_lock.fold_lock_path(tmp_path, 0)
    lock_file.write_text("4242\nother-node\n1\n")  # filelock's record: PID, host, start
    with pytest.raises(fold_lock.FoldLockedError, match="PID 4242 on other-node"):
        with fold_lock.fold_lock(tmp_path, 0):
            pass


def test_the_lock_is_released_when_training_is_interrupted(fake, monkeypatch, capsys):
    from diffusion_nnunet.training import run

    seen = []

    def interrupted(*args, **kwargs):
        seen.append(fold_lock.fold_lock_path(fake.model, 2).exists())
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_train_fold_here", interrupted)
    assert _main("-f", "2") == 130
    assert seen == [True]  # held while training
    assert not fold_lock.fold_lock_path(fake.model, 2).exists()
    err = capsys.readouterr().err
    assert "interrupted" in err
    assert f"dnnunet train -d {FAKE_ID} -c 2d -f 2 -tr baseline -p dnnunetPlans -device cpu --continue" in err


def test_list_trainers_needs_no_dataset_or_fold(capsys):
    from diffusion_nnunet.cli.main import main

    assert main(["train", "--list-trainers"]) == 0
    assert "baseline" in capsys.readouterr().out
    assert main(["train", "-f", "0"]) == 2
    assert "-d/--dataset" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 1: one plans per model folder
def test_plans_differences_cover_the_configuration_and_top_level_only():
    old, new = _plans(), _plans((16, 32))
    assert fold_state.plans_differences(old, old, "2d") == []
    assert fold_state.plans_differences(old, new, "2d") == [
        "configurations.2d.architecture.arch_kwargs.features_per_stage: [8, 16] -> [16, 32]"]
    other = _plans()
    other["configurations"]["3d_fullres"]["patch_size"] = [4, 4, 4]  # another configuration: another model folder
    assert fold_state.plans_differences(old, other, "2d") == []
    moved = _plans()
    moved["transpose_forward"] = [2, 1, 0]
    assert fold_state.plans_differences(old, moved, "2d") == ["transpose_forward: [0, 1, 2] -> [2, 1, 0]"]
    # inherits_from is resolved: the same configuration written two ways is the same
    inherited = _plans()
    inherited["configurations"]["base"] = inherited["configurations"].pop("2d")
    inherited["configurations"]["2d"] = {"inherits_from": "base"}
    assert fold_state.plans_differences(inherited, old, "2d") == []
    # find-best's start step in the model's plans is an inference default, not other plans
    chosen = _plans()
    chosen["configurations"]["2d"]["diffusion"] = {"timesteps": 5, "start_step": 0, "start_step_source": "find-best"}
    planned = _plans()
    planned["configurations"]["2d"]["diffusion"] = {"timesteps": 5, "start_step": 1, "start_step_source": "planner"}
    assert fold_state.plans_differences(chosen, planned, "2d") == []
    planned["configurations"]["2d"]["diffusion"]["timesteps"] = 10
    assert fold_state.plans_differences(chosen, planned, "2d") == ["configurations.2d.diffusion.timesteps: 5 -> 10"]


def test_training_over_a_model_folder_of_other_plans_is_refused(fake, capsys):
    fake.model.mkdir(parents=True)
    (fake.model / "plans.json").write_text(json.dumps(_plans()))
    _fake_checkpoint(fake.model / "fold_0" / "checkpoint_final.pth", 2, _plans((4, 8)))  # trained before a re-plan
    before = _tree(fake.model)
    for extra in ([], ["--continue"]):
        assert _main("-f", "1", *extra) == 2
        err = capsys.readouterr().err
        assert "was trained with other plans" in err and "checkpoint_final.pth differs" in err
        assert "-p NEW_PLANS" in err and "--overwrite" in err
    assert _tree(fake.model) == before  # plans.json not rewritten, nothing moved
    assert _main("-f", "0", "--continue", "--overwrite") == 2
    assert "give one of them" in capsys.readouterr().err


def test_overwrite_deletes_a_model_folder_of_other_plans_once_no_fold_is_in_training(fake):
    from diffusion_nnunet.training import run

    fake.model.mkdir(parents=True)
    (fake.model / "plans.json").write_text(json.dumps(_plans((4, 8))))
    for fold in (0, 1):
        _fake_checkpoint(fake.model / f"fold_{fold}" / "checkpoint_final.pth", 2, _plans((4, 8)))
    guard = dict(dataset=str(FAKE_ID), configuration="2d", fold=1, trainer="baseline", plans_name="dnnunetPlans",
                 continue_training=False)
    holder = hold_lock_in_subprocess(fold_lock.fold_lock_path(fake.model, 0))  # fold 0 is in training
    try:
        with pytest.raises(fold_lock.FoldLockedError, match="fold_0"):
            with run._guarded_fold(**guard, overwrite=True):
                pass
        assert (fake.model / "fold_0" / "checkpoint_final.pth").is_file()  # nothing deleted
    finally:
        holder.kill()
        holder.wait()
    with run._guarded_fold(**guard, overwrite=True):
        left = sorted(p.name for p in fake.model.iterdir())
    assert left == ["fold_1.lock"]  # every fold and the old plans' copies are gone; only this run's lock
    assert not any(fake.model.iterdir())  # and it is released


# ----------------------------------------------------------------------------- item 2: a new run sets the earlier aside
def test_a_new_run_moves_the_earlier_run_aside_and_overwrite_deletes_it(fake):
    from diffusion_nnunet.training import run

    fold = fake.model / "fold_2"
    _fake_checkpoint(fold / "checkpoint_final.pth", 2)
    _fake_checkpoint(fold / "checkpoint_best.pth", 2)
    (fold / "validation").mkdir()
    (fold / "validation" / "summary.json").write_text("{}")
    guard = dict(dataset=str(FAKE_ID), configuration="2d", fold=2, trainer="baseline", plans_name="dnnunetPlans")
    with run._guarded_fold(**guard, continue_training=True, overwrite=False):  # a resume keeps everything
        assert (fold / "checkpoint_final.pth").is_file()
    with run._guarded_fold(**guard, continue_training=False, overwrite=False):
        assert not fold.exists()  # the new run starts in an empty fold folder
    (archived,) = (fake.model / fold_state.PREVIOUS_RUNS).iterdir()
    assert archived.name.startswith("fold_2_")
    assert sorted(p.name for p in archived.rglob("*")) == ["checkpoint_best.pth", "checkpoint_final.pth",
                                                           "summary.json", "validation"]
    _fake_checkpoint(fold / "checkpoint_latest.pth", 1)
    with run._guarded_fold(**guard, continue_training=False, overwrite=True):
        assert not fold.exists()
    assert len(list((fake.model / fold_state.PREVIOUS_RUNS).iterdir())) == 1  # deleted, not archived


def test_resume_takes_the_newest_checkpoint_not_an_older_final(tmp_path):
    from diffusion_nnunet.training.run import find_resume_checkpoint

    _fake_checkpoint(tmp_path / "checkpoint_final.pth", 2)  # a run continued past its end (--epochs 6) ...
    _fake_checkpoint(tmp_path / "checkpoint_latest.pth", 5)  # ... and killed at epoch 5
    _fake_checkpoint(tmp_path / "checkpoint_previous.pth", 4)
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_latest.pth"
    _fake_checkpoint(tmp_path / "checkpoint_best.pth", 2)
    (tmp_path / "checkpoint_latest.pth").unlink()
    (tmp_path / "checkpoint_previous.pth").unlink()
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_final.pth"  # ties: final first


# ----------------------------------------------------------------------------- item 5: 0/0 deep-supervision weights
def test_a_plan_whose_deep_supervision_weights_are_zero_over_zero_is_refused():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from diffusion_nnunet.training.base import DnnTrainer

    def trainer_with(stages: int):
        t = types.SimpleNamespace(
            enable_deep_supervision=True, configuration_name="2d",
            configuration_manager=types.SimpleNamespace(pool_op_kernel_sizes=[[1, 1]] + [[2, 2]] * (stages - 1),
                                                        patch_size=[8, 8]),
            plans_manager=types.SimpleNamespace(plans_name="dnnunetPlans", dataset_name=FAKE_NAME))
        t._get_deep_supervision_scales = lambda: nnUNetTrainer._get_deep_supervision_scales(t)
        return t

    # nnU-Net's own weights for two stages: one output, weight 0, normalised by 0
    assert len(trainer_with(2)._get_deep_supervision_scales()) == 1
    with pytest.raises(UserInputError, match="2 resolution stage.*0/0.*cannot train"):
        DnnTrainer._build_loss(trainer_with(2))
