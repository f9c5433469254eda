"""RoundSettings is built from a SemiSupervisedConfig (keyword-only, every field carried over)."""
from __future__ import annotations

from dataclasses import fields

import pytest

from diffusion_nnunet.configs.training_config import SemiSupervisedConfig
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.training.semi_losses import RoundSettings

# RoundSettings field -> the SemiSupervisedConfig field it comes from
FROM_CONFIG = {"rounds": "rounds", "weight": "round_weight", "chain": "chain_rounds",
               "sampling_steps": "rec_sampling_steps", "clip": "rec_clip", "ce_weight": "ce_weight",
               "start_step": "rec_start_step", "rec_into_seg": "rec_into_seg", "ramp_rounds": "ramp_rounds",
               "pseudo_threshold": "pseudo_threshold", "copy_paste": "copy_paste", "rounds_on_mix": "rounds_on_mix",
               "one_step": "rec_one_step"}


def test_every_round_setting_comes_from_the_config():
    assert {f.name for f in fields(RoundSettings)} == set(FROM_CONFIG) | {"rec_schedule"}
    semi = SemiSupervisedConfig(rounds=3, round_weight=0.25, chain_rounds=False, rec_timesteps=12,
                                rec_sampling_steps=4, rec_clip=2.5, ce_weight=0.5, rec_start_step=None,
                                rec_into_seg=False, ramp_rounds=False, pseudo_threshold=0.7, copy_paste=0.5,
                                rounds_on_mix=True, rec_one_step=True)
    semi.validate()
    schedule = NoiseSchedule.linear(semi.rec_timesteps)
    settings = RoundSettings.from_config(semi, schedule)
    assert settings.rec_schedule is schedule
    for name, source in FROM_CONFIG.items():
        assert getattr(settings, name) == getattr(semi, source), name
        default = next(f.default for f in fields(SemiSupervisedConfig) if f.name == source)
        assert getattr(semi, source) != default, f"{source}: the test must set a non-default value"


def test_round_settings_are_keyword_only():
    with pytest.raises(TypeError):
        RoundSettings(1, 1.0, True, NoiseSchedule.linear(10), 3)  # the positional form is gone
