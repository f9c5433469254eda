"""PD-DDPM, implicit-ensemble uncertainty and the diffusion + nnU-Net ensemble (issue: PD-DDPM).

Usage: python benchmarks/pd_ddpm.py [--datasets synthetic-us2d mni-tissue2d] [--work benchmark_work]
                                    [--samples 8] [--out docs/benchmark_pd_ddpm.json]

Reuses the baseline and `recycle` models (fold 0) and the baseline's imagesTs probabilities that
benchmarks/diffusion_strategies.py trained and wrote under --work. For each dataset:
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


def run(datasets, work: Path, samples: int, out_file: Path, seed: int) -> dict:
    import torch

    from diffusion_nnunet import paths
    from diffusion_nnunet.datasets import DEFAULT_IDS
    from diffusion_nnunet.ensemble import ensemble_folders
    from diffusion_nnunet.evaluation import evaluate_folders
    from diffusion_nnunet.inference.predictor import model_folder, predict_folder

    device = torch.device("cpu")
    results = {}
    for name in datasets:
        raw = next(paths.raw().glob(f"Dataset{DEFAULT_IDS[name]:03d}_*"))
        labels, images, dj = raw / "labelsTs", raw / "imagesTs", raw / "dataset.json"
        base_pred = work / name / "baseline" / "pred"
        recycle = model_folder(raw.name, "recycle", "2d")
        timesteps = json.loads((recycle / "plans.json").read_text())["configurations"]["2d"]["diffusion"]["timesteps"]
        res = results[name] = {"baseline": evaluate_folders(labels, base_pred, dataset_json=dj)["foreground_mean"]}

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
        out_file.write_text(json.dumps(results, indent=2, default=float))
        logger.info("%s: %s", name, json.dumps({k: v for k, v in res.items() if k != "pd_ddpm"}, default=float)[:2000])
    _plot(results, out_file.with_suffix(".png"))
    return results


def _plot(results: dict, png: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * len(results), 3.5), layout="constrained")
    for i, (name, res) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        steps = [r["reverse_steps"] for r in res["pd_ddpm"]]
        ax.plot(steps, [r["dice"] for r in res["pd_ddpm"]], "o-", label="PD-DDPM (nnU-Net start)")
        ax.plot([res["full_sampling"]["reverse_steps"]], [res["full_sampling"]["dice"]], "s", label="full sampling")
        ax.axhline(res["baseline"]["Dice"], color="gray", ls="--", label="nnU-Net")
        ax.set(title=name, xlabel="reverse steps", ylabel="mean foreground Dice")
        ax.legend(fontsize=7)
    fig.savefig(png, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["synthetic-us2d", "mni-tissue2d"])
    parser.add_argument("--work", default="benchmark_work")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--out", default="docs/benchmark_pd_ddpm.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(args.work).absolute()
    os.environ.setdefault("DNNUNET_DATA", str(work / "data"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import diffusion_nnunet  # noqa: F401  (sets the nnU-Net folders from DNNUNET_DATA)

    run(args.datasets, work, args.samples, Path(args.out), args.seed)


if __name__ == "__main__":
    main()
