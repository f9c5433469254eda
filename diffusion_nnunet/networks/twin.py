"""Two-pathway model of the semi-supervised trainers (methods.md section 7), and the co-training pair.

`TwinPathwayNet`
    ``seg``: the diffusion denoiser (`build_denoiser`, the baseline's topology), image + C mask
    channels -> C x0 logits. ``rec``: a second denoiser from the same plans whose conditioning is
    the mask (C channels, ``2p - 1``) and whose state is the noised image (image channels); it
    predicts the image noise eps. Its ``forward(x, t)`` is ``seg``'s, so the module is a drop-in
    denoiser for the diffusion samplers and predictors.

`CoTrainPair`
    Teacher and student `TwinPathwayNet` in one module, so that one nnU-Net checkpoint holds both
    (resume works) and the optimizer updates both. A persistent buffer ``selected`` (0 teacher,
    1 student) says which one predicts: ``forward`` is that model's ``seg``. The checkpoint that
    ``dnnunet predict`` loads therefore carries the selected model's Seg weights together with the
    choice itself.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor, nn

from diffusion_nnunet.networks.denoiser import DiffusionUNet, build_denoiser

logger = logging.getLogger(__name__)

TEACHER, STUDENT = 0, 1
MODEL_NAMES = ("teacher", "student")

# ``forward(closure)`` returns ``closure(module)``. The semi-supervised losses call the pathways
# directly; with several processes they must still run inside DistributedDataParallel's forward,
# which prepares the gradient reduction, so the trainers pass them to the wrapper as a closure.
LossClosure = Callable[[nn.Module], object]


def _full_resolution(out) -> Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


class TwinPathwayNet(nn.Module):
    """Seg and Rec pathways (see module docstring).

    Args:
        seg: denoiser with ``image_channels + C`` inputs and C outputs.
        rec: denoiser with ``C + image_channels`` inputs (mask first) and ``image_channels`` outputs.
        image_channels: image modalities.
        num_classes: C.
    """

    def __init__(self, seg: DiffusionUNet, rec: DiffusionUNet, image_channels: int, num_classes: int):
        super().__init__()
        self.seg, self.rec = seg, rec
        self.image_channels, self.num_classes = int(image_channels), int(num_classes)
        self.self_condition = False

    @property
    def decoder(self):
        """Seg's decoder (nnU-Net toggles ``decoder.deep_supervision`` on the trained network)."""
        return self.seg.decoder

    def forward(self, x: Tensor | LossClosure, t=None):
        """Seg: ``x = cat([image, m_t])``, t normalised time -> x0 logits (or a loss closure's result)."""
        if callable(x):
            return x(self)
        return self.seg(x, t)

    def seg_logits(self, image: Tensor, m_t: Tensor, t_net) -> Tensor:
        """Full-resolution x0 logits of Seg for an image and a mask state in [0, 1]."""
        return _full_resolution(self.seg(torch.cat([image, m_t], 1), t_net))

    def rec_eps(self, noisy_image: Tensor, mask_pm1: Tensor, t_net) -> Tensor:
        """Rec: predicted image noise from the noised image and the mask ``2p - 1``."""
        return _full_resolution(self.rec(torch.cat([mask_pm1, noisy_image], 1), t_net))


def build_twin(configuration_manager, image_channels: int, num_classes: int, time_embed_dim: int = 128
               ) -> TwinPathwayNet:
    """Both pathways from a plans configuration (no deep supervision: the losses use full resolution).

    Args:
        configuration_manager: nnU-Net configuration manager (architecture of the plans).
        image_channels: image modalities.
        num_classes: C, classes including background.
        time_embed_dim: width of the timestep embeddings.
    """
    arch = (configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import)
    seg = build_denoiser(*arch, image_channels=image_channels, num_classes=num_classes, deep_supervision=False,
                         time_embed_dim=time_embed_dim)
    # Rec: the mask is the conditioning ("image" slot), the noised image the diffusion state
    rec = build_denoiser(*arch, image_channels=num_classes, num_classes=image_channels, deep_supervision=False,
                         time_embed_dim=time_embed_dim)
    return TwinPathwayNet(seg, rec, image_channels, num_classes)


class CoTrainPair(nn.Module):
    """Teacher and student with the choice of the predicting model (see module docstring).

    Args:
        teacher: the teacher (initialised from the pre-trained one by the trainer).
        student: the twin student (fresh).
    """

    def __init__(self, teacher: TwinPathwayNet, student: TwinPathwayNet):
        super().__init__()
        self.teacher, self.student = teacher, student
        self.register_buffer("selected", torch.tensor(TEACHER, dtype=torch.long))
        # exponential moving average of each model's pseudo-validation Dice (NaN: not measured yet)
        self.register_buffer("val_dice_ema", torch.full((2,), float("nan")))
        self.self_condition = False

    def models(self) -> tuple[TwinPathwayNet, TwinPathwayNet]:
        """(teacher, student)."""
        return self.teacher, self.student

    @property
    def chosen(self) -> TwinPathwayNet:
        """The model that predicts (``selected``)."""
        return self.models()[int(self.selected)]

    @property
    def decoder(self):
        return self.chosen.decoder

    def forward(self, x: Tensor | LossClosure, t=None):
        """The selected model's Seg (or a loss closure's result)."""
        if callable(x):
            return x(self)
        return self.chosen(x, t)

    def select(self, index: int) -> None:
        """Make teacher (0) or student (1) the predicting model."""
        self.selected.fill_(int(index))
