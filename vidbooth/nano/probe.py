"""World probe: read a sprite's colour, shape and motion back from a video and score them against the truth.

It relies on the nano world's promise that backgrounds are nearly grey: the most colourful blob is the sprite.
Thresholds are relative to the video's most colourful pixels and only the largest blob per frame is kept, so
blurry, noisy videos from a weak model still read; a video with no colourful blob reads as "unknown".
Colour is the nearest palette hue; shape is the best match among shape templates blurred as much as the video's
edges are; motion comes from the blob's track (scale change, spread, angular sweep, a fall and rise, velocity).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vidbooth.errors import UserError
from vidbooth.nano.world import COLOUR_HUES, SHAPES, Motion, Sprite, parse_caption, shape_mask

UNKNOWN = "unknown"
MIN_PEAK_CONTRAST = 60.0  # a sprite must stand out from the background by this much (0-255) somewhere
RELATIVE_THRESHOLD = 0.4  # sprite pixels reach this fraction of the video's peak contrast
MIN_BLOB_AREA = 3
ZOOM_GROWTH = 1.5  # a size change by this factor or more is a zoom
STILL_RADIUS = 0.05  # a sprite that stays within this fraction of the frame size is still
BOUNCE_DROP = 0.12  # a bounce falls and rises by at least this fraction of the frame size
CIRCLE_ROUNDNESS = 0.2  # minor / major variance of a circular path
_TEMPLATE_SIZE = 16
_SUPERSAMPLING = 4
_TEMPLATE_RADIUS = 12.0
_BLUR_GRID = np.arange(0.0, 4.01, 0.25)  # px
_RELATIVE_BLUR_STEP = 0.02  # template blur is quantised to this fraction of the sprite radius
# Counter-clockwise from +x, with y pointing up on screen.
_DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """What the probe read: colour, shape and motion names (or UNKNOWN) and per-frame sprite tracks.

    centroids (F, 2) are blob centres as (x, y) px; scales (F,) are sqrt(blob area) px; both NaN where no blob.
    """

    colour: str
    shape: str
    motion: str
    centroids: np.ndarray
    scales: np.ndarray


def _unknown(frame_count: int) -> ProbeResult:
    return ProbeResult(UNKNOWN, UNKNOWN, UNKNOWN, np.full((frame_count, 2), np.nan), np.full(frame_count, np.nan))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(f"the probe needs frames of shape (F, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise UserError(f"the probe needs uint8 frames (0-255), got {frames.dtype}: convert them first")
    return frames


def _contrast(frames: np.ndarray, background_hint: np.ndarray | None) -> np.ndarray:
    """Per-pixel distance from the background: chroma by default, or the largest channel gap to the hint."""
    red, green, blue = np.moveaxis(frames.astype(np.float32), -1, 0)
    if background_hint is None:
        return np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    hint = np.asarray(background_hint, dtype=np.float32)
    if hint.shape not in ((3,), frames.shape[1:]):
        raise UserError(
            f"background_hint must be an RGB colour (3,) or an image {frames.shape[1:]}, got shape {hint.shape}"
        )
    hint_red, hint_green, hint_blue = np.moveaxis(hint, -1, 0)
    return np.maximum(np.maximum(np.abs(red - hint_red), np.abs(green - hint_green)), np.abs(blue - hint_blue))


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _opponent(pixels: np.ndarray) -> np.ndarray:
    """(..., 2) opponent-colour coordinates of RGB pixels: their angle is the hue, grey is (0, 0)."""
    pixels = pixels.astype(np.float32)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return np.stack([red - (green + blue) / 2.0, (math.sqrt(3.0) / 2.0) * (green - blue)], axis=-1)


def _sprite_hue(pixels: np.ndarray) -> float | None:
    """Hue in degrees of the pixels' summed opponent vector (colourful pixels weigh most); None if grey."""
    x, y = _opponent(pixels).sum(axis=0)
    return None if x == 0 and y == 0 else math.degrees(math.atan2(y, x)) % 360.0


def _hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _colour_name(hue: float | None) -> str:
    if hue is None:
        return UNKNOWN
    return min(COLOUR_HUES, key=lambda name: _hue_distance(hue, COLOUR_HUES[name]))


def _hue_strength(frames: np.ndarray, hue: float, background_hint: np.ndarray | None) -> np.ndarray:
    """How much of the sprite's hue each pixel holds; linear in the sprite's share of a blended pixel."""
    opponent = _opponent(frames)
    if background_hint is not None:
        opponent -= _opponent(np.asarray(background_hint))
    return opponent @ np.array([math.cos(math.radians(hue)), math.sin(math.radians(hue))], dtype=np.float32)


