"""``synthetic-brats2d``: 2D brain-tumour MR slices in four channels, with BraTS's nested regions.

What is simulated, and why it is close enough to BraTS for region-based training:

- **Skull-stripped brain** on a zero background (as BraTS ships it): an irregular ellipse with a
  grey-matter cortex band, white matter inside it, CSF in two ventricles and in the sulci of a
  smooth random cortex, and smooth tissue texture.
- **Tumour**, three nested compartments in BraTS's label convention: an irregular necrotic /
  non-enhancing centre (label 2) inside an enhancing rim (label 3) inside peritumoural oedema
  (label 1). The regions nnU-Net trains on are BraTS's: whole tumour = {1, 2, 3}, tumour core
  = {2, 3}, enhancing tumour = {3} (``regions_class_order`` 1, 2, 3, as in nnU-Net's BraTS
  conversion), so whole contains core contains enhancing.
- **Four MR-like channels**, T1, T1ce, T2 and FLAIR, with the tissue contrasts of those
  sequences: T1 (WM > GM > CSF, tumour dark), T1ce (as T1, the rim enhances), T2 (CSF and
  oedema bright), FLAIR (CSF suppressed, oedema bright). Each region is visible in a different
  subset of the channels (oedema in T2/FLAIR, the rim in T1ce), so the channels carry
  complementary information, as in BraTS.
- **Acquisition**: a smooth multiplicative bias field and Rician noise per channel, and a
  random global intensity scale per channel (MR intensities have no absolute unit).

Geometry: 128 x 128 pixels of 1 x 1 mm, written as 2D NIfTI (nnU-Net plans only ``2d``).
Every region covers at least `MIN_REGION_PIXELS` pixels.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from diffusion_nnunet.datasets.base import DatasetGenerator, simulated_cases
from diffusion_nnunet.datasets.difficulty import bias_field
from diffusion_nnunet.datasets.shapes import irregular_ellipse_distance, random_harmonics, smooth_noise

logger = logging.getLogger(__name__)

SHAPE = (128, 128)
SPACING = (1.0, 1.0)
CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
#: label values of the label maps (BraTS: 1 oedema, 2 necrotic / non-enhancing core, 3 enhancing)
OEDEMA, NECROSIS, ENHANCING = 1, 2, 3
#: dataset.json labels: nnU-Net's region-based form of BraTS
LABELS = {"background": 0, "whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}
REGIONS_CLASS_ORDER = (1, 2, 3)
MIN_REGION_PIXELS = 40

# mean intensity per tissue and channel (T1, T1ce, T2, FLAIR), before scale, bias and noise
_TISSUE = {
    "wm": (1.00, 1.00, 0.45, 0.55),
    "gm": (0.70, 0.72, 0.65, 0.70),
    "csf": (0.25, 0.25, 1.50, 0.15),
    "oedema": (0.60, 0.62, 1.25, 1.35),
    "necrosis": (0.35, 0.38, 1.35, 0.80),
    "enhancing": (0.65, 1.60, 0.90, 1.00),
}


def _brain(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> dict[str, np.ndarray]:
    """Tissue masks (brain, gm, csf) of a skull-stripped axial slice."""
    centre = (SHAPE[0] / 2 + rng.uniform(-4, 4), SHAPE[1] / 2 + rng.uniform(-4, 4))
    radii = (rng.uniform(52.0, 60.0), rng.uniform(42.0, 50.0))
    distance = irregular_ellipse_distance(yy, xx, centre, radii, rng.uniform(-0.15, 0.15),
                                          random_harmonics(rng, max_amplitude=0.04))
    brain = distance < 1.0
    cortex_depth = rng.uniform(0.12, 0.18) * (1 + 0.35 * smooth_noise(rng, SHAPE, 4.0))
    gm = brain & (distance > 1.0 - cortex_depth)
    sulci = gm & (smooth_noise(rng, SHAPE, 1.5) > 1.3)
    csf = sulci.copy()
    for side in (-1, 1):  # two lateral ventricles beside the midline
        v_centre = (centre[0] + rng.uniform(-6, 2), centre[1] + side * rng.uniform(5, 9))
        ventricle = irregular_ellipse_distance(yy, xx, v_centre, (rng.uniform(10, 16), rng.uniform(3, 5)),
                                               rng.uniform(-0.3, 0.3), random_harmonics(rng)) < 1.0
        csf |= ventricle & brain
    return {"brain": brain, "gm": gm & ~csf, "csf": csf}


def _tumour(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """BraTS label map (0, 1, 2, 3) of nested oedema > enhancing rim > necrotic centre, inside the brain."""
    inside = np.argwhere(ndimage.binary_erosion(brain, iterations=24))
    centre = tuple(inside[rng.integers(len(inside))].astype(float))
    core_radii = (rng.uniform(7.0, 14.0), rng.uniform(7.0, 14.0))
    angle = rng.uniform(0, np.pi)
    core = irregular_ellipse_distance(yy, xx, centre, core_radii, angle, random_harmonics(rng, max_amplitude=0.12))
    oedema_scale = rng.uniform(1.5, 2.3)
    # the oedema spreads irregularly (along white matter): its own outline, always around the core
    oedema = irregular_ellipse_distance(yy, xx, centre, tuple(r * oedema_scale for r in core_radii),
                                        angle + rng.uniform(-0.5, 0.5), random_harmonics(rng, max_amplitude=0.15))
    label = np.zeros(SHAPE, np.uint8)
    label[((oedema < 1.0) | (core < 1.1)) & brain] = OEDEMA
    label[core < 1.0] = ENHANCING
    label[core < rng.uniform(0.45, 0.7)] = NECROSIS
    return label


def simulate(rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Simulate one case.

    Args:
        rng: random generator (its state fully determines the output).

    Returns:
        ``((T1, T1ce, T2, FLAIR) float32 (128, 128) each, label uint8 (128, 128))``.
    """
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(float)
    while True:  # redraw the rare geometry where a compartment is too small
        tissue = _brain(rng, yy, xx)
        label = _tumour(rng, yy, xx, tissue["brain"])
        regions = [np.isin(label, r) for r in LABELS.values() if isinstance(r, tuple)]
        if min(int(r.sum()) for r in regions) >= MIN_REGION_PIXELS:
            break
        logger.debug("redrawing a brain-tumour geometry: a region has fewer than %d pixels", MIN_REGION_PIXELS)
    classes = np.full(SHAPE, "wm", dtype=object)
    classes[tissue["gm"]] = "gm"
    classes[tissue["csf"]] = "csf"
    classes[label == OEDEMA] = "oedema"
    classes[label == NECROSIS] = "necrosis"
    classes[label == ENHANCING] = "enhancing"
    texture = 0.06 * smooth_noise(rng, SHAPE, 2.0)
    channels = []
    for c in range(len(CHANNELS)):
        mean = np.zeros(SHAPE)
        for name, values in _TISSUE.items():
            mean[classes == name] = values[c] * rng.uniform(0.92, 1.08)
        # partial-volume blur at tissue borders, then texture, bias field and Rician noise
        image = ndimage.gaussian_filter(mean, 0.8) * (1 + texture) * tissue["brain"]
        image = bias_field(image, rng.uniform(0.0, 0.3), rng)
        sigma = rng.uniform(0.03, 0.06)
        noisy = np.hypot(image + sigma * rng.standard_normal(SHAPE), sigma * rng.standard_normal(SHAPE))
        scale = rng.uniform(300.0, 1500.0)
        channels.append((scale * noisy * tissue["brain"]).astype(np.float32))
    return tuple(channels), label


GENERATOR = DatasetGenerator(
    name="synthetic-brats2d",
    folder_name="SyntheticBraTS2D",
    default_id=504,
    channel_names=CHANNELS,
    labels=LABELS,
    regions_class_order=REGIONS_CLASS_ORDER,
    default_num_train=60,
    default_num_test=20,
    cases=simulated_cases("brats", simulate, SPACING),
    description="Synthetic 2D brain-tumour MR (T1, T1ce, T2, FLAIR), skull-stripped; BraTS's nested regions "
                "whole tumour > tumour core > enhancing tumour (region-based labels).",
    reference="Generated by diffusion_nnunet.datasets.synthetic_brats2d",
    licence="CC0",
    test_artefact=bias_field,
    degrade_window=(0.0, float("inf")),
    value_range=(0.0, float("inf")),
)
