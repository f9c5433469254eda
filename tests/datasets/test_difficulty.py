"""Test sets of varying difficulty (diffusion_nnunet.datasets.difficulty) and what they must not change."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.datasets import make_dataset
from diffusion_nnunet.datasets.difficulty import draw_difficulty
from dnnunet_core.errors import UserInputError

# sha256 (first 16 hex digits) of images made by the generators before varied difficulty existed
# (main at cb84085, `GENERATORS[name].cases(1, 2, 0)`).
LEGACY = {"synthetic-us2d": {"imagesTr/us_tr_0000_0000.nii.gz": "1e9ebc9adf6bc18c",
                             "imagesTs/us_ts_0000_0000.nii.gz": "4c80b0a902a9d4f0",
                             "imagesTs/us_ts_0001_0000.nii.gz": "4338bb1556b5279f"},
          "synthetic-ct3d": {"imagesTr/ct_tr_0000_0000.nii.gz": "d23d80222f3709fc",
                             "imagesTs/ct_ts_0000_0000.nii.gz": "a9405b38f649c05b",
                             "imagesTs/ct_ts_0001_0000.nii.gz": "0de7a6d8e4cc5d85"}}


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def digest(path) -> str:
    return hashlib.sha256(read(path).tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Each synthetic dataset made with varied and with uniform test difficulty (1 training, 2 test cases)."""
    out = {}
    for name in LEGACY:
        out[name] = {mode: make_dataset(name, tmp_path_factory.mktemp(f"{name}-{mode}"), num_train=1, num_test=2,
                                        test_difficulty=mode) for mode in ("varied", "uniform")}
    return out


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_uniform_reproduces_the_old_sets_and_varied_keeps_the_training_cases(pairs, name):
    varied, uniform = pairs[name]["varied"], pairs[name]["uniform"]
    for relative, expected in LEGACY[name].items():
        assert digest(uniform / relative) == expected, relative
    train = "imagesTr/" + next(iter(LEGACY[name])).split("/")[1]
    assert digest(varied / train) == LEGACY[name][train]  # training images unchanged by the varied default
    for p in sorted((uniform / "labelsTr").iterdir()) + sorted((uniform / "labelsTs").iterdir()):
        assert np.array_equal(read(p), read(varied / p.relative_to(uniform)))  # labels never change
    for p in sorted((uniform / "imagesTs").iterdir()):
        a, b = read(p), read(varied / p.relative_to(uniform))
        assert a.dtype == b.dtype and a.shape == b.shape and not np.array_equal(a, b)
    record = json.loads((varied / "test_difficulty.json").read_text())
    assert sorted(record["cases"]) == sorted(p.name[:-7] for p in (varied / "labelsTs").iterdir())
    assert not (uniform / "test_difficulty.json").exists()


def test_difficulty_levels_vary_with_a_hard_share_and_are_seeded():
    draws = [draw_difficulty(0, i)[0] for i in range(400)]
    hard = np.array([d.hard for d in draws])
    levels = np.array([d.level for d in draws])
    assert 0.2 < hard.mean() < 0.4
    assert levels[hard].min() >= 0.6 and levels[~hard].max() <= 0.45
    assert all(d.contrast < 1.0 for d in draws if d.level > 0)
    assert draw_difficulty(0, 7)[0] == draw_difficulty(0, 7)[0] != draw_difficulty(1, 7)[0]


def test_harder_cases_are_noisier(tmp_path):
    """The degradation grows with the level: the residual to the uniform image grows."""
    varied = make_dataset("synthetic-us2d", tmp_path / "v", num_train=1, num_test=12)
    uniform = make_dataset("synthetic-us2d", tmp_path / "u", num_train=1, num_test=12, test_difficulty="uniform")
    record = json.loads((varied / "test_difficulty.json").read_text())["cases"]
    levels, change = [], []
    for case, d in record.items():
        a = read(uniform / "imagesTs" / f"{case}_0000.nii.gz").astype(float)
        b = read(varied / "imagesTs" / f"{case}_0000.nii.gz").astype(float)
        levels.append(d["level"])
        change.append(np.abs(a - b).mean())
    assert np.corrcoef(levels, change)[0, 1] > 0.7


def test_unknown_test_difficulty_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="test difficulty"):
        make_dataset("synthetic-us2d", tmp_path, num_train=1, num_test=1, test_difficulty="hard")
