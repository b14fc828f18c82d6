"""An animation's frame times, which fps, the frame count and the repeat of held frames follow, read from a GIF's
blocks or a WebP's chunks without decoding a frame (its frames are decoded once, when read), equal to those Pillow
gives frame by frame, decoding: Pillow's are the reference here, read as the module read them before. An APNG's
are still Pillow's, decoding (vidbooth/data/video.py `_stored_durations` says why): its cases pin them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from media import crafted_apng, crafted_gif, gif_frame, gif_screen
from PIL import Image, WebPImagePlugin

from vidbooth.data import gif, video
from vidbooth.data.images import pillow_limits_lifted, to_rgb
from vidbooth.errors import UserError


def _pillows_frame_times(path) -> tuple[int, ...]:
    """Each shown frame's time as Pillow gives it once it has sought to and decoded the frame (10 ms or less: 100)."""
    with pillow_limits_lifted(), Image.open(path) as im:
        times = []
        for index in range(1 if im.info.get("default_image") else 0, getattr(im, "n_frames", 1)):
            im.seek(index)
            im.load()
            stored = int(im.info.get("duration") or 0)
            times.append(stored if stored > 10 else 100)
    return tuple(times)


def _pillows_frames(path) -> np.ndarray:
    """The clip as read before: each frame Pillow decodes, shown for its time at the clip's base rate."""
    repeats = video._frame_repeats(_pillows_frame_times(path))
    with pillow_limits_lifted(), Image.open(path) as im:
        width, height = im.size
        first = 1 if im.info.get("default_image") else 0
        frames = []
        for index, times in zip(range(first, getattr(im, "n_frames", 1)), repeats, strict=True):
            im.seek(index)
            frames += [np.asarray(to_rgb(im))[:height, :width]] * times
    return np.stack(frames)


def _count_decodes(monkeypatch) -> list[str]:
    """The decoder of each frame Pillow decodes from here on: a GIF's or PNG's ("gif", "zip"), a WebP's ("webp":
    libwebp's animation decoder, whose pixels Pillow then copies in with a "raw" decoder)."""
    decoded = []
    get_decoder, get_next = Image._getdecoder, WebPImagePlugin.WebPImageFile._get_next

    def getting_decoder(mode, decoder_name, *args, **kwargs):
        decoded.append(decoder_name)
        return get_decoder(mode, decoder_name, *args, **kwargs)

    def getting_next(im):
        decoded.append("webp")
        return get_next(im)

    monkeypatch.setattr(Image, "_getdecoder", getting_decoder)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "_get_next", getting_next)
    return decoded


def _gif_frame_with_delay(delay: int | None, disposal: int = 0, place=(0, 0, 16, 16)) -> bytes:
    """`gif_frame`'s frame with its graphic control extension giving `delay` hundredths of a second, or none."""
    frame = gif_frame(*place, disposal)
    if delay is None:
        return frame[8:]  # the extension: introducer, label, size, flags, delay (2), transparency, end
    return frame[:4] + delay.to_bytes(2, "little") + frame[6:]


def _crafted_gif(path, frames: list[bytes]) -> bytes:
    path.write_bytes(gif_screen((16, 16)) + b"!\xff\x0bNETSCAPE2.0\x03\x01\0\0\0" + b"".join(frames) + b";")
    return path


