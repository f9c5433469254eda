"""dataset.json checks: present, valid JSON (the line is named), required keys and their types,
labels as nnU-Net v2 needs them (background 0, consecutive, ignore label, regions), the
unlabelled-case declarations (``dnnunet_core.partial_labels``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from dnnunet_core.partial_labels import ALLOW_KEY, UNLABELLED_KEY
from planning.checks.files import SUPPORTED_FILE_ENDINGS

logger = logging.getLogger(__name__)


_REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


@dataclass
class DatasetSpec:
    num_channels: int | None = None
    channel_names: dict = field(default_factory=dict)
    file_ending: str | None = None
    num_training: int | None = None
    allowed_labels: frozenset[int] | None = None
    label_names: dict[int, str] = field(default_factory=dict)  # value -> name, for messages
    explicit_cases: dict | None = None
    unlabelled: frozenset[str] = frozenset()  # dataset.json "unlabelled": case ids declared without labels
    allow_unlabelled: bool = False  # dataset.json "allow_unlabelled": any image without a label is unlabelled


def load_dataset_json(path: Path, problems: list) -> DatasetSpec | None:
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

    spec = DatasetSpec()
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
    declared = content.get(UNLABELLED_KEY)
    if declared is not None:
        if not isinstance(declared, list) or not all(isinstance(c, str) and c for c in declared):
            problems.append((path, "'unlabelled' must be a list of case ids, like [\"case_007\", \"case_012\"]"))
        else:
            spec.unlabelled = frozenset(declared)
    allow = content.get(ALLOW_KEY)
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


def _check_labels(path: Path, labels, content: dict, spec: DatasetSpec, problems: list) -> None:
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
