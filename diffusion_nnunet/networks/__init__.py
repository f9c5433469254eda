"""Time-conditioned denoiser networks with nnU-Net's topology (see ``denoiser`` for the design)."""
from diffusion_nnunet.networks.denoiser import (
    CONDITIONING_MODES,
    SUPPORTED_ARCHITECTURES,
    DiffusionUNet,
    FiLM,
    build_denoiser,
    denoiser_in_channels,
)
from diffusion_nnunet.networks.time_embedding import DEFAULT_TIME_SCALE, TimeEmbedding, sinusoidal_embedding

__all__ = [
    "CONDITIONING_MODES",
    "DEFAULT_TIME_SCALE",
    "SUPPORTED_ARCHITECTURES",
    "DiffusionUNet",
    "FiLM",
    "TimeEmbedding",
    "build_denoiser",
    "denoiser_in_channels",
    "sinusoidal_embedding",
]
