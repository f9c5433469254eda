"""Dataset generators that write nnU-Net v2 raw datasets (``dnnunet make-dataset NAME``).

- ``synthetic-us2d``: 2D ultrasound-like images (speckle, attenuation, layer + lesion).
- ``synthetic-ct3d``: 3D CT-like volumes in HU with anisotropic spacing and four organs.
- ``mni-tissue2d``: real MR, axial slices of the MNI152 2009a template, tissue classes.
- ``synthetic-brats2d``: 2D brain-tumour MR in four channels, BraTS's nested regions.
"""
from __future__ import annotations

from pathlib import Path

from diffusion_nnunet.datasets.base import Case, DatasetGenerator
from diffusion_nnunet.datasets.make import build_dataset, dataset_folder_name
from diffusion_nnunet.datasets.mni_tissue2d import GENERATOR as _MNI_TISSUE2D
from diffusion_nnunet.datasets.synthetic_brats2d import GENERATOR as _SYNTHETIC_BRATS2D
from diffusion_nnunet.datasets.synthetic_ct3d import GENERATOR as _SYNTHETIC_CT3D
from diffusion_nnunet.datasets.synthetic_us2d import GENERATOR as _SYNTHETIC_US2D
from dnnunet_core.errors import UserInputError

GENERATORS: dict[str, DatasetGenerator] = {
    g.name: g for g in (_SYNTHETIC_US2D, _SYNTHETIC_CT3D, _MNI_TISSUE2D, _SYNTHETIC_BRATS2D)
}
DEFAULT_IDS: dict[str, int] = {name: g.default_id for name, g in GENERATORS.items()}

__all__ = ["GENERATORS", "DEFAULT_IDS", "Case", "DatasetGenerator", "make_dataset", "dataset_folder_name"]


def make_dataset(name: str, raw_root: Path, dataset_id: int | None = None, num_train: int | None = None,
                 num_test: int | None = None, seed: int = 0, overwrite: bool = False,
                 labelled_fraction: float | None = None, test_difficulty: str = "varied",
                 keep_classes: list[str] | None = None, sparse_labels: float | None = None,
                 shape: tuple[int, ...] | None = None) -> Path:
    """Write the raw dataset ``raw_root/DatasetXXX_Name`` and return its folder.

    The folder holds dataset.json, imagesTr, labelsTr, imagesTs and labelsTs. It is written
    into a hidden temporary sibling and renamed into place at the end.

    Args:
        name: generator name, one of `GENERATORS`.
        raw_root: nnU-Net raw folder (e.g. ``$nnUNet_raw``); created if missing.
        dataset_id: nnU-Net dataset id (1-999); ``DEFAULT_IDS[name]`` if None.
        num_train: number of training cases; the generator's default if None.
        num_test: number of test cases; the generator's default if None.
        seed: random seed (same seed -> identical data).
        overwrite: replace an existing folder of the same name.
        labelled_fraction: keep labels for only this share of the training cases (seeded); the
            rest become declared unlabelled images, for semi-supervised training.
        test_difficulty: ``"varied"`` (default): test cases degraded by a per-case difficulty
            (contrast, noise, artefact; ``datasets.difficulty``); ``"uniform"``: as simulated,
            identical to the test sets made before varied difficulty existed.
        keep_classes: class names or label values to keep (others merged into background,
            labels renumbered; ``datasets.keep_classes``); None: all classes.
        sparse_labels: annotated share of each training label (seeded blocks; the rest gets
            the ``ignore`` label, ``datasets.sparse_labels``); None: dense labels.
        shape: array shape (Z, Y, X) of every case (synthetic-ct3d only; large shapes make
            nnU-Net plan its cascade); None: the generator's geometry.

    Raises:
        UserInputError: unknown name (the message lists the known names), the folder exists
            and overwrite is False, another ``DatasetXXX_*`` folder has the same id, or bad
            counts/id/seed.
    """
    generator = GENERATORS.get(name)
    if generator is None:
        raise UserInputError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(GENERATORS))}")
    return build_dataset(generator, Path(raw_root), dataset_id=dataset_id, num_train=num_train,
                         num_test=num_test, seed=seed, overwrite=overwrite, labelled_fraction=labelled_fraction,
                         test_difficulty=test_difficulty, keep_classes=keep_classes, sparse_labels=sparse_labels,
                         shape=shape)
