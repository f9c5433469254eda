"""The demo: generate a dataset, plan with a budget, train the nnU-Net baseline and the recycling
diffusion model, predict the test images with both, with PD-DDPM (the diffusion model started from
nnU-Net's prediction, one sample per mirror variant, with uncertainty maps) and with the ensemble of both, evaluate,
and show one table and one picture.

Each stage is skipped when its output already exists (so a second `make demo` is quick and an
interrupted one picks up where it stopped); `--fresh` starts over.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion_nnunet.configs import trainer_registry as registry
from diffusion_nnunet.datasets import DEFAULT_IDS, make_dataset
from diffusion_nnunet.ensemble import ensemble_folders
from diffusion_nnunet.evaluation import evaluate_folders, load_evaluation, write_evaluation
from diffusion_nnunet.find_best import foreground_mean_dice
from diffusion_nnunet.inference.predictor import predict_folder
from diffusion_nnunet.inference.review_list import finish_prediction
from diffusion_nnunet.reporting import overlay_cases_png, results_table_markdown, results_table_text
from diffusion_nnunet.training.run import train_fold
from dnnunet_core import paths
from dnnunet_core.atomic import write_text
from planning.budget import get_budget
from planning.pipeline import plan_and_preprocess
from planning.planner import DEFAULT_PLANS_NAME

logger = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """What the demo runs.

    Args:
        dataset: generator name.
        output: folder for the table (results.md), the picture (overview.png) and predictions.
        budget: budget preset (None: cpu-small on CPU, gpu on CUDA).
        num_train: generated training cases (None: generator default).
        num_test: generated test cases (None: generator default).
        epochs: override the planned epochs.
        fresh: regenerate and retrain.
        fold: the fold to train.
        seed: seeds the data generator and the training.
    """

    dataset: str = "synthetic-us2d"
    output: str = "demo_output"
    budget: str | None = None
    num_train: int | None = None
    num_test: int | None = None
    epochs: int | None = None
    fresh: bool = False
    fold: int = 0
    seed: int = 0


def default_configuration(plans: dict) -> str:
    """The configuration the demo and the benchmarks train: 2d for 2D datasets, else 3d_fullres."""
    return "2d" if "2d" in plans["configurations"] and "3d_fullres" not in plans["configurations"] else "3d_fullres"


# (registry name, label in the table); the ensemble of the first two follows them.
METHODS = (("baseline", "nnU-Net"), ("recycle", "diffusion (recycle, DDPM)"))


def run_demo(settings: DemoSettings, device: torch.device) -> list[dict]:
    """Run the demo and return the table rows (also written to `output/results.md`)."""
    out = Path(settings.output)
    dataset_id = DEFAULT_IDS[settings.dataset]
    raw = next(paths.raw().glob(f"Dataset{dataset_id:03d}_*"), None) if paths.raw().is_dir() else None
    if settings.fresh and raw is not None:
        shutil.rmtree(raw)
        raw = None
    if raw is None:
        logger.info("[1/5] generating %s", settings.dataset)
        raw = make_dataset(settings.dataset, paths.raw(), dataset_id, settings.num_train, settings.num_test,
                           seed=settings.seed)
    else:
        logger.info("[1/5] reusing %s", raw)

    budget = get_budget(settings.budget or ("gpu" if device.type == "cuda" else "cpu-small"))
    logger.info("[2/5] plan-and-preprocess with the %s budget", budget.name)
    plans = plan_and_preprocess(str(dataset_id), budget, num_processes=2)
    configuration = default_configuration(plans)

    rows, predictions, fold_dirs = [], {}, {}

    def evaluated(label: str, folder: str, predict, seconds_per_iteration=None) -> None:
        predictions[label] = out / "predictions" / folder
        start = time.perf_counter()
        cases = predict(predictions[label])
        per_case = (time.perf_counter() - start) / max(1, len(cases))
        rows.append(_row(label, raw, predictions[label], out, seconds_per_iteration, per_case))

    for trainer, label in METHODS:
        fold_dirs[trainer] = _train(trainer, raw, configuration, settings, device)
        stats_file = fold_dirs[trainer] / "training_stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        logger.info("[4/5] predicting imagesTs with %s", trainer)
        evaluated(label, trainer, lambda o, t=trainer: predict_folder(
            fold_dirs[t].parent, raw / "imagesTs", o, folds=[settings.fold], device=device, save_probabilities=True),
            stats.get("median_seconds_per_iteration"))
    nnunet_predictions = predictions[METHODS[0][1]]
    logger.info("[4/5] PD-DDPM from the nnU-Net predictions, and the ensemble")
    # N = M samples by default: sample i on mirror variant i mod M, the samples are nnU-Net's TTA
    evaluated("PD-DDPM (nnU-Net start, one sample per mirror variant)", "pd_ddpm", lambda o: predict_folder(
        fold_dirs["recycle"].parent, raw / "imagesTs", o, folds=[settings.fold], device=device,
        diffusion_options={"presegmentation": nnunet_predictions, "keep_samples": True}))
    review = finish_prediction(raw / "imagesTs", out / "predictions" / "pd_ddpm", fold_dirs["recycle"].parent)
    evaluated("ensemble (nnU-Net + diffusion)", "ensemble",
              lambda o: ensemble_folders([predictions[m[1]] for m in METHODS], o))

    logger.info("[5/5] writing the table and the picture")
    for row in rows:  # prediction cost as a multiple of nnU-Net's (with its mirroring)
        row["x nnU-Net"] = round(row["predict s/case"] / max(rows[0]["predict s/case"], 1e-9), 2)
    columns = list(rows[0])
    overlay_cases_png(sorted((raw / "imagesTs").glob("*_0000" + plans_file_ending(raw))), predictions,
                      raw / "labelsTs", out / "overview.png", max_cases=4, file_ending=plans_file_ending(raw),
                      map_dirs={"PD-DDPM entropy": (out / "predictions" / "pd_ddpm" / "uncertainty", "_entropy")})
    review_rows = _review_rows(review, out / "evaluation_pd_ddpm.json")
    write_text(_report(settings, budget.name, configuration, rows, columns, review_rows), out / "results.md")
    print(results_table_text(rows, columns, float_format="{:.4g}"))
    if review_rows:
        print("review list (PD-DDPM, least certain first):")
        print(results_table_text(review_rows, list(review_rows[0]), float_format="{:.4g}"))
    print(f"table: {out / 'results.md'}   picture: {out / 'overview.png'}")
    return rows


def _train(trainer: str, raw: Path, configuration: str, settings: DemoSettings, device: torch.device) -> Path:
    """Train one fold unless a finished model exists; return the fold folder."""
    entry = registry.get(trainer)
    fold_dir = (paths.trained_model_folder(raw.name, entry.cls.__name__, DEFAULT_PLANS_NAME, configuration)
                / f"fold_{settings.fold}")
    if (fold_dir / "checkpoint_final.pth").is_file() and not settings.fresh:
        logger.info("[3/5] reusing the trained %s model in %s", trainer, fold_dir)
        return fold_dir
    logger.info("[3/5] training %s, fold %d", trainer, settings.fold)
    return train_fold(raw.name, configuration, settings.fold, trainer,
                      config_overrides={"num_epochs": settings.epochs, "seed": settings.seed}, device=device,
                      continue_training=fold_dir.is_dir() and not settings.fresh, validate=True)


def _row(label: str, raw: Path, predictions: Path, out: Path, seconds_per_iteration, seconds_per_case) -> dict:
    result = evaluate_folders(raw / "labelsTs", predictions, dataset_json=raw / "dataset.json")
    write_evaluation(result, out / f"evaluation_{predictions.name}.json")
    fg = result["foreground_mean"]
    return {"method": label, "Dice": fg["Dice"], "HD95 mm": fg["HD95"], "NSD": fg["NSD"],
            "train s/iter": seconds_per_iteration, "predict s/case": round(seconds_per_case, 3)}


def plans_file_ending(raw: Path) -> str:
    return json.loads((raw / "dataset.json").read_text())["file_ending"]


def _review_rows(review: dict | None, evaluation_file: Path, max_rows: int = 5) -> list[dict]:
    """The least certain PD-DDPM cases, with the score that sorts them and each case's true Dice."""
    if review is None:
        return []
    per_case = {r["case"]: foreground_mean_dice([r]) for r in load_evaluation(evaluation_file)["per_case"]}
    return [{"case": c, review["sorted_by"]: review["scores"][c], "Dice": per_case.get(c, float("nan"))}
            for c in review["order"][:max_rows]]


def _report(settings: DemoSettings, budget: str, configuration: str, rows: list[dict], columns: list[str],
            review_rows: list[dict]) -> str:
    review = ("" if not review_rows else "\n\nReview list (PD-DDPM's samples, least certain first; the whole list "
              "is `predictions/pd_ddpm/uncertainty/cases.csv`):\n\n"
              + results_table_markdown(review_rows, list(review_rows[0]), float_format="{:.4g}"))
    return (f"# diffusion-nnunet demo\n\ndataset: {settings.dataset}, configuration {configuration}, "
            f"budget {budget}, fold {settings.fold}; metrics are means over imagesTs foreground classes.\n\n"
            + results_table_markdown(rows, columns, float_format="{:.4g}") + review
            + "\n\n![overview](overview.png)\n")
