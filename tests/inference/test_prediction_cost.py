"""Prediction at the price of nnU-Net's test-time augmentation (issue 17): samples as mirror variants,
batched tiles, per-run noise, CPU precision, the per-sample hook."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from diffusion_nnunet.diffusion.sampling import sample
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.inference.precision import network_autocast
from diffusion_nnunet.inference.uncertainty import predictive_entropy
from tests.inference.tiny_predictors import (
    tiny_diffusion_predictor,
    tiny_nnunet_predictor,
)


def _image(*spatial, seed=1):
    return torch.randn((1, *spatial), generator=torch.Generator().manual_seed(seed))


class _ImageRecorder(torch.nn.Module):
    """Wraps a denoiser and records the image channel of every run in every call."""

    def __init__(self, network):
        super().__init__()
        self.network, self.images = network, []

    def forward(self, x, t):
        self.images.append(x[:, :1].clone())
        return self.network(x, t)


def test_sample_i_runs_on_mirror_variant_i_mod_m():
    """One tile (image = patch), 6 samples, 2D (M = 4): the runs of the first step see the image
    flipped as nnU-Net's variants (), (2,), (3,), (2, 3), (), (2,)."""
    predictor = tiny_diffusion_predictor(num_samples=6, max_sample_batch=6, start_step=None)
    predictor.network = recorder = _ImageRecorder(predictor.network)
    image = _image(1, 16, 16)
    predictor.predict_sliding_window_return_logits(image)
    variants = predictor.mirror_variants()
    assert variants == [(), (2,), (3,), (2, 3)]
    first_call = recorder.images[0]  # all 6 runs in one batch
    assert first_call.shape[0] == 6
    tile = image[None, :, 0]  # (1, 1, 16, 16)
    for i in range(6):
        flip = variants[i % 4]
        expected = torch.flip(tile, flip) if flip else tile
        torch.testing.assert_close(first_call[i:i + 1], expected)


def test_cycle_runs_are_the_product_runs_of_their_variant():
    """Noise per (tile, variant, sample): cycling's sample i equals the product's run (i mod M, i)."""
    image = _image(1, 16, 16)
    cycle = tiny_diffusion_predictor(num_samples=4, keep_samples=True)
    product = tiny_diffusion_predictor(num_samples=4, keep_samples=True, sample_mirroring="product")
    cycle.predict_sliding_window_return_logits(image)
    product.predict_sliding_window_return_logits(image)
    assert cycle.last_samples.shape[0] == 4 and product.last_samples.shape[0] == 16
    for i in range(4):
        torch.testing.assert_close(cycle.last_samples[i], product.last_samples[(i % 4) * 4 + i])


def test_default_samples_are_the_mirror_variants_and_reproducible():
    image = _image(1, 24, 20)
    first = tiny_diffusion_predictor(seed=3)
    assert first.resolved_num_samples() == 4  # 2D: 4 mirror variants
    a = first.predict_sliding_window_return_logits(image)
    b = tiny_diffusion_predictor(seed=3).predict_sliding_window_return_logits(image)
    c = tiny_diffusion_predictor(seed=4).predict_sliding_window_return_logits(image)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-2
    assert tiny_diffusion_predictor(patch_size=(8, 8, 8), mirror_axes=(0, 1, 2)).resolved_num_samples() == 8
    assert tiny_diffusion_predictor(mirror_axes=None).resolved_num_samples() == 1
    assert tiny_diffusion_predictor(num_samples=2).resolved_num_samples() == 2  # an explicit N wins


