"""Training strategies of the diffusion head (methods.md section 2): what the gradient pass sees.

Each strategy turns a clean mask x0 into the noisy state (and, for self-conditioning, the
conditioning channels) of the one forward pass that receives gradients. Strategies other than
`standard` first run the network once without gradient; that pass is the `first_pass` callable,
so these functions stay pure and testable without a network:

    first_pass(x_t, t) -> x0_hat      # no gradient; t indexes the schedule; x0_hat in [-1, 1]

| strategy       | gradient pass input                                                           |
|----------------|-------------------------------------------------------------------------------|
| standard       | x_t = q(x_t | x0), t uniform in 0..T-1                                         |
| self_condition | as standard; with prob p the pass also gets the first pass's estimate (else 0) |
| recycle_next   | x0_hat = f(q(x_{t+1} | x0), t+1); x_t = q(x_t | x0_hat), t in 0..T-2            |
| recycle        | x0_hat = f(q(x_{T-1} | x0), T-1); x_t = q(x_t | x0_hat), t in 0..T-2            |

The loss is always taken against the ground truth, by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from diffusion_nnunet.configs.training_config import STRATEGIES as STRATEGY_NAMES
from diffusion_nnunet.diffusion.schedule import NoiseSchedule

FirstPass = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GradientPassInput:
    """What the gradient pass gets.

    Args:
        x_t: noisy state in mask space, (B, C, *spatial).
        t: schedule index per sample, (B,).
        self_condition: the [0, 1] self-conditioning channels (zeros where not given), or None
            for strategies without self-conditioning.
        first_pass_t: schedule index of the no-gradient pass, or None when there was none.
    """

    x_t: torch.Tensor
    t: torch.Tensor
    self_condition: torch.Tensor | None = None
    first_pass_t: torch.Tensor | None = None


def _uniform_t(batch: int, high: int, device, generator=None) -> torch.Tensor:
    return torch.randint(0, high, (batch,), device=device, generator=generator)


def standard(x0: torch.Tensor, schedule: NoiseSchedule, first_pass: FirstPass | None = None,
             t: torch.Tensor | None = None, generator=None) -> GradientPassInput:
    """x_t = q(x_t | x0) at a uniformly drawn (or given) t."""
    t = _uniform_t(x0.shape[0], schedule.num_steps, x0.device, generator) if t is None else t
    return GradientPassInput(schedule.q_sample(x0, t, generator=generator), t)


def self_condition(x0: torch.Tensor, schedule: NoiseSchedule, first_pass: FirstPass, t: torch.Tensor | None = None,
                   generator=None, probability: float = 0.5) -> GradientPassInput:
    """Chen et al. 2022: the first pass (with zero conditioning) gives x0_hat; per sample, with
    `probability`, the gradient pass is conditioned on (x0_hat + 1) / 2, else on zeros."""
    base = standard(x0, schedule, t=t, generator=generator)
    with torch.no_grad():
        x0_hat = first_pass(base.x_t, base.t)
    keep = torch.rand((x0.shape[0],) + (1,) * (x0.ndim - 1), device=x0.device, generator=generator) < probability
    sc = torch.where(keep, (x0_hat.detach() + 1) / 2, torch.zeros_like(x0_hat))
    return GradientPassInput(base.x_t, base.t, sc, base.t)


def recycle_next(x0: torch.Tensor, schedule: NoiseSchedule, first_pass: FirstPass, t: torch.Tensor | None = None,
                 generator=None) -> GradientPassInput:
    """Fu et al. 2023 (earlier recycling): predict x0 from step t+1, re-noise the prediction to t."""
    t = _uniform_t(x0.shape[0], schedule.num_steps - 1, x0.device, generator) if t is None else t
    with torch.no_grad():
        x0_hat = first_pass(schedule.q_sample(x0, t + 1, generator=generator), t + 1)
    return GradientPassInput(schedule.q_sample(x0_hat.detach(), t, generator=generator), t, None, t + 1)


def recycle(x0: torch.Tensor, schedule: NoiseSchedule, first_pass: FirstPass, t: torch.Tensor | None = None,
            generator=None) -> GradientPassInput:
    """Fu et al. (MELBA 2023), proposed: predict x0 from the noisiest step T-1 (as sampling starts),
    re-noise that prediction to a uniform t in 0..T-2 with fresh noise."""
    last = torch.full((x0.shape[0],), schedule.num_steps - 1, device=x0.device, dtype=torch.long)
    with torch.no_grad():
        x0_hat = first_pass(schedule.q_sample(x0, last, generator=generator), last)
    t = _uniform_t(x0.shape[0], schedule.num_steps - 1, x0.device, generator) if t is None else t
    return GradientPassInput(schedule.q_sample(x0_hat.detach(), t, generator=generator), t, None, last)


STRATEGIES: dict[str, Callable[..., GradientPassInput]] = {
    "standard": standard,
    "self_condition": self_condition,
    "recycle_next": recycle_next,
    "recycle": recycle,
}
# the names are the config's (what `DiffusionConfig.validate` accepts and the trainers register)
if tuple(STRATEGIES) != STRATEGY_NAMES:
    raise ImportError(f"strategies {tuple(STRATEGIES)} differ from the config's {STRATEGY_NAMES}")
