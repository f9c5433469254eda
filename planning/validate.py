"""Bad-input checks for nnU-Net raw datasets and prediction inputs, run before any heavy compute.

Every check names the offending file and says what is wrong with it. Problems are collected
first and raised together as one `InvalidDataError`, one ``file: problem`` line each, so that
users can fix everything in one go instead of re-running planning once per broken file.

What is checked (see `validate_raw_dataset` and `validate_prediction_inputs`):

* ``dataset.json``: present, valid JSON (the line is named), required keys and their types,
  labels as nnU-Net v2 needs them (background 0, consecutive, ignore label, regions).
* folder layout: ``imagesTr``/``labelsTr`` present and non-empty, ``CASE_XXXX`` channel file
  names, every case has every channel and a label, ``numTraining`` matches, stray files.
  Partially labelled datasets (semi-supervised training): an image in ``imagesTr`` without a
  label file is accepted as *unlabelled* only when dataset.json declares it in
  ``"unlabelled": [case ids]`` or opts in with ``"allow_unlabelled": true``; otherwise it is
  reported as a missing label, with that hint.
* file contents: unreadable or truncated files, shape and geometry (spacing, origin, direction)
  agreement between channels and between image and label, label values and label data type,
  NaN/Inf voxels in images.

Tolerances: spacing uses nnU-Net's own test (``np.allclose`` defaults, relative 1e-5). nnU-Net
only *warns* about origin and direction mismatches; we treat them as errors (with tolerances
that absorb the float32 rounding of NIfTI headers: origin 1e-3 mm, direction cosines 1e-4),
because an image and label in different physical places or orientations usually means the
label does not belong to the voxels, which silently ruins a training run.

Headers are read with SimpleITK (``ReadImageInformation``, cheap). Voxels of NIfTI files are
read with nibabel, because ITK's NIfTI reader silently turns NaN/Inf into 0 and zero-fills
truncated files; other formats are read with SimpleITK. ``check_intensities=False`` skips reading
image voxels (NaN/Inf and truncated images then go unnoticed); labels are always read in full.

No torch import here (nnunetv2 pulls it in), so validation starts instantly.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from dnnunet_core.errors import InvalidDataError, UserInputError

logger = logging.getLogger(__name__)

#: File endings nnU-Net v2 has a reader for (SimpleITKIO, NibabelIO, NaturalImage2DIO, Tiff3DIO).
SUPPORTED_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl", ".png", ".bmp", ".tif", ".tiff")
#: Endings whose headers carry physical geometry (spacing, origin, direction) that we compare.
GEOMETRY_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")
#: 2-D natural image formats, where one file may hold several colour channels (RGB).
NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")

SPACING_RTOL = 1e-5  # nnU-Net's check is np.allclose with numpy's defaults
SPACING_ATOL = 1e-8
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_DATASET_FOLDER = re.compile(r"^Dataset(?P<id>\d+)_(?P<name>.+)$")
_REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
# Warnings that come once per file are summarised when more than this many files share them.
_MAX_WARNINGS_PER_KIND = 5
_CHUNK_VOXELS = 1 << 24
#: Worker processes are only started when the files to read add up to at least this many bytes.
PARALLEL_MIN_BYTES = 64 << 20


@dataclass
class ValidationReport:
    """Summary of a raw dataset that passed validation.

    Args:
        dataset_dir: the dataset folder that was checked.
        num_cases: number of labelled training cases (label files).
        num_channels: number of input channels per case.
        file_ending: the file ending from dataset.json.
        case_ids: the labelled training case identifiers, sorted.
        warnings: problems that do not stop planning but deserve a look.
        unlabelled_case_ids: training images without a label (declared unlabelled), sorted.
    """

    dataset_dir: Path
    num_cases: int
    num_channels: int
    file_ending: str
    case_ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unlabelled_case_ids: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Dataset lookup


def find_dataset_folder(raw_root: Path, dataset: str | int) -> Path:
    """Resolve a dataset given by id or by folder name to its folder under ``nnUNet_raw``.

    Works the same for ``nnUNet_preprocessed`` and ``nnUNet_results``, which use the same names.

    Args:
        raw_root: the ``nnUNet_raw`` folder (or another folder of ``DatasetXXX_Name`` folders).
        dataset: dataset id (``501``, ``"501"``, ``"5"``) or full folder name (``"Dataset501_Liver"``).

    Returns:
        The dataset folder.

    Raises:
        UserInputError: the dataset does not exist (the message lists the datasets that do) or
            the id matches several folders.
    """
    raw_root = Path(raw_root)
    if isinstance(dataset, bool) or not isinstance(dataset, (int, str)):
        raise UserInputError(f"dataset must be an id like 501 or a folder name like Dataset501_Name, got {dataset!r}")
    text = str(dataset).strip()
    if not raw_root.is_dir():
        what = "is not a folder" if raw_root.exists() else "does not exist"
        raise UserInputError(f"cannot find dataset {text}: the folder {raw_root} {what} "
                             "(check the nnUNet_raw / nnUNet_preprocessed / DNNUNET_DATA variables)")
    existing = sorted(p.name for p in raw_root.iterdir() if p.is_dir() and _DATASET_FOLDER.match(p.name))

    if text.isdigit():
        dataset_id = int(text)
        matches = [name for name in existing if int(_DATASET_FOLDER.match(name)["id"]) == dataset_id]
        if len(matches) == 1:
            return raw_root / matches[0]
        if len(matches) > 1:
            raise UserInputError(
                f"dataset id {dataset_id} is ambiguous: several folders in {raw_root} have it: {', '.join(matches)}; "
                "give the full folder name or rename one"
            )
        wanted = f"dataset id {dataset_id} (folder Dataset{dataset_id:03d}_<Name>)"
    elif _DATASET_FOLDER.match(text):
        if (raw_root / text).is_dir():
            return raw_root / text
        wanted = f"dataset {text}"
    else:
        raise UserInputError(
            f"{text!r} is not a dataset id (e.g. 501) or dataset folder name (e.g. Dataset501_Liver)"
        )
    if existing:
        found = "datasets found there: " + ", ".join(existing)
    elif any(raw_root.iterdir()):
        found = "it contains no DatasetXXX_Name folders"
    else:
        found = "it is empty"
    raise UserInputError(f"{wanted} not found in {raw_root}; {found}")


# ----------------------------------------------------------------------------------------------
# Public validators


def validate_raw_dataset(dataset_dir: Path, check_intensities: bool = True, num_processes: int = 1) -> ValidationReport:
    """Check an nnU-Net v2 raw dataset folder before planning and preprocessing.

    Problems in ``dataset.json`` that make the rest uncheckable (missing, invalid JSON, no usable
    ``channel_names`` or ``file_ending``) and a missing or empty ``imagesTr``/``labelsTr`` are
    raised at once. Everything else is collected over all cases and raised together.

    Args:
        dataset_dir: the ``DatasetXXX_Name`` folder (with dataset.json, imagesTr, labelsTr).
        check_intensities: also read every image's voxels to find NaN/Inf values and truncated
            image files. Label files are always read in full. ``False`` reads image headers only.
        num_processes: worker processes for reading files (1 = in this process).

    Returns:
        A `ValidationReport`; its warnings are also logged.

    Raises:
        InvalidDataError: with one ``file: problem`` line per problem found.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise InvalidDataError(dataset_dir, "dataset folder is not a folder" if dataset_dir.exists()
                               else "dataset folder does not exist")
    problems: list[tuple[Path, str]] = []
    warnings = _Warnings(dataset_dir)

    spec = _load_dataset_json(dataset_dir / "dataset.json", problems)
    if spec is None or spec.num_channels is None or spec.file_ending is None:
        _raise_if_problems(dataset_dir, problems)
    assert spec is not None and spec.num_channels is not None and spec.file_ending is not None
    ending = spec.file_ending

    if spec.explicit_cases is not None:
        cases = _cases_from_explicit_list(dataset_dir, spec, problems)
    else:
        cases = _cases_from_folders(dataset_dir, spec, problems, warnings)
    training = [c for c in cases if c.is_training_case and not c.unlabelled]
    unlabelled = [c for c in cases if c.unlabelled]
    # with unlabelled cases, numTraining may count all training images or only the labelled ones
    accepted = {len(training), len(training) + len(unlabelled)}
    if spec.num_training is not None and spec.num_training not in accepted:
        where = "dataset.json 'dataset' entries" if spec.explicit_cases is not None else "label files in labelsTr"
        extra = f" and {len(unlabelled)} unlabelled images" if unlabelled else ""
        problems.insert(0, (dataset_dir / "dataset.json",
                            f"numTraining is {spec.num_training} but there are {len(training)} {where}{extra}; "
                            f"set numTraining to {len(training) + len(unlabelled)}"))
    if spec.explicit_cases is None and (dataset_dir / "imagesTs").is_dir():
        _check_test_folder(dataset_dir / "imagesTs", spec, warnings)

    # Content checks run on every file that exists, also in cases with missing files, so that one
    # run reports everything.
    tasks = [
        _CaseTask(
            case_id=c.case_id, images=tuple(c.images), label=c.label, num_channels=spec.num_channels,
            allowed_labels=spec.allowed_labels, check_intensities=check_intensities,
            geometry=ending.lower() in GEOMETRY_FILE_ENDINGS, single_rgb_file=c.single_rgb_file,
        )
        for c in cases
        if c.images or c.label
    ]
    label_values_seen: set[int] = set()
    for result in _run_tasks(tasks, num_processes, what=f"cases of {dataset_dir.name}"):
        problems.extend(result.problems)
        warnings.extend(result.warnings)
        label_values_seen.update(result.label_values)

    if spec.allowed_labels is not None and any(c.label for c in cases):
        never = sorted(set(spec.label_names) - label_values_seen)
        if never:
            names = ", ".join(f"{spec.label_names[v]} ({v})" for v in never)
            warnings.add("unused-label", dataset_dir / "dataset.json",
                         f"labels declared but not present in any training label file: {names}")

    if training and label_values_seen and label_values_seen <= {0}:
        problems.insert(0, (dataset_dir / "labelsTr", f"all {len(training)} label files contain only background (0): "
                                                      "there is no foreground to learn (nnU-Net's fingerprint fails "
                                                      "on such a dataset); check that the right labels were exported"))
    _raise_if_problems(dataset_dir, problems)
    report = ValidationReport(
        dataset_dir=dataset_dir, num_cases=len(training), num_channels=spec.num_channels, file_ending=ending,
        case_ids=sorted(c.case_id for c in training), warnings=warnings.summary(),
        unlabelled_case_ids=sorted(c.case_id for c in unlabelled),
    )
    for w in report.warnings:
        logger.warning(w)
    logger.info("%s: %d cases%s, %d channel(s): no problems found", dataset_dir.name, report.num_cases,
                f" (+ {len(unlabelled)} unlabelled)" if unlabelled else "", report.num_channels)
    return report


