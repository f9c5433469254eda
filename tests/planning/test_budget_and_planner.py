"""Planning math: budgets, the cost model, and plans for 2D and anisotropic 3D data."""
from __future__ import annotations

import numpy as np
import pytest

from dnnunet_core.errors import UserInputError
from planning.budget import PRESETS, estimate_seconds_per_iteration, get_budget, unet_forward_flops
from planning.planner import BudgetedPlanner
from tests.planning.helpers import _fake_dataset

ARCH_2D = {
    "n_stages": 3, "features_per_stage": (8, 16, 32), "kernel_sizes": [[3, 3]] * 3,
    "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": (2, 2, 2), "n_conv_per_stage_decoder": (2, 2),
}


def test_flops_count_matches_hand_computation():
    # encoder: 2*V0*(1*8+8*8)*9 + 2*V1*(8*16+16*16)*9 + 2*V2*(16*32+32*32)*9
    v0, v1, v2 = 16 * 16, 8 * 8, 4 * 4
    enc = 2 * 9 * (v0 * (8 + 64) + v1 * (128 + 256) + v2 * (512 + 1024))
    # decoder stage 1: transposed conv 32->16 at V1, convs (32->16, 16->16); stage 0: 16->8 at V0, (16->8, 8->8)
    dec = 2 * v1 * 32 * 16 + 2 * 9 * v1 * (32 * 16 + 16 * 16) + 2 * v0 * 16 * 8 + 2 * 9 * v0 * (16 * 8 + 8 * 8)
    head = 2 * v0 * 8 * 3
    assert unet_forward_flops((16, 16), ARCH_2D, 1, 3) == enc + dec + head


def test_estimate_scales_with_batch_features_and_extra_forward_pass():
    base = estimate_seconds_per_iteration((64, 64), 2, ARCH_2D, 1, 3, 10.0)
    assert estimate_seconds_per_iteration((64, 64), 4, ARCH_2D, 1, 3, 10.0) == pytest.approx(2 * base)
    assert estimate_seconds_per_iteration((64, 64), 2, ARCH_2D, 1, 3, 20.0) == pytest.approx(base / 2)
    # a no-gradient forward pass costs a third of forward+backward: the 4/3 floor of the recycling strategies
    assert estimate_seconds_per_iteration((64, 64), 2, ARCH_2D, 1, 3, 10.0, forward_passes=2) == pytest.approx(4 / 3 * base)
    wide = dict(ARCH_2D, features_per_stage=(16, 32, 64))
    ratio = unet_forward_flops((64, 64), wide, 16, 3) / unet_forward_flops((64, 64), ARCH_2D, 8, 3)
    assert 3.5 < ratio <= 4.0  # convolutions are quadratic in width; the 1x1 head is linear


def test_get_budget():
    assert get_budget("gpu") is PRESETS["gpu"]
    assert get_budget("gpu").num_epochs == 1000 and get_budget("gpu").iterations_per_epoch == 250
    custom = get_budget("cpu-small", seconds_per_iteration=0.5)
    assert custom.seconds_per_iteration == 0.5 and "cpu-small" in custom.name
    with pytest.raises(UserInputError, match="unknown budget"):
        get_budget("tpu-huge")
    with pytest.raises(UserInputError):
        get_budget("cpu-small", seconds_per_iteration=0)


def _plan(name, budget):
    planner = BudgetedPlanner(name, get_budget(budget))
    planner.save_plans = lambda plans: None  # the planning math only; writing is tested end to end
    return planner.plan_experiment()


def test_2d_gpu_budget_keeps_nnunet_defaults(nnunet_dirs):
    name = _fake_dataset(nnunet_dirs, "Dataset901_Flat", (1, 128, 128), (999.0, 0.3, 0.3))
    plans = _plan(name, "gpu")
    assert list(plans["configurations"]) == ["2d"]
    cfg = plans["configurations"]["2d"]
    assert list(cfg["patch_size"]) == [128, 128]
    assert cfg["architecture"]["arch_kwargs"]["features_per_stage"][0] == 32
    tb = cfg["training_budget"]
    assert (tb["num_epochs"], tb["num_iterations_per_epoch"], tb["num_val_iterations_per_epoch"]) == (1000, 250, 50)


