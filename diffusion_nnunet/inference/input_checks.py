"""Predict-time input checks: a folder of images to predict, checked before any model is loaded.

Shares the file, geometry and process-pool checks of the raw-dataset checks (`planning.checks`):
every problem names its file, and all of them are raised together as one `InvalidDataError`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from dnnunet_core.errors import InvalidDataError, UserInputError
from planning.checks.cases import CaseTask
from planning.checks.files import GEOMETRY_FILE_ENDINGS
from planning.checks.layout import channel_files, channel_names_text, no_files_message, scan_channel_folder
from planning.checks.problems import Warnings, raise_if_problems
from planning.checks.runner import run_tasks

logger = logging.getLogger(__name__)


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
    warnings = Warnings(input_dir)
    names = channel_names_text(channel_names)
    scan = scan_channel_folder(input_dir, file_ending, num_channels, names, problems, warnings,
                                role="the model expects")
    if not scan and not problems:
        raise InvalidDataError(input_dir, no_files_message(input_dir, file_ending))
    tasks = []
    for case_id, channels in sorted(scan.items()):
        images, single_rgb = channel_files(input_dir, case_id, channels, num_channels, file_ending, names,
                                            problems, role="the model expects")
        tasks.append(CaseTask(case_id=case_id, images=tuple(images), label=None, num_channels=num_channels,
                               allowed_labels=None, check_intensities=True,
                               geometry=file_ending.lower() in GEOMETRY_FILE_ENDINGS, single_rgb_file=single_rgb))
    for result in run_tasks(tasks, num_processes, what=f"cases in {input_dir.name}"):
        problems.extend(result.problems)
        warnings.extend(result.warnings)
    raise_if_problems(input_dir, problems, what="prediction")
    for w in warnings.summary():
        logger.warning(w)
    return sorted(scan)
