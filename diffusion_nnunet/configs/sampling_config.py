"""How a diffusion model samples at prediction: one typed, validated value.

`SamplingConfig` is to prediction what `training.config.TrainingConfig` is to training. The
CLI, the Python API, find-best and predict-ensemble build one; `predict_folder` and
`load_predictor` take it (or a plain dict of the same names, validated into one on the way in, so
a misspelt option is an error, not silently ignored). Every field has the meaning of the `dnnunet
predict` flag of the same name; None means "the model's default".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from diffusion_nnunet.diffusion.sampling import SAMPLERS
from dnnunet_core.errors import UserInputError

SAMPLE_MIRRORING = ("cycle", "product")


@dataclass(frozen=True)
class SamplingConfig:
    """Sampler settings of one prediction.

    Args:
        sampler: "ddpm" or "ddim" (None: ddpm).
        num_steps: reverse steps of full sampling (None: the schedule's T).
        num_samples: samples per case (None: one per mirror variant with mirroring, else the plans').
        seed: sampler seed; the same seed gives the same prediction.
        save_every_step: also write each step's segmentation (`steps/`).
        presegmenter: an nnU-Net model folder that pre-segments first (PD-DDPM).
        presegmentation: a folder of existing pre-segmentations (PD-DDPM).
        start_step: PD-DDPM start (None: find-best's, else the planner's).
        soft_start: start PD-DDPM from 2p - 1 instead of the argmax.
        sample_mirroring: "cycle" (sample i on mirror variant i mod M) or "product" (every sample
            on every variant).
        tile_batch: tiles per forward pass, every model (None: the plans' batch size).
        keep_samples: keep each sample for the case scores (review list).
        overview_png_for: case -> its first image file, for the per-case overview PNG.
        max_sample_batch: most runs (tiles x samples) per forward pass (None: the plans' batch
            size; a memory knob for Python callers, not a CLI flag).

    Raises:
        UserInputError: a value out of range, an unknown sampler, both pre-segmentation sources.
    """

    sampler: str | None = None
    num_steps: int | None = None
    num_samples: int | None = None
    seed: int = 0
    save_every_step: bool = False
    presegmenter: str | Path | None = None
    presegmentation: str | Path | None = None
    start_step: int | None = None
    soft_start: bool = False
    sample_mirroring: str = "cycle"
    tile_batch: int | None = None
    keep_samples: bool = False
    overview_png_for: Callable[[str], Path] | None = None
    max_sample_batch: int | None = None

    def __post_init__(self):
        problems = []
        if self.sampler is not None and self.sampler not in SAMPLERS:
            problems.append(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.sample_mirroring not in SAMPLE_MIRRORING:
            problems.append(f"--sample-mirroring must be one of {', '.join(SAMPLE_MIRRORING)}, "
                            f"got {self.sample_mirroring!r}")
        for name in ("num_steps", "num_samples", "tile_batch", "max_sample_batch"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                problems.append(f"{name} must be at least 1, got {value}")
        if self.start_step is not None and int(self.start_step) < 0:
            problems.append(f"start_step must be at least 0, got {self.start_step}")
        if self.presegmenter is not None and self.presegmentation is not None:
            problems.append("give a pre-segmenter model or a folder of pre-segmentations, not both")
        if problems:
            raise UserInputError("; ".join(problems))

    @classmethod
    def from_options(cls, options: SamplingConfig | Mapping[str, Any] | None) -> SamplingConfig:
        """A config from a config, a dict of field names (None values mean "default") or None.

        Raises:
            UserInputError: unknown option names (all named), or invalid values.
        """
        if isinstance(options, SamplingConfig):
            return options
        given = {k: v for k, v in (options or {}).items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:
            raise UserInputError(f"unknown sampling option(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**given)

    def replace(self, **changes) -> SamplingConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def changed(self) -> dict[str, Any]:
        """The fields that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def predictor_arguments(self) -> dict[str, Any]:
        """DiffusionPredictor's keyword arguments: what is set, less what the caller handles
        (`tile_batch` goes to every predictor, `presegmenter` runs before the predictor)."""
        return {k: v for k, v in self.changed().items() if k not in ("tile_batch", "presegmenter")}

    def recorded(self) -> dict[str, Any]:
        """Every set field as predict_args.json records it (JSON values; a callable as true: its
        text would differ in every run)."""
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}


def _json_value(value):
    return value if isinstance(value, (int, float, str, bool)) else True if callable(value) else str(value)
