"""Uncertainty of implicit ensembles (methods.md section 5, Wolleb et al. 2022).

N diffusion samples of the same case (different noise) are softmax probability maps
``p_n`` of shape ``(C, *spatial)``. Their mean is the ensemble prediction; the per-voxel
uncertainty maps are:

- predictive entropy of the mean, ``H[mean_n p_n]`` (natural log, so in ``[0, log C]``);
- variance across samples, averaged over classes (population variance, ddof=0);
- optionally mutual information (BALD), ``H[mean_n p_n] - mean_n H[p_n]``: the part of the
  entropy that comes from the samples disagreeing rather than each sample being unsure.

The batch functions take all samples at once, ``(N, C, *spatial)``; `SampleStatistics`
accumulates them one at a time for large 3D images. `write_uncertainty_maps` writes the maps
as images beside the segmentation, and `error_rate_by_entropy_decile` /
`entropy_error_auroc` measure whether high entropy points at errors.

Conventions: ``0 * log 0 = 0``; inputs of any float dtype on any device; half-precision
inputs are computed in float32 (float64 inputs stay float64) and results keep that dtype and
the input's device.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from dnnunet_core.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "MAP_SUFFIXES",
    "SampleStatistics",
    "UncertaintyMaps",
    "entropy_error_auroc",
    "error_rate_by_entropy_decile",
    "expected_entropy",
    "mutual_information",
    "predictive_entropy",
    "sample_variance",
    "uncertainty_maps",
    "write_uncertainty_maps",
]

# File name suffixes of the written maps, keyed by UncertaintyMaps field.
MAP_SUFFIXES = {"entropy": "_entropy", "variance": "_variance", "mutual_information": "_mi"}


# --------------------------------------------------------------------------------------
# batch functions
# --------------------------------------------------------------------------------------
def _work_dtype(x: Tensor) -> torch.dtype:
    # float16/bfloat16 lose too much in log and squared deviations; float64 callers asked for it.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _as_work(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    return x.to(_work_dtype(x))


def _entropy(p: Tensor, dim: int) -> Tensor:
    """Entropy along `dim` in p's own dtype (no casting)."""
    # Tiny negatives from numerical noise would give NaN in log; xlogy makes 0*log 0 = 0.
    p = p.clamp_min(0)
    h = -torch.special.xlogy(p, p).sum(dim=dim)
    # Probabilities slightly above 1 (rounding) give -p log p < 0; entropy is never negative.
    return h.clamp_min_(0)


def _check_samples(sample_probs: Tensor) -> Tensor:
    if not isinstance(sample_probs, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(sample_probs).__name__}")
    if sample_probs.ndim < 3:
        raise ValueError(f"sample_probs must be (N, C, *spatial), got shape {tuple(sample_probs.shape)}")
    if sample_probs.shape[0] == 0:
        raise ValueError("sample_probs holds no samples (N = 0)")
    return _as_work(sample_probs)


def predictive_entropy(mean_probs: Tensor, dim: int = 0) -> Tensor:
    """Entropy of a probability vector per voxel, natural log.

    Args:
        mean_probs: probabilities (e.g. the mean over samples), classes along `dim`,
            typically ``(C, *spatial)``; expected to sum to 1 along `dim`.
        dim: the class axis.

    Returns:
        ``(*spatial)`` entropy in ``[0, log C]``; 0 for one-hot, ``log C`` for uniform.
    """
    return _entropy(_as_work(mean_probs), dim)


def expected_entropy(sample_probs: Tensor) -> Tensor:
    """Mean over samples of each sample's entropy, ``mean_n H[p_n]`` (aleatoric part).

    Args:
        sample_probs: ``(N, C, *spatial)`` per-sample probabilities.

    Returns:
        ``(*spatial)``.
    """
    p = _check_samples(sample_probs)
    return _entropy(p, dim=1).mean(dim=0)


def sample_variance(sample_probs: Tensor) -> Tensor:
    """Variance of the probabilities across samples, averaged over classes.

    Population variance (ddof=0, divide by N), so a single sample gives 0 and the value
    matches `SampleStatistics`. Two-pass (mean first), which is stable in float32.

    Args:
        sample_probs: ``(N, C, *spatial)`` per-sample probabilities.

    Returns:
        ``(*spatial)``; 0 where all samples are identical, at most 0.25.
    """
    p = _check_samples(sample_probs)
    return p.var(dim=0, correction=0).mean(dim=0)


