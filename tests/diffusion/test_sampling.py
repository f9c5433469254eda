"""Sampler checks (methods.md sections 3 and 4) with closed-form denoisers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_nnunet.diffusion.sampling import pre_segmentation_x0, sample
from diffusion_nnunet.diffusion.schedule import NoiseSchedule, mask_to_x0, network_mask_input

SHAPE = (2, 3, 6, 5)


def _onehot_x0(shape=SHAPE, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    onehot = torch.zeros(shape, dtype=torch.float64).scatter_(1, labels[:, None], 1.0)
    return mask_to_x0(onehot)


class Recorder:
    """A denoiser that records its inputs; ``logits_fn(m_t, t_net)`` gives its output."""

    def __init__(self, logits_fn):
        self.logits_fn = logits_fn
        self.m, self.t, self.sc = [], [], []

    def __call__(self, m_t, t_net, sc=None):
        self.m.append(m_t.clone())
        self.t.append(t_net.clone())
        self.sc.append(None if sc is None else sc.clone())
        return self.logits_fn(m_t, t_net)


def perfect(x0):
    """Logits whose softmax is exactly onehot (so x0_hat == x0 bit for bit, float32 and float64)."""
    return Recorder(lambda m_t, t_net: (40.0 * x0).to(m_t.dtype))


def mixing(m_t, t_net):
    """A deterministic stand-in network that depends on its inputs."""
    return 3.0 * m_t.flip(1) - 2.0 * m_t + t_net.view(-1, *([1] * (m_t.ndim - 1)))


# ---------------------------------------------------------------------- perfect predictor
@pytest.mark.parametrize("T,num_steps,start", [(5, None, None), (5, None, 2), (5, 3, None), (1000, 50, None),
                                               (1000, 17, 9), (1000, 1, None)])
def test_ddim_perfect_predictor_follows_the_forward_process(T, num_steps, start):
    x0 = _onehot_x0()
    sched = NoiseSchedule.linear(T)
    sub = sched if num_steps is None else sched.respace(num_steps)
    n = sub.num_steps
    k = n - 1 if start is None else start
    den = perfect(x0)
    kwargs = {} if start is None else {"start_step": start, "x0_start": x0}
    res = sample(den, SHAPE, sched, "ddim", num_steps, generator=torch.Generator().manual_seed(4),
                 dtype=torch.float64, keep_steps=True, **kwargs)
    # the result is x0 exactly
    assert torch.equal(2 * res.probabilities - 1, x0)
    assert len(den.m) == k + 1 and len(res.per_step) == k + 1 and res.per_step[-1] is res.probabilities
    # states: the start, then q(x_i | x0) with the start's implied eps (closed form)
    eps0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x_k = eps0 if start is None else sub.q_sample(x0, k, noise=eps0)
    abar_k = float(sub.alphas_cumprod[k])
    eps = (x_k - math.sqrt(abar_k) * x0) / math.sqrt(1 - abar_k)
    for j, i in enumerate(range(k, -1, -1)):
        x_i = x_k if i == k else sub.q_sample(x0, i, noise=eps)
        torch.testing.assert_close(den.m[j], network_mask_input(x_i), rtol=0, atol=1e-9)
    assert res.steps_run == sub.timesteps[: k + 1].tolist()[::-1]


@pytest.mark.parametrize("T,num_steps", [(5, None), (1000, None), (1000, 20)])
def test_ddpm_perfect_predictor_returns_x0(T, num_steps):
    x0 = _onehot_x0(shape=(1, 2, 3, 3))
    res = sample(perfect(x0), (1, 2, 3, 3), NoiseSchedule.linear(T), "ddpm", num_steps,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(2 * res.probabilities - 1, x0.float())
    assert len(res.steps_run) == (num_steps or T)


def test_ddpm_respaced_chain_keeps_forward_marginals():
    # a soft predictor with x0_hat = 0 (C = 2, equal logits) and a PD start from x0 = 0: each state
    # x_i is N(0, 1 - abar_i) of the SAMPLING schedule; seen through the clipped mask input as
    # P(0 < m < 1) = P(|x_i| < 1) = erf(1 / sqrt(2 (1 - abar_i))).
    shape = (1, 2, 250, 250)
    sched = NoiseSchedule.linear(1000)
    sub = sched.respace(10)
    den = Recorder(lambda m_t, t_net: torch.zeros_like(m_t))
    sample(den, shape, sched, "ddpm", 10, start_step=9, x0_start=torch.zeros(shape),
           generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    n = math.prod(shape)
    for j, i in enumerate(range(9, -1, -1)):
        p_in = math.erf(1 / math.sqrt(2 * (1 - float(sub.alphas_cumprod[i]))))
        frac = float(((den.m[j] > 0) & (den.m[j] < 1)).double().mean())
        assert frac == pytest.approx(p_in, abs=5 * math.sqrt(p_in * (1 - p_in) / n) + 1e-12)


# ---------------------------------------------------------------------- time given to the network
def test_network_gets_original_training_indices():
    sched = NoiseSchedule.linear(1000)
    den = Recorder(mixing)
    res = sample(den, (1, 2, 3, 3), sched, "ddim", 50)
    expected = [math.floor(x + 0.5) for x in np.linspace(0, 999, 50)][::-1]
    assert res.steps_run == expected and res.steps_run[0] == 999 and res.steps_run[-1] == 0
    got = torch.stack(den.t)  # (steps, B)
    torch.testing.assert_close(got[:, 0], (torch.tensor(expected, dtype=torch.float32) + 1) / 1000)
    assert float(got[0, 0]) == 1.0 and got.dtype == torch.float32


# ---------------------------------------------------------------------- PD-DDPM start
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("T,num_steps", [(5, None), (1000, 30)])
def test_start_at_last_step_equals_full_sampling_from_the_same_state(sampler, T, num_steps):
    sched = NoiseSchedule.linear(T)
    sub = sched if num_steps is None else sched.respace(num_steps)
    x0_pre = pre_segmentation_x0(torch.rand(SHAPE, dtype=torch.float64).softmax(1))
    pd = sample(mixing, SHAPE, sched, sampler, num_steps, start_step=sub.num_steps - 1, x0_start=x0_pre,
                generator=torch.Generator().manual_seed(7), dtype=torch.float64, keep_steps=True)
    g = torch.Generator().manual_seed(7)
    x_last = sub.q_sample(x0_pre, sub.num_steps - 1, noise=torch.randn(SHAPE, generator=g, dtype=torch.float64))
    full = sample(mixing, SHAPE, sched, sampler, num_steps, x_start=x_last, generator=g, dtype=torch.float64,
                  keep_steps=True)
    assert torch.equal(pd.probabilities, full.probabilities)
    assert all(torch.equal(a, b) for a, b in zip(pd.per_step, full.per_step, strict=True))
    assert pd.steps_run == full.steps_run


@pytest.mark.parametrize("k", [0, 1, 3])
def test_start_at_k_runs_k_plus_one_steps(k):
    sched = NoiseSchedule.linear(5)
    den = Recorder(mixing)
    res = sample(den, SHAPE, sched, "ddpm", start_step=k, x0_start=_onehot_x0(), keep_steps=True,
                 generator=torch.Generator().manual_seed(0))
    assert len(den.m) == k + 1 and len(res.per_step) == k + 1
    assert res.steps_run == list(range(k, -1, -1))
    torch.testing.assert_close(torch.stack(den.t)[:, 0], (torch.arange(k, -1, -1).float() + 1) / 5)


def test_pre_segmentation_x0():
    p = torch.tensor([[[0.2, 0.7], [0.5, 0.1], [0.3, 0.2]]])  # (1, C=3, 2)
    torch.testing.assert_close(pre_segmentation_x0(p), torch.tensor([[[-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]]))
    torch.testing.assert_close(pre_segmentation_x0(p, soft=True), 2 * p - 1)


# ---------------------------------------------------------------------- reproducibility and bookkeeping
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_same_seed_same_result_different_seed_differs(sampler):
    sched = NoiseSchedule.linear(5)
    runs = [sample(mixing, SHAPE, sched, sampler, generator=torch.Generator().manual_seed(s)).probabilities
            for s in (11, 11, 12)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_per_step_probabilities():
    den = Recorder(mixing)
    res = sample(den, SHAPE, NoiseSchedule.linear(5), "ddpm", keep_steps=True,
                 generator=torch.Generator().manual_seed(0))
    assert len(res.per_step) == 5 and res.per_step[-1] is res.probabilities
    for m, t, p in zip(den.m, den.t, res.per_step, strict=True):
        torch.testing.assert_close(p, torch.softmax(mixing(m, t), 1))
        torch.testing.assert_close(p.sum(1), torch.ones(p.shape[0], *p.shape[2:]))
    assert sample(mixing, SHAPE, NoiseSchedule.linear(5)).per_step is None


def test_self_conditioning_feeds_the_previous_estimate():
    den = Recorder(mixing)
    res = sample(den, SHAPE, NoiseSchedule.linear(5), "ddim", keep_steps=True, self_condition=True,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(den.sc[0], torch.zeros(SHAPE))
    for j in range(1, 5):
        torch.testing.assert_close(den.sc[j], (2 * res.per_step[j - 1] - 1 + 1) / 2)
    # without self-conditioning the denoiser is called with two arguments
    den2 = Recorder(mixing)
    sample(den2, SHAPE, NoiseSchedule.linear(5), "ddim")
    assert all(sc is None for sc in den2.sc)


def test_invalid_arguments():
    sched = NoiseSchedule.linear(5)
    with pytest.raises(ValueError, match="sampler"):
        sample(mixing, SHAPE, sched, "euler")
    with pytest.raises(ValueError, match="x0_start"):
        sample(mixing, SHAPE, sched, start_step=2)
    with pytest.raises(ValueError, match="start_step"):
        sample(mixing, SHAPE, sched, start_step=5, x0_start=_onehot_x0())
    with pytest.raises(ValueError):
        sample(mixing, SHAPE, sched, num_steps=6)
    with pytest.raises(ValueError, match="shape"):
        sample(lambda m, t: m[:, :2], SHAPE, sched)
    with pytest.raises(ValueError, match="shape"):
        sample(mixing, SHAPE, sched, x0_start=torch.zeros(1, 3, 6, 5))
