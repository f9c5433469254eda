"""Whether a process id is alive: how our staging folders and claims tell stale from in-use."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists on this machine (also when another user owns it).

    Written here rather than taken from psutil: one `os.kill(pid, 0)` is all it needs, and psutil
    is not otherwise a dependency.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