class _HalfAgreeing(torch.nn.Module):
    """Left half: logits follow the noisy mask (samples disagree); right half: class 0, certain."""

    def forward(self, x, t):
        logits = 50.0 * (2 * x[:, 1:] - 1)
        logits[..., x.shape[-1] // 2:] = torch.tensor([50.0, -50.0, -50.0]).reshape(1, 3, 1, 1)
        return logits


def test_entropy_is_zero_where_all_samples_agree():
    predictor = tiny_diffusion_predictor(num_samples=4, mirror_axes=None, start_step=None)
    predictor.network = _HalfAgreeing()
    logits = predictor.predict_sliding_window_return_logits(_image(1, 16, 16))
    entropy = predictive_entropy(torch.softmax(logits.float(), 0))[0]
    variance = predictor.last_sample_statistics[0, 0]
    assert entropy[:, 8:].abs().max() < 1e-3 and variance[:, 8:].abs().max() < 1e-3
    assert entropy[:, :8].max() > 0.3 and variance[:, :8].max() > 0.05


@pytest.mark.parametrize("patch, image, axes", [((16, 16), (1, 40, 36), (0, 1)), ((8, 8, 8), (20, 12, 16), (0, 1, 2))])
def test_tile_batching_equals_one_tile_at_a_time(patch, image, axes):
    """nnU-Net predictor: batched tiles equal nnunetv2's own one-tile loop (same Gaussian, half
    accumulator) within float tolerance, in 2D and 3D."""
    data = _image(*image)
    one = tiny_nnunet_predictor(patch_size=patch, mirror_axes=axes, tile_batch=1)
    batched = tiny_nnunet_predictor(patch_size=patch, mirror_axes=axes, tile_batch=5)
    calls = []
    batched.network.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    stock_predictor = tiny_nnunet_predictor(patch_size=patch, mirror_axes=axes)
    padded = data  # larger than the patch: no padding
    slicers = stock_predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    stock = nnUNetPredictor._internal_predict_sliding_window_return_logits(stock_predictor, padded, slicers, False)
    a = one.predict_sliding_window_return_logits(data)
    b = batched.predict_sliding_window_return_logits(data)
    assert len(slicers) > 5 and max(calls) == 5
    torch.testing.assert_close(a, stock, rtol=0, atol=0)
    torch.testing.assert_close(b.float(), stock.float(), rtol=2e-3, atol=2e-3)


def test_tile_batching_leaves_diffusion_predictions_unchanged():
    data = _image(1, 40, 36)
    one = tiny_diffusion_predictor(tile_batch=1, keep_samples=True)
    batched = tiny_diffusion_predictor(tile_batch=4, max_sample_batch=16, keep_samples=True)
    a = one.predict_sliding_window_return_logits(data)
    b = batched.predict_sliding_window_return_logits(data)
    assert max(c[0] for c in batched.network.calls) == 16 and max(c[0] for c in one.network.calls) == 2
    torch.testing.assert_close(b.float(), a.float(), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(batched.last_samples, one.last_samples, rtol=2e-3, atol=2e-3)


def test_default_tile_batch_fills_the_plans_batch_with_runs():
    assert tiny_nnunet_predictor(batch_size=6).tile_batch_size() == 6
    assert tiny_diffusion_predictor(batch_size=8).tile_batch_size() == 2  # 4 samples per tile
    assert tiny_diffusion_predictor(batch_size=3).tile_batch_size() == 1


def test_the_cpu_path_stays_float32():
    """No autocast on the CPU: the denoiser sees float32 with autocast off; outputs are float32."""
    predictor = tiny_diffusion_predictor(keep_samples=True)
    predictor.predict_sliding_window_return_logits(_image(1, 16, 16))
    assert {(dtype, autocast) for _, dtype, autocast in predictor.network.calls} == {(torch.float32, False)}
    assert predictor.last_samples.dtype == torch.float32
    assert isinstance(network_autocast(torch.device("cpu")), type(__import__("contextlib").nullcontext()))


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_cuda_selects_autocast():
    context = network_autocast(torch.device("cuda"), torch.bfloat16)
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16


def test_one_generator_per_batch_element_matches_separate_runs():
    schedule = NoiseSchedule.linear(5)
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1

    def denoise(m, t):
        return 5 * (2 * m - 1) + t.reshape(-1, 1, 1, 1)

    gens = lambda: [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    together = sample(denoise, x0.shape, schedule, "ddpm", start_step=2, x0_start=x0, generator=gens())
    for b, g in enumerate(gens()):
        alone = sample(denoise, (1, 3, 8, 8), schedule, "ddpm", start_step=2, x0_start=x0[b:b + 1], generator=g)
        torch.testing.assert_close(together.probabilities[b:b + 1], alone.probabilities)


def test_last_samples_are_unflipped_and_average_to_the_mean():
    """One tile, a denoiser that ignores the noise: every run's un-flipped probabilities equal the
    flip-averaged mean, which is what the predictor returns (log-probabilities)."""

    class Deterministic(torch.nn.Module):
        def forward(self, x, t):
            return 3 * x[:, :1].repeat(1, 3, 1, 1) * torch.tensor([1.0, -1.0, 0.5]).reshape(1, 3, 1, 1)

    predictor = tiny_diffusion_predictor(keep_samples=True)
    predictor.network = Deterministic()
    logits = predictor.predict_sliding_window_return_logits(_image(1, 16, 16))
    samples = predictor.last_samples
    assert samples.shape == (4, 3, 1, 16, 16)
    for s in samples:  # flip-equivariant network: un-flipped runs are identical
        torch.testing.assert_close(s, samples[0], rtol=1e-3, atol=1e-3)
    # the returned mean went through nnU-Net's half-precision accumulator as log-probabilities
    torch.testing.assert_close(samples.mean(0), torch.softmax(logits.float(), 0), rtol=0, atol=1e-2)


def test_samples_to_original_places_the_samples_in_the_image():
    from diffusion_nnunet.inference.presegmentation import samples_to_original
    from tests.inference.tiny_predictors import DATASET_JSON  # noqa: F401

    predictor = tiny_nnunet_predictor()
    properties = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": [1, 20, 18],
                  "shape_after_cropping_and_before_resampling": [1, 16, 16],
                  "bbox_used_for_cropping": [[0, 1], [2, 18], [1, 17]]}
    samples = torch.rand(4, 3, 1, 16, 16)
    out = samples_to_original(samples, properties, predictor.plans_manager, predictor.configuration_manager)
    assert out.shape == (4, 3, 1, 20, 18)
    np.testing.assert_allclose(out[:, :, :, 2:18, 1:17], samples.numpy(), atol=1e-5)
    assert np.all(out[:, :, :, :2] == 0)
