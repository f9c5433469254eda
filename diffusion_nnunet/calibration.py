"""Calibration of saved probabilities: expected calibration error (ECE) and a reliability diagram.

Probabilities are nnU-Net's ``CASE.npz`` (``probabilities``, ``(C, *spatial)`` in the image's
geometry, as ``--save-probabilities`` writes them); references are the label maps. Several
prediction folders (nnU-Net's folds, diffusion runs with different seeds) are averaged first:
the calibration of their ensemble.

Two ECEs, both over every voxel of every case (voxels pooled, not case means), with
``num_bins`` equal-width bins (default 15) whose statistics come from MONAI's
``monai.metrics.calibration_binning`` (a kept implementation of Guo et al. 2017's binning):

- **per class** (class-wise ECE): for class c, ``sum_b n_b / N * |mean p_c - share of voxels of
  class c|`` over the bins of p_c;
- **overall** (top-label ECE, Guo et al.): the same with the confidence ``max_c p_c`` against
  whether the argmax is the reference label. This is the number usually called "the ECE".

Voxels carrying the dataset's ``ignore`` label are left out.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from diffusion_nnunet.evaluation import read_segmentation, to_jsonable
from dnnunet_core.atomic import write_json
from dnnunet_core.errors import InvalidDataError, UserInputError

logger = logging.getLogger(__name__)

DEFAULT_BINS = 15


class BinTotals:
    """Sums of confidence, of correctness and counts per bin, accumulated over cases.

    Args:
        num_bins: equal-width bins on [0, 1].
    """

    def __init__(self, num_bins: int = DEFAULT_BINS):
        self.num_bins = num_bins
        self.sum_p = np.zeros(num_bins)
        self.sum_gt = np.zeros(num_bins)
        self.count = np.zeros(num_bins)

    def update(self, p: np.ndarray, gt: np.ndarray) -> None:
        """Add voxels: predicted probability `p` and 0/1 truth `gt` (same shape, flattened here)."""
        from monai.metrics import calibration_binning

        y_pred = torch.as_tensor(np.asarray(p, np.float32).reshape(1, 1, -1))
        y = torch.as_tensor(np.asarray(gt, np.float32).reshape(1, 1, -1))
        # bins are [left, right); MONAI puts a probability of exactly 1 into the last bin
        mean_p, mean_gt, counts = (t[0, 0].double().numpy() for t in calibration_binning(y_pred, y, self.num_bins))
        self.sum_p += np.nan_to_num(mean_p * counts)
        self.sum_gt += np.nan_to_num(mean_gt * counts)
        self.count += counts

    def ece(self) -> float:
        """``sum_b |sum_p_b - sum_gt_b| / N`` (NaN with no voxels)."""
        total = self.count.sum()
        return float(np.abs(self.sum_p - self.sum_gt).sum() / total) if total else float("nan")

    def diagram(self) -> dict:
        """Per bin: mean confidence, accuracy and count (None for empty bins)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            conf, acc = self.sum_p / self.count, self.sum_gt / self.count
        return {"bin_edges": np.linspace(0, 1, self.num_bins + 1).tolist(), "confidence": to_jsonable(conf),
                "accuracy": to_jsonable(acc), "count": self.count.astype(int).tolist()}


def calibration_of_arrays(cases: Sequence[tuple[np.ndarray, np.ndarray]], class_names: Sequence[str],
                          num_bins: int = DEFAULT_BINS, ignore_label: int | None = None) -> dict:
    """ECE per class and overall of (probabilities ``(C, *spatial)``, reference labels) pairs.

    Returns:
        ``{"ece": overall, "ece_per_class": {class: ece}, "num_voxels", "num_bins",
        "reliability": {"overall": diagram, class: diagram}}``.
    """
    overall = BinTotals(num_bins)
    per_class = {name: BinTotals(num_bins) for name in class_names}
    for probs, reference in cases:
        if reference.shape != probs.shape[1:]:
            reference = reference.reshape(probs.shape[1:])
        keep = np.ones(reference.shape, bool) if ignore_label is None else reference != ignore_label
        p, ref = probs[:, keep], reference[keep]
        overall.update(p.max(0), p.argmax(0) == ref)
        for c, name in enumerate(class_names):
            per_class[name].update(p[c], ref == c)
    return {"ece": overall.ece(), "ece_per_class": {n: t.ece() for n, t in per_class.items()},
            "num_voxels": int(overall.count.sum()), "num_bins": num_bins,
            "reliability": {"overall": overall.diagram(), **{n: t.diagram() for n, t in per_class.items()}}}


def _dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    if not path.is_file():
        raise UserInputError(f"{path} is missing: give --dataset-json (labels and file ending)")
    return json.loads(path.read_text())


