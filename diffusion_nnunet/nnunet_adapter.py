"""Our one seam to nnunetv2's and dynamic-network-architectures' private internals.

nnunetv2's predictor has no public hook for what a tile's forward pass returns, nor for the width
of the sliding window's accumulator, and dynamic-network-architectures' `UNetDecoder` has none
for what runs inside a decoder stage. What we need of those internals lives here, and only here:

- `SlidingWindowPredictor`: nnUNetPredictor whose private `_internal_predict_sliding_window_return_logits`
  (the sliding window) and `_internal_maybe_mirror_and_predict` (one tile) call our public hooks,
  `predict_tiles` (several tiles per forward pass, returning a `TileResult`) and `sliding_window`
  (an image, accumulating as many channels per voxel as the tiles return, returning a
  `WindowResult`). nnU-Net's tiles, padding, Gaussian weights, half-precision accumulator and
  its fall-back from the device to the CPU are kept.
- `release_gaussian_cache`: nnunetv2 caches the Gaussian of every patch size it has seen.
- `unet_decoder_forward`: `UNetDecoder.forward`, with a hook that runs each decoder stage (the
  denoiser puts its time conditioning there).

The versions these were written against are `PINNED`; `tests/test_nnunet_adapter.py` checks that
the internals still look as used here and names the one that changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache
from torch import Tensor

#: the versions whose internals this module was written against (tests/test_nnunet_adapter.py)
PINNED = {"nnunetv2": "2.8.1", "dynamic_network_architectures": "0.4.4"}


@dataclass(frozen=True)
class TileResult:
    """What one forward pass over B tiles gives the sliding window.

    Args:
        channels: (B, K, *patch) values the window accumulates with nnU-Net's Gaussian weights
            (K: the label manager's heads for a plain prediction; more where a predictor keeps
            more per voxel, e.g. every sampling step or every mirror variant).
        steps_run: the sampler's timesteps, in the order they ran (diffusion models only).
    """

    channels: Tensor
    steps_run: tuple[int, ...] | None = None


@dataclass(frozen=True)
class WindowResult:
    """The sliding window's result for one image.

    Args:
        channels: (K, *image) Gaussian-weighted mean of the tiles' channels (half precision, as
            nnU-Net accumulates), the image's padding removed.
        steps_run: the last tile's `TileResult.steps_run`.
    """

    channels: Tensor
    steps_run: tuple[int, ...] | None = None


class SlidingWindowPredictor(nnUNetPredictor):
    """nnUNetPredictor whose sliding window calls `predict_tiles` with `tile_batch_size()` tiles at a
    time and accumulates as many channels as asked (see module docstring)."""

    _window_channels: int | None = None
    _last_tile: TileResult | None = None

    # ---------------------------------------------------------------- our hooks
    def tile_batch_size(self) -> int:
        """Tiles per forward pass of the sliding window (nnU-Net: 1)."""
        return 1

    def predict_tiles(self, tiles: Tensor, first_tile: int) -> TileResult:
        """One forward pass over B tiles (B, channels, *patch); `first_tile` is the index of the
        first in the image's tile order (per-tile noise). nnU-Net's: the network's logits,
        averaged over the mirror variants with mirroring on."""
        return TileResult(nnUNetPredictor._internal_maybe_mirror_and_predict(self, tiles))

    def sliding_window(self, image: Tensor, channels: int | None = None) -> WindowResult:
        """nnU-Net's sliding window over a preprocessed image (C, *spatial), accumulating
        `channels` values per voxel (None: the label manager's segmentation heads).

        Raises:
            RuntimeError: the half-precision accumulator overflowed (as nnU-Net).
        """
        self._window_channels, self._last_tile = channels, None
        try:
            out = nnUNetPredictor.predict_sliding_window_return_logits(self, image)
        finally:
            self._window_channels = None
        return WindowResult(out, None if self._last_tile is None else self._last_tile.steps_run)

    # ---------------------------------------------------------------- nnunetv2's private hooks
    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: Tensor) -> Tensor:
        return self.predict_tiles(x, 0).channels

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data: Tensor, slicers, do_on_device: bool = True) -> Tensor:
        """nnU-Net's sliding window (same tiles, Gaussian, accumulation dtype), `tile_batch_size()`
        tiles at a time: nnunetv2 passes one tile per forward pass, which leaves the batch dimension
        of the convolutions unused."""
        results_device = self.device if do_on_device else torch.device("cpu")
        empty_cache(self.device)
        data = data.to(results_device)
        channels = self._window_channels or self.label_manager.num_segmentation_heads
        predicted = torch.zeros((channels, *data.shape[1:]), dtype=torch.half, device=results_device)
        weights = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
        gaussian = (compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                     value_scaling_factor=10, device=results_device) if self.use_gaussian else 1)
        per_pass = self.tile_batch_size()
        for first in range(0, len(slicers), per_pass):
            group = slicers[first:first + per_pass]
            tiles = torch.stack([data[s] for s in group]).to(self.device)
            result = self.predict_tiles(tiles, first)
            self._last_tile = result
            for s, prediction in zip(group, result.channels.to(results_device)):
                if self.use_gaussian:
                    prediction *= gaussian
                predicted[s] += prediction
                weights[s[1:]] += gaussian
        torch.div(predicted, weights, out=predicted)
        if torch.any(torch.isinf(predicted)):
            raise RuntimeError("inf in the predicted array (nnU-Net's half-precision accumulation overflowed)")
        return predicted


def release_gaussian_cache() -> None:
    """Free the Gaussians nnunetv2's `compute_gaussian` keeps (an lru_cache) after a folder."""
    compute_gaussian.cache_clear()


def unet_decoder_forward(decoder: UNetDecoder, skips: Sequence[Tensor],
                         run_stage: Callable[[int, StackedConvBlocks, Tensor], Tensor]) -> Tensor | list[Tensor]:
    """`UNetDecoder.forward(skips)` with decoder stage s run as `run_stage(s, decoder.stages[s], h)`
    (`decoder.stages[s](h)` gives UNetDecoder's own result).

    Args:
        decoder: the U-Net's decoder.
        skips: the encoder's outputs, bottleneck last.
        run_stage: runs one decoder stage on the upsampled features concatenated with the skip.

    Returns:
        Logits at full resolution; with deep supervision, a list of logits, largest first.
    """
    n = len(decoder.stages)
    lres = skips[-1]
    outs = []
    for s in range(n):
        h = decoder.transpconvs[s](lres)
        h = torch.cat((h, skips[-(s + 2)]), dim=1)
        h = run_stage(s, decoder.stages[s], h)
        if decoder.deep_supervision:
            outs.append(decoder.seg_layers[s](h))
        elif s == n - 1:
            outs.append(decoder.seg_layers[-1](h))
        lres = h
    outs = outs[::-1]  # largest resolution first, as nnU-Net's loss expects
    return outs if decoder.deep_supervision else outs[0]