def validate_prediction_inputs(input_dir: Path, channel_names: dict, file_ending: str,
                               num_processes: int = 1) -> list[str]:
    """Check a folder of images to predict (``CASE_XXXX<file_ending>``, one file per channel).

    Args:
        input_dir: folder with the input images.
        channel_names: the model's ``channel_names`` (``{"0": "CT", ...}``); its length is the
            number of channel files every case must have.
        file_ending: the model's file ending, e.g. ``".nii.gz"``; other files are ignored.
        num_processes: worker processes for reading files (1 = in this process).

    Returns:
        The case identifiers, sorted.

    Raises:
        InvalidDataError: with one ``file: problem`` line per problem found.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InvalidDataError(input_dir, "input folder is not a folder" if input_dir.exists()
                               else "input folder does not exist")
    num_channels = len(channel_names)
    if num_channels == 0:
        raise UserInputError("the model declares no input channels (channel_names is empty)")
    problems: list[tuple[Path, str]] = []
    warnings = _Warnings(input_dir)
    names = _channel_names_text(channel_names)
    scan = _scan_channel_folder(input_dir, file_ending, num_channels, names, problems, warnings,
                                role="the model expects")
    if not scan and not problems:
        raise InvalidDataError(input_dir, _no_files_message(input_dir, file_ending))
    tasks = []
    for case_id, channels in sorted(scan.items()):
        images, single_rgb = _channel_files(input_dir, case_id, channels, num_channels, file_ending, names,
                                            problems, role="the model expects")
        tasks.append(_CaseTask(case_id=case_id, images=tuple(images), label=None, num_channels=num_channels,
                               allowed_labels=None, check_intensities=True,
                               geometry=file_ending.lower() in GEOMETRY_FILE_ENDINGS, single_rgb_file=single_rgb))
    for result in _run_tasks(tasks, num_processes, what=f"cases in {input_dir.name}"):
        problems.extend(result.problems)
        warnings.extend(result.warnings)
    _raise_if_problems(input_dir, problems, what="prediction")
    for w in warnings.summary():
        logger.warning(w)
    return sorted(scan)


# ----------------------------------------------------------------------------------------------
# dataset.json


@dataclass
class _DatasetSpec:
    num_channels: int | None = None
    channel_names: dict = field(default_factory=dict)
    file_ending: str | None = None
    num_training: int | None = None
    allowed_labels: frozenset[int] | None = None
    label_names: dict[int, str] = field(default_factory=dict)  # value -> name, for messages
    explicit_cases: dict | None = None
    unlabelled: frozenset[str] = frozenset()  # dataset.json "unlabelled": case ids declared without labels
    allow_unlabelled: bool = False  # dataset.json "allow_unlabelled": any image without a label is unlabelled


def _load_dataset_json(path: Path, problems: list) -> _DatasetSpec | None:
    """Parse and check dataset.json; append problems; None when it cannot be used at all."""
    if not path.is_file():
        folder = path.parent
        hint = ""
        others = sorted(p.name for p in folder.glob("*.json"))
        if others:
            hint = f" (found {', '.join(others)}; the file must be called dataset.json)"
        problems.append((path, f"missing: every nnU-Net raw dataset needs a dataset.json{hint}"))
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        problems.append((path, f"not valid UTF-8 text (byte {e.start}); save it as UTF-8 JSON"))
        return None
    except OSError as e:
        problems.append((path, f"cannot be read: {e.strerror or e}"))
        return None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        problems.append((path, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"))
        return None
    if not isinstance(content, dict):
        problems.append((path, f"must contain a JSON object {{...}}, found a {type(content).__name__}"))
        return None

    spec = _DatasetSpec()
    missing = [k for k in _REQUIRED_KEYS if k not in content]
    if missing:
        hints = []
        if "channel_names" in missing and "modality" in content:
            hints.append("'modality' is the nnU-Net v1 name: rename it to 'channel_names' "
                         "(or convert with nnUNetv2_convert_old_nnUNet_dataset)")
        if "file_ending" in missing:
            hints.append("add e.g. \"file_ending\": \".nii.gz\"")
        problems.append((path, f"missing required key(s) {', '.join(missing)}"
                               + (f"; {'; '.join(hints)}" if hints else "")))

    # channel_names
    channels = content.get("channel_names")
    if channels is not None:
        if not isinstance(channels, dict) or not channels:
            problems.append((path, "channel_names must be a non-empty object like {\"0\": \"CT\"}"))
        else:
            expected_keys = [str(i) for i in range(len(channels))]
            if sorted(channels, key=lambda k: (len(k), k)) != expected_keys:
                problems.append((path, f"channel_names keys must be \"0\" to \"{len(channels) - 1}\" (the 4-digit "
                                       f"channel index of the image files), found {sorted(channels)}"))
            spec.num_channels = len(channels)
            spec.channel_names = channels

    # file_ending
    ending = content.get("file_ending")
    if ending is not None:
        if not isinstance(ending, str) or not ending.startswith(".") or len(ending) < 2:
            problems.append((path, f"file_ending must be a string like \".nii.gz\", found {ending!r}"))
        else:
            spec.file_ending = ending
            if ending.lower() not in SUPPORTED_FILE_ENDINGS:
                msg = (f"file_ending {ending!r} has no nnU-Net reader; supported: "
                       f"{', '.join(SUPPORTED_FILE_ENDINGS)}")
                if content.get("overwrite_image_reader_writer") not in (None, "None"):
                    logger.warning("%s: %s (custom reader %s declared)", path, msg,
                                   content["overwrite_image_reader_writer"])
                else:
                    problems.append((path, msg))

    # numTraining
    num_training = content.get("numTraining")
    if num_training is not None:
        if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 1:
            problems.append((path, f"numTraining must be a positive integer, found {num_training!r}"))
        else:
            spec.num_training = num_training

    # labels
    labels = content.get("labels")
    if labels is not None:
        _check_labels(path, labels, content, spec, problems)

    # explicit file list instead of imagesTr/labelsTr
    if "dataset" in content:
        explicit = content["dataset"]
        if not isinstance(explicit, dict) or not explicit:
            problems.append((path, "'dataset' must map case ids to {\"images\": [...], \"label\": ...}"))
        else:
            spec.explicit_cases = explicit

    # partial labels (semi-supervised training)
    declared = content.get("unlabelled")
    if declared is not None:
        if not isinstance(declared, list) or not all(isinstance(c, str) and c for c in declared):
            problems.append((path, "'unlabelled' must be a list of case ids, like [\"case_007\", \"case_012\"]"))
        else:
            spec.unlabelled = frozenset(declared)
    allow = content.get("allow_unlabelled")
    if allow is not None:
        if not isinstance(allow, bool):
            problems.append((path, f"'allow_unlabelled' must be true or false, found {allow!r}"))
        else:
            spec.allow_unlabelled = allow
    if (spec.unlabelled or spec.allow_unlabelled) and spec.explicit_cases is not None:
        problems.append((path, "unlabelled cases ('unlabelled' / 'allow_unlabelled') are only supported with "
                               "imagesTr/labelsTr folders, not with an explicit 'dataset' file list"))
    return spec


def _as_label_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _check_labels(path: Path, labels, content: dict, spec: _DatasetSpec, problems: list) -> None:
    """Check the 'labels' entry the way nnU-Net's LabelManager needs it; fill spec.allowed_labels."""
    if not isinstance(labels, dict) or not labels:
        problems.append((path, "labels must be a non-empty object like {\"background\": 0, \"liver\": 1}"))
        return
    if all(isinstance(k, str) and k.isdigit() for k in labels) and all(isinstance(v, str) for v in labels.values()):
        problems.append((path, "labels is in nnU-Net v1 format ({\"0\": \"background\"}); v2 expects "
                               "{\"background\": 0, ...} (swap keys and values)"))
        return
    ok = True
    values: dict[int, str] = {}
    has_regions = False
    for name, value in labels.items():
        if name == "ignore":
            continue
        if isinstance(value, (list, tuple)):
            ints = [_as_label_int(v) for v in value]
            if not value or any(v is None for v in ints):
                problems.append((path, f"label {name!r}: a region must be a non-empty list of integers, found {value!r}"))
                ok = False
                continue
            has_regions = has_regions or len(set(ints)) > 1
        else:
            v = _as_label_int(value)
            if v is None:
                problems.append((path, f"label {name!r}: value must be an integer, found {value!r}"))
                ok = False
                continue
            ints = [v]
        for v in ints:
            if v < 0:
                problems.append((path, f"label {name!r}: value {v} is negative"))
                ok = False
            values.setdefault(v, name)
    if "background" not in labels:
        problems.append((path, "labels must declare \"background\": 0"))
        ok = False
    elif _as_label_int(labels["background"]) != 0:
        problems.append((path, f"label 'background' must be 0 (a plain integer), found {labels['background']!r}"))
        ok = False
    if values and ok:
        missing = sorted(set(range(max(values) + 1)) - set(values))
        if missing:
            problems.append((path, f"label values must be consecutive (0, 1, 2, ...); missing {missing}"))
            ok = False
    if "ignore" in labels:
        ignore = labels["ignore"]
        if isinstance(ignore, bool) or not isinstance(ignore, int):
            problems.append((path, f"the 'ignore' label must be a single integer, found {ignore!r}"))
            ok = False
        elif values and ignore != max(values) + 1:
            problems.append((path, f"the 'ignore' label must be the highest value ({max(values) + 1}), found {ignore}"))
            ok = False
        else:
            values[ignore] = "ignore"
    if has_regions:
        order = content.get("regions_class_order")
        n_regions = sum(1 for k, v in labels.items() if k != "ignore" and not (
            (isinstance(v, (list, tuple)) and set(v) == {0}) or v == 0))
        if not isinstance(order, list):
            problems.append((path, "region-based labels (lists) need \"regions_class_order\" in dataset.json"))
            ok = False
        elif len(order) != n_regions:
            problems.append((path, f"regions_class_order has {len(order)} entries but there are {n_regions} regions"))
            ok = False
    if ok:
        spec.allowed_labels = frozenset(values)
        spec.label_names = values