def _pillow_gif(path, durations: list[int], **options):
    """Frames that hold two at a time (Pillow writes each pair as one frame, its times added) and move."""
    frames = []
    for index in range(len(durations)):
        pixels = np.full((24, 32, 3), 30, np.uint8)
        pixels[4:12, 2 * (index // 2) : 8 + 2 * (index // 2)] = (200, 40 + 20 * index, 90)
        frames.append(Image.fromarray(pixels))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, **options)
    return path


GIFS = {
    "written by Pillow, held frames": lambda path: _pillow_gif(path, [40, 80, 120, 40, 60, 130, 10, 0]),
    "written by Pillow, disposal 2": lambda path: _pillow_gif(path, [30, 30, 20, 50], disposal=2),
    "times of 0, 1, 10, 11 and 65535 hundredths": lambda path: _crafted_gif(
        path, [_gif_frame_with_delay(delay) for delay in (0, 1, 10, 11, 65535, 2)]),
    "a frame without a control extension": lambda path: _crafted_gif(
        path, [_gif_frame_with_delay(5), _gif_frame_with_delay(None), _gif_frame_with_delay(7)]),
    "two control extensions and a comment before a frame": lambda path: _crafted_gif(path, [
        _gif_frame_with_delay(3), b"!\xf9\x04\0\x63\0\0\0" + b"!\xfe\x03abc\0" + _gif_frame_with_delay(9, 2)]),
    "a comment, a plain text and an application extension after the control extension": lambda path: _crafted_gif(
        path, [_gif_frame_with_delay(3), b"!\xf9\x04\0\x32\0\0\0" + b"!\xfe\x03abc\0" + b"!\x01\x0c" + bytes(12)
               + b"\x02ab\0" + b"!\xff\x0bXMP DataXMP\x03abc\0" + _gif_frame_with_delay(None)]),
    "a control extension of 3 bytes (no transparency index)": lambda path: _crafted_gif(
        path, [_gif_frame_with_delay(3), b"!\xf9\x03\0\x32\0\0" + _gif_frame_with_delay(None)]),
    "disposal methods 0 to 3, frames in part": lambda path: crafted_gif(
        path, (16, 16), [(0, 0, 16, 16, 0), (2, 2, 8, 8, 1), (4, 4, 8, 8, 2), (0, 8, 16, 8, 3), (1, 1, 4, 4, 0)]),
}


@pytest.mark.parametrize("kind", GIFS)
def test_a_gifs_frame_times_are_read_without_decoding_and_as_pillow_gives_them(kind, tmp_path, monkeypatch):
    _assert_timed_without_decoding_and_read_once(GIFS[kind](tmp_path / "clip.gif"), "gif", monkeypatch)


def _assert_timed_without_decoding_and_read_once(path, decoder: str, monkeypatch) -> None:
    """The times, fps and frame count of the clip at `path` are Pillow's, had with no frame decoded; reading it
    decodes each frame once (with `decoder`) and gives Pillow's frames."""
    expected_times, expected_frames = _pillows_frame_times(path), _pillows_frames(path)
    decoded = _count_decodes(monkeypatch)
    assert video._frame_durations(path) == expected_times
    assert video.video_fps(path) == 1000 / video._frame_time(expected_times)
    assert video.video_frame_count(path) == len(expected_frames)
    assert decoded == []
    frames = video.read_video(path)
    assert [name for name in decoded if name != "raw"] == [decoder] * len(expected_times)  # each frame once
    np.testing.assert_array_equal(frames, expected_frames)


def test_a_control_extension_with_an_empty_first_sub_block_is_passed_over_as_pillow_does(tmp_path):
    """Pillow 13 passes over it (the delay before it stands), Pillow 10 fails on it: either way, as Pillow reads it."""
    path = _crafted_gif(tmp_path / "clip.gif", [
        _gif_frame_with_delay(3), b"!\xf9\x04\0\x32\0\0\0" + b"!\xf9\0\0" + _gif_frame_with_delay(None)])
    try:
        expected_times = _pillows_frame_times(path)
    except Exception:
        with pytest.raises(UserError):
            video.read_video(path)
        return
    assert expected_times == (30, 500)
    assert video._frame_durations(path) == expected_times
    np.testing.assert_array_equal(video.read_video(path), _pillows_frames(path))


def test_a_gif_cut_while_its_times_are_walked_gives_none(tmp_path, monkeypatch):
    """Rewritten meanwhile (an export writing it anew): Pillow's reading it then says what it holds."""
    path = _pillow_gif(tmp_path / "clip.gif", [40, 80, 120, 60])
    real_size = path.stat().st_size
    assert video.gif_frame_delays(path) == [40, 80, 120, 60]
    path.write_bytes(path.read_bytes()[:-1])  # no trailer: walked to the size fstat gives, past the end
    stat = gif.os.fstat

    def stat_of_before(fd):
        return gif.os.stat_result((*stat(fd)[:6], real_size + 4096, *stat(fd)[7:]))

    monkeypatch.setattr(gif.os, "fstat", stat_of_before)
    assert video.gif_frame_delays(path) is None


def _pillow_webp(durations: list[int], size=(32, 24), lossless=True, held=True) -> bytes:
    """Frames that hold two at a time when `held` (libwebp keeps a frame that does not change as the one before,
    held longer), else all differ."""
    frames = []
    for index in range(len(durations)):
        step = index // 2 if held else index
        frame = Image.new("RGBA", size, (30, 30, 30, 255))
        frame.paste((200, 40 + 20 * step, 90, 255 if step % 2 else 128), (2 * step, 4, 10 + 2 * step, 12))
        frames.append(frame)
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=durations, loop=0,
                   lossless=lossless)
    return buffer.getvalue()


