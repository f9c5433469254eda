"""Measure seconds per training iteration against the planner's estimate, for several plans.

Usage: python benchmarks/budget_calibration.py [--iterations 20] [--out docs/budget_calibration.json]

Generates synthetic-us2d (and a small synthetic-ct3d), plans it with several compute budgets,
trains the nnU-Net baseline for a few iterations per plan (no validation) and reports the
measured median seconds per iteration beside the estimate. The ratio estimate/measured tells
how far `CPU_REFERENCE_GFLOPS` is from this machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", default="docs/budget_calibration.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="dnn-calib-"))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(root / name)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")

    import torch

    from diffusion_nnunet.datasets import make_dataset
    from diffusion_nnunet.training.base import DnnTrainer
    from diffusion_nnunet.training.run import train_fold
    from planning.budget import PRESETS
    from planning.pipeline import plan_and_preprocess

    DnnTrainer.show_progress = False
    variants = [
        ("synthetic-us2d", "2d", replace(PRESETS["cpu-small"], name="f16-b2", max_batch_size=2, seconds_per_iteration=None)),
        ("synthetic-us2d", "2d", replace(PRESETS["cpu-small"], name="f16-b8", max_batch_size=8, min_batch_size=8, seconds_per_iteration=None)),
        ("synthetic-us2d", "2d", replace(PRESETS["cpu-small"], name="f32-b2", base_features=32, max_features_2d=512, max_batch_size=2, seconds_per_iteration=None)),
        ("synthetic-us2d", "2d", replace(PRESETS["cpu-tiny"], name="f8-b2", seconds_per_iteration=None)),
        ("synthetic-ct3d", "3d_fullres", replace(PRESETS["cpu-small"], name="3d-f16-b2", max_batch_size=2, seconds_per_iteration=None)),
    ]
    made, rows = {}, []
    for dataset, cfg, budget in variants:
        if dataset not in made:
            made[dataset] = make_dataset(dataset, root / "nnUNet_raw", num_train=12, num_test=2, seed=0).name
        plans_name = f"calib_{budget.name}"
        plans = plan_and_preprocess(made[dataset], budget, [cfg], plans_name=plans_name, num_processes=2)
        c = plans["configurations"][cfg]
        folder = train_fold(made[dataset], cfg, 0, "baseline", plans_name,
                            {"num_epochs": 1, "num_iterations_per_epoch": args.iterations,
                             "num_val_iterations_per_epoch": 1, "seed": 0},
                            torch.device("cpu"), validate=False)
        stats = json.loads((folder / "training_stats.json").read_text())
        est = c["training_budget"]["estimated_seconds_per_iteration"]
        meas = stats["median_seconds_per_iteration"]
        rows.append({"plan": budget.name, "configuration": cfg, "patch": list(c["patch_size"]),
                     "batch": c["batch_size"], "features": list(c["architecture"]["arch_kwargs"]["features_per_stage"]),
                     "estimated_s": est, "measured_s": round(meas, 4), "estimate_over_measured": round(est / meas, 3)})
        print(json.dumps(rows[-1]))
    ratio = float(np.median([r["estimate_over_measured"] for r in rows]))
    result = {"rows": rows, "median_estimate_over_measured": ratio, "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count()}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"median estimate/measured: {ratio:.3f}")


if __name__ == "__main__":
    main()