# ----------------------------------------------------------------------------------------------
# Folder layout


@dataclass
class _Case:
    case_id: str
    images: list[Path]  # the channel files that exist, in channel order
    label: Path | None  # None when missing
    is_training_case: bool = True  # False for images in imagesTr without a label (unless declared unlabelled)
    unlabelled: bool = False  # declared unlabelled: an image-only training case
    single_rgb_file: bool = False  # one natural-image file holds all channels


class _Warnings:
    """Collects warnings; per-file warnings of one kind are summarised when there are many."""

    def __init__(self, root: Path):
        self.root = root
        self.items: list[tuple[str, str, str]] = []  # (kind, display path, message)

    def add(self, kind: str, path: Path | str, message: str) -> None:
        self.items.append((kind, _display(path, self.root), message))

    def extend(self, items: Iterable[tuple[str, str, str]]) -> None:
        for kind, path, message in items:
            self.add(kind, path, message)

    def summary(self) -> list[str]:
        by_kind: dict[str, list[tuple[str, str]]] = {}
        for kind, path, message in self.items:
            by_kind.setdefault(kind, []).append((path, message))
        out = []
        for kind, entries in by_kind.items():
            if len(entries) <= _MAX_WARNINGS_PER_KIND:
                out.extend(f"{p}: {m}" for p, m in entries)
            else:
                shown = ", ".join(p for p, _ in entries[:3])
                out.append(f"{len(entries)} files: {entries[0][1]} (e.g. {shown})")
        return out


