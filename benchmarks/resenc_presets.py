"""nnU-Net's default planner against the ResEncM preset (issue 19), baseline and `recycle`, cpu-small.

Usage: python benchmarks/resenc_presets.py [--planners default ResEncM] [--trainers baseline recycle]
                                           [--max-train-minutes 40] [--out docs/benchmark_resenc.json]

On synthetic-ct3d (generated with --seed, default 0: 20 training, 6 test cases), 3d_fullres, the cpu-small
budget, every planner x trainer pair ("method") in one run:
1. plan and preprocess with each planner (`-pl`), record patch, batch, topology, estimate, epochs;
2. seconds per iteration: the methods alternated, `--rounds` rounds of one epoch of
   `--iterations` training iterations each, on fold 1 (kept apart from the models), so that
   background load hits all of them alike; the median per method (`--more-timing-rounds N`
   adds rounds later, nothing else);
3. train each method on fold 0 with its plan's schedule (planner order alternated), unless the
   plans' epochs at the measured speed exceed `--max-train-minutes` in total: then every plan's
   epochs are scaled by one factor (recorded), so the planners keep their relative budgets;
4. predict imagesTs (`dnnunet predict` defaults: mirroring; diffusion: the plan's sampler and
   steps, one sample per mirror variant) and evaluate: mean foreground Dice and HD95.
Results are written to the JSON file after every step; a rerun reuses finished trainings.
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
CONFIGURATION = "3d_fullres"


def _save(results: dict, out_file: Path) -> None:
    from dnnunet_core.atomic import write_json

    write_json(results, out_file)


def run(planners: list[str], trainers: list[str], args, out_file: Path, work: Path) -> dict:
    import torch

    from diffusion_nnunet.datasets import DEFAULT_IDS, make_dataset
    from diffusion_nnunet.evaluation import evaluate_folders
    from diffusion_nnunet.inference.predictor import model_folder, predict_folder
    from diffusion_nnunet.training.run import train_fold
    from dnnunet_core import paths
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess
    from planning.planner_presets import get_planner_preset, plans_name_for

    device = torch.device("cpu")
    budget = get_budget("cpu-small")
    results = json.loads(out_file.read_text()) if out_file.is_file() else {}
    results.update({"dataset": "synthetic-ct3d", "configuration": CONFIGURATION, "budget": budget.name,
                    "fold": 0, "seed": args.seed})
    raw = next(paths.raw().glob(f"Dataset{DEFAULT_IDS['synthetic-ct3d']:03d}_*"), None) if paths.raw().is_dir() else None
    raw = raw or make_dataset("synthetic-ct3d", paths.raw(), seed=args.seed)

    # 1. plans
    plans_names = {}
    for planner in planners:
        plans_names[planner] = plans_name_for(get_planner_preset(planner), budget)
        plans_file = paths.preprocessed() / raw.name / f"{plans_names[planner]}.json"
        plans = (json.loads(plans_file.read_text()) if plans_file.is_file() and planner in results.get("plans", {})
                 else plan_and_preprocess(raw.name, budget, [CONFIGURATION], num_processes=2, planner=planner))
        cfg = plans["configurations"][CONFIGURATION]
        arch = cfg["architecture"]
        kw = arch["arch_kwargs"]
        results.setdefault("plans", {})[planner] = {
            "plans_name": plans_names[planner], "network": arch["network_class_name"].rsplit(".", 1)[-1],
            "patch": list(cfg["patch_size"]), "batch": cfg["batch_size"], "stages": kw["n_stages"],
            "features": list(kw["features_per_stage"]),
            "encoder_per_stage": list(kw.get("n_blocks_per_stage", kw.get("n_conv_per_stage"))),
            "decoder_per_stage": list(kw["n_conv_per_stage_decoder"]),
            "estimated_seconds_per_iteration": {"baseline": cfg["training_budget"]["estimated_seconds_per_iteration"],
                                                **cfg["diffusion"]["estimated_seconds_per_iteration"]},
            "planned_epochs": cfg["training_budget"]["num_epochs"],
            "iterations_per_epoch": cfg["training_budget"]["num_iterations_per_epoch"]}
    _save(results, out_file)
    # alternated order: default/baseline, ResEncM/baseline, default/recycle, ResEncM/recycle
    methods = [(p, t) for t in trainers for p in planners]

    # 2. seconds per iteration, methods alternated
    timing = results.setdefault("seconds_per_iteration", {})
    rounds = args.more_timing_rounds or (0 if timing.get("done") else args.rounds)
    if rounds:
        times: dict[str, list[float]] = timing.get("per_round") or {f"{p}/{t}": [] for p, t in methods}
        for _ in range(rounds):
            for p, t in methods:
                folder = train_fold(raw.name, CONFIGURATION, 1, t, plans_names[p], config_overrides={
                    "num_epochs": 1, "num_iterations_per_epoch": args.iterations, "num_val_iterations_per_epoch": 1,
                    "seed": args.seed}, device=device, validate=False, overwrite=True)
                stats = json.loads((folder / "training_stats.json").read_text())
                times[f"{p}/{t}"] += stats["seconds_per_iteration_per_epoch"]
                logger.info("timing %s/%s: %s s/iteration", p, t, stats["seconds_per_iteration_per_epoch"])
            timing.update({"rounds": len(next(iter(times.values()))), "iterations_per_round": args.iterations,
                           "fold": 1, "per_round": times,
                           "median": {k: round(float(np.median(v)), 4) for k, v in times.items()},
                           "done": True})
            _save(results, out_file)
    if args.more_timing_rounds:  # a later session of timing only: the schedule and the models stay as they are
        return results

    # 3. schedule: the plans' epochs, scaled by one factor if they would take longer than allowed
    planned = {f"{p}/{t}": results["plans"][p]["planned_epochs"] for p, t in methods}
    iters = {p: results["plans"][p]["iterations_per_epoch"] for p in planners}
    total_s = sum(timing["median"][f"{p}/{t}"] * planned[f"{p}/{t}"] * iters[p] for p, t in methods)
    factor = min(1.0, args.max_train_minutes * 60 / total_s)
    epochs = {k: max(1, int(round(v * factor))) for k, v in planned.items()}
    results["schedule"] = {"projected_minutes_at_plan_epochs": round(total_s / 60, 1),
                           "max_train_minutes": args.max_train_minutes, "epoch_factor": round(factor, 3),
                           "epochs": epochs}
    _save(results, out_file)

    # 4. train, predict, evaluate
    for p, t in methods:
        key = f"{p}/{t}"
        entry = results.setdefault("methods", {}).get(key)
        if entry and "dice" in entry:
            continue
        start = time.perf_counter()
        fold = train_fold(raw.name, CONFIGURATION, 0, t, plans_names[p], config_overrides={
            "seed": args.seed, "num_epochs": epochs[key]}, device=device, continue_training=True, validate=False)
        train_s = time.perf_counter() - start
        stats = json.loads((fold / "training_stats.json").read_text())
        pred = work / "predictions" / p / t
        start = time.perf_counter()
        options = {"seed": args.seed} if t != "baseline" else None
        predict_folder(model_folder(raw.name, t, CONFIGURATION, plans_names[p]), raw / "imagesTs", pred, folds=[0],
                       device=device, diffusion_options=options)
        pred_s = time.perf_counter() - start
        ev = evaluate_folders(raw / "labelsTs", pred, dataset_json=raw / "dataset.json")
        results["methods"][key] = {
            "planner": p, "trainer": t, "epochs": epochs[key], "train_seconds": round(train_s, 1),
            "training_median_seconds_per_iteration": stats["median_seconds_per_iteration"],
            "dice": ev["foreground_mean"]["Dice"], "hd95": ev["foreground_mean"]["HD95"],
            "dice_per_class": {c: v["Dice"] for c, v in ev.get("mean", {}).items()},
            "predict_seconds": round(pred_s, 1)}
        _save(results, out_file)
        logger.info("%s: %s", key, json.dumps(results["methods"][key]))
    return results


def render_markdown(results: dict) -> str:
    """The JSON results as a Markdown table."""
    lines = ["| planner | plans | network | patch | batch | stages | est. s/it (baseline / recycle) |",
             "|:---|:---|:---|:---|---:|---:|:---|"]
    for p, r in results["plans"].items():
        est = r["estimated_seconds_per_iteration"]
        lines.append(f"| {p} | {r['plans_name']} | {r['network']} | {r['patch']} | {r['batch']} | {r['stages']} | "
                     f"{est['baseline']:.3f} / {est['recycle']:.3f} |")
    sched = results.get("schedule", {})
    lines += ["", f"Epochs x {next(iter(results['plans'].values()))['iterations_per_epoch']} iterations: "
              f"{sched.get('epochs')} (factor {sched.get('epoch_factor')} on the plans' epochs; projected "
              f"{sched.get('projected_minutes_at_plan_epochs')} min at the plans' epochs).", "",
              "| planner | trainer | epochs | Dice | HD95 mm | s/it (alternated) | s/it (training) | train s | predict s |",
              "|:---|:---|---:|---:|---:|---:|---:|---:|---:|"]
    med = results.get("seconds_per_iteration", {}).get("median", {})
    for key, e in results.get("methods", {}).items():
        lines.append(f"| {e['planner']} | {e['trainer']} | {e['epochs']} | {e['dice']:.4f} | {e['hd95']:.3f} | "
                     f"{med.get(key, float('nan')):.3f} | {e['training_median_seconds_per_iteration']:.3f} | "
                     f"{e['train_seconds']:.0f} | {e['predict_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planners", nargs="+", default=["default", "ResEncM"])
    parser.add_argument("--trainers", nargs="+", default=["baseline", "recycle"])
    parser.add_argument("--rounds", type=int, default=2, help="alternated timing rounds")
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per timing round")
    parser.add_argument("--more-timing-rounds", type=int, default=0,
                        help="only add this many alternated timing rounds to --out (after the run)")
    parser.add_argument("--max-train-minutes", type=float, default=40.0)
    parser.add_argument("--out", default="docs/benchmark_resenc.json")
    parser.add_argument("--work", default="benchmark_work", help="data and predictions (DNNUNET_DATA inside)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="only render --out as Markdown")
    args = parser.parse_args()
    if args.report_only:
        print(render_markdown(json.loads(Path(args.out).read_text())))
        return
    work = Path(args.work).absolute() / "resenc"
    os.environ.setdefault("DNNUNET_DATA", str(work / "data"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import diffusion_nnunet  # noqa: F401  (sets the nnU-Net folders from DNNUNET_DATA)
    from diffusion_nnunet.training.base import DnnTrainer

    DnnTrainer.show_progress = False
    run(args.planners, args.trainers, args, Path(args.out), work)


if __name__ == "__main__":
    main()
