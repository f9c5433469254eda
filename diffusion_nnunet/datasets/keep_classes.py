"""Binary and reduced-class raw datasets: keep some foreground classes, merge the rest into background.

``dnnunet make-dataset NAME --keep-classes A [B ...]`` writes any generator's dataset and then
relabels it here (before `--labelled-fraction` drops labels): every label file of ``labelsTr``
and ``labelsTs`` is remapped so that the kept classes become 1, 2, ... in the order of their
original label values and every other class becomes background (0); dataset.json's ``labels``
is renumbered alike and ``kept_classes`` records each kept class's original value.

Why: the semi-supervised method's authors evaluate on binary tasks only (foreground against
background), where an unsupervised partition of the pre-trained teacher is at worst swapped
(docs/semi_supervised.md).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dnnunet_core.atomic import atomic_path, write_json
from dnnunet_core.errors import InvalidDataError, UserInputError

logger = logging.getLogger(__name__)

KEPT_KEY = "kept_classes"


def resolve_kept_classes(labels: dict, keep: list[str]) -> list[tuple[str, int]]:
    """The kept classes as (name, original value), sorted by value.

    Args:
        labels: dataset.json ``labels`` (name -> value, background 0).
        keep: class names or label values (as given on the command line).

    Raises:
        UserInputError: every problem at once: region labels (lists), unknown names or values,
            background, a class named twice, nothing to keep.
    """
    problems = []
    by_name = {}
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"label {name!r} is a region ({value!r}): --keep-classes needs plain label values")
        else:
            by_name[name] = value
    by_value = {value: name for name, value in by_name.items()}
    kept: dict[str, int] = {}
    for item in keep:
        text = str(item).strip()
        if text in by_name:
            name = text
        elif text.lstrip("-").isdigit() and int(text) in by_value:
            name = by_value[int(text)]
        else:
            problems.append(f"{text!r} is neither a class name nor a label value of this dataset "
                            f"(classes: {', '.join(f'{n}={v}' for n, v in by_name.items())})")
            continue
        if by_name[name] == 0:
            problems.append(f"{text!r} is the background: keep foreground classes only")
        elif name in kept:
            problems.append(f"{text!r}: class {name!r} is named twice")
        else:
            kept[name] = by_name[name]
    if not keep:
        problems.append("name at least one foreground class to keep")
    if problems:
        raise UserInputError("--keep-classes: " + "; ".join(problems))
    return sorted(kept.items(), key=lambda item: item[1])


def relabel_table(labels: dict, kept: list[tuple[str, int]]) -> np.ndarray:
    """Lookup table ``new = table[old]``: kept classes 1, 2, ... in their order, all else 0.

    Args:
        labels: dataset.json ``labels`` (plain values).
        kept: `resolve_kept_classes`'s result.
    """
    table = np.zeros(max(labels.values()) + 1, dtype=np.uint8)
    for new, (_, old) in enumerate(kept, start=1):
        table[old] = new
    return table


def apply_keep_classes(folder: Path, keep: list[str]) -> dict:
    """Relabel a complete raw dataset folder in place; return its new dataset.json ``labels``.

    Args:
        folder: raw dataset folder (dataset.json, labelsTr, optionally labelsTs).
        keep: class names or label values to keep.

    Raises:
        UserInputError: see `resolve_kept_classes`.
        InvalidDataError: a label file holds a value that dataset.json does not list.
    """
    folder = Path(folder)
    meta = json.loads((folder / "dataset.json").read_text())
    kept = resolve_kept_classes(meta["labels"], keep)
    table = relabel_table(meta["labels"], kept)
    ending = meta["file_ending"]
    for split in ("labelsTr", "labelsTs"):
        if not (folder / split).is_dir():
            continue
        for path in sorted((folder / split).iterdir()):
            if path.name.endswith(ending):
                _relabel_file(path, table)
    meta[KEPT_KEY] = {name: value for name, value in kept}
    meta["labels"] = {"background": 0, **{name: new for new, (name, _) in enumerate(kept, start=1)}}
    write_json(meta, folder / "dataset.json")
    logger.info("%s: kept %s, other classes merged into background", folder.name,
                ", ".join(f"{name} ({old} -> {new})" for new, (name, old) in enumerate(kept, start=1)))
    return meta["labels"]


def _relabel_file(path: Path, table: np.ndarray) -> None:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    if array.min() < 0 or array.max() >= len(table):
        raise InvalidDataError(f"{path}: label values {int(array.min())}..{int(array.max())} are not all listed in "
                             "dataset.json's labels")
    out = sitk.GetImageFromArray(table[array.astype(np.int64)].astype(array.dtype))
    out.CopyInformation(image)
    with atomic_path(path) as tmp:
        sitk.WriteImage(out, str(tmp), True)
