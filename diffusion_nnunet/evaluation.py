"""Evaluate predicted segmentations against references: Dice, HD95 and normalised surface Dice.

Every metric is computed per case and per foreground class (label or region, as in nnU-Net's
``dataset.json``), in physical units: HD95 in millimetres and the NSD tolerance in millimetres,
using the voxel spacing stored in the reference image.

Conventions (the same as nnU-Net's for Dice; HD95/NSD follow MONAI and the Metrics Reloaded
recommendations):

=====================================  =====  =====  =====
class present in ...                   Dice   HD95   NSD
=====================================  =====  =====  =====
reference and prediction               value  value  value
exactly one of them                    0      NaN    0
neither                                NaN    NaN    NaN
=====================================  =====  =====  =====

NaN values are skipped in every mean (NaN-aware means), so a class that is absent from both
reference and prediction does not change the scores. An HD95 that is undefined because the class
is missing from exactly one of reference or prediction is a real failure that a mean cannot show;
it is therefore counted (``n_hd95_undefined`` in the means) and reported by :func:`format_table`.

HD95 is MONAI's definition: the larger of the two directed 95th percentiles of the surface
distances (reference -> prediction and prediction -> reference), computed on the boundary voxels.
MedPy's ``hd95`` takes the 95th percentile of both directions pooled, which is never larger: the
two agree within about a voxel when the errors are alike in both directions (a boundary that is a
little off), while one-sided errors (spurious islands, holes) make MONAI's value the larger one.
``tests/test_evaluation.py`` checks both against MedPy.

2D images that nnU-Net stores as NIfTI with a singleton axis (shape ``(1, y, x)`` in numpy
order) are evaluated as 2D images with their in-plane spacing; otherwise every boundary voxel
would lie on the volume's border.

Voxels carrying the dataset's ``ignore`` label in the reference are excluded: predictions there
count as background for every metric (for Dice this is exactly nnU-Net's rule).
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dnnunet_core.atomic import write_json
from dnnunet_core.errors import InvalidDataError, UserInputError

logger = logging.getLogger(__name__)

METRICS = ("Dice", "HD95", "NSD")

CONVENTIONS = (
    "Dice/HD95/NSD per case and foreground class; HD95 in mm (MONAI: max of the two directed 95th "
    "percentiles of boundary distances); NSD at the given tolerance in mm. Class in neither "
    "reference nor prediction: all NaN (skipped in means). Class in exactly one: Dice 0, NSD 0, "
    "HD95 NaN (counted as n_hd95_undefined). NaN is written as null."
)


# --------------------------------------------------------------------------------------------
# reading


def read_segmentation(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a label map and its spacing, both in numpy axis order.

    A 3D image with a singleton axis (nnU-Net's 2D NIfTI layout ``(1, y, x)``) is returned as a
    2D array with the spacing of the remaining axes.

    Args:
        path: segmentation file readable by SimpleITK (.nii.gz, .nrrd, .mha, ...).

    Returns:
        (integer label array, spacing per array axis in mm).

    Raises:
        InvalidDataError: unreadable file, vector image, 4D image or non-integer labels.
    """
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InvalidDataError(path, f"cannot be read as an image ({str(e).strip().splitlines()[-1]})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidDataError(path, "is a multi-component (vector/RGB) image, expected a label map")
    arr = sitk.GetArrayFromImage(img)
    spacing = tuple(float(s) for s in img.GetSpacing()[::-1])
    if arr.ndim not in (2, 3):
        raise InvalidDataError(path, f"has {arr.ndim} dimensions, expected a 2D or 3D label map")
    if arr.ndim == 3 and 1 in arr.shape:
        axis = arr.shape.index(1)
        arr = np.take(arr, 0, axis=axis)
        spacing = tuple(s for i, s in enumerate(spacing) if i != axis)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InvalidDataError(path, "contains non-integer values, expected a label map")
        arr = arr.astype(np.int64)
    return arr, spacing


# --------------------------------------------------------------------------------------------
# labels


def _normalise_labels(labels: Mapping | None) -> tuple[list[tuple[str, int | tuple[int, ...]]] | None, int | None]:
    """Turn a dataset.json style ``labels`` dict into [(name, label_or_region)] and the ignore label.

    Accepts ``{name: int | [ints]}`` (dataset.json) and also ``{int: name}``.
    """
    if labels is None:
        return None, None
    items = list(labels.items())
    if items and all(isinstance(v, str) for _, v in items):
        try:
            items = [(v, int(k)) for k, v in items]
        except (TypeError, ValueError):
            raise UserInputError(f"labels must map names to label values, got {dict(labels)!r}") from None
    classes: list[tuple[str, int | tuple[int, ...]]] = []
    ignore = None
    for name, value in items:
        name = str(name)
        if name == "ignore":
            ignore = int(value)
            continue
        if isinstance(value, (list, tuple)):
            region = tuple(int(v) for v in value)
            if all(v == 0 for v in region):
                continue
            classes.append((name, region if len(region) > 1 else region[0]))
        else:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise UserInputError(f"label {name!r} has value {value!r}, expected an integer or a list") from None
            if value == 0:
                continue
            classes.append((name, value))
    if not classes:
        raise UserInputError(f"labels declare no foreground class: {dict(labels)!r}")
    return classes, ignore


def _load_dataset_json(dataset_json: str | os.PathLike | Mapping | None) -> dict | None:
    if dataset_json is None or isinstance(dataset_json, Mapping):
        return dataset_json
    try:
        with open(dataset_json) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidDataError(dataset_json, f"cannot read dataset.json ({e})") from None


def _mask(seg: np.ndarray, label_or_region: int | tuple[int, ...]) -> np.ndarray:
    if isinstance(label_or_region, tuple):
        return np.isin(seg, label_or_region)
    return seg == label_or_region


# --------------------------------------------------------------------------------------------
# per case


def _surface_metrics(mask_pred: np.ndarray, mask_ref: np.ndarray, spacing: Sequence[float],
                     tolerance_mm: float) -> tuple[float, float]:
    """HD95 and NSD (both in mm) for two non-empty binary masks, with MONAI."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    yp = torch.from_numpy(np.ascontiguousarray(mask_pred))[None, None]
    yt = torch.from_numpy(np.ascontiguousarray(mask_ref))[None, None]
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes its own deprecated argument internally (get_mask_edges)
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd95 = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(yp, yt, class_thresholds=[float(tolerance_mm)], include_background=True,
                                   spacing=spacing)
    return float(hd95[0, 0]), float(nsd[0, 0])


def evaluate_case(reference_file: str | os.PathLike, prediction_file: str | os.PathLike,
                  classes: Sequence[tuple[str, int | tuple[int, ...]]] | None = None,
                  ignore_label: int | None = None, nsd_tolerance_mm: float = 1.0) -> dict:
    """Metrics of one case.

    Args:
        reference_file: reference label map.
        prediction_file: predicted label map (same grid as the reference).
        classes: [(name, label or region)] to evaluate; None: every non-zero label found in
            either image (named by its value).
        ignore_label: reference voxels with this label are excluded.
        nsd_tolerance_mm: NSD tolerance in mm.

    Returns:
        {"reference_file", "prediction_file", "metrics": {name: {"Dice", "HD95", "NSD", "n_ref",
        "n_pred"}}} with NaN where a metric is undefined (see the module docstring).
    """
    ref, spacing = read_segmentation(reference_file)
    pred, spacing_pred = read_segmentation(prediction_file)
    if ref.shape != pred.shape:
        raise InvalidDataError(prediction_file, f"shape {pred.shape} differs from the reference's {ref.shape} "
                                                f"({reference_file})")
    if not np.allclose(spacing, spacing_pred, rtol=1e-3, atol=1e-6):
        raise InvalidDataError(prediction_file, f"spacing {spacing_pred} differs from the reference's {spacing} "
                                                f"({reference_file})")
    if classes is None:
        found = np.union1d(np.unique(ref), np.unique(pred))
        classes = [(str(int(v)), int(v)) for v in found if v != 0 and v != ignore_label]
    keep = None if ignore_label is None else ref != ignore_label

    metrics: dict[str, dict[str, Any]] = {}
    for name, label_or_region in classes:
        m_ref = _mask(ref, label_or_region)
        m_pred = _mask(pred, label_or_region)
        if keep is not None:
            m_ref &= keep
            m_pred &= keep
        n_ref, n_pred = int(m_ref.sum()), int(m_pred.sum())
        tp = int(np.count_nonzero(m_ref & m_pred))
        if n_ref == 0 and n_pred == 0:
            dice = hd95 = nsd = math.nan
        elif n_ref == 0 or n_pred == 0:
            dice, hd95, nsd = 0.0, math.nan, 0.0
        else:
            dice = 2.0 * tp / (n_ref + n_pred)
            hd95, nsd = _surface_metrics(m_pred, m_ref, spacing, nsd_tolerance_mm)
        metrics[name] = {"Dice": dice, "HD95": hd95, "NSD": nsd, "n_ref": n_ref, "n_pred": n_pred}
    return {"reference_file": str(reference_file), "prediction_file": str(prediction_file), "metrics": metrics}


def _evaluate_case_star(args):
    return evaluate_case(*args)


# --------------------------------------------------------------------------------------------
# folders


def _nanmean(values: Iterable[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _list_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")}


def evaluate_folders(reference_dir: str | os.PathLike, prediction_dir: str | os.PathLike,
                     labels: Mapping | None = None, file_ending: str | None = None,
                     nsd_tolerance_mm: float = 1.0, dataset_json: str | os.PathLike | Mapping | None = None,
                     num_processes: int = 1, allow_missing: bool = False) -> dict:
    """Evaluate every prediction in a folder against the reference with the same file name.

    Args:
        reference_dir: folder of reference label maps (e.g. nnU-Net's ``labelsTr``).
        prediction_dir: folder of predicted label maps.
        labels: dataset.json style ``{name: label or [labels of a region]}``; background (0) is
            skipped and ``ignore`` sets the ignore label. None: take them from `dataset_json`,
            else every non-zero value found (classes named by their value).
        file_ending: file ending of the segmentations; None: `dataset_json`'s ``file_ending``,
            else ``.nii.gz``.
        nsd_tolerance_mm: tolerance of the normalised surface Dice, in mm.
        dataset_json: dataset.json (path or dict) providing labels / file ending / ignore label.
        num_processes: worker processes (1: evaluate in this process).
        allow_missing: accept references without a prediction (they are logged and skipped).

    Returns:
        {"per_case": [{"case", "reference_file", "prediction_file", "metrics": {class: {...}}}],
        "mean": {class: {"Dice", "HD95", "NSD", "n_cases", "n_hd95_undefined"}},
        "foreground_mean": {"Dice", "HD95", "NSD", "n_hd95_undefined"}, "settings": {...}}.
        Undefined values are NaN; :func:`write_evaluation` writes them as null.

    Raises:
        UserInputError: missing folders, no predictions, bad labels or tolerance.
        InvalidDataError: a prediction without reference, references without prediction (unless
            `allow_missing`), mismatching shapes/spacings or unreadable files.
    """
    reference_dir, prediction_dir = Path(reference_dir), Path(prediction_dir)
    for d, what in ((reference_dir, "reference"), (prediction_dir, "prediction")):
        if not d.is_dir():
            raise UserInputError(f"{what} folder {d} does not exist")
    if not (nsd_tolerance_mm >= 0 and math.isfinite(nsd_tolerance_mm)):
        raise UserInputError(f"nsd_tolerance_mm must be a finite number >= 0, got {nsd_tolerance_mm}")

    ds = _load_dataset_json(dataset_json)
    if file_ending is None:
        file_ending = ds.get("file_ending", ".nii.gz") if ds else ".nii.gz"
    if labels is None and ds is not None:
        if "labels" not in ds:
            raise InvalidDataError(dataset_json if not isinstance(dataset_json, Mapping) else "dataset.json",
                                   "has no 'labels' entry")
        labels = ds["labels"]
    classes, ignore_label = _normalise_labels(labels)
    if ignore_label is None and ds is not None and "ignore" in ds.get("labels", {}):
        ignore_label = int(ds["labels"]["ignore"])

    preds = _list_cases(prediction_dir, file_ending)
    refs = _list_cases(reference_dir, file_ending)
    if not preds:
        raise UserInputError(f"no predictions ending in {file_ending!r} in {prediction_dir}")
    no_ref = sorted(set(preds) - set(refs))
    if no_ref:
        raise InvalidDataError(preds[no_ref[0]], f"has no reference in {reference_dir}"
                               + (f" (nor have {len(no_ref) - 1} more: {', '.join(no_ref[1:6])}"
                                  f"{', ...' if len(no_ref) > 6 else ''})" if len(no_ref) > 1 else ""))
    no_pred = sorted(set(refs) - set(preds))
    if no_pred:
        listing = ", ".join(no_pred[:10]) + (", ..." if len(no_pred) > 10 else "")
        if not allow_missing:
            raise InvalidDataError(prediction_dir, f"{len(no_pred)} reference case(s) have no prediction: "
                                                   f"{listing} (pass --allow-missing to evaluate the others)")
        logger.warning("%d reference case(s) without prediction are skipped: %s", len(no_pred), listing)

    cases = sorted(preds)
    jobs = [(refs[c], preds[c], classes, ignore_label, nsd_tolerance_mm) for c in cases]
    logger.info("evaluating %d case(s) from %s against %s", len(cases), prediction_dir, reference_dir)
    if num_processes <= 1 or len(jobs) == 1:
        per_case_raw = [_evaluate_case_star(j) for j in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            per_case_raw = pool.map(_evaluate_case_star, jobs)

    # Classes named by the user keep their order; inferred ones are sorted by value, and a class
    # missing from a case is absent from both images there.
    if classes is not None:
        names = [n for n, _ in classes]
    else:
        names = sorted({n for r in per_case_raw for n in r["metrics"]}, key=int)
    empty = {"Dice": math.nan, "HD95": math.nan, "NSD": math.nan, "n_ref": 0, "n_pred": 0}
    per_case = []
    for case, r in zip(cases, per_case_raw):
        per_case.append({"case": case, "reference_file": r["reference_file"],
                         "prediction_file": r["prediction_file"],
                         "metrics": {n: r["metrics"].get(n, dict(empty)) for n in names}})

    mean: dict[str, dict[str, Any]] = {}
    for n in names:
        rows = [pc["metrics"][n] for pc in per_case]
        entry: dict[str, Any] = {m: _nanmean(r[m] for r in rows) for m in METRICS}
        entry["n_cases"] = sum(1 for r in rows if r["n_ref"] or r["n_pred"])
        entry["n_hd95_undefined"] = sum(1 for r in rows if (r["n_ref"] == 0) != (r["n_pred"] == 0))
        mean[n] = entry
    foreground_mean: dict[str, Any] = {m: _nanmean(mean[n][m] for n in names) for m in METRICS}
    foreground_mean["n_hd95_undefined"] = sum(mean[n]["n_hd95_undefined"] for n in names)
    for n in names:
        if mean[n]["n_hd95_undefined"]:
            logger.warning("class %s: HD95 undefined in %d case(s) (class in only one of reference/prediction)",
                           n, mean[n]["n_hd95_undefined"])

    return {
        "per_case": per_case,
        "mean": mean,
        "foreground_mean": foreground_mean,
        "settings": {
            "reference_dir": str(reference_dir), "prediction_dir": str(prediction_dir),
            "file_ending": file_ending, "nsd_tolerance_mm": float(nsd_tolerance_mm),
            "labels": {n: (list(v) if isinstance(v, tuple) else v) for n, v in classes} if classes else None,
            "ignore_label": ignore_label, "conventions": CONVENTIONS,
        },
    }


# --------------------------------------------------------------------------------------------
# output


def to_jsonable(obj: Any) -> Any:
    """Copy of `obj` that strict JSON accepts: NaN/inf -> None, numpy scalars/arrays -> Python.

    Args:
        obj: nested dicts/lists/tuples of numbers, strings and numpy values.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def write_evaluation(result: Mapping, output_json: str | os.PathLike) -> None:
    """Write an :func:`evaluate_folders` result as strict JSON (NaN -> null), atomically.

    Args:
        result: the evaluation result.
        output_json: destination file.
    """
    write_json(to_jsonable(result), output_json)
    logger.info("wrote %s", output_json)


def load_evaluation(path: str | os.PathLike) -> dict:
    """Read a file written by :func:`write_evaluation`; null metrics become NaN again.

    Args:
        path: the JSON file.
    """
    with open(path) as f:
        result = json.load(f)

    def fix(d: dict) -> None:
        for m in METRICS:
            if m in d and d[m] is None:
                d[m] = math.nan

    for pc in result.get("per_case", []):
        for d in pc["metrics"].values():
            fix(d)
    for d in result.get("mean", {}).values():
        fix(d)
    fix(result.get("foreground_mean", {}))
    return result


def format_table(result: Mapping) -> str:
    """A fixed-width table of the class means and the foreground mean, for the terminal.

    Args:
        result: an :func:`evaluate_folders` (or :func:`load_evaluation`) result.
    """
    from diffusion_nnunet.reporting import results_table_text

    tol = result.get("settings", {}).get("nsd_tolerance_mm")
    nsd_col = f"NSD@{tol:g}mm" if tol is not None else "NSD"
    columns = ["class", "Dice", "HD95 (mm)", nsd_col, "cases", "HD95 undefined"]
    rows = []
    for name, m in result["mean"].items():
        rows.append({"class": name, "Dice": m["Dice"], "HD95 (mm)": m["HD95"], nsd_col: m["NSD"],
                     "cases": m.get("n_cases"), "HD95 undefined": m.get("n_hd95_undefined")})
    fg = result["foreground_mean"]
    rows.append({"class": "foreground mean", "Dice": fg["Dice"], "HD95 (mm)": fg["HD95"], nsd_col: fg["NSD"],
                 "cases": len(result.get("per_case", [])), "HD95 undefined": fg.get("n_hd95_undefined")})
    return results_table_text(rows, columns)
