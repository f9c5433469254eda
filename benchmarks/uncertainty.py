"""Per-case uncertainty: does a case score find the bad cases, and whose probabilities are calibrated?

Usage: OMP_NUM_THREADS=1 python benchmarks/uncertainty.py --zoo /work/bench-zoo --raw RAW --work WORK
           [--datasets 501 503 502] [--num-samples 5] [--out docs/benchmark_uncertainty.json]
       python benchmarks/uncertainty.py --report-only [--out ...]

Models: the shared zoo (read only): baseline (nnU-Net) folds 0-4 and `recycle` fold 0, budget
cpu-small, trained on the default-seed training cases. Test cases: RAW/DatasetXXX/imagesTs made by
`dnnunet make-dataset NAME --num-test M` with the varied-difficulty generators (same seed: the
training cases are identical to the zoo's; the script checks the first ones). Per dataset:

- nnU-Net softmax: baseline fold 0 with mirroring; its mirror variants are the samples of its
  case scores (`inference.mirror_variants`);
- nnU-Net 5-fold ensemble: folds 0-4 predicted one by one; the folds are the samples, their mean
  the prediction (only when all five folds are trained);
- recycle, N samples: full sampling (T steps), one `predict` run with N samples (seed 0, no
  mirroring), its case scores from the samples (`keep_samples`); the samples' mean is the prediction;
- PD-DDPM, N samples: the same, started from nnU-Net fold 0's probabilities at the plans' start step.

For each method: the true Dice per case (foreground mean, of the method's own prediction),
Spearman(score, Dice) for every case score, the share of the worst 10 % of cases (by Dice) among
the 20 % least certain by each score, and the ECE (top label, 15 bins; per class too) of the
mean probabilities against the references.

Criteria (issue 18, written down before the run):
- Spearman: the best score reaches <= -0.6 on every dataset (per method, reported for all);
- flagging 20 % of the cases catches >= 60 % of the worst 10 % (random: 20 %);
- ECE: a diffusion implicit ensemble (recycle N or PD-DDPM N) has the lowest ECE of the four
  methods on at least 2 of 3 datasets.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("benchmark")

DATASETS = {501: ("synthetic-us2d", "2d"), 502: ("synthetic-ct3d", "3d_fullres"), 503: ("mni-tissue2d", "2d")}
PLANS = "dnnunetPlans"


def _case_dice(reference_dir: Path, prediction_dir: Path, dataset_json: dict) -> dict[str, float]:
    from diffusion_nnunet.evaluation import evaluate_folders
    from diffusion_nnunet.review_flag_fit import case_dice

    return case_dice(evaluate_folders(reference_dir, prediction_dir, dataset_json=dataset_json)["per_case"])


def _flag_recall(scores: dict, dice: dict, score: str, flag_rate: float = 0.2, worst: float = 0.1) -> float:
    """Share of the worst `worst` cases (lowest Dice) among the `flag_rate` least certain by `score`."""
    from diffusion_nnunet.inference.case_scores import rank_cases

    cases = [c for c in dice if c in scores]
    n_flag, n_worst = max(1, round(flag_rate * len(cases))), max(1, round(worst * len(cases)))
    flagged = set(rank_cases({c: scores[c] for c in cases}, score)[:n_flag])
    worst_cases = sorted(cases, key=lambda c: dice[c])[:n_worst]
    return sum(c in flagged for c in worst_cases) / n_worst


def _method_stats(name: str, scores: dict, dice: dict, calibration: dict, seconds: float) -> dict:
    from diffusion_nnunet.inference.case_scores import SCORES
    from diffusion_nnunet.review_flag import spearman

    per_score = {s: {"spearman": spearman(scores, dice, s), "recall_worst10_at_20": _flag_recall(scores, dice, s)}
                 for s in SCORES}
    finite = {s: v for s, v in per_score.items() if np.isfinite(v["spearman"])}
    best = min(finite, key=lambda s: finite[s]["spearman"]) if finite else None
    return {"method": name, "num_cases": len(dice), "mean_dice": float(np.nanmean(list(dice.values()))),
            "median_dice": float(np.nanmedian(list(dice.values()))), "scores": per_score, "best_score": best,
            "ece": calibration["ece"], "ece_per_class": calibration["ece_per_class"],
            "seconds": seconds, "dice_per_case": dice,
            "case_scores": {c: {s: scores[c][s] for s in SCORES} for c in scores}}


def _check_training_cases(zoo_raw: Path, raw: Path) -> int:
    import SimpleITK as sitk

    same = 0
    for f in sorted((zoo_raw / "imagesTr").glob("*.nii.gz"))[:6]:
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (f, raw / "imagesTr" / f.name))
        if not np.array_equal(a, b):
            raise SystemExit(f"training case {f.name} differs between {zoo_raw} and {raw}: not the zoo's data")
        same += 1
    return same


def run_dataset(dataset_id: int, zoo: Path, raw_root: Path, work: Path, num_samples: int) -> dict:
    from diffusion_nnunet.calibration import evaluate_calibration
    from diffusion_nnunet.ensemble import ensemble_folders
    from diffusion_nnunet.inference.case_scores import case_scores_from_folders
    from diffusion_nnunet.inference.mirror_variants import predict_mirror_variants
    from diffusion_nnunet.inference.predictor import predict_folder
    from diffusion_nnunet.inference.review_list import read_case_scores

    name, configuration = DATASETS[dataset_id]
    raw = next(raw_root.glob(f"Dataset{dataset_id:03d}_*"))
    zoo_raw = next((zoo / "nnUNet_raw").glob(f"Dataset{dataset_id:03d}_*"))
    checked = _check_training_cases(zoo_raw, raw)
    results = zoo / "nnUNet_results" / raw.name
    baseline = results / f"DnnBaselineTrainer__{PLANS}__{configuration}"
    recycle = results / f"DnnDiffusionTrainer_recycle__{PLANS}__{configuration}"
    images, labels = raw / "imagesTs", raw / "labelsTs"
    dataset_json = json.loads((raw / "dataset.json").read_text())
    difficulty = json.loads((raw / "test_difficulty.json").read_text())["cases"]
    out = work / raw.name
    methods, timing = [], {}

    def timed(key, fn):
        start = time.perf_counter()
        value = fn()
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - start
        return value

    f0 = out / "nnunet_f0"
    if not (f0 / "uncertainty" / "cases.csv").is_file():
        timed("nnunet", lambda: predict_mirror_variants(baseline, images, f0, folds=[0], save_probabilities=True))
    methods.append(_method_stats("nnU-Net softmax (fold 0, mirror variants)", read_case_scores(f0),
                                 _case_dice(labels, f0, dataset_json), evaluate_calibration(labels, [f0]),
                                 timing.get("nnunet", math.nan)))

    folds = [f for f in range(5) if (baseline / f"fold_{f}" / "checkpoint_final.pth").is_file()]
    if folds == list(range(5)):
        fold_dirs = [f0] + [out / f"nnunet_f{f}" for f in range(1, 5)]
        for f, d in zip(range(1, 5), fold_dirs[1:]):
            if not (d / "predict_args.json").is_file() or len(list(d.glob("*.npz"))) < len(difficulty):
                timed("nnunet5", lambda: predict_folder(baseline, images, d, folds=[f], save_probabilities=True))
        merged = out / "nnunet_5fold"
        ensemble_folders(fold_dirs, merged, save_probabilities=False)
        methods.append(_method_stats("nnU-Net 5-fold ensemble", case_scores_from_folders(fold_dirs),
                                     _case_dice(labels, merged, dataset_json), evaluate_calibration(labels, fold_dirs),
                                     timing.get("nnunet5", math.nan) + timing.get("nnunet", math.nan)))
    else:
        logger.warning("%s: baseline folds %s trained; the 5-fold ensemble is missing", raw.name, folds)

    if (recycle / "fold_0" / "checkpoint_final.pth").is_file():
        for tag, extra in (("recycle", {}), ("pd_ddpm", {"presegmentation": str(f0)})):
            d = out / f"{tag}_n{num_samples}"
            if len(list((d / "uncertainty").glob("*_scores.json"))) < len(difficulty):
                timed(tag, lambda: predict_folder(recycle, images, d, folds=[0], save_probabilities=True,
                                                  use_mirroring=False,
                                                  diffusion_options={"seed": 0, "num_samples": num_samples,
                                                                     "keep_samples": True, **extra}))
            label = f"recycle, {num_samples} samples" if tag == "recycle" else f"PD-DDPM, {num_samples} samples"
            methods.append(_method_stats(label, read_case_scores(d), _case_dice(labels, d, dataset_json),
                                         evaluate_calibration(labels, [d]), timing.get(tag, math.nan)))
    else:
        logger.warning("%s: recycle fold 0 is not trained; diffusion methods missing", raw.name)

    from scipy import stats

    dice0 = methods[0]["dice_per_case"]
    cases = sorted(dice0)
    level = stats.spearmanr([difficulty[c]["level"] for c in cases], [dice0[c] for c in cases]).statistic
    return {"dataset": raw.name, "generator": name, "configuration": configuration, "num_test_cases": len(difficulty),
            "num_hard": sum(d["hard"] for d in difficulty.values()), "training_cases_checked": checked,
            "spearman_difficulty_vs_nnunet_dice": float(level), "num_samples": num_samples, "methods": methods}


def report(result: dict) -> str:
    """Markdown tables of the stored results."""
    lines = []
    for ds in result["datasets"]:
        lines += [f"### {ds['dataset']} ({ds['configuration']}, {ds['num_test_cases']} test cases, "
                  f"{ds['num_hard']} hard; Spearman(difficulty level, nnU-Net Dice) "
                  f"{ds['spearman_difficulty_vs_nnunet_dice']:+.2f})", "",
                  "| method | mean / median Dice | Spearman: disagreement / entropy boundary / entropy fg / volume cv "
                  "| worst 10 % caught at 20 % flagged (same order) | ECE (top label) | ECE per class |",
                  "|---|---|---|---|---|---|"]
        for m in ds["methods"]:
            sp = " / ".join(f"{m['scores'][s]['spearman']:+.2f}" for s in m["scores"])
            rc = " / ".join(f"{m['scores'][s]['recall_worst10_at_20']:.2f}" for s in m["scores"])
            per_class = ", ".join(f"{k} {v:.3f}" for k, v in m["ece_per_class"].items() if k != "background")
            lines.append(f"| {m['method']} | {m['mean_dice']:.4f} / {m['median_dice']:.4f} | {sp} | {rc} | "
                         f"{m['ece']:.4f} | {per_class} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=Path("/work/bench-zoo"))
    parser.add_argument("--raw", type=Path, help="raw folder with the varied-difficulty datasets")
    parser.add_argument("--work", type=Path, help="prediction folders")
    parser.add_argument("--datasets", nargs="+", type=int, default=[501, 503, 502])
    parser.add_argument("--num-samples", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmark_uncertainty.json"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from diffusion_nnunet.evaluation import to_jsonable
    from dnnunet_core.atomic import write_json

    stored = json.loads(args.out.read_text()) if args.out.is_file() else {"datasets": []}
    if not args.report_only:
        # nnunetv2 reads these at import; the zoo is only read (model folders are passed as paths)
        for key, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
            os.environ[key] = str(args.raw if key == "nnUNet_raw" else args.work / f"unused_{sub}")
        for dataset_id in args.datasets:
            ds = run_dataset(dataset_id, args.zoo, args.raw, args.work, args.num_samples)
            stored["datasets"] = [d for d in stored["datasets"] if d["dataset"] != ds["dataset"]] + [ds]
            stored["command"] = f"OMP_NUM_THREADS=1 python benchmarks/uncertainty.py --raw {args.raw} " \
                                f"--work {args.work} --datasets {' '.join(map(str, args.datasets))} " \
                                f"--num-samples {args.num_samples}"
            write_json(to_jsonable(stored), args.out)
            logger.info("written %s", args.out)
    print(report(stored))


if __name__ == "__main__":
    main()
