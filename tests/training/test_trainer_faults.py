"""Faults during real (tiny) trainings, for every kind of trainer (issue 15).

- a new run over a finished fold, killed, then --continue: resumes the NEW run;
- a NaN loss stops the run with a clear error, keeping the good epochs' checkpoints;
- baseline in 2 processes, recycle (diffusion), semi_teacher, semi_cotrain and cps: kill -9 mid-run,
  a truncated newest checkpoint, a concurrent run refused, then --continue finishes the run.

Slow: each case starts a training subprocess (the kill is a real SIGKILL, see
`distributed.FAULT_ENV`) on a partially labelled dataset planned with the cpu-tiny budget.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_nnunet.training import distributed, fold_lock
from tests.helpers import hold_lock_in_subprocess

pytestmark = pytest.mark.slow

DATASET_ID = 543
SHORT = ["-device", "cpu", "--seed", "0", "--iterations", "2", "--val-iterations", "1", "--skip-validation"]


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    """10 generated 2D cases, 5 of them labelled (the semi-supervised trainers use the others), cpu-tiny plans."""
    root = tmp_path_factory.mktemp("faults")
    env = {name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from diffusion_nnunet.datasets import make_dataset
        from planning.budget import get_budget
        from planning.pipeline import plan_and_preprocess

        raw = make_dataset("synthetic-us2d", Path(env["nnUNet_raw"]), DATASET_ID, num_train=10, num_test=1, seed=3,
                           labelled_fraction=0.5)
        plan_and_preprocess(str(DATASET_ID), get_budget("cpu-tiny"), num_processes=1)
        yield {"env": env, "results": Path(env["nnUNet_results"]) / raw.name}


@pytest.fixture
def plan_env(tiny_plan, monkeypatch):
    for k, v in tiny_plan["env"].items():
        monkeypatch.setenv(k, v)
    return tiny_plan


def _main(*args: str) -> int:
    from diffusion_nnunet.cli.main import main

    return main(["train", "-d", str(DATASET_ID), *args])


def _subprocess(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"nnUNet_n_proc_DA": "0", "PYTHONUNBUFFERED": "1"}
    if fault:
        env[distributed.FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "diffusion_nnunet", "train", "-d", str(DATASET_ID), *args], env=env,
                          capture_output=True, text=True, timeout=400)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- item 2
def test_continue_after_a_killed_new_run_resumes_the_new_run_not_the_old_final(plan_env, caplog):
    model = plan_env["results"] / "DnnBaselineTrainer__dnnunetPlans__2d"
    fold = model / "fold_0"
    assert _main("-f", "0", "--epochs", "2", *SHORT) == 0  # a finished fold
    old_final = _ckpt(fold / "checkpoint_final.pth")
    assert old_final["current_epoch"] == 2

    # a new run of 5 epochs, SIGKILLed at the first iteration of epoch 4 (3 epochs saved)
    killed = _subprocess(["-f", "0", "--epochs", "5", *SHORT], fault="0:6")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert "held an earlier run: moved it to" in killed.stderr
    assert not (fold / "checkpoint_final.pth").exists()  # the old final is not beside the new run's checkpoints
    assert _ckpt(fold / "checkpoint_latest.pth")["current_epoch"] == 3
    (archived,) = (model / "previous_runs").iterdir()
    assert _ckpt(archived / "checkpoint_final.pth")["current_epoch"] == 2  # kept, out of the way

    caplog.set_level("INFO")
    assert _main("-f", "0", "--continue", *SHORT) == 0  # the killed run's lock is stale: taken over
    assert f"continuing from {fold / 'checkpoint_latest.pth'}" in caplog.text
    final = _ckpt(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == 5 and len(final["logging"]["train_losses"]) == 5
    assert not fold_lock.fold_lock_path(model, 0).exists()


# ----------------------------------------------------------------------------- item 5
def test_a_nan_loss_stops_training_with_a_clear_error_and_keeps_the_good_checkpoints(plan_env, monkeypatch, capsys):
    from diffusion_nnunet.training.baseline import DnnBaselineTrainer

    original = DnnBaselineTrainer.compute_loss

    def nan_from_epoch_2(self, data, target):
        loss = original(self, data, target)
        return loss * float("nan") if self.current_epoch >= 1 else loss

    monkeypatch.setattr(DnnBaselineTrainer, "compute_loss", nan_from_epoch_2)
    model = plan_env["results"] / "DnnBaselineTrainer__dnnunetPlans__2d"
    fold = model / "fold_1"
    assert _main("-f", "1", "--epochs", "3", *SHORT) == 2
    err = capsys.readouterr().err
    assert "the training loss is nan at epoch 2, iteration 1" in err and str(fold) in err
    assert "checkpoint_latest.pth" in err and "--lr" in err
    assert not (fold / "checkpoint_final.pth").exists()  # no NaN model
    latest = _ckpt(fold / "checkpoint_latest.pth")
    assert latest["current_epoch"] == 1
    assert all(torch.isfinite(w).all() for w in latest["network_weights"].values() if w.is_floating_point())
    assert np.isfinite(latest["logging"]["train_losses"]).all()
    assert not fold_lock.fold_lock_path(model, 1).exists()


# ----------------------------------------------------------------------------- every kind of trainer
@pytest.fixture(scope="module")
def teacher(tiny_plan):
    """A finished semi_teacher fold 3 (semi_cotrain's starting point)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in tiny_plan["env"].items():
            mp.setenv(k, v)
        assert _main("-f", "3", "-tr", "semi_teacher", "--epochs", "1", *SHORT) == 0
    return tiny_plan["results"] / "DnnSemiTeacherTrainer__dnnunetPlans__2d"


CASES = {  # name: (trainer, model folder, fold, extra flags, fault "RANK:ITERATION", exit code of the killed run)
    "baseline-2-processes": ("baseline", "DnnBaselineTrainer", 2, ["--num-processes", "2"], "1:4", 1),
    "recycle": ("recycle", "DnnDiffusionTrainer_recycle", 2, [], "0:4", -9),
    "semi_teacher": ("semi_teacher", "DnnSemiTeacherTrainer", 2, [], "0:4", -9),
    "semi_cotrain": ("semi_cotrain", "DnnSemiCoTrainer", 3, ["--teacher"], "0:4", -9),
    "cps": ("cps", "DnnSemiCPSTrainer", 2, [], "0:4", -9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kill_truncated_checkpoint_concurrent_run_and_resume(case, plan_env, request, caplog):
    trainer, cls_name, fold_number, extra, fault, killed_code = CASES[case]
    if extra == ["--teacher"]:
        extra = ["--teacher", str(request.getfixturevalue("teacher"))]
    model = plan_env["results"] / f"{cls_name}__dnnunetPlans__2d"
    fold = model / f"fold_{fold_number}"
    args = ["-f", str(fold_number), "-tr", trainer, *SHORT, *extra]

    # killed at the first iteration of epoch 3 (of 3): epochs 1 and 2 are saved
    killed = _subprocess(args + ["--epochs", "3"], fault=fault)
    assert killed.returncode == killed_code, killed.stderr[-3000:]
    assert not (fold / "checkpoint_final.pth").exists()
    assert _ckpt(fold / "checkpoint_latest.pth")["current_epoch"] == 2
    assert _ckpt(fold / "checkpoint_previous.pth")["current_epoch"] == 1

    # the newest checkpoint is torn (a crash of the disk, say): resume falls back to the previous one
    data = (fold / "checkpoint_latest.pth").read_bytes()
    (fold / "checkpoint_latest.pth").write_bytes(data[: len(data) // 3])
    # the newest good one: previous (epoch 1), or best if the pseudo Dice improved in epoch 2
    best = _ckpt(fold / "checkpoint_best.pth")
    chosen_name = "checkpoint_best.pth" if best["current_epoch"] == 2 else "checkpoint_previous.pth"
    chosen = _ckpt(fold / chosen_name)

    # a second run of the fold while one is running is refused, a resume included, and changes nothing
    lock_file = fold_lock.fold_lock_path(model, fold_number)
    holder = hold_lock_in_subprocess(lock_file)
    try:
        before = sorted((p.name, p.stat().st_mtime_ns) for p in fold.iterdir())
        assert _main(*args, "--continue") == 2
        assert _main(*args, "--epochs", "3") == 2
        assert sorted((p.name, p.stat().st_mtime_ns) for p in fold.iterdir()) == before
    finally:
        holder.kill()
        holder.wait()

    caplog.set_level("INFO")
    assert _main(*args, "--continue") == 0
    if "--num-processes" not in extra:  # (rank 0's messages are in its own process otherwise)
        assert "checkpoint_latest.pth is unreadable" in caplog.text
        assert f"continuing from {fold / chosen_name}" in caplog.text
    final = _ckpt(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == 3 and len(final["logging"]["train_losses"]) == 3
    # resumed from the killed run's checkpoint: its epochs are in the history, not trained again
    done = chosen["current_epoch"]
    assert final["logging"]["train_losses"][:done] == chosen["logging"]["train_losses"][:done]
    assert not lock_file.exists()
    assert not (fold / "checkpoint_latest.pth").exists() and not (fold / "checkpoint_previous.pth").exists()
