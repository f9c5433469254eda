"""End to end: partially labelled dataset -> plan -> semi_teacher -> semi_cotrain -> predict (tiny, CPU)."""
from __future__ import annotations

import json

import pytest
import torch

DATASET_ID = 531


def train_args(epochs: int = 1) -> list[str]:
    return ["-device", "cpu", "--seed", "0", "--epochs", str(epochs), "--iterations", "2", "--val-iterations", "1"]


TRAIN = train_args()


@pytest.mark.slow
def test_semi_supervised_pipeline(nnunet_dirs, tmp_path):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from diffusion_nnunet.cli.main import main
    from diffusion_nnunet.datasets import make_dataset
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess

    raw = make_dataset("synthetic-us2d", nnunet_dirs["nnUNet_raw"], DATASET_ID, num_train=10, num_test=2, seed=3,
                       labelled_fraction=0.5)
    unlabelled = json.loads((raw / "dataset.json").read_text())["unlabelled"]
    assert len(unlabelled) == 5
    plan_and_preprocess(str(DATASET_ID), get_budget("cpu-tiny"), num_processes=1)

    # nnU-Net's folder holds the labelled cases only; the unlabelled images sit beside it, without labels
    pre = nnunet_dirs["nnUNet_preprocessed"] / raw.name
    fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == 10 and fingerprint["num_unlabelled_cases"] == 5
    labelled_ids = sorted(nnUNetDatasetBlosc2(str(pre / "dnnunetPlans_2d")).identifiers)
    assert labelled_ids == sorted(p.name[:-7] for p in (raw / "labelsTr").iterdir())
    unl = pre / "dnnunetPlans_2d_unlabelled"
    assert sorted(p.stem for p in unl.glob("*.b2nd")) == unlabelled and not list(unl.glob("*_seg*"))

    results = nnunet_dirs["nnUNet_results"] / raw.name
    assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", "semi_teacher", *TRAIN]) == 0
    teacher = results / "DnnSemiTeacherTrainer__dnnunetPlans__2d"
    assert (teacher / "fold_0" / "checkpoint_final.pth").is_file()

    # semi_cotrain refuses to start without its teacher
    assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", "semi_cotrain", *TRAIN]) == 2
    assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", "semi_cotrain", "--teacher", str(teacher),
                 "--rounds", "1", "--semi-option", "copy_paste=0.5", *TRAIN]) == 0
    model = results / "DnnSemiCoTrainer__dnnunetPlans__2d"
    fold = model / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    teacher_ckpt = torch.load(teacher / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert {k.split(".")[0] for k in ckpt["network_weights"]} >= {"teacher", "student", "selected"}
    assert ckpt["init_args"]["dnnunet_config"]["semi"]["rounds"] == 1
    assert ckpt["init_args"]["dnnunet_config"]["semi"]["copy_paste"] == 0.5  # --semi-option reached the trainer
    # the co-trained teacher started from the pre-trained one (and both were updated since)
    key = next(k for k in teacher_ckpt["network_weights"] if k.endswith("weight") and "seg.unet" in k)
    assert not torch.equal(ckpt["network_weights"][f"teacher.{key}"], teacher_ckpt["network_weights"][key])
    assert (fold / "progress.png").is_file() and (fold / "validation" / "summary.json").is_file()

    # --continue resumes teacher and student from the checkpoint (the --teacher weights are not reloaded)
    assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", "semi_cotrain", "--continue", "--skip-validation",
                 *train_args(epochs=2)]) == 0
    resumed = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 2 and resumed["init_args"]["dnnunet_config"]["semi"]["teacher"] == str(teacher)
    assert not torch.equal(resumed["network_weights"][f"teacher.{key}"], ckpt["network_weights"][f"teacher.{key}"])

    # two processes (gloo) go on for one more epoch: the losses run through DDP's forward, and the
    # model choice is made from the validation counts of both ranks
    assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", "semi_cotrain", "--continue", "--skip-validation",
                 "--num-processes", "2", *train_args(epochs=3)]) == 0
    two = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert two["current_epoch"] == 3 and json.loads((fold / "training_stats.json").read_text())["num_processes"] == 2
    assert not torch.equal(two["network_weights"][f"student.{key}"], resumed["network_weights"][f"student.{key}"])

    out = tmp_path / "pred"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-tr", "semi_cotrain",
                 "-f", "0", "-device", "cpu", "--save-probabilities"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["us_ts_0000.nii.gz", "us_ts_0001.nii.gz"]
    assert len(list(out.glob("*.npz"))) == 2  # probabilities, for ensembles
    assert main(["evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(out)]) == 0


@pytest.mark.slow
def test_few_labelled_cases_and_misplaced_options_are_clear_errors(nnunet_dirs, capsys):
    """nnU-Net's 5-fold split fails inside scikit-learn with 4 labelled cases; we say what to do instead."""
    from diffusion_nnunet.cli.main import main
    from diffusion_nnunet.datasets import make_dataset
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess

    raw = make_dataset("synthetic-us2d", nnunet_dirs["nnUNet_raw"], DATASET_ID + 1, num_train=8, num_test=1, seed=3,
                       labelled_fraction=0.5)
    plan_and_preprocess(str(DATASET_ID + 1), get_budget("cpu-tiny"), num_processes=1)
    assert main(["train", "-d", str(DATASET_ID + 1), "-f", "0", *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "4 labelled training case(s)" in err and "-f all" in err
    assert not (nnunet_dirs["nnUNet_preprocessed"] / raw.name / "splits_final.json").exists()
    # semi-supervised options on a trainer that has none are refused, not ignored
    assert main(["train", "-d", str(DATASET_ID + 1), "-f", "all", "--rounds", "3", *TRAIN]) == 2
    assert "'baseline' is not a semi-supervised trainer" in capsys.readouterr().err
    assert main(["train", "-d", str(DATASET_ID + 1), "-f", "all", "--skip-validation", *TRAIN]) == 0