def _display(path: Path | str, root: Path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _channel_names_text(channel_names: dict) -> str:
    items = sorted(channel_names.items(), key=lambda kv: (len(str(kv[0])), str(kv[0])))
    return ", ".join(f"{k}={v}" for k, v in items)


def _no_files_message(folder: Path, ending: str) -> str:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files:
        return f"folder is empty (expected {ending} files)"
    suffixes: dict[str, int] = {}
    for p in files:
        suffix = "".join(p.suffixes[-2:]) if p.name.endswith(".gz") else p.suffix
        suffixes[suffix or p.name] = suffixes.get(suffix or p.name, 0) + 1
    common = ", ".join(f"{n} {s!r}" for s, n in sorted(suffixes.items(), key=lambda kv: -kv[1])[:3])
    return f"contains no files ending in {ending!r} (found {common}; does file_ending match your files?)"


def _scan_channel_folder(folder: Path, ending: str, num_channels: int, names: str, problems: list,
                         warnings: _Warnings, role: str = "dataset.json declares",
                         stray_kind: str = "stray-file") -> dict[str, dict[int, Path]]:
    """Map case id -> channel index -> file for a folder of ``CASE_XXXX<ending>`` files."""
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_dir():
            warnings.add(stray_kind, path, "subfolder ignored (nnU-Net only reads files directly in this folder)")
            continue
        if not name.endswith(ending):
            if name.startswith(".") or (name.endswith(".json") and ending.lower() in (".tif", ".tiff")):
                continue  # .DS_Store and the like; Tiff3DIO spacing sidecars
            warnings.add(stray_kind, path, f"ignored: does not end with file_ending {ending!r}")
            continue
        if name.startswith("."):
            problems.append((path, "hidden file (macOS '._' metadata or a leftover temporary file) that nnU-Net "
                                   "would read as a case; delete it"))
            continue
        stem = name[: -len(ending)]
        match = _CHANNEL_FILE.match(stem)
        if not match:
            problems.append((path, f"image file names must end with a 4-digit channel index, "
                                   f"e.g. {stem}_0000{ending}"))
            continue
        channel = int(match["channel"])
        if channel >= num_channels:
            problems.append((path, f"channel index {match['channel']} but {role} {num_channels} channel(s) "
                                   f"({names}): expected _0000 to _{num_channels - 1:04d}"))
            continue
        cases.setdefault(match["case"], {})[channel] = path
    return cases


def _channel_files(folder: Path, case_id: str, channels: dict[int, Path], num_channels: int, ending: str,
                   names: str, problems: list, role: str = "dataset.json declares") -> tuple[list[Path], bool]:
    """The case's existing channel files in channel order, and whether one file holds all channels.

    Appends a problem for every missing channel file.
    """
    present = [channels[i] for i in sorted(channels)]
    missing = [i for i in range(num_channels) if i not in channels]
    if not missing:
        return present, False
    if missing == list(range(1, num_channels)) and ending.lower() in NATURAL_IMAGE_ENDINGS:
        # nnU-Net's natural-image reader takes RGB(A) channels from a single _0000 file.
        info = _read_header(channels[0])
        if isinstance(info, _Header) and info.components == num_channels:
            return present, True
    expected = ", ".join(f"{case_id}_{i:04d}{ending}" for i in range(num_channels))
    for i in missing:
        problems.append((folder / f"{case_id}_{i:04d}{ending}",
                         f"missing channel file of case {case_id!r}: {role} {num_channels} channel(s) "
                         f"({names}), so expected {expected}"))
    return present, False


def _cases_from_folders(dataset_dir: Path, spec: _DatasetSpec, problems: list, warnings: _Warnings) -> list[_Case]:
    ending = spec.file_ending
    folder_problems = []
    for sub in ("imagesTr", "labelsTr"):
        folder = dataset_dir / sub
        if not folder.is_dir():
            folder_problems.append((folder, "missing folder" if not folder.exists() else "is not a folder"))
        elif not any(p.name.endswith(ending) for p in folder.iterdir()):
            folder_problems.append((folder, _no_files_message(folder, ending)))
    if folder_problems:
        _raise_if_problems(dataset_dir, problems + folder_problems)

    names = _channel_names_text(spec.channel_names)
    images_dir, labels_dir = dataset_dir / "imagesTr", dataset_dir / "labelsTr"
    image_cases = _scan_channel_folder(images_dir, ending, spec.num_channels, names, problems, warnings)
    labels: dict[str, Path] = {}
    for path in sorted(labels_dir.iterdir()):
        if path.is_dir():
            warnings.add("stray-file", path, "subfolder ignored (nnU-Net only reads files directly in this folder)")
        elif not path.name.endswith(ending):
            if not path.name.startswith("."):
                warnings.add("stray-file", path, f"ignored: does not end with file_ending {ending!r}")
        elif path.name.startswith("."):
            problems.append((path, "hidden file (macOS '._' metadata or a leftover temporary file) that nnU-Net "
                                   "would read as a case; delete it"))
        else:
            labels[path.name[: -len(ending)]] = path

    cases = []
    for case_id in sorted(spec.unlabelled):
        if case_id in labels:
            problems.append((labels[case_id], f"case {case_id!r} is listed in dataset.json 'unlabelled' but has this "
                                              "label file; remove it from the list or delete the label"))
        elif case_id not in image_cases:
            problems.append((dataset_dir / "dataset.json", f"'unlabelled' lists {case_id!r} but imagesTr has no "
                                                           f"{case_id}_0000{ending}"))
    for case_id, label in sorted(labels.items()):
        channels = image_cases.get(case_id)
        if not channels:
            hint = ""
            if _CHANNEL_FILE.match(case_id):
                hint = " (label file names have no channel index: name it CASE" + ending + ")"
            problems.append((label, f"no image files for this label: expected "
                                    f"imagesTr/{case_id}_0000{ending}{hint}"))
            cases.append(_Case(case_id, [], label))
            continue
        images, single_rgb = _channel_files(images_dir, case_id, channels, spec.num_channels, ending, names, problems)
        cases.append(_Case(case_id, images, label, single_rgb_file=single_rgb))
    for case_id, channels in sorted(image_cases.items()):
        if case_id not in labels:
            first = channels[min(channels)]
            declared = case_id in spec.unlabelled or spec.allow_unlabelled
            if not declared:
                problems.append((labels_dir / f"{case_id}{ending}",
                                 f"missing label file for imagesTr/{first.name} (every training case needs one; for "
                                 "semi-supervised training list unlabelled cases in dataset.json \"unlabelled\": "
                                 "[...] or set \"allow_unlabelled\": true)"))
            images, single_rgb = _channel_files(images_dir, case_id, channels, spec.num_channels, ending, names,
                                                problems)
            cases.append(_Case(case_id, images, None, is_training_case=declared, unlabelled=declared,
                               single_rgb_file=single_rgb))
    return cases


def _cases_from_explicit_list(dataset_dir: Path, spec: _DatasetSpec, problems: list) -> list[_Case]:
    json_path = dataset_dir / "dataset.json"
    cases = []
    for case_id, entry in sorted(spec.explicit_cases.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
            problems.append((json_path, f"'dataset' entry {case_id!r} must be {{\"images\": [...], \"label\": ...}}"))
            continue

        def resolve(p: str) -> Path:
            p = Path(os.path.expandvars(str(p)))
            return p if p.is_absolute() else dataset_dir / p

        images = [resolve(p) for p in entry["images"]]
        label = resolve(entry["label"])
        if len(images) != spec.num_channels:
            problems.append((json_path, f"case {case_id!r} lists {len(images)} image(s) but channel_names declares "
                                        f"{spec.num_channels} channel(s)"))
        for p in [*images, label]:
            if not p.is_file():
                problems.append((p, f"missing (listed for case {case_id!r} in dataset.json)"))
        cases.append(_Case(case_id, [p for p in images if p.is_file()], label if label.is_file() else None))
    return cases


def _check_test_folder(folder: Path, spec: _DatasetSpec, warnings: _Warnings) -> None:
    """imagesTs is optional and not used for training: its layout problems are warnings."""
    names = _channel_names_text(spec.channel_names)
    test_problems: list[tuple[Path, str]] = []
    scan = _scan_channel_folder(folder, spec.file_ending, spec.num_channels, names, test_problems, warnings,
                                stray_kind="stray-test-file")
    for case_id, channels in sorted(scan.items()):
        _channel_files(folder, case_id, channels, spec.num_channels, spec.file_ending, names, test_problems)
    for path, message in test_problems:
        warnings.add("imagesTs", path, message)


# ----------------------------------------------------------------------------------------------
# File contents


@dataclass
class _Header:
    path: Path
    dimension: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int


@dataclass
class _CaseTask:
    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    num_channels: int
    allowed_labels: frozenset[int] | None
    check_intensities: bool
    geometry: bool
    single_rgb_file: bool = False


@dataclass
class _CaseResult:
    problems: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[str, str, str]] = field(default_factory=list)
    label_values: set[int] = field(default_factory=set)


def _sitk_reason(error: Exception) -> str:
    """The useful last line of a (long, multi-line) SimpleITK/ITK exception."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    reason = lines[-1] if lines else type(error).__name__
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        if reason.startswith(prefix):
            reason = reason[len(prefix):].strip()
    reason = re.sub(r"^\w+IO\(0x[0-9a-f]+\):\s*", "", reason)
    return reason


def _read_header(path: Path) -> _Header | str:
    """Header of an image file, or a problem description."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    except RuntimeError as e:
        return f"cannot be read as an image (corrupt or not a {''.join(path.suffixes[-2:])} file): {_sitk_reason(e)}"
    size = tuple(int(s) for s in reader.GetSize())
    return _Header(path=path, dimension=reader.GetDimension(), size=size, spacing=tuple(reader.GetSpacing()),
                   origin=tuple(reader.GetOrigin()), direction=tuple(reader.GetDirection()),
                   components=int(reader.GetNumberOfComponents()))


def _read_voxels(path: Path) -> tuple[np.ndarray, np.dtype, object] | str:
    """Read all voxels: (array, on-disk dtype, object keeping the array alive), or a problem.

    NIfTI files are read with nibabel: ITK's NIfTI reader (so SimpleITK) silently turns NaN/Inf
    into 0 and zero-fills truncated files, which would hide exactly what we look for here.
    """
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel  # imported here: only NIfTI datasets need it

        try:
            nifti = nibabel.load(str(path))
            array = np.asanyarray(nifti.dataobj)  # scaled by scl_slope/scl_inter, as nnU-Net sees it
        except EOFError:
            return ("truncated: the compressed data ends early (interrupted copy or download?); "
                    "re-export or re-copy the file")
        except OSError as e:
            if "Expected" in str(e) and "bytes" in str(e):
                return (f"truncated: {str(e).splitlines()[0].replace(str(path), 'file')} "
                        "(interrupted copy or download?); re-export or re-copy the file")
            return f"cannot read the voxel data (corrupt file?): {e}"
        except nibabel.filebasedimages.ImageFileError:
            return "the NIfTI header is truncated or corrupt; re-export or re-copy the file"
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for damaged files
            return (f"cannot read the voxel data (corrupt or truncated file?): "
                    f"{str(e).replace(str(path), 'file')}")
        return array, nifti.get_data_dtype(), nifti
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        return f"cannot read the voxel data (corrupt or truncated file?): {_sitk_reason(e)}"
    array = sitk.GetArrayViewFromImage(image)
    return array, array.dtype, image


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _fmt_size(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


def _compare_geometry(ref: _Header, other: _Header, geometry: bool, what: str) -> list[str]:
    """Problems of `other` relative to the reference header; `what` names the reference in messages."""
    if other.size != ref.size:
        kind = "" if other.dimension == ref.dimension else f" ({other.dimension}-D vs {ref.dimension}-D)"
        return [f"size {_fmt_size(other.size)} differs from {what} ({_fmt_size(ref.size)}){kind}"]
    if not geometry:
        return []
    out = []
    if not np.allclose(other.spacing, ref.spacing, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        out.append(f"spacing {_fmt(other.spacing)} differs from {what} {_fmt(ref.spacing)}")
    if not np.allclose(other.origin, ref.origin, rtol=SPACING_RTOL, atol=ORIGIN_ATOL_MM):
        dist = float(np.max(np.abs(np.subtract(other.origin, ref.origin))))
        out.append(f"origin {_fmt(other.origin)} differs from {what} {_fmt(ref.origin)} by up to {dist:.4g} mm; "
                   "if the voxels do correspond, copy the image geometry onto this file "
                   "(SimpleITK: CopyInformation)")
    if not np.allclose(other.direction, ref.direction, rtol=0, atol=DIRECTION_ATOL):
        out.append(f"direction (orientation) {_fmt(other.direction)} differs from {what} {_fmt(ref.direction)}; "
                   "the files are not in the same orientation (check with nnUNetv2_plot_overlay_pngs)")
    return out


def _check_case(task: _CaseTask) -> _CaseResult:
    """All content checks of one case (runs in worker processes; must not raise)."""
    result = _CaseResult()
    try:
        _check_case_inner(task, result)
    except Exception as e:  # noqa: BLE001 - a bug here must not hide the other cases' problems
        logger.exception("unexpected error while checking case %s", task.case_id)
        first = task.label or task.images[0]
        result.problems.append((first, f"could not be checked ({type(e).__name__}: {e})"))
    return result


def _check_case_inner(task: _CaseTask, result: _CaseResult) -> None:
    headers: list[_Header] = []
    for path in task.images:
        info = _read_header(path)
        if isinstance(info, str):
            result.problems.append((path, info))
            continue
        if info.dimension not in (2, 3):
            result.problems.append((path, f"{info.dimension}-D image; nnU-Net expects one 2-D or 3-D file per "
                                          "channel (CASE_0000, CASE_0001, ...)"))
            continue
        expected_components = task.num_channels if task.single_rgb_file else 1
        if info.components != expected_components:
            if task.single_rgb_file:
                msg = f"has {info.components} colour component(s) but {task.num_channels} channels are declared"
            else:
                msg = (f"has {info.components} components per voxel (RGB/vector image) but each channel file must "
                       f"hold one value per voxel; convert to grayscale or declare {info.components} channels")
            result.problems.append((path, msg))
            continue
        headers.append(info)
        if len(headers) > 1:
            ref = headers[0]
            for msg in _compare_geometry(ref, info, task.geometry, f"channel file {ref.path.name}"):
                result.problems.append((path, msg))
        if task.check_intensities:
            _check_image_voxels(path, result)

    if task.label is None:
        return
    label_info = _read_header(task.label)
    if isinstance(label_info, str):
        result.problems.append((task.label, label_info))
        return
    if label_info.components != 1:
        result.problems.append((task.label, f"has {label_info.components} components per voxel (RGB/vector); a "
                                            "label must be a single-component integer image"))
        return
    if headers:
        ref = headers[0]
        for msg in _compare_geometry(ref, label_info, task.geometry, f"image {ref.path.parent.name}/{ref.path.name}"):
            result.problems.append((task.label, msg))
    _check_label_voxels(task.label, task.allowed_labels, result)


def _check_image_voxels(path: Path, result: _CaseResult) -> None:
    voxels = _read_voxels(path)
    if isinstance(voxels, str):
        result.problems.append((path, voxels))
        return
    arr = voxels[0]
    if arr.dtype.kind == "c":
        result.problems.append((path, f"complex-valued voxels ({arr.dtype}); save magnitude images"))
        return
    if arr.dtype.kind not in "fiu":
        return
    n_nan = n_inf = 0
    max_abs = 0.0
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _CHUNK_VOXELS):
        chunk = flat[start:start + _CHUNK_VOXELS]
        if chunk.dtype.kind in "iu":
            max_abs = max(max_abs, abs(float(chunk.min())), abs(float(chunk.max())))
            continue
        finite = np.isfinite(chunk)
        if not finite.all():
            bad = chunk[~finite]
            nan = int(np.isnan(bad).sum())
            n_nan += nan
            n_inf += bad.size - nan
            chunk = chunk[finite]
        if chunk.size:
            max_abs = max(max_abs, float(np.abs(chunk).max()))
    if n_nan or n_inf:
        parts = [f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "Inf")) if n]
        result.problems.append((path, f"contains {' and '.join(parts)} voxel(s) (of {arr.size}); replace them with "
                                      "a real intensity (e.g. the image minimum)"))
    limit = float32_safe_intensity(arr.size)
    if max_abs > limit:
        result.problems.append((path, f"intensities up to {max_abs:.3g} overflow the float32 arithmetic of nnU-Net's "
                                      f"normalisation (the mean and standard deviation of {arr.size} voxels need "
                                      f"|intensity| below {limit:.3g}; the image would preprocess to NaN); rescale "
                                      "the image to a physical range"))


