"""Reverse-process samplers (methods.md sections 3 and 4): DDPM, DDIM (eta = 0), PD-DDPM start.

One loop serves all of them. With ``sched`` the sampling schedule (the training schedule, or its
re-spaced sub-sequence when ``num_steps`` is given) and ``k`` the start index in it, each step
``i = k, k-1, ..., 0`` does::

    logits = denoise(m_i, t_net_i)            # m_i = (clip(x_i, -1, 1) + 1) / 2
    p_i    = softmax(logits, dim=1)           # the step's probabilities (per_step[...]); sigmoid for regions
    x0_hat = 2 p_i - 1
    x_{i-1} = ddpm_step / ddim_step(x0_hat, x_i, i)

``t_net_i = sched.network_time(i)`` carries the ORIGINAL training index of step i. The result is
``p_0``, the last step's probabilities (the final state ``x_{-1}`` equals ``2 p_0 - 1`` for both
samplers, so it carries nothing more).

Start state (conventions chosen here):

* ``start_step`` counts in the sampling sequence (0..n-1 with n the number of sampling steps);
  None means ``n - 1`` (full sampling). Starting at ``k`` runs exactly ``k + 1`` denoiser calls.
* ``x_start`` given: it is the state at ``start_step`` as is.
* else ``x0_start`` given (PD-DDPM): ``x_k = q_sample(x0_start, k)`` with eps drawn from
  ``generator`` (``x0_start`` in [-1, 1], e.g. ``pre_segmentation_x0(p)``).
* else ``x_{n-1} ~ N(0, I)`` from ``generator``; a start below ``n - 1`` then needs one of the two.

Random draws, in order: the start noise (unless ``x_start``), then one N(0, I) per DDPM step
with ``i > 0``; DDIM draws nothing after the start. Hence a PD-DDPM start at ``k = n - 1`` equals
full sampling started from the same ``x_{n-1}`` with the generator in the same state (tested).

Several generators: ``generator`` may be a list of B generators, one per batch element; element b's
draws then come from generator b alone, in the order above, so a sample's noise does not depend on
which other samples (tiles, mirror variants) share its batch.

Self-conditioning at inference (Chen et al. 2022): with ``self_condition=True`` the denoiser is
called as ``denoise(m_i, t_net_i, sc_i)`` with ``sc`` zeros at the first step run and the previous
step's estimate mapped to [0, 1], ``(x0_hat_prev + 1) / 2 = p_prev``, afterwards.

What the denoiser predicts (``prediction_type``, the name MONAI's and diffusers' schedulers use):

* ``"sample"`` (default; the segmentation head): x0 as logits, on the mask input ``m_i``, as above.
* ``"epsilon"`` (the semi-supervised Rec pathway, which draws images): ``eps = denoise(x_i,
  t_net_i)`` on the state itself, and ``x0_hat = (x_i - sqrt(1 - abar_i) eps) / sqrt(abar_i)``.
  There are no probabilities; the result is the final state ``x0`` (= the last x0 estimate).

``clip_sample_range`` clips x0_hat to +-range before the step (None: not clipped; with epsilon at
the noisiest step ``sqrt(abar)`` is tiny and amplifies the network's errors).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from diffusion_nnunet.diffusion.schedule import NoiseSchedule, mask_to_x0, network_mask_input

__all__ = ["SAMPLERS", "PREDICTION_TYPES", "SamplingResult", "sample", "pre_segmentation_x0"]

log = logging.getLogger(__name__)

SAMPLERS = ("ddpm", "ddim")
PREDICTION_TYPES = ("sample", "epsilon")  # what the denoiser predicts: x0 (as logits) or the noise


@dataclass
class SamplingResult:
    """Output of ``sample``.

    Args:
        probabilities: softmax of the last step's logits, (B, C, *spatial) (None with
            ``prediction_type="epsilon"``).
        per_step: softmax probabilities after every step run, first = first step run (the
            noisiest); ``per_step[-1] is probabilities``; with epsilon each step's x0 estimate.
            None unless ``keep_steps``.
        steps_run: original training-step indices visited, descending (ends with the index of
            the sampling schedule's step 0, i.e. 0).
        x0: the final state ``x_{-1}``, the last step's x0 estimate (with x0-prediction
            ``2 probabilities - 1``).
    """

    probabilities: Tensor | None
    per_step: list[Tensor] | None
    steps_run: list[int]
    x0: Tensor | None = None


def pre_segmentation_x0(probabilities: Tensor, soft: bool = False, regions: bool = False) -> Tensor:
    """PD-DDPM start estimate from a pre-segmentation's class (or region) probabilities.

    Args:
        probabilities: (B, C, *spatial) class probabilities of the pre-segmentation network
            (region-based: per-region probabilities).
        soft: use ``2 p - 1`` instead of the default ``2 onehot(argmax p) - 1``
            (regions: ``2 [p > 0.5] - 1``).
        regions: the channels are independent regions (label_space.py), not classes.

    Returns:
        x0_pre in [-1, 1], same shape (float).
    """
    p = probabilities if probabilities.is_floating_point() else probabilities.float()
    if soft:
        return mask_to_x0(p)
    if regions:
        return mask_to_x0((p > 0.5).to(p.dtype))
    return mask_to_x0(torch.zeros_like(p).scatter_(1, p.argmax(1, keepdim=True), 1.0))


@torch.no_grad()
def sample(denoise: Callable[..., Tensor], shape: tuple, schedule: NoiseSchedule, sampler: str = "ddpm",
           num_steps: int | None = None, start_step: int | None = None, x0_start: Tensor | None = None,
           generator: torch.Generator | list[torch.Generator] | None = None, keep_steps: bool = False, device=None,
           dtype: torch.dtype = torch.float32, self_condition: bool = False,
           x_start: Tensor | None = None, regions: bool = False, prediction_type: str = "sample",
           clip_sample_range: float | None = None) -> SamplingResult:
    """Sample a segmentation by running the reverse process (see module docstring).

    Args:
        denoise: ``denoise(m_t, t_net) -> logits`` (or ``denoise(m_t, t_net, sc)`` with
            ``self_condition``); ``m_t`` (B, C, *spatial) in [0, 1], ``t_net`` float32 (B,) in
            (0, 1], logits (B, C, *spatial). The caller adds the image channels.
        shape: (B, C, *spatial) of the state.
        schedule: the training schedule.
        sampler: "ddpm" (ancestral) or "ddim" (deterministic, eta = 0).
        num_steps: number of sampling steps: ``schedule.respace(num_steps)``; None = all.
        start_step: index in the sampling sequence to start at (None = the last, full sampling);
            runs ``start_step + 1`` steps.
        x0_start: PD-DDPM start estimate in [-1, 1], noised to ``start_step``.
        generator: random generator (on ``device``) for all draws; same seed, same result. A list
            of ``shape[0]`` generators: one per batch element (see module docstring).
        keep_steps: keep every step's probabilities in ``per_step`` (memory: one state per step).
        device: device of the state; default that of ``x_start``/``x0_start``, else CPU.
        dtype: floating dtype of the state and of the probabilities.
        self_condition: call the denoiser with the self-conditioning channels.
        x_start: explicit state at ``start_step`` (overrides noise and ``x0_start``).
        regions: region-based labels: per-channel sigmoid instead of the softmax
            (``diffusion.label_space``); the probabilities are then per region.
        prediction_type: "sample" (x0 as logits, from the mask input) or "epsilon"
            (``denoise(x_t, t_net) -> eps`` on the state; see module docstring).
        clip_sample_range: clip each x0 estimate to +-this (None: no clipping).

    Returns:
        SamplingResult.

    Raises:
        ValueError: an unknown sampler or prediction type, self-conditioning or regions with
            epsilon-prediction, a start step outside the sequence, shapes that do not match.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    epsilon = prediction_type == "epsilon"
    if epsilon and (self_condition or regions):
        raise ValueError("self_condition and regions describe mask states: not with prediction_type='epsilon'")
    sched = schedule if num_steps is None else schedule.respace(int(num_steps))
    n = sched.num_steps
    k = n - 1 if start_step is None else int(start_step)
    if not 0 <= k < n:
        raise ValueError(f"start_step {k} outside the sampling sequence 0..{n - 1}")
    shape = tuple(int(s) for s in shape)
    if device is None:
        device = next((s.device for s in (x_start, x0_start) if s is not None), torch.device("cpu"))
    if isinstance(generator, (list, tuple)) and len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")

    if x_start is not None:
        x = _checked(x_start, shape, "x_start").to(device=device, dtype=dtype)
    elif x0_start is not None:
        x = sched.q_sample(_checked(x0_start, shape, "x0_start").to(device=device, dtype=dtype), k,
                           noise=_randn(shape, generator, device, dtype))
    elif k == n - 1:
        x = _randn(shape, generator, device, dtype)
    else:
        raise ValueError(f"start_step {k} < {n - 1} needs x0_start (PD-DDPM) or x_start")

    log.debug("%s sampling: %d of %d steps, start %d, original indices %s", sampler, k + 1, n, k,
              sched.timesteps[: k + 1].tolist()[::-1][:8])
    batch = shape[0]
    sc = torch.zeros(shape, device=device, dtype=dtype) if self_condition else None
    per_step: list[Tensor] | None = [] if keep_steps else None
    steps_run: list[int] = []
    probs = None
    for i in range(k, -1, -1):
        t_net = sched.network_time(torch.full((batch,), i, dtype=torch.long, device=device))
        if epsilon:
            eps = _checked(denoise(x, t_net), shape, "denoise's output").to(dtype)
            abar = float(sched.alphas_cumprod[i])
            x0_hat = (x - (1 - abar) ** 0.5 * eps) / abar ** 0.5
        else:
            m_t = network_mask_input(x)
            logits = _checked(denoise(m_t, t_net, sc) if self_condition else denoise(m_t, t_net), shape,
                              "denoise's output")
            probs = torch.sigmoid(logits.to(dtype)) if regions else torch.softmax(logits.to(dtype), dim=1)
            x0_hat = mask_to_x0(probs)
        if clip_sample_range is not None:
            x0_hat = x0_hat.clamp(-clip_sample_range, clip_sample_range)
        if sampler == "ddpm" and isinstance(generator, (list, tuple)) and i > 0:
            # NoiseSchedule.ddpm_step draws from one generator; per-element noise is added here
            mean, var = sched.posterior_mean_variance(x0_hat, x, i)
            x = mean + var.sqrt() * _randn(shape, generator, device, dtype)
        elif sampler == "ddpm":
            x = sched.ddpm_step(x0_hat, x, i, generator=None if isinstance(generator, (list, tuple)) else generator)
        else:
            x = sched.ddim_step(x0_hat, x, i)
        if self_condition:
            sc = probs  # == (x0_hat + 1) / 2
        if per_step is not None:
            per_step.append(x0_hat if epsilon else probs)
        steps_run.append(int(sched.timesteps[i]))
    return SamplingResult(probabilities=probs, per_step=per_step, steps_run=steps_run, x0=x)


def _randn(shape: tuple, generator, device, dtype) -> Tensor:
    """N(0, I) of `shape`: from one generator, or element b from ``generator[b]``."""
    if not isinstance(generator, (list, tuple)):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def _checked(t: Tensor, shape: tuple, name: str) -> Tensor:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    return t
