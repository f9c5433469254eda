"""Typed sampling settings (diffusion_nnunet.configs.sampling_config)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffusion_nnunet.configs.sampling_config import SamplingConfig
from diffusion_nnunet.inference.predictor import predict_folder
from dnnunet_core.errors import UserInputError


def test_dicts_become_configs_and_none_means_default():
    config = SamplingConfig.from_options({"sampler": "ddim", "num_samples": 4, "start_step": None})
    assert config == SamplingConfig(sampler="ddim", num_samples=4)
    assert SamplingConfig.from_options(config) is config
    assert SamplingConfig.from_options(None) == SamplingConfig()


def test_every_invalid_value_is_named_at_once():
    with pytest.raises(UserInputError) as err:
        SamplingConfig(sampler="euler", num_samples=0, tile_batch=0, start_step=-1, sample_mirroring="all",
                       presegmenter="A", presegmentation="B")
    text = str(err.value)
    for expected in ("euler", "num_samples", "tile_batch", "start_step", "sample-mirroring", "not both"):
        assert expected in text


def test_the_predictor_built_directly_checks_the_same_way():
    from tests.inference.tiny_predictors import tiny_diffusion_predictor

    for bad, match in (({"sampler": "euler"}, "euler"), ({"num_samples": 0}, "num_samples"),
                       ({"sample_mirroring": "all"}, "sample-mirroring")):
        with pytest.raises(UserInputError, match=match):
            tiny_diffusion_predictor(**bad)
    assert tiny_diffusion_predictor(sampler="ddim", num_samples=2).sampler == "ddim"


def test_a_misspelt_option_is_refused_not_ignored(tmp_path):
    with pytest.raises(UserInputError, match=r"unknown sampling option\(s\) \['num_sample'\]"):
        SamplingConfig.from_options({"num_sample": 3})
    # predict_folder refuses it before looking at the model or the images
    with pytest.raises(UserInputError, match="num_sample"):
        predict_folder(tmp_path / "no-model", tmp_path / "no-images", tmp_path / "out",
                       diffusion_options={"num_sample": 3})
    assert not (tmp_path / "out").exists()


def test_what_the_predictor_gets_and_what_is_recorded():
    config = SamplingConfig(num_samples=2, tile_batch=3, presegmenter="/models/nnunet", seed=7,
                            overview_png_for=lambda case: Path(f"{case}_0000.nii.gz"))
    arguments = config.predictor_arguments()
    assert arguments.pop("overview_png_for")("c1") == Path("c1_0000.nii.gz")
    assert arguments == {"num_samples": 2, "seed": 7}  # tile_batch and presegmenter are the caller's
    recorded = config.recorded()
    json.dumps(recorded)  # JSON values only
    assert recorded["overview_png_for"] is True and recorded["presegmenter"] == "/models/nnunet"
    assert recorded["seed"] == 7 and recorded["sample_mirroring"] == "cycle" and "start_step" not in recorded
    # the same settings record the same way in every run (predict --continue-prediction compares them)
    again = SamplingConfig(num_samples=2, tile_batch=3, presegmenter="/models/nnunet", seed=7,
                           overview_png_for=lambda case: Path(case))
    assert again.recorded() == recorded
