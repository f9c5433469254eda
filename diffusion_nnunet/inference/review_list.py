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

from diffusion_nnunet.errors import InvalidDataError
from diffusion_nnunet.evaluation import to_jsonable
from diffusion_nnunet.inference.case_scores import DEFAULT_SORT, write_case_table
from diffusion_nnunet.utils.atomic import write_json

logger = logging.getLogger(__name__)

SCORE_SUFFIX = "_scores.json"


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
    from diffusion_nnunet.review_flag import flag_cases, read_inference_defaults

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
    return {"order": order, "sorted_by": sort_by, "flagged": marked, "review_flag": flag}
