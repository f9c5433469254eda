"""find-best: choose, on the validation folds, among nnU-Net, diffusion, PD-DDPM and ensembles.

Like nnU-Net's `find_best_configuration`, but the candidates are what this project adds:
- the nnU-Net model (ours, or any stock nnunetv2 model folder);
- each trained diffusion model with full sampling;
- PD-DDPM of each diffusion model started from the nnU-Net prediction, for several start steps k;
- the equal-weight ensemble of nnU-Net with each of those.

Every candidate predicts the validation cases of the chosen folds from the raw images (so the
comparison does not depend on what the training's final validation happened to save), is
evaluated against the training labels, and the best mean foreground Dice wins; ties go to the
cheaper candidate (fewer networks, fewer reverse steps). Results go to
`nnUNet_results/DatasetXXX/find_best_<configuration>/`: `inference_information.json` (every
candidate's Dice per fold and the choice) and `inference_instructions.txt` (the commands to
predict new images with the choice). The best start step of each diffusion model is recorded in
that model's `inference_defaults.json` (key `pd_ddpm`, with its source; plans.json is left as the
planner wrote it), which `dnnunet predict` uses when `--start-step` is not given.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffusion_nnunet.ensemble import ensemble_folders
from diffusion_nnunet.evaluation import evaluate_folders
from diffusion_nnunet.inference.inference_defaults import update_inference_defaults
from diffusion_nnunet.inference.predictor import model_folder, predict_folder
from dnnunet_core import paths
from dnnunet_core.atomic import write_json, write_text
from dnnunet_core.errors import UserInputError
from dnnunet_core.paths import find_dataset_folder
from planning.plan_sections import diffusion_section
from planning.planner import DEFAULT_PLANS_NAME

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One way to predict, and how well it did on the validation cases.

    Args:
        name: readable name, unique among the candidates.
        models: model folders it runs (nnU-Net first where it takes part).
        start_step: PD-DDPM start step (None: not PD-DDPM).
        reverse_steps: reverse steps per sample (0 for nnU-Net alone).
        ensemble_of: names of the candidates it averages (empty: not an ensemble).
        dice_per_fold: mean foreground Dice of each fold's validation cases.
        dice: mean foreground Dice over all validation cases of all folds.
    """

    name: str
    models: list[str]
    start_step: int | None = None
    reverse_steps: int = 0
    ensemble_of: list[str] = field(default_factory=list)
    dice_per_fold: dict[str, float] = field(default_factory=dict)
    dice: float = float("nan")

    @property
    def cost(self) -> tuple[int, int]:
        """What breaks Dice ties: fewer networks first, then fewer reverse steps."""
        return len(self.models), self.reverse_steps


def choose_best(candidates: list[Candidate]) -> Candidate:
    """The candidate with the highest Dice; among equal Dice (to 1e-6) the cheapest, then the first.

    Raises:
        UserInputError: no candidate has a finite Dice.
    """
    scored = [c for c in candidates if np.isfinite(c.dice)]
    if not scored:
        raise UserInputError("no candidate could be evaluated on the validation cases")
    top = max(c.dice for c in scored)
    return min((c for c in scored if c.dice >= top - 1e-6), key=lambda c: c.cost)


def validation_cases(dataset_name: str, fold: int) -> list[str]:
    """The validation case ids of `fold` (nnU-Net's splits_final.json, written by the first training)."""
    splits_file = paths.preprocessed() / dataset_name / "splits_final.json"
    if not splits_file.is_file():
        raise UserInputError(f"{splits_file} does not exist: train a fold first (`dnnunet train`)")
    splits = json.loads(splits_file.read_text())
    if not 0 <= fold < len(splits):
        raise UserInputError(f"fold {fold} is not in {splits_file} ({len(splits)} folds)")
    return list(splits[fold]["val"])


