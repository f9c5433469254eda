"""Diffusion math of the segmentation head: noise schedule and samplers (methods.md 1, 3, 4)."""
from diffusion_nnunet.diffusion.sampling import SAMPLERS, SamplingResult, pre_segmentation_x0, sample
from diffusion_nnunet.diffusion.schedule import (
                                                 NoiseSchedule,
                                                 mask_to_x0,
                                                 network_mask_input,
                                                 respaced_indices,
                                                 x0_from_logits,
)

__all__ = ["NoiseSchedule", "respaced_indices", "mask_to_x0", "x0_from_logits", "network_mask_input",
           "SAMPLERS", "SamplingResult", "sample", "pre_segmentation_x0"]
