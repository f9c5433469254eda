"""The diffusion head's label spaces: classes (softmax) or nnU-Net regions (sigmoid), with an ignore label.

nnU-Net v2 trains either on classes (one output per label, softmax, Dice + CE) or on regions
(dataset.json labels that map to tuples of label values with ``regions_class_order``, as in
BraTS: one output per region, sigmoid, Dice + BCE). The diffusion state follows the same choice:

| space   | channels C           | x0                      | probabilities of logits |
|---------|----------------------|-------------------------|-------------------------|
| classes | labels incl. background | ``2 onehot(y) - 1``  | ``softmax(logits, 1)``  |
| regions | one per region       | ``2 region(y) - 1``     | ``sigmoid(logits)``     |

Nested regions (whole tumour > core > enhancing) overlap, hence independent Bernoulli channels.

Ignore label (sparse annotations): nnU-Net's losses mask ignored voxels (CE ``ignore_index``
and a Dice loss mask; BCE with the target's last channel as mask). The diffusion head keeps
that loss and gives ignored voxels the *background* state in x0 (classes: the background
channel 1, all others -1; regions: all -1), so that the forward process ``q(x_t | x0)`` is
defined everywhere. The gradient therefore never sees a label inside ignored voxels, and the
loss does not depend on what the network predicts there.

Targets arrive as nnU-Net's data pipeline makes them: classes ``(B, 1, *spatial)`` label values
(the ignore value included); regions ``(B, R [+1], *spatial)`` binary, the last channel being
the ignore mask when the dataset has an ignore label (``ConvertSegmentationToRegionsTransform``
with the ignore label appended, as nnU-Net's trainer builds it).

Uncertainty in region space: each region is a Bernoulli variable, so `as_distribution` turns R
region probabilities into 2R entries ``(p_1, ..., p_R, 1 - p_1, ..., 1 - p_R)``; the class-space
maps of ``inference/uncertainty.py`` then give the sum of the regions' Bernoulli entropies (in
``[0, R log 2]``), the regions' mean variance (var(1 - p) = var(p)) and the summed mutual
information.

Pure torch: no nnunetv2 import (`LabelSpace.from_label_manager` reads the label manager's
attributes only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LabelSpace"]

_EPS = 1e-6


@dataclass(frozen=True)
class LabelSpace:
    """How labels, the diffusion state and probabilities map onto each other.

    Args:
        num_channels: C, the network's outputs (nnU-Net's ``num_segmentation_heads``).
        regions: region-based (sigmoid) instead of classes (softmax).
        ignore_label: the dataset's ignore value, or None.
        region_values: per region the label values it holds (region-based only; used where a
            label map, not nnU-Net's converted target, is turned into regions).
    """

    num_channels: int
    regions: bool = False
    ignore_label: int | None = None
    region_values: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def from_label_manager(cls, label_manager) -> "LabelSpace":
        """The space of an nnunetv2 ``LabelManager``."""
        regions = bool(label_manager.has_regions)
        values = tuple(tuple(int(v) for v in (r if isinstance(r, (list, tuple)) else [r]))
                       for r in label_manager.foreground_regions) if regions else ()
        return cls(int(label_manager.num_segmentation_heads), regions, label_manager.ignore_label, values)

    # ------------------------------------------------------------------ targets
    def keep_mask(self, target: Tensor) -> Tensor | None:
        """(B, 1, *spatial) float, 1 where annotated, from nnU-Net's target; None without ignore label."""
        if self.ignore_label is None:
            return None
        if self.regions:
            return 1.0 - target[:, -1:].float()
        return (target != self.ignore_label).float()

    def target_onehot(self, target: Tensor) -> Tensor:
        """(B, C, *spatial) float {0, 1} reference; ignored voxels are background."""
        if self.regions:
            onehot = target[:, :self.num_channels].float()
            keep = self.keep_mask(target)
            return onehot if keep is None else onehot * keep
        seg = target[:, 0].long()
        if self.ignore_label is not None:
            seg = torch.where(seg == self.ignore_label, torch.zeros_like(seg), seg)
        return F.one_hot(seg, self.num_channels).movedim(-1, 1).to(torch.float32)

    def target_x0(self, target: Tensor) -> Tensor:
        """x0 = 2 * mask - 1 of nnU-Net's target (ignored voxels: background)."""
        return 2.0 * self.target_onehot(target) - 1.0

    def label_map_onehot(self, seg: Tensor) -> Tensor:
        """(C, *spatial) float {0, 1} from a label map (label values, e.g. nnU-Net's
        gt segmentation of one case, shape (*spatial)); ignored voxels are background, and so are
        negative values (nnU-Net's preprocessing marks voxels outside the nonzero crop -1)."""
        seg = seg.long().clamp_min(0)
        if self.ignore_label is not None:
            seg = torch.where(seg == self.ignore_label, torch.zeros_like(seg), seg)
        if self.regions:
            return torch.stack([torch.isin(seg, torch.tensor(r, device=seg.device)) for r in self.region_values]).float()
        return F.one_hot(seg, self.num_channels).movedim(-1, 0).to(torch.float32)

    # ------------------------------------------------------------------ network outputs
    def probabilities(self, logits: Tensor, dim: int = 1) -> Tensor:
        """Softmax over classes, or per-region sigmoid."""
        return torch.sigmoid(logits) if self.regions else torch.softmax(logits, dim=dim)

    def x0_from_logits(self, logits: Tensor) -> Tensor:
        """The denoiser's x0 estimate, ``2 p - 1``, in [-1, 1]."""
        return 2.0 * self.probabilities(logits) - 1.0

    def logits_from_probabilities(self, probs: Tensor) -> Tensor:
        """Inverse of `probabilities` (up to clamping): log p for classes (softmax of log p = p
        for normalised p), logit p = log p - log(1 - p) for regions."""
        p = probs.clamp(_EPS, 1.0 - _EPS) if self.regions else probs.clamp_min(_EPS)
        return torch.log(p) - torch.log1p(-p) if self.regions else torch.log(p)

    def hard(self, probs: Tensor, dim: int = 1) -> Tensor:
        """{0, 1} masks of the same shape: one-hot argmax (classes) or p > 0.5 (regions)."""
        if self.regions:
            return (probs > 0.5).to(probs.dtype)
        return torch.zeros_like(probs).scatter_(dim, probs.argmax(dim, keepdim=True), 1)

    def as_distribution(self, probs: Tensor, dim: int = 1) -> Tensor:
        """Probabilities as a categorical distribution along `dim` for the uncertainty maps:
        the class probabilities as they are; region probabilities p as ``cat([p, 1 - p])``
        (one Bernoulli per region, see the module docstring)."""
        return torch.cat([probs, 1.0 - probs], dim) if self.regions else probs
