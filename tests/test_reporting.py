"""Tests of diffusion_nnunet.reporting: overlay PNGs and result tables."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from diffusion_nnunet.reporting import (
    PANEL_INCHES,
    most_foreground_slice,
    overlay_cases_png,
    overlay_png,
    results_table_markdown,
    results_table_text,
)
from dnnunet_core.errors import InvalidDataError, UserInputError

PX = int(PANEL_INCHES * 100)  # panel size in pixels at the figures' 100 dpi


def png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size  # (width, height)


def write(path, arr, spacing_xyz):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def test_overlay_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(32, 40))
    ref = np.zeros((32, 40), np.uint8)
    ref[5:20, 8:30] = 1
    ref[10:15, 12:20] = 2
    pred = np.roll(ref, 2, axis=1)
    out = overlay_png(image, {"reference": ref, "prediction": pred}, tmp_path / "figs" / "a.png", title="case 1")
    assert png_size(out) == (3 * PX, PX)
    out2 = overlay_png(image[None], {"reference": ref}, tmp_path / "b.png",
                       extra_maps={"uncertainty": rng.random((32, 40)), "entropy": rng.random((32, 40))})
    assert png_size(out2) == (4 * PX, PX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "figs"]  # no temporary files left


def make_cases(root, n):
    files = []
    for i in range(n):
        img = np.random.default_rng(i).normal(size=(6, 20, 24)).astype(np.float32)
        ref = np.zeros((6, 20, 24), np.uint8)
        ref[4, 5:15, 5:15] = 1
        ref[2, 8:10, 8:10] = 1
        f = root / "imagesTs" / f"case{i}_0000.nii.gz"
        write(f, img, (0.8, 0.8, 3.0))
        write(root / "labels" / f"case{i}.nii.gz", ref, (0.8, 0.8, 3.0))
        write(root / "predA" / f"case{i}.nii.gz", np.roll(ref, 1, axis=2), (0.8, 0.8, 3.0))
        write(root / "predB" / f"case{i}.nii.gz", ref * 2, (0.8, 0.8, 3.0))
        files.append(f)
    return files


def test_overlay_cases_grid_grows_with_cases(tmp_path):
    files = make_cases(tmp_path, 3)
    preds = {"model A": tmp_path / "predA", "model B": tmp_path / "predB"}
    one = overlay_cases_png(files, preds, tmp_path / "labels", tmp_path / "one.png", max_cases=1)
    three = overlay_cases_png(files, preds, tmp_path / "labels", tmp_path / "three.png", max_cases=4)
    assert png_size(one) == (4 * PX, PX)        # image, reference, 2 predictions
    assert png_size(three) == (4 * PX, 3 * PX)  # 3 cases (fewer than max_cases)
    no_ref = overlay_cases_png({"case0": files[0]}, preds, None, tmp_path / "noref.png")
    assert png_size(no_ref) == (3 * PX, PX)


def test_overlay_cases_missing_prediction(tmp_path):
    files = make_cases(tmp_path, 1)
    (tmp_path / "predB" / "case0.nii.gz").unlink()
    with pytest.raises(InvalidDataError, match=r"predB/case0.nii.gz.*model B"):
        overlay_cases_png(files, {"model B": tmp_path / "predB"}, tmp_path / "labels", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_most_foreground_slice():
    ref = np.zeros((5, 4, 4), np.uint8)
    ref[3, :2, :2] = 1
    ref[1, :1, :1] = 1
    pred = np.zeros_like(ref)
    pred[0] = 1
    assert most_foreground_slice([ref, pred]) == 3
    assert most_foreground_slice([np.zeros_like(ref), pred]) == 0   # empty reference: next one decides
    assert most_foreground_slice([np.zeros_like(ref)]) == 2         # nothing: middle slice


ROWS = [{"model": "A|B", "Dice": 0.91234, "HD95": 3.5, "cases": 12},
        {"model": "C", "Dice": math.nan, "HD95": None, "cases": 3}]


def test_markdown_table():
    md = results_table_markdown(ROWS, ["model", "Dice", "HD95", "cases"])
    lines = md.strip().splitlines()
    assert lines[0] == "| model | Dice | HD95 | cases |"
    assert lines[1] == "|:---|---:|---:|---:|"
    assert lines[2] == "| A\\|B | 0.9123 | 3.5000 | 12 |"
    assert lines[3] == "| C | n/a | n/a | 3 |"


def test_text_table():
    txt = results_table_text(ROWS, ["model", "Dice", "cases"], float_format="{:.2f}")
    lines = txt.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["model", "Dice", "cases"]
    assert lines[2].split() == ["A|B", "0.91", "12"]
    assert lines[3].split() == ["C", "n/a", "3"]
    # numbers right-aligned in fixed-width columns
    assert lines[2].index("0.91") + 4 == lines[3].index("n/a") + 3


def test_titles_keep_the_default_size_when_seaborn_scaled_the_fonts(tmp_path, monkeypatch):
    """nnunetv2 calls seaborn.set(font_scale=2.5) on import; our figures must not inherit it."""
    import matplotlib
    import seaborn

    from diffusion_nnunet import reporting

    drawn = []
    monkeypatch.setattr(reporting, "_save_png", lambda fig, out: drawn.append(fig) or out)
    with matplotlib.rc_context():
        seaborn.set_theme(font_scale=2.5)
        scaled = matplotlib.rcParams["font.size"]
        overlay_png(np.zeros((8, 8)), {"prediction": np.zeros((8, 8), np.uint8)}, tmp_path / "a.png", title="t")
        assert matplotlib.rcParams["font.size"] == scaled  # the caller's style is left as it was
    titles = [ax.title.get_fontsize() for ax in drawn[0].axes if ax.get_title()]
    default = matplotlib.font_manager.FontProperties(size=matplotlib.rcParamsDefault["axes.titlesize"])
    assert scaled > 2 * matplotlib.rcParamsDefault["font.size"]
    assert titles and all(size <= default.get_size_in_points() + 0.01 for size in titles)


def test_uncertainty_contact_sheet_has_one_row_per_case(tmp_path):
    from diffusion_nnunet.reporting import uncertainty_contact_sheet

    rng = np.random.default_rng(0)
    cases = []
    for i in range(5):
        image = rng.random((16, 16))
        seg = np.zeros((16, 16), np.int64)
        seg[4:4 + i + 2, 4:10] = 1
        cases.append((f"case_{i}", image, seg, rng.random((16, 16)) * i, f"score {i}"))
    small = uncertainty_contact_sheet(cases[:2], tmp_path / "small.png")
    big = uncertainty_contact_sheet(cases, tmp_path / "big.png", max_cases=4)
    with Image.open(small) as a, Image.open(big) as b:
        assert b.size[1] > 1.5 * a.size[1] and a.size[0] == b.size[0]  # one row per case, 3 columns
    vol = np.zeros((3, 16, 16))
    seg3 = np.zeros((3, 16, 16), np.int64)
    seg3[2, 2:8, 2:8] = 1
    assert uncertainty_contact_sheet([("v", vol, seg3, vol, "")], tmp_path / "vol.png").is_file()
    with pytest.raises(UserInputError, match="differ"):
        uncertainty_contact_sheet([("bad", np.zeros((4, 4)), np.zeros((5, 5)), np.zeros((4, 4)), "")],
                                  tmp_path / "bad.png")


def test_overlay_cases_with_an_entropy_column(tmp_path):
    files = make_cases(tmp_path, 2)
    for case in ("case0", "case1"):
        ref = sitk.ReadImage(str(tmp_path / "labels" / f"{case}.nii.gz"))
        entropy = np.random.default_rng(0).random(sitk.GetArrayFromImage(ref).shape).astype(np.float32)
        write(tmp_path / "unc" / f"{case}_entropy.nii.gz", entropy, ref.GetSpacing())
    preds = {"model A": tmp_path / "predA"}
    png = overlay_cases_png(files, preds, tmp_path / "labels", tmp_path / "maps.png",
                            map_dirs={"entropy": (tmp_path / "unc", "_entropy")})
    assert png_size(png) == (4 * PX, 2 * PX)  # image, reference, prediction, entropy
    (tmp_path / "unc" / "case1_entropy.nii.gz").unlink()
    with pytest.raises(InvalidDataError, match="no entropy map for case case1"):
        overlay_cases_png(files, preds, tmp_path / "labels", tmp_path / "y.png",
                          map_dirs={"entropy": (tmp_path / "unc", "_entropy")})
