"""The command line turns bad input into one clear message and exit code 2, before any compute."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.cli.main import build_parser, main


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    for command in ("make-dataset", "plan-and-preprocess", "train", "predict", "ensemble", "predict-ensemble",
                    "evaluate", "demo", "ext-trainer-path"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: dnnunet " + command in capsys.readouterr().out


def test_unknown_dataset_id_is_reported_with_what_exists(nnunet_dirs, capsys):
    (nnunet_dirs["nnUNet_raw"] / "Dataset007_Real").mkdir()
    assert main(["plan-and-preprocess", "-d", "42"]) == 2
    err = capsys.readouterr().err
    assert "42" in err and "Dataset007_Real" in err


def test_unknown_trainer_lists_the_registered_ones(nnunet_dirs, capsys):
    assert main(["train", "--list-trainers", "-d", "1", "-f", "0"]) == 0
    assert "baseline" in capsys.readouterr().out
    (nnunet_dirs["nnUNet_preprocessed"] / "Dataset001_X").mkdir()
    assert main(["train", "-d", "1", "-f", "0", "-tr", "no_such_trainer", "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "dnnunetPlans.json does not exist" in err or "no_such_trainer" in err


def test_predict_without_a_model_names_the_missing_folder(nnunet_dirs, tmp_path, capsys):
    (nnunet_dirs["nnUNet_results"] / "Dataset003_Y").mkdir()
    assert main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-d", "3", "-device", "cpu"]) == 2
    assert "DnnBaselineTrainer__dnnunetPlans__2d" in capsys.readouterr().err


def test_predict_inputs_with_wrong_channel_count_name_the_case(tmp_path):
    from diffusion_nnunet.inference.input_checks import validate_prediction_inputs
    from dnnunet_core.errors import InvalidDataError

    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)), str(inputs / "case1_0000.nii.gz"))
    with pytest.raises(InvalidDataError, match="case1.*_0001") as err:
        validate_prediction_inputs(inputs, {"0": "T1", "1": "T2"}, ".nii.gz")
    assert "channel" in str(err.value)


@pytest.mark.parametrize("argv", [
    ["predict", "-i", "x", "-o", "y", "-d", "1", "-f", "abc"],
    ["predict", "-i", "x", "-o", "y", "-d", "1", "-f", "-1"],
    ["predict-ensemble", "-i", "x", "-o", "y", "--nnunet", "a", "--diffusion", "b", "--nnunet-folds", "abc"],
    ["find-best", "-d", "1", "-f", "abc"],
    ["plan-and-preprocess", "-d", "1", "-np", "0"],
    ["ensemble", "-i", "a", "b", "-o", "c", "-np", "0"],
])
def test_bad_folds_and_process_counts_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_every_flag_named_in_the_code_exists():
    """issue 15 (smaller ones): hints name flags a user can type (--save-probabilities, --overwrite, ...)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    known = {"--nproc-per-node"}  # torchrun's, named in the distributed-training messages
    parser = build_parser()
    for action in parser._actions:
        known.update(action.option_strings)
        for sub in getattr(action, "choices", None) or {}:
            for sub_action in action.choices[sub]._actions:
                known.update(sub_action.option_strings)
    named = {}
    for source in [*(root / "diffusion_nnunet").rglob("*.py"), *(root / "planning").rglob("*.py")]:
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", source.read_text()):
            named.setdefault(flag, source.name)
    unknown = {f: where for f, where in named.items() if f not in known}
    assert not unknown, f"flags named in messages that no subcommand has: {unknown}"


def test_evaluate_hint_names_a_flag_that_works(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for folder, names in ((ref, ("a", "b")), (pred, ("a",))):
        folder.mkdir()
        for name in names:
            sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 4), np.uint8)), str(folder / f"{name}.nii.gz"))
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text('{"labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"}')
    argv = ["evaluate", "-ref", str(ref), "-pred", str(pred), "-djfile", str(dataset_json)]
    assert main(argv) == 2
    assert "pass --allow-missing" in capsys.readouterr().err
    assert main(argv + ["--allow-missing"]) == 0
