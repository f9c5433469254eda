"""issue 15 items 7-9: what a prediction run may do with its output folder (no model needed)."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from diffusion_nnunet.inference.output_folder import (
    ARGS_FILE,
    check_creatable_folder,
    claim_output_folder,
    prediction_settings,
)
from dnnunet_core.errors import UserInputError


def settings(tmp_path, **extra):
    return prediction_settings(tmp_path / "images", False, {"model": "m", "folds": [0], **extra})


def previous_run(folder, s):
    folder.mkdir(parents=True)
    (folder / ARGS_FILE).write_text(json.dumps(s))
    (folder / "old_case.nii.gz").write_text("old")
    (folder / "old_case.npz").write_text("old")


def test_a_folder_with_results_is_refused_without_a_flag(tmp_path):
    out = tmp_path / "out"
    previous_run(out, settings(tmp_path))
    with pytest.raises(UserInputError, match="--overwrite.*--continue-prediction"):
        with claim_output_folder(out, settings(tmp_path)):
            pytest.fail("must not be entered")
    assert sorted(p.name for p in out.iterdir()) == ["old_case.nii.gz", "old_case.npz", ARGS_FILE]


def test_a_fresh_folder_records_the_settings(tmp_path):
    out = tmp_path / "new" / "out"
    with claim_output_folder(out, settings(tmp_path)) as folder:
        assert folder == out
    assert json.loads((out / ARGS_FILE).read_text()) == settings(tmp_path)


def test_continue_needs_the_same_settings_and_names_the_differences(tmp_path):
    out = tmp_path / "out"
    previous_run(out, settings(tmp_path))
    with claim_output_folder(out, settings(tmp_path), continue_prediction=True):
        pass
    assert (out / "old_case.npz").is_file()  # kept: same settings
    with pytest.raises(UserInputError, match=r"other settings \(folds: \[0\] -> \[1\]; tile_step_size"):
        with claim_output_folder(out, settings(tmp_path, folds=[1], tile_step_size=0.25), continue_prediction=True):
            pytest.fail("must not be entered")
    # a speed-only setting (tiles per forward pass) is no other setting; a sampler setting is
    previous_run(tmp_path / "sampled", settings(tmp_path, diffusion={"num_samples": 4, "tile_batch": 1}))
    with claim_output_folder(tmp_path / "sampled", settings(tmp_path, diffusion={"num_samples": 4, "tile_batch": 3}),
                             continue_prediction=True):
        pass
    with pytest.raises(UserInputError, match="other settings"):
        with claim_output_folder(tmp_path / "sampled", settings(tmp_path, diffusion={"num_samples": 2}),
                                 continue_prediction=True):
            pytest.fail("must not be entered")
    (out / ARGS_FILE).unlink()
    with pytest.raises(UserInputError, match="no predict_args.json"):
        with claim_output_folder(out, settings(tmp_path), continue_prediction=True):
            pytest.fail("must not be entered")


def test_overwrite_replaces_the_folder_whole_and_a_failed_run_restores_it(tmp_path):
    out = tmp_path / "out"
    previous_run(out, settings(tmp_path, folds=[1]))
    with pytest.raises(RuntimeError, match="crash"):
        with claim_output_folder(out, settings(tmp_path), overwrite=True):
            assert not (out / "old_case.npz").exists()  # the new run never sees old files
            (out / "new_case.nii.gz").write_text("half")
            raise RuntimeError("crash")
    assert sorted(p.name for p in out.iterdir()) == ["old_case.nii.gz", "old_case.npz", ARGS_FILE]
    assert json.loads((out / ARGS_FILE).read_text())["folds"] == [1]
    with claim_output_folder(out, settings(tmp_path), overwrite=True):
        (out / "new_case.nii.gz").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new_case.nii.gz", ARGS_FILE]
    assert json.loads((out / ARGS_FILE).read_text())["folds"] == [0]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the old folder is deleted


def test_overwrite_refuses_a_folder_that_is_not_a_prediction_folder(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(UserInputError, match="not a prediction folder"):
        with claim_output_folder(out, settings(tmp_path), overwrite=True):
            pytest.fail("must not be entered")
    assert (out / "thesis.tex").read_text() == "precious"


def test_staging_of_a_dead_run_is_removed_and_of_a_live_run_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".partial-{dead.pid}").mkdir()
    (out / f".partial-{dead.pid}" / "case.nii.gz").write_text("half")
    with claim_output_folder(out, settings(tmp_path)):  # only the stale staging folder: the folder counts as empty
        pass
    assert not (out / f".partial-{dead.pid}").exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / f".partial-{live.pid}").mkdir()
        with pytest.raises(UserInputError, match=f"another prediction \\(process {live.pid}\\)"):
            with claim_output_folder(out, settings(tmp_path), overwrite=True):
                pytest.fail("must not be entered")
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_equal_to_or_inside_the_input_is_refused(tmp_path, where):
    images = tmp_path / "images"
    images.mkdir()
    out = images if where == "same" else images / "pred"
    with pytest.raises(UserInputError, match="input folder"):
        with claim_output_folder(out, settings(tmp_path)):
            pytest.fail("must not be entered")
    assert sorted(images.iterdir()) == []


def test_unusable_output_paths_are_named(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserInputError, match="a_file is an existing file"):
        check_creatable_folder(tmp_path / "a_file")
    long_name = tmp_path / ("x" * 300) / "out"
    with pytest.raises(UserInputError, match=r"300 bytes, more than the file system allows"):
        check_creatable_folder(long_name)
    assert not (tmp_path / ("x" * 300)[:200]).exists()


def _check_as_nobody(folder: str, queue) -> None:
    try:
        os.setgid(65534)
        os.setuid(65534)
        check_creatable_folder(Path(folder))
        queue.put("accepted")
    except UserInputError as err:
        queue.put(str(err))
    except BaseException as err:  # noqa: BLE001 - reported to the test
        queue.put(f"unexpected {type(err).__name__}: {err}")


def test_a_read_only_output_folder_is_refused_with_a_message():
    root = Path(tempfile.mkdtemp())  # pytest's tmp_path is private to root: an ordinary user cannot enter it
    try:
        root.chmod(0o755)
        ro = root / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        if os.geteuid() != 0:
            with pytest.raises(UserInputError, match="cannot write into the output folder .*ro.*read-only"):
                check_creatable_folder(ro)
            return
        # root writes everywhere: check as an ordinary user in a child process
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_check_as_nobody, args=(str(ro / "out"), queue))
        child.start()
        child.join(30)
        message = queue.get(timeout=5)
        assert "cannot write into the output folder" in message and "read-only" in message, message
    finally:
        shutil.rmtree(root, ignore_errors=True)
