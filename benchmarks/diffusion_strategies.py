"""Benchmark of the diffusion training strategies against the nnU-Net baseline (issue: diffusion heads).

Usage: python benchmarks/diffusion_strategies.py [--datasets synthetic-us2d mni-tissue2d]
                                                 [--trainers baseline standard self_condition recycle_next recycle]
                                                 [--out docs/benchmark_diffusion.json]

For each dataset: generate it, plan once with the cpu-small budget, train every trainer on fold 0
with the same plans, schedule and seed, predict imagesTs (diffusion: DDPM and DDIM over all
steps, every step saved), and evaluate. Reports mean foreground Dice and HD95 per trainer, Dice
per sampling step, and the median seconds per training iteration relative to the baseline, all
measured in this one run. Results are appended per trainer to the JSON file as they come, so an
interrupted run keeps what it finished (rerun to continue: finished trainings are reused).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger("benchmark")


def _dice_per_step(steps_dir: Path, labels_dir: Path, dataset_json: Path) -> list[float]:
    from diffusion_nnunet.evaluation import evaluate_folders

    out = []
    for step in sorted(steps_dir.glob("step_*")):
        out.append(evaluate_folders(labels_dir, step, dataset_json=dataset_json)["foreground_mean"]["Dice"])
    return out


def run(datasets, trainers, out_file: Path, work: Path, seed: int) -> dict:
    import torch

    from diffusion_nnunet.datasets import DEFAULT_IDS, make_dataset
    from diffusion_nnunet.evaluation import evaluate_folders
    from diffusion_nnunet.inference.predictor import model_folder, predict_folder
    from diffusion_nnunet.training.run import train_fold
    from dnnunet_core import paths
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess

    device = torch.device("cpu")
    results = json.loads(out_file.read_text()) if out_file.is_file() else {}
    for name in datasets:
        raw = next(paths.raw().glob(f"Dataset{DEFAULT_IDS[name]:03d}_*"), None) if paths.raw().is_dir() else None
        raw = raw or make_dataset(name, paths.raw(), seed=seed)
        plans = plan_and_preprocess(raw.name, get_budget("cpu-small"), ["2d"], num_processes=2)
        cfg = plans["configurations"]["2d"]
        res = results.setdefault(name, {"plan": {"patch": cfg["patch_size"], "batch": cfg["batch_size"],
                                                 "epochs": cfg["training_budget"]["num_epochs"],
                                                 "iterations": cfg["training_budget"]["num_iterations_per_epoch"]},
                                        "trainers": {}})
        for trainer in trainers:
            if trainer in res["trainers"]:
                continue
            start = time.perf_counter()
            fold = train_fold(raw.name, "2d", 0, trainer, config_overrides={"seed": seed}, device=device,
                              continue_training=True, validate=True)
            train_s = time.perf_counter() - start
            stats = json.loads((fold / "training_stats.json").read_text())
            summary = json.loads((fold / "validation" / "summary.json").read_text())
            entry = {"train_seconds": round(train_s, 1),
                     "median_seconds_per_iteration": stats["median_seconds_per_iteration"],
                     "validation_dice": summary["foreground_mean"]["Dice"],
                     "validation_dice_per_step": summary.get("dice_per_sampling_step", {}).get("mean_foreground_dice")}
            samplers = ["ddpm", "ddim"] if trainer != "baseline" else [None]
            for sampler in samplers:
                pred = work / name / trainer / (sampler or "pred")
                start = time.perf_counter()
                options = {"sampler": sampler, "save_every_step": True, "seed": seed} if sampler else None
                predict_folder(model_folder(raw.name, trainer, "2d"), raw / "imagesTs", pred, folds=[0],
                               device=device, save_probabilities=True, diffusion_options=options)
                pred_s = time.perf_counter() - start
                ev = evaluate_folders(raw / "labelsTs", pred, dataset_json=raw / "dataset.json")
                key = sampler or "prediction"
                entry[key] = {"dice": ev["foreground_mean"]["Dice"], "hd95": ev["foreground_mean"]["HD95"],
                              "nsd": ev["foreground_mean"]["NSD"], "predict_seconds": round(pred_s, 1)}
                if sampler:
                    entry[key]["dice_per_step"] = _dice_per_step(pred / "steps", raw / "labelsTs",
                                                                 raw / "dataset.json")
            res["trainers"][trainer] = entry
            base = res["trainers"].get("baseline")
            if base:
                for t, e in res["trainers"].items():
                    e["seconds_per_iteration_vs_baseline"] = round(
                        e["median_seconds_per_iteration"] / base["median_seconds_per_iteration"], 3)
            out_file.write_text(json.dumps(results, indent=2))
            logger.info("%s / %s: %s", name, trainer, json.dumps(entry))
    return results


def render_markdown(results: dict) -> str:
    """The JSON results as Markdown tables (one per dataset)."""
    lines = []
    for name, res in results.items():
        plan = res["plan"]
        lines += [f"### {name}", "",
                  f"Plan: patch {plan['patch']}, batch {plan['batch']}, {plan['epochs']} epochs x "
                  f"{plan['iterations']} iterations for every trainer; fold 0; imagesTs.", "",
                  "| trainer | sampler | Dice | HD95 mm | NSD | Dice per step (first -> last) | s/iteration | vs baseline |",
                  "|:---|:---|---:|---:|---:|:---|---:|---:|"]
        for trainer, e in res["trainers"].items():
            for key in ("prediction", "ddpm", "ddim"):
                if key not in e:
                    continue
                r = e[key]
                steps = " ".join(f"{d:.4f}" for d in r.get("dice_per_step", [])) or "-"
                lines.append(f"| {trainer} | {key if key != 'prediction' else '-'} | {r['dice']:.4f} | "
                             f"{r['hd95']:.3f} | {r['nsd']:.4f} | {steps} | {e['median_seconds_per_iteration']:.4f} | "
                             f"{e.get('seconds_per_iteration_vs_baseline', float('nan')):.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from diffusion_nnunet.configs.training_config import STRATEGIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["synthetic-us2d", "mni-tissue2d"])
    parser.add_argument("--trainers", nargs="+",
                        default=["baseline", *STRATEGIES])
    parser.add_argument("--out", default="docs/benchmark_diffusion.json")
    parser.add_argument("--work", default="benchmark_work", help="data and predictions (DNNUNET_DATA inside)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="only render --out as Markdown")
    args = parser.parse_args()
    if args.report_only:
        print(render_markdown(json.loads(Path(args.out).read_text())))
        return
    work = Path(args.work).absolute()
    os.environ.setdefault("DNNUNET_DATA", str(work / "data"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import diffusion_nnunet  # noqa: F401  (sets the nnU-Net folders from DNNUNET_DATA)
    from diffusion_nnunet.training.base import DnnTrainer

    DnnTrainer.show_progress = False
    run(args.datasets, args.trainers, Path(args.out), work, args.seed)


if __name__ == "__main__":
    main()
