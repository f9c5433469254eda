"""The final validation of a diffusion fold: predict its validation cases, score them, write them.

Training calls `validate_fold` at the end of a fold (training may import inference, never the
other way): the trainer hands over its network, plans and validation cases, and the model's
`InferenceSpec`; the diffusion predictor samples each case with the sliding window, the
predictions go to `<fold>/validation/` with nnU-Net's `summary.json`, and the summary gains the
Dice of every sampling step (`dice_per_sampling_step`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.inference.export_prediction import export_prediction_from_logits

from diffusion_nnunet.configs.inference_spec import InferenceSpec
from diffusion_nnunet.inference.diffusion_predictor import DiffusionPredictor
from dnnunet_core.atomic import write_json
from dnnunet_core.quiet import nnunet_output_to_log

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldValidation:
    """What the final validation of one fold needs from its trainer.

    Args:
        network: the trained network, in eval mode, deep supervision off.
        plans_manager: nnU-Net's plans of the fold.
        configuration_manager: the trained configuration.
        dataset_json: the dataset's dataset.json.
        trainer_name: the trainer's class name (nnU-Net records it with the predictor).
        mirroring_axes: the trainer's `inference_allowed_mirroring_axes` (mirroring stays off).
        spec: the model's inference spec (schedule, self-conditioning, validation sampler and steps).
        device: where the predictor runs.
        cases: nnU-Net's dataset of the validation cases (`identifiers`, `load_case`).
        gt_folder: the preprocessed reference segmentations (`gt_segmentations`).
        output_folder: `<fold>/validation`.
    """

    network: torch.nn.Module
    plans_manager: object
    configuration_manager: object
    dataset_json: dict
    trainer_name: str
    mirroring_axes: tuple | None
    spec: InferenceSpec
    device: torch.device
    cases: object
    gt_folder: Path
    output_folder: Path


def validation_predictor(validation: FoldValidation) -> DiffusionPredictor:
    """The predictor of the final validation: the spec's sampler and steps, every step kept,
    seed 0, no mirroring, nnU-Net's sliding window (step 0.5, Gaussian)."""
    spec = validation.spec
    with nnunet_output_to_log(logger):
        predictor = DiffusionPredictor(sampler=spec.sampler, num_steps=spec.validation_steps, keep_steps=True, seed=0,
                                       tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                       device=validation.device, verbose=False, allow_tqdm=False,
                                       perform_everything_on_device=validation.device.type == "cuda")
    predictor.manual_initialization(validation.network, validation.plans_manager, validation.configuration_manager,
                                    None, validation.dataset_json, validation.trainer_name,
                                    validation.mirroring_axes)
    predictor.apply_spec(spec)
    return predictor


def validate_fold(validation: FoldValidation, save_probabilities: bool = False) -> dict:
    """Predict, write and score the validation cases (see module docstring).

    Returns:
        The summary written to `<output_folder>/summary.json` (nnU-Net's, plus `dice_per_sampling_step`).
    """
    predictor = validation_predictor(validation)
    space, label_manager = predictor.label_space, predictor.label_manager
    out_dir = Path(validation.output_folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    step_counts, steps_run = None, None
    for key in validation.cases.identifiers:
        data, seg, _, properties = validation.cases.load_case(key)
        with torch.no_grad():
            sampled = predictor.sample_image(torch.from_numpy(np.asarray(data[:])))
        logits, steps_run = sampled.logits, sampled.steps_run
        per_step = sampled.per_step  # (K, C, *spatial) log-probabilities, first = first step run
        ref = torch.from_numpy(np.asarray(seg[:]))[0]
        keep = None if space.ignore_label is None else ref != space.ignore_label
        # the predictor's per-step probabilities live on its device, the reference on the CPU
        counts = np.stack([tp_fp_fn(space.hard(space.probabilities(step.cpu().float(), 0), 0),
                                    space.label_map_onehot(ref), keep)
                           for step in per_step])
        step_counts = counts if step_counts is None else step_counts + counts
        export_prediction_from_logits(logits.cpu(), properties, validation.configuration_manager,
                                      validation.plans_manager, validation.dataset_json, str(out_dir / key),
                                      save_probabilities)
    metrics = compute_metrics_on_folder(str(validation.gt_folder), str(out_dir), str(out_dir / "summary.json"),
                                        validation.plans_manager.image_reader_writer_class(),
                                        validation.dataset_json["file_ending"],
                                        label_manager.foreground_regions if space.regions
                                        else label_manager.foreground_labels,
                                        label_manager.ignore_label, chill=True, num_processes=1)
    summary = json.loads((out_dir / "summary.json").read_text())
    if step_counts is not None:
        tp, fp, fn = step_counts[:, 0], step_counts[:, 1], step_counts[:, 2]
        dice = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        fg = dice if space.regions else dice[:, 1:]
        summary["dice_per_sampling_step"] = {
            "sampler": validation.spec.sampler, "steps_run": None if steps_run is None else list(steps_run),
            "mean_foreground_dice": fg.mean(1).round(5).tolist(),
            "per_class": fg.round(5).tolist(),
            "note": "Dice over all validation voxels in the preprocessed space, after each reverse step",
        }
    write_json(summary, out_dir / "summary.json")
    logger.info("validation Dice %.4f; per sampling step: %s", metrics["foreground_mean"]["Dice"],
                summary.get("dice_per_sampling_step", {}).get("mean_foreground_dice"))
    return summary


def tp_fp_fn(pred: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor | None) -> np.ndarray:
    """(3, C) counts of true positives, false positives and false negatives per channel of the
    {0, 1} masks `pred` and `ref` (C, *spatial), over the voxels where `keep` (None: all)."""
    pred, ref = pred.flatten(1).bool(), ref.flatten(1).bool()
    if keep is not None:
        keep = keep.reshape(1, -1)
        pred, ref = pred & keep, ref & keep
    return torch.stack([(pred & ref).sum(1), (pred & ~ref).sum(1), (~pred & ref).sum(1)]).double().numpy()
