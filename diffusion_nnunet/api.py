"""The Python API: predict with any of our models (or a stock nnunetv2 model) from a script.

In the spirit of nnunetv2's `nnUNetPredictor`: `Predictor.from_model_folder` loads a trained
model folder (the nnU-Net baseline, a diffusion head, PD-DDPM from an nnU-Net pre-segmenter, or a
model trained by stock nnunetv2); `predict_array` takes one image as nnU-Net's
`predict_single_npy_array` takes it, a (C, *spatial) array in the axis order of the plans' image
reader and its spacing (or nnU-Net's properties dict), and returns a `Prediction` with the
segmentation, the probabilities and, for diffusion models with more than one sample, the
uncertainty maps and the case's scores; `predict_files` predicts a folder (or a list of files)
exactly as `dnnunet predict` does (same output folder rules, review list).

Everything runs through the inference package: `load_predictor` builds the predictor,
nnU-Net's preprocessor and export convert the arrays, and `predict_files` is the CLI's own
`predict_and_review`. See docs/api.md.
"""
from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffusion_nnunet.configs.sampling_config import SamplingConfig
from diffusion_nnunet.inference.diffusion_predictor import DiffusionPredictor
from diffusion_nnunet.inference.folder_prediction import FolderPrediction, predict_and_review
from diffusion_nnunet.inference.predictor import DnnPredictor, load_predictor
from diffusion_nnunet.inference.review_list import is_diffusion_model, predictor_case_scores
from diffusion_nnunet.utils.device import resolve_device
from dnnunet_core.errors import UserInputError
from dnnunet_core.quiet import nnunet_output_to_log

logger = logging.getLogger(__name__)

__all__ = ["FolderPrediction", "Prediction", "Predictor"]

# the names of the maps in `Prediction.uncertainty`, in the order the predictor computes them
UNCERTAINTY_MAPS = ("entropy", "variance", "mutual_information")


@dataclass
class Prediction:
    """One image's prediction, in the input image's array layout.

    Attributes:
        segmentation: (*spatial) label map (uint8, or uint16 with 255 or more labels).
        probabilities: (C, *spatial) float32 class probabilities (what CASE.npz holds).
        uncertainty: diffusion models with more than one sample per tile: ``{"entropy",
            "variance", "mutual_information"}`` maps (*spatial), as OUT/uncertainty/CASE_*.nii.gz
            hold them; else None.
        scores: the case's scores for the review list (disagreement, entropy_boundary, ...; see
            docs/user_guide.md), with more than one sample and `case_scores`; else None.
        properties: nnU-Net's properties of the image (spacing and what preprocessing recorded),
            what the plans' writer needs to write the segmentation (`Predictor.write_segmentation`).
    """

    segmentation: np.ndarray
    probabilities: np.ndarray
    uncertainty: dict[str, np.ndarray] | None = None
    scores: dict | None = None
    properties: dict = field(default_factory=dict, repr=False)


