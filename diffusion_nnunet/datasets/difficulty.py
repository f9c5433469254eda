"""Test cases of varying difficulty: per-case contrast, noise and artefact levels.

A per-case uncertainty score can only be checked against the case's true Dice when the test
cases differ in how hard they are; uniformly drawn cases differ too little. So each *test*
case is degraded after it is simulated (or, for mni-tissue2d, loaded) by a level drawn per
case:

- ``level`` in [0, 1]: a share ``HARD_SHARE`` of the cases is hard (level 0.6-1.0), the rest
  easy to moderate (0.0-0.45);
- **contrast**: foreground intensities move towards the foreground median by ``0.5 * level``;
- **noise**: Gaussian noise of ``NOISE * level`` robust foreground standard deviations, spatially
  correlated over about a pixel so that it is not averaged away by the first convolution;
- **artefact** (with probability ``0.3 + 0.6 * level``): a dataset-specific one: an acoustic
  shadow (ultrasound), zero-mean streaky noise (CT), a smooth bias field (MR).

CT keeps its contrast (``test_contrast=False``): Hounsfield units are absolute.

The levels come from their own random stream, ``default_rng([seed, 3, index])``, which no
generator uses (case streams are ``[seed, 0|1, index]``, mni-tissue2d's subsampling is
``[seed, 2]``): the training cases, and with ``--test-difficulty uniform`` the test cases, stay
bit-identical to those made before this module existed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
from scipy import ndimage

from diffusion_nnunet.datasets.base import Case

TestDifficulty = Literal["varied", "uniform"]
TEST_DIFFICULTIES = ("varied", "uniform")
HARD_SHARE = 0.3
NOISE = 0.8
DIFFICULTY_STREAM = 3

# artefact(image (float), level, rng) -> image: adds one dataset-specific artefact
Artefact = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Difficulty:
    """What was done to one test case.

    Args:
        level: overall difficulty in [0, 1].
        hard: drawn from the hard share.
        contrast: factor applied to deviations from the foreground mean (1: unchanged).
        noise: added noise standard deviation in foreground standard deviations.
        artefact: whether the dataset's artefact was added.
    """

    level: float
    hard: bool
    contrast: float
    noise: float
    artefact: bool


def draw_difficulty(seed: int, index: int, hard_share: float = HARD_SHARE) -> tuple[Difficulty, np.random.Generator]:
    """The difficulty of test case `index` and the generator that then draws its noise.

    Args:
        seed: the dataset seed.
        index: the test case's position (0, 1, ...).
        hard_share: probability of a hard case.
    """
    rng = np.random.default_rng([int(seed), DIFFICULTY_STREAM, int(index)])
    hard = bool(rng.random() < hard_share)
    level = float(rng.uniform(0.6, 1.0) if hard else rng.uniform(0.0, 0.45))
    artefact = bool(rng.random() < 0.3 + 0.6 * level)
    return Difficulty(level, hard, 1.0 - 0.5 * level, NOISE * level, artefact), rng


def degrade(image: np.ndarray, difficulty: Difficulty, rng: np.random.Generator, artefact: Artefact,
            value_range: tuple[float, float] | None = None,
            degrade_window: tuple[float, float] | None = None) -> np.ndarray:
    """The image with reduced contrast, added noise and (maybe) an artefact; same dtype.

    Contrast and noise act on the foreground only (soft tissue in CT, the brain in the
    skull-stripped MR), so air and bone keep their HU and the background stays zero; the
    contrast centre is the foreground's median and the noise scale its robust standard
    deviation (1.4826 MAD), so a bright skin line does not inflate them.

    Args:
        image: 2D or 3D image.
        difficulty: from `draw_difficulty`.
        rng: the generator `draw_difficulty` returned.
        artefact: the dataset's artefact function.
        value_range: clip to this range (e.g. 0-255 for 8-bit ultrasound); None: no clipping.
        degrade_window: voxels strictly inside this intensity interval are the foreground; None: all.
    """
    x = image.astype(np.float64)
    if degrade_window is None:
        foreground = np.ones(x.shape, bool)
    else:
        foreground = (x > degrade_window[0]) & (x < degrade_window[1])
    if not foreground.any():
        return image.copy()
    values = x[foreground]
    centre = float(np.median(values))
    scale = float(1.4826 * np.median(np.abs(values - centre))) or float(values.std()) or 1.0
    noise = ndimage.gaussian_filter(rng.standard_normal(x.shape), 0.7)
    noise /= noise.std() or 1.0
    x = np.where(foreground, centre + difficulty.contrast * (x - centre) + difficulty.noise * scale * noise, x)
    if difficulty.artefact:
        x = np.where(foreground, artefact(x, difficulty.level, rng), x)
    if value_range is not None:
        x = np.clip(x, *value_range)
    if np.issubdtype(image.dtype, np.integer):
        x = np.round(x)
    return x.astype(image.dtype)


def vary_test_cases(cases: Iterable[Case], seed: int, artefact: Artefact,
                    value_range: tuple[float, float] | None = None, degrade_window: tuple[float, float] | None = None,
                    record: dict[str, dict] | None = None, contrast: bool = True) -> Iterator[Case]:
    """Pass training cases through unchanged and degrade each test case by its own difficulty.

    Args:
        cases: the generator's cases.
        seed: the dataset seed.
        artefact: the dataset's artefact function.
        value_range: clip range of the images.
        degrade_window: see `degrade`.
        contrast: lower the contrast of hard cases (False for CT: Hounsfield units are absolute,
            and a liver at 25 HU is no CT; its hard cases come from noise and streaks).
        record: if given, filled with ``case_id -> asdict(Difficulty)`` for the test cases.
    """
    index = 0
    for case in cases:
        if case.split != "Ts":
            yield case
            continue
        difficulty, rng = draw_difficulty(seed, index)
        if not contrast:
            difficulty = replace(difficulty, contrast=1.0)
        index += 1
        channels = tuple(degrade(c, difficulty, rng, artefact, value_range, degrade_window) for c in case.channels)
        if record is not None:
            record[case.case_id] = asdict(difficulty)
        yield Case(case.case_id, case.split, channels, case.label, case.spacing)


# --------------------------------------------------------------------------------------
# artefacts, one per imaging modality
# --------------------------------------------------------------------------------------
def acoustic_shadow(x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Ultrasound: a dark vertical band below a random depth (shadow behind a strong reflector)."""
    rows, cols = x.shape[-2:]
    width = rng.uniform(0.12, 0.3) * cols
    centre, top = rng.uniform(0, cols), rng.uniform(0.05, 0.5) * rows
    yy, xx = np.mgrid[0:rows, 0:cols].astype(float)
    band = np.exp(-((xx - centre) / (width / 2)) ** 4) * (yy > top)
    return x * (1.0 - (0.5 + 0.4 * level) * ndimage.gaussian_filter(band, 2.0))


def streaks(x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """CT: photon-starvation-like streaks: noise elongated along one in-plane direction.

    Zero-mean, so organs keep their median HU; only the texture gets worse.
    """
    sigma = [0.0] * x.ndim
    sigma[-1 - int(rng.integers(0, 2))] = 6.0  # along rows or columns
    sigma[-1] = sigma[-1] or 0.5
    sigma[-2] = sigma[-2] or 0.5
    noise = ndimage.gaussian_filter(rng.standard_normal(x.shape), sigma)
    return x + (40.0 + 80.0 * level) * noise / (noise.std() or 1.0)


def bias_field(x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """MR: a smooth multiplicative intensity inhomogeneity of up to +-(20-50) %."""
    field = ndimage.gaussian_filter(rng.standard_normal(x.shape), np.array(x.shape) / 4.0)
    field /= np.abs(field).max() or 1.0
    return x * (1.0 + (0.2 + 0.3 * level) * field)
