"""`dnnunet predict` as a library call: predict a folder, then write its review list.

`predict_and_review` is what the `predict` subcommand and the Python API's `predict_files` both
run: diffusion models keep each sample's probabilities (for the per-case scores) unless asked not
to, the optional overview PNGs read the case's first image, and after the folder is predicted the
review list (`OUT/uncertainty/cases.csv`) is written where every case has scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from diffusion_nnunet.configs.sampling_config import SamplingConfig
from diffusion_nnunet.inference.predictor import predict_folder
from diffusion_nnunet.inference.review_list import finish_prediction, is_diffusion_model


@dataclass
class FolderPrediction:
    """What one prediction of a folder produced.

    Attributes:
        output_folder: the prediction folder.
        cases: the cases predicted by this run (cases kept by `continue_prediction` are not listed).
        review: `finish_prediction`'s result (the review list), or None where the cases have no
            scores (one sample, an nnU-Net model, `case_scores=False`).
    """

    output_folder: Path
    cases: list[str]
    review: dict | None


def predict_and_review(model_dir: str | Path, input_dir: str | Path, output_dir: str | Path, folds=None,
                       checkpoint_name: str = "checkpoint_final.pth", device: torch.device = torch.device("cpu"),
                       save_probabilities: bool = False, use_mirroring: bool = True, tile_step_size: float = 0.5,
                       overwrite: bool = False, diffusion_options: SamplingConfig | Mapping | None = None,
                       continue_prediction: bool = False, case_scores: bool = True,
                       overview: bool = False, previous_stage_predictions=None) -> FolderPrediction:
    """Predict `input_dir` into `output_dir` with `predict_folder`, then write the review list.

    Args:
        model_dir, input_dir, output_dir, folds, checkpoint_name, device, save_probabilities,
            use_mirroring, tile_step_size, overwrite, diffusion_options, continue_prediction,
            previous_stage_predictions: as `predict_folder` takes them (`overwrite` defaults to
            False here: a folder with results is refused, as the CLI refuses it).
        case_scores: diffusion models keep each sample to score the cases (memory: N x classes
            channels); False skips the scores and the review list.
        overview: with more than one sample, a PNG per case (image, prediction, entropy) and
            OUT/uncertainty/contact_sheet.png.

    Raises:
        UserInputError: as `predict_folder` (inputs, checkpoints, output folder state).
    """
    sampling = SamplingConfig.from_options(diffusion_options)
    if overview:
        images = Path(input_dir)
        sampling = sampling.replace(overview_png_for=lambda case: next(images.glob(f"{case}_0000.*")))
    if case_scores and is_diffusion_model(model_dir):
        sampling = sampling.replace(keep_samples=True)
    cases = predict_folder(model_dir, input_dir, output_dir, folds, checkpoint_name, device, save_probabilities,
                           use_mirroring, tile_step_size, overwrite, sampling, continue_prediction=continue_prediction,
                           previous_stage_predictions=previous_stage_predictions)
    review = finish_prediction(input_dir, output_dir, model_dir, overview)
    return FolderPrediction(Path(output_dir), cases, review)