def evaluate_calibration(reference_dir: str | Path, prediction_dirs: Sequence[str | Path],
                         dataset_json: str | Path | Mapping | None = None, num_bins: int = DEFAULT_BINS) -> dict:
    """ECE of the (mean) saved probabilities of one or more prediction folders against the references.

    Args:
        reference_dir: folder of reference label maps.
        prediction_dirs: folders with CASE.npz; with several, each case's probabilities are averaged.
        dataset_json: labels and file ending (default: the first prediction folder's dataset.json).
        num_bins: equal-width confidence bins.

    Raises:
        UserInputError: no CASE.npz in the first folder.
        InvalidDataError: a folder lacks a case, a reference is missing, or shapes differ.
    """
    folders = [Path(p) for p in prediction_dirs]
    ds = dataset_json if isinstance(dataset_json, Mapping) else (
        json.loads(Path(dataset_json).read_text()) if dataset_json else _dataset_json(folders[0]))
    labels = {n: v for n, v in ds["labels"].items() if isinstance(v, int)}
    ignore = labels.pop("ignore", None)
    class_names = [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])]
    if [labels[n] for n in class_names] != list(range(len(class_names))):
        raise UserInputError("calibration needs labels 0..C-1 (regions are not supported)")
    cases = sorted(p.name[:-4] for p in folders[0].glob("*.npz"))
    if not cases:
        raise UserInputError(f"no CASE.npz in {folders[0]}: predict with --save-probabilities")
    ending = ds.get("file_ending", ".nii.gz")

    def pairs():
        for case in cases:
            probs = None
            for folder in folders:
                path = folder / f"{case}.npz"
                if not path.is_file():
                    raise InvalidDataError(path, "missing (every folder needs the same cases' probabilities)")
                with np.load(path) as data:
                    p = data["probabilities"].astype(np.float32)
                if probs is not None and p.shape != probs.shape:
                    raise InvalidDataError(path, f"shape {p.shape} differs from {probs.shape} in {folders[0]}")
                probs = p if probs is None else probs + p
            ref_file = Path(reference_dir) / f"{case}{ending}"
            if not ref_file.is_file():
                raise InvalidDataError(ref_file, "reference missing")
            reference, _ = read_segmentation(ref_file)
            if reference.size != probs[0].size:
                raise InvalidDataError(ref_file, f"has {reference.shape}, probabilities {probs.shape[1:]}")
            yield probs / len(folders), reference

    result = calibration_of_arrays(pairs(), class_names, num_bins, ignore)
    result.update(num_cases=len(cases), prediction_dirs=[str(f) for f in folders])
    logger.info("ECE %.4f over %d cases (%s)", result["ece"], len(cases), ", ".join(map(str, folders)))
    return result


def reliability_png(result: Mapping, output_png: str | Path, title: str = "") -> Path:
    """Reliability diagram: accuracy against confidence per bin (overall and per class) and the
    voxels per bin (log scale); the diagonal is perfect calibration."""
    from diffusion_nnunet.reporting import _new_figure, _save_png, default_style

    @default_style
    def draw():
        fig, axes = _new_figure(1, 2)
        ax, hist = axes[0]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
        for name, d in result["reliability"].items():
            conf = np.array([np.nan if v is None else v for v in d["confidence"]], float)
            acc = np.array([np.nan if v is None else v for v in d["accuracy"]], float)
            label = f"{name} (ECE {result['ece'] if name == 'overall' else result['ece_per_class'][name]:.3f})"
            ax.plot(conf, acc, marker="o", markersize=3, linewidth=2.5 if name == "overall" else 1, label=label)
        ax.set(xlabel="confidence (mean probability in bin)", ylabel="accuracy (share correct)", xlim=(0, 1),
               ylim=(0, 1), title=title or "reliability")
        ax.legend(fontsize=7)
        d = result["reliability"]["overall"]
        edges = np.array(d["bin_edges"])
        hist.bar(edges[:-1], np.maximum(d["count"], 1), width=np.diff(edges), align="edge", log=True)
        hist.set(xlabel="confidence (top label)", ylabel="voxels", title="voxels per bin")
        return _save_png(fig, output_png)

    return draw()


def run_calibration(reference_dir: str | Path, prediction_dirs: Sequence[str | Path],
                    dataset_json: str | Path | Mapping | None, output_dir: str | Path,
                    num_bins: int = DEFAULT_BINS) -> dict:
    """`evaluate_calibration`, written to ``output_dir/calibration.json`` and ``reliability.png``.

    Raises:
        UserInputError: fewer than 1 bin (and see `evaluate_calibration`).
    """
    if num_bins < 1:
        raise UserInputError(f"--calibration-bins must be at least 1, got {num_bins}")
    result = evaluate_calibration(reference_dir, prediction_dirs, dataset_json, num_bins)
    output_dir = Path(output_dir)
    write_json(to_jsonable(result), output_dir / "calibration.json")
    reliability_png(result, output_dir / "reliability.png", f"{Path(prediction_dirs[0]).name}: ECE {result['ece']:.4f}")
    return result


def calibration_summary(result: Mapping) -> str:
    """A short text table: overall and per-class ECE."""
    lines = [f"ECE (top label, {result['num_bins']} bins, {result['num_voxels']} voxels): {result['ece']:.4f}"]
    lines += [f"  class {name}: {value:.4f}" for name, value in result["ece_per_class"].items()]
    return "\n".join(lines)
