"""Trainer registry: the only way a trainer is found, by its `-tr` name or its class name.

Trainers register themselves with `@register(name)`. The modules that hold them are listed in
`_BUILTIN_MODULES` (imported on first lookup, never discovered by scanning folders); other
packages can add trainers through the `diffusion_nnunet.trainers` entry-point group.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points

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
    """

    name: str
    cls: type
    description: str = ""
    config_overrides: dict = field(default_factory=dict)


_REGISTRY: dict[str, TrainerEntry] = {}
_loaded = False


def register(name: str, description: str = "", **config_overrides):
    """Class decorator that registers a trainer under `name`."""

    def decorator(cls):
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"trainer name {name!r} registered twice ({_REGISTRY[name].cls} and {cls})")
        _REGISTRY[name] = TrainerEntry(name, cls, description, dict(config_overrides))
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


def find_class(class_name: str) -> type | None:
    """The trainer class with this class name (as stored in checkpoints), or None."""
    _load()
    for entry in _REGISTRY.values():
        if entry.cls.__name__ == class_name:
            return entry.cls
    return None
