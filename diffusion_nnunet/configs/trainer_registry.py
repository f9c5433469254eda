"""Trainer registry: the only way a trainer is found, by its `-tr` name or its class name.

Trainers register themselves with `@register(name)`. The modules that hold them are listed in
`_BUILTIN_MODULES` (imported on first lookup, never discovered by scanning folders); other
packages can add trainers through the `diffusion_nnunet.trainers` entry-point group.

Each entry names the predictor its models need (`TrainerEntry.predictor`, from the class's
`predictor_kind`) and turns a checkpoint's config into an `InferenceSpec`
(`TrainerEntry.inference_spec`): inference finds all it needs of a model here, never in a trainer.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from diffusion_nnunet.configs.inference_spec import PREDICTORS, InferenceSpec
from diffusion_nnunet.configs.training_config import TrainingConfig
from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)

_BUILTIN_MODULES = ("diffusion_nnunet.training.baseline", "diffusion_nnunet.training.diffusion_trainer",
                    "diffusion_nnunet.training.semi_supervised")
ENTRY_POINT_GROUP = "diffusion_nnunet.trainers"


@dataclass(frozen=True)
class TrainerEntry:
    """A registered trainer.

    Args:
        name: the `-tr` name users type.
        cls: the nnUNetTrainer subclass.
        description: one line for `dnnunet train --help`.
        config_overrides: TrainingConfig values this entry changes (the config stays the one place).
        predictor: the predictor its models need, "nnunet" or "diffusion" (the class's
            `predictor_kind`, default "nnunet").
    """

    name: str
    cls: type
    description: str = ""
    config_overrides: dict = field(default_factory=dict)
    predictor: str = "nnunet"

    def __post_init__(self):
        if self.predictor not in PREDICTORS:
            raise ValueError(f"trainer {self.name!r}: unknown predictor {self.predictor!r}; one of {PREDICTORS}")

    def inference_spec(self, config: TrainingConfig | dict | None = None) -> InferenceSpec:
        """How a model of this trainer predicts, from the config its checkpoint records (a
        `TrainingConfig` or its dict, the checkpoint's `init_args["dnnunet_config"]`).

        Raises:
            ValueError: the trainer's spec names another predictor than its entry.
        """
        if not isinstance(config, TrainingConfig):
            config = TrainingConfig.from_dict(config or {})
        describe = getattr(self.cls, "inference_spec", None)
        spec = describe(config) if describe is not None else InferenceSpec(predictor=self.predictor)
        if spec.predictor != self.predictor:
            raise ValueError(f"trainer {self.name!r} is registered for the {self.predictor} predictor, "
                             f"but its inference_spec names {spec.predictor!r}")
        return spec


_REGISTRY: dict[str, TrainerEntry] = {}
_loaded = False


def register(name: str, description: str = "", **config_overrides):
    """Class decorator that registers a trainer under `name`."""

    def decorator(cls):
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"trainer name {name!r} registered twice ({_REGISTRY[name].cls} and {cls})")
        _REGISTRY[name] = TrainerEntry(name, cls, description, dict(config_overrides),
                                       getattr(cls, "predictor_kind", "nnunet"))
        return cls

    return decorator


def register_variant(base: type, name: str, class_name: str, description: str = "", **config_overrides) -> type:
    """Register `base` under `name` with config overrides, as a generated subclass named `class_name`.

    nnU-Net names result folders (and checkpoints' `trainer_name`) after the trainer class; a
    generated subclass with no code of its own keeps the folders of variants apart while all
    behaviour stays in `base` and the values in the config.
    """
    cls = type(class_name, (base,), {"__module__": base.__module__,
                                     "__doc__": f"{base.__name__} with {config_overrides} (registered as {name!r})."})
    register(name, description, **config_overrides)(cls)
    return cls


def overrides_for(cls: type) -> dict:
    """Config overrides registered for this exact class (empty for unregistered classes)."""
    for entry in _REGISTRY.values():
        if entry.cls is cls:
            return dict(entry.config_overrides)
    return {}


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception:  # a broken plugin must not break the built-in trainers
            logger.exception("could not load trainer plugin %s", ep.name)


def available() -> dict[str, TrainerEntry]:
    """All registered trainers by name."""
    _load()
    return dict(_REGISTRY)


def get(name: str) -> TrainerEntry:
    """Look up a trainer by registry name or class name.

    Raises:
        UserInputError: unknown name (the message lists the known ones).
    """
    _load()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for entry in _REGISTRY.values():
        if entry.cls.__name__ == name:
            return entry
    raise UserInputError(f"unknown trainer {name!r}; available: {', '.join(sorted(_REGISTRY))}")


def find_entry(class_name: str) -> TrainerEntry | None:
    """The entry of the trainer class with this class name (as checkpoints and model folders
    name it), or None (a stock nnunetv2 trainer, or an unknown one)."""
    _load()
    for entry in _REGISTRY.values():
        if entry.cls.__name__ == class_name:
            return entry
    return None


def find_class(class_name: str) -> type | None:
    """The trainer class with this class name (as stored in checkpoints), or None."""
    entry = find_entry(class_name)
    return None if entry is None else entry.cls
