"""Tests of the late-fusion denoiser: shapes, the eval-mode image-feature cache, gradients, selection."""
from __future__ import annotations

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from diffusion_nnunet.cli.main import build_parser
from diffusion_nnunet.configs.training_config import DiffusionConfig, TrainingConfig
from diffusion_nnunet.diffusion.sampling import sample
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.networks.denoiser import DiffusionUNet
from diffusion_nnunet.networks.late_fusion import LateFusionUNet
from diffusion_nnunet.networks.selection import build_selected_denoiser
from diffusion_nnunet.training.diffusion_trainer import DnnDiffusionTrainer
from dnnunet_core.errors import UserInputError
from tests.networks.helpers import PLANS, _cfg

IMAGE_CH, NUM_CLASSES = 1, 3


def _build(name, denoiser="late", self_condition=False, deep_supervision=False):
    a = _cfg(name)["architecture"]
    return build_selected_denoiser(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"], IMAGE_CH,
                                   NUM_CLASSES, self_condition=self_condition, deep_supervision=deep_supervision,
                                   denoiser=denoiser)


def _image(name, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IMAGE_CH, *_cfg(name)["patch_size"], generator=g)


def _mask(name, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, NUM_CLASSES, *_cfg(name)["patch_size"], generator=g)


class _Counter:
    """Counts forward passes of a module (a forward hook)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def _perturb(net, seed=2):
    # move the zero-initialised FiLM projections off zero, so that t matters
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for film in (*net.film_encoder, *net.film_decoder):
            film.proj.weight.copy_(torch.randn(film.proj.weight.shape, generator=g) * 0.2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", ["2d", "3d_fullres"])
@pytest.mark.parametrize("self_condition", [False, True])
def test_output_shapes_with_and_without_deep_supervision(name, self_condition):
    net = _build(name, self_condition=self_condition, deep_supervision=True)
    assert isinstance(net, LateFusionUNet)
    mask_ch = NUM_CLASSES * (2 if self_condition else 1)
    assert net.in_channels == IMAGE_CH + mask_ch and net.mask_channels == mask_ch
    # the U-Net's own input conv sees the image alone; the mask encoder has the image encoder's strides
    assert net.unet.encoder.stages[0][0].convs[0].conv.in_channels == IMAGE_CH
    assert net.mask_encoder.strides == net.unet.encoder.strides
    assert all(m <= f for m, f in zip(net.mask_features, net.features_per_stage))
    x = torch.cat([_image(name), _mask(name)] + ([_mask(name, seed=3)] if self_condition else []), 1)
    patch = tuple(_cfg(name)["patch_size"])
    out = net(x, torch.tensor([0.2, 0.8]))
    assert isinstance(out, list) and out[0].shape == (2, NUM_CLASSES, *patch)
    assert len(out) == len(net.features_per_stage) - 1
    net.deep_supervision = False
    assert net(x, 0.5).shape == (2, NUM_CLASSES, *patch)
    with pytest.raises(ValueError, match="input channels"):
        net(x[:, :-1], 0.5)


@pytest.mark.parametrize("name", ["2d", "3d_fullres"])
def test_sampling_runs_the_image_encoder_once_and_matches_the_uncached_result(name):
    net = _build(name).eval()
    _perturb(net)
    counter = _Counter(net.unet.encoder)
    image = _image(name)
    schedule = NoiseSchedule.linear(5)

    def denoise(m_t, t_net):  # as the predictor and the trainer call the network: image cat mask, each step
        return net(torch.cat([image, m_t], 1), t_net)

    def run():
        return sample(denoise, (2, NUM_CLASSES, *_cfg(name)["patch_size"]), schedule,
                      generator=torch.Generator().manual_seed(7)).probabilities

    with torch.inference_mode():
        cached = run()
    assert counter.calls == 1 and net.cache_hits == 4  # 5 reverse steps, one image-encoder pass
    net.train()  # no cache in training mode: the reference runs the encoder at every step
    with torch.no_grad():
        reference = run()
    assert counter.calls == 1 + 5
    torch.testing.assert_close(cached, reference, rtol=0, atol=0)


def test_cache_is_invalidated_by_another_image_or_changed_weights():
    net = _build("2d").eval()
    _perturb(net)
    counter = _Counter(net.unet.encoder)
    image, mask = _image("2d"), _mask("2d")

    def call(img, t=0.6):
        with torch.no_grad():
            return net(torch.cat([img, mask], 1), t)

    first = call(image)
    call(image.clone(), 0.2)  # same values in another tensor: a hit
    assert counter.calls == 1
    call(_image("2d", seed=5))  # another image of the same shape
    assert counter.calls == 2
    changed = image.clone()
    call(changed)
    assert counter.calls == 3
    changed[0, 0, 0, 0] += 1.0  # the same tensor edited in place
    call(changed)
    assert counter.calls == 4
    call(_image("2d", batch=3)[:, :, :16, :16].contiguous()[:2].repeat(1, 1, 2, 2))  # another shape
    assert counter.calls == 5

    call(image)
    assert counter.calls == 6
    with torch.no_grad():  # an in-place weight edit (as an optimizer step) bumps the version counter
        net.unet.encoder.stages[0][0].convs[0].conv.weight.mul_(1.5)
    edited = call(image)
    assert counter.calls == 7 and not torch.allclose(edited, first)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["unet.encoder.stages.0.0.convs.0.conv.weight"] /= 1.5
    net.load_state_dict(state)  # back to the first weights, e.g. the next fold
    restored = call(image)
    assert counter.calls == 8
    torch.testing.assert_close(restored, first)


def test_no_cache_in_training_mode_or_with_gradients_on():
    net = _build("2d")
    counter = _Counter(net.unet.encoder)
    x = torch.cat([_image("2d"), _mask("2d")], 1)
    with torch.no_grad():
        net(x, 0.5)
        net(x, 0.5)
    assert counter.calls == 2 and net.cache_hits == 0 and net._cache is None
    net.eval()
    net(x, 0.5)
    net(x, 0.5)  # gradients on (eval-mode fine-tuning, say): the features must carry the graph
    assert counter.calls == 4 and net._cache is None
    with torch.no_grad():
        net(x, 0.5)
    assert net._cache is not None
    net.train()  # switching to training drops the entry
    assert net._cache is None


def test_gradients_reach_both_encoders_the_fusion_and_the_time_layers():
    net = _build("2d")
    _perturb(net)
    out = net(torch.cat([_image("2d"), _mask("2d")], 1), torch.tensor([0.3, 0.7]))
    out.square().mean().backward()

    def reached(module):
        grads = [p.grad for p in module.parameters()]
        return all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0

    for module in (net.unet.encoder, net.mask_encoder, net.fuse, net.unet.decoder.stages, net.time_embed):
        assert reached(module), type(module).__name__
    assert all(float(f.proj.weight.grad.abs().sum()) > 0 for f in net.film_encoder)


def test_unknown_denoiser_is_refused():
    with pytest.raises(ValueError, match="unknown denoiser"):
        _build("2d", denoiser="middle")
    with pytest.raises(UserInputError, match="unknown denoiser"):
        DiffusionConfig(denoiser="middle").validate()


def test_config_field_round_trips_and_old_configs_load_as_early(tmp_path):
    config = TrainingConfig(diffusion=DiffusionConfig(denoiser="late"))
    config.save(tmp_path / "config.json")
    assert TrainingConfig.load(tmp_path / "config.json").diffusion.denoiser == "late"
    assert TrainingConfig.from_dict(config.to_dict()).diffusion.denoiser == "late"
    old = config.to_dict()
    del old["diffusion"]["denoiser"]  # a checkpoint written before the field existed
    assert TrainingConfig.from_dict(old).diffusion.denoiser == "early"
    assert DiffusionConfig().denoiser == "early"


def test_prediction_rebuilds_the_network_the_checkpoint_config_names():
    plans_manager = PlansManager(PLANS)
    cm = plans_manager.get_configuration("2d")
    for denoiser, cls in (("late", LateFusionUNet), ("early", DiffusionUNet)):
        config = TrainingConfig.from_dict({"diffusion": {"denoiser": denoiser, "timesteps": 5}})
        net = DnnDiffusionTrainer.network_for_inference(plans_manager, cm, IMAGE_CH, NUM_CLASSES, config)
        assert type(net) is cls and not net.deep_supervision
    late = DnnDiffusionTrainer.network_for_inference(plans_manager, cm, IMAGE_CH, NUM_CLASSES,
                                                     TrainingConfig.from_dict({"diffusion": {"denoiser": "late"}}))
    assert any(k.startswith("mask_encoder.") for k in late.state_dict())
    old = TrainingConfig.from_dict({"diffusion": {"strategy": "recycle", "timesteps": 5}})  # no denoiser key
    assert type(DnnDiffusionTrainer.network_for_inference(plans_manager, cm, IMAGE_CH, NUM_CLASSES, old)) \
        is DiffusionUNet


def test_train_flag_reaches_the_diffusion_overrides(monkeypatch):
    import diffusion_nnunet.training.run as run_module

    seen = {}

    def fake_train(dataset, configuration, fold, trainer, plans, overrides, *args, **kwargs):
        seen.update(overrides)
        return "folder"

    monkeypatch.setattr(run_module, "train", fake_train)
    from diffusion_nnunet.cli.train import run

    args = build_parser().parse_args(["train", "-d", "1", "-f", "0", "-tr", "recycle", "--denoiser", "late"])
    assert run(args) == 0
    assert seen["diffusion"]["denoiser"] == "late"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-d", "1", "-f", "0", "--denoiser", "middle"])


@pytest.mark.slow
def test_train_and_predict_with_the_late_denoiser(env, tmp_path, monkeypatch):
    from diffusion_nnunet.cli.main import main
    from diffusion_nnunet.inference.predictor import load_predictor
    from tests.conftest import DATASET_ID, RECYCLE_DIR

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))  # beside the session's early `recycle`
    assert main(["train", "-d", str(DATASET_ID), "-f", "0", "-tr", "recycle", "-device", "cpu", "--seed", "0",
                 "--denoiser", "late", "--skip-validation"]) == 0
    model = tmp_path / "results" / env["raw"].name / RECYCLE_DIR
    ckpt = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["init_args"]["dnnunet_config"]["diffusion"]["denoiser"] == "late"
    assert any(k.startswith("mask_encoder.") for k in ckpt["network_weights"])
    predictor = load_predictor(model, [0], diffusion_options={"seed": 0})
    assert isinstance(predictor.network, LateFusionUNet)
    patch = predictor.configuration_manager.patch_size
    predictor.predict_sliding_window_return_logits(torch.randn(1, 1, *patch))  # one tile, N = M samples, T steps
    # the samples share forward passes up to the run limit; each pass group encodes the image once
    passes = -(-len(predictor._runs()) // predictor._run_limit())
    steps = predictor.schedule.num_steps
    assert predictor.network.image_encoder_calls == passes and predictor.network.cache_hits == passes * (steps - 1)
    out = tmp_path / "pred"
    assert main(["predict", "-i", str(env["raw"] / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-tr",
                 "recycle", "-f", "0", "-device", "cpu", "--seed", "3"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 3
    assert main(["evaluate", "-ref", str(env["raw"] / "labelsTs"), "-pred", str(out)]) == 0
