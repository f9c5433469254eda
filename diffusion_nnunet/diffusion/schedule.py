"""Noise schedule of the diffusion segmentation head (methods.md sections 1 and 3), as pure math.

State space: a diffusion state ``x`` lives in mask space, ``x0 = 2 * onehot(y) - 1`` in [-1, 1],
shape ``(B, C, *spatial)``. Forward process ``q(x_t | x0) = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.

Schedule construction (``NoiseSchedule.linear``):

1. ``fine_steps`` (default 1001) linear betas from ``beta_start`` to ``beta_end``, in float64;
   ``abar_fine = cumprod(1 - beta_fine)``.
2. Re-spacing to ``T`` steps keeps the fine indices ``respaced_indices(fine_steps, T)``, i.e.
   ``floor(linspace(0, fine_steps - 1, T) + 0.5)``: both ends are always kept, so step 0 is the
   first fine step (``abar_0 = 1 - beta_start``) and step ``T-1`` is the last fine step. For
   ``T = 5`` that is fine indices 0, 250, 500, 750, 1000 ("every 250th") with
   ``abar = 0.9999, 0.522, 0.078, 3.3e-3, 3.995e-5`` -- the spec's "abar_{T-1} about 4e-5".
   ``T = 1000`` keeps every fine index except 500. ``T = 1`` keeps only the last fine index.
3. Betas are recomputed from the kept ``abar``: ``beta_i = 1 - abar_i / abar_{i-1}``
   (``abar_{-1} = 1``). The stored ``alphas_cumprod`` are the kept fine values themselves, so no
   rounding accumulates.

``NoiseSchedule.respace(n)`` applies the same rule to an existing schedule (sampling with fewer
steps than trained, as in improved DDPM): it keeps the entries ``respaced_indices(T, n)``,
recomputes betas and the DDPM posterior between the (now non-adjacent) kept steps, and carries
the original training-step index of every kept entry in ``.timesteps`` -- the network is always
told the original index (``network_time``).

Why not MONAI's schedulers (``monai.networks.schedulers.DDPMScheduler`` / ``DDIMScheduler``,
checked in MONAI 1.6.1): they cannot express this exactly.

* ``DDPMScheduler.step`` always takes the previous step as ``timestep - 1`` (``alphas_cumprod
  [timestep - 1]`` and ``betas[timestep]``) even after ``set_timesteps(n < T)``, so DDPM with a
  sub-sequence of steps would use the posterior of adjacent training steps instead of betas
  recomputed from the sub-sequence's ``abar``.
* ``DDIMScheduler.step`` takes the previous step as ``timestep - T // n`` while
  ``set_timesteps`` visits ``round(linspace(T-1, 0, n))``; when ``n`` does not divide ``T`` the
  two disagree (T = 5, n = 3 visits 4, 2, 0 but steps 4 -> 3), so the update does not land on
  the next visited step, and a PD-DDPM start at an arbitrary sub-sequence step is not expressible.
* A custom schedule (re-spaced from 1001 fine steps) would have to be registered in MONAI's
  process-global ``NoiseSchedules`` store, and its tables are float32.

The x0-as-softmax convention itself would fit (``prediction_type="sample"``); it lives in
``x0_from_logits``. All tables here are float64 CPU tensors; every method casts the coefficients
it needs to the dtype and device of its tensor arguments.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["NoiseSchedule", "respaced_indices", "mask_to_x0", "x0_from_logits", "network_mask_input"]

log = logging.getLogger(__name__)

TimeIndex = int | Tensor


def respaced_indices(num_in: int, num_out: int) -> np.ndarray:
    """Indices kept when re-spacing a schedule of ``num_in`` steps to ``num_out`` steps.

    ``floor(linspace(0, num_in - 1, num_out) + 0.5)`` (round half up, not numpy's half-to-even):
    evenly spaced, strictly increasing, always containing 0 and ``num_in - 1``. A single step
    keeps only the last (noisiest) index, so that one-step sampling starts from (nearly) pure noise.

    Args:
        num_in: number of steps of the schedule being re-spaced.
        num_out: number of steps to keep, 1 <= num_out <= num_in.

    Returns:
        int64 array of length ``num_out``.
    """
    if not 1 <= num_out <= num_in:
        raise ValueError(f"cannot re-space {num_in} steps to {num_out}: need 1 <= num_out <= {num_in}")
    if num_out == 1:
        return np.array([num_in - 1], dtype=np.int64)
    idx = np.floor(np.linspace(0, num_in - 1, num_out) + 0.5).astype(np.int64)
    # spacing >= 1 makes rounded values strictly increasing; guard against surprises anyway
    assert np.all(np.diff(idx) > 0) and idx[0] == 0 and idx[-1] == num_in - 1, idx
    return idx


def _as_float64(values) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete diffusion schedule of ``T`` steps with its DDPM posterior tables.

    Build it with ``NoiseSchedule.linear`` (training schedule) or ``schedule.respace`` (sampling
    sub-sequence), or ``NoiseSchedule.from_alphas_cumprod``. Treat the tensors as read-only.

    Args:
        betas: float64 (T,), ``1 - abar_t / abar_{t-1}``.
        alphas_cumprod: float64 (T,), ``abar_t``, strictly decreasing in (0, 1).
        alphas_cumprod_prev: float64 (T,), ``abar_{t-1}`` with ``abar_{-1} = 1``.
        posterior_variance: float64 (T,), ``beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (0 at t = 0).
        posterior_mean_coef1: float64 (T,), coefficient of x0 in the posterior mean,
            ``beta_t sqrt(abar_{t-1}) / (1 - abar_t)``.
        posterior_mean_coef2: float64 (T,), coefficient of x_t in the posterior mean,
            ``(1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)``.
        timesteps: int64 (T,), original training-step index of each entry (``arange(T)`` for the
            training schedule).
        num_train_steps: number of steps of the training schedule (normalises the network time).
    """

    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    posterior_variance: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    timesteps: Tensor
    num_train_steps: int

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, timesteps=None, num_train_steps: int | None = None) -> "NoiseSchedule":
        """Schedule (betas and posterior tables) from its cumulative products ``abar``.

        Args:
            alphas_cumprod: sequence of ``abar_t``, strictly decreasing, in (0, 1).
            timesteps: original training-step index of each entry; default ``arange(T)``.
            num_train_steps: T of the training schedule; default ``len(alphas_cumprod)``.

        Returns:
            The schedule.
        """
        abar = _as_float64(alphas_cumprod).flatten()
        n = abar.numel()
        if n < 1:
            raise ValueError("a schedule needs at least one step")
        if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing in (0, 1)")
        ts = torch.arange(n, dtype=torch.int64) if timesteps is None else torch.as_tensor(
            np.asarray(timesteps), dtype=torch.int64).flatten()
        num_train = n if num_train_steps is None else int(num_train_steps)
        if ts.numel() != n or not bool((ts[1:] > ts[:-1]).all()) or int(ts[0]) < 0 or int(ts[-1]) >= num_train:
            raise ValueError(f"timesteps must be {n} increasing indices in 0..{num_train - 1}, got {ts.tolist()}")

        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        betas = 1.0 - abar / abar_prev
        alphas = 1.0 - betas
        return cls(
            betas=betas,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            posterior_variance=betas * (1.0 - abar_prev) / (1.0 - abar),
            posterior_mean_coef1=betas * abar_prev.sqrt() / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            timesteps=ts,
            num_train_steps=num_train,
        )

    @classmethod
    def linear(cls, num_steps: int, fine_steps: int = 1001, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> "NoiseSchedule":
        """Training schedule: linear betas over ``fine_steps``, re-spaced to ``num_steps``.

        The kept fine indices are ``respaced_indices(fine_steps, num_steps)`` (see module
        docstring); the result's ``timesteps`` are ``arange(num_steps)`` and its
        ``num_train_steps`` is ``num_steps``.

        Args:
            num_steps: T, the number of training (and full sampling) steps (the plans'
                `diffusion.timesteps`; `planning.plan_sections.DEFAULT_TIMESTEPS` where they have none).
            fine_steps: number of fine linear-beta steps the schedule is re-spaced from.
            beta_start: first fine beta.
            beta_end: last fine beta.

        Returns:
            The schedule.
        """
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        fine_betas = np.linspace(beta_start, beta_end, fine_steps, dtype=np.float64)
        fine_abar = np.cumprod(1.0 - fine_betas)
        idx = respaced_indices(fine_steps, num_steps)
        log.debug("linear schedule: T=%d from %d fine steps (kept fine indices %s...)", num_steps, fine_steps,
                  idx[:8].tolist())
        return cls.from_alphas_cumprod(fine_abar[idx])

    def respace(self, num_steps: int) -> "NoiseSchedule":
        """Sub-sequence of ``num_steps`` entries of this schedule (improved-DDPM re-spacing).

        Keeps the entries ``respaced_indices(self.num_steps, num_steps)`` (both ends included),
        recomputes betas and posterior tables from the kept ``abar`` and keeps the original
        training indices in ``.timesteps`` and ``num_train_steps`` unchanged.

        Args:
            num_steps: number of steps to keep, 1..self.num_steps.

        Returns:
            The re-spaced schedule (``self`` when ``num_steps == self.num_steps``).
        """
        if num_steps == self.num_steps:
            return self
        idx = torch.from_numpy(respaced_indices(self.num_steps, num_steps))
        return NoiseSchedule.from_alphas_cumprod(self.alphas_cumprod[idx], self.timesteps[idx], self.num_train_steps)

    def truncate(self, num_steps: int) -> "NoiseSchedule":
        """The first ``num_steps`` entries (steps 0..num_steps-1), training indices kept.

        A sampler that starts from a partly noised state at step ``num_steps - 1`` runs on this
        (re-spaced further if it takes fewer steps).

        Args:
            num_steps: number of steps to keep, 1..self.num_steps.
        """
        if not 1 <= num_steps <= self.num_steps:
            raise ValueError(f"num_steps {num_steps} outside 1..{self.num_steps}")
        if num_steps == self.num_steps:
            return self
        return NoiseSchedule.from_alphas_cumprod(self.alphas_cumprod[:num_steps], self.timesteps[:num_steps],
                                                 self.num_train_steps)

    # ------------------------------------------------------------------ properties
    @property
    def num_steps(self) -> int:
        """Number of entries T of this schedule."""
        return int(self.betas.numel())

    @property
    def alphas(self) -> Tensor:
        """float64 (T,), ``1 - beta_t``."""
        return 1.0 - self.betas

    # ------------------------------------------------------------------ helpers
    def _check_index(self, t: int) -> int:
        t = int(t)
        if not 0 <= t < self.num_steps:
            raise IndexError(f"step {t} outside 0..{self.num_steps - 1}")
        return t

    def _gather(self, table: Tensor, t: TimeIndex, like: Tensor) -> Tensor:
        """``table[t]`` cast to ``like``'s dtype/device, shaped to broadcast against ``like``.

        An int (or 0-d) ``t`` gives a 0-d tensor; a (B,) ``t`` gives shape (B, 1, ..., 1).
        """
        if not like.is_floating_point():
            raise TypeError(f"expected a floating-point tensor, got {like.dtype}")
        # cast on the CPU first: some devices (MPS) have no float64
        values = table.to(dtype=like.dtype)
        if not isinstance(t, Tensor) or t.ndim == 0:
            return values[self._check_index(t)].to(like.device)
        # indexing on t's device avoids a device->host sync in the training loop
        out = values.to(t.device)[t.long()].to(like.device)
        return out.reshape(out.shape[0], *([1] * (like.ndim - 1)))

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: TimeIndex, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_t ~ q(x_t | x0) = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.

        Args:
            x0: clean state (B, C, *spatial), floating point.
            t: index into this schedule: an int, or a (B,) LongTensor (one step per sample).
            noise: eps of x0's shape; drawn from N(0, I) when None.
            generator: random generator for the noise (must live on x0's device).

        Returns:
            x_t, same shape, dtype and device as x0.
        """
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a = self._gather(self.alphas_cumprod.sqrt(), t, x0)
        s = self._gather((1.0 - self.alphas_cumprod).sqrt(), t, x0)
        return a * x0 + s * noise

    def network_time(self, t: TimeIndex) -> Tensor:
        """Time given to the network: ``(timesteps[t] + 1) / num_train_steps``, in (0, 1].

        Uses the original training index, so a re-spaced schedule tells the network the same
        time as the training schedule did for that step; the last training step maps to 1.

        Args:
            t: index into this schedule, int or LongTensor of any shape.

        Returns:
            float32 tensor of t's shape (0-d for an int), on t's device.
        """
        times = (self.timesteps.to(torch.float64) + 1.0) / self.num_train_steps
        if not isinstance(t, Tensor):
            return times[self._check_index(t)].to(torch.float32)
        return times.to(torch.float32).to(t.device)[t.long()]

    # ------------------------------------------------------------------ reverse process
    def posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: TimeIndex) -> tuple[Tensor, Tensor]:
        """Mean and variance of the posterior ``q(x_{t-1} | x_t, x0)`` (``t-1`` of this schedule).

        Args:
            x0: (estimated) clean state, (B, C, *spatial).
            x_t: state at step t, same shape.
            t: index into this schedule, int or (B,) LongTensor.

        Returns:
            (mean, variance): mean of x_t's shape; variance 0-d (int t) or (B, 1, ..., 1).
        """
        coef1 = self._gather(self.posterior_mean_coef1, t, x_t)
        coef2 = self._gather(self.posterior_mean_coef2, t, x_t)
        mean = coef1 * x0 + coef2 * x_t
        return mean, self._gather(self.posterior_variance, t, x_t)

    def ddpm_step(self, x0_hat: Tensor, x_t: Tensor, t: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral DDPM step ``x_{t-1} = mu_tilde(x0_hat, x_t) + sigma_tilde_t z``.

        No noise is drawn at t == 0 (the posterior variance is 0 there anyway); the result at
        t == 0 is then exactly ``x0_hat`` (coef1 = 1, coef2 = 0).

        Args:
            x0_hat: predicted clean state, (B, C, *spatial), in [-1, 1].
            x_t: current state, same shape.
            t: index into this schedule.
            generator: random generator for z (must live on x_t's device).

        Returns:
            x_{t-1}.
        """
        t = self._check_index(t)
        mean, var = self.posterior_mean_variance(x0_hat, x_t, t)
        if t == 0:
            return mean
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + var.sqrt() * z

    def ddim_step(self, x0_hat: Tensor, x_t: Tensor, t: int) -> Tensor:
        """Deterministic DDIM step (eta = 0) to step t-1 of this schedule.

        ``eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)`` -- the spec's
        ``(x_t / sqrt(abar_t) - x0_hat) / sqrt(1 / abar_t - 1)`` multiplied through by
        ``sqrt(abar_t)``, which avoids dividing by a tiny ``sqrt(abar_t)`` at the noisy end;
        ``x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1}) eps_hat``. At t == 0
        ``abar_{-1} = 1`` and the result is exactly ``x0_hat``.

        Args:
            x0_hat: predicted clean state, (B, C, *spatial).
            x_t: current state, same shape.
            t: index into this schedule.

        Returns:
            x_{t-1}.
        """
        t = self._check_index(t)
        abar_t = float(self.alphas_cumprod[t])
        abar_prev = float(self.alphas_cumprod_prev[t])
        eps_hat = (x_t - math.sqrt(abar_t) * x0_hat) / math.sqrt(1.0 - abar_t)
        return math.sqrt(abar_prev) * x0_hat + math.sqrt(1.0 - abar_prev) * eps_hat

    def __repr__(self) -> str:
        return (f"NoiseSchedule(num_steps={self.num_steps}, num_train_steps={self.num_train_steps}, "
                f"abar=[{float(self.alphas_cumprod[0]):.4g} .. {float(self.alphas_cumprod[-1]):.4g}])")


# ---------------------------------------------------------------------- mask-space conventions
def mask_to_x0(onehot_or_probs: Tensor) -> Tensor:
    """Mask (one-hot or probabilities in [0, 1]) to diffusion state space: ``2 p - 1``.

    Args:
        onehot_or_probs: (B, C, *spatial) one-hot mask or class probabilities.

    Returns:
        Float tensor in [-1, 1] (integer/bool input becomes float32).
    """
    p = onehot_or_probs if onehot_or_probs.is_floating_point() else onehot_or_probs.float()
    return 2.0 * p - 1.0


def x0_from_logits(logits: Tensor) -> Tensor:
    """Denoiser output (x0 as logits) to the x0 estimate: ``2 softmax(logits, dim=1) - 1``.

    Args:
        logits: (B, C, *spatial).

    Returns:
        x0_hat in [-1, 1], same shape.
    """
    return 2.0 * torch.softmax(logits, dim=1) - 1.0


def network_mask_input(x_t: Tensor) -> Tensor:
    """Noisy state to the denoiser's mask channels: ``(clip(x_t, -1, 1) + 1) / 2`` in [0, 1].

    Args:
        x_t: (B, C, *spatial) state.

    Returns:
        Same shape, in [0, 1].
    """
    return (x_t.clamp(-1.0, 1.0) + 1.0) / 2.0
