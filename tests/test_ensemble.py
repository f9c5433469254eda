"""Tests of diffusion_nnunet.ensemble on tiny fake nnU-Net prediction folders."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.ensemble import ensemble_folders, probabilities_shape
from dnnunet_core.errors import InvalidDataError, UserInputError

LABELS = {"background": 0, "liver": 1, "tumour": 2}
# the parts of plans.json that nnU-Net's PlansManager needs for ensembling
PLANS = {"dataset_name": "Dataset999_Fake", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
         "label_manager": "LabelManager", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
         "configurations": {}}
SPACING_XYZ = (0.8, 0.8, 2.5)  # SimpleITK order


def properties_for(shape, spacing_xyz=SPACING_XYZ):
    """Properties as nnU-Net's SimpleITKIO.read_images returns them (what predictions pickle)."""
    return {"sitk_stuff": {"spacing": tuple(spacing_xyz), "origin": (0.0,) * len(spacing_xyz),
                           "direction": tuple(np.eye(len(spacing_xyz)).ravel())},
            "spacing": list(spacing_xyz[::-1]) if len(spacing_xyz) == 3 else [999.0, *spacing_xyz[::-1]],
            "shape_before_cropping": tuple(shape)}


def make_folder(path, probs: dict, labels=LABELS, spacing_xyz=SPACING_XYZ, regions_class_order=None):
    """Write a folder like nnUNetPredictor(save_probabilities=True) does."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    path.mkdir(parents=True)
    ds = {"labels": labels, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}, "numTraining": 0}
    if regions_class_order is not None:
        ds["regions_class_order"] = regions_class_order
    (path / "dataset.json").write_text(json.dumps(ds))
    (path / "plans.json").write_text(json.dumps(PLANS))
    for case, p in probs.items():
        props = properties_for(p.shape[1:], spacing_xyz)
        np.savez_compressed(path / f"{case}.npz", probabilities=p.astype(np.float32))
        with open(path / f"{case}.pkl", "wb") as f:
            pickle.dump(props, f)
        SimpleITKIO().write_seg(p.argmax(0), str(path / f"{case}.nii.gz"), props)
    return path


def random_probs(shape, seed, channels=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(channels, *shape))
    e = np.exp(logits)
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def read(path):
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img.GetSpacing()


@pytest.fixture
def two_folders(tmp_path):
    pa = {c: random_probs((4, 6, 5), seed=i) for i, c in enumerate(["case_a", "case_b"])}
    pb = {c: random_probs((4, 6, 5), seed=10 + i) for i, c in enumerate(["case_a", "case_b"])}
    return make_folder(tmp_path / "A", pa), make_folder(tmp_path / "B", pb), pa, pb


def test_equal_weights_is_the_mean(tmp_path, two_folders):
    a, b, pa, pb = two_folders
    out = tmp_path / "ens"
    written = ensemble_folders([a, b], out, save_probabilities=True)
    assert written == ["case_a", "case_b"]
    for c in written:
        mean = (pa[c] + pb[c]) / 2
        with np.load(out / f"{c}.npz") as z:
            np.testing.assert_allclose(z["probabilities"], mean, rtol=1e-6, atol=1e-7)
        seg, spacing = read(out / f"{c}.nii.gz")
        np.testing.assert_array_equal(seg, mean.argmax(0))
        assert spacing == pytest.approx(SPACING_XYZ)
        with open(out / f"{c}.pkl", "rb") as f:
            assert pickle.load(f)["sitk_stuff"]["spacing"] == SPACING_XYZ
    assert json.loads((out / "dataset.json").read_text())["labels"] == LABELS
    assert json.loads((out / "plans.json").read_text()) == PLANS
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    # the output has the input format: ensembles can be chained
    again = ensemble_folders([out, a], tmp_path / "chained", weights=[2, 1])
    assert again == written


def test_weights_one_zero_reproduce_first_folder(tmp_path, two_folders):
    a, b, pa, _ = two_folders
    out = tmp_path / "ens"
    ensemble_folders([a, b], out, weights=[1.0, 0.0], save_probabilities=True)
    for c in pa:
        np.testing.assert_array_equal(read(out / f"{c}.nii.gz")[0], read(a / f"{c}.nii.gz")[0])
        with np.load(out / f"{c}.npz") as z:
            np.testing.assert_allclose(z["probabilities"], pa[c], rtol=1e-6)
    assert not (tmp_path / "ens2").exists()
    ensemble_folders([a, b], tmp_path / "ens2", weights=[3, 1])  # normalised: 0.75 / 0.25
    _, _, _, pb = two_folders
    for c in pa:
        np.testing.assert_array_equal(read(tmp_path / "ens2" / f"{c}.nii.gz")[0], (0.75 * pa[c] + 0.25 * pb[c]).argmax(0))


def test_regions_and_2d(tmp_path):
    # region-based: sigmoid outputs per region, thresholded at 0.5 by nnU-Net's LabelManager
    labels = {"background": 0, "whole": [1, 2], "core": 2}
    pa = {"c": np.zeros((2, 1, 3, 3), np.float32)}
    pb = {"c": np.zeros((2, 1, 3, 3), np.float32)}
    pa["c"][0, 0, 0, :] = 0.9          # whole: mean 0.45 -> no
    pa["c"][0, 0, 1:, :] = 0.8         # whole: mean 0.7 -> yes
    pb["c"][0, 0, 1:, :] = 0.6
    pa["c"][1, 0, 2, :] = 1.0          # core: mean 0.6 -> yes
    pb["c"][1, 0, 2, :] = 0.2
    a = make_folder(tmp_path / "A", pa, labels, spacing_xyz=(0.5, 0.7), regions_class_order=[1, 2])
    b = make_folder(tmp_path / "B", pb, labels, spacing_xyz=(0.5, 0.7), regions_class_order=[1, 2])
    (a / "c.nii.gz").unlink()
    (b / "c.nii.gz").unlink()  # make_folder writes argmax segmentations, which regions do not use
    ensemble_folders([a, b], tmp_path / "out")
    seg, spacing = read(tmp_path / "out" / "c.nii.gz")
    assert seg.ndim == 2 and spacing == pytest.approx((0.5, 0.7))  # 2D case written as 2D image
    np.testing.assert_array_equal(seg, [[0, 0, 0], [1, 1, 1], [2, 2, 2]])


def assert_refused(tmp_path, dirs, match, exc=InvalidDataError, **kwargs):
    out = tmp_path / "refused"
    with pytest.raises(exc, match=match):
        ensemble_folders(dirs, out, **kwargs)
    assert not out.exists(), "nothing may be written when the inputs are refused"


def test_refuses_different_case_sets(tmp_path, two_folders):
    a, _, pa, _ = two_folders
    c = make_folder(tmp_path / "C", {"case_a": pa["case_a"], "case_z": pa["case_b"]})
    assert_refused(tmp_path, [a, c], r"C: missing case_b; extra case_z", exc=UserInputError)


def test_refuses_different_shapes(tmp_path, two_folders):
    a, _, pa, _ = two_folders
    c = make_folder(tmp_path / "C", {"case_a": pa["case_a"], "case_b": random_probs((4, 6, 6), 3)})
    assert probabilities_shape(c / "case_b.npz") == (3, 4, 6, 6)
    assert_refused(tmp_path, [a, c], r"case case_b: probability shapes differ.*\(3, 4, 6, 5\).*\(3, 4, 6, 6\)")


def test_refuses_different_labels(tmp_path, two_folders):
    a, _, pa, _ = two_folders
    c = make_folder(tmp_path / "C", pa, labels={"background": 0, "liver": 1, "vessel": 2})
    assert_refused(tmp_path, [a, c], r"C/dataset.json.*labels.*vessel")


def test_refuses_bad_folders_and_weights(tmp_path, two_folders):
    a, b, _, _ = two_folders
    assert_refused(tmp_path, [a], "at least 2", exc=UserInputError)
    assert_refused(tmp_path, [a, b], "weight", exc=UserInputError, weights=[1])
    assert_refused(tmp_path, [a, b], "weight", exc=UserInputError, weights=[1, -1])
    assert_refused(tmp_path, [a, b], "zero", exc=UserInputError, weights=[0, 0])
    (b / "plans.json").unlink()
    assert_refused(tmp_path, [a, b], r"B: has no plans.json")
    (b / "plans.json").write_text(json.dumps(PLANS))
    (b / "case_a.pkl").unlink()
    assert_refused(tmp_path, [a, b], r"case_a.pkl")
    with pytest.raises(UserInputError, match="one of the input"):
        ensemble_folders([a, b], a)


def test_refuses_probabilities_older_than_their_segmentation(tmp_path, two_folders):
    """issue 15 item 7: a stale .npz beside a newer segmentation (an earlier run) is not averaged."""
    import os

    a, b, _, _ = two_folders
    seg_time = (b / "case_b.nii.gz").stat().st_mtime
    os.utime(b / "case_b.npz", (seg_time - 3600, seg_time - 3600))
    assert_refused(tmp_path, [a, b], r"case_b.npz.*older than their segmentation")


def test_refuses_probabilities_that_do_not_give_their_segmentation(tmp_path, two_folders):
    """issue 15 item 7: a segmentation from another run beside the probabilities is refused, all or nothing."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    a, b, _, pb = two_folders
    with open(b / "case_b.pkl", "rb") as f:
        props = pickle.load(f)
    SimpleITKIO().write_seg((pb["case_b"].argmax(0) + 1) % 3, str(b / "case_b.nii.gz"), props)
    assert_refused(tmp_path, [a, b], r"B/case_b.npz: the probabilities do not give the segmentation")


