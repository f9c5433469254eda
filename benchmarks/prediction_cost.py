"""Prediction cost against nnU-Net's own test-time augmentation (issue 17).

Usage: python benchmarks/prediction_cost.py --zoo /work/bench-zoo --work /work/scratch-cost/bench
           [--datasets 501 503 502] [--rounds 3] [--max-cases N] [--baseline-code DIR]
           [--out docs/benchmark_prediction_cost.json]

Uses trained models of a model zoo (read only): per dataset the baseline and `recycle` on fold 0
(`<zoo>/nnUNet_results/DatasetXXX_*/{DnnBaselineTrainer,DnnDiffusionTrainer_recycle}__dnnunetPlans__<cfg>/fold_0`)
and the test images imagesTs/labelsTs. Each method predicts the folder in its own subprocess
(methods alternated, their order reversed every other round): wall time of the prediction call
(model loading included, interpreter start and imports not) and the subprocess's peak resident
memory (ru_maxrss from os.wait4). Dice (mean over foreground classes) of each method's output.

Methods: nnunet (mirroring, default tile batch), nnunet_tile1 (one tile per forward pass; 3D only),
full (recycle, all T steps, N = M samples cycling over the mirror variants), pd_ddpm (start at the
plans' k from nnU-Net's probabilities, N = M, uncertainty maps), ensemble (predict-ensemble in
memory, defaults), and with --baseline-code (a snapshot of the code before issue 17) today's
pd_ddpm_today and ensemble_today (every sample on every mirror variant, N = the plans' proposal).
Ratios are per round against nnunet of the same round; the table gives their medians.
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

CONFIGURATIONS = {501: "2d", 502: "3d_fullres", 503: "2d"}


def _child(spec: dict) -> dict:
    """Run one method in this (sub)process; returns {"seconds": ...}."""
    import torch

    from diffusion_nnunet.inference.predictor import predict_folder

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    device = torch.device("cpu")
    start = time.perf_counter()
    if spec["kind"] == "predict":
        predict_folder(spec["model"], spec["input"], spec["output"], folds=[0], device=device,
                       save_probabilities=spec.get("save_probabilities", False),
                       diffusion_options=spec.get("options") or None)
    else:
        from diffusion_nnunet.inference.combined import predict_with_ensemble

        predict_with_ensemble(spec["nnunet"], spec["diffusion"], spec["input"], spec["output"], [0], [0],
                              device=device, **spec.get("options", {}))
    return {"seconds": time.perf_counter() - start}


def _run(spec: dict, code: Path, env: dict) -> dict:
    """One method in a subprocess with `code` first on PYTHONPATH: seconds and peak RSS (MiB)."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**env, "PYTHONPATH": str(code)}, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{spec['name']} failed (status {status}): {out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {"seconds": result["seconds"], "peak_rss_mib": usage.ru_maxrss / 1024}


def _dice(labels: Path, predictions: Path, dataset_json: Path) -> float:
    from diffusion_nnunet.evaluation import evaluate_folders

    result = evaluate_folders(labels, predictions, dataset_json=dataset_json, allow_missing=True)  # --max-cases
    return float(result["foreground_mean"]["Dice"])


def _methods(dataset: int, zoo: Path, work: Path, baseline_code: Path | None, input_dir: Path) -> list[dict]:
    configuration = CONFIGURATIONS[dataset]
    results = next((zoo / "nnUNet_results").glob(f"Dataset{dataset:03d}_*"))
    nnunet = results / f"DnnBaselineTrainer__dnnunetPlans__{configuration}"
    recycle = results / f"DnnDiffusionTrainer_recycle__dnnunetPlans__{configuration}"
    for model in (nnunet, recycle):
        if not (model / "fold_0" / "checkpoint_final.pth").is_file():
            raise FileNotFoundError(f"{model}/fold_0/checkpoint_final.pth is not trained (yet)")
    plans = json.loads((recycle / "plans.json").read_text())["configurations"][configuration]["diffusion"]
    pre = work / "presegmentation"
    common = {"input": str(input_dir)}
    methods = [
        {"name": "nnunet", "kind": "predict", "model": str(nnunet)},
        {"name": "full", "kind": "predict", "model": str(recycle)},
        {"name": "pd_ddpm", "kind": "predict", "model": str(recycle),
         "options": {"presegmentation": str(pre), "start_step": plans["start_step"]}},
        {"name": "ensemble", "kind": "ensemble", "nnunet": str(nnunet), "diffusion": str(recycle),
         "options": {"start_step": plans["start_step"]}},
    ]
    if configuration.startswith("3d"):
        methods.insert(1, {"name": "nnunet_tile1", "kind": "predict", "model": str(nnunet),
                           "options": {"tile_batch": 1}})
    if baseline_code is not None:  # the code before issue 17: every sample on every mirror variant
        methods += [
            {"name": "pd_ddpm_today", "kind": "predict", "model": str(recycle), "code": str(baseline_code),
             "options": {"presegmentation": str(pre), "start_step": plans["start_step"],
                         "num_samples": plans["num_samples"]}},
            {"name": "ensemble_today", "kind": "ensemble", "nnunet": str(nnunet), "diffusion": str(recycle),
             "code": str(baseline_code), "options": {"start_step": plans["start_step"]}},
        ]
    for m in methods:
        m.update(common)
        m["output"] = str(work / m["name"])
    return methods, {"nnunet_model": str(nnunet), "recycle_model": str(recycle), "configuration": configuration,
                     "timesteps": plans["timesteps"], "start_step": plans["start_step"],
                     "plans_num_samples": plans["num_samples"]}


