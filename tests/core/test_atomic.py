"""issue 15 (smaller ones): atomic writes get the mode an ordinary write would, not mkstemp's 0600."""
from __future__ import annotations

import os
import stat

import pytest

from dnnunet_core.atomic import atomic_path, write_json, write_text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json({"a": 1}, tmp_path / "plans.json")
        write_text("x", tmp_path / "notes.txt")
        with atomic_path(tmp_path / "checkpoint_final.pth", suffix=".pth") as tmp:
            tmp.write_bytes(b"weights")
        ordinary = tmp_path / "ordinary.txt"
        ordinary.write_text("x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE(ordinary.stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("plans.json", "notes.txt", "checkpoint_final.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