def test_corrupt_npz_payload_writes_nothing(tmp_path):
    """issue 15 item 9: a damaged payload (valid zip header, bad data) is named; no half-written output."""
    import zipfile

    shape = (20, 40, 40)  # large enough that reading the npy header does not reach the damaged end
    a = make_folder(tmp_path / "A", {c: random_probs(shape, seed=i) for i, c in enumerate(["case_a", "case_b"])})
    b = make_folder(tmp_path / "B", {c: random_probs(shape, seed=5 + i) for i, c in enumerate(["case_a", "case_b"])})

    raw = bytearray((b / "case_b.npz").read_bytes())
    info = zipfile.ZipFile(b / "case_b.npz").getinfo("probabilities.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    # damage the second half of the compressed array, after the npy header
    for i in range(start + info.compress_size // 2, start + info.compress_size - 8):
        raw[i] ^= 0xFF
    (b / "case_b.npz").write_bytes(bytes(raw))
    assert probabilities_shape(b / "case_b.npz") == (3, *shape)  # the header still reads: the checks pass
    out = tmp_path / "refused"
    with pytest.raises(InvalidDataError, match=r"case_b.npz"):
        ensemble_folders([a, b], out)
    assert not out.exists(), "case_a must not be written when case_b fails"
    existing = tmp_path / "existing"  # an earlier run's folder: replaced whole only if this run succeeds
    shutil.copytree(a, existing)
    (existing / "predict_args.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in existing.iterdir()}
    with pytest.raises(InvalidDataError, match=r"case_b.npz"):
        ensemble_folders([a, b], existing)
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == before


def test_an_output_folder_of_an_earlier_run_needs_overwrite(tmp_path, two_folders):
    """Never a silent mix: an earlier ensemble's extra cases do not stay beside a new one's."""
    a, b, _, _ = two_folders
    out = tmp_path / "ens"
    ensemble_folders([a, b], out)
    (out / "extra_case.nii.gz").write_bytes(b"from an older run")
    with pytest.raises(UserInputError, match="already holds the results"):
        ensemble_folders([a, b], out, overwrite=False)
    assert (out / "extra_case.nii.gz").is_file()
    ensemble_folders([a, b], out, weights=[3, 1], overwrite=True)
    assert not (out / "extra_case.nii.gz").exists()
    assert json.loads((out / "predict_args.json").read_text())["weights"] == [0.75, 0.25]
    other = tmp_path / "not_predictions"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match="not a prediction folder"):
        ensemble_folders([a, b], other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_refuses_an_output_that_is_a_file_or_inside_an_input(tmp_path, two_folders):
    a, b, _, _ = two_folders
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="existing file"):
        ensemble_folders([a, b], tmp_path / "file")
    with pytest.raises(UserInputError, match="inside"):
        ensemble_folders([a, b], a / "sub")
    assert not (a / "sub").exists()
