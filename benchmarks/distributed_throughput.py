"""Training throughput with 1 and with N data-parallel processes, measured in one run.

Usage: python benchmarks/distributed_throughput.py [--dataset synthetic-us2d] [--budget cpu-small]
                                                  [--processes 1 2] [--iterations 40] [--rounds 2]
                                                  [--device cpu] [--out docs/distributed_throughput.json]

Plans the dataset with the budget (the 2D demo plan by default), then alternates the process
counts (`--rounds` times each; one epoch of `--iterations` iterations, no validation, seed 0),
so that background load hits all of them alike. Reports, per process count, iterations per
second (global batch = the planned batch, split over the processes) from rank 0's median seconds
per iteration, and the wall time of the whole call (process start-up included).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("distributed_throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic-us2d")
    parser.add_argument("--budget", default="cpu-small")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="docs/distributed_throughput.json")
    args = parser.parse_args()
    os.environ.setdefault("DNNUNET_DATA", tempfile.mkdtemp(prefix="dnn-ddp-bench-"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("diffusion_nnunet", "nnunetv2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from diffusion_nnunet import paths

    paths.set_default_environment()
    import torch

    from diffusion_nnunet.datasets import make_dataset
    from diffusion_nnunet.training.base import DnnTrainer
    from diffusion_nnunet.training.run import train
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess

    DnnTrainer.show_progress = False
    device = torch.device(args.device)
    raw = make_dataset(args.dataset, paths.raw(), seed=0)
    plan_and_preprocess(raw.name, get_budget(args.budget), ["2d"], num_processes=2)
    batch = json.loads((paths.preprocessed() / raw.name / "dnnunetPlans.json").read_text())[
        "configurations"]["2d"]["batch_size"]
    per_iteration: dict[int, list[float]] = {n: [] for n in args.processes}
    wall: dict[int, list[float]] = {n: [] for n in args.processes}
    for r in range(args.rounds):
        for n in args.processes:
            start = time.perf_counter()
            folder = train(raw.name, "2d", 0, "baseline", config_overrides={
                "num_epochs": 1, "num_iterations_per_epoch": args.iterations, "num_val_iterations_per_epoch": 1,
                "seed": 0}, device=device, validate=False, num_processes=n)
            wall[n].append(time.perf_counter() - start)
            stats = json.loads((folder / "training_stats.json").read_text())
            assert stats["num_processes"] == n, stats
            per_iteration[n] += stats["seconds_per_iteration_per_epoch"]
            logger.info("round %d, %d process(es): %.3f s/iteration, %.1f s wall", r + 1, n,
                        stats["seconds_per_iteration_per_epoch"][-1], wall[n][-1])
    first = args.processes[0]
    result = {str(n): {"median_seconds_per_iteration": round(float(np.median(per_iteration[n])), 4),
                       "iterations_per_second": round(1 / float(np.median(per_iteration[n])), 2),
                       f"speedup_vs_{first}": round(float(np.median(per_iteration[first]))
                                                    / float(np.median(per_iteration[n])), 3),
                       "median_wall_seconds": round(float(np.median(wall[n])), 1), "runs": len(wall[n])}
              for n in args.processes}
    report = {"dataset": args.dataset, "budget": args.budget, "device": args.device, "global_batch": batch,
              "iterations_per_run": args.iterations, "cpu_count": os.cpu_count(), "processes": result}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
