"""Motion clips in: videos and frame folders load, sample and size predictably, or fail with a UserError."""

from __future__ import annotations

import badinputs
import numpy as np
import pytest
import torch
from PIL import Image

from vidbooth.data import clips
from vidbooth.data.clips import (
    clip_to_tensor,
    frames_needed,
    load_and_sample_clip,
    load_clip,
    prepare_clip,
    sample_frames,
    sample_indices,
)
from vidbooth.data.video import read_video, video_fps, video_frame_count, write_video
from vidbooth.errors import UserError


@pytest.fixture
def warned(monkeypatch) -> list[str]:
    return badinputs.capture_warnings(monkeypatch)


def frame_levels(frames: np.ndarray) -> list[int]:
    """The grey level of each frame, rounded to the nearest `badinputs.frame_level` step."""
    return [int(round((frame.mean() - 16) / 8)) for frame in frames]


@pytest.mark.parametrize("kind", badinputs.REFUSED_CLIP_KINDS)
def test_refused_clip_raises_one_line_user_error_naming_it(kind, tmp_path):
    path = badinputs.make_bad_clip(kind, tmp_path)
    with pytest.raises(UserError) as raised:
        load_clip(path)
    message = str(raised.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("kind", badinputs.ACCEPTED_CLIP_KINDS)
def test_accepted_clip_loads_as_uint8_frames(kind, tmp_path):
    frames, fps = load_clip(badinputs.make_bad_clip(kind, tmp_path))
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert len(frames) >= 2 and fps > 0


def test_one_frame_video_needs_two_frames(tmp_path):
    with pytest.raises(UserError, match="needs at least 2 frames"):
        load_clip(badinputs.make_bad_clip("one_frame_mp4", tmp_path))


@pytest.mark.parametrize("kind", ["truncated_mp4", "truncated_faststart_mp4"])
def test_truncated_mp4_is_refused(kind, tmp_path):
    with pytest.raises(UserError, match="truncated"):
        load_clip(badinputs.make_bad_clip(kind, tmp_path))


def test_truncated_video_is_fine_when_only_its_intact_start_is_needed(tmp_path):
    frames, _ = load_clip(badinputs.make_bad_clip("truncated_faststart_mp4", tmp_path), max_frames=4)
    assert len(frames) == 4


def test_mp4_frames_and_fps(tmp_path):
    frames, fps = load_clip(badinputs.write_clip(tmp_path / "clip.mp4", num_frames=12, fps=12))
    assert frames.shape == (12, 64, 96, 3) and fps == 12.0
    assert frame_levels(frames) == list(range(12))


def test_max_frames_stops_decoding_early(tmp_path):
    frames, _ = load_clip(badinputs.write_clip(tmp_path / "clip.mp4", num_frames=12), max_frames=5)
    assert frame_levels(frames) == list(range(5))


def test_frames_are_shrunk_while_decoding(tmp_path):
    frames, _ = load_clip(badinputs.write_clip(tmp_path / "clip.mp4", num_frames=3, width=192, height=128), 3, 64)
    assert frames.shape == (3, 64, 96, 3)


def test_gif_clip_keeps_frame_order(tmp_path):
    frames, fps = load_clip(badinputs.make_bad_clip("gif_clip", tmp_path))
    assert frame_levels(frames) == list(range(6)) and fps == pytest.approx(8.0, rel=0.05)  # GIF stores centiseconds


def _grey_frames(levels: list[int]) -> np.ndarray:
    return np.stack([np.full((64, 64, 3), 16 + 8 * level, np.uint8) for level in levels])


ANIMATIONS = ["pause.gif", "pause.webp", "pause.png"]
"""A GIF, an animated WebP and an APNG, each read by Pillow from its frames' times."""


@pytest.mark.parametrize("name", ANIMATIONS)
def test_gif_that_pauses_reads_back_every_frame_at_its_rate(tmp_path, name):
    levels = [0, 1, 1, 1, 2, 2, 2, 2]  # Pillow stores the repeats as 3 frames held 1x, 3x and 4x as long
    path = badinputs.write_clip_file(_grey_frames(levels), tmp_path / name, fps=8)
    assert frame_levels(read_video(path)) == levels
    assert video_frame_count(path) == len(levels) and video_fps(path) == pytest.approx(8.0, rel=0.05)
    frames, fps = load_clip(path)
    assert frame_levels(frames) == levels and fps == pytest.approx(8.0, rel=0.05)


@pytest.mark.parametrize("name", ANIMATIONS)
def test_gif_with_uneven_frame_times_is_resampled_to_its_shortest(tmp_path, name):
    images = [Image.fromarray(frame) for frame in _grey_frames([0, 1, 2])]
    path = tmp_path / name
    images[0].save(path, save_all=True, append_images=images[1:], duration=[100, 300, 100], loop=0, lossless=True)
    assert frame_levels(read_video(path)) == [0, 1, 1, 1, 2] and video_fps(path) == pytest.approx(10.0)
    assert video_frame_count(path) == 5


def test_variable_frame_rate_mp4_reads_back_at_the_rate_it_reports(tmp_path):
    """A phone clip's frame times vary: here 4 frames held 0.5 s each, then 8 at 1/8 s (3 s, 4 fps on average).
    The decoded frames must span the clip's 3 seconds at the rate `video_fps` reports, so that sampling by time
    keeps the motion's speed, and must reach its last frame."""
    import subprocess

    import imageio_ffmpeg

    levels, durations = list(range(12)), [0.5] * 4 + [0.125] * 8
    listing = []
    for level, (frame, duration) in enumerate(zip(_grey_frames(levels), durations, strict=True)):
        Image.fromarray(frame).save(tmp_path / f"{level:02d}.png")
        listing += [f"file '{level:02d}.png'", f"duration {duration}"]
    listing.append("file '11.png'")  # the concat demuxer takes the last frame's duration from a repeat
    (tmp_path / "frames.txt").write_text("\n".join(listing) + "\n")
    path = tmp_path / "vfr.mp4"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "concat", "-i", str(tmp_path / "frames.txt"),
               "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    frames, fps = read_video(path), video_fps(path)
    assert fps < 5  # the average rate, not the 8 fps base rate of the fast part
    assert len(frames) / fps == pytest.approx(3.0, abs=0.6)
    decoded = frame_levels(frames)
    assert decoded == sorted(decoded) and decoded[0] == 0 and decoded[-1] == 11


def test_portrait_odd_sized_video(tmp_path):
    frames, _ = load_clip(badinputs.make_bad_clip("portrait_odd_mp4", tmp_path))
    assert frames.shape == (6, 122, 68, 3)
    assert prepare_clip(frames, (64, 32)).shape == (6, 64, 32, 3)


def test_frame_folder_is_ordered_by_number_not_name(tmp_path, warned):
    frames, fps = load_clip(badinputs.make_bad_clip("frames_unpadded_numbers", tmp_path), folder_fps=12.0)
    assert frame_levels(frames) == list(range(1, 12)) and fps == 12.0
    assert warned == []


def test_frame_folder_with_gap_is_used_back_to_back_with_a_warning(tmp_path, warned):
    path = badinputs.make_bad_clip("frames_with_gap", tmp_path)
    frames, _ = load_clip(path)
    assert frame_levels(frames) == [1, 2, 3, 7, 8]
    assert len(warned) == 1 and str(path) in warned[0] and "missing 4-6" in warned[0]


def test_frame_folder_with_mixed_sizes_is_resized_to_the_first_frame_with_a_warning(tmp_path, warned):
    frames, _ = load_clip(badinputs.make_bad_clip("frames_mixed_sizes", tmp_path))
    assert frames.shape == (4, 64, 96, 3)
    assert frame_levels(frames) == [1, 2, 3, 4]
    assert len(warned) == 1 and "frame_3.png is 80x80" in warned[0] and "96x64" in warned[0]


def test_frame_folder_skips_hidden_and_non_image_files(tmp_path):
    folder = badinputs.write_frame_folder(tmp_path / "frames", [1, 2, 3])
    (folder / "notes.txt").write_text("shot on a phone")
    (folder / "._frame_4.png").write_bytes(b"macOS resource fork")
    frames, _ = load_clip(folder)
    assert frame_levels(frames) == [1, 2, 3]


def test_corrupt_frame_is_named(tmp_path):
    with pytest.raises(UserError, match=r"frame_3\.png.*remove or replace it"):
        load_clip(badinputs.make_bad_clip("frames_with_corrupt_frame", tmp_path))


def test_unicode_frame_folder(tmp_path):
    path = badinputs.make_bad_clip("unicode_frames_folder", tmp_path)
    assert "🐶" in str(path)
    assert len(load_clip(path)[0]) == 3


def test_stride_sampling_takes_every_nth_frame():
    assert sample_indices(100, 24.0, 4, stride=5).tolist() == [0, 5, 10, 15]


def test_target_fps_sampling_follows_time():
    assert sample_indices(100, 30.0, 5, target_fps=8.0).tolist() == [0, 3, 7, 11, 15]


def test_target_fps_above_clip_fps_repeats_frames_with_a_warning(warned):
    assert sample_indices(100, 8.0, 5, target_fps=16.0).tolist() == [0, 0, 1, 1, 2]
    assert len(warned) == 1 and "3 frames in use repeat to make 5" in warned[0] and "--fps 8" in warned[0]


def test_a_clip_so_slow_that_sampling_takes_one_frame_only_is_refused(warned):
    """8 frames at 8 fps span 1 s: a 1 fps clip has one frame in it, and the motion learned would be stillness."""
    with pytest.raises(UserError, match=r"takes only the first frame of this 1 fps clip.*--fps 1 or --stride 1"):
        sample_indices(4, 1.0, 8, target_fps=8.0)
    assert sample_indices(4, 1.0, 4, target_fps=1.0).tolist() == [0, 1, 2, 3] and warned == []


@pytest.mark.parametrize("fps, expected_stride", [(24.0, 3), (30.0, 4), (8.0, 1), (5.0, 1), (60.0, 8)])
def test_default_stride_aims_at_8_fps(fps, expected_stride):
    assert sample_indices(1000, fps, 3).tolist() == [0, expected_stride, 2 * expected_stride]


def test_long_clip_uses_only_its_start(warned):
    assert sample_indices(100_000, 24.0, 16, stride=2).tolist() == list(range(0, 32, 2))
    assert warned == []


def test_short_clip_spreads_frames_evenly_with_a_warning(warned):
    assert sample_indices(10, 24.0, 4, stride=5).tolist() == [0, 3, 6, 9]
    assert len(warned) == 1 and "10 frames" in warned[0] and "need 16" in warned[0]


def test_clip_shorter_than_num_frames_repeats_frames(warned):
    indices = sample_indices(3, 24.0, 8, stride=1)
    assert indices.tolist() == [0, 0, 1, 1, 1, 1, 2, 2]


def test_single_frame_never_crashes(warned):
    assert sample_indices(1, 24.0, 4).tolist() == [0, 0, 0, 0]


def test_sample_frames_returns_the_indexed_frames():
    frames = badinputs.clip_frames(20)
    assert frame_levels(sample_frames(frames, 24.0, 4, stride=2)) == [0, 2, 4, 6]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stride": 2, "target_fps": 8.0}, "^give --fps or --stride for sampling the clip, not both$"),
        ({"stride": 0}, "^--stride must be at least 1, got 0$"),  # the flags, not the function's argument names
        ({"target_fps": 0.0}, "^--fps must be a positive number, got 0.0$"),
        ({"target_fps": float("nan")}, "^--fps must be a positive number, got nan$"),
        ({"target_fps": float("inf")}, "^--fps must be a positive number, got inf$"),
        ({"num_frames": 0}, "^--num-frames must be at least 1"),
        ({"fps": 0.0}, "frame rate"),
    ],
)
def test_invalid_sampling_settings_are_user_errors(kwargs, match):
    arguments = {"frame_count": 50, "fps": 24.0, "num_frames": 4, **kwargs}
    with pytest.raises(UserError, match=match):
        sample_indices(**arguments)


