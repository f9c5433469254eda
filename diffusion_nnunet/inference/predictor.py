"""Prediction of a folder with a trained model (ours or stock nnunetv2's).

`DnnPredictor` is nnunetv2's `nnUNetPredictor` with two changes: the trainer class named in the
checkpoint is found through our registry (stock nnunetv2 trainers through nnunetv2's own
lookup), and `predict_folder` writes each case to a staging folder first and moves the finished
files into place, so an interrupted run never leaves a half-written output file.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import save_pickle
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm.auto import tqdm

from diffusion_nnunet.configs import trainer_registry as registry
from diffusion_nnunet.configs.inference_spec import InferenceSpec
from diffusion_nnunet.configs.sampling_config import SamplingConfig
from diffusion_nnunet.configs.training_config import TrainingConfig
from diffusion_nnunet.inference import cascade
from diffusion_nnunet.inference.checkpoint_io import load_weights, read_checkpoint
from diffusion_nnunet.inference.input_checks import validate_prediction_inputs
from diffusion_nnunet.inference.output_folder import (
    claim_output_folder,
    finished_cases,
    prediction_settings,
    refuse_output_inside_input,
)
from diffusion_nnunet.nnunet_adapter import SlidingWindowPredictor, release_gaussian_cache
from dnnunet_core import paths
from dnnunet_core.atomic import write_json
from dnnunet_core.errors import UserInputError
from dnnunet_core.paths import find_dataset_folder
from dnnunet_core.quiet import nnunet_output_to_log
from planning.planner import DEFAULT_PLANS_NAME

logger = logging.getLogger(__name__)


def model_folder(dataset: str, trainer: str, configuration: str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    """nnU-Net's results folder `<results>/<dataset>/<TrainerClass>__<plans>__<configuration>`.

    Args:
        trainer: registry name or class name (stock nnunetv2 names such as nnUNetTrainer work too).
    """
    dataset_name = find_dataset_folder(paths.results(), dataset).name
    try:
        class_name = registry.get(trainer).cls.__name__
    except UserInputError:
        class_name = trainer
    folder = paths.trained_model_folder(dataset_name, class_name, plans_name, configuration)
    if not folder.is_dir():
        raise UserInputError(f"no trained model at {folder}; train it with `dnnunet train` first")
    return folder


def predictor_kind(trainer_name: str) -> str:
    """"nnunet" or "diffusion": the predictor a checkpoint's trainer needs (its registry entry;
    stock nnunetv2 trainers are nnU-Net models).

    Raises:
        UserInputError: neither one of ours nor a stock nnunetv2 trainer.
    """
    entry = registry.find_entry(trainer_name)
    if entry is not None:
        return entry.predictor
    trainer_class_for(trainer_name)  # a stock trainer, or refused
    return "nnunet"


def predictor_class(kind: str) -> type:
    """The predictor class of a `predictor_kind`."""
    if kind == "diffusion":
        # imported here: diffusion_predictor builds on this module's DnnPredictor
        from diffusion_nnunet.inference.diffusion_predictor import DiffusionPredictor

        return DiffusionPredictor
    return DnnPredictor


def trainer_class_for(trainer_name: str) -> type:
    """Our registry first; stock nnunetv2 trainers (e.g. nnUNetTrainer) through nnunetv2's lookup."""
    cls = registry.find_class(trainer_name)
    if cls is not None:
        return cls
    try:
        with nnunet_output_to_log(logger):
            return recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError as err:
        raise UserInputError(f"the checkpoint was trained with {trainer_name!r}, which is neither one of ours "
                             f"({', '.join(registry.available())}) nor a stock nnunetv2 trainer") from err


