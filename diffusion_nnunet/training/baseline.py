"""The non-diffusion baseline: plain nnU-Net (same network, loss and data pipeline) under our config."""
from __future__ import annotations

from diffusion_nnunet.configs.trainer_registry import register
from diffusion_nnunet.training.base import DnnTrainer


@register("baseline", description="plain nnU-Net: PlainConvUNet, Dice+CE, nnU-Net's augmentation")
class DnnBaselineTrainer(DnnTrainer):
    """nnU-Net's trainer with the planned budget. Its checkpoints hold a standard PlainConvUNet."""
