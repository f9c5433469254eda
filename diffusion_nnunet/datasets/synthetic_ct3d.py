"""``synthetic-ct3d``: 3D CT-like volumes in Hounsfield units with four labelled structures.

What is simulated, and why it exercises nnU-Net like a real abdominal CT task:

- **Hounsfield units** stored as int16, channel name ``CT``, so nnU-Net applies its CT
  normalisation (clip to the foreground 0.5-99.5 percentiles, global mean/std): air outside
  the body (-1000), subcutaneous fat (~ -100), a muscle wall (~ 45), a visceral mix of fat and
  soft tissue (~ -100..20), a vertebra with cortical (~ 700-900) and cancellous (~ 250) bone and
  intervertebral discs (unlabelled bright distractor).
- **Organs** with realistic contrasts and random position, size, orientation and irregular
  outline per case: liver (label 1, ~ 55-70 HU, large), two kidneys (label 2, ~ 25-40 HU,
  paired left/right, wrapped in perirenal fat), spleen (label 3, ~ 40-50 HU: close to the
  liver in HU, told apart by position and shape), aorta (label 4, contrast-enhanced
  ~ 150-220 HU, small: a tube 4-6 voxels wide). Organs cover different slice ranges, so
  some slices contain only some classes, and parts of organs are cut by the volume's ends.
- **Anisotropic spacing**: 0.8 x 0.8 mm in-plane, 3.0 mm between slices (ratio 3.75 > 3,
  which triggers nnU-Net's anisotropic handling: separate-z resampling and a target
  spacing from the 10th percentile); 64 x 64 pixels and 24-32 slices per case (varying).
- **Image formation**: slight partial-volume blur at edges and spatially correlated Gaussian
  noise of 10-20 HU standard deviation, so HU ranges of neighbouring soft tissues overlap.

Arrays are ``(z, y, x)``; the writer passes spacing to SimpleITK as ``(x, y, z)``.

``make-dataset synthetic-ct3d --shape Z Y X`` resamples every simulated case to that array shape
at the same voxel spacing (a larger body, as in a wider field of view): images linearly, labels by
nearest neighbour. Large shapes make nnU-Net plan its cascade (3d_lowres, 3d_cascade_fullres),
which needs the fullres patch to cover under a quarter of the median image.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from diffusion_nnunet.datasets.base import DatasetGenerator, simulated_cases
from diffusion_nnunet.datasets.difficulty import streaks
from diffusion_nnunet.datasets.shapes import irregular_ellipse_distance, random_harmonics, smooth_noise

logger = logging.getLogger(__name__)

IN_PLANE = 64
SLICES = (24, 32)  # inclusive range of slices per case
SPACING = (3.0, 0.8, 0.8)  # (z, y, x) mm
LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "aorta": 4}
HU_RANGE = (-1024, 3071)
MIN_CLASS_VOXELS = 100


def _ellipsoid_distance(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray, np.ndarray],
                        center: tuple[float, float, float], radii: tuple[float, float, float],
                        angle: float, irregularity: float = 0.08) -> np.ndarray:
    """Normalised distance to an irregular ellipsoid (< 1 inside); radii in voxels (z, y, x)."""
    zz, yy, xx = grid
    in_plane = irregular_ellipse_distance(yy, xx, center[1:], radii[1:], angle,
                                          random_harmonics(rng, max_amplitude=irregularity))
    return np.sqrt(((zz - center[0]) / radii[0]) ** 2 + in_plane ** 2)


def _body(rng: np.random.Generator, grid, hu: np.ndarray) -> tuple[np.ndarray, tuple[float, float], float]:
    """Paint air, fat, muscle wall and viscera; return (interior mask, body centre, posterior interior row)."""
    zz, yy, xx = grid
    num_slices = hu.shape[0]
    center = (IN_PLANE / 2 + rng.uniform(-2, 2), IN_PLANE / 2 + rng.uniform(-2, 2))
    radii0 = (rng.uniform(20.0, 24.0), rng.uniform(25.0, 29.0))
    taper = 1.0 + 0.06 * np.sin(2 * np.pi * zz / num_slices * rng.uniform(0.5, 1.0) + rng.uniform(0, 2 * np.pi))
    distance = irregular_ellipse_distance(yy, xx, center, (radii0[0] * taper, radii0[1] * taper), 0.0,
                                          random_harmonics(rng, max_amplitude=0.03))
    fat_width, wall_width = rng.uniform(2.0, 4.0), rng.uniform(2.0, 3.0)
    body = distance < 1.0
    subcutaneous = body & (distance >= 1.0 - fat_width / radii0[0])
    wall = body & ~subcutaneous & (distance >= 1.0 - (fat_width + wall_width) / radii0[0])
    interior = body & ~subcutaneous & ~wall
    hu[subcutaneous] = rng.uniform(-110.0, -90.0)
    hu[wall] = rng.uniform(40.0, 55.0)
    viscera = -40.0 + 45.0 * smooth_noise(rng, hu.shape, (0.7, 2.5, 2.5))
    hu[interior] = np.clip(viscera[interior], -110.0, 30.0)
    posterior_row = center[0] + radii0[0] - fat_width - wall_width
    return interior, center, posterior_row


def _spine(rng: np.random.Generator, grid, center: tuple[float, float], posterior_row: float) -> tuple:
    """Vertebral body geometry: (bone mask, cortex mask, disc mask, vertebra centre, radius)."""
    zz, yy, xx = grid
    radius = rng.uniform(4.0, 5.5)
    vertebra = (posterior_row - radius - rng.uniform(1.0, 2.5), center[1] + rng.uniform(-1.0, 1.0))
    distance = np.sqrt((yy - vertebra[0]) ** 2 + (xx - vertebra[1]) ** 2)
    bone = distance < radius
    cortex = bone & (distance >= radius - 1.8)
    period = rng.uniform(7.0, 9.0)  # ~25 mm vertebral height at 3 mm slices
    disc = bone & (((zz + rng.uniform(0, period)) % period) < 1.0)
    return bone, cortex, disc, vertebra, radius


def simulate(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one CT volume and its label map.

    Args:
        rng: random generator (its state fully determines the output).

    Returns:
        ``(image int16 (Z, 64, 64) in HU, label uint8 (Z, 64, 64))`` with Z in 24..32.
    """
    num_slices = int(rng.integers(SLICES[0], SLICES[1] + 1))
    shape = (num_slices, IN_PLANE, IN_PLANE)
    grid = tuple(g.astype(float) for g in np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]])
    while True:  # redraw the rare case where a class is cut away almost entirely
        hu = np.full(shape, -1000.0)
        label = np.zeros(shape, np.uint8)
        interior, center, posterior_row = _body(rng, grid, hu)
        bone, cortex, disc, vertebra, vertebra_radius = _spine(rng, grid, center, posterior_row)
        _organs(rng, grid, hu, label, interior, center, vertebra, vertebra_radius)
        hu[bone] = rng.uniform(220.0, 280.0)
        hu[cortex] = rng.uniform(700.0, 900.0)
        hu[disc] = rng.uniform(70.0, 90.0)
        label[bone] = LABELS["background"]
        if min(np.count_nonzero(label == v) for v in range(1, len(LABELS))) >= MIN_CLASS_VOXELS:
            break
        logger.debug("redrawing a CT phantom: a class has fewer than %d voxels", MIN_CLASS_VOXELS)
    hu = ndimage.gaussian_filter(hu, (0.4, 0.7, 0.7))  # partial-volume effect at edges
    hu += rng.uniform(10.0, 20.0) * smooth_noise(rng, shape, (0.3, 0.6, 0.6))
    return np.clip(np.round(hu), *HU_RANGE).astype(np.int16), label


