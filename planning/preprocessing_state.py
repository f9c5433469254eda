"""Completeness of preprocessed data, and splits that match it.

nnU-Net's preprocessor writes one file per case into `<preprocessed>/<dataset>/<data_identifier>/`
and nothing at the end: a killed run leaves a folder that looks like a smaller dataset, and a
training on it writes a `splits_final.json` over the cases it finds, which later trainings keep.

`mark_incomplete` removes a configuration's marker before its preprocessing starts;
`mark_complete` writes, last and atomically, a marker per configuration recording the case list
and a hash of the plans entries that shape the preprocessed data. `require_complete` (called by
`train` before the trainer is built) refuses data without a marker, with other plans, or with
other cases. `check_splits` refuses a `splits_final.json` whose cases are not the dataset's.

Configurations may share a data folder: nnU-Net's `3d_cascade_fullres` inherits `3d_fullres`'s
data identifier. Preprocessing either rewrites the folder, so `mark_incomplete` removes the markers
of every configuration of that folder, and `require_complete` accepts the marker of any of them
whose hash matches (the hash covers only what the arrays depend on, the same for both).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from dnnunet_core import paths
from dnnunet_core.atomic import write_json
from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)

MARKER_FOLDER = "preprocessing_complete"  # <preprocessed>/<dataset>/preprocessing_complete/<data>__<cfg>.json
# what the preprocessed arrays depend on (training-only entries such as batch or patch size do not
# invalidate them)
CONFIGURATION_KEYS = ("data_identifier", "preprocessor_name", "spacing", "normalization_schemes",
                       "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                       "resampling_fn_seg_kwargs")
_PLANS_KEYS = ("transpose_forward", "foreground_intensity_properties_per_channel", "image_reader_writer")


def preprocessing_hash(plans: dict, configuration: str, dataset_json: dict) -> str:
    """SHA-256 of the plans entries (and labels) that the preprocessed data of `configuration` depends on."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    resolved = PlansManager(plans).get_configuration(configuration).configuration
    relevant = {"configuration": {k: resolved.get(k) for k in CONFIGURATION_KEYS},
                "plans": {k: plans.get(k) for k in _PLANS_KEYS},
                "labels": dataset_json.get("labels"), "regions_class_order": dataset_json.get("regions_class_order")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _data_folder(dataset_name: str, plans: dict, configuration: str) -> Path:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    identifier = PlansManager(plans).get_configuration(configuration).data_identifier
    return paths.preprocessed() / dataset_name / identifier


def _marker(folder: Path, configuration: str) -> Path:
    # beside the data folder, not in it: nnU-Net infers the dataset format from its file endings
    return folder.parent / MARKER_FOLDER / f"{folder.name}__{configuration}.json"


def _folder_markers(folder: Path) -> list[Path]:
    """The markers of every configuration whose data is `folder`."""
    return sorted((folder.parent / MARKER_FOLDER).glob(f"{folder.name}__*.json"))


def mark_incomplete(dataset_name: str, configuration: str, plans_name: str) -> None:
    """Before preprocessing one configuration: remove the markers of its data folder (the data is
    about to change, also for configurations that share the folder, e.g. 3d_cascade_fullres)."""
    base = paths.preprocessed() / dataset_name
    plans = json.loads((base / f"{plans_name}.json").read_text())
    folder = _data_folder(dataset_name, plans, configuration)
    for marker in {_marker(folder, configuration), *_folder_markers(folder)}:
        marker.unlink(missing_ok=True)


def preprocessed_cases(folder: Path) -> list[str]:
    """Case identifiers in a preprocessed data folder, as nnU-Net's dataset class lists them."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if not folder.is_dir() or not any(folder.iterdir()):
        return []
    return sorted(infer_dataset_class(str(folder)).get_identifiers(str(folder)))


def _difference_text(expected: list[str], found: list[str]) -> str:
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
    if extra:
        parts.append(f"{len(extra)} not in the dataset ({', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''})")
    return "; ".join(parts)


def mark_complete(dataset_name: str, configuration: str, plans_name: str, expected_cases: list[str]) -> Path:
    """After preprocessing one configuration: check that every case is there, then write the marker.

    Raises:
        UserInputError: the preprocessed folder does not hold exactly `expected_cases`.
    """
    base = paths.preprocessed() / dataset_name
    plans = json.loads((base / f"{plans_name}.json").read_text())
    dataset_json = json.loads((base / "dataset.json").read_text())
    folder = _data_folder(dataset_name, plans, configuration)
    found = preprocessed_cases(folder)
    if found != sorted(expected_cases):
        raise UserInputError(f"preprocessing {dataset_name} / {configuration} left {folder} with other cases than "
                             f"the dataset's: {_difference_text(expected_cases, found)}")
    marker = _marker(folder, configuration)
    write_json({"dataset": dataset_name, "configuration": configuration, "plans_identifier": plans_name,
                "plans_sha256": preprocessing_hash(plans, configuration, dataset_json), "num_cases": len(found),
                "cases": found}, marker)
    return marker


def require_complete(dataset: str, configuration: str, plans_name: str) -> None:
    """Refuse to train on preprocessed data that is incomplete or was made with other plans.

    Args:
        dataset: id or DatasetXXX_Name under nnUNet_preprocessed.
        configuration: e.g. "2d".
        plans_name: plans identifier.

    Raises:
        UserInputError: no completion marker (interrupted, --plan-only), other plans, or other
            cases than the marker records; the message says which command completes the data.
    """
    from dnnunet_core.paths import find_dataset_folder
    from planning.pipeline import preprocessed_plans_file

    dataset_name = find_dataset_folder(paths.preprocessed(), dataset).name
    plans = json.loads(preprocessed_plans_file(dataset_name, plans_name).read_text())
    if configuration not in plans["configurations"]:
        return  # the caller reports configurations that are not planned
    folder = _data_folder(dataset_name, plans, configuration)
    rerun = (f"run `dnnunet plan-and-preprocess -d {dataset_name} -c {configuration}"
             f"{'' if plans_name == 'dnnunetPlans' else f' -p {plans_name}'}` (it completes the data)")
    dataset_json = json.loads((paths.preprocessed() / dataset_name / "dataset.json").read_text())
    expected_hash = preprocessing_hash(plans, configuration, dataset_json)
    marker = _marker(folder, configuration)
    if not marker.is_file():  # a configuration sharing the folder (3d_fullres for the cascade) may vouch for it
        marker = next((m for m in _folder_markers(folder) if _recorded_hash(m) == expected_hash), marker)
    if not marker.is_file():
        raise UserInputError(f"the preprocessed data of {dataset_name} / {configuration} in {folder} is incomplete: "
                             f"preprocessing was interrupted, skipped (--plan-only) or made by an older version; "
                             f"{rerun}")
    try:
        record = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(f"{marker} is unreadable ({err}); {rerun}") from None
    if record.get("plans_sha256") != expected_hash:
        raise UserInputError(f"the preprocessed data of {dataset_name} / {configuration} was made with other plans "
                             f"than {plans_name}.json holds now (re-planned with --plan-only?); {rerun}")
    found = preprocessed_cases(folder)
    if found != record.get("cases"):
        raise UserInputError(f"{folder} does not hold the cases its preprocessing recorded: "
                             f"{_difference_text(record.get('cases') or [], found)}; {rerun}")


def _recorded_hash(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("plans_sha256")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def check_splits(splits_file: str | Path, preprocessed_folder: str | Path, fold: int | str = 0) -> None:
    """Refuse an existing `splits_final.json` whose folds do not cover exactly the dataset's cases.

    Args:
        splits_file: nnU-Net's `splits_final.json` (absent: nnU-Net makes one; nothing to check).
        preprocessed_folder: the configuration's preprocessed data folder.
        fold: the fold to train; "all" uses no split.

    Raises:
        UserInputError: naming the split file, what differs, and how to make a new split.
    """
    splits_file, folder = Path(splits_file), Path(preprocessed_folder)
    if fold == "all" or not splits_file.is_file():
        return
    try:
        splits = json.loads(splits_file.read_text())
        folds = [set(s["train"]) | set(s["val"]) for s in splits]
    except (OSError, json.JSONDecodeError, TypeError, KeyError) as err:
        raise UserInputError(f"{splits_file} is not a list of {{'train': [...], 'val': [...]}} folds ({err}); "
                             f"delete it and nnU-Net makes a new 5-fold split") from None
    cases = preprocessed_cases(folder)
    for k, covered in enumerate(folds):
        if covered != set(cases):
            raise UserInputError(f"{splits_file}: fold {k} covers other cases than the {len(cases)} of {folder} "
                                 f"({_difference_text(cases, sorted(covered))}); it was made for other data (an "
                                 f"interrupted preprocessing?). Delete it and nnU-Net makes a new 5-fold split "
                                 f"(folds trained with the old split must then be trained again)")
