"""Tests of the time-conditioned denoiser: nnU-Net topology, deep supervision, time conditioning."""
from __future__ import annotations

import copy

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from diffusion_nnunet.networks import (
    DiffusionUNet,
    TimeEmbedding,
    build_denoiser,
    denoiser_in_channels,
    sinusoidal_embedding,
)
from tests.networks.helpers import IMPORTS, _arch, _cfg

IMAGE_CH, NUM_CLASSES = 1, 3


def _build(name, self_condition=False, deep_supervision=True, **kw) -> DiffusionUNet:
    a = _cfg(name)["architecture"]
    return build_denoiser(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"],
                          IMAGE_CH, NUM_CLASSES, self_condition=self_condition,
                          deep_supervision=deep_supervision, **kw)


def _baseline(name, input_channels=IMAGE_CH, deep_supervision=True):
    a = _cfg(name)["architecture"]
    return get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"],
                                  input_channels, NUM_CLASSES, allow_init=True, deep_supervision=deep_supervision)


def _input(net: DiffusionUNet, name, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, net.in_channels, *_cfg(name)["patch_size"], generator=g)


def _perturb_time_layers(net: DiffusionUNet, std=0.2, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for film in (*net.film_encoder, *net.film_decoder):
            film.proj.weight.copy_(torch.randn(film.proj.weight.shape, generator=g) * std)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------ time embedding
def test_sinusoidal_embedding_shape_range_and_distinct():
    t = torch.tensor([0.2, 0.4, 1.0])
    e = sinusoidal_embedding(t, 16)
    assert e.shape == (3, 16) and e.dtype == torch.float32
    assert e.abs().max() <= 1.0
    # neighbouring normalised steps (1/1000 apart) must still be distinguishable
    near = sinusoidal_embedding(torch.tensor([0.500, 0.501]), 16)
    assert (near[0] - near[1]).abs().max() > 1e-2
    assert sinusoidal_embedding(t, 7).shape == (3, 7)  # odd dim is padded


def test_time_embedding_mlp_shape():
    assert TimeEmbedding(32)(torch.rand(5)).shape == (5, 32)
    assert TimeEmbedding(32, out_dim=8)(torch.rand(5)).shape == (5, 8)


def test_smaller_cond_dim_cuts_time_parameters():
    big, small = _build("2d"), _build("2d", cond_dim=16)
    assert small.film_encoder[0].proj.in_features == 16
    assert sum(p.numel() for p in small.time_parameters()) < sum(p.numel() for p in big.time_parameters()) / 2


# -------------------------------------------------------------------------------------- topology
@pytest.mark.parametrize("self_condition", [False, True])
def test_in_channels(self_condition):
    net = _build("2d", self_condition=self_condition)
    expected = IMAGE_CH + NUM_CLASSES * (2 if self_condition else 1)
    assert net.in_channels == expected == denoiser_in_channels(IMAGE_CH, NUM_CLASSES, self_condition)
    assert net.unet.encoder.stages[0][0].convs[0].conv.in_channels == expected
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, expected + 1, 32, 32), 0.5)


@pytest.mark.parametrize("name", ["2d", "3d_fullres"])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_output_shapes_match_baseline(name, deep_supervision):
    net = _build(name, deep_supervision=deep_supervision)
    base = _baseline(name, deep_supervision=deep_supervision)
    batch = 1 if name == "3d_fullres" else 2  # batch size 1 must work too
    x = _input(net, name, batch=batch)
    with torch.no_grad():
        out = net(x, torch.full((batch,), 0.3))
        ref = base(x[:, :IMAGE_CH])
    if deep_supervision:
        assert isinstance(out, list) and isinstance(ref, list)
        assert len(out) == len(ref) == len(_cfg(name)["architecture"]["arch_kwargs"]["features_per_stage"]) - 1
        assert [o.shape for o in out] == [r.shape for r in ref]
        assert out[0].shape == (batch, NUM_CLASSES, *_cfg(name)["patch_size"])
    else:
        assert isinstance(out, torch.Tensor)
        assert out.shape == ref.shape == (batch, NUM_CLASSES, *_cfg(name)["patch_size"])


