"""The diffusion trainer: one class, the strategy is a config value (methods.md sections 1-3).

The network (`networks.build_denoiser`) has the baseline's topology and takes the image plus the
noisy mask (plus self-conditioning channels) and a timestep; it predicts x0 as logits, trained
with nnU-Net's Dice + CE against the ground truth, with nnU-Net's data pipeline, augmentation,
deep supervision and checkpoints. Pseudo-validation during training samples with the configured
sampler from pure noise, so the curve in progress.png is the Dice of real predictions.

Registered as `standard`, `self_condition`, `recycle_next` and `recycle` (generated subclasses
that only name the result folders; see `registry.register_variant`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

from diffusion_nnunet.configs.trainer_registry import register_variant
from diffusion_nnunet.configs.training_config import DiffusionConfig, TrainingConfig
from diffusion_nnunet.diffusion.label_space import LabelSpace
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.networks.selection import build_selected_denoiser
from diffusion_nnunet.training import strategies
from diffusion_nnunet.training.base import DnnTrainer
from diffusion_nnunet.training.timestep_sampling import TimestepSampler
from dnnunet_core.atomic import write_json
from dnnunet_core.quiet import nnunet_output_to_log

logger = logging.getLogger(__name__)


class DnnDiffusionTrainer(DnnTrainer):
    """Diffusion segmentation head on nnU-Net (see module docstring)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # classes or regions, and the ignore label (diffusion/label_space.py)
        self.label_space = LabelSpace.from_label_manager(self.label_manager)

    @classmethod
    def default_config(cls) -> TrainingConfig:
        config = super().default_config()
        if config.diffusion is None:
            config.diffusion = DiffusionConfig()
        return config

    def apply_config(self, config: TrainingConfig) -> None:
        if config.diffusion is None:
            config.diffusion = DiffusionConfig()
        super().apply_config(config)
        self.schedule = NoiseSchedule.linear(self.config.diffusion.timesteps)
        # the recycling strategies train on t in 0..T-2 (T-1 is where their first pass predicts from)
        trainable = self.schedule.num_steps - (1 if self.diffusion.strategy.startswith("recycle") else 0)
        # not checkpointed: after a resume the importance weights are re-estimated (uniform during warm-up)
        self.timestep_sampler = TimestepSampler(trainable, self.diffusion.timestep_sampling)

    @property
    def diffusion(self) -> DiffusionConfig:
        return self.config.diffusion

    # ---------------------------------------------------------------- network
    @classmethod
    def build_denoiser_for(cls, configuration_manager, num_input_channels: int, num_output_channels: int,
                           config: TrainingConfig, enable_deep_supervision: bool = True):
        """The denoiser a config describes (also used by the predictor, from the checkpoint's config)."""
        return build_selected_denoiser(configuration_manager.network_arch_class_name,
                              configuration_manager.network_arch_init_kwargs,
                              configuration_manager.network_arch_init_kwargs_req_import,
                              image_channels=num_input_channels, num_classes=num_output_channels,
                              self_condition=config.diffusion.strategy == "self_condition",
                              deep_supervision=enable_deep_supervision,
                              time_embed_dim=config.diffusion.time_embed_dim, denoiser=config.diffusion.denoiser)

    @classmethod
    def network_for_inference(cls, plans_manager, configuration_manager, num_input_channels, num_output_channels,
                              config: TrainingConfig):
        return cls.build_denoiser_for(configuration_manager, num_input_channels, num_output_channels, config, False)

    @classmethod
    def configure_predictor(cls, predictor, config: TrainingConfig) -> None:
        predictor.set_diffusion(NoiseSchedule.linear(config.diffusion.timesteps),
                                config.diffusion.strategy == "self_condition")

    @classmethod
    def predictor_class(cls) -> type:
        from diffusion_nnunet.inference.diffusion_predictor import DiffusionPredictor

        return DiffusionPredictor

    # an instance method (nnU-Net's is static): the network depends on the config
    def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision: bool = True):
        return self.build_denoiser_for(configuration_manager, num_input_channels, num_output_channels, self.config,
                                       enable_deep_supervision)

    def _net_input(self, image: torch.Tensor, x_t: torch.Tensor, self_cond: torch.Tensor | None) -> torch.Tensor:
        parts = [image, (x_t.clamp(-1, 1) + 1) / 2]
        if self.diffusion.strategy == "self_condition":
            parts.append(torch.zeros_like(x_t) if self_cond is None else self_cond)
        return torch.cat(parts, 1)

    def _denoise(self, image: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, self_cond=None):
        """Logits at full resolution (deep-supervision outputs dropped)."""
        out = self.network(self._net_input(image, x_t, self_cond), self.schedule.network_time(t))
        return out[0] if isinstance(out, (list, tuple)) else out

    # ---------------------------------------------------------------- training
    def compute_loss(self, data: torch.Tensor, target, update_sampler: bool = True) -> torch.Tensor:
        seg = target[0] if isinstance(target, (list, tuple)) else target
        # ignored voxels: background in x0; the loss (nnU-Net's, built for the ignore label) masks them
        x0 = self.label_space.target_x0(seg)

        def first_pass(x_t, t):
            return self.label_space.x0_from_logits(self._denoise(data, x_t, t))

        kwargs = {"probability": self.diffusion.self_condition_probability} \
            if self.diffusion.strategy == "self_condition" else {}
        t = self.timestep_sampler.sample(x0.shape[0], x0.device)
        inp = strategies.STRATEGIES[self.diffusion.strategy](x0, self.schedule, first_pass, t=t, **kwargs)
        output = self.network(self._net_input(data, inp.x_t, inp.self_condition), self.schedule.network_time(inp.t))
        loss = self.loss(output, target)
        if update_sampler:
            self.timestep_sampler.update(inp.t, float(loss.detach()))
        return loss

    # ---------------------------------------------------------------- pseudo-validation
    def sample_probabilities(self, data: torch.Tensor, keep_steps: bool = False, generator=None):
        """Sample a segmentation for a batch of patches with the configured sampler."""
        from diffusion_nnunet.diffusion.sampling import sample

        sc = self.diffusion.strategy == "self_condition"

        def denoise(m_t, t_net, self_cond=None):
            out = self.network(torch.cat([data, m_t] + ([self_cond] if sc else []), 1), t_net)
            return out[0] if isinstance(out, (list, tuple)) else out

        shape = (data.shape[0], self.label_manager.num_segmentation_heads, *data.shape[2:])
        return sample(denoise, shape, self.schedule, self.diffusion.sampler, self.diffusion.sampling_steps,
                      generator=generator, keep_steps=keep_steps, device=data.device, self_condition=sc,
                      regions=self.label_space.regions)

    def validation_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        loss = self.compute_loss(data, target, update_sampler=False)
        seg = target[0] if isinstance(target, (list, tuple)) else target
        space = self.label_space
        pred = space.hard(self.sample_probabilities(data).probabilities)
        # as nnU-Net's validation_step: ignored voxels masked out, no background Dice for classes
        tp, fp, fn, _ = get_tp_fp_fn_tn(pred, space.target_onehot(seg), axes=[0] + list(range(2, pred.ndim)),
                                        mask=space.keep_mask(seg))
        first = 0 if space.regions else 1
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp.cpu().numpy()[first:],
                "fp_hard": fp.cpu().numpy()[first:], "fn_hard": fn.cpu().numpy()[first:]}

    def _keep(self, seg: torch.Tensor) -> torch.Tensor | None:
        """Annotated voxels of a label map (None without ignore label)."""
        ignore = self.label_space.ignore_label
        return None if ignore is None else seg != ignore

    # ---------------------------------------------------------------- final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """Predict the validation cases with the diffusion sampler (sliding window), write them and
        nnU-Net's summary.json, and add the Dice of every sampling step to the summary."""
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
        from nnunetv2.inference.export_prediction import export_prediction_from_logits

        from diffusion_nnunet.inference.diffusion_predictor import DiffusionPredictor

        self.set_deep_supervision_enabled(False)
        self.network.eval()
        with nnunet_output_to_log(logger):
            predictor = DiffusionPredictor(sampler=self.diffusion.sampler, num_steps=self.diffusion.sampling_steps,
                                           keep_steps=True, seed=0, tile_step_size=0.5, use_gaussian=True,
                                           use_mirroring=False, device=self.device, verbose=False, allow_tqdm=False,
                                           perform_everything_on_device=self.device.type == "cuda")
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        predictor.set_diffusion(self.schedule, self.diffusion.strategy == "self_condition")
        out_dir = Path(self.output_folder) / "validation"
        out_dir.mkdir(parents=True, exist_ok=True)
        _, val_keys = self.do_split()
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        step_counts = None
        for key in dataset_val.identifiers:
            data, seg, _, properties = dataset_val.load_case(key)
            with torch.no_grad():
                logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(data[:])))
            per_step = predictor.last_per_step  # (K, C, *spatial) log-probabilities, first = first step run
            ref = torch.from_numpy(np.asarray(seg[:]))[0]
            # the predictor's per-step probabilities live on its device, the reference on the CPU
            counts = np.stack([_tp_fp_fn(self.label_space.hard(self.label_space.probabilities(step.cpu().float(), 0),
                                                               0),
                                         self.label_space.label_map_onehot(ref), self._keep(ref))
                               for step in per_step])
            step_counts = counts if step_counts is None else step_counts + counts
            export_prediction_from_logits(logits.cpu(), properties, self.configuration_manager, self.plans_manager,
                                          self.dataset_json, str(out_dir / key), save_probabilities)
        metrics = compute_metrics_on_folder(str(Path(self.preprocessed_dataset_folder_base) / "gt_segmentations"),
                                            str(out_dir), str(out_dir / "summary.json"),
                                            self.plans_manager.image_reader_writer_class(),
                                            self.dataset_json["file_ending"],
                                            self.label_manager.foreground_regions if self.label_space.regions
                                            else self.label_manager.foreground_labels,
                                            self.label_manager.ignore_label, chill=True, num_processes=1)
        summary = json.loads((out_dir / "summary.json").read_text())
        if step_counts is not None:
            tp, fp, fn = step_counts[:, 0], step_counts[:, 1], step_counts[:, 2]
            dice = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
            fg = dice if self.label_space.regions else dice[:, 1:]
            summary["dice_per_sampling_step"] = {
                "sampler": self.diffusion.sampler, "steps_run": predictor.last_steps_run,
                "mean_foreground_dice": fg.mean(1).round(5).tolist(),
                "per_class": fg.round(5).tolist(),
                "note": "Dice over all validation voxels in the preprocessed space, after each reverse step",
            }
        write_json(summary, out_dir / "summary.json")
        logger.info("validation Dice %.4f; per sampling step: %s", metrics["foreground_mean"]["Dice"],
                    summary.get("dice_per_sampling_step", {}).get("mean_foreground_dice"))
        self.set_deep_supervision_enabled(True)


def _tp_fp_fn(pred: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor | None) -> np.ndarray:
    """(3, C) counts of true positives, false positives and false negatives per channel of the
    {0, 1} masks `pred` and `ref` (C, *spatial), over the voxels where `keep` (None: all)."""
    pred, ref = pred.flatten(1).bool(), ref.flatten(1).bool()
    if keep is not None:
        keep = keep.reshape(1, -1)
        pred, ref = pred & keep, ref & keep
    return torch.stack([(pred & ref).sum(1), (pred & ~ref).sum(1), (~pred & ref).sum(1)]).double().numpy()


STRATEGY_TRAINERS = {
    name: register_variant(DnnDiffusionTrainer, name, f"DnnDiffusionTrainer_{name}",
                           description=f"diffusion head, {name.replace('_', ' ')} strategy",
                           diffusion={"strategy": name})
    for name in ("standard", "self_condition", "recycle_next", "recycle")
}
