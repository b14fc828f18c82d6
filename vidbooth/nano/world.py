"""The nano world: textured sprites moving along named motions, with captions and known ground truth.

Everything is deterministic by seed. Frames are (F, H, W, 3) uint8 RGB. Positions are (x, y) in pixels,
pixel centres at integer coordinates, y pointing down. Backgrounds are nearly grey (chroma <= 25 of 255) and
sprites are fully saturated (chroma >= 140), so any strongly coloured pixel belongs to the sprite.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from vidbooth.errors import UserError
from vidbooth.nano.arch import LINEAR_PATHS

SHAPES = ("square", "circle", "triangle", "diamond", "cross")
COLOUR_HUES = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0, "magenta": 300.0}
COLOURS = tuple(COLOUR_HUES)
PATTERNS = ("solid", "striped", "dotted", "checkered")
MOTION_PHRASES = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "up-left": "moving up and left",
    "up-right": "moving up and right",
    "down-left": "moving down and left",
    "down-right": "moving down and right",
    "circle": "moving in a circle",
    "zoom-in": "zooming in",
    "zoom-out": "zooming out",
    "bounce": "bouncing",
    "still": "standing still",
}
MOTIONS = tuple(MOTION_PHRASES)
BACKGROUNDS = ("plain", "gradient", "noise", "stripes", "checker")
MIN_SIZE = 32
VALIDATION_PAIRS_PER_MOTION = 6

_LINEAR_STEPS = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up-left": (-1, -1),
    "up-right": (1, -1),
    "down-left": (-1, 1),
    "down-right": (1, 1),
}
LINEAR_MOTIONS = tuple(_LINEAR_STEPS)
"""The motions along a straight line (the direction words)."""
_DIAGONALS = ("up-left", "up-right", "down-left", "down-right")
_PATTERN_DARKNESS = 0.55
_EDGE_JITTER = 0.06  # an edge-to-edge path starts and ends up to this fraction of the frame inside its edges
_ZOOM_RANGE = (0.6, 1.6)
_SPRITE_REACH = 1.25  # every shape fits in a box of +-1.25 radii around its centre


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"unknown {kind} '{value}': use one of {', '.join(choices)}")


@dataclass(frozen=True, order=True)
class Sprite:
    """What a sprite looks like: one of SHAPES, COLOURS and PATTERNS."""

    shape: str
    colour: str
    pattern: str

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("colour", self.colour, COLOURS)
        _check_choice("pattern", self.pattern, PATTERNS)


@dataclass(frozen=True, order=True)
class Motion:
    """How a sprite moves: one of MOTIONS."""

    name: str

    def __post_init__(self) -> None:
        _check_choice("motion", self.name, MOTIONS)

    @property
    def phrase(self) -> str:
        return MOTION_PHRASES[self.name]


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Ground truth per frame: sprite centres (F, 2) as (x, y) px and radii (F,) px."""

    centres: np.ndarray
    radii: np.ndarray


def all_sprites() -> tuple[Sprite, ...]:
    """Every shape x colour x pattern combination, in a fixed order."""
    return tuple(Sprite(shape, colour, pattern) for shape in SHAPES for colour in COLOURS for pattern in PATTERNS)


def all_motions() -> tuple[Motion, ...]:
    return tuple(Motion(name) for name in MOTIONS)


def cycling_pairs(count: int) -> list[tuple[Sprite, Motion]]:
    """`count` pairs cycling shapes, colours, patterns and motions together; 65 hold every shape x motion pair."""
    return [
        (
            Sprite(SHAPES[i % len(SHAPES)], COLOURS[i % len(COLOURS)], PATTERNS[i % len(PATTERNS)]),
            Motion(MOTIONS[i % len(MOTIONS)]),
        )
        for i in range(count)
    ]


def caption(sprite: Sprite, motion: Motion) -> str:
    """E.g. 'a red striped square moving left', 'a blue solid circle zooming in'."""
    return f"a {sprite.colour} {sprite.pattern} {sprite.shape} {motion.phrase}"


