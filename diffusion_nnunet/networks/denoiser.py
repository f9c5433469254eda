"""Time-conditioned denoiser f(image, m_t, t) -> logits on top of nnU-Net's own U-Net.

Design
------
The network *is* the U-Net that nnU-Net builds from the plans (``get_network_from_plans``; same
stages, kernels, strides, features, convs per stage, norm, nonlinearity), with only its input
channels changed to ``image + C (noisy mask) [+ C (self-conditioning)]``. It is wrapped, not
copied: ``DiffusionUNet.unet`` holds the unmodified nnU-Net module (state-dict keys
``unet.encoder...``, ``unet.decoder...``), and ``DiffusionUNet.forward`` runs its encoder and
decoder stages itself so that the time code can be injected in between (the decoder's loop is
``UNetDecoder.forward`` with a stage hook, ``nnunet_adapter.unet_decoder_forward``; the encoder's
stage and conv-block layout is read here, pinned by ``tests/test_nnunet_adapter.py``).

Time conditioning (FiLM, the default): ``emb = SiLU(MLP(sinusoidal(t)))``, and per stage a
``Linear(emb) -> (scale, shift)`` with ``h <- h * (1 + scale) + shift`` per channel.

Where it is applied (one FiLM per stage, in the encoder and in the decoder):

* ``StackedConvBlocks`` stages (all PlainConvUNet encoder stages, every decoder stage): inside
  the stage's *first* conv block, right after its normalisation and before its nonlinearity
  (conv -> norm -> FiLM -> nonlin -> remaining convs), the "scale-shift norm" placement of
  DDPM-style U-Nets. Applying FiLM *after* the norm matters: a per-channel shift applied to a
  stage's output would be mostly cancelled by the next conv + instance norm.
* ``ResidualEncoderUNet`` encoder stages (residual blocks, whose internals we do not touch): on
  the stage output; the identity path of the next residual block carries the shift through.

``conditioning="add"`` uses a shift only (``h <- h + shift``), the plain additive variant.

The projections are initialised to zero, so a freshly built denoiser computes exactly the plain
U-Net's output, whatever t is; the time dependence is learnt. (With zero projections, the time
MLP itself gets zero gradient until the projections move off zero - after the first step.)
"""
from __future__ import annotations

import logging
import pydoc
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from diffusion_nnunet.networks.time_embedding import DEFAULT_TIME_SCALE, TimeEmbedding
from diffusion_nnunet.nnunet_adapter import unet_decoder_forward

__all__ = ["FiLM", "DiffusionUNet", "build_denoiser", "denoiser_in_channels", "SUPPORTED_ARCHITECTURES",
           "CONDITIONING_MODES"]

logger = logging.getLogger(__name__)

#: U-Nets whose stages we know how to run with time conditioning.
SUPPORTED_ARCHITECTURES = (PlainConvUNet, ResidualEncoderUNet)
CONDITIONING_MODES = ("film", "add")


def denoiser_in_channels(image_channels: int, num_classes: int, self_condition: bool = False) -> int:
    """Input channels of the denoiser: image + noisy mask (C) [+ self-conditioning estimate (C)].

    Args:
        image_channels: number of image modalities.
        num_classes: C, classes including background.
        self_condition: whether C more channels carry the previous x0 estimate.
    """
    return int(image_channels) + int(num_classes) * (2 if self_condition else 1)


class FiLM(nn.Module):
    """Per-channel modulation of a feature map by the time code.

    Args:
        embed_dim: width of the (already SiLU-activated) time code.
        channels: channels of the feature map to modulate.
        mode: ``"film"`` (``h * (1 + scale) + shift``) or ``"add"`` (``h + shift``).
    """

    def __init__(self, embed_dim: int, channels: int, mode: str = "film"):
        super().__init__()
        if mode not in CONDITIONING_MODES:
            raise ValueError(f"conditioning must be one of {CONDITIONING_MODES}, got {mode!r}")
        self.mode = mode
        self.channels = int(channels)
        self.proj = nn.Linear(embed_dim, (2 if mode == "film" else 1) * self.channels)
        self.reset_to_identity()

    def reset_to_identity(self) -> None:
        """Zero the projection: scale 0 and shift 0, so the layer is the identity."""
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """Modulate ``h`` (B, channels, *spatial) with the time code ``emb`` (B, embed_dim)."""
        p = self.proj(emb).to(h.dtype)
        p = p.view(p.shape[0], p.shape[1], *([1] * (h.ndim - 2)))
        if self.mode == "film":
            scale, shift = p.chunk(2, dim=1)
            # out-of-place on purpose: h (a norm output) is saved for backward, and the next
            # nonlinearity is often in-place
            return torch.addcmul(shift, h, 1 + scale)
        return h + p


