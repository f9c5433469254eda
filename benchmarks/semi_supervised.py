"""Benchmark of semi-supervised training (methods.md section 7) against its two reference points.

Usage: python benchmarks/semi_supervised.py [--datasets synthetic-us2d mni-tissue2d] [--fractions 0.1 0.2]
                                            [--methods baseline cps semi_r1 semi_r3 cps_cp semi_r1_cp]
                                            [--epochs E --iterations I] [--out docs/benchmark_semi.json]
                                            [--semi '{"rec_start_step": 3}'] [--device cuda]
       python benchmarks/semi_supervised.py --report-only [--out ...]
       python benchmarks/semi_supervised.py --merge PIECE.json [...] --out docs/benchmark_semi_authors.json
       python benchmarks/semi_supervised.py --remaining --out docs/benchmark_semi_authors.json

For each dataset and labelled fraction: generate the dataset with only that share of the training
cases labelled (the rest are unlabelled images), plan once with the cpu-small budget, and train on
fold 0 (fold "all" where fewer than 5 cases are labelled: mni-tissue2d at 10 %) with the same
plans, seed and number of epochs x iterations:

- ``baseline``: the nnU-Net baseline on the labelled part only (nnU-Net's preprocessed folder
  holds only the labelled cases, so this is what it sees);
- ``cps``: plain cross pseudo-supervision (teacher and student without teacher pre-training,
  no reconstruction rounds);
- ``semi_rR``: ``semi_teacher`` pre-training (once per dataset and fraction, shared), then
  ``semi_cotrain --rounds R`` from that teacher;
- ``semi_authors_rR``: the same pre-trained teacher, co-trained with the authors' configuration
  (``--semi-preset authors``, docs/semi_supervised.md) and R rounds; ``cps_authors``: `cps` with
  the same preset (its rounds stay 0: the authors' CPS reference);
- ``semi_authors_rR_no_FACTOR``: the ablation, one factor of the preset switched back to our
  default (`ABLATIONS`: detach, unchained, onestep, wholeramp, fullrounds, warmup, randomt,
  diceonly); the sixth factor, binary labels, is the slice (``--datasets mni-tissue2d:wm``);
- any of them with ``_cp`` appended (``cps_cp``, ``semi_r1_cp``): the same with copy-paste mixing
  (``copy_paste = COPY_PASTE_BOX``, docs/semi_supervised.md); without it, ``copy_paste = 0``
  (the co-trainers' default until 2026-12-01, and the authors'), so that the names keep the
  meaning of the results in docs/benchmark_semi*.json.

Datasets are generator names, or ``NAME:CLASS[:CLASS...]`` for a reduced-class slice
(``make-dataset NAME --keep-classes CLASS ...``): ``synthetic-us2d:lesion``, ``mni-tissue2d:wm``.
Every method's cost per iteration is also reported as a multiple of the baseline's (same draw).

Each model predicts imagesTs (diffusion models: their default one-step sampling) and is evaluated
against labelsTs (mean foreground Dice, HD95, NSD). Training seconds are measured; for the
``semi_*`` methods the teacher pre-training is reported separately (it is extra compute on top of
the shared epochs x iterations). Results are appended to the JSON file as each method finishes,
so an interrupted run keeps what it finished (rerun to continue: finished methods are skipped).
Pieces of a grid run side by side need their own --out (and --work); ``--merge`` joins them.
``--remaining`` prints the commands of issue 20's grid (`ISSUE20_GRID`) that --out still lacks.
The report (benchmarks/semi_report.py) ends with issue 20's target, per teacher configuration.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from semi_report import CORE_METHODS, merge_results, remaining_runs, render_markdown  # benchmarks/, beside this script

logger = logging.getLogger("benchmark")

# + round(20 * fraction): 0.1 -> 612; a NAME:CLASS slice is its own dataset
DATASET_IDS = {"synthetic-us2d": 610, "mni-tissue2d": 640, "synthetic-us2d:lesion": 660, "mni-tissue2d:wm": 680}
METHODS = ("baseline", "cps", "semi_r1", "semi_r3")
WITH_COPY_PASTE = "_cp"  # method suffix: the co-trainer with copy-paste mixing
COPY_PASTE_BOX = 0.667  # its box side as a share of the patch's (BCP's 2/3)
AUTHORS = "authors"  # the preset of `dnnunet train --semi-preset authors`
# ablation factor -> the preset's fields it switches back to SemiSupervisedConfig's default
ABLATIONS = {"detach": ("rec_into_seg",), "unchained": ("chain_rounds",), "onestep": ("rec_one_step",),
             "wholeramp": ("whole_run_ramp",), "fullrounds": ("ramp_rounds",), "warmup": ("lr_warmup_fraction",),
             "randomt": ("seg_random_t",), "diceonly": ("ce_weight",)}
# issue 20's grid (docs/benchmarks.md): the references and teacher configurations on its four
# slices; R = 5 and the ablation on one binary slice, white matter: its iterations cost a third of
# the lesion slice's (batches of 2 patches of 80x80 against 3 of 128x128), so all 3 draws fit
# (about 10 CPU-hours against 28); 3 draws of 10 % labels, 30 x 50 iterations
ISSUE20_CORE = CORE_METHODS  # the six the report's cost comparison needs on every slice and draw
ISSUE20_GRID = {"synthetic-us2d:lesion": ISSUE20_CORE,
                "mni-tissue2d:wm": ISSUE20_CORE + ("semi_authors_r5",)
                + tuple(f"semi_authors_r3_no_{factor}" for factor in ABLATIONS),
                "synthetic-us2d": ISSUE20_CORE, "mni-tissue2d": ISSUE20_CORE}
ISSUE20_BUDGET = {"seeds": (0, 1, 2), "fraction": 0.1, "epochs": 30, "iterations": 50}


def _dataset_id(name: str, fraction: float) -> int:
    return DATASET_IDS[name] + int(round(20 * fraction))


def _generator_and_classes(spec: str) -> tuple[str, list[str] | None]:
    """``"synthetic-us2d:lesion"`` -> ("synthetic-us2d", ["lesion"]); a plain name keeps all classes."""
    name, *classes = spec.split(":")
    return name, classes or None


def parse_method(method: str) -> dict | None:
    """What a method name means, or None when it is not one.

    Returns:
        {"trainer", "rounds" (None: no teacher pre-training), "preset" (None or "authors"),
        "off" (ablated factors), "copy_paste" (box share, 0: off)}.
    """
    base = method.removesuffix(WITH_COPY_PASTE)
    out = {"trainer": base, "rounds": None, "preset": None, "off": [],
           "copy_paste": COPY_PASTE_BOX if method.endswith(WITH_COPY_PASTE) else 0.0}
    if method == "baseline":
        return {**out, "copy_paste": None}
    if base in ("cps", f"cps_{AUTHORS}"):
        return {**out, "trainer": "cps", "preset": AUTHORS if base != "cps" else None}
    if base.startswith(f"semi_{AUTHORS}_r"):
        out["preset"] = AUTHORS
        base = "semi_r" + base[len(f"semi_{AUTHORS}_r"):]
        base, *off = base.split("_no_")
        if not all(factor in ABLATIONS for factor in off) or len(set(off)) != len(off):
            return None
        out["off"] = off
    if base.startswith("semi_r") and base[len("semi_r"):].isdigit():
        return {**out, "trainer": "semi_cotrain", "rounds": int(base[len("semi_r"):])}
    return None


def semi_values(method: str, semi_options: dict | None = None) -> dict:
    """The ``semi`` config overrides of a co-training method (teacher added by the caller).

    Layers: the preset (if any), then --semi's options, then copy-paste, the ablated factors
    (back to SemiSupervisedConfig's defaults) and R; for ``cps`` the registry's rounds = 0 stand.
    """
    from dataclasses import fields

    from diffusion_nnunet.configs.training_config import SemiSupervisedConfig
    from diffusion_nnunet.training.semi_presets import semi_overrides

    spec = parse_method(method)
    defaults = {f.name: f.default for f in fields(SemiSupervisedConfig)}
    options = {**(semi_options or {}), "copy_paste": spec["copy_paste"]}
    for factor in spec["off"]:
        options.update({key: defaults[key] for key in ABLATIONS[factor]})
    return semi_overrides(spec["trainer"], spec["preset"], rounds=spec["rounds"], options=options)


def _evaluate(model: Path, raw: Path, out: Path, device, seed: int, fold) -> dict:
    from diffusion_nnunet.evaluation import evaluate_folders
    from diffusion_nnunet.inference.predictor import predict_folder

    start = time.perf_counter()
    is_diffusion = "Semi" in model.name
    predict_folder(model, raw / "imagesTs", out, folds=[fold], device=device,
                   diffusion_options={"seed": seed} if is_diffusion else None)
    seconds = time.perf_counter() - start
    ev = evaluate_folders(raw / "labelsTs", out, dataset_json=raw / "dataset.json")["foreground_mean"]
    return {"dice": ev["Dice"], "hd95": ev["HD95"], "nsd": ev["NSD"], "predict_seconds": round(seconds, 1)}


def _read_results(path: Path) -> dict:
    """The results file's contents; {} before its first run."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _commit() -> str | None:
    """The checkout's commit (provenance of each result; "-dirty": with uncommitted changes), None outside git."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*"],
                              capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run(datasets, fractions, methods, out_file: Path, work: Path, seed: int, epochs: int | None,
        iterations: int | None, semi_options: dict | None = None, device: str = "cpu") -> dict:
    commit = _commit()  # before the imports: the code this process runs, even if HEAD moves meanwhile
    import torch

    from diffusion_nnunet.datasets import make_dataset
    from diffusion_nnunet.inference.predictor import model_folder
    from diffusion_nnunet.training.base import CROSS_VALIDATION_FOLDS
    from diffusion_nnunet.training.run import train_fold
    from dnnunet_core import paths
    from dnnunet_core.atomic import write_json
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess

    device = torch.device(device)
    results = _read_results(out_file)
    overrides = {"seed": seed, "num_epochs": epochs, "num_iterations_per_epoch": iterations}
    for name in datasets:
        for fraction in fractions:
            key = f"{name}@{fraction:g}" + (f" seed {seed}" if seed else "")
            dataset_id = _dataset_id(name, fraction)
            raw = next(paths.raw().glob(f"Dataset{dataset_id:03d}_*"), None) if paths.raw().is_dir() else None
            generator, classes = _generator_and_classes(name)
            raw = raw or make_dataset(generator, paths.raw(), dataset_id, seed=seed, labelled_fraction=fraction,
                                      keep_classes=classes)
            plans = plan_and_preprocess(raw.name, get_budget("cpu-small"), ["2d"], num_processes=2)
            budget = plans["configurations"]["2d"]["training_budget"]
            meta = json.loads((raw / "dataset.json").read_text())
            labelled = meta["numTraining"] - len(meta.get("unlabelled", []))
            fold = 0 if labelled >= CROSS_VALIDATION_FOLDS else "all"  # one labelled case per fold at least
            res = results.setdefault(key, {
                "dataset": name, "labelled_fraction": fraction, "seed": seed,
                "labelled_cases": labelled, "fold": fold,
                "unlabelled_cases": len(meta.get("unlabelled", [])),
                "epochs": epochs or budget["num_epochs"], "iterations": iterations or budget["num_iterations_per_epoch"],
                "semi_options": semi_options or {}, "device": device.type, "methods": {}})
            store = work / "models" / raw.name
            for method in methods:
                if method in res["methods"]:
                    continue
                spec = parse_method(method)
                trainer, rounds = spec["trainer"], spec["rounds"]
                entry: dict = {"device": device.type, "commit": commit}
                values = dict(overrides)
                if trainer != "baseline":
                    values["semi"] = semi_values(method, semi_options)
                    entry["semi"] = dict(values["semi"])
                if rounds is not None:
                    teacher = store / "semi_teacher"
                    if not teacher.is_dir():
                        start = time.perf_counter()
                        train_fold(raw.name, "2d", fold, "semi_teacher", config_overrides=dict(overrides),
                                   device=device, continue_training=True, validate=False)
                        res["teacher_train_seconds"] = round(time.perf_counter() - start, 1)
                        store.mkdir(parents=True, exist_ok=True)
                        shutil.move(str(model_folder(raw.name, "semi_teacher", "2d")), teacher)
                    values["semi"] = {**values.get("semi", {}), "teacher": str(teacher)}
                    entry["teacher_train_seconds"] = res.get("teacher_train_seconds")
                start = time.perf_counter()
                fold_dir = train_fold(raw.name, "2d", fold, trainer, config_overrides=values, device=device,
                                      continue_training=True, validate=True)
                entry["train_seconds"] = round(time.perf_counter() - start, 1)
                stats = json.loads((fold_dir / "training_stats.json").read_text())
                entry["median_seconds_per_iteration"] = stats["median_seconds_per_iteration"]
                entry["validation_dice"] = json.loads((fold_dir / "validation" / "summary.json").read_text())[
                    "foreground_mean"]["Dice"]
                if trainer != "baseline":
                    ckpt = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
                    if "selected" in ckpt["network_weights"]:
                        entry["selected"] = ("teacher", "student")[int(ckpt["network_weights"]["selected"])]
                # semi_cotrain folders of different R share a name: keep each under its method
                model = store / method
                if model.exists():
                    shutil.rmtree(model)
                shutil.move(str(fold_dir.parent), model)
                entry["test"] = _evaluate(model, raw, work / "predictions" / raw.name / method, device, seed, fold)
                res["methods"][method] = entry
                write_json(results, out_file)
                logger.info("%s / %s: %s", key, method, json.dumps(entry))
    return results


def remaining_commands(results: dict) -> list[str]:
    """One command per slice and draw of `ISSUE20_GRID` that `results` lacks, each with its own --out and --work."""
    budget = ISSUE20_BUDGET
    commands = []
    for name, seed, methods in remaining_runs(results, ISSUE20_GRID, **budget):
        piece = f"{name.replace(':', '-')}-s{seed}"
        commands.append(f"OMP_NUM_THREADS=1 python benchmarks/semi_supervised.py --datasets {name} --seed {seed} "
                        f"--fractions {budget['fraction']:g} --epochs {budget['epochs']} "
                        f"--iterations {budget['iterations']} --methods {' '.join(methods)} "
                        f"--out benchmark_work_semi/issue20/{piece}.json --work benchmark_work_semi/issue20/work-{piece}")
    return commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_IDS)[:2], choices=list(DATASET_IDS),
                        help="generators, or NAME:CLASS slices with only that class (binary)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help="baseline, cps, semi_rR (semi_cotrain with R rounds, e.g. semi_r1 semi_r3), "
                             "cps_authors, semi_authors_rR (the authors' preset), semi_authors_rR_no_FACTOR "
                             f"(ablation; FACTOR in {', '.join(ABLATIONS)}); _cp appended: with copy-paste")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every training (default: the plan's)")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per epoch (default: the plan's)")
    parser.add_argument("--out", default="docs/benchmark_semi.json")
    parser.add_argument("--work", default=None, help="data, models and predictions "
                        "(default: benchmark_work_semi/seed_SEED)")
    parser.add_argument("--seed", type=int, default=0,
                        help="draw: generated data (synthetic datasets), labelled split and training seed")
    parser.add_argument("--semi", default="{}", help="JSON of SemiSupervisedConfig fields for cps and semi_rR "
                                                     "(not rounds, teacher or copy_paste), e.g. '{\"rec_start_step\": 3}'")
    parser.add_argument("--device", default="cpu", help="torch device of training and prediction")
    parser.add_argument("--report-only", action="store_true", help="only render --out as Markdown")
    parser.add_argument("--merge", nargs="+", metavar="FILE", default=None,
                        help="add these results files (pieces of the grid run with their own --out) to --out, "
                             "then render it; two different results for the same method stop with an error")
    parser.add_argument("--remaining", action="store_true",
                        help="print the commands of issue 20's grid that --out does not hold yet, and stop")
    args = parser.parse_args()
    if args.remaining:
        print("\n".join(remaining_commands(_read_results(Path(args.out)))))
        return
    if args.merge:
        from dnnunet_core.atomic import write_json

        out = Path(args.out)
        results = _read_results(out)
        for piece in args.merge:
            results = merge_results(results, json.loads(Path(piece).read_text()))
        write_json(results, out)
        print(render_markdown(results))
        return
    if args.report_only:
        print(render_markdown(json.loads(Path(args.out).read_text())))
        return
    for method in args.methods:
        if parse_method(method) is None:
            parser.error(f"unknown method {method!r}")
    semi_options = json.loads(args.semi)
    if {"rounds", "teacher", "copy_paste"} & set(semi_options):
        parser.error("--semi sets neither rounds (use semi_rR), teacher (pre-trained per dataset) nor copy_paste "
                     "(append _cp to a method)")
    work = Path(args.work or f"benchmark_work_semi/seed_{args.seed}").absolute()
    os.environ.setdefault("DNNUNET_DATA", str(work / "data"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import diffusion_nnunet  # noqa: F401  (sets the nnU-Net folders from DNNUNET_DATA)
    from diffusion_nnunet.training.base import DnnTrainer

    DnnTrainer.show_progress = False
    run(args.datasets, args.fractions, args.methods, Path(args.out), work, args.seed, args.epochs, args.iterations,
        semi_options, args.device)


if __name__ == "__main__":
    main()