def parse_caption(text: str) -> tuple[Sprite, Motion]:
    """The sprite and motion a caption made by `caption` names."""
    words = text.strip().lower().rstrip(".").split()
    example = caption(Sprite("square", "red", "striped"), Motion("left"))
    if len(words) < 5 or words[0] != "a":
        raise UserError(f"cannot read caption '{text}': write 'a <colour> <pattern> <shape> <motion>' ('{example}')")
    phrase = " ".join(words[4:])
    names = [name for name, known in MOTION_PHRASES.items() if known == phrase]
    if not names:
        known_phrases = ", ".join(MOTION_PHRASES.values())
        raise UserError(f"unknown motion '{phrase}' in caption '{text}': use one of {known_phrases}")
    return Sprite(shape=words[3], colour=words[1], pattern=words[2]), Motion(names[0])


@dataclass(frozen=True)
class PromptTruth:
    """What a prompt in the world's words says of the sprite and its motion; None where it says nothing."""

    colour: str | None
    pattern: str | None
    shape: str | None
    motion: str | None


GENERIC_SHAPE = "shape"
"""The word for a sprite of any shape ('a shape moving in a circle')."""
GENERIC_WORDS = (GENERIC_SHAPE, "sprite")
"""Words that name a sprite without its shape: 'shape', and 'sprite', the word nano's image-prompt model puts the
photo in place of ('a sprite moving left')."""


def read_prompt(text: str | None) -> PromptTruth | None:
    """The world words of a prompt 'a [<colour>] [<pattern>] [<shape>] <motion phrase>' (a caption names all
    four; 'a square moving in a circle', the words left of 'a S* square moving in a circle', names two); None
    when the prompt is not in the world's words."""
    words = re.sub(r"[.,;:!?]", " ", (text or "").lower()).split()  # punctuation says nothing here
    phrases = sorted(MOTION_PHRASES.items(), key=lambda item: -len(item[1].split()))
    motion = next((name for name, phrase in phrases if words[-len(phrase.split()):] == phrase.split()), None)
    if motion is None or not words or words[0] != "a":
        return None
    middle = words[1 : len(words) - len(MOTION_PHRASES[motion].split())]
    said: dict[str, str | None] = {"colour": None, "pattern": None, "shape": None}
    slots = [("colour", COLOURS), ("pattern", PATTERNS), ("shape", (*SHAPES, *GENERIC_WORDS))]
    for word in middle:  # in caption order, each slot at most once
        while slots and word not in slots[0][1]:
            slots.pop(0)
        if not slots:
            return None
        key, _ = slots.pop(0)
        said[key] = None if word in GENERIC_WORDS else word
    return PromptTruth(said["colour"], said["pattern"], said["shape"], motion)


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_positive(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")


# Shapes live in sprite-local coordinates (u, v) = (x - cx, y - cy) / radius. Each field is <= 1 inside the shape
# and grows by about 1 per radius outside it, so (1 - field) * radius approximates a signed distance in pixels.
def _square_field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) / 0.85


def _circle_field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sqrt(u * u + v * v)


def _triangle_field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Apex (0, -1.2), base corners (+-1.2, 0.6): its centroid is the sprite centre."""
    return np.maximum(1.5 * np.abs(u) - v, 2.0 * v) / 1.2


def _diamond_field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) + np.abs(v)


def _cross_field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au / 0.33, av), np.maximum(au, av / 0.33))


_SHAPE_FIELDS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "square": _square_field,
    "circle": _circle_field,
    "triangle": _triangle_field,
    "diamond": _diamond_field,
    "cross": _cross_field,
}


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether sprite-local points (u, v), in units of the sprite radius, lie inside `shape`."""
    _check_choice("shape", shape, SHAPES)
    return _SHAPE_FIELDS[shape](u, v) <= 1.0


