"""The plans' extra sections, `diffusion` and `training_budget`, read in one place.

The planner (`planning.planner`) writes both into every configuration of plans.json; nnunetv2
ignores them. Plans without a section (stock nnunetv2 plans, plans from before the section
existed) still work: every field then has the default documented on its dataclass, the value
that the code assumed before this module existed. A section that is there but malformed (not an
object, a value of the wrong type or out of range) is an `InvalidDataError` naming the plans file.
Only the fields our code reads are typed here; the sections hold more (reasons, cost estimates)
for people reading plans.json.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dnnunet_core.errors import InvalidDataError

__all__ = ["DEFAULT_TIMESTEPS", "FIND_BEST_KEYS", "DiffusionSection", "TrainingBudgetSection",
           "diffusion_section", "training_budget_section"]

DEFAULT_TIMESTEPS = 5  # methods.md: T = 5 for training and sampling
# keys that find-best wrote into the diffusion section before inference_defaults.json existed:
# they describe a choice made after training, not the plan
FIND_BEST_KEYS = ("start_step", "start_step_source")


@dataclass(frozen=True)
class DiffusionSection:
    """A configuration's `diffusion` section (the fields the code reads).

    Args:
        present: the plans have the section.
        timesteps: T of the noise schedule (default 5).
        start_step: PD-DDPM's start step (default None: none proposed).
        num_samples: PD-DDPM samples per case the planner proposes (default 1).
    """

    present: bool = False
    timesteps: int = DEFAULT_TIMESTEPS
    start_step: int | None = None
    num_samples: int = 1


@dataclass(frozen=True)
class TrainingBudgetSection:
    """A configuration's `training_budget` section (the fields the code reads).

    Args:
        present: the plans have the section.
        num_epochs: epochs (default 1000, nnU-Net's).
        num_iterations_per_epoch: training iterations per epoch (default 250, nnU-Net's).
        num_val_iterations_per_epoch: validation iterations per epoch (default 50, nnU-Net's).
        estimated_seconds_per_iteration: the planner's estimate (default None: none made).
    """

    present: bool = False
    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50
    estimated_seconds_per_iteration: float | None = None


def diffusion_section(configuration: Mapping[str, Any], plans_file: str | Path) -> DiffusionSection:
    """The `diffusion` section of one configuration of the plans (defaults where absent).

    Args:
        configuration: the configuration's entry of plans.json (e.g. `plans["configurations"]["2d"]`).
        plans_file: the file it came from, named in errors.

    Raises:
        InvalidDataError: the section is not an object, or a value has the wrong type or range.
    """
    section = _section(configuration, "diffusion", plans_file)
    if section is None:
        return DiffusionSection()
    read = _Reader(section, "diffusion", plans_file)
    default = DiffusionSection()
    return DiffusionSection(present=True,
                            timesteps=read.integer("timesteps", default.timesteps, minimum=2),
                            start_step=read.integer("start_step", default.start_step, minimum=0),
                            num_samples=read.integer("num_samples", default.num_samples, minimum=1))


def training_budget_section(configuration: Mapping[str, Any], plans_file: str | Path) -> TrainingBudgetSection:
    """The `training_budget` section of one configuration of the plans (defaults where absent).

    Args:
        configuration: the configuration's entry of plans.json.
        plans_file: the file it came from, named in errors.

    Raises:
        InvalidDataError: the section is not an object, or a value has the wrong type or range.
    """
    section = _section(configuration, "training_budget", plans_file)
    if section is None:
        return TrainingBudgetSection()
    read = _Reader(section, "training_budget", plans_file)
    default = TrainingBudgetSection()
    return TrainingBudgetSection(
        present=True,
        num_epochs=read.integer("num_epochs", default.num_epochs, minimum=1),
        num_iterations_per_epoch=read.integer("num_iterations_per_epoch", default.num_iterations_per_epoch, minimum=1),
        num_val_iterations_per_epoch=read.integer("num_val_iterations_per_epoch",
                                                  default.num_val_iterations_per_epoch, minimum=0),
        estimated_seconds_per_iteration=read.number("estimated_seconds_per_iteration",
                                                    default.estimated_seconds_per_iteration))


def _section(configuration: Mapping[str, Any], name: str, plans_file: str | Path) -> Mapping[str, Any] | None:
    section = configuration.get(name)
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise InvalidDataError(plans_file, f"the configuration's {name!r} section must be an object, "
                                           f"got {type(section).__name__}; re-plan with `dnnunet plan-and-preprocess`")
    return section


@dataclass(frozen=True)
class _Reader:
    section: Mapping[str, Any]
    name: str
    plans_file: str | Path

    def integer(self, key: str, default: int | None, minimum: int) -> int | None:
        value = self.section.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            self._fail(key, value, "a whole number")
        if value < minimum:
            self._fail(key, value, f"at least {minimum}")
        return int(value)

    def number(self, key: str, default: float | None) -> float | None:
        value = self.section.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            self._fail(key, value, "a number of at least 0")
        return float(value)

    def _fail(self, key: str, value: Any, expected: str) -> None:
        raise InvalidDataError(self.plans_file, f"{self.name}.{key} must be {expected}, got {value!r}; "
                                                "re-plan with `dnnunet plan-and-preprocess` or correct the value")
