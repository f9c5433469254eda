"""The review list of a prediction folder: per-case score files -> OUT/uncertainty/cases.csv/json.

A predictor that has several probability maps per case (diffusion samples, mirror variants)
writes ``OUT/uncertainty/CASE_scores.json`` while it exports the case (`write_case_score`);
`write_review_list` then gathers every case of the folder (also those kept by
``--continue-prediction``), marks the cases the model's fitted review flag selects
(``<model>/inference_defaults.json``, `review_flag`), writes the table least certain first and
logs the least certain cases.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

from diffusion_nnunet.evaluation import to_jsonable
from diffusion_nnunet.inference.case_scores import DEFAULT_SORT, write_case_table
from dnnunet_core.atomic import write_json
from dnnunet_core.errors import InvalidDataError

logger = logging.getLogger(__name__)

SCORE_SUFFIX = "_scores.json"


def is_diffusion_model(model_dir: str | Path) -> bool:
    """Whether a model folder's checkpoint was trained by one of our diffusion trainers.

    Raises:
        UserInputError: no fold_*/checkpoint_final.pth (or an unknown trainer).
        InvalidDataError: the checkpoint is damaged (`checkpoint_io.read_checkpoint`).
    """
    from diffusion_nnunet.inference.checkpoint_io import read_checkpoint
    from diffusion_nnunet.inference.predictor import predictor_kind
    from dnnunet_core.errors import UserInputError

    first = next(iter(sorted(Path(model_dir).glob("fold_*/checkpoint_*.pth"))), None)
    if first is None:
        raise UserInputError(f"no fold_*/checkpoint_*.pth in {model_dir}: is this a trained model folder?")
    # the trainer's registry entry names the predictor (old checkpoints carry the class name only)
    return predictor_kind(read_checkpoint(first)["trainer_name"]) == "diffusion"


def case_score_file(output_dir: str | Path, case: str) -> Path:
    """Where one case's scores live: ``OUT/uncertainty/CASE_scores.json``."""
    return Path(output_dir) / "uncertainty" / f"{case}{SCORE_SUFFIX}"


def write_case_score(output_truncated: str | Path, scores: Mapping) -> Path:
    """Write one case's `case_scores` result beside its segmentation (``out/uncertainty/CASE_scores.json``).

    Args:
        output_truncated: the case's output path without file ending (``out/CASE``).
        scores: `case_scores`' result.
    """
    out = Path(output_truncated)
    path = case_score_file(out.parent, out.name)
    write_json(to_jsonable(scores), path)
    return path


def predictor_case_scores(samples, logits, properties: dict, configuration_manager, dataset_json: dict) -> dict:
    """Case scores from a predictor's per-run probabilities in the preprocessed geometry.

    Args:
        samples: ``(R, C, *preprocessed)`` probabilities (diffusion samples, mirror variants).
        logits: the case's prediction (C, *preprocessed); its softmax (regions: sigmoid) is the mean
            the scores use.
        properties: the case's preprocessing properties (the 2D slice spacing comes from them).
        configuration_manager: the configuration (its spacing is the preprocessed voxel size).
        dataset_json: for the class names.
    """
    import numpy as np
    import torch

    from diffusion_nnunet.inference.case_scores import case_scores, class_names

    samples = samples.detach().float().cpu().numpy() if hasattr(samples, "detach") else np.asarray(samples)
    spacing = [float(s) for s in configuration_manager.spacing]
    if len(spacing) < samples.ndim - 2:  # 2D: the preprocessed data keep a singleton first axis
        spacing = [float(properties["spacing"][0])] + spacing
    regions = "regions_class_order" in dataset_json
    logits = logits.detach().float().cpu()
    mean = (torch.sigmoid(logits) if regions else torch.softmax(logits, 0)).numpy()
    return case_scores(samples, spacing, class_names(dataset_json), mean_probs=mean, regions=regions)


