"""Closed-form checks of the noise schedule (methods.md sections 1 and 3)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_nnunet.diffusion.schedule import (
    NoiseSchedule,
    mask_to_x0,
    network_mask_input,
    respaced_indices,
    x0_from_logits,
)


def _fine_abar(n: int = 1001, b0: float = 1e-4, b1: float = 0.02) -> list[float]:
    """Fine abar by a plain Python product (independent of the module's numpy/torch code)."""
    out, prod = [], 1.0
    for i in range(n):
        prod *= 1.0 - (b0 + (b1 - b0) * i / (n - 1))
        out.append(prod)
    return out


FINE = _fine_abar()


# ---------------------------------------------------------------------- construction
def test_fine_schedule_end_value_matches_spec():
    assert FINE[0] == pytest.approx(0.9999, rel=1e-12)
    assert FINE[1000] == pytest.approx(3.9952e-5, rel=1e-4)  # "about 4e-5"


def test_linear_t5_takes_every_250th_fine_step():
    s = NoiseSchedule.linear(5)
    assert s.num_steps == 5 and s.num_train_steps == 5
    assert s.timesteps.tolist() == [0, 1, 2, 3, 4]
    expected = [FINE[i] for i in (0, 250, 500, 750, 1000)]
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), expected, rtol=1e-12)
    assert 3.9e-5 < float(s.alphas_cumprod[-1]) < 4.1e-5
    assert s.alphas_cumprod.dtype == torch.float64


@pytest.mark.parametrize("T", [1, 2, 5, 10, 1000, 1001])
def test_linear_schedule_is_consistent(T):
    s = NoiseSchedule.linear(T)
    assert s.num_steps == T
    assert bool(((s.betas > 0) & (s.betas < 1)).all())
    assert bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all())
    # recomputed betas reproduce the kept abar; the last step is the last fine step
    np.testing.assert_allclose(torch.cumprod(1 - s.betas, 0).numpy(), s.alphas_cumprod.numpy(), rtol=1e-12)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(FINE[1000], rel=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod_prev.numpy(), [1.0] + s.alphas_cumprod[:-1].tolist(), rtol=0)


def test_linear_t1000_drops_only_the_middle_fine_step():
    s = NoiseSchedule.linear(1000)
    kept = [FINE[i] for i in range(1001) if i != 500]
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), kept, rtol=1e-12)