class DnnPredictor(SlidingWindowPredictor):
    """nnUNetPredictor that resolves trainer classes through our registry (see module docstring),
    and whose sliding window runs several tiles per forward pass (`nnunet_adapter.SlidingWindowPredictor`).

    Args:
        tile_batch: tiles per forward pass (None: the plans' batch size, which the planner sized
            for the device's memory with gradients; prediction needs none). nnU-Net's Gaussian
            weighting and its half-precision accumulation are kept, so the result equals one tile
            at a time up to float rounding.
        *args, **kwargs: nnUNetPredictor's arguments.

    A cascade stage (3d_cascade_fullres) reads each case's previous-stage segmentation from
    `previous_stage_predictions` (nnUNetv2_predict's -prev_stage_predictions; see `cascade.py`).
    """

    previous_stage_predictions: Path | None = None
    model_folder: Path | None = None  # set by initialize_from_trained_model_folder (its inference defaults)

    def __init__(self, *args, tile_batch: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if tile_batch is not None and tile_batch < 1:
            raise UserInputError(f"--tile-batch must be at least 1, got {tile_batch}")
        self.tile_batch = tile_batch

    def tile_batch_size(self) -> int:
        """Tiles per forward pass of the sliding window."""
        if self.tile_batch is not None:
            return self.tile_batch
        return max(1, int(self.configuration_manager.batch_size))

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds,
                                             checkpoint_name: str = "checkpoint_final.pth"):
        folder = Path(model_training_output_dir)
        self.model_folder = folder
        for required in ("dataset.json", "plans.json"):
            if not (folder / required).is_file():
                raise UserInputError(f"{folder / required} is missing: {folder} is not an nnU-Net model folder")
        if use_folds is None:
            with nnunet_output_to_log(logger):
                use_folds = self.auto_detect_available_folds(str(folder), checkpoint_name)
            if not use_folds:
                raise UserInputError(f"no fold_* folder with {checkpoint_name} in {folder}")
        dataset_json = json.loads((folder / "dataset.json").read_text())
        plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))

        parameters, checkpoint = [], None
        for f in ([use_folds] if isinstance(use_folds, str) else use_folds):
            path = folder / f"fold_{f}" / checkpoint_name
            if not path.is_file():
                raise UserInputError(f"{path} does not exist (is fold {f} trained to the end?)")
            checkpoint = read_checkpoint(path)
            parameters.append(checkpoint["network_weights"])

        configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
        entry = registry.find_entry(checkpoint["trainer_name"])  # old checkpoints name the class only
        num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        if entry is not None:
            config = TrainingConfig.from_dict(checkpoint["init_args"].get("dnnunet_config", {}))
            network = entry.cls.network_for_inference(plans_manager, configuration_manager, num_inputs,
                                                      num_outputs, config)
            self.apply_spec(entry.inference_spec(config))
        else:  # a stock nnunetv2 trainer
            network = trainer_class_for(checkpoint["trainer_name"]).build_network_architecture(
                plans_manager, configuration_manager, num_inputs, num_outputs, enable_deep_supervision=False)
        for f, weights in zip(([use_folds] if isinstance(use_folds, str) else use_folds), parameters):  # all now
            load_weights(network, weights, folder / f"fold_{f}" / checkpoint_name, folder)
        network.load_state_dict(parameters[0])
        self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                   checkpoint["trainer_name"], checkpoint.get("inference_allowed_mirroring_axes"))

    def apply_spec(self, spec: InferenceSpec) -> None:
        """Take what the model's registry entry says of it (nothing beyond the network for nnU-Net models).

        Raises:
            ValueError: a diffusion model's spec (it needs `DiffusionPredictor`).
        """
        if spec.is_diffusion:
            raise ValueError(f"{type(self).__name__} cannot predict with a diffusion model: use DiffusionPredictor "
                             f"(load_predictor chooses it from the model's registry entry)")

    def check_cases(self, cases: list[str]) -> None:
        """Refuse, before any compute, inputs this predictor cannot use (none beyond the images here)."""

    def prepare_case(self, case: str, data: torch.Tensor, properties: dict) -> torch.Tensor:
        """The network input of one preprocessed case (the image; subclasses may add channels)."""
        return data

    def export_case(self, logits: torch.Tensor, properties: dict, output_truncated: str,
                    save_probabilities: bool):
        """Write one case (segmentation, and probabilities if asked) in nnU-Net's formats, as
        nnunetv2's `export_prediction_from_logits` does.

        Returns:
            The probabilities in the original image's layout (C, *shape) with `save_probabilities`
            (what CASE.npz holds), else None.
        """
        return export_prediction_from_logits(logits, properties, self.configuration_manager, self.plans_manager,
                                             self.dataset_json, output_truncated, save_probabilities)


