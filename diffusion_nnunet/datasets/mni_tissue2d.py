"""``mni-tissue2d``: real MR: axial slices of the MNI152 2009a T1 template with tissue labels.

Data: the ICBM 2009a nonlinear symmetric template that the nilearn package ships
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, 1 mm,
197 x 233 x 189). Nothing is downloaded; nilearn must be installed.

Labels (per 2 mm voxel):

- **Brain mask**: the template T1 shipped by nilearn is already skull-stripped (zero outside
  the brain, and the mask includes ventricles and sulcal CSF), so the brain mask is
  ``T1 > 0``; after downsampling a voxel is brain when at least half of its 1 mm voxels are.
  GM/WM probability that leaks outside this mask is ignored.
- Inside the mask: argmax over (CSF-other = 1 - p_GM - p_WM, p_GM, p_WM), giving
  **1 = CSF/other** (ventricles, sulcal CSF, non-brain-tissue inside the mask),
  **2 = grey matter**, **3 = white matter**; outside: **0 = background**.

Images: the T1 and the probability maps are block-averaged over 2 x 2 x 2 voxels (2 mm
isotropic, 98 x 116 pixels per slice, 94 slices), so each case is a real 2 mm-thick axial
slice; rows run anterior (top) to posterior. Images are float32 T1 intensities, unmodified
otherwise (no augmentation: the training data stay real), written as 2D NIfTI with 2 x 2 mm spacing.

Cases and split: each slice with at least ``MIN_BRAIN_PIXELS`` brain pixels is a case named
``mni_zNNN`` (NNN = index of the 2 mm slice, inferior to superior). Slices are assigned in
slabs along z: ``SLAB`` slices to training, ``GAP`` slices dropped, ``SLAB`` slices to test,
``GAP`` dropped, and so on, so no test slice has a training neighbour closer than
``GAP + 1`` slices. With no counts given every eligible slice is used (the seed then has
no effect); given counts draw that many slices from each side at random (seeded), sorted.

Test slices are, by default, degraded per case (contrast, noise, a bias field:
`datasets.difficulty`) so that they vary in difficulty; ``test_difficulty="uniform"`` keeps
them as the template has them.
"""
from __future__ import annotations

import functools
import importlib.resources
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from diffusion_nnunet.datasets.base import Case, DatasetGenerator
from diffusion_nnunet.datasets.difficulty import bias_field
from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)

