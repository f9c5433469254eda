"""One training per model fold at a time: a lock file beside the fold folder.

`filelock.SoftFileLock` (filelock >= 4.3, a dependency of torch) does what is needed and is
kept well: the lock file is created atomically (exclusive create), records the holder's PID,
host and process start time, is removed on release, and a lock left by a process that died
(``kill -9``, a crash, an OOM kill) on this host is detected by PID + start time and taken over.
A lock held on another host cannot be probed from here; it is reported with that host's name.
A kernel lock (`flock`) would need no stale detection, but it cannot say who holds it, and
it is unreliable on network file systems, where results folders often live.

The lock file is `<model folder>/fold_<f>.lock`, beside (not inside) the fold folder, so that a
new run can move the old fold folder away while it holds the lock. nnU-Net and our predictor
look for `fold_*` folders only, so the file is invisible to them.
"""
from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import SoftFileLock, Timeout

from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


def fold_lock_path(model_folder: str | Path, fold: int | str) -> Path:
    """The lock file of one fold of a model folder."""
    return Path(model_folder) / f"fold_{fold}{LOCK_SUFFIX}"


class FoldLockedError(UserInputError):
    """Another run holds the fold's lock.

    Args:
        lock_file: the lock file.
        holder: who holds it, in words ("PID 123 on host vm").
    """

    def __init__(self, lock_file: Path, holder: str):
        self.lock_file = Path(lock_file)
        self.holder = holder
        super().__init__(
            f"{lock_file.parent.name}/{lock_file.stem} is being trained by another run: {holder} holds the lock "
            f"{lock_file}. Wait for that run to end or stop it; if that process is not running (it ran on another "
            f"machine that was reset, say), delete {lock_file}")


def try_lock(lock_file: str | Path) -> SoftFileLock:
    """Acquire `lock_file` without waiting; return the held lock (release it with `.release()`).

    Raises:
        FoldLockedError: a live process holds it (the message names the file, the PID and the host).
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = SoftFileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout as err:
        raise FoldLockedError(lock_file, _holder(lock, err)) from None
    return lock


def _holder(lock: SoftFileLock, err: Timeout) -> str:
    text = str(err)
    if " held by " in text:  # filelock names holders it cannot probe (another host)
        return text.split(" held by ", 1)[1].split(", which", 1)[0].replace("pid ", "PID ").rstrip(".")
    pid = lock.pid
    if pid is None:
        return "a process that has not written its PID yet (or an unreadable lock file)"
    return f"PID {pid} on this host ({socket.gethostname()})"


@contextmanager
def fold_lock(model_folder: str | Path, fold: int | str) -> Iterator[Path]:
    """Hold the lock of `fold` in `model_folder` for the duration of the block.

    Raises:
        FoldLockedError: another live run holds it.
    """
    path = fold_lock_path(model_folder, fold)
    lock = try_lock(path)
    logger.debug("holding %s", path)
    try:
        yield path
    finally:
        lock.release()


@contextmanager
def all_fold_locks(model_folder: str | Path, folds: list[str]) -> Iterator[None]:
    """Hold the locks of several folds (e.g. before replacing a whole model folder).

    Raises:
        FoldLockedError: one of them is held by another run (none is kept then).
    """
    held: list[SoftFileLock] = []
    try:
        for fold in folds:
            held.append(try_lock(fold_lock_path(model_folder, fold)))
        yield
    finally:
        for lock in reversed(held):
            lock.release()
