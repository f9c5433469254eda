"""Compute budgets: how much training a plan may cost, beside nnU-Net's GPU-memory budget.

nnU-Net sizes patch and batch for a GPU memory target and always trains 1000 epochs x 250
iterations (about 42 hours on a 2-core CPU). A budget adds a time target: the planner estimates
seconds per training iteration from the network's floating-point operations and a machine
throughput, shrinks batch and patch until the estimate meets the target, and then derives the
number of epochs from the total training time it is allowed.

The cost model is deliberately simple (multiply-adds of every convolution, times 3 for forward +
backward); it is calibrated once per machine kind (`throughput_gflops`) and the trainer logs the
measured seconds per iteration, so a wrong estimate is visible rather than silent.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np

# Reference 2-core CPU, fitted to measured nnU-Net training iterations of four plans
# (benchmarks/budget_calibration.py, docs/benchmarks.md): seconds = 0.03 + GFLOP / 150.
CPU_REFERENCE_GFLOPS = 150.0
# Per-iteration cost that does not scale with the network: augmentation, loss, optimizer step.
CPU_ITERATION_OVERHEAD_S = 0.03


@dataclass(frozen=True)
class ComputeBudget:
    """Limits a plan must respect.

    Args:
        name: preset name recorded in the plans.
        gpu_memory_gb: nnU-Net's VRAM target (patch/batch are first sized for it, as nnU-Net does);
            None = the planner's own target (8 GB for nnU-Net's default planner and ResEncM, 24 for
            ResEncL, 40 for ResEncXL).
        base_features: features of the first stage (nnU-Net: 32), doubled per stage.
        max_features_2d: cap on features per stage for 2D networks (nnU-Net: 512).
        max_features_3d: cap on features per stage for 3D networks (nnU-Net: 320).
        seconds_per_iteration: target seconds per training iteration; None = no time limit.
        training_seconds: total training time to aim for; None = use `num_epochs`.
        num_epochs: epochs when no training time is given (nnU-Net: 1000).
        iterations_per_epoch: training iterations per epoch (nnU-Net: 250).
        val_iterations_per_epoch: pseudo-validation iterations per epoch (nnU-Net: 50).
        min_epochs: lower bound on epochs derived from `training_seconds`.
        max_batch_size: cap on the batch size; None = nnU-Net's rule only.
        min_batch_size: nnU-Net never goes below 2.
        throughput_gflops: effective training throughput of the target machine.
        iteration_overhead_s: seconds per iteration that do not scale with the network.
        sampling_seconds_per_patch: time PD-DDPM may spend on one sliding-window patch (all its
            samples and reverse steps); it sets the proposed number of samples. None: no limit.
        max_samples: most PD-DDPM samples the planner proposes (an implicit ensemble of 8 already
            gives usable uncertainty maps).
    """

    name: str
    gpu_memory_gb: float | None = None
    base_features: int = 32
    max_features_2d: int = 512
    max_features_3d: int = 320
    seconds_per_iteration: float | None = None
    training_seconds: float | None = None
    num_epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    min_epochs: int = 5
    max_batch_size: int | None = None
    min_batch_size: int = 2
    throughput_gflops: float = CPU_REFERENCE_GFLOPS
    iteration_overhead_s: float = CPU_ITERATION_OVERHEAD_S
    sampling_seconds_per_patch: float | None = None
    max_samples: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ComputeBudget] = {
    # nnU-Net's own defaults: what a GPU user expects (each planner's own memory target).
    "gpu": ComputeBudget(name="gpu"),
    # A few minutes of training on a 2-core laptop: narrow network, small batches, short schedule.
    "cpu-small": ComputeBudget(
        name="cpu-small",
        gpu_memory_gb=8.0,  # the first sizing step, as nnU-Net's default; the time target then decides
        base_features=16,
        max_features_2d=128,
        max_features_3d=128,
        seconds_per_iteration=0.25,
        training_seconds=180.0,
        iterations_per_epoch=50,
        val_iterations_per_epoch=5,
        max_batch_size=8,
        sampling_seconds_per_patch=0.1,
    ),
    # Tests and smoke runs: seconds, not minutes.
    "cpu-tiny": ComputeBudget(
        name="cpu-tiny",
        gpu_memory_gb=8.0,
        base_features=8,
        max_features_2d=32,
        max_features_3d=32,
        seconds_per_iteration=0.05,
        training_seconds=None,
        num_epochs=2,
        iterations_per_epoch=3,
        val_iterations_per_epoch=1,
        min_epochs=1,
        max_batch_size=2,
        sampling_seconds_per_patch=0.01,
    ),
}


def budget_is_nnunet_default(budget: ComputeBudget) -> bool:
    """True when the budget is the `gpu` preset in all but its name: plans stay nnU-Net's own."""
    return replace(budget, name="gpu") == PRESETS["gpu"]