def _fusable_instance_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.affine \
        and not module.track_running_stats


def _instance_norm_film(h: Tensor, norm: nn.Module, film: FiLM, emb: Tensor) -> Tensor:
    """Instance norm and FiLM in one pass: (x_hat * w + b) * (1 + s) + sh = x_hat * w' + b'.

    Instance norm is batch norm over a (1, B*C, ...) view; giving it per-sample affine parameters
    w' = w (1 + s) and b' = b (1 + s) + sh saves FiLM's own pass over the feature map, which on
    the CPU costs about as much as the norm itself.
    """
    p = film.proj(emb).to(h.dtype)
    scale, shift = p.chunk(2, dim=1)
    weight = norm.weight[None] * (1 + scale)
    bias = norm.bias[None] * (1 + scale) + shift
    b, c = h.shape[:2]
    out = F.batch_norm(h.reshape(1, b * c, *h.shape[2:]), None, None, weight.reshape(-1), bias.reshape(-1),
                       training=True, momentum=0.0, eps=norm.eps)
    return out.reshape(h.shape)


def check_planned_architecture(arch_class_name: str, builder: str) -> None:
    """Refuse, before building anything, a plans architecture the denoisers cannot wrap.

    Args:
        arch_class_name: the plans' ``network_class_name``.
        builder: the builder's name, for the message.

    Raises:
        NotImplementedError: a class other than PlainConvUNet / ResidualEncoderUNet (or a subclass).
    """
    cls = pydoc.locate(arch_class_name)
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, SUPPORTED_ARCHITECTURES)):
        names = ", ".join(c.__name__ for c in SUPPORTED_ARCHITECTURES)
        raise NotImplementedError(f"{builder} supports {names}; plans ask for {arch_class_name}")


def _check_supported(unet: nn.Module) -> None:
    """Raise NotImplementedError for U-Nets whose stages ``DiffusionUNet`` cannot run."""
    encoder = getattr(unet, "encoder", None)
    decoder = getattr(unet, "decoder", None)
    ok = (isinstance(unet, SUPPORTED_ARCHITECTURES)
          and isinstance(encoder, (PlainConvEncoder, ResidualEncoder))
          and type(decoder) is UNetDecoder)  # exact type: subclasses may change forward()
    if not ok:
        names = ", ".join(c.__name__ for c in SUPPORTED_ARCHITECTURES)
        raise NotImplementedError(
            f"DiffusionUNet supports {names} (with UNetDecoder); got {type(unet).__name__} "
            f"(encoder {type(encoder).__name__}, decoder {type(decoder).__name__})")


def _first_conv(unet: nn.Module) -> _ConvNd:
    """The U-Net's input convolution (found through the architecture's own key when present)."""
    for key in getattr(unet, "keys_to_in_proj", ()):
        try:
            m = unet.get_submodule(key)
        except AttributeError:
            continue
        if isinstance(m, _ConvNd):
            return m
    stem = getattr(unet.encoder, "stem", None)
    root = stem if stem is not None else unet.encoder.stages
    return next(m for m in root.modules() if isinstance(m, _ConvNd))


