"""Training throughput with 1 and with N data-parallel processes, measured in one run.

Usage: python benchmarks/distributed_throughput.py [--dataset synthetic-us2d] [--budget cpu-small]
                                                  [--processes 1 2] [--iterations 40] [--rounds 2]
                                                  [--single-thread-control] [--device cpu]
                                                  [--out docs/distributed_throughput.json]

Plans the dataset with the budget (the 2D demo plan by default), then alternates the process
counts (`--rounds` times each; one epoch of `--iterations` iterations, no validation, seed 0),
so that background load hits all of them alike. Reports, per process count, iterations per
second (global batch = the planned batch, split over the processes) from rank 0's median seconds
per iteration, and the wall time of the whole call (process start-up included).
`--single-thread-control` adds one process limited to one torch thread: on the CPU each of N
processes gets cores / N threads, and this separates the effect of fewer threads per process
from that of more processes.
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
    parser.add_argument("--single-thread-control", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="docs/distributed_throughput.json")
    args = parser.parse_args()
    os.environ.setdefault("DNNUNET_DATA", tempfile.mkdtemp(prefix="dnn-ddp-bench-"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("diffusion_nnunet", "nnunetv2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from dnnunet_core import paths

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
    load_start = os.getloadavg()[0]  # other work on the machine skews absolute figures: recorded
    # label -> (processes, torch threads in this process for single-process runs; None: default)
    variants = {f"{n} process{'es' if n > 1 else ''}": (n, None) for n in args.processes}
    if args.single_thread_control:
        variants["1 process, 1 thread"] = (1, 1)
    per_iteration: dict[str, list[float]] = {v: [] for v in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    default_threads = torch.get_num_threads()
    for r in range(args.rounds):
        for label, (n, threads) in variants.items():
            torch.set_num_threads(threads or default_threads)
            start = time.perf_counter()
            folder = train(raw.name, "2d", 0, "baseline", config_overrides={
                "num_epochs": 1, "num_iterations_per_epoch": args.iterations, "num_val_iterations_per_epoch": 1,
                "seed": 0}, device=device, validate=False, num_processes=n)
            wall[label].append(time.perf_counter() - start)
            torch.set_num_threads(default_threads)
            stats = json.loads((folder / "training_stats.json").read_text())
            assert stats["num_processes"] == n, stats
            per_iteration[label] += stats["seconds_per_iteration_per_epoch"]
            logger.info("round %d, %s: %.3f s/iteration, %.1f s wall", r + 1, label,
                        stats["seconds_per_iteration_per_epoch"][-1], wall[label][-1])
    first = next(iter(variants))
    result = {v: {"median_seconds_per_iteration": round(float(np.median(per_iteration[v])), 4),
                  "iterations_per_second": round(1 / float(np.median(per_iteration[v])), 2),
                  f"speedup_vs_{first.replace(' ', '_')}": round(float(np.median(per_iteration[first]))
                                                                 / float(np.median(per_iteration[v])), 3),
                  "median_wall_seconds": round(float(np.median(wall[v])), 1), "runs": len(wall[v])}
              for v in variants}
    report = {"dataset": args.dataset, "budget": args.budget, "device": args.device, "global_batch": batch,
              "iterations_per_run": args.iterations, "cpu_count": os.cpu_count(),
              "torch_threads_single_process": default_threads,
              "load_average_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
              "processes": result}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
