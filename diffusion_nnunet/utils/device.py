"""Pick the torch device; nnunetv2 defaults to CUDA, which fails on CPU-only machines."""
from __future__ import annotations

import torch

from dnnunet_core.errors import UserInputError


def resolve_device(name: str | None = None) -> torch.device:
    """Return the requested device, or the best available one for `None`/"auto".

    Args:
        name: "cpu", "cuda", "mps", "auto" or None.
    """
    if name in (None, "auto"):
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("-device cuda was requested but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("-device mps was requested but MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"unknown device {name!r}; use cpu, cuda, mps or auto")
    return torch.device(name)
