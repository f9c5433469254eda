"""Mixed precision for network evaluation at prediction, as nnunetv2's predictor chooses it.

nnunetv2 autocasts only on CUDA: on the CPU autocast is slow on many processors (no native
bfloat16) and on MPS it is not implemented. The sampler's state, its probabilities and every
reverse step stay float32 whatever the network computes in.
"""
from __future__ import annotations

import contextlib

import torch


def network_autocast(device: torch.device, dtype: torch.dtype = torch.float16):
    """A context in which the denoiser runs: `torch.autocast` on CUDA (fp16 by default, as
    nnunetv2's predictor; bf16 on request), no autocast anywhere else.

    Args:
        device: the device the network runs on.
        dtype: torch.float16 or torch.bfloat16 (CUDA only).
    """
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
