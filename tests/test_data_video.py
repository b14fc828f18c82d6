"""Reading the videos people actually have: phone clips with sound, non-square pixels, rotation, GIFs that are
MP4s, browser GIF timing, files with no picture."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from media import ffmpeg as _ffmpeg
from media import gif_with_oversized_frame, joined_video
from PIL import Image

from vidbooth.data.clips import load_clip
from vidbooth.data.video import _DISPLAY_SHAPE, read_video, video_fps, video_frame_count, write_video
from vidbooth.errors import UserError


def _test_pattern(path, size="160x96", rate=24, seconds=1, *extra):
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", *extra, "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(path))
    return path


def test_sound_that_runs_past_the_picture_is_not_truncation(tmp_path):
    """Phones often stop the picture before the sound: the container's duration (3 s) is the sound's, the video's
    24 frames are all there."""
    picture = _test_pattern(tmp_path / "picture.mp4")
    path = tmp_path / "with_sound.mp4"
    _ffmpeg("-i", str(picture), "-f", "lavfi", "-i", "sine=duration=3", "-c:v", "copy", "-c:a", "aac", str(path))
    frames, fps = load_clip(path, max_frames=48)  # sampling asks for more than the clip has
    assert len(frames) == 24 and fps == 24
    assert np.array_equal(read_video(path), read_video(picture))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_cut_file_is_refused_wherever_it_is_read(tmp_path, suffix):
    """An MP4 with its index first says 'partial file' when copied; a cut MKV says nothing, its packets just stop
    short of the duration its header gives."""
    whole = _test_pattern(tmp_path / f"whole{suffix}", "160x96", 24, 4, *(
        ["-movflags", "+faststart"] if suffix == ".mp4" else []))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    with pytest.raises(UserError, match=r"ends early \(decoded \d+ of the 96 frames"):
        read_video(cut)  # evaluate reads videos this way: it scored cut files as if whole
    assert len(read_video(cut, max_frames=8)) == 8  # the intact start alone is fine


def test_non_square_pixels_are_read_at_the_shape_players_show(tmp_path):
    square = _test_pattern(tmp_path / "square.mp4")
    wide = _test_pattern(tmp_path / "wide.mp4", "160x96", 24, 1, "-vf", "scale=120:96,setsar=4/3")  # shown 160x96
    tall = _test_pattern(tmp_path / "tall.mp4", "160x96", 24, 1, "-vf", "setsar=3/4")  # shown as 160x128
    assert read_video(wide).shape == (24, 96, 160, 3) and read_video(tall).shape == (24, 128, 160, 3)
    # stretched back, not cropped: the square-pixel picture it was squeezed from, within resampling and compression
    error = np.abs(read_video(wide).astype(float) - read_video(square)).mean()
    assert error < 12, error  # 8.0 here: resampled twice, compressed twice


def test_rotated_phone_video_is_upright_and_quiet(tmp_path, caplog):
    path = tmp_path / "rotated.mp4"
    _ffmpeg("-display_rotation", "90", "-i", str(_test_pattern(tmp_path / "flat.mp4")), "-c", "copy", str(path))
    with caplog.at_level(logging.WARNING):
        frames = read_video(path)
        video_fps(path)
    assert frames.shape == (24, 160, 96, 3)
    assert not [r for r in caplog.records if "frame size" in r.getMessage()]  # imageio-ffmpeg's note is not shown


def test_a_rotation_other_than_a_quarter_turn_is_read(tmp_path):
    """ffmpeg logs 'Odd rotation angle ... (ffmpeg-devel@ffmpeg.org)' with no line break, in front of its 'Output #0'
    line: its header was waited for 10 s and the clip refused as corrupt, and a damaged clip with such a rotation
    hung forever (the log read to its end while ffmpeg waited for its frames to be read). ffmpeg rotates it in its
    frame, as players show it."""
    path = tmp_path / "tilted.mp4"
    flat = _test_pattern(tmp_path / "flat.mp4", "160x96", 24, 2)  # 48 frames, well past what a pipe buffers
    _ffmpeg("-display_rotation", "45", "-i", str(flat), "-c", "copy", str(path))
    assert read_video(path).shape == (48, 96, 160, 3) and video_fps(path) == 24


def test_a_pixel_shape_no_player_would_show_is_taken_as_square(tmp_path):
    """A damaged header's 4000:1 pixels made a 4.6 KB clip 96x384000 frames and GBs of memory."""
    from vidbooth.data.video import MAX_PIXEL_STRETCH

    for sar, shape in (("50/1", (96, 160)), ("1/50", (96, 160)), (f"{MAX_PIXEL_STRETCH}/1", (96, 640))):
        path = tmp_path / f"sar{sar.replace('/', '-')}.mp4"
        _test_pattern(path, "160x96", 24, 1, "-vf", f"setsar={sar}")
        assert read_video(path).shape == (24, *shape, 3), sar


