"""Seconds per training iteration of several trainers on one plan, measured in one run.

Usage: python benchmarks/iteration_time.py [--dataset synthetic-us2d] [--trainers baseline standard recycle]
                                           [--iterations 60] [--rounds 2] [--out docs/iteration_time.json]

Alternates the trainers (`--rounds` times each, one epoch of `--iterations` each, no validation)
on the cpu-small plan, so that background load hits all of them alike; reports each trainer's
median seconds per iteration and the ratio to the first trainer.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic-us2d")
    parser.add_argument("--trainers", nargs="+", default=["baseline", "standard", "recycle"])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="docs/iteration_time.json")
    args = parser.parse_args()
    os.environ.setdefault("DNNUNET_DATA", tempfile.mkdtemp(prefix="dnn-itertime-"))
    logging.basicConfig(level=logging.WARNING)
    import torch

    from diffusion_nnunet.datasets import make_dataset
    from diffusion_nnunet.training.base import DnnTrainer
    from diffusion_nnunet.training.run import train_fold
    from dnnunet_core import paths
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess

    DnnTrainer.show_progress = False
    raw = make_dataset(args.dataset, paths.raw(), seed=0)
    plan_and_preprocess(raw.name, get_budget("cpu-small"), ["2d"], num_processes=2)
    times: dict[str, list[float]] = {t: [] for t in args.trainers}
    for _ in range(args.rounds):
        for trainer in args.trainers:
            folder = train_fold(raw.name, "2d", 0, trainer, config_overrides={
                "num_epochs": 1, "num_iterations_per_epoch": args.iterations, "num_val_iterations_per_epoch": 1,
                "seed": 0}, device=torch.device("cpu"), validate=False)
            times[trainer] += json.loads((folder / "training_stats.json").read_text())["seconds_per_iteration_per_epoch"]
    first = float(np.median(times[args.trainers[0]]))
    result = {t: {"median_seconds_per_iteration": round(float(np.median(v)), 4),
                  "ratio_to_" + args.trainers[0]: round(float(np.median(v)) / first, 3), "epochs": len(v)}
              for t, v in times.items()}
    Path(args.out).write_text(json.dumps({"dataset": args.dataset, "iterations_per_epoch": args.iterations,
                                          "trainers": result}, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
