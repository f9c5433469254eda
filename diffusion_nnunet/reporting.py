"""Figures and tables for reports: label-map overlays as PNG and result tables (Markdown, text).

Figures are drawn on a bare ``matplotlib.figure.Figure`` rendered by the Agg backend, so they
work without a display and never touch pyplot's global state; every PNG is written atomically.
matplotlib is imported only when a figure is drawn, so importing this module (e.g. for the
tables) stays cheap.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dnnunet_core.atomic import atomic_path
from dnnunet_core.errors import InvalidDataError, UserInputError

logger = logging.getLogger(__name__)

PANEL_INCHES = 3.0  # width and height of one panel
_OVERLAY_ALPHA = 0.5


# --------------------------------------------------------------------------------------------
# drawing helpers


def default_style(draw):
    """Draw with matplotlib's default style: nnunetv2's progress plot sets a seaborn font scale of
    2.5 for the whole process on import, which made titles overlap."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}):
            return draw(*args, **kwargs)

    return wrapper


def _new_figure(n_rows: int, n_cols: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL_INCHES * n_cols, PANEL_INCHES * n_rows), dpi=100, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


def _save_png(fig, output_png: str | os.PathLike) -> Path:
    output_png = Path(output_png)
    with atomic_path(output_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    logger.info("wrote %s", output_png)
    return output_png


def _display_range(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def _label_colours(max_label: int) -> np.ndarray:
    """RGBA colour per label value 0..max_label (0 transparent), from a qualitative colormap."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if max_label <= 10 else "tab20"]
    colours = np.array([cmap(i % cmap.N) for i in range(max(max_label, 1))], dtype=float)
    colours[:, 3] = _OVERLAY_ALPHA
    return np.concatenate([np.zeros((1, 4)), colours], axis=0)


def _draw_image(ax, image: np.ndarray, aspect: float = 1.0) -> None:
    lo, hi = _display_range(image)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_overlay(ax, image: np.ndarray, labels: np.ndarray, colours: np.ndarray, aspect: float = 1.0) -> None:
    _draw_image(ax, image, aspect)
    lab = np.clip(np.asarray(labels).astype(np.int64), 0, len(colours) - 1)
    ax.imshow(colours[lab], interpolation="nearest", aspect=aspect)


def _check_2d(name: str, arr: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise UserInputError(f"{name}: expected a 2D slice, got shape {np.shape(arr)}")
    if shape is not None and arr.shape != shape:
        raise UserInputError(f"{name}: shape {arr.shape} differs from the image's {shape}")
    return arr


# --------------------------------------------------------------------------------------------
# figures


@default_style
def overlay_png(image: np.ndarray, masks: Mapping[str, np.ndarray], output_png: str | os.PathLike,
                title: str | None = None, extra_maps: Mapping[str, np.ndarray] | None = None,
                aspect: float = 1.0) -> Path:
    """One row of panels: the image, each label map overlaid on it, and continuous maps.

    Args:
        image: 2D slice (singleton axes are squeezed).
        masks: panel title -> integer label map of the image's shape (e.g. reference,
            prediction); labels share colours across panels, 0 is transparent.
        output_png: destination PNG (written atomically).
        title: figure title.
        extra_maps: panel title -> continuous map (e.g. uncertainty), shown with a colourbar.
        aspect: pixel height / width (row spacing / column spacing) for anisotropic slices.

    Returns:
        The PNG path.
    """
    image = _check_2d("image", image)
    masks = {k: _check_2d(k, v, image.shape) for k, v in masks.items()}
    extra_maps = {k: _check_2d(k, v, image.shape) for k, v in (extra_maps or {}).items()}
    max_label = max([int(np.max(m)) for m in masks.values() if m.size] + [1])
    colours = _label_colours(max_label)

    fig, axes = _new_figure(1, 1 + len(masks) + len(extra_maps))
    axes = axes[0]
    _draw_image(axes[0], image, aspect)
    axes[0].set_title("image")
    for ax, (name, m) in zip(axes[1:], masks.items()):
        _draw_overlay(ax, image, m, colours, aspect)
        ax.set_title(name)
    for ax, (name, m) in zip(axes[1 + len(masks):], extra_maps.items()):
        im = ax.imshow(m, cmap="magma", interpolation="nearest", aspect=aspect)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    return _save_png(fig, output_png)


def _read_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Array and spacing in numpy axis order; singleton axes dropped, colour averaged to grey."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InvalidDataError(path, f"cannot be read as an image ({str(e).strip().splitlines()[-1]})") from None
    arr = sitk.GetArrayFromImage(img)
    spacing = list(img.GetSpacing()[::-1])
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = arr.mean(axis=-1)
    keep = [i for i, s in enumerate(arr.shape) if s > 1]
    if len(keep) < arr.ndim and len(keep) >= 2:
        arr = arr.reshape([arr.shape[i] for i in keep])
        spacing = [spacing[i] for i in keep]
    if arr.ndim not in (2, 3):
        raise InvalidDataError(path, f"has shape {arr.shape}; only 2D and 3D images can be shown")
    return arr, tuple(float(s) for s in spacing)


def _case_name(image_file: Path, file_ending: str) -> str:
    name = image_file.name
    if name.endswith(file_ending):
        name = name[: -len(file_ending)]
    return re.sub(r"_\d{4}$", "", name)  # nnU-Net's channel suffix


def most_foreground_slice(segmentations: Sequence[np.ndarray]) -> int:
    """Index along the first axis of the slice with the most foreground (label > 0).

    Args:
        segmentations: 3D label maps in order of preference (e.g. reference, then predictions);
            the first one with any foreground decides. None has any: the middle slice.
    """
    for seg in segmentations:
        counts = (np.asarray(seg) > 0).reshape(seg.shape[0], -1).sum(axis=1)
        if counts.any():
            return int(np.argmax(counts))
    return int(segmentations[0].shape[0] // 2)


@default_style
def overlay_cases_png(image_files: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
                      prediction_dirs: Mapping[str, str | os.PathLike],
                      reference_dir: str | os.PathLike | None, output_png: str | os.PathLike,
                      max_cases: int = 4, file_ending: str = ".nii.gz",
                      map_dirs: Mapping[str, tuple[str | os.PathLike, str]] | None = None) -> Path:
    """A grid of overlays: one row per case; columns image, reference, each prediction folder, maps.

    For 3D images the axial slice (first numpy axis) with the most reference foreground is
    shown (without reference: the most foreground of the first prediction; else the middle).

    Args:
        image_files: image file per case, as a list (case name = file name without the ending
            and without nnU-Net's ``_0000`` channel suffix) or a mapping case -> file.
        prediction_dirs: column title -> folder holding ``<case><file_ending>`` label maps.
        reference_dir: folder of reference label maps, or None for no reference column.
        output_png: destination PNG (written atomically).
        max_cases: at most this many cases (the first ones, in the given order).
        file_ending: file ending of images and segmentations.
        map_dirs: column title -> (folder, suffix) of continuous maps ``<case><suffix><file_ending>``
            (e.g. PD-DDPM's entropy: ``(OUT/uncertainty, "_entropy")``), drawn after the label
            columns with one colour scale per column.

    Returns:
        The PNG path.

    Raises:
        UserInputError: no images or max_cases < 1.
        InvalidDataError: a missing or mismatching segmentation (the message names the file).
    """
    if isinstance(image_files, Mapping):
        cases = [(str(k), Path(v)) for k, v in image_files.items()]
    else:
        cases = [(_case_name(Path(f), file_ending), Path(f)) for f in image_files]
    if not cases:
        raise UserInputError("no image files given for the overlay figure")
    if max_cases < 1:
        raise UserInputError(f"max_cases must be >= 1, got {max_cases}")
    cases = cases[:max_cases]

    columns: list[tuple[str, Path]] = []
    if reference_dir is not None:
        columns.append(("reference", Path(reference_dir)))
    columns += [(str(k), Path(v)) for k, v in prediction_dirs.items()]

    maps = [(str(k), Path(v[0]), v[1]) for k, v in (map_dirs or {}).items()]
    rows = []
    max_label = 1
    for case, image_file in cases:
        image, spacing = _read_volume(image_file)
        segs, extra = [], []
        for col, folder, suffix in maps:
            f = folder / f"{case}{suffix}{file_ending}"
            if not f.is_file():
                raise InvalidDataError(f, f"missing: no {col} map for case {case}")
            extra.append(_read_volume(f)[0].astype(float))
            if extra[-1].shape != image.shape:
                raise InvalidDataError(f, f"shape {extra[-1].shape} differs from the image's {image.shape}")
        for col, folder in columns:
            f = folder / f"{case}{file_ending}"
            if not f.is_file():
                raise InvalidDataError(f, f"missing: no {col} segmentation for case {case}")
            seg, _ = _read_volume(f)
            if seg.shape != image.shape:
                raise InvalidDataError(f, f"shape {seg.shape} differs from the image's {image.shape} ({image_file})")
            segs.append(np.rint(seg).astype(np.int64))
        if image.ndim == 3:
            z = most_foreground_slice(segs) if segs else image.shape[0] // 2
            image, segs, extra, spacing = image[z], [s[z] for s in segs], [m[z] for m in extra], spacing[1:]
            case = f"{case} (slice {z})"
        max_label = max([max_label] + [int(s.max()) for s in segs])
        rows.append((case, image, segs, extra, spacing[0] / spacing[1]))

    colours = _label_colours(max_label)
    vmax = [max([float(np.nanmax(r[3][m])) for r in rows] + [1e-6]) for m in range(len(maps))]
    fig, axes = _new_figure(len(rows), 1 + len(columns) + len(maps))
    for r, (case, image, segs, extra, aspect) in enumerate(rows):
        _draw_image(axes[r, 0], image, aspect)
        axes[r, 0].set_ylabel(case)
        for c, seg in enumerate(segs, start=1):
            _draw_overlay(axes[r, c], image, seg, colours, aspect)
        for m, values in enumerate(extra):
            ax = axes[r, 1 + len(columns) + m]
            im = ax.imshow(values, cmap="magma", vmin=0.0, vmax=vmax[m], interpolation="nearest", aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == len(rows) - 1:
                fig.colorbar(im, ax=axes[:, 1 + len(columns) + m], fraction=0.05, shrink=0.6)
    for c, name in enumerate(["image"] + [n for n, _ in columns] + [n for n, _, _ in maps]):
        axes[0, c].set_title(name)
    return _save_png(fig, output_png)


# --------------------------------------------------------------------------------------------
# tables


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _fmt(v: Any, float_format: str) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return "n/a" if math.isnan(v) else float_format.format(float(v))
    return str(v)


def _cells(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], float_format: str):
    if not columns:
        raise UserInputError("a table needs at least one column")
    body = [[_fmt(r.get(c), float_format) for c in columns] for r in rows]
    numeric = [bool(rows) and all(_is_number(r.get(c)) or r.get(c) is None for r in rows) for c in columns]
    return body, numeric


def results_table_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                           float_format: str = "{:.4f}") -> str:
    """A GitHub-flavoured Markdown table.

    Args:
        rows: one dict per row; missing keys, None and NaN are shown as ``n/a``.
        columns: keys to show, in order (also the header).
        float_format: format of floats.

    Returns:
        The table, one line per row, ending with a newline; numeric columns are right-aligned.
    """
    body, numeric = _cells(rows, columns, float_format)

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(str(c)) for c in columns) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def results_table_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                       float_format: str = "{:.4f}") -> str:
    """A fixed-width plain-text table for the terminal.

    Args:
        rows: one dict per row; missing keys, None and NaN are shown as ``n/a``.
        columns: keys to show, in order (also the header).
        float_format: format of floats.

    Returns:
        The table (header, rule, rows), ending with a newline; numbers are right-aligned.
    """
    body, numeric = _cells(rows, columns, float_format)
    header = [str(c) for c in columns]
    widths = [max([len(header[i])] + [len(row[i]) for row in body]) for i in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in body]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the review list as pictures


def _slice_for_sheet(image: np.ndarray, seg: np.ndarray, entropy: np.ndarray):
    """2D panels of one case: 3D volumes show the slice with the most predicted foreground."""
    image, seg, entropy = (np.squeeze(np.asarray(a)) for a in (image, seg, entropy))
    if not image.shape == seg.shape == entropy.shape:
        raise UserInputError(f"image {image.shape}, prediction {seg.shape} and entropy {entropy.shape} differ")
    if image.ndim == 3:
        z = most_foreground_slice([seg])
        return image[z], seg[z], entropy[z], z
    return image, seg, entropy, None


@default_style
def uncertainty_contact_sheet(cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, str]],
                              output_png: str | os.PathLike, max_cases: int = 16,
                              title: str | None = None) -> Path:
    """One row per case, in the given order (least certain first): image, prediction, entropy.

    Args:
        cases: ``(case, image, prediction, entropy map, caption)`` per case, 2D or 3D arrays of one
            shape (3D: the slice with the most predicted foreground); the caption (e.g. the score)
            is shown beside the case name. The entropy colour scale is shared by all rows.
        output_png: destination PNG (written atomically).
        max_cases: at most this many rows (the first ones).
        title: figure title.

    Raises:
        UserInputError: no cases, max_cases < 1 or mismatching shapes.
    """
    from matplotlib.figure import Figure

    if not cases:
        raise UserInputError("no cases for the contact sheet")
    if max_cases < 1:
        raise UserInputError(f"max_cases must be >= 1, got {max_cases}")
    rows = []
    for case, image, seg, entropy, caption in cases[:max_cases]:
        image, seg, entropy, z = _slice_for_sheet(image, seg, entropy)
        rows.append((case if z is None else f"{case} (slice {z})", image, np.rint(seg).astype(np.int64),
                     entropy, caption))
    colours = _label_colours(max([1] + [int(r[2].max()) for r in rows]))
    vmax = max([float(np.nanmax(r[3])) for r in rows] + [1e-6])
    fig = Figure(figsize=(2.2 * 3, 2.2 * len(rows) + 0.4), dpi=100, layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (case, image, seg, entropy, caption) in enumerate(rows):
        _draw_image(axes[r, 0], image)
        axes[r, 0].set_ylabel(f"{r + 1}. {case}\n{caption}", fontsize=8)
        _draw_overlay(axes[r, 1], image, seg, colours)
        im = axes[r, 2].imshow(entropy, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        axes[r, 2].set_xticks([])
        axes[r, 2].set_yticks([])
    for c, name in enumerate(("image", "prediction", "entropy (nats)")):
        axes[0, c].set_title(name)
    fig.colorbar(im, ax=axes[:, 2], fraction=0.05, shrink=min(1.0, 3.0 / len(rows)))
    fig.suptitle(title or f"least certain first ({len(rows)} of {len(cases)} cases)")
    return _save_png(fig, output_png)


def contact_sheet_from_folder(prediction_dir: str | os.PathLike, image_for_case, order: Sequence[str],
                              captions: Mapping[str, str], output_png: str | os.PathLike, max_cases: int = 16,
                              file_ending: str = ".nii.gz") -> Path:
    """`uncertainty_contact_sheet` from a prediction folder: CASE.nii.gz and uncertainty/CASE_entropy.

    Args:
        prediction_dir: the prediction folder (segmentations, uncertainty/ maps).
        image_for_case: callable case -> the case's first image file.
        order: cases, least certain first.
        captions: case -> caption (e.g. ``disagreement 0.12``).
        output_png: destination.
        max_cases: at most this many rows.
        file_ending: segmentation file ending.

    Raises:
        InvalidDataError: a segmentation or entropy map is missing.
    """
    folder = Path(prediction_dir)
    cases = []
    for case in order[:max_cases]:
        seg_file = folder / f"{case}{file_ending}"
        entropy_file = folder / "uncertainty" / f"{case}_entropy{file_ending}"
        for f in (seg_file, entropy_file):
            if not f.is_file():
                raise InvalidDataError(f, "missing (the contact sheet needs the prediction and its entropy map)")
        image, _ = _read_volume(Path(image_for_case(case)))
        seg, _ = _read_volume(seg_file)
        entropy, _ = _read_volume(entropy_file)
        cases.append((case, image, seg, entropy, captions.get(case, "")))
    return uncertainty_contact_sheet(cases, output_png, max_cases, title=f"{folder.name}: least certain first")
