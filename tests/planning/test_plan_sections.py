"""planning.plan_sections: the plans' `diffusion` and `training_budget` sections, present, absent, malformed."""
from __future__ import annotations

import pytest

from dnnunet_core.errors import InvalidDataError
from planning.plan_sections import (
    DEFAULT_TIMESTEPS,
    DiffusionSection,
    TrainingBudgetSection,
    diffusion_section,
    training_budget_section,
)

PLANS = "/data/Dataset001_X/dnnunetPlans.json"


def test_present_sections_are_read():
    configuration = {
        "diffusion": {"timesteps": 7, "sampler": "ddpm", "start_step": 2, "num_samples": 4, "num_samples_reason": "x"},
        "training_budget": {"num_epochs": 12, "num_iterations_per_epoch": 30, "num_val_iterations_per_epoch": 0,
                            "estimated_seconds_per_iteration": 0.25, "reasons": {}},
    }
    assert diffusion_section(configuration, PLANS) == DiffusionSection(present=True, timesteps=7, start_step=2,
                                                                       num_samples=4)
    assert training_budget_section(configuration, PLANS) == TrainingBudgetSection(
        present=True, num_epochs=12, num_iterations_per_epoch=30, num_val_iterations_per_epoch=0,
        estimated_seconds_per_iteration=0.25)


def test_absent_sections_give_the_old_defaults():
    """Stock nnunetv2 plans: T = 5, one sample, no start step; nnU-Net's 1000 x 250 (50) schedule."""
    diffusion = diffusion_section({"patch_size": [32, 32]}, PLANS)
    assert (diffusion.present, diffusion.timesteps, diffusion.start_step, diffusion.num_samples) == \
        (False, DEFAULT_TIMESTEPS, None, 1)
    assert DEFAULT_TIMESTEPS == 5
    budget = training_budget_section({}, PLANS)
    assert (budget.present, budget.num_epochs, budget.num_iterations_per_epoch, budget.num_val_iterations_per_epoch,
            budget.estimated_seconds_per_iteration) == (False, 1000, 250, 50, None)


def test_partial_section_fills_the_missing_keys():
    assert diffusion_section({"diffusion": {"num_samples": 3}}, PLANS) == DiffusionSection(present=True, num_samples=3)
    budget = training_budget_section({"training_budget": {"num_epochs": 4}}, PLANS)
    assert (budget.num_epochs, budget.num_iterations_per_epoch) == (4, 250)


@pytest.mark.parametrize("section, words", [
    ([5], "'diffusion' section must be an object"),
    ({"timesteps": "five"}, "diffusion.timesteps must be a whole number"),
    ({"timesteps": 1}, "diffusion.timesteps must be at least 2"),
    ({"num_samples": 2.5}, "diffusion.num_samples must be a whole number"),
    ({"start_step": -1}, "diffusion.start_step must be at least 0"),
    ({"start_step": True}, "diffusion.start_step must be a whole number"),
])
def test_malformed_diffusion_section_names_the_plans_file(section, words):
    with pytest.raises(InvalidDataError) as err:
        diffusion_section({"diffusion": section}, PLANS)
    assert err.value.path == PLANS and words in str(err.value), str(err.value)


@pytest.mark.parametrize("section, words", [
    ("1000 epochs", "'training_budget' section must be an object"),
    ({"num_epochs": 0}, "training_budget.num_epochs must be at least 1"),
    ({"num_val_iterations_per_epoch": -1}, "training_budget.num_val_iterations_per_epoch must be at least 0"),
    ({"estimated_seconds_per_iteration": "fast"}, "training_budget.estimated_seconds_per_iteration must be a number"),
])
def test_malformed_training_budget_section_names_the_plans_file(section, words):
    with pytest.raises(InvalidDataError) as err:
        training_budget_section({"training_budget": section}, PLANS)
    assert err.value.path == PLANS and words in str(err.value), str(err.value)

