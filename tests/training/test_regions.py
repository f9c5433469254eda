"""Region-based labels (dataset.json ``regions_class_order``, issue 19 item 2) on synthetic-brats2d.

The generator writes BraTS's nested regions; the baseline trains as nnU-Net does (sigmoid,
Dice + BCE), which nnunetv2 switches to itself when its label manager has regions.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffusion_nnunet.datasets import make_dataset
from diffusion_nnunet.datasets.synthetic_brats2d import MIN_REGION_PIXELS
from planning.checks import validate_raw_dataset
from tests.helpers import planned_with_cpu_tiny

DATASET_ID = 564
SHORT = ["-device", "cpu", "--seed", "0", "--iterations", "2", "--val-iterations", "1"]
REGIONS = [(1, 2, 3), (2, 3), (3,)]


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def region_raw(tmp_path_factory):
    """6 generated brain-tumour cases and 2 test cases."""
    root = tmp_path_factory.mktemp("regions")
    raw = make_dataset("synthetic-brats2d", root / "nnUNet_raw", DATASET_ID, num_train=6, num_test=2, seed=2)
    return {"root": root, "raw": raw}


@pytest.fixture(scope="module")
def region_plan(region_raw):
    """The region dataset planned with cpu-tiny."""
    with planned_with_cpu_tiny(region_raw, DATASET_ID) as planned:
        yield planned


@pytest.fixture
def plan_env(region_plan, monkeypatch):
    for k, v in region_plan["env"].items():
        monkeypatch.setenv(k, v)
    return region_plan


def test_brats2d_writes_nested_regions_in_four_channels(region_raw, tmp_path):
    raw = region_raw["raw"]
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
                              "enhancing_tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3]
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    for split, count in (("Tr", 6), ("Ts", 2)):
        labels = sorted((raw / f"labels{split}").iterdir())
        assert len(labels) == count
        for f in labels:
            label = _read(f)
            assert set(np.unique(label)) == {0, 1, 2, 3}
            assert all(np.isin(label, r).sum() >= MIN_REGION_PIXELS for r in REGIONS)
            channels = [_read(raw / f"images{split}" / f.name.replace(".nii.gz", f"_{c:04d}.nii.gz")) for c in range(4)]
            # skull-stripped: zero outside the brain, the tumour inside it
            brain = channels[0] > 0
            assert brain[label > 0].all() and not brain.all()
            # the channels differ in contrast: oedema is brighter than white matter in FLAIR, not in T1
            oedema, inner = label == 1, brain & (label == 0)
            assert np.median(channels[3][oedema]) > np.median(channels[3][inner])
            assert np.median(channels[0][oedema]) < np.median(channels[0][inner])
    assert (raw / "test_difficulty.json").is_file()  # varied test difficulty, as the other generators
    assert validate_raw_dataset(raw).num_cases == 6
    again = make_dataset("synthetic-brats2d", tmp_path, DATASET_ID, num_train=1, num_test=0, seed=2)
    first = sorted((raw / "imagesTr").iterdir())[0]
    np.testing.assert_array_equal(_read(again / "imagesTr" / first.name), _read(first))  # seeded per case


@pytest.mark.slow
def test_baseline_trains_regions_with_sigmoid_and_dice_bce_as_nnunet(plan_env):
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss

    from diffusion_nnunet.cli.main import main
    from diffusion_nnunet.training.run import build_trainer

    _, trainer = build_trainer(str(DATASET_ID), "2d", 0, "baseline")
    trainer.initialize()
    assert trainer.label_manager.has_regions and trainer.label_manager.num_segmentation_heads == 3
    assert isinstance(trainer.loss.loss, DC_and_BCE_loss)  # inside nnU-Net's deep-supervision wrapper

    assert main(["train", "-d", str(DATASET_ID), "-f", "0", *SHORT]) == 0
    fold = plan_env["results"] / "DnnBaselineTrainer__dnnunetPlans__2d" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert sorted(summary["mean"]) == ["(1, 2, 3)", "(2, 3)", "(3,)"]  # nnU-Net's per-region validation


@pytest.mark.slow
def test_diffusion_head_trains_predicts_and_ensembles_in_region_space(plan_env, tmp_path):
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss

    from diffusion_nnunet.cli.main import main
    from diffusion_nnunet.training.run import build_trainer

    _, trainer = build_trainer(str(DATASET_ID), "2d", 0, "recycle")
    trainer.initialize()
    # the planner's cost estimates count one mask channel per network output (3 here)
    assert trainer.configuration_manager.configuration["diffusion"]["mask_input_channels"] == 3
    assert trainer.label_space.regions and trainer.label_space.num_channels == 3
    assert isinstance(trainer.loss.loss, DC_and_BCE_loss)  # region Dice + BCE, as the baseline
    batch = next(trainer.get_dataloaders()[0])
    target = batch["target"][0]  # nnU-Net's region target: one {0, 1} channel per region
    torch.testing.assert_close(trainer.label_space.target_x0(target), 2 * target.float() - 1)
    whole, core, enhancing = target.bool().unbind(1)
    assert (core <= whole).all() and (enhancing <= core).all()

    assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", "recycle", *SHORT]) == 0
    model = plan_env["results"] / "DnnDiffusionTrainer_recycle__dnnunetPlans__2d"
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    assert sorted(summary["mean"]) == ["(1, 2, 3)", "(2, 3)", "(3,)"]
    assert np.array(summary["dice_per_sampling_step"]["per_class"]).shape == (5, 3)  # 5 steps x 3 regions

    raw = plan_env["raw"]
    out = tmp_path / "samples"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-tr", "recycle",
                 "-f", "0", "-device", "cpu", "--num-samples", "2", "--save-probabilities"]) == 0
    for f in sorted(out.glob("*.nii.gz")):
        seg = _read(f)
        assert set(np.unique(seg)) <= {0, 1, 2, 3}  # painted in regions_class_order
        probs = np.load(f.with_name(f.name.replace(".nii.gz", ".npz")))["probabilities"]
        assert probs.shape[0] == 3 and not np.allclose(probs.sum(0), 1)  # per-region sigmoid, not a softmax
        entropy = _read(out / "uncertainty" / f.name.replace(".nii.gz", "_entropy.nii.gz"))
        assert entropy.min() >= 0 and entropy.max() <= 3 * np.log(2) + 1e-4  # three Bernoulli entropies
    assert (out / "uncertainty" / "cases.csv").is_file()  # the review list, from case scores per region

    if not (plan_env["results"] / "DnnBaselineTrainer__dnnunetPlans__2d" / "fold_0" / "checkpoint_final.pth").is_file():
        assert main(["train", "-d", str(DATASET_ID), "-f", "0", *SHORT, "--skip-validation"]) == 0
    both = tmp_path / "both"
    assert main(["predict-ensemble", "-i", str(raw / "imagesTs"), "-o", str(both), "--nnunet",
                 str(plan_env["results"] / "DnnBaselineTrainer__dnnunetPlans__2d"), "--diffusion", str(model),
                 "-device", "cpu", "--num-samples", "2"]) == 0
    for name in ("nnunet", "pd_ddpm", "ensemble"):
        assert main(["evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(both / name)]) == 0
        result = json.loads((both / name / "evaluation.json").read_text())
        assert sorted(result["mean"]) == ["enhancing_tumor", "tumor_core", "whole_tumor"]  # Dice per region


@pytest.mark.slow
def test_semi_supervised_trainers_refuse_regions(plan_env):
    from diffusion_nnunet.training.run import build_trainer
    from dnnunet_core.errors import UserInputError

    for name in ("semi_teacher", "semi_cotrain"):
        with pytest.raises(UserInputError, match="region-based labels"):
            build_trainer(str(DATASET_ID), "2d", 0, name)
