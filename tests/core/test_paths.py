"""Environment defaults set on import: nnU-Net's folders, worker counts, OpenMP waiting."""
from __future__ import annotations

import os

from dnnunet_core import paths


def test_defaults_fill_only_unset_variables(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DNNUNET_DATA", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", "/somewhere/else")
    paths.set_default_environment()
    assert paths.raw() == tmp_path / "nnUNet_raw" and paths.preprocessed() == tmp_path / "nnUNet_preprocessed"
    assert str(paths.results()) == "/somewhere/else"  # a user's setting wins
    assert 1 <= int(os.environ["nnUNet_def_n_proc"]) <= 2
    assert os.environ["GOMP_SPINCOUNT"] == "1000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    paths.set_default_environment()
    assert os.environ["GOMP_SPINCOUNT"] == "300000"
