"""A model's inference defaults: what validation chose for prediction, beside the plans.

``<model>/inference_defaults.json`` holds what commands after training decided for a trained
model: find-best's PD-DDPM start step (key ``pd_ddpm``) and fit-review-flag's review flag (key
``review_flag``). plans.json stays what the planner wrote, so re-running find-best never makes a
model folder look re-planned. Models from before this file carry find-best's start step in their
plans (``diffusion.start_step`` with a find-best ``start_step_source``); they still predict with it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filelock import FileLock

from dnnunet_core.atomic import write_json
from dnnunet_core.errors import InvalidDataError
from planning.plan_sections import diffusion_section

INFERENCE_DEFAULTS = "inference_defaults.json"


def read_inference_defaults(model: str | Path) -> dict:
    """``<model>/inference_defaults.json`` ({} when absent).

    Raises:
        InvalidDataError: the file is not valid JSON.
    """
    path = Path(model) / INFERENCE_DEFAULTS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InvalidDataError(path, f"not valid JSON: {err}") from err


def update_inference_defaults(model: str | Path, key: str, value: Any) -> Path:
    """Set one key of the model's inference defaults, keeping the others.

    The read-modify-write holds a lock, so find-best and fit-review-flag run at the same time on
    one model both keep their key; the file itself is replaced atomically.

    Args:
        model: the model folder.
        key: e.g. ``pd_ddpm`` or ``review_flag``.
        value: a JSON-serialisable value.

    Returns:
        The file written.
    """
    path = Path(model) / INFERENCE_DEFAULTS
    with FileLock(str(path) + ".lock"):
        defaults = read_inference_defaults(model)
        defaults[key] = value
        write_json(defaults, path)
    return path


def default_start_step(model: str | Path, configuration_plans: dict) -> int | None:
    """PD-DDPM's start step when the user gives none: find-best's (inference defaults), else the
    plans' `diffusion.start_step` (the planner's proposal, or find-best's in older models)."""
    chosen = read_inference_defaults(model).get("pd_ddpm", {}).get("start_step")
    if chosen is not None:
        return int(chosen)
    return diffusion_section(configuration_plans, Path(model) / "plans.json").start_step
