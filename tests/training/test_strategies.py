"""Training strategies: what the gradient pass sees (methods.md section 2)."""
from __future__ import annotations

import pytest
import torch

from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.training import strategies

T = 5


@pytest.fixture
def x0():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4, 16, 16), generator=g)
    return 2 * torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float() - 1


@pytest.fixture
def schedule():
    return NoiseSchedule.linear(T)


class RecordingFirstPass:
    """A first pass with a trainable weight; records its calls; returns a fixed 'prediction'."""

    def __init__(self, prediction):
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.prediction = prediction
        self.calls = []

    def __call__(self, x_t, t):
        self.calls.append((x_t.clone(), t.clone(), torch.is_grad_enabled()))
        return (self.prediction * self.weight).clamp(-1, 1)


@pytest.mark.parametrize("name", list(strategies.STRATEGIES))
def test_shapes_and_no_gradient_through_the_first_pass(name, x0, schedule):
    fp = RecordingFirstPass(-x0)
    out = strategies.STRATEGIES[name](x0, schedule, fp)
    assert out.x_t.shape == x0.shape and out.t.shape == (x0.shape[0],)
    assert out.t.dtype == torch.long and 0 <= out.t.min() and out.t.max() < T
    assert not out.x_t.requires_grad
    if name == "standard":
        assert fp.calls == []
    else:
        assert len(fp.calls) == 1 and fp.calls[0][2] is False  # one extra forward pass, without gradient
    if out.self_condition is not None:
        assert not out.self_condition.requires_grad


def test_recycle_predicts_from_the_noisiest_step_and_trains_below_it(x0, schedule):
    fp = RecordingFirstPass(-x0)
    for _ in range(20):
        out = strategies.recycle(x0, schedule, fp)
        assert torch.all(out.t <= T - 2)
        assert torch.all(out.first_pass_t == T - 1)
    _, t_first, _ = fp.calls[0]
    assert torch.all(t_first == T - 1)


def test_recycle_next_predicts_from_the_next_step(x0, schedule):
    fp = RecordingFirstPass(-x0)
    out = strategies.recycle_next(x0, schedule, fp)
    assert torch.all(out.first_pass_t == out.t + 1) and torch.all(out.t <= T - 2)


@pytest.mark.parametrize("name", ["recycle", "recycle_next"])
def test_recycled_input_is_built_from_the_prediction_not_the_label(name, x0, schedule):
    # the 'model' predicts the opposite of the label; at t = 0 (abar ~ 1) x_t must follow the prediction
    prediction = -x0
    t0 = torch.zeros(x0.shape[0], dtype=torch.long)
    out = strategies.STRATEGIES[name](x0, schedule, RecordingFirstPass(prediction), t=t0)
    assert (out.x_t - prediction).abs().mean() < 0.1
    assert (out.x_t - x0).abs().mean() > 1.5


def test_standard_noises_the_label(x0, schedule):
    t0 = torch.zeros(x0.shape[0], dtype=torch.long)
    out = strategies.standard(x0, schedule, t=t0)
    assert (out.x_t - x0).abs().mean() < 0.1


def test_recycled_noise_is_fresh(x0, schedule):
    """x_t = q(x_t | x0_hat) with new noise: two draws from the same prediction differ."""
    t = torch.full((x0.shape[0],), 2, dtype=torch.long)
    fp = RecordingFirstPass(torch.zeros_like(x0))
    a = strategies.recycle(x0, schedule, fp, t=t).x_t
    b = strategies.recycle(x0, schedule, fp, t=t).x_t
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("probability,expect_estimate", [(1.0, True), (0.0, False)])
def test_self_condition_channels(probability, expect_estimate, x0, schedule):
    fp = RecordingFirstPass(-x0)
    out = strategies.self_condition(x0, schedule, fp, probability=probability)
    assert torch.equal(out.first_pass_t, out.t)  # the estimate is made at the same step
    if expect_estimate:
        torch.testing.assert_close(out.self_condition, (-x0 + 1) / 2)
    else:
        assert torch.count_nonzero(out.self_condition) == 0


def test_self_condition_mixes_per_sample(schedule):
    x0 = -torch.ones(64, 2, 4, 4)
    out = strategies.self_condition(x0, schedule, RecordingFirstPass(torch.ones_like(x0)), probability=0.5,
                                    generator=torch.Generator().manual_seed(1))
    with_estimate = (out.self_condition.flatten(1).sum(1) > 0).float().mean()
    assert 0.25 < with_estimate < 0.75
