"""One command for a folder: the nnU-Net model, PD-DDPM started from its prediction, and their ensemble.

By default each case goes through all three in memory: the nnU-Net probabilities of a case are
written to OUT/nnunet and handed straight to PD-DDPM (its start) and to the ensemble, and the
image is preprocessed once where both models preprocess alike. The files are those of the disk
path (`in_memory=False`: three folder-wide passes, each reading the previous one's npz files).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion_nnunet.configs.sampling_config import SamplingConfig
from diffusion_nnunet.ensemble import ensemble_folders
from diffusion_nnunet.inference.cascade import model_previous_stage
from diffusion_nnunet.inference.input_checks import validate_prediction_inputs
from diffusion_nnunet.inference.output_folder import claim_output_folder, prediction_settings
from diffusion_nnunet.inference.predictor import (
    DnnPredictor,
    load_predictor,
    predict_folder,
    prediction_arguments,
)
from diffusion_nnunet.nnunet_adapter import release_gaussian_cache
from dnnunet_core.atomic import atomic_path, write_json
from dnnunet_core.errors import UserInputError
from dnnunet_core.quiet import nnunet_output_to_log
from planning.plan_sections import diffusion_section

logger = logging.getLogger(__name__)

# what nnU-Net's preprocessing of an image depends on (plans level, configuration level)
_PREPROCESSING_PLANS_KEYS = ("transpose_forward", "foreground_intensity_properties_per_channel", "image_reader_writer")
_PREPROCESSING_CONFIGURATION_KEYS = ("spacing", "normalization_schemes", "use_mask_for_norm", "preprocessor_name",
                                     "resampling_fn_data", "resampling_fn_data_kwargs")


def proposed_num_samples(model_dir: str | Path) -> int:
    """The PD-DDPM samples the planner proposed for a model (1 where its plans propose none).

    The configuration is the last part of nnU-Net's folder name `<Trainer>__<Plans>__<configuration>`.
    """
    plans_file = Path(model_dir) / "plans.json"
    plans = json.loads(plans_file.read_text())
    configuration = plans["configurations"].get(Path(model_dir).name.split("__")[-1], {})
    return diffusion_section(configuration, plans_file).num_samples


def predict_with_ensemble(nnunet_model: str | Path, diffusion_model: str | Path, input_dir: str | Path,
                          output_dir: str | Path, nnunet_folds=None, diffusion_folds=None,
                          start_step: int | None = None, num_samples: int | None = None, weights=None, seed: int = 0,
                          device: torch.device = torch.device("cpu"), use_mirroring: bool = True,
                          tile_batch: int | None = None, sample_mirroring: str | None = None,
                          in_memory: bool = True) -> dict[str, Path]:
    """Write OUT/nnunet, OUT/pd_ddpm and OUT/ensemble (each a prediction folder with probabilities).

    Args:
        nnunet_model: any nnU-Net v2 model folder (ours or stock nnunetv2): the pre-segmenter and
            the ensemble partner.
        diffusion_model: a diffusion model folder (e.g. `recycle`).
        input_dir: images (CASE_0000.nii.gz, ...).
        output_dir: parent of the three prediction folders.
        nnunet_folds: folds of the nnU-Net model (None: all trained).
        diffusion_folds: folds of the diffusion model (None: all trained).
        start_step: PD-DDPM start (None: the plans' default).
        num_samples: diffusion samples per case (above 1, uncertainty maps are written too). None:
            with mirroring, one per mirror variant (the samples are the test-time augmentation);
            without, the number the planner proposed in the diffusion model's plans.
        weights: ensemble weights (PD-DDPM, nnU-Net); default equal.
        seed: seed of the sampler.
        device: torch device.
        use_mirroring: test-time mirroring for both models.
        tile_batch: tiles per forward pass (None: from the plans).
        sample_mirroring: "cycle" (default) or "product" (see DiffusionPredictor).
        in_memory: hand each case's probabilities over in memory (False: the folder-wide disk path).

    Raises:
        UserInputError: bad weights, or models whose labels differ (before any compute).
    """
    out = Path(output_dir)
    if num_samples is None and not use_mirroring:
        num_samples = proposed_num_samples(diffusion_model)
    folders = {"nnunet": out / "nnunet", "pd_ddpm": out / "pd_ddpm", "ensemble": out / "ensemble"}
    sampling = SamplingConfig.from_options({
        "presegmentation": folders["nnunet"], "start_step": start_step, "num_samples": num_samples, "seed": seed,
        "tile_batch": tile_batch, "sample_mirroring": sample_mirroring})
    nnunet_sampling = SamplingConfig(tile_batch=tile_batch)
    if in_memory and model_previous_stage(nnunet_model) is not None:
        in_memory = False  # a cascade runs its chain through predict_folder (the same files)
    if in_memory:
        _predict_in_memory(nnunet_model, diffusion_model, Path(input_dir), folders, nnunet_folds, diffusion_folds,
                           sampling, ensemble_weights(weights), device, use_mirroring)
        return folders
    logger.info("[1/3] nnU-Net prediction")
    predict_folder(nnunet_model, input_dir, folders["nnunet"], nnunet_folds, device=device, save_probabilities=True,
                   use_mirroring=use_mirroring, diffusion_options=nnunet_sampling)
    logger.info("[2/3] PD-DDPM from the nnU-Net prediction")
    predict_folder(diffusion_model, input_dir, folders["pd_ddpm"], diffusion_folds, device=device,
                   save_probabilities=True, use_mirroring=use_mirroring, diffusion_options=sampling)
    logger.info("[3/3] ensemble")
    ensemble_folders([folders["pd_ddpm"], folders["nnunet"]], folders["ensemble"], weights, save_probabilities=True)
    return folders


def ensemble_weights(weights) -> np.ndarray:
    """(PD-DDPM, nnU-Net) weights normalised to sum 1, checked as `ensemble_folders` checks them."""
    if weights is None:
        return np.full(2, 0.5)
    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    if len(w) != 2 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise UserInputError(f"give 2 finite, non-negative weights, not both zero; got {list(weights)}")
    return w / w.sum()


def same_preprocessing(a: DnnPredictor, b: DnnPredictor) -> bool:
    """Whether both predictors turn an image into the same preprocessed array (then it is done once)."""
    return (all(a.plans_manager.plans.get(k) == b.plans_manager.plans.get(k) for k in _PREPROCESSING_PLANS_KEYS)
            and all(a.configuration_manager.configuration.get(k) == b.configuration_manager.configuration.get(k)
                    for k in _PREPROCESSING_CONFIGURATION_KEYS)
            and a.dataset_json["channel_names"] == b.dataset_json["channel_names"])


def _predict_in_memory(nnunet_model, diffusion_model, input_dir: Path, folders: dict[str, Path], nnunet_folds,
                       diffusion_folds, sampling: SamplingConfig, weights: np.ndarray, device: torch.device,
                       use_mirroring: bool) -> None:
    nnunet = load_predictor(nnunet_model, nnunet_folds, device=device, use_mirroring=use_mirroring,
                            diffusion_options=SamplingConfig(tile_batch=sampling.tile_batch))
    diffusion = load_predictor(diffusion_model, diffusion_folds, device=device, use_mirroring=use_mirroring,
                               diffusion_options=sampling)
    if nnunet.dataset_json["labels"] != diffusion.dataset_json["labels"]:
        raise UserInputError(f"the models' labels differ: {nnunet.dataset_json['labels']} ({nnunet_model}) and "
                             f"{diffusion.dataset_json['labels']} ({diffusion_model})")
    ending = nnunet.dataset_json["file_ending"]
    cases = validate_prediction_inputs(input_dir, nnunet.dataset_json["channel_names"], ending)
    diffusion.presegmentation_in_memory = {}
    nnunet.check_cases(cases)
    diffusion.check_cases(cases)
    shared = same_preprocessing(nnunet, diffusion)
    with contextlib.ExitStack() as claims:  # each folder replaced whole, as the disk path's three runs do
        for name, settings in _run_settings(input_dir, folders, nnunet_model, diffusion_model, nnunet_folds,
                                            diffusion_folds, sampling, use_mirroring, weights).items():
            claims.enter_context(claim_output_folder(folders[name], settings, overwrite=True))
        for name, predictor in (("nnunet", nnunet), ("pd_ddpm", diffusion)):
            write_json(predictor.dataset_json, folders[name] / "dataset.json")
            write_json(predictor.plans_manager.plans, folders[name] / "plans.json")
        _predict_cases_in_memory(nnunet, diffusion, cases, input_dir, folders, weights, shared)
    logger.info("wrote %d case(s) to %s", len(cases), ", ".join(str(f) for f in folders.values()))


def _run_settings(input_dir: Path, folders: dict[str, Path], nnunet_model, diffusion_model, nnunet_folds,
                  diffusion_folds, sampling: SamplingConfig, use_mirroring: bool, weights: np.ndarray) -> dict:
    """The predict_args.json of each folder, as the disk path's predict_folder / ensemble_folders write them."""
    def run(model, folds, options: SamplingConfig) -> dict:  # predict_folder's defaults: final checkpoint, step 0.5
        return prediction_settings(input_dir, True, prediction_arguments(model, folds, "checkpoint_final.pth",
                                                                         use_mirroring, 0.5, options))

    return {"nnunet": run(nnunet_model, nnunet_folds, SamplingConfig(tile_batch=sampling.tile_batch)),
            "pd_ddpm": run(diffusion_model, diffusion_folds, sampling),
            "ensemble": {"ensemble_of": [str(folders[n].absolute()) for n in ("pd_ddpm", "nnunet")],
                         "weights": [float(x) for x in weights], "save_probabilities": True}}


def _predict_cases_in_memory(nnunet: DnnPredictor, diffusion: DnnPredictor, cases: list[str], input_dir: Path,
                             folders: dict[str, Path], weights: np.ndarray, shared: bool) -> None:
    ending = nnunet.dataset_json["file_ending"]
    label_manager = diffusion.plans_manager.get_label_manager(diffusion.dataset_json)
    staging = {name: folders[name] / f".partial-{os.getpid()}" for name in ("nnunet", "pd_ddpm")}
    for folder in staging.values():
        folder.mkdir(exist_ok=True)
    preprocessors = {p: p.configuration_manager.preprocessor_class(verbose=False) for p in (nnunet, diffusion)}
    logger.info("predicting %d case(s): nnU-Net, PD-DDPM and their ensemble per case%s", len(cases),
                " (one preprocessing)" if shared else "")
    try:
        for case in tqdm(cases, desc="predict-ensemble", unit="case"):
            images = [str(input_dir / f"{case}_{c:04d}{ending}") for c in range(len(nnunet.dataset_json["channel_names"]))]
            with nnunet_output_to_log(logger):
                data, properties = _preprocess(preprocessors[nnunet], nnunet, images)
                logits = nnunet.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
                p_nnunet = nnunet.export_case(logits, properties, str(staging["nnunet"] / case), True)
                _move_into(staging["nnunet"], folders["nnunet"])
                if not shared:
                    data, properties = _preprocess(preprocessors[diffusion], diffusion, images)
                diffusion.presegmentation_in_memory[case] = p_nnunet
                x = diffusion.prepare_case(case, torch.from_numpy(data), properties)
                logits = diffusion.predict_logits_from_preprocessed_data(x).cpu()
                p_diffusion = diffusion.export_case(logits, properties, str(staging["pd_ddpm"] / case), True)
                _move_into(staging["pd_ddpm"], folders["pd_ddpm"])
            _write_ensemble_case(case, [p_diffusion, p_nnunet], weights, properties, folders["ensemble"], ending,
                                 label_manager, diffusion.plans_manager.image_reader_writer_class)
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
        release_gaussian_cache()
    for name in ("dataset.json", "plans.json"):  # as ensemble_folders: those of its first folder
        with atomic_path(folders["ensemble"] / name) as tmp:
            shutil.copyfile(folders["pd_ddpm"] / name, tmp)


def _preprocess(preprocessor, predictor: DnnPredictor, images: list[str]):
    data, _, properties = preprocessor.run_case(images, None, predictor.plans_manager, predictor.configuration_manager,
                                                predictor.dataset_json)
    return data, properties


def _move_into(staging: Path, folder: Path) -> None:
    """Move a finished case's files from the staging folder into place (as run_prediction does)."""
    for produced in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = folder / produced.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(produced, target)


def _write_ensemble_case(case: str, probabilities: list[np.ndarray], weights: np.ndarray, properties: dict,
                         folder: Path, ending: str, label_manager, reader_writer_class) -> None:
    """One case of OUT/ensemble, as `ensemble_folders` writes it from the npz files (same arithmetic)."""
    avg = None
    for p, w in zip(probabilities, weights):
        avg = p.astype(np.float32) * np.float32(w) if avg is None else avg + p.astype(np.float32) * np.float32(w)
    seg = np.asarray(label_manager.convert_probabilities_to_segmentation(avg))
    with atomic_path(folder / f"{case}{ending}") as tmp:
        reader_writer_class().write_seg(seg, str(tmp), properties)
    with atomic_path(folder / f"{case}.npz", suffix=".npz") as tmp:
        np.savez_compressed(tmp, probabilities=avg)
    with atomic_path(folder / f"{case}.pkl", suffix=".pkl") as tmp, open(tmp, "wb") as f:
        pickle.dump(properties, f)