def test_a_picture_that_does_not_decode_is_not_taken_for_one_that_ends_before_its_sound(tmp_path):
    """Frames that fail to decode (1 of 16) had passed as a picture ending early, since every packet of the file is
    there to its end: the picture's own packets are counted now."""
    clip = _test_pattern(tmp_path / "clip.mp4", "96x96", 8, 2)
    broken = tmp_path / "broken.mp4"
    _ffmpeg("-i", str(clip), "-c", "copy", "-bsf:v", "h264_metadata=sample_aspect_ratio=1/1000", str(broken))
    with pytest.raises(UserError, match=r"ends early \(decoded 1 of the 16 frames"):
        read_video(broken)


def test_an_mp4_named_gif_is_read_as_the_mp4_it_is(tmp_path):
    mp4 = _test_pattern(tmp_path / "clip.mp4")
    named_gif = tmp_path / "from_a_site.gif"
    named_gif.write_bytes(mp4.read_bytes())
    assert np.array_equal(read_video(named_gif), read_video(mp4)) and video_fps(named_gif) == 24


def test_gif_frame_times_of_10_ms_or_less_play_as_browsers_play_them(tmp_path):
    images = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(4)]
    path = tmp_path / "fast.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=[10, 10, 60, 10], loop=0)
    assert video_fps(path) == pytest.approx(1000 / 60)  # 10 ms is shown for 100 ms
    levels = [int(frame[0, 0, 0]) // 40 for frame in read_video(path)]
    assert levels == [0, 0, 1, 1, 2, 3, 3]  # 100, 100, 60, 100 ms shown at 60 ms a frame


def test_transparent_gif_pixels_are_white_as_in_photos(tmp_path):
    frames = [Image.new("RGBA", (16, 16), (0, 0, 0, 0)) for _ in range(2)]
    for i, frame in enumerate(frames):
        frame.paste((200, 30, 30, 255), (4 * i, 4, 4 * i + 8, 12))  # a red square moving right on transparency
    path = tmp_path / "sticker.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, disposal=2)
    video = read_video(path)
    assert video.shape == (2, 16, 16, 3) and (video[:, 0, 0] == 255).all()  # not black, not the palette's colour
    assert np.abs(video[0, 8, 6].astype(int) - (200, 30, 30)).max() < 8


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # imageio-ffmpeg's reader leaves its ffmpeg's pipes open
def test_frames_are_those_imageio_ffmpeg_decodes(tmp_path):
    """vidbooth runs ffmpeg itself (to read its log); the frames are still byte for byte imageio-ffmpeg's."""
    import imageio_ffmpeg

    path = _test_pattern(tmp_path / "wide.mp4", "160x96", 24, 1, "-vf", "scale=120:96,setsar=4/3")
    reader = imageio_ffmpeg.read_frames(str(path), output_params=["-r", "24", *_DISPLAY_SHAPE])
    width, height = next(reader)["size"]
    expected = np.stack([np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader])
    assert np.array_equal(read_video(path), expected)


def test_reading_a_video_closes_ffmpegs_pipes(tmp_path, monkeypatch):
    """Its log pipe had been left open: a ResourceWarning for each video read (shown with -W default)."""
    import subprocess

    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr("vidbooth.data.video.subprocess.Popen", Recorded)
    path = _test_pattern(tmp_path / "clip.mp4", "96x64", 8, 1)
    assert len(read_video(path)) == 8
    assert len(load_clip(path, max_frames=2)) == 2  # stopped early: ffmpeg ended before its output did
    piped = [p for p in started if p.stderr is not None]  # the decoding runs (a probe may pipe nothing)
    assert piped and all(p.stdout.closed and p.stderr.closed and p.returncode is not None for p in piped)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_a_video_whose_frame_size_changes_part_way_is_refused_not_stretched(tmp_path, suffix):
    """Clips joined without re-encoding: ffmpeg stretched the 96x64 half to 64x48 without a word. The message's
    ffmpeg command makes a file that reads."""
    path = joined_video(tmp_path / f"joined{suffix}", ("64x48", "yuv420p"), ("96x64", "yuv420p"))
    message = rf"video {re.escape(str(path))} changes frame size part-way \(64x48, then 96x64\)"
    with pytest.raises(UserError, match=message):
        read_video(path)
    with pytest.raises(UserError, match=message) as refused:
        load_clip(path, max_frames=12)  # training reads only the frames it samples: the change is among them
    source, scale, fixed = re.search(r"ffmpeg -i (\S+) -vf (\S+) (\S+),", str(refused.value)).groups()
    _ffmpeg("-i", source, "-vf", scale, fixed)
    assert read_video(fixed).shape == (16, 48, 64, 3)


def test_a_change_of_pixel_format_alone_is_read_as_before(tmp_path):
    path = joined_video(tmp_path / "joined.mp4", ("64x48", "yuv420p"), ("64x48", "yuv444p"))
    assert read_video(path).shape == (16, 48, 64, 3)


def test_a_gif_frame_larger_than_its_screen_is_clipped_as_browsers_show_it(tmp_path):
    """Pillow grew the picture at that frame, and the frames, no longer one size, failed with a ValueError."""
    red, wide = np.zeros((48, 64, 3), np.uint8), np.zeros((64, 96, 3), np.uint8)
    red[..., 0] = 200
    wide[..., 1] = 200
    wide[48:, :, 2] = wide[:, 64:, 2] = 200  # blue only outside the 64x48 screen
    video = read_video(gif_with_oversized_frame(tmp_path / "grows.gif", red, wide))
    assert video.shape == (2, 48, 64, 3)
    assert (video[0] == (200, 0, 0)).all() and (video[1] == (0, 200, 0)).all()


def test_a_file_with_two_video_streams_is_read_from_its_first_at_that_streams_rate(tmp_path):
    """ffmpeg decodes the largest stream unless told, while the frame rate and count come from the first: an 8 fps
    64x48 stream beside a 24 fps 160x96 one was read as the large one's frames at 8 fps."""
    small = _test_pattern(tmp_path / "small.mp4", "64x48", 8, 2)
    large = _test_pattern(tmp_path / "large.mp4", "160x96", 24, 2)
    both = tmp_path / "both.mp4"
    _ffmpeg("-i", str(small), "-i", str(large), "-map", "0:v", "-map", "1:v", "-c", "copy", str(both))
    assert video_fps(both) == 8
    assert np.array_equal(read_video(both), read_video(small))


def test_a_1000_fps_file_reads_back_at_1000_fps(tmp_path):
    """ffmpeg writes such a rate as "1k fps", from which imageio-ffmpeg reads none: it was said to be 8 fps."""
    frames = np.stack([np.full((16, 16, 3), 10 * i, dtype=np.uint8) for i in range(20)])
    path = write_video(frames, tmp_path / "fast.mp4", fps=1000)
    assert video_fps(path) == pytest.approx(1000)
    assert video_frame_count(path) == 20 and len(read_video(path)) == 20


def test_a_webm_without_a_frame_rate_is_read_at_its_average_rate(tmp_path):
    """As a browser records it: frames at uneven times, no rate in the file, and a header that shows its time base
    (1 ms) as "1k fps". It was read as 1,394 frames (every millisecond) said to be 8 fps: motion 100 times slower."""
    path = tmp_path / "recorded.webm"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1000", "-vf",
            r"select=not(mod(n\,83))+not(mod(n\,97))", "-fps_mode", "passthrough", "-frames:v", "30",
            "-c:v", "libvpx", str(path))  # 30 frames over 1.33 s, 83 or 97 ms apart
    assert video_fps(path) == pytest.approx(29 / 1.328, rel=0.01)
    assert abs(len(read_video(path)) - 30) <= 1


