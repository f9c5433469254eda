"""Geometry agreement between files of one case: size, spacing, origin, direction.

Spacing uses nnU-Net's own test (``np.allclose`` defaults, relative 1e-5). nnU-Net only *warns*
about origin and direction mismatches; we treat them as errors (with tolerances that absorb the
float32 rounding of NIfTI headers: origin 1e-3 mm, direction cosines 1e-4), because an image and
label in different physical places or orientations usually means the label does not belong to
the voxels, which silently ruins a training run.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from planning.checks.files import Header

SPACING_RTOL = 1e-5  # nnU-Net's check is np.allclose with numpy's defaults

SPACING_ATOL = 1e-8

ORIGIN_ATOL_MM = 1e-3

DIRECTION_ATOL = 1e-4


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _fmt_size(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


def compare_geometry(ref: Header, other: Header, geometry: bool, what: str) -> list[str]:
    """Problems of `other` relative to the reference header; `what` names the reference in messages."""
    if other.size != ref.size:
        kind = "" if other.dimension == ref.dimension else f" ({other.dimension}-D vs {ref.dimension}-D)"
        return [f"size {_fmt_size(other.size)} differs from {what} ({_fmt_size(ref.size)}){kind}"]
    if not geometry:
        return []
    out = []
    if not np.allclose(other.spacing, ref.spacing, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        out.append(f"spacing {_fmt(other.spacing)} differs from {what} {_fmt(ref.spacing)}")
    if not np.allclose(other.origin, ref.origin, rtol=SPACING_RTOL, atol=ORIGIN_ATOL_MM):
        dist = float(np.max(np.abs(np.subtract(other.origin, ref.origin))))
        out.append(f"origin {_fmt(other.origin)} differs from {what} {_fmt(ref.origin)} by up to {dist:.4g} mm; "
                   "if the voxels do correspond, copy the image geometry onto this file "
                   "(SimpleITK: CopyInformation)")
    if not np.allclose(other.direction, ref.direction, rtol=0, atol=DIRECTION_ATOL):
        out.append(f"direction (orientation) {_fmt(other.direction)} differs from {what} {_fmt(ref.direction)}; "
                   "the files are not in the same orientation (check with nnUNetv2_plot_overlay_pngs)")
    return out
