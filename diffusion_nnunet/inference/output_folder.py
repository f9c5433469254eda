"""The state of a prediction output folder between runs: fresh, replaced whole, or continued.

A prediction folder holds the cases of one run and the `predict_args.json` that describes it.
`claim_output_folder` decides, before any compute, what a new run may do with it:

- empty or absent: predict into it;
- it holds files and neither `overwrite` nor `continue_prediction` is given: refused (old
  probabilities beside new segmentations would be ensembled silently);
- `continue_prediction`: allowed only where its `predict_args.json` records the same settings
  (the differing keys are named otherwise); finished cases are kept;
- `overwrite`: the old folder is moved aside (one rename) and deleted when the new run ends; if
  the run fails with an exception the old folder is put back, and after a `kill -9` the folder
  holds only cases of the new run (with its `predict_args.json`), never a mix.

Staging folders `.partial-PID` of processes that no longer run are removed; one of a running
process refuses the claim (two runs writing into one folder).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dnnunet_core.atomic import write_json
from dnnunet_core.errors import UserInputError
from dnnunet_core.processes import pid_alive

logger = logging.getLogger(__name__)

ARGS_FILE = "predict_args.json"
STAGING_PREFIX = ".partial-"
# what stock nnunetv2's predictor writes; such a folder may be replaced with --overwrite too
_STOCK_ARGS_FILE = "predict_from_raw_data_args.json"
_REPLACED_PREFIX = ".replaced-"


def prediction_settings(input_dir, save_probabilities: bool, arguments: dict | None) -> dict:
    """The settings a prediction folder records (JSON types, so that they compare with the file)."""
    settings = {"input": str(Path(input_dir).absolute()), "save_probabilities": bool(save_probabilities),
                **(arguments or {})}
    return json.loads(json.dumps(settings, default=str))


def refuse_output_inside_input(input_dir, output_dir) -> None:
    """An output folder equal to, inside, or holding the input folder would mix outputs and images.

    Raises:
        UserInputError: naming both folders.
    """
    i, o = Path(input_dir).resolve(), Path(output_dir).resolve()
    if o == i or i in o.parents:
        raise UserInputError(f"the output folder {output_dir} is {'the' if o == i else 'inside the'} input folder "
                             f"{input_dir}: predictions would be mixed with the images; choose another -o")
    if o in i.parents:
        raise UserInputError(f"the output folder {output_dir} contains the input folder {input_dir}; choose another -o")


def check_creatable_folder(folder: Path, what: str = "output folder") -> None:
    """Refuse, with a message naming the path, a folder that cannot be created or written into.

    Raises:
        UserInputError: the path is a file, a component is longer than the file system allows, or
            the folder (or the first existing parent) is not writable.
    """
    folder = Path(folder)
    try:
        limit = os.pathconf(_first_existing(folder), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in folder.parts:
        if len(os.fsencode(part)) > limit:
            raise UserInputError(f"the {what} {folder}: the name {part[:40]!r}... has {len(os.fsencode(part))} bytes, "
                                 f"more than the file system allows ({limit})")
    try:
        if folder.exists() and not folder.is_dir():
            raise UserInputError(f"the {what} {folder} is an existing file, not a folder; choose another path")
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason += " (the folder is read-only for this user)"
        raise UserInputError(f"cannot write into the {what} {folder}: {reason}") from None


def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while path != path.parent:
        try:
            if path.exists():
                break
        except OSError:  # a name too long, a folder without search permission
            pass
        path = path.parent
    return path


def _pid_of(name: str, prefix: str) -> int | None:
    tail = name[len(prefix):] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def clean_stale_staging(folder: Path) -> None:
    """Remove `.partial-PID` folders of dead processes; refuse where another live process stages.

    Raises:
        UserInputError: a running process (not this one) is writing into `folder`.
    """
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        pid = _pid_of(entry.name, STAGING_PREFIX)
        if pid is None or pid == os.getpid():
            continue
        if pid_alive(pid):
            raise UserInputError(f"another prediction (process {pid}) is writing into {folder} "
                                 f"({entry.name}); wait for it to end or choose another -o")
        logger.info("removing %s, left by an interrupted run (process %d)", entry, pid)
        shutil.rmtree(entry, ignore_errors=True)


def _clean_stale_replaced(folder: Path) -> None:
    """Remove `.NAME.replaced-PID` siblings left when an --overwrite run was killed."""
    prefix = f".{folder.name}{_REPLACED_PREFIX}"
    if not folder.parent.is_dir():
        return
    for entry in folder.parent.iterdir():
        pid = _pid_of(entry.name, prefix)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            logger.info("removing %s, the replaced results of an interrupted --overwrite run", entry)
            shutil.rmtree(entry, ignore_errors=True)


# settings that change how fast a folder is predicted, not what is predicted
SPEED_ONLY_SETTINGS = {"diffusion": ("tile_batch",)}


def _without_speed_settings(settings: dict) -> dict:
    out = dict(settings)
    for section, keys in SPEED_ONLY_SETTINGS.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def _differences(old: dict, new: dict) -> list[str]:
    old, new = _without_speed_settings(old), _without_speed_settings(new)
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


@contextmanager
def claim_output_folder(output_dir, settings: dict, overwrite: bool = False,
                        continue_prediction: bool = False) -> Iterator[Path]:
    """Make `output_dir` ready for one prediction run (see the module docstring); yields it.

    Args:
        output_dir: the prediction folder.
        settings: what `prediction_settings` returns for this run; written to predict_args.json.
        overwrite: replace a folder that holds results (of another run) whole.
        continue_prediction: keep the finished cases of a folder predicted with the same settings.

    Raises:
        UserInputError: the folder holds results and neither flag allows them, the settings
            differ from its predict_args.json, another run writes into it, or it cannot be written.
    """
    output_dir = Path(output_dir)
    if overwrite and continue_prediction:
        raise UserInputError("--overwrite and --continue-prediction exclude each other")
    if "input" in settings:
        refuse_output_inside_input(settings["input"], output_dir)
    check_creatable_folder(output_dir)
    clean_stale_staging(output_dir)
    _clean_stale_replaced(output_dir)
    entries = sorted(p.name for p in output_dir.iterdir() if not p.name.startswith(".write-test-"))
    args_file = output_dir / ARGS_FILE
    replaced = None
    if entries and continue_prediction:
        if not args_file.is_file():
            raise UserInputError(f"{output_dir} holds files but no {ARGS_FILE}: cannot check that they were predicted "
                                 f"with the same settings; pass --overwrite to replace them")
        try:
            old = json.loads(args_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserInputError(f"{args_file} is unreadable ({err}); pass --overwrite to replace the folder") from None
        diff = _differences(old, settings)
        if diff:
            raise UserInputError(f"--continue-prediction: {output_dir} was predicted with other settings ("
                                 + "; ".join(diff) + "); use the same settings, or --overwrite to replace it")
    elif entries and overwrite:
        if not (args_file.is_file() or (output_dir / _STOCK_ARGS_FILE).is_file()):
            raise UserInputError(f"--overwrite: {output_dir} is not a prediction folder (no {ARGS_FILE}); it is not "
                                 f"replaced: empty it yourself or choose another -o")
        replaced = output_dir.parent / f".{output_dir.name}{_REPLACED_PREFIX}{os.getpid()}"
        os.replace(output_dir, replaced)  # one rename: the old results are gone from OUT at once
        output_dir.mkdir()
        logger.info("--overwrite: replacing the results in %s", output_dir)
    elif entries:
        raise UserInputError(f"{output_dir} already holds the results of another run ({len(entries)} entries, e.g. "
                             f"{', '.join(entries[:3])}); pass --overwrite to replace them, or --continue-prediction "
                             f"to keep its cases and predict the missing ones (same settings only)")
    if not (entries and continue_prediction):
        write_json(settings, args_file)
    try:
        yield output_dir
    except BaseException:
        if replaced is not None:  # put the old results back: a failed run leaves the folder as it was
            shutil.rmtree(output_dir, ignore_errors=True)
            os.replace(replaced, output_dir)
            replaced = None
        raise
    finally:
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)


def finished_cases(output_dir: Path, cases: list[str], file_ending: str, save_probabilities: bool) -> list[str]:
    """Cases whose outputs exist (the segmentation, and the probabilities when they are asked for)."""
    return [c for c in cases if (output_dir / f"{c}{file_ending}").is_file()
            and (not save_probabilities or (output_dir / f"{c}.npz").is_file())]
