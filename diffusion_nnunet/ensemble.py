"""Ensemble nnU-Net prediction folders by (weighted) averaging of class probabilities.

Input folders are what ``nnUNetv2_predict --save_probabilities`` (nnUNetPredictor with
``save_probabilities=True``) writes: per case ``<case>.npz`` (key ``probabilities``, shape
``(C, *spatial)``, softmax or, for region-based models, sigmoid outputs) and ``<case>.pkl``
(the image properties), plus the folder's ``dataset.json`` and ``plans.json``.

Unlike ``nnunetv2.ensembling.ensemble.ensemble_folders``, everything is checked before anything is
written (folders, case sets, label sets, probability shapes, weights), weights are supported,
and each output file is written atomically. The segmentation is made by nnU-Net's
``LabelManager.convert_probabilities_to_segmentation`` (argmax, or thresholds for regions) and
written by the dataset's reader/writer with the properties of the first folder's ``.pkl``, as
nnU-Net does. With ``save_probabilities=True`` the averaged probabilities are written in the same
npz + pkl format, so ensembles can themselves be ensembled.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from diffusion_nnunet.errors import InvalidDataError, UserInputError
from diffusion_nnunet.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

_REQUIRED_JSON = ("dataset.json", "plans.json")


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidDataError(path, f"cannot be read as JSON ({e})") from None


def _canonical_labels(labels: dict) -> dict:
    """Labels with regions as sorted tuples, so that [1, 2] and (2, 1) compare equal."""
    return {str(k): (tuple(sorted(int(i) for i in v)) if isinstance(v, (list, tuple)) else int(v))
            for k, v in labels.items()}


def probabilities_shape(npz_file: str | os.PathLike) -> tuple[int, ...]:
    """Shape of the ``probabilities`` array in an nnU-Net ``.npz`` without decompressing it.

    Args:
        npz_file: a ``.npz`` written by nnU-Net (``np.savez_compressed(..., probabilities=...)``).

    Raises:
        InvalidDataError: not a readable npz, or no ``probabilities`` array in it.
    """
    try:
        with zipfile.ZipFile(npz_file) as z:
            if "probabilities.npy" not in z.namelist():
                raise InvalidDataError(npz_file, f"has no 'probabilities' array (arrays: "
                                                 f"{[n[:-4] for n in z.namelist()]})")
            with z.open("probabilities.npy") as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, _ = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InvalidDataError(npz_file, f"cannot be read as an .npz file ({e})") from None
    return tuple(int(s) for s in shape)


def _check_inputs(input_dirs: Sequence[Path], output_dir: Path, weights: Sequence[float] | None):
    """All checks; returns (dataset_json, plans, cases, normalised weights). Writes nothing."""
    if len(input_dirs) < 2:
        raise UserInputError(f"ensembling needs at least 2 prediction folders, got {len(input_dirs)}")
    resolved = [d.resolve() for d in input_dirs]
    if len(set(resolved)) != len(resolved):
        raise UserInputError(f"the same prediction folder is given twice: {[str(d) for d in input_dirs]} "
                             f"(use weights to count a folder more)")
    if output_dir.resolve() in resolved:
        raise UserInputError(f"output folder {output_dir} is one of the input folders")

    # weights
    if weights is None:
        w = np.full(len(input_dirs), 1.0 / len(input_dirs))
    else:
        if len(weights) != len(input_dirs):
            raise UserInputError(f"{len(weights)} weight(s) given for {len(input_dirs)} folders")
        w = np.asarray([float(x) for x in weights], dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise UserInputError(f"weights must be finite and >= 0, got {list(weights)}")
        if w.sum() <= 0:
            raise UserInputError(f"weights must not all be zero, got {list(weights)}")
        w = w / w.sum()

    # folders and their json files
    datasets, plans = [], []
    for d in input_dirs:
        if not d.is_dir():
            raise InvalidDataError(d, "prediction folder does not exist")
        missing = [n for n in _REQUIRED_JSON if not (d / n).is_file()]
        if missing:
            raise InvalidDataError(d, f"has no {' / '.join(missing)}; expected a folder written by nnU-Net's "
                                      f"predictor (which copies dataset.json and plans.json into it)")
        datasets.append(_load_json(d / "dataset.json"))
        plans.append(_load_json(d / "plans.json"))
    for d, ds in zip(input_dirs, datasets):
        if "labels" not in ds:
            raise InvalidDataError(d / "dataset.json", "has no 'labels' entry")
    ref_labels = _canonical_labels(datasets[0]["labels"])
    for d, ds in zip(input_dirs[1:], datasets[1:]):
        labels = _canonical_labels(ds["labels"])
        if labels != ref_labels:
            raise InvalidDataError(d / "dataset.json", f"labels {ds['labels']} differ from those of "
                                                       f"{input_dirs[0]}: {datasets[0]['labels']}")
        if ds.get("regions_class_order") != datasets[0].get("regions_class_order"):
            raise InvalidDataError(d / "dataset.json", f"regions_class_order {ds.get('regions_class_order')} differs "
                                                       f"from {datasets[0].get('regions_class_order')} in "
                                                       f"{input_dirs[0]}")

    # case sets
    case_sets = [{p.name[:-4] for p in d.glob("*.npz") if not p.name.startswith(".")} for d in input_dirs]
    for d, s in zip(input_dirs, case_sets):
        if not s:
            raise InvalidDataError(d, "contains no .npz probability files; predict with --save_probabilities")
    problems = []
    for d, s in zip(input_dirs[1:], case_sets[1:]):
        missing, extra = sorted(case_sets[0] - s), sorted(s - case_sets[0])
        if missing or extra:
            problems.append(f"{d}: " + "; ".join(
                p for p in (f"missing {', '.join(missing)}" if missing else "",
                            f"extra {', '.join(extra)}" if extra else "") if p))
    if problems:
        raise UserInputError(f"the prediction folders do not hold the same cases (compared with "
                             f"{input_dirs[0]}): " + " | ".join(problems))
    cases = sorted(case_sets[0])
    for d in input_dirs:
        for c in cases:
            if not (d / f"{c}.pkl").is_file():
                raise InvalidDataError(d / f"{c}.pkl", "missing: every .npz needs its .pkl (properties) file")

    # nnU-Net objects: reader/writer and label manager
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        pm = PlansManager(plans[0])
        label_manager = pm.get_label_manager(datasets[0])
        rw_class = pm.image_reader_writer_class
    except Exception as e:  # noqa: BLE001 - nnU-Net raises assorted errors for bad plans/labels
        raise InvalidDataError(input_dirs[0], f"plans.json/dataset.json not usable by nnU-Net: {e}") from None
    if "file_ending" not in datasets[0]:
        raise InvalidDataError(input_dirs[0] / "dataset.json", "has no 'file_ending' entry")

    # shapes per case
    n_heads = label_manager.num_segmentation_heads
    for c in cases:
        shapes = [probabilities_shape(d / f"{c}.npz") for d in input_dirs]
        if len(set(shapes)) != 1:
            raise InvalidDataError(input_dirs[0] / f"{c}.npz", f"case {c}: probability shapes differ between "
                                   + ", ".join(f"{d} {s}" for d, s in zip(input_dirs, shapes)))
        if shapes[0][0] != n_heads:
            raise InvalidDataError(input_dirs[0] / f"{c}.npz", f"case {c}: {shapes[0][0]} probability channels, but "
                                                               f"the labels need {n_heads}")
    return datasets[0], plans[0], cases, w, label_manager, rw_class


def _load_pickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _merge_case(case: str, input_dirs: Sequence[Path], weights: np.ndarray, output_dir: Path, file_ending: str,
                rw_class, label_manager, save_probabilities: bool) -> str:
    avg = None
    for d, w in zip(input_dirs, weights):
        with np.load(d / f"{case}.npz") as z:
            p = z["probabilities"]
        if avg is None:
            avg = p.astype(np.float32) * np.float32(w)
        else:
            avg += p.astype(np.float32, copy=False) * np.float32(w)
    properties = _load_pickle(input_dirs[0] / f"{case}.pkl")
    seg = label_manager.convert_probabilities_to_segmentation(avg)
    seg = np.asarray(seg)
    with atomic_path(output_dir / f"{case}{file_ending}") as tmp:
        rw_class().write_seg(seg, str(tmp), properties)
    if save_probabilities:
        with atomic_path(output_dir / f"{case}.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, probabilities=avg)
        with atomic_path(output_dir / f"{case}.pkl", suffix=".pkl") as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(properties, f)
    return case


def _merge_case_star(args) -> str:
    return _merge_case(*args)


def ensemble_folders(input_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                     weights: Sequence[float] | None = None, save_probabilities: bool = False,
                     num_processes: int = 1) -> list[str]:
    """Average the class probabilities of several nnU-Net prediction folders and segment.

    Args:
        input_dirs: at least 2 folders written with ``--save_probabilities`` (npz + pkl per case,
            dataset.json, plans.json), holding the same cases with the same labels and shapes.
        output_dir: destination folder (created; must not be an input folder). It receives
            ``<case><file_ending>`` per case, dataset.json and plans.json (from the first input
            folder) and, with `save_probabilities`, ``<case>.npz`` / ``<case>.pkl``.
        weights: one non-negative weight per folder (normalised to sum 1); None: equal weights.
        save_probabilities: also write the averaged probabilities (float32) in nnU-Net's format.
        num_processes: worker processes (1: in this process).

    Returns:
        The case names written, sorted.

    Raises:
        UserInputError: fewer than 2 folders, bad weights, different case sets.
        InvalidDataError: a folder without dataset.json/plans.json or .npz/.pkl files, different
            labels, or different probability shapes (the message names folder, case and shapes).
            Nothing is written when a check fails.
    """
    input_dirs = [Path(d) for d in input_dirs]
    output_dir = Path(output_dir)
    dataset_json, plans, cases, w, label_manager, rw_class = _check_inputs(input_dirs, output_dir, weights)
    file_ending = dataset_json["file_ending"]
    logger.info("ensembling %d case(s) from %d folders with weights %s into %s", len(cases), len(input_dirs),
                [round(float(x), 4) for x in w], output_dir)

    output_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(c, input_dirs, w, output_dir, file_ending, rw_class, label_manager, save_probabilities) for c in cases]
    if num_processes <= 1 or len(jobs) == 1:
        written = [_merge_case_star(j) for j in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            written = pool.map(_merge_case_star, jobs)
    for name in _REQUIRED_JSON:
        with atomic_path(output_dir / name) as tmp:
            shutil.copyfile(input_dirs[0] / name, tmp)
    logger.info("wrote %d ensembled case(s) to %s", len(written), output_dir)
    return sorted(written)