@pytest.mark.parametrize("fps", [7, 8, 12, 24, 40, 45, 50])
def test_a_gif_plays_at_the_frame_rate_it_was_written_at(fps, tmp_path):
    """Every frame had been given int(1000 / fps) ms, which a GIF stores in hundredths: 8 fps played at 8.33, 40 at
    50. Its frames now end at whole hundredths as near as can be to where they should."""
    frames = np.random.default_rng(fps).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    path = write_video(frames, tmp_path / "clip.gif", fps=fps)
    with Image.open(path) as gif:
        times = []
        for index in range(gif.n_frames):
            gif.seek(index)
            times.append(gif.info["duration"])
    assert len(times) == 16 and abs(sum(times) - 16000 / fps) <= 5  # the clip's length to the nearest hundredth
    assert video_fps(path) == pytest.approx(fps, rel=0.02) and len(read_video(path)) == 16


def test_a_gif_cut_short_is_read_with_a_warning(tmp_path, monkeypatch):
    """Pillow reads the frames before the cut without a word (9 of 16), and the frame count comes from the same cut
    file: only its missing end marker tells."""
    from badinputs import capture_warnings

    rng = np.random.default_rng(0)
    whole = write_video(rng.integers(0, 255, (16, 48, 48, 3), dtype=np.uint8), tmp_path / "whole.gif")
    cut = tmp_path / "cut.gif"
    data = whole.read_bytes()
    cut.write_bytes(data[: [m.start() for m in re.finditer(re.escape(b"\x21\xf9\x04"), data)][9]])  # before frame 10
    warned = capture_warnings(monkeypatch)
    assert len(read_video(whole)) == 16 and warned == []
    assert len(read_video(cut)) == 9 and warned == [f"{cut} is cut off (it lacks the end marker of a whole GIF): its 9 "
                                                    "frames may be only the start of the clip; re-export or "
                                                    "re-download it"]


