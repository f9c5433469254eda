"""Timestep sampling: uniform by default; importance sampling follows the loss per step."""
from __future__ import annotations

import torch

from diffusion_nnunet.training.timestep_sampling import TimestepSampler


def test_uniform_covers_all_steps_evenly():
    s = TimestepSampler(4)
    t = s.sample(4000, "cpu", torch.Generator().manual_seed(0))
    counts = torch.bincount(t, minlength=4).float() / 4000
    assert torch.all((counts - 0.25).abs() < 0.03)


def test_importance_prefers_steps_with_larger_loss_after_warmup():
    s = TimestepSampler(3, mode="importance", warmup=2)
    for step, loss in [(0, 0.1), (1, 0.1), (2, 1.0)] * 3:
        s.update(torch.tensor([step]), loss)
    p = s.probabilities()
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=p.dtype))
    assert p[2] > 0.8 and p[0] > 0.005  # the 1 % uniform mix keeps every step alive
    expected = 0.99 * torch.tensor([0.1, 0.1, 1.0], dtype=p.dtype) / 1.2 + 0.01 / 3
    torch.testing.assert_close(p, expected)


def test_importance_is_uniform_during_warmup_and_state_round_trips():
    s = TimestepSampler(3, mode="importance", warmup=5)
    s.update(torch.tensor([2]), 5.0)
    torch.testing.assert_close(s.probabilities(), torch.full((3,), 1 / 3, dtype=torch.float64))
    other = TimestepSampler(3, mode="importance", warmup=5)
    other.load_state_dict(s.state_dict())
    assert torch.equal(other.counts, s.counts) and torch.equal(other.ema_sq, s.ema_sq)