@pytest.mark.parametrize("kwargs", [{"target_fps": 1e-30}, {"stride": 2**62}])
def test_a_step_past_any_clip_spreads_the_frames_with_a_warning(kwargs):
    """Steps beyond what int64 holds had wrapped to a negative index (an IndexError traceback in train-motion)."""
    warned = []
    assert sample_indices(50, 24.0, 4, warn=warned.append, **kwargs).tolist() == [0, 16, 33, 49]
    assert len(warned) == 1 and "spreading them evenly over the clip" in warned[0]
    assert frames_needed(24.0, 4, **kwargs) >= 50


def test_frames_needed_matches_sampling():
    assert frames_needed(24.0, 16) == 46
    assert frames_needed(24.0, 16, stride=1) == 16
    assert frames_needed(30.0, 5, target_fps=8.0) == 16


@pytest.mark.parametrize(
    "shape, size, expected", [((5, 64, 96), 32, (5, 32, 32, 3)), ((3, 121, 67), (48, 80), (3, 48, 80, 3))]
)
def test_prepare_clip_shapes(shape, size, expected):
    frames = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    prepared = prepare_clip(frames, size)
    assert prepared.shape == expected and prepared.dtype == np.uint8


def test_clip_to_tensor_shape_and_range():
    tensor = clip_to_tensor(np.stack([np.zeros((8, 12, 3), np.uint8), np.full((8, 12, 3), 255, np.uint8)]))
    assert tensor.shape == (1, 2, 3, 8, 12) and tensor.dtype == torch.float32
    assert torch.all(tensor[0, 0] == -1.0) and torch.all(tensor[0, 1] == 1.0)


