"""What a trained model tells its predictor: one typed, frozen value per model.

A trainer describes its models with `inference_spec(config)` (a classmethod; the config is the
one its checkpoints record), and the registry entry hands the result to whoever predicts
(`TrainerEntry.inference_spec`). Predictors apply it (`DnnPredictor.apply_spec`); nothing in
inference reaches into a trainer, and no trainer configures a predictor.
"""
from __future__ import annotations

from dataclasses import dataclass

from diffusion_nnunet.diffusion.sampling import SAMPLERS
from diffusion_nnunet.diffusion.schedule import NoiseSchedule

PREDICTORS = ("nnunet", "diffusion")


@dataclass(frozen=True)
class InferenceSpec:
    """How a model predicts.

    Args:
        predictor: "nnunet" (a plain network evaluation, nnU-Net's sliding window) or "diffusion"
            (a sampler runs per tile).
        timesteps: T of the training schedule (diffusion only).
        self_conditioning: whether the network takes self-conditioning channels (diffusion only).
        sampler: the sampler the trainer validates with (prediction chooses its own, default ddpm).
        default_steps: reverse steps when a prediction names none (None: all T).
        validation_steps: reverse steps of the trainer's final validation (None: all T).

    Raises:
        ValueError: an unknown predictor or sampler, or a diffusion spec without T.
    """

    predictor: str = "nnunet"
    timesteps: int | None = None
    self_conditioning: bool = False
    sampler: str = "ddpm"
    default_steps: int | None = None
    validation_steps: int | None = None

    def __post_init__(self):
        if self.predictor not in PREDICTORS:
            raise ValueError(f"unknown predictor {self.predictor!r}; one of {', '.join(PREDICTORS)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; one of {', '.join(SAMPLERS)}")
        if self.predictor == "diffusion" and (self.timesteps is None or self.timesteps < 2):
            raise ValueError(f"a diffusion model needs T >= 2 training steps, got {self.timesteps}")

    @property
    def is_diffusion(self) -> bool:
        return self.predictor == "diffusion"

    def schedule(self) -> NoiseSchedule:
        """The training schedule (diffusion only)."""
        if not self.is_diffusion:
            raise ValueError("an nnU-Net model has no noise schedule")
        return NoiseSchedule.linear(self.timesteps)