def simulate_at_shape(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`simulate`, resampled to the array shape `shape` (z, y, x) at the same spacing.

    Raises:
        UserInputError: `shape` is not three sizes of at least 8 voxels.
    """
    shape = check_shape(shape)
    image, label = simulate(rng)
    factors = [t / s for t, s in zip(shape, image.shape)]
    resized = ndimage.zoom(image.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)
    labels = ndimage.zoom(label, factors, order=0, mode="nearest", grid_mode=True)
    return np.clip(np.round(resized), *HU_RANGE).astype(np.int16), labels.astype(np.uint8)


def check_shape(shape) -> tuple[int, int, int]:
    """`shape` as three ints (z, y, x) of at least 8 voxels each.

    Raises:
        UserInputError: anything else.
    """
    from dnnunet_core.errors import UserInputError

    values = tuple(int(v) for v in shape)
    if len(values) != 3 or min(values) < 8:
        raise UserInputError(f"--shape takes three sizes Z Y X of at least 8 voxels each, got {list(shape)}")
    return values  # type: ignore[return-value]


def _shaped_cases(num_train: int | None, num_test: int | None, seed: int, shape: tuple[int, ...]):
    shape = check_shape(shape)
    return simulated_cases("ct", lambda rng: simulate_at_shape(rng, shape), SPACING)(num_train, num_test, seed)


def _organs(rng: np.random.Generator, grid, hu: np.ndarray, label: np.ndarray, interior: np.ndarray,
            center: tuple[float, float], vertebra: tuple[float, float], vertebra_radius: float) -> None:
    """Paint liver, spleen, kidneys (with perirenal fat) and aorta into `hu` and `label`."""
    num_slices = hu.shape[0]
    # Liver: large, on the image-left (patient-right), anterior-lateral, upper slices.
    liver_center = (rng.uniform(0.25, 0.45) * num_slices, center[0] - rng.uniform(0, 5), center[1] - rng.uniform(7, 11))
    liver_radii = (rng.uniform(8, 12), rng.uniform(12, 16), rng.uniform(13, 17))
    liver = _ellipsoid_distance(rng, grid, liver_center, liver_radii, rng.uniform(-0.4, 0.4), 0.1) < 1.0
    _paint(hu, label, liver & interior, rng.uniform(55.0, 70.0), "liver")
    # Spleen: smaller, opposite side, posterior-lateral, upper slices.
    spleen_center = (rng.uniform(0.15, 0.4) * num_slices, center[0] + rng.uniform(2, 6), center[1] + rng.uniform(12, 16))
    spleen_radii = (rng.uniform(3, 5), rng.uniform(5, 8), rng.uniform(3.5, 5.5))
    spleen = _ellipsoid_distance(rng, grid, spleen_center, spleen_radii, rng.uniform(-0.6, 0.6), 0.1) < 1.0
    _paint(hu, label, spleen & interior, rng.uniform(40.0, 50.0), "spleen")
    kidney_z, kidney_hu, tilt = rng.uniform(0.45, 0.7) * num_slices, rng.uniform(25.0, 40.0), rng.uniform(0.2, 0.6)
    for side in (-1.0, 1.0):
        distance = _ellipsoid_distance(
            rng, grid, (kidney_z + rng.uniform(-1.5, 1.5), vertebra[0] - rng.uniform(0, 3),
                        vertebra[1] + side * rng.uniform(11, 15)),
            (rng.uniform(3, 4.5), rng.uniform(5, 7), rng.uniform(4, 6)), side * tilt, 0.06)
        hu[(distance >= 1.0) & (distance < 1.35) & interior] = rng.uniform(-100.0, -80.0)  # perirenal fat
        _paint(hu, label, (distance < 1.0) & interior, kidney_hu, "kidney")
    zz, yy, xx = grid
    drift = 0.7 * np.sin(2 * np.pi * zz / num_slices + rng.uniform(0, 2 * np.pi))
    aorta_center = (vertebra[0] - vertebra_radius - rng.uniform(2.5, 4.0), vertebra[1] + rng.uniform(1.0, 4.0))
    aorta = np.hypot(yy - aorta_center[0] - drift, xx - aorta_center[1]) < rng.uniform(2.0, 3.0)
    _paint(hu, label, aorta & interior, rng.uniform(150.0, 220.0), "aorta")


def _paint(hu: np.ndarray, label: np.ndarray, mask: np.ndarray, value: float, name: str) -> None:
    hu[mask] = value
    label[mask] = LABELS[name]


GENERATOR = DatasetGenerator(
    name="synthetic-ct3d",
    folder_name="SyntheticCT3D",
    default_id=502,
    channel_names={"0": "CT"},
    labels=LABELS,
    default_num_train=20,
    default_num_test=6,
    cases=simulated_cases("ct", simulate, SPACING),
    description="Synthetic 3D abdominal CT in HU, anisotropic spacing 0.8x0.8x3.0 mm: liver, kidneys, "
                "spleen, aorta; vertebra as unlabelled distractor; correlated noise.",
    reference="Generated by diffusion_nnunet.datasets.synthetic_ct3d",
    licence="CC0",
    test_artefact=streaks,
    degrade_window=(-500.0, 300.0),
    test_contrast=False,
    value_range=HU_RANGE,
    shaped_cases=_shaped_cases,
)
