"""Batches of unlabelled images for the semi-supervised trainers.

Unlabelled cases are preprocessed into ``<data_identifier>_unlabelled`` (``planning/unlabelled.py``):
data and properties, no segmentation. They are served by nnU-Net's own data loader and training
augmentation (same patch size, same transforms as the labelled batches); the loader needs a
segmentation to crop and transform alongside the image, so the dataset hands it a constant
all-zero map that is never written to disk, and the batches leave the loader with
``target = None``: nothing downstream can read a label of an unlabelled case.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from dnnunet_core.partial_labels import unlabelled_folder_name

logger = logging.getLogger(__name__)


class UnlabelledDataset(nnUNetDatasetBlosc2):
    """nnU-Net's blosc2 dataset for a folder of image-only cases.

    Args:
        folder: the ``<data_identifier>_unlabelled`` folder.
        identifiers: cases to use (all in the folder when None).
    """

    def __init__(self, folder: str, identifiers: list[str] | None = None):
        super().__init__(folder, identifiers)

    def load_case(self, identifier):
        import blosc2

        data = blosc2.open(urlpath=str(Path(self.source_folder) / f"{identifier}.b2nd"), mode="r",
                           dparams={"nthreads": 1}, **self.mmap_kwargs)
        # a read-only zero view of the data's shape: no memory, no file; only lets the loader crop
        dummy = np.broadcast_to(np.zeros((1,) * len(data.shape), dtype=np.int16), (1, *data.shape[1:]))
        properties = load_pickle(str(Path(self.source_folder) / f"{identifier}.pkl"))
        properties.setdefault("class_locations", {})
        return data, dummy, None, properties


def unlabelled_folder(trainer) -> Path:
    """The trainer's unlabelled-data folder (it may not exist: then there are no unlabelled cases)."""
    base = Path(trainer.preprocessed_dataset_folder_base)
    return base / unlabelled_folder_name(trainer.configuration_manager.data_identifier)


def images_only(batch: dict):
    """The images of a batch; the target is not touched (unlabelled batches carry none)."""
    return batch["data"]


class _DropTarget:
    """Iterator over a loader's batches with the target removed."""

    def __init__(self, loader, num_cases: int):
        self.loader = loader
        self.num_cases = num_cases  # unlabelled cases behind the batches

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.loader)
        return {"data": batch["data"], "target": None, "keys": batch.get("keys")}


def build_unlabelled_loader(trainer) -> Iterator[dict] | None:
    """An endless iterator of unlabelled training batches for `trainer`, or None without unlabelled cases.

    Uses the trainer's batch size, patch size and training augmentation, no foreground oversampling
    (there is no foreground to find), in-process (the labelled loader keeps the worker processes).

    Args:
        trainer: an initialised nnU-Net trainer (plans, configuration and label manager loaded).
    """
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    folder = unlabelled_folder(trainer)
    if not folder.is_dir():
        return None
    dataset = UnlabelledDataset(str(folder))
    if len(dataset.identifiers) == 0:
        return None
    rotation, dummy_2d, initial_patch_size, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    cm = trainer.configuration_manager
    transforms = trainer.get_training_transforms(
        cm.patch_size, rotation, None, mirror_axes, dummy_2d, use_mask_for_norm=cm.use_mask_for_norm,
        is_cascaded=False, foreground_labels=trainer.label_manager.foreground_labels, regions=None,
        ignore_label=None)
    loader = nnUNetDataLoader(dataset, trainer.batch_size, initial_patch_size, cm.patch_size, trainer.label_manager,
                              oversample_foreground_percent=0.0, sampling_probabilities=None, pad_sides=None,
                              transforms=transforms)
    logger.info("unlabelled batches from %d cases in %s", len(dataset.identifiers), folder)
    return _DropTarget(SingleThreadedAugmenter(loader, None), len(dataset.identifiers))