def read_case_scores(output_dir: str | Path, cases: Sequence[str] | None = None) -> dict[str, dict]:
    """Every case's scores in a prediction folder (None: all CASE_scores.json files).

    Raises:
        InvalidDataError: a named case has no score file.
    """
    folder = Path(output_dir) / "uncertainty"
    if cases is None:
        cases = sorted(p.name[:-len(SCORE_SUFFIX)] for p in folder.glob(f"*{SCORE_SUFFIX}"))
    out = {}
    for case in cases:
        path = case_score_file(output_dir, case)
        if not path.is_file():
            raise InvalidDataError(path, "missing: this case was predicted without case scores (N > 1 samples)")
        data = json.loads(path.read_text())
        out[case] = {k: (float("nan") if v is None else v) for k, v in data.items()}
    return out


def write_review_list(output_dir: str | Path, model_dir: str | Path | None = None,
                      cases: Sequence[str] | None = None, num_shown: int = 5) -> dict:
    """Write ``OUT/uncertainty/cases.csv`` and ``cases.json`` and log the least certain cases.

    Args:
        output_dir: the prediction folder.
        model_dir: the model folder whose ``inference_defaults.json`` may hold a fitted review
            flag; without one the list is sorted by `DEFAULT_SORT` and nothing is flagged.
        cases: the cases to list (None: every case with a score file).
        num_shown: how many least certain cases to log.

    Returns:
        ``{"order": [...], "sorted_by", "flagged": [...] or None, "review_flag": {...} or None}``.
    """
    from diffusion_nnunet.inference.inference_defaults import read_inference_defaults
    from diffusion_nnunet.review_flag import flag_cases

    scores = read_case_scores(output_dir, cases)
    if not scores:
        return {"order": [], "sorted_by": DEFAULT_SORT, "flagged": None, "review_flag": None}
    flag = read_inference_defaults(model_dir).get("review_flag") if model_dir else None
    flagged = flag_cases(scores, flag) if flag else None
    sort_by = flag["score"] if flag else DEFAULT_SORT
    order = write_case_table(scores, Path(output_dir) / "uncertainty", sort_by, flagged, flag)
    shown = ", ".join(f"{c} ({sort_by} {scores[c][sort_by]:.3g})" for c in order[:num_shown])
    logger.info("least certain cases (by %s): %s", sort_by, shown)
    if flagged is not None:
        marked = [c for c in order if flagged[c]]
        logger.info("review flag (%s >= %.4g, fitted on validation): %d of %d cases flagged for review",
                    flag["score"], flag["threshold"], len(marked), len(order))
    else:
        marked = None
        logger.info("no review flag fitted for this model (dnnunet fit-review-flag): no case flagged")
    return {"order": order, "sorted_by": sort_by, "flagged": marked, "review_flag": flag,
            "scores": {c: scores[c][sort_by] for c in order}}


def input_cases(input_dir: str | Path, file_ending: str) -> list[str]:
    """The case ids of a folder of nnU-Net images (``CASE_0000<file_ending>``)."""
    suffix = f"_0000{file_ending}"
    return sorted(p.name[:-len(suffix)] for p in Path(input_dir).glob(f"*{suffix}"))


def finish_prediction(input_dir: str | Path, output_dir: str | Path, model_dir: str | Path,
                      overview: bool = False, max_sheet_cases: int = 16) -> dict | None:
    """After `predict`: the review list (and with `overview` the contact sheet) when the cases have scores.

    Cases of `input_dir` without a score file (a prediction with one sample, an nnU-Net model)
    mean there is no review list: returns None.

    Returns:
        `write_review_list`'s result plus ``"contact_sheet"`` (its path, or None).
    """
    output_dir = Path(output_dir)
    ending = json.loads((output_dir / "dataset.json").read_text())["file_ending"]
    cases = input_cases(input_dir, ending)
    if not cases or not all(case_score_file(output_dir, c).is_file() for c in cases):
        return None
    result = write_review_list(output_dir, model_dir, cases)
    result["contact_sheet"] = None
    if overview:
        from diffusion_nnunet.reporting import contact_sheet_from_folder

        sort_by = result["sorted_by"]
        captions = {c: f"{sort_by} {v:.3g}" + (" FLAGGED" if result["flagged"] and c in result["flagged"] else "")
                    for c, v in result["scores"].items()}
        result["contact_sheet"] = contact_sheet_from_folder(
            output_dir, lambda case: Path(input_dir) / f"{case}_0000{ending}", result["order"], captions,
            output_dir / "uncertainty" / "contact_sheet.png", max_sheet_cases, ending)
    return result
