"""issue 19 item 4: nnU-Net's cascade trained and predicted: the second stage sees the first stage's
one-hot prediction, `predict` runs the chain, and a cascade pre-segments for PD-DDPM."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

DATASET_ID = 535
SHAPE = (32, 96, 96)  # the smallest that makes the cascade (tests/planning/test_cascade_planning.py)
SHORT = ["--epochs", "1", "--iterations", "2", "--val-iterations", "1", "-device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def cascade_data(tmp_path_factory):
    """A --shape CT dataset (3 training cases, 1 test case) with 3d_lowres and 3d_cascade_fullres preprocessed."""
    root = tmp_path_factory.mktemp("cascade")
    env = {name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from diffusion_nnunet.datasets import make_dataset
        from planning.budget import get_budget
        from planning.pipeline import plan_and_preprocess

        raw = make_dataset("synthetic-ct3d", Path(env["nnUNet_raw"]), DATASET_ID, num_train=3, num_test=1, shape=SHAPE)
        plan_and_preprocess(str(DATASET_ID), get_budget("cpu-tiny"), ["3d_lowres", "3d_cascade_fullres"],
                            validate=False)
    results = Path(env["nnUNet_results"]) / raw.name
    return {"env": env, "raw": raw, "lowres": results / "DnnBaselineTrainer__dnnunetPlans__3d_lowres",
            "cascade": results / "DnnBaselineTrainer__dnnunetPlans__3d_cascade_fullres"}


@pytest.fixture
def env(cascade_data, monkeypatch):
    for k, v in cascade_data["env"].items():
        monkeypatch.setenv(k, v)
    return cascade_data


@pytest.fixture(scope="module")
def trained(cascade_data):
    """Both stages of the baseline on fold all: 3d_lowres (with its final validation), then the cascade."""
    from diffusion_nnunet.cli.main import main

    with pytest.MonkeyPatch.context() as mp:
        for k, v in cascade_data["env"].items():
            mp.setenv(k, v)
        assert main(["train", "-d", str(DATASET_ID), "-c", "3d_lowres", "-f", "all", *SHORT]) == 0
        assert main(["train", "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-f", "all", "--skip-validation",
                     *SHORT]) == 0
    return cascade_data


def test_cascade_refused_without_the_first_stage(env, capsys):
    from diffusion_nnunet.cli.main import main

    assert main(["train", "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-f", "all", *SHORT]) == 2
    err = capsys.readouterr().err
    assert "second stage of nnU-Net's cascade" in err and "3 of 3 cases have none" in err
    assert f"dnnunet train -d {env['raw'].name} -c 3d_lowres -f all -tr baseline" in err
    assert not env["cascade"].exists()  # refused before any compute
    assert main(["train", "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-f", "all", "-tr", "recycle", *SHORT]) == 2
    assert "PD-DDPM's pre-segmenter" in capsys.readouterr().err


@pytest.mark.slow
def test_refused_when_the_first_stage_did_not_predict_every_case(trained, monkeypatch, capsys):
    from diffusion_nnunet.cli.main import main

    for k, v in trained["env"].items():
        monkeypatch.setenv(k, v)
    predictions = trained["lowres"] / "predicted_next_stage" / "3d_cascade_fullres"
    moved = predictions / "ct_tr_0001.b2nd"
    aside = moved.parent.parent / "aside.b2nd"
    moved.rename(aside)
    try:
        assert main(["train", "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-f", "all", *SHORT]) == 2
    finally:
        aside.rename(moved)
    err = capsys.readouterr().err
    assert "1 of 3 cases have none (ct_tr_0001)" in err and "did not predict them" in err


@pytest.mark.slow
def test_second_stage_sees_the_first_stage_one_hot(trained, monkeypatch):
    import blosc2
    import torch

    from diffusion_nnunet.training.run import build_trainer

    for k, v in trained["env"].items():
        monkeypatch.setenv(k, v)
    predictions = trained["lowres"] / "predicted_next_stage" / "3d_cascade_fullres"
    assert sorted(p.name for p in predictions.glob("*.b2nd")) == [f"ct_tr_{i:04d}.b2nd" for i in range(3)]
    _, trainer = build_trainer(str(DATASET_ID), "3d_cascade_fullres", "all")
    trainer.initialize()
    assert trainer.is_cascaded and trainer.folder_with_segs_from_previous_stage == str(predictions)
    assert trainer.num_input_channels == 1 + 4  # the CT channel and one per foreground label
    first_conv = next(m for m in trainer.network.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 5
    # what the data loader reads is the first stage's prediction, on the fullres grid
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, ["ct_tr_0000"],
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    data, _, seg_prev, _ = dataset.load_case("ct_tr_0000")
    written = blosc2.open(urlpath=str(predictions / "ct_tr_0000.b2nd"), mode="r")[:]
    np.testing.assert_array_equal(seg_prev[:], written)
    assert seg_prev.shape == data.shape[1:]  # one label map on the fullres grid
    dataloader_train, _ = trainer.get_dataloaders()
    batch = next(dataloader_train)["data"]
    assert batch.shape[1] == 5
    onehot = batch[:, 1:]
    assert set(torch.unique(onehot).tolist()) <= {0.0, 1.0} and onehot.sum(1).max() <= 1  # one-hot, background none


@pytest.mark.slow
def test_predict_chain_equals_the_two_stages_by_hand(trained, tmp_path, monkeypatch):
    from diffusion_nnunet.cli.main import main
    from diffusion_nnunet.inference.predictor import load_predictor

    for k, v in trained["env"].items():
        monkeypatch.setenv(k, v)
    images = trained["raw"] / "imagesTs"
    fast = ["-f", "all", "--disable-tta", "-step", "1", "-device", "cpu"]
    assert main(["predict", "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-i", str(images),
                 "-o", str(tmp_path / "chain"), *fast]) == 0
    assert main(["predict", "-d", str(DATASET_ID), "-c", "3d_lowres", "-i", str(images),
                 "-o", str(tmp_path / "lowres"), *fast]) == 0
    assert main(["predict", "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-i", str(images),
                 "-o", str(tmp_path / "hand"), "--prev-stage-predictions", str(tmp_path / "lowres"), *fast]) == 0
    # nnunetv2's own loop (its preprocessing of -prev_stage_predictions) with the same network
    stock = load_predictor(trained["cascade"], ["all"], use_mirroring=False, tile_step_size=1.0)
    (tmp_path / "stock").mkdir()
    stock.predict_from_files_sequential(str(images), str(tmp_path / "stock"),
                                        folder_with_segs_from_prev_stage=str(tmp_path / "lowres"))

    def read(path):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    case = "ct_ts_0000.nii.gz"
    np.testing.assert_array_equal(read(tmp_path / "chain" / "3d_lowres" / case), read(tmp_path / "lowres" / case))
    chain = read(tmp_path / "chain" / case)
    np.testing.assert_array_equal(chain, read(tmp_path / "hand" / case))
    np.testing.assert_array_equal(chain, read(tmp_path / "stock" / case))
    assert chain.shape == SHAPE
    # the chain's output folder keeps predict's state rules: a second run is refused, --continue-prediction keeps it
    assert main(["predict", "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-i", str(images),
                 "-o", str(tmp_path / "chain"), *fast]) == 2
    assert main(["predict", "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-i", str(images),
                 "-o", str(tmp_path / "chain"), "--continue-prediction", *fast]) == 0
    # without its lowres segmentations a cascade stage is refused before compute
    assert main(["predict", "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-i", str(images),
                 "-o", str(tmp_path / "none"), "--prev-stage-predictions", str(tmp_path / "hand" / "3d_lowres"),
                 *fast]) == 2


@pytest.mark.slow
def test_pd_ddpm_starts_from_the_cascade(trained, tmp_path, monkeypatch):
    from diffusion_nnunet.cli.main import main

    for k, v in trained["env"].items():
        monkeypatch.setenv(k, v)
    # 3d_fullres's data is the cascade's folder: its marker vouches for it
    assert main(["train", "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "all", "-tr", "recycle",
                 "--skip-validation", *SHORT]) == 0
    # a presegmenter predicts with its auto-detected folds (nnU-Net's: fold_k, not fold_all)
    for stage in (trained["lowres"], trained["cascade"]):
        if not (stage / "fold_0").exists():
            shutil.copytree(stage / "fold_all", stage / "fold_0")
    images = trained["raw"] / "imagesTs"
    recycle = trained["cascade"].parent / "DnnDiffusionTrainer_recycle__dnnunetPlans__3d_fullres"
    assert main(["predict", "-m", str(recycle), "-f", "all", "-i", str(images), "-o", str(tmp_path / "pd"),
                 "--presegmenter", str(trained["cascade"]), "--num-samples", "1", "--disable-tta",
                 "-device", "cpu", "--no-case-scores"]) == 0
    assert main(["predict", "-m", str(trained["cascade"]), "-f", "0", "-i", str(images), "-o", str(tmp_path / "cascade"),
                 "--save-probabilities", "--disable-tta", "-device", "cpu"]) == 0  # predict-ensemble's step 0.5
    pre = tmp_path / "pd" / "presegmentation"
    assert (pre / "3d_lowres" / "ct_ts_0000.nii.gz").is_file()  # the chain ran inside the pre-segmentation
    np.testing.assert_allclose(np.load(pre / "ct_ts_0000.npz")["probabilities"],
                               np.load(tmp_path / "cascade" / "ct_ts_0000.npz")["probabilities"])
    assert (tmp_path / "pd" / "ct_ts_0000.nii.gz").is_file()
    # predict-ensemble with the cascade as its nnU-Net model: the chain into OUT/nnunet, PD-DDPM from it
    assert main(["predict-ensemble", "-i", str(images), "-o", str(tmp_path / "ens"), "--nnunet", str(trained["cascade"]),
                 "--nnunet-folds", "0", "--diffusion", str(recycle), "--diffusion-folds", "all", "--num-samples", "1",
                 "--disable-tta", "-device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "ens" / "nnunet" / "ct_ts_0000.npz")["probabilities"],
                               np.load(tmp_path / "cascade" / "ct_ts_0000.npz")["probabilities"], atol=1e-6)
    assert (tmp_path / "ens" / "nnunet" / "3d_lowres" / "ct_ts_0000.nii.gz").is_file()
    assert (tmp_path / "ens" / "ensemble" / "ct_ts_0000.nii.gz").is_file()
