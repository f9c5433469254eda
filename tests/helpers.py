"""Helpers shared by several test modules (instead of tests importing each other)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def hold_lock_in_subprocess(lock_file: Path, seconds: int = 300) -> subprocess.Popen:
    """Another process that holds `lock_file` (filelock's soft lock, as a training run does) until
    it is killed or `seconds` pass; returns once the lock is held."""
    code = ("import sys, time; from filelock import SoftFileLock; l = SoftFileLock(sys.argv[1], timeout=0); "
            f"l.acquire(); print('held', flush=True); time.sleep({int(seconds)})")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc
