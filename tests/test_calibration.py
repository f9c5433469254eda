"""Expected calibration error and the reliability diagram (diffusion_nnunet.calibration)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.calibration import calibration_of_arrays, evaluate_calibration, reliability_png


def test_ece_matches_a_hand_computation():
    # 2 classes, 6 voxels. p(class 1) = .9 .9 .8 .3 .1 .05, reference 1 1 0 1 0 0; 10 bins
    p1 = np.array([0.9, 0.9, 0.8, 0.3, 0.1, 0.05])
    probs = np.stack([1 - p1, p1])[:, None, :]  # (C, 1, 6)
    reference = np.array([[1, 1, 0, 1, 0, 0]])
    r = calibration_of_arrays([(probs, reference)], ["background", "fg"], num_bins=10)
    # class 1 bins: [.9,1): .9,.9 -> |1.8-2|=.2; [.8,.9): .8 -> |.8-0|=.8; [.3,.4): .3 -> |.3-1|=.7;
    # [.1,.2): .1 -> .1; [0,.1): .05 -> .05.  ECE = (.2+.8+.7+.1+.05)/6
    assert r["ece_per_class"]["fg"] == pytest.approx(1.85 / 6)
    # top label: confidences .9 .9 .8 .7 .9 .95, correct 1 1 0 0 1 1
    # [.9,1): .9,.9,.9,.95 (4 correct) -> |3.65-4| = .35; [.8,.9): .8 wrong -> .8; [.7,.8): .7 wrong -> .7
    assert r["ece"] == pytest.approx((0.35 + 0.8 + 0.7) / 6)
    assert r["num_voxels"] == 6
    # the background's bins mirror the foreground's: 1 - p with the complementary truth
    assert r["ece_per_class"]["background"] == pytest.approx(1.85 / 6)


def test_perfectly_confident_and_right_has_zero_ece():
    ref = np.array([[0, 1, 2, 1]])
    probs = np.eye(3)[ref].transpose(2, 0, 1).astype(np.float32)  # probability exactly 1
    r = calibration_of_arrays([(probs, ref)], ["a", "b", "c"])
    assert r["ece"] == 0.0 and all(v == 0.0 for v in r["ece_per_class"].values())


def test_folders_are_averaged_and_the_diagram_is_drawn(tmp_path):
    ref = np.array([[0, 1], [1, 1]], np.uint8)
    (tmp_path / "ref").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(ref), str(tmp_path / "ref" / "c1.nii.gz"))
    ds = {"labels": {"background": 0, "fg": 1}, "file_ending": ".nii.gz"}
    for name, p in (("a", 1.0), ("b", 0.6)):  # foreground probability everywhere
        (tmp_path / name).mkdir()
        probs = np.stack([np.full((1, 2, 2), 1 - p), np.full((1, 2, 2), p)]).astype(np.float32)
        np.savez_compressed(tmp_path / name / "c1.npz", probabilities=probs)
        (tmp_path / name / "dataset.json").write_text(json.dumps(ds))
    single = evaluate_calibration(tmp_path / "ref", [tmp_path / "a"])
    both = evaluate_calibration(tmp_path / "ref", [tmp_path / "a", tmp_path / "b"])
    assert single["ece"] == pytest.approx(0.25)  # confidence 1, 3 of 4 right
    assert both["ece"] == pytest.approx(0.05)  # confidence .8 everywhere, 3 of 4 right
    png = reliability_png(both, tmp_path / "rel.png", "test")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_calibration_command(tmp_path, capsys):
    from diffusion_nnunet.cli.main import main

    ref = np.array([[0, 1], [1, 1]], np.uint8)
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(ref), str(tmp_path / "ref" / "c1.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.ones_like(ref)), str(tmp_path / "pred" / "c1.nii.gz"))
    probs = np.stack([np.full((1, 2, 2), 0.2), np.full((1, 2, 2), 0.8)]).astype(np.float32)
    np.savez_compressed(tmp_path / "pred" / "c1.npz", probabilities=probs)
    (tmp_path / "pred" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "fg": 1},
                                                                "file_ending": ".nii.gz"}))
    assert main(["evaluate", "-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--calibration"]) == 0
    assert "ECE (top label" in capsys.readouterr().out
    saved = json.loads((tmp_path / "pred" / "calibration.json").read_text())
    assert saved["ece"] == pytest.approx(0.05) and (tmp_path / "pred" / "reliability.png").is_file()
    (tmp_path / "pred" / "c1.npz").unlink()
    assert main(["evaluate", "-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--calibration"]) == 2
    assert "--save-probabilities" in capsys.readouterr().err
