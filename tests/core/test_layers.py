"""The package layers of docs/architecture.md: core -> planning -> diffusion_nnunet, never back."""
import subprocess
import sys

import pytest

_IMPORT_ALL = """
import importlib, pkgutil, sys
import {package}
for info in pkgutil.walk_packages({package}.__path__, "{package}."):
    importlib.import_module(info.name)
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in ("dnnunet_core", "planning", "diffusion_nnunet"))))
"""


def _loaded_by(package: str) -> set[str]:
    """Our modules in sys.modules after importing every module of `package` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL.format(package=package)], capture_output=True,
                         text=True, check=True, timeout=120)
    return set(out.stdout.strip().split(","))


@pytest.mark.parametrize("package, forbidden", [("planning", "diffusion_nnunet"),
                                                ("dnnunet_core", "planning"),
                                                ("dnnunet_core", "diffusion_nnunet")])
def test_lower_layer_imports_no_higher_one(package, forbidden):
    loaded = _loaded_by(package)
    assert any(m.startswith(package + ".") for m in loaded), loaded  # the walk imported something
    higher = sorted(m for m in loaded if m.split(".")[0] == forbidden)
    assert not higher, f"importing {package} loaded {higher}"
