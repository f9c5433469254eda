"""What a training may find in its model folder, checked before any work.

- the fold must be one of the split's folds (0..n-1 of `splits_final.json`, or nnU-Net's 5 when
  it will create that file) or ``all`` (`check_fold`);
- a model folder holds models of ONE plans: a run whose plans differ from those the folder's
  folds were trained with is refused (`check_same_plans`); nnU-Net's way out is a new plans
  identifier, or `--overwrite`, which deletes the whole model folder (`delete_model_folder`);
- a new run (not `--continue`) of a fold that holds an earlier run's files moves that run to
  `<model folder>/previous_runs/` before it writes anything (`set_aside_previous_run`), so a
  later `--continue` can only find checkpoints of the current run.

All of this runs in the process that holds the fold's lock (see `fold_lock.py`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from dnnunet_core.errors import UserInputError
from planning.plan_sections import FIND_BEST_KEYS

logger = logging.getLogger(__name__)

# nnU-Net's default cross-validation: a seeded split of the labelled cases into this many folds
CROSS_VALIDATION_FOLDS = 5
PREVIOUS_RUNS = "previous_runs"
# the model folder's copies of the preprocessed dataset's files (nnU-Net writes them at the start of training)
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
# newest first: the checkpoint whose init_args tell the plans a fold was trained with
_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_previous.pth", "checkpoint_best.pth")
_SHOWN_DIFFERENCES = 4


def check_fold(fold: int | str, splits_file: str | Path) -> int | str:
    """The fold as the trainer takes it (int or "all"), if the split has it.

    Args:
        fold: as given on the command line ("0", "all", ...).
        splits_file: the preprocessed dataset's `splits_final.json` (it may not exist yet: nnU-Net
            then creates a 5-fold split).

    Raises:
        UserInputError: not an integer nor "all", or not one of the split's folds (nnU-Net would
            train a fold outside the split on a random 80:20 split, and Python would read -1 as
            the last fold).
    """
    if str(fold) == "all":
        return "all"
    try:
        number = int(str(fold))
    except ValueError:
        raise UserInputError(f"fold {fold!r} is neither a fold number nor 'all'") from None
    splits_file = Path(splits_file)
    if splits_file.is_file():
        try:
            count = len(json.loads(splits_file.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise UserInputError(f"{splits_file} is unreadable ({err}): delete it to let nnU-Net write "
                                 "its 5-fold split, or repair it") from None
        source = f"{splits_file} has {count} fold(s)"
    else:
        count = CROSS_VALIDATION_FOLDS
        source = f"nnU-Net's cross-validation (no {splits_file.name} yet) has {count} folds"
    if not 0 <= number < count:
        last = f"0..{count - 1}" if count else "none"
        raise UserInputError(f"fold {fold} is not in the split: {source}; choose one of {last}, or 'all'")
    return number


# ----------------------------------------------------------------------------- one plans per model folder
def check_same_plans(model_folder: str | Path, plans: dict, configuration: str) -> None:
    """Refuse when `model_folder` holds models trained with other plans than `plans`.

    Compared: the model folder's `plans.json` and the plans in the newest readable checkpoint of
    every fold (nnU-Net keeps them in its init_args), each on everything that shapes the model
    of `configuration`: the top-level entries and that configuration (after `inherits_from`).

    Raises:
        UserInputError: naming the folder, the first differences and the ways out.
    """
    model_folder = Path(model_folder)
    for source, saved in _saved_plans(model_folder):
        differences = plans_differences(saved, plans, configuration)
        if differences:
            shown = "; ".join(differences[:_SHOWN_DIFFERENCES])
            more = f" (and {len(differences) - _SHOWN_DIFFERENCES} more)" if len(differences) > _SHOWN_DIFFERENCES else ""
            raise UserInputError(
                f"{model_folder} was trained with other plans than the preprocessed ones now ({source} differs: "
                f"{shown}{more}). A model folder holds models of one plans only. Keep both: plan under a new "
                f"plans identifier (dnnunet plan-and-preprocess ... -p NEW_PLANS) and train with -p NEW_PLANS, "
                f"as nnU-Net does; or replace the old models: train with --overwrite, which deletes {model_folder} "
                f"(every fold trained with the old plans)")


def _saved_plans(model_folder: Path):
    """(description, plans) of the model folder's plans.json and of each fold's newest checkpoint."""
    plans_file = model_folder / "plans.json"
    if plans_file.is_file():
        try:
            yield str(plans_file), json.loads(plans_file.read_text())
        except ValueError:
            logger.warning("%s is unreadable; it will be rewritten", plans_file)
    for fold_folder in sorted(model_folder.glob("fold_*")):
        if not fold_folder.is_dir():
            continue
        for name in _CHECKPOINTS:
            path = fold_folder / name
            if not path.is_file():
                continue
            try:  # mmap: the plans are in the pickle; the tensors are not read
                init_args = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["init_args"]
            except Exception:  # noqa: BLE001 - unreadable: the resume logic reports and skips it
                continue
            yield f"the plans in {path}", init_args["plans"]
            break


def plans_differences(saved: dict, current: dict, configuration: str) -> list[str]:
    """Dotted paths of what differs between two plans, for what shapes `configuration`'s models."""
    a, b = _model_relevant(saved, configuration), _model_relevant(current, configuration)
    out: list[str] = []
    _diff(a, b, "", out)
    return out


