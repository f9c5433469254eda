"""One command for a folder: the nnU-Net model, PD-DDPM started from its prediction, and their ensemble."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from diffusion_nnunet.ensemble import ensemble_folders
from diffusion_nnunet.inference.predictor import predict_folder

logger = logging.getLogger(__name__)


def proposed_num_samples(model_dir: str | Path) -> int:
    """The PD-DDPM samples the planner proposed for a model (1 where its plans propose none).

    The configuration is the last part of nnU-Net's folder name `<Trainer>__<Plans>__<configuration>`.
    """
    model_dir = Path(model_dir)
    plans = json.loads((model_dir / "plans.json").read_text())
    configuration = plans["configurations"].get(model_dir.name.split("__")[-1], {})
    return int(configuration.get("diffusion", {}).get("num_samples", 1))


def predict_with_ensemble(nnunet_model: str | Path, diffusion_model: str | Path, input_dir: str | Path,
                          output_dir: str | Path, nnunet_folds=None, diffusion_folds=None,
                          start_step: int | None = None, num_samples: int | None = None, weights=None, seed: int = 0,
                          device: torch.device = torch.device("cpu"), use_mirroring: bool = True) -> dict[str, Path]:
    """Write OUT/nnunet, OUT/pd_ddpm and OUT/ensemble (each a prediction folder with probabilities).

    Args:
        nnunet_model: any nnU-Net v2 model folder (ours or stock nnunetv2): the pre-segmenter and
            the ensemble partner.
        diffusion_model: a diffusion model folder (e.g. `recycle`).
        input_dir: images (CASE_0000.nii.gz, ...).
        output_dir: parent of the three prediction folders.
        nnunet_folds: folds of the nnU-Net model (None: all trained).
        diffusion_folds: folds of the diffusion model (None: all trained).
        start_step: PD-DDPM start (None: the plans' default).
        num_samples: diffusion samples per case (above 1, uncertainty maps are written too; None:
            the number the planner proposed in the diffusion model's plans).
        weights: ensemble weights (PD-DDPM, nnU-Net); default equal.
        seed: seed of the sampler.
        device: torch device.
        use_mirroring: test-time mirroring for both models.
    """
    out = Path(output_dir)
    if num_samples is None:
        num_samples = proposed_num_samples(diffusion_model)
    folders = {"nnunet": out / "nnunet", "pd_ddpm": out / "pd_ddpm", "ensemble": out / "ensemble"}
    logger.info("[1/3] nnU-Net prediction")
    predict_folder(nnunet_model, input_dir, folders["nnunet"], nnunet_folds, device=device, save_probabilities=True,
                   use_mirroring=use_mirroring)
    logger.info("[2/3] PD-DDPM from the nnU-Net prediction")
    predict_folder(diffusion_model, input_dir, folders["pd_ddpm"], diffusion_folds, device=device,
                   save_probabilities=True, use_mirroring=use_mirroring,
                   diffusion_options={"presegmentation": folders["nnunet"], "start_step": start_step,
                                      "num_samples": num_samples, "seed": seed})
    logger.info("[3/3] ensemble")
    ensemble_folders([folders["pd_ddpm"], folders["nnunet"]], folders["ensemble"], weights, save_probabilities=True)
    return folders
