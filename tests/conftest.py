"""Shared fixtures: every test gets its own nnU-Net folders (nnunetv2 reads them at call time)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Point nnUNet_raw / _preprocessed / _results at fresh folders under tmp_path."""
    dirs = {}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        d = tmp_path / name
        d.mkdir()
        monkeypatch.setenv(name, str(d))
        dirs[name] = d
    return dirs
