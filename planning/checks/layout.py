"""Folder layout checks: ``imagesTr``/``labelsTr``, ``CASE_XXXX`` channel file names, every case has
every channel and a label (or is declared unlabelled), stray files, ``imagesTs``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from planning.checks.dataset_json import DatasetSpec
from planning.checks.files import NATURAL_IMAGE_ENDINGS, Header, read_header
from planning.checks.problems import Warnings, raise_if_problems

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class _Case:
    case_id: str
    images: list[Path]  # the channel files that exist, in channel order
    label: Path | None  # None when missing
    is_training_case: bool = True  # False for images in imagesTr without a label (unless declared unlabelled)
    unlabelled: bool = False  # declared unlabelled: an image-only training case
    single_rgb_file: bool = False  # one natural-image file holds all channels


def channel_names_text(channel_names: dict) -> str:
    items = sorted(channel_names.items(), key=lambda kv: (len(str(kv[0])), str(kv[0])))
    return ", ".join(f"{k}={v}" for k, v in items)


def no_files_message(folder: Path, ending: str) -> str:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files:
        return f"folder is empty (expected {ending} files)"
    suffixes: dict[str, int] = {}
    for p in files:
        suffix = "".join(p.suffixes[-2:]) if p.name.endswith(".gz") else p.suffix
        suffixes[suffix or p.name] = suffixes.get(suffix or p.name, 0) + 1
    common = ", ".join(f"{n} {s!r}" for s, n in sorted(suffixes.items(), key=lambda kv: -kv[1])[:3])
    return f"contains no files ending in {ending!r} (found {common}; does file_ending match your files?)"


def scan_channel_folder(folder: Path, ending: str, num_channels: int, names: str, problems: list,
                         warnings: Warnings, role: str = "dataset.json declares",
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


def channel_files(folder: Path, case_id: str, channels: dict[int, Path], num_channels: int, ending: str,
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
        info = read_header(channels[0])
        if isinstance(info, Header) and info.components == num_channels:
            return present, True
    expected = ", ".join(f"{case_id}_{i:04d}{ending}" for i in range(num_channels))
    for i in missing:
        problems.append((folder / f"{case_id}_{i:04d}{ending}",
                         f"missing channel file of case {case_id!r}: {role} {num_channels} channel(s) "
                         f"({names}), so expected {expected}"))
    return present, False


def cases_from_folders(dataset_dir: Path, spec: DatasetSpec, problems: list, warnings: Warnings) -> list[_Case]:
    ending = spec.file_ending
    folder_problems = []
    for sub in ("imagesTr", "labelsTr"):
        folder = dataset_dir / sub
        if not folder.is_dir():
            folder_problems.append((folder, "missing folder" if not folder.exists() else "is not a folder"))
        elif not any(p.name.endswith(ending) for p in folder.iterdir()):
            folder_problems.append((folder, no_files_message(folder, ending)))
    if folder_problems:
        raise_if_problems(dataset_dir, problems + folder_problems)

    names = channel_names_text(spec.channel_names)
    images_dir, labels_dir = dataset_dir / "imagesTr", dataset_dir / "labelsTr"
    image_cases = scan_channel_folder(images_dir, ending, spec.num_channels, names, problems, warnings)
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
        images, single_rgb = channel_files(images_dir, case_id, channels, spec.num_channels, ending, names, problems)
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
            images, single_rgb = channel_files(images_dir, case_id, channels, spec.num_channels, ending, names,
                                                problems)
            cases.append(_Case(case_id, images, None, is_training_case=declared, unlabelled=declared,
                               single_rgb_file=single_rgb))
    return cases


def cases_from_explicit_list(dataset_dir: Path, spec: DatasetSpec, problems: list) -> list[_Case]:
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


def check_test_folder(folder: Path, spec: DatasetSpec, warnings: Warnings) -> None:
    """imagesTs is optional and not used for training: its layout problems are warnings."""
    names = channel_names_text(spec.channel_names)
    test_problems: list[tuple[Path, str]] = []
    scan = scan_channel_folder(folder, spec.file_ending, spec.num_channels, names, test_problems, warnings,
                                stray_kind="stray-test-file")
    for case_id, channels in sorted(scan.items()):
        channel_files(folder, case_id, channels, spec.num_channels, spec.file_ending, names, test_problems)
    for path, message in test_problems:
        warnings.add("imagesTs", path, message)
