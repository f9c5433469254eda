"""PD-DDPM, implicit-ensemble uncertainty and the diffusion + nnU-Net ensemble (issue: PD-DDPM).

Usage: python benchmarks/pd_ddpm.py [--datasets synthetic-us2d mni-tissue2d synthetic-ct3d] [--work benchmark_work]
                                    [--samples 8] [--out docs/benchmark_pd_ddpm.json]

Trains what it needs under --work (each step skipped when its output exists): the dataset, its
cpu-small plan (2d for 2D data, 3d_fullres for 3D), the baseline and `recycle` on fold 0, and the
baseline's imagesTs probabilities. Then, for each dataset:
- full DDPM sampling (k = T-1) against PD-DDPM starts k = 0..T-2 from the baseline's prediction:
  Dice and prediction time, the time ratio measured in this run (same seed, no mirroring);
- the ensemble (equal weights) of `recycle` and the baseline against the baseline alone;
- uncertainty of an implicit ensemble of N samples (full sampling): error rate per entropy decile
  and the AUROC of entropy for detecting errors, over all imagesTs voxels.
Writes the JSON and a plot of Dice against the number of reverse steps.
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


def _uncertainty_stats(pred_dir: Path, labels_dir: Path) -> dict:
    import SimpleITK as sitk

    from diffusion_nnunet.inference.uncertainty import entropy_error_auroc, error_rate_by_entropy_decile

    entropy, error = [], []
    for seg_file in sorted(pred_dir.glob("*.nii.gz")):
        case = seg_file.name[:-len(".nii.gz")]
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_file)))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_dir / seg_file.name)))
        ent = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / "uncertainty" / f"{case}_entropy.nii.gz")))
        entropy.append(ent.ravel())
        error.append((pred != ref).ravel())
    entropy, error = np.concatenate(entropy), np.concatenate(error)
    return {"voxels": int(entropy.size), "error_rate": float(error.mean()),
            "auroc_entropy_detects_errors": entropy_error_auroc(entropy, error),
            "error_rate_by_entropy_decile": error_rate_by_entropy_decile(entropy, error)}


def _trained_models(name: str, work: Path, seed: int, device) -> tuple[Path, str, dict]:
    """Generate and plan `name` (cpu-small budget), train the baseline and `recycle` on fold 0 and predict
    imagesTs with the baseline, each step skipped when its output exists. Returns (raw, configuration, info)."""
    from diffusion_nnunet.configs import trainer_registry as registry
    from diffusion_nnunet.datasets import DEFAULT_IDS, make_dataset
    from diffusion_nnunet.demo import default_configuration
    from diffusion_nnunet.inference.predictor import model_folder, predict_folder
    from diffusion_nnunet.training.run import train_fold
    from dnnunet_core import paths
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess
    from planning.planner import DEFAULT_PLANS_NAME

    raw = next(paths.raw().glob(f"Dataset{DEFAULT_IDS[name]:03d}_*"), None) if paths.raw().is_dir() else None
    raw = raw or make_dataset(name, paths.raw(), seed=seed)
    plans_file = paths.preprocessed() / raw.name / f"{DEFAULT_PLANS_NAME}.json"
    plans = (json.loads(plans_file.read_text()) if plans_file.is_file()
             else plan_and_preprocess(raw.name, get_budget("cpu-small"), num_processes=2))
    configuration = default_configuration(plans)
    cfg = plans["configurations"][configuration]
    info = {"configuration": configuration, "patch": cfg["patch_size"], "batch": cfg["batch_size"],
            "epochs": cfg["training_budget"]["num_epochs"],
            "iterations": cfg["training_budget"]["num_iterations_per_epoch"], "train_seconds": {}}
    for trainer in ("baseline", "recycle"):
        fold = paths.trained_model_folder(raw.name, registry.get(trainer).cls.__name__, DEFAULT_PLANS_NAME,
                                          configuration) / "fold_0"
        if not (fold / "checkpoint_final.pth").is_file():
            start = time.perf_counter()
            train_fold(raw.name, configuration, 0, trainer, config_overrides={"seed": seed}, device=device,
                       continue_training=fold.is_dir(), validate=True, save_probabilities=True)
            info["train_seconds"][trainer] = round(time.perf_counter() - start, 1)
    base_pred = work / name / "baseline" / "pred"
    if not base_pred.is_dir():
        predict_folder(model_folder(raw.name, "baseline", configuration), raw / "imagesTs", base_pred, folds=[0],
                       device=device, save_probabilities=True)
    return raw, configuration, info


def run(datasets, work: Path, samples: int, out_file: Path, seed: int) -> dict:
    import torch

    from diffusion_nnunet.ensemble import ensemble_folders
    from diffusion_nnunet.evaluation import evaluate_folders
    from diffusion_nnunet.inference.predictor import model_folder, predict_folder

    device = torch.device("cpu")
    results = json.loads(out_file.read_text()) if out_file.is_file() else {}
    for name in datasets:
        if name in results:  # finished in an earlier run
            continue
        raw, configuration, info = _trained_models(name, work, seed, device)
        labels, images, dj = raw / "labelsTs", raw / "imagesTs", raw / "dataset.json"
        base_pred = work / name / "baseline" / "pred"
        recycle = model_folder(raw.name, "recycle", configuration)
        timesteps = json.loads((recycle / "plans.json").read_text())["configurations"][configuration]["diffusion"][
            "timesteps"]
        res = {"plan": info, "baseline": evaluate_folders(labels, base_pred, dataset_json=dj)["foreground_mean"]}

        def predict(tag, **options):
            folder = work / name / "pd_ddpm" / tag
            start = time.perf_counter()
            predict_folder(recycle, images, folder, folds=[0], device=device, use_mirroring=False,
                           save_probabilities=True, diffusion_options={"seed": seed, **options})
            seconds = time.perf_counter() - start
            fg = evaluate_folders(labels, folder, dataset_json=dj)["foreground_mean"]
            return folder, {"dice": fg["Dice"], "hd95": fg["HD95"], "seconds": round(seconds, 2)}

        full_dir, full = predict("full")
        full["reverse_steps"] = timesteps
        res["full_sampling"] = full
        res["pd_ddpm"] = []
        for k in range(timesteps - 1):
            _, r = predict(f"k{k}", presegmentation=base_pred, start_step=k)
            r.update(start_step=k, reverse_steps=k + 1, time_ratio_vs_full=round(r["seconds"] / full["seconds"], 3),
                     dice_minus_full=r["dice"] - full["dice"])
            res["pd_ddpm"].append(r)
            logger.info("%s PD-DDPM k=%d: %s", name, k, r)
        ens = work / name / "pd_ddpm" / "ensemble"
        ensemble_folders([full_dir, base_pred], ens)
        fg = evaluate_folders(labels, ens, dataset_json=dj)["foreground_mean"]
        res["ensemble_recycle_baseline"] = {"dice": fg["Dice"], "hd95": fg["HD95"],
                                            "dice_minus_baseline": fg["Dice"] - res["baseline"]["Dice"]}
        unc_dir, unc = predict(f"samples{samples}", num_samples=samples)
        unc.update(_uncertainty_stats(unc_dir, labels), num_samples=samples)
        res["uncertainty_full_sampling"] = unc
        results[name] = res
        out_file.write_text(json.dumps(results, indent=2, default=float))
        logger.info("%s: %s", name, json.dumps({k: v for k, v in res.items() if k != "pd_ddpm"}, default=float)[:2000])
    _plot(results, out_file.with_suffix(".png"))
    return results


def _plot(results: dict, png: Path) -> None:
    from matplotlib.figure import Figure

    from diffusion_nnunet.reporting import default_style

    @default_style  # nnU-Net's progress plot sets a large seaborn font scale globally on import
    def draw() -> None:
        fig = Figure(figsize=(4.5 * len(results), 3.5), layout="constrained")
        for i, (name, res) in enumerate(results.items()):
            ax = fig.add_subplot(1, len(results), i + 1)
            steps = [r["reverse_steps"] for r in res["pd_ddpm"]]
            ax.plot(steps, [r["dice"] for r in res["pd_ddpm"]], "o-", label="PD-DDPM (nnU-Net start)")
            ax.plot([res["full_sampling"]["reverse_steps"]], [res["full_sampling"]["dice"]], "s",
                    label="full sampling")
            ax.axhline(res["baseline"]["Dice"], color="gray", ls="--", label="nnU-Net")
            ax.set(title=name, xlabel="reverse steps", ylabel="mean foreground Dice (imagesTs)")
            ax.set_xticks(range(1, res["full_sampling"]["reverse_steps"] + 1))
            ax.legend(fontsize=7)
        fig.savefig(png, dpi=100)

    draw()


def render_markdown(results: dict) -> str:
    """The JSON results as Markdown: PD-DDPM against full sampling, the ensemble, uncertainty."""
    lines = ["| dataset | nnU-Net | full sampling (T steps) | PD-DDPM k: Dice (time / full) | "
             "ensemble recycle + nnU-Net | entropy AUROC | error rate, lowest / highest entropy decile |",
             "|:---|---:|:---|:---|:---|---:|:---|"]
    for name, res in results.items():
        full = res["full_sampling"]
        pd = "; ".join(f"k={r['start_step']}: {r['dice']:.4f} ({r['time_ratio_vs_full']:.2f})" for r in res["pd_ddpm"])
        ens = res["ensemble_recycle_baseline"]
        unc = res["uncertainty_full_sampling"]
        deciles = unc["error_rate_by_entropy_decile"]
        lines.append(f"| {name} ({res['plan']['configuration']}) | {res['baseline']['Dice']:.4f} | "
                     f"{full['dice']:.4f} ({full['reverse_steps']} steps, {full['seconds']:.1f} s) | {pd} | "
                     f"{ens['dice']:.4f} ({ens['dice_minus_baseline']:+.4f}) | "
                     f"{unc['auroc_entropy_detects_errors']:.3f} | "
                     f"{deciles[0]['error_rate']:.2e} / {deciles[-1]['error_rate']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["synthetic-us2d", "mni-tissue2d", "synthetic-ct3d"])
    parser.add_argument("--work", default="benchmark_work")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--out", default="docs/benchmark_pd_ddpm.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="only render --out as Markdown and the plot")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads(Path(args.out).read_text())
        _plot(results, Path(args.out).with_suffix(".png"))
        print(render_markdown(results))
        return
    work = Path(args.work).absolute()
    os.environ.setdefault("DNNUNET_DATA", str(work / "data"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import diffusion_nnunet  # noqa: F401  (sets the nnU-Net folders from DNNUNET_DATA)
    from diffusion_nnunet.training.base import DnnTrainer

    DnnTrainer.show_progress = False
    run(args.datasets, work, args.samples, Path(args.out), args.seed)


if __name__ == "__main__":
    main()
