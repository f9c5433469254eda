"""Environment defaults set on import: nnU-Net's folders, worker counts, OpenMP waiting."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

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


_SEEN_AT_TORCH_IMPORT = """
import os, sys
class Spy:  # records the environment when torch (which OpenMP reads GOMP_SPINCOUNT with) is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "seen" not in globals():
            globals()["seen"] = (os.environ.get("GOMP_SPINCOUNT"), os.environ.get("nnUNet_raw"))
sys.meta_path.insert(0, Spy())
import {module}
import torch  # noqa: F401  (modules that do not import torch themselves)
print(seen)
"""


@pytest.mark.parametrize("module", ["dnnunet_core", "planning.fingerprint", "planning.pipeline", "planning.checks",
                                    "diffusion_nnunet.training.run"])
def test_importing_any_top_package_sets_the_defaults_before_torch(module, tmp_path):
    """planning's modules import nnunetv2 (so torch) first in their import lists: the package must set them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") and k not in ("DNNUNET_DATA",
                                                                                             "GOMP_SPINCOUNT")}
    env["DNNUNET_DATA"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", _SEEN_AT_TORCH_IMPORT.format(module=module)], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == repr(("1000", str(tmp_path / "nnUNet_raw")))
