"""PD-DDPM: sampling starts from a pre-segmentation noised to step k (methods.md section 4)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffusion_nnunet.cli.main import main
from diffusion_nnunet.inference.predictor import load_predictor, run_prediction
from tests.conftest import DATASET_ID, stock_copy

pytestmark = pytest.mark.slow


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


class TrustingDenoiser(torch.nn.Module):
    """A 'perfect' denoiser for a known answer: it returns its (lightly noised) mask input as logits."""

    def __init__(self, num_image_channels: int, num_classes: int):
        super().__init__()
        self.n, self.c = num_image_channels, num_classes

    def forward(self, x, t):
        return 50.0 * (2 * x[:, self.n:self.n + self.c] - 1)


def test_pd_ddpm_with_a_perfect_denoiser_returns_the_presegmentation(env, recycle_model, tmp_path):
    """Ground-truth label maps as the pre-segmentation, k = 0: the output must be exactly those labels,
    through preprocessing (crop, resample), the sliding window and the export back."""
    raw = env["raw"]
    predictor = load_predictor(recycle_model, [0], device=torch.device("cpu"), use_mirroring=False,
                               diffusion_options={"presegmentation": raw / "labelsTs", "start_step": 0})
    predictor.network = TrustingDenoiser(1, 3)
    predictor.list_of_parameters = [predictor.network.state_dict()]
    cases = run_prediction(predictor, raw / "imagesTs", tmp_path / "out")
    assert len(cases) == 3
    for case in cases:
        np.testing.assert_array_equal(_read(tmp_path / "out" / f"{case}.nii.gz"),
                                      _read(raw / "labelsTs" / f"{case}.nii.gz"))


def test_start_step_runs_only_k_plus_one_steps(env, recycle_model, tmp_path):
    raw = env["raw"]
    out = tmp_path / "pd"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-tr", "recycle",
                 "-f", "0", "-device", "cpu", "--disable-tta", "--presegmentation", str(raw / "labelsTs"),
                 "--start-step", "1", "--save-every-step"]) == 0
    assert [p.name for p in sorted((out / "steps").glob("step_*"))] == ["step_00", "step_01"]


def test_presegmenter_can_be_a_stock_nnunet_model_folder(env, recycle_model, tmp_path):
    """`--presegmenter` runs any nnU-Net v2 model folder first (here one with a stock trainer name)."""
    stock = stock_copy(env["model"], tmp_path)
    raw, out = env["raw"], tmp_path / "pd"
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-tr", "recycle",
                 "-f", "0", "-device", "cpu", "--disable-tta", "--presegmenter", str(stock), "--start-step", "1",
                 "--soft-start", "--save-probabilities"]) == 0
    cases = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(cases) == 3
    assert sorted(p.name for p in (out / "presegmentation").glob("*.npz")) == \
        sorted(c.replace(".nii.gz", ".npz") for c in cases)


def test_missing_presegmentation_is_a_clear_error(env, recycle_model, tmp_path, capsys):
    raw = env["raw"]
    partial = tmp_path / "partial"
    partial.mkdir()
    first = sorted((raw / "labelsTs").glob("*.nii.gz"))[0]
    shutil.copy(first, partial / first.name)
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "o"), "-d", str(DATASET_ID),
                 "-tr", "recycle", "-f", "0", "-device", "cpu", "--presegmentation", str(partial),
                 "--start-step", "1"]) == 2
    err = capsys.readouterr().err
    assert "no pre-segmentation for case(s)" in err and str(partial) in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.nii.gz"))  # refused before any compute
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "o2"), "-d", str(DATASET_ID),
                 "-tr", "recycle", "-f", "0", "-device", "cpu", "--start-step", "1"]) == 2
    assert "--start-step needs a pre-segmentation" in capsys.readouterr().err


def test_predict_ensemble_runs_nnunet_pd_ddpm_and_their_ensemble(env, recycle_model, tmp_path):
    raw, out = env["raw"], tmp_path / "all"
    assert main(["predict-ensemble", "-i", str(raw / "imagesTs"), "-o", str(out), "--nnunet", str(env["model"]),
                 "--nnunet-folds", "0", "--diffusion", str(recycle_model), "--start-step", "1", "--num-samples", "2",
                 "-w", "1", "0", "--disable-tta", "-device", "cpu"]) == 0
    cases = sorted(p.name for p in (out / "nnunet").glob("*.nii.gz"))
    assert len(cases) == 3
    for c in cases:  # weights (1, 0): the ensemble is the PD-DDPM prediction
        np.testing.assert_array_equal(_read(out / "ensemble" / c), _read(out / "pd_ddpm" / c))
    assert len(list((out / "pd_ddpm" / "uncertainty").glob("*_entropy.nii.gz"))) == 3


def test_proposed_num_samples_comes_from_the_models_configuration(tmp_path):
    import json

    from diffusion_nnunet.inference.combined import proposed_num_samples

    plans = {"configurations": {"2d": {"diffusion": {"num_samples": 5}}, "3d_fullres": {"diffusion": {"num_samples": 2}},
                                "3d_lowres": {}}}
    for configuration, expected in (("2d", 5), ("3d_fullres", 2), ("3d_lowres", 1)):
        folder = tmp_path / f"DnnDiffusionTrainer_recycle__dnnunetPlans__{configuration}"
        folder.mkdir()
        (folder / "plans.json").write_text(json.dumps(plans))
        assert proposed_num_samples(folder) == expected


class _BatchRecorder(torch.nn.Module):
    """Wraps the network and records the batch size of every call."""

    def __init__(self, network):
        super().__init__()
        self.network, self.batches = network, []

    def forward(self, x, t):
        self.batches.append(x.shape[0])
        return self.network(x, t)


@pytest.mark.parametrize("max_batch, expected", [(None, [2, 2, 1]), (2, [2, 2, 1]), (5, [5]), (1, [1] * 5)])
def test_samples_run_batched_up_to_the_limit(env, recycle_model, tmp_path, max_batch, expected):
    """5 samples: in batches of the plans' batch size (2 for cpu-tiny) by default, or of the given limit;
    each batch runs every reverse step once (PD-DDPM k = 1: two steps)."""
    raw = env["raw"]
    predictor = load_predictor(recycle_model, [0], device=torch.device("cpu"), use_mirroring=False,
                               diffusion_options={"presegmentation": raw / "labelsTs", "start_step": 1,
                                                  "num_samples": 5, "max_sample_batch": max_batch})
    predictor.network = recorder = _BatchRecorder(predictor.network)
    predictor.list_of_parameters = [recorder.state_dict()]
    images = tmp_path / "one"
    images.mkdir()
    first = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    shutil.copy(first, images / first.name)
    run_prediction(predictor, images, tmp_path / "out")
    per_tile = [b for b in expected for _ in range(2)]  # each batch: 2 reverse steps
    assert len(recorder.batches) >= len(per_tile), "the sampler never reached the network"
    assert len(recorder.batches) % len(per_tile) == 0
    assert recorder.batches == per_tile * (len(recorder.batches) // len(per_tile))
    assert len(list((tmp_path / "out" / "uncertainty").glob("*_entropy.nii.gz"))) == 1
