"""The first test cases of a raw dataset, linked into a folder of their own (benchmarks' `--max-cases`)."""
from __future__ import annotations

from pathlib import Path


def link_test_subset(images: Path, folder: Path, max_cases: int | None) -> Path:
    """`images` itself (None: every case), else `folder/imagesTs` with symlinks to the files of its
    first `max_cases` cases (by name; every channel of a case), made once and reused."""
    if max_cases is None:
        return images
    cases = sorted({p.name.rsplit("_", 1)[0] for p in images.glob("*_0000.nii.gz")})[:max_cases]
    subset = folder / "imagesTs"
    subset.mkdir(parents=True, exist_ok=True)
    for f in sorted(images.iterdir()):
        if f.name.rsplit("_", 1)[0] in cases and not (subset / f.name).exists():
            (subset / f.name).symlink_to(f)
    return subset
