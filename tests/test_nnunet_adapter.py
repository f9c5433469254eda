"""The nnunetv2 / dynamic-network-architectures internals we depend on still look as we use them.

Every private name used by `diffusion_nnunet/nnunet_adapter.py`, by the denoiser's FiLM
placement (`networks/denoiser.py`) and by the trainers' overrides of nnUNetTrainer's private hooks
(`training/base.py`, `training/semi_supervised.py`) is checked here, each failure naming the
internal that changed and where we use it. After an upgrade of either package, this file says
what to look at; `nnunet_adapter.PINNED` records the versions it was written against.
"""
from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from diffusion_nnunet import nnunet_adapter
from diffusion_nnunet.nnunet_adapter import PINNED, SlidingWindowPredictor, TileResult, unet_decoder_forward


def _changed(package: str, internal: str, used_by: str, detail: str = "") -> str:
    return (f"{package} {version(package)} (the adapter was written against {PINNED[package]}) changed "
            f"{internal}, which {used_by} depends on{': ' + detail if detail else ''}")


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("package", sorted(PINNED))
def test_the_installed_release_line_is_the_pinned_one(package):
    installed, pinned = version(package).split(".")[:2], PINNED[package].split(".")[:2]
    assert installed == pinned, (f"{package} {version(package)} is installed; nnunet_adapter.py was checked against "
                                 f"{PINNED[package]}: run tests/test_nnunet_adapter.py, then update PINNED")


# ---------------------------------------------------------------- nnunetv2's predictor
PREDICTOR_HOOKS = {
    "_internal_maybe_mirror_and_predict": ["self", "x"],
    "_internal_predict_sliding_window_return_logits": ["self", "data", "slicers", "do_on_device"],
    "_internal_get_sliding_window_slicers": ["self", "image_size"],
    "predict_sliding_window_return_logits": ["self", "input_image"],
    "manual_initialization": ["self", "network", "plans_manager", "configuration_manager", "parameters",
                              "dataset_json", "trainer_name", "inference_allowed_mirroring_axes"],
}


@pytest.mark.parametrize("name, parameters", sorted(PREDICTOR_HOOKS.items()))
def test_the_predictor_hooks_keep_their_signatures(name, parameters):
    function = getattr(nnUNetPredictor, name, None)
    assert function is not None, _changed("nnunetv2", f"nnUNetPredictor.{name} (removed)", "nnunet_adapter.py")
    assert _parameters(function) == parameters, _changed(
        "nnunetv2", f"the signature of nnUNetPredictor.{name}", "nnunet_adapter.SlidingWindowPredictor",
        f"{_parameters(function)} instead of {parameters}")


def test_the_public_sliding_window_still_calls_the_private_hooks():
    """Our sliding window runs only because nnunetv2's public one calls these by name."""
    source = inspect.getsource(nnUNetPredictor.predict_sliding_window_return_logits)
    for hook in ("self._internal_get_sliding_window_slicers", "self._internal_predict_sliding_window_return_logits"):
        assert hook in source, _changed("nnunetv2", "nnUNetPredictor.predict_sliding_window_return_logits",
                                        "nnunet_adapter.SlidingWindowPredictor", f"it no longer calls {hook}")
    stock = inspect.getsource(nnUNetPredictor._internal_predict_sliding_window_return_logits)
    for used in ("label_manager.num_segmentation_heads", "dtype=torch.half", "sigma_scale=1. / 8",
                 "value_scaling_factor=10"):
        assert used in stock, _changed("nnunetv2", "nnUNetPredictor._internal_predict_sliding_window_return_logits",
                                       "nnunet_adapter.SlidingWindowPredictor (which repeats its accumulation)",
                                       f"{used!r} is gone")


