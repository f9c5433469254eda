"""The review flag fitted on a toy validation set (diffusion_nnunet.review_flag)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diffusion_nnunet.inference.inference_defaults import read_inference_defaults
from diffusion_nnunet.review_flag import fit_review_flag, flag_cases, spearman, write_review_flag
from dnnunet_core.errors import UserInputError


@pytest.fixture
def toy():
    """20 cases: Dice 0.95 .. 0.48; disagreement tracks Dice (with one swap), the entropies are noise."""
    rng = np.random.default_rng(1)
    dice = {f"c{i:02d}": 0.95 - 0.025 * i for i in range(20)}
    scores = {}
    for i, case in enumerate(dice):
        j = {17: 16, 16: 17}.get(i, i)  # a swap among the bad-ish cases
        scores[case] = {"disagreement": 0.01 * j, "entropy_boundary": float(rng.random()),
                        "entropy_foreground": float(rng.random()), "volume_cv": 0.5}
    return scores, dice


def test_fit_picks_the_informative_score_and_its_threshold(toy):
    scores, dice = toy
    flag = fit_review_flag(scores, dice)
    # the 10th percentile of the Dice: the two worst cases (c18, c19) are bad
    assert flag["dice_level"] == pytest.approx(np.percentile(list(dice.values()), 10))
    assert flag["num_bad"] == 2 and flag["num_cases"] == 20
    assert flag["score"] == "disagreement"
    assert flag["threshold"] == pytest.approx(0.16)  # 20 % of 20 = 4 flagged: scores 0.19, 0.18, 0.17, 0.16
    assert flag["recall"] == 1.0 and flag["precision"] == 0.5
    assert flag["spearman"] < -0.95
    flagged = flag_cases(scores, flag)
    assert sorted(c for c, f in flagged.items() if f) == ["c16", "c17", "c18", "c19"]


def test_an_explicit_level_and_nan_scores(toy):
    scores, dice = toy
    flag = fit_review_flag(scores, dice, dice_level=0.53, flag_rate=0.1)
    assert flag["num_bad"] == 3 and flag["threshold"] == pytest.approx(0.18)
    assert flag["recall"] == pytest.approx(2 / 3)
    assert flag["all"]["volume_cv"]["recall"] == 0.0  # a constant score: ties are not split, nothing flagged
    scores["c00"]["disagreement"] = math.nan  # nothing predicted: always flagged
    assert flag_cases(scores, flag)["c00"]
    assert math.isnan(spearman(scores, dice, "volume_cv"))  # a constant score ranks nothing


def test_bad_inputs_are_refused(toy):
    scores, dice = toy
    with pytest.raises(UserInputError, match="flag rate"):
        fit_review_flag(scores, dice, flag_rate=1.5)
    with pytest.raises(UserInputError, match="at least 5"):
        fit_review_flag({c: scores[c] for c in list(scores)[:3]}, dice)


def test_recorded_in_the_models_own_inference_defaults(toy, tmp_path):
    scores, dice = toy
    (tmp_path / "plans.json").write_text("{}")
    (tmp_path / "inference_defaults.json").write_text(json.dumps({"other": 1}))
    write_review_flag(tmp_path, fit_review_flag(scores, dice), "test")
    defaults = read_inference_defaults(tmp_path)
    assert defaults["other"] == 1 and defaults["review_flag"]["score"] == "disagreement"
    assert defaults["review_flag"]["source"] == "test"
    assert (tmp_path / "plans.json").read_text() == "{}"