# Patterns mark the sprite's darker tone (True) in sprite-local coordinates, so they move and scale with it.
def _solid_pattern(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.zeros(u.shape, dtype=bool)


def _striped_pattern(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.floor(v * 2.5).astype(np.int32) % 2 == 1


def _dotted_pattern(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    du, dv = u * 1.7 - np.round(u * 1.7), v * 1.7 - np.round(v * 1.7)
    return du * du + dv * dv < 0.09


def _checkered_pattern(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.floor(u * 1.6) + np.floor(v * 1.6)).astype(np.int32) % 2 == 1


_PATTERN_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "solid": _solid_pattern,
    "striped": _striped_pattern,
    "dotted": _dotted_pattern,
    "checkered": _checkered_pattern,
}


def colour_rgb(colour: str) -> np.ndarray:
    """The fully saturated, full-brightness RGB (0-255 floats) of a palette colour."""
    _check_choice("colour", colour, COLOURS)
    hue = COLOUR_HUES[colour] / 60.0
    channel_offsets = np.array([5.0, 3.0, 1.0])
    return 255.0 * (1.0 - np.clip(np.minimum((channel_offsets + hue) % 6, 4 - (channel_offsets + hue) % 6), 0, 1))


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _smooth_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(-1.0, 1.0, size=(5, 5)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), -1.0, 1.0)


def _background_texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) texture in [-1, 1]."""
    xs, ys = _pixel_grid(size)
    nx, ny = xs / size - 0.5, ys / size - 0.5
    angle = rng.uniform(0.0, 2.0 * math.pi)
    along = nx * math.cos(angle) + ny * math.sin(angle)
    frequency = rng.uniform(2.5, 4.5)
    if kind == "plain":
        return np.zeros((size, size), dtype=np.float32)
    if kind == "gradient":
        return along * 1.4
    if kind == "noise":
        return _smooth_noise(size, rng)
    if kind == "stripes":
        return np.sin(2.0 * math.pi * frequency * along)
    return 0.8 * np.sign(np.sin(2.0 * math.pi * frequency * nx) * np.sin(2.0 * math.pi * frequency * ny))


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) float background: a grey texture with a faint tint (chroma <= 25)."""
    level, contrast = rng.uniform(90.0, 190.0), rng.uniform(20.0, 45.0)
    grey = level + contrast * _background_texture(kind, size, rng)
    tint_hue = rng.uniform(0.0, 2.0 * math.pi)
    tint = 1.0 + 0.06 * np.cos(tint_hue - np.array([0.0, 2.0, 4.0]) * math.pi / 3.0)
    return (grey[..., None] * tint).astype(np.float32)


def _random_background(size: int, rng: np.random.Generator) -> np.ndarray:
    return _background(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], size, rng)