def _with_anmf_times(data: bytes, times: list[int]) -> bytes:
    """The WebP `data` with its frames' (ANMF chunks') times set to `times`, in order."""
    data, at, frame = bytearray(data), 12, 0
    while at < len(data):
        length = int.from_bytes(data[at + 4 : at + 8], "little")
        if data[at : at + 4] == b"ANMF":
            data[at + 20 : at + 23] = times[frame].to_bytes(3, "little")
            frame += 1
        at += 8 + length + length % 2
    assert frame == len(times), f"the WebP has {frame} frames"
    return bytes(data)


def _with_odd_chunk(data: bytes) -> bytes:
    """The WebP `data` with a chunk of a kind libwebp keeps unread and an odd length (padded to an even one) before
    its first frame."""
    at = data.index(b"ANMF")
    data = data[:at] + b"ODDS" + (5).to_bytes(4, "little") + b"12345\0" + data[at:]
    return data[:4] + (len(data) - 8).to_bytes(4, "little") + data[8:]


def _with_a_frame_past_its_end(data: bytes) -> bytes:
    """The WebP `data` followed by a copy of its last frame, past the size its header gives (libwebp reads no
    further)."""
    return data + data[data.rindex(b"ANMF") :]


WEBPS = {
    "lossless, held frames": lambda: _pillow_webp([40, 80, 120, 40, 60, 130, 20, 90]),
    "lossy with alpha": lambda: _pillow_webp([30, 30, 20, 50, 70, 40], lossless=False),
    "times of 0, 1, 10, 11 and 300 ms": lambda: _with_anmf_times(_pillow_webp([100] * 10, held=False),
                                                                 [0, 1, 10, 11, 300, 0, 5, 12, 13, 10]),
    "a chunk of odd length": lambda: _with_odd_chunk(_pillow_webp([40, 80, 120, 40])),
    "a frame past its end": lambda: _with_a_frame_past_its_end(_pillow_webp([40, 80, 120, 40])),
}


@pytest.mark.parametrize("kind", WEBPS)
def test_a_webps_frame_times_are_read_without_decoding_and_as_pillow_gives_them(kind, tmp_path, monkeypatch):
    path = tmp_path / "clip.webp"
    path.write_bytes(WEBPS[kind]())
    _assert_timed_without_decoding_and_read_once(path, "webp", monkeypatch)


def test_a_webps_longest_frame_time_is_read_as_pillow_gives_it(tmp_path, monkeypatch):
    """24 bits, about 4.7 hours: a clip of it would be millions of frames, so only its times are compared."""
    path = tmp_path / "clip.webp"
    path.write_bytes(_with_anmf_times(_pillow_webp([100] * 3, held=False), [2**24 - 1, 40, 2**23]))
    decoded = _count_decodes(monkeypatch)
    assert video._frame_durations(path) == (2**24 - 1, 40, 2**23)
    assert decoded == []
    monkeypatch.undo()
    assert _pillows_frame_times(path) == (2**24 - 1, 40, 2**23)


def _damaged_last_frame(path):
    """A GIF or WebP at `path` whose last frame cannot be decoded, though its structure and times can be read."""
    if path.suffix == ".gif":
        data = _pillow_gif(path, [40] * 6).read_bytes()
        return path.write_bytes(data[:-4])  # cut in its last frame's pixel data
    data = bytearray(_pillow_webp([40] * 6, held=False))
    at = data.rindex(b"VP8L")
    length = int.from_bytes(data[at + 4 : at + 8], "little")
    data[at + 13 : at + 8 + length] = b"\xff" * (length - 5)  # its header kept, its pixels not
    return path.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_a_frame_that_cannot_be_decoded_refuses_the_clip_however_few_frames_are_read(suffix, tmp_path):
    """Every frame was decoded before the first was given, for its time: a damaged one refused the file even to a
    caller that wanted only the first frames (`load_clip_for_sampling`). It still does, as it is stopped."""
    path = tmp_path / f"clip{suffix}"
    _damaged_last_frame(path)
    assert len(video._frame_durations(path)) == 6
    for max_frames in (None, 2):
        with pytest.raises(UserError, match="it is corrupt, truncated or in an unsupported codec"):
            video.read_video(path, max_frames=max_frames)