def _mi_from(entropy_of_mean: Tensor, mean_entropy: Tensor) -> Tensor:
    # The subtraction makes a new tensor, so the in-place clamp leaves the inputs alone.
    # Mathematically >= 0 (Jensen); rounding can make it a hair negative.
    return (entropy_of_mean - mean_entropy).clamp_min_(0)


def mutual_information(sample_probs: Tensor) -> Tensor:
    """Mutual information between prediction and sample (BALD): ``H[mean p] - mean_n H[p_n]``.

    0 when all samples agree; equal to the entropy of the mean when every sample is one-hot
    (all uncertainty comes from disagreement).

    Args:
        sample_probs: ``(N, C, *spatial)`` per-sample probabilities.

    Returns:
        ``(*spatial)``, clamped to be >= 0.
    """
    p = _check_samples(sample_probs)
    return _mi_from(_entropy(p.mean(dim=0), dim=0), _entropy(p, dim=1).mean(dim=0))


@dataclass
class UncertaintyMaps:
    """Per-voxel uncertainty maps, each ``(*spatial)``.

    Args:
        entropy: predictive entropy of the mean probabilities (natural log).
        variance: across-sample variance averaged over classes (ddof=0).
        mutual_information: BALD mutual information, or None when not computed.
    """

    entropy: Tensor
    variance: Tensor
    mutual_information: Tensor | None = None

    def items(self) -> list[tuple[str, Tensor]]:
        """(field name, map) pairs of the maps that are present, in writing order."""
        out = [("entropy", self.entropy), ("variance", self.variance)]
        if self.mutual_information is not None:
            out.append(("mutual_information", self.mutual_information))
        return out


def uncertainty_maps(sample_probs: Tensor, with_mutual_information: bool = False) -> UncertaintyMaps:
    """All maps from the stacked samples, computing the mean only once.

    Args:
        sample_probs: ``(N, C, *spatial)`` per-sample probabilities.
        with_mutual_information: also compute the mutual information map.

    Returns:
        UncertaintyMaps (mutual_information is None unless requested).
    """
    p = _check_samples(sample_probs)
    h_mean = _entropy(p.mean(dim=0), dim=0)
    variance = p.var(dim=0, correction=0).mean(dim=0)
    mi = _mi_from(h_mean, _entropy(p, dim=1).mean(dim=0)) if with_mutual_information else None
    return UncertaintyMaps(entropy=h_mean, variance=variance, mutual_information=mi)


