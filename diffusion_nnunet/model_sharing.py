"""Model zips in nnU-Net's layout: `export_model` and `install_model`.

The zip holds what nnunetv2's `nnUNetv2_export_model_to_zip` puts in it, at paths relative to
`nnUNet_results` (`DatasetXXX_Name/<Trainer>__<plans>__<configuration>/...`): per model folder
plans.json, dataset.json and dataset_fingerprint.json, per fold the checkpoint(s), debug.json,
progress.png, network_architecture.pdf and validation/summary.json (the whole validation folder
without npz/pkl with `export_crossval_predictions`), and `crossval_results_folds_*` summaries. Ours
add what our model folders carry: training_config.json and training_stats.json per fold,
inference_defaults.json (the fitted review flag) per model, and find-best's
`find_best_<configuration>/` of the dataset. nnunetv2's own installer (a plain extract into
`nnUNet_results`) therefore installs our zips, and ours installs nnunetv2's.

We write the zip here rather than call nnunetv2's `export_pretrained_model`: that one cannot add
our files, stops at the first missing file with an assertion (progress.png and
validation/summary.json are required there, optional here), and writes the zip in place, so an
interrupted export leaves a truncated zip (ours is written atomically). `install_model` differs from nnunetv2's on purpose: an installed model is never replaced
without `overwrite`, and each model folder appears whole or not at all (extracted to a staging
folder beside the targets, then moved into place with one rename each).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from dnnunet_core import paths
from dnnunet_core.atomic import atomic_path
from dnnunet_core.errors import UserInputError
from dnnunet_core.processes import pid_alive

logger = logging.getLogger(__name__)

MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json", "inference_defaults.json")
FOLD_FILES = ("debug.json", "progress.png", "network_architecture.pdf", "training_config.json",
              "training_stats.json", "validation/summary.json")
CROSSVAL_FILES = ("summary.json", "postprocessing.pkl", "postprocessing.json")
_DATASET_FOLDER = re.compile(r"Dataset\d{3}_.+")
_STAGING_PREFIX = ".dnnunet-install-"


def model_folders_for(dataset: str, trainer: str, plans_name: str, configurations: Sequence[str] | None) -> list[Path]:
    """The model folders of one trainer and plans (`nnUNet_results/<dataset>/<Trainer>__<plans>__<c>`).

    Args:
        trainer: registry name or class name.
        configurations: the configurations to take (None: every one that has a model folder).

    Raises:
        UserInputError: a named configuration has no model folder, or none exists.
    """
    from diffusion_nnunet.configs import trainer_registry as registry
    from diffusion_nnunet.inference.predictor import model_folder
    from dnnunet_core.paths import find_dataset_folder

    if configurations:
        return [model_folder(dataset, trainer, c, plans_name) for c in configurations]
    dataset_dir = find_dataset_folder(paths.results(), dataset)
    try:
        class_name = registry.get(trainer).cls.__name__
    except UserInputError:
        class_name = trainer
    found = sorted(p for p in dataset_dir.glob(f"{class_name}__{plans_name}__*") if p.is_dir())
    if not found:
        raise UserInputError(f"no model folder {class_name}__{plans_name}__<configuration> in {dataset_dir}")
    return found


def _fold_folders(model: Path, folds, checkpoints: Sequence[str], problems: list[str]) -> list[Path]:
    if folds is None:
        found = sorted(p for p in model.glob("fold_*") if p.is_dir() and all((p / c).is_file() for c in checkpoints))
        if not found:
            problems.append(f"{model}: no fold_* folder with {', '.join(checkpoints)}")
        return found
    out = []
    for f in folds:
        fold = model / f"fold_{f}"
        missing = [c for c in checkpoints if not (fold / c).is_file()]
        if missing:
            problems.append(f"{fold}: {', '.join(missing)} missing (is fold {f} trained to the end?)")
        out.append(fold)
    return out


def model_files(model: Path, folds=None, checkpoints: Sequence[str] = ("checkpoint_final.pth",),
                export_crossval_predictions: bool = False, problems: list[str] | None = None) -> list[Path]:
    """The files of one model folder that go into its zip (see the module docstring)."""
    problems = [] if problems is None else problems
    model = Path(model)
    if not _DATASET_FOLDER.fullmatch(model.parent.name) or len(model.name.split("__")) != 3:
        problems.append(f"{model}: not an nnU-Net model folder (<results>/DatasetXXX_Name/<Trainer>__<plans>__<c>)")
    problems += [f"{model / f}: missing" for f in ("plans.json", "dataset.json") if not (model / f).is_file()]
    files = [model / f for f in MODEL_FILES if (model / f).is_file()]
    for fold in _fold_folders(model, folds, checkpoints, problems):
        files += [fold / c for c in checkpoints]
        if export_crossval_predictions and (fold / "validation").is_dir():
            files += sorted(p for p in (fold / "validation").iterdir()
                            if p.is_file() and p.suffix not in (".npz", ".pkl"))
        files += [fold / f for f in FOLD_FILES if (fold / f).is_file() and fold / f not in files]
    for crossval in sorted(model.glob("crossval_results_folds_*")):
        names = [p.name for p in crossval.iterdir() if p.is_file()] if export_crossval_predictions else CROSSVAL_FILES
        files += [crossval / n for n in names if (crossval / n).is_file()]
    return files


def export_model(models: Sequence[str | Path], output_zip: str | Path, folds=None,
                 checkpoints: Sequence[str] = ("checkpoint_final.pth",), export_crossval_predictions: bool = False,
                 overwrite: bool = False) -> list[str]:
    """Write the model folders into one zip in nnU-Net's layout (see the module docstring).

    Args:
        models: model folders (`.../DatasetXXX_Name/<Trainer>__<plans>__<configuration>`).
        output_zip: the zip to write (atomically).
        folds: the folds to take, as nnU-Net names them (0, 1, ..., 'all'; None: every fold
            with the checkpoints).
        checkpoints: checkpoint files per fold.
        export_crossval_predictions: also the validation predictions (without npz/pkl).
        overwrite: replace an existing zip.

    Returns:
        The zip's member names.

    Raises:
        UserInputError: every missing file or fold at once, or an existing zip without `overwrite`.
    """
    output_zip = Path(output_zip)
    if output_zip.exists() and not overwrite:
        raise UserInputError(f"{output_zip} exists; pass --overwrite to replace it")
    problems: list[str] = []
    files = []
    for model in models:
        model = Path(model)
        if not model.is_dir():
            problems.append(f"{model}: no such model folder")
            continue
        files += [(f, f.relative_to(model.parent.parent).as_posix())
                  for f in model_files(model, folds, checkpoints, export_crossval_predictions, problems)]
    datasets = {Path(m).parent for m in models if Path(m).is_dir()}
    for dataset in sorted(datasets):  # find-best's instructions for this dataset
        files += [(f, f.relative_to(dataset.parent).as_posix())
                  for f in sorted(dataset.glob("find_best_*/*")) if f.is_file()]
    if problems:
        raise UserInputError("cannot export:\n  " + "\n  ".join(problems))
    with atomic_path(output_zip, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for source, name in files:
                zf.write(source, name)
    logger.info("wrote %s (%d files of %d model folder(s))", output_zip, len(files), len(models))
    return [name for _, name in files]


# ----------------------------------------------------------------------------- install
def _units(names: list[str], problems: list[str], zip_file: Path) -> dict[PurePosixPath, bool]:
    """What installs as one piece: `Dataset/<model folder>` (True: a model), `Dataset/<file>`, and
    `Dataset/ensembles/<ensemble>` (nnU-Net's ensembles folder is shared, so each is its own unit)."""
    units: dict[PurePosixPath, bool] = {}
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or "\\" in name or not path.parts:
            problems.append(f"{zip_file}: unsafe member name {name!r}")
            continue
        if not _DATASET_FOLDER.fullmatch(path.parts[0]) or len(path.parts) < 2:
            problems.append(f"{zip_file}: {name!r} is not under a DatasetXXX_Name folder (not an nnU-Net model zip)")
            continue
        depth = 3 if path.parts[1] == "ensembles" and len(path.parts) > 3 else 2
        unit = PurePosixPath(*path.parts[:depth])
        units[unit] = units.get(unit, False) or (len(path.parts) == 3 and path.parts[2] == "plans.json")
    return units


def _check_model(unit: PurePosixPath, names: set[str], zip_file: Path, problems: list[str]) -> None:
    prefix = f"{unit}/"
    if f"{prefix}dataset.json" not in names:
        problems.append(f"{zip_file}: {unit} has no dataset.json")
    if not any(n.startswith(prefix + "fold_") and n.endswith(".pth") for n in names):
        problems.append(f"{zip_file}: {unit} has no fold_*/checkpoint*.pth")


def _clean_stale_staging(results: Path) -> None:
    for entry in results.glob(f"{_STAGING_PREFIX}*"):
        tail = entry.name[len(_STAGING_PREFIX):]
        if tail.isdigit() and int(tail) != os.getpid() and not pid_alive(int(tail)):
            logger.info("removing %s, left by an interrupted install", entry)
            shutil.rmtree(entry, ignore_errors=True)


def install_model(zip_file: str | Path, overwrite: bool = False, results: str | Path | None = None) -> list[Path]:
    """Install a model zip (ours or nnunetv2's) into `nnUNet_results`.

    Args:
        zip_file: the zip.
        overwrite: replace installed model folders (and files) of the same names; without it,
            any that exists refuses the whole install before anything is written.
        results: the results folder (None: `nnUNet_results`).

    Returns:
        The installed model folders.

    Raises:
        UserInputError: not a zip, unsafe or foreign member names, a model without dataset.json or
            checkpoint, or installed models without `overwrite` (every problem at once).
    """
    zip_file = Path(zip_file)
    results = Path(results) if results is not None else paths.results()
    if not zip_file.is_file():
        raise UserInputError(f"{zip_file}: no such file")
    try:
        with zipfile.ZipFile(zip_file) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except zipfile.BadZipFile as err:
        raise UserInputError(f"{zip_file}: not a zip file ({err})") from None
    problems: list[str] = []
    units = _units(names, problems, zip_file)
    for unit, is_model in units.items():
        if is_model:
            _check_model(unit, set(names), zip_file, problems)
    if not any(units.values()) and not problems:
        problems.append(f"{zip_file}: holds no model folder (DatasetXXX_Name/<Trainer>__<plans>__<c>/plans.json)")
    existing = [results / u for u in units if (results / u).exists()]
    if existing and not overwrite:
        problems.append("already installed (pass --overwrite to replace): " + ", ".join(str(e) for e in existing))
    if problems:
        raise UserInputError("cannot install:\n  " + "\n  ".join(problems))
    results.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(results)
    staging = results / f"{_STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_file) as zf:
            zf.extractall(staging)
        for unit in units:
            _move_into_place(staging / unit, results / unit, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    installed = [results / u for u, is_model in units.items() if is_model]
    logger.info("installed %s", ", ".join(str(m) for m in installed))
    return installed


def _move_into_place(staged: Path, target: Path, overwrite: bool) -> None:
    """One rename puts the complete unit in place; a replaced one is moved aside first and deleted
    after (put back if the move fails)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = None
    if target.exists() and overwrite:
        aside = target.parent / f".{target.name}.replaced-{os.getpid()}"
        os.replace(target, aside)
    try:
        if target.exists():
            raise UserInputError(f"{target} was installed by another process meanwhile; pass --overwrite to replace it")
        os.replace(staged, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    if aside is not None and aside.is_dir():
        shutil.rmtree(aside)
    elif aside is not None:
        aside.unlink()
