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

import logging
from pathlib import Path

import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

from diffusion_nnunet.configs.inference_spec import InferenceSpec
from diffusion_nnunet.configs.trainer_registry import register_variant
from diffusion_nnunet.configs.training_config import STRATEGIES, DiffusionConfig, TrainingConfig
from diffusion_nnunet.diffusion.label_space import LabelSpace
from diffusion_nnunet.diffusion.schedule import NoiseSchedule, network_mask_input
from diffusion_nnunet.inference.fold_validation import FoldValidation, validate_fold
from diffusion_nnunet.networks.selection import build_selected_denoiser
from diffusion_nnunet.training import strategies
from diffusion_nnunet.training.base import DnnTrainer
from diffusion_nnunet.training.timestep_sampling import TimestepSampler

logger = logging.getLogger(__name__)


class DnnDiffusionTrainer(DnnTrainer):
    """Diffusion segmentation head on nnU-Net (see module docstring)."""

    predictor_kind = "diffusion"

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
    def inference_spec(cls, config: TrainingConfig) -> InferenceSpec:
        """The diffusion predictor with the checkpoint's schedule; prediction samples all T steps
        unless asked for fewer, the final validation as the config says."""
        return InferenceSpec(predictor=cls.predictor_kind, timesteps=config.diffusion.timesteps,
                             self_conditioning=config.diffusion.strategy == "self_condition",
                             sampler=config.diffusion.sampler, validation_steps=config.diffusion.sampling_steps)

    # an instance method (nnU-Net's is static): the network depends on the config
    def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision: bool = True):
        return self.build_denoiser_for(configuration_manager, num_input_channels, num_output_channels, self.config,
                                       enable_deep_supervision)

    def _net_input(self, image: torch.Tensor, x_t: torch.Tensor, self_cond: torch.Tensor | None) -> torch.Tensor:
        parts = [image, network_mask_input(x_t)]
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

    # ---------------------------------------------------------------- final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """Predict the validation cases with the diffusion sampler (sliding window), write them and
        nnU-Net's summary.json, and add the Dice of every sampling step to the summary
        (`inference.fold_validation`)."""
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        _, val_keys = self.do_split()
        validate_fold(FoldValidation(
            network=self.network, plans_manager=self.plans_manager, configuration_manager=self.configuration_manager,
            dataset_json=self.dataset_json, trainer_name=self.__class__.__name__,
            mirroring_axes=self.inference_allowed_mirroring_axes, spec=self.inference_spec(self.config),
            device=self.device, cases=self.dataset_class(self.preprocessed_dataset_folder, val_keys),
            gt_folder=Path(self.preprocessed_dataset_folder_base) / "gt_segmentations",
            output_folder=Path(self.output_folder) / "validation"), save_probabilities)
        self.set_deep_supervision_enabled(True)


STRATEGY_TRAINERS = {
    name: register_variant(DnnDiffusionTrainer, name, f"DnnDiffusionTrainer_{name}",
                           description=f"diffusion head, {name.replace('_', ' ')} strategy",
                           diffusion={"strategy": name})
    for name in STRATEGIES
}