def get_budget(name: str | None = None, seconds_per_iteration: float | None = None) -> ComputeBudget:
    """Resolve a budget preset, optionally overriding its seconds-per-iteration target.

    Args:
        name: a key of `PRESETS`; defaults to `gpu` if a CUDA device is visible, else `cpu-small`.
        seconds_per_iteration: replaces the preset's target.
    """
    from dnnunet_core.errors import UserInputError

    if name is None:
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu-small"
    if name not in PRESETS:
        raise UserInputError(f"unknown budget {name!r}; choose one of {', '.join(PRESETS)}")
    budget = PRESETS[name]
    if seconds_per_iteration is not None:
        if seconds_per_iteration <= 0:
            raise UserInputError("--seconds-per-iteration must be positive")
        budget = replace(budget, name=f"{name}@{seconds_per_iteration}s", seconds_per_iteration=seconds_per_iteration)
    return budget


def unet_forward_flops(patch_size: Sequence[int], arch_kwargs: dict, in_channels: int, out_channels: int) -> float:
    """Floating-point operations of one forward pass of an nnU-Net U-Net for one sample.

    Counts every convolution (encoder, transposed-convolution upsampling, decoder, 1x1 head) as
    2 * voxels_out * c_in * c_out * prod(kernel); normalisation, activations and pooling are ignored.
    Both nnU-Net architectures are counted: PlainConvUNet (`n_conv_per_stage` convolutions per
    encoder stage) and ResidualEncoderUNet of the ResEnc presets (`n_blocks_per_stage` residual
    blocks of two convolutions, a stem convolution before the first stage, and a 1x1 projection on
    the skip of a block that changes the width); their decoders are the same.

    Args:
        patch_size: spatial patch size.
        arch_kwargs: the plans' `architecture.arch_kwargs` (n_stages, features_per_stage, kernel_sizes,
            strides, n_conv_per_stage or n_blocks_per_stage, n_conv_per_stage_decoder).
        in_channels: input channels of the network.
        out_channels: segmentation heads.
    """
    features = list(arch_kwargs["features_per_stage"])
    kernels = arch_kwargs["kernel_sizes"]
    strides = arch_kwargs["strides"]
    residual = "n_blocks_per_stage" in arch_kwargs
    n_enc = _per_stage(arch_kwargs["n_blocks_per_stage" if residual else "n_conv_per_stage"], len(features))
    n_conv_dec = _per_stage(arch_kwargs["n_conv_per_stage_decoder"], len(features) - 1)

    shape = np.array(patch_size, dtype=np.float64)
    voxels = []
    for s in strides:
        shape = np.ceil(shape / np.array(s))
        voxels.append(float(np.prod(shape)))

    flops = 0.0
    c_in = in_channels
    if residual:  # stem: one convolution at the input resolution to the first stage's width
        flops += 2 * float(np.prod(patch_size)) * c_in * features[0] * float(np.prod(kernels[0]))
        c_in = features[0]
    for stage, c_out in enumerate(features):
        taps = float(np.prod(kernels[stage]))
        v = voxels[stage]
        if residual:
            for block in range(n_enc[stage]):
                first_in = c_in if block == 0 else c_out
                flops += 2 * v * first_in * c_out * taps + 2 * v * c_out * c_out * taps
                if first_in != c_out:  # the skip's 1x1 projection
                    flops += 2 * v * first_in * c_out
        else:
            for i in range(n_enc[stage]):
                flops += 2 * v * (c_in if i == 0 else c_out) * c_out * taps
        c_in = c_out
    for stage in range(len(features) - 2, -1, -1):
        c_skip, c_below = features[stage], features[stage + 1]
        # transposed convolution with kernel == stride: each output voxel gets c_below inputs
        flops += 2 * voxels[stage] * c_below * c_skip
        taps = float(np.prod(kernels[stage]))
        for i in range(n_conv_dec[stage]):
            flops += 2 * voxels[stage] * (2 * c_skip if i == 0 else c_skip) * c_skip * taps
    flops += 2 * voxels[0] * features[0] * out_channels
    return flops


def _per_stage(value, n: int) -> list[int]:
    """nnU-Net's per-stage counts may be one int for all stages."""
    return [value] * n if isinstance(value, int) else list(value)


def estimate_seconds_per_iteration(
    patch_size: Sequence[int],
    batch_size: int,
    arch_kwargs: dict,
    in_channels: int,
    out_channels: int,
    throughput_gflops: float,
    forward_passes: float = 1.0,
    overhead_s: float = 0.0,
) -> float:
    """Estimated seconds for one training iteration (forward + backward = 3 forward-equivalents).

    Args:
        forward_passes: extra no-gradient forward passes per iteration add 1 each (diffusion
            strategies that recycle a prediction use 2: cost factor (3 + 1) / 3).
        overhead_s: fixed seconds per iteration (data augmentation, optimizer).
    """
    per_sample = unet_forward_flops(patch_size, arch_kwargs, in_channels, out_channels)
    total = per_sample * batch_size * (3.0 + (forward_passes - 1.0))
    return overhead_s + total / (throughput_gflops * 1e9)

