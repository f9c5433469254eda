"""Per-case uncertainty scores from N probability maps of one case (diffusion samples, folds, mirrorings).

The voxel maps of `inference.uncertainty` say *where* a prediction is unsure; a reviewer needs
*which case* to look at. From N probability maps ``p_n`` of shape ``(C, *spatial)`` (N diffusion
samples, the K folds of an nnU-Net ensemble or the mirror variants of test-time augmentation) and
their mean, one case gets:

- ``entropy_foreground``: mean predictive entropy ``H[mean_n p_n]`` (nats) over the voxels the
  mean predicts as foreground (any class > 0);
- ``entropy_boundary``: the same over the boundary band: the voxels whose ``(2w+1)`` neighbourhood
  (a cube of half-width ``w`` voxels, default 1, along the non-singleton axes) holds more than one
  predicted label, i.e. the voxels within ``w`` voxels of a predicted boundary, on both sides;
- ``agreement_<class>``: the samples' mean pairwise Dice of that class (argmax of each sample);
  a class absent from both samples of a pair counts as agreement 1; N = 1 gives NaN;
- ``disagreement``: 1 - the mean of the foreground classes' agreements;
- ``volume_<class>``: the predicted (mean's argmax) volume in ml (3D) or area in mm^2 (2D:
  singleton axes are dropped), and ``volume_sd_<class>`` its standard deviation across the
  samples (population, ddof 0); ``volume_cv`` is the mean over classes of sd / mean volume.

Every score is oriented so that a *higher* value means *less certain* (`SCORES`). The review list
(`write_case_table`) sorts by one of them, least certain first; `DEFAULT_SORT` is used when no
fitted review flag (`review_flag`) names another.
"""
from __future__ import annotations

import csv
import io
import itertools
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from diffusion_nnunet.evaluation import to_jsonable
from dnnunet_core.atomic import write_json, write_text
from dnnunet_core.errors import InvalidDataError

logger = logging.getLogger(__name__)

SCORES = ("disagreement", "entropy_boundary", "entropy_foreground", "volume_cv")
DEFAULT_SORT = "disagreement"


def class_names(dataset_json: Mapping) -> list[str]:
    """The output channels' names in channel order (integer labels of dataset.json, ``ignore`` left out;
    region-based datasets: the regions in dataset.json's order, as nnU-Net's label manager)."""
    if "regions_class_order" in dataset_json:
        return [n for n in dataset_json["labels"] if n not in ("background", "ignore")]
    labels = {n: v for n, v in dataset_json["labels"].items() if isinstance(v, int) and n != "ignore"}
    return [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])]


