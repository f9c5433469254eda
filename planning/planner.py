"""Experiment planning: nnU-Net's planners plus a compute budget.

`BudgetMixin` goes in front of an nnunetv2 planner class (`budgeted(cls)` builds the class):
nnU-Net's planner first sizes patch, batch and topology for the GPU memory target, then (if the
budget has a time target) the mixin trades batch size and patch size for time, and records in
every configuration a `training_budget` section (the budget, the estimated seconds per
iteration, epochs and iterations, and the reason for each choice) and a `diffusion` section.
Plans stay valid nnU-Net plans: nnunetv2 ignores the extra keys.

`BudgetedPlanner` is the mixin over nnU-Net's default `ExperimentPlanner` (PlainConvUNet);
`planning.planner_presets` maps `-pl` names to the residual-encoder presets (nnUNetPlannerResEncM/
L/XL). What the budget overrides is the same for every planner:
* features: the budget's base and maximum features replace the planner's (the ResEnc presets use
  nnU-Net's default 32 / 320 / 512 too, so this is the budget's width, not a change of preset);
  the ResEnc presets keep their own residual blocks per stage (1, 3, 4, 6, 6, ...) and VRAM
  reference values;
* memory target: the budget's `gpu_memory_gb` where the budget sets one (the CPU budgets: 8 GB,
  the first sizing step before the time target); the `gpu` budget sets none, so each planner
  keeps its own target (8 GB default and ResEncM, 24 GB ResEncL, 40 GB ResEncXL), as nnU-Net;
* batch cap, time target (batch, then patch shrink), epochs from the training time, as documented
  in `planning.budget`.
"""
from __future__ import annotations

import functools
import logging
import warnings
from copy import deepcopy

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from planning.budget import ComputeBudget, estimate_seconds_per_iteration, unet_forward_flops
from planning.plan_sections import DEFAULT_TIMESTEPS

logger = logging.getLogger(__name__)

DEFAULT_PLANS_NAME = "dnnunetPlans"


