"""Which timesteps the gradient pass trains on: uniform, or loss-aware importance sampling.

Importance sampling (methods.md section 1, an option): p_t proportional to sqrt(EMA of loss_t^2),
mixed with 1 % uniform so that every step keeps being visited. nnU-Net's Dice + CE loss is a
batch quantity, so each update credits the batch loss to every timestep drawn in that batch.
Until every step has been seen `warmup` times the sampler stays uniform.
"""
from __future__ import annotations

import torch


class TimestepSampler:
    """Draws timesteps in 0..num_steps-1.

    Args:
        num_steps: number of trainable timesteps (T, or T-1 for the recycling strategies).
        mode: "uniform" or "importance".
        decay: EMA decay of the squared loss per step.
        uniform_mix: share of the uniform distribution mixed in.
        warmup: updates per step before importance weights are used.
    """

    def __init__(self, num_steps: int, mode: str = "uniform", decay: float = 0.9, uniform_mix: float = 0.01,
                 warmup: int = 10):
        self.num_steps, self.mode, self.decay, self.uniform_mix, self.warmup = num_steps, mode, decay, uniform_mix, warmup
        self.ema_sq = torch.zeros(num_steps, dtype=torch.float64)
        self.counts = torch.zeros(num_steps, dtype=torch.long)

    def probabilities(self) -> torch.Tensor:
        uniform = torch.full((self.num_steps,), 1.0 / self.num_steps, dtype=torch.float64)
        if self.mode == "uniform" or bool((self.counts < self.warmup).any()):
            return uniform
        weights = self.ema_sq.sqrt()
        weights = weights / weights.sum()
        return (1 - self.uniform_mix) * weights + self.uniform_mix * uniform

    def sample(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        t = torch.multinomial(self.probabilities().float(), batch, replacement=True, generator=generator)
        return t.to(device)

    def update(self, t: torch.Tensor, loss: float) -> None:
        """Credit `loss` (a batch loss) to the timesteps drawn for that batch."""
        for step in t.detach().cpu().unique().tolist():
            if self.counts[step] == 0:
                self.ema_sq[step] = loss ** 2
            else:
                self.ema_sq[step] = self.decay * self.ema_sq[step] + (1 - self.decay) * loss ** 2
            self.counts[step] += 1

    def state_dict(self) -> dict:
        return {"ema_sq": self.ema_sq.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.ema_sq, self.counts = state["ema_sq"].clone(), state["counts"].clone()