TEMPLATE_FILES = {kind: f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")}
FACTOR = 2  # downsampling factor per axis (1 mm -> 2 mm)
SPACING = (2.0, 2.0)
LABELS = {"background": 0, "csf_other": 1, "gm": 2, "wm": 3}
MIN_BRAIN_PIXELS = 400  # 16 cm^2 at 2 x 2 mm
SLAB = 10
GAP = 2


def template_path(kind: str) -> Path:
    """Path of one template file inside the installed nilearn package.

    Args:
        kind: ``"t1"``, ``"gm"`` or ``"wm"``.

    Raises:
        UserInputError: nilearn is not installed or does not ship the file.
    """
    try:
        path = Path(str(importlib.resources.files("nilearn") / "datasets" / "data" / TEMPLATE_FILES[kind]))
    except ModuleNotFoundError as error:
        raise UserInputError("mni-tissue2d needs the nilearn package: pip install nilearn") from error
    if not path.is_file():
        raise UserInputError(f"nilearn does not ship {TEMPLATE_FILES[kind]} (looked in {path.parent})")
    return path


def _block_mean(array: np.ndarray) -> np.ndarray:
    """Average over FACTOR^3 blocks, cropping trailing voxels that do not fill a block."""
    shape = tuple(s // FACTOR for s in array.shape)
    cropped = array[: shape[0] * FACTOR, : shape[1] * FACTOR, : shape[2] * FACTOR]
    return cropped.reshape(shape[0], FACTOR, shape[1], FACTOR, shape[2], FACTOR).mean(axis=(1, 3, 5))


@functools.lru_cache(maxsize=1)
def load_volumes() -> tuple[np.ndarray, np.ndarray]:
    """Downsampled T1 and tissue labels, both ``(94, 116, 98)`` = (z, y, x), read-only.

    Rows (y) are flipped so that anterior is at the top of each slice.
    """
    arrays = {kind: sitk.GetArrayFromImage(sitk.ReadImage(str(template_path(kind)))).astype(np.float32)
              for kind in TEMPLATE_FILES}
    t1 = _block_mean(arrays["t1"])
    brain = _block_mean((arrays["t1"] > 0).astype(np.float32)) >= 0.5
    gm, wm = _block_mean(arrays["gm"] / 255.0), _block_mean(arrays["wm"] / 255.0)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    label = np.where(brain, 1 + np.argmax(np.stack([csf, gm, wm]), axis=0), 0).astype(np.uint8)
    # The template's y axis has direction -1 in LPS: row 0 is the most posterior row.
    t1, label = np.ascontiguousarray(t1[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    t1.setflags(write=False)
    label.setflags(write=False)
    return t1, label


def split_slices() -> tuple[list[int], list[int]]:
    """Eligible slice indices for training and test, by alternating slabs with gaps.

    Returns:
        ``(train indices, test indices)``, each sorted.
    """
    _, label = load_volumes()
    eligible = [z for z in range(label.shape[0]) if np.count_nonzero(label[z]) >= MIN_BRAIN_PIXELS]
    first, period = eligible[0], 2 * (SLAB + GAP)
    train, test = [], []
    for z in eligible:
        position = (z - first) % period
        if position < SLAB:
            train.append(z)
        elif SLAB + GAP <= position < 2 * SLAB + GAP:
            test.append(z)
    logger.debug("MNI slices: %d eligible, %d training, %d test", len(eligible), len(train), len(test))
    return train, test


def _choose(indices: list[int], count: int | None, rng: np.random.Generator, what: str) -> list[int]:
    if count is None:
        return indices
    if count > len(indices):
        raise UserInputError(f"mni-tissue2d has {len(indices)} {what} slices; {count} requested")
    return sorted(int(i) for i in rng.choice(indices, size=count, replace=False))


def cases(num_train: int | None, num_test: int | None, seed: int) -> Iterator[Case]:
    """Yield the slice cases (``mni_z042`` ...), training slabs first.

    Args:
        num_train: number of training slices, None for all eligible ones.
        num_test: number of test slices, None for all eligible ones.
        seed: random seed for the subsampling (unused when both counts are None).
    """
    t1, label = load_volumes()
    train, test = split_slices()
    rng = np.random.default_rng([int(seed), 2])
    for split, indices in (("Tr", _choose(train, num_train, rng, "training")),
                           ("Ts", _choose(test, num_test, rng, "test"))):
        for z in indices:
            yield Case(f"mni_z{z:03d}", split, (t1[z].copy(),), label[z].copy(), SPACING)


GENERATOR = DatasetGenerator(
    name="mni-tissue2d",
    folder_name="MNITissue2D",
    default_id=503,
    channel_names={"0": "T1"},
    labels=LABELS,
    default_num_train=None,
    default_num_test=None,
    cases=cases,
    description="Axial 2 mm slices of the MNI152 2009a T1 template; labels background / CSF-other / GM / WM "
                "by argmax of the template's tissue probabilities inside its brain mask. Train and test are "
                f"alternating slabs of {SLAB} slices separated by {GAP}-slice gaps.",
    reference="ICBM 2009a Nonlinear Symmetric template (Fonov et al., NeuroImage 2011), as shipped by nilearn",
    licence="see the MNI ICBM152 template licence (copyright McConnell Brain Imaging Centre)",
    test_artefact=bias_field,
    degrade_window=(0.0, float("inf")),
    value_range=(0.0, float("inf")),
)