class BudgetMixin:
    """A compute budget on top of an nnunetv2 planner class (put it first in the bases; module docstring).

    Args:
        dataset_name_or_id: dataset id or DatasetXXX_Name.
        budget: the compute budget.
        plans_name: plans identifier (file name of the plans in nnUNet_preprocessed); None: the
            class's `default_plans_name`, else the nnunetv2 class's own.
        forward_passes: forward passes per training iteration the budget must pay for
            (1 for nnU-Net; 2 for diffusion strategies with a no-gradient first pass).
        kwargs: passed on to the nnunetv2 planner.
    """

    default_plans_name: str | None = None

    def __init__(self, dataset_name_or_id, budget: ComputeBudget, plans_name: str | None = None,
                 forward_passes: float = 1.0, **kwargs):
        plans_name = plans_name or self.default_plans_name
        if plans_name is not None:
            kwargs["plans_name"] = plans_name
        if budget.gpu_memory_gb is not None:
            kwargs["gpu_memory_target_in_gb"] = budget.gpu_memory_gb
        with warnings.catch_warnings():
            # the ResEnc planners warn about a memory target other than their own: the budget's is deliberate
            warnings.filterwarnings("ignore", message=".*non-standard gpu_memory_target_in_gb")
            super().__init__(dataset_name_or_id, **kwargs)
        self.budget = budget
        self.forward_passes = forward_passes
        self.UNet_base_num_features = budget.base_features
        self.UNet_max_features_2d = budget.max_features_2d
        self.UNet_max_features_3d = budget.max_features_3d

    @staticmethod
    def static_estimate_VRAM_usage(patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                   arch_kwargs_req_import):
        # nnunetv2's version sets torch's thread count to nnUNet_n_proc_DA, which is 0 (invalid
        # for torch) in our CPU setup; the estimate itself needs no threads.
        net = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, input_channels,
                                     output_channels, allow_init=False)
        return net.compute_conv_feature_map_size(patch_size)

    # nnU-Net calls this once per configuration (2d, 3d_fullres, 3d_lowres).
    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        reasons = {
            "planner": f"nnunetv2 {self._nnunet_planner_name()} ({self.UNet_class.__name__}) with the "
                       f"{self.budget.name} budget",
            "patch_size": f"nnU-Net: largest patch within the {self.UNet_vram_target_GB:g} GB memory target, "
                          "capped at the median image shape",
            "batch_size": f"nnU-Net: fills the {self.UNet_vram_target_GB:g} GB memory target, at most "
                          f"{100 * self.max_dataset_covered:g}% of the dataset per batch",
            "features_per_stage": f"base {self.budget.base_features}, doubling per stage, capped at "
                                  f"{self.UNet_max_features_2d if len(spacing) == 2 else self.UNet_max_features_3d}",
        }
        if self.budget.max_batch_size is not None and plan["batch_size"] > self.budget.max_batch_size:
            plan["batch_size"] = max(self.budget.min_batch_size, self.budget.max_batch_size)
            reasons["batch_size"] = f"budget cap of {self.budget.max_batch_size}"
        if self.budget.seconds_per_iteration is not None:
            self._fit_time_target(plan, spacing, median_shape, reasons)
        plan["training_budget"] = self._training_schedule(plan, reasons)
        plan["diffusion"] = self._diffusion_section(plan)
        return plan

    def _nnunet_planner_name(self) -> str:
        """The nnunetv2 class this planner extends (the first base that is not ours)."""
        return next(c.__name__ for c in type(self).__mro__ if c.__module__.startswith("nnunetv2"))

    def _cost(self, plan: dict, forward_passes: float | None = None, extra_input_channels: int = 0) -> float:
        return estimate_seconds_per_iteration(
            plan["patch_size"], plan["batch_size"], plan["architecture"]["arch_kwargs"],
            self._num_input_channels() + extra_input_channels, len(self.dataset_json["labels"]),
            self.budget.throughput_gflops, self.forward_passes if forward_passes is None else forward_passes,
            self.budget.iteration_overhead_s)

    def _diffusion_section(self, plan: dict) -> dict:
        """What the diffusion trainers need, and what they cost under the same schedule as the baseline."""
        # one mask channel per network output: classes without the ignore label, or regions
        num_classes = LabelManager(self.dataset_json["labels"],
                                   self.dataset_json.get("regions_class_order")).num_segmentation_heads
        # PD-DDPM: start from the nnU-Net pre-segmentation with at most 40 % of the reverse steps
        start_step = max(0, int(0.4 * DEFAULT_TIMESTEPS) - 1)
        num_samples, samples_reason = self._proposed_samples(plan, start_step + 1, num_classes)
        return {
            "timesteps": DEFAULT_TIMESTEPS,
            "sampler": "ddpm",
            "start_step": start_step,
            "start_step_source": "planner: 40 % of the reverse steps (find-best records the validated best in inference_defaults.json)",
            "num_samples": num_samples,
            "num_samples_reason": samples_reason,
            "mask_input_channels": num_classes,
            "self_condition_input_channels": num_classes,
            # standard: 1 forward + backward with C more input channels; the other strategies add a
            # forward pass without gradient (the 4/3 floor); self-conditioning also adds C channels
            "estimated_seconds_per_iteration": {
                "standard": round(self._cost(plan, 1.0, num_classes), 4),
                "recycle": round(self._cost(plan, 2.0, num_classes), 4),
                "self_condition": round(self._cost(plan, 2.0, 2 * num_classes), 4),
            },
        }

    def _proposed_samples(self, plan: dict, reverse_steps: int, num_classes: int) -> tuple[int, str]:
        """PD-DDPM samples per case: as many as fit the budget's sampling time per patch, 1..max_samples."""
        limit = self.budget.sampling_seconds_per_patch
        if limit is None:
            return self.budget.max_samples, f"no sampling time limit: the maximum of {self.budget.max_samples}"
        flops = unet_forward_flops(plan["patch_size"], plan["architecture"]["arch_kwargs"],
                                   self._num_input_channels() + num_classes, num_classes)
        per_sample = reverse_steps * flops / (self.budget.throughput_gflops * 1e9)
        n = int(np.clip(limit // per_sample if per_sample > 0 else self.budget.max_samples, 1,
                        self.budget.max_samples))
        return n, (f"{reverse_steps} reverse steps cost ~{per_sample:.3g} s per patch and sample; "
                   f"{n} fit the budget's {limit:.3g} s per patch (at most {self.budget.max_samples})")

    def _num_input_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    def _fit_time_target(self, plan: dict, spacing, median_shape, reasons: dict) -> None:
        """Shrink batch (down to the minimum), then patch, until the time estimate meets the target."""
        target = self.budget.seconds_per_iteration
        original_batch, original_patch = plan["batch_size"], list(plan["patch_size"])
        while self._cost(plan) > target and plan["batch_size"] > self.budget.min_batch_size:
            plan["batch_size"] -= 1
        if plan["batch_size"] != original_batch:
            reasons["batch_size"] = (f"reduced from {original_batch} to meet {target:.3g} s/iteration "
                                     f"(minimum {self.budget.min_batch_size})")
        while self._cost(plan) > target:
            if not self._shrink_patch(plan, spacing, median_shape):
                logger.warning("%s: cannot meet %.3g s/iteration even with the smallest patch (estimate %.3g s)",
                               plan["data_identifier"], target, self._cost(plan))
                break
        if list(plan["patch_size"]) != original_patch:
            reasons["patch_size"] = (f"reduced from {[int(p) for p in original_patch]} to meet {target:.3g} s/iteration; "
                                     "the axis with the largest patch/image ratio shrinks first, as nnU-Net does")

    def _shrink_patch(self, plan: dict, spacing, median_shape) -> bool:
        """One nnU-Net-style shrink step: reduce the axis with the largest patch/median-shape ratio."""
        patch = list(plan["patch_size"])
        divisible = get_pool_and_conv_props(spacing, patch, self.UNet_featuremap_min_edge_length, 999999)[4]
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape[:len(spacing)])])[-1])
        if patch[axis] - divisible[axis] < self.UNet_featuremap_min_edge_length:
            return False
        patch[axis] -= divisible[axis]
        _, pools, kernels, patch, _ = get_pool_and_conv_props(spacing, patch, self.UNet_featuremap_min_edge_length,
                                                              999999)
        num_stages = len(pools)
        max_features = self.UNet_max_features_2d if len(spacing) == 2 else self.UNet_max_features_3d
        arch = plan["architecture"]["arch_kwargs"]
        # PlainConvUNet counts convolutions per encoder stage, ResidualEncoderUNet residual blocks;
        # nnU-Net's planners keep either in UNet_blocks_per_stage_encoder
        encoder_key = "n_blocks_per_stage" if "n_blocks_per_stage" in arch else "n_conv_per_stage"
        plan["patch_size"] = tuple(int(p) for p in patch)
        arch.update({
            "n_stages": num_stages,
            "kernel_sizes": kernels,
            "strides": pools,
            "features_per_stage": tuple(min(max_features, self.UNet_base_num_features * 2 ** i)
                                        for i in range(num_stages)),
            encoder_key: self.UNet_blocks_per_stage_encoder[:num_stages],
            "n_conv_per_stage_decoder": self.UNet_blocks_per_stage_decoder[:num_stages - 1],
        })
        return True

    def _training_schedule(self, plan: dict, reasons: dict) -> dict:
        b = self.budget
        seconds = self._cost(plan)
        if b.training_seconds is not None:
            total_iterations = b.training_seconds / max(seconds, 1e-6)
            num_epochs = max(b.min_epochs, int(round(total_iterations / b.iterations_per_epoch)))
            reasons["num_epochs"] = (f"{b.training_seconds:.0f} s of training at an estimated {seconds:.3g} s/iteration"
                                     f" and {b.iterations_per_epoch} iterations per epoch")
        else:
            num_epochs = b.num_epochs
            reasons["num_epochs"] = f"fixed by the {b.name} budget"
        return {
            "budget": b.to_dict(),
            "forward_passes_per_iteration": self.forward_passes,
            "estimated_seconds_per_iteration": round(seconds, 4),
            "estimated_training_seconds": round(seconds * num_epochs * b.iterations_per_epoch, 1),
            "num_epochs": num_epochs,
            "num_iterations_per_epoch": b.iterations_per_epoch,
            "num_val_iterations_per_epoch": b.val_iterations_per_epoch,
            "reasons": deepcopy(reasons),
        }


class BudgetedPlanner(BudgetMixin, ExperimentPlanner):
    """nnU-Net's default planner (PlainConvUNet) with a compute budget; plans `dnnunetPlans` by default."""

    default_plans_name = DEFAULT_PLANS_NAME


@functools.cache
def budgeted(planner_class: type) -> type:
    """The class `BudgetMixin` + an nnunetv2 planner class (BudgetedPlanner for ExperimentPlanner).

    Args:
        planner_class: an nnunetv2 `ExperimentPlanner` subclass, e.g. nnUNetPlannerResEncM.
    """
    if planner_class is ExperimentPlanner:
        return BudgetedPlanner
    return type(f"Budgeted{planner_class.__name__}", (BudgetMixin, planner_class),
                {"__doc__": f"nnunetv2's {planner_class.__name__} with a compute budget.", "__module__": __name__})
