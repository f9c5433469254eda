"""Named presets of `SemiSupervisedConfig`: plain config values, chosen with ``--semi-preset NAME``.

A preset is a dict of field values. `semi_overrides` layers, from the bottom: the preset, then
`--teacher` / `--rounds`, then every `--semi-option`; a field that the trainer's registry entry
fixes (``cps``: ``rounds = 0``, no teacher) keeps the entry's value, so ``-tr cps --semi-preset
authors`` is the authors' settings without the diffusion teacher (their CPS reference).

``authors``: the configuration of the method's authors' public scripts
(github.com/ciampluca/hebbian-bootstraping-semi-supervised-medical-imaging, commit dac1ad6,
``train_semi_superdiff_2d.py``); docs/semi_supervised.md has the table field by field, with the
lines of their code.
"""
from __future__ import annotations

from dnnunet_core.errors import UserInputError

PRESETS: dict[str, dict] = {
    "authors": {
        "rec_into_seg": False,        # Rec gets the teacher's mask detached (.clone().detach())
        "chain_rounds": False,        # every round from the teacher's mask of the real image
        "rec_one_step": True,         # x~_r: the x0 estimate of the L_rec pass itself
        "rounds": 3,                  # their R in {3, 5, 10}; --rounds overrides
        "whole_run_ramp": True,       # lambda = (epoch + 1) / E
        "ramp_rounds": False,         # labelled round terms in L_s at full weight
        "lr_warmup_fraction": 0.1,    # GradualWarmupScheduler over 20 of 200 epochs, from 0
        "seg_random_t": True,         # Seg's constant mask noised at t ~ U(0, T) on every call
        "ce_weight": 0.0,             # their loss option: dice
        "copy_paste": 0.0,            # their co-training has no mixing
    },
}


def preset_values(name: str | None) -> dict:
    """The fields a preset sets (empty for None).

    Raises:
        UserInputError: unknown preset name.
    """
    if name is None:
        return {}
    if name not in PRESETS:
        raise UserInputError(f"unknown --semi-preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


def semi_overrides(trainer: str, preset: str | None, teacher: str | None = None, rounds: int | None = None,
                   options: dict | None = None) -> dict:
    """The ``semi`` section of the run's config overrides (None values: not given).

    Args:
        trainer: registry name of the trainer (its entry's semi fields win over the preset).
        preset: preset name or None.
        teacher, rounds: `--teacher`, `--rounds`.
        options: parsed `--semi-option` items.

    Raises:
        UserInputError: unknown preset or trainer.
    """
    from diffusion_nnunet.configs import trainer_registry as registry

    values = preset_values(preset)
    if values:
        fixed = registry.get(trainer).config_overrides.get("semi") or {}
        values = {key: value for key, value in values.items() if key not in fixed}
    for key, value in {"teacher": teacher, "rounds": rounds, **(options or {})}.items():
        if value is not None:
            values[key] = value
    return values