def test_a_video_damaged_inside_its_frames_is_read_with_a_warning(tmp_path, monkeypatch):
    """ffmpeg conceals what it cannot decode (smears, repeats of the frame before), so the frame count held and
    a damaged clip had been trained on without a word; whole clips warn of nothing."""
    import random

    from badinputs import capture_warnings

    clean = tmp_path / "clean.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x96:rate=24:duration=1,noise=alls=60:allf=t", "-c:v", "libx264",
            "-g", "6", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(clean))
    data = bytearray(clean.read_bytes())
    middle = slice(int(len(data) * 0.4), int(len(data) * 0.6))
    data[middle] = random.Random(0).randbytes(middle.stop - middle.start)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    warned = capture_warnings(monkeypatch)
    assert len(read_video(clean)) == 24 and warned == []
    assert len(read_video(damaged)) == 24
    assert len(warned) == 1 and warned[0].startswith(f"{damaged} is damaged (ffmpeg: '")
    assert len(read_video(damaged, max_frames=20)) == 20 and len(warned) == 2  # also when reading stops early


def test_a_photo_named_as_a_video_is_said_to_be_one(tmp_path):
    """It had been 'has only 1 frame: use a longer clip'."""
    from badinputs import make_bad_clip, quadrant_image

    path = make_bad_clip("png_named_mp4", tmp_path)
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))} is a PNG image named \.mp4, not a video: give a "):
        read_video(path)
    for image_format, named, said in (("JPEG", "photo.mov", "JPEG"), ("WEBP", "photo.webm", "WebP")):
        path = tmp_path / named
        quadrant_image(64, 48).save(path, format=image_format)
        with pytest.raises(UserError, match=rf"^{re.escape(str(path))} is a {said} image named {path.suffix}, not a "):
            read_video(path)
    for image_format, named, said in (("PNG", "photo.png", "PNG"), ("WEBP", "photo.webp", "WebP")):  # clips if animated
        path = tmp_path / named
        quadrant_image(64, 48).save(path, format=image_format)
        with pytest.raises(UserError, match=rf"^{re.escape(str(path))} is a still {said} image \(one frame\), not a "
                                            r"video: give a video file or an animation$"):
            read_video(path)


