"""`-pl` planner presets: nnunetv2's ResEnc planners with our budget, plans names, the ResEnc cost model."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL,
    nnUNetPlannerResEncM,
)
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from diffusion_nnunet.cli.main import main
from diffusion_nnunet.networks import build_denoiser
from dnnunet_core.errors import UserInputError
from planning.budget import get_budget, unet_forward_flops
from planning.planner import BudgetedPlanner, BudgetMixin, budgeted
from planning.planner_presets import PLANNERS, get_planner_preset, plans_name_for
from tests.planning.helpers import _fake_dataset

RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def _plan(name, preset, budget):
    planner = budgeted(get_planner_preset(preset).planner_class)(name, budget)
    planner.save_plans = lambda plans: None  # the planning math only; writing is tested end to end
    return planner.plan_experiment()


def test_resenc_planner_gets_the_budget_applied(nnunet_dirs):
    name = _fake_dataset(nnunet_dirs, "Dataset911_Aniso", (32, 96, 96), (3.0, 0.8, 0.8), n_cases=30)
    budget = get_budget("cpu-small")
    plans = _plan(name, "ResEncM", budget)
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]
    assert arch["network_class_name"] == RESENC
    kw = arch["arch_kwargs"]
    # the budget's width, the preset's residual blocks (1, 3, 4, 6, ...), no PlainConvUNet key
    assert kw["features_per_stage"][0] == budget.base_features and max(kw["features_per_stage"]) <= 128
    assert list(kw["n_blocks_per_stage"]) == [1, 3, 4, 6, 6, 6][:kw["n_stages"]]
    assert "n_conv_per_stage" not in kw
    assert budget.min_batch_size <= cfg["batch_size"] <= budget.max_batch_size
    tb = cfg["training_budget"]
    assert tb["estimated_seconds_per_iteration"] <= budget.seconds_per_iteration
    assert tb["budget"]["name"] == "cpu-small" and "nnUNetPlannerResEncM" in tb["reasons"]["planner"]
    assert "reduced" in tb["reasons"]["patch_size"]  # the time target shrank nnU-Net's ResEnc patch
    assert cfg["diffusion"]["estimated_seconds_per_iteration"]["recycle"] > tb["estimated_seconds_per_iteration"]
    # the shrunken architecture still builds as nnunetv2 builds it, and the denoiser wraps it
    net = get_network_from_plans(arch["network_class_name"], kw, arch["_kw_requires_import"], 1, 3,
                                 deep_supervision=False)
    denoiser = build_denoiser(arch["network_class_name"], kw, arch["_kw_requires_import"], 1, 3,
                              deep_supervision=False)
    x = torch.randn(1, 1, *cfg["patch_size"])
    with torch.no_grad():
        assert net(x).shape == (1, 3, *cfg["patch_size"])
        out = denoiser(torch.cat([x, torch.randn(1, 3, *cfg["patch_size"])], 1), torch.tensor([0.5]))
    assert out.shape == (1, 3, *cfg["patch_size"])


def test_batch_cap_applies_to_resenc_where_nnunet_would_fill_memory(nnunet_dirs):
    # ResEnc presets allow batches over the whole dataset (max_dataset_covered = 1): the cap still holds
    name = _fake_dataset(nnunet_dirs, "Dataset912_Flat", (1, 64, 64), (999.0, 0.5, 0.5), n_cases=200)
    capped = _plan(name, "ResEncL", replace(get_budget("gpu"), name="capped", max_batch_size=4))
    cfg = capped["configurations"]["2d"]
    assert cfg["batch_size"] == 4 and "budget cap of 4" in cfg["training_budget"]["reasons"]["batch_size"]


def test_gpu_budget_keeps_nnunets_own_resenc_plans(nnunet_dirs, monkeypatch):
    name = _fake_dataset(nnunet_dirs, "Dataset913_Aniso", (48, 160, 160), (2.0, 0.7, 0.7), n_cases=40)
    for preset, stock_class in (("ResEncM", nnUNetPlannerResEncM), ("ResEncL", nnUNetPlannerResEncL)):
        ours = _plan(name, preset, get_budget("gpu"))
        # nnunetv2's VRAM estimate sets torch's threads to nnUNet_n_proc_DA (0 in tests): use ours, same value
        monkeypatch.setattr(stock_class, "static_estimate_VRAM_usage",
                            staticmethod(BudgetMixin.static_estimate_VRAM_usage))
        stock_planner = stock_class(name)
        stock_planner.save_plans = lambda plans: None
        stock = json.loads(json.dumps(stock_planner.plan_experiment(), default=str))
        ours = json.loads(json.dumps(ours, default=str))
        assert ours["plans_name"] == stock["plans_name"] == PLANNERS[preset].plans_name
        assert set(ours["configurations"]) == set(stock["configurations"])
        for c, cfg in ours["configurations"].items():
            extra = {k: cfg.pop(k) for k in ("training_budget", "diffusion") if k in cfg}
            assert cfg == stock["configurations"][c], (preset, c)
            if "architecture" in cfg:  # the cascade entry only inherits
                assert extra["training_budget"]["num_epochs"] == 1000


def test_plans_names():
    cpu, gpu = get_budget("cpu-small"), get_budget("gpu")
    assert plans_name_for(PLANNERS["default"], cpu) == plans_name_for(PLANNERS["default"], gpu) == "dnnunetPlans"
    assert plans_name_for(PLANNERS["ResEncM"], gpu) == "nnUNetResEncUNetMPlans"
    assert plans_name_for(PLANNERS["ResEncL"], cpu) == "nnUNetResEncUNetLPlans_cpu-small"
    assert plans_name_for(PLANNERS["ResEncXL"], get_budget("cpu-tiny")) == "nnUNetResEncUNetXLPlans_cpu-tiny"
    assert plans_name_for(PLANNERS["ResEncM"], get_budget("gpu", 2.0)) == "nnUNetResEncUNetMPlans_gpu_2.0s"
    # nnU-Net's class names select the same presets
    assert get_planner_preset("nnUNetPlannerResEncXL") is PLANNERS["ResEncXL"]
    assert get_planner_preset("ExperimentPlanner") is PLANNERS["default"]
    assert budgeted(PLANNERS["default"].planner_class) is BudgetedPlanner
    with pytest.raises(UserInputError, match="unknown planner -pl 'ResEncS'.*ResEncM, ResEncL, ResEncXL"):
        get_planner_preset("ResEncS")


def test_unknown_planner_is_refused_before_any_work(nnunet_dirs, capsys):
    assert main(["plan-and-preprocess", "-d", "999", "-pl", "nnUNetPlannerResEncS", "--budget", "cpu-tiny"]) == 2
    assert "unknown planner -pl 'nnUNetPlannerResEncS'" in capsys.readouterr().err
    assert not any(nnunet_dirs["nnUNet_preprocessed"].iterdir())


@pytest.mark.parametrize("cls", [RESENC, "dynamic_network_architectures.architectures.unet.PlainConvUNet"])
def test_cost_model_counts_the_networks_convolutions(cls):
    kw = {"n_stages": 4, "features_per_stage": [8, 16, 32, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
          "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
          "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage_decoder": [1, 2, 1],
          "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
          "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
          "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    kw["n_blocks_per_stage" if cls == RESENC else "n_conv_per_stage"] = [1, 3, 2, 2]
    net = get_network_from_plans(cls, kw, ["conv_op", "norm_op", "dropout_op", "nonlin"], 2, 3,
                                 deep_supervision=False)
    patch = (8, 16, 24)
    assert unet_forward_flops(patch, kw, 2, 3) == pytest.approx(_measured_conv_flops(net, patch, 2), rel=1e-9)


def test_missing_plans_name_the_plans_there_are(nnunet_dirs):
    from planning.pipeline import preprocessed_plans_file

    folder = nnunet_dirs["nnUNet_preprocessed"] / "Dataset914_X"
    folder.mkdir()
    (folder / "nnUNetResEncUNetMPlans_cpu-small.json").write_text("{}")
    (folder / "dataset_fingerprint.json").write_text("{}")
    with pytest.raises(UserInputError, match=r"dnnunetPlans.json does not exist.*has plans "
                                             r"nnUNetResEncUNetMPlans_cpu-small \(give one with -p\)"):
        preprocessed_plans_file("Dataset914_X", "dnnunetPlans")
    assert preprocessed_plans_file("Dataset914_X", "nnUNetResEncUNetMPlans_cpu-small").is_file()


def _measured_conv_flops(net: torch.nn.Module, patch, in_channels: int) -> float:
    """2 * multiply-adds of every convolution, measured with forward hooks on the real network."""
    total = [0.0]

    def hook(module, inputs, output):
        taps = float(torch.tensor(module.kernel_size).prod())
        if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):  # each input voxel feeds `taps` outputs
            total[0] += 2 * inputs[0][0].numel() * module.out_channels * taps
        else:
            total[0] += 2 * output[0].numel() * module.in_channels * taps

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    with torch.no_grad():
        net(torch.zeros(1, in_channels, *patch))
    for h in handles:
        h.remove()
    return total[0]
