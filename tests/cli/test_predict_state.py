"""issue 15 items 7-9 through the command line, with the session's tiny trained model."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from diffusion_nnunet.cli.main import main
from tests.conftest import DATASET_ID

pytestmark = pytest.mark.slow


def predict(raw, out, *extra):
    return main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-f", "0",
                 "--disable-tta", "-device", "cpu", *extra])


def test_a_second_run_needs_overwrite_or_the_same_settings(env, tmp_path, capsys):
    raw, out = env["raw"], tmp_path / "pred"
    assert predict(raw, out, "--save-probabilities") == 0
    cases = sorted(p.name for p in out.glob("*.nii.gz"))
    (out / "stale_case.npz").write_bytes((out / cases[0].replace(".nii.gz", ".npz")).read_bytes())
    capsys.readouterr()
    assert predict(raw, out) == 2  # refused: old probabilities would stay beside new segmentations
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "stale_case.npz").is_file()
    # --continue-prediction with other settings (no probabilities, mirroring): refused, keys named
    assert main(["predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-f", "0",
                 "-device", "cpu", "--continue-prediction", "--save-probabilities"]) == 2
    assert "use_mirroring: False -> True" in capsys.readouterr().err
    assert predict(raw, out, "--save-probabilities", "--continue-prediction") == 0  # same settings: kept
    assert predict(raw, out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".json")) == cases  # replaced whole
    assert json.loads((out / "predict_args.json").read_text())["save_probabilities"] is False


def test_output_equal_to_the_input_is_refused(env, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(env["raw"] / "imagesTs", images)
    before = sorted(p.name for p in images.iterdir())
    assert main(["predict", "-i", str(images), "-o", str(images), "-d", str(DATASET_ID), "-f", "0",
                 "-device", "cpu"]) == 2
    assert "input folder" in capsys.readouterr().err
    assert main(["predict", "-i", str(images), "-o", str(images / "pred"), "-d", str(DATASET_ID), "-f", "0",
                 "-device", "cpu"]) == 2
    assert sorted(p.name for p in images.iterdir()) == before


def test_predict_ensemble_output_inside_the_input_is_refused(env, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(env["raw"] / "imagesTs", images)
    before = sorted(p.name for p in images.iterdir())
    assert main(["predict-ensemble", "-i", str(images), "-o", str(images / "out"), "--nnunet", str(env["model"]),
                 "--diffusion", str(env["model"]), "-device", "cpu"]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in images.iterdir()) == before


def test_an_existing_file_as_output_is_refused(env, tmp_path, capsys):
    (tmp_path / "out.txt").write_text("x")
    assert predict(env["raw"], tmp_path / "out.txt") == 2
    assert "out.txt is an existing file" in capsys.readouterr().err


def test_a_truncated_checkpoint_is_named(env, tmp_path, capsys):
    model = tmp_path / env["model"].name
    shutil.copytree(env["model"], model)
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert main(["predict", "-m", str(model), "-f", "0", "-i", str(env["raw"] / "imagesTs"), "-o",
                 str(tmp_path / "out"), "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(checkpoint) in err and "truncated" in err
    torch.save({"something": 1}, checkpoint)  # a torch file, but not a checkpoint
    assert main(["predict", "-m", str(model), "-f", "0", "-i", str(env["raw"] / "imagesTs"), "-o",
                 str(tmp_path / "out"), "-device", "cpu"]) == 2
    assert "is not an nnU-Net checkpoint" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_plans_say_the_plans_changed(env, tmp_path, capsys):
    model = tmp_path / env["model"].name
    shutil.copytree(env["model"], model)
    plans = json.loads((model / "plans.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [2 * f for f in arch["features_per_stage"]]  # as a re-plan with a larger budget
    (model / "plans.json").write_text(json.dumps(plans))
    assert main(["predict", "-m", str(model), "-f", "0", "-i", str(env["raw"] / "imagesTs"), "-o",
                 str(tmp_path / "out"), "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_final.pth" in err and "plans changed since this fold was trained" in err
    assert not (tmp_path / "out").exists()


def test_after_a_kill_continue_prediction_completes_the_folder(env, tmp_path, capsys):
    """The state a kill -9 leaves: some cases moved in, a .partial-PID of the dead process."""
    import subprocess
    import sys

    raw, out = env["raw"], tmp_path / "pred"
    assert predict(raw, out, "--save-probabilities") == 0
    cases = sorted(p.name for p in out.glob("*.nii.gz"))
    for suffix in (".nii.gz", ".npz", ".pkl"):
        (out / cases[-1].replace(".nii.gz", suffix)).unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".partial-{dead.pid}").mkdir()
    (out / f".partial-{dead.pid}" / cases[-1]).write_bytes(b"half-written")
    kept = {c: (out / c).stat().st_mtime_ns for c in cases[:-1]}
    assert predict(raw, out, "--save-probabilities") == 2
    assert predict(raw, out, "--save-probabilities", "--continue-prediction") == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == cases
    assert {c: (out / c).stat().st_mtime_ns for c in cases[:-1]} == kept  # finished cases are not redone
    assert not list(out.glob(".partial-*"))