def _link_files(sources: list[Path], target: Path) -> Path:
    """A folder of symbolic links to `sources` (the validation cases' images, or their labels)."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        if not source.is_file():
            raise UserInputError(f"{source} is missing: find-best needs the validation cases' images and labels")
        if not (target / source.name).is_symlink():
            os.symlink(source.resolve(), target / source.name)
    return target


def _diffusion_models(dataset_name: str, configuration: str, nnunet: Path) -> list[Path]:
    """Every trained diffusion model folder of this dataset and configuration."""
    from diffusion_nnunet.configs import trainer_registry as registry

    plans_name = nnunet.name.split("__")[1] if nnunet.name.count("__") == 2 else DEFAULT_PLANS_NAME
    out = set()
    for entry in registry.available().values():
        folder = paths.trained_model_folder(dataset_name, entry.cls.__name__, plans_name, configuration)
        if entry.predictor == "diffusion" and any(folder.glob("fold_*/checkpoint_final.pth")):
            out.add(folder)
    return sorted(out)


def _timesteps(model: Path, configuration: str) -> int:
    plans = json.loads((model / "plans.json").read_text())
    return diffusion_section(plans["configurations"][configuration], model / "plans.json").timesteps


def find_best(dataset: str, configuration: str = "2d", folds: list[int] = (0,), nnunet_model: str | Path | None = None,
              diffusion_models: list[str | Path] | None = None, start_steps: list[int] | None = None,
              num_samples: int | None = None, seed: int = 0, device: torch.device = torch.device("cpu"),
              use_mirroring: bool = False, record_defaults: bool = True) -> dict:
    """Evaluate every candidate on the validation folds and write the choice (see module docstring).

    Args:
        dataset: id or DatasetXXX_Name.
        configuration: plans configuration of the models.
        folds: folds whose validation cases are predicted (each model must have them trained).
        nnunet_model: the nnU-Net model folder (default: our `baseline` trainer's); stock nnunetv2 folders work.
        diffusion_models: diffusion model folders (default: every trained diffusion trainer's).
        start_steps: PD-DDPM start steps to try (default: 0 .. steps-2; steps-1 is full sampling).
        num_samples: diffusion samples per case (None: the predictor's default, one per mirror variant
            with mirroring, else 1).
        seed: sampler seed.
        device: torch device.
        use_mirroring: test-time mirroring (off by default: it multiplies the sampling cost).
        record_defaults: record each diffusion model's best start step in its
            inference_defaults.json (`predict` then starts PD-DDPM there).

    Returns:
        The content of inference_information.json.
    """
    dataset_name = find_dataset_folder(paths.results(), dataset).name
    raw = find_dataset_folder(paths.raw(), dataset_name)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    ending, num_channels = dataset_json["file_ending"], len(dataset_json["channel_names"])
    nnunet = Path(nnunet_model) if nnunet_model else model_folder(dataset_name, "baseline", configuration)
    diffusion = [Path(m) for m in diffusion_models] if diffusion_models else _diffusion_models(
        dataset_name, configuration, nnunet)
    if not diffusion:
        raise UserInputError(f"no trained diffusion model for {dataset_name} {configuration}: train one with "
                             "`dnnunet train -tr recycle` (or name it with --diffusion)")
    out = paths.results() / dataset_name / f"find_best_{configuration}"
    gt = paths.preprocessed() / dataset_name / "gt_segmentations"
    folds = [int(f) for f in folds]

    candidates: dict[str, Candidate] = {"nnU-Net": Candidate("nnU-Net", [str(nnunet)])}
    for model in diffusion:
        steps = _timesteps(model, configuration)
        tag = model.name.split("__")[0]
        candidates[tag] = Candidate(tag, [str(model)], reverse_steps=steps)
        for k in (range(steps - 1) if start_steps is None else start_steps):
            if not 0 <= k < steps - 1:
                raise UserInputError(f"start step {k} is not in 0..{steps - 2} for {model.name} (T = {steps})")
            name = f"{tag} PD-DDPM k={k}"
            candidates[name] = Candidate(name, [str(nnunet), str(model)], start_step=k, reverse_steps=k + 1)
    for c in list(candidates.values())[1:]:
        name = f"ensemble nnU-Net + {c.name}"
        candidates[name] = Candidate(name, list(dict.fromkeys([str(nnunet), *c.models])), c.start_step,
                                     c.reverse_steps, ensemble_of=["nnU-Net", c.name])

    folder_of = {name: (lambda fold, n=name: out / f"fold_{fold}" / _slug(n)) for name in candidates}
    per_case: dict[str, list[dict]] = {name: [] for name in candidates}
    for fold in folds:
        cases = validation_cases(dataset_name, fold)
        inputs = _link_files([raw / "imagesTr" / f"{case}_{c:04d}{ending}" for case in cases
                              for c in range(num_channels)], out / f"fold_{fold}" / "inputs")
        reference = _link_files([gt / f"{case}{ending}" for case in cases], out / f"fold_{fold}" / "reference")
        for c in candidates.values():
            target = folder_of[c.name](fold)
            logger.info("find-best fold %d: %s", fold, c.name)
            if c.ensemble_of:
                ensemble_folders([folder_of[m](fold) for m in c.ensemble_of], target, save_probabilities=True)
            else:
                options = None
                if c.models[-1] != str(nnunet):
                    options = {"seed": seed, "num_samples": num_samples}
                    if c.start_step is not None:
                        options.update(presegmentation=folder_of["nnU-Net"](fold), start_step=c.start_step)
                predict_folder(c.models[-1], inputs, target, folds=[fold], device=device, save_probabilities=True,
                               use_mirroring=use_mirroring, diffusion_options=options)
            ev = evaluate_folders(reference, target, dataset_json=dataset_json)
            c.dice_per_fold[str(fold)] = float(ev["foreground_mean"]["Dice"])
            per_case[c.name] += ev["per_case"]
    for c in candidates.values():
        c.dice = foreground_mean_dice(per_case[c.name])
    best = choose_best(list(candidates.values()))
    info = {"dataset": dataset_name, "configuration": configuration, "folds": folds, "seed": seed,
            "num_samples": num_samples, "use_mirroring": use_mirroring,
            "candidates": [asdict(c) for c in candidates.values()], "best": asdict(best)}
    if record_defaults:
        info["start_steps_recorded"] = _record_start_steps(list(candidates.values()), folds)
    info["instructions"] = str(out / "inference_instructions.txt")
    write_json(info, out / "inference_information.json")
    write_text(inference_instructions(best, dataset_name, configuration, folds, num_samples), out /
               "inference_instructions.txt")
    logger.info("find-best: %s (validation Dice %.4f); see %s", best.name, best.dice, out)
    return info


def foreground_mean_dice(per_case: list[dict]) -> float:
    """nnU-Net's mean foreground Dice of evaluated cases (`evaluate_folders`' per_case rows, several
    folds merged): the mean over classes of each class's mean over the cases where it is defined."""
    class_means = []
    for name in (per_case[0]["metrics"] if per_case else {}):
        values = [r["metrics"][name]["Dice"] for r in per_case if np.isfinite(r["metrics"][name]["Dice"])]
        if values:
            class_means.append(float(np.mean(values)))
    return float(np.mean(class_means)) if class_means else float("nan")


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_=" else "_" for ch in name).strip("_")


def _record_start_steps(candidates: list[Candidate], folds: list[int]) -> dict[str, int]:
    """Record each diffusion model's best PD-DDPM start step in its inference defaults
    (`inference.inference_defaults`; plans.json stays the planner's)."""
    best_k: dict[str, Candidate] = {}
    for c in candidates:
        if c.start_step is None or c.ensemble_of or not np.isfinite(c.dice):
            continue
        model = c.models[-1]
        if model not in best_k or (c.dice, -c.reverse_steps) > (best_k[model].dice, -best_k[model].reverse_steps):
            best_k[model] = c
    for model, c in best_k.items():
        update_inference_defaults(model, "pd_ddpm", {
            "start_step": c.start_step,
            "source": f"find-best: best validation Dice ({c.dice:.4f}) of PD-DDPM start steps, folds {folds}"})
    return {model: c.start_step for model, c in best_k.items()}


def inference_instructions(best: Candidate, dataset_name: str, configuration: str, folds: list[int],
                           num_samples: int | None) -> str:
    """The commands that predict new images (INPUT_FOLDER) the way the chosen candidate did."""
    folds_arg = " ".join(str(f) for f in folds)
    lines = [f"find-best chose: {best.name} (mean foreground validation Dice {best.dice:.4f}, folds {folds_arg})",
             "", "Predict new images with:", ""]
    nnunet, diffusion = best.models[0], best.models[-1]
    samples = f" --num-samples {num_samples}" if num_samples is not None else ""
    if len(best.models) == 1 and best.name == "nnU-Net":
        lines.append(f"dnnunet predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {nnunet} -f {folds_arg}")
    elif best.start_step is not None and best.ensemble_of:
        lines.append(f"dnnunet predict-ensemble -i INPUT_FOLDER -o OUTPUT_FOLDER --nnunet {nnunet} "
                     f"--diffusion {diffusion} --nnunet-folds {folds_arg} --diffusion-folds {folds_arg} "
                     f"--start-step {best.start_step}{samples}")
        lines.append("# the result is OUTPUT_FOLDER/ensemble")
    elif best.start_step is not None:
        lines.append(f"dnnunet predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {diffusion} -f {folds_arg} "
                     f"--presegmenter {nnunet} --start-step {best.start_step}{samples}")
    elif best.ensemble_of:
        lines += [f"dnnunet predict -i INPUT_FOLDER -o OUT_NNUNET -m {nnunet} -f {folds_arg} --save-probabilities",
                  f"dnnunet predict -i INPUT_FOLDER -o OUT_DIFFUSION -m {diffusion} -f {folds_arg} "
                  f"--save-probabilities{samples}",
                  "dnnunet ensemble -i OUT_NNUNET OUT_DIFFUSION -o OUTPUT_FOLDER"]
    else:
        lines.append(f"dnnunet predict -i INPUT_FOLDER -o OUTPUT_FOLDER -m {diffusion} -f {folds_arg}{samples}")
    lines += ["", "The validation Dice of every candidate is in inference_information.json."]
    return "\n".join(lines) + "\n"