@pytest.mark.parametrize("name", ["2d", "3d_fullres"])
def test_same_topology_as_baseline(name):
    net = _build(name, self_condition=True)
    base = _baseline(name)
    ours = {k: p.shape for k, p in net.unet.named_parameters()}
    theirs = {k: p.shape for k, p in base.named_parameters()}
    assert ours.keys() == theirs.keys()
    first = "encoder.stages.0.0.convs.0.conv.weight"
    diff = [k for k in ours if ours[k] != theirs[k]]
    assert diff == [first]
    assert ours[first][1] == net.in_channels and theirs[first][1] == IMAGE_CH
    assert ours[first][0] == theirs[first][0] and ours[first][2:] == theirs[first][2:]
    # the wrapped U-Net's weights load into a plain nnU-Net network with the same input channels
    plain = _baseline(name, input_channels=net.in_channels)
    plain.load_state_dict(net.unet.state_dict(), strict=True)
    assert all(k.startswith(("unet.encoder", "unet.decoder", "time_embed.", "film_")) for k in net.state_dict())


def test_residual_encoder_unet_supported_and_others_rejected():
    a = _arch("torch.nn.modules.conv.Conv2d", "torch.nn.modules.instancenorm.InstanceNorm2d", (8, 16, 32),
              [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]], n_conv_dec=1,
              cls="dynamic_network_architectures.architectures.unet.ResidualEncoderUNet")
    kw = dict(a["arch_kwargs"])
    kw["n_blocks_per_stage"] = kw.pop("n_conv_per_stage")
    net = build_denoiser(a["network_class_name"], kw, IMPORTS, IMAGE_CH, NUM_CLASSES)
    x = torch.randn(1, net.in_channels, 16, 16)
    with torch.no_grad():
        out = net(x, 0.5)
        assert torch.equal(net(x, 0.5)[0], net.unet(x)[0])  # zero init: plain U-Net
    assert [o.shape[-1] for o in out] == [16, 8]
    with pytest.raises(NotImplementedError, match="ResidualUNet"):
        build_denoiser("dynamic_network_architectures.architectures.unet.ResidualUNet", kw, IMPORTS,
                       IMAGE_CH, NUM_CLASSES)


# ------------------------------------------------------------------------------ time conditioning
def test_init_is_plain_unet_and_independent_of_t():
    net = _build("2d").eval()
    x = _input(net, "2d")
    with torch.no_grad():
        a = net(x, torch.tensor([0.1, 0.2]))
        b = net(x, torch.tensor([0.9, 1.0]))
        plain = net.unet(x)
    for oa, ob, op in zip(a, b, plain):
        assert torch.equal(oa, ob) and torch.equal(oa, op)


@pytest.mark.parametrize("conditioning", ["film", "add"])
def test_time_matters_after_perturbation(conditioning):
    net = _build("2d", deep_supervision=False, conditioning=conditioning).eval()
    _perturb_time_layers(net)
    x = _input(net, "2d")
    with torch.no_grad():
        a, b = net(x, 0.1), net(x, 0.9)
    assert (a - b).abs().max() > 1e-3


def test_time_matters_after_a_few_optimiser_steps():
    net = _build("3d_fullres", deep_supervision=False)
    x = _input(net, "3d_fullres", batch=2)
    t = torch.tensor([0.2, 1.0])
    target = torch.randint(0, NUM_CLASSES, (2, *_cfg("3d_fullres")["patch_size"]))
    target[1] = (target[1] + 1) % NUM_CLASSES  # the two times must map the same x to different labels
    opt = torch.optim.Adam(net.time_parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, t), target).backward()
        opt.step()
    with torch.no_grad():
        a, b = net(x[:1], 0.2), net(x[:1], 1.0)
    assert (a - b).abs().max() > 1e-4