@pytest.mark.parametrize("named", ["anim.apng", "anim.webp", "anim.mp4"])
def test_an_animation_pillow_cannot_open_is_told_as_corrupt_not_as_a_still_image(tmp_path, named):
    """An APNG whose first frame reaches past its image, or a WebP whose frames reach past its canvas: Pillow cannot
    open either, and they had been told as 'a still PNG image (one frame)', as if re-saving the animation would do."""
    from media import crafted_apng, webp_canvas

    path = tmp_path / named
    if named.endswith(".apng"):
        crafted_apng(path, (16, 16), [(0, 0, 20000, 20000, 0), (0, 0, 16, 16, 0)])
        kind = "PNG"
    else:
        webp_canvas(path, (8, 8))
        kind = "WebP"
    with pytest.raises(UserError) as refused:
        read_video(path)
    assert str(refused.value) == (f"cannot read video {path}: it is a corrupt {kind} file (Pillow cannot open it); "
                                  "re-export or re-download it")


def test_a_machine_limit_met_opening_an_animation_is_not_told_as_corrupt(tmp_path, monkeypatch):
    """Too many open files is the machine's, not the file's: 'corrupt, re-download it' would send its user after a
    good file."""
    import errno

    from vidbooth.data import video
    from vidbooth.errors import MachineLimit

    path = tmp_path / "anim.png"
    Image.new("RGB", (8, 8)).save(path)

    def no_file_left(path):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(video, "open_image", no_file_left)
    video._is_animated_cached.cache_clear()
    with pytest.raises(MachineLimit):
        video.video_file_problem(path)
    video._is_animated_cached.cache_clear()


@pytest.mark.parametrize("image_format, named", [("PNG", "anim.png"), ("PNG", "anim.apng"), ("WEBP", "anim.webp"),
                                                 ("PNG", "anim.gif"), ("WEBP", "anim.mp4")])
def test_an_animated_png_or_webp_is_read_as_a_gif_is_whatever_its_clip_name(tmp_path, image_format, named, capsys):
    """Web pages' animations (Giphy's and Tenor's WebP, APNG) had been refused: 'convert it to mp4 or GIF'. A GIF's
    end marker is not theirs: they are not warned of as cut off."""
    from badinputs import quadrant_image

    path = tmp_path / named
    frames = [quadrant_image(64, 48), quadrant_image(64, 48).rotate(180)]
    frames[0].save(path, format=image_format, save_all=True, append_images=frames[1:], duration=125, lossless=True)
    video = read_video(path)
    assert video.shape == (2, 48, 64, 3) and video_fps(path) == 8 and video_frame_count(path) == 2
    assert video[0, 0, 0].tolist() == [255, 0, 0] and video[1, 0, 0].tolist() == [255, 255, 0]  # red, then rotated
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("written, named", [("whole.webp", "cut.webp"), ("whole.png", "cut.png"),
                                            ("whole.webp", "cut.mp4")])
def test_an_animated_webp_or_png_cut_short_is_refused_in_one_line(tmp_path, written, named):
    """Pillow read an APNG cut short up to the frame it ends in, then failed, and called a WebP cut short no image at
    all (a WebP named .mp4 was then told as a still WebP)."""
    from badinputs import write_clip

    data = write_clip(tmp_path / written, num_frames=16).read_bytes()
    path = tmp_path / named
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UserError) as refused:
        read_video(path)
    assert re.fullmatch(rf"{re.escape(str(path))} is cut short \(.+\): re-export or re-download it", str(refused.value))


