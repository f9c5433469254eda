"""Sparsely annotated raw datasets: an ``ignore`` label over the voxels nobody annotated.

``dnnunet make-dataset NAME --sparse-labels FRACTION`` writes any generator's dataset and then,
in every training label file, keeps a seeded random `FRACTION` of square (cubic in 3D) blocks of
`BLOCK` voxels and sets every other voxel to the ignore value, ``max(label values) + 1`` (nnU-Net
v2 requires the ignore label to be the highest value). dataset.json's ``labels`` gains
``"ignore": value`` and ``sparse_labels`` records the fraction and the block size. Test labels
stay dense: evaluation compares against full annotations.

Blocks rather than single voxels: annotators mark patches, slices or scribbles, so annotated and
ignored voxels come in connected pieces, and a block keeps a structure's border context.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dnnunet_core.atomic import atomic_path, write_json
from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)

SPARSE_KEY = "sparse_labels"
BLOCK = 16


def check_fraction(fraction: float) -> float:
    """The annotated share, checked to lie in (0, 1).

    Raises:
        UserInputError: outside (0, 1) (1 would be a dense dataset: leave the option out).
    """
    if math.isnan(fraction) or not 0 < fraction < 1:
        raise UserInputError(f"--sparse-labels: the annotated fraction must be in (0, 1), got {fraction} "
                             "(leave the option out for dense labels)")
    return float(fraction)


def annotated_blocks(shape: tuple[int, ...], fraction: float, rng: np.random.Generator, block: int = BLOCK) -> np.ndarray:
    """Boolean mask of `shape`: a random ``round(fraction * blocks)`` (at least 1) of the blocks.

    Args:
        shape: the label array's shape.
        fraction: annotated share of the blocks, in (0, 1).
        rng: random generator.
        block: block edge in voxels (clipped to each axis' length).
    """
    grid = tuple(math.ceil(n / min(block, n)) for n in shape)
    total = int(np.prod(grid))
    chosen = rng.choice(total, size=min(total, max(1, int(math.floor(fraction * total + 0.5)))), replace=False)
    keep = np.zeros(total, bool)
    keep[chosen] = True
    keep = keep.reshape(grid)
    for axis, n in enumerate(shape):
        keep = np.repeat(keep, min(block, n), axis=axis)
    return keep[tuple(slice(0, n) for n in shape)]


def apply_sparse_labels(folder: Path, fraction: float, seed: int, block: int = BLOCK) -> int:
    """Turn the training labels of a complete raw dataset folder sparse, in place; return the ignore value.

    Args:
        folder: raw dataset folder (dataset.json, labelsTr).
        fraction: annotated share of the blocks, in (0, 1).
        seed: random seed (a stream separate from the generators' and the labelled-fraction choice).
        block: block edge in voxels.

    Raises:
        UserInputError: bad fraction, or dataset.json already declares an ignore label.
    """
    folder = Path(folder)
    check_fraction(fraction)
    meta = json.loads((folder / "dataset.json").read_text())
    labels = meta["labels"]
    if "ignore" in labels:
        raise UserInputError(f"{folder / 'dataset.json'}: already declares an ignore label ({labels['ignore']})")
    values = [v for value in labels.values() for v in (value if isinstance(value, (list, tuple)) else [value])]
    ignore = int(max(values)) + 1
    ending = meta["file_ending"]
    annotated = []
    for index, path in enumerate(sorted(p for p in (folder / "labelsTr").iterdir() if p.name.endswith(ending))):
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        keep = annotated_blocks(array.shape, fraction, np.random.default_rng([int(seed), 19, index]), block)
        annotated.append(keep.mean())
        out = sitk.GetImageFromArray(np.where(keep, array, ignore).astype(array.dtype))
        out.CopyInformation(image)
        with atomic_path(path) as tmp:
            sitk.WriteImage(out, str(tmp), True)
    meta["labels"] = {**labels, "ignore": ignore}
    meta[SPARSE_KEY] = {"annotated_fraction": fraction, "block": block, "ignore": ignore}
    write_json(meta, folder / "dataset.json")
    logger.info("%s: training labels sparse, %.0f %% of the voxels annotated, the rest ignore (%d)", folder.name,
                100 * float(np.mean(annotated)) if annotated else 0.0, ignore)
    return ignore
