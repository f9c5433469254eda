"""nnU-Net's loss for data-parallel training with shards of any size.

nnU-Net's DDP loss has two limits when the planned batch does not split evenly over the ranks:
its batch Dice all-gathers per-sample sums, which needs the same number of samples on every rank
(gloo aborts with "Received data size doesn't match expected size"), and DDP averages the ranks'
gradients with equal weights, so a sample on a smaller shard weighs more. Here the batch Dice
sums over the local samples before gathering (the same global Dice), and each rank's
per-sample-mean terms are weighted by its share of the batch, so that DDP's average is the
mean over the global batch, as in one process.
"""
from __future__ import annotations

import torch
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.ddp_allgather import AllGatherGrad


class ShardedBatchDiceLoss(MemoryEfficientSoftDiceLoss):
    """nnU-Net's memory-efficient soft Dice; with `ddp` and `batch_dice`, over the global batch
    whatever the ranks' batch sizes (local sums are gathered, not per-sample sums)."""

    def forward(self, x, y, loss_mask=None):
        if not (self.ddp and self.batch_dice):
            return super().forward(x, y, loss_mask)
        if self.apply_nonlin is not None:
            x = self.apply_nonlin(x)
        axes = (0, *range(2, x.ndim))  # batch and space: one sum per class
        with torch.no_grad():
            if x.ndim != y.ndim:
                y = y.view((y.shape[0], 1, *y.shape[1:]))
            if x.shape == y.shape:
                y_onehot = y.to(torch.float32)
            else:
                y_onehot = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
                y_onehot.scatter_(1, y.long(), 1)
            if not self.do_bg:
                y_onehot = y_onehot[:, 1:]
            sum_gt = (y_onehot if loss_mask is None else y_onehot * loss_mask).sum(axes, dtype=torch.float32)
        if not self.do_bg:
            x = x[:, 1:]
        masked = x if loss_mask is None else x * loss_mask
        intersect = (masked * y_onehot).sum(axes, dtype=torch.float32)
        sum_pred = masked.sum(axes, dtype=torch.float32)
        intersect, sum_pred, sum_gt = (AllGatherGrad.apply(t).sum(0, dtype=torch.float32)
                                       for t in (intersect, sum_pred, sum_gt))
        dc = (2 * intersect + self.smooth) / (sum_gt + sum_pred + float(self.smooth)).clamp_min(1e-8)
        return -dc.mean()


def make_shard_aware(loss: torch.nn.Module, local_batch: int, global_batch: int, world_size: int) -> torch.nn.Module:
    """Adapt a loss built by nnU-Net's `_build_loss` (with ddp=True) to this rank's shard, in place.

    Batch-Dice modules are replaced by `ShardedBatchDiceLoss`; the weights of terms that are means
    over the local samples (cross-entropy, and a Dice without batch Dice) are multiplied by
    `local_batch * world_size / global_batch` (1 for even shards).

    Args:
        loss: the loss (a `DeepSupervisionWrapper` around `DC_and_CE_loss` / `DC_and_BCE_loss`).
        local_batch: this rank's samples per iteration.
        global_batch: the planned batch.
        world_size: number of ranks.

    Returns:
        `loss`, changed in place.
    """
    share = local_batch * world_size / global_batch
    for parent in list(loss.modules()):
        for name, child in list(parent.named_children()):
            inner = getattr(child, "_orig_mod", child)  # nnU-Net compiles the Dice on CUDA
            if type(inner) is MemoryEfficientSoftDiceLoss and inner.ddp and inner.batch_dice:
                dice = ShardedBatchDiceLoss(inner.apply_nonlin, inner.batch_dice, inner.do_bg, inner.smooth, inner.ddp)
                setattr(parent, name, dice if inner is child else torch.compile(dice))
        dice = getattr(parent, "dc", None)
        if hasattr(parent, "weight_ce"):
            parent.weight_ce = parent.weight_ce * share
            if dice is not None and not getattr(dice, "batch_dice", True):
                parent.weight_dice = parent.weight_dice * share
    return loss
