"""Room for more channels in nnU-Net's sliding window.

nnunetv2's `predict_sliding_window_return_logits` sizes its accumulator from the label manager's
`num_segmentation_heads`. A predictor that returns more channels per tile than there are classes
(every reverse step, every sample, every mirror variant, uncertainty statistics) swaps in this
view of the label manager for the duration of the sliding window.
"""
from __future__ import annotations


class WideLabels:
    """The label manager, with `channels` segmentation heads; everything else is the manager's own."""

    def __init__(self, label_manager, channels: int):
        self._lm, self._channels = label_manager, channels

    def __getattr__(self, name):
        return getattr(self._lm, name)

    @property
    def num_segmentation_heads(self) -> int:
        return self._channels
