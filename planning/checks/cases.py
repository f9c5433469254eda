"""Per-case content checks (run in worker processes): readable files, shape and geometry agreement
between channels and between image and label, NaN/Inf and float32-unsafe intensities in images.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from planning.checks.files import CHUNK_VOXELS, Header, read_header, read_voxels
from planning.checks.geometry import compare_geometry
from planning.checks.labels import check_label_voxels

logger = logging.getLogger(__name__)


@dataclass
class CaseTask:
    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    num_channels: int
    allowed_labels: frozenset[int] | None
    check_intensities: bool
    geometry: bool
    single_rgb_file: bool = False


@dataclass
class CaseResult:
    problems: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[str, str, str]] = field(default_factory=list)
    label_values: set[int] = field(default_factory=set)


def check_case(task: CaseTask) -> CaseResult:
    """All content checks of one case (runs in worker processes; must not raise)."""
    result = CaseResult()
    try:
        _check_case_inner(task, result)
    except Exception as e:  # noqa: BLE001 - a bug here must not hide the other cases' problems
        logger.exception("unexpected error while checking case %s", task.case_id)
        first = task.label or task.images[0]
        result.problems.append((first, f"could not be checked ({type(e).__name__}: {e})"))
    return result


def _check_case_inner(task: CaseTask, result: CaseResult) -> None:
    headers: list[Header] = []
    for path in task.images:
        info = read_header(path)
        if isinstance(info, str):
            result.problems.append((path, info))
            continue
        if info.dimension not in (2, 3):
            result.problems.append((path, f"{info.dimension}-D image; nnU-Net expects one 2-D or 3-D file per "
                                          "channel (CASE_0000, CASE_0001, ...)"))
            continue
        expected_components = task.num_channels if task.single_rgb_file else 1
        if info.components != expected_components:
            if task.single_rgb_file:
                msg = f"has {info.components} colour component(s) but {task.num_channels} channels are declared"
            else:
                msg = (f"has {info.components} components per voxel (RGB/vector image) but each channel file must "
                       f"hold one value per voxel; convert to grayscale or declare {info.components} channels")
            result.problems.append((path, msg))
            continue
        headers.append(info)
        if len(headers) > 1:
            ref = headers[0]
            for msg in compare_geometry(ref, info, task.geometry, f"channel file {ref.path.name}"):
                result.problems.append((path, msg))
        if task.check_intensities:
            _check_image_voxels(path, result)

    if task.label is None:
        return
    label_info = read_header(task.label)
    if isinstance(label_info, str):
        result.problems.append((task.label, label_info))
        return
    if label_info.components != 1:
        result.problems.append((task.label, f"has {label_info.components} components per voxel (RGB/vector); a "
                                            "label must be a single-component integer image"))
        return
    if headers:
        ref = headers[0]
        for msg in compare_geometry(ref, label_info, task.geometry, f"image {ref.path.parent.name}/{ref.path.name}"):
            result.problems.append((task.label, msg))
    check_label_voxels(task.label, task.allowed_labels, result)


def _check_image_voxels(path: Path, result: CaseResult) -> None:
    voxels = read_voxels(path)
    if isinstance(voxels, str):
        result.problems.append((path, voxels))
        return
    arr = voxels[0]
    if arr.dtype.kind == "c":
        result.problems.append((path, f"complex-valued voxels ({arr.dtype}); save magnitude images"))
        return
    if arr.dtype.kind not in "fiu":
        return
    n_nan = n_inf = 0
    max_abs = 0.0
    flat = arr.reshape(-1)
    for start in range(0, flat.size, CHUNK_VOXELS):
        chunk = flat[start:start + CHUNK_VOXELS]
        if chunk.dtype.kind in "iu":
            max_abs = max(max_abs, abs(float(chunk.min())), abs(float(chunk.max())))
            continue
        finite = np.isfinite(chunk)
        if not finite.all():
            bad = chunk[~finite]
            nan = int(np.isnan(bad).sum())
            n_nan += nan
            n_inf += bad.size - nan
            chunk = chunk[finite]
        if chunk.size:
            max_abs = max(max_abs, float(np.abs(chunk).max()))
    if n_nan or n_inf:
        parts = [f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "Inf")) if n]
        result.problems.append((path, f"contains {' and '.join(parts)} voxel(s) (of {arr.size}); replace them with "
                                      "a real intensity (e.g. the image minimum)"))
    limit = float32_safe_intensity(arr.size)
    if max_abs > limit:
        result.problems.append((path, f"intensities up to {max_abs:.3g} overflow the float32 arithmetic of nnU-Net's "
                                      f"normalisation (the mean and standard deviation of {arr.size} voxels need "
                                      f"|intensity| below {limit:.3g}; the image would preprocess to NaN); rescale "
                                      "the image to a physical range"))


def float32_safe_intensity(num_voxels: int) -> float:
    """Largest |intensity| whose sum of squares over `num_voxels` stays 10x below float32's maximum.

    nnU-Net normalises in float32 (z-score: mean, then the sum of squared deviations); a square
    above float32's maximum is Inf, and Inf - Inf makes the whole image NaN.
    """
    return float(np.sqrt(np.finfo(np.float32).max / (10.0 * max(1, num_voxels))))
