"""Tests of diffusion_nnunet.evaluation: Dice/HD95/NSD values, conventions, spacing, errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from diffusion_nnunet.evaluation import (
    evaluate_folders,
    format_table,
    load_evaluation,
    read_segmentation,
    write_evaluation,
)
from dnnunet_core.errors import InvalidDataError

LABELS = {"background": 0, "a": 1, "b": 2, "c": 3}


def write_seg(path, arr, spacing):
    """Write `arr` (numpy axis order) with `spacing` (numpy axis order)."""
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.uint8))
    img.SetSpacing([float(s) for s in spacing[::-1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def blob(shape, seed, threshold=0.6, sigma=3.0):
    """A random smooth binary blob (thresholded smoothed noise, largest component)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    mask = field > np.quantile(field, threshold)
    lab, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def single_case(tmp_path, ref, pred, spacing, **kwargs):
    write_seg(tmp_path / "ref" / "case1.nii.gz", ref, spacing)
    write_seg(tmp_path / "pred" / "case1.nii.gz", pred, spacing)
    return evaluate_folders(tmp_path / "ref", tmp_path / "pred", **kwargs)


def test_dice_hand_computed_and_empty_class_conventions(tmp_path):
    ref = np.zeros((4, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 2:7, 2:7] = 1          # 50 voxels
    pred[1:3, 3:7, 2:7] = 1         # 40 voxels, all inside the reference -> Dice 80/90
    ref[0, 0:2, 0:2] = 2            # class b only in the reference
    # class c in neither
    res = single_case(tmp_path, ref, pred, (2.0, 1.0, 1.0), labels=LABELS)
    m = res["per_case"][0]["metrics"]
    assert m["a"]["Dice"] == pytest.approx(80 / 90)
    assert (m["a"]["n_ref"], m["a"]["n_pred"]) == (50, 40)
    assert m["a"]["HD95"] == pytest.approx(1.0)     # one voxel row missing along y (1 mm)
    assert 0 < m["a"]["NSD"] <= 1
    # exactly one empty: Dice 0, NSD 0, HD95 NaN (counted)
    assert m["b"]["Dice"] == 0 and m["b"]["NSD"] == 0 and math.isnan(m["b"]["HD95"])
    # both empty: all NaN, skipped in the means
    assert all(math.isnan(m["c"][k]) for k in ("Dice", "HD95", "NSD"))
    assert res["mean"]["b"]["n_hd95_undefined"] == 1
    assert res["mean"]["c"]["n_cases"] == 0 and math.isnan(res["mean"]["c"]["Dice"])
    fg = res["foreground_mean"]
    assert fg["Dice"] == pytest.approx((80 / 90 + 0) / 2)
    assert fg["HD95"] == pytest.approx(1.0)
    assert fg["n_hd95_undefined"] == 1


def test_hd95_matches_medpy_on_anisotropic_blobs(tmp_path):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    spacing = (2.5, 0.7, 1.1)  # numpy axis order (z, y, x)
    shape = (16, 40, 36)
    ref = blob(shape, seed=1)
    # (a) boundary a little off everywhere (same smooth field, other threshold), (b) plus one-sided
    # errors: holes / islands from a second blob.
    pred_a = blob(shape, seed=1, threshold=0.65)
    pred_b = ndimage.binary_dilation(blob(shape, seed=1, threshold=0.62)) ^ blob(shape, seed=2, threshold=0.9)
    surface_distances = getattr(medpy_binary, "__surface_distances")
    for i, pred in enumerate((pred_a, pred_b)):
        res = single_case(tmp_path / str(i), ref.astype(np.uint8), pred.astype(np.uint8), spacing)
        m = res["per_case"][0]["metrics"]["1"]
        # Exact agreement with MedPy's boundary distances aggregated MONAI's way (larger of the two
        # directed 95th percentiles); float32 in MONAI -> rel 1e-5.
        d1 = surface_distances(pred, ref, spacing, 1)
        d2 = surface_distances(ref, pred, spacing, 1)
        assert m["HD95"] == pytest.approx(max(np.percentile(d1, 95), np.percentile(d2, 95)), rel=1e-5)
        # MedPy's hd95 pools both directions, which can only give a smaller value.
        theirs = medpy_binary.hd95(pred, ref, voxelspacing=spacing)
        assert m["HD95"] >= theirs - 1e-5
        if i == 0:  # documented tolerance for two-sided boundary errors: the largest voxel spacing
            assert m["HD95"] - theirs <= max(spacing)
        assert m["Dice"] == pytest.approx(2 * np.sum(ref & pred) / (ref.sum() + pred.sum()))


def test_spacing_awareness(tmp_path):
    ref = blob((10, 30, 30), seed=3).astype(np.uint8)
    pred = ndimage.shift(ref, (0, 2, 1), order=0)
    a = single_case(tmp_path / "a", ref, pred, (2.0, 0.5, 0.8), nsd_tolerance_mm=1.0)
    b = single_case(tmp_path / "b", ref, pred, (4.0, 1.0, 1.6), nsd_tolerance_mm=2.0)
    ma, mb = a["per_case"][0]["metrics"]["1"], b["per_case"][0]["metrics"]["1"]
    assert ma["HD95"] > 0
    assert mb["HD95"] == pytest.approx(2 * ma["HD95"], rel=1e-5)
    assert mb["NSD"] == pytest.approx(ma["NSD"])   # tolerance scaled with the spacing
    assert mb["Dice"] == pytest.approx(ma["Dice"])
    assert a["settings"]["nsd_tolerance_mm"] == 1.0


def test_2d_stored_with_singleton_axis_equals_plain_2d(tmp_path):
    yy, xx = np.mgrid[:40, :40]
    ref = ((yy - 20) ** 2 + (xx - 18) ** 2 < 100).astype(np.uint8)
    pred = ((yy - 22) ** 2 + (xx - 21) ** 2 < 81).astype(np.uint8)
    plain = single_case(tmp_path / "2d", ref, pred, (0.6, 0.9))
    nnunet_style = single_case(tmp_path / "3d", ref[None], pred[None], (999.0, 0.6, 0.9))
    arr, sp = read_segmentation(tmp_path / "3d" / "ref" / "case1.nii.gz")
    assert arr.shape == (40, 40) and sp == pytest.approx((0.6, 0.9))
    for k in ("Dice", "HD95", "NSD"):
        assert nnunet_style["per_case"][0]["metrics"]["1"][k] == pytest.approx(plain["per_case"][0]["metrics"]["1"][k])
    assert 0 < plain["per_case"][0]["metrics"]["1"]["NSD"] < 1


def test_inferred_labels_regions_and_ignore(tmp_path):
    ref = np.zeros((12, 12), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6] = 1
    ref[6:10, 2:6] = 2
    pred[2:10, 2:6] = 1          # region (1, 2) is perfect, label 1 over-segments
    ref[0, :] = 4                # ignore label
    pred[0, :] = 1               # prediction under the ignore label does not count
    write_seg(tmp_path / "ref" / "c.nii.gz", ref, (1.0, 1.0))
    write_seg(tmp_path / "pred" / "c.nii.gz", pred, (1.0, 1.0))
    ds = {"labels": {"background": 0, "one": 1, "whole": [1, 2], "ignore": 4}, "file_ending": ".nii.gz"}
    res = evaluate_folders(tmp_path / "ref", tmp_path / "pred", dataset_json=ds)
    m = res["per_case"][0]["metrics"]
    assert list(m) == ["one", "whole"]
    assert m["whole"]["Dice"] == pytest.approx(1.0) and m["whole"]["HD95"] == pytest.approx(0.0)
    assert m["one"]["Dice"] == pytest.approx(2 * 16 / (16 + 32))
    # without labels: classes named by their values, union over the cases
    res2 = evaluate_folders(tmp_path / "ref", tmp_path / "pred")
    assert list(res2["mean"]) == ["1", "2", "4"]


def test_missing_files_are_refused(tmp_path):
    a = np.zeros((3, 8, 8), np.uint8)
    a[1, 2:5, 2:5] = 1
    write_seg(tmp_path / "ref" / "x.nii.gz", a, (1, 1, 1))
    write_seg(tmp_path / "ref" / "y.nii.gz", a, (1, 1, 1))
    write_seg(tmp_path / "pred" / "x.nii.gz", a, (1, 1, 1))
    with pytest.raises(InvalidDataError, match="y"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred")
    res = evaluate_folders(tmp_path / "ref", tmp_path / "pred", allow_missing=True)
    assert [pc["case"] for pc in res["per_case"]] == ["x"]
    write_seg(tmp_path / "pred" / "z.nii.gz", a, (1, 1, 1))
    with pytest.raises(InvalidDataError, match=r"z\.nii\.gz.*no reference"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", allow_missing=True)


def test_shape_mismatch_is_refused(tmp_path):
    write_seg(tmp_path / "ref" / "x.nii.gz", np.ones((3, 8, 8)), (1, 1, 1))
    write_seg(tmp_path / "pred" / "x.nii.gz", np.ones((3, 8, 9)), (1, 1, 1))
    with pytest.raises(InvalidDataError, match="shape"):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred")


def test_write_load_and_table(tmp_path):
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[1:3, 2:7, 2:7] = 1
    ref[0, 0:2, 0:2] = 2
    pred = (ref == 1).astype(np.uint8)
    res = single_case(tmp_path, ref, pred, (2.0, 1.0, 1.0), labels=LABELS)
    out = tmp_path / "out" / "summary.json"
    write_evaluation(res, out)

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads(out.read_text(), parse_constant=no_nan)
    assert data["per_case"][0]["metrics"]["b"]["HD95"] is None
    assert data["per_case"][0]["metrics"]["a"]["Dice"] == pytest.approx(1.0)
    back = load_evaluation(out)
    assert math.isnan(back["mean"]["c"]["Dice"])

    table = format_table(res)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 3 + 1          # header, rule, 3 classes, foreground mean
    assert "foreground mean" in lines[-1] and "0.5000" in lines[-1]  # mean Dice of a (1) and b (0)
    assert "n/a" in table and "NSD@1mm" in lines[0]