def test_compute_gaussian_is_cached_and_keeps_its_arguments():
    assert hasattr(compute_gaussian, "cache_clear"), _changed(
        "nnunetv2", "compute_gaussian (no longer an lru_cache)", "nnunet_adapter.release_gaussian_cache")
    assert {"tile_size", "sigma_scale", "value_scaling_factor", "device"} <= set(_parameters(compute_gaussian)), \
        _changed("nnunetv2", "the signature of compute_gaussian", "nnunet_adapter.SlidingWindowPredictor")
    nnunet_adapter.release_gaussian_cache()
    assert compute_gaussian.cache_info().currsize == 0


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _predictor(cls, tile_batch_size=1):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from tests.inference.tiny_predictors import DATASET_JSON, tiny_plans

    predictor = cls(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                    verbose=False, allow_tqdm=False, perform_everything_on_device=False)
    plans = tiny_plans((16, 16), 2)
    pm = PlansManager(plans)
    torch.manual_seed(0)
    network = _Conv()
    predictor.manual_initialization(network, pm, pm.get_configuration("2d"), [network.state_dict()], DATASET_JSON,
                                    "Tiny", (0, 1))
    predictor.tile_batch_size = lambda: tile_batch_size
    return predictor


@pytest.mark.parametrize("tile_batch", [1, 3])
def test_the_adapters_sliding_window_is_nnunets(tile_batch):
    """The same tiles, weights, accumulator and mirroring as nnunetv2's own sliding window."""
    image = torch.rand(1, 1, 40, 36)
    stock = _predictor(nnUNetPredictor).predict_sliding_window_return_logits(image)
    ours = _predictor(SlidingWindowPredictor, tile_batch).sliding_window(image)
    assert ours.channels.shape == stock.shape == (3, 1, 40, 36) and ours.steps_run is None
    torch.testing.assert_close(ours.channels.float(), stock.float(), rtol=2e-3, atol=2e-3)


def test_the_window_accumulates_what_the_tiles_return():
    predictor = _predictor(SlidingWindowPredictor, 2)
    firsts = []

    def predict_tiles(tiles, first_tile):
        firsts.append(first_tile)
        return TileResult(torch.ones((tiles.shape[0], 5, *tiles.shape[2:])), (4, 2, 0))

    predictor.predict_tiles = predict_tiles
    result = predictor.sliding_window(torch.rand(1, 1, 40, 36), channels=5)
    assert result.channels.shape == (5, 1, 40, 36) and result.steps_run == (4, 2, 0)
    torch.testing.assert_close(result.channels.float(), torch.ones(5, 1, 40, 36))
    assert firsts == list(range(0, 2 * len(firsts), 2))  # each pass names the index of its first tile
    assert predictor.label_manager.num_segmentation_heads == 3  # the label manager is left alone


# ---------------------------------------------------------------- dynamic-network-architectures
def _unet(cls, deep_supervision: bool):
    kwargs = dict(input_channels=3, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv2d, kernel_sizes=3,
                  strides=[1, 2, 2], num_classes=2, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
                  norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
                  deep_supervision=deep_supervision)
    if cls is PlainConvUNet:
        return PlainConvUNet(n_conv_per_stage=[2, 2, 2], **kwargs)
    return ResidualEncoderUNet(n_blocks_per_stage=[1, 1, 1], **kwargs)


@pytest.mark.parametrize("cls", [PlainConvUNet, ResidualEncoderUNet])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_the_decoder_loop_is_unet_decoders_forward(cls, deep_supervision):
    torch.manual_seed(0)
    unet = _unet(cls, deep_supervision).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        skips = unet.encoder(x)
        theirs = unet.decoder(skips)
        ours = unet_decoder_forward(unet.decoder, skips, lambda s, stage, h: stage(h))
    theirs, ours = (theirs, ours) if deep_supervision else ([theirs], [ours])
    assert len(ours) == len(theirs), _changed("dynamic_network_architectures", "UNetDecoder.forward",
                                              "nnunet_adapter.unet_decoder_forward", "another number of outputs")
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b), _changed("dynamic_network_architectures", "UNetDecoder.forward",
                                           "nnunet_adapter.unet_decoder_forward (a copy with a stage hook)")


