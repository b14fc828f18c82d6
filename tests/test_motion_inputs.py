"""train-motion input handling: bad clips fail in one line with exit 2 before any model loads; odd ones are used."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.badinputs import ACCEPTED_CLIP_KINDS, REFUSED_CLIP_KINDS, make_bad_clip, write_clip
from vidbooth.cli.app import main
from vidbooth.config.motion import MotionConfig, MotionDataConfig
from vidbooth.engine.motion import read_training_clips
from vidbooth.errors import UserError


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a backbone fails the test: inputs must be checked first."""
    import vidbooth.engine.backbone

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(vidbooth.engine.backbone, "load_backbone", refuse)


def run(*args: str) -> int:
    return main(["train-motion", *args, "--recipe", "tiny/motion"])


def motion_dirs(home):
    root = home / "motions"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# Only the leading frames that sampling uses are decoded (`vidbooth.data.clips.load_and_sample_clip`'s policy), so a
# file cut after them is used: see test_truncation_after_the_sampled_frames_is_not_noticed.
CUT_AFTER_SAMPLED_FRAMES = "truncated_faststart_mp4"


@pytest.mark.parametrize("kind", [k for k in REFUSED_CLIP_KINDS if k != CUT_AFTER_SAMPLED_FRAMES])
def test_bad_clip_is_one_line_exit_2_and_leaves_no_artifact(kind, tmp_path, isolated_home, no_model_loading, capsys):
    path = make_bad_clip(kind, tmp_path / "in")
    assert run(str(path), "--name", "m") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and path.name in " ".join(err.split())
    assert len(err.splitlines()) <= 2  # one message (rich may wrap a long path once)
    assert motion_dirs(isolated_home) == []


def test_truncation_after_the_sampled_frames_is_not_noticed(tmp_path):
    path = make_bad_clip(CUT_AFTER_SAMPLED_FRAMES, tmp_path / "in")
    clips = read_training_clips(MotionConfig(name="m", clips=[str(path)], data=MotionDataConfig(num_frames=8)))
    assert clips[0].frames.shape[0] == 8 and clips[0].frames.std() > 10  # real (noise) frames, not padding


def test_missing_clip_names_it(tmp_path, isolated_home, no_model_loading, capsys):
    assert run(str(tmp_path / "nope.mp4"), "--name", "m") == 2
    assert "nope.mp4" in capsys.readouterr().err
    assert motion_dirs(isolated_home) == []


def test_one_bad_clip_among_good_ones_fails_all(tmp_path, isolated_home, no_model_loading, capsys):
    good = write_clip(tmp_path / "good.mp4", num_frames=12)
    bad = make_bad_clip("zero_byte_mp4", tmp_path / "bad")
    assert run(str(good), str(bad), "--name", "m") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and bad.name in err and good.name not in err
    assert motion_dirs(isolated_home) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--caption", "a", "--caption", "b", "--caption", "c"], "3 captions for 2 clips"),
        (["--set", "appearance.p_image_zero=1.5"], "p_image_zero"),
        (["--set", "adapter.targets=[attn3]"], "adapter.targets"),
        (["--num-frames", "1"], "num_frames"),
    ],
)
def test_bad_settings_exit_2(args, message, tmp_path, no_model_loading, capsys):
    clip = str(write_clip(tmp_path / "c.mp4"))
    assert run(clip, clip, "--name", "m", *args) == 2
    assert message in capsys.readouterr().err


def test_name_is_required_and_validated(tmp_path, no_model_loading, capsys):
    clip = str(write_clip(tmp_path / "c.mp4"))
    assert run(clip) == 2
    assert "--name" in capsys.readouterr().err
    assert run(clip, "--name", "bad/name") == 2
    assert "invalid motion name 'bad/name'" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("kind", ACCEPTED_CLIP_KINDS)
def test_odd_clips_are_sampled_to_num_frames(kind, tmp_path):
    path = make_bad_clip(kind, tmp_path / "in")
    clips = read_training_clips(MotionConfig(name="m", clips=[str(path)], data=MotionDataConfig(num_frames=8)))
    assert len(clips) == 1
    frames = clips[0].frames
    assert frames.shape[0] == 8 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert len(clips[0].sha256) == 64


def test_a_short_clip_among_several_is_named_in_its_warning(tmp_path, monkeypatch):
    from tests.badinputs import capture_warnings

    warned = capture_warnings(monkeypatch)
    long, short = write_clip(tmp_path / "long.mp4", num_frames=12), write_clip(tmp_path / "short.mp4", num_frames=5)
    data = MotionDataConfig(num_frames=8)
    read_training_clips(MotionConfig(name="m", clips=[str(long), str(short)], data=data))
    assert len(warned) == 1 and warned[0].startswith(f"clip {short}: the clip has 5 frames but 8"), warned
    read_training_clips(MotionConfig(name="m", clips=[str(short)], data=data))
    assert warned[1].startswith("the clip has 5 frames")  # one clip: no name needed


