"""Late-fusion denoiser against the default (early) one (issue 17 item 5).

Usage: python benchmarks/late_fusion.py --work /tmp/late-data [--rounds 3] [--datasets 501 503 502]
           [--max-cases N] [--out docs/benchmark_late_fusion.json]

Per dataset (synthetic-us2d 501 and mni-tissue2d 503 in 2d, synthetic-ct3d 502 in 3d_fullres):
`make-dataset`, `plan-and-preprocess --budget cpu-small`, then fold 0 of `recycle` trained with
`--denoiser early` and with `--denoiser late` (same seed 0, the reduced epochs of EPOCHS, final
validation skipped), each into its own results root (`<work>/results-<denoiser>`), and the
baseline (same epochs) for PD-DDPM's pre-segmentation (`<work>/results-baseline`). Steps already
done are skipped, so the trainings can be run beforehand one at a time.

Prediction of imagesTs, each method in its own subprocess with one thread (methods alternated, the
order reversed every other round): full sampling (T steps, N = M samples over the mirror variants)
and PD-DDPM (the plans' start step k from the baseline's probabilities, N = M, uncertainty maps),
each with both denoisers, seed 0. Wall time of the prediction call (model loading included,
interpreter start and imports not) and peak resident memory; Dice (mean over foreground classes)
of each output. Ratios late / early per round, the table gives their medians.

Decision criterion (written before the run): the late denoiser becomes the default only if, on
all three datasets, its Dice is at least the early denoiser's (both PD-DDPM and full sampling)
and its median wall-time ratio is below 1 for both.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from case_subset import link_test_subset  # benchmarks/, beside this script

logger = logging.getLogger("benchmark")

DATASETS = {501: ("synthetic-us2d", "2d"), 503: ("mni-tissue2d", "2d"), 502: ("synthetic-ct3d", "3d_fullres")}
#: reduced epochs (the cpu-small plans ask for 30 / 69 / more) to fit six trainings in the session
EPOCHS = {501: 15, 503: 30, 502: 8}
DENOISERS = ("early", "late")


def _env(work: Path, results: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "1",
            "nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(work / results)}


def _cli(args: list[str], env: dict, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        # cwd: the repository, so that `-m` finds this checkout's package (sys.path[0] is the cwd)
        subprocess.run([sys.executable, "-m", "diffusion_nnunet", *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                       check=True, cwd=Path(__file__).resolve().parents[1])
    return time.perf_counter() - start


def _model(work: Path, results: str, dataset: int, trainer: str) -> Path:
    configuration = DATASETS[dataset][1]
    root = next((work / results).glob(f"Dataset{dataset:03d}_*"))
    return root / f"{trainer}__dnnunetPlans__{configuration}"


def prepare_and_train(work: Path, dataset: int, logs: Path) -> None:
    """Dataset, plans and the three trainings of one dataset, each skipped when already there."""
    name, configuration = DATASETS[dataset]
    env = _env(work, "results-early")
    if not list((work / "nnUNet_raw").glob(f"Dataset{dataset:03d}_*")):
        _cli(["make-dataset", name], env, logs / f"make-{dataset}.log")
    if not list((work / "nnUNet_preprocessed").glob(f"Dataset{dataset:03d}_*/dnnunetPlans_{configuration}")):
        _cli(["plan-and-preprocess", "-d", str(dataset), "--budget", "cpu-small", "-c", configuration, "-np", "1"],
             env, logs / f"plan-{dataset}.log")
    runs = [("results-early", "recycle", ["--denoiser", "early"]), ("results-late", "recycle", ["--denoiser", "late"]),
            ("results-baseline", "baseline", [])]
    for results, trainer, extra in runs:
        folder = (work / results).glob(f"Dataset{dataset:03d}_*/*__{configuration}/fold_0/checkpoint_final.pth")
        if next(folder, None) is not None:
            continue
        seconds = _cli(["train", "-d", str(dataset), "-c", configuration, "-f", "0", "-tr", trainer, "-device", "cpu",
                        "--seed", "0", "--epochs", str(EPOCHS[dataset]), "--skip-validation", *extra],
                       _env(work, results), logs / f"train-{dataset}-{results}.log")
        logger.info("trained %s %s in %.0f s", results, dataset, seconds)


def _child(spec: dict) -> dict:
    """Predict one folder in this (sub)process; returns {"seconds": ...}."""
    import torch

    from diffusion_nnunet.inference.predictor import predict_folder

    torch.set_num_threads(1)
    start = time.perf_counter()
    predict_folder(spec["model"], spec["input"], spec["output"], folds=[0], device=torch.device("cpu"),
                   save_probabilities=spec.get("save_probabilities", False), diffusion_options=spec.get("options"))
    return {"seconds": time.perf_counter() - start}


def _run(spec: dict, env: dict) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{spec['name']} failed (status {status}): {out[-2000:]}")
    return {"seconds": json.loads(out.strip().splitlines()[-1])["seconds"], "peak_rss_mib": usage.ru_maxrss / 1024}


def _dice(labels: Path, predictions: Path, dataset_json: Path) -> float:
    from diffusion_nnunet.evaluation import evaluate_folders

    result = evaluate_folders(labels, predictions, dataset_json=dataset_json, allow_missing=True)
    return float(result["foreground_mean"]["Dice"])


def _training_info(model: Path) -> dict:
    stats = model / "fold_0" / "training_stats.json"
    info = json.loads(stats.read_text()) if stats.is_file() else {}
    return {k: info[k] for k in ("median_seconds_per_iteration", "total_seconds") if k in info}


def benchmark_dataset(work: Path, dataset: int, rounds: int, max_cases: int | None) -> dict:
    name, configuration = DATASETS[dataset]
    raw = next((work / "nnUNet_raw").glob(f"Dataset{dataset:03d}_*"))
    out = work / "bench" / raw.name
    out.mkdir(parents=True, exist_ok=True)
    input_dir = link_test_subset(raw / "imagesTs", out, max_cases)
    env = {**_env(work, "results-early"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    baseline = _model(work, "results-baseline", dataset, "DnnBaselineTrainer")
    models = {d: _model(work, f"results-{d}", dataset, "DnnDiffusionTrainer_recycle") for d in DENOISERS}
    plans = json.loads((models["early"] / "plans.json").read_text())["configurations"][configuration]["diffusion"]
    pre = out / "presegmentation"
    if not pre.is_dir():
        _run({"name": "presegmentation", "model": str(baseline), "input": str(input_dir), "output": str(pre),
              "save_probabilities": True}, env)
    methods = []
    for mode in ("full", "pd_ddpm"):
        for d in DENOISERS:
            options = {"seed": 0}
            if mode == "pd_ddpm":
                options.update(presegmentation=str(pre), start_step=plans["start_step"])
            methods.append({"name": f"{mode}_{d}", "model": str(models[d]), "input": str(input_dir),
                            "output": str(out / f"{mode}_{d}"), "options": options})
    times = {m["name"]: [] for m in methods}
    for r in range(rounds):
        for m in (methods if r % 2 == 0 else methods[::-1]):
            result = _run(m, env)
            times[m["name"]].append(result)
            logger.info("%s round %d %s: %.1f s, %.0f MiB", raw.name, r, m["name"], result["seconds"],
                        result["peak_rss_mib"])
    labels, dataset_json = raw / "labelsTs", raw / "dataset.json"
    rows = {}
    for m in methods:
        runs = times[m["name"]]
        rows[m["name"]] = {"seconds": [round(x["seconds"], 2) for x in runs],
                           "median_seconds": round(statistics.median(x["seconds"] for x in runs), 2),
                           "peak_rss_mib": round(max(x["peak_rss_mib"] for x in runs), 1),
                           "dice": round(_dice(labels, Path(m["output"]), dataset_json), 4)}
    ratios = {}
    for mode in ("full", "pd_ddpm"):
        per_round = [lt["seconds"] / e["seconds"] for lt, e in zip(times[f"{mode}_late"], times[f"{mode}_early"])]
        ratios[mode] = {"late_over_early_seconds": [round(x, 3) for x in per_round],
                        "median_ratio": round(statistics.median(per_round), 3),
                        "dice_difference": round(rows[f"{mode}_late"]["dice"] - rows[f"{mode}_early"]["dice"], 4)}
    return {"dataset": raw.name, "configuration": configuration, "epochs": EPOCHS[dataset],
            "timesteps": plans["timesteps"], "start_step": plans["start_step"], "rounds": rounds,
            "cases": len(list(input_dir.glob("*_0000.nii.gz"))), "methods": rows, "late_vs_early": ratios,
            "training": {d: _training_info(models[d]) for d in DENOISERS},
            "baseline_dice": round(_dice(labels, pre, dataset_json), 4)}


def network_cost(work: Path, dataset: int, repeats: int = 9) -> dict:
    """Sampler cost alone, in this process with one thread: one tile batch of N = M runs (the plans'
    patch, batch = the predictor's runs per pass) through T steps and through k + 1 steps, with
    each trained denoiser, alternated `repeats` times; median seconds and the late / early ratio."""
    import torch

    from diffusion_nnunet.inference.predictor import load_predictor

    torch.set_num_threads(1)
    os.environ.update({k: v for k, v in _env(work, "results-early").items() if k.startswith("nnUNet")})
    predictors = {d: load_predictor(_model(work, f"results-{d}", dataset, "DnnDiffusionTrainer_recycle"), [0],
                                    diffusion_options={"seed": 0}) for d in DENOISERS}
    for p in predictors.values():
        p.network.eval()  # as the sliding window sets it (the cache works in eval mode only)
    first = predictors["early"]
    runs = min(len(first._runs()), first._run_limit())
    patch = list(first.configuration_manager.patch_size)
    channels = len(first.dataset_json["channel_names"])
    image = torch.randn(runs, channels, *patch, generator=torch.Generator().manual_seed(0))
    classes = first.label_manager.num_segmentation_heads
    x0_pre = torch.rand(runs, classes, *patch, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seconds = {(d, mode): [] for d in DENOISERS for mode in ("full", "pd_ddpm")}
    start_step = json.loads((_model(work, "results-early", dataset, "DnnDiffusionTrainer_recycle") / "plans.json")
                            .read_text())["configurations"][DATASETS[dataset][1]]["diffusion"]["start_step"]
    for r in range(-1, repeats):  # round -1 warms up (first-call allocations), not counted
        for d in (DENOISERS if r % 2 == 0 else DENOISERS[::-1]):
            p = predictors[d]
            p._num_classes = classes
            for mode in ("full", "pd_ddpm"):
                p.start_step = start_step if mode == "pd_ddpm" else None
                generators = [torch.Generator().manual_seed(i) for i in range(runs)]
                t0 = time.perf_counter()
                with torch.inference_mode():
                    p._sample_tile(image, x0_pre if mode == "pd_ddpm" else None, generators)
                if r >= 0:
                    seconds[(d, mode)].append(time.perf_counter() - t0)
    out = {"patch": patch, "runs_per_pass": runs}
    for mode in ("full", "pd_ddpm"):
        ratios = [lt / e for lt, e in zip(seconds[("late", mode)], seconds[("early", mode)])]
        out[mode] = {"median_seconds_early": round(statistics.median(seconds[("early", mode)]), 4),
                     "median_seconds_late": round(statistics.median(seconds[("late", mode)]), 4),
                     "median_ratio": round(statistics.median(ratios), 3)}
    return out


def late_wins(results: dict) -> bool:
    """The criterion of the module docstring over the datasets in `results`."""
    return all(r["late_vs_early"][mode]["dice_difference"] >= 0 and r["late_vs_early"][mode]["median_ratio"] < 1
               for r in results.values() for mode in ("full", "pd_ddpm"))


def render_markdown(results: dict) -> str:
    """One table row per dataset and mode."""
    lines = ["| dataset | epochs | mode | Dice early | Dice late | s early | s late | late / early s (median) |",
             "|:---|---:|:---|---:|---:|---:|---:|---:|"]
    for r in results.values():
        for mode, label in (("full", f"full sampling ({r['timesteps']} steps)"),
                            ("pd_ddpm", f"PD-DDPM (k = {r['start_step']})")):
            e, lt = r["methods"][f"{mode}_early"], r["methods"][f"{mode}_late"]
            lines.append(f"| {r['dataset']} ({r['configuration']}, {r['cases']} cases) | {r['epochs']} | {label} | "
                         f"{e['dice']:.4f} | {lt['dice']:.4f} | {e['median_seconds']:.1f} | {lt['median_seconds']:.1f} | "
                         f"{r['late_vs_early'][mode]['median_ratio']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/late-data"))
    parser.add_argument("--datasets", type=int, nargs="+", default=[501, 503, 502])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--skip-training", action="store_true", help="only benchmark models already trained")
    parser.add_argument("--network-only", action="store_true", help="only the in-process sampler cost")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmark_late_fusion.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text())["datasets"] if args.out.is_file() else {}
    for dataset in args.datasets:
        if args.network_only:
            print(json.dumps(network_cost(args.work, dataset)))
            continue
        if not args.skip_training:
            prepare_and_train(args.work, dataset, logs)
        results[str(dataset)] = benchmark_dataset(args.work, dataset, args.rounds, args.max_cases)
        results[str(dataset)]["network_only"] = network_cost(args.work, dataset)
        args.out.write_text(json.dumps({"datasets": results, "late_wins_everywhere": late_wins(results)}, indent=2))
        logger.info("%s", render_markdown({str(dataset): results[str(dataset)]}))
    print(render_markdown(results))


if __name__ == "__main__":
    main()
