"""The diffusion head in region space (issue 19 item 2): sigmoid sampling, PD-DDPM, uncertainty, export.

A perfect denoiser (it reads the true label map from the image channel) must give back BraTS's
nested regions after thresholding: whole > core > enhancing, whatever the noise, the sampler,
the start step and the mirroring.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from diffusion_nnunet.configs.inference_spec import InferenceSpec
from diffusion_nnunet.diffusion.label_space import LabelSpace
from diffusion_nnunet.diffusion.sampling import pre_segmentation_x0, sample
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.inference.diffusion_predictor import DiffusionPredictor
from diffusion_nnunet.inference.uncertainty import predictive_entropy, uncertainty_maps
from tests.inference.tiny_predictors import tiny_plans

REGIONS = ((1, 2, 3), (2, 3), (3,))
DATASET_JSON = {"channel_names": {"0": "MR"}, "file_ending": ".nii.gz", "regions_class_order": [1, 2, 3],
                "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}}


def _label_map(shape=(32, 32)) -> torch.Tensor:
    """Nested discs: 1 outside r=10, 3 on a ring, 2 in the centre (as synthetic-brats2d)."""
    yy, xx = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    r = ((yy - 15.0) ** 2 + (xx - 13.0) ** 2).sqrt()
    return torch.where(r < 3, 2, torch.where(r < 6, 3, torch.where(r < 10, 1, 0)))


def _regions(seg: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.isin(seg, torch.tensor(r)) for r in REGIONS]).float()


class PerfectRegionDenoiser(torch.nn.Module):
    """x0 logits of the true regions, read from the image channel (the label map); the noisy mask is ignored."""

    def forward(self, x, t):
        seg = x[:, 0].round().long()
        return 12.0 * (2 * torch.stack([_regions(s) for s in seg]) - 1)


def _assert_nested_and_true(regions: torch.Tensor, seg: torch.Tensor) -> None:
    whole, core, enhancing = regions.bool()
    assert (core <= whole).all() and (enhancing <= core).all()
    torch.testing.assert_close(regions.float(), _regions(seg))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("start_step", [None, 1])
def test_region_sampling_with_a_perfect_model_keeps_the_regions_nested(sampler, start_step):
    seg = _label_map()
    image = seg[None, None].float().repeat(3, 1, 1, 1)  # 3 samples of the same case
    net = PerfectRegionDenoiser()
    schedule = NoiseSchedule.linear(5)
    # PD-DDPM: start from a wrong pre-segmentation (all background) noised to step 1
    x0_pre = pre_segmentation_x0(torch.full((3, 3, 32, 32), 0.2), regions=True) if start_step is not None else None
    assert x0_pre is None or bool((x0_pre == -1).all())
    result = sample(lambda m, t: net(torch.cat([image, m], 1), t), (3, 3, 32, 32), schedule, sampler,
                    start_step=start_step, x0_start=x0_pre, generator=torch.Generator().manual_seed(0),
                    keep_steps=True, regions=True)
    for step in result.per_step:  # sigmoid probabilities per region, not a softmax over them
        assert not torch.allclose(step.sum(1), torch.ones_like(step.sum(1)))
        for probs in step:
            _assert_nested_and_true(probs > 0.5, seg)


def _region_predictor(**kwargs) -> DiffusionPredictor:
    predictor = DiffusionPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                   device=torch.device("cpu"), verbose=False, allow_tqdm=False,
                                   perform_everything_on_device=False, **kwargs)
    plans = tiny_plans((16, 16), 2)
    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    net = PerfectRegionDenoiser()
    predictor.manual_initialization(net, pm, cm, [net.state_dict()], DATASET_JSON, "Tiny", (0, 1))
    predictor.apply_spec(InferenceSpec(predictor="diffusion", timesteps=5))
    return predictor


def test_region_predictor_returns_region_logits_nested_maps_and_bernoulli_uncertainty():
    predictor = _region_predictor(seed=1, keep_steps=True)  # one sample per mirror variant: 4
    assert predictor.label_space == LabelSpace(3, True, None, REGIONS)
    seg = _label_map()
    logits = predictor.predict_sliding_window_return_logits(seg[None, None].float())
    assert logits.shape == (3, 1, 32, 32)
    probs = torch.sigmoid(logits.float())[:, 0]  # nnU-Net's inference nonlinearity for regions
    _assert_nested_and_true(probs > 0.5, seg)
    for step in predictor.last_per_step:
        _assert_nested_and_true(torch.sigmoid(step.float())[:, 0] > 0.5, seg)
    # nnU-Net's label manager paints the regions in regions_class_order: the label map comes back
    label_map = predictor.label_manager.convert_logits_to_segmentation(logits)
    np.testing.assert_array_equal(np.asarray(label_map)[0], seg.numpy())
    # a perfect model is certain: the per-region Bernoulli entropy is ~0, as the sample statistics
    variance, mean_sample_entropy = predictor.last_sample_statistics
    assert float(variance.max()) < 1e-6 and float(mean_sample_entropy.max()) < 1e-3


def test_region_uncertainty_is_the_sum_of_the_regions_bernoulli_entropies():
    space = LabelSpace(3, regions=True, region_values=REGIONS)
    p = torch.tensor([[0.5, 0.9], [0.5, 0.1], [0.5, 1.0]])  # (R=3, 2 voxels)
    entropy = predictive_entropy(space.as_distribution(p, 0))

    def h(q):
        return 0.0 if q in (0.0, 1.0) else -(q * math.log(q) + (1 - q) * math.log(1 - q))

    torch.testing.assert_close(entropy, torch.tensor([3 * math.log(2), 2 * h(0.9)]))
    # samples that disagree: mutual information > 0, variance the regions' mean variance
    samples = torch.tensor([[[1.0], [0.0], [1.0]], [[0.0], [0.0], [1.0]]])  # (N=2, R=3, 1 voxel)
    maps = uncertainty_maps(space.as_distribution(samples, 1), with_mutual_information=True)
    torch.testing.assert_close(maps.entropy, torch.tensor([math.log(2)]))
    torch.testing.assert_close(maps.mutual_information, torch.tensor([math.log(2)]))
    torch.testing.assert_close(maps.variance, torch.tensor([0.25 / 3]))


def test_region_logits_round_trip_through_the_sigmoid():
    space = LabelSpace(3, regions=True)
    p = torch.tensor([0.01, 0.3, 0.5, 0.97])
    torch.testing.assert_close(torch.sigmoid(space.logits_from_probabilities(p)), p)
    classes = LabelSpace(3)
    q = torch.tensor([[0.2], [0.3], [0.5]])
    torch.testing.assert_close(torch.softmax(classes.logits_from_probabilities(q), 0), q)


def test_case_scores_in_region_space_follow_each_region():
    from diffusion_nnunet.inference.case_scores import case_scores, class_names

    truth = _regions(_label_map()).numpy()[:, None]  # (R, 1, 32, 32)
    other = truth.copy()
    other[2] = 0.0  # the second sample misses the enhancing ring
    scores = case_scores(np.stack([truth, other]), (1.0, 1.0, 1.0), class_names(DATASET_JSON), regions=True)
    assert scores["agreement"]["whole"] == scores["agreement"]["core"] == 1.0
    assert scores["agreement"]["enhancing"] == 0.0
    assert scores["volume"]["whole"] == float(truth[0].sum()) and scores["volume"]["enhancing"] == 0.0  # mean 0.5
    assert scores["entropy_foreground"] > 0  # the ring's p = 0.5: one Bernoulli entropy of log 2 there
    same = case_scores(np.stack([truth, truth]), (1.0, 1.0, 1.0), class_names(DATASET_JSON), regions=True)
    assert same["disagreement"] == 0.0 and same["entropy_foreground"] == 0.0


def test_region_predictor_with_several_samples_writes_case_scores(tmp_path):
    import json

    predictor = _region_predictor(seed=0, keep_samples=True)
    seg = _label_map()
    logits = predictor.predict_sliding_window_return_logits(seg[None, None].float())
    properties = {"spacing": [1.0, 1.0, 1.0]}
    from diffusion_nnunet.inference.review_list import predictor_case_scores

    scores = predictor_case_scores(predictor.last_samples, logits, properties, predictor.configuration_manager,
                                   DATASET_JSON)
    assert scores["num_samples"] == 4 and scores["disagreement"] == 0.0
    assert set(scores["agreement"]) == {"whole", "core", "enhancing"}
    json.dumps(scores)