class DiffusionUNet(nn.Module):
    """nnU-Net U-Net with time conditioning in every encoder and decoder stage.

    Args:
        unet: a ``PlainConvUNet`` or ``ResidualEncoderUNet`` (``UNetDecoder``), already built with
            the denoiser's input channels (see :func:`build_denoiser`). It is used as is.
        features_per_stage: features of each encoder stage; must equal the U-Net's
            ``encoder.output_channels`` (a guard that the wrapper conditions what the plans built).
        time_embed_dim: width of the sinusoidal features and of the time MLP.
        conditioning: ``"film"`` (scale and shift, default) or ``"add"`` (shift only).
        cond_dim: width of the time code fed to the per-stage projections (default:
            ``time_embed_dim``); lower it (e.g. 32) to cut the time layers' parameters about 4x.
        time_scale: factor on t in (0, 1] before the sinusoids (default 1000).
        max_period: longest sinusoid period.
    """

    def __init__(self, unet: nn.Module, features_per_stage: Sequence[int], time_embed_dim: int = 128,
                 conditioning: str = "film", cond_dim: int | None = None,
                 time_scale: float = DEFAULT_TIME_SCALE, max_period: float = 10000.0):
        super().__init__()
        _check_supported(unet)
        enc_channels = [int(c) for c in unet.encoder.output_channels]
        if [int(c) for c in features_per_stage] != enc_channels:
            raise ValueError(f"features_per_stage {list(features_per_stage)} does not match the U-Net's "
                             f"encoder.output_channels {enc_channels}")
        if conditioning not in CONDITIONING_MODES:
            raise ValueError(f"conditioning must be one of {CONDITIONING_MODES}, got {conditioning!r}")
        self.unet = unet
        self.conditioning = conditioning
        self.features_per_stage = enc_channels
        self.in_channels = int(_first_conv(unet).in_channels)
        self._residual_encoder = isinstance(unet.encoder, ResidualEncoder)

        self.time_embed = TimeEmbedding(time_embed_dim, out_dim=cond_dim, max_period=max_period,
                                        time_scale=time_scale)
        code = self.time_embed.out_dim
        self.film_encoder = nn.ModuleList(FiLM(code, c, conditioning) for c in enc_channels)
        # decoder stage s works at the resolution of encoder stage -(s + 2)
        self.film_decoder = nn.ModuleList(
            FiLM(code, enc_channels[-(s + 2)], conditioning) for s in range(len(unet.decoder.stages)))

    # ----------------------------------------------------------------- nnU-Net-facing attributes
    @property
    def encoder(self) -> nn.Module:
        """The wrapped U-Net's encoder."""
        return self.unet.encoder

    @property
    def decoder(self) -> UNetDecoder:
        """The wrapped U-Net's decoder; ``network.decoder.deep_supervision = x`` toggles deep supervision."""
        return self.unet.decoder

    @property
    def deep_supervision(self) -> bool:
        """Shortcut for ``decoder.deep_supervision``."""
        return bool(self.unet.decoder.deep_supervision)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self.unet.decoder.deep_supervision = bool(enabled)

    @property
    def num_classes(self) -> int:
        """Output channels C."""
        return int(self.unet.decoder.num_classes)

    def reset_time_conditioning(self) -> None:
        """Zero all FiLM projections, so that the network computes the plain U-Net's output."""
        for film in (*self.film_encoder, *self.film_decoder):
            film.reset_to_identity()

    def time_parameters(self) -> list[nn.Parameter]:
        """Parameters added on top of the U-Net (time MLP and FiLM projections)."""
        return [p for n, p in self.named_parameters() if not n.startswith("unet.")]

    # ----------------------------------------------------------------------------------- forward
    def _batch_times(self, t, x: Tensor) -> Tensor:
        b = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1)
        if t.numel() == 1:
            return t.expand(b)
        if t.numel() != b:
            raise ValueError(f"t must be a scalar or have one entry per sample ({b}), got shape {tuple(t.shape)}")
        return t

    @staticmethod
    def _conv_block(block: nn.Module, h: Tensor, film: FiLM, emb: Tensor) -> Tensor:
        # ConvDropoutNormReLU: apply FiLM right after the norm (or the conv when there is no norm),
        # i.e. before the nonlinearity in nnU-Net's usual conv -> norm -> nonlin order
        target = getattr(block, "norm", None)
        if target is None:
            target = block.conv
        fuse = film.mode == "film" and _fusable_instance_norm(target)
        for m in block.all_modules:
            if m is target and fuse:
                h = _instance_norm_film(h, target, film, emb)
                continue
            h = m(h)
            if m is target:
                h = film(h, emb)
        return h

    def _stacked(self, stage: StackedConvBlocks, h: Tensor, film: FiLM, emb: Tensor) -> Tensor:
        for i, block in enumerate(stage.convs):
            h = self._conv_block(block, h, film, emb) if i == 0 else block(h)
        return h

    def _encode(self, x: Tensor, emb: Tensor) -> list[Tensor]:
        enc = self.unet.encoder
        skips = []
        h = x
        if self._residual_encoder:
            if enc.stem is not None:
                h = enc.stem(h)
            for stage, film in zip(enc.stages, self.film_encoder):
                h = film(stage(h), emb)
                skips.append(h)
        else:
            for stage, film in zip(enc.stages, self.film_encoder):
                # a PlainConvEncoder stage is [optional pooling op, StackedConvBlocks]
                for m in stage:
                    h = self._stacked(m, h, film, emb) if isinstance(m, StackedConvBlocks) else m(h)
                skips.append(h)
        return skips

    def _decode(self, skips: list[Tensor], emb: Tensor) -> Tensor | list[Tensor]:
        # UNetDecoder.forward (through the adapter), with FiLM in each stage
        return unet_decoder_forward(self.unet.decoder, skips,
                                    lambda s, stage, h: self._stacked(stage, h, self.film_decoder[s], emb))

    def forward(self, x: Tensor, t) -> Tensor | list[Tensor]:
        """Predict x0 logits.

        Args:
            x: ``cat([image, m_t, (self-cond)], dim=1)``, shape (B, in_channels, *spatial).
            t: normalised time in (0, 1]: a float tensor (B,) or a scalar (tensor or number)
                used for the whole batch.

        Returns:
            Logits (B, C, *spatial); with deep supervision on, a list of logits, largest first.
        """
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels ({self._channel_layout()}), "
                             f"got {x.shape[1]}")
        emb = F.silu(self.time_embed(self._batch_times(t, x)))
        return self._decode(self._encode(x, emb), emb)

    def _channel_layout(self) -> str:
        """The input channels' layout, for the error a wrong input raises."""
        return "image + mask [+ self-cond]"

    # ------------------------------------------------------------------------------------ budget
    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """nnU-Net's feature-map estimate (elements per sample) of the wrapped U-Net plus FiLM outputs.

        FiLM is out-of-place, so each conditioned stage stores one more map of its size; the time
        MLP's outputs are per-sample vectors and negligible.

        Args:
            input_size: spatial patch size (no batch/channel dimensions), as in nnU-Net.
        """
        total = np.int64(self.unet.compute_conv_feature_map_size(input_size))
        enc = self.unet.encoder
        sizes, size = [], list(input_size)
        for stride in enc.strides:
            size = [i // j for i, j in zip(size, stride)]
            sizes.append(size)
        for c, sz in zip(self.features_per_stage, sizes):
            total += np.prod([c, *sz], dtype=np.int64)
        for s in range(len(self.film_decoder)):
            total += np.prod([self.features_per_stage[-(s + 2)], *sizes[-(s + 2)]], dtype=np.int64)
        return total


def build_denoiser(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                   image_channels: int, num_classes: int, self_condition: bool = False,
                   deep_supervision: bool = True, time_embed_dim: int = 128,
                   conditioning: str = "film", cond_dim: int | None = None) -> DiffusionUNet:
    """Build the denoiser from a plans configuration's ``architecture`` entry.

    Mirrors ``nnunetv2.utilities.get_network_from_plans`` (it is called to build the U-Net, so the
    ``_kw_requires_import`` entries are imported and the class's ``initialize`` is applied exactly as
    for the baseline); then the time layers are added with zero-initialised projections, so the
    returned network starts as the plain U-Net.

    Args:
        arch_class_name: ``plans['configurations'][cfg]['architecture']['network_class_name']``.
        arch_kwargs: ``...['architecture']['arch_kwargs']``.
        arch_kwargs_req_import: ``...['architecture']['_kw_requires_import']``.
        image_channels: number of image modalities.
        num_classes: C, output channels (classes including background; also the mask channels).
        self_condition: add C input channels for the self-conditioning estimate.
        deep_supervision: initial deep-supervision state (toggled later via ``decoder.deep_supervision``).
        time_embed_dim: width of the sinusoidal features and of the time MLP.
        conditioning: ``"film"`` or ``"add"``.
        cond_dim: width of the time code fed to the per-stage projections (default ``time_embed_dim``).

    Raises:
        NotImplementedError: for architectures other than PlainConvUNet / ResidualEncoderUNet.
    """
    check_planned_architecture(arch_class_name, "build_denoiser")
    in_channels = denoiser_in_channels(image_channels, num_classes, self_condition)
    unet = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, in_channels,
                                  num_classes, allow_init=True, deep_supervision=deep_supervision)
    net = DiffusionUNet(unet, unet.encoder.output_channels, time_embed_dim=time_embed_dim,
                        conditioning=conditioning, cond_dim=cond_dim)
    net.reset_time_conditioning()  # explicit: the network must start as the plain U-Net
    net.image_channels = int(image_channels)
    net.self_condition = bool(self_condition)

    n_unet = sum(p.numel() for p in unet.parameters())
    n_time = sum(p.numel() for p in net.time_parameters())
    logger.info("denoiser: %s, in_channels=%d (image %d + mask %d%s), %d stages, conditioning=%s, "
                "time layers %d params (%.2f%% of the U-Net's %d)",
                type(unet).__name__, in_channels, image_channels, num_classes,
                f" + self-cond {num_classes}" if self_condition else "", len(net.features_per_stage),
                conditioning, n_time, 100.0 * n_time / max(n_unet, 1), n_unet)
    return net
