"""Sparse annotations (dataset.json ``ignore``, issue 19 item 3): generator, baseline, diffusion loss, evaluation.

The diffusion trainers mask the loss where the label is ignored and give those voxels the
background state in x0 (diffusion/label_space.py); the semi-supervised trainers refuse.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffusion_nnunet.datasets import make_dataset
from diffusion_nnunet.diffusion.label_space import LabelSpace
from diffusion_nnunet.evaluation import evaluate_folders
from dnnunet_core.errors import UserInputError
from planning.checks import validate_raw_dataset
from tests.helpers import planned_with_cpu_tiny

DATASET_ID = 561
IGNORE = 3  # synthetic-us2d: background 0, layer 1, lesion 2
SHORT = ["-device", "cpu", "--seed", "0", "--iterations", "2", "--val-iterations", "1"]


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def sparse_raw(tmp_path_factory):
    """6 generated 2D cases with 30 % of each training label annotated, and the same cases dense."""
    root = tmp_path_factory.mktemp("ignore")
    raw = make_dataset("synthetic-us2d", root / "nnUNet_raw", DATASET_ID, num_train=6, num_test=1, seed=4,
                       sparse_labels=0.3)
    dense = make_dataset("synthetic-us2d", root / "dense", DATASET_ID, num_train=6, num_test=1, seed=4)
    return {"root": root, "raw": raw, "dense": dense}


@pytest.fixture(scope="module")
def sparse_plan(sparse_raw):
    """The sparse dataset planned with cpu-tiny."""
    with planned_with_cpu_tiny(sparse_raw, DATASET_ID) as planned:
        yield planned


@pytest.fixture
def plan_env(sparse_plan, monkeypatch):
    for k, v in sparse_plan["env"].items():
        monkeypatch.setenv(k, v)
    return sparse_plan


def test_sparse_labels_keep_the_dense_values_where_annotated_and_ignore_elsewhere(sparse_raw):
    raw, dense = sparse_raw["raw"], sparse_raw["dense"]
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "layer": 1, "lesion": 2, "ignore": IGNORE}
    fractions = []
    for f in sorted((raw / "labelsTr").iterdir()):
        sparse, full = _read(f), _read(dense / "labelsTr" / f.name)
        annotated = sparse != IGNORE
        np.testing.assert_array_equal(sparse[annotated], full[annotated])
        fractions.append(annotated.mean())
    assert np.allclose(fractions, 0.3, atol=0.02)  # 19 of 64 blocks of 16 x 16
    for f in (raw / "labelsTs").iterdir():  # test labels stay dense
        np.testing.assert_array_equal(_read(f), _read(dense / "labelsTs" / f.name))
    assert validate_raw_dataset(raw).num_cases == 6  # our raw-data checks accept the ignore value


def test_a_bad_fraction_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UserInputError, match="--sparse-labels"):
        make_dataset("synthetic-us2d", tmp_path, num_train=2, num_test=0, sparse_labels=1.0)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_baseline_trains_on_sparse_labels_and_its_validation_leaves_ignored_voxels_out(plan_env):
    from diffusion_nnunet.cli.main import main

    assert main(["train", "-d", str(DATASET_ID), "-f", "0", *SHORT]) == 0
    fold = plan_env["results"] / "DnnBaselineTrainer__dnnunetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    for case in summary["metric_per_case"]:
        counts = case["metrics"]["1"]
        annotated = int((_read(case["reference_file"]) != IGNORE).sum())
        assert counts["TP"] + counts["FP"] + counts["FN"] + counts["TN"] == annotated < 128 * 128


def _trainer(name: str):
    from diffusion_nnunet.training.run import build_trainer

    _, trainer = build_trainer(str(DATASET_ID), "2d", 0, name)
    trainer.initialize()
    return trainer


class _PerturbInside(torch.nn.Module):
    """The network, its outputs replaced by noise inside `masks` (one per deep-supervision output)
    in the passes that take gradients."""

    def __init__(self, network, masks: list[torch.Tensor]):
        super().__init__()
        self.network, self.masks = network, masks

    def forward(self, *args):
        out = self.network(*args)
        if not torch.is_grad_enabled():
            return out
        return [torch.where(m.bool(), 50 * torch.randn_like(o), o) for o, m in zip(out, self.masks)]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["standard", "recycle"])
def test_diffusion_loss_does_not_see_predictions_inside_ignored_voxels(plan_env, strategy):
    trainer = _trainer(strategy)
    # the planner's cost estimates count one mask channel per network output (3 here)
    assert trainer.configuration_manager.configuration["diffusion"]["mask_input_channels"] == 3
    batch = next(trainer.get_dataloaders()[0])
    data, target = trainer._to_device(batch)
    ignored = (target[0] == IGNORE).float()
    assert 0.3 < ignored.mean() < 0.95  # the batch really is sparse

    # x0 is the background state where the label is ignored
    x0 = trainer.label_space.target_x0(target[0])
    background = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    assert torch.equal(torch.where(ignored.bool(), x0, background), background.expand_as(x0))

    def loss(network):
        trainer.network = network
        torch.manual_seed(0)
        return float(trainer.compute_loss(data, [t.clone() for t in target], update_sampler=False).detach())

    plain = trainer.network
    reference = loss(plain)
    inside = [(t == IGNORE).float() for t in target]
    assert loss(_PerturbInside(plain, inside)) == pytest.approx(reference, rel=1e-6)
    # the same perturbation where the label is known changes the loss: the check can fail
    assert loss(_PerturbInside(plain, [1 - m for m in inside])) != pytest.approx(reference, rel=1e-3)


@pytest.mark.slow
def test_semi_supervised_trainers_refuse_an_ignore_label(plan_env):
    from diffusion_nnunet.training.run import build_trainer

    for name in ("semi_teacher", "semi_cotrain"):
        with pytest.raises(UserInputError, match="ignore label"):
            build_trainer(str(DATASET_ID), "2d", 0, name)


def test_evaluation_leaves_ignored_reference_voxels_out(sparse_raw, tmp_path):
    raw, dense = sparse_raw["raw"], sparse_raw["dense"]
    exact, changed = tmp_path / "exact", tmp_path / "changed"
    exact.mkdir()
    changed.mkdir()
    rng = np.random.default_rng(0)
    for f in sorted((raw / "labelsTr").iterdir()):
        truth = sitk.ReadImage(str(dense / "labelsTr" / f.name))
        sitk.WriteImage(truth, str(exact / f.name))
        array = sitk.GetArrayFromImage(truth)
        ignored = _read(f) == IGNORE
        array[ignored] = rng.integers(0, 3, ignored.sum())  # wrong only where nobody annotated
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(truth)
        sitk.WriteImage(out, str(changed / f.name))
    a = evaluate_folders(raw / "labelsTr", exact, dataset_json=raw / "dataset.json")
    b = evaluate_folders(raw / "labelsTr", changed, dataset_json=raw / "dataset.json")
    assert a["mean"]["layer"]["Dice"] == b["mean"]["layer"]["Dice"] == 1.0
    assert a["mean"]["lesion"]["Dice"] == b["mean"]["lesion"]["Dice"] == 1.0
    # against the dense labels the same changed prediction is wrong
    c = evaluate_folders(dense / "labelsTr", changed, dataset_json=dense / "dataset.json")
    assert c["mean"]["layer"]["Dice"] < 0.9


def test_label_space_regions_ignore_channel_is_background_and_masked():
    space = LabelSpace(2, regions=True, ignore_label=3, region_values=((1, 2), (2,)))
    target = torch.tensor([[[[1, 1, 0]], [[0, 1, 0]], [[0, 1, 1]]]])  # (B=1, 2 regions + ignore, 1, 3)
    torch.testing.assert_close(space.keep_mask(target), torch.tensor([[[[1.0, 0.0, 0.0]]]]))
    torch.testing.assert_close(space.target_x0(target), torch.tensor([[[[1.0, -1.0, -1.0]], [[-1.0, -1.0, -1.0]]]]))
    seg = torch.tensor([[2, 1, 0, 3]])
    torch.testing.assert_close(space.label_map_onehot(seg),
                               torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]]))
