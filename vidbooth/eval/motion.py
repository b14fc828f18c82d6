"""Motion fidelity: how closely one video's motion follows another's, whatever the looks, place and size.

Each video is reduced to a *motion signature* built from dense optical flow (OpenCV Farneback, no weights):

1. Frames go to grayscale at a working size (shorter side `WORK_SIDE` pixels, aspect kept), so that videos
   of different resolutions are measured on the same grid.
2. For each pair of consecutive frames, the flow of the pixels that move (|flow| > `MIN_FLOW` pixels) gives
   twelve numbers:
   - a magnitude-weighted histogram of flow directions in `DIRECTION_BINS` bins (each vector split between
     its two nearest bins), which says which way things move, wherever they are;
   - expansion, contraction, counter-clockwise and clockwise rotation: the positive and negative parts of
     the radial and tangential components of the flow relative to its mean, about the centroid of the
     moving pixels, which separate zooms and turns from translations and do not depend on position.
3. The per-step rows are resampled to `TIME_STEPS` rows of normalised time (up by linear interpolation, down
   by averaging), so that clips with different frame counts are aligned start to start and end to end.
4. The whole (TIME_STEPS, 12) array is divided by its L2 norm. This removes the overall amount of motion,
   which grows with the moving object's area and speed and so with its scale.

Motion fidelity is the cosine similarity of two signatures. Signatures are non-negative, so it lies in
[0, 1]: 1 for motions with the same directions, rotation/zoom structure and time profile, near 0 for
opposite or perpendicular motions.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

WORK_SIDE = 128
MIN_FLOW = 0.5
DIRECTION_BINS = 8
TIME_STEPS = 16
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
METHOD = (
    f"farneback-signature-v2 (work side {WORK_SIDE}px, min flow {MIN_FLOW}px, "
    f"{DIRECTION_BINS} direction bins + 4 rotation/zoom terms, {TIME_STEPS} time steps)"
)


NO_MOTION = f"shows no motion (nothing moves more than {MIN_FLOW} px between frames at {WORK_SIDE} px)"
"""What is said of a clip whose signature is all zeros (`moving_signature` gives None), after its name."""


def moving_signature(frames: np.ndarray) -> np.ndarray | None:
    """The motion signature of (F >= 2, H, W, 3) uint8 `frames`, or None when nothing in them moves: such a clip
    cannot be a reference motion (evaluate refuses it), and a motion learned from it learns stillness."""
    signature = motion_signature(frames)
    return signature if signature.any() else None


def motion_fidelity(generated: np.ndarray, reference: np.ndarray) -> float:
    """Cosine similarity in [0, 1] of the motion signatures of two (F, H, W, 3) uint8 videos."""
    return signature_similarity(motion_signature(generated), motion_signature(reference))


def signature_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two signatures; 0 when either video shows no motion."""
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sum(a * b) / norm) if norm > 0 else 0.0


def motion_signature(frames: Iterable[np.ndarray]) -> np.ndarray:
    """(TIME_STEPS, DIRECTION_BINS + 4) non-negative array with unit L2 norm (all zeros for a still video), from
    (F, H, W, 3) uint8 frames, or frames one at a time (`data.video.video_frames`: only the previous one is kept)."""
    rows, previous = [], None
    for frame in frames:
        gray = _to_work_gray(frame)
        if previous is not None:
            rows.append(_step_features(_flow(previous, gray)))
        previous = gray
    if not rows:
        raise ValueError("a motion signature needs at least 2 frames")
    steps = np.stack(rows)  # (F-1, 12)
    signature = _resample_in_time(steps, TIME_STEPS)
    norm = np.linalg.norm(signature)
    return signature / norm if norm > 0 else signature


def _to_work_gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    scale = WORK_SIDE / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _flow(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.calcOpticalFlowFarneback(previous, current, None, **FARNEBACK)  # (H, W, 2): dx, dy


def _step_features(flow: np.ndarray) -> np.ndarray:
    magnitude = np.linalg.norm(flow, axis=-1)
    moving = magnitude > MIN_FLOW
    if not moving.any():
        return np.zeros(DIRECTION_BINS + 4)
    ys, xs = np.nonzero(moving)
    vectors = flow[moving]  # (N, 2)
    return np.concatenate([_direction_histogram(vectors), _rotation_and_zoom(vectors, xs, ys)])


def _direction_histogram(vectors: np.ndarray) -> np.ndarray:
    """Magnitude-weighted histogram of directions; each vector is shared between its two nearest bins."""
    magnitude = np.linalg.norm(vectors, axis=-1)
    position = (np.arctan2(vectors[:, 1], vectors[:, 0]) % (2 * np.pi)) / (2 * np.pi / DIRECTION_BINS)
    lower = np.floor(position)
    upper_share = position - lower
    lower_bin = lower.astype(int) % DIRECTION_BINS
    upper_bin = (lower_bin + 1) % DIRECTION_BINS
    histogram = np.bincount(lower_bin, magnitude * (1 - upper_share), minlength=DIRECTION_BINS)
    return histogram + np.bincount(upper_bin, magnitude * upper_share, minlength=DIRECTION_BINS)


def _rotation_and_zoom(vectors: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """[expansion, contraction, counter-clockwise, clockwise] of the flow relative to its mean."""
    relative = vectors - vectors.mean(axis=0)
    offsets = np.stack([xs - xs.mean(), ys - ys.mean()], axis=-1).astype(np.float64)
    distance = np.linalg.norm(offsets, axis=-1)
    distance[distance == 0] = 1.0
    radial = np.sum(relative * offsets, axis=-1) / distance
    # Image y points down, so a positive cross product turns clockwise on screen.
    tangential = -(offsets[:, 0] * relative[:, 1] - offsets[:, 1] * relative[:, 0]) / distance
    parts = [np.maximum(radial, 0), np.maximum(-radial, 0), np.maximum(tangential, 0), np.maximum(-tangential, 0)]
    return np.array([part.sum() for part in parts])


def _resample_in_time(steps: np.ndarray, count: int) -> np.ndarray:
    """(S, D) rows onto `count` rows of normalised time: up by linear interpolation onto `count` evenly spaced
    points of [0, 1]; down (S > count) by averaging, each row standing for an equal share of the time and each
    output row the mean over its share (points would skip the steps between them: a motion on every other frame
    could read as still)."""
    if len(steps) == 1:
        return np.repeat(steps, count, axis=0)
    if len(steps) > count:
        edges = np.linspace(0.0, 1.0, len(steps) + 1)
        bins = np.linspace(0.0, 1.0, count + 1)
        overlap = np.clip(np.minimum(bins[1:, None], edges[None, 1:]) - np.maximum(bins[:-1, None], edges[None, :-1]),
                          0.0, None)  # (count, S): how much of each step falls in each output row's share
        return overlap @ steps * count
    source = np.linspace(0.0, 1.0, len(steps))
    target = np.linspace(0.0, 1.0, count)
    return np.stack([np.interp(target, source, column) for column in steps.T], axis=-1)
