"""find-best: candidates on the validation fold, the choice, the instructions and the plans update."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from diffusion_nnunet.find_best import Candidate, choose_best, foreground_mean_dice
from dnnunet_core.errors import UserInputError


def _c(name, dice, models=1, steps=0):
    return Candidate(name, [f"m{i}" for i in range(models)], reverse_steps=steps, dice=dice)


def test_choose_best_takes_the_highest_dice_and_breaks_ties_by_cost():
    assert choose_best([_c("a", 0.8), _c("b", 0.9, models=2), _c("c", 0.85)]).name == "b"
    # equal Dice: fewer networks first, then fewer reverse steps
    assert choose_best([_c("ens", 0.9, models=2), _c("single", 0.9)]).name == "single"
    assert choose_best([_c("k3", 0.9, steps=4), _c("k1", 0.9, steps=2)]).name == "k1"
    assert choose_best([_c("nan", math.nan), _c("ok", 0.1)]).name == "ok"
    with pytest.raises(UserInputError):
        choose_best([_c("nan", math.nan)])


def test_foreground_mean_dice_is_nnunets_convention():
    rows = [{"metrics": {"1": {"Dice": 1.0}, "2": {"Dice": math.nan}}},
            {"metrics": {"1": {"Dice": 0.5}, "2": {"Dice": 0.2}}}]
    # class 1: mean 0.75; class 2: NaN skipped, mean 0.2
    assert foreground_mean_dice(rows) == pytest.approx((0.75 + 0.2) / 2)
    assert math.isnan(foreground_mean_dice([]))


@pytest.mark.slow
def test_find_best_on_the_validation_fold(env, recycle_model, tmp_path, capsys):
    from diffusion_nnunet.cli.main import main
    from diffusion_nnunet.evaluation import evaluate_folders
    from diffusion_nnunet.find_best import find_best, validation_cases
    from dnnunet_core import paths

    # a copy, so that the recorded defaults do not change the session's shared model
    diffusion = shutil.copytree(recycle_model, tmp_path / recycle_model.name)
    plans_before = (diffusion / "plans.json").read_text()
    info = find_best("511", "2d", [0], env["model"], [diffusion], start_steps=None, seed=0)

    names = [c["name"] for c in info["candidates"]]
    tag = recycle_model.name.split("__")[0]
    assert names[:2] == ["nnU-Net", tag]
    assert [f"{tag} PD-DDPM k={k}" for k in range(4)] == names[2:6]  # T = 5: k = 0..3 (4 is full sampling)
    assert f"ensemble nnU-Net + {tag}" in names and f"ensemble nnU-Net + {tag} PD-DDPM k=1" in names
    dices = {c["name"]: c["dice"] for c in info["candidates"]}
    assert all(0.0 <= d <= 1.0 for d in dices.values())
    assert info["best"]["dice"] == max(dices.values())

    out = paths.results() / env["raw"].name / "find_best_2d"
    val = validation_cases(env["raw"].name, 0)
    nnunet_pred = out / "fold_0" / "nnU-Net"
    assert sorted(p.name[:-len(".nii.gz")] for p in nnunet_pred.glob("*.nii.gz")) == sorted(val)
    ev = evaluate_folders(paths.preprocessed() / env["raw"].name / "gt_segmentations", nnunet_pred,
                          dataset_json=env["raw"] / "dataset.json", allow_missing=True)
    assert dices["nnU-Net"] == pytest.approx(ev["foreground_mean"]["Dice"])

    # the ensemble candidate is the mean of its two members' probabilities
    case = val[0]
    ens = np.load(out / "fold_0" / f"ensemble_nnU-Net___{tag}" / f"{case}.npz")["probabilities"]
    a = np.load(nnunet_pred / f"{case}.npz")["probabilities"]
    b = np.load(out / "fold_0" / tag / f"{case}.npz")["probabilities"]
    np.testing.assert_allclose(ens, (a + b) / 2, atol=1e-5)

    # the best PD-DDPM start step is recorded in the diffusion model's inference defaults, not its plans
    pd = [c for c in info["candidates"] if c["start_step"] is not None and not c["ensemble_of"]]
    best_k = max(pd, key=lambda c: (c["dice"], -c["reverse_steps"]))["start_step"]
    recorded = json.loads((diffusion / "inference_defaults.json").read_text())["pd_ddpm"]
    assert recorded["start_step"] == best_k and "find-best" in recorded["source"]
    assert info["start_steps_recorded"] == {str(diffusion): best_k}
    assert (diffusion / "plans.json").read_text() == plans_before

    instructions = (out / "inference_instructions.txt").read_text()
    assert info["best"]["name"] in instructions and "dnnunet predict" in instructions
    assert json.loads((out / "inference_information.json").read_text())["best"]["name"] == info["best"]["name"]

    # the command: only the candidates asked for, and the ranking printed
    assert main(["find-best", "-d", "511", "--nnunet", str(env["model"]), "--diffusion", str(diffusion),
                 "--start-steps", "1", "--keep-plans", "-device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "best:" in printed and f"{tag} PD-DDPM k=1" in printed and "PD-DDPM k=2" not in printed


@pytest.mark.slow
def test_find_best_refuses_a_start_step_at_full_sampling(env, recycle_model, tmp_path):
    from diffusion_nnunet.find_best import find_best

    with pytest.raises(UserInputError, match="start step 4"):
        find_best("511", "2d", [0], env["model"], [recycle_model], start_steps=[4])
