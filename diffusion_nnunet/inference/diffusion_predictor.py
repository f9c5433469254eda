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

from diffusion_nnunet.diffusion.sampling import pre_segmentation_x0, sample
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.errors import InvalidDataError, UserInputError
from diffusion_nnunet.inference.predictor import DnnPredictor
from diffusion_nnunet.inference.presegmentation import load_presegmentation, to_original, to_preprocessed
from diffusion_nnunet.inference.uncertainty import (SampleStatistics, UncertaintyMaps, predictive_entropy,
                                                   write_uncertainty_maps)
from diffusion_nnunet.utils.atomic import write_json

logger = logging.getLogger(__name__)


class _WideLabels:
    """The label manager, but with more `num_segmentation_heads`: the sliding window then
    allocates room for every recorded step and the uncertainty channels."""

    def __init__(self, label_manager, channels: int):
        self._lm, self._channels = label_manager, channels

    def __getattr__(self, name):
        return getattr(self._lm, name)

    @property
    def num_segmentation_heads(self) -> int:
        return self._channels


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
        presegmentation: PD-DDPM: folder of pre-segmentations (CASE.npz probabilities or label
            maps); sampling starts from them noised to `start_step`.
        start_step: PD-DDPM start, a position in the sampling sequence (0..steps-1; steps-1 is
            full sampling); runs start_step + 1 reverse steps.
        soft_start: start from 2p - 1 instead of 2 onehot(argmax p) - 1.
        uncertainty: write uncertainty/CASE_entropy, _variance and _mi images (default:
            when num_samples > 1). Variance and mutual information come from the samples of each
            sliding-window tile (and mirroring), pooled across tiles with nnU-Net's Gaussian weights.
        overview_png_for: callable case -> first image file; writes CASE_overview.png (image,
            prediction, entropy) for each case, to uncertainty/CASE_overview.png.
        max_sample_batch: most samples run as one batch (None: the plans' batch size, which fits
            the device's memory); more samples run in several batches.
        **kwargs: nnUNetPredictor's arguments (tile_step_size, use_mirroring, device, ...).
    """

    def __init__(self, sampler: str = "ddpm", num_steps: int | None = None, num_samples: int = 1,
                 keep_steps: bool = False, seed: int = 0, save_every_step: bool = False,
                 presegmentation: str | Path | None = None, start_step: int | None = None,
                 soft_start: bool = False, uncertainty: bool | None = None, overview_png_for=None,
                 max_sample_batch: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.sampler, self.num_steps, self.num_samples = sampler, num_steps, num_samples
        self.keep_steps, self.seed = keep_steps or save_every_step, seed
        self.save_every_step = save_every_step
        self.presegmentation = None if presegmentation is None else Path(presegmentation)
        self.start_step, self.soft_start = start_step, soft_start
        self.uncertainty = num_samples > 1 if uncertainty is None else uncertainty
        self.overview_png_for = overview_png_for
        self.max_sample_batch = max_sample_batch
        self.last_sample_statistics: torch.Tensor | None = None
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
        if self.start_step is not None:
            return self.start_step + 1
        return self.num_steps or self.schedule.num_steps

    def check_cases(self, cases: list[str]) -> None:
        if self.presegmentation is None:
            if self.start_step is not None:
                raise UserInputError("--start-step needs a pre-segmentation (--presegmenter or --presegmentation)")
            return
        steps = self.num_steps or self.schedule.num_steps
        if self.start_step is None:  # the planner's default (about 40 % of the steps)
            self.start_step = self.configuration_manager.configuration.get("diffusion", {}).get("start_step")
            if self.start_step is None:
                raise UserInputError("these plans propose no PD-DDPM start step: give --start-step")
            self.start_step = min(int(self.start_step), steps - 1)
        if not 0 <= self.start_step < steps:
            raise UserInputError(f"--start-step must be in 0..{steps - 1} (steps-1 is full sampling), "
                                 f"got {self.start_step}")
        ending = self.dataset_json["file_ending"]
        missing = [c for c in cases if not (self.presegmentation / f"{c}.npz").is_file()
                   and not (self.presegmentation / f"{c}{ending}").is_file()]
        if missing:
            raise InvalidDataError(self.presegmentation, f"no pre-segmentation for case(s) {', '.join(missing)} "
                                                         f"(CASE.npz or CASE{ending})")

    def prepare_case(self, case: str, data: torch.Tensor, properties: dict) -> torch.Tensor:
        """PD-DDPM: stack the pre-segmentation's x0 estimate onto the image (as nnU-Net's cascade
        stacks the previous stage), so the sliding window cuts both into the same tiles."""
        if self.presegmentation is None:
            return data
        num_classes = self.label_manager.num_segmentation_heads
        probs = load_presegmentation(self.presegmentation, case, self.dataset_json["file_ending"], num_classes)
        try:
            probs = to_preprocessed(probs, properties, self.plans_manager, self.configuration_manager,
                                    data.shape[1:])
        except ValueError as err:
            raise InvalidDataError(self.presegmentation / case, str(err)) from err
        x0_pre = pre_segmentation_x0(torch.from_numpy(probs)[None], soft=self.soft_start)[0]
        return torch.cat([data, x0_pre.to(data.dtype)], 0)

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        k = self._steps_to_run() if self.keep_steps else 1
        real = self.label_manager
        c = self._num_classes = real.num_segmentation_heads
        self.label_manager = _WideLabels(real, k * c + (2 if self.uncertainty else 0))
        try:
            out = super().predict_sliding_window_return_logits(input_image)
        finally:
            self.label_manager = real
        steps = out[:k * c].reshape(k, c, *out.shape[1:])
        self.last_per_step = steps if self.keep_steps else None
        # tile-wise (Gaussian-weighted) variance across samples and mean per-sample entropy
        self.last_sample_statistics = out[k * c:].float() if self.uncertainty else None
        return steps[-1]

    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        variants = [()]
        if mirror_axes:
            axes = [m + 2 for m in mirror_axes]
            variants += [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        total, num_image_channels = None, len(self.dataset_json["channel_names"])
        stats = SampleStatistics(with_mutual_information=True) if self.uncertainty else None
        chunk = self.sample_batch_size()
        for flip in variants:
            tile = torch.flip(x, flip) if flip else x  # the sliding window passes one tile at a time
            image, x0_pre = tile[:, :num_image_channels], tile[:, num_image_channels:]
            for first in range(0, self.num_samples, chunk):
                n = min(chunk, self.num_samples - first)  # n samples run as one batch
                steps = self._sample_tile(image.repeat_interleave(n, 0),
                                          x0_pre.repeat_interleave(n, 0) if x0_pre.shape[1] else None)
                if flip:  # (K, n, C, *spatial)
                    steps = torch.flip(steps, [a + 1 for a in flip])
                total = steps.sum(1, keepdim=True) if total is None else total + steps.sum(1, keepdim=True)
                if stats is not None:
                    for sample_probs in steps[-1]:
                        stats.update(sample_probs)
        probs = total / (len(variants) * self.num_samples)
        k, b = probs.shape[:2]
        out = torch.log(probs.clamp_min(1e-6)).transpose(0, 1).reshape(b, -1, *probs.shape[3:])
        if stats is None:
            return out
        _, maps = stats.finalize()
        mean_sample_entropy = maps.entropy - maps.mutual_information  # E_n H[p_n]
        extra = torch.stack([maps.variance, mean_sample_entropy])[None].to(out.dtype)
        return torch.cat([out, extra], 1)

    def export_case(self, logits: torch.Tensor, properties: dict, output_truncated: str,
                    save_probabilities: bool) -> None:
        super().export_case(logits, properties, output_truncated, save_probabilities)
        if self.uncertainty:
            self._export_uncertainty(logits, properties, Path(output_truncated))
        if not self.save_every_step:
            return
        out = Path(output_truncated)
        for k, step_logits in enumerate(self.last_per_step):
            folder = out.parent / "steps" / f"step_{k:02d}"
            if not (folder / "dataset.json").is_file():
                write_json(self.dataset_json, folder / "dataset.json")
                write_json(self.plans_manager.plans, folder / "plans.json")
            super().export_case(step_logits.float().cpu(), properties, str(folder / out.name), True)

    def _export_uncertainty(self, logits: torch.Tensor, properties: dict, out: Path) -> None:
        """Entropy of the mean, variance across samples and mutual information, as images in the
        segmentation's geometry (and an overview PNG on request)."""
        mean_probs = torch.softmax(logits.float(), 0)
        entropy = predictive_entropy(mean_probs)
        variance, mean_sample_entropy = self.last_sample_statistics
        maps = torch.stack([entropy, variance, (entropy - mean_sample_entropy).clamp_min(0)]).cpu().numpy()
        entropy, variance, mi = to_original(maps, properties, self.plans_manager, self.configuration_manager)
        seg_file = out.parent / f"{out.name}{self.dataset_json['file_ending']}"
        # in a subfolder, so that the prediction folder holds only segmentations (evaluate, ensemble)
        write_uncertainty_maps(UncertaintyMaps(torch.from_numpy(entropy), torch.from_numpy(variance),
                                               torch.from_numpy(mi)), seg_file, out.parent / "uncertainty" / out.name,
                               self.dataset_json["file_ending"])
        if self.overview_png_for is not None:
            self._overview_png(seg_file, entropy, out)

    def _overview_png(self, seg_file: Path, entropy, out: Path) -> None:
        import SimpleITK as sitk

        from diffusion_nnunet.reporting import most_foreground_slice, overlay_png

        image = sitk.GetArrayFromImage(sitk.ReadImage(str(self.overview_png_for(out.name))))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_file)))
        entropy = entropy.reshape(seg.shape)
        if seg.ndim == 3:
            z = most_foreground_slice([seg])
            image, seg, entropy = image[z], seg[z], entropy[z]
        overlay_png(image, {"prediction": seg}, out.parent / "uncertainty" / f"{out.name}_overview.png", title=out.name,
                    extra_maps={"entropy": entropy})

    def sample_batch_size(self) -> int:
        """Samples that run as one batch: all of them, up to the plans' training batch size (which the
        planner sized for the device's memory, with gradients; sampling needs no gradients)."""
        if self.max_sample_batch is not None:
            return max(1, min(self.num_samples, self.max_sample_batch))
        return max(1, min(self.num_samples, int(self.configuration_manager.batch_size)))

    def _sample_tile(self, image: torch.Tensor, x0_pre: torch.Tensor | None = None) -> torch.Tensor:
        network, sc = self.network, self.self_condition

        def denoise(m_t, t_net, self_cond=None):
            return network(torch.cat([image, m_t] + ([self_cond] if sc else []), 1), t_net)

        shape = (image.shape[0], self._num_classes, *image.shape[2:])
        result = sample(denoise, shape, self.schedule, self.sampler, self.num_steps, start_step=self.start_step,
                        x0_start=x0_pre, generator=self._generator, keep_steps=self.keep_steps,
                        device=image.device, dtype=torch.float32, self_condition=sc)
        self.last_steps_run = list(result.steps_run)
        if self.keep_steps:
            return torch.stack(result.per_step)
        return result.probabilities[None]
