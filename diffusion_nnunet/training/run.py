"""Train one fold: build the trainer from the registry, resume if asked, train, validate."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from diffusion_nnunet import paths
from diffusion_nnunet.errors import UserInputError
from diffusion_nnunet.training import registry
from diffusion_nnunet.training.base import CONFIG_FILE
from diffusion_nnunet.training.config import TrainingConfig, merge_config_values
from diffusion_nnunet.utils.quiet import nnunet_output_to_log
from planning.pipeline import preprocessed_plans_file
from planning.planner import DEFAULT_PLANS_NAME
from planning.validate import find_dataset_folder

logger = logging.getLogger(__name__)

CHECKPOINT_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def find_resume_checkpoint(fold_folder: str | Path) -> Path | None:
    """The checkpoint to continue from: final, else latest, else best, skipping unreadable files.

    A checkpoint that fails to load (truncated, corrupted) is reported and the next one is used.
    """
    for name in CHECKPOINT_ORDER:
        path = Path(fold_folder) / name
        if not path.is_file():
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            if "network_weights" not in ckpt or "current_epoch" not in ckpt:
                raise ValueError("missing network weights or epoch")
            return path
        except Exception as err:  # noqa: BLE001 - any failure to read means: not usable
            logger.warning("%s is unreadable (%s); trying an older checkpoint", path, err)
    return None


def build_trainer(dataset: str, configuration: str, fold: int | str, trainer: str = "baseline",
                  plans_name: str = DEFAULT_PLANS_NAME, device: torch.device = torch.device("cpu"),
                  continue_training: bool = False):
    """Instantiate a registered trainer for a preprocessed dataset (no training yet)."""
    dataset_name = find_dataset_folder(paths.preprocessed(), dataset).name
    plans = json.loads(preprocessed_plans_file(dataset_name, plans_name).read_text())
    if configuration not in plans["configurations"]:
        raise UserInputError(f"configuration {configuration!r} is not in the plans of {dataset_name}; "
                             f"planned: {', '.join(plans['configurations'])}")
    dataset_json = json.loads((paths.preprocessed() / dataset_name / "dataset.json").read_text())
    plans["continue_training"] = continue_training
    entry = registry.get(trainer)
    fold = fold if fold == "all" else int(fold)
    with nnunet_output_to_log(logger):  # nnU-Net prints its device and citation banner
        return entry, entry.cls(plans, configuration, fold, dataset_json, device)


def train_fold(dataset: str, configuration: str, fold: int | str, trainer: str = "baseline",
               plans_name: str = DEFAULT_PLANS_NAME, config_overrides: dict | None = None,
               device: torch.device = torch.device("cpu"), continue_training: bool = False,
               validate: bool = True, save_probabilities: bool = False) -> Path:
    """Train (or continue) one fold and run nnU-Net's final validation.

    Args:
        dataset: id or DatasetXXX_Name (preprocessed).
        configuration: e.g. "2d", "3d_fullres".
        fold: 0-4 or "all".
        trainer: registry name (see `dnnunet train --help`).
        plans_name: plans identifier.
        config_overrides: TrainingConfig fields to set (None values are ignored).
        device: torch device.
        continue_training: resume from the latest good checkpoint (and the saved config).
        validate: run the final validation (predicts the validation cases, writes summary.json).
        save_probabilities: keep validation probabilities (needed for ensembling / find-best).

    Returns:
        The fold's output folder.
    """
    entry, trainer_obj = build_trainer(dataset, configuration, fold, trainer, plans_name, device, continue_training)
    fold_folder = Path(trainer_obj.output_folder)
    values = trainer_obj.config.to_dict()  # the trainer's defaults (its registry entry included)
    saved = fold_folder / CONFIG_FILE
    if continue_training and saved.is_file():
        values = TrainingConfig.load(saved).to_dict()
    if (config_overrides or {}).get("diffusion") and values.get("diffusion") is None:
        raise UserInputError(f"diffusion options were given, but {trainer!r} is not a diffusion trainer")
    values = merge_config_values(values, config_overrides or {})
    trainer_obj.apply_config(TrainingConfig.from_dict(values))

    if continue_training:
        for stale in fold_folder.glob(".checkpoint_*.tmp*"):  # left by a kill during a checkpoint write
            stale.unlink()
        checkpoint = find_resume_checkpoint(fold_folder)
        if checkpoint is None:
            logger.warning("no usable checkpoint in %s: starting a new training", fold_folder)
        else:
            logger.info("continuing from %s", checkpoint)
            trainer_obj.load_checkpoint(str(checkpoint))
    elif any((fold_folder / n).exists() for n in CHECKPOINT_ORDER):
        logger.warning("%s already holds checkpoints; they will be replaced (use --continue to resume)", fold_folder)

    logger.info("training %s (%s) on %s, %s fold %s, device %s: %d epochs x %d iterations", entry.name,
                entry.cls.__name__, trainer_obj.plans_manager.dataset_name, configuration, fold, device,
                trainer_obj.num_epochs, trainer_obj.num_iterations_per_epoch)
    trainer_obj.run_training()
    if validate:
        logger.info("final validation of %s", fold_folder)
        trainer_obj.perform_actual_validation(save_probabilities)
    return fold_folder
