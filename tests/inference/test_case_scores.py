"""Per-case uncertainty scores and the review list (diffusion_nnunet.inference.case_scores)."""
from __future__ import annotations

import csv
import json
import math
import pickle

import numpy as np
import pytest

from diffusion_nnunet.inference.case_scores import (
    boundary_band,
    case_scores,
    case_scores_from_folders,
    rank_cases,
    write_case_table,
)
from dnnunet_core.errors import InvalidDataError


def onehot(label: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c, dtype=np.float32)[label].transpose(-1, *range(label.ndim))


def square(y0, x0, size, shape=(20, 20), value=1):
    seg = np.zeros(shape, np.int64)
    seg[y0:y0 + size, x0:x0 + size] = value
    return seg


def test_identical_samples_agree_fully_with_zero_entropy():
    sample = onehot(square(5, 5, 8), 2)
    s = case_scores(np.stack([sample] * 4), (0.5, 0.5), ["background", "lesion"])
    assert s["agreement"] == {"lesion": 1.0} and s["disagreement"] == 0.0
    assert s["entropy_foreground"] == 0.0 and s["entropy_boundary"] == 0.0
    assert s["volume"]["lesion"] == pytest.approx(64 * 0.25) and s["volume_unit"] == "mm2"
    assert s["volume_sd"]["lesion"] == 0.0 and s["num_samples"] == 4


def test_disjoint_samples_do_not_agree():
    a, b = onehot(square(0, 0, 5), 2), onehot(square(10, 10, 5), 2)
    s = case_scores(np.stack([a, b]), (1.0, 1.0))
    assert s["agreement"]["1"] == 0.0 and s["disagreement"] == 1.0
    # the mean is 0.5/0.5 on both squares: argmax keeps background, so no foreground is predicted
    assert math.isnan(s["entropy_foreground"])


def test_partial_overlap_entropy_and_volume_spread():
    a, b = onehot(square(0, 0, 4), 2), onehot(square(0, 0, 4) | square(4, 0, 4), 2)  # 16 and 32 pixels
    mean = 0.75 * a + 0.25 * b  # the first sample weighs more: the prediction is a's square
    s = case_scores(np.stack([a, b]), (1.0, 2.0), mean_probs=mean)
    assert s["agreement"]["1"] == pytest.approx(2 * 16 / 48)
    assert s["volume"]["1"] == pytest.approx(16 * 2.0)
    assert s["volume_sd"]["1"] == pytest.approx(np.std([32.0, 64.0]))
    # foreground voxels: mean (background 0, class 1 1) -> entropy 0 inside a's square
    assert s["entropy_foreground"] == pytest.approx(0.0)
    h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    band = boundary_band(mean.argmax(0))
    expected = np.where(band & (square(4, 0, 4) > 0), h, 0.0).sum() / band.sum()
    assert s["entropy_boundary"] == pytest.approx(expected)


def test_boundary_band_is_within_width_of_the_boundary_and_3d_volume_in_ml():
    seg = np.zeros((1, 10, 10), np.int64)  # nnU-Net's 2D layout: a singleton axis
    seg[0, 3:7, 3:7] = 1
    band = boundary_band(seg, 1)
    assert band[0, 3:7, 3:7].sum() == 16 - 4  # inner ring of the square (4x4 minus its 2x2 core)
    assert band[0, 2, 2] and band[0, 7, 7] and not band[0, 1, 1] and not band[0, 5, 5]
    assert boundary_band(seg, 2)[0, 1, 1]
    vol = np.zeros((4, 4, 4), np.int64)
    vol[:2] = 1
    s = case_scores(onehot(vol, 2)[None], (2.0, 1.0, 1.0))
    assert s["volume_unit"] == "ml" and s["volume"]["1"] == pytest.approx(32 * 2.0 / 1000)
    assert math.isnan(s["agreement"]["1"])  # one sample: no pair


def test_case_table_is_sorted_least_certain_first_and_complete(tmp_path):
    rng = np.random.default_rng(0)
    scores = {}
    for i in range(7):
        base = square(4, 4, 8)
        samples = [onehot(np.where(rng.random(base.shape) < 0.05 * i, 1 - base, base), 2) for _ in range(3)]
        scores[f"case_{i}"] = case_scores(np.stack(samples), (1.0, 1.0), ["background", "lesion"])
    scores["case_empty"] = case_scores(onehot(np.zeros((20, 20), np.int64), 2)[None].repeat(2, 0), (1.0, 1.0),
                                       ["background", "lesion"])
    order = write_case_table(scores, tmp_path, "entropy_foreground", flagged={"case_6": True})
    with open(tmp_path / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == order and sorted(order) == sorted(scores)
    assert order[0] == "case_empty"  # NaN entropy (nothing predicted) is the least certain
    values = [float(r["entropy_foreground"]) for r in rows[1:]]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]
    assert [r["flagged"] for r in rows].count("True") == 1
    data = json.loads((tmp_path / "cases.json").read_text())
    assert [c["case"] for c in data["cases"]] == order and data["num_flagged"] == 1
    assert data["cases"][0]["entropy_foreground"] is None  # strict JSON
    # identical samples (case_0) and two empty samples agree fully: the most certain
    assert set(rank_cases(scores, "disagreement")[-2:]) == {"case_0", "case_empty"}


def test_scores_from_several_prediction_folders(tmp_path):
    a, b = onehot(square(0, 0, 4), 3)[:, None], onehot(square(0, 0, 4, value=2), 3)[:, None]  # (C, 1, H, W)
    for name, probs in (("f0", a), ("f1", b)):
        (tmp_path / name).mkdir()
        np.savez_compressed(tmp_path / name / "c1.npz", probabilities=probs)
        with open(tmp_path / name / "c1.pkl", "wb") as f:
            pickle.dump({"spacing": [999.0, 0.5, 0.5]}, f)
        (tmp_path / name / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    scores = case_scores_from_folders([tmp_path / "f0", tmp_path / "f1"])
    assert scores["c1"]["agreement"] == {"a": 0.0, "b": 0.0}
    assert scores["c1"]["volume_unit"] == "mm2"
    (tmp_path / "f1" / "c1.npz").unlink()
    with pytest.raises(InvalidDataError, match="save-probabilities"):
        case_scores_from_folders([tmp_path / "f0", tmp_path / "f1"])
