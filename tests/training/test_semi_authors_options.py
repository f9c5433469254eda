"""The authors' options of the semi-supervised trainers and the `--semi-preset authors` preset (issue 20)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from diffusion_nnunet.configs.training_config import SemiSupervisedConfig, TrainingConfig, merge_config_values
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.training import semi_supervised
from diffusion_nnunet.training.lr_warmup import warmup_factor, warmup_iterations
from diffusion_nnunet.training.semi_losses import (
    RoundSettings,
    ramp_weight,
    reconstruction_loss_and_estimate,
    round_losses,
)
from diffusion_nnunet.training.semi_presets import PRESETS, semi_overrides
from diffusion_nnunet.training.semi_supervised import SemiCoTrainer, _SemiBase
from dnnunet_core.errors import UserInputError

C, IMG = 3, 1
SHAPE = (2, IMG, 16, 16)


def labels(seed=0):
    return torch.randint(0, C, (SHAPE[0], 1, *SHAPE[2:]), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ warm-up

def _warmup_trainer(fraction, epochs=10, iterations=10, lr=0.01):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=lr)
    return SimpleNamespace(semi=SemiSupervisedConfig(lr_warmup_fraction=fraction), num_epochs=epochs,
                           num_iterations_per_epoch=iterations, current_epoch=0, optimizer=optimizer,
                           _epoch_lrs=[lr], _iteration_in_epoch=0)


def test_warmup_rises_from_zero_over_its_share_and_then_leaves_the_poly_rate():
    assert warmup_iterations(0.1, 100) == 10 and warmup_iterations(0.0, 100) == 0 and warmup_iterations(0.001, 10) == 1
    assert [warmup_factor(i, 4) for i in range(6)] == [0, 0.25, 0.5, 0.75, 1, 1]
    trainer = _warmup_trainer(0.1)  # 100 iterations, 10 of warm-up
    seen = []
    for _ in range(10):
        _SemiBase.apply_lr_warmup(trainer)
        seen.append(trainer.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.01 * i / 10 for i in range(10)])
    trainer.current_epoch, trainer._iteration_in_epoch, trainer._epoch_lrs = 1, 0, [0.0091]  # next epoch's poly rate
    trainer.optimizer.param_groups[0]["lr"] = 0.0091
    _SemiBase.apply_lr_warmup(trainer)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0091)
    _SemiBase.apply_lr_warmup(trainer)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0091)


def test_without_warmup_the_rate_is_nnunets():
    trainer = _warmup_trainer(0.0)
    for _ in range(3):
        _SemiBase.apply_lr_warmup(trainer)
        assert trainer.optimizer.param_groups[0]["lr"] == 0.01


def test_the_warmup_applies_in_the_training_step(monkeypatch):
    trainer = _warmup_trainer(0.5, epochs=1, iterations=4)
    trainer.apply_lr_warmup = lambda: _SemiBase.apply_lr_warmup(trainer)
    rates = []
    trainer.autocast = lambda: torch.autocast("cpu", enabled=False)
    trainer.semi_loss = lambda batch: (trainer.optimizer.param_groups[0]["params"][0].sum() * 0, {})
    trainer.backward_and_step = lambda loss: rates.append(trainer.optimizer.param_groups[0]["lr"])
    for _ in range(3):
        _SemiBase.train_step(trainer, {})
    assert rates == pytest.approx([0.0, 0.005, 0.01])


# ------------------------------------------------------------------------------------------ Seg's step

class _RecordingModel:
    num_classes = C

    def __init__(self):
        self.times = []

    def seg_logits(self, image, m_t, t_net):
        self.times.append(torch.as_tensor(t_net).reshape(-1).tolist())
        return torch.zeros(image.shape[0], C, *image.shape[2:])


def _seg_trainer(random_t):
    trainer = SimpleNamespace(schedule=NoiseSchedule.linear(5), semi=SemiSupervisedConfig(seg_random_t=random_t))
    trainer.segment = lambda model, image, random_t=False: _SemiBase.segment(trainer, model, image, random_t)
    return trainer


@pytest.mark.parametrize("random_t", [False, True])
def test_seg_sees_a_random_step_in_training_only_with_seg_random_t(random_t):
    trainer, model = _seg_trainer(random_t), _RecordingModel()
    torch.manual_seed(0)
    image = torch.randn(8, IMG, 8, 8)
    for _ in range(5):
        _SemiBase.train_segment(trainer, model, image)
    steps = {t for call in model.times for t in call}
    last = float(trainer.schedule.network_time(4))
    if random_t:
        assert len(steps) >= 3 and min(steps) < last  # several steps, per sample, not only T-1
    else:
        assert steps == {last}
    model.times.clear()
    _SemiBase.segment(trainer, model, image)  # validation and prediction: always T-1
    assert {t for call in model.times for t in call} == {last}


# ------------------------------------------------------------------------------------------ one-step x~_r

def test_one_step_estimate_is_the_x0_of_the_same_pass():
    schedule = NoiseSchedule.linear(10)
    image, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([2, 7])
    exact = lambda noisy, mask, t_net: noise  # a Rec that knows the noise
    loss, x0 = reconstruction_loss_and_estimate(exact, image, torch.zeros(SHAPE[0], C, *SHAPE[2:]), schedule, t, noise)
    assert loss.item() == 0
    torch.testing.assert_close(x0, image, rtol=1e-4, atol=1e-4)
    _, clipped = reconstruction_loss_and_estimate(lambda n, m, s: -noise, image, torch.zeros(SHAPE[0], C, *SHAPE[2:]),
                                                  schedule, t, noise, clip=0.5)
    assert clipped.abs().max() <= 0.5


@pytest.mark.parametrize("one_step", [False, True])
def test_rounds_segment_the_one_step_estimate_with_a_single_rec_pass(one_step):
    schedule = NoiseSchedule.linear(10)
    rec_calls, segmented = [], []

    def rec(noisy, mask, t_net):
        rec_calls.append((noisy, t_net))
        return 0.5 * noisy

    def segment(x):
        segmented.append(x)
        return torch.zeros(x.shape[0], C, *x.shape[2:], requires_grad=True)

    settings = RoundSettings(rounds=2, weight=1.0, chain=False, rec_schedule=schedule, sampling_steps=3, start_step=3,
                             clip=100.0, one_step=one_step)
    round_losses(segment, rec, torch.randn(SHAPE), torch.full((SHAPE[0], C, *SHAPE[2:]), 1 / C), labels(), settings)
    if not one_step:
        assert len(rec_calls) == 2 * (3 + 1)  # DDIM steps + the L_rec pass per round
        return
    assert len(rec_calls) == 2  # one Rec pass per round: the L_rec pass gives x~_r
    for (noisy, t_net), x in zip(rec_calls, segmented):
        abar = schedule._gather(schedule.alphas_cumprod, _indices(schedule, t_net), noisy)
        torch.testing.assert_close(x, ((noisy - (1 - abar).sqrt() * 0.5 * noisy) / abar.sqrt()).clamp(-100, 100))


def _indices(schedule, t_net):
    """The schedule indices whose network times are `t_net`."""
    times = schedule.network_time(torch.arange(schedule.num_steps))
    return torch.stack([torch.argmin((times - v).abs()) for v in t_net])


# ------------------------------------------------------------------------------------------ lambda

def test_whole_run_ramp_is_epoch_plus_one_over_epochs():
    assert [ramp_weight(e, 10, 0.3, whole_run=True) for e in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert ramp_weight(0, 10, 0.3) == 0 and ramp_weight(3, 10, 0.3) == 1


@pytest.mark.parametrize("whole_run", [False, True])
def test_the_cotrainer_uses_the_whole_run_ramp_when_asked(monkeypatch, whole_run):
    seen = {}

    def fake_loss(teacher_segment, student_segment, teacher_rec, data, target, unlabelled, settings, lam):
        seen["lambda"] = lam
        zero = torch.zeros(())
        return SimpleNamespace(total=zero, supervised=zero, unsupervised=zero)

    monkeypatch.setattr(semi_supervised, "cotraining_loss", fake_loss)
    trainer = SimpleNamespace(device=torch.device("cpu"), current_epoch=0, num_epochs=20,
                              semi=SemiSupervisedConfig(whole_run_ramp=whole_run),
                              _next_unlabelled_images=lambda: None, round_settings=lambda: None,
                              train_segment=lambda model, x: None)
    trainer.run_loss = lambda closure: closure(SimpleNamespace(teacher=SimpleNamespace(rec_eps=None), student=None))
    SemiCoTrainer.semi_loss(trainer, {"data": torch.zeros(SHAPE), "target": labels()})
    assert seen["lambda"] == (pytest.approx(1 / 20) if whole_run else 0.0)


# ------------------------------------------------------------------------------------------ config and preset

def test_new_keys_validate_and_a_config_saved_before_them_resumes_as_it_started(tmp_path):
    with pytest.raises(UserInputError, match="lr_warmup_fraction"):
        SemiSupervisedConfig(lr_warmup_fraction=1.0).validate()
    current = TrainingConfig(semi=SemiSupervisedConfig(**{k: v for k, v in PRESETS["authors"].items()}))
    current.save(tmp_path / "new.json")
    assert TrainingConfig.load(tmp_path / "new.json") == current
    old = TrainingConfig(semi=SemiSupervisedConfig()).to_dict()
    for key in ("lr_warmup_fraction", "seg_random_t", "rec_one_step", "whole_run_ramp"):
        del old["semi"][key]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = TrainingConfig.load(tmp_path / "old.json").semi
    assert (loaded.lr_warmup_fraction, loaded.seg_random_t, loaded.rec_one_step, loaded.whole_run_ramp) == \
        (0.0, False, False, False)


def test_authors_preset_sets_every_difference_and_flags_override_it():
    semi = semi_overrides("semi_cotrain", "authors")
    expected = {"rec_into_seg": False, "chain_rounds": False, "rec_one_step": True, "rounds": 3,
                "whole_run_ramp": True, "ramp_rounds": False, "lr_warmup_fraction": 0.1, "seg_random_t": True,
                "ce_weight": 0.0, "copy_paste": 0.0}
    assert semi == expected
    config = TrainingConfig.from_dict(merge_config_values(TrainingConfig(semi=SemiSupervisedConfig()).to_dict(),
                                                          {"semi": semi}))
    config.validate()
    defaults = SemiSupervisedConfig()
    for key, value in expected.items():  # every preset value differs from today's default
        assert getattr(config.semi, key) == value != getattr(defaults, key)
    semi = semi_overrides("semi_cotrain", "authors", teacher="T", rounds=5, options={"ce_weight": 1.0})
    assert semi["rounds"] == 5 and semi["ce_weight"] == 1.0 and semi["teacher"] == "T" and semi["seg_random_t"]
    cps = semi_overrides("cps", "authors")  # the registry's rounds = 0 stands: the authors' CPS reference
    assert "rounds" not in cps and cps["ce_weight"] == 0.0
    assert semi_overrides("semi_cotrain", None, rounds=2) == {"rounds": 2}
    with pytest.raises(UserInputError, match="known presets"):
        semi_overrides("semi_cotrain", "nobody")


def test_cli_passes_the_preset_under_the_options(monkeypatch):
    import argparse

    from diffusion_nnunet.cli import train as cli_train
    from diffusion_nnunet.training import run as training_run

    captured = {}

    def fake_train(dataset, configuration, fold, trainer, plans, overrides, *args, **kwargs):
        captured.update(overrides)
        return "folder"

    monkeypatch.setattr(training_run, "train", fake_train)
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    args = parser.parse_args(["-d", "501", "-f", "0", "-tr", "semi_cotrain", "--semi-preset", "authors",
                              "--rounds", "5", "--semi-option", "chain_rounds=true"])
    assert cli_train.run(args) == 0
    assert captured["semi"]["rounds"] == 5 and captured["semi"]["chain_rounds"] is True
    assert captured["semi"]["rec_one_step"] is True and captured["semi"]["lr_warmup_fraction"] == 0.1
