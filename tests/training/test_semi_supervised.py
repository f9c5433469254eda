"""Semi-supervised teacher / twin students: loss terms, the two-pathway model, config and registry (no files)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from diffusion_nnunet.configs import trainer_registry as registry
from diffusion_nnunet.configs.training_config import DiffusionConfig, SemiSupervisedConfig, TrainingConfig
from diffusion_nnunet.diffusion.schedule import NoiseSchedule
from diffusion_nnunet.networks.twin import STUDENT, TEACHER, CoTrainPair
from diffusion_nnunet.training import semi_losses
from diffusion_nnunet.training.semi_losses import (
    IGNORE,
    RoundSettings,
    copy_paste,
    cotraining_loss,
    cross_pseudo_supervision,
    ddim_reconstruct,
    hard_pseudo_label,
    ramp_weight,
    random_box_mask,
    reconstruction_loss,
    round_losses,
    segmentation_loss,
    soft_dice_loss,
)
from diffusion_nnunet.training.semi_supervised import SemiCoTrainer, SemiTeacherTrainer, resolve_teacher_checkpoint
from diffusion_nnunet.training.unlabelled_data import _DropTarget, build_unlabelled_loader, images_only
from dnnunet_core.errors import UserInputError
from tests.training.helpers import IMG, SHAPE, C, tiny_twin


class NoLabel:
    """A target that fails the test if anything reads it."""

    def __getattribute__(self, name):
        raise AssertionError(f"an unlabelled batch's target was read ({name})")

    def __bool__(self):
        raise AssertionError("an unlabelled batch's target was read (bool)")


def rounds(r, steps=2, chain=True, weight=1.0):
    return RoundSettings(rounds=r, weight=weight, chain=chain, rec_schedule=NoiseSchedule.linear(10),
                         sampling_steps=steps)


def labels(seed=0):
    return torch.randint(0, C, (SHAPE[0], 1, *SHAPE[2:]), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ pure losses


def test_soft_dice_is_zero_for_a_perfect_hard_prediction_and_ignores_background():
    y = labels()
    onehot = torch.nn.functional.one_hot(y[:, 0], C).movedim(-1, 1).float()
    assert soft_dice_loss(onehot, y) == pytest.approx(0.0, abs=1e-6)
    wrong_background_only = onehot.clone()
    wrong_background_only[:, 0] = 0  # background channel wrong: foreground Dice still perfect
    assert soft_dice_loss(wrong_background_only, y) == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(torch.full_like(onehot, 1 / C), y) > 0.3


def test_pseudo_labels_are_hard_argmax_of_the_other_model_without_gradient():
    g = torch.Generator().manual_seed(1)
    ls = torch.randn(2, C, 8, 8, generator=g, requires_grad=True)
    lt = torch.randn(2, C, 8, 8, generator=g, requires_grad=True)
    pl = hard_pseudo_label(lt)
    assert pl.dtype == torch.long and pl.shape == (2, 1, 8, 8) and not pl.requires_grad
    assert torch.equal(pl[:, 0], lt.argmax(1))

    loss = cross_pseudo_supervision(ls, lt, ce_weight=1.0)
    expected = segmentation_loss(ls, lt.argmax(1, keepdim=True)) + segmentation_loss(lt, ls.argmax(1, keepdim=True))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the teacher's gradient comes only from its own term: its pseudo-labels for the student are constants
    grad_t, = torch.autograd.grad(loss, lt)
    own, = torch.autograd.grad(segmentation_loss(lt, ls.detach().argmax(1, keepdim=True)), lt)
    assert torch.allclose(grad_t, own, atol=1e-7)


def test_unconfident_pseudo_label_pixels_count_in_neither_dice_nor_cross_entropy():
    # two pixels: the labelling model is sure of class 2 on the first, unsure on the second
    other = torch.tensor([[0.0, 0.0, 6.0], [0.3, 0.2, 0.0]]).T.reshape(1, C, 1, 2)
    assert hard_pseudo_label(other, threshold=0.9).flatten().tolist() == [2, IGNORE]
    assert hard_pseudo_label(other, threshold=0.0).flatten().tolist() == [2, 0]

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, C, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, C, (2, 1, 8, 8), generator=g)
    target[:, :, :4] = IGNORE
    loss = segmentation_loss(logits, target)
    grad, = torch.autograd.grad(loss, logits)
    assert torch.all(grad[:, :, :4] == 0) and grad[:, :, 4:].abs().sum() > 0
    # the loss is that of the kept half alone
    assert loss.item() == pytest.approx(segmentation_loss(logits[:, :, 4:], target[:, :, 4:]).item(), rel=1e-5)
    nothing_kept = segmentation_loss(logits, torch.full_like(target, IGNORE))
    assert torch.isfinite(nothing_kept)


def test_reconstruction_loss_back_propagates_into_the_segmentation_pathway():
    twin = tiny_twin()
    image = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    m_t = torch.rand(SHAPE[0], C, *SHAPE[2:])
    probs = torch.softmax(twin.seg_logits(image, m_t, torch.tensor(1.0)), 1)
    loss = reconstruction_loss(twin.rec_eps, image, 2 * probs - 1, NoiseSchedule.linear(10),
                               generator=torch.Generator().manual_seed(3))
    loss.backward()  # L_rec alone
    seg_grads = [p.grad for p in twin.seg.parameters() if p.grad is not None]
    assert seg_grads and sum(float(g.abs().sum()) for g in seg_grads) > 0
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in twin.rec.parameters())


def test_reconstruction_loss_is_the_eps_mse_at_the_given_step():
    schedule = NoiseSchedule.linear(10)
    image = torch.randn(SHAPE)
    noise = torch.randn(SHAPE)
    t = torch.tensor([0, 9])
    seen = {}

    def rec(noisy, mask, t_net):
        seen.update(noisy=noisy, t=t_net)
        return torch.zeros_like(noisy)

    loss = reconstruction_loss(rec, image, torch.zeros(SHAPE[0], C, *SHAPE[2:]), schedule, t=t, noise=noise)
    assert loss.item() == pytest.approx(float((noise ** 2).mean()), rel=1e-6)
    assert torch.allclose(seen["noisy"], schedule.q_sample(image, t, noise=noise))
    assert torch.allclose(seen["t"], schedule.network_time(t))


@pytest.mark.parametrize("r", [1, 3])
def test_round_loop_runs_r_times(r):
    calls = {"segment": 0, "rec": 0}

    def segment(x):
        calls["segment"] += 1
        return torch.zeros(x.shape[0], C, *x.shape[2:], requires_grad=True)

    def rec(noisy, mask, t_net):
        calls["rec"] += 1
        assert mask.shape[1] == C and noisy.shape[1] == IMG
        return torch.zeros_like(noisy)

    image = torch.randn(SHAPE)
    probs = torch.full((SHAPE[0], C, *SHAPE[2:]), 1 / C)
    loss = round_losses(segment, rec, image, probs, labels(), rounds(r, steps=2))
    assert calls == {"segment": r, "rec": r * (2 + 1)}  # per round: 2 DDIM steps + the L_rec pass
    assert loss.ndim == 0 and loss.item() > 0


def test_round_weight_divides_by_r_and_zero_rounds_cost_nothing():
    def segment(x):
        return torch.zeros(x.shape[0], C, *x.shape[2:])

    def rec(noisy, mask, t_net):
        return torch.zeros_like(noisy)

    image, probs, y = torch.randn(SHAPE), torch.full((SHAPE[0], C, *SHAPE[2:]), 1 / C), labels()
    torch.manual_seed(0)
    one = round_losses(segment, rec, image, probs, y, rounds(1, weight=2.0))
    torch.manual_seed(0)
    three = round_losses(segment, rec, image, probs, y, rounds(3, weight=2.0, chain=False))
    # constant networks: each round's term is the same (up to the L_rec noise), so the mean over R stays
    assert three.item() == pytest.approx(one.item(), rel=0.05)
    assert round_losses(lambda x: 1 / 0, rec, image, probs, y, rounds(0)).item() == 0.0


@pytest.mark.parametrize("into_seg", [True, False])
def test_round_reconstruction_loss_reaches_seg_only_when_asked(into_seg):
    def segment(x):  # no parameters: any gradient on `logits` comes from L_rec through the mask
        return torch.zeros(x.shape[0], C, *x.shape[2:])

    def rec(noisy, mask, t_net):
        return noisy * mask.mean(1, keepdim=True)

    logits = torch.randn(SHAPE[0], C, *SHAPE[2:], requires_grad=True)
    settings = RoundSettings(rounds=1, weight=1.0, chain=True, rec_schedule=NoiseSchedule.linear(10), sampling_steps=2,
                             start_step=3, rec_into_seg=into_seg)
    loss = round_losses(segment, rec, torch.randn(SHAPE), torch.softmax(logits, 1), labels(), settings)
    if into_seg:
        (grad,) = torch.autograd.grad(loss, logits)
        assert grad.abs().sum() > 0
    else:
        assert not loss.requires_grad  # nothing in the round terms leads back to the teacher's mask


def test_ddim_reconstruction_is_conditioned_and_reproducible():
    twin = tiny_twin()
    mask = 2 * torch.softmax(torch.randn(SHAPE[0], C, *SHAPE[2:]), 1) - 1
    a = ddim_reconstruct(twin.rec_eps, mask, SHAPE, NoiseSchedule.linear(10), 3, generator=torch.Generator().manual_seed(4))
    b = ddim_reconstruct(twin.rec_eps, mask, SHAPE, NoiseSchedule.linear(10), 3, generator=torch.Generator().manual_seed(4))
    assert a.shape == SHAPE and torch.equal(a, b) and not a.requires_grad
    assert a.abs().max() <= 5.0 + 1e-5  # the last step returns the clipped x0 estimate


def test_ddim_reconstruction_from_the_noised_image_keeps_it_at_low_noise():
    """Started from the image at step 0 (no noise), one DDIM step with a perfect eps returns the image."""
    schedule = NoiseSchedule.linear(10)
    image = torch.randn(SHAPE)
    mask = torch.zeros(SHAPE[0], C, *SHAPE[2:])
    seen = []

    def exact_eps(x_t, mask_pm1, t_net):  # the noise of q_sample, recovered from the known image
        seen.append(round(float(t_net[0]), 4))
        abar = float(schedule.alphas_cumprod[round(float(t_net[0]) * 10) - 1])
        return (x_t - abar ** 0.5 * image) / (1 - abar) ** 0.5

    out = ddim_reconstruct(exact_eps, mask, SHAPE, schedule, 3, generator=torch.Generator().manual_seed(0),
                           start_image=image, start_step=3)
    torch.testing.assert_close(out, image, atol=1e-4, rtol=1e-4)
    assert seen == [0.4, 0.3, 0.1]  # steps 3, 2, 0 of the training schedule (re-spaced [0..3])
    # from pure noise the same sampler starts at the last step
    seen.clear()
    ddim_reconstruct(exact_eps, mask, SHAPE, schedule, 3, generator=torch.Generator().manual_seed(0))
    assert seen[0] == 1.0


def test_unlabelled_branch_never_reads_a_label():
    sentinel = NoLabel()
    images = torch.randn(SHAPE)
    assert images_only({"data": images, "target": sentinel}) is images

    class Loader:
        def __next__(self):
            return {"data": images, "target": NoLabel(), "keys": ["u0", "u1"]}

    batch = next(_DropTarget(Loader(), num_cases=2))
    assert batch["target"] is None and batch["data"] is images

    twin_t, twin_s = tiny_twin(0), tiny_twin(1)
    t_net = torch.tensor(1.0)
    m = torch.full((SHAPE[0], C, *SHAPE[2:]), 0.5)
    terms = cotraining_loss(lambda x: twin_t.seg_logits(x, m, t_net), lambda x: twin_s.seg_logits(x, m, t_net),
                            twin_t.rec_eps, torch.randn(SHAPE), labels(), batch["data"], rounds(1), 1.0)
    assert terms.unsupervised.item() > 0


def test_zero_unlabelled_cases_degrade_to_supervised_training(tmp_path):
    calls = []

    def seg(name):
        def f(x):
            calls.append(name)
            return torch.zeros(x.shape[0], C, *x.shape[2:], requires_grad=True)
        return f

    x, y = torch.randn(SHAPE), labels()
    terms = cotraining_loss(seg("teacher"), seg("student"), lambda n, m, t: torch.zeros_like(n), x, y, None,
                            rounds(0), unsupervised_weight=1.0)
    assert terms.unsupervised.item() == 0.0
    expected = 2 * segmentation_loss(torch.zeros(SHAPE[0], C, *SHAPE[2:]), y)
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert sorted(calls) == ["student", "teacher"]  # one labelled pass each, nothing else
    trainer = SimpleNamespace(preprocessed_dataset_folder_base=str(tmp_path),
                              configuration_manager=SimpleNamespace(data_identifier="plans_2d"))
    assert build_unlabelled_loader(trainer) is None  # no <data_identifier>_unlabelled folder


def test_lambda_zero_skips_the_unlabelled_branch():
    calls = []

    def seg(x):
        calls.append(x)
        return torch.zeros(x.shape[0], C, *x.shape[2:], requires_grad=True)

    x, y, unlabelled = torch.randn(SHAPE), labels(), torch.randn(SHAPE)
    terms = cotraining_loss(seg, seg, lambda n, m, t: torch.zeros_like(n), x, y, unlabelled, rounds(1),
                            unsupervised_weight=0.0)
    assert terms.unsupervised.item() == 0.0 and not any(c is unlabelled for c in calls)
    cotraining_loss(seg, seg, lambda n, m, t: torch.zeros_like(n), x, y, unlabelled, rounds(1),
                    unsupervised_weight=0.5)
    assert sum(c is unlabelled for c in calls) == 2  # teacher and student (the round segments its reconstruction)


def test_pseudo_threshold_reaches_every_unlabelled_term():
    def seg(x):  # unsure everywhere: probabilities 1/C
        return torch.zeros(x.shape[0], C, *x.shape[2:], requires_grad=True)

    def rec(noisy, mask, t_net):
        return torch.zeros_like(noisy)

    x, y, unlabelled = torch.randn(SHAPE), labels(), torch.randn(SHAPE)
    unsupervised = {}
    for threshold in (0.0, 0.9):
        settings = RoundSettings(rounds=1, weight=1.0, chain=True, rec_schedule=NoiseSchedule.linear(10),
                                 sampling_steps=2, pseudo_threshold=threshold)
        unsupervised[threshold] = cotraining_loss(seg, seg, rec, x, y, unlabelled, settings,
                                                  unsupervised_weight=1.0).unsupervised.item()
    # every pixel ignored: both CPS terms and the round's Dice + CE vanish, L_rec stays (E[eps^2] = 1)
    assert unsupervised[0.9] == pytest.approx(1.0, abs=0.15)
    assert unsupervised[0.0] > unsupervised[0.9] + 3 * math.log(C)  # three CE terms of ln C at least


@pytest.mark.parametrize("ramp_rounds", [False, True])
def test_labelled_round_terms_follow_lambda_only_with_ramp_rounds(ramp_rounds):
    def seg(x):
        return torch.zeros(x.shape[0], C, *x.shape[2:])

    x, y = torch.randn(SHAPE), labels()
    settings = RoundSettings(rounds=1, weight=1.0, chain=True, rec_schedule=NoiseSchedule.linear(10), sampling_steps=2,
                             ramp_rounds=ramp_rounds)
    rec_calls = []

    def rec(noisy, mask, t_net):
        rec_calls.append(1)
        return torch.zeros_like(noisy)

    at_zero = cotraining_loss(seg, seg, rec, x, y, None, settings, unsupervised_weight=0.0)
    plain = 2 * segmentation_loss(seg(x), y)
    if ramp_rounds:  # lambda = 0: the rounds are not even run
        assert at_zero.total.item() == pytest.approx(plain.item(), rel=1e-6) and not rec_calls
    else:
        assert at_zero.total.item() > plain.item() + 0.1 and rec_calls


def test_random_box_mask_holds_one_box_of_the_asked_size_per_sample():
    mask = random_box_mask((4, 1, 30, 20), 2 / 3, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 1, 30, 20) and set(mask.unique().tolist()) == {0.0, 1.0}
    for m in mask[:, 0]:
        rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        assert len(rows) == 20 and len(cols) == 13  # round(2/3 * side), contiguous:
        assert rows[-1] - rows[0] == 19 and cols[-1] - cols[0] == 12 and m.sum() == 20 * 13
    other = random_box_mask((4, 1, 30, 20), 2 / 3, torch.Generator().manual_seed(1))
    assert not torch.equal(mask, other)


def test_copy_paste_mixes_images_and_targets_both_ways():
    labelled, unlabelled = torch.full(SHAPE, 1.0), torch.full(SHAPE, -1.0)
    label = torch.full((SHAPE[0], 1, *SHAPE[2:]), 2)
    pseudo = torch.ones((SHAPE[0], 1, *SHAPE[2:]), dtype=torch.long)
    pseudo[0, 0, 0, 0] = IGNORE
    box = torch.zeros((SHAPE[0], 1, *SHAPE[2:]))
    box[:, :, 4:12, 8:20] = 1
    images, targets = copy_paste(labelled, unlabelled, box), copy_paste(label, pseudo, box)
    b = SHAPE[0]
    assert images.shape == (2 * b, *SHAPE[1:]) and targets.shape == (2 * b, 1, *SHAPE[2:])
    inside = box.bool().expand(-1, IMG, -1, -1)
    assert (images[:b][inside] == 1).all() and (images[:b][~inside] == -1).all()  # labelled box in unlabelled
    assert (images[b:][inside] == -1).all() and (images[b:][~inside] == 1).all()  # and the other way round
    assert (targets[:b][box.bool()] == 2).all() and (targets[b:][~box.bool()] == 2).all()
    assert targets[0, 0, 0, 0] == IGNORE and (targets[b:][box.bool()] == 1).all()


@pytest.mark.parametrize("r", [0, 1])
def test_copy_paste_trains_both_models_on_mixes_and_labels_without_gradient(r):
    calls = []

    def seg(name):
        def f(x):
            calls.append((name, x, torch.is_grad_enabled()))
            return torch.zeros(x.shape[0], C, *x.shape[2:], requires_grad=True)
        return f

    x, y, unlabelled = torch.randn(SHAPE), labels(), torch.randn(SHAPE)
    settings = RoundSettings(rounds=r, weight=1.0, chain=True, rec_schedule=NoiseSchedule.linear(10),
                             sampling_steps=2, copy_paste=0.5)
    terms = cotraining_loss(seg("teacher"), seg("student"), lambda n, m, t: torch.zeros_like(n), x, y, unlabelled,
                            settings, unsupervised_weight=1.0, generator=torch.Generator().manual_seed(0))
    direct = [(name, grad) for name, image, grad in calls if image is unlabelled]
    # the student only labels the unlabelled images; the teacher needs a graph there for the rounds alone
    assert sorted(direct) == [("student", False), ("teacher", r > 0)]
    mixed = [(name, image) for name, image, grad in calls if image.shape[0] == 2 * SHAPE[0] and grad]
    assert sorted(name for name, _ in mixed) == ["student", "teacher"]
    image = mixed[0][1]
    assert torch.equal(image, mixed[1][1])
    from_labelled = torch.isclose(image[:SHAPE[0]], x)  # the first half: a box of x in the unlabelled image
    assert 0 < from_labelled.float().mean() < 1
    assert torch.allclose(image[:SHAPE[0]][~from_labelled], unlabelled[~from_labelled])
    assert terms.unsupervised.item() > 0


def test_rounds_on_mix_reconstruct_the_mixed_images_against_the_mixed_student_target(monkeypatch):
    calls, round_calls = [], []

    def seg(name):
        def f(x):
            calls.append((name, x, torch.is_grad_enabled()))
            logits = torch.zeros(x.shape[0], C, *x.shape[2:])
            logits[:, 1 if name == "student" else 2] = 1  # the student labels everything 1
            return logits.requires_grad_()
        return f

    real_round_losses = semi_losses.round_losses

    def recording(segment, rec_eps, image, teacher_probs, target, settings, generator=None):
        round_calls.append((image, target))
        return real_round_losses(segment, rec_eps, image, teacher_probs, target, settings, generator)

    monkeypatch.setattr(semi_losses, "round_losses", recording)
    x, y, unlabelled = torch.randn(SHAPE), labels(), torch.randn(SHAPE)
    settings = RoundSettings(rounds=1, weight=1.0, chain=True, rec_schedule=NoiseSchedule.linear(10),
                             sampling_steps=2, copy_paste=0.5, rounds_on_mix=True)
    cotraining_loss(seg("teacher"), seg("student"), lambda n, m, t: torch.zeros_like(n), x, y, unlabelled, settings,
                    unsupervised_weight=1.0, generator=torch.Generator().manual_seed(0))
    # the unlabelled images are only labelled (no graph there); the unlabelled rounds run on the 2B mixes
    assert sorted((name, grad) for name, image, grad in calls if image is unlabelled) == [
        ("student", False), ("teacher", False)]
    (_, labelled_target), (image, target) = round_calls  # labelled batch first, then the mix
    assert labelled_target is y and image.shape[0] == 2 * SHAPE[0]
    from_labelled = torch.isclose(image[:SHAPE[0]], x)[:, :1]  # the box of x in the first half
    assert 0 < from_labelled.float().mean() < 1
    assert torch.equal(target[:SHAPE[0]][from_labelled], y[from_labelled])  # labels inside the box
    assert (target[:SHAPE[0]][~from_labelled] == 1).all()  # the student's pseudo-label outside
    with pytest.raises(UserInputError, match="rounds_on_mix"):
        SemiSupervisedConfig(rounds_on_mix=True, copy_paste=0).validate()
    SemiSupervisedConfig(rounds_on_mix=True, copy_paste=0.5).validate()


def test_lambda_ramps_linearly_to_one():
    values = [ramp_weight(e, 10, 0.4) for e in range(10)]
    assert values[:5] == [0.0, 0.25, 0.5, 0.75, 1.0] and set(values[5:]) == {1.0}
    assert [ramp_weight(e, 2, 0.3) for e in range(2)] == [0.0, 1.0]


# ------------------------------------------------------------------------------------------ model


def test_twin_pathways_shapes_and_seg_forward():
    twin = tiny_twin()
    assert twin.seg.in_channels == IMG + C and twin.rec.in_channels == C + IMG
    x = torch.randn(SHAPE[0], IMG + C, *SHAPE[2:])
    assert twin(x, torch.tensor(1.0)).shape == (SHAPE[0], C, *SHAPE[2:])
    assert twin.rec_eps(torch.randn(SHAPE), torch.zeros(SHAPE[0], C, *SHAPE[2:]), torch.tensor(0.5)).shape == SHAPE


def test_pair_predicts_with_the_selected_model_and_keeps_the_choice_in_its_weights():
    pair = CoTrainPair(tiny_twin(0), tiny_twin(1))
    for p in pair.student.seg.parameters():  # make the two models differ visibly
        p.data.add_(0.05)
    x = torch.randn(SHAPE[0], IMG + C, *SHAPE[2:])
    t = torch.tensor(1.0)
    with torch.no_grad():
        assert torch.equal(pair(x, t), pair.teacher(x, t))
        pair.select(STUDENT)
        out_student = pair(x, t)
        assert torch.equal(out_student, pair.student(x, t)) and not torch.equal(out_student, pair.teacher(x, t))
    fresh = CoTrainPair(tiny_twin(5), tiny_twin(6))
    assert int(fresh.selected) == TEACHER
    fresh.load_state_dict(pair.state_dict())
    with torch.no_grad():
        assert int(fresh.selected) == STUDENT and torch.equal(fresh(x, t), out_student)


# ------------------------------------------------------------------------------------------ config and registry


def test_semi_config_rejects_a_copy_paste_box_outside_the_patch():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(UserInputError, match="copy_paste"):
            SemiSupervisedConfig(copy_paste=bad).validate()
    SemiSupervisedConfig(copy_paste=2 / 3).validate()


def test_semi_config_round_trip_and_validation():
    cfg = TrainingConfig(semi=SemiSupervisedConfig(rounds=3, teacher="/m"))
    back = TrainingConfig.from_dict(cfg.to_dict())
    assert back.semi == cfg.semi
    for bad in ({"rounds": -1}, {"rec_sampling_steps": 20}, {"ramp_fraction": 0.0}, {"selection_momentum": 1.0},
                {"rec_start_step": 10}, {"rec_start_step": -1}):
        with pytest.raises(UserInputError):
            SemiSupervisedConfig(**bad).validate()
    SemiSupervisedConfig(rec_start_step=None).validate()  # None: reconstructions from pure noise
    with pytest.raises(UserInputError, match="unknown SemiSupervisedConfig keys"):
        TrainingConfig.from_dict({"semi": {"round": 2}})


def test_a_saved_config_from_before_copy_paste_resumes_without_mixing(tmp_path):
    # a run begun before copy_paste existed saved no such key: resumed, it must not start mixing
    current = TrainingConfig(semi=SemiSupervisedConfig(rounds=3, rec_start_step=None))
    current.save(tmp_path / "new.json")
    assert TrainingConfig.load(tmp_path / "new.json") == current  # None values survive the load
    old = current.to_dict()
    del old["semi"]["copy_paste"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = TrainingConfig.load(tmp_path / "old.json")
    assert loaded.semi.copy_paste == 0 and loaded.semi.rounds == 3 and loaded.semi.rec_start_step is None
    assert SemiSupervisedConfig().copy_paste > 0  # while a new run mixes by default
    plain = TrainingConfig()
    plain.save(tmp_path / "plain.json")
    assert TrainingConfig.load(tmp_path / "plain.json").semi is None  # other trainers get no semi section


def test_registered_semi_trainers():
    entries = registry.available()
    assert {"semi_teacher", "semi_cotrain", "cps"} <= set(entries)
    cps = entries["cps"].cls.default_config()
    assert cps.semi.rounds == 0 and cps.semi.require_teacher is False
    cotrain = entries["semi_cotrain"].cls.default_config()
    assert cotrain.semi.rounds == 1 and cotrain.semi.require_teacher and cotrain.diffusion.sampling_steps == 1
    assert cotrain.deep_supervision is False
    assert cps.semi.copy_paste == cotrain.semi.copy_paste > 0  # both mix by default, alike


def test_teacher_checkpoint_lookup(tmp_path):
    with pytest.raises(UserInputError, match="semi_teacher"):
        resolve_teacher_checkpoint(tmp_path, 0)
    ckpt = tmp_path / "fold_0" / "checkpoint_final.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    assert resolve_teacher_checkpoint(tmp_path, 0) == ckpt
    assert resolve_teacher_checkpoint(tmp_path / "fold_0", 3) == ckpt
    assert resolve_teacher_checkpoint(ckpt, 0) == ckpt


def test_semi_trainers_refuse_the_late_denoiser():
    """--denoiser late would be ignored by build_twin: the trainers refuse it before any compute."""
    for cls in (SemiTeacherTrainer, SemiCoTrainer):
        fake = SimpleNamespace(__class__=cls)
        with pytest.raises(UserInputError, match="--denoiser late"):
            cls.apply_config(fake, TrainingConfig(diffusion=DiffusionConfig(denoiser="late")))
