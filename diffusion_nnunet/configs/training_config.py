"""The one place for training hyper-parameters: a typed config instead of one subclass per value.

Values left as None come from the plans' `training_budget` and `diffusion` sections (written by
the planner, read through `planning.plan_sections`), then from nnU-Net's defaults.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping

from diffusion_nnunet.diffusion.sampling import SAMPLERS
from diffusion_nnunet.networks.selection import DENOISERS
from dnnunet_core.atomic import write_json
from dnnunet_core.errors import UserInputError
from planning.plan_sections import diffusion_section, training_budget_section

STRATEGIES = ("standard", "self_condition", "recycle_next", "recycle")


@dataclass
class DiffusionConfig:
    """Hyper-parameters of the diffusion trainers (methods.md sections 1-3).

    Args:
        strategy: what the gradient pass sees: standard, self_condition, recycle_next or recycle.
        timesteps: T of the training schedule (None: the plans' diffusion section, default 5).
        timestep_sampling: "uniform", or "importance" (p_t ~ sqrt(EMA of loss^2), 1% uniform mix).
        sampler: sampler used for validation (ddpm or ddim; prediction can choose another).
        sampling_steps: reverse steps at validation (None: all T).
        self_condition_probability: chance that the second pass gets the first pass's estimate.
        time_embed_dim: width of the timestep embedding.
        denoiser: "early" (image and noisy mask concatenated at the input) or "late" (late fusion:
            image encoder run once per tile, mask through a light encoder; networks/late_fusion.py).
    """

    strategy: str = "recycle"
    timesteps: int | None = None
    timestep_sampling: str = "uniform"
    sampler: str = "ddpm"
    sampling_steps: int | None = None
    self_condition_probability: float = 0.5
    time_embed_dim: int = 128
    denoiser: str = "early"

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.denoiser not in DENOISERS:
            raise UserInputError(f"unknown denoiser {self.denoiser!r}; choose one of {', '.join(DENOISERS)}")
        if self.sampler not in SAMPLERS:
            raise UserInputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.timestep_sampling not in ("uniform", "importance"):
            raise UserInputError("timestep_sampling must be 'uniform' or 'importance'")
        if self.timesteps is not None and self.timesteps < 2:
            raise UserInputError(f"timesteps must be at least 2, got {self.timesteps}")
        if self.sampling_steps is not None and self.timesteps is not None \
                and not 1 <= self.sampling_steps <= self.timesteps:
            raise UserInputError(f"sampling_steps must be in 1..{self.timesteps}, got {self.sampling_steps}")


@dataclass
class SemiSupervisedConfig:
    """Hyper-parameters of the semi-supervised trainers (methods.md section 7; docs/semi_supervised.md).

    Args:
        teacher: results folder (or checkpoint file) of the pre-trained teacher (`semi_teacher`)
            that `semi_cotrain` starts from; the fold's checkpoint_final.pth is used.
        require_teacher: refuse to co-train without `teacher` (False for plain `cps`: fresh teacher).
        rounds: R, reconstruction rounds per batch (0: cross pseudo-supervision alone).
        round_weight: w in (w / R) * sum_r [Dice(p~_r, target) + L_rec^r].
        chain_rounds: round r + 1 reconstructs from the mask the teacher predicted on round r's
            reconstruction (False: every round from the teacher's mask of the real image).
        ramp_fraction: lambda(epoch) = min(1, epoch / round(ramp_fraction * epochs)), a linear ramp from 0.
        ce_weight: weight of cross-entropy added to every Dice term (0: Dice only).
        rec_timesteps: T' of the reconstruction pathway's own noise schedule.
        rec_sampling_steps: DDIM steps of Rec that draw the reconstruction x~_r from noise.
        rec_clip: the reconstruction's x0 estimate is clipped to +-rec_clip (z-scored intensities).
        rec_start_step: the reconstruction starts from the real image noised to this step of Rec's
            schedule (0..rec_timesteps-1) and runs at most rec_sampling_steps DDIM steps from there;
            None: from pure noise at the last step.
        rec_into_seg: in co-training, the rounds' L_rec back-propagates into the teacher's Seg
            through its mask (as in pre-training); False: it trains Rec only.
        ramp_rounds: the round terms of labelled batches ramp up with lambda(epoch) like L_u
            (False: they count fully from the first epoch, as part of L_s).
        pseudo_threshold: a pseudo-label pixel counts only where the model that labels it gives
            its class at least this probability (0: every pixel counts, as in plain CPS).
        selection_momentum: momentum of the moving average of each model's pseudo-validation Dice
            that picks the final model (0: the last epoch's Dice alone).
        copy_paste: in (0, 1) (default 0.667, BCP's 2/3): the cross pseudo-supervision terms
            score the models on bidirectional copy-paste mixes of the labelled and the unlabelled
            batch (a box of this share of the patch's side from one image, the rest from the other;
            targets: labels and the other model's pseudo-labels, mixed alike); 0: on the unlabelled
            images, as plain CPS. On by default since 2026-12-01 (docs/semi_supervised.md).
        rounds_on_mix: with copy_paste, the unlabelled batch's round terms reconstruct and segment
            the mixed images, scored against the student's mixed target (labels inside or outside
            the box), instead of the unlabelled images against the student's pseudo-labels.
        lr_warmup_fraction: the learning rate rises linearly from 0 over this share of all
            training iterations (multiplying nnU-Net's poly schedule), as the authors' warm-up
            protects the pre-trained teacher; 0: no warm-up.
        seg_random_t: in training, Seg sees its constant mask noised at a step drawn uniformly
            per sample and call (the authors' perturbation) instead of always at T-1;
            validation and prediction stay at T-1.
        rec_one_step: x~_r is the one-step x0 estimate of the same noised-image Rec pass that
            gives L_rec^r (random t', no gradient through it) instead of a separate DDIM run
            from `rec_start_step`.
        whole_run_ramp: lambda(epoch) = (epoch + 1) / epochs over the whole run (the authors')
            instead of the `ramp_fraction` ramp from 0.
    """

    teacher: str | None = None
    require_teacher: bool = True
    rounds: int = 1
    round_weight: float = 1.0
    chain_rounds: bool = True
    ramp_fraction: float = 0.3
    ce_weight: float = 1.0
    rec_timesteps: int = 10
    rec_sampling_steps: int = 3
    rec_clip: float = 5.0
    rec_start_step: int | None = 3
    rec_into_seg: bool = True
    ramp_rounds: bool = True
    pseudo_threshold: float = 0.0
    selection_momentum: float = 0.5
    copy_paste: float = 0.667
    rounds_on_mix: bool = False
    lr_warmup_fraction: float = 0.0
    seg_random_t: bool = False
    rec_one_step: bool = False
    whole_run_ramp: bool = False

    def validate(self) -> None:
        if self.rounds < 0:
            raise UserInputError(f"rounds must not be negative, got {self.rounds}")
        if self.rec_timesteps < 2:
            raise UserInputError(f"rec_timesteps must be at least 2, got {self.rec_timesteps}")
        if not 1 <= self.rec_sampling_steps <= self.rec_timesteps:
            raise UserInputError(f"rec_sampling_steps must be in 1..{self.rec_timesteps}, got {self.rec_sampling_steps}")
        if self.rec_start_step is not None and not 0 <= self.rec_start_step < self.rec_timesteps:
            raise UserInputError(f"rec_start_step must be in 0..{self.rec_timesteps - 1} or None, "
                                 f"got {self.rec_start_step}")
        if not 0 < self.ramp_fraction <= 1:
            raise UserInputError(f"ramp_fraction must be in (0, 1], got {self.ramp_fraction}")
        if self.round_weight < 0 or self.ce_weight < 0 or self.rec_clip <= 0:
            raise UserInputError("round_weight and ce_weight must not be negative, rec_clip must be positive")
        if not 0 <= self.pseudo_threshold < 1:
            raise UserInputError(f"pseudo_threshold must be in [0, 1), got {self.pseudo_threshold}")
        if not 0 <= self.copy_paste < 1:
            raise UserInputError(f"copy_paste must be in [0, 1) (0: off), got {self.copy_paste}")
        if self.rounds_on_mix and not self.copy_paste:
            raise UserInputError("rounds_on_mix needs copy_paste (the mixed images it runs the rounds on)")
        if not 0 <= self.selection_momentum < 1:
            raise UserInputError(f"selection_momentum must be in [0, 1), got {self.selection_momentum}")
        if not 0 <= self.lr_warmup_fraction < 1:
            raise UserInputError(f"lr_warmup_fraction must be in [0, 1) (0: off), got {self.lr_warmup_fraction}")


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
        collective_timeout_s: multi-process runs: seconds a collective (gradient all-reduce,
            barrier) waits for the other ranks before the run fails (a dead peer on another machine).
        diffusion: diffusion settings (None for non-diffusion trainers).
        semi: semi-supervised settings (None for other trainers).
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
    collective_timeout_s: float = 1800.0
    diffusion: DiffusionConfig | None = None
    semi: SemiSupervisedConfig | None = None

    def resolved(self, plans_configuration: Mapping, plans_file: str | Path = "plans.json") -> "TrainingConfig":
        """Fill None values from the configuration's `training_budget` and `diffusion` sections
        (`planning.plan_sections`: nnU-Net's defaults and T = 5 where the plans have none).

        Args:
            plans_configuration: the configuration's entry of the plans.
            plans_file: where the plans came from, named in errors.

        Raises:
            InvalidDataError: a malformed section.
            UserInputError: a resolved value out of range.
        """
        budget = training_budget_section(plans_configuration, plans_file)
        values = asdict(self)
        for key in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch"):
            if values[key] is None:
                values[key] = getattr(budget, key)
        if values["diffusion"] is not None and values["diffusion"]["timesteps"] is None:
            values["diffusion"]["timesteps"] = diffusion_section(plans_configuration, plans_file).timesteps
        out = TrainingConfig.from_dict(values)
        out.validate()
        return out

    def validate(self) -> None:
        for key in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every"):
            value = getattr(self, key)
            if value is not None and value < (0 if key == "num_val_iterations_per_epoch" else 1):
                raise UserInputError(f"{key} must be positive, got {value}")
        if self.collective_timeout_s <= 0:
            raise UserInputError(f"collective_timeout_s must be positive, got {self.collective_timeout_s}")
        if self.initial_lr <= 0:
            raise UserInputError(f"initial_lr must be positive, got {self.initial_lr}")
        if self.diffusion is not None:
            self.diffusion.validate()
        if self.semi is not None:
            self.semi.validate()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        values = dict(values)
        _check_keys(cls, values)
        if isinstance(values.get("diffusion"), dict):
            _check_keys(DiffusionConfig, values["diffusion"])
            values["diffusion"] = DiffusionConfig(**values["diffusion"])
        if isinstance(values.get("semi"), dict):
            _check_keys(SemiSupervisedConfig, values["semi"])
            values["semi"] = SemiSupervisedConfig(**values["semi"])
        return cls(**values)

    def save(self, path: str | Path) -> None:
        write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "TrainingConfig":
        """A saved config; keys it lacks because they came later keep the value its code had then."""
        values = json.loads(Path(path).read_text())
        for section, earlier in _BEFORE_THE_KEY_EXISTED.items():
            if isinstance(values.get(section), dict):  # None: not that kind of trainer
                values[section] = {**earlier, **values[section]}
        return cls.from_dict(values)


# Keys added after configs were first saved whose default is not what the code did before them:
# a run saved without the key resumes as it started (e.g. one begun before copy-paste existed
# must not start mixing when it resumes).
_BEFORE_THE_KEY_EXISTED = {"semi": {"copy_paste": 0.0, "lr_warmup_fraction": 0.0, "seg_random_t": False,
                                    "rec_one_step": False, "whole_run_ramp": False}}


def _check_keys(cls, values: dict) -> None:
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise UserInputError(f"unknown {cls.__name__} keys: {sorted(unknown)}")


def merge_config_values(base: dict, overrides: dict) -> dict:
    """`base` updated by `overrides`, recursing into nested dicts; None overrides are ignored."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config_values(out[key], value)
        else:
            out[key] = value
    return out
