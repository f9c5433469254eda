"""Sliding-window prediction with a diffusion model: the sampler runs per tile.

nnU-Net's sliding window (`nnunet_adapter.SlidingWindowPredictor`) calls `predict_tiles` once per
batch of tiles and averages what it returns with Gaussian weights. Here that call runs the reverse
process (N samples, and each mirroring when enabled), averages the samples' softmax probabilities
and returns their logarithm: `export_prediction_from_logits` applies a softmax, which turns log-probabilities back
into the averaged probabilities. Where tiles overlap, the Gaussian-weighted mean of
log-probabilities is a (normalised) geometric pooling of the tiles' probabilities.

With `keep_steps=True` the tile result holds the probabilities after every reverse step
(K x C channels); the sliding window then accumulates K x C channels, and the image's
`SampledImage.per_step` holds them per step (`last_per_step`: those of the last image).

Samples are the test-time augmentation (`sample_mirroring="cycle"`, the default): with mirroring
on, sample i runs on mirror variant i mod M (M = 4 in 2D, 8 in 3D), so the mean over samples is
also nnU-Net's mean over flips and N = M samples cost what nnU-Net's mirroring costs per reverse
step. `"product"` runs every sample on every variant (N x M runs, the behaviour before). Each run
(tile, variant, sample) draws its noise from its own generator seeded from (seed, tile, variant,
sample), so a prediction depends on the seed only, not on how runs are batched.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion_nnunet.configs.inference_spec import InferenceSpec
from diffusion_nnunet.configs.sampling_config import SamplingConfig
from diffusion_nnunet.diffusion.label_space import LabelSpace
from diffusion_nnunet.diffusion.sampling import pre_segmentation_x0, sample
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.inference.inference_defaults import default_start_step
from diffusion_nnunet.inference.precision import network_autocast
from diffusion_nnunet.inference.predictor import DnnPredictor
from diffusion_nnunet.inference.presegmentation import load_presegmentation, to_original, to_preprocessed
from diffusion_nnunet.inference.uncertainty import (
    UncertaintyMaps,
    predictive_entropy,
    uncertainty_maps,
    write_uncertainty_maps,
)
from diffusion_nnunet.nnunet_adapter import TileResult
from dnnunet_core.atomic import write_json
from dnnunet_core.errors import InvalidDataError, UserInputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampledImage:
    """A diffusion model's sliding-window prediction of one preprocessed image.

    Args:
        logits: (C, *spatial) log-probabilities (regions: logits) of the mean over runs, of the
            last step run; nnU-Net's softmax / sigmoid at export gives the probabilities back.
        per_step: with `keep_steps`, (K, C, *spatial) the same after every step, first step first.
        sample_statistics: with uncertainty, (2, *spatial) float32: the variance across runs and
            the mean per-run entropy, each pooled over tiles with the Gaussian weights.
        samples: with `keep_samples`, (R, C, *spatial) float32 probabilities of each run
            (see `DiffusionPredictor`'s `last_samples`).
        steps_run: the sampler's timesteps, in the order they ran.
    """

    logits: torch.Tensor
    per_step: torch.Tensor | None = None
    sample_statistics: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    steps_run: tuple[int, ...] | None = None


class DiffusionPredictor(DnnPredictor):
    """nnU-Net predictor whose network evaluation is a diffusion sampler.

    Args:
        sampler: "ddpm" or "ddim".
        num_steps: reverse steps (None: all steps of the training schedule).
        num_samples: samples per tile whose probabilities are averaged (an implicit ensemble).
            None: M, the number of mirror variants, with mirroring on (each variant once, the cost
            of nnU-Net's mirroring per reverse step), 1 with mirroring off.
        sample_mirroring: "cycle" (sample i on mirror variant i mod M) or "product" (every sample
            on every variant, N x M runs); see the module docstring. No effect without mirroring.
        keep_samples: keep the per-run probabilities of the last predicted case in
            `last_samples` (see Attributes); with more than one run, `export_case` also writes the
            case's scores to OUT/uncertainty/CASE_scores.json (`inference.review_list`).
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
            when the runs per tile (samples, or samples x variants with "product") are above 1). Variance and mutual information come from the samples of each
            sliding-window tile (and mirroring), pooled across tiles with nnU-Net's Gaussian weights.
        overview_png_for: callable case -> first image file; writes CASE_overview.png (image,
            prediction, entropy) for each case, to uncertainty/CASE_overview.png.
        max_sample_batch: most runs (tiles x samples) in one forward pass (None: the plans' batch
            size, which fits the device's memory); more run in several batches. The sliding window
            passes `tile_batch` tiles at a time (None: this limit over the runs per tile, at least 1).
        autocast_dtype: the network's dtype under CUDA autocast (fp16 as nnunetv2, or bf16); the
            CPU never autocasts and the sampler's state is float32 everywhere.
        **kwargs: DnnPredictor's and nnUNetPredictor's arguments (tile_batch, tile_step_size,
            use_mirroring, device, ...).

    Attributes (read-only, of the last image the sliding window predicted; `sample_image` returns
    them as a `SampledImage`):
        last_samples: with `keep_samples`, a float32 tensor (R, C, *spatial) of the last predicted
            case (the last fold where several are used): the probabilities of each run (R = N
            samples with "cycle" or without mirroring; N x M, variant-major, with "product"), in
            the preprocessed geometry, un-flipped (run i after undoing its flip), pooled over
            tiles with the same Gaussian weights as the mean (in nnU-Net's half-precision
            accumulator). `samples_to_original` (presegmentation.py) maps them to the image.
        last_per_step: with `keep_steps`, (K, C, *spatial) log-probabilities per step.
        last_sample_statistics: with uncertainty, (2, *spatial) variance and mean per-run entropy.
        last_steps_run: the sampler's timesteps, in the order they ran.
    """

    def __init__(self, sampler: str = "ddpm", num_steps: int | None = None, num_samples: int | None = None,
                 keep_steps: bool = False, seed: int = 0, save_every_step: bool = False,
                 presegmentation: str | Path | None = None, start_step: int | None = None,
                 soft_start: bool = False, uncertainty: bool | None = None, overview_png_for=None,
                 max_sample_batch: int | None = None, sample_mirroring: str = "cycle", keep_samples: bool = False,
                 autocast_dtype: torch.dtype = torch.float16, **kwargs):
        super().__init__(**kwargs)
        # the same checks as every other way in (SamplingConfig); the step count needs the schedule
        SamplingConfig(sampler=sampler, num_samples=num_samples, sample_mirroring=sample_mirroring)
        self.sampler, self.num_steps, self.num_samples = sampler, num_steps, num_samples
        self.sample_mirroring, self.keep_samples, self.autocast_dtype = sample_mirroring, keep_samples, autocast_dtype
        self.keep_steps, self.seed = keep_steps or save_every_step, seed
        self.save_every_step = save_every_step
        self.presegmentation = None if presegmentation is None else Path(presegmentation)
        # case -> probabilities (C, *image array shape) handed over in memory (predict-ensemble);
        # used instead of the files in `presegmentation`
        self.presegmentation_in_memory: dict | None = None
        self.start_step, self.soft_start = start_step, soft_start
        self._uncertainty = uncertainty
        self.overview_png_for = overview_png_for
        self.max_sample_batch = max_sample_batch
        self.schedule: NoiseSchedule | None = None
        self.self_condition = False
        self._last: SampledImage | None = None
        self._num_classes = 0

    # ---------------------------------------------------------------- the last image's result
    @property
    def last_per_step(self) -> torch.Tensor | None:
        return None if self._last is None else self._last.per_step

    @property
    def last_sample_statistics(self) -> torch.Tensor | None:
        return None if self._last is None else self._last.sample_statistics

    @property
    def last_samples(self) -> torch.Tensor | None:
        return None if self._last is None else self._last.samples

    @property
    def last_steps_run(self) -> list[int] | None:
        steps = None if self._last is None else self._last.steps_run
        return None if steps is None else list(steps)

    @property
    def label_space(self) -> LabelSpace:
        """Classes (softmax) or regions (sigmoid) of the model's labels (diffusion/label_space.py)."""
        return LabelSpace.from_label_manager(self.label_manager)

    def apply_spec(self, spec: InferenceSpec) -> None:
        """The model's training schedule, whether its network takes self-conditioning channels, and
        its default step count where none was asked for (configs/inference_spec.py).

        Raises:
            UserInputError: `num_steps` outside 1..T.
            ValueError: an nnU-Net model's spec (no schedule).
        """
        schedule = spec.schedule()
        if self.num_steps is not None and not 1 <= self.num_steps <= schedule.num_steps:
            raise UserInputError(f"--steps must be in 1..{schedule.num_steps} (the model was trained with "
                                 f"T = {schedule.num_steps}), got {self.num_steps}")
        self.schedule, self.self_condition = schedule, spec.self_conditioning
        if self.num_steps is None:
            self.num_steps = spec.default_steps

    @property
    def uncertainty(self) -> bool:
        """Whether uncertainty maps are written (default: more than one run per tile)."""
        return len(self._runs()) > 1 if self._uncertainty is None else self._uncertainty

    @uncertainty.setter
    def uncertainty(self, value: bool | None) -> None:
        self._uncertainty = value

    def mirror_variants(self) -> list[tuple[int, ...]]:
        """The flips of nnU-Net's test-time mirroring (tensor axes; () = none), in nnU-Net's order."""
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        variants = [()]
        if mirror_axes:
            axes = [m + 2 for m in mirror_axes]
            variants += [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        return variants

    def resolved_num_samples(self) -> int:
        """N: the samples asked for, else one per mirror variant (1 without mirroring)."""
        return self.num_samples if self.num_samples is not None else len(self.mirror_variants())

    def _runs(self) -> list[tuple[int, int]]:
        """(mirror variant index, sample index) of every sampler run per tile, in output order."""
        m, n = len(self.mirror_variants()), self.resolved_num_samples()
        if self.sample_mirroring == "product":
            return [(v, i) for v in range(m) for i in range(n)]
        return [(i % m, i) for i in range(n)]

    def _noise_generator(self, tile: int, variant: int, sample: int) -> torch.Generator:
        # one generator per run: the draws do not depend on how runs share a batch
        seed = np.random.SeedSequence([self.seed, tile, variant, sample]).generate_state(1, np.uint64)[0]
        return torch.Generator(device=self.device).manual_seed(int(seed) & (2 ** 63 - 1))

    def _steps_to_run(self) -> int:
        if self.start_step is not None:
            return self.start_step + 1
        return self.num_steps or self.schedule.num_steps

    def uses_presegmentation(self) -> bool:
        """PD-DDPM: pre-segmentations come from a folder or are handed over in memory."""
        return self.presegmentation is not None or self.presegmentation_in_memory is not None

    def check_cases(self, cases: list[str]) -> None:
        if not self.uses_presegmentation():
            if self.start_step is not None:
                raise UserInputError("--start-step needs a pre-segmentation (--presegmenter or --presegmentation)")
            return
        steps = self.num_steps or self.schedule.num_steps
        if self.start_step is None:  # find-best's choice, else the planner's (about 40 % of the steps)
            self.start_step = default_start_step(self.model_folder, self.configuration_manager.configuration)
            if self.start_step is None:
                raise UserInputError("neither find-best nor these plans propose a PD-DDPM start step: give --start-step")
            self.start_step = min(int(self.start_step), steps - 1)
        if not 0 <= self.start_step < steps:
            raise UserInputError(f"--start-step must be in 0..{steps - 1} (steps-1 is full sampling), "
                                 f"got {self.start_step}")
        if self.presegmentation_in_memory is not None:
            return  # the caller hands each case's probabilities over before predicting it
        ending = self.dataset_json["file_ending"]
        missing = [c for c in cases if not (self.presegmentation / f"{c}.npz").is_file()
                   and not (self.presegmentation / f"{c}{ending}").is_file()]
        if missing:
            raise InvalidDataError(self.presegmentation, f"no pre-segmentation for case(s) {', '.join(missing)} "
                                                         f"(CASE.npz or CASE{ending})")

    def prepare_case(self, case: str, data: torch.Tensor, properties: dict) -> torch.Tensor:
        """PD-DDPM: stack the pre-segmentation's x0 estimate onto the image (as nnU-Net's cascade
        stacks the previous stage), so the sliding window cuts both into the same tiles."""
        if not self.uses_presegmentation():
            return data
        num_classes = self.label_manager.num_segmentation_heads
        space = self.label_space
        if self.presegmentation_in_memory is not None:
            probs = self.presegmentation_in_memory.pop(case).astype(np.float32)  # as load_presegmentation reads
        else:
            probs = load_presegmentation(self.presegmentation, case, self.dataset_json["file_ending"], num_classes,
                                         space.region_values)
        try:
            probs = to_preprocessed(probs, properties, self.plans_manager, self.configuration_manager,
                                    data.shape[1:])
        except ValueError as err:
            raise InvalidDataError(self.presegmentation / case if self.presegmentation else f"pre-segmentation of {case}",
                                   str(err)) from err
        x0_pre = pre_segmentation_x0(torch.from_numpy(probs)[None], soft=self.soft_start, regions=space.regions)[0]
        return torch.cat([data, x0_pre.to(data.dtype)], 0)

    @torch.inference_mode()
    def sample_image(self, input_image: torch.Tensor) -> SampledImage:
        """Sample one preprocessed image (C, *spatial) with the sliding window (see module docstring)."""
        k = self._steps_to_run() if self.keep_steps else 1
        c = self._num_classes = self.label_manager.num_segmentation_heads
        extra = 2 if self.uncertainty else 0
        runs = len(self._runs())
        # the window keeps K x C channels (+ 2 statistics) (+ R x C samples) per voxel
        window = self.sliding_window(input_image, k * c + extra + (runs * c if self.keep_samples else 0))
        out = window.channels
        steps = out[:k * c].reshape(k, c, *out.shape[1:])
        return SampledImage(
            logits=steps[-1], per_step=steps if self.keep_steps else None,
            # tile-wise (Gaussian-weighted) variance across samples and mean per-sample entropy
            sample_statistics=out[k * c:k * c + extra].float() if self.uncertainty else None,
            samples=out[k * c + extra:].float().reshape(runs, c, *out.shape[1:]) if self.keep_samples else None,
            steps_run=window.steps_run)

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        """nnU-Net's entry point (`predict_logits_from_preprocessed_data`, per fold): `sample_image`'s
        logits; the rest of its result stays readable as the `last_*` properties."""
        self._last = self.sample_image(input_image)
        return self._last.logits

    def tile_batch_size(self) -> int:
        """Tiles per sliding-window pass: `tile_batch`, else as many as fit the run limit together
        with their runs (at least one)."""
        if self.tile_batch is not None:
            return self.tile_batch
        return max(1, self._run_limit() // len(self._runs()))

    @torch.inference_mode()
    def predict_tiles(self, tiles: torch.Tensor, first_tile: int) -> TileResult:
        """The sampler's result for B tiles (B, channels, *patch): (B, K*C [+2] [+R*C], *patch)."""
        variants, runs, b = self.mirror_variants(), self._runs(), tiles.shape[0]
        num_image_channels = len(self.dataset_json["channel_names"])
        per_pass = max(1, self._run_limit() // b)  # runs per forward pass, each with the B tiles
        results = []  # per run: (K, B, C, *patch), un-flipped
        steps_run = None
        for first in range(0, len(runs), per_pass):
            chunk = runs[first:first + per_pass]
            runs_in = torch.cat([torch.flip(tiles, variants[v]) if variants[v] else tiles for v, _ in chunk])
            generators = [self._noise_generator(first_tile + j, v, i) for v, i in chunk for j in range(b)]
            image, x0_pre = runs_in[:, :num_image_channels], runs_in[:, num_image_channels:]
            steps, steps_run = self._sample_tile(image, x0_pre if x0_pre.shape[1] else None, generators)
            steps = steps.unflatten(1, (len(chunk), b))
            for j, (v, _) in enumerate(chunk):
                flip = variants[v]
                results.append(torch.flip(steps[:, j], [a + 1 for a in flip]) if flip else steps[:, j])
        stacked = torch.stack(results, 1)  # (K, R, B, C, *patch)
        probs = stacked.mean(1)
        k = probs.shape[0]
        space = self.label_space
        # log p (classes) or logit p (regions): nnU-Net's softmax / sigmoid at export gives p back
        logits = space.logits_from_probabilities(probs)
        out = [logits.transpose(0, 1).reshape(b, k * probs.shape[2], *probs.shape[3:])]
        if self.uncertainty:
            extra = []
            for tile in range(b):
                maps = uncertainty_maps(space.as_distribution(stacked[-1, :, tile], 1), with_mutual_information=True)
                # E_n H[p_n] = H[mean] - MI, pooled across tiles by the sliding window
                extra.append(torch.stack([maps.variance, maps.entropy - maps.mutual_information]))
            out.append(torch.stack(extra).to(out[0].dtype))
        if self.keep_samples:
            out.append(stacked[-1].transpose(0, 1).reshape(b, -1, *probs.shape[3:]).to(out[0].dtype))
        return TileResult(torch.cat(out, 1), steps_run)

    def export_case(self, logits: torch.Tensor, properties: dict, output_truncated: str,
                    save_probabilities: bool):
        probabilities = super().export_case(logits, properties, output_truncated, save_probabilities)
        if self.uncertainty:
            self._export_uncertainty(logits, properties, Path(output_truncated))
        if self.keep_samples and self.last_samples is not None and len(self.last_samples) > 1:
            # the case's scores for the review list (OUT/uncertainty/cases.csv, inference/review_list.py)
            from diffusion_nnunet.inference.review_list import predictor_case_scores, write_case_score

            write_case_score(output_truncated, predictor_case_scores(self.last_samples, logits, properties,
                                                                     self.configuration_manager, self.dataset_json))
        if not self.save_every_step:
            return probabilities
        out = Path(output_truncated)
        for k, step_logits in enumerate(self.last_per_step):
            folder = out.parent / "steps" / f"step_{k:02d}"
            if not (folder / "dataset.json").is_file():
                write_json(self.dataset_json, folder / "dataset.json")
                write_json(self.plans_manager.plans, folder / "plans.json")
            super().export_case(step_logits.float().cpu(), properties, str(folder / out.name), True)
        return probabilities

    def uncertainty_in_original(self, logits: torch.Tensor, properties: dict) -> np.ndarray:
        """(3, *original array shape): entropy of the mean, variance across samples and mutual
        information of the last predicted case (needs `uncertainty`), as the images hold them."""
        space = self.label_space  # regions: the sum of the regions' Bernoulli entropies
        entropy = predictive_entropy(space.as_distribution(space.probabilities(logits.float(), 0), 0))
        # the statistics stay where the sliding window ran (the GPU); the logits come back on the CPU
        variance, mean_sample_entropy = self.last_sample_statistics.to(entropy.device)
        maps = torch.stack([entropy, variance, (entropy - mean_sample_entropy).clamp_min(0)]).cpu().numpy()
        return to_original(maps, properties, self.plans_manager, self.configuration_manager)

    def _export_uncertainty(self, logits: torch.Tensor, properties: dict, out: Path) -> None:
        """Entropy of the mean, variance across samples and mutual information, as images in the
        segmentation's geometry (and an overview PNG on request)."""
        entropy, variance, mi = self.uncertainty_in_original(logits, properties)
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

    def _run_limit(self) -> int:
        """Most runs (tiles x samples) per forward pass: `max_sample_batch`, else the plans' training
        batch size (which the planner sized for the device's memory, with gradients; sampling needs
        no gradients)."""
        if self.max_sample_batch is not None:
            return max(1, self.max_sample_batch)
        return max(1, int(self.configuration_manager.batch_size))

    def sample_batch_size(self) -> int:
        """Runs of one tile that share a forward pass: all of them, up to the run limit."""
        return max(1, min(len(self._runs()), self._run_limit()))

    def _sample_tile(self, image: torch.Tensor, x0_pre: torch.Tensor | None = None,
                     generators: list[torch.Generator] | None = None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(K, B, C, *patch) probabilities of B runs (K = 1 unless keep_steps), float32, and the
        timesteps the sampler ran."""
        network, sc, device, dtype = self.network, self.self_condition, image.device, self.autocast_dtype

        def denoise(m_t, t_net, self_cond=None):
            with network_autocast(device, dtype):
                return network(torch.cat([image, m_t] + ([self_cond] if sc else []), 1), t_net)

        shape = (image.shape[0], self._num_classes, *image.shape[2:])
        result = sample(denoise, shape, self.schedule, self.sampler, self.num_steps, start_step=self.start_step,
                        x0_start=x0_pre, generator=generators, keep_steps=self.keep_steps,
                        device=image.device, dtype=torch.float32, self_condition=sc, regions=self.label_space.regions)
        if self.keep_steps:
            return torch.stack(result.per_step), tuple(result.steps_run)
        return result.probabilities[None], tuple(result.steps_run)
