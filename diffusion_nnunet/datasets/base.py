"""The contract between a dataset generator and the shared raw-dataset writer.

A generator only *computes* cases (arrays plus geometry); `raw_writer` turns them into files
and `make.py` owns the folder logic. Keeping the three apart lets each generator stay a pure,
seed-deterministic function that is easy to test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np

Split = Literal["Tr", "Ts"]


@dataclass(frozen=True)
class Case:
    """One training or test case.

    Args:
        case_id: nnU-Net case identifier (file stem without channel suffix), e.g. ``us_0003``.
        split: ``"Tr"`` (imagesTr/labelsTr) or ``"Ts"`` (imagesTs/labelsTs).
        channels: one array per input channel, all of the same shape: ``(H, W)`` for 2D
            datasets, ``(Z, Y, X)`` for 3D ones (numpy / SimpleITK array axis order).
        label: integer label map with the shape of the channels.
        spacing: voxel size in mm in the *array* axis order, i.e. ``(sy, sx)`` or
            ``(sz, sy, sx)``. The writer reverses it for SimpleITK, whose ``SetSpacing``
            takes ``(x, y[, z])``.
    """

    case_id: str
    split: Split
    channels: tuple[np.ndarray, ...]
    label: np.ndarray
    spacing: tuple[float, ...]


@dataclass(frozen=True)
class DatasetGenerator:
    """Static description of a dataset plus the function that produces its cases.

    Args:
        name: command-line name, e.g. ``synthetic-us2d``.
        folder_name: the part after ``DatasetXXX_`` in the nnU-Net raw folder name.
        default_id: nnU-Net dataset id used when the caller gives none.
        channel_names: dataset.json ``channel_names`` (index as string -> modality name).
            nnU-Net picks its intensity normalisation from these names ("CT" -> CT scheme).
        labels: dataset.json ``labels`` (name -> integer), including ``"background": 0``; for
            region-based datasets name -> tuple of the label values a region holds.
        default_num_train: training cases when the caller gives none (None: generator decides).
        default_num_test: test cases when the caller gives none (None: generator decides).
        cases: ``cases(num_train, num_test, seed)`` yielding `Case` objects.
        description: free text for dataset.json.
        reference: provenance for dataset.json.
        licence: licence of the data for dataset.json.
        test_artefact: ``artefact(image, level, rng) -> image``, the modality's artefact for
            test cases of varied difficulty (`datasets.difficulty`); None: no artefact.
        value_range: the images' value range (degraded test images are clipped to it).
        degrade_window: the intensity interval that test-case degradation changes (CT: soft tissue,
            so air and bone keep their HU; MR: above the skull-stripped zero background); None: all.
        test_contrast: whether hard test cases also lose contrast (not in CT, whose HU are absolute).
        regions_class_order: dataset.json ``regions_class_order`` of a region-based dataset
            (the label value each region paints when a prediction is turned into a label map);
            None: classes.
        shaped_cases: ``shaped_cases(num_train, num_test, seed, shape)``: the cases at an array
            shape the caller chooses (``make-dataset --shape``); None: the generator has one geometry.
    """

    name: str
    folder_name: str
    default_id: int
    channel_names: dict[str, str]
    labels: dict[str, int | tuple[int, ...]]
    default_num_train: int | None
    default_num_test: int | None
    cases: Callable[[int | None, int | None, int], Iterator[Case]]
    description: str = ""
    reference: str = ""
    licence: str = field(default="")
    test_artefact: Callable | None = None
    value_range: tuple[float, float] | None = None
    degrade_window: tuple[float, float] | None = None
    test_contrast: bool = True
    regions_class_order: tuple[int, ...] | None = None
    shaped_cases: Callable[[int | None, int | None, int, tuple[int, ...]], Iterator[Case]] | None = None


def case_rng(seed: int, split: Split, index: int) -> np.random.Generator:
    """A random generator private to one case.

    Each case draws from its own stream, so case ``k`` is identical whatever the number of
    cases requested, and train and test streams never overlap.

    Args:
        seed: the dataset seed.
        split: ``"Tr"`` or ``"Ts"``.
        index: case index within the split.
    """
    return np.random.default_rng([int(seed), 0 if split == "Tr" else 1, int(index)])


def simulated_cases(prefix: str, simulate: Callable[[np.random.Generator], tuple],
                    spacing) -> Callable[[int | None, int | None, int], Iterator[Case]]:
    """The `cases` function of a generator that simulates one case per random stream.

    Args:
        prefix: case names are ``{prefix}_tr_0000`` ... and ``{prefix}_ts_0000`` ...
        simulate: draws (image, label) from a case's random generator; image may be a tuple of
            channels.
        spacing: voxel spacing of every case.
    """

    def cases(num_train: int | None, num_test: int | None, seed: int) -> Iterator[Case]:
        counts: dict[Split, int] = {"Tr": int(num_train or 0), "Ts": int(num_test or 0)}
        for split, count in counts.items():
            for index in range(count):
                image, label = simulate(case_rng(seed, split, index))
                channels = tuple(image) if isinstance(image, (tuple, list)) else (image,)
                yield Case(f"{prefix}_{split.lower()}_{index:04d}", split, channels, label, spacing)

    return cases
