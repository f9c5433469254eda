"""Planner presets for `plan-and-preprocess -pl`: nnU-Net's planners, each with our compute budget.

One table maps a `-pl` name to an nnunetv2 planner class and the plans name nnU-Net gives its
plans; `planning.planner.budgeted` puts the budget on top of the class (no per-preset code).

Plans names: the default planner writes `dnnunetPlans` whatever the budget (our own name; the
budget is recorded in the plans). The residual-encoder presets keep nnU-Net's names
(`nnUNetResEncUNetMPlans`, ...) where the plans are nnU-Net's own, i.e. with the `gpu` budget
(nnU-Net's defaults), and add the budget's name where the budget changes them
(`nnUNetResEncUNetMPlans_cpu-small`): a plans file under nnU-Net's exact name is never a
shrunken one. `train` / `predict` find them by `-p`, as nnU-Net does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL,
    nnUNetPlannerResEncM,
    nnUNetPlannerResEncXL,
)

from planning.budget import ComputeBudget, budget_is_nnunet_default
from planning.planner import DEFAULT_PLANS_NAME

DEFAULT_PLANNER = "default"


@dataclass(frozen=True)
class PlannerPreset:
    """One `-pl` choice.

    Args:
        name: the `-pl` value.
        planner_class: the nnunetv2 planner class.
        plans_name: the plans name nnU-Net gives this planner's plans.
        budget_in_name: add the budget's name to `plans_name` where the budget changes the plans.
    """

    name: str
    planner_class: type
    plans_name: str
    budget_in_name: bool = True


PLANNERS: dict[str, PlannerPreset] = {p.name: p for p in (
    PlannerPreset(DEFAULT_PLANNER, ExperimentPlanner, DEFAULT_PLANS_NAME, budget_in_name=False),
    PlannerPreset("ResEncM", nnUNetPlannerResEncM, "nnUNetResEncUNetMPlans"),
    PlannerPreset("ResEncL", nnUNetPlannerResEncL, "nnUNetResEncUNetLPlans"),
    PlannerPreset("ResEncXL", nnUNetPlannerResEncXL, "nnUNetResEncUNetXLPlans"),
)}


def get_planner_preset(name: str) -> PlannerPreset:
    """The preset for a `-pl` value; nnU-Net's class names (nnUNetPlannerResEncM, ExperimentPlanner) work too.

    Raises:
        UserInputError: for an unknown name (the message lists the choices).
    """
    from dnnunet_core.errors import UserInputError

    if name in PLANNERS:
        return PLANNERS[name]
    for preset in PLANNERS.values():
        if name == preset.planner_class.__name__:
            return preset
    raise UserInputError(f"unknown planner -pl {name!r}; choose one of {', '.join(PLANNERS)} "
                         f"(or nnU-Net's class names {', '.join(p.planner_class.__name__ for p in PLANNERS.values())})")


def plans_name_for(preset: PlannerPreset, budget: ComputeBudget) -> str:
    """The plans name of a preset's plans under a budget (module docstring)."""
    if not preset.budget_in_name or budget_is_nnunet_default(budget):
        return preset.plans_name
    # budget names may carry an override ("cpu-small@0.5s"): keep file and folder names plain
    return f"{preset.plans_name}_{re.sub(r'[^A-Za-z0-9.-]+', '_', budget.name)}"