@pytest.mark.parametrize("extra", [1, -1], ids=["one more", "one fewer"])
def test_stored_times_that_do_not_match_pillows_frames_are_not_used(extra, tmp_path, monkeypatch):
    """A GIF that Pillow reads otherwise than its walk (damaged): its frames' times are taken as Pillow gives them,
    decoding each frame, so that they are the ones its frames are shown with."""
    path = _pillow_gif(tmp_path / "clip.gif", [40, 80, 120, 60])
    walked = video.gif_frame_delays(path)
    monkeypatch.setattr(video, "gif_frame_delays", lambda path: [1000] * (len(walked) + extra))
    decoded = _count_decodes(monkeypatch)
    assert video._frame_durations(path) == _pillows_frame_times(path) == (40, 80, 120, 60)
    assert decoded[:4] == ["gif"] * 4


def _pillow_apng(durations: list[float], default_image: bool = False, disposal: int = 0) -> bytes:
    frames = [Image.new("RGBA", (24, 16), (40 * index % 256, 200, 90, 255)) for index in range(len(durations) + 1)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:] if default_image else frames[1:-1],
                   duration=durations, default_image=default_image, disposal=disposal, loop=0)
    return buffer.getvalue()


def _with_fractional_delays(data: bytes) -> bytes:
    """The APNG `data` with each frame's delay (its fcTL chunk's) set to 2/3 s: Pillow gives 666.66... ms."""
    import struct
    import zlib

    data, at = bytearray(data), 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        if data[at + 4 : at + 8] == b"fcTL":
            data[at + 28 : at + 32] = struct.pack(">HH", 2, 3)
            data[at + 8 + length : at + 12 + length] = struct.pack(">I", zlib.crc32(data[at + 4 : at + 8 + length]))
        at += 12 + length
    return bytes(data)


APNGS = {
    "delays of 2/3 s (666.66... ms)": lambda path: path.write_bytes(_with_fractional_delays(_pillow_apng([40] * 3))),
    "held frames": lambda path: path.write_bytes(_pillow_apng([40, 80, 120, 40, 60, 130, 0, 5])),
    "a default image": lambda path: path.write_bytes(_pillow_apng([30, 50, 20, 40], default_image=True)),
    "disposal: previous": lambda path: path.write_bytes(_pillow_apng([30, 50, 20, 40], disposal=2)),
    "crafted, frames in part": lambda path: crafted_apng(path, (16, 16), [(0, 0, 16, 16, 0), (2, 2, 8, 8, 1),
                                                                         (4, 4, 8, 8, 2)], still=True),
}


@pytest.mark.parametrize("kind", APNGS)
def test_an_apngs_frame_times_are_pillows(kind, tmp_path):
    path = tmp_path / "clip.png"
    APNGS[kind](path)
    expected_times = _pillows_frame_times(path)
    assert video._frame_durations(path) == expected_times
    assert video.video_fps(path) == 1000 / video._frame_time(expected_times)
    assert video.video_frame_count(path) == sum(video._frame_repeats(expected_times))
    np.testing.assert_array_equal(video.read_video(path), _pillows_frames(path))


def _tall_frames(mode: str, count: int = 3, size=(40, 600)) -> list[Image.Image]:
    """Frames taller than the band of rows a frame is copied out by, each of other noise (half see-through in RGBA)."""
    rng = np.random.default_rng(len(mode))
    frames = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
        pixels[..., 3] = np.where(pixels[..., 3] > 128, 255, 0)
        frames.append(Image.fromarray(pixels, "RGBA").convert(mode))
    return frames