def test_a_webp_missing_only_its_last_byte_is_cut_short_by_the_size_its_header_gives(tmp_path):
    """The RIFF header's size leaves out its own 8 bytes: a file short by fewer than them is cut short too."""
    from badinputs import write_clip

    data = write_clip(tmp_path / "whole.webp", num_frames=4).read_bytes()
    path = tmp_path / "cut.webp"
    path.write_bytes(data[:-1])
    with pytest.raises(UserError, match=rf"is cut short \({len(data) - 1:,} of the {len(data):,} bytes its header"):
        read_video(path)


def test_an_animated_apng_with_a_still_image_for_other_viewers_is_read_without_it(tmp_path):
    """An APNG's first image may be left out of its animation, for viewers that do not animate: Pillow counts it as
    frame 0, browsers do not show it."""
    from badinputs import clip_frames, frame_level

    images = [Image.fromarray(frame) for frame in clip_frames(4)]
    images[0].save(tmp_path / "anim.png", save_all=True, append_images=images[1:], duration=125, default_image=True)
    assert [frame.mean() for frame in read_video(tmp_path / "anim.png")] == [frame_level(i) for i in (1, 2, 3)]


@pytest.mark.parametrize("pillows_limit", [2_000, 1_000])  # 64 x 48: over it (a warning), over twice it (an error)
@pytest.mark.parametrize("named", ["anim.mp4", "anim.gif"])  # an APNG named as a video, a GIF
def test_a_large_animation_is_read_without_pillows_bomb_warning(tmp_path, monkeypatch, pillows_limit, named):
    """The animation check opened the file under Pillow's pixel limit (89 MP): a larger one printed Pillow's
    decompression-bomb warning, and one over twice it was told as a still image. Reading an animation's frames is
    under our limit too."""
    import warnings

    from badinputs import quadrant_image

    path = tmp_path / named
    frames = [quadrant_image(64, 48), quadrant_image(64, 48).rotate(180)]
    frames[0].save(path, format="PNG" if named == "anim.mp4" else "GIF", save_all=True, append_images=frames[1:],
                   duration=100)
    # stands for Pillow's limit, without a 95 MP file (set after saving: Pillow 10.0's save crops under it too)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillows_limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_video(path).shape == (2, 48, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == pillows_limit


def test_an_odd_height_is_padded_to_even_for_mp4(tmp_path):
    """H.264 takes even sizes only: 65 rows are padded to 66 (the width, already even, stays)."""
    path = write_video(np.full((2, 65, 64, 3), 100, np.uint8), tmp_path / "odd.mp4")
    assert read_video(path).shape == (2, 66, 64, 3)


def test_a_short_clip_may_decode_two_frames_fewer_than_its_header_says(tmp_path, monkeypatch):
    """Headers round their frame counts: two frames short is accepted, three is a file that ends early."""
    import vidbooth.data.video as video

    frames = np.zeros((8, 64, 64, 3), np.uint8)
    for i in range(8):
        frames[i, :, i * 4 : i * 4 + 8] = [255, 0, 0]
    path = write_video(frames, tmp_path / "clip.gif")
    monkeypatch.setattr(video, "video_frame_count", lambda path: 10)
    assert read_video(path).shape == (8, 64, 64, 3)
    monkeypatch.setattr(video, "video_frame_count", lambda path: 11)
    with pytest.raises(UserError, match="ends early"):
        read_video(path)


def test_frames_are_shrunk_while_decoding_but_never_enlarged(tmp_path):
    path = write_video(np.zeros((3, 96, 160, 3), np.uint8), tmp_path / "clip.mp4")
    assert read_video(path, max_short_side=128).shape == (3, 96, 160, 3)
    assert read_video(path, max_short_side=48).shape == (3, 48, 80, 3)