def test_load_and_sample_clip_decodes_only_the_frames_it_uses(tmp_path, monkeypatch):
    path = badinputs.write_clip(tmp_path / "clip.mp4", num_frames=24, fps=24)
    requested = []
    original_read_video = clips.read_video

    def recording_read_video(path, max_frames=None, max_short_side=None):
        requested.append(max_frames)
        return original_read_video(path, max_frames=max_frames, max_short_side=max_short_side)

    monkeypatch.setattr(clips, "read_video", recording_read_video)
    frames = load_and_sample_clip(path, num_frames=4, size=(32, 48))
    assert requested == [10]  # 4 frames every 3 (24 fps -> 8 fps): indices 0, 3, 6, 9
    assert frames.shape == (4, 32, 48, 3)
    assert frame_levels(frames) == [0, 3, 6, 9]


def test_load_and_sample_clip_from_short_folder(tmp_path, warned):
    folder = badinputs.write_frame_folder(tmp_path / "frames", [1, 2, 3])
    frames = load_and_sample_clip(folder, num_frames=6, size=32, stride=2)
    assert frames.shape == (6, 32, 32, 3)
    assert frame_levels(frames) == [1, 1, 2, 2, 3, 3]
    assert len(warned) == 1


def test_a_numbered_frame_folder_with_an_unnumbered_image_is_refused(tmp_path):
    """A 'cover.jpg' beside frame_0001.png... had silently become the clip's first frame."""
    folder = badinputs.write_frame_folder(tmp_path / "frames", [1, 2, 3])
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "cover.jpg")
    with pytest.raises(UserError, match=r"without a number \(cover\.jpg\).*remove them or number them"):
        load_clip(folder)


