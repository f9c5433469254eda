"""The Python API on hand-built tiny predictors (no training): predict_array's input checks, 2D
layouts, uncertainty maps and scores, PD-DDPM starts handed over as arrays; the overview setting
predict_files records."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_nnunet.api import UNCERTAINTY_MAPS, Predictor
from diffusion_nnunet.inference.predictor import export_prediction_from_logits
from dnnunet_core.errors import UserInputError
from tests.inference.tiny_predictors import NUM_CLASSES, tiny_diffusion_predictor, tiny_nnunet_predictor


def _image(shape=(1, 1, 24, 20), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_every_input_problem_is_named_at_once():
    api = Predictor(tiny_nnunet_predictor())
    with pytest.raises(UserInputError) as err:
        api.predict_array(np.zeros((2, 1, 8, 8)), [1.0, -1.0])
    message = str(err.value)
    assert "takes 1 channel(s)" in message and "has 2" in message
    assert "spacing has 2 values, the image 3 spatial axes" in message and "positive" in message
    bad = _image()
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(UserInputError, match="NaN or Inf"):
        api.predict_array(bad, [1.0, 1.0, 1.0])
    with pytest.raises(UserInputError, match=r"must be \(C, 1, Y, X\)"):
        api.predict_array(np.zeros((1, 8)), [1.0])
    with pytest.raises(UserInputError, match="not a diffusion model"):
        api.predict_array(_image(), [1.0, 1.0, 1.0], presegmentation=np.zeros((24, 20), int))
    with pytest.raises(UserInputError, match="from_model_folder"):
        api.predict_files("in", "out")


def test_baseline_arrays_are_nnunets_export_and_a_2d_image_may_skip_the_singleton_axis(tmp_path):
    predictor = tiny_nnunet_predictor()
    api = Predictor(predictor)
    image = _image()
    result = api.predict_array(image, {"spacing": [999.0, 1.0, 1.0]})
    assert result.segmentation.shape == (1, 24, 20) and result.probabilities.shape == (NUM_CLASSES, 1, 24, 20)
    assert result.uncertainty is None and result.scores is None
    np.testing.assert_allclose(result.probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(result.segmentation, result.probabilities.argmax(0))
    # the same image without nnU-Net's singleton axis and a 2-value spacing: the same answer, squeezed
    squeezed = api.predict_array(image[:, 0], [1.0, 1.0])
    np.testing.assert_array_equal(squeezed.segmentation, result.segmentation[0])
    np.testing.assert_array_equal(squeezed.probabilities, result.probabilities[:, 0])
    # what predict_single_npy_array of nnunetv2 returns for the same input
    seg, probs = predictor.predict_single_npy_array(image, {"spacing": [999.0, 1.0, 1.0]},
                                                    save_or_return_probabilities=True)
    np.testing.assert_array_equal(result.segmentation, seg)
    np.testing.assert_allclose(result.probabilities, probs, atol=1e-6)


def test_diffusion_arrays_carry_uncertainty_maps_and_scores_with_several_samples():
    api = Predictor(tiny_diffusion_predictor(num_samples=3, keep_samples=True))
    result = api.predict_array(_image(), [999.0, 1.0, 1.0])
    assert sorted(result.uncertainty) == sorted(UNCERTAINTY_MAPS)
    for m in result.uncertainty.values():
        assert m.shape == (1, 24, 20) and m.dtype == np.float32 and np.all(m >= 0)
    entropy = -(result.probabilities * np.log(np.clip(result.probabilities, 1e-12, None))).sum(0)
    np.testing.assert_allclose(result.uncertainty["entropy"], entropy, atol=2e-3)
    assert result.scores["num_samples"] == 3 and 0 <= result.scores["disagreement"] <= 1
    # one sample: no maps, no scores
    single = Predictor(tiny_diffusion_predictor(num_samples=1, keep_samples=True, mirror_axes=None))
    one = single.predict_array(_image(), [999.0, 1.0, 1.0])
    assert one.uncertainty is None and one.scores is None


def test_a_presegmentation_array_starts_pd_ddpm_and_equals_the_file_path(tmp_path):
    """A label map handed to predict_array equals the same label map read from a pre-segmentation file
    (load_presegmentation's one-hot), through the predictor's own prepare_case."""
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, size=(24, 20))
    image = _image()
    api = Predictor(tiny_diffusion_predictor(num_samples=2, start_step=2, mirror_axes=None))
    from_labels = api.predict_array(image, [999.0, 1.0, 1.0], presegmentation=labels[None])
    onehot = np.moveaxis(np.eye(NUM_CLASSES, dtype=np.float32)[labels], -1, 0)[:, None]
    from_probs = api.predict_array(image, [999.0, 1.0, 1.0], presegmentation=onehot)
    np.testing.assert_array_equal(from_labels.probabilities, from_probs.probabilities)
    assert api.predictor.last_steps_run is not None and len(api.predictor.last_steps_run) == 3  # k + 1 steps
    # the sampler really starts from it: a different start, a different answer
    other = api.predict_array(image, [999.0, 1.0, 1.0], presegmentation=np.zeros((1, 24, 20), int))
    assert not np.array_equal(other.probabilities, from_labels.probabilities)
    # without a pre-segmentation the start step has nothing to start from
    with pytest.raises(UserInputError, match="needs a pre-segmentation"):
        api.predict_array(image, [999.0, 1.0, 1.0])
    with pytest.raises(UserInputError, match="outside 0..2"):
        api.predict_array(image, [999.0, 1.0, 1.0], presegmentation=np.full((1, 24, 20), 7))


def test_the_export_of_the_same_logits_writes_what_predict_array_returns(tmp_path):
    """predict_array and the files come from the same conversion (export_prediction_from_logits)."""
    import SimpleITK as sitk

    predictor = tiny_diffusion_predictor(num_samples=2)
    api = Predictor(predictor)
    image = _image()
    reader = predictor.plans_manager.image_reader_writer_class()
    path = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(image[0, 0]), str(path))
    image, properties = reader.read_images([str(path)])
    result = api.predict_array(image, properties)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, props = preprocessor.run_case([str(path)], None, predictor.plans_manager,
                                           predictor.configuration_manager, predictor.dataset_json)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    probabilities = export_prediction_from_logits(logits, props, predictor.configuration_manager,
                                                  predictor.plans_manager, predictor.dataset_json,
                                                  str(tmp_path / "case"), True)
    np.testing.assert_array_equal(result.probabilities, probabilities)
    np.testing.assert_array_equal(result.segmentation[0],
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case.nii.gz"))))


def test_an_overview_run_records_settings_a_later_run_can_continue():
    """predict_and_review passes the overview's image lookup as a callable; predict_args.json records
    it as true, so that --continue-prediction --overview finds the same settings."""
    from diffusion_nnunet.inference.predictor import prediction_arguments

    def run():
        return prediction_arguments("m", [0], "checkpoint_final.pth", True, 0.5,
                                    {"num_samples": 3, "overview_png_for": lambda case: case})

    assert run() == run() and run()["diffusion"]["overview_png_for"] is True


def test_a_3d_model_takes_c_z_y_x_and_refuses_a_2d_layout():
    api = Predictor(tiny_diffusion_predictor(patch_size=(8, 16, 16), num_samples=2, mirror_axes=None))
    result = api.predict_array(_image((1, 10, 24, 20)), [2.0, 1.0, 1.0])
    assert result.segmentation.shape == (10, 24, 20) and result.probabilities.shape == (NUM_CLASSES, 10, 24, 20)
    assert result.uncertainty["entropy"].shape == (10, 24, 20)
    with pytest.raises(UserInputError, match=r"must be \(C, Z, Y, X\)"):
        api.predict_array(_image((1, 24, 20)), [1.0, 1.0])