def test_a_too_slow_clip_among_several_is_named_in_its_refusal(tmp_path):
    good = write_clip(tmp_path / "good.mp4", num_frames=12)
    slow = write_clip(tmp_path / "slow.gif", num_frames=4, fps=1)
    cfg = MotionConfig(name="m", clips=[str(good), str(slow)], data=MotionDataConfig(num_frames=8))
    with pytest.raises(UserError, match=rf"^clip {re.escape(str(slow))}: sampling 8 frames at 8 fps takes only"):
        read_training_clips(cfg)


def test_sampling_follows_fps_and_stride(tmp_path):
    """A 24 fps clip sampled at 8 fps takes every third frame; stride 2 every second one."""
    from tests.badinputs import frame_level

    path = write_clip(tmp_path / "c.mp4", num_frames=30, fps=24)
    at_8fps = read_training_clips(MotionConfig(name="m", clips=[str(path)], data=MotionDataConfig(num_frames=4, fps=8)))
    levels = at_8fps[0].frames[:, 0, 0, 0].astype(int)
    assert np.abs(levels - [frame_level(i) for i in (0, 3, 6, 9)]).max() <= 3
    assert at_8fps[0].fps == 8
    every_2nd = MotionDataConfig(num_frames=4, stride=2)
    strided = read_training_clips(MotionConfig(name="m", clips=[str(path)], data=every_2nd))
    levels = strided[0].frames[:, 0, 0, 0].astype(int)
    assert np.abs(levels - [frame_level(i) for i in (0, 2, 4, 6)]).max() <= 3
    assert strided[0].fps == 12


def test_clip_hash_changes_with_content(tmp_path):
    a = write_clip(tmp_path / "a.mp4", num_frames=12)
    b = write_clip(tmp_path / "b.mp4", num_frames=13)
    clips = read_training_clips(MotionConfig(name="m", clips=[str(a), str(b), str(a)]))
    assert clips[0].sha256 == clips[2].sha256 != clips[1].sha256


