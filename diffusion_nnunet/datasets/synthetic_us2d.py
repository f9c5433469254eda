"""``synthetic-us2d``: 2D B-mode-ultrasound-like images with a tissue layer and a lesion.

What is simulated, and why it is close enough to real ultrasound for a segmentation pipeline:

- **Tissue echogenicity map**: a bright skin line, hypo-echoic subcutaneous fat with bright
  septa, and deeper tissue with laterally elongated texture.
- **Layer (label 1)**: a wavy band of varying thickness (like a muscle/fascia layer), brighter
  than its surroundings, with internal striations and bright fascia lines at both borders.
- **Lesion (label 2)**: a hypo-echoic irregular ellipse (cyst/nodule-like) of random size,
  shape and position, with a brighter wall and posterior acoustic enhancement below it.
- **Speckle**: the echogenicity scales complex Gaussian scatterers that are blurred by an
  anisotropic point-spread function (finer axially than laterally); the envelope is
  Rayleigh-distributed and spatially correlated, as in fully developed speckle. Pixel
  intensities of the structures and the background therefore overlap: a global threshold
  does not segment them, context does.
- **Depth attenuation**: amplitude decays exponentially with depth (random coefficient).
- **Log compression and random gain/dynamic range per image**: intensities are mapped to
  8-bit grey values like a scanner display, so the same tissue has different grey values in
  different images and per-image intensity normalisation matters.

Geometry: 128 x 128 pixels of 0.3 x 0.3 mm (rows = depth). Written as 2D NIfTI so that
nnU-Net plans only its ``2d`` configuration. Every structure covers at least 150 pixels.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from diffusion_nnunet.datasets.base import DatasetGenerator, simulated_cases
from diffusion_nnunet.datasets.difficulty import acoustic_shadow
from diffusion_nnunet.datasets.shapes import irregular_ellipse_distance, random_harmonics, smooth_noise

logger = logging.getLogger(__name__)

SHAPE = (128, 128)
SPACING = (0.3, 0.3)  # (row = axial depth, column = lateral), mm
LABELS = {"background": 0, "layer": 1, "lesion": 2}
MIN_STRUCTURE_PIXELS = 150
PSF_SIGMA = (0.9, 1.8)  # speckle correlation (axial, lateral) in pixels


def _wave(rng: np.random.Generator, x: np.ndarray, amplitude: float, wavelengths: tuple[float, float]) -> np.ndarray:
    """A smooth random 1D curve: two sinusoids of random phase and wavelength."""
    out = np.zeros_like(x, dtype=float)
    for weight in (1.0, 0.4):
        wavelength = rng.uniform(*wavelengths)
        out += weight * amplitude * np.sin(2 * np.pi * x / wavelength + rng.uniform(0, 2 * np.pi))
    return out


def _tissue(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background echogenicity (skin, fat with septa, textured deep tissue) and fat depth per column."""
    x = xx[0]
    skin = rng.uniform(3.0, 6.0)
    fat_bottom = skin + rng.uniform(10.0, 20.0) + _wave(rng, x, rng.uniform(1.0, 3.0), (50.0, 150.0))
    reflectivity = np.exp(0.35 * smooth_noise(rng, SHAPE, (2.0, 7.0)))
    fat = (yy >= skin) & (yy < fat_bottom[None, :])
    reflectivity[fat] *= 0.45
    for _ in range(rng.integers(2, 5)):  # thin bright septa crossing the fat obliquely
        row0, slope = rng.uniform(skin, fat_bottom.mean()), rng.uniform(-0.15, 0.15)
        septum = np.exp(-((yy - row0 - slope * (xx - 64)) / 0.8) ** 2) * fat
        reflectivity += rng.uniform(1.5, 3.0) * septum
    reflectivity[yy < skin] = 4.0
    return reflectivity, fat_bottom


def _layer(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, fat_bottom: np.ndarray,
           reflectivity: np.ndarray) -> np.ndarray:
    """Paint the wavy band into `reflectivity`; return its mask."""
    x = xx[0]
    thickness = rng.uniform(14.0, 22.0) * (1.0 + 0.25 * np.sin(2 * np.pi * x / rng.uniform(60, 200)
                                                                 + rng.uniform(0, 2 * np.pi)))
    center = rng.uniform(fat_bottom.max() + thickness.max() / 2 + 4, 92.0) + _wave(rng, x, rng.uniform(2.0, 7.0),
                                                                                   (60.0, 220.0))
    top, bottom = center - thickness / 2, center + thickness / 2
    mask = (yy >= top[None, :]) & (yy < bottom[None, :])
    depth_fraction = (yy - top[None, :]) / thickness[None, :]
    striations = 0.5 + 0.5 * np.cos(2 * np.pi * rng.integers(3, 7) * depth_fraction + rng.uniform(0, 2 * np.pi))
    reflectivity[mask] *= rng.uniform(2.5, 4.0) * (0.7 + 0.6 * striations[mask])
    for edge in (top, bottom):
        reflectivity += rng.uniform(4.0, 8.0) * np.exp(-((yy - edge[None, :]) / 1.2) ** 2)
    return mask