@pytest.mark.parametrize("num_in", [1, 2, 5, 7, 60, 1000, 1001])
def test_respaced_indices_are_even_and_keep_both_ends(num_in):
    for num_out in sorted({n for n in (1, 2, 3, num_in // 2, num_in - 1, num_in) if 1 <= n <= num_in}):
        idx = respaced_indices(num_in, num_out)
        assert len(idx) == num_out and idx[-1] == num_in - 1
        assert np.all(np.diff(idx) > 0)
        if num_out > 1:
            assert idx[0] == 0
            np.testing.assert_array_less(np.abs(idx - np.linspace(0, num_in - 1, num_out)), 0.5 + 1e-9)
    with pytest.raises(ValueError):
        respaced_indices(num_in, num_in + 1)
    with pytest.raises(ValueError):
        respaced_indices(num_in, 0)


def test_truncate_keeps_the_first_steps_and_their_network_time():
    full = NoiseSchedule.linear(10)
    head = full.truncate(4)
    assert head.num_steps == 4 and head.num_train_steps == 10 and head.timesteps.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(head.alphas_cumprod.numpy(), full.alphas_cumprod[:4].numpy())
    np.testing.assert_allclose(head.betas.numpy(), full.betas[:4].numpy(), rtol=1e-12)
    assert float(head.network_time(3)) == float(full.network_time(3))
    assert head.respace(2).timesteps.tolist() == [0, 3]
    assert full.truncate(10) is full
    for bad in (0, 11):
        with pytest.raises(ValueError):
            full.truncate(bad)


def test_respace_keeps_original_indices_and_recomputes_betas():
    full = NoiseSchedule.linear(1000)
    sub = full.respace(50)
    expected_ts = [math.floor(x + 0.5) for x in np.linspace(0, 999, 50)]
    assert sub.timesteps.tolist() == expected_ts and expected_ts[0] == 0 and expected_ts[-1] == 999
    assert sub.num_train_steps == 1000 and sub.num_steps == 50
    np.testing.assert_array_equal(sub.alphas_cumprod.numpy(), full.alphas_cumprod[expected_ts].numpy())
    np.testing.assert_allclose(torch.cumprod(1 - sub.betas, 0).numpy(), sub.alphas_cumprod.numpy(), rtol=1e-12)
    # betas between non-adjacent steps are larger than the training betas at those steps
    assert bool((sub.betas[1:] > full.betas[expected_ts[1:]]).all())
    # re-spacing a re-spaced schedule still reports training indices
    subsub = sub.respace(5)
    assert subsub.timesteps.tolist() == [expected_ts[i] for i in respaced_indices(50, 5)]
    assert full.respace(1000) is full
    assert full.respace(1).timesteps.tolist() == [999]


def test_from_alphas_cumprod_validates():
    with pytest.raises(ValueError):
        NoiseSchedule.from_alphas_cumprod([0.9, 0.95])
    with pytest.raises(ValueError):
        NoiseSchedule.from_alphas_cumprod([1.0, 0.5])
    with pytest.raises(ValueError):
        NoiseSchedule.from_alphas_cumprod([0.9, 0.5], timesteps=[3, 1], num_train_steps=5)
    with pytest.raises(ValueError):
        NoiseSchedule.linear(1002)


# ---------------------------------------------------------------------- forward process
def test_q_sample_with_given_noise_is_exact():
    s = NoiseSchedule.linear(5)
    x0 = mask_to_x0(torch.randint(0, 2, (3, 2, 4, 4)).float())
    eps = torch.randn(x0.shape)
    t = torch.tensor([0, 2, 4])
    out = s.q_sample(x0, t, noise=eps)
    for b, ti in enumerate(t.tolist()):
        a = FINE[(0, 250, 500, 750, 1000)[ti]]
        torch.testing.assert_close(out[b], math.sqrt(a) * x0[b] + math.sqrt(1 - a) * eps[b])
    assert out.dtype == torch.float32
    torch.testing.assert_close(s.q_sample(x0, 2, noise=eps), s.q_sample(x0, torch.full((3,), 2), noise=eps))
    with pytest.raises(IndexError):
        s.q_sample(x0, 5, noise=eps)


def test_q_sample_statistics():
    s = NoiseSchedule.linear(5)
    g = torch.Generator().manual_seed(0)
    x0 = torch.ones(5, 1, 200, 200, dtype=torch.float64)
    x0[:, :, :100] = -1.0
    t = torch.arange(5)
    xt = s.q_sample(x0, t, generator=g)
    n = 200 * 200
    for b in range(5):
        abar = float(s.alphas_cumprod[b])
        resid = (xt[b] - math.sqrt(abar) * x0[b]).flatten()
        assert abs(float(resid.mean())) < 5 * math.sqrt((1 - abar) / n)
        assert float(resid.var()) == pytest.approx(1 - abar, rel=5 * math.sqrt(2 / n))
        assert float(xt[b, :, 100:].mean()) == pytest.approx(math.sqrt(abar), abs=5 * math.sqrt((1 - abar) / (n / 2)))


def test_network_time():
    s = NoiseSchedule.linear(5)
    nt = s.network_time(torch.arange(5))
    torch.testing.assert_close(nt, torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0]))
    assert nt.dtype == torch.float32
    assert float(s.network_time(4)) == 1.0
    sub = NoiseSchedule.linear(1000).respace(50)
    nt = sub.network_time(torch.arange(50))
    assert bool(((nt > 0) & (nt <= 1)).all()) and float(nt[-1]) == 1.0
    torch.testing.assert_close(nt, (sub.timesteps.float() + 1) / 1000)


# ---------------------------------------------------------------------- reverse process
def _bayes_posterior(x0, xt, abar_prev, abar_t):
    """q(x_s | x_t, x0) for s < t by Bayes on Gaussians: prior N(sqrt(abar_s) x0, 1 - abar_s),
    likelihood x_t | x_s ~ N(sqrt(a) x_s, 1 - a), a = abar_t / abar_s."""
    a = abar_t / abar_prev
    prec = 1 / (1 - abar_prev) + a / (1 - a)
    var = 1 / prec
    mean = var * (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(a) * xt / (1 - a))
    return mean, var


@pytest.mark.parametrize("make,fine_idx", [
    (lambda: NoiseSchedule.linear(5), [0, 250, 500, 750, 1000]),
    (lambda: NoiseSchedule.linear(1000).respace(7), None),
])
def test_posterior_matches_bayes(make, fine_idx):
    s = make()
    if fine_idx is None:  # T=1000 keeps fine i for i < 500 and i + 1 for i >= 500
        fine_idx = [ts if ts < 500 else ts + 1 for ts in s.timesteps.tolist()]
    abar = [FINE[i] for i in fine_idx]
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (2, 3, 5))
    xt = rng.normal(size=(2, 3, 5))
    for t in range(1, s.num_steps):
        mean, var = s.posterior_mean_variance(torch.from_numpy(x0), torch.from_numpy(xt), t)
        m_ref, v_ref = _bayes_posterior(x0, xt, abar[t - 1], abar[t])
        np.testing.assert_allclose(mean.numpy(), m_ref, rtol=1e-9, atol=1e-12)
        assert float(var) == pytest.approx(v_ref, rel=1e-9)
    mean, var = s.posterior_mean_variance(torch.from_numpy(x0), torch.from_numpy(xt), 0)
    assert float(var) == 0.0
    np.testing.assert_array_equal(mean.numpy(), x0)  # abar_{-1} = 1: the posterior is x0


