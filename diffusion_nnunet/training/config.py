"""The one place for training hyper-parameters: a typed config instead of one subclass per value.

Values left as None come from the plans' `training_budget` section (written by the planner),
then from nnU-Net's defaults.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from diffusion_nnunet.errors import UserInputError
from diffusion_nnunet.utils.atomic import write_json


@dataclass
class TrainingConfig:
    """Hyper-parameters of one training run.

    Args:
        num_epochs: epochs (None: from the plans' budget).
        num_iterations_per_epoch: training iterations per epoch (None: from the plans' budget).
        num_val_iterations_per_epoch: pseudo-validation iterations per epoch (None: from the plans).
        initial_lr: SGD learning rate at epoch 0 (poly decay, as nnU-Net).
        weight_decay: SGD weight decay.
        oversample_foreground_percent: share of patches forced to contain foreground.
        save_every: write `checkpoint_latest.pth` every this many epochs (1: a crash loses at most one epoch).
        seed: seeds python, numpy and torch at the start (None: not seeded).
        deep_supervision: nnU-Net's deep-supervision loss.
    """

    num_epochs: int | None = None
    num_iterations_per_epoch: int | None = None
    num_val_iterations_per_epoch: int | None = None
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    oversample_foreground_percent: float = 0.33
    save_every: int = 1
    seed: int | None = None
    deep_supervision: bool = True

    def resolved(self, plans_configuration: dict) -> "TrainingConfig":
        """Fill None values from the configuration's `training_budget` (or nnU-Net's defaults)."""
        budget = plans_configuration.get("training_budget", {})
        defaults = {"num_epochs": 1000, "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 50}
        values = asdict(self)
        for key, default in defaults.items():
            if values[key] is None:
                values[key] = int(budget.get(key, default))
        out = TrainingConfig(**values)
        out.validate()
        return out

    def validate(self) -> None:
        for key in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every"):
            value = getattr(self, key)
            if value is not None and value < (0 if key == "num_val_iterations_per_epoch" else 1):
                raise UserInputError(f"{key} must be positive, got {value}")
        if self.initial_lr <= 0:
            raise UserInputError(f"initial_lr must be positive, got {self.initial_lr}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserInputError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "TrainingConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
