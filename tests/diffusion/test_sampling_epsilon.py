"""`sample(prediction_type="epsilon")`: the semi-supervised reconstruction's DDIM through the one sampler.

`_reference_ddim` is the reconstruction's own loop as it was before it moved into `sample`
(semi_losses.ddim_reconstruct up to 2026-12-03): the sampler's epsilon path must give exactly
its output, from noise and from a noised start image.
"""
from __future__ import annotations

import pytest
import torch

from diffusion_nnunet.diffusion.sampling import sample
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.training.semi_losses import ddim_reconstruct

SHAPE = (2, 1, 6, 5)
MASK = 2 * torch.softmax(torch.randn((2, 3, 6, 5), generator=torch.Generator().manual_seed(1)), 1) - 1


def toy_rec_eps(x, mask_pm1, t_net):
    """A fixed non-linear eps predictor of the state, the mask and the time (like Rec's arguments)."""
    return torch.tanh(1.7 * x + mask_pm1[:, :1] - 0.4 * mask_pm1[:, 1:2]) * t_net.view(-1, 1, 1, 1) + 0.3 * x


def _reference_ddim(rec_eps, mask_pm1, image_shape, schedule, steps, clip=5.0, generator=None, start_image=None,
                    start_step=None):
    if start_image is None:
        sub = schedule.respace(steps)
        x = torch.randn(image_shape, device=mask_pm1.device, dtype=mask_pm1.dtype, generator=generator)
    else:
        k = schedule.num_steps - 1 if start_step is None else int(start_step)
        sub = schedule.truncate(k + 1).respace(min(steps, k + 1))
        x = sub.q_sample(start_image.to(mask_pm1.dtype), sub.num_steps - 1, generator=generator)
    for i in reversed(range(sub.num_steps)):
        abar = float(sub.alphas_cumprod[i])
        eps = rec_eps(x, mask_pm1, sub.network_time(torch.full((x.shape[0],), i, device=x.device)))
        x0_hat = ((x - (1 - abar) ** 0.5 * eps) / abar ** 0.5).clamp(-clip, clip)
        x = sub.ddim_step(x0_hat, x, i)
    return x


@pytest.mark.parametrize("steps, clip", [(3, 5.0), (10, 5.0), (4, 0.5)])
def test_epsilon_sampling_from_noise_equals_the_old_loop(steps, clip):
    schedule = NoiseSchedule.linear(10)
    expected = _reference_ddim(toy_rec_eps, MASK, SHAPE, schedule, steps, clip, torch.Generator().manual_seed(3))
    got = sample(lambda x, t: toy_rec_eps(x, MASK, t), SHAPE, schedule, "ddim", steps, prediction_type="epsilon",
                 clip_sample_range=clip, generator=torch.Generator().manual_seed(3), dtype=MASK.dtype)
    assert got.probabilities is None and got.x0 is not None
    assert torch.equal(got.x0, expected)
    assert torch.equal(ddim_reconstruct(toy_rec_eps, MASK, SHAPE, schedule, steps, clip,
                                        torch.Generator().manual_seed(3)), expected)


@pytest.mark.parametrize("steps, start_step", [(3, 3), (2, 6), (5, 2), (3, None)])
def test_epsilon_sampling_from_a_noised_image_equals_the_old_loop(steps, start_step):
    schedule = NoiseSchedule.linear(10)
    image = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8))
    expected = _reference_ddim(toy_rec_eps, MASK, SHAPE, schedule, steps, 5.0, torch.Generator().manual_seed(5),
                               start_image=image, start_step=start_step)
    got = ddim_reconstruct(toy_rec_eps, MASK, SHAPE, schedule, steps, 5.0, torch.Generator().manual_seed(5),
                           start_image=image, start_step=start_step)
    assert torch.equal(got, expected)
    assert not torch.equal(got, _reference_ddim(toy_rec_eps, MASK, SHAPE, schedule, steps, 5.0,
                                                torch.Generator().manual_seed(6), start_image=image,
                                                start_step=start_step))  # the seed matters: not a constant


def test_epsilon_sampling_refuses_what_only_mask_states_have():
    schedule = NoiseSchedule.linear(5)
    with pytest.raises(ValueError, match="prediction_type"):
        sample(lambda x, t: x, SHAPE, schedule, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="self_condition"):
        sample(lambda x, t, sc: x, SHAPE, schedule, prediction_type="epsilon", self_condition=True)
