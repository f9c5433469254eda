"""The prediction-cost flags reach the predictors (issue 17)."""
from __future__ import annotations

from diffusion_nnunet.cli.main import main
from diffusion_nnunet.inference import combined, folder_prediction


def test_predict_passes_tile_batch_and_sample_mirroring(monkeypatch, tmp_path):
    seen = {}
    # the diffusion options are predict_folder's 11th argument; no model to read, no review list
    monkeypatch.setattr(folder_prediction, "is_diffusion_model", lambda model: False)
    monkeypatch.setattr(folder_prediction, "finish_prediction", lambda *args: None)
    monkeypatch.setattr(folder_prediction, "predict_folder", lambda *args, **kwargs: seen.update(options=args[10]))
    assert main(["predict", "-i", str(tmp_path / "images"), "-o", str(tmp_path / "o"), "-m", str(tmp_path),
                 "--tile-batch", "3", "--sample-mirroring", "product"]) == 0
    assert seen["options"].tile_batch == 3 and seen["options"].sample_mirroring == "product"


def test_predict_ensemble_passes_tile_batch_and_sample_mirroring(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(combined, "predict_with_ensemble", lambda *args, **kwargs: seen.update(kwargs) or {})
    assert main(["predict-ensemble", "-i", str(tmp_path / "images"), "-o", str(tmp_path / "o"), "--nnunet", "a",
                 "--diffusion", "b", "--tile-batch", "2", "--sample-mirroring", "cycle"]) == 0
    assert seen == {"tile_batch": 2, "sample_mirroring": "cycle"}
