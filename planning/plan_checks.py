"""Checks of new plans before they are written: trainable by nnU-Net, and who uses the old ones."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from dnnunet_core import paths
from dnnunet_core.errors import UserInputError
from planning.preprocessing_state import CONFIGURATION_KEYS as PREPROCESSING_KEYS

logger = logging.getLogger(__name__)

# nnU-Net's deep supervision has one output per stage but the lowest; it weights them 1, 1/2, ...,
# sets the last weight to 0 and normalises: with 2 stages that is 0 / 0 and every loss is NaN.
MIN_STAGES = 3


def refuse_untrainable_plans(plans: dict, configurations: list[str], dataset_name: str) -> None:
    """Refuse plans whose configurations nnU-Net's own training pipeline cannot train.

    Args:
        plans: the new plans (nnU-Net's dict).
        configurations: the configurations that will be preprocessed (unknown names are ignored
            here; the caller reports them).
        dataset_name: for the message.

    Raises:
        UserInputError: a configuration with fewer than `MIN_STAGES` resolution stages (images
            too small), naming its patch size and the way out.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    problems = []
    for cfg in configurations:
        if cfg not in plans["configurations"]:
            continue
        resolved = manager.get_configuration(cfg).configuration
        stages = int(resolved["architecture"]["arch_kwargs"]["n_stages"])
        if stages < MIN_STAGES:
            problems.append(f"{cfg}: patch {resolved['patch_size']} gives a network of {stages} resolution stage(s)")
    if problems:
        raise UserInputError(
            f"{dataset_name}: the images are too small for nnU-Net's training pipeline ({'; '.join(problems)}). "
            f"Its deep-supervision loss needs at least {MIN_STAGES} stages (with 2 its weights are 0/0 and every "
            f"loss is NaN), i.e. images of at least 16 voxels along each axis of the configuration. Use larger "
            f"(or padded) images; nothing was preprocessed")


def _model_relevant(configuration: dict) -> dict:
    """The entries a trained model depends on: its network, patch and the preprocessing of its data
    (not the schedule, nor the diffusion section, which find-best updates in the model's plans)."""
    return {k: configuration.get(k) for k in ("architecture", "patch_size", *PREPROCESSING_KEYS)}


def _trained(folder: Path) -> bool:
    return any(folder.glob("fold_*/checkpoint_*.pth"))


def warn_about_trained_models(dataset_name: str, plans_name: str, new_plans: dict) -> list[Path]:
    """Warn (logging) when new plans differ from those that trained models of this dataset used.

    A model folder `<Trainer>__<plans_name>__<configuration>` holds the plans it was trained with;
    once the preprocessed data follows other plans, its folds can neither be continued nor joined
    by new folds in that folder.

    Returns:
        The model folders whose configuration differs from the new plans.
    """
    root = paths.results() / dataset_name
    if not root.is_dir():
        return []
    affected = []
    for folder in sorted(root.glob(f"*__{plans_name}__*")):
        configuration = folder.name.split("__")[-1]
        plans_file = folder / "plans.json"
        if not plans_file.is_file() or not _trained(folder):
            continue
        try:
            used = json.loads(plans_file.read_text())["configurations"].get(configuration)
        except (OSError, json.JSONDecodeError, KeyError):
            continue
        new = json.loads(json.dumps(new_plans["configurations"].get(configuration), default=str))
        if new is not None and used is not None and _model_relevant(used) != _model_relevant(new):
            affected.append(folder)
    if affected:
        logger.warning(
            "re-planning %s rewrites the plans %r that trained models use: %s. Their folds were trained with the "
            "old plans and do not fit data preprocessed with the new ones. nnU-Net's way out is a new plans "
            "identifier: plan with `-p %s_NEW` (and train/predict with `-p %s_NEW`) to keep both",
            dataset_name, plans_name, ", ".join(str(f) for f in affected), plans_name, plans_name)
    return affected
