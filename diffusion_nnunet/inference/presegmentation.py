"""Pre-segmentations for PD-DDPM (methods.md section 4), and moving voxel maps between the
original image and nnU-Net's preprocessed space.

A pre-segmentation folder holds, per case, nnU-Net's probabilities (`CASE.npz` written with
`--save-probabilities`, in the original image's array layout) or a label map
(`CASE.nii.gz`). Either is mapped like nnU-Net maps an image: transpose, crop to the image's
bounding box, resample to the preprocessed shape (linearly, as nnU-Net resamples
probabilities), so it lines up voxel by voxel with the image the diffusion model sees.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

from dnnunet_core.errors import InvalidDataError


def load_presegmentation(folder: str | Path, case: str, file_ending: str, num_classes: int,
                         region_values: tuple[tuple[int, ...], ...] = ()) -> np.ndarray:
    """Class probabilities (C, *image array shape) of one case; label maps become one-hot.

    Args:
        folder: the pre-segmentation folder.
        case: case identifier.
        file_ending: the dataset's file ending (for label maps).
        num_classes: C, background included (region-based: the number of regions).
        region_values: region-based models: the label values of each region; a label map then
            becomes one {0, 1} channel per region (CASE.npz holds region probabilities already).
    """
    folder = Path(folder)
    npz, label = folder / f"{case}.npz", folder / f"{case}{file_ending}"
    if npz.is_file():
        probs = np.load(npz)["probabilities"].astype(np.float32)
        if probs.shape[0] != num_classes:
            raise InvalidDataError(npz, f"has {probs.shape[0]} classes, the diffusion model {num_classes}")
        return probs
    if label.is_file():
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label))).astype(np.int64)
        if region_values:
            probs = np.stack([np.isin(seg, values) for values in region_values]).astype(np.float32)
            return probs[:, None] if probs.ndim == 3 else probs
        if seg.min() < 0 or seg.max() >= num_classes:
            raise InvalidDataError(label, f"label values {seg.min()}..{seg.max()} outside 0..{num_classes - 1}")
        onehot = np.eye(num_classes, dtype=np.float32)[seg]
        probs = np.moveaxis(onehot, -1, 0)
        return probs[:, None] if probs.ndim == 3 else probs  # 2D label maps: add nnU-Net's z axis
    raise InvalidDataError(folder, f"no pre-segmentation for case {case} ({npz.name} or {label.name})")


def to_preprocessed(probabilities: np.ndarray, properties: dict, plans_manager, configuration_manager,
                    target_shape) -> np.ndarray:
    """Map probabilities from the original image's layout to the preprocessed image's voxels.

    Args:
        probabilities: (C, *original array shape).
        properties: the image's preprocessing properties (from nnU-Net's `run_case`).
        plans_manager: the diffusion model's plans.
        configuration_manager: its configuration.
        target_shape: spatial shape of the preprocessed image.
    """
    data = probabilities.transpose([0, *[i + 1 for i in plans_manager.transpose_forward]])
    if tuple(data.shape[1:]) != tuple(properties["shape_before_cropping"]):
        raise ValueError(f"pre-segmentation shape {probabilities.shape[1:]} does not match the image")
    data = data[bounding_box_to_slice([[0, data.shape[0]]] + [list(b) for b in properties["bbox_used_for_cropping"]])]
    current = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    target = list(configuration_manager.spacing)
    if len(target) < len(current):  # 2D configurations keep the slice spacing
        target = [current[0]] + target
    out = configuration_manager.resampling_fn_probabilities(data, tuple(target_shape), current, target)
    out = np.clip(out, 0, None)
    return out / np.maximum(out.sum(0, keepdims=True), 1e-8)


def to_original(maps: np.ndarray, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """The inverse of `to_preprocessed` for continuous maps (M, *preprocessed) -> (M, *original array
    shape): resample to the cropped shape, place in the uncropped image (0 outside), transpose back,
    as nnU-Net exports probabilities."""
    current = list(configuration_manager.spacing)
    original = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    if len(current) < len(original):
        current = [original[0]] + current
    cropped = configuration_manager.resampling_fn_probabilities(
        maps, tuple(properties["shape_after_cropping_and_before_resampling"]), current, original)
    full = np.zeros((maps.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    full[bounding_box_to_slice([[0, maps.shape[0]]] + [list(b) for b in properties["bbox_used_for_cropping"]])] = cropped
    return full.transpose([0, *[i + 1 for i in plans_manager.transpose_backward]])


def samples_to_original(samples, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """Per-sample probabilities (R, C, *preprocessed), e.g. `DiffusionPredictor.last_samples`, in the
    original image's array layout (R, C, *original), resampled as nnU-Net resamples probabilities.

    Args:
        samples: tensor or array (R, C, *preprocessed spatial).
        properties: the case's preprocessing properties (from nnU-Net's `run_case`).
        plans_manager: the model's plans.
        configuration_manager: its configuration.
    """
    samples = samples.detach().float().cpu().numpy() if hasattr(samples, "detach") else np.asarray(samples, np.float32)
    runs, classes = samples.shape[:2]
    flat = to_original(samples.reshape(runs * classes, *samples.shape[2:]), properties, plans_manager,
                       configuration_manager)
    return flat.reshape(runs, classes, *flat.shape[1:])