def test_a_contact_sheet_is_read_left_to_right_then_top_to_bottom():
    from vidbooth.data.video import contact_sheet

    frames = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((10, 2, 3, 3), np.uint8)  # frame i is i
    sheet = contact_sheet(frames)
    assert sheet.shape == (4, 24, 3)  # 8 columns, then a second row for frames 8 and 9
    assert sheet[::2, ::3, 0].tolist() == [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 0, 0, 0, 0, 0, 0]]


def test_a_frame_is_shrunk_by_averaging_its_pixels_not_by_picking_some():
    """A one-pixel checkerboard shrunk to half is an even grey. (mutation testing: nearest-pixel shrinking had
    passed)"""
    from vidbooth.data.video import _shrink_frame

    board = (np.indices((4, 4)).sum(axis=0) % 2 * 255).astype(np.uint8)
    shrunk = _shrink_frame(np.repeat(board[..., None], 3, axis=-1), 2)
    assert shrunk.shape == (2, 2, 3)
    assert shrunk.tolist() == [[[128] * 3] * 2] * 2


def test_a_header_frame_count_is_the_duration_times_the_rate_rounded(tmp_path, monkeypatch):
    """1.99 s at 8 fps is 15.92 frames: 16, not 15. (mutation testing: truncating to int had passed)"""
    import vidbooth.data.video as video

    monkeypatch.setattr(video, "_ffmpeg_header", lambda path: {"duration": 1.99, "fps": 8.0})
    assert video_frame_count(tmp_path / "a.mp4") == 16


def test_a_log_that_ends_without_describing_the_output_hands_back_its_last_lines():
    """(mutation testing: without them a read waited 60 s, then said less)"""
    import queue

    from vidbooth.data.video import _read_log

    head: queue.Queue = queue.Queue()
    log = [b"ffmpeg version 6\n", b"[mov,mp4] moov atom not found\n", b"input.mp4: Invalid data found\n"]
    _read_log(iter(log), head, [], [])
    assert head.get_nowait().splitlines()[-1] == "input.mp4: Invalid data found"


def test_reading_a_videos_header_leaves_no_pipe_open(tmp_path):
    """The header was read through imageio-ffmpeg's reader, which left two pipes to the collector when ffmpeg had
    ended before it was stopped: two ResourceWarnings for each clip whose header was read."""
    import gc
    import warnings

    from vidbooth.data import video

    path = _test_pattern(tmp_path / "clip.mp4", "32x32", 8, 1)  # its frames fit in a pipe: ffmpeg ends at once
    video._ffmpeg_header_cached.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert video_fps(path) == 8 and video_frame_count(path) == 8
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_file_with_only_sound_is_said_to_have_no_video_stream(tmp_path):
    path = tmp_path / "voice.mp4"
    _ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(path))
    with pytest.raises(UserError, match=r"voice.mp4 has no video stream \(only sound\): give a video file"):
        read_video(path)
    assert video_fps(path, default=5.0) == 5.0 and video_frame_count(path) is None