# --------------------------------------------------------------------------------------
# streaming accumulation
# --------------------------------------------------------------------------------------
class SampleStatistics:
    """Running accumulation over samples without keeping all of them in memory (large 3D images).

    Call `update` with each sample's probabilities ``(C, *spatial)``, then `finalize`.
    Mean and variance use Welford's update in `accumulate_dtype` (float64 by default), which
    does not suffer the cancellation of sum/sum-of-squares; mutual information uses a
    running sum of per-sample entropies. Memory: two ``(C, *spatial)`` accumulators plus one
    ``(*spatial)`` map when mutual information is requested. Results equal the batch
    functions (`uncertainty_maps`) up to rounding.

    Args:
        with_mutual_information: also accumulate what the mutual information map needs.
        accumulate_dtype: dtype of the accumulators.
    """

    def __init__(self, with_mutual_information: bool = False, accumulate_dtype: torch.dtype = torch.float64):
        if not accumulate_dtype.is_floating_point:
            raise TypeError(f"accumulate_dtype must be a float dtype, got {accumulate_dtype}")
        self.with_mutual_information = with_mutual_information
        self.accumulate_dtype = accumulate_dtype
        self.count = 0
        self._mean: Tensor | None = None
        self._m2: Tensor | None = None
        self._entropy_sum: Tensor | None = None
        self._out_dtype: torch.dtype | None = None

    @property
    def shape(self) -> tuple[int, ...] | None:
        """``(C, *spatial)`` of the samples seen so far, or None before the first update."""
        return None if self._mean is None else tuple(self._mean.shape)

    def update(self, probs: Tensor) -> None:
        """Add one sample.

        Args:
            probs: ``(C, *spatial)`` probabilities of one sample; same shape for every call.
        """
        if not isinstance(probs, Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(probs).__name__}")
        if probs.ndim < 2:
            raise ValueError(f"probs must be (C, *spatial), got shape {tuple(probs.shape)}")
        if self._mean is None:
            self._mean = torch.zeros(probs.shape, dtype=self.accumulate_dtype, device=probs.device)
            self._m2 = torch.zeros_like(self._mean)
            if self.with_mutual_information:
                self._entropy_sum = torch.zeros(probs.shape[1:], dtype=self.accumulate_dtype, device=probs.device)
            self._out_dtype = _work_dtype(probs)
        elif tuple(probs.shape) != self.shape:
            raise ValueError(f"sample shape {tuple(probs.shape)} differs from earlier samples {self.shape}")
        # copy=True: the in-place steps below must never touch the caller's tensor.
        x = probs.to(device=self._mean.device, dtype=self.accumulate_dtype, copy=True)
        if self._entropy_sum is not None:
            self._entropy_sum += _entropy(x, dim=0)
        self.count += 1
        delta = x - self._mean
        self._mean.add_(delta, alpha=1.0 / self.count)
        # Welford: M2 += (x - old_mean) * (x - new_mean), reusing x's buffer.
        self._m2.add_(x.sub_(self._mean).mul_(delta))

    def finalize(self) -> tuple[Tensor, UncertaintyMaps]:
        """Mean probabilities and uncertainty maps of the samples so far (does not reset).

        Returns:
            ``(mean_probs (C, *spatial), UncertaintyMaps)`` in float32 (float64 if the samples
            were float64), on the samples' device.
        """
        if self.count == 0 or self._mean is None:
            raise RuntimeError("SampleStatistics.finalize() called before any update()")
        out = self._out_dtype
        h_mean = _entropy(self._mean, dim=0)
        variance = (self._m2 / self.count).clamp_min_(0).mean(dim=0)
        mi = None
        if self._entropy_sum is not None:
            mi = _mi_from(h_mean, self._entropy_sum / self.count).to(out)
        maps = UncertaintyMaps(entropy=h_mean.to(out), variance=variance.to(out), mutual_information=mi)
        return self._mean.to(out), maps


