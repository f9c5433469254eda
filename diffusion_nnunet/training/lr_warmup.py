"""Linear learning-rate warm-up from 0, composed with nnU-Net's per-epoch poly schedule.

nnU-Net sets the poly learning rate once per epoch (``lr_scheduler.step(epoch)`` in
``on_train_epoch_start``). The warm-up multiplies that rate, per iteration, by
``min(1, i / n)`` for the i-th training iteration of the run (from 0) and n warm-up iterations,
so the first update has rate 0 and the poly rate is reached after n iterations. The authors of
the semi-supervised method warm up per epoch (``GradualWarmupScheduler``: epoch e of the first
tenth at ``e / W`` of the rate, epoch 0 at 0); per iteration the same ramp costs no whole epoch
at rate 0 in short runs. Written here because nnunetv2 has no warm-up and torch's
``LinearLR`` / ``SequentialLR`` step per call, which would fight nnU-Net's ``step(epoch)``.
"""
from __future__ import annotations


def warmup_iterations(fraction: float, total_iterations: int) -> int:
    """n = round(fraction * total_iterations), at least 1 when fraction > 0 (0: no warm-up).

    Args:
        fraction: share of the run's iterations, in [0, 1).
        total_iterations: epochs x iterations per epoch.
    """
    if fraction <= 0:
        return 0
    return max(1, round(fraction * total_iterations))


def warmup_factor(iteration: int, num_warmup: int) -> float:
    """``min(1, iteration / num_warmup)`` (1 when num_warmup is 0).

    Args:
        iteration: training iteration of the run, from 0.
        num_warmup: warm-up iterations (`warmup_iterations`).
    """
    if num_warmup <= 0:
        return 1.0
    return min(1.0, iteration / num_warmup)