@pytest.mark.parametrize("suffix, mode, options", [
    (".gif", "P", {"transparency": 0}), (".webp", "RGBA", {"lossless": True}), (".webp", "RGB", {"lossless": True}),
    (".png", "RGBA", {}), (".png", "RGB", {}), (".png", "L", {}),
    (".png", "RGB", {"transparency": (0, 0, 0)}),  # a colour that is see-through: on white, as in a photo
])
def test_frames_taller_than_a_band_are_read_as_pillow_gives_them(suffix, mode, options, tmp_path):
    """A frame is copied out 256 rows at a time (`video._frame_pixels`): its bands must join into Pillow's frame."""
    path = tmp_path / f"clip{suffix}"
    frames = _tall_frames(mode)
    if "transparency" in options and mode == "RGB":
        frames = [Image.fromarray(np.asarray(frame) // 128 * 255) for frame in frames]  # black in 1 of 8 pixels
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, **options)
    read = video.read_video(path)
    assert read.shape == (3, 600, 40, 3) and len(np.unique(read.reshape(3, -1), axis=0)) == 3
    np.testing.assert_array_equal(read, _pillows_frames(path))


@pytest.mark.parametrize("size", [(1, 1), (1, 256), (7, 257), (3, 513)])
def test_frames_one_row_past_a_band_are_read_whole(size, tmp_path):
    """The last band of a frame 1, 257 or 513 rows tall is one row: it is copied too (and a band's edge, at 256)."""
    path = tmp_path / "clip.png"
    frames = _tall_frames("RGB", size=size)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    read = video.read_video(path)
    assert read.shape == (3, size[1], size[0], 3)
    np.testing.assert_array_equal(read, _pillows_frames(path))


def test_a_frame_is_copied_out_without_a_second_whole_copy(tmp_path):
    """np.asarray of a whole decoded frame had held its pixels twice at once (Pillow's bytes, in pieces and
    joined), besides the RGB copy made of a frame already RGB: 1.4 GB more at 250 megapixels, on top of Pillow's
    decoded frame (a 240-megapixel WebP read at +5.9 GB, now +3.8). Only the frame's array is allocated whole."""
    import tracemalloc

    frame = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 500, 3), dtype=np.uint8))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        pixels = video._frame_pixels(frame, 500, 3000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(pixels, np.asarray(frame))
    assert peak < 1.5 * pixels.nbytes, f"peak {peak / pixels.nbytes:.2f} times the frame"  # a band: 1.17; whole: 2


def test_a_frame_is_let_go_before_the_next_is_decoded_and_its_repeats_cannot_be_changed(tmp_path, monkeypatch):
    """Read shrunk, a frame at its size is held by no one while the next decodes (`_read_animation` lets it go, and
    `video_frames` keeps the shrunk frame only). A frame shown twice is one array, yielded twice: read-only, as
    ffmpeg's frames and `np.asarray` of a Pillow image are, so that a caller cannot change its repeat."""
    import weakref

    path = tmp_path / "clip.png"
    frames = _tall_frames("RGB", size=(300, 300))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[100, 200, 100])
    made, alive_at_decode = [], []
    frame_pixels, decode_frame = video._frame_pixels, video._decode_frame
    monkeypatch.setattr(video, "_frame_pixels", lambda *a: made.append(weakref.ref(pixels := frame_pixels(*a)))
                        or pixels)
    monkeypatch.setattr(video, "_decode_frame", lambda *a: alive_at_decode.append([m() is not None for m in made])
                        or decode_frame(*a))
    shrunk = list(video.video_frames(path, max_short_side=64))
    assert [frame.shape for frame in shrunk] == [(64, 64, 3)] * 4
    assert alive_at_decode[-3:] == [[], [False], [False, False]]  # frames 1, 2 and 3 decoded
    repeats = list(video.video_frames(path))
    assert repeats[1] is repeats[2] and not any(frame.flags.writeable for frame in repeats)
    with pytest.raises(ValueError, match="read-only"):
        repeats[1][0, 0] = 0


def test_a_frame_already_rgb_is_copied_out_as_it_is(monkeypatch):
    """An RGB frame without a see-through colour is not converted first (`to_rgb` copies it: 1 GB at 250 MP)."""
    monkeypatch.setattr(video, "to_rgb", lambda im: pytest.fail(f"{im.mode} frame converted"))
    frame = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 20, 3), dtype=np.uint8))
    np.testing.assert_array_equal(video._frame_pixels(frame, 20, 300), np.asarray(frame))


def test_a_frames_bands_are_cropped_under_our_pixel_limit_not_pillows(monkeypatch):
    """Pillow 10 checks a crop's size against its own limit (a band of a wide 240-megapixel frame is over it)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    frame = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 1000, 3), dtype=np.uint8))
    np.testing.assert_array_equal(video._frame_pixels(frame, 1000, 300), np.asarray(frame))
