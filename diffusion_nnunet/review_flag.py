"""The review flag: which case score, above which threshold, marks a case for review.

Fitted on validation cases (each with its case scores, `inference.case_scores`, and its true
foreground-mean Dice). A case is *bad* when its Dice is at or below ``dice_level`` (default: the
validation's 10th percentile). The criterion: **the highest recall of the bad cases when at most
a share ``flag_rate`` (default 20 %) of the cases is flagged**. For each score the threshold is the
lowest that flags at most ``max(1, floor(flag_rate * n))`` validation cases (flag when
``score >= threshold``; tied cases are flagged together or not at all; a NaN score, e.g.
nothing predicted, counts as the least certain). Ties in recall
go to the higher precision, then to the more negative Spearman correlation between score and
Dice (the score that ranks all cases best, not only the few bad ones).

The result is recorded in the model's inference defaults, ``<model>/inference_defaults.json``
(its own file beside plans.json, key ``review_flag``), which `dnnunet predict` reads to mark
flagged cases in OUT/uncertainty/cases.csv.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy import stats

from diffusion_nnunet.inference.case_scores import SCORES
from diffusion_nnunet.inference.inference_defaults import update_inference_defaults
from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)

CRITERION = ("highest recall of the cases with Dice <= dice_level when flagging at most flag_rate of the cases; "
             "ties: higher precision, then more negative Spearman(score, Dice)")


def _score(value) -> float:
    value = float("nan") if value is None else float(value)
    return math.inf if math.isnan(value) else value  # NaN: least certain


def spearman(scores: Mapping[str, Mapping], dice: Mapping[str, float], score: str) -> float:
    """Spearman correlation between a score and the true Dice over the cases both have (NaN scores
    ranked least certain); NaN when either is constant."""
    cases = [c for c in dice if c in scores and np.isfinite(dice[c])]
    x = [_score(scores[c].get(score)) for c in cases]
    y = [dice[c] for c in cases]
    if len(cases) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    x = [v if math.isfinite(v) else max(v for v in x if math.isfinite(v)) + 1.0 for v in x]
    return float(stats.spearmanr(x, y).statistic)


def flag_cases(scores: Mapping[str, Mapping], flag: Mapping) -> dict[str, bool]:
    """Case -> whether `flag` (``{"score", "threshold"}``) marks it."""
    return {c: _score(s.get(flag["score"])) >= float(flag["threshold"]) for c, s in scores.items()}


def _threshold(s: np.ndarray, k: int) -> float:
    """The lowest threshold that flags at most `k` cases (``s >= threshold``); ties are never split,
    so a constant score flags nothing (its threshold lies above every value)."""
    threshold = float(np.nextafter(s.max(), np.inf))
    for value in np.unique(s)[::-1]:  # descending
        if np.count_nonzero(s >= value) > k:
            break
        threshold = float(value)
    return threshold


def fit_review_flag(scores: Mapping[str, Mapping], dice: Mapping[str, float], dice_level: float | None = None,
                    flag_rate: float = 0.2, candidates=SCORES, min_cases: int = 5) -> dict:
    """The score and threshold that best flag the bad validation cases (criterion: module docstring).

    Args:
        scores: case -> case scores (at least the `candidates` keys).
        dice: case -> true foreground-mean Dice.
        dice_level: a case is bad when its Dice <= this; None: the 10th percentile of `dice`.
        flag_rate: the largest share of cases to flag (0 < rate < 1).
        candidates: score names to choose from.
        min_cases: fewer validation cases (with score and Dice) than this are refused.

    Returns:
        ``{"score", "threshold", "dice_level", "flag_rate", "recall", "precision", "spearman",
        "num_cases", "num_bad", "criterion", "all": {score: {"threshold", "recall", "precision",
        "spearman"}}}``; recall/precision are on the validation cases themselves.

    Raises:
        UserInputError: a bad rate, or fewer than `min_cases` validation cases with score and Dice.
    """
    if not 0.0 < flag_rate < 1.0:
        raise UserInputError(f"flag rate must be between 0 and 1, got {flag_rate}")
    cases = sorted(c for c in dice if c in scores and np.isfinite(dice[c]))
    if len(cases) < min_cases:
        raise UserInputError(f"fitting a review flag needs at least {min_cases} validation cases with scores and "
                             f"Dice, got {len(cases)} (use more folds)")
    values = np.array([dice[c] for c in cases], float)
    level = float(np.percentile(values, 10)) if dice_level is None else float(dice_level)
    bad = values <= level
    k = max(1, int(math.floor(flag_rate * len(cases))))
    results = {}
    for name in candidates:
        s = np.array([_score(scores[c].get(name)) for c in cases])
        threshold = _threshold(s, k)
        flagged = s >= threshold
        caught = int(np.count_nonzero(flagged & bad))
        results[name] = {"threshold": threshold, "recall": caught / max(1, int(bad.sum())),
                         "precision": caught / max(1, int(flagged.sum())),
                         "spearman": spearman({c: scores[c] for c in cases}, dice, name)}

    def rank(name):
        r = results[name]
        rho = r["spearman"] if np.isfinite(r["spearman"]) else 1.0
        return (-r["recall"], -r["precision"], rho, name)

    best = min(results, key=rank)
    out = {"score": best, **results[best], "dice_level": level, "flag_rate": flag_rate, "num_cases": len(cases),
           "num_bad": int(bad.sum()), "criterion": CRITERION, "all": results}
    logger.info("review flag: %s >= %.4g (validation: %d of %d bad cases caught, %d cases)", best,
                out["threshold"], round(out["recall"] * out["num_bad"]), out["num_bad"], len(cases))
    return out


def write_review_flag(model: str | Path, flag: Mapping, source: str) -> Path:
    """Record `flag` under ``review_flag`` in the model's inference defaults (other keys are kept).

    Args:
        model: the model folder.
        flag: `fit_review_flag`'s result.
        source: how it was fitted (folds, samples), for the user.
    """
    from diffusion_nnunet.evaluation import to_jsonable

    path = update_inference_defaults(model, "review_flag", to_jsonable({**flag, "source": source}))
    logger.info("review flag recorded in %s", path)
    return path