class Predictor:
    """A loaded model that predicts arrays (`predict_array`) and folders (`predict_files`).

    Build it with `from_model_folder`. The constructor wraps a predictor that is already
    initialised (e.g. `load_predictor`'s); without `model_folder` it predicts arrays only.

    Args:
        predictor: a DnnPredictor (DiffusionPredictor for diffusion models).
        model_folder: the model folder it was loaded from (needed by `predict_files`).
        presegmenter: PD-DDPM: the Predictor whose probabilities start the diffusion sampler.
        folder_options: `predict_and_review`'s model arguments for `predict_files`.
    """

    def __init__(self, predictor: DnnPredictor, model_folder: str | Path | None = None,
                 presegmenter: Predictor | None = None, folder_options: dict | None = None):
        self.predictor = predictor
        self.model_folder = None if model_folder is None else Path(model_folder)
        self.presegmenter = presegmenter
        self._folder_options = folder_options or {}
        if presegmenter is not None:
            if not isinstance(predictor, DiffusionPredictor):
                raise UserInputError(f"a presegmenter starts a diffusion model's sampler (PD-DDPM); "
                                     f"{model_folder or 'this model'} is not a diffusion model")
            predictor.presegmentation_in_memory = {}

    @classmethod
    def from_model_folder(cls, folder: str | Path, folds: Sequence[int | str] | None = None,
                          device: str | torch.device = "cpu", checkpoint_name: str = "checkpoint_final.pth",
                          use_mirroring: bool = True, tile_step_size: float = 0.5, tile_batch: int | None = None,
                          sampler: str | None = None, num_steps: int | None = None, num_samples: int | None = None,
                          seed: int | None = None, sample_mirroring: str | None = None,
                          presegmenter: str | Path | None = None, start_step: int | None = None,
                          soft_start: bool = False, case_scores: bool = True) -> Predictor:
        """Load a trained model folder (`<Trainer>__<plans>__<configuration>`, ours or stock nnunetv2's).

        Args:
            folder: the model folder.
            folds: folds to ensemble (None: every fold with `checkpoint_name`); 'all' for fold_all.
            device: "cpu", "cuda", "mps", "auto" or a torch.device.
            checkpoint_name: checkpoint file in each fold folder.
            use_mirroring: nnU-Net's test-time mirroring.
            tile_step_size: sliding-window step as a fraction of the patch.
            tile_batch: sliding-window tiles per forward pass (None: from the plans).
            sampler, num_steps, num_samples, seed, sample_mirroring: the diffusion sampler's
                settings, as `dnnunet predict` takes them (None: its defaults); ignored, with a
                warning, for nnU-Net models.
            presegmenter: PD-DDPM: a model folder (any nnU-Net model) that predicts first; its
                probabilities, noised to `start_step`, start the sampler.
            start_step: PD-DDPM start (None: the plans' proposal).
            soft_start: start from 2p - 1 instead of the argmax.
            case_scores: diffusion models keep each sample to score the case (`Prediction.scores`).

        Raises:
            UserInputError: not a model folder, a missing fold, bad sampler settings.
        """
        device = device if isinstance(device, torch.device) else resolve_device(device)
        folds = None if folds is None else [f if f == "all" else int(f) for f in folds]
        sampling = SamplingConfig.from_options({
            "sampler": sampler, "num_steps": num_steps, "num_samples": num_samples, "seed": seed,
            "start_step": start_step, "soft_start": soft_start or None, "sample_mirroring": sample_mirroring,
            "tile_batch": tile_batch})  # invalid settings: refused before any model is loaded
        pre = None
        if presegmenter is not None:
            # as predict_folder pre-segments: every fold, the same checkpoint name and sliding window step,
            # the plans' tile batch
            pre = cls.from_model_folder(presegmenter, None, device, checkpoint_name, use_mirroring, tile_step_size)
        loaded = sampling.replace(keep_samples=True) if case_scores and is_diffusion_model(folder) else sampling
        predictor = load_predictor(folder, folds, checkpoint_name, device, use_mirroring, tile_step_size, loaded)
        folder_options = {"folds": folds, "checkpoint_name": checkpoint_name, "device": device,
                          "use_mirroring": use_mirroring, "tile_step_size": tile_step_size,
                          "diffusion_options": sampling.replace(presegmenter=presegmenter),
                          "case_scores": case_scores}
        return cls(predictor, folder, pre, folder_options)

    # ------------------------------------------------------------------ arrays
    def read_images(self, files: Sequence[str | Path]) -> tuple[np.ndarray, dict]:
        """One case's channel files read with the plans' image reader: (image (C, *spatial), properties)."""
        reader = self.predictor.plans_manager.image_reader_writer_class()
        with nnunet_output_to_log(logger):
            return reader.read_images([str(f) for f in files])

    def write_segmentation(self, prediction: Prediction, output_file: str | Path) -> None:
        """Write `prediction.segmentation` with the plans' writer (geometry from its properties)."""
        writer = self.predictor.plans_manager.image_reader_writer_class()
        writer.write_seg(prediction.segmentation, str(output_file), prediction.properties)

    def predict_array(self, image: np.ndarray, spacing: Sequence[float] | dict,
                      presegmentation: np.ndarray | None = None) -> Prediction:
        """Predict one image held in memory.

        Args:
            image: (C, *spatial) as the plans' image reader returns it (`read_images`); for 2D
                models (C, 1, Y, X) as nnU-Net takes it, or (C, Y, X) with a 2-value spacing.
            spacing: the voxel spacing in the image's axis order, or nnU-Net's properties dict
                (at least ``{"spacing": ...}``, e.g. the one `read_images` returns).
            presegmentation: PD-DDPM without a presegmenter: the pre-segmentation in the image's
                layout, probabilities (C, *spatial) or a label map (*spatial).

        Raises:
            UserInputError: the image or spacing does not fit the model (every problem named).
        """
        image, properties, squeeze = self._check_input(image, spacing)
        original_properties = copy.deepcopy(properties)
        predictor = self.predictor
        case = "array"
        if isinstance(predictor, DiffusionPredictor):  # PD-DDPM's start, handed over in memory
            starts = self.presegmenter is not None or presegmentation is not None
            predictor.presegmentation_in_memory = ({case: self._presegmentation(image, original_properties,
                                                                                presegmentation, squeeze)}
                                                   if starts else None)
        elif presegmentation is not None:
            raise UserInputError(f"a presegmentation starts a diffusion model's sampler (PD-DDPM); "
                                 f"{self.model_folder or 'this model'} is not a diffusion model")
        predictor.check_cases([case])
        preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
        with nnunet_output_to_log(logger):
            data, _, properties = preprocessor.run_case_npy(image, None, properties, predictor.plans_manager,
                                                            predictor.configuration_manager, predictor.dataset_json)
            data = predictor.prepare_case(case, torch.from_numpy(data), properties)
            logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
            segmentation, probabilities = self._to_image(logits, properties)
        uncertainty = scores = None
        if isinstance(predictor, DiffusionPredictor):
            if predictor.uncertainty:
                maps = predictor.uncertainty_in_original(logits, properties)
                uncertainty = {name: m.astype(np.float32) for name, m in zip(UNCERTAINTY_MAPS, maps)}
            if predictor.keep_samples and predictor.last_samples is not None and len(predictor.last_samples) > 1:
                scores = predictor_case_scores(predictor.last_samples, logits, properties,
                                               predictor.configuration_manager, predictor.dataset_json)
        if squeeze:
            segmentation, probabilities = segmentation[0], probabilities[:, 0]
            uncertainty = None if uncertainty is None else {k: v[0] for k, v in uncertainty.items()}
        return Prediction(segmentation, probabilities, uncertainty, scores, properties)

    def _to_image(self, logits: torch.Tensor, properties: dict) -> tuple[np.ndarray, np.ndarray]:
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        p = self.predictor
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, p.plans_manager, p.configuration_manager, p.label_manager, properties, return_probabilities=True)

    def _check_input(self, image, spacing) -> tuple[np.ndarray, dict, bool]:
        """The image as nnU-Net takes it (float32, C first), its properties, and whether a 2D image
        came without nnU-Net's singleton axis (then the results drop it again)."""
        problems = []
        image = np.asarray(image)
        channels = len(self.predictor.dataset_json["channel_names"])
        dims = len(self.predictor.configuration_manager.patch_size)
        properties = copy.deepcopy(dict(spacing)) if isinstance(spacing, dict) else {"spacing": spacing}
        values = properties.get("spacing")
        try:
            values = [float(s) for s in values]
        except (TypeError, ValueError):
            problems.append(f"the spacing must be a sequence of numbers, got {values!r}")
            values = []
        squeeze = dims == 2 and image.ndim == 3 and len(values) == 2
        if squeeze:  # nnU-Net's reader gives 2D images a first axis of 999 times the largest spacing
            image, values = image[:, None], [999.0 * max(values), *values]
        if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
            problems.append(f"the image must hold real numbers, got dtype {image.dtype}")
        if image.ndim != 4:
            problems.append(f"the image must be (C, {'1, Y, X' if dims == 2 else 'Z, Y, X'})"
                            + (" or (C, Y, X) with a 2-value spacing" if dims == 2 else "")
                            + f", got shape {image.shape}")
        elif image.shape[0] != channels:
            problems.append(f"the model takes {channels} channel(s) ({self.predictor.dataset_json['channel_names']}), "
                            f"the image has {image.shape[0]} (the first axis)")
        if values and image.ndim >= 2 and len(values) != image.ndim - 1:
            problems.append(f"the spacing has {len(values)} values, the image {image.ndim - 1} spatial axes")
        if values and not all(np.isfinite(v) and v > 0 for v in values):
            problems.append(f"the spacing must be positive, got {values}")
        if not problems and not np.all(np.isfinite(image)):
            problems.append("the image holds NaN or Inf voxels")
        if problems:
            raise UserInputError("predict_array: " + "; ".join(problems))
        properties["spacing"] = values
        return image.astype(np.float32, copy=False), properties, squeeze

    def _presegmentation(self, image: np.ndarray, properties: dict, given, squeeze: bool) -> np.ndarray:
        """PD-DDPM's start in the image's layout (C, *spatial): the presegmenter's probabilities, or
        the given probabilities / label map (one-hot, as `load_presegmentation` reads label files)."""
        num_classes = self.predictor.label_manager.num_segmentation_heads
        if given is None:
            return self.presegmenter.predict_array(image, properties).probabilities
        given = np.asarray(given)
        if given.ndim == image.ndim - 1 - squeeze:  # a label map
            labels = given.astype(np.int64)
            if labels.min() < 0 or labels.max() >= num_classes:
                raise UserInputError(f"presegmentation: label values {labels.min()}..{labels.max()} outside "
                                     f"0..{num_classes - 1}")
            given = np.moveaxis(np.eye(num_classes, dtype=np.float32)[labels], -1, 0)
        if squeeze:
            given = given[:, None]
        if given.shape != (num_classes, *image.shape[1:]):
            raise UserInputError(f"presegmentation: shape {given.shape} does not fit the image "
                                 f"({num_classes} classes x {image.shape[1:]})")
        return given.astype(np.float32)

    # ------------------------------------------------------------------ folders
    def predict_files(self, inputs: str | Path | Sequence, output_folder: str | Path, save_probabilities: bool = False,
                      overwrite: bool = False, continue_prediction: bool = False,
                      overview: bool = False) -> FolderPrediction:
        """Predict a folder as `dnnunet predict -m MODEL` does, with this predictor's settings.

        The model is loaded again from its folder (the same code as the CLI), so the files equal
        the CLI's; a folder that holds results is refused unless `overwrite` or
        `continue_prediction` (see docs/user_guide.md, predict).

        Args:
            inputs: a folder of images named as nnU-Net names them (CASE_0000.nii.gz, ...), a
                list of such files, or a list of per-case lists of channel files (any names; the
                case is the first file's name without `_0000` and the ending).
            output_folder: the prediction folder.
            save_probabilities: also write CASE.npz / CASE.pkl.
            overwrite: replace an output folder that holds results, whole.
            continue_prediction: keep the finished cases of a folder predicted with the same
                settings (an input folder only: a list is staged in a new temporary folder).
            overview: PNG overviews and the contact sheet (diffusion models, several samples).

        Raises:
            UserInputError: no model folder, bad inputs, or an output folder that holds results.
        """
        if self.model_folder is None:
            raise UserInputError("predict_files needs a Predictor made by Predictor.from_model_folder")
        options = dict(self._folder_options)
        run = dict(save_probabilities=save_probabilities, overwrite=overwrite, continue_prediction=continue_prediction,
                   overview=overview, **options)
        if isinstance(inputs, (str, Path)):
            return predict_and_review(self.model_folder, inputs, output_folder, **run)
        if continue_prediction:
            raise UserInputError("continue_prediction needs an input folder: a list of files is staged in a new "
                                 "temporary folder each run, so the settings never match")
        with tempfile.TemporaryDirectory(prefix="dnnunet-inputs-") as staged:
            self._stage_files(inputs, Path(staged))
            return predict_and_review(self.model_folder, staged, output_folder, **run)

    def _stage_files(self, inputs: Sequence, folder: Path) -> None:
        """Links named CASE_XXXX<ending> in `folder` to the given files (every problem named at once)."""
        ending = self.predictor.dataset_json["file_ending"]
        channels = len(self.predictor.dataset_json["channel_names"])

        def stem(f: Path) -> str:
            return f.name[:-len(ending)] if f.name.endswith(ending) else f.name

        cases: dict[str, list[Path]] = {}
        problems = []
        if all(isinstance(i, (str, Path)) for i in inputs):  # nnU-Net names: CASE_XXXX, grouped by case
            for f in sorted(Path(i) for i in inputs):
                s = stem(f)
                if len(s) < 6 or s[-5] != "_" or not s[-4:].isdigit():
                    problems.append(f"{f}: not named CASE_XXXX{ending} (XXXX the channel); give a list of "
                                    f"per-case lists for other names")
                cases.setdefault(s[:-5], []).append(f)
        else:
            for files in inputs:
                files = [Path(f) for f in files]
                case = stem(files[0]) if files else "?"
                case = case[:-5] if case.endswith("_0000") else case
                if case in cases:
                    problems.append(f"case {case} is given twice")
                cases[case] = files
        for case, files in cases.items():
            if len(files) != channels:
                problems.append(f"case {case}: {len(files)} file(s), the model takes {channels} channel(s)")
            problems += [f"{f}: does not exist" for f in files if not f.is_file()]
            problems += [f"{f}: does not end with the dataset's file ending {ending}" for f in files
                         if not f.name.endswith(ending)]
            for c, f in enumerate(files):
                if f.is_file():
                    (folder / f"{case}_{c:04d}{ending}").symlink_to(f.absolute())
        if not cases:
            problems.append("no input files given")
        if problems:
            raise UserInputError("predict_files: " + "; ".join(problems))
