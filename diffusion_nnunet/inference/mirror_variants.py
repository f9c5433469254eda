"""nnU-Net's test-time mirroring as an ensemble: keep each mirror variant's probabilities.

nnU-Net averages the logits of the mirror variants of every tile (no mirroring, each axis, each
pair of axes, ...: 4 variants in 2D, 8 in 3D). `MirrorVariantPredictor` lets the sliding window
accumulate every variant's logits in its own channels (V x C; `nnunet_adapter.sliding_window`),
returns their mean, which is exactly nnU-Net's prediction, and keeps the variants for the case:
`last_variant_probabilities` ``(V * folds, C, *preprocessed)``, the softmax of each variant
(the sigmoid for region-based models).
`export_case` then writes the case's scores (`inference.case_scores`) with the variants as
samples, so nnU-Net's own uncertainty can be compared with a diffusion model's like with like.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch

from diffusion_nnunet.inference.predictor import DnnPredictor, run_prediction
from diffusion_nnunet.inference.review_list import predictor_case_scores, write_case_score, write_review_list
from diffusion_nnunet.nnunet_adapter import TileResult
from dnnunet_core.quiet import nnunet_output_to_log

logger = logging.getLogger(__name__)


class MirrorVariantPredictor(DnnPredictor):
    """DnnPredictor (nnU-Net models) that keeps each mirror variant's probabilities and writes case scores.

    Args:
        case_scores: write ``OUT/uncertainty/CASE_scores.json`` for every case (default True).
        **kwargs: nnUNetPredictor's arguments; ``use_mirroring`` must be True to have variants.
    """

    def __init__(self, case_scores: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.write_scores = case_scores
        self._variants: list[torch.Tensor] = []

    @property
    def last_variant_probabilities(self) -> torch.Tensor | None:
        """The current case's variants, ``(V * folds, C, *preprocessed)``; None before its first fold.

        Case state, not a side channel: nnU-Net's own loop runs every fold's sliding window and then
        `export_case`, so the variants must outlive one call; `prepare_case` resets them.
        """
        return torch.cat(self._variants) if self._variants else None

    def _mirror_variants(self) -> list[tuple[int, ...]]:
        if not self.use_mirroring or not self.allowed_mirroring_axes:
            return [()]
        axes = [m + 2 for m in self.allowed_mirroring_axes]
        return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]

    def prepare_case(self, case: str, data: torch.Tensor, properties: dict) -> torch.Tensor:
        self._variants = []  # a new case: forget the previous one's variants (one entry per fold)
        return super().prepare_case(case, data, properties)

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        labels = self.label_manager
        c, v = labels.num_segmentation_heads, len(self._mirror_variants())
        out = self.sliding_window(input_image, v * c).channels  # every variant in its own channels
        variants = out.float().reshape(v, c, *out.shape[1:])
        # softmax, or per-region sigmoid for region-based models (nnU-Net's inference nonlinearity)
        self._variants.append((torch.sigmoid(variants) if labels.has_regions else torch.softmax(variants, 1)).cpu())
        return variants.mean(0)

    @torch.inference_mode()
    def predict_tiles(self, tiles: torch.Tensor, first_tile: int) -> TileResult:
        """Each mirror variant's logits of B tiles: (B, V * C, *patch), variant-major."""
        outputs = [torch.flip(self.network(torch.flip(tiles, axes)), axes) if axes else self.network(tiles)
                   for axes in self._mirror_variants()]
        return TileResult(torch.cat(outputs, 1))

    def export_case(self, logits: torch.Tensor, properties: dict, output_truncated: str,
                    save_probabilities: bool):
        probabilities = super().export_case(logits, properties, output_truncated, save_probabilities)
        if not self.write_scores:
            return probabilities
        scores = predictor_case_scores(self.last_variant_probabilities, logits, properties,
                                       self.configuration_manager, self.dataset_json)
        write_case_score(output_truncated, scores)
        logger.debug("%s: %d mirror variants, disagreement %.4f", Path(output_truncated).name,
                     scores["num_samples"], scores["disagreement"])
        return probabilities


def predict_mirror_variants(model_dir: str | Path, input_dir: str | Path, output_dir: str | Path, folds=None,
                            device: torch.device = torch.device("cpu"), save_probabilities: bool = False,
                            checkpoint_name: str = "checkpoint_final.pth", tile_step_size: float = 0.5) -> dict:
    """Predict a folder with an nnU-Net model (mirroring on) and write its review list from the mirror variants.

    Returns:
        `write_review_list`'s result.
    """
    with nnunet_output_to_log(logger):
        predictor = MirrorVariantPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=True,
                                           perform_everything_on_device=device.type == "cuda", device=device,
                                           verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_dir), folds, checkpoint_name)
    cases = run_prediction(predictor, input_dir, output_dir, save_probabilities,
                           arguments={"model": str(model_dir), "folds": folds, "mirror_variants": True})
    return write_review_list(output_dir, model_dir, cases)
