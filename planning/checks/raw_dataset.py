"""`validate_raw_dataset`: the raw-dataset check run before planning and preprocessing."""
from __future__ import annotations

import logging
from pathlib import Path

from dnnunet_core.errors import InvalidDataError
from planning.checks.cases import CaseTask
from planning.checks.dataset_json import load_dataset_json
from planning.checks.files import GEOMETRY_FILE_ENDINGS
from planning.checks.layout import cases_from_explicit_list, cases_from_folders, check_test_folder
from planning.checks.problems import Warnings, raise_if_problems
from planning.checks.runner import ValidationReport, run_tasks

logger = logging.getLogger(__name__)


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
    warnings = Warnings(dataset_dir)

    spec = load_dataset_json(dataset_dir / "dataset.json", problems)
    if spec is None or spec.num_channels is None or spec.file_ending is None:
        raise_if_problems(dataset_dir, problems)
    assert spec is not None and spec.num_channels is not None and spec.file_ending is not None
    ending = spec.file_ending

    if spec.explicit_cases is not None:
        cases = cases_from_explicit_list(dataset_dir, spec, problems)
    else:
        cases = cases_from_folders(dataset_dir, spec, problems, warnings)
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
        check_test_folder(dataset_dir / "imagesTs", spec, warnings)

    # Content checks run on every file that exists, also in cases with missing files, so that one
    # run reports everything.
    tasks = [
        CaseTask(
            case_id=c.case_id, images=tuple(c.images), label=c.label, num_channels=spec.num_channels,
            allowed_labels=spec.allowed_labels, check_intensities=check_intensities,
            geometry=ending.lower() in GEOMETRY_FILE_ENDINGS, single_rgb_file=c.single_rgb_file,
        )
        for c in cases
        if c.images or c.label
    ]
    label_values_seen: set[int] = set()
    for result in run_tasks(tasks, num_processes, what=f"cases of {dataset_dir.name}"):
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
    raise_if_problems(dataset_dir, problems)
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