def _model_relevant(plans: dict, configuration: str) -> dict:
    plans = json.loads(json.dumps(plans))  # tuples -> lists, as in the JSON files
    out = {k: v for k, v in plans.items() if k != "configurations"}
    configurations = plans.get("configurations", {})
    resolved, seen = {}, set()
    name = configuration
    while name in configurations and name not in seen:  # nnU-Net's inherits_from, child entries win
        seen.add(name)
        resolved = {**configurations[name], **resolved}
        name = configurations[name].get("inherits_from")
    resolved.pop("inherits_from", None)
    diffusion = resolved.get("diffusion")
    if isinstance(diffusion, dict):
        # find-best rewrote these in the plans.json of models from before inference_defaults.json:
        # how to predict, not what is trained, so they must not make those folds "other plans"
        resolved["diffusion"] = {k: v for k, v in diffusion.items() if k not in FIND_BEST_KEYS}
    out[f"configurations.{configuration}"] = resolved if configuration in configurations else None
    return out


def _diff(a, b, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                out.append(f"{where} {'added' if key not in a else 'removed'}")
            else:
                _diff(a[key], b[key], where, out)
    elif a != b:
        out.append(f"{path}: {_short(a)} -> {_short(b)}")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def other_folds(model_folder: str | Path, fold: int | str) -> list[str]:
    """The folds (names after `fold_`) of `model_folder` other than `fold`: folders and lock files."""
    model_folder = Path(model_folder)
    names = {p.name[len("fold_"):] for p in model_folder.glob("fold_*") if p.is_dir()}
    names |= {p.name[len("fold_"):-len(".lock")] for p in model_folder.glob("fold_*.lock")}
    names.discard(str(fold))
    return sorted(names)


def delete_model_folder(model_folder: str | Path) -> None:
    """`--overwrite` over other plans: delete every fold, the earlier runs and the plans copies.

    The entries are first moved into one hidden folder (atomic renames), then that folder is
    deleted: a kill in between leaves a `.overwritten-*` folder that nothing reads (the next
    `--overwrite` deletes it), never a fold half-deleted. Lock files stay (their holders,
    this run included, remove them). Call with the locks of every fold held.
    """
    model_folder = Path(model_folder)
    trash = model_folder / f".overwritten-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    entries = [p for p in model_folder.iterdir() if not p.name.endswith(".lock")]
    if not entries:
        return
    trash.mkdir()
    for entry in entries:
        os.replace(entry, trash / entry.name)
    logger.warning("--overwrite: deleted %s (%s)", model_folder,
                   ", ".join(sorted(e.name for e in entries if not e.name.startswith(".overwritten-"))))
    shutil.rmtree(trash)


# ----------------------------------------------------------------------------- a new run of a fold
def set_aside_previous_run(fold_folder: str | Path, overwrite: bool = False) -> Path | None:
    """Before a new (not --continue) run: move an earlier run out of `fold_folder`.

    The fold folder is moved whole (one atomic rename) to
    `<model folder>/previous_runs/<fold folder>_<time>/`, or deleted with `overwrite`, so that
    the new run starts in an empty folder: its checkpoints, validation and logs are never
    mixed with the earlier run's, and `--continue` after a crash resumes the new run.

    Returns:
        Where the earlier run went (None: nothing there, or deleted).
    """
    fold_folder = Path(fold_folder)
    if not fold_folder.is_dir() or not any(fold_folder.iterdir()):
        return None
    if overwrite:
        trash = fold_folder.with_name(f".overwritten-{fold_folder.name}-{os.getpid()}")
        os.replace(fold_folder, trash)
        shutil.rmtree(trash)
        logger.warning("--overwrite: deleted the earlier run in %s", fold_folder)
        return None
    archive = fold_folder.parent / PREVIOUS_RUNS / f"{fold_folder.name}_{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while archive.exists():
        archive = archive.with_name(f"{archive.name.rsplit('.', 1)[0]}.{suffix}")
        suffix += 1
    archive.parent.mkdir(exist_ok=True)
    os.replace(fold_folder, archive)
    logger.warning("%s held an earlier run: moved it to %s (delete it when it is no longer needed; "
                   "--overwrite deletes it instead; --continue resumes a run)", fold_folder, archive)
    return archive


def resume_command(dataset: str, configuration: str, fold, trainer: str, plans_name: str,
                   num_processes: int = 1, device: str | None = None) -> str:
    """The command that resumes this training (the run's settings come from its saved config)."""
    parts = ["dnnunet", "train", "-d", str(dataset), "-c", configuration, "-f", str(fold), "-tr", trainer,
             "-p", plans_name]
    if num_processes > 1:
        parts += ["--num-processes", str(num_processes)]
    if device and device != "auto":
        parts += ["-device", device]
    return " ".join(parts + ["--continue"])