def test_gradients_reach_time_layers():
    net = _build("2d")
    x = _input(net, "2d")
    t = torch.tensor([0.25, 0.75])
    sum(o.square().mean() for o in net(x, t)).backward()
    # at zero init the FiLM projections get gradient (their input, the time code, is non-zero) ...
    assert all(f.proj.weight.grad.abs().sum() > 0 for f in (*net.film_encoder, *net.film_decoder))
    # ... and once they are off zero, the gradient reaches the time MLP too
    net.zero_grad()
    _perturb_time_layers(net, std=0.05)
    sum(o.square().mean() for o in net(x, t)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.time_embed.parameters())


def test_t_broadcasting():
    net = _build("2d", deep_supervision=False).eval()
    _perturb_time_layers(net)
    x = _input(net, "2d")
    with torch.no_grad():
        ref = net(x, torch.tensor([0.4, 0.4]))
        for t in (0.4, torch.tensor(0.4), torch.tensor([0.4]), torch.tensor([[0.4], [0.4]])):
            assert torch.allclose(net(x, t), ref)
        with pytest.raises(ValueError, match="one entry per sample"):
            net(x, torch.tensor([0.1, 0.2, 0.3]))


# ------------------------------------------------------------------------------- nnU-Net plumbing
def test_deep_supervision_toggle_via_decoder():
    net = _build("2d", deep_supervision=True)
    assert net.decoder is net.unet.decoder and net.encoder is net.unet.encoder
    x = _input(net, "2d", batch=1)
    with torch.no_grad():
        assert isinstance(net(x, 0.5), list)
        net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
        out = net(x, 0.5)
        assert isinstance(out, torch.Tensor) and out.shape == (1, NUM_CLASSES, 32, 32)
        net.deep_supervision = True
        assert isinstance(net(x, 0.5), list) and net.decoder.deep_supervision is True


@pytest.mark.parametrize("name", ["2d", "3d_fullres"])
def test_feature_map_size_at_least_plain(name):
    net = _build(name)
    patch = _cfg(name)["patch_size"]
    assert net.compute_conv_feature_map_size(patch) >= _baseline(name).compute_conv_feature_map_size(patch)


def test_deepcopy_and_state_dict_roundtrip():
    net = _build("2d", deep_supervision=False)
    _perturb_time_layers(net)
    other = _build("2d", deep_supervision=False)
    other.load_state_dict(copy.deepcopy(net.state_dict()))
    x = _input(net, "2d")
    with torch.no_grad():
        assert torch.equal(net.eval()(x, 0.3), other.eval()(x, 0.3))


def test_rejects_mismatched_features():
    base = _baseline("2d", input_channels=4)
    assert isinstance(base, PlainConvUNet)
    with pytest.raises(ValueError, match="features_per_stage"):
        DiffusionUNet(base, [8, 16, 32, 64])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_backward():
    net = _build("3d_fullres").cuda()
    x = _input(net, "3d_fullres").cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(x, torch.rand(2, device="cuda"))
    sum(o.float().mean() for o in out).backward()
    assert out[0].device.type == "cuda"


@pytest.mark.parametrize("name", ["2d", "3d_fullres"])
def test_fused_instance_norm_film_equals_norm_then_film(name, monkeypatch):
    """The fused path (FiLM folded into instance norm's affine) computes the same values and gradients."""
    import diffusion_nnunet.networks.denoiser as denoiser_module

    net = _build(name)
    _perturb_time_layers(net)
    x, t = _input(net, name), torch.tensor([0.2, 0.9])

    def run():
        net.zero_grad()
        out = net(x, t)
        sum(o.square().mean() for o in out).backward()
        return out[0].detach(), [p.grad.clone() for p in net.time_parameters()]

    fused_calls = []
    real_fused = denoiser_module._instance_norm_film

    def counting_fused(*args, **kwargs):
        fused_calls.append(1)
        return real_fused(*args, **kwargs)

    monkeypatch.setattr(denoiser_module, "_instance_norm_film", counting_fused)
    fused_out, fused_grads = run()
    assert fused_calls, "the fused instance-norm + FiLM path did not run"
    monkeypatch.setattr(denoiser_module, "_fusable_instance_norm", lambda module: False)
    fused_calls.clear()
    plain_out, plain_grads = run()
    assert not fused_calls, "the plain path ran the fused function"
    torch.testing.assert_close(fused_out, plain_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