# --------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def write_uncertainty_maps(
    maps: UncertaintyMaps,
    reference_image: str | Path,
    output_truncated: str | Path,
    file_ending: str = ".nii.gz",
) -> list[Path]:
    """Write the maps as float32 images with the geometry of the case's segmentation.

    Files: ``<output_truncated>_entropy<file_ending>``, ``_variance`` and, when present,
    ``_mi``. Each is written atomically; if any write fails, the maps already written by this
    call are removed, so a case has all of its maps or none.

    Args:
        maps: maps in the segmentation file's array layout (numpy order z,y,x or y,x, as
            SimpleITK's GetArrayFromImage gives). For a 2D reference a leading singleton axis
            ``(1, y, x)`` (nnU-Net's internal 2D layout) is also accepted and dropped.
        reference_image: the segmentation just written for this case; spacing, origin and
            direction are copied from it (only its header is read).
        output_truncated: output path without file ending, e.g. ``out/case_001``.
        file_ending: image file ending; SimpleITK chooses the format from it.

    Returns:
        The written paths, in the order entropy, variance[, mi].

    Raises:
        ValueError: a map's shape does not match the reference image.
    """
    reference_image = Path(reference_image)
    if not file_ending.startswith("."):
        raise ValueError(f"file_ending must start with '.', got {file_ending!r}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(reference_image))
    reader.ReadImageInformation()  # header only: the reference may be a large 3D volume
    ref_shape = tuple(int(s) for s in reversed(reader.GetSize()))  # sitk size is x,y,z

    # Validate every map before writing any, so a bad map leaves nothing behind.
    arrays: list[tuple[str, np.ndarray]] = []
    for name, value in maps.items():
        arr = _to_numpy(value)
        if len(ref_shape) == 2 and arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if tuple(arr.shape) != ref_shape:
            raise ValueError(
                f"{name} map has shape {tuple(arr.shape)} but the reference image {reference_image} "
                f"has array shape {ref_shape}"
            )
        arrays.append((name, np.ascontiguousarray(arr, dtype=np.float32)))

    out_base = str(output_truncated)
    written: list[Path] = []
    try:
        for name, arr in arrays:
            dest = Path(out_base + MAP_SUFFIXES[name] + file_ending)
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(reader.GetSpacing())
            img.SetOrigin(reader.GetOrigin())
            img.SetDirection(reader.GetDirection())
            with atomic_path(dest, suffix=file_ending) as tmp:
                sitk.WriteImage(img, str(tmp), True)
            written.append(dest)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        logger.warning("writing uncertainty maps for %s failed; removed %d partial output(s)", out_base, len(written))
        raise
    logger.debug("wrote %d uncertainty map(s) for %s", len(written), out_base)
    return written


# --------------------------------------------------------------------------------------
# does entropy point at errors?
# --------------------------------------------------------------------------------------
def _flat_pair(entropy: Any, error: Any) -> tuple[np.ndarray, np.ndarray]:
    e = _to_numpy(entropy)
    err = _to_numpy(error)
    if err.shape != e.shape:
        raise ValueError(f"entropy shape {e.shape} differs from error shape {err.shape}")
    e = e.astype(np.float64, copy=False).ravel()
    err = err.astype(bool, copy=False).ravel()
    if e.size == 0:
        raise ValueError("entropy is empty")
    if not np.all(np.isfinite(e)):
        raise ValueError("entropy contains NaN or infinite values")
    return e, err


def error_rate_by_entropy_decile(entropy: np.ndarray, error: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Error rate of voxels grouped by entropy quantile bins.

    Bin edges are the entropy quantiles at ``0, 1/n_bins, ..., 1``; bins are
    ``[low, high)``, the last one closed. Equal edges (ties, typically the many voxels with
    entropy exactly 0) are merged, so a tied value never straddles bins and fewer than
    `n_bins` bins may come back; every returned bin is non-empty.

    Args:
        entropy: per-voxel entropy (any shape; numpy array or CPU/CUDA tensor).
        error: per-voxel bool, True where the prediction is wrong; same shape.
        n_bins: number of quantile bins (10 = deciles).

    Returns:
        One dict per bin, from low to high entropy: ``bin`` (0-based), ``entropy_low``,
        ``entropy_high``, ``voxels``, ``error_rate``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    e, err = _flat_pair(entropy, error)
    edges = np.unique(np.quantile(e, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.size == 1:  # all voxels share one entropy value
        edges = np.array([edges[0], edges[0]])
    n = edges.size - 1
    # side="right": a value equal to an inner edge belongs to the bin starting there; the
    # maximum lands past the last edge and is clipped into the (closed) last bin.
    idx = np.clip(np.searchsorted(edges, e, side="right") - 1, 0, n - 1)
    voxels = np.bincount(idx, minlength=n)
    errors = np.bincount(idx, weights=err, minlength=n)
    rows: list[dict] = []
    for i in np.flatnonzero(voxels):
        rows.append(
            {
                "bin": len(rows),
                "entropy_low": float(edges[i]),
                "entropy_high": float(edges[i + 1]),
                "voxels": int(voxels[i]),
                "error_rate": float(errors[i] / voxels[i]),
            }
        )
    return rows


def _rank_auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """AUROC as the Mann-Whitney U statistic with average ranks for ties (ties count 1/2)."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    # Average rank (1-based) for each run of equal scores.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def entropy_error_auroc(entropy: np.ndarray, error: np.ndarray) -> float:
    """AUROC of entropy as a detector of erroneous voxels.

    1 = every error has higher entropy than every correct voxel, 0.5 = no better than
    chance; tied entropies count one half. Uses sklearn's roc_auc_score when importable
    (it is in this project's venv), else an equivalent rank-based (Mann-Whitney) version so
    the module keeps working in a slim install without scikit-learn.

    Args:
        entropy: per-voxel entropy (any shape).
        error: per-voxel bool, True where the prediction is wrong; same shape.

    Returns:
        The AUROC, or NaN (with a warning) when there are no errors or only errors.
    """
    e, err = _flat_pair(entropy, error)
    n_pos = int(err.sum())
    if n_pos == 0 or n_pos == err.size:
        logger.warning("entropy/error AUROC undefined: %d of %d voxels are errors", n_pos, err.size)
        return float("nan")
    try:
        from sklearn.metrics import roc_auc_score  # imported lazily: sklearn is slow to import
    except ImportError:
        return _rank_auroc(e, err)
    return float(roc_auc_score(err, e))
