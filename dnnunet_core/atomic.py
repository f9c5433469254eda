"""Atomic writes: outputs are either complete or absent, never half-written.

Every writer goes to a temporary file in the destination folder (same file system), then
`os.replace` moves it into place, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only for an instant)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; move it into place if the block succeeds.

    Args:
        destination: final file path.
        suffix: suffix of the temporary file (some writers choose the format by extension);
            defaults to the destination's full suffix (e.g. ``.nii.gz``).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(destination.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=f".tmp{suffix}", dir=destination.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode an ordinary write would, so that
        # a shared group can read models and predictions
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, destination)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(obj: Any, destination: str | os.PathLike, indent: int = 2) -> None:
    """Write `obj` as JSON atomically."""
    with atomic_path(destination) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())


def write_text(text: str, destination: str | os.PathLike) -> None:
    """Write text atomically."""
    with atomic_path(destination) as tmp:
        Path(tmp).write_text(text)