def _lesion(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Irregular ellipse: return (inside mask, normalised distance map)."""
    radii = (rng.uniform(7.0, 15.0), rng.uniform(9.0, 22.0))
    margin = max(radii) * 0.9
    center = (rng.uniform(14.0 + margin, SHAPE[0] - 6.0 - margin), rng.uniform(margin, SHAPE[1] - margin))
    distance = irregular_ellipse_distance(yy, xx, center, radii, rng.uniform(-0.5, 0.5), random_harmonics(rng))
    return distance < 1.0, distance


def _paint_lesion(rng: np.random.Generator, inside: np.ndarray, distance: np.ndarray, yy: np.ndarray,
                  reflectivity: np.ndarray) -> None:
    """Dark interior, bright wall, posterior acoustic enhancement."""
    wall = (distance >= 1.0) & (distance < 1.0 + rng.uniform(0.12, 0.25))
    reflectivity[wall] *= rng.uniform(2.0, 3.0)
    columns = inside.any(axis=0)
    bottom = np.where(columns, SHAPE[0] - 1 - np.argmax(inside[::-1], axis=0), SHAPE[0])
    below = np.clip(yy - bottom[None, :], 0, None)
    enhancement = np.where(yy > bottom[None, :], np.exp(-below / rng.uniform(10.0, 25.0)), 0.0)
    reflectivity *= 1.0 + rng.uniform(0.3, 0.8) * ndimage.gaussian_filter1d(enhancement, 2.0, axis=1)
    reflectivity[inside] = rng.uniform(0.05, 0.25) * np.exp(0.3 * smooth_noise(rng, SHAPE, 2.0)[inside])


def _speckle_image(rng: np.random.Generator, reflectivity: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Scatter, blur with the PSF, detect the envelope, attenuate, log-compress, apply gain."""
    scatterers = (rng.standard_normal(SHAPE) + 1j * rng.standard_normal(SHAPE)) / np.sqrt(2.0)
    field = np.sqrt(reflectivity) * scatterers
    blurred = ndimage.gaussian_filter(field.real, PSF_SIGMA) + 1j * ndimage.gaussian_filter(field.imag, PSF_SIGMA)
    envelope = np.abs(blurred) * np.sqrt(4 * np.pi * PSF_SIGMA[0] * PSF_SIGMA[1])  # unit mean power for R=1
    attenuation = np.exp(-rng.uniform(0.02, 0.045) * yy * SPACING[0])  # amplitude, round trip, 1/mm
    decibels = 20.0 * np.log10(envelope * attenuation + 1e-6)
    dynamic_range, gain = rng.uniform(45.0, 60.0), rng.uniform(-8.0, 8.0)
    grey = 255.0 * np.clip((decibels + gain + 0.65 * dynamic_range) / dynamic_range, 0.0, 1.0)
    return np.round(grey).astype(np.uint8)


def simulate(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one image and its label map.

    Args:
        rng: random generator (its state fully determines the output).

    Returns:
        ``(image uint8 (128, 128), label uint8 (128, 128))``.
    """
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(float)
    while True:  # redraw the rare geometry where the lesion swallows most of the layer
        reflectivity, fat_bottom = _tissue(rng, yy, xx)
        layer = _layer(rng, yy, xx, fat_bottom, reflectivity)
        inside, distance = _lesion(rng, yy, xx)
        label = np.zeros(SHAPE, np.uint8)
        label[layer] = LABELS["layer"]
        label[inside] = LABELS["lesion"]
        if min(np.count_nonzero(label == v) for v in (1, 2)) >= MIN_STRUCTURE_PIXELS:
            break
        logger.debug("redrawing an ultrasound geometry: a structure has fewer than %d pixels", MIN_STRUCTURE_PIXELS)
    _paint_lesion(rng, inside, distance, yy, reflectivity)
    return _speckle_image(rng, reflectivity, yy), label


GENERATOR = DatasetGenerator(
    name="synthetic-us2d",
    folder_name="SyntheticUS2D",
    default_id=501,
    channel_names={"0": "US"},
    labels=LABELS,
    default_num_train=60,
    default_num_test=20,
    cases=simulated_cases("us", simulate, SPACING),
    description="Synthetic 2D ultrasound: speckle, depth attenuation, random gain; a wavy tissue layer "
                "and a hypo-echoic lesion.",
    reference="Generated by diffusion_nnunet.datasets.synthetic_us2d",
    licence="CC0",
    test_artefact=acoustic_shadow,
    value_range=(0.0, 255.0),
)
