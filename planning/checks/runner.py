"""The process pool that runs the per-case checks, and the report of a dataset that passed."""
from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from planning.checks.cases import CaseResult, CaseTask, check_case

logger = logging.getLogger(__name__)


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


def _total_bytes(tasks: list[CaseTask]) -> int:
    total = 0
    for task in tasks:
        for path in (*task.images, task.label):
            if path is not None:
                try:
                    total += path.stat().st_size
                except OSError:
                    pass
    return total


def run_tasks(tasks: list[CaseTask], num_processes: int, what: str) -> Iterable[CaseResult]:
    """Run `check_case` over tasks, in worker processes when asked, yielding results in task order.

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
            for result in executor.map(check_case, tasks, chunksize=max(1, total // (workers * 8))):
                done += 1
                progress()
                yield result
        except BrokenProcessPool:
            logger.warning("worker processes failed; checking the remaining %d %s in this process",
                           total - done, what)
        finally:
            executor.shutdown(cancel_futures=True)
    for task in tasks[done:]:
        result = check_case(task)
        done += 1
        progress()
        yield result
