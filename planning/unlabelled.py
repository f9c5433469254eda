"""Fingerprint and preprocessing of partially labelled datasets (semi-supervised training).

nnunetv2 lists training cases with ``get_filenames_of_train_images_and_targets``, which pairs
every image in ``imagesTr`` with ``labelsTr/CASE<ending>`` and then reads that label: unlabelled
images would crash its fingerprint extractor and preprocessor. Here

* the fingerprint runs nnunetv2's extractor on the labelled cases (foreground intensity
  statistics need labels), then adds the spacing and cropped shape of every unlabelled image,
  so the planner's median spacing and shape are those of all training images;
* the labelled cases are preprocessed with nnunetv2's ``DefaultPreprocessor.run_case_save``
  into the usual ``<data_identifier>`` folder (nnunetv2's own loaders and splits see exactly
  the labelled cases, as for a fully labelled dataset);
* unlabelled images go through ``DefaultPreprocessor.run_case`` with no segmentation (the same
  transpose, crop, normalisation and resampling) into ``<data_identifier>_unlabelled``:
  ``CASE.b2nd`` (data) and ``CASE.pkl`` (properties), no segmentation file.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dnnunet_core import paths
from dnnunet_core.atomic import write_json
from dnnunet_core.partial_labels import find_unlabelled_cases, unlabelled_folder_name
from dnnunet_core.quiet import nnunet_output_to_log

logger = logging.getLogger(__name__)


def extract_fingerprint_partial(dataset_name: str, unlabelled: dict[str, list[str]], num_processes: int = 1) -> dict:
    """nnunetv2's fingerprint of the labelled cases plus the geometry of the unlabelled images.

    Args:
        dataset_name: DatasetXXX_Name (validated).
        unlabelled: case id -> image files (`find_unlabelled_cases`).
        num_processes: worker processes for nnunetv2's extractor.

    Returns:
        The fingerprint (also written to ``nnUNet_preprocessed/<dataset>/dataset_fingerprint.json``).
    """
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    extractor = DatasetFingerprintExtractor(dataset_name, num_processes=num_processes, verbose=False)
    extractor.dataset = {k: v for k, v in extractor.dataset.items() if k not in unlabelled}
    with nnunet_output_to_log(logger):
        fingerprint = extractor.run(overwrite_existing=True)
    first = next(iter(unlabelled.values()))[0]
    reader = determine_reader_writer_from_dataset_json(extractor.dataset_json, first)()
    for case_id, files in sorted(unlabelled.items()):
        images, props = reader.read_images(files)
        cropped, _, _ = crop_to_nonzero(images)
        fingerprint["spacings"].append([float(s) for s in props["spacing"]])
        fingerprint["shapes_after_crop"].append([int(s) for s in cropped.shape[1:]])
    fingerprint["num_unlabelled_cases"] = len(unlabelled)
    fingerprint = json.loads(json.dumps(fingerprint, default=_json_default))
    write_json(fingerprint, paths.preprocessed() / dataset_name / "dataset_fingerprint.json")
    logger.info("fingerprint of %s: %d labelled + %d unlabelled cases (intensities from the labelled ones)",
                dataset_name, len(extractor.dataset), len(unlabelled))
    return fingerprint


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


def _save_unlabelled_case(output_truncated: str, image_files: list[str], plans: dict, configuration: str,
                          dataset_json: dict) -> None:
    """Preprocess one unlabelled image exactly like a labelled one and save data + properties only."""
    import blosc2
    from batchgenerators.utilities.file_and_folder_operations import write_pickle
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    data, _, properties = DefaultPreprocessor(verbose=False).run_case(image_files, None, pm, cm, dataset_json)
    data = np.ascontiguousarray(data.astype(np.float32, copy=False))
    blocks, chunks = comp_blosc2_params(data.shape, tuple(cm.patch_size), data.itemsize)
    blosc2.set_nthreads(1)
    blosc2.asarray(data, urlpath=output_truncated + ".b2nd", chunks=chunks, blocks=blocks)
    write_pickle(properties, output_truncated + ".pkl")


def _save_labelled_case(output_truncated: str, image_files: list[str], label_file: str, plans: dict,
                        configuration: str, dataset_json: dict) -> None:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    DefaultPreprocessor(verbose=False).run_case_save(output_truncated, image_files, label_file, pm,
                                                     pm.get_configuration(configuration), dataset_json)


def _run(function, jobs: list[tuple], num_processes: int) -> None:
    if num_processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            function(*job)
        return
    with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
        pool.starmap(function, jobs)


def preprocess_partial(dataset_name: str, configuration: str, plans_name: str, unlabelled: dict[str, list[str]],
                       num_processes: int = 1) -> Path:
    """Preprocess labelled cases (nnunetv2 layout) and unlabelled images (separate folder).

    Both folders are written into temporary siblings and renamed into place when complete.

    Args:
        dataset_name: DatasetXXX_Name.
        configuration: plans configuration, e.g. "2d".
        plans_name: plans identifier.
        unlabelled: case id -> image files.
        num_processes: worker processes.

    Returns:
        The folder of the unlabelled cases.
    """
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    base = paths.preprocessed() / dataset_name
    plans = json.loads((base / f"{plans_name}.json").read_text())
    dataset_json = json.loads((base / "dataset.json").read_text())
    data_identifier = plans["configurations"][configuration]["data_identifier"]
    everything = get_filenames_of_train_images_and_targets(str(paths.raw() / dataset_name), dataset_json)
    labelled = {k: v for k, v in everything.items() if k not in unlabelled}

    targets = {data_identifier: [], unlabelled_folder_name(data_identifier): []}
    tmp = {name: Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=base)) for name in targets}
    try:
        _run(_save_labelled_case, [(str(tmp[data_identifier] / k), v["images"], v["label"], plans, configuration,
                                    dataset_json) for k, v in sorted(labelled.items())], num_processes)
        _run(_save_unlabelled_case, [(str(tmp[unlabelled_folder_name(data_identifier)] / k), files, plans,
                                      configuration, dataset_json) for k, files in sorted(unlabelled.items())],
             num_processes)
        for name, folder in tmp.items():
            if (base / name).exists():
                shutil.rmtree(base / name)
            os.replace(folder, base / name)
    finally:
        for folder in tmp.values():
            shutil.rmtree(folder, ignore_errors=True)
    logger.info("preprocessed %s / %s: %d labelled, %d unlabelled cases", dataset_name, configuration,
                len(labelled), len(unlabelled))
    return base / unlabelled_folder_name(data_identifier)


__all__ = ["extract_fingerprint_partial", "preprocess_partial", "find_unlabelled_cases"]