@pytest.fixture
def ran(monkeypatch) -> list:
    """The configs train-motion would train with (nothing is trained)."""
    import vidbooth.engine.motion

    configs = []

    def record(cfg):
        configs.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(vidbooth.engine.motion, "train_motion", record)
    return configs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fps", "4", "--set", "data.stride=2"],
         "--fps 4 and --set data.stride=2 both choose the clips' frames: give one of them"),
        (["--set", "data.fps=4", "--stride", "3"],
         "--set data.fps=4 and --stride 3 both choose the clips' frames: give one of them"),
        (["--recipe", "{strided}", "--fps", "4"],  # --fps had been ignored without a word
         "--fps 4 and data.stride: 2 in recipe {strided} both choose the clips' frames: drop --fps 4, or add --set "
         "data.stride=null to sample at 4 fps"),
        (["--recipe", "{strided}", "--set", "data.fps=4"],
         "--set data.fps=4 and data.stride: 2 in recipe {strided} both choose the clips' frames"),
        # a section given whole ({{ }}: formatted): its fps had been ignored without a word, its stride named as a
        # recipe's
        (["--set", "data={{stride: 2, fps: 4}}"],
         "--set data={{stride: 2, fps: 4}} gives data.fps and data.stride, which both choose the clips' frames: give "
         "one of them"),
        (["--set", "data.fps=4", "--set", "data={{stride: 2}}"],
         "--set data.fps=4 and --set data={{stride: 2}} both choose the clips' frames: give one of them"),
        (["--fps", "4", "--set", "data={{stride: 2}}", "--set", "data={{num_frames: 4}}"],
         "--fps 4 and --set data={{stride: 2}} both choose the clips' frames: give one of them"),
    ],
)
def test_a_frame_rate_given_with_a_stride_is_refused_not_ignored(args, message, tmp_path, ran, capsys):
    strided = tmp_path / "strided.yaml"
    strided.write_text("backbone: {base: tiny}\ndata: {fps: 8, stride: 2}\n")
    clip = str(write_clip(tmp_path / "c.mp4"))
    argv = ["train-motion", clip, "--name", "m", *[a.format(strided=strided) for a in args]]
    if "--recipe" not in args:
        argv += ["--recipe", "tiny/motion"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(strided=strided) in " ".join(err.split())
    assert ran == []


def test_a_stride_wins_over_a_recipes_frame_rate_and_null_clears_a_recipes_stride(tmp_path, ran):
    strided = tmp_path / "strided.yaml"
    strided.write_text("backbone: {base: tiny}\ndata: {fps: 8, stride: 2}\n")
    clip = str(write_clip(tmp_path / "c.mp4"))
    for args in (["--recipe", "tiny/motion", "--stride", "3"],  # the shipped recipe's fps: 8 gives way
                 ["--recipe", str(strided)],  # a saved config.yaml holds both
                 ["--recipe", str(strided), "--set", "data.stride=null", "--fps", "4"]):
        with pytest.raises(SystemExit):
            main(["train-motion", clip, "--name", "m", *args])
    assert [(cfg.data.fps, cfg.data.stride) for cfg in ran] == [(8, 3), (8, 2), (4, None)]


def test_only_a_clip_in_which_nothing_moves_is_warned_about(tmp_path, monkeypatch):
    """The test is evaluate's (`vidbooth.eval.motion.moving_signature`): a still clip is warned of, a moving one not."""
    from tests.badinputs import capture_warnings
    from vidbooth.data.video import write_video
    from vidbooth.engine.motion import warn_of_still_clips

    frames = np.zeros((12, 64, 64, 3), dtype=np.uint8)
    still, moving = frames.copy(), frames.copy()
    still[:, 20:44, 20:44] = 200
    for i in range(len(moving)):
        moving[i, 20:44, 4 + 3 * i : 28 + 3 * i] = 200
    paths = [write_video(still, tmp_path / "still.mp4"), write_video(moving, tmp_path / "moving.mp4")]
    paths.append(paths[0])  # given twice: warned of once
    clips = read_training_clips(MotionConfig(name="m", clips=[str(p) for p in paths]))
    warnings = capture_warnings(monkeypatch)
    warn_of_still_clips(clips)
    assert len(warnings) == 1 and "still.mp4 shows no motion" in warnings[0], warnings
    assert "learn stillness" in warnings[0] and "moving.mp4" not in warnings[0]


def test_a_clip_given_twice_or_copied_is_warned_of_once(tmp_path, monkeypatch):
    """The same clip twice (or 'take.mp4' and 'take copy.mp4') had counted twice without a word."""
    import shutil

    from tests.badinputs import capture_warnings
    from vidbooth.engine.motion import warn_of_repeated_clips

    first, second = write_clip(tmp_path / "take.mp4"), write_clip(tmp_path / "other.mp4", num_frames=14)
    shutil.copy(first, tmp_path / "take copy.mp4")
    for given, expected in (([first, second], None),
                            ([first, second, first], f"clip {first} is given twice: it counts once for each time"),
                            ([first, tmp_path / "take copy.mp4", first],
                             f"clip {tmp_path / 'take copy.mp4'} is the same clip as {first} (and 1 more): ")):
        clips = read_training_clips(MotionConfig(name="m", clips=[str(p) for p in given]))
        warnings = capture_warnings(monkeypatch)
        warn_of_repeated_clips(clips)
        assert len(warnings) == (expected is not None), warnings
        assert expected is None or warnings[0].startswith(expected), warnings


def test_each_clip_keeps_its_own_caption(tmp_path):
    """(mutation testing) Every clip trained under the first clip's caption went unseen."""
    first, second = write_clip(tmp_path / "a.mp4"), write_clip(tmp_path / "b.mp4", width=112)
    captions = ["a dog running", "a cat jumping"]
    clips = read_training_clips(MotionConfig(name="m", clips=[str(first), str(second)], captions=captions))
    assert [clip.caption for clip in clips] == captions
    assert [clip.frames.shape[2] for clip in clips] == [96, 112]  # in the order given


def test_a_frame_folder_holding_a_name_that_is_not_utf8_is_read(tmp_path):
    """A frame named in another encoding had ended train-motion in a UnicodeEncodeError traceback (its digest)."""
    import os

    from tests.badinputs import write_frame_folder

    folder = write_frame_folder(tmp_path / "frames", list(range(1, 10)))
    os.rename(folder / "frame_1.png", folder / os.fsdecode(b"\xffframe_1.png"))
    (clip,) = read_training_clips(MotionConfig(name="m", clips=[str(folder)]))
    assert len(clip.sha256) == 64


def test_a_clip_in_a_folder_whose_name_is_not_text_is_refused_before_training(tmp_path, monkeypatch):
    """Given from inside that folder (or through a link), its absolute path, which config.yaml records, had failed
    the save after the whole training with a UnicodeEncodeError traceback."""
    import os
    from pathlib import Path

    from vidbooth.data.clips import check_clip_exists

    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    write_clip(folder / "walk.mp4")
    (tmp_path / "walk.mp4").symlink_to(folder / "walk.mp4")
    monkeypatch.chdir(folder)
    for given in ("walk.mp4", str(tmp_path / "walk.mp4")):
        with pytest.raises(UserError, match=r"^clip path '.*/caf\\udce9/walk\.mp4' is not text in this terminal's "):
            check_clip_exists(given)
    with pytest.raises(UserError, match="is not text in this terminal's"):
        read_training_clips(MotionConfig(name="m", clips=["walk.mp4"]))