def _entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy over axis 0 in nats, with 0 log 0 = 0."""
    p = np.clip(probs, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(0)
    return np.maximum(h, 0.0)


def boundary_band(segmentation: np.ndarray, width: int = 1) -> np.ndarray:
    """Voxels within `width` voxels of a boundary between two predicted labels (both sides).

    Args:
        segmentation: integer label map; singleton axes are not searched along.
        width: half-width of the cubic neighbourhood in voxels (>= 1).
    """
    size = [1 if s == 1 else 2 * int(width) + 1 for s in segmentation.shape]
    return ndimage.maximum_filter(segmentation, size=size) != ndimage.minimum_filter(segmentation, size=size)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _voxel_volume(spacing: Sequence[float], shape: Sequence[int]) -> tuple[float, str]:
    """Volume of one voxel in ml (3D) or area in mm^2 (2D) and the unit; singleton axes dropped."""
    kept = [float(s) for s, n in zip(spacing, shape) if n > 1]
    size = float(np.prod(kept)) if kept else 1.0
    return (size / 1000.0, "ml") if len(kept) >= 3 else (size, "mm2")


def case_scores(sample_probs: np.ndarray, spacing: Sequence[float], class_names: Sequence[str] | None = None,
                mean_probs: np.ndarray | None = None, band_width: int = 1, regions: bool = False) -> dict:
    """Scores of one case from its N probability maps.

    Args:
        sample_probs: ``(N, C, *spatial)`` probabilities (each sums to 1 over C); channel 0 is background.
            With `regions`: one independent (sigmoid) probability per region, all foreground.
        spacing: voxel size in mm per spatial axis (array order).
        class_names: names of the C channels (default ``"0"``, ``"1"``, ...).
        mean_probs: the prediction's probabilities ``(C, *spatial)``; default the mean of the samples.
        band_width: half-width of the boundary band in voxels.
        regions: region-based labels: a region is predicted where p > 0.5, the entropy is the
            sum of the regions' Bernoulli entropies, the boundary band follows every region's border.

    Returns:
        ``{"entropy_foreground", "entropy_boundary", "disagreement", "volume_cv", "num_samples",
        "volume_unit", "agreement": {class: v}, "volume": {class: v}, "volume_sd": {class: v}}``
        over the foreground classes. Entropies are NaN when no voxel is predicted foreground.

    Raises:
        ValueError: wrong shapes.
    """
    sample_probs = np.asarray(sample_probs, dtype=np.float32)
    if sample_probs.ndim < 3:
        raise ValueError(f"sample_probs must be (N, C, *spatial), got shape {sample_probs.shape}")
    n, c, spatial = sample_probs.shape[0], sample_probs.shape[1], sample_probs.shape[2:]
    if len(spacing) != len(spatial):
        raise ValueError(f"spacing {tuple(spacing)} does not match the spatial shape {spatial}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} channels")
    mean = sample_probs.mean(0) if mean_probs is None else np.asarray(mean_probs, dtype=np.float32)
    if mean.shape != sample_probs.shape[1:]:
        raise ValueError(f"mean_probs has shape {mean.shape}, expected {sample_probs.shape[1:]}")

    if regions:
        predicted = mean > 0.5  # (C, *spatial)
        # one code per combination of regions, so that the band follows every region's border
        prediction = (predicted * (2 ** np.arange(c)).reshape(-1, *[1] * len(spatial))).sum(0)
        entropy = _entropy(np.concatenate([mean, 1.0 - mean]))
        foreground = predicted.any(0)
        first = 0
    else:
        predicted = None
        prediction = mean.argmax(0)
        entropy = _entropy(mean)
        foreground = prediction > 0
        first = 1
    band = boundary_band(prediction, band_width)
    samples = sample_probs > 0.5 if regions else sample_probs.argmax(1)  # (N, C, *spatial) / (N, *spatial)
    voxel, unit = _voxel_volume(spacing, spatial)

    agreement, volume, volume_sd, cvs = {}, {}, {}, []
    for k in range(first, c):
        masks = samples[:, k] if regions else samples == k
        pairs = [_dice(masks[i], masks[j]) for i, j in itertools.combinations(range(n), 2)]
        agreement[names[k]] = float(np.mean(pairs)) if pairs else math.nan
        volume[names[k]] = float(np.count_nonzero(predicted[k] if regions else prediction == k) * voxel)
        per_sample = masks.reshape(n, -1).sum(1) * voxel
        volume_sd[names[k]] = float(per_sample.std())
        cvs.append(volume_sd[names[k]] / per_sample.mean() if per_sample.mean() > 0 else 0.0)
    fg_agreements = [v for v in agreement.values() if not math.isnan(v)]
    return {
        "entropy_foreground": float(entropy[foreground].mean()) if foreground.any() else math.nan,
        "entropy_boundary": float(entropy[band].mean()) if band.any() else math.nan,
        "disagreement": 1.0 - float(np.mean(fg_agreements)) if fg_agreements else math.nan,
        "volume_cv": float(np.mean(cvs)) if cvs else math.nan,
        "num_samples": int(n),
        "volume_unit": unit,
        "agreement": agreement,
        "volume": volume,
        "volume_sd": volume_sd,
    }


# --------------------------------------------------------------------------------------
# probabilities saved by several predictions (nnU-Net folds, seeds): CASE.npz + CASE.pkl
# --------------------------------------------------------------------------------------
def load_probabilities(folder: Path, case: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """nnU-Net's saved probabilities of one case, ``(C, *spatial)``, and their spacing (array order).

    Raises:
        InvalidDataError: the npz or pkl is missing or unreadable.
    """
    import pickle

    npz, pkl = Path(folder) / f"{case}.npz", Path(folder) / f"{case}.pkl"
    for f in (npz, pkl):
        if not f.is_file():
            raise InvalidDataError(f, "missing: predict with --save-probabilities")
    try:
        with np.load(npz) as data:
            probs = data["probabilities"]
        with open(pkl, "rb") as handle:
            spacing = tuple(float(s) for s in pickle.load(handle)["spacing"])
    except (OSError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise InvalidDataError(npz, f"cannot read nnU-Net probabilities: {err}") from err
    return probs, spacing[-(probs.ndim - 1):]


def case_scores_from_folders(folders: Sequence[str | Path], class_names: Sequence[str] | None = None,
                             cases: Sequence[str] | None = None, band_width: int = 1) -> dict[str, dict]:
    """Case scores with the K prediction folders' probabilities as the K samples.

    For nnU-Net's 5-fold ensemble (each fold predicted on its own with ``--save-probabilities``)
    or N diffusion predictions with different seeds. The mean of the K maps is the prediction.

    Args:
        folders: prediction folders holding CASE.npz + CASE.pkl.
        class_names: channel names (default: the first folder's dataset.json labels, by value).
        cases: case ids (default: the first folder's CASE.npz files).
        band_width: see `case_scores`.

    Raises:
        InvalidDataError: a folder lacks a case's probabilities, or shapes differ between folders.
    """
    import json

    folders = [Path(f) for f in folders]
    names = class_names
    if names is None and (folders[0] / "dataset.json").is_file():
        names = globals()["class_names"](json.loads((folders[0] / "dataset.json").read_text()))
    cases = sorted(p.name[:-4] for p in folders[0].glob("*.npz")) if cases is None else list(cases)
    out = {}
    for case in cases:
        loaded = [load_probabilities(f, case) for f in folders]
        shapes = {p.shape for p, _ in loaded}
        if len(shapes) != 1:
            raise InvalidDataError(folders[0] / f"{case}.npz", f"probability shapes differ between folders: {shapes}")
        out[case] = case_scores(np.stack([p for p, _ in loaded]), loaded[0][1], names, band_width=band_width)
    return out


# --------------------------------------------------------------------------------------
# the review list: OUT/uncertainty/cases.csv and cases.json
# --------------------------------------------------------------------------------------
def _sort_key(score: float) -> tuple[int, float]:
    # NaN (e.g. nothing predicted) is the least certain of all: first in the list
    return (0, 0.0) if math.isnan(score) else (1, -score)


def rank_cases(scores: Mapping[str, Mapping], sort_by: str = DEFAULT_SORT) -> list[str]:
    """Case ids from least to most certain by `sort_by` (higher = less certain; NaN first).

    Raises:
        ValueError: unknown score name.
    """
    if sort_by not in SCORES:
        raise ValueError(f"unknown score {sort_by!r}; known: {', '.join(SCORES)}")
    return sorted(scores, key=lambda case: (_sort_key(float(scores[case][sort_by])), case))


def flat_row(case: str, s: Mapping) -> dict:
    """One case's scores as a flat row (per-class values as ``agreement_<class>`` ...)."""
    row = {"case": case, **{k: s[k] for k in SCORES}, "num_samples": s["num_samples"]}
    for group in ("agreement", "volume", "volume_sd"):
        for name, value in s[group].items():
            row[f"{group}_{name}"] = value
    row["volume_unit"] = s["volume_unit"]
    return row


def write_case_table(scores: Mapping[str, Mapping], folder: str | Path, sort_by: str = DEFAULT_SORT,
                     flagged: Mapping[str, bool] | None = None, review_flag: Mapping | None = None) -> list[str]:
    """Write ``folder/cases.csv`` and ``folder/cases.json``, every case, least certain first.

    Args:
        scores: case -> `case_scores` result.
        folder: output folder (usually OUT/uncertainty).
        sort_by: the score that orders the list (one of `SCORES`).
        flagged: case -> whether the review flag marks it (a ``flagged`` column); None: no column.
        review_flag: the fitted flag (score, threshold, ...) recorded in cases.json.

    Returns:
        The case ids in the written order.
    """
    order = rank_cases(scores, sort_by)
    rows = []
    for rank, case in enumerate(order, 1):
        row = {"rank": rank, **flat_row(case, scores[case])}
        if flagged is not None:
            row["flagged"] = bool(flagged.get(case, False))
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    folder = Path(folder)
    write_text(buffer.getvalue(), folder / "cases.csv")
    write_json(to_jsonable({"sorted_by": sort_by, "order": "least certain first (higher score = less certain)",
                "review_flag": dict(review_flag) if review_flag else None,
                "num_flagged": None if flagged is None else sum(bool(flagged.get(c)) for c in order),
                "cases": [{**r, **{g: scores[r["case"]][g] for g in ("agreement", "volume", "volume_sd")}}
                          for r in rows]}),
               folder / "cases.json")
    logger.info("wrote %s (%d cases, least certain first by %s)", folder / "cases.csv", len(rows), sort_by)
    return order
