"""Label file checks: values declared in dataset.json, integer data type."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from planning.checks.files import CHUNK_VOXELS, read_voxels

if TYPE_CHECKING:  # cases imports this module
    from planning.checks.cases import CaseResult


def check_label_voxels(path: Path, allowed: frozenset[int] | None, result: CaseResult) -> None:
    voxels = read_voxels(path)
    if isinstance(voxels, str):
        result.problems.append((path, voxels))
        return
    arr, stored_dtype, _keep = voxels
    kind = arr.dtype.kind
    if kind == "c":
        result.problems.append((path, f"label has complex-valued voxels ({arr.dtype}); labels must be integers"))
        return
    if kind == "f":
        finite = np.isfinite(arr)
        n_bad = int(arr.size - np.count_nonzero(finite))
        if n_bad:
            result.problems.append((path, f"label contains {n_bad} NaN/Inf voxel(s); labels must be integers"))
            return
        fractional = arr != np.floor(arr)
        n_frac = int(np.count_nonzero(fractional))
        if n_frac:
            examples = ", ".join(f"{v:g}" for v in np.unique(arr[fractional])[:5])
            result.problems.append((path, f"label is stored as {stored_dtype} with non-integer values (e.g. {examples} in "
                                          f"{n_frac} voxels); labels must be integer class indices - was it resampled "
                                          "with linear interpolation instead of nearest neighbour?"))
            return
        if np.dtype(stored_dtype).kind == "f":
            result.warnings.append(("float-label", str(path), f"label stored as {stored_dtype}; an integer type "
                                                              "(e.g. uint8) is smaller and safer"))
        values, counts = np.unique(arr, return_counts=True)
        values = values.astype(np.int64)
    elif kind in "iub":
        values, counts = _integer_value_counts(arr)
    else:
        result.problems.append((path, f"unsupported label voxel type {arr.dtype}; labels must be integers"))
        return
    present = {int(v) for v in values}
    result.label_values = present
    if allowed is not None:
        unexpected = [(int(v), int(c)) for v, c in zip(values, counts) if int(v) not in allowed]
        if unexpected:
            listed = ", ".join(f"{v} ({c} voxels)" for v, c in unexpected[:10])
            more = f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""
            result.problems.append((path, f"label values not declared in dataset.json labels: {listed}{more}; "
                                          f"allowed: {sorted(allowed)}"))
    if present == {0}:
        result.warnings.append(("background-only", str(path), "label contains only background (0)"))


def _integer_value_counts(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts of an integer array, in bounded memory and linear time when possible."""
    if arr.dtype.kind == "b":
        arr = arr.view(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < 1 << 16:
        counts = np.zeros(hi + 1, dtype=np.int64)
        flat = arr.reshape(-1)
        for start in range(0, flat.size, CHUNK_VOXELS):
            counts += np.bincount(flat[start:start + CHUNK_VOXELS], minlength=hi + 1)
        values = np.nonzero(counts)[0]
        return values, counts[values]
    values, counts = np.unique(arr, return_counts=True)
    return values.astype(np.int64), counts
