"""The nano world: determinism, geometry, captions, the held-out split and pretraining batches."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from vidbooth.errors import UserError
from vidbooth.nano.world import (
    COLOURS,
    MOTIONS,
    PATTERNS,
    SHAPES,
    Motion,
    Sprite,
    all_motions,
    all_sprites,
    caption,
    make_split,
    parse_caption,
    read_prompt,
    render_clip,
    render_motion_clips,
    render_photos,
    sample_pretraining_batch,
)

RED_SQUARE = Sprite("square", "red", "striped")
LINEAR_MOTIONS = ("left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right")


def _chroma(image: np.ndarray) -> np.ndarray:
    pixels = image.astype(int)
    return pixels.max(axis=-1) - pixels.min(axis=-1)


def test_vocabularies_have_the_promised_sizes():
    assert 4 <= len(SHAPES) <= 6 and 6 <= len(COLOURS) <= 8 and len(PATTERNS) == 4
    assert len(all_sprites()) == len(SHAPES) * len(COLOURS) * len(PATTERNS)
    assert {"left", "right", "up", "down", "circle", "zoom-in", "zoom-out", "bounce", "still"} <= set(MOTIONS)
    assert len(all_motions()) == len(MOTIONS) == 13


@pytest.mark.parametrize("size, num_frames", [(64, 8), (32, 8), (48, 3), (64, 16)])
def test_clip_shape_dtype_and_trajectory(size, num_frames):
    frames, truth = render_clip(RED_SQUARE, Motion("left"), num_frames=num_frames, size=size, seed=3)
    assert frames.shape == (num_frames, size, size, 3) and frames.dtype == np.uint8
    assert truth.centres.shape == (num_frames, 2) and truth.radii.shape == (num_frames,)
    assert np.all(np.diff(truth.centres[:, 0]) < 0)  # moving left
    for frame, centre in zip(frames, truth.centres, strict=True):
        sprite_pixels = np.argwhere(_chroma(frame) > 70)  # (y, x); backgrounds <= 25, the square's stripes >= 140
        assert np.abs(sprite_pixels.mean(axis=0)[::-1] - centre).max() <= 1.0, centre


def test_same_seed_same_clip_and_different_seeds_differ():
    first, first_truth = render_clip(RED_SQUARE, Motion("circle"), seed=11)
    again, again_truth = render_clip(RED_SQUARE, Motion("circle"), seed=11)
    other, _ = render_clip(RED_SQUARE, Motion("circle"), seed=12)
    assert np.array_equal(first, again) and np.array_equal(first_truth.centres, again_truth.centres)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("size", [64, 32])
def test_sprite_stays_in_frame_for_every_motion(size):
    for motion, seed in itertools.product(all_motions(), range(20)):
        _, truth = render_clip(RED_SQUARE, motion, size=size, seed=seed)
        assert np.all(truth.centres - truth.radii[:, None] >= 0), (motion, seed)
        assert np.all(truth.centres + truth.radii[:, None] <= size - 1), (motion, seed)


@pytest.mark.parametrize("size, least_step", [(64, 3.0), (32, 1.5)])
def test_linear_motions_move_visibly_every_frame_in_their_direction(size, least_step):
    for name, seed in itertools.product(LINEAR_MOTIONS, range(5)):
        _, truth = render_clip(RED_SQUARE, Motion(name), size=size, seed=seed)
        steps = np.diff(truth.centres, axis=0)
        assert np.all(np.hypot(steps[:, 0], steps[:, 1]) >= least_step), (name, seed)
        expected_x = -1 if "left" in name else 1 if "right" in name else 0
        expected_y = -1 if "up" in name else 1 if "down" in name else 0
        assert np.all(np.sign(np.round(steps, 6)) == [expected_x, expected_y]), (name, seed)


@pytest.mark.parametrize("size", [64, 32])
def test_edge_paths_cross_the_frame_from_the_edge_the_word_names(size):
    jitter = 0.06 * size
    for name, seed in itertools.product(LINEAR_MOTIONS, range(10)):
        frames, truth = render_clip(RED_SQUARE, Motion(name), size=size, seed=seed, linear_paths="edge")
        near, far = truth.radii[0] + 1.0, size - 2.0 - truth.radii[0]
        step = (-1 if "left" in name else 1 if "right" in name else 0,
                -1 if "up" in name else 1 if "down" in name else 0)
        for axis in range(2):
            path = truth.centres[:, axis]
            if step[axis] == 0:
                assert np.ptp(path) == 0 and near <= path[0] <= far, (name, seed)
                continue
            first, last = (path[0], path[-1]) if step[axis] > 0 else (size - 1 - path[0], size - 1 - path[-1])
            low = near if step[axis] > 0 else size - 1 - far
            assert low <= first <= low + jitter and size - 1 - low - jitter <= last <= size - 1 - low, (name, seed)
        steps = np.diff(truth.centres, axis=0)
        assert np.all(np.sign(np.round(steps, 6)) == step), (name, seed)
        reach = truth.radii[:, None]
        assert np.all(truth.centres - reach >= 0) and np.all(truth.centres + reach <= size - 1), (name, seed)
        assert frames.shape == (8, size, size, 3)


def test_edge_paths_change_only_linear_motions():
    for motion in all_motions():
        default, default_truth = render_clip(RED_SQUARE, motion, seed=4)
        edge, edge_truth = render_clip(RED_SQUARE, motion, seed=4, linear_paths="edge")
        assert np.array_equal(default, edge) == (motion.name not in LINEAR_MOTIONS), motion
    with pytest.raises(UserError, match="unknown linear_paths 'corner': use one of random, edge"):
        render_clip(RED_SQUARE, Motion("left"), linear_paths="corner")


def test_special_motions_follow_their_definitions():
    _, zoom_in = render_clip(RED_SQUARE, Motion("zoom-in"), seed=1)
    _, zoom_out = render_clip(RED_SQUARE, Motion("zoom-out"), seed=1)
    _, still = render_clip(RED_SQUARE, Motion("still"), seed=1)
    _, bounce = render_clip(RED_SQUARE, Motion("bounce"), num_frames=9, seed=1)
    _, circle = render_clip(RED_SQUARE, Motion("circle"), seed=1)
    assert np.all(np.diff(zoom_in.radii) > 0) and np.all(np.diff(zoom_out.radii) < 0)
    assert np.ptp(still.centres, axis=0).max() == 0 and np.ptp(still.radii) == 0
    assert np.argmax(bounce.centres[:, 1]) == 4 and np.ptp(bounce.centres[:, 0]) == 0
    distances = np.hypot(*(circle.centres - circle.centres.mean(axis=0)).T)
    assert np.ptp(distances) < 1e-6 and distances[0] > 10
    offsets = circle.centres - circle.centres.mean(axis=0)
    turns = np.diff(np.unwrap(np.arctan2(-offsets[:, 1], offsets[:, 0])))  # y points down on screen
    np.testing.assert_allclose(turns, 2 * np.pi / 8)  # counter-clockwise, one turn spread evenly over 8 frames


@pytest.mark.parametrize("linear_paths", ["random", "edge"])
def test_linear_motions_go_their_whole_way_evenly_in_their_direction(linear_paths):
    """Straight motions travel 45-60% of the frame and diagonals 80% of that on each axis ("random"), or across it
    from near one edge to near the other ("edge"), in equal steps from the first frame to the last."""
    steps = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "up-left": (-1, -1),
             "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1)}
    from vidbooth.nano import world

    assert set(steps) == set(world.LINEAR_MOTIONS)
    for (name, step), seed in itertools.product(steps.items(), range(12)):
        _, truth = render_clip(RED_SQUARE, Motion(name), seed=seed, linear_paths=linear_paths)
        moves = np.diff(truth.centres, axis=0)
        np.testing.assert_allclose(moves, np.broadcast_to(moves[0], moves.shape), atol=1e-9)
        travel = truth.centres[-1] - truth.centres[0]
        low, high = (0.45, 0.6) if 0 in step else (0.36, 0.48)
        near, far = truth.radii[0] + 1, 64 - 2 - truth.radii[0]  # the centres nearest the edges, sprite in frame
        for axis in range(2):
            if step[axis] == 0:
                assert travel[axis] == 0
            elif linear_paths == "random":
                assert np.sign(travel[axis]) == step[axis] and low * 64 - 1e-9 <= abs(travel[axis]) <= high * 64
            else:  # from within 6% of the frame of one edge to within 6% of the other
                start, end = (near, far) if step[axis] > 0 else (far, near)
                assert abs(truth.centres[0, axis] - start) <= 0.06 * 64
                assert abs(truth.centres[-1, axis] - end) <= 0.06 * 64


def test_backgrounds_are_nearly_grey_and_sprites_are_strongly_coloured():
    for seed, sprite in enumerate(all_sprites()[::7]):
        frames, truth = render_clip(sprite, Motion("right"), seed=seed)
        ys, xs = np.mgrid[0:64, 0:64]
        for frame, (cx, cy), radius in zip(frames, truth.centres, truth.radii, strict=True):
            distance = np.hypot(xs - cx, ys - cy)
            assert _chroma(frame)[distance > 1.6 * radius + 2].max() <= 26
            assert _chroma(frame)[distance < 0.4 * radius].min() >= 130


def test_captions_read_naturally_and_parse_back_for_every_pair():
    assert caption(RED_SQUARE, Motion("left")) == "a red striped square moving left"
    assert caption(RED_SQUARE, Motion("zoom-in")) == "a red striped square zooming in"
    assert caption(RED_SQUARE, Motion("still")) == "a red striped square standing still"
    for sprite, motion in itertools.product(all_sprites(), all_motions()):
        assert parse_caption(caption(sprite, motion)) == (sprite, motion)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cannot read caption ''"),
        ("a red square moving left", "unknown motion 'left' in caption"),
        ("a pink striped square moving left", "unknown colour 'pink'"),
        ("a red striped square flying", "unknown motion 'flying' in caption"),
    ],
)
def test_unreadable_captions_are_user_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_caption(text)


def test_bad_names_and_arguments_are_user_errors():
    with pytest.raises(UserError, match="colour"):
        Sprite("square", "pink", "solid")
    with pytest.raises(UserError, match="motion"):
        Motion("sideways")
    for kwargs, message in (
        ({"size": 16}, "size must be an integer >= 32, got 16"),
        ({"num_frames": 1}, "num_frames must be an integer >= 2, got 1"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"seed": 1.5}, "seed must be a non-negative integer, got 1.5"),
    ):
        with pytest.raises(UserError, match=re.escape(message)):
            render_clip(RED_SQUARE, Motion("left"), **kwargs)
    with pytest.raises(UserError, match="n must be an integer >= 1, got 0"):
        render_photos(RED_SQUARE, n=0)


def test_photo_set_varies_position_scale_and_background_deterministically():
    photos = render_photos(RED_SQUARE, n=5, size=64, seed=2)
    assert len(photos) == 5 and all(photo.shape == (64, 64, 3) and photo.dtype == np.uint8 for photo in photos)
    again = render_photos(RED_SQUARE, n=5, size=64, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(photos, again, strict=True))
    sprite_masks = [_chroma(photo) > 100 for photo in photos]
    assert len({int(mask.sum()) for mask in sprite_masks}) == 5
    assert len({tuple(np.argwhere(mask).mean(axis=0).round()) for mask in sprite_masks}) == 5
    backgrounds = [photo[~mask].mean(axis=0).round() for photo, mask in zip(photos, sprite_masks, strict=True)]
    assert len({tuple(colour) for colour in backgrounds}) == 5


def test_motion_clip_set_repeats_one_motion_from_different_starts():
    clips = render_motion_clips(Motion("down"), RED_SQUARE, n=3, num_frames=6, size=32, seed=4)
    assert [clip.shape for clip in clips] == [(6, 32, 32, 3)] * 3
    assert not np.array_equal(clips[0], clips[1])
    again = render_motion_clips(Motion("down"), RED_SQUARE, n=3, num_frames=6, size=32, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(clips, again, strict=True))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_keeps_heldout_sprites_and_motions_out_of_pretraining(seed):
    split = make_split(seed)
    pretraining_sprites = {sprite for sprite, _ in split.pretraining_pairs}
    pretraining_motions = {motion for _, motion in split.pretraining_pairs}
    assert not pretraining_sprites & set(split.heldout_sprites)
    assert not pretraining_motions & set(split.heldout_motions)
    assert pretraining_sprites == set(split.pretraining_sprites())
    assert pretraining_motions == set(split.pretraining_motions())
    assert Motion("circle") in split.heldout_motions and len(split.heldout_motions) == 2
    combinations = {(sprite.shape, sprite.colour) for sprite in all_sprites()}
    assert combinations - {(sprite.shape, sprite.colour) for sprite in pretraining_sprites}


@pytest.mark.parametrize("seed", [0, 3])
def test_validation_pairs_are_known_parts_in_unseen_combinations(seed):
    split = make_split(seed)
    validation, pretraining = set(split.validation_pairs), set(split.pretraining_pairs)
    assert len(validation) >= 50 and not validation & pretraining
    everything_known = set(itertools.product(split.pretraining_sprites(), split.pretraining_motions()))
    assert validation | pretraining == everything_known
    assert {motion for _, motion in validation} == set(split.pretraining_motions())


def test_split_and_demo_choice_are_deterministic_and_held_out():
    assert make_split(5).heldout_sprites == make_split(5).heldout_sprites
    assert len({make_split(seed).heldout_sprites for seed in range(4)}) > 1
    split = make_split(0)
    everything = set(itertools.product(split.heldout_sprites, split.heldout_motions))
    first_lap = [split.demo_choice(seed) for seed in range(len(everything))]
    assert set(first_lap) == everything  # every held-out pair, none twice
    first_sprites = [sprite for sprite, _ in first_lap[: len(split.heldout_sprites)]]
    assert sorted(first_sprites) == sorted(split.heldout_sprites)
    looks = [(sprite.shape, sprite.colour) for sprite in first_sprites]
    assert all(a != b for a, b in zip(looks, looks[1:]))  # neighbouring seeds show different-looking subjects
    assert len({motion for _, motion in first_lap[:4]}) == len(split.heldout_motions)
    assert split.demo_choice(len(everything) + 3) == split.demo_choice(3) == make_split(0).demo_choice(3)


def test_pretraining_batch_uses_only_pretraining_pairs():
    split = make_split(0)
    videos, captions = sample_pretraining_batch(np.random.default_rng(0), batch=24, num_frames=4, size=32, split=split)
    assert videos.shape == (24, 4, 32, 32, 3) and videos.dtype == np.uint8 and len(captions) == 24
    assert all(parse_caption(text) in set(split.pretraining_pairs) for text in captions)
    again, _ = sample_pretraining_batch(np.random.default_rng(0), batch=24, num_frames=4, size=32, split=split)
    assert np.array_equal(videos, again)


def test_pretraining_batch_can_keep_to_linear_motions():
    split = make_split(0)
    _, captions = sample_pretraining_batch(np.random.default_rng(0), 64, 2, 32, split, linear_only=True)
    pairs = [parse_caption(text) for text in captions]
    assert all(pair in set(split.pretraining_pairs) and pair[1].name in LINEAR_MOTIONS for pair in pairs)
    assert len({motion.name for _, motion in pairs}) == 7  # every linear pretraining motion (one diagonal held out)


def test_pretraining_batch_lays_out_linear_motions_as_asked():
    split = make_split(0)
    start_gap = {}
    for paths in ("random", "edge"):
        videos, captions = sample_pretraining_batch(np.random.default_rng(1), 160, 2, 32, split, linear_paths=paths)
        start_gap[paths] = []
        for video, text in zip(videos, captions, strict=True):
            name = parse_caption(text)[1].name
            if name not in LINEAR_MOTIONS:
                continue
            y, x = np.argwhere(_chroma(video[0]) > 70).mean(axis=0)
            gaps = [x if "right" in name else 31 - x if "left" in name else 0,
                    y if "down" in name else 31 - y if "up" in name else 0]
            start_gap[paths].append(max(gaps))  # how far the first centre is from the edge the motion leaves
    assert len(start_gap["edge"]) > 50 and max(start_gap["edge"]) < 9  # radius (<= 4.8) + 1 + jitter (1.9) + rounding
    assert max(start_gap["random"]) > 12


@pytest.mark.parametrize("prompt, expected", [
    ("a red striped square moving left", ("red", "striped", "square", "left")),
    ("a square moving in a circle", (None, None, "square", "circle")),  # 'a S* square ...' less its pseudo-word
    ("a shape moving in a circle", (None, None, None, "circle")),  # 'shape': any sprite
    ("a sprite moving left", (None, None, None, "left")),  # nano's image-prompt word: the probe had said n/a
    ("A red square moving up and left.", ("red", None, "square", "up-left")),
    ("a moving left", (None, None, None, "left")),
    ("a red striped square, moving left!", ("red", "striped", "square", "left")),  # punctuation says nothing
    ("a S* square moving left", None),  # a word the world does not have
    ("a square red moving left", None),  # out of caption order
    ("a red square", None),  # no motion
    ("red square moving left", None),
    ("", None),
])
def test_read_prompt_takes_what_a_prompt_in_the_worlds_words_says(prompt, expected):
    truth = read_prompt(prompt)
    assert (truth and (truth.colour, truth.pattern, truth.shape, truth.motion)) == expected


def test_split_zero_holds_out_these_sprites_motions_and_pairs():
    """Split 0, pinned: held-out singles come from outside the unseen combination (cross/cyan), and the validation
    pairs are distinct. (mutation testing: singles drawn from all sprites, and pairs drawn with replacement, had
    passed)"""
    split = make_split(0)
    assert [motion.name for motion in split.heldout_motions] == ["circle", "down-right"]
    assert split.heldout_sprites == (
        Sprite("circle", "green", "checkered"),
        Sprite("circle", "yellow", "dotted"),
        *(Sprite("cross", "cyan", pattern) for pattern in ("checkered", "dotted", "solid", "striped")),
        Sprite("square", "yellow", "solid"),
        Sprite("triangle", "green", "striped"),
    )
    assert len(split.validation_pairs) == len(set(split.validation_pairs)) == 66
    assert len(split.pretraining_pairs) == 1166


def test_demo_choice_takes_each_heldout_motion_for_two_seeds_in_turn():
    """(mutation testing: motions alternating every seed had passed)"""
    split = make_split(0)
    assert [split.demo_choice(seed)[1].name for seed in range(6)] == [
        "circle", "circle", "down-right", "down-right", "circle", "circle"
    ]
