"""The Python API on trained tiny models: its arrays equal the CLI's files (baseline, diffusion with
samples, PD-DDPM), predict_files is the CLI's folder prediction, and docs/api.md's example runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from diffusion_nnunet.api import Predictor
from diffusion_nnunet.cli.main import main
from diffusion_nnunet.evaluation import to_jsonable
from dnnunet_core.errors import UserInputError
from tests.conftest import stock_copy

pytestmark = pytest.mark.slow

API_DOC = Path(__file__).parents[2] / "docs" / "api.md"


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _cases(images: Path) -> list[Path]:
    return sorted(images.glob("*_0000.nii.gz"))


def _assert_arrays_equal_files(api: Predictor, images: Path, out: Path, maps: bool = False) -> None:
    files = _cases(images)
    assert files
    for image_file in files:
        case = image_file.name[:-len("_0000.nii.gz")]
        image, properties = api.read_images([image_file])
        result = api.predict_array(image, properties)
        seg = _read(out / f"{case}.nii.gz")
        np.testing.assert_array_equal(result.segmentation.reshape(seg.shape), seg)
        np.testing.assert_allclose(result.probabilities, np.load(out / f"{case}.npz")["probabilities"], atol=1e-6)
        if not maps:
            assert result.uncertainty is None and result.scores is None
            continue
        for name, suffix in (("entropy", "_entropy"), ("variance", "_variance"), ("mutual_information", "_mi")):
            written = _read(out / "uncertainty" / f"{case}{suffix}.nii.gz")
            np.testing.assert_allclose(result.uncertainty[name].reshape(written.shape), written, atol=1e-6)
        written = json.loads((out / "uncertainty" / f"{case}_scores.json").read_text())
        returned = json.loads(json.dumps(to_jsonable(result.scores)))  # as the file holds them
        assert written.keys() == returned.keys()
        for k, v in written.items():
            assert v == (pytest.approx(returned[k], rel=1e-6) if isinstance(v, float) else returned[k]), k


def test_baseline_arrays_equal_the_cli_files(env, tmp_path):
    images, out = env["raw"] / "imagesTs", tmp_path / "cli"
    assert main(["predict", "-m", str(env["model"]), "-f", "0", "-i", str(images), "-o", str(out),
                 "--save-probabilities", "-device", "cpu"]) == 0
    _assert_arrays_equal_files(Predictor.from_model_folder(env["model"], folds=(0,)), images, out)
    # a model folder of stock nnunetv2 (trainer nnUNetTrainer, same weights) loads and predicts alike
    _assert_arrays_equal_files(Predictor.from_model_folder(stock_copy(env["model"], tmp_path)), images, out)


def test_diffusion_arrays_equal_the_cli_files_with_maps_and_scores(env, recycle_model, tmp_path):
    images, out = env["raw"] / "imagesTs", tmp_path / "cli"
    assert main(["predict", "-m", str(recycle_model), "-f", "0", "-i", str(images), "-o", str(out),
                 "--save-probabilities", "--num-samples", "3", "--seed", "4", "-device", "cpu"]) == 0
    api = Predictor.from_model_folder(recycle_model, folds=(0,), num_samples=3, seed=4)
    _assert_arrays_equal_files(api, images, out, maps=True)


def test_pd_ddpm_with_a_presegmenter_equals_the_cli(env, recycle_model, tmp_path):
    images, out = env["raw"] / "imagesTs", tmp_path / "cli"
    assert main(["predict", "-m", str(recycle_model), "-f", "0", "-i", str(images), "-o", str(out),
                 "--presegmenter", str(env["model"]), "--start-step", "1", "--disable-tta", "--num-samples", "2",
                 "--save-probabilities", "-device", "cpu"]) == 0
    api = Predictor.from_model_folder(recycle_model, folds=(0,), presegmenter=env["model"], start_step=1,
                                      use_mirroring=False, num_samples=2)
    _assert_arrays_equal_files(api, images, out, maps=True)
    assert api.predictor.last_steps_run is not None and len(api.predictor.last_steps_run) == 2  # k + 1 steps


def test_predict_files_is_the_cli_folder_prediction(env, recycle_model, tmp_path):
    images = env["raw"] / "imagesTs"
    assert main(["predict", "-m", str(recycle_model), "-f", "0", "-i", str(images), "-o", str(tmp_path / "cli"),
                 "--num-samples", "2", "--disable-tta", "-device", "cpu"]) == 0
    api = Predictor.from_model_folder(recycle_model, folds=(0,), num_samples=2, use_mirroring=False)
    run = api.predict_files(_cases(images), tmp_path / "api")  # a list of files, staged as links
    assert run.cases == [f.name[:-len("_0000.nii.gz")] for f in _cases(images)]
    assert run.review is not None and sorted(run.review["order"]) == run.cases
    for case in run.cases:
        np.testing.assert_array_equal(_read(tmp_path / "api" / f"{case}.nii.gz"),
                                      _read(tmp_path / "cli" / f"{case}.nii.gz"))
    assert (tmp_path / "api" / "uncertainty" / "cases.csv").read_text() == \
        (tmp_path / "cli" / "uncertainty" / "cases.csv").read_text()
    # the CLI's output folder rules: refused without overwrite, a list cannot be continued
    with pytest.raises(UserInputError, match="already holds the results"):
        api.predict_files(images, tmp_path / "api")
    with pytest.raises(UserInputError, match="continue_prediction needs an input folder"):
        api.predict_files(_cases(images), tmp_path / "api", continue_prediction=True)
    # the settings it records are the CLI's: it continues the CLI's folder (every case kept)
    assert api.predict_files(images, tmp_path / "cli", continue_prediction=True).cases == []
    with pytest.raises(UserInputError, match="not named CASE_XXXX"):
        api.predict_files([tmp_path / "cli" / "predict_args.json"], tmp_path / "other")


def test_the_example_in_docs_api_md_runs(env, recycle_model, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    code = blocks[0].replace("Dataset501_SyntheticUS2D", env["raw"].name)  # the test's dataset id
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(API_DOC), "exec"), {})
    assert _read(tmp_path / "us_ts_0000.nii.gz").shape == (128, 128)
    assert (tmp_path / "predictions_api" / "uncertainty" / "cases.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "predictions_api").glob("*.npz")) == [
        f.name.replace("_0000.nii.gz", ".npz") for f in _cases(env["raw"] / "imagesTs")]
