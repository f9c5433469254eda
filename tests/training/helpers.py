"""Helpers shared by the semi-supervised and distributed training tests."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from diffusion_nnunet.networks.twin import build_twin
from tests.networks.helpers import _cfg

C, IMG = 3, 1
SHAPE = (2, IMG, 32, 32)


def tiny_twin(seed=0):
    torch.manual_seed(seed)
    a = _cfg("2d")["architecture"]
    cm = SimpleNamespace(network_arch_class_name=a["network_class_name"], network_arch_init_kwargs=a["arch_kwargs"],
                         network_arch_init_kwargs_req_import=a["_kw_requires_import"])
    return build_twin(cm, IMG, C, time_embed_dim=16)
