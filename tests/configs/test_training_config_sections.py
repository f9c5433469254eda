"""TrainingConfig.resolved reads the plans' sections through planning.plan_sections."""
from __future__ import annotations

import pytest

from diffusion_nnunet.configs.training_config import DiffusionConfig, TrainingConfig
from dnnunet_core.errors import InvalidDataError

PLANS = "/data/Dataset001_X/dnnunetPlans.json"


def test_training_config_resolves_through_the_sections():
    configuration = {"training_budget": {"num_epochs": 3, "num_iterations_per_epoch": 7},
                     "diffusion": {"timesteps": 9}}
    cfg = TrainingConfig(diffusion=DiffusionConfig()).resolved(configuration, PLANS)
    assert (cfg.num_epochs, cfg.num_iterations_per_epoch, cfg.num_val_iterations_per_epoch) == (3, 7, 50)
    assert cfg.diffusion.timesteps == 9
    assert TrainingConfig(diffusion=DiffusionConfig()).resolved({}, PLANS).diffusion.timesteps == 5
    with pytest.raises(InvalidDataError, match="dnnunetPlans.json: training_budget.num_epochs"):
        TrainingConfig().resolved({"training_budget": {"num_epochs": "many"}}, PLANS)


def test_the_trainer_names_its_plans_file():
    """`DnnTrainer.plans_file` from nnunetv2's own PlansManager (its plans name, not a made-up attribute)."""
    from types import SimpleNamespace

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from diffusion_nnunet.training.base import DnnTrainer

    trainer = SimpleNamespace(preprocessed_dataset_folder_base="/pre/Dataset001_X",
                              plans_manager=PlansManager({"plans_name": "dnnunetPlans", "configurations": {}}))
    assert str(DnnTrainer.plans_file.fget(trainer)) == "/pre/Dataset001_X/dnnunetPlans.json"
