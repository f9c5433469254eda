"""Ensemble nnU-Net prediction folders by (weighted) averaging of class probabilities.

Input folders are what ``dnnunet predict --save-probabilities`` (or nnUNetv2_predict with its
save-probabilities option: nnUNetPredictor with ``save_probabilities=True``) writes: per case ``<case>.npz`` (key ``probabilities``, shape
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
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from diffusion_nnunet.inference.output_folder import STAGING_PREFIX, claim_output_folder
from dnnunet_core.atomic import atomic_path
from dnnunet_core.errors import InvalidDataError, UserInputError

logger = logging.getLogger(__name__)

_REQUIRED_JSON = ("dataset.json", "plans.json")
STALE_AFTER_S = 60.0  # see _refuse_stale_probabilities
# share of voxels where a folder's probabilities must give its segmentation (exactly 1 when both
# come from one run; the margin is for ties broken differently by another writer)
MIN_SEGMENTATION_AGREEMENT = 0.999


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
    except (zipfile.BadZipFile, OSError, ValueError, zlib.error) as e:
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
    out = output_dir.resolve()
    if out in resolved:
        raise UserInputError(f"output folder {output_dir} is one of the input folders")
    inside = [str(d) for d, r in zip(input_dirs, resolved) if r in out.parents or out in r.parents]
    if inside:
        raise UserInputError(f"output folder {output_dir} is inside (or contains) the input folder(s) {inside}")
    if output_dir.exists() and not output_dir.is_dir():
        raise UserInputError(f"the output folder {output_dir} is an existing file, not a folder")

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
            raise InvalidDataError(d, "contains no .npz probability files; predict with --save-probabilities")
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

    _refuse_stale_probabilities(input_dirs, cases, datasets[0].get("file_ending"))

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


def _refuse_stale_probabilities(input_dirs: Sequence[Path], cases: list[str], file_ending: str | None) -> None:
    """Probabilities older than the segmentation beside them are left over from an earlier run.

    nnU-Net writes a case's .npz/.pkl just before its segmentation, so they may be a little older;
    STALE_AFTER_S allows for that (and for copies), not for an earlier prediction run.

    Raises:
        InvalidDataError: naming every stale file.
    """
    if not file_ending:
        return
    stale = []
    for d in input_dirs:
        for c in cases:
            seg = d / f"{c}{file_ending}"
            if not seg.is_file():
                continue
            seg_time = seg.stat().st_mtime
            stale += [str(d / f"{c}{ext}") for ext in (".npz", ".pkl")
                      if (d / f"{c}{ext}").stat().st_mtime < seg_time - STALE_AFTER_S]
    if stale:
        raise InvalidDataError(stale[0], f"{len(stale)} probability file(s) are older than their segmentation "
                                         f"(left over from an earlier prediction?): {', '.join(stale[:6])}"
                                         f"{' ...' if len(stale) > 6 else ''}; predict again with --overwrite "
                                         f"--save-probabilities")


def _load_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as e:  # noqa: BLE001 - unpickling raises assorted errors for damaged files
        raise InvalidDataError(path, f"cannot be read as an nnU-Net properties file ({type(e).__name__}: {e})") from None


def _load_probabilities(path: Path) -> np.ndarray:
    try:
        with np.load(path) as z:
            return z["probabilities"]
    except Exception as e:  # noqa: BLE001 - zlib/zipfile/numpy raise assorted errors for damaged payloads
        raise InvalidDataError(path, f"the probabilities cannot be read ({type(e).__name__}: {e}); the file is "
                                     f"damaged: predict this folder again with --overwrite --save-probabilities") from None


def _check_matches_segmentation(probabilities: np.ndarray, folder: Path, case: str, file_ending: str, rw_class,
                                label_manager) -> None:
    """The probabilities must give the segmentation saved beside them (else one of them is stale)."""
    seg_file = folder / f"{case}{file_ending}"
    if not seg_file.is_file():
        return
    try:
        saved, _ = rw_class().read_seg(str(seg_file))
    except Exception as e:  # noqa: BLE001 - readers raise assorted errors for damaged files
        raise InvalidDataError(seg_file, f"cannot be read ({type(e).__name__}: {e})") from None
    saved = np.asarray(saved)[0]
    expected = np.asarray(label_manager.convert_probabilities_to_segmentation(probabilities))
    if saved.shape != expected.shape:
        raise InvalidDataError(folder / f"{case}.npz", f"probabilities of shape {expected.shape} do not match the "
                                                      f"segmentation {seg_file.name} of shape {saved.shape}")
    agreement = float(np.mean(saved == expected))
    if agreement < MIN_SEGMENTATION_AGREEMENT:
        raise InvalidDataError(folder / f"{case}.npz", f"the probabilities do not give the segmentation "
                                                      f"{seg_file.name} beside them ({agreement:.1%} of the voxels "
                                                      f"agree): one of them is from another run; predict again "
                                                      f"with --overwrite --save-probabilities")


def _merge_case(case: str, input_dirs: Sequence[Path], weights: np.ndarray, output_dir: Path, file_ending: str,
                rw_class, label_manager, save_probabilities: bool) -> str:
    avg = None
    for d, w in zip(input_dirs, weights):
        p = _load_probabilities(d / f"{case}.npz")
        _check_matches_segmentation(p, d, case, file_ending, rw_class, label_manager)
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
                     num_processes: int = 1, overwrite: bool = True) -> list[str]:
    """Average the class probabilities of several nnU-Net prediction folders and segment.

    Args:
        input_dirs: at least 2 folders written with ``--save-probabilities`` (npz + pkl per case,
            dataset.json, plans.json), holding the same cases with the same labels and shapes.
        output_dir: destination folder (created; must not be an input folder). It receives
            ``<case><file_ending>`` per case, dataset.json and plans.json (from the first input
            folder) and, with `save_probabilities`, ``<case>.npz`` / ``<case>.pkl``.
        weights: one non-negative weight per folder (normalised to sum 1); None: equal weights.
        save_probabilities: also write the averaged probabilities (float32) in nnU-Net's format.
        num_processes: worker processes (1: in this process).
        overwrite: replace an output folder that holds an earlier run's results, whole (it is put
            back if this run fails); False refuses such a folder (see
            `inference.output_folder.claim_output_folder`). A folder of other files is always refused.

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

    # all or nothing: every case is written into a staging folder, moved into place when all succeeded
    created = not output_dir.exists()
    settings = {"ensemble_of": [str(d.absolute()) for d in input_dirs], "weights": [float(x) for x in w],
                "save_probabilities": bool(save_probabilities)}
    try:
        with claim_output_folder(output_dir, settings, overwrite=overwrite):  # never beside an older run's cases
            staging = output_dir / f"{STAGING_PREFIX}{os.getpid()}"
            staging.mkdir()
            try:
                jobs = [(c, input_dirs, w, staging, file_ending, rw_class, label_manager, save_probabilities)
                        for c in cases]
                if num_processes <= 1 or len(jobs) == 1:
                    written = [_merge_case_star(j) for j in jobs]
                else:
                    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
                        written = pool.map(_merge_case_star, jobs)
                for name in _REQUIRED_JSON:
                    shutil.copyfile(input_dirs[0] / name, staging / name)
                for produced in sorted(staging.iterdir()):
                    os.replace(produced, output_dir / produced.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    logger.info("wrote %d ensembled case(s) to %s", len(written), output_dir)
    return sorted(written)
