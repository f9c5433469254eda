"""dnnunet fit-review-flag on a tiny trained nnU-Net model (mirror variants as the samples)."""
from __future__ import annotations

import json

import pytest

from diffusion_nnunet.cli.main import main

pytestmark = pytest.mark.slow


def test_fit_review_flag_records_the_flag_beside_the_plans(env, capsys, tmp_path):
    from diffusion_nnunet.review_flag_fit import fit_review_flag_on_validation

    model = env["model"]
    plans_before = (model / "plans.json").read_text()
    # the tiny session dataset has 1-2 validation cases per fold: the command refuses to fit on so few
    assert main(["fit-review-flag", "-m", str(model), "-f", "0", "-device", "cpu"]) == 2
    assert "at least 5 validation cases" in capsys.readouterr().err
    assert not (model / "inference_defaults.json").exists()
    fitted = fit_review_flag_on_validation(model, [0], flag_rate=0.5, min_cases=1)
    assert fitted["file"] == str(model / "inference_defaults.json")
    flag = json.loads((model / "inference_defaults.json").read_text())["review_flag"]
    assert flag["score"] in flag["all"] and flag["num_cases"] >= 1 and "mirror variants" in flag["source"]
    assert (model / "plans.json").read_text() == plans_before
    # predict with the mirror variants then marks the flagged cases
    from diffusion_nnunet.inference.mirror_variants import predict_mirror_variants

    result = predict_mirror_variants(model, env["raw"] / "imagesTs", tmp_path / "pred", folds=[0])
    assert result["review_flag"]["score"] == flag["score"] and result["flagged"] is not None
    saved = json.loads((tmp_path / "pred" / "uncertainty" / "cases.json").read_text())
    assert saved["num_flagged"] == len(result["flagged"]) and saved["sorted_by"] == flag["score"]
    (model / "inference_defaults.json").unlink()  # the session's model stays as it was