def _normalised_blob(mask: np.ndarray) -> np.ndarray:
    """The mask cropped to its bounding box and resized to a small square of floats."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    return cv2.resize(crop, (_TEMPLATE_SIZE, _TEMPLATE_SIZE), interpolation=cv2.INTER_AREA)


@functools.lru_cache(maxsize=None)
def _unit_area(shape: str) -> float:
    """Area of `shape` at radius 1."""
    coordinates = np.linspace(-1.5, 1.5, 301)
    u, v = np.meshgrid(coordinates, coordinates)
    return float(shape_mask(shape, u, v).mean() * 9.0)


def _coverage(shape: str, radius: float, blur: float) -> np.ndarray:
    """Anti-aliased coverage of `shape` at `radius` px, Gaussian-blurred by `blur` px, on a padded square grid."""
    half = int(math.ceil(1.3 * radius + 3.0 * blur + 2.0))
    samples = (np.arange(-half * _SUPERSAMPLING, (half + 1) * _SUPERSAMPLING) + 0.5) / _SUPERSAMPLING - 0.5
    u, v = np.meshgrid(samples / radius, samples / radius)
    width = 2 * half + 1
    coverage = shape_mask(shape, u, v).reshape(width, _SUPERSAMPLING, width, _SUPERSAMPLING).mean(axis=(1, 3))
    coverage = coverage.astype(np.float32)
    return cv2.GaussianBlur(coverage, (0, 0), blur) if blur > 0 else coverage


def _outer_ring(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask


@functools.lru_cache(maxsize=256)
def _softness_by_blur(radius: float) -> np.ndarray:
    """Edge softness (see `_edge_softness`) of a circle of `radius` px at each blur of _BLUR_GRID."""
    softness = []
    for blur in _BLUR_GRID:
        coverage = _coverage("circle", radius, blur)
        ring = _outer_ring(coverage > RELATIVE_THRESHOLD)
        softness.append(coverage[ring].mean() if ring.any() else RELATIVE_THRESHOLD)
    return np.maximum.accumulate(np.array(softness))


def _edge_softness(strength: np.ndarray, masks: np.ndarray) -> float:
    """Mean hue strength just outside the blobs as a fraction of the sprite's peak strength."""
    rings = np.stack([_outer_ring(mask) for mask in masks])
    if not rings.any():
        return 0.0
    return float(strength[rings].mean()) / max(float(np.percentile(strength[masks], 99.0)), 1e-6)


def _estimate_blur(strength: np.ndarray, masks: np.ndarray, areas: np.ndarray) -> float:
    """The Gaussian blur (px) whose edge softness matches the blobs', on _BLUR_GRID."""
    radius = max(1.0, round(math.sqrt(float(np.median(areas)) / math.pi)))
    estimate = np.interp(_edge_softness(strength, masks), _softness_by_blur(radius), _BLUR_GRID)
    return float(_BLUR_GRID[np.argmin(np.abs(_BLUR_GRID - estimate))])


@functools.lru_cache(maxsize=1024)
def _template(shape: str, relative_blur: float) -> np.ndarray:
    """`shape` blurred by `relative_blur` radii, thresholded like the probe's masks, normalised (drawn finely)."""
    coverage = _coverage(shape, _TEMPLATE_RADIUS, relative_blur * _TEMPLATE_RADIUS)
    return _normalised_blob(coverage > RELATIVE_THRESHOLD)


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / np.maximum(a, b).sum())


def _classify_shape(masks: np.ndarray, areas: np.ndarray, blur: float) -> str:
    """The shape whose template, at each blob's size and the video's blur, matches the larger blobs best."""
    large = areas >= 0.5 * areas.max()
    fits = dict.fromkeys(SHAPES, 0.0)
    for mask, area in zip(masks[large], areas[large]):
        blob = _normalised_blob(mask)
        for shape in SHAPES:
            radius = math.sqrt(area / _unit_area(shape))
            relative_blur = round(blur / radius / _RELATIVE_BLUR_STEP) * _RELATIVE_BLUR_STEP
            fits[shape] += _soft_iou(blob, _template(shape, relative_blur))
    return max(SHAPES, key=fits.__getitem__)


def _growth(times: np.ndarray, scales: np.ndarray) -> float:
    """Size change over the clip from a straight-line fit of log scale against time."""
    slope = np.polyfit(times, np.log(scales), 1)[0]
    return float(math.exp(slope * (times[-1] - times[0])))


def _is_circle(offsets: np.ndarray) -> bool:
    """A round path (both axes vary) that sweeps more than half a turn around its mean."""
    if len(offsets) < 3:
        return False
    variances = np.linalg.eigvalsh(np.cov(offsets.T))
    if variances[1] <= 0 or variances[0] / variances[1] < CIRCLE_ROUNDNESS:
        return False
    angles = np.arctan2(offsets[:, 1], offsets[:, 0])
    steps = np.angle(np.exp(1j * np.diff(angles)))
    return abs(float(steps.sum())) > math.pi


