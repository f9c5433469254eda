"""Random smooth fields and irregular ellipse/ellipsoid masks shared by the synthetic generators."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation.

    Args:
        rng: random generator.
        shape: output shape.
        sigma: Gaussian sigma in pixels (per axis or one for all).
    """
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def random_harmonics(rng: np.random.Generator, orders: tuple[int, ...] = (2, 3, 4),
                     max_amplitude: float = 0.08) -> list[tuple[int, float, float]]:
    """Random ``(order, amplitude, phase)`` triples that make an ellipse outline irregular.

    Args:
        rng: random generator.
        orders: angular frequencies used.
        max_amplitude: largest relative radius change per harmonic.
    """
    return [(k, float(rng.uniform(0.0, max_amplitude)), float(rng.uniform(0, 2 * np.pi))) for k in orders]


def irregular_ellipse_distance(yy: np.ndarray, xx: np.ndarray, center: tuple[float, float],
                               radii: tuple[float, float], angle: float,
                               harmonics: list[tuple[int, float, float]]) -> np.ndarray:
    """Normalised radial distance to an irregular ellipse: < 1 inside, 1 on the outline.

    The outline is an ellipse whose radius is modulated by ``1 + sum a_k cos(k theta + phi_k)``.

    Args:
        yy: row coordinates (any shape, broadcast with xx).
        xx: column coordinates.
        center: ``(row, column)`` of the centre.
        radii: semi-axes ``(along rotated rows, along rotated columns)`` in pixels.
        angle: rotation in radians.
        harmonics: ``(order, amplitude, phase)`` triples (see `random_harmonics`).
    """
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u = (c * dy + s * dx) / radii[0]
    v = (-s * dy + c * dx) / radii[1]
    theta = np.arctan2(u, v)
    modulation = 1.0 + sum(a * np.cos(k * theta + p) for k, a, p in harmonics)
    return np.sqrt(u ** 2 + v ** 2) / modulation
