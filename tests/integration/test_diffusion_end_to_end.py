"""Diffusion trainers end to end on the tiny generated dataset: train `recycle`, predict, per-step outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffusion_nnunet.cli.main import main
from tests.conftest import DATASET_ID

pytestmark = pytest.mark.slow

def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_recycle_training_writes_a_checkpoint_with_its_config_and_per_step_validation(env, recycle_model):
    fold = recycle_model / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "DnnDiffusionTrainer_recycle"
    cfg = ckpt["init_args"]["dnnunet_config"]["diffusion"]
    assert cfg["strategy"] == "recycle" and cfg["timesteps"] == 5
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    per_step = summary["dice_per_sampling_step"]
    assert len(per_step["mean_foreground_dice"]) == 5 and per_step["steps_run"] == [4, 3, 2, 1, 0]
    assert all(0 <= d <= 1 for d in per_step["mean_foreground_dice"])
    # the time-conditioned network has the baseline's topology plus time layers
    base = torch.load(env["model"] / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert sum(v.numel() for v in ckpt["network_weights"].values()) > \
        sum(v.numel() for v in base["network_weights"].values())


def test_predict_with_every_step_saved_and_reproducible_seed(env, recycle_model, tmp_path):
    raw = env["raw"]
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["predict", "-i", str(raw / "imagesTs"), "-d", str(DATASET_ID), "-tr", "recycle", "-f", "0",
              "-device", "cpu", "--disable-tta", "--seed", "3"]
    assert main(common + ["-o", str(a), "--save-probabilities", "--save-every-step"]) == 0
    assert main(common + ["-o", str(b)]) == 0
    cases = sorted(p.name for p in a.glob("*.nii.gz"))
    assert len(cases) == 3
    for c in cases:
        np.testing.assert_array_equal(_read(a / c), _read(b / c))  # same seed, same prediction
        probs = np.load(a / c.replace(".nii.gz", ".npz"))["probabilities"]
        np.testing.assert_allclose(probs.sum(0), 1, atol=1e-3)
    steps = sorted((a / "steps").glob("step_*"))
    assert [s.name for s in steps] == [f"step_{k:02d}" for k in range(5)]
    # the last step is the prediction
    for c in cases:
        np.testing.assert_array_equal(_read(steps[-1] / c), _read(a / c))
    assert main(["evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(steps[0])]) == 0


def test_ddim_with_fewer_steps_and_several_samples(env, recycle_model, tmp_path):
    raw = env["raw"]
    out = tmp_path / "ddim"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-tr", "recycle",
                 "-f", "0", "-device", "cpu", "--sampler", "ddim", "--steps", "3", "--num-samples", "2",
                 "--save-every-step", "--disable-tta", "--overview-png"]) == 0
    assert len(list((out / "steps").glob("step_*"))) == 3
    args = json.loads((out / "predict_args.json").read_text())
    assert args["diffusion"]["sampler"] == "ddim" and args["diffusion"]["num_samples"] == 2
    # two samples: uncertainty maps in the segmentation's geometry, beside (not among) the predictions
    for seg_file in out.glob("*.nii.gz"):
        case = seg_file.name[:-len(".nii.gz")]
        seg = sitk.ReadImage(str(seg_file))
        for kind in ("entropy", "variance", "mi"):
            img = sitk.ReadImage(str(out / "uncertainty" / f"{case}_{kind}.nii.gz"))
            assert img.GetSize() == seg.GetSize() and img.GetSpacing() == seg.GetSpacing()
            values = sitk.GetArrayFromImage(img)
            assert values.min() >= 0 and values.max() <= np.log(3) + 1e-4
        assert (out / "uncertainty" / f"{case}_overview.png").is_file()
    assert main(["evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(out)]) == 0


def test_too_many_steps_is_a_clear_error(env, recycle_model, tmp_path, capsys):
    raw = env["raw"]
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "x"), "-d", str(DATASET_ID),
                 "-tr", "recycle", "-f", "0", "-device", "cpu", "--steps", "50"]) == 2
    assert "1..5" in capsys.readouterr().err


def test_diffusion_loss_targets_the_ground_truth(env, recycle_model):
    """The gradient pass's loss is computed against the batch's labels, whatever the recycled input."""
    from diffusion_nnunet.training.run import build_trainer

    _, trainer = build_trainer(str(DATASET_ID), "2d", 0, "recycle", device=torch.device("cpu"))
    trainer.initialize()
    seen = []
    trainer.loss = lambda output, target: seen.append(target) or output[0].mean()
    data = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    seg = torch.randint(0, 3, (2, 1, *trainer.configuration_manager.patch_size)).float()
    target = [seg] + [seg[..., ::2 ** i, ::2 ** i] for i in range(1, 3)]
    trainer.compute_loss(data, target)
    assert seen and seen[0] is target