def _is_bounce(points: np.ndarray, size: int) -> bool:
    """Falls to a lowest point inside the clip and rises back, mostly vertically."""
    x, y = points[:, 0], points[:, 1]
    lowest = int(np.argmax(y))
    if lowest in (0, len(y) - 1) or np.ptp(x) >= np.ptp(y):
        return False
    return min(y[lowest] - y[0], y[lowest] - y[-1]) > BOUNCE_DROP * size


def _direction(times: np.ndarray, points: np.ndarray) -> str:
    """The nearest of 8 compass directions to the least-squares velocity."""
    velocity = np.polyfit(times, points, 1)[0]
    angle = math.atan2(-velocity[1], velocity[0])
    return _DIRECTIONS[round(angle / (math.pi / 4.0)) % 8]


def _classify_motion(centroids: np.ndarray, scales: np.ndarray, size: int) -> str:
    found = ~np.isnan(scales)
    if found.sum() < 2:
        return UNKNOWN
    times, points = np.flatnonzero(found).astype(float), centroids[found]
    growth = _growth(times, scales[found])
    if growth >= ZOOM_GROWTH:
        return "zoom-in"
    if growth <= 1.0 / ZOOM_GROWTH:
        return "zoom-out"
    offsets = points - points.mean(axis=0)
    if np.hypot(offsets[:, 0], offsets[:, 1]).max() < STILL_RADIUS * size:
        return "still"
    if _is_circle(offsets):
        return "circle"
    if _is_bounce(points, size):
        return "bounce"
    return _direction(times, points)


def _centroids(masks: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(F, 2) mean (x, y) of each mask; NaN where not `found`."""
    ys, xs = np.mgrid[0 : masks.shape[1], 0 : masks.shape[2]]
    centroids = np.full((len(masks), 2), np.nan)
    for index in np.flatnonzero(found):
        centroids[index] = xs[masks[index]].mean(), ys[masks[index]].mean()
    return centroids


def probe_video(frames: np.ndarray, background_hint: np.ndarray | None = None) -> ProbeResult:
    """Read the sprite's colour, shape, motion and per-frame track from (F, H, W, 3) uint8 frames.

    background_hint, an RGB colour (3,) or image (H, W, 3), replaces the default "background is grey" assumption.
    """
    frames = _check_frames(frames)
    if frames.size == 0:
        return _unknown(len(frames))
    contrast = _contrast(frames, background_hint)
    peak = float(np.percentile(contrast, 99.9))
    if peak < MIN_PEAK_CONTRAST:
        return _unknown(len(frames))
    masks = np.stack([_largest_blob(frame > RELATIVE_THRESHOLD * peak) for frame in contrast])
    areas = masks.sum(axis=(1, 2))
    found = areas >= MIN_BLOB_AREA
    if not found.any():
        return _unknown(len(frames))
    masks[~found] = False
    hue = _sprite_hue(frames[masks])
    blur = 0.0
    if hue is not None:
        blur = _estimate_blur(_hue_strength(frames[found], hue, background_hint), masks[found], areas[found])
    scales = np.where(found, np.sqrt(areas), np.nan)
    centroids = _centroids(masks, found)
    return ProbeResult(
        colour=_colour_name(hue),
        shape=_classify_shape(masks[found], areas[found], blur),
        motion=_classify_motion(centroids, scales, max(frames.shape[1:3])),
        centroids=centroids,
        scales=scales,
    )


def score_against_caption(result: ProbeResult, truth: str | tuple[Sprite, Motion]) -> dict[str, bool]:
    """Whether the probe's colour, shape and motion match a caption or a (Sprite, Motion) pair."""
    sprite, motion = parse_caption(truth) if isinstance(truth, str) else truth
    return {
        "colour_correct": result.colour == sprite.colour,
        "shape_correct": result.shape == sprite.shape,
        "motion_correct": result.motion == motion.name,
    }


def probe_accuracy(videos: Sequence[np.ndarray], truths: Sequence[str | tuple[Sprite, Motion]]) -> dict[str, float]:
    """Probe every video and return the fraction with correct colour, shape and motion, and the count."""
    if len(videos) != len(truths) or not videos:
        raise UserError(
            f"need one truth per video and at least one video: got {len(videos)} videos, {len(truths)} truths"
        )
    scores = [score_against_caption(probe_video(video), truth) for video, truth in zip(videos, truths)]
    return {
        "colour": float(np.mean([score["colour_correct"] for score in scores])),
        "shape": float(np.mean([score["shape_correct"] for score in scores])),
        "motion": float(np.mean([score["motion_correct"] for score in scores])),
        "count": float(len(scores)),
    }
