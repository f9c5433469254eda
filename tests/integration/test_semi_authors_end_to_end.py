"""End to end (tiny, CPU): a binary dataset -> plan -> semi_teacher -> semi_cotrain / cps with --semi-preset authors."""
from __future__ import annotations

import json

import pytest
import torch

DATASET_ID = 533
TRAIN = ["-device", "cpu", "--seed", "0", "--epochs", "2", "--iterations", "3", "--val-iterations", "1"]


@pytest.mark.slow
def test_authors_preset_trains_end_to_end_on_a_binary_dataset(nnunet_dirs):
    from diffusion_nnunet.cli.main import main
    from diffusion_nnunet.datasets import make_dataset
    from diffusion_nnunet.training.semi_presets import PRESETS
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess

    raw = make_dataset("synthetic-us2d", nnunet_dirs["nnUNet_raw"], DATASET_ID, num_train=10, num_test=2, seed=3,
                       labelled_fraction=0.5, keep_classes=["lesion"])
    assert json.loads((raw / "dataset.json").read_text())["labels"] == {"background": 0, "lesion": 1}
    plan_and_preprocess(str(DATASET_ID), get_budget("cpu-tiny"), num_processes=1)
    results = nnunet_dirs["nnUNet_results"] / raw.name
    assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", "semi_teacher", "--semi-preset", "authors",
                 "-device", "cpu", "--seed", "0", "--epochs", "1", "--iterations", "2", "--val-iterations", "1"]) == 0
    teacher = results / "DnnSemiTeacherTrainer__dnnunetPlans__2d"
    for trainer, folder, rounds in (("semi_cotrain", "DnnSemiCoTrainer", 3), ("cps", "DnnSemiCPSTrainer", 0)):
        extra = ["--teacher", str(teacher)] if trainer == "semi_cotrain" else []
        assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", trainer, "--semi-preset", "authors",
                     *extra, *TRAIN]) == 0
        fold = results / f"{folder}__dnnunetPlans__2d" / "fold_0"
        semi = json.loads((fold / "training_config.json").read_text())["semi"]
        assert semi["rounds"] == rounds
        for key, value in PRESETS["authors"].items():
            if key != "rounds":
                assert semi[key] == value, key
        ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert ckpt["init_args"]["dnnunet_config"]["semi"]["rec_one_step"] is True
        log = next(fold.glob("training_log_*.txt")).read_text()
        assert "Current learning rate" in log
