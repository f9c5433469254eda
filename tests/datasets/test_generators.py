"""Tests of the nnU-Net raw-dataset generators (diffusion_nnunet.datasets)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from diffusion_nnunet.datasets import (
    DEFAULT_IDS,
    GENERATORS,
    Case,
    DatasetGenerator,
    make_dataset,
    mni_tissue2d,
    synthetic_ct3d,
    synthetic_us2d,
)
from diffusion_nnunet.datasets.make import build_dataset
from dnnunet_core.errors import UserInputError

NAMES = ["synthetic-us2d", "synthetic-ct3d", "mni-tissue2d"]
SMALL = {"num_train": 4, "num_test": 2}
FOLDERS = {"synthetic-us2d": "Dataset501_SyntheticUS2D", "synthetic-ct3d": "Dataset502_SyntheticCT3D",
           "mni-tissue2d": "Dataset503_MNITissue2D"}


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_all(folder: Path) -> dict[str, np.ndarray]:
    """Every image and label of a dataset, keyed by path relative to the folder."""
    return {str(p.relative_to(folder)): read(p) for p in sorted(folder.rglob("*.nii.gz"))}


def case_ids(folder: Path, split: str) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (folder / f"labels{split}").iterdir())


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """Each dataset generated once with 4 training and 2 test cases, seed 0."""
    root = tmp_path_factory.mktemp("raw")
    return {name: make_dataset(name, root, seed=0, **SMALL) for name in NAMES}


@pytest.fixture(scope="module")
def mni_full(tmp_path_factory) -> Path:
    """mni-tissue2d with its default (all eligible slices)."""
    return make_dataset("mni-tissue2d", tmp_path_factory.mktemp("raw_mni"))


def test_registry_matches_default_ids():
    assert sorted(GENERATORS) == sorted(NAMES + ["synthetic-brats2d"])  # region labels: test_brats2d.py
    assert DEFAULT_IDS == {"synthetic-us2d": 501, "synthetic-ct3d": 502, "mni-tissue2d": 503,
                           "synthetic-brats2d": 504}


@pytest.mark.parametrize("name", NAMES)
def test_writes_valid_nnunet_raw_dataset(small, name):
    folder = small[name]
    assert folder.name == FOLDERS[name]
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted(FOLDERS.values())  # no temp leftovers
    meta = json.loads((folder / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(meta)
    assert meta["file_ending"] == ".nii.gz"
    assert meta["labels"]["background"] == 0
    assert sorted(meta["labels"].values()) == list(range(len(meta["labels"])))
    assert meta["numTraining"] == SMALL["num_train"] == len(list((folder / "imagesTr").iterdir()))
    assert determine_reader_writer_from_dataset_json(meta, verbose=False) is SimpleITKIO
    channels = [int(c) for c in meta["channel_names"]]
    seen_labels: set[int] = set()
    for split, count in (("Tr", SMALL["num_train"]), ("Ts", SMALL["num_test"])):
        ids = case_ids(folder, split)
        assert len(ids) == count
        images = sorted(p.name for p in (folder / f"images{split}").iterdir())
        assert images == sorted(f"{i}_{c:04d}.nii.gz" for i in ids for c in channels)
        for case in ids:
            label = read(folder / f"labels{split}" / f"{case}.nii.gz")
            image = read(folder / f"images{split}" / f"{case}_0000.nii.gz")
            assert image.shape == label.shape
            assert set(np.unique(label).tolist()) <= set(meta["labels"].values())
            if split == "Tr":
                seen_labels |= set(np.unique(label).tolist())
    assert seen_labels == set(meta["labels"].values()), "every class must occur in the training set"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_identical_different_seed_different(small, tmp_path, name):
    again = make_dataset(name, tmp_path / "a", seed=0, **SMALL)
    reference = read_all(small[name])
    repeated = read_all(again)
    assert reference.keys() == repeated.keys()
    assert all(np.array_equal(reference[k], repeated[k]) for k in reference)
    other = read_all(make_dataset(name, tmp_path / "b", seed=1, **SMALL))
    differs = other.keys() != reference.keys() or any(not np.array_equal(reference[k], other[k]) for k in reference)
    assert differs


@pytest.mark.parametrize("name", ["synthetic-us2d", "synthetic-ct3d"])
def test_a_case_does_not_depend_on_the_number_of_cases(small, tmp_path, name):
    fewer = make_dataset(name, tmp_path, seed=0, num_train=1, num_test=1)
    for rel in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (path,) = sorted((fewer / rel).iterdir())
        assert np.array_equal(read(path), read(small[name] / rel / path.name))


@pytest.mark.parametrize("name", ["synthetic-us2d", "mni-tissue2d"])
def test_2d_datasets_read_by_nnunet_as_single_slice(small, name):
    folder = small[name]
    case = case_ids(folder, "Tr")[0]
    image, props = SimpleITKIO().read_images([str(folder / "imagesTr" / f"{case}_0000.nii.gz")])
    seg, _ = SimpleITKIO().read_seg(str(folder / "labelsTr" / f"{case}.nii.gz"))
    # (channels, z, y, x) with a single slice: nnU-Net's planner then makes only the 2d configuration.
    assert image.ndim == 4 and image.shape[:2] == (1, 1) and min(image.shape[2:]) >= 64
    assert seg.shape == image.shape
    expected = synthetic_us2d.SPACING if name == "synthetic-us2d" else mni_tissue2d.SPACING
    assert np.allclose(props["spacing"][1:], expected)
    assert props["spacing"][0] > 100 * max(expected)


def test_ct3d_geometry_and_hounsfield_units(small):
    folder = small["synthetic-ct3d"]
    for case in case_ids(folder, "Tr") + case_ids(folder, "Ts"):
        split = "Tr" if case.startswith("ct_tr") else "Ts"
        image = sitk.ReadImage(str(folder / f"images{split}" / f"{case}_0000.nii.gz"))
        label = sitk.ReadImage(str(folder / f"labels{split}" / f"{case}.nii.gz"))
        assert np.allclose(image.GetSpacing(), (0.8, 0.8, 3.0))  # SimpleITK order (x, y, z)
        assert np.allclose(label.GetSpacing(), image.GetSpacing())
        hu, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
        assert hu.shape == lab.shape
        assert hu.shape[1:] == (64, 64) and 24 <= hu.shape[0] <= 32  # (z, y, x): slices on axis 0
        assert hu.dtype == np.int16
        assert -1024 <= hu.min() < -900 and 600 < hu.max() <= 3071  # air and cortical bone present
        assert 40 < np.median(hu[lab == 1]) < 90  # liver
        assert np.median(hu[lab == 4]) > 100  # contrast-enhanced aorta
        assert 0 < np.count_nonzero(lab == 4) < 0.2 * np.count_nonzero(lab == 1)  # a small structure
    _, props = SimpleITKIO().read_images([str(folder / "imagesTr" / "ct_tr_0000_0000.nii.gz")])
    assert np.allclose(props["spacing"], (3.0, 0.8, 0.8))  # nnU-Net (z, y, x): anisotropic slice axis


def test_us2d_structures_are_sizeable_and_not_separable_by_a_threshold(small):
    folder = small["synthetic-us2d"]
    pairs = [(read(folder / "imagesTr" / f"{c}_0000.nii.gz"), read(folder / "labelsTr" / f"{c}.nii.gz"))
             for c in case_ids(folder, "Tr")]
    pairs += [(im, lb) for im, lb in (synthetic_us2d.simulate(np.random.default_rng(s)) for s in range(8))]

    def dice(a, b):
        return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))

    for image, label in pairs:
        assert image.shape == (128, 128)
        assert min(np.count_nonzero(label == 1), np.count_nonzero(label == 2)) >= 150
        assert image[label == 1].mean() > image[label == 0].mean() > image[label == 2].mean()
    for cls, brighter in ((1, True), (2, False)):
        best = max(np.mean([dice(im >= t if brighter else im < t, lb == cls) for im, lb in pairs])
                   for t in range(0, 256, 5))
        assert best < 0.6, f"class {cls} is separable by a global threshold (Dice {best:.2f})"
    backgrounds = [image[label == 0].mean() for image, label in pairs]
    assert max(backgrounds) - min(backgrounds) > 15, "random gain should vary the grey levels"


def test_mni_slabs_are_disjoint_with_a_gap(mni_full):
    train, test = mni_tissue2d.split_slices()
    assert train and test and not set(train) & set(test)
    assert min(abs(a - b) for a in train for b in test) >= 3  # at least two slices between slabs
    assert case_ids(mni_full, "Tr") == [f"mni_z{z:03d}" for z in train]
    assert case_ids(mni_full, "Ts") == [f"mni_z{z:03d}" for z in test]
    meta = json.loads((mni_full / "dataset.json").read_text())
    assert meta["numTraining"] == len(train)
    assert meta["labels"] == {"background": 0, "csf_other": 1, "gm": 2, "wm": 3}


def test_mni_labels_and_real_t1_contrast(mni_full):
    for split in ("Tr", "Ts"):
        labels = [read(mni_full / f"labels{split}" / f"{c}.nii.gz") for c in case_ids(mni_full, split)]
        images = [read(mni_full / f"images{split}" / f"{c}_0000.nii.gz") for c in case_ids(mni_full, split)]
        assert all(np.count_nonzero(lb) >= mni_tissue2d.MIN_BRAIN_PIXELS for lb in labels)
        all_labels, all_images = np.stack(labels), np.stack(images)
        assert set(np.unique(all_labels).tolist()) == {0, 1, 2, 3}
        means = [all_images[all_labels == k].mean() for k in range(4)]
        assert means[0] < 5 and means[1] < means[2] < means[3]  # T1: background < CSF < GM < WM


def test_mni_subsampling_counts_and_seed(tmp_path):
    a = make_dataset("mni-tissue2d", tmp_path / "a", num_train=5, num_test=3, seed=0)
    b = make_dataset("mni-tissue2d", tmp_path / "b", num_train=5, num_test=3, seed=7)
    assert len(case_ids(a, "Tr")) == 5 and len(case_ids(a, "Ts")) == 3
    assert case_ids(a, "Tr") + case_ids(a, "Ts") != case_ids(b, "Tr") + case_ids(b, "Ts")
    with pytest.raises(UserInputError, match="slices"):
        make_dataset("mni-tissue2d", tmp_path / "c", num_train=10_000)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    folder = make_dataset("synthetic-us2d", tmp_path, num_train=2, num_test=1)
    before = read_all(folder)
    with pytest.raises(UserInputError, match="exists"):
        make_dataset("synthetic-us2d", tmp_path, num_train=2, num_test=1, seed=1)
    assert all(np.array_equal(before[k], v) for k, v in read_all(folder).items())
    again = make_dataset("synthetic-us2d", tmp_path, num_train=3, num_test=1, seed=1, overwrite=True)
    assert again == folder
    assert len(case_ids(folder, "Tr")) == 3
    first = "imagesTr/us_tr_0000_0000.nii.gz"
    assert not np.array_equal(read_all(folder)[first], before[first])
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # old copy and temp folders removed


@pytest.mark.parametrize("overwrite", [False, True])
def test_refuses_a_dataset_id_already_used_by_another_folder(tmp_path, overwrite):
    (tmp_path / "Dataset501_Other").mkdir()
    with pytest.raises(UserInputError, match="Dataset501_Other"):
        make_dataset("synthetic-us2d", tmp_path, num_train=1, num_test=0, overwrite=overwrite)
    folder = make_dataset("synthetic-us2d", tmp_path, dataset_id=601, num_train=1, num_test=0)
    assert folder.name == "Dataset601_SyntheticUS2D"


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(UserInputError) as info:
        make_dataset("nope", tmp_path)
    assert all(name in str(info.value) for name in NAMES)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs", [{"num_train": 0}, {"num_test": -1}, {"dataset_id": 1000}, {"seed": -1}])
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(UserInputError):
        make_dataset("synthetic-us2d", tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_failure_midway_leaves_no_dataset_folder(tmp_path):
    def failing_cases(num_train, num_test, seed):
        image, label = synthetic_us2d.simulate(np.random.default_rng(0))
        yield Case("c0", "Tr", (image,), label, synthetic_us2d.SPACING)
        raise RuntimeError("generator broke")

    generator = DatasetGenerator(name="broken", folder_name="Broken", default_id=999, channel_names={"0": "US"},
                                 labels={"background": 0, "x": 1}, default_num_train=2, default_num_test=0,
                                 cases=failing_cases)
    with pytest.raises(RuntimeError, match="generator broke"):
        build_dataset(generator, tmp_path)
    assert not any(tmp_path.iterdir())


def test_ct3d_simulation_has_all_classes_and_varied_sizes():
    volumes = [synthetic_ct3d.simulate(np.random.default_rng(s))[1] for s in range(4)]
    sizes = np.array([[np.count_nonzero(v == k) for k in range(1, 5)] for v in volumes])
    assert (sizes >= synthetic_ct3d.MIN_CLASS_VOXELS).all()
    assert (sizes.max(0) > 1.2 * sizes.min(0)).all()  # sizes vary between cases
