"""The package layers of docs/architecture.md: core -> planning -> diffusion_nnunet, never back."""
import ast
import subprocess
import sys
from pathlib import Path

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


# ---------------------------------------------------------------- static: every import statement
# The runtime check above misses imports inside functions that a walk does not run; these read
# every `import` of every module (function bodies included) from the source.
ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(source: str, package: str) -> set[str]:
    """Every module an `import` or `from ... import` in `source` (a module of `package`) names,
    also `from pkg import module` and relative imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, `level` - 1 folders up
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _imports_of(package: str) -> dict[str, set[str]]:
    folder = ROOT.joinpath(*package.split("."))
    modules = {str(p.relative_to(ROOT)): _imported_modules(p.read_text(), ".".join(p.relative_to(ROOT).parts[:-1]))
               for p in sorted(folder.rglob("*.py"))}
    assert modules, f"no modules under {folder}"
    return modules


def _within(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


@pytest.mark.parametrize("package, forbidden", [
    ("diffusion_nnunet.inference", "diffusion_nnunet.training"),
    ("diffusion_nnunet.configs", "diffusion_nnunet.training"),
    ("diffusion_nnunet.configs", "diffusion_nnunet.inference"),
    ("diffusion_nnunet.networks", "diffusion_nnunet.training"),
    ("diffusion_nnunet.networks", "diffusion_nnunet.inference"),
    ("diffusion_nnunet.networks", "diffusion_nnunet.configs"),
    ("diffusion_nnunet.diffusion", "diffusion_nnunet.training"),
    ("diffusion_nnunet.diffusion", "diffusion_nnunet.inference"),
])
def test_no_import_statement_reaches_a_higher_layer(package, forbidden):
    offending = {module: sorted(n for n in names if _within(n, forbidden))
                 for module, names in _imports_of(package).items()}
    offending = {module: names for module, names in offending.items() if names}
    assert not offending, f"{package} must not import {forbidden} (docs/architecture.md): {offending}"


def test_the_static_check_sees_imports_inside_functions_and_relative_ones():
    source = "def f():\n    from diffusion_nnunet.training.base import DnnTrainer\n    from . import predictor\n" \
             "    from .. import training\n"
    names = _imported_modules(source, "diffusion_nnunet.inference")
    assert {"diffusion_nnunet.training.base", "diffusion_nnunet.inference.predictor",
            "diffusion_nnunet.training"} <= names


def test_the_nnunet_adapter_imports_nothing_of_ours():
    """`diffusion_nnunet/nnunet_adapter.py` sits below every package that uses it (networks too)."""
    path = ROOT / "diffusion_nnunet" / "nnunet_adapter.py"
    ours = sorted(n for n in _imported_modules(path.read_text(), "diffusion_nnunet")
                  if n.split(".")[0] in ("diffusion_nnunet", "planning", "dnnunet_core"))
    assert not ours, f"nnunet_adapter.py imports {ours}"
