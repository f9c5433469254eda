"""Dataset fingerprint: nnunetv2's extractor, run after our bad-input checks."""
from __future__ import annotations

import logging

from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

from dnnunet_core.quiet import nnunet_output_to_log

logger = logging.getLogger(__name__)


def extract_fingerprint(dataset_name: str, num_processes: int = 1, overwrite: bool = True) -> dict:
    """Compute (or reuse) `nnUNet_preprocessed/<dataset>/dataset_fingerprint.json`.

    Args:
        dataset_name: DatasetXXX_Name (already validated).
        num_processes: worker processes for reading the images.
        overwrite: recompute even if a fingerprint exists.
    """
    logger.info("Extracting the dataset fingerprint of %s", dataset_name)
    extractor = DatasetFingerprintExtractor(dataset_name, num_processes=num_processes, verbose=False)
    with nnunet_output_to_log(logger):
        return extractor.run(overwrite_existing=overwrite)