def export_prediction_from_logits(logits, properties: dict, configuration_manager, plans_manager, dataset_json: dict,
                                  output_truncated: str, save_probabilities: bool = False):
    """nnunetv2's function of that name (the same files, through its conversion and writers), which
    also returns the probabilities it wrote (None without `save_probabilities`), so that callers
    such as predict-ensemble need not read them back."""
    label_manager = plans_manager.get_label_manager(dataset_json)
    result = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, plans_manager, configuration_manager, label_manager, properties, return_probabilities=save_probabilities)
    segmentation, probabilities = result if save_probabilities else (result, None)
    if save_probabilities:
        np.savez_compressed(output_truncated + ".npz", probabilities=probabilities)
        save_pickle(properties, output_truncated + ".pkl")
    plans_manager.image_reader_writer_class().write_seg(segmentation, output_truncated + dataset_json["file_ending"],
                                                        properties)
    return probabilities


def load_predictor(model_dir: str | Path, folds=None, checkpoint_name: str = "checkpoint_final.pth",
                   device: torch.device = torch.device("cpu"), use_mirroring: bool = True,
                   tile_step_size: float = 0.5,
                   diffusion_options: SamplingConfig | Mapping | None = None) -> DnnPredictor:
    """The predictor a model folder needs (diffusion models sample), initialised from its checkpoints.

    Args:
        diffusion_options: the sampling settings (`SamplingConfig`, or a dict of its field names);
            diffusion models only, except `tile_batch` (every model). `presegmenter` is
            `predict_folder`'s business and ignored here.

    Raises:
        UserInputError: no checkpoint, an unknown trainer, invalid sampling options.
    """
    first = next(iter(sorted(Path(model_dir).glob(f"fold_*/{checkpoint_name}"))), None)
    if first is None:
        raise UserInputError(f"no fold_*/{checkpoint_name} in {model_dir}: is this a trained nnU-Net model folder?")
    kind = predictor_kind(read_checkpoint(first)["trainer_name"])
    sampling = SamplingConfig.from_options(diffusion_options)
    options = sampling.predictor_arguments()
    if options and kind != "diffusion":
        logger.warning("%s is not a diffusion model: ignoring %s", model_dir, sorted(options))
        options = {}
    with nnunet_output_to_log(logger):
        predictor = predictor_class(kind)(tile_step_size=tile_step_size, use_gaussian=True,
                                          use_mirroring=use_mirroring, perform_everything_on_device=device.type == "cuda",
                                          device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False,
                                          tile_batch=sampling.tile_batch, **options)
        predictor.initialize_from_trained_model_folder(str(model_dir), folds, checkpoint_name)
    return predictor


def prediction_arguments(model_dir, folds, checkpoint_name: str, use_mirroring: bool, tile_step_size: float,
                         sampling: SamplingConfig | Mapping | None) -> dict:
    """What a prediction folder's predict_args.json records of the model and its settings (JSON values)."""
    return {"model": str(Path(model_dir).absolute()), "folds": folds, "checkpoint": checkpoint_name,
            "use_mirroring": use_mirroring, "tile_step_size": tile_step_size,
            "diffusion": SamplingConfig.from_options(sampling).recorded()}


