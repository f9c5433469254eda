"""Uncertainty maps of implicit ensembles: closed-form values, streaming == batch, writer, error metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffusion_nnunet.inference import uncertainty as U
from diffusion_nnunet.inference.uncertainty import (
    SampleStatistics,
    UncertaintyMaps,
    entropy_error_auroc,
    error_rate_by_entropy_decile,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    sample_variance,
    uncertainty_maps,
    write_uncertainty_maps,
)


def _random_samples(n, c, spatial, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, c, *spatial), generator=g, dtype=torch.float64) * 2
    return torch.softmax(logits, dim=1).to(dtype)


# ---------------------------------------------------------------- closed form
def test_entropy_zero_for_agreeing_one_hot_and_log_c_for_uniform():
    onehot = torch.zeros(3, 4, 5)
    onehot[1] = 1.0
    samples = onehot.expand(6, -1, -1, -1).clone()
    assert torch.equal(predictive_entropy(samples.mean(0)), torch.zeros(4, 5))
    uniform = torch.full((3, 4, 5), 1 / 3)
    assert torch.allclose(predictive_entropy(uniform), torch.full((4, 5), math.log(3)), atol=1e-6)
    # class axis elsewhere
    assert torch.allclose(predictive_entropy(uniform.permute(1, 2, 0), dim=-1), torch.full((4, 5), math.log(3)))


def test_identical_samples_have_zero_variance_and_mi():
    p = _random_samples(1, 3, (4, 5))[0]
    samples = p.expand(5, -1, -1, -1).clone()
    zeros = torch.zeros(4, 5, dtype=torch.float64)
    assert torch.allclose(sample_variance(samples), zeros, atol=1e-12)
    assert torch.allclose(mutual_information(samples), zeros, atol=1e-12)
    # entropy of the mean = each sample's entropy
    assert torch.allclose(expected_entropy(samples), predictive_entropy(p), atol=1e-12)


def test_mi_equals_entropy_of_mean_for_disagreeing_one_hot_samples():
    samples = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 2, 1, 1)  # (N=2, C=2, 1, 1)
    mi = mutual_information(samples)
    assert mi.shape == (1, 1)
    assert mi.item() == pytest.approx(math.log(2), abs=1e-6)
    assert predictive_entropy(samples.mean(0)).item() == pytest.approx(math.log(2), abs=1e-6)
    assert expected_entropy(samples).item() == pytest.approx(0.0, abs=1e-7)
    # population variance: each class is 0 or 1 -> 0.25
    assert sample_variance(samples).item() == pytest.approx(0.25)


def test_uncertainty_maps_match_single_functions_and_mi_is_nonnegative():
    s = _random_samples(4, 3, (6, 7), dtype=torch.float32)
    m = uncertainty_maps(s, with_mutual_information=True)
    assert torch.allclose(m.entropy, predictive_entropy(s.mean(0)))
    assert torch.allclose(m.variance, sample_variance(s))
    assert torch.allclose(m.mutual_information, mutual_information(s))
    assert (m.mutual_information >= 0).all()
    assert uncertainty_maps(s).mutual_information is None
    assert m.entropy.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    s = _random_samples(3, 2, (4, 4), dtype=dtype)
    m = uncertainty_maps(s, with_mutual_information=True)
    ref = uncertainty_maps(s.to(torch.float64), with_mutual_information=True)
    for got, want in ((m.entropy, ref.entropy), (m.variance, ref.variance), (m.mutual_information, ref.mutual_information)):
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert torch.allclose(got.double(), want, atol=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        sample_variance(torch.rand(3, 4))  # no spatial axis
    with pytest.raises(ValueError):
        mutual_information(torch.rand(0, 2, 3))


# ---------------------------------------------------------------- streaming
@pytest.mark.parametrize("spatial", [(7, 9), (3, 5, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_statistics_equals_batch(spatial, dtype):
    s = _random_samples(5, 3, spatial, seed=1, dtype=dtype)
    before = s.clone()
    stats = SampleStatistics(with_mutual_information=True)
    for p in s:
        stats.update(p)
    mean, maps = stats.finalize()
    assert torch.equal(s, before)  # inputs untouched
    ref = uncertainty_maps(s.double(), with_mutual_information=True)
    assert stats.count == 5 and mean.shape == (3, *spatial)
    assert mean.dtype == dtype and maps.entropy.dtype == dtype
    assert torch.allclose(mean.double(), s.double().mean(0), atol=1e-6)
    assert torch.allclose(maps.entropy.double(), ref.entropy, atol=1e-6)
    assert torch.allclose(maps.variance.double(), ref.variance, atol=1e-6)
    assert torch.allclose(maps.mutual_information.double(), ref.mutual_information, atol=1e-6)


def test_sample_statistics_errors_and_defaults():
    stats = SampleStatistics()
    with pytest.raises(RuntimeError):
        stats.finalize()
    stats.update(torch.rand(2, 3, 3))
    with pytest.raises(ValueError):
        stats.update(torch.rand(2, 3, 4))
    _, maps = stats.finalize()
    assert maps.mutual_information is None
    assert torch.equal(maps.variance, torch.zeros(3, 3))  # one sample: no spread


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_results_stay_on_device():
    s = _random_samples(3, 2, (4, 4), dtype=torch.float32).cuda()
    m = uncertainty_maps(s, with_mutual_information=True)
    assert m.entropy.is_cuda and m.variance.is_cuda and m.mutual_information.is_cuda
    stats = SampleStatistics(with_mutual_information=True)
    for p in s:
        stats.update(p)
    _, sm = stats.finalize()
    assert torch.allclose(sm.entropy, m.entropy, atol=1e-6)


# ---------------------------------------------------------------- writer
def _reference(tmp_path, shape_zyx, name="case_000.nii.gz"):
    img = sitk.GetImageFromArray(np.zeros(shape_zyx, dtype=np.uint8))
    dim = len(shape_zyx)
    img.SetSpacing((0.5, 0.75, 2.0)[:dim])
    img.SetOrigin((10.0, -4.0, 3.5)[:dim])
    if dim == 3:
        c, s_ = math.cos(0.3), math.sin(0.3)
        img.SetDirection((c, -s_, 0.0, s_, c, 0.0, 0.0, 0.0, 1.0))
    else:
        img.SetDirection((0.0, 1.0, 1.0, 0.0))
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path, img


@pytest.mark.parametrize("shape", [(4, 5, 6), (5, 6)])
def test_writer_copies_geometry_and_round_trips_values(tmp_path, shape):
    ref_path, ref = _reference(tmp_path, shape)
    g = torch.Generator().manual_seed(3)
    maps = UncertaintyMaps(torch.rand(shape, generator=g), torch.rand(shape, generator=g), torch.rand(shape, generator=g))
    written = write_uncertainty_maps(maps, ref_path, tmp_path / "out" / "case_000")
    assert [p.name for p in written] == ["case_000_entropy.nii.gz", "case_000_variance.nii.gz", "case_000_mi.nii.gz"]
    for path, value in zip(written, (maps.entropy, maps.variance, maps.mutual_information)):
        img = sitk.ReadImage(str(path))
        assert img.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), value.numpy().astype(np.float32))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)  # no temp files


def test_writer_accepts_nnunet_2d_layout_and_skips_missing_mi(tmp_path):
    ref_path, _ = _reference(tmp_path, (5, 6))
    maps = UncertaintyMaps(torch.rand(1, 5, 6), torch.rand(1, 5, 6), None)
    written = write_uncertainty_maps(maps, ref_path, tmp_path / "c")
    assert [p.name for p in written] == ["c_entropy.nii.gz", "c_variance.nii.gz"]
    assert sitk.ReadImage(str(written[0])).GetDimension() == 2


def test_writer_shape_mismatch_raises_and_writes_nothing(tmp_path):
    ref_path, _ = _reference(tmp_path, (4, 5, 6))
    good, bad = torch.rand(4, 5, 6), torch.rand(6, 5, 4)  # x,y,z order is the classic mistake
    with pytest.raises(ValueError, match="shape"):
        write_uncertainty_maps(UncertaintyMaps(good, good, bad), ref_path, tmp_path / "case_000")
    assert [p.name for p in tmp_path.iterdir()] == [ref_path.name]


def test_writer_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    ref_path, _ = _reference(tmp_path, (4, 5, 6))
    real_write = sitk.WriteImage
    calls = []

    def flaky(img, path, *args):
        calls.append(path)
        if len(calls) == 2:
            real_write(img, path, *args)  # a half-written temp file...
            raise RuntimeError("disk full")  # ...then the failure
        real_write(img, path, *args)

    monkeypatch.setattr(U.sitk, "WriteImage", flaky)
    m = torch.rand(4, 5, 6)
    with pytest.raises(RuntimeError, match="disk full"):
        write_uncertainty_maps(UncertaintyMaps(m, m, m), ref_path, tmp_path / "case_000")
    assert [p.name for p in tmp_path.iterdir()] == [ref_path.name]


# ---------------------------------------------------------------- error metrics
def test_error_rate_by_decile_high_entropy_errors():
    entropy = np.linspace(0, 1, 1000).reshape(10, 100)
    error = entropy > 0.9  # only the top decile is wrong
    rows = error_rate_by_entropy_decile(entropy, error)
    assert len(rows) == 10
    assert [r["bin"] for r in rows] == list(range(10))
    assert sum(r["voxels"] for r in rows) == 1000
    assert rows[-1]["error_rate"] == 1.0 and rows[0]["error_rate"] == 0.0
    assert all(r["entropy_low"] <= r["entropy_high"] for r in rows)
    assert set(rows[0]) == {"bin", "entropy_low", "entropy_high", "voxels", "error_rate"}


def test_error_rate_by_decile_merges_tied_entropies():
    # 70% of voxels at exactly 0 (all samples agree): they must share one bin.
    entropy = np.r_[np.zeros(700), np.linspace(0.1, 1.0, 300)]
    error = entropy > 0.5
    rows = error_rate_by_entropy_decile(entropy, error)
    assert rows[0]["voxels"] == 700 and rows[0]["error_rate"] == 0.0
    assert rows[-1]["error_rate"] == 1.0
    assert sum(r["voxels"] for r in rows) == 1000 and len(rows) < 10
    one = error_rate_by_entropy_decile(np.zeros(5), np.array([1, 0, 0, 0, 0], bool))
    assert len(one) == 1 and one[0]["error_rate"] == pytest.approx(0.2)


def test_auroc_perfect_random_and_ties():
    entropy = np.linspace(0, 1, 200)
    assert entropy_error_auroc(entropy, entropy > 0.7) == pytest.approx(1.0)
    assert entropy_error_auroc(entropy, entropy < 0.3) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    assert entropy_error_auroc(rng.random(20000), rng.random(20000) < 0.3) == pytest.approx(0.5, abs=0.02)
    # all tied: no information -> exactly 0.5
    assert entropy_error_auroc(np.zeros(10), np.arange(10) < 3) == pytest.approx(0.5)
    # partial ties by hand: pos scores {1, 2}, neg {1, 0}: pairs (1>0)=1, (1=1)=.5, (2>1)=1, (2>0)=1 -> 3.5/4
    e, err = np.array([1.0, 2.0, 1.0, 0.0]), np.array([True, True, False, False])
    assert entropy_error_auroc(e, err) == pytest.approx(0.875)
    assert U._rank_auroc(e, err) == pytest.approx(0.875)
    assert math.isnan(entropy_error_auroc(entropy, np.zeros(200, bool)))


def test_rank_auroc_matches_sklearn_path_with_ties():
    rng = np.random.default_rng(1)
    e = np.round(rng.random(3000), 1)  # many ties
    err = rng.random(3000) < (0.2 + 0.6 * e)
    assert U._rank_auroc(e, err) == pytest.approx(entropy_error_auroc(e, err), abs=1e-12)
    assert entropy_error_auroc(e, err) > 0.7
