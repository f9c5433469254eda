"""Sliding-window prediction with a diffusion model: the sampler runs per tile.

nnU-Net's sliding window calls `_internal_maybe_mirror_and_predict` once per tile and averages
what it returns with Gaussian weights. Here that call runs the reverse process (N samples, and
each mirroring when enabled), averages the samples' softmax probabilities and returns their
logarithm: `export_prediction_from_logits` applies a softmax, which turns log-probabilities back
into the averaged probabilities. Where tiles overlap, the Gaussian-weighted mean of
log-probabilities is a (normalised) geometric pooling of the tiles' probabilities.

With `keep_steps=True` the tile result holds the probabilities after every reverse step
(K x C channels); the sliding window then accumulates K x C channels, and `last_per_step`
holds them per step for the last image.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch

from diffusion_nnunet.diffusion.sampling import sample
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.errors import UserInputError
from diffusion_nnunet.inference.predictor import DnnPredictor
from diffusion_nnunet.utils.atomic import write_json

logger = logging.getLogger(__name__)


class _WideLabels:
    """The label manager, but with `num_segmentation_heads` multiplied: the sliding window then
    allocates room for every recorded step."""

    def __init__(self, label_manager, factor: int):
        self._lm, self._factor = label_manager, factor

    def __getattr__(self, name):
        return getattr(self._lm, name)

    @property
    def num_segmentation_heads(self) -> int:
        return self._lm.num_segmentation_heads * self._factor


class DiffusionPredictor(DnnPredictor):
    """nnU-Net predictor whose network evaluation is a diffusion sampler.

    Args:
        sampler: "ddpm" or "ddim".
        num_steps: reverse steps (None: all steps of the training schedule).
        num_samples: samples per tile whose probabilities are averaged (an implicit ensemble).
        keep_steps: record the probabilities after every step (see module docstring).
        seed: seeds the sampler's noise at the start of every image (reproducible predictions).
        save_every_step: `export_case` also writes every step's prediction and probabilities to
            `steps/step_KK/` beside the case (each a prediction folder `dnnunet evaluate` reads).
        **kwargs: nnUNetPredictor's arguments (tile_step_size, use_mirroring, device, ...).
    """

    def __init__(self, sampler: str = "ddpm", num_steps: int | None = None, num_samples: int = 1,
                 keep_steps: bool = False, seed: int = 0, save_every_step: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.sampler, self.num_steps, self.num_samples = sampler, num_steps, num_samples
        self.keep_steps, self.seed = keep_steps or save_every_step, seed
        self.save_every_step = save_every_step
        self.schedule: NoiseSchedule | None = None
        self.self_condition = False
        self.last_per_step: torch.Tensor | None = None
        self.last_steps_run: list[int] | None = None
        self._generator: torch.Generator | None = None
        self._num_classes = 0

    def set_diffusion(self, schedule: NoiseSchedule, self_condition: bool) -> None:
        """The training schedule and whether the network takes self-conditioning channels."""
        if self.num_steps is not None and not 1 <= self.num_steps <= schedule.num_steps:
            raise UserInputError(f"--steps must be in 1..{schedule.num_steps} (the model was trained with "
                                 f"T = {schedule.num_steps}), got {self.num_steps}")
        if self.num_samples < 1:
            raise UserInputError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.sampler not in ("ddpm", "ddim"):
            raise UserInputError(f"unknown sampler {self.sampler!r}; use ddpm or ddim")
        self.schedule, self.self_condition = schedule, self_condition

    def _steps_to_run(self) -> int:
        return self.num_steps or self.schedule.num_steps

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        k = self._steps_to_run() if self.keep_steps else 1
        real = self.label_manager
        self._num_classes = real.num_segmentation_heads
        self.label_manager = _WideLabels(real, k)
        try:
            out = super().predict_sliding_window_return_logits(input_image)
        finally:
            self.label_manager = real
        out = out.reshape(k, real.num_segmentation_heads, *out.shape[1:])
        self.last_per_step = out if self.keep_steps else None
        return out[-1]

    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        variants = [()]
        if mirror_axes:
            axes = [m + 2 for m in mirror_axes]
            variants += [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        total = None
        for flip in variants:
            image = torch.flip(x, flip) if flip else x
            for _ in range(self.num_samples):
                steps = self._sample_tile(image)  # (K, B, C, *spatial)
                if flip:
                    steps = torch.flip(steps, [a + 1 for a in flip])
                total = steps if total is None else total + steps
        probs = total / (len(variants) * self.num_samples)
        k, b = probs.shape[:2]
        return torch.log(probs.clamp_min(1e-6)).transpose(0, 1).reshape(b, -1, *probs.shape[3:])

    def export_case(self, logits: torch.Tensor, properties: dict, output_truncated: str,
                    save_probabilities: bool) -> None:
        super().export_case(logits, properties, output_truncated, save_probabilities)
        if not self.save_every_step:
            return
        out = Path(output_truncated)
        for k, step_logits in enumerate(self.last_per_step):
            folder = out.parent / "steps" / f"step_{k:02d}"
            if not (folder / "dataset.json").is_file():
                write_json(self.dataset_json, folder / "dataset.json")
                write_json(self.plans_manager.plans, folder / "plans.json")
            super().export_case(step_logits.float().cpu(), properties, str(folder / out.name), True)

    def _sample_tile(self, image: torch.Tensor) -> torch.Tensor:
        network, sc = self.network, self.self_condition

        def denoise(m_t, t_net, self_cond=None):
            return network(torch.cat([image, m_t] + ([self_cond] if sc else []), 1), t_net)

        shape = (image.shape[0], self._num_classes, *image.shape[2:])
        result = sample(denoise, shape, self.schedule, self.sampler, self.num_steps, generator=self._generator,
                        keep_steps=self.keep_steps, device=image.device, dtype=torch.float32, self_condition=sc)
        self.last_steps_run = list(result.steps_run)
        if self.keep_steps:
            return torch.stack(result.per_step)
        return result.probabilities[None]
