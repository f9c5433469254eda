"""Prediction with nnU-Net's cascade: the 3d_lowres model first, then 3d_cascade_fullres on its output.

nnUNetv2_predict runs one stage per call; the cascade stage takes the first stage's segmentations
with `-prev_stage_predictions`, resamples each to its own grid (nnU-Net's preprocessor reads it as
the case's segmentation) and adds it to the image as one one-hot channel per foreground label.
`predict_folder` does the same with `previous_stage_predictions`, and without it runs the chain:
the first stage's model is the sibling folder `<Trainer>__<plans>__<previous stage>` (nnU-Net's
layout; `train` names it so), predicted into OUT/<previous stage>/ with the same folds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

from dnnunet_core.errors import UserInputError


def model_previous_stage(model_dir: str | Path) -> str | None:
    """The previous stage of a model folder's configuration (None: not a cascade stage).

    The configuration is the last part of nnU-Net's folder name `<Trainer>__<plans>__<configuration>`.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_dir = Path(model_dir)
    plans_file = model_dir / "plans.json"
    if not plans_file.is_file():
        return None
    plans = json.loads(plans_file.read_text())
    configuration = model_dir.name.split("__")[-1]
    if configuration not in plans.get("configurations", {}):
        return None
    return PlansManager(plans).get_configuration(configuration).previous_stage_name


def previous_stage_model(model_dir: str | Path, previous: str, folds, checkpoint_name: str) -> Path:
    """The first stage's model folder beside a cascade model, checked to hold `folds`.

    Raises:
        UserInputError: the folder or one of the folds' checkpoints is missing (naming the command).
    """
    model_dir = Path(model_dir)
    trainer, plans_name, _ = model_dir.name.split("__")
    first = model_dir.parent / f"{trainer}__{plans_name}__{previous}"
    # folds None: those nnU-Net's auto-detection takes for the cascade model (every fold_k, not fold_all)
    wanted = [f"fold_{f}" for f in folds] if folds is not None else sorted(
        p.name for p in model_dir.glob("fold_*") if p.name != "fold_all" and (p / checkpoint_name).is_file())
    missing = [f for f in wanted if not (first / f / checkpoint_name).is_file()]
    if not first.is_dir() or missing or not wanted:
        raise UserInputError(
            f"{model_dir.name} is the second stage of nnU-Net's cascade: it predicts from the segmentations of "
            f"{previous}, whose model {first} lacks {', '.join(missing) or 'every fold'} ({checkpoint_name}). "
            f"Train it (`dnnunet train -c {previous} ...` with the same trainer and plans), or give its predictions "
            f"with --prev-stage-predictions")
    return first


def previous_stage_file(folder: Path | None, case: str, file_ending: str) -> str | None:
    """The previous stage's segmentation of `case` (None without a folder)."""
    return None if folder is None else str(Path(folder) / f"{case}{file_ending}")


def check_previous_stage(folder: Path | None, previous: str | None, cases: list[str], file_ending: str) -> None:
    """Refuse, before any compute, a cascade stage without every case's previous-stage segmentation.

    Raises:
        UserInputError: no folder for a cascade stage, or cases without a file in it.
    """
    if previous is None:
        return
    if folder is None:
        raise UserInputError(f"this model is nnU-Net's cascade stage after {previous}: give the {previous} "
                             f"segmentations with --prev-stage-predictions, or predict with the model folder so "
                             f"that the chain runs")
    missing = [c for c in cases if not (Path(folder) / f"{c}{file_ending}").is_file()]
    if missing:
        raise UserInputError(f"{folder}: no {previous} segmentation for {len(missing)} case(s) "
                             f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; CASE{file_ending})")


def add_previous_stage(data: np.ndarray, seg: np.ndarray, label_manager) -> np.ndarray:
    """The image with the previous stage's segmentation as one-hot channels (as nnunetv2's predictor)."""
    onehot = convert_labelmap_to_one_hot(seg[0], label_manager.foreground_labels, data.dtype)
    return np.vstack((data, onehot))