def test_a_file_ffmpeg_finds_no_stream_in_is_refused_as_unreadable(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(UserError, match=r"cannot read video .*noise.mp4: it is corrupt"):
        read_video(path)


@pytest.mark.parametrize("name", ["pipe:take1.mp4", "data:clip.mp4", "take 12:30.mp4"])
def test_a_video_whose_name_starts_like_an_ffmpeg_protocol_is_read(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    frames = np.stack([np.full((32, 32, 3), 20 * i, dtype=np.uint8) for i in range(8)])
    write_video(frames, name, fps=8)
    assert video_fps(name) == 8 and video_frame_count(name) == 8
    assert read_video(name).shape == (8, 32, 32, 3)


def test_a_video_that_cannot_be_read_is_refused_as_permission_denied_not_as_corrupt(tmp_path, monkeypatch):
    """ffmpeg, refused the file, said only that it found no video in it: 'corrupt, truncated or in an unsupported
    codec'. As root, whom no mode stops, opening it is refused instead (ffmpeg is not asked)."""
    from badinputs import unreadable, write_clip

    clip = unreadable(write_clip(tmp_path / "clip.mp4"), monkeypatch)
    message = rf"^cannot read video {re.escape(str(clip))}: permission denied; fix its permissions or copy it$"
    with pytest.raises(UserError, match=message):
        read_video(clip)
    with pytest.raises(UserError, match=message):
        load_clip(clip)


def test_a_one_frame_clip_with_no_frame_rate_in_its_header_is_read_at_the_default_rate(tmp_path):
    """A browser's recording of one frame: the header's rate is its time base's '1k', and one packet gives no
    rate either."""
    path = tmp_path / "one.webm"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1000", "-frames:v", "1", "-c:v", "libvpx", str(path))
    assert read_video(path).shape == (1, 48, 64, 3)
    assert video_fps(path, default=5.0) == 5.0


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no new folder can be made")
def test_an_output_folder_under_a_place_that_takes_no_new_folders_is_refused_naming_that_place():
    from vidbooth.data.video import check_writable_dir

    with pytest.raises(UserError, match=r"^cannot create output folder /proc/vidbooth-out/videos: /proc is not "
                                        "writable; choose another --out$"):
        check_writable_dir("/proc/vidbooth-out/videos")


@pytest.mark.parametrize("check_first", [True, False], ids=["checked before the work", "found when writing"])
def test_an_output_folder_through_a_link_to_nothing_is_refused_naming_the_link(tmp_path, check_first):
    """An unmounted drive's link: the check before a command's work had taken it for a folder still to be made, and
    writing then said 'file exists'."""
    from vidbooth.data.video import check_writable_dir

    link = tmp_path / "renders"
    link.symlink_to(tmp_path / "unmounted drive")
    message = (rf"^cannot create output folder {re.escape(str(link / 'day 1'))}: {re.escape(str(link))} is a link to "
               rf"{re.escape(str(tmp_path / 'unmounted drive'))}, which does not exist \(mount or create it\); ")
    with pytest.raises(UserError, match=message + ("choose another --out$" if check_first else "choose another place")):
        if check_first:
            check_writable_dir(link / "day 1")
        else:
            write_video(np.zeros((2, 16, 16, 3), np.uint8), link / "day 1" / "clip.mp4")
    assert list(tmp_path.iterdir()) == [link]
def test_a_relative_link_to_nothing_is_told_where_it_ends_and_a_loop_as_a_loop(tmp_path):
    from vidbooth.data.video import check_writable_dir

    (tmp_path / "renders").symlink_to("../nowhere")
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(UserError, match=rf"{re.escape(str(tmp_path / 'renders'))} is a link to \.\./nowhere, that is "
                                        rf"{re.escape(str(tmp_path.parent / 'nowhere'))}, which does not exist "):
        check_writable_dir(tmp_path / "renders" / "day 1")
    with pytest.raises(UserError, match=rf"{re.escape(str(tmp_path / 'loop'))} is a link to loop that loops back on "
                                        r"itself \(fix or remove it\); choose another --out$"):
        check_writable_dir(tmp_path / "loop" / "day 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "renders"]


def test_a_gif_frame_that_grows_its_screen_past_our_pixel_limit_is_refused_before_it_is_decoded(tmp_path,
                                                                                                monkeypatch):
    """Decoding under the lifted Pillow limit had let a frame far larger than the screen (a 20000x20000 one: 400 MB)
    be given its memory, with Pillow's check off and ours only on the screen's size."""
    from vidbooth.data import video

    first, second = np.zeros((48, 64, 3), np.uint8), np.full((120, 160, 3), 200, np.uint8)
    path = gif_with_oversized_frame(tmp_path / "grows.gif", first, second)
    monkeypatch.setattr(video, "MAX_PHOTO_PIXELS", 64 * 48 * 2)  # stands for ours, without a 250 MP frame
    with pytest.raises(UserError, match=r"^video .*grows\.gif is too large \(160x120 = 0 megapixels a frame"):
        read_video(path)