MODULE_LAYOUT = [
    # (class, attributes an instance has, where we read them)
    (UNetDecoder, ("stages", "transpconvs", "seg_layers", "deep_supervision", "num_classes"),
     "nnunet_adapter.unet_decoder_forward, networks/denoiser.py"),
    (PlainConvEncoder, ("stages", "output_channels", "strides", "conv_op"),
     "networks/denoiser.py (_encode, budget), the late-fusion denoiser (its fusion convs)"),
    (ResidualEncoder, ("stem", "stages", "output_channels", "strides", "conv_op"),
     "networks/denoiser.py (_encode), the late-fusion denoiser (its fusion convs)"),
    (StackedConvBlocks, ("convs",), "networks/denoiser.py (FiLM in a stage's first conv block)"),
    (ConvDropoutNormReLU, ("conv", "norm", "all_modules"), "networks/denoiser.py (FiLM after the norm)"),
]


@pytest.mark.parametrize("cls", [PlainConvUNet, ResidualEncoderUNet])
def test_the_module_layout_the_denoiser_reads(cls):
    unet = _unet(cls, False)
    for owner, attributes, used_by in MODULE_LAYOUT:
        instances = [m for m in unet.modules() if type(m) is owner]
        if owner in (PlainConvEncoder, ResidualEncoder) and not isinstance(unet.encoder, owner):
            continue
        assert instances, _changed("dynamic_network_architectures", f"{cls.__name__}'s use of {owner.__name__}",
                                   used_by, "no such module in the network any more")
        for attribute in attributes:
            assert all(hasattr(m, attribute) for m in instances), _changed(
                "dynamic_network_architectures", f"{owner.__name__}.{attribute}", used_by)
    assert type(unet.decoder) is UNetDecoder, _changed("dynamic_network_architectures", f"{cls.__name__}.decoder",
                                                       "networks/denoiser.py", "not a UNetDecoder")
    assert any(unet.get_submodule(k) is not None for k in unet.keys_to_in_proj), _changed(
        "dynamic_network_architectures", f"{cls.__name__}.keys_to_in_proj", "networks/denoiser.py (_first_conv)")
    if cls is PlainConvUNet:  # a PlainConvEncoder stage is [optional pooling op, StackedConvBlocks]
        for stage in unet.encoder.stages:
            assert isinstance(stage[-1], StackedConvBlocks), _changed(
                "dynamic_network_architectures", "PlainConvEncoder's stage layout", "networks/denoiser.py (_encode)")
    block = next(m for m in unet.modules() if type(m) is ConvDropoutNormReLU)
    assert list(block.all_modules).index(block.norm) == list(block.all_modules).index(block.conv) + 1, _changed(
        "dynamic_network_architectures", "ConvDropoutNormReLU's order (conv, norm, ...)", "networks/denoiser.py")


# ---------------------------------------------------------------- nnUNetTrainer's private hooks we override
TRAINER_HOOKS = {
    "_build_loss": (["self"], "training/base.py (the 0/0 deep-supervision guard, the DDP loss)"),
    "_get_deep_supervision_scales": (["self"], "training/base.py (_build_loss)"),
    "_set_batch_size_and_oversample": (["self"], "training/base.py (the rank's share of the batch)"),
    "_do_i_compile": (["self"], "training/semi_supervised.py (no torch.compile with several processes)"),
}


@pytest.mark.parametrize("name", sorted(TRAINER_HOOKS))
def test_the_trainer_hooks_we_override_still_exist(name):
    parameters, used_by = TRAINER_HOOKS[name]
    function = getattr(nnUNetTrainer, name, None)
    assert function is not None, _changed("nnunetv2", f"nnUNetTrainer.{name} (removed)", used_by)
    assert _parameters(function) == parameters, _changed("nnunetv2", f"the signature of nnUNetTrainer.{name}", used_by,
                                                         str(_parameters(function)))
    source = inspect.getsource(nnUNetTrainer)
    assert f"self.{name}(" in source, _changed("nnunetv2", f"nnUNetTrainer.{name}", used_by, "nnunetv2 no longer calls it")