def _draw(sprite: Sprite, trajectory: Trajectory, background: np.ndarray) -> np.ndarray:
    """Paint the sprite at every trajectory point over a static background: (F, H, W, 3) uint8."""
    size = background.shape[0]
    frames = np.repeat(np.clip(np.rint(background), 0, 255).astype(np.uint8)[None], len(trajectory.radii), axis=0)
    paint = colour_rgb(sprite.colour).astype(np.float32)
    for frame, (cx, cy), radius in zip(frames, trajectory.centres, trajectory.radii):
        reach = _SPRITE_REACH * radius + 2.0
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, size)
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, size)
        u = ((np.arange(x0, x1, dtype=np.float32) - cx) / radius)[None, :]
        v = ((np.arange(y0, y1, dtype=np.float32) - cy) / radius)[:, None]
        alpha = np.clip(0.5 + (1.0 - _SHAPE_FIELDS[sprite.shape](u, v)) * radius, 0.0, 1.0)[..., None]
        shade = np.where(_PATTERN_MASKS[sprite.pattern](u, v), _PATTERN_DARKNESS, 1.0)[..., None]
        blended = background[y0:y1, x0:x1] * (1.0 - alpha) + shade * paint * alpha
        frame[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return frames


def _span_start(offset: float, radius: float, size: int, rng: np.random.Generator) -> float:
    """A start coordinate from which moving by `offset` keeps the sprite fully in frame."""
    low = rng.uniform(radius + 1.0, size - 2.0 - radius - abs(offset))
    return low if offset >= 0 else low + abs(offset)


def _linear_path(name: str, frame_count: int, radius: float, size: int, rng: np.random.Generator) -> np.ndarray:
    step = np.array(_LINEAR_STEPS[name], dtype=float)
    diagonal = bool(step[0] and step[1])
    offset = step * size * rng.uniform(0.45, 0.6) * (0.8 if diagonal else 1.0)
    start = np.array([_span_start(offset[axis], radius, size, rng) for axis in range(2)])
    return start + np.linspace(0.0, 1.0, frame_count)[:, None] * offset


def _edge_path(name: str, frame_count: int, radius: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Across the frame: from near one edge to near the opposite one along each moving axis, on a random lane.

    The motion word alone then says where the sprite starts and ends (within a few pixels), as "a car driving
    left" crosses the picture. With random starts the mean clip at high noise is nearly the same smear for every
    direction, so the x0 loss there hardly rewards following the word (docs/nano.md, "Training further").
    """
    step = _LINEAR_STEPS[name]
    near, far = radius + 1.0, size - 2.0 - radius
    start, end = np.empty(2), np.empty(2)
    for axis in range(2):
        if step[axis]:
            low, high = near + rng.uniform(0.0, _EDGE_JITTER * size), far - rng.uniform(0.0, _EDGE_JITTER * size)
            start[axis], end[axis] = (low, high) if step[axis] > 0 else (high, low)
        else:
            start[axis] = end[axis] = rng.uniform(near, far)
    return start + np.linspace(0.0, 1.0, frame_count)[:, None] * (end - start)


def _circle_path(frame_count: int, radius: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Counter-clockwise on screen, one full turn spread evenly over the frames."""
    orbit = size * rng.uniform(0.2, 0.26)
    room = size / 2.0 - radius - orbit - 1.0
    centre = (size - 1) / 2.0 + rng.uniform(-room, room, size=2)
    angles = rng.uniform(0.0, 2.0 * math.pi) + 2.0 * math.pi * np.arange(frame_count) / frame_count
    return centre + orbit * np.stack([np.cos(angles), -np.sin(angles)], axis=1)


def _bounce_path(frame_count: int, radius: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Falls from the top to a floor halfway through the clip and rises back (a parabola in time)."""
    drop = size * rng.uniform(0.4, 0.55)
    x = rng.uniform(radius + 1.0, size - 2.0 - radius)
    top = rng.uniform(radius + 1.0, size - 2.0 - radius - drop)
    progress = np.linspace(0.0, 1.0, frame_count)
    y = top + drop * (1.0 - (2.0 * progress - 1.0) ** 2)
    return np.stack([np.full(frame_count, x), y], axis=1)


def _fixed_point_path(frame_count: int, room: float, size: int, rng: np.random.Generator) -> np.ndarray:
    centre = (size - 1) / 2.0 + rng.uniform(-room, room, size=2)
    return np.repeat(centre[None], frame_count, axis=0)


def _plan_trajectory(
    motion: Motion, frame_count: int, size: int, rng: np.random.Generator, linear_paths: str
) -> Trajectory:
    radius = size * rng.uniform(0.11, 0.15)
    radii = np.full(frame_count, radius)
    name = motion.name
    if name in _LINEAR_STEPS:
        centres = (_edge_path if linear_paths == "edge" else _linear_path)(name, frame_count, radius, size, rng)
    elif name == "circle":
        centres = _circle_path(frame_count, radius, size, rng)
    elif name == "bounce":
        centres = _bounce_path(frame_count, radius, size, rng)
    elif name == "still":
        centres = _fixed_point_path(frame_count, size / 2.0 - radius - 2.0, size, rng)
    else:
        growth = np.geomspace(*_ZOOM_RANGE, frame_count)
        radii = radius * (growth if name == "zoom-in" else growth[::-1])
        centres = _fixed_point_path(frame_count, size / 2.0 - radius * _ZOOM_RANGE[1] - 2.0, size, rng)
    return Trajectory(centres=centres, radii=radii)


def render_clip(
    sprite: Sprite, motion: Motion, num_frames: int = 8, size: int = 64, seed: int = 0, linear_paths: str = "random"
) -> tuple[np.ndarray, Trajectory]:
    """A (num_frames, size, size, 3) uint8 clip of `sprite` doing `motion`, and its ground-truth trajectory.

    The seed picks the background, the sprite's size, start position and speed. Centre +- radius stays in frame
    (a triangle's base corners, at 1.2 radii, may touch the edge). `linear_paths` is one of LINEAR_PATHS.
    """
    _check_positive("num_frames", num_frames, 2)
    _check_positive("size", size, MIN_SIZE)
    _check_choice("linear_paths", linear_paths, LINEAR_PATHS)
    rng = _rng(seed)
    background = _random_background(size, rng)
    trajectory = _plan_trajectory(motion, num_frames, size, rng, linear_paths)
    return _draw(sprite, trajectory, background), trajectory


def render_photos(sprite: Sprite, n: int = 4, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """A subject photo set: `n` (size, size, 3) uint8 images of `sprite` at varied positions, scales and backgrounds."""
    _check_positive("n", n, 1)
    _check_positive("size", size, MIN_SIZE)
    rng = _rng(seed)
    first_background = int(rng.integers(len(BACKGROUNDS)))
    photos = []
    for index in range(n):
        background = _background(BACKGROUNDS[(first_background + index) % len(BACKGROUNDS)], size, rng)
        radius = size * rng.uniform(0.12, 0.2)
        centre = rng.uniform(radius + 1.0, size - 2.0 - radius, size=(1, 2))
        photos.append(_draw(sprite, Trajectory(centres=centre, radii=np.array([radius])), background)[0])
    return photos


def render_motion_clips(
    motion: Motion, sprite: Sprite, n: int = 4, num_frames: int = 8, size: int = 64, seed: int = 0
) -> list[np.ndarray]:
    """A motion reference set: `n` clips of `sprite` doing `motion` from different starts on different backgrounds."""
    _check_positive("n", n, 1)
    rng = _rng(seed)
    return [render_clip(sprite, motion, num_frames, size, int(rng.integers(2**31)))[0] for _ in range(n)]


@dataclass(frozen=True)
class Split:
    """Which sprites, motions and pairs pretraining may use; the rest is held out for personalisation and evaluation.

    heldout_sprites holds every pattern of one colour x shape combination plus a few single sprites;
    heldout_motions holds "circle" and one diagonal. Neither ever appears in pretraining_pairs.
    validation_pairs are known sprites with known motions in combinations pretraining never shows.
    """

    seed: int
    heldout_sprites: tuple[Sprite, ...]
    heldout_motions: tuple[Motion, ...]
    validation_pairs: tuple[tuple[Sprite, Motion], ...] = field(repr=False)
    pretraining_pairs: tuple[tuple[Sprite, Motion], ...] = field(repr=False)

    def pretraining_sprites(self) -> tuple[Sprite, ...]:
        return tuple(sprite for sprite in all_sprites() if sprite not in self.heldout_sprites)

    def pretraining_motions(self) -> tuple[Motion, ...]:
        return tuple(motion for motion in all_motions() if motion not in self.heldout_motions)

    def demo_choice(self, seed: int = 0) -> tuple[Sprite, Motion]:
        """One held-out sprite and one held-out motion, picked by `seed`.

        Consecutive seeds walk through every (sprite, motion) pair once before any repeats: seeds 0 to
        len(heldout_sprites) - 1 give each held-out sprite once, neighbours differing in shape or colour where
        possible (patterns alone barely survive nano's autoencoder); the held-out motions take turns every two seeds.
        """
        sprites = _alternate_looks(self.heldout_sprites)
        lap = seed // len(sprites)
        return sprites[seed % len(sprites)], self.heldout_motions[(seed // 2 + lap) % len(self.heldout_motions)]


def _alternate_looks(sprites: tuple[Sprite, ...]) -> list[Sprite]:
    """`sprites` reordered so that neighbours differ in (shape, colour) where possible: the fullest group goes next."""
    groups: dict[tuple[str, str], list[Sprite]] = {}
    for sprite in sorted(sprites):
        groups.setdefault((sprite.shape, sprite.colour), []).append(sprite)
    order: list[Sprite] = []
    last = None
    while len(order) < len(sprites):
        candidates = [key for key, left in groups.items() if left and key != last] or [last]
        last = max(candidates, key=lambda key: len(groups[key]))  # max keeps the first of equals: sorted order
        order.append(groups[last].pop(0))
    return order


def _pick_heldout_sprites(rng: np.random.Generator) -> tuple[Sprite, ...]:
    shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
    unseen_combination = [Sprite(shape, colour, pattern) for pattern in PATTERNS]
    others = [sprite for sprite in all_sprites() if (sprite.shape, sprite.colour) != (shape, colour)]
    singles = [others[index] for index in rng.choice(len(others), size=4, replace=False)]
    return tuple(sorted(unseen_combination + singles))


def _pick_validation_pairs(
    sprites: tuple[Sprite, ...], motions: tuple[Motion, ...], rng: np.random.Generator
) -> tuple[tuple[Sprite, Motion], ...]:
    pairs = []
    for motion in motions:
        chosen = rng.choice(len(sprites), size=VALIDATION_PAIRS_PER_MOTION, replace=False)
        pairs.extend((sprites[index], motion) for index in sorted(chosen))
    return tuple(pairs)


@functools.lru_cache(maxsize=4)
def make_split(seed: int = 0) -> Split:
    """The deterministic held-out split for `seed`; a pretrained model must record the seed it was trained with."""
    rng = _rng(seed)
    heldout_sprites = _pick_heldout_sprites(rng)
    heldout_motions = (Motion("circle"), Motion(_DIAGONALS[rng.integers(len(_DIAGONALS))]))
    sprites = tuple(sprite for sprite in all_sprites() if sprite not in heldout_sprites)
    motions = tuple(motion for motion in all_motions() if motion not in heldout_motions)
    validation_pairs = _pick_validation_pairs(sprites, motions, rng)
    excluded = set(validation_pairs)
    pretraining_pairs = tuple((s, m) for s in sprites for m in motions if (s, m) not in excluded)
    return Split(seed, heldout_sprites, heldout_motions, validation_pairs, pretraining_pairs)


def sample_pretraining_batch(
    rng: np.random.Generator,
    batch: int,
    num_frames: int = 8,
    size: int = 64,
    split: Split | None = None,
    linear_paths: str = "random",
    linear_only: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """`batch` random clips over the split's pretraining pairs (`linear_only`: those with a linear motion):
    videos (B, F, H, W, 3) uint8 and their captions."""
    _check_positive("batch", batch, 1)
    pairs = (split or make_split()).pretraining_pairs
    if linear_only:
        pairs = tuple(pair for pair in pairs if pair[1].name in LINEAR_MOTIONS)
    videos, captions = [], []
    for _ in range(batch):
        sprite, motion = pairs[rng.integers(len(pairs))]
        videos.append(render_clip(sprite, motion, num_frames, size, int(rng.integers(2**31)), linear_paths)[0])
        captions.append(caption(sprite, motion))
    return np.stack(videos), captions
