"""Diffusion-time embedding: sinusoidal features of t followed by a small MLP.

Time convention (shared with the trainers): ``t`` is a float in (0, 1], i.e. the discrete step
index normalised by the number of steps. The sinusoidal features are computed from
``t * time_scale`` (default 1000) so that the frequency range matches the classic DDPM setting,
where integer steps 0..999 were embedded; without the scaling all t in (0, 1] would fall onto
the low-frequency end of the spectrum and be hard to tell apart.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_embedding", "TimeEmbedding", "DEFAULT_TIME_SCALE"]

#: Factor applied to the normalised time before the sinusoids (t in (0, 1] -> (0, 1000]).
DEFAULT_TIME_SCALE = 1000.0


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0,
                         time_scale: float = DEFAULT_TIME_SCALE) -> Tensor:
    """Transformer-style sinusoidal features of a batch of (normalised) times.

    Args:
        t: float tensor of shape (B,) (or any shape, flattened) with values in (0, 1].
        dim: number of output features. The first ``dim // 2`` are cosines, the next
            ``dim // 2`` sines; an odd ``dim`` gets one zero column at the end.
        max_period: the longest period of the sinusoids, in units of ``t * time_scale``.
        time_scale: factor applied to ``t`` first (default 1000, see the module docstring).

    Returns:
        float32 tensor of shape (B, dim) on ``t``'s device, values in [-1, 1].
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    # float32 on purpose: under autocast, fp16 sinusoids of arguments up to 1000 lose the
    # fine differences between neighbouring steps.
    t = t.reshape(-1).to(torch.float32) * time_scale
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1)
    )
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear.

    The output is the shared time code; each conditioned stage projects it further (see
    ``denoiser.FiLM``).

    Args:
        embed_dim: width of the MLP's hidden layer (and default for the other widths).
        sinusoidal_dim: number of sinusoidal input features (default: ``embed_dim``).
        out_dim: width of the output code (default: ``embed_dim``). The per-stage projections
            cost ``out_dim * 2 * channels`` parameters each, so a smaller code makes the time
            layers cheaper; t is a scalar, so a few dozen features describe it amply.
        max_period: see :func:`sinusoidal_embedding`.
        time_scale: see :func:`sinusoidal_embedding`.
    """

    def __init__(self, embed_dim: int = 128, sinusoidal_dim: int | None = None, out_dim: int | None = None,
                 max_period: float = 10000.0, time_scale: float = DEFAULT_TIME_SCALE):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.sinusoidal_dim = int(sinusoidal_dim or embed_dim)
        self.out_dim = int(out_dim or embed_dim)
        self.max_period = float(max_period)
        self.time_scale = float(time_scale)
        self.mlp = nn.Sequential(
            nn.Linear(self.sinusoidal_dim, self.embed_dim),
            nn.SiLU(),
            nn.Linear(self.embed_dim, self.out_dim),
        )

    def forward(self, t: Tensor) -> Tensor:
        """Embed a batch of times.

        Args:
            t: float tensor (B,) with values in (0, 1].

        Returns:
            Tensor (B, out_dim) in the dtype of the MLP's weights (or autocast's dtype).
        """
        emb = sinusoidal_embedding(t, self.sinusoidal_dim, self.max_period, self.time_scale)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