def benchmark_dataset(dataset: int, zoo: Path, work: Path, rounds: int, baseline_code: Path | None,
                      max_cases: int | None, code: Path, skip: tuple[str, ...] = ()) -> dict:
    raw = next((zoo / "nnUNet_raw").glob(f"Dataset{dataset:03d}_*"))
    env = {**os.environ, **{k: str(zoo / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
    work.mkdir(parents=True, exist_ok=True)
    input_dir = link_test_subset(raw / "imagesTs", work, max_cases)
    methods, info = _methods(dataset, zoo, work, baseline_code, input_dir)
    methods = [m for m in methods if m["name"] not in skip]
    logger.info("%s: pre-segmentation for PD-DDPM (nnU-Net probabilities)", raw.name)
    _run({"name": "presegmentation", "kind": "predict", "model": info["nnunet_model"], "input": str(input_dir),
          "output": str(work / "presegmentation"), "save_probabilities": True}, code, env)
    times = {m["name"]: [] for m in methods}
    for r in range(rounds):
        order = methods if r % 2 == 0 else methods[::-1]
        for m in order:
            result = _run(m, Path(m.get("code", code)), env)
            times[m["name"]].append(result)
            logger.info("%s round %d %s: %.1f s, %.0f MiB", raw.name, r, m["name"], result["seconds"],
                        result["peak_rss_mib"])
    labels, dataset_json = raw / "labelsTs", raw / "dataset.json"
    rows = {}
    for m in methods:
        folder = Path(m["output"]) / ("ensemble" if m["kind"] == "ensemble" else "")
        runs = times[m["name"]]
        ratios = [run["seconds"] / base["seconds"] for run, base in zip(runs, times["nnunet"])]
        rows[m["name"]] = {"seconds": [round(x["seconds"], 3) for x in runs],
                           "median_seconds": round(statistics.median(x["seconds"] for x in runs), 3),
                           "median_ratio_to_nnunet": round(statistics.median(ratios), 3),
                           "peak_rss_mib": round(max(x["peak_rss_mib"] for x in runs), 1),
                           "dice": round(_dice(labels, folder, dataset_json), 4)}
        if m["kind"] == "ensemble":
            rows[m["name"]]["dice_pd_ddpm_folder"] = round(_dice(labels, Path(m["output"]) / "pd_ddpm", dataset_json), 4)
    rows["nnunet"]["cases"] = len(list(input_dir.glob("*_0000.nii.gz")))
    return {"dataset": raw.name, **info, "rounds": rounds, "max_cases": max_cases, "methods": rows}


def tile_batching(zoo: Path, dataset: int, tile_batches: list[int], rounds: int, use_mirroring: bool) -> dict:
    """Sliding window of the baseline model on the first preprocessed test case, in this process:
    seconds per case for each tile batch, alternated, `rounds` times (the trained weights when the
    baseline's checkpoint exists, else its plans' architecture with random weights: the cost is the same)."""
    import numpy as np
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from diffusion_nnunet.inference.predictor import DnnPredictor, load_predictor

    configuration = CONFIGURATIONS[dataset]
    os.environ.update({k: str(zoo / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    raw = next((zoo / "nnUNet_raw").glob(f"Dataset{dataset:03d}_*"))
    model = next((zoo / "nnUNet_results").glob(f"Dataset{dataset:03d}_*")) / f"DnnBaselineTrainer__dnnunetPlans__{configuration}"
    trained = (model / "fold_0" / "checkpoint_final.pth").is_file()
    predictors = {}
    for b in tile_batches:
        if trained:
            predictors[b] = load_predictor(model, [0], use_mirroring=use_mirroring, diffusion_options={"tile_batch": b})
            continue
        pre = zoo / "nnUNet_preprocessed" / raw.name
        plans_manager = PlansManager(json.loads((pre / "dnnunetPlans.json").read_text()))
        cm = plans_manager.get_configuration(configuration)
        dataset_json = json.loads((pre / "dataset.json").read_text())
        torch.manual_seed(0)
        network = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                                         len(dataset_json["channel_names"]),
                                         plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
                                         deep_supervision=False)
        predictor = DnnPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring, tile_batch=b,
                                 device=torch.device("cpu"), verbose=False, allow_tqdm=False,
                                 perform_everything_on_device=False)
        predictor.manual_initialization(network, plans_manager, cm, [network.state_dict()], dataset_json, "random",
                                        tuple(range(len(cm.patch_size))))
        predictors[b] = predictor
    first = predictors[tile_batches[0]]
    image = min((raw / "imagesTs").glob("*_0000.nii.gz"))
    data, _, _ = first.configuration_manager.preprocessor_class(verbose=False).run_case(
        [str(image)], None, first.plans_manager, first.configuration_manager, first.dataset_json)
    data = torch.from_numpy(data)
    slicers = first._internal_get_sliding_window_slicers(data.shape[1:])
    seconds = {b: [] for b in tile_batches}
    outputs = {}
    for r in range(rounds):
        for b in (tile_batches if r % 2 == 0 else tile_batches[::-1]):
            start = time.perf_counter()
            outputs[b] = predictors[b].predict_sliding_window_return_logits(data).float()
            seconds[b].append(time.perf_counter() - start)
            logger.info("tile batch %d, round %d: %.2f s", b, r, seconds[b][-1])
    ref = tile_batches[0]
    return {"dataset": raw.name, "configuration": configuration, "trained_weights": trained,
            "use_mirroring": use_mirroring, "image_shape": list(data.shape[1:]), "tiles": len(slicers),
            "seconds": {str(b): [round(x, 3) for x in v] for b, v in seconds.items()},
            "median_seconds": {str(b): round(statistics.median(v), 3) for b, v in seconds.items()},
            "speedup_vs_one_tile": {str(b): round(statistics.median(
                a / x for a, x in zip(seconds[ref], v)), 3) for b, v in seconds.items()},
            "max_abs_difference_vs_one_tile": {str(b): float(np.abs((outputs[b] - outputs[ref]).numpy()).max())
                                               for b in tile_batches}}


def markdown(results: list[dict]) -> str:
    lines = ["| dataset | method | s/folder (median) | x nnU-Net (median) | peak RSS MiB | Dice |",
             "|---|---|---|---|---|---|"]
    for res in results:
        for name, row in res["methods"].items():
            lines.append(f"| {res['dataset']} | {name} | {row['median_seconds']:.2f} | "
                         f"{row['median_ratio_to_nnunet']:.2f} | {row['peak_rss_mib']:.0f} | {row['dice']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        logging.disable(logging.WARNING)
        print(json.dumps(_child(json.loads(sys.argv[2]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", type=Path, required=True, help="model zoo with nnUNet_raw/_preprocessed/_results")
    p.add_argument("--work", type=Path, required=True, help="where predictions go")
    p.add_argument("--datasets", type=int, nargs="+", default=[501, 503, 502])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-cases", type=int, default=None, help="first N test cases only")
    p.add_argument("--baseline-code", type=Path, default=None,
                   help="a checkout of the code before issue 17 (for pd_ddpm_today / ensemble_today)")
    p.add_argument("--tile-batching", type=int, nargs="+", default=None, metavar="B",
                   help="only the tile-batching measurement of the first dataset with these tile batches")
    p.add_argument("--mirroring", action="store_true", help="with --tile-batching: mirroring on")
    p.add_argument("--append", action="store_true", help="keep the results already in --out")
    p.add_argument("--skip", nargs="*", default=[], help="methods to leave out (e.g. ensemble_today)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmark_prediction_cost.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    code = Path(__file__).resolve().parents[1]
    if args.tile_batching:
        result = tile_batching(args.zoo, args.datasets[0], args.tile_batching, args.rounds, args.mirroring)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **result}, indent=2))
        print(json.dumps(result, indent=2))
        return 0
    previous = json.loads(args.out.read_text())["results"] if args.append and args.out.is_file() else []
    results = []
    for dataset in args.datasets:
        try:
            results.append(benchmark_dataset(dataset, args.zoo, args.work / str(dataset), args.rounds,
                                             args.baseline_code, args.max_cases, code, tuple(args.skip)))
        except FileNotFoundError as err:
            logger.warning("skipping dataset %d: %s", dataset, err)
            results.append({"dataset": dataset, "skipped": str(err)})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
                                        "results": previous + results}, indent=2))
    print(markdown([r for r in results if "methods" in r]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