def test_a_clip_one_frame_short_of_its_stride_is_spread_evenly_with_a_warning():
    """21 frames at 24 fps aim at a stride of 3 for 8 frames, which needs 22: the 8 are spread evenly instead."""
    warnings = []
    picked = clips.sample_frames(np.arange(21), 24.0, 8, warn=warnings.append)
    assert picked.tolist() == [0, 3, 6, 9, 11, 14, 17, 20] and len(warnings) == 1


def test_a_frame_folder_is_numbered_by_the_last_number_in_each_name(tmp_path):
    """'take2_f10.png' is frame 10 of take 2, as the docstring's 'shot2_frame_0007' is frame 7 of shot 2."""
    for number, grey in ((1, 0), (2, 100), (10, 200)):
        Image.fromarray(np.full((64, 64, 3), grey, np.uint8)).save(tmp_path / f"take2_f{number}.png")
    frames, fps = clips.load_clip(tmp_path)
    assert frames[:, 0, 0, 0].tolist() == [0, 100, 200] and fps == 8.0


def test_a_video_file_smaller_than_the_smallest_side_is_refused(tmp_path):
    """Checked on a folder of frames (where each image is refused first) but never on a video file."""
    path = write_video(np.zeros((4, 48, 80, 3), np.uint8), tmp_path / "tiny.mp4")
    with pytest.raises(UserError, match=r"tiny.mp4 is too small \(80x48 pixels\): use one at least 64 pixels"):
        load_clip(path)
    wide = write_video(np.zeros((4, 64, 112, 3), np.uint8), tmp_path / "wide.mp4")
    assert load_clip(wide)[0].shape[1:3] == (64, 112)  # 64 on its shorter side is enough


def test_a_frame_folder_without_numbers_is_read_in_name_order_without_a_gap_warning(tmp_path, warned):
    folder = tmp_path / "frames"
    folder.mkdir()
    for level, name in ((1, "a.png"), (2, "b.png"), (3, "c.png")):
        Image.new("RGB", (96, 64), (badinputs.frame_level(level),) * 3).save(folder / name)
    frames, _ = load_clip(folder)
    assert frame_levels(frames) == [1, 2, 3] and warned == []
