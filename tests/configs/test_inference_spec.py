"""The registry entry names a model's predictor and returns its inference spec; predictors apply it."""
from __future__ import annotations

import dataclasses

import pytest

from diffusion_nnunet.configs import trainer_registry as registry
from diffusion_nnunet.configs.inference_spec import InferenceSpec
from diffusion_nnunet.configs.training_config import TrainingConfig
from dnnunet_core.errors import UserInputError

DIFFUSION = ("standard", "self_condition", "recycle_next", "recycle", "semi_teacher", "semi_cotrain", "cps")


def _checkpoint_config(name: str, timesteps: int = 7) -> dict:
    """The config a checkpoint of `name` records (resolved: T filled in), as a dict."""
    config = registry.get(name).cls.default_config()
    if config.diffusion is not None:
        config.diffusion.timesteps = timesteps
    return config.to_dict()


def test_every_builtin_trainer_names_its_predictor():
    entries = registry.available()
    assert {name for name, e in entries.items() if e.predictor == "diffusion"} == set(DIFFUSION)
    assert entries["baseline"].predictor == "nnunet"
    assert registry.find_entry("DnnDiffusionTrainer_recycle") is entries["recycle"]
    assert registry.find_entry("nnUNetTrainer") is None  # stock nnunetv2: not ours


@pytest.mark.parametrize("name", DIFFUSION)
def test_the_spec_comes_from_the_checkpoint_config(name):
    spec = registry.get(name).inference_spec(_checkpoint_config(name))
    assert spec.predictor == "diffusion" and spec.timesteps == 7
    assert spec.schedule().num_steps == 7
    assert spec.self_conditioning is (name == "self_condition")
    # the semi-supervised models' Seg was trained at the noisiest step: one step unless asked
    assert spec.default_steps == (1 if name in ("semi_teacher", "semi_cotrain", "cps") else None)


def test_the_validation_sampler_and_steps_are_the_configs():
    values = _checkpoint_config("standard")
    values["diffusion"].update(sampler="ddim", sampling_steps=3)
    spec = registry.get("standard").inference_spec(TrainingConfig.from_dict(values))
    assert (spec.sampler, spec.validation_steps, spec.default_steps) == ("ddim", 3, None)


def test_an_nnunet_model_has_no_schedule():
    spec = registry.get("baseline").inference_spec({})
    assert spec == InferenceSpec(predictor="nnunet")
    with pytest.raises(ValueError, match="no noise schedule"):
        spec.schedule()


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="unknown predictor"):
        InferenceSpec(predictor="gan")
    with pytest.raises(ValueError, match="T >= 2"):
        InferenceSpec(predictor="diffusion")
    with pytest.raises(ValueError, match="unknown sampler"):
        InferenceSpec(predictor="diffusion", timesteps=5, sampler="euler")


def test_an_entry_whose_trainer_names_another_predictor_is_refused():
    entry = dataclasses.replace(registry.get("standard"), predictor="nnunet")
    with pytest.raises(ValueError, match="registered for the nnunet predictor"):
        entry.inference_spec(_checkpoint_config("standard"))


def test_the_diffusion_predictor_applies_the_spec():
    from tests.inference.tiny_predictors import tiny_diffusion_predictor

    predictor = tiny_diffusion_predictor(timesteps=5)
    predictor.apply_spec(InferenceSpec(predictor="diffusion", timesteps=8, self_conditioning=True, default_steps=2))
    assert predictor.schedule.num_steps == 8 and predictor.self_condition and predictor.num_steps == 2
    # steps asked for win over the model's default, and are checked against its T
    asked = tiny_diffusion_predictor(timesteps=5, num_steps=4)
    asked.apply_spec(InferenceSpec(predictor="diffusion", timesteps=5, default_steps=1))
    assert asked.num_steps == 4
    with pytest.raises(UserInputError, match="--steps must be in 1..3"):
        asked.apply_spec(InferenceSpec(predictor="diffusion", timesteps=3))
    with pytest.raises(ValueError, match="no noise schedule"):
        predictor.apply_spec(InferenceSpec())


def test_the_nnunet_predictor_refuses_a_diffusion_spec():
    from tests.inference.tiny_predictors import tiny_nnunet_predictor

    predictor = tiny_nnunet_predictor()
    predictor.apply_spec(InferenceSpec())  # nothing to take
    with pytest.raises(ValueError, match="DiffusionPredictor"):
        predictor.apply_spec(InferenceSpec(predictor="diffusion", timesteps=5))


def test_load_predictor_picks_the_predictor_through_the_registry():
    from diffusion_nnunet.inference.diffusion_predictor import DiffusionPredictor
    from diffusion_nnunet.inference.predictor import DnnPredictor, predictor_class, predictor_kind

    assert predictor_kind("DnnSemiCPSTrainer") == "diffusion" and predictor_kind("DnnBaselineTrainer") == "nnunet"
    assert predictor_kind("nnUNetTrainer") == "nnunet"  # a stock nnunetv2 trainer
    with pytest.raises(UserInputError, match="neither one of ours"):
        predictor_kind("NoSuchTrainer")
    assert predictor_class("diffusion") is DiffusionPredictor and predictor_class("nnunet") is DnnPredictor