def test_2d_cpu_budget_meets_time_target_and_records_reasons(nnunet_dirs):
    name = _fake_dataset(nnunet_dirs, "Dataset902_Flat", (1, 512, 512), (999.0, 0.3, 0.3), n_cases=200)
    budget = get_budget("cpu-small")
    cfg = _plan(name, "cpu-small")["configurations"]["2d"]
    arch = cfg["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"][0] == budget.base_features
    assert max(arch["features_per_stage"]) <= budget.max_features_2d
    assert budget.min_batch_size <= cfg["batch_size"] <= budget.max_batch_size
    tb = cfg["training_budget"]
    assert tb["estimated_seconds_per_iteration"] <= budget.seconds_per_iteration
    # the time target forced a smaller patch than the 512x512 image; the reason says so
    assert np.prod(cfg["patch_size"]) < 512 * 512
    assert "reduced" in tb["reasons"]["patch_size"]
    expected_epochs = round(budget.training_seconds / tb["estimated_seconds_per_iteration"] / budget.iterations_per_epoch)
    assert tb["num_epochs"] == max(budget.min_epochs, expected_epochs)
    assert tb["budget"]["name"] == "cpu-small"


def test_3d_anisotropic_topology_and_budget(nnunet_dirs):
    # 3 mm slices, 0.8 mm in plane: nnU-Net must not pool (nor use 3-wide kernels) across slices at first
    name = _fake_dataset(nnunet_dirs, "Dataset903_Aniso", (32, 96, 96), (3.0, 0.8, 0.8), n_cases=30)
    plans = _plan(name, "cpu-small")
    assert "3d_fullres" in plans["configurations"]
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    assert arch["kernel_sizes"][0][0] == 1 and arch["kernel_sizes"][0][1] == 3
    assert arch["strides"][1][0] == 1 and arch["strides"][1][1] == 2
    assert cfg["training_budget"]["estimated_seconds_per_iteration"] <= get_budget("cpu-small").seconds_per_iteration
    # the slice axis is the first (transposed) axis and keeps fewer voxels than the in-plane axes
    assert cfg["patch_size"][0] < cfg["patch_size"][1]
    assert max(arch["features_per_stage"]) <= get_budget("cpu-small").max_features_3d


def test_smaller_time_target_never_gives_a_costlier_plan(nnunet_dirs):
    name = _fake_dataset(nnunet_dirs, "Dataset904_Flat", (1, 256, 256), (999.0, 0.5, 0.5), n_cases=100)
    costs = []
    for seconds in (1.0, 0.2, 0.05):
        planner = BudgetedPlanner(name, get_budget("cpu-small", seconds_per_iteration=seconds))
        planner.save_plans = lambda plans: None
        cfg = planner.plan_experiment()["configurations"]["2d"]
        costs.append(cfg["training_budget"]["estimated_seconds_per_iteration"])
        assert costs[-1] <= seconds
    assert costs[0] >= costs[1] >= costs[2]


def test_plans_carry_a_diffusion_section_with_its_cost(nnunet_dirs):
    name = _fake_dataset(nnunet_dirs, "Dataset905_Flat", (1, 128, 128), (999.0, 0.3, 0.3))
    cfg = _plan(name, "cpu-small")["configurations"]["2d"]
    diff = cfg["diffusion"]
    assert diff["timesteps"] == 5 and diff["sampler"] == "ddpm" and diff["start_step"] == 1
    assert diff["mask_input_channels"] == 3  # one per class, background included
    est = diff["estimated_seconds_per_iteration"]
    base = cfg["training_budget"]["estimated_seconds_per_iteration"]
    # extra mask channels cost a little; the no-gradient pass adds at most a third of the network cost
    assert base < est["standard"] < est["recycle"] <= base + (est["standard"] - 0.03) * 4 / 3
    assert est["self_condition"] > est["recycle"]


def test_proposed_pd_ddpm_samples_follow_the_sampling_time_budget(nnunet_dirs):
    from dataclasses import replace

    from planning.budget import unet_forward_flops

    name = _fake_dataset(nnunet_dirs, "Dataset906_Flat", (1, 128, 128), (999.0, 0.3, 0.3))
    proposals = []
    for limit in (None, 1.0, 0.05, 1e-6):
        planner = BudgetedPlanner(name, replace(get_budget("cpu-small"), sampling_seconds_per_patch=limit))
        planner.save_plans = lambda plans: None
        cfg = planner.plan_experiment()["configurations"]["2d"]
        diff = cfg["diffusion"]
        proposals.append(diff["num_samples"])
        assert 1 <= diff["num_samples"] <= 8 and diff["num_samples_reason"]
        if limit == 0.05:  # as many samples of start_step + 1 reverse steps as fit 0.05 s per patch
            per_sample = (diff["start_step"] + 1) * unet_forward_flops(
                cfg["patch_size"], cfg["architecture"]["arch_kwargs"], 1 + 3, 3) / 150e9
            assert diff["num_samples"] == min(8, max(1, int(0.05 // per_sample)))
    assert proposals[0] == 8 and proposals[-1] == 1  # no limit: the maximum; a tiny limit: one sample
    assert proposals == sorted(proposals, reverse=True)
