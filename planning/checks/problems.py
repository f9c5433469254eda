"""Collecting problems and warnings: all problems are raised together as one `InvalidDataError`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from dnnunet_core.errors import InvalidDataError

logger = logging.getLogger(__name__)


_MAX_WARNINGS_PER_KIND = 5


class Warnings:
    """Collects warnings; per-file warnings of one kind are summarised when there are many."""

    def __init__(self, root: Path):
        self.root = root
        self.items: list[tuple[str, str, str]] = []  # (kind, display path, message)

    def add(self, kind: str, path: Path | str, message: str) -> None:
        self.items.append((kind, _display(path, self.root), message))

    def extend(self, items: Iterable[tuple[str, str, str]]) -> None:
        for kind, path, message in items:
            self.add(kind, path, message)

    def summary(self) -> list[str]:
        by_kind: dict[str, list[tuple[str, str]]] = {}
        for kind, path, message in self.items:
            by_kind.setdefault(kind, []).append((path, message))
        out = []
        for kind, entries in by_kind.items():
            if len(entries) <= _MAX_WARNINGS_PER_KIND:
                out.extend(f"{p}: {m}" for p, m in entries)
            else:
                shown = ", ".join(p for p, _ in entries[:3])
                out.append(f"{len(entries)} files: {entries[0][1]} (e.g. {shown})")
        return out


def _display(path: Path | str, root: Path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def raise_if_problems(root: Path, problems: list[tuple[Path, str]], what: str = "planning") -> None:
    """Raise one InvalidDataError listing every problem (a single problem names its file directly)."""
    if not problems:
        return
    if len(problems) == 1:
        path, message = problems[0]
        error = InvalidDataError(path, message)
    else:
        lines = "\n".join(f"  {_display(p, root)}: {m}" for p, m in problems)
        error = InvalidDataError(root, f"{len(problems)} problems found; fix them all before {what}:\n{lines}")
    error.problems = [(str(p), m) for p, m in problems]
    logger.debug("%d problem(s) in %s", len(problems), root)
    raise error