def test_posterior_batched_t_matches_scalar_t():
    s = NoiseSchedule.linear(5)
    x0, xt = torch.rand(4, 2, 3) * 2 - 1, torch.randn(4, 2, 3)
    t = torch.tensor([3, 1, 0, 4])
    mean, var = s.posterior_mean_variance(x0, xt, t)
    assert var.shape == (4, 1, 1)
    for b, ti in enumerate(t.tolist()):
        m1, v1 = s.posterior_mean_variance(x0[b:b + 1], xt[b:b + 1], ti)
        torch.testing.assert_close(mean[b:b + 1], m1)
        torch.testing.assert_close(var[b].squeeze(), v1)


@pytest.mark.parametrize("make,t", [(lambda: NoiseSchedule.linear(5), 2),
                                    (lambda: NoiseSchedule.linear(1000).respace(10), 6)])
def test_ddpm_step_with_true_x0_keeps_the_forward_marginal(make, t):
    # x_t ~ q(x_t|x0) and x_{t-1} ~ q(x_{t-1}|x_t, x0) give x_{t-1} ~ q(x_{t-1}|x0)
    s = make()
    g = torch.Generator().manual_seed(1)
    x0 = -torch.ones(1, 1, 300, 300, dtype=torch.float64)
    x_prev = s.ddpm_step(x0, s.q_sample(x0, t, generator=g), t, generator=g)
    abar_prev = float(s.alphas_cumprod[t - 1])
    resid = (x_prev - math.sqrt(abar_prev) * x0).flatten()
    n = resid.numel()
    assert abs(float(resid.mean())) < 5 * math.sqrt((1 - abar_prev) / n)
    assert float(resid.var()) == pytest.approx(1 - abar_prev, rel=5 * math.sqrt(2 / n))


def test_ddpm_last_step_is_x0_hat_and_draws_no_noise():
    s = NoiseSchedule.linear(5)
    x0_hat, xt = torch.rand(2, 3, 4) * 2 - 1, torch.randn(2, 3, 4)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert torch.equal(s.ddpm_step(x0_hat, xt, 0, generator=g), x0_hat)
    assert torch.equal(g.get_state(), state)
    # t > 0 is random and reproducible
    a = s.ddpm_step(x0_hat, xt, 3, generator=torch.Generator().manual_seed(0))
    b = s.ddpm_step(x0_hat, xt, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, s.posterior_mean_variance(x0_hat, xt, 3)[0])


@pytest.mark.parametrize("make", [lambda: NoiseSchedule.linear(5), lambda: NoiseSchedule.linear(1000).respace(13)])
def test_ddim_step_closed_form(make):
    s = make()
    x0 = torch.rand(2, 3, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 3, 4, dtype=torch.float64)
    x0_hat = torch.rand(2, 3, 4, dtype=torch.float64) * 2 - 1
    for t in range(s.num_steps):
        abar, abar_prev = float(s.alphas_cumprod[t]), float(s.alphas_cumprod_prev[t])
        xt = s.q_sample(x0, t, noise=eps)
        # the spec's form of eps_hat
        eps_hat = (xt / math.sqrt(abar) - x0_hat) / math.sqrt(1 / abar - 1)
        ref = math.sqrt(abar_prev) * x0_hat + math.sqrt(1 - abar_prev) * eps_hat
        torch.testing.assert_close(s.ddim_step(x0_hat, xt, t), ref, rtol=1e-9, atol=1e-9)
        # a perfect x0 keeps the deterministic trajectory on q(.|x0) with the same eps
        expected = x0 if t == 0 else s.q_sample(x0, t - 1, noise=eps)
        torch.testing.assert_close(s.ddim_step(x0, xt, t), expected, rtol=1e-10, atol=1e-10)
    assert torch.equal(s.ddim_step(x0, s.q_sample(x0, 0, noise=eps), 0), x0)


# ---------------------------------------------------------------------- mask-space conventions
def test_mask_space_conventions():
    onehot = torch.tensor([[[1, 0]], [[0, 1]]]).permute(1, 0, 2)  # (1, 2, 2)
    torch.testing.assert_close(mask_to_x0(onehot), torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]]))
    logits = torch.tensor([[[0.0, 2.0], [0.0, -1.0]]])
    p = torch.softmax(logits, 1)
    torch.testing.assert_close(x0_from_logits(logits), 2 * p - 1)
    torch.testing.assert_close(x0_from_logits(logits).sum(1), torch.full((1, 2), 2.0 - 2))  # C=2: sums to 0
    torch.testing.assert_close(network_mask_input(torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])),
                               torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_tensors():
    s = NoiseSchedule.linear(5)
    x0 = torch.ones(2, 2, 4, 4, device="cuda")
    t = torch.tensor([1, 4], device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    xt = s.q_sample(x0, t, generator=g)
    assert xt.device.type == "cuda" and s.network_time(t).device.type == "cuda"
    assert s.ddpm_step(x0, xt, 3, generator=g).device.type == "cuda"