def predict_folder(model_dir: str | Path, input_dir: str | Path, output_dir: str | Path, folds=None,
                   checkpoint_name: str = "checkpoint_final.pth", device: torch.device = torch.device("cpu"),
                   save_probabilities: bool = False, use_mirroring: bool = True, tile_step_size: float = 0.5,
                   overwrite: bool = True, diffusion_options: SamplingConfig | Mapping | None = None,
                   continue_prediction: bool = False, previous_stage_predictions=None) -> list[str]:
    """Predict every case of `input_dir` (nnU-Net naming: CASE_0000.nii.gz ...) into `output_dir`.

    Args:
        model_dir: a trained model folder (`<Trainer>__<plans>__<configuration>`).
        input_dir: raw images; checked before any compute (channels, readability, NaN/Inf).
        output_dir: written per case atomically; dataset.json, plans.json and the arguments beside.
        folds: folds to ensemble (None: all folds that have `checkpoint_name`).
        checkpoint_name: checkpoint file in each fold folder.
        device: torch device.
        save_probabilities: also write `CASE.npz` + `CASE.pkl` (nnU-Net's format, for ensembling).
        use_mirroring: test-time mirroring as nnU-Net does.
        tile_step_size: sliding-window step as a fraction of the patch.
        overwrite: replace an output folder that holds results whole (see `output_folder`).
        diffusion_options: the sampling settings (`SamplingConfig` or a dict of its field names;
            see `load_predictor`); with `presegmenter` (a model folder), that model predicts
            first, into OUT/presegmentation, and its probabilities start PD-DDPM.
        continue_prediction: keep the cases of an output folder predicted with the same settings
            and predict the others. Without it or `overwrite`, a folder with results is refused.
        previous_stage_predictions: for a cascade stage (3d_cascade_fullres), the folder of the
            previous stage's segmentations. None: the chain runs, the previous stage's model (the
            sibling model folder) predicting into OUT/<previous stage> first.

    Returns:
        The case identifiers written.
    """
    sampling = SamplingConfig.from_options(diffusion_options)  # invalid options: refused before any work
    previous = cascade.model_previous_stage(model_dir)
    if previous is not None and previous_stage_predictions is None:
        return _predict_chain(model_dir, previous, input_dir, output_dir, folds, checkpoint_name, device,
                              save_probabilities, use_mirroring, tile_step_size, overwrite, sampling,
                              continue_prediction)
    presegmenter, sampling = sampling.presegmenter, sampling.replace(presegmenter=None)
    arguments = prediction_arguments(model_dir, folds, checkpoint_name, use_mirroring, tile_step_size, sampling)
    if previous_stage_predictions is not None:
        arguments["previous_stage_predictions"] = str(Path(previous_stage_predictions).absolute())
    if presegmenter is None:
        predictor = load_predictor(model_dir, folds, checkpoint_name, device, use_mirroring, tile_step_size,
                                   sampling)
        predictor.previous_stage_predictions = None if previous_stage_predictions is None else Path(
            previous_stage_predictions)
        return run_prediction(predictor, input_dir, output_dir, save_probabilities, overwrite, arguments,
                              continue_prediction)
    # PD-DDPM: the nnU-Net model's probabilities are the starting point. OUT is claimed first, so
    # that --overwrite replaces OUT/presegmentation with the rest and a refusal comes before compute.
    pre_dir = Path(output_dir) / "presegmentation"
    arguments["diffusion"]["presegmentation"] = str(pre_dir)
    arguments["diffusion"]["presegmenter"] = str(Path(presegmenter).absolute())
    settings = prediction_settings(input_dir, save_probabilities, arguments)
    with claim_output_folder(output_dir, settings, overwrite, continue_prediction):
        logger.info("pre-segmenting with %s into %s", presegmenter, pre_dir)
        predict_folder(presegmenter, input_dir, pre_dir, None, checkpoint_name, device, True, use_mirroring,
                       tile_step_size, overwrite, continue_prediction=continue_prediction)
        predictor = load_predictor(model_dir, folds, checkpoint_name, device, use_mirroring, tile_step_size,
                                   sampling.replace(presegmentation=pre_dir))
        predictor.previous_stage_predictions = None if previous_stage_predictions is None else Path(
            previous_stage_predictions)
        return run_prediction(predictor, input_dir, output_dir, save_probabilities, False, arguments, True)


