"""Region-based labels (issue 19 item 2): baseline, `recycle`, PD-DDPM and the ensemble on synthetic-brats2d.

Usage: python benchmarks/regions.py [--work benchmark_work_regions] [--epochs N] [--out docs/benchmark_regions.json]

Generates synthetic-brats2d (60 training, 20 test cases, seed 0), plans it with the cpu-small
budget, trains the baseline and `recycle` on fold 0 (each step skipped when its output exists),
then predicts imagesTs with: the baseline; `recycle` from noise (full DDPM, one sample per mirror
variant); and `predict-ensemble` (the baseline, PD-DDPM started from it at the plans' start
step, and their equal-weight ensemble). Each is evaluated per region (Dice, HD95) against the
dense test labels, and the thresholded region probabilities are checked for nesting (voxels
where a region inside another is > 0.5 while the outer one is not).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("benchmark")
REGION_NAMES = ("whole_tumor", "tumor_core", "enhancing_tumor")


def _nesting_violations(folder: Path) -> dict:
    """Voxels (over all cases) where core > 0.5 but whole <= 0.5, or enhancing > 0.5 but core <= 0.5."""
    outside, total = 0, 0
    for npz in sorted(folder.glob("*.npz")):
        p = np.load(npz)["probabilities"] > 0.5
        outside += int((p[1] & ~p[0]).sum() + (p[2] & ~p[1]).sum())
        total += int(p[0].size)
    return {"violating_voxels": outside, "voxels": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="benchmark_work_regions")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of both trainers (default: the plan's)")
    parser.add_argument("--out", default="docs/benchmark_regions.json")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(work / name)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from diffusion_nnunet.cli.main import main as dnnunet
    from diffusion_nnunet.datasets import make_dataset

    raw_root = work / "nnUNet_raw"
    raw = raw_root / "Dataset504_SyntheticBraTS2D"
    if not raw.is_dir():
        make_dataset("synthetic-brats2d", raw_root, 504, num_train=60, num_test=20, seed=0)
    if not (work / "nnUNet_preprocessed" / raw.name / "dnnunetPlans.json").is_file():
        assert dnnunet(["plan-and-preprocess", "-d", "504", "--budget", "cpu-small"]) == 0
    results = work / "nnUNet_results" / raw.name
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    timings = {}
    models = {"baseline": results / "DnnBaselineTrainer__dnnunetPlans__2d",
              "recycle": results / "DnnDiffusionTrainer_recycle__dnnunetPlans__2d"}
    for trainer, model in models.items():
        if not (model / "fold_0" / "checkpoint_final.pth").is_file():
            start = time.perf_counter()
            assert dnnunet(["train", "-d", "504", "-f", "0", "-tr", trainer, "-device", "cpu", "--seed", "0",
                            "--overwrite", *epochs]) == 0
            timings[f"train_{trainer}_s"] = round(time.perf_counter() - start, 1)

    images, labels = raw / "imagesTs", raw / "labelsTs"
    out = work / "predictions"
    runs = {
        "baseline": ["predict", "-i", str(images), "-o", str(out / "baseline"), "-m", str(models["baseline"]),
                     "-f", "0", "--save-probabilities"],
        "recycle": ["predict", "-i", str(images), "-o", str(out / "recycle"), "-m", str(models["recycle"]),
                    "-f", "0", "--save-probabilities", "--seed", "0"],
        "predict-ensemble": ["predict-ensemble", "-i", str(images), "-o", str(out / "combined"),
                             "--nnunet", str(models["baseline"]), "--diffusion", str(models["recycle"])],
    }
    for name, argv in runs.items():
        start = time.perf_counter()
        extra = ["--overwrite"] if argv[0] == "predict" else []  # predict-ensemble replaces its folders itself
        assert dnnunet([*argv, "-device", "cpu", *extra]) == 0
        timings[f"predict_{name}_s"] = round(time.perf_counter() - start, 1)

    folders = {"baseline": out / "baseline", "recycle": out / "recycle", "pd_ddpm": out / "combined" / "pd_ddpm",
               "ensemble": out / "combined" / "ensemble"}
    report = {"dataset": "synthetic-brats2d, 60 training (fold 0: 48 train / 12 validation), 20 test cases, seed 0",
              "budget": "cpu-small", "epochs": args.epochs or "the plan's", "methods": {}, "timings": timings}
    plans = json.loads((work / "nnUNet_preprocessed" / raw.name / "dnnunetPlans.json").read_text())
    config = plans["configurations"]["2d"]
    report["plan"] = {"patch_size": config["patch_size"], "batch_size": config["batch_size"],
                      "budget": config.get("training_budget"), "diffusion": config.get("diffusion")}
    for name, folder in folders.items():
        assert dnnunet(["evaluate", "-ref", str(labels), "-pred", str(folder)]) == 0
        result = json.loads((folder / "evaluation.json").read_text())
        report["methods"][name] = {
            "dice": {r: round(result["mean"][r]["Dice"], 4) for r in REGION_NAMES},
            "hd95_mm": {r: round(result["mean"][r]["HD95"], 2) for r in REGION_NAMES},
            "mean_dice": round(float(np.mean([result["mean"][r]["Dice"] for r in REGION_NAMES])), 4),
            "nesting": _nesting_violations(folder),
        }
        logger.info("%s: %s", name, report["methods"][name])
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
