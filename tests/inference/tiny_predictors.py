"""Predictors built by hand for fast tests: tiny plans, a one-layer network, no training."""
from __future__ import annotations

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from diffusion_nnunet.configs.inference_spec import InferenceSpec
from diffusion_nnunet.inference.diffusion_predictor import DiffusionPredictor
from diffusion_nnunet.inference.predictor import DnnPredictor

DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
NUM_CLASSES = 3


def tiny_plans(patch_size, batch_size: int = 2) -> dict:
    dim = len(patch_size)
    configuration = "2d" if dim == 2 else "3d_fullres"
    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    return {"dataset_name": "Dataset999_Tiny", "plans_name": "tinyPlans", "image_reader_writer": "SimpleITKIO",
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [8, 32, 32],
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "label_manager": "LabelManager",
            "experiment_planner_used": "tiny",
            "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0, "percentile_00_5": -3.0,
                                                                   "percentile_99_5": 3.0}},
            "configurations": {configuration: {
                "data_identifier": "tiny", "preprocessor_name": "DefaultPreprocessor", "batch_size": batch_size,
                "patch_size": list(patch_size), "median_image_size_in_voxels": [32] * dim, "spacing": [1.0] * dim,
                "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling, "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
                "resampling_fn_probabilities_kwargs": resampling, "batch_dice": True,
                "architecture": {"network_class_name": "tiny", "arch_kwargs": {}, "_kw_requires_import": []}}}}


class TinySegmenter(torch.nn.Module):
    """nnU-Net-like: image -> logits (a 3x3 convolution, so tiles see their neighbourhood)."""

    def __init__(self, dim: int, in_channels: int = 1, classes: int = NUM_CLASSES):
        super().__init__()
        torch.manual_seed(0)
        self.conv = (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)(in_channels, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class TinyDenoiser(torch.nn.Module):
    """(image, noisy mask) and t -> logits; records the batch size and input dtype of every call."""

    def __init__(self, dim: int, classes: int = NUM_CLASSES):
        super().__init__()
        torch.manual_seed(0)
        self.conv = (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)(1 + classes, classes, 3, padding=1)
        self.calls: list[tuple[int, torch.dtype, bool]] = []

    def forward(self, x, t):
        self.calls.append((x.shape[0], x.dtype, torch.is_autocast_enabled()))
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.conv(x) * (1 + t.reshape(shape)) + 4 * (2 * x[:, 1:] - 1)


def _initialise(predictor, network, patch_size, batch_size, mirror_axes):
    plans = tiny_plans(patch_size, batch_size)
    pm = PlansManager(plans)
    cm = pm.get_configuration(next(iter(plans["configurations"])))
    predictor.manual_initialization(network, pm, cm, [network.state_dict()], DATASET_JSON, "Tiny", mirror_axes)
    return predictor


def tiny_nnunet_predictor(patch_size=(16, 16), batch_size: int = 2, mirror_axes=(0, 1), **kwargs) -> DnnPredictor:
    predictor = DnnPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror_axes is not None,
                             device=torch.device("cpu"), verbose=False, allow_tqdm=False,
                             perform_everything_on_device=False, **kwargs)
    return _initialise(predictor, TinySegmenter(len(patch_size)), patch_size, batch_size, mirror_axes)


def tiny_diffusion_predictor(patch_size=(16, 16), batch_size: int = 2, mirror_axes=(0, 1), timesteps: int = 5,
                             **kwargs) -> DiffusionPredictor:
    predictor = DiffusionPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror_axes is not None,
                                   device=torch.device("cpu"), verbose=False, allow_tqdm=False,
                                   perform_everything_on_device=False, **kwargs)
    _initialise(predictor, TinyDenoiser(len(patch_size)), patch_size, batch_size, mirror_axes)
    predictor.apply_spec(InferenceSpec(predictor="diffusion", timesteps=timesteps))
    return predictor
