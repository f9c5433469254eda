"""Loss terms of the semi-supervised teacher and twin students (methods.md section 7), as pure functions.

Networks enter as callables, so every term is testable without files or trainers:

    segment(image) -> x0 logits (B, C, *spatial)            # Seg at the noisiest step, from noise
    rec_eps(noisy_image, mask_pm1, t_net) -> eps prediction  # Rec, mask given as 2p - 1

Targets are class-index maps (B, 1, *spatial) or (B, *spatial): labels, or hard pseudo-labels
``argmax p`` of the other model (never soft probabilities, and never with gradient). A pseudo-label
may be `IGNORE` where the other model is not confident enough; such pixels count in no term.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_nnunet.configs.training_config import SemiSupervisedConfig
from diffusion_nnunet.diffusion.sampling import sample
from diffusion_nnunet.diffusion.schedule import NoiseSchedule, mask_to_x0

Segment = Callable[[Tensor], Tensor]
RecEps = Callable[[Tensor, Tensor, Tensor], Tensor]


IGNORE = -1  # pseudo-label value of a pixel left out of the loss (the other model is unsure there)


def _index_map(target: Tensor, like: Tensor) -> Tensor:
    """(B, *spatial) long class indices from a (B, 1, *spatial) or (B, *spatial) target."""
    if target.ndim == like.ndim:
        target = target[:, 0]
    return target.long()


def soft_dice_loss(probs: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """1 - mean foreground soft Dice, summed over the batch and all voxels (nnU-Net's batch Dice).

    Args:
        probs: class probabilities (B, C, *spatial).
        target: class indices (B, 1, *spatial) or (B, *spatial); `IGNORE` pixels are left out.
        smooth: added to numerator and denominator (a class absent from both then scores 1).
    """
    index = _index_map(target, probs)
    # masked unconditionally (x * 1 is exact): a data-dependent branch would sync the GPU per call
    keep = (index != IGNORE).unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(index.clamp(min=0), probs.shape[1]).movedim(-1, 1).to(probs.dtype) * keep
    probs = probs * keep
    axes = [0] + list(range(2, probs.ndim))
    intersection = (probs * onehot).sum(axes)
    denominator = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1 - dice[1:].mean() if probs.shape[1] > 1 else 1 - dice.mean()


def segmentation_loss(logits: Tensor, target: Tensor, ce_weight: float = 1.0) -> Tensor:
    """Dice of softmax(logits) against `target` (+ ce_weight * cross-entropy), `IGNORE` pixels left out."""
    loss = soft_dice_loss(torch.softmax(logits, 1), target)
    if ce_weight:
        index = _index_map(target, logits)
        # sum / kept rather than the mean with ignore_index: that mean is NaN when nothing is kept
        ce = F.cross_entropy(logits, index, ignore_index=IGNORE, reduction="sum") / (index != IGNORE).sum().clamp(min=1)
        loss = loss + ce_weight * ce
    return loss


def hard_pseudo_label(logits: Tensor, threshold: float = 0.0) -> Tensor:
    """argmax over classes as a (B, 1, *spatial) long map, cut from the graph.

    Args:
        logits: the other model's logits (B, C, *spatial).
        threshold: pixels whose top softmax probability is below it become `IGNORE` (0: none do).
    """
    logits = logits.detach()
    label = logits.argmax(1, keepdim=True)
    if threshold > 0:
        confident = torch.softmax(logits, 1).amax(1, keepdim=True) >= threshold
        label = torch.where(confident, label, torch.full_like(label, IGNORE))
    return label


def cross_pseudo_supervision(student_logits: Tensor, teacher_logits: Tensor, ce_weight: float = 1.0,
                             threshold: float = 0.0) -> Tensor:
    """``Dice(pS, argmax pT) + Dice(pT, argmax pS)``: each model learns the other's hard labels.

    Args:
        student_logits, teacher_logits: the two models' logits on the same images.
        ce_weight: cross-entropy weight added to each Dice term.
        threshold: confidence below which a pseudo-label pixel is ignored (see `hard_pseudo_label`).
    """
    return (segmentation_loss(student_logits, hard_pseudo_label(teacher_logits, threshold), ce_weight)
            + segmentation_loss(teacher_logits, hard_pseudo_label(student_logits, threshold), ce_weight))


def random_box_mask(shape: tuple[int, ...], fraction: float, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """(B, 1, *spatial) float mask: 1 inside one axis-aligned box per sample, 0 elsewhere.

    Args:
        shape: (B, C, *spatial) of the batch the mask is for.
        fraction: each side of the box as a share of the patch's side (rounded, at least 1 pixel).
        generator: random generator of the boxes' places.
        device: device of the mask.
    """
    batch, spatial = shape[0], shape[2:]
    mask = torch.zeros((batch, 1, *spatial), device=device)
    sides = [max(1, min(n, round(fraction * n))) for n in spatial]
    corners = [torch.randint(0, n - side + 1, (batch,), generator=generator).tolist() for n, side in zip(spatial, sides)]
    for b in range(batch):
        mask[(b, 0, *(slice(c[b], c[b] + side) for c, side in zip(corners, sides)))] = 1
    return mask


def copy_paste(first: Tensor, second: Tensor, box: Tensor) -> Tensor:
    """Bidirectional copy-paste (Bai et al., CVPR 2023, "BCP") of two batches of the same shape.

    Sample b of the first half is ``first[b]`` inside its box and ``second[b]`` outside; the second
    half the other way round. Called on (labelled, unlabelled) images and then on (labels,
    pseudo-labels), it gives mixed images and their targets: with few labels this puts ground truth
    into the context of unlabelled anatomy, and pseudo-labels of unlabelled anatomy beside
    labelled context.

    Args:
        first, second: images (B, C, *spatial) or class-index maps (B, 1, *spatial).
        box: (B, 1, *spatial) mask of `random_box_mask`.

    Returns:
        The 2B mixed samples.
    """
    inside = box.bool()
    return torch.cat([torch.where(inside, first, second), torch.where(inside, second, first)])


def reconstruction_loss(rec_eps: RecEps, image: Tensor, mask_pm1: Tensor, schedule: NoiseSchedule,
                        t: Tensor | None = None, noise: Tensor | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
    """``L_rec = || eps' - Rec(sqrt(abar_t') I + sqrt(1 - abar_t') eps', 2p - 1, t') ||^2`` (mean).

    The mask is used as given: pass ``2 * softmax(Seg(I)) - 1`` with its graph, and the gradient
    reaches Seg through it.

    Args:
        rec_eps: the Rec pathway.
        image: I, (B, image channels, *spatial).
        mask_pm1: 2p - 1, (B, C, *spatial).
        schedule: Rec's noise schedule.
        t: (B,) step indices t' (uniform in 0..T'-1 when None).
        noise: eps' (drawn when None).
        generator: random generator for t' and eps'.
    """
    return reconstruction_loss_and_estimate(rec_eps, image, mask_pm1, schedule, t, noise, generator)[0]


def reconstruction_loss_and_estimate(rec_eps: RecEps, image: Tensor, mask_pm1: Tensor, schedule: NoiseSchedule,
                                     t: Tensor | None = None, noise: Tensor | None = None,
                                     generator: torch.Generator | None = None, clip: float | None = None
                                     ) -> tuple[Tensor, Tensor]:
    """`reconstruction_loss` and the one-step x0 estimate of the same Rec pass.

    ``x0_hat = (x_t' - sqrt(1 - abar_t') eps_hat) / sqrt(abar_t')``, detached (the authors'
    reconstruction x~_r: their rounds segment this estimate, not a sampler's output).

    Args:
        rec_eps, image, mask_pm1, schedule, t, noise, generator: as `reconstruction_loss`.
        clip: x0_hat is clipped to +-clip (None: not clipped).

    Returns:
        (L_rec, x0_hat).
    """
    if t is None:
        t = torch.randint(0, schedule.num_steps, (image.shape[0],), device=image.device, generator=generator)
    if noise is None:
        noise = torch.randn(image.shape, device=image.device, dtype=image.dtype, generator=generator)
    noisy = schedule.q_sample(image, t, noise=noise)
    eps = rec_eps(noisy, mask_pm1, schedule.network_time(t))
    abar = schedule._gather(schedule.alphas_cumprod, t, image)  # (B, 1, ..., 1)
    x0_hat = ((noisy - (1 - abar).sqrt() * eps.detach()) / abar.sqrt()).detach()
    if clip is not None:
        x0_hat = x0_hat.clamp(-clip, clip)
    return F.mse_loss(eps, noise), x0_hat


@torch.no_grad()
def ddim_reconstruct(rec_eps: RecEps, mask_pm1: Tensor, image_shape: tuple[int, ...], schedule: NoiseSchedule,
                     steps: int, clip: float = 5.0, generator: torch.Generator | None = None,
                     start_image: Tensor | None = None, start_step: int | None = None) -> Tensor:
    """Draw an image with Rec, conditioned on a mask: deterministic DDIM in `steps` steps.

    From pure noise at the last step by default; with `start_image`, from that image noised to
    `start_step` of `schedule` (SDEdit-style: the coarse image survives, the mask redraws the rest).
    The one sampler (`diffusion.sampling.sample`) with epsilon-prediction: ``x0_hat = (x_t -
    sqrt(1 - abar_t) eps) / sqrt(abar_t)``, clipped to +-clip (at the noisiest step sqrt(abar_t)
    is tiny and would amplify errors), then a DDIM step.

    Args:
        rec_eps: the Rec pathway.
        mask_pm1: conditioning mask 2p - 1, (B, C, *spatial).
        image_shape: shape of the image to draw, (B, image channels, *spatial).
        schedule: Rec's training schedule (re-spaced to `steps`).
        steps: reverse steps (at most ``start_step + 1`` with a start image).
        clip: bound of the x0 estimate.
        generator: random generator of the start noise.
        start_image: image to start from (B, image channels, *spatial); None: pure noise.
        start_step: step of `schedule` the start image is noised to (default: the last).
    """
    x0_start = None
    if start_image is not None:  # the start counts in the training schedule: sample from its first k + 1 steps
        k = schedule.num_steps - 1 if start_step is None else int(start_step)
        schedule, steps = schedule.truncate(k + 1), min(steps, k + 1)
        x0_start = start_image.to(mask_pm1.dtype)
    return sample(lambda x_t, t_net: rec_eps(x_t, mask_pm1, t_net), tuple(image_shape), schedule, "ddim", steps,
                  x0_start=x0_start, generator=generator, device=mask_pm1.device, dtype=mask_pm1.dtype,
                  prediction_type="epsilon", clip_sample_range=clip).x0


@dataclass(kw_only=True)
class RoundSettings:
    """How the reconstruction rounds run (values of `SemiSupervisedConfig`: `from_config`).

    Args:
        rounds: R (0: no rounds).
        weight: w.
        chain: reconstruct round r + 1 from the mask predicted on round r's reconstruction.
        rec_schedule: Rec's noise schedule.
        sampling_steps: DDIM steps per reconstruction.
        clip: x0 clip of the reconstruction sampler.
        ce_weight: cross-entropy weight of the Dice terms.
        start_step: reconstructions start from the real image noised to this step of
            `rec_schedule`; None: from pure noise.
        rec_into_seg: L_rec^r back-propagates into Seg through the mask (off: it trains Rec only).
        ramp_rounds: the round terms of labelled batches ramp up with lambda like L_u.
        pseudo_threshold: pseudo-label pixels where the labelling model's top probability is
            below it are ignored (0: every pixel counts).
        copy_paste: 0: cross pseudo-supervision on the unlabelled images; else on bidirectional
            copy-paste mixes of the labelled and unlabelled batch (`copy_paste`), with boxes
            of this share of the patch's side.
        rounds_on_mix: with `copy_paste`, the unlabelled round terms run on the mixed images
            against the mixed targets (labels and the student's pseudo-labels) instead of on the
            unlabelled images against the student's pseudo-labels.
        one_step: x~_r is the one-step x0 estimate of the Rec pass that gives L_rec^r
            (`reconstruction_loss_and_estimate`, clipped to `clip`) instead of a DDIM run.
    """

    rounds: int
    weight: float
    chain: bool
    rec_schedule: NoiseSchedule
    sampling_steps: int
    clip: float = 5.0
    ce_weight: float = 1.0
    start_step: int | None = None
    rec_into_seg: bool = True
    ramp_rounds: bool = True
    pseudo_threshold: float = 0.0
    copy_paste: float = 0.0
    rounds_on_mix: bool = False
    one_step: bool = False

    @classmethod
    def from_config(cls, semi: SemiSupervisedConfig, rec_schedule: NoiseSchedule) -> "RoundSettings":
        """The settings of a semi-supervised config, with Rec's schedule (built from `rec_timesteps`)."""
        return cls(rounds=semi.rounds, weight=semi.round_weight, chain=semi.chain_rounds, rec_schedule=rec_schedule,
                   sampling_steps=semi.rec_sampling_steps, clip=semi.rec_clip, ce_weight=semi.ce_weight,
                   start_step=semi.rec_start_step, rec_into_seg=semi.rec_into_seg, ramp_rounds=semi.ramp_rounds,
                   pseudo_threshold=semi.pseudo_threshold, copy_paste=semi.copy_paste,
                   rounds_on_mix=semi.rounds_on_mix, one_step=semi.rec_one_step)


def round_losses(segment: Segment, rec_eps: RecEps, image: Tensor, teacher_probs: Tensor, target: Tensor,
                 settings: RoundSettings, generator: torch.Generator | None = None) -> Tensor:
    """``(w / R) * sum_r [Dice(p~_r, target) + L_rec^r]``, with p~_r = Seg_Te(x~_r).

    Round r: the teacher draws x~_r with Rec from the mask of round r (the teacher's own mask of
    the real image for r = 1; with ``settings.one_step`` x~_r is the x0 estimate of the L_rec^r
    pass itself), segments it, and is scored against `target` (labels, or the
    student's hard pseudo-labels); L_rec^r is the reconstruction loss of the real image from the
    same mask, with gradient into Seg through the mask unless ``settings.rec_into_seg`` is off.

    Args:
        segment: the teacher's Seg.
        rec_eps: the teacher's Rec.
        image: the real images.
        teacher_probs: softmax of the teacher's logits on `image` (with graph).
        target: class indices to score p~_r against.
        settings: rounds, weight, sampler.
        generator: random generator.
    """
    if settings.rounds <= 0:
        return image.new_zeros(())
    total = image.new_zeros(())
    mask = teacher_probs
    for _ in range(settings.rounds):
        rec_mask = mask_to_x0(mask if settings.rec_into_seg else mask.detach())
        if settings.one_step:
            rec_loss, reconstruction = reconstruction_loss_and_estimate(
                rec_eps, image, rec_mask, settings.rec_schedule, generator=generator, clip=settings.clip)
        else:
            reconstruction = ddim_reconstruct(rec_eps, mask_to_x0(mask.detach()), tuple(image.shape),
                                              settings.rec_schedule, settings.sampling_steps, settings.clip,
                                              generator, start_image=None if settings.start_step is None else image,
                                              start_step=settings.start_step)
            rec_loss = reconstruction_loss(rec_eps, image, rec_mask, settings.rec_schedule, generator=generator)
        logits = segment(reconstruction)
        total = total + segmentation_loss(logits, target, settings.ce_weight) + rec_loss
        if settings.chain:
            mask = torch.softmax(logits, 1)
    return settings.weight / settings.rounds * total


def ramp_weight(epoch: int, num_epochs: int, ramp_fraction: float, whole_run: bool = False) -> float:
    """lambda(epoch) = min(1, epoch / ramp_epochs): 0 at epoch 0, linear to 1 at ramp_epochs.

    The first epoch is supervised only: pseudo-labels of untrained models (all background, or
    the pre-trained teacher's label-free masks) would otherwise pull both models to a trivial
    agreement before the labels have shaped them. With `whole_run`, the authors' ramp
    ``(epoch + 1) / num_epochs`` instead (above 0 from the first epoch, 1 at the last).

    Args:
        epoch: current epoch, from 0.
        num_epochs: epochs of the run.
        ramp_fraction: share of the epochs over which lambda ramps up (unused with `whole_run`).
        whole_run: the authors' whole-run ramp.
    """
    if whole_run:
        return min(1.0, (epoch + 1) / max(1, num_epochs))
    ramp_epochs = max(1, round(ramp_fraction * num_epochs))
    return min(1.0, epoch / ramp_epochs)


@dataclass
class CoTrainingTerms:
    """The parts of one co-training loss (for logging and tests)."""

    total: Tensor
    supervised: Tensor
    unsupervised: Tensor
    weight: float


def cotraining_loss(teacher_segment: Segment, student_segment: Segment, teacher_rec: RecEps,
                    labelled_image: Tensor, label: Tensor, unlabelled_image: Tensor | None,
                    settings: RoundSettings, unsupervised_weight: float,
                    generator: torch.Generator | None = None) -> CoTrainingTerms:
    """``L = lambda * L_u + L_s`` of one iteration.

    L_s (labelled batch): Dice(S, y) + Dice(Te, y) + round terms against y (those scaled by
    lambda too with ``settings.ramp_rounds``).
    L_u (unlabelled batch): Dice(pS, argmax pT) + Dice(pT, argmax pS) + round terms against
    argmax pS, each pseudo-label without the pixels below ``settings.pseudo_threshold``; with
    ``settings.copy_paste`` the two Dice terms score both models on copy-paste mixes of the
    labelled and unlabelled batch against the mixed labels and other model's pseudo-labels (and
    with ``settings.rounds_on_mix`` the round terms too, against the student's mixed target). Only
    images of the unlabelled batch are seen; without one (no unlabelled cases), L = L_s, plain
    supervised training of both models. At lambda = 0 L_u is not computed (it would count nothing).

    Args:
        teacher_segment, student_segment: Seg of teacher and student.
        teacher_rec: the teacher's Rec.
        labelled_image, label: the labelled batch.
        unlabelled_image: images of the unlabelled batch, or None.
        settings: round settings (and CE weight).
        unsupervised_weight: lambda(epoch).
        generator: random generator.
    """
    ce = settings.ce_weight
    teacher_logits = teacher_segment(labelled_image)
    supervised = segmentation_loss(student_segment(labelled_image), label, ce) \
        + segmentation_loss(teacher_logits, label, ce)
    round_scale = unsupervised_weight if settings.ramp_rounds else 1.0
    if round_scale:
        supervised = supervised + round_scale * round_losses(
            teacher_segment, teacher_rec, labelled_image, torch.softmax(teacher_logits, 1), label, settings, generator)
    unsupervised = labelled_image.new_zeros(())
    if unlabelled_image is not None and unsupervised_weight:
        threshold = settings.pseudo_threshold
        if settings.copy_paste:
            # the direct passes only label (and feed the rounds): no graph where nothing needs one
            with torch.set_grad_enabled(settings.rounds > 0 and not settings.rounds_on_mix
                                        and torch.is_grad_enabled()):
                teacher_u = teacher_segment(unlabelled_image)
            with torch.no_grad():
                student_u = student_segment(unlabelled_image)
            n = min(labelled_image.shape[0], unlabelled_image.shape[0])
            box = random_box_mask(tuple(unlabelled_image[:n].shape), settings.copy_paste, generator,
                                  unlabelled_image.device)
            mixed = copy_paste(labelled_image[:n], unlabelled_image[:n], box)
            truth = _index_map(label[:n], labelled_image).unsqueeze(1)
            from_teacher = copy_paste(truth, hard_pseudo_label(teacher_u[:n], threshold), box)
            student_label = hard_pseudo_label(student_u, threshold)
            from_student = copy_paste(truth, student_label[:n], box)
            teacher_mixed = teacher_segment(mixed)
            unsupervised = segmentation_loss(student_segment(mixed), from_teacher, ce) \
                + segmentation_loss(teacher_mixed, from_student, ce)
            # the rounds' image, the teacher's logits there (with graph) and their target
            rounds_on = (mixed, teacher_mixed, from_student) if settings.rounds_on_mix \
                else (unlabelled_image, teacher_u, student_label)
        else:
            teacher_u = teacher_segment(unlabelled_image)
            student_u = student_segment(unlabelled_image)
            student_label = hard_pseudo_label(student_u, threshold)
            unsupervised = cross_pseudo_supervision(student_u, teacher_u, ce, threshold)
            rounds_on = (unlabelled_image, teacher_u, student_label)
        round_image, round_logits, round_target = rounds_on
        unsupervised = unsupervised + round_losses(teacher_segment, teacher_rec, round_image,
                                                   torch.softmax(round_logits, 1), round_target, settings, generator)
    return CoTrainingTerms(unsupervised_weight * unsupervised + supervised, supervised.detach(),
                           unsupervised.detach(), unsupervised_weight)