def _predict_chain(model_dir, previous: str, input_dir, output_dir, folds, checkpoint_name: str, device,
                   save_probabilities: bool, use_mirroring: bool, tile_step_size: float, overwrite: bool,
                   sampling: SamplingConfig, continue_prediction: bool) -> list[str]:
    """nnU-Net's cascade in one call: the previous stage into OUT/<previous>, then this stage from it.
    OUT is claimed first, so that --overwrite replaces OUT/<previous> with the rest and a refusal
    comes before any compute."""
    if sampling.presegmenter is not None:
        raise UserInputError(f"{Path(model_dir).name} is a cascade stage: PD-DDPM takes a cascade's prediction by "
                             f"giving the cascade model as --presegmenter of a diffusion model, not the other way")
    first = cascade.previous_stage_model(model_dir, previous, folds, checkpoint_name)
    previous_dir = Path(output_dir) / previous
    arguments = prediction_arguments(model_dir, folds, checkpoint_name, use_mirroring, tile_step_size, sampling)
    arguments["previous_stage"] = {"model": str(first.absolute()), "predictions": str(previous_dir.absolute())}
    settings = prediction_settings(input_dir, save_probabilities, arguments)
    with claim_output_folder(output_dir, settings, overwrite, continue_prediction):
        logger.info("cascade: %s predicts into %s first", first.name, previous_dir)
        predict_folder(first, input_dir, previous_dir, folds, checkpoint_name, device, False, use_mirroring,
                       tile_step_size, overwrite, SamplingConfig(tile_batch=sampling.tile_batch),
                       continue_prediction)
        predictor = load_predictor(model_dir, folds, checkpoint_name, device, use_mirroring, tile_step_size,
                                   sampling)
        predictor.previous_stage_predictions = previous_dir
        return run_prediction(predictor, input_dir, output_dir, save_probabilities, False, arguments, True)


def run_prediction(predictor: DnnPredictor, input_dir, output_dir, save_probabilities: bool = False,
                   overwrite: bool = True, arguments: dict | None = None,
                   continue_prediction: bool = False) -> list[str]:
    """The per-case loop shared by every predictor: validate, preprocess, predict, export, move.

    `overwrite` / `continue_prediction`: what may happen to an output folder holding results
    (see `output_folder.claim_output_folder`).
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    dataset_json = predictor.dataset_json
    ending = dataset_json["file_ending"]
    settings = prediction_settings(input_dir, save_probabilities, arguments)
    refuse_output_inside_input(input_dir, output_dir)
    cases = validate_prediction_inputs(input_dir, dataset_json["channel_names"], ending)
    predictor.check_cases(cases)
    cascade.check_previous_stage(predictor.previous_stage_predictions,
                                 predictor.configuration_manager.previous_stage_name, cases, ending)
    num_channels = len(dataset_json["channel_names"])
    with claim_output_folder(output_dir, settings, overwrite, continue_prediction):
        done = finished_cases(output_dir, cases, ending, save_probabilities) if continue_prediction else []
        cases = [c for c in cases if c not in done]
        if done:
            logger.info("%d cases already predicted in %s are kept", len(done), output_dir)
        write_json(dataset_json, output_dir / "dataset.json")
        write_json(predictor.plans_manager.plans, output_dir / "plans.json")
        _predict_cases(predictor, cases, input_dir, output_dir, num_channels, ending, save_probabilities)
    logger.info("wrote %d predictions to %s", len(cases), output_dir)
    return cases


def _predict_cases(predictor: DnnPredictor, cases: list[str], input_dir: Path, output_dir: Path, num_channels: int,
                   ending: str, save_probabilities: bool) -> None:
    dataset_json = predictor.dataset_json
    staging = output_dir / f".partial-{os.getpid()}"
    staging.mkdir(exist_ok=True)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    try:
        for case in tqdm(cases, desc=f"predict {output_dir.name}", unit="case"):
            images = [str(input_dir / f"{case}_{c:04d}{ending}") for c in range(num_channels)]
            previous = cascade.previous_stage_file(predictor.previous_stage_predictions, case, ending)
            with nnunet_output_to_log(logger):
                data, seg, properties = preprocessor.run_case(images, previous, predictor.plans_manager,
                                                              predictor.configuration_manager, dataset_json)
                if previous is not None:
                    data = cascade.add_previous_stage(data, seg, predictor.label_manager)
                data = predictor.prepare_case(case, torch.from_numpy(data), properties)
                logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
                predictor.export_case(logits, properties, str(staging / case), save_probabilities)
            for produced in sorted(p for p in staging.rglob("*") if p.is_file()):
                target = output_dir / produced.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(produced, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        release_gaussian_cache()

