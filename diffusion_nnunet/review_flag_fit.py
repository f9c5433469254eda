"""``dnnunet fit-review-flag``: fit the review flag on a model's validation folds and record it.

For each fold the model's own fold predicts that fold's validation cases (from the raw images,
as find-best does), with case scores: a diffusion model with ``num_samples`` > 1 writes them
itself (its samples); an nnU-Net model uses its mirror variants (`inference.mirror_variants`).
The predictions are evaluated against the training labels (foreground-mean Dice per case), the
cases of all folds are pooled, `review_flag.fit_review_flag` chooses score and threshold, and
the result goes to ``<model>/inference_defaults.json`` (not into plans.json). Work files go to
``<model>/review_flag_fit/fold_F/``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from diffusion_nnunet.evaluation import evaluate_folders
from diffusion_nnunet.find_best import _link_files, validation_cases
from diffusion_nnunet.inference.review_list import is_diffusion_model, read_case_scores
from diffusion_nnunet.review_flag import fit_review_flag, write_review_flag
from dnnunet_core import paths
from dnnunet_core.errors import UserInputError
from dnnunet_core.paths import find_dataset_folder

logger = logging.getLogger(__name__)


def case_dice(per_case: list[dict]) -> dict[str, float]:
    """Case -> mean Dice over the foreground classes defined in that case (`evaluate_folders` rows)."""
    out = {}
    for row in per_case:
        values = [m["Dice"] for m in row["metrics"].values() if np.isfinite(m["Dice"])]
        out[row["case"]] = float(np.mean(values)) if values else float("nan")
    return out


def fit_review_flag_on_validation(model: str | Path, folds: list[int] = (0,), num_samples: int = 5, seed: int = 0,
                                  presegmenter: str | Path | None = None, start_step: int | None = None,
                                  dice_level: float | None = None, flag_rate: float = 0.2,
                                  device: torch.device = torch.device("cpu"), use_mirroring: bool = False,
                                  min_cases: int = 5) -> dict:
    """Predict each fold's validation cases with case scores, fit the flag, record it (module docstring).

    Args:
        model: the trained model folder.
        folds: folds whose validation cases are used (each must be trained).
        num_samples: diffusion samples per case (> 1; ignored for nnU-Net models).
        seed: sampler seed.
        presegmenter: PD-DDPM: the nnU-Net model folder whose prediction starts the sampling.
        start_step: PD-DDPM start step (default: the plans').
        dice_level: bad-case Dice level (default: the validation's 10th percentile).
        flag_rate: the largest share of cases to flag.
        device: torch device.
        use_mirroring: diffusion models: also mirror (slower).
        min_cases: the fewest validation cases a fit accepts.

    Returns:
        The recorded flag (`fit_review_flag`'s result plus ``source`` and ``file``).

    Raises:
        UserInputError: num_samples < 2 for a diffusion model, or missing folds/splits.
    """
    from diffusion_nnunet.inference.mirror_variants import predict_mirror_variants
    from diffusion_nnunet.inference.predictor import predict_folder

    model = Path(model)
    diffusion = is_diffusion_model(model)
    if diffusion and num_samples < 2:
        raise UserInputError("a diffusion model's case scores need --num-samples of at least 2")
    dataset_json = json.loads((model / "dataset.json").read_text())
    dataset_name = model.parent.name
    raw = find_dataset_folder(paths.raw(), dataset_name)
    gt = paths.preprocessed() / dataset_name / "gt_segmentations"
    ending, num_channels = dataset_json["file_ending"], len(dataset_json["channel_names"])
    work = model / "review_flag_fit"
    scores, dice = {}, {}
    for fold in folds:
        cases = validation_cases(dataset_name, fold)
        inputs = _link_files([raw / "imagesTr" / f"{c}_{k:04d}{ending}" for c in cases for k in range(num_channels)],
                             work / f"fold_{fold}" / "inputs")
        reference = _link_files([gt / f"{c}{ending}" for c in cases], work / f"fold_{fold}" / "reference")
        out = work / f"fold_{fold}" / "prediction"
        logger.info("fit-review-flag fold %d: %d validation cases", fold, len(cases))
        if diffusion:
            options = {"num_samples": num_samples, "seed": seed, "start_step": start_step, "keep_samples": True}
            if presegmenter is not None:
                options["presegmenter"] = str(presegmenter)
            predict_folder(model, inputs, out, folds=[fold], device=device, use_mirroring=use_mirroring,
                           diffusion_options=options)
        else:
            predict_mirror_variants(model, inputs, out, folds=[fold], device=device)
        scores.update(read_case_scores(out, cases))
        dice.update(case_dice(evaluate_folders(reference, out, dataset_json=dataset_json)["per_case"]))
    flag = fit_review_flag(scores, dice, dice_level, flag_rate, min_cases=min_cases)
    what = (f"{num_samples} samples" + (f", PD-DDPM from {presegmenter}" if presegmenter else "")) if diffusion \
        else "nnU-Net mirror variants"
    source = f"dnnunet fit-review-flag: validation cases of folds {list(folds)}, {what}, seed {seed}"
    path = write_review_flag(model, flag, source)
    return {**flag, "source": source, "file": str(path)}
