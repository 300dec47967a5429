"""What the field does to a deployed network's input: image corruptions and sensor faults.

Two families, each at severity 1 (mild) to 5 (harsh), deterministic for a seed:

- **Image corruptions** of the built-in image data (digits 8x8, mnist5k 28x28), the fifteen
  of MNIST-C (Mu & Gilmer, 2019): shot and impulse noise, glass and motion blur, shear,
  scale, rotate, brightness, translate, stripe, fog, spatter, dotted line, zigzag and Canny
  edges.  They act on intensities in [0, 1] before spike encoding, as a camera's image would
  be corrupted before an event encoder sees it.  Geometry and blurs use ``scipy.ndimage``,
  Canny edges ``skimage.feature.canny``.
- **Sensor faults** of neuromorphic inputs: dead and hot channels, per-channel gain drift,
  background spikes and timing jitter.  They act on the spike trains themselves, since that
  is where an event sensor fails.  A faulty channel is drawn once per seed and stays faulty
  for every sample (a sensor does not heal between samples); noise differs per sample.

Sizes scale with the image side, so a severity means about the same on digits as on MNIST.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from polystep_neuro.core.errors import PolystepError

SEVERITIES = (1, 2, 3, 4, 5)
ImageFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
SpikeFn = Callable[[np.ndarray, int, np.random.Generator, np.random.Generator], np.ndarray]


def _level(values: tuple[float, ...], severity: int) -> float:
    return values[severity - 1]


# --------------------------------------------------------------------------- noise
def _shot_noise(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    photons = _level((60, 25, 12, 5, 3), s)
    return rng.poisson(img * photons) / photons


def _impulse_noise(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    amount = _level((0.03, 0.06, 0.09, 0.17, 0.27), s)
    out = img.copy()
    hit = rng.random(img.shape) < amount
    out[hit] = rng.integers(0, 2, size=int(hit.sum()))
    return out


# --------------------------------------------------------------------------- blur
def _glass_blur(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, then move pixels to random neighbours (a share growing with severity), then blur
    again: frosted glass in front of the sensor."""
    side = img.shape[-1]
    sigma = _level((0.4, 0.5, 0.6, 0.7, 0.9), s) * max(side / 28, 0.5)
    delta = max(1, round(_level((1, 1, 2, 2, 3), s) * side / 28))
    share = _level((0.3, 0.5, 0.7, 0.85, 1.0), s)
    out = np.stack([ndimage.gaussian_filter(im, sigma) for im in img])
    grid = np.arange(side)
    for k in range(out.shape[0]):
        moved = rng.random((side, side)) < share
        rows = np.where(moved, rng.integers(-delta, delta + 1, size=(side, side)), 0)
        cols = np.where(moved, rng.integers(-delta, delta + 1, size=(side, side)), 0)
        r = np.clip(grid[:, None] + rows, 0, side - 1)
        c = np.clip(grid[None, :] + cols, 0, side - 1)
        out[k] = out[k][r, c]
    return np.stack([ndimage.gaussian_filter(im, sigma) for im in out])


