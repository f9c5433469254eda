"""The denoiser a diffusion config names: "early" (image and noisy mask concatenated at the input,
the default) or "late" (late fusion: the image encoder's features reused across reverse steps)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["DENOISERS", "build_selected_denoiser"]

#: image and noisy mask fused at the input (the default) or at every encoder stage
DENOISERS = ("early", "late")


def build_selected_denoiser(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                            image_channels: int, num_classes: int, self_condition: bool = False,
                            deep_supervision: bool = True, time_embed_dim: int = 128, denoiser: str = "early",
                            **kwargs) -> nn.Module:
    """``build_denoiser`` (early) or ``build_late_fusion_denoiser`` (late), same arguments.

    Args:
        denoiser: one of ``DENOISERS``.
        Other arguments: as ``networks.denoiser.build_denoiser``.

    Raises:
        ValueError: an unknown denoiser name.
    """
    if denoiser == "early":
        from diffusion_nnunet.networks.denoiser import build_denoiser as build
    elif denoiser == "late":
        from diffusion_nnunet.networks.late_fusion import build_late_fusion_denoiser as build
    else:
        raise ValueError(f"unknown denoiser {denoiser!r}; choose one of {', '.join(DENOISERS)}")
    return build(arch_class_name, arch_kwargs, arch_kwargs_req_import, image_channels, num_classes,
                 self_condition=self_condition, deep_supervision=deep_supervision, time_embed_dim=time_embed_dim,
                 **kwargs)