def float32_safe_intensity(num_voxels: int) -> float:
    """Largest |intensity| whose sum of squares over `num_voxels` stays 10x below float32's maximum.

    nnU-Net normalises in float32 (z-score: mean, then the sum of squared deviations); a square
    above float32's maximum is Inf, and Inf - Inf makes the whole image NaN.
    """
    return float(np.sqrt(np.finfo(np.float32).max / (10.0 * max(1, num_voxels))))


def _check_label_voxels(path: Path, allowed: frozenset[int] | None, result: _CaseResult) -> None:
    voxels = _read_voxels(path)
    if isinstance(voxels, str):
        result.problems.append((path, voxels))
        return
    arr, stored_dtype, _keep = voxels
    kind = arr.dtype.kind
    if kind == "c":
        result.problems.append((path, f"label has complex-valued voxels ({arr.dtype}); labels must be integers"))
        return
    if kind == "f":
        finite = np.isfinite(arr)
        n_bad = int(arr.size - np.count_nonzero(finite))
        if n_bad:
            result.problems.append((path, f"label contains {n_bad} NaN/Inf voxel(s); labels must be integers"))
            return
        fractional = arr != np.floor(arr)
        n_frac = int(np.count_nonzero(fractional))
        if n_frac:
            examples = ", ".join(f"{v:g}" for v in np.unique(arr[fractional])[:5])
            result.problems.append((path, f"label is stored as {stored_dtype} with non-integer values (e.g. {examples} in "
                                          f"{n_frac} voxels); labels must be integer class indices - was it resampled "
                                          "with linear interpolation instead of nearest neighbour?"))
            return
        if np.dtype(stored_dtype).kind == "f":
            result.warnings.append(("float-label", str(path), f"label stored as {stored_dtype}; an integer type "
                                                              "(e.g. uint8) is smaller and safer"))
        values, counts = np.unique(arr, return_counts=True)
        values = values.astype(np.int64)
    elif kind in "iub":
        values, counts = _integer_value_counts(arr)
    else:
        result.problems.append((path, f"unsupported label voxel type {arr.dtype}; labels must be integers"))
        return
    present = {int(v) for v in values}
    result.label_values = present
    if allowed is not None:
        unexpected = [(int(v), int(c)) for v, c in zip(values, counts) if int(v) not in allowed]
        if unexpected:
            listed = ", ".join(f"{v} ({c} voxels)" for v, c in unexpected[:10])
            more = f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""
            result.problems.append((path, f"label values not declared in dataset.json labels: {listed}{more}; "
                                          f"allowed: {sorted(allowed)}"))
    if present == {0}:
        result.warnings.append(("background-only", str(path), "label contains only background (0)"))