def _motion_blur(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Average along a line of random direction, as a moving camera smears (sub-pixel
    lengths, so a small image blurs more with each severity too)."""
    side = img.shape[-1]
    length = _level((3, 5, 7, 9, 12), s) * side / 28
    steps = np.linspace(-length / 2, length / 2, 9)
    out = np.empty_like(img)
    for k, im in enumerate(img):
        angle = rng.uniform(0, math.pi)
        shifts = [(t * math.sin(angle), t * math.cos(angle)) for t in steps]
        out[k] = np.mean([ndimage.shift(im, d, order=1) for d in shifts], axis=0)
    return out


# --------------------------------------------------------------------------- geometry
def _affine(img: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """Each image transformed about its centre by its 2x2 matrix (output -> input map)."""
    side = img.shape[-1]
    centre = np.array([(side - 1) / 2, (side - 1) / 2])
    out = np.empty_like(img)
    for k, (im, m) in enumerate(zip(img, matrices, strict=True)):
        offset = centre - m @ centre
        out[k] = ndimage.affine_transform(im, m, offset=offset, order=1, mode="constant")
    return out


def _shear(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    amount = _level((0.1, 0.2, 0.3, 0.45, 0.6), s)
    signs = rng.choice((-1.0, 1.0), size=img.shape[0])
    return _affine(img, [np.array([[1.0, 0.0], [a, 1.0]]) for a in amount * signs])


def _scale(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink (or for half the images enlarge) about the centre."""
    factor = _level((0.9, 0.8, 0.7, 0.6, 0.5), s)
    grow = rng.random(img.shape[0]) < 0.5
    zooms = np.where(grow, 1 / (0.5 + factor / 2), factor)
    return _affine(img, [np.eye(2) / z for z in zooms])


def _rotate(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    degrees = _level((10, 20, 30, 40, 50), s)
    angles = np.deg2rad(degrees * rng.choice((-1.0, 1.0), size=img.shape[0]))
    return _affine(
        img, [np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) for a in angles]
    )


def _translate(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    side = img.shape[-1]
    distance = _level((0.05, 0.1, 0.15, 0.2, 0.25), s) * side
    angles = rng.uniform(0, 2 * math.pi, size=img.shape[0])
    out = np.empty_like(img)
    for k, (im, a) in enumerate(zip(img, angles, strict=True)):
        out[k] = ndimage.shift(im, (distance * math.sin(a), distance * math.cos(a)), order=1)
    return out


# --------------------------------------------------------------------------- photometric
def _brightness(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    return img + _level((0.1, 0.2, 0.3, 0.4, 0.5), s)


def _fog(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random haze added over the image, scaled so the image stays in range."""
    side = img.shape[-1]
    strength = _level((0.2, 0.35, 0.5, 0.7, 0.9), s)
    haze = rng.random(img.shape)
    haze = np.stack([ndimage.gaussian_filter(h, side / 6) for h in haze])
    low = haze.min(axis=(1, 2), keepdims=True)
    high = haze.max(axis=(1, 2), keepdims=True)
    haze = (haze - low) / np.maximum(high - low, 1e-6)
    return (img + strength * haze) / (1 + strength / 2)


def _spatter(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Bright droplets: thresholded smooth noise, as mud or water on a lens."""
    side = img.shape[-1]
    cover = _level((0.04, 0.08, 0.12, 0.18, 0.25), s)
    blobs = np.stack([ndimage.gaussian_filter(b, side / 28) for b in rng.random(img.shape)])
    cut = np.quantile(blobs.reshape(img.shape[0], -1), 1 - cover, axis=1)[:, None, None]
    return np.maximum(img, (blobs >= cut).astype(img.dtype))


def _stripe(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Invert a vertical band of columns."""
    side = img.shape[-1]
    width = max(1, round(_level((0.08, 0.12, 0.16, 0.2, 0.25), s) * side))
    out = img.copy()
    for k in range(img.shape[0]):
        start = int(rng.integers(0, side - width + 1))
        out[k, :, start : start + width] = 1.0 - out[k, :, start : start + width]
    return out


# --------------------------------------------------------------------------- lines
def _draw(out: np.ndarray, points: np.ndarray, every: int = 1) -> None:
    """Set the pixels along the polyline ``points`` (row, col) to 1, every ``every``-th."""
    side = out.shape[-1]
    pixels = []
    for a, b in zip(points[:-1], points[1:], strict=True):
        n = int(np.abs(b - a).max()) + 1
        pixels.append(np.rint(np.linspace(a, b, n)).astype(int))
    line = np.concatenate(pixels)[::every]
    keep = (line >= 0).all(axis=1) & (line < side).all(axis=1)
    out[line[keep, 0], line[keep, 1]] = 1.0


def _dotted_line(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    side = img.shape[-1]
    lines = int(_level((1, 1, 2, 2, 3), s))
    out = img.copy()
    for k in range(img.shape[0]):
        for _ in range(lines):
            _draw(out[k], rng.uniform(0, side - 1, size=(2, 2)), every=2)
    return out


def _zigzag(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    side = img.shape[-1]
    corners = int(_level((3, 4, 5, 6, 8), s))
    out = img.copy()
    for k in range(img.shape[0]):
        _draw(out[k], rng.uniform(0, side - 1, size=(corners, 2)))
    return out


def _canny_edges(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Only the edges are left, as an edge-detecting front end would pass on."""
    try:
        from skimage.feature import canny
    except ImportError:
        raise PolystepError(
            'the canny_edges corruption needs scikit-image: pip install -e ".[corruptions]" '
            "(or pip install scikit-image)"
        ) from None
    side = img.shape[-1]
    sigma = _level((0.5, 0.75, 1.0, 1.25, 1.5), s) * side / 28
    edges = np.stack([canny(im, sigma=sigma) for im in img]).astype(img.dtype)
    keep = _level((0.6, 0.45, 0.3, 0.15, 0.0), s)  # how much of the image survives the edges
    return np.maximum(edges, keep * img)


IMAGE_CORRUPTIONS: dict[str, ImageFn] = {
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "shear": _shear,
    "scale": _scale,
    "rotate": _rotate,
    "brightness": _brightness,
    "translate": _translate,
    "stripe": _stripe,
    "fog": _fog,
    "spatter": _spatter,
    "dotted_line": _dotted_line,
    "zigzag": _zigzag,
    "canny_edges": _canny_edges,
}


# --------------------------------------------------------------------------- sensor faults
def _channels(n: int, fraction: float, fixed: np.random.Generator) -> np.ndarray:
    count = max(1, round(fraction * n))
    return np.sort(fixed.choice(n, size=count, replace=False))


def _dead_channels(x: np.ndarray, s: int, fixed: np.random.Generator, rng: np.random.Generator):
    out = x.copy()
    out[:, :, _channels(x.shape[2], _level((0.05, 0.1, 0.2, 0.3, 0.4), s), fixed)] = 0
    return out


def _hot_channels(x: np.ndarray, s: int, fixed: np.random.Generator, rng: np.random.Generator):
    """A few channels fire at a high rate whatever they see."""
    out = x.copy()
    hot = _channels(x.shape[2], _level((0.02, 0.04, 0.06, 0.1, 0.15), s), fixed)
    out[:, :, hot] = (rng.random((x.shape[0], x.shape[1], hot.size)) < 0.5).astype(x.dtype)
    return out


def _gain_drift(x: np.ndarray, s: int, fixed: np.random.Generator, rng: np.random.Generator):
    """Each channel's sensitivity drifts by its own factor: spikes are thinned where it fell,
    and extra spikes come at the channel's own mean rate where it rose."""
    spread = _level((0.2, 0.35, 0.5, 0.65, 0.8), s)
    gain = fixed.uniform(1 - spread, 1 + spread, size=x.shape[2])
    keep = rng.random(x.shape) < np.minimum(gain, 1.0)
    rate = x.mean(axis=1, keepdims=True)  # (n, 1, N): each sample's own rate per channel
    extra = rng.random(x.shape) < np.maximum(gain - 1.0, 0.0) * rate
    return ((x.astype(bool) & keep) | extra).astype(x.dtype)


def _background_noise(x: np.ndarray, s: int, fixed: np.random.Generator, rng: np.random.Generator):
    p = _level((0.01, 0.02, 0.04, 0.07, 0.1), s)
    return (x.astype(bool) | (rng.random(x.shape) < p)).astype(x.dtype)


def _timing_jitter(x: np.ndarray, s: int, fixed: np.random.Generator, rng: np.random.Generator):
    """Every spike moves by up to ``k`` steps either way (clipped to the window; spikes that
    land on one step merge)."""
    k = int(_level((1, 2, 3, 4, 6), s))
    n, t, f = np.nonzero(x)
    t = np.clip(t + rng.integers(-k, k + 1, size=t.size), 0, x.shape[1] - 1)
    out = np.zeros_like(x)
    out[n, t, f] = 1
    return out


SENSOR_FAULTS: dict[str, SpikeFn] = {
    "dead_channels": _dead_channels,
    "hot_channels": _hot_channels,
    "gain_drift": _gain_drift,
    "background_noise": _background_noise,
    "timing_jitter": _timing_jitter,
}
CORRUPTIONS = (*IMAGE_CORRUPTIONS, *SENSOR_FAULTS)


@dataclass(frozen=True)
class Corruption:
    """One corruption at one severity, deterministic for ``seed``.

    Image corruptions act on intensities (``images``), sensor faults on spike trains
    (``spikes``); the other call of each passes its input through unchanged, so a pipeline
    can apply both calls whatever the corruption is.
    """

    name: str
    severity: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in CORRUPTIONS:
            raise PolystepError(
                f"unknown corruption {self.name!r}; choose one of {', '.join(CORRUPTIONS)}"
            )
        if self.severity not in SEVERITIES:
            raise PolystepError(f"severity must be 1 to 5, got {self.severity!r}")

    @property
    def on_spikes(self) -> bool:
        return self.name in SENSOR_FAULTS

    def _rng(self, stream: int) -> np.random.Generator:
        key = [self.seed, CORRUPTIONS.index(self.name), self.severity, stream]
        return np.random.default_rng(key)

    def images(self, x: np.ndarray) -> np.ndarray:
        """Intensities (n, side*side) in [0, 1] -> corrupted intensities, same shape, float32."""
        if self.on_spikes:
            return x
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or not np.all(np.isfinite(x)):
            raise PolystepError(f"intensities must be finite (n, features), got shape {x.shape}")
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise PolystepError(
                f"image corruptions need square images; {x.shape[1]} features are not a square"
            )
        img = x.reshape(-1, side, side).astype(np.float64)
        out = IMAGE_CORRUPTIONS[self.name](img, self.severity, self._rng(0))
        return np.clip(out, 0.0, 1.0).reshape(x.shape).astype(np.float32)

    def spikes(self, x: np.ndarray) -> np.ndarray:
        """Spike trains (n, T, N) of 0/1 -> faulty spike trains, same shape and dtype."""
        if not self.on_spikes:
            return x
        x = np.asarray(x)
        if x.ndim != 3:
            raise PolystepError(f"spike trains must be (n, T, N), got shape {x.shape}")
        fault = SENSOR_FAULTS[self.name]
        return fault(x, self.severity, self._rng(1), self._rng(2)).astype(x.dtype, copy=False)

    def describe(self) -> str:
        return f"{self.name.replace('_', ' ')}, severity {self.severity}"
