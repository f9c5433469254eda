"""Create an nnU-Net raw dataset folder from a registered generator, safely.

The dataset is written into a hidden temporary sibling folder (``.DatasetXXX_Name.tmp-*``,
which nnU-Net's ``DatasetXXX_`` lookup never matches) and renamed into place only when
complete, so a half-written dataset never appears under its real name.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from diffusion_nnunet.datasets.base import DatasetGenerator
from diffusion_nnunet.datasets.difficulty import TEST_DIFFICULTIES, vary_test_cases
from diffusion_nnunet.datasets.keep_classes import apply_keep_classes, resolve_kept_classes
from diffusion_nnunet.datasets.partial_labels import apply_labelled_fraction, num_labelled
from diffusion_nnunet.datasets.raw_writer import write_cases
from diffusion_nnunet.datasets.sparse_labels import apply_sparse_labels, check_fraction
from dnnunet_core.atomic import write_json
from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)


def dataset_folder_name(dataset_id: int, folder_name: str) -> str:
    """nnU-Net's folder name, e.g. ``Dataset501_SyntheticUS2D``.

    Args:
        dataset_id: nnU-Net dataset id (1-999).
        folder_name: the dataset's name part.
    """
    return f"Dataset{dataset_id:03d}_{folder_name}"


def _check_arguments(dataset_id: int, num_train: int | None, num_test: int | None, seed: int,
                     test_difficulty: str = "varied") -> None:
    if test_difficulty not in TEST_DIFFICULTIES:
        raise UserInputError(f"test difficulty must be one of {', '.join(TEST_DIFFICULTIES)}, got {test_difficulty!r}")
    if not isinstance(dataset_id, int) or isinstance(dataset_id, bool) or not 1 <= dataset_id <= 999:
        raise UserInputError(f"dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    if num_train is not None and num_train < 1:
        raise UserInputError(f"number of training cases must be at least 1, got {num_train}")
    if num_test is not None and num_test < 0:
        raise UserInputError(f"number of test cases must not be negative, got {num_test}")
    if seed < 0:
        raise UserInputError(f"seed must not be negative, got {seed}")


def _check_destination(raw_root: Path, dataset_id: int, destination: Path, overwrite: bool) -> None:
    others = sorted(p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p != destination)
    if others:
        raise UserInputError(
            f"dataset id {dataset_id} is already used by {', '.join(others)} in {raw_root}; "
            "choose another id or remove that folder")
    if destination.exists() and not overwrite:
        raise UserInputError(f"{destination} already exists; pass --overwrite to replace it")


def build_dataset(generator: DatasetGenerator, raw_root: Path, dataset_id: int | None = None,
                  num_train: int | None = None, num_test: int | None = None, seed: int = 0,
                  overwrite: bool = False, labelled_fraction: float | None = None,
                  test_difficulty: str = "varied", keep_classes: list[str] | None = None,
                  sparse_labels: float | None = None, shape: tuple[int, ...] | None = None) -> Path:
    """Write ``raw_root/DatasetXXX_Name`` from `generator`; return the folder.

    Args:
        generator: the dataset to generate.
        raw_root: nnU-Net raw folder (created if missing).
        dataset_id: nnU-Net dataset id; the generator's default if None.
        num_train: training cases; the generator's default if None.
        num_test: test cases; the generator's default if None.
        seed: random seed; the same seed gives identical files' contents.
        overwrite: replace an existing folder of the same name.
        labelled_fraction: keep the labels of only this share of the training cases (a seeded
            choice); the others become unlabelled images (``datasets.partial_labels``). None: all.
        test_difficulty: ``"varied"``: degrade each test case by a difficulty drawn per case
            (``datasets.difficulty``; recorded in ``test_difficulty.json``); ``"uniform"``: the
            test cases as simulated. Training cases are the same either way.
        keep_classes: class names or values to keep; other foreground classes become background
            and the labels are renumbered (``datasets.keep_classes``). None: all classes.
        sparse_labels: annotate only this share of each training label (seeded blocks); the
            rest gets dataset.json's ``ignore`` label (``datasets.sparse_labels``). None: dense.
        shape: the cases' array shape, for generators with `shaped_cases` (synthetic-ct3d);
            None: the generator's own geometry.

    Raises:
        UserInputError: bad arguments, existing folder without overwrite, or the id is taken
            by a differently named dataset.
    """
    dataset_id = generator.default_id if dataset_id is None else dataset_id
    _check_arguments(dataset_id, num_train, num_test, seed, test_difficulty)
    num_train = generator.default_num_train if num_train is None else num_train
    num_test = generator.default_num_test if num_test is None else num_test
    if labelled_fraction is not None and num_train is not None:
        num_labelled(num_train, labelled_fraction)  # checks the fraction before any work
    if keep_classes is not None:
        resolve_kept_classes(dict(generator.labels), keep_classes)  # and the classes
    if sparse_labels is not None:
        check_fraction(sparse_labels)
    if shape is not None and generator.shaped_cases is None:
        raise UserInputError(f"{generator.name} has one geometry: --shape is for "
                             "synthetic-ct3d")

    raw_root = Path(raw_root)
    raw_root.mkdir(parents=True, exist_ok=True)
    destination = raw_root / dataset_folder_name(dataset_id, generator.folder_name)
    _check_destination(raw_root, dataset_id, destination, overwrite)

    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=raw_root))
    try:
        cases = (generator.cases(num_train, num_test, seed) if shape is None
                 else generator.shaped_cases(num_train, num_test, seed, tuple(shape)))
        difficulties: dict[str, dict] = {}
        if test_difficulty == "varied":
            cases = vary_test_cases(cases, seed, generator.test_artefact or (lambda x, level, rng: x),
                                    generator.value_range, generator.degrade_window, difficulties,
                                    generator.test_contrast)
        write_cases(tmp, generator, cases)
        if keep_classes is not None:
            apply_keep_classes(tmp, keep_classes)
        if sparse_labels is not None:
            apply_sparse_labels(tmp, sparse_labels, seed)
        if difficulties:
            write_json({"test_difficulty": test_difficulty, "cases": difficulties}, tmp / "test_difficulty.json")
        if labelled_fraction is not None:
            apply_labelled_fraction(tmp, labelled_fraction, seed)
        _move_into_place(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("generated %s in %.1f s", destination, time.perf_counter() - start)
    return destination


def _move_into_place(tmp: Path, destination: Path) -> None:
    """Rename `tmp` to `destination`, replacing an existing folder of that name."""
    if not destination.exists():
        os.replace(tmp, destination)
        return
    # A non-empty directory cannot be replaced in one step: move the old one aside first.
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
    os.replace(destination, old / destination.name)
    os.replace(tmp, destination)
    shutil.rmtree(old, ignore_errors=True)