def _integer_value_counts(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts of an integer array, in bounded memory and linear time when possible."""
    if arr.dtype.kind == "b":
        arr = arr.view(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < 1 << 16:
        counts = np.zeros(hi + 1, dtype=np.int64)
        flat = arr.reshape(-1)
        for start in range(0, flat.size, _CHUNK_VOXELS):
            counts += np.bincount(flat[start:start + _CHUNK_VOXELS], minlength=hi + 1)
        values = np.nonzero(counts)[0]
        return values, counts[values]
    values, counts = np.unique(arr, return_counts=True)
    return values.astype(np.int64), counts


def _total_bytes(tasks: list[_CaseTask]) -> int:
    total = 0
    for task in tasks:
        for path in (*task.images, task.label):
            if path is not None:
                try:
                    total += path.stat().st_size
                except OSError:
                    pass
    return total


def _run_tasks(tasks: list[_CaseTask], num_processes: int, what: str) -> Iterable[_CaseResult]:
    """Run `_check_case` over tasks, in worker processes when asked, yielding results in task order.

    If the worker pool breaks (e.g. a calling script without an ``if __name__ == "__main__"``
    guard, which "spawn" workers need), the remaining cases are checked in this process.
    """
    if not tasks:
        return
    total = len(tasks)
    step = max(1, total // 10)
    workers = max(1, min(int(num_processes or 1), total))
    if workers > 1 and _total_bytes(tasks) < PARALLEL_MIN_BYTES:
        workers = 1  # starting "spawn" workers costs about a second: not worth it for small datasets
    done = 0

    def progress() -> None:
        if done % step == 0 or done == total:
            logger.info("checked %d/%d %s", done, total, what)

    if workers > 1:
        # spawn: safe even when the parent has torch threads running; this module imports fast
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            for result in executor.map(_check_case, tasks, chunksize=max(1, total // (workers * 8))):
                done += 1
                progress()
                yield result
        except BrokenProcessPool:
            logger.warning("worker processes failed; checking the remaining %d %s in this process",
                           total - done, what)
        finally:
            executor.shutdown(cancel_futures=True)
    for task in tasks[done:]:
        result = _check_case(task)
        done += 1
        progress()
        yield result


def _raise_if_problems(root: Path, problems: list[tuple[Path, str]], what: str = "planning") -> None:
    """Raise one InvalidDataError listing every problem (a single problem names its file directly)."""
    if not problems:
        return
    if len(problems) == 1:
        path, message = problems[0]
        error = InvalidDataError(path, message)
    else:
        lines = "\n".join(f"  {_display(p, root)}: {m}" for p, m in problems)
        error = InvalidDataError(root, f"{len(problems)} problems found; fix them all before {what}:\n{lines}")
    error.problems = [(str(p), m) for p, m in problems]
    logger.debug("%d problem(s) in %s", len(problems), root)
    raise error
