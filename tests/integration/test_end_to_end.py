"""End to end on a tiny generated dataset: plan, train, predict, evaluate, ensemble, resume, stock nnunetv2.

Slow (tens of seconds each): marked `slow`; CI runs them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffusion_nnunet.cli.main import main
from tests.conftest import DATASET_ID, stock_copy

pytestmark = pytest.mark.slow


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_training_writes_nnunet_results_layout(env):
    model = env["model"]
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (model / f).is_file(), f
    fold = model / "fold_0"
    for f in ("checkpoint_final.pth", "progress.png", "training_config.json", "training_stats.json",
              "validation/summary.json"):
        assert (fold / f).is_file(), f
    assert not (fold / "checkpoint_latest.pth").exists()  # nnU-Net removes it once final exists
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "DnnBaselineTrainer" and ckpt["current_epoch"] == 2
    assert len(ckpt["logging"]["train_losses"]) == 2
    stats = json.loads((fold / "training_stats.json").read_text())
    assert stats["epochs_done"] == 2 and stats["median_seconds_per_iteration"] > 0
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    plans = json.loads((model / "plans.json").read_text())
    assert plans["configurations"]["2d"]["training_budget"]["budget"]["name"] == "cpu-tiny"


def test_predict_evaluate_and_ensemble(env, tmp_path, capsys):
    raw = env["raw"]
    a, b, ens = tmp_path / "a", tmp_path / "b", tmp_path / "ens"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(a), "-d", str(DATASET_ID), "-f", "0",
                 "--save-probabilities", "-device", "cpu"]) == 0
    cases = sorted(p.name for p in a.glob("*.nii.gz"))
    assert len(cases) == 3 and all((a / c.replace(".nii.gz", ".npz")).is_file() for c in cases)
    assert not list(a.glob(".partial-*")), "staging folder must be removed"
    assert main(["predict", "-m", str(env["model"]), "-i", str(raw / "imagesTs"), "-o", str(b),
                 "--save-probabilities", "--disable-tta", "-device", "cpu"]) == 0
    assert main(["ensemble", "-i", str(a), str(b), "-o", str(ens), "-w", "1", "0"]) == 0
    for c in cases:  # weight 0 for b: the ensemble is a's prediction
        np.testing.assert_array_equal(_read(ens / c), _read(a / c))
    capsys.readouterr()
    assert main(["evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(a)]) == 0
    out = capsys.readouterr().out
    assert "foreground mean" in out and "HD95" in out
    result = json.loads((a / "evaluation.json").read_text())
    assert len(result["per_case"]) == 3


def test_interrupted_prediction_never_leaves_half_written_outputs(env, tmp_path, monkeypatch):
    raw = env["raw"]
    out = tmp_path / "pred"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-f", "0",
                 "--disable-tta", "-device", "cpu"]) == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.nii.gz")}
    import diffusion_nnunet.inference.predictor as predictor_module

    real_export, calls = predictor_module.export_prediction_from_logits, []

    def export_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash while writing the second case")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "export_prediction_from_logits", export_then_fail)
    with pytest.raises(RuntimeError, match="simulated crash"):  # --overwrite: a folder with results is refused
        main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-f", "0",
              "--disable-tta", "-device", "cpu", "--overwrite"])
    after = {p.name: p.read_bytes() for p in out.glob("*.nii.gz")}
    assert sorted(after) == sorted(before)
    for name, data in after.items():  # every file is a complete, readable image
        assert _read(out / name).shape == _read(raw / "labelsTs" / name).shape
    assert not list(out.glob(".partial-*")) and not list(out.glob("*.tmp*"))


def test_kill_and_resume_finishes_with_the_right_epoch_count(env, tmp_path):
    """SIGKILL a training mid-run; --continue resumes from the last epoch checkpoint and finishes."""
    fold_dir = env["model"] / "fold_1"
    cmd = [sys.executable, "-m", "diffusion_nnunet", "train", "-d", str(DATASET_ID), "-f", "1", "-device", "cpu",
           "--epochs", "8", "--iterations", "4", "--skip-validation"]
    proc_env = {**os.environ, **env["env"], "nnUNet_n_proc_DA": "0", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=proc_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    epochs_done = 0
    while time.time() < deadline and proc.poll() is None:
        stats = fold_dir / "training_stats.json"
        if stats.is_file():
            epochs_done = json.loads(stats.read_text())["epochs_done"]
            if epochs_done >= 2:
                break
        time.sleep(0.2)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed = torch.load(fold_dir / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert 2 <= killed["current_epoch"] < 8
    assert not (fold_dir / "checkpoint_final.pth").exists()

    resumed = subprocess.run(cmd + ["--continue"], env=proc_env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing from {fold_dir / 'checkpoint_latest.pth'}" in resumed.stderr
    final = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 8
    assert len(final["logging"]["train_losses"]) == 8  # nothing lost, nothing counted twice
    # the epochs before the kill were not trained again
    assert f"epoch {killed['current_epoch'] + 1}/8" in resumed.stderr
    assert f"epoch {killed['current_epoch']}/8:" not in resumed.stderr


def test_corrupted_latest_checkpoint_falls_back_to_an_older_one(env):
    from diffusion_nnunet.training.run import find_resume_checkpoint

    fold = env["model"] / "fold_0"
    scratch = fold.parent / "fold_scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    shutil.copy(fold / "checkpoint_best.pth", scratch / "checkpoint_best.pth")
    data = (fold / "checkpoint_final.pth").read_bytes()
    (scratch / "checkpoint_latest.pth").write_bytes(data[: len(data) // 2])  # truncated, as after a crash
    assert find_resume_checkpoint(scratch) == scratch / "checkpoint_best.pth"
    shutil.rmtree(scratch)


def test_stock_nnunetv2_predict_reads_our_model(env, tmp_path):
    """nnUNetv2_predict finds our trainer through nnUNet_extTrainer and predicts like `dnnunet predict`."""
    raw = env["raw"]
    ours, stock = tmp_path / "ours", tmp_path / "stock"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(ours), "-d", str(DATASET_ID), "-f", "0",
                 "-device", "cpu"]) == 0
    ext = subprocess.run([sys.executable, "-m", "diffusion_nnunet", "ext-trainer-path"], capture_output=True,
                         text=True, check=True).stdout.strip()
    exe = Path(sys.executable).parent / "nnUNetv2_predict"
    proc_env = {**os.environ, **env["env"], "nnUNet_extTrainer": ext}
    r = subprocess.run([str(exe), "-i", str(raw / "imagesTs"), "-o", str(stock), "-d", str(DATASET_ID), "-c", "2d",
                        "-f", "0", "-tr", "DnnBaselineTrainer", "-p", "dnnunetPlans", "-device", "cpu",
                        "-npp", "1", "-nps", "1"], env=proc_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    names = sorted(p.name for p in ours.glob("*.nii.gz"))
    assert names == sorted(p.name for p in stock.glob("*.nii.gz")) and names
    for n in names:
        np.testing.assert_array_equal(_read(ours / n), _read(stock / n))


def test_our_predictor_reads_a_stock_nnunet_model_folder(env, tmp_path):
    """A results folder of stock nnunetv2 (trainer_name nnUNetTrainer) predicts through `dnnunet predict -m`."""
    stock = stock_copy(env["model"], tmp_path)
    out_stock, out_ours = tmp_path / "p_stock", tmp_path / "p_ours"
    raw = env["raw"]
    assert main(["predict", "-m", str(stock), "-i", str(raw / "imagesTs"), "-o", str(out_stock), "--disable-tta",
                 "-device", "cpu"]) == 0
    assert main(["predict", "-m", str(env["model"]), "-f", "0", "-i", str(raw / "imagesTs"), "-o", str(out_ours),
                 "--disable-tta", "-device", "cpu"]) == 0
    names = sorted(p.name for p in out_ours.glob("*.nii.gz"))
    assert names and names == sorted(p.name for p in out_stock.glob("*.nii.gz"))
    for n in names:
        np.testing.assert_array_equal(_read(out_ours / n), _read(out_stock / n))
