"""Late-fusion denoiser: the image encoder runs once per tile, the noisy mask through a light encoder.

Design
------
The early denoiser (``denoiser.DiffusionUNet``) concatenates image and noisy mask at the input, so
every reverse step of every sample runs the whole U-Net. Here the input is split:

* **image encoder**: the encoder of the nnU-Net U-Net built from the plans (``get_network_from_plans``
  with the image's channels), unchanged and *time-independent*: its stage outputs depend on the
  image alone, so they can be reused across reverse steps and samples;
* **mask encoder**: a light ``PlainConvEncoder`` with the same stage kernels and strides, one conv
  per stage and few channels (``default_mask_features``), on the noisy mask (and the
  self-conditioning estimate); the time code enters each of its stages by FiLM after the norm, as
  the early denoiser conditions its encoder stages;
* **fusion**: skip s = image features s + ``Conv1x1(mask features s)``;
* **decoder**: nnU-Net's ``UNetDecoder`` with one FiLM per stage, exactly as the early denoiser's.

The forward signature is the early denoiser's, ``forward(cat([image, m_t, (self-cond)]), t)``, so
trainers, samplers and predictors use either network unchanged.

Feature cache (eval only)
-------------------------
In eval mode with gradients off, the image features of the last call are kept with a key: the image
part's shape, dtype and device, the autocast state, and each image-encoder parameter's and buffer's
identity, storage and version counter (an optimizer step, ``load_state_dict`` or any in-place edit
bumps it). The callers hand the network ``cat([image, m_t])``, a new tensor at every step, so the
image part cannot be recognised by identity; on a key match it is compared by value
(``torch.equal``: one pass over the image channels, negligible next to one conv stage). A hit skips
the image encoder: within one sampler run the image is the same at every step, and the samples of a
tile share one batch. Training mode (and any call with gradients on) never reads or writes the
cache; ``train()`` drops it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import Tensor, nn

from diffusion_nnunet.networks.denoiser import DiffusionUNet, FiLM, check_planned_architecture

__all__ = ["LateFusionUNet", "build_late_fusion_denoiser", "default_mask_features"]

logger = logging.getLogger(__name__)


def default_mask_features(features_per_stage: Sequence[int]) -> list[int]:
    """Mask-encoder widths: a quarter of the image encoder's per stage, between 4 and 32.

    Args:
        features_per_stage: the image encoder's features per stage.
    """
    return [max(4, min(32, int(f) // 4)) for f in features_per_stage]


@dataclass
class _FeatureCache:
    key: tuple
    image: Tensor
    features: list[Tensor]


class LateFusionUNet(DiffusionUNet):
    """nnU-Net U-Net on the image, a light encoder on the noisy mask, fused at every stage.

    Args:
        unet: a ``PlainConvUNet`` or ``ResidualEncoderUNet`` built with the *image's* input channels.
        features_per_stage: must equal ``unet.encoder.output_channels``.
        mask_channels: C (noisy mask) or 2C (with the self-conditioning estimate).
        mask_features: mask-encoder widths per stage (default: ``default_mask_features``).
        time_embed_dim, conditioning, cond_dim, time_scale, max_period: as ``DiffusionUNet``.
    """

    def __init__(self, unet: nn.Module, features_per_stage: Sequence[int], mask_channels: int,
                 mask_features: Sequence[int] | None = None, **time_kwargs):
        super().__init__(unet, features_per_stage, **time_kwargs)
        enc = unet.encoder
        self.image_channels = self.in_channels  # the U-Net's own input conv sees the image only
        self.mask_channels = int(mask_channels)
        self.in_channels = self.image_channels + self.mask_channels
        self.mask_features = [int(c) for c in (mask_features or default_mask_features(self.features_per_stage))]
        if len(self.mask_features) != len(self.features_per_stage):
            raise ValueError(f"mask_features needs one width per stage ({len(self.features_per_stage)}), "
                             f"got {self.mask_features}")
        self.mask_encoder = PlainConvEncoder(
            self.mask_channels, len(self.mask_features), self.mask_features, enc.conv_op, enc.kernel_sizes,
            enc.strides, 1, enc.conv_bias, enc.norm_op, enc.norm_op_kwargs, None, None, enc.nonlin,
            enc.nonlin_kwargs, return_skips=True)
        # the image encoder is time-independent (cacheable): the time code conditions the mask
        # encoder's stages instead (replacing the early denoiser's per-encoder-stage FiLM)
        code = self.time_embed.out_dim
        self.film_encoder = nn.ModuleList(FiLM(code, c, self.conditioning) for c in self.mask_features)
        self.fuse = nn.ModuleList(enc.conv_op(m, f, kernel_size=1)
                                  for m, f in zip(self.mask_features, self.features_per_stage))
        self._cache: _FeatureCache | None = None
        #: image-encoder passes and cache hits since construction (for tests and benchmarks)
        self.image_encoder_calls = 0
        self.cache_hits = 0

    # ----------------------------------------------------------------------------------- cache
    def train(self, mode: bool = True) -> "LateFusionUNet":
        self.clear_feature_cache()
        return super().train(mode)

    def clear_feature_cache(self) -> None:
        """Drop the cached image features (they hold a batch of tiles' encoder outputs)."""
        self._cache = None

    def _weights_key(self) -> tuple:
        enc = self.unet.encoder
        return tuple((id(p), p.data_ptr(), p._version) for p in (*enc.parameters(), *enc.buffers()))

    def _cache_key(self, image: Tensor) -> tuple:
        device = image.device.type
        autocast = torch.is_autocast_enabled(device)
        return (tuple(image.shape), image.dtype, str(image.device), autocast,
                torch.get_autocast_dtype(device) if autocast else None, self._weights_key())

    def _run_image_encoder(self, image: Tensor) -> list[Tensor]:
        self.image_encoder_calls += 1
        return list(self.unet.encoder(image))

    def image_features(self, image: Tensor) -> list[Tensor]:
        """The image encoder's stage outputs, from the cache when this image was just encoded.

        Args:
            image: (B, image_channels, *spatial).
        """
        if self.training or torch.is_grad_enabled():
            return self._run_image_encoder(image)
        key = self._cache_key(image)
        cached = self._cache
        if cached is not None and cached.key == key and torch.equal(cached.image, image):
            self.cache_hits += 1
            return cached.features
        self._cache = None  # free the old entry before the new features are computed
        features = self._run_image_encoder(image)
        self._cache = _FeatureCache(key, image.clone(), features)
        return features

    # --------------------------------------------------------------------------------- forward
    def _encode(self, x: Tensor, emb: Tensor) -> list[Tensor]:
        image, h = x[:, :self.image_channels], x[:, self.image_channels:]
        skips = []
        for stage, film, fuse, feat in zip(self.mask_encoder.stages, self.film_encoder, self.fuse,
                                           self.image_features(image)):
            for m in stage:  # [StackedConvBlocks] (the mask encoder pools by strided conv)
                h = self._stacked(m, h, film, emb) if isinstance(m, StackedConvBlocks) else m(h)
            skips.append(feat + fuse(h))
        return skips

    def _channel_layout(self) -> str:
        return f"image {self.image_channels} + mask {self.mask_channels}"

    # ---------------------------------------------------------------------------------- budget
    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """The early denoiser's estimate (U-Net + FiLM maps) plus the mask encoder's and fusion's maps.

        Args:
            input_size: spatial patch size, as in nnU-Net.
        """
        total = np.int64(super().compute_conv_feature_map_size(input_size))
        total += np.int64(self.mask_encoder.compute_conv_feature_map_size(input_size))
        size = list(input_size)
        for stride, f in zip(self.unet.encoder.strides, self.features_per_stage):
            size = [i // j for i, j in zip(size, stride)]
            total += 2 * np.prod([f, *size], dtype=np.int64)  # projection and sum
        return total


def build_late_fusion_denoiser(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                               image_channels: int, num_classes: int, self_condition: bool = False,
                               deep_supervision: bool = True, time_embed_dim: int = 128,
                               conditioning: str = "film", cond_dim: int | None = None,
                               mask_features: Sequence[int] | None = None) -> LateFusionUNet:
    """Build the late-fusion denoiser from a plans configuration's ``architecture`` entry.

    The U-Net (image encoder and decoder) comes from ``get_network_from_plans`` with the image's
    channels, as the baseline's; the FiLM projections start at zero (as the early denoiser's), the
    mask encoder and the fusion convolutions get PyTorch's default initialisation, so the mask
    is seen from the first step.

    Args:
        arch_class_name, arch_kwargs, arch_kwargs_req_import: the plans' ``architecture`` entry.
        image_channels: image modalities.
        num_classes: C (output channels and noisy-mask channels).
        self_condition: C more mask-encoder inputs for the self-conditioning estimate.
        deep_supervision: initial deep-supervision state.
        time_embed_dim, conditioning, cond_dim: as ``build_denoiser``.
        mask_features: mask-encoder widths (default ``default_mask_features``).

    Raises:
        NotImplementedError: for architectures other than PlainConvUNet / ResidualEncoderUNet.
    """
    check_planned_architecture(arch_class_name, "the late-fusion denoiser")
    unet = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, image_channels,
                                  num_classes, allow_init=True, deep_supervision=deep_supervision)
    mask_channels = int(num_classes) * (2 if self_condition else 1)
    net = LateFusionUNet(unet, unet.encoder.output_channels, mask_channels, mask_features,
                         time_embed_dim=time_embed_dim, conditioning=conditioning, cond_dim=cond_dim)
    net.reset_time_conditioning()
    net.self_condition = bool(self_condition)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_extra = sum(p.numel() for p in net.time_parameters())
    logger.info("late-fusion denoiser: %s on the image (%d channels), mask encoder %s on %d channels, "
                "%d params on top of the U-Net's %d", type(unet).__name__, image_channels, net.mask_features,
                mask_channels, n_extra, n_unet)
    return net
