"""nnU-Net's cascade (3d_lowres -> 3d_cascade_fullres): what a cascade stage needs before training.

nnU-Net trains the cascade as two models of the same trainer class. The lowres model's final
validation writes, for each validation case, its segmentation resampled to the fullres grid into
`<Trainer>__<plans>__3d_lowres/predicted_next_stage/3d_cascade_fullres/`; the cascade trainer
(`nnUNetTrainer.folder_with_segs_from_previous_stage`) reads it there, for every case it trains
or validates on, and adds it to the image as one one-hot channel per foreground label. Every
case of the dataset is in some lowres fold's validation set, so a cascade fold needs the
predictions of all of them: all five lowres folds (or fold `all`).

`train -c 3d_cascade_fullres` does not train the lowres stage itself (as nnU-Net: the stages are
two commands, and the lowres folds are models of their own); `require_previous_stage` refuses,
before any compute, when predictions are missing and names the commands that make them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from dnnunet_core import paths
from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)

PREDICTIONS_FOLDER = "predicted_next_stage"  # nnunetv2's name (nnUNetTrainer.perform_actual_validation)


def previous_stage(plans: dict, configuration: str) -> str | None:
    """The configuration whose predictions `configuration` takes as input (nnU-Net's `previous_stage`)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans).get_configuration(configuration).previous_stage_name


def next_stages(plans: dict, configuration: str) -> list[str]:
    """The configurations that take `configuration`'s predictions (nnU-Net's `next_stage`)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return list(PlansManager(plans).get_configuration(configuration).next_stage_names or [])


def predictions_folder(dataset_name: str, trainer_class: str, plans_name: str, previous: str,
                       configuration: str) -> Path:
    """Where the previous stage's validation left its predictions for `configuration`."""
    return paths.trained_model_folder(dataset_name, trainer_class, plans_name, previous) / PREDICTIONS_FOLDER / configuration


def predicted_cases(folder: Path) -> set[str]:
    """Case identifiers with a prediction in `folder` (nnU-Net writes CASE.b2nd, CASE.npz or CASE.npy)."""
    if not folder.is_dir():
        return set()
    return {p.name.rsplit(".", 1)[0] for p in folder.iterdir()
            if p.is_file() and p.suffix in (".b2nd", ".npz", ".npy") and not p.name.startswith(".")}


def _folds_validating(splits_file: Path, cases: set[str]) -> list[int | str]:
    """The folds of the split whose validation sets hold `cases` (["all"] without a split)."""
    if not splits_file.is_file():
        return ["all"]
    splits = json.loads(splits_file.read_text())
    return [k for k, s in enumerate(splits) if cases & set(s["val"])] or ["all"]


def require_previous_stage(dataset_name: str, plans: dict, configuration: str, trainer_class: str,
                           plans_name: str, cases: list[str], trainer: str = "baseline") -> None:
    """Refuse to train a cascade stage whose previous stage has not predicted every case.

    Args:
        dataset_name: DatasetXXX_Name.
        plans: the plans.
        configuration: the configuration to train (nothing to check unless it has a previous stage).
        trainer_class: the trainer's class name (nnU-Net reads the previous stage of the same class).
        plans_name: plans identifier.
        cases: every case of the preprocessed dataset (a fold trains and validates on all of them).
        trainer: the registry name, for the command in the message.

    Raises:
        UserInputError: the previous stage's model folder has no trained fold, or its validations
            left some cases without a prediction; the message names the commands to run.
    """
    previous = previous_stage(plans, configuration)
    if previous is None:
        return
    folder = predictions_folder(dataset_name, trainer_class, plans_name, previous, configuration)
    missing = set(cases) - predicted_cases(folder)
    if not missing:
        return
    model = folder.parent.parent
    splits_file = paths.preprocessed() / dataset_name / "splits_final.json"
    folds = _folds_validating(splits_file, missing)
    plans_flag = "" if plans_name == "dnnunetPlans" else f" -p {plans_name}"
    commands = "; ".join(f"dnnunet train -d {dataset_name} -c {previous} -f {f} -tr {trainer}{plans_flag}"
                         for f in folds)
    trained = sorted(p.parent.name for p in model.glob("fold_*/checkpoint_final.pth"))
    why = (f"the first stage {model} has no trained fold" if not trained else
           f"the first stage's folds ({', '.join(trained)}) did not predict them: trained with "
           f"--skip-validation, before {configuration} was preprocessed, or not all folds are trained")
    raise UserInputError(
        f"{configuration} is the second stage of nnU-Net's cascade: it trains on the predictions of {previous} "
        f"in {folder}, and {len(missing)} of {len(cases)} cases have none ({', '.join(sorted(missing)[:5])}"
        f"{' ...' if len(missing) > 5 else ''}); {why}. Train the first stage first (its final validation writes "
        f"them; `-f all` covers every case at once): {commands}")


def warn_if_next_stage_unprepared(dataset: str, plans: dict, configuration: str, plans_name: str,
                                  validate: bool) -> None:
    """Before training a first stage: warn when its validation cannot write the next stage's input.

    nnU-Net's validation reads each case of the next stage's preprocessed data to resample its
    prediction onto that grid, and skips (with a line in its log) the cases it cannot find.
    """
    from planning.preprocessing_state import require_complete

    for stage in next_stages(plans, configuration):
        if not validate:
            logger.warning("training %s without the final validation: it writes no predictions for %s, which "
                           "then cannot be trained", configuration, stage)
            continue
        try:
            require_complete(dataset, stage, plans_name)
        except UserInputError as err:
            logger.warning("the final validation of %s writes the input of %s only for preprocessed data: %s",
                           configuration, stage, err)
