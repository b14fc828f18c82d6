"""APNGs and animated WebPs that state a size far past our pixel limit: refused before Pillow or libwebp gives it
memory, as a GIF's frames are (tests/test_data_gif.py). Pillow 13 reads an APNG's size from its header and judges
each frame's place against it before allocating, but Pillow 10 (our oldest) fills a buffer of the whole image while
opening one whose first frame is to be cleared: an APNG's header chunks are read before Pillow opens it
(vidbooth/data/png.py). libwebp reserves a WebP's canvas when the file is opened but writes to it only to decode a
frame (the reservation alone costs no memory)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from media import crafted_apng, webp_canvas
from PIL import Image

from vidbooth.data import png
from vidbooth.data.images import load_image, pillow_limits_lifted
from vidbooth.data.video import read_video
from vidbooth.errors import UserError


def _watch_buffers(monkeypatch) -> list[tuple[int, int]]:
    """The sizes Pillow asks for an image buffer of (a frame's, or one to clear a frame's place with), each over a
    megapixel given 1x1 instead: a test that found an early allocation must not take the gigabytes it would have."""
    asked = []

    def watched(make):
        def small(mode, size, *rest):
            asked.append(tuple(size))
            return make(mode, (1, 1) if size[0] * size[1] > 1 << 20 else size, *rest)

        return small

    monkeypatch.setattr(Image.core, "new", watched(Image.core.new))
    monkeypatch.setattr(Image.core, "fill", watched(Image.core.fill))
    return asked


FRAMES = [(0, 0, 16, 16, 1), (0, 0, 16, 16, 1)]


@pytest.mark.parametrize("still", [False, True], ids=["first frame in the animation", "a still for other viewers"])
def test_an_apng_over_the_limit_is_refused_before_pillow_gives_it_memory(tmp_path, monkeypatch, still):
    """A 20000x20000 canvas (1.6 GB as RGBA) with 16x16 frames cleared after them, a few hundred bytes: Pillow 10
    filled a buffer of the canvas's size while opening it (1.5 GB), before its size was checked."""
    path = crafted_apng(tmp_path / "huge.png", (20000, 20000), FRAMES, still=still)
    with pillow_limits_lifted(), Image.open(path) as im:  # as vidbooth opens it: Pillow's own limit refuses it
        assert im.info.get("default_image", False) == still and im.size == (20000, 20000)
    asked = _watch_buffers(monkeypatch)
    with pytest.raises(UserError) as clip:
        read_video(path)
    with pytest.raises(UserError) as photo:
        load_image(path, min_side=1)
    assert asked == []
    assert str(clip.value) == (f"video {path} is too large (20000x20000 = 400 megapixels a frame, limit 250): "
                               "downscale it")
    assert str(photo.value) == (f"image {path} is too large (20000x20000 = 400 megapixels, limit 250): downscale it or "
                                "replace it")


@pytest.mark.parametrize("frame, later_canvas", [
    ((0, 0, 20000, 20000, 1), None),
    ((4_000_000_000, 0, 16, 16, 1), None),
    ((0, 0, 20000, 20000, 1), (20000, 20000)),  # Pillow judges the frame by this header, then fails to decode it
], ids=["sized past its canvas", "placed past it", "after a second header"])
def test_an_apng_frame_past_its_canvas_is_refused_as_corrupt_before_pillow_gives_it_memory(tmp_path, monkeypatch,
                                                                                           frame, later_canvas):
    """A frame to be cleared after it (disposal op 1) is given a buffer of its size when Pillow 13 seeks past it, as
    a GIF's is: an APNG's is refused by Pillow while reading its control chunk, or, where a second header has let it
    through, by its decoder before the next seek, which reading each frame before seeking on keeps from happening.
    Pillow 10 cut the frame's place from a buffer of the image's size on seeking to it, a buffer of the frame's size
    (1.5 GB for the frame after a second header): that header is read before Pillow opens the file."""
    path = crafted_apng(tmp_path / "past.png", (16, 16), [FRAMES[0], frame, FRAMES[1]], later_canvas)
    asked = _watch_buffers(monkeypatch)
    with pytest.raises(UserError) as refused:
        read_video(path)
    assert load_image(path, min_side=1).size == (16, 16)  # a photo is its first frame, read alone
    assert asked and max(width * height for width, height in asked) <= 16 * 16  # the canvas's buffers only
    said = ("it is corrupt (a second image header gives 20000x20000 = 400 megapixels, its first 16x16)" if later_canvas
            else "it is corrupt, truncated or in an unsupported codec")
    assert str(refused.value) == (f"cannot read video {path}: {said}; re-encode it, e.g. ffmpeg -i {path} -c:v libx264 "
                                  "-pix_fmt yuv420p fixed.mp4")


MEASURE_REFUSAL = r"""
import json, re, sys
from pathlib import Path
from vidbooth.data import images, video
from vidbooth.errors import UserError
def status_kib(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1))
images.MAX_PHOTO_PIXELS = video.MAX_PHOTO_PIXELS = int(sys.argv[2])
resident_kib, refusals = status_kib("VmRSS"), []
for read in (video.read_video, lambda path: images.load_image(path, min_side=1)):
    try:
        read(Path(sys.argv[1]))
    except UserError as refused:
        refusals.append(str(refused))
print(json.dumps({"refusals": refusals, "peak_mib": (status_kib("VmHWM") - resident_kib) / 1024}))
"""
"""Reads the clip and the photo at argv[1] under a pixel limit of argv[2] and gives their refusals and the peak
memory it took (VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's peak, pytest's with torch)."""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads its peak memory from /proc/self/status")
def test_an_animated_webp_whose_canvas_is_over_the_limit_is_refused_before_it_is_decoded(tmp_path):
    """libwebp reserves two buffers of the canvas's size when Pillow opens the file (2 GB for 16384x16384, with its
    two 16x16 frames 130 bytes) and writes them whole to decode the first frame. Measured at a sixteenth of the scale:
    a 4096x4096 canvas under a 10-megapixel limit, refused at about 1 MB where decoding it takes some 256 MB."""
    path = webp_canvas(tmp_path / "huge.webp", (4096, 4096))
    run = subprocess.run([sys.executable, "-c", MEASURE_REFUSAL, str(path), str(10_000_000)], capture_output=True,
                         text=True, check=True, timeout=120)
    measured = json.loads(run.stdout)
    assert measured["refusals"] == [
        f"video {path} is too large (4096x4096 = 17 megapixels a frame, limit 10): downscale it",
        f"image {path} is too large (4096x4096 = 17 megapixels, limit 10): downscale it or replace it",
    ]
    assert measured["peak_mib"] < 64


class _Reads(io.BytesIO):
    """A file that counts its reads."""

    count = 0

    def read(self, *size):
        self.count += 1
        return super().read(*size)


def test_an_apng_cut_short_while_it_is_walked_is_walked_no_further_than_its_end(tmp_path):
    """The walk went on to the size the file had had, 12 bytes a step, reading nothing: 6 s for one of 100 MB cut
    to its first chunks while it was walked (an export writing it anew)."""
    whole = crafted_apng(tmp_path / "clip.png", (16, 16), FRAMES).read_bytes()
    head = whole[: whole.index(b"fcTL") - 4]  # signature, header, animation control: as far as the cut leaves

    file = _Reads(head)
    assert png._walk(file, 100_000_000) == ((16, 16), (16, 16), True)
    assert file.count < 10


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _before_end(data: bytes, chunks: bytes) -> bytes:
    """`data`, a PNG, with `chunks` put before its end chunk."""
    return data[:-12] + chunks + data[-12:]


@pytest.mark.parametrize("frames, still, count_after", [
    (1, False, None), (2, False, None), (1, True, None), (2, True, None), (2, False, 1),
], ids=["one frame", "two frames", "one frame and a still", "two frames and a still", "an acTL after the image"])
def test_the_walk_counts_an_apngs_frames_as_pillow_counts_them(tmp_path, frames, still, count_after):
    """Whether Pillow reads it as an animation, known from the walk alone for one too large to open."""
    path = crafted_apng(tmp_path / "clip.png", (16, 16), FRAMES[:frames], still=still)
    if count_after is not None:  # Pillow reads the chunks up to the image data when opening it
        path.write_bytes(_before_end(path.read_bytes(), _chunk(b"acTL", count_after.to_bytes(4, "big") + bytes(4))))
    with Image.open(path) as im:
        animated = im.is_animated
    assert png.png_sizes(path).animated == animated == (frames + still > 1)


def test_a_still_png_is_walked_to_its_first_image_data_only(tmp_path):
    data = crafted_apng(tmp_path / "still.png", (16, 16), FRAMES[:1]).read_bytes()
    still = data.replace(data[data.index(b"acTL") - 4 : data.index(b"fcTL") + 34], b"")  # no animation chunks
    still = _before_end(still, b"".join(_chunk(b"IDAT", b"") for _ in range(1000)))

    file = _Reads(still)
    assert png._walk(file, len(still)) == ((16, 16), (16, 16), False)
    assert file.count < 10


def test_chunks_after_the_end_chunk_are_not_read(tmp_path):
    """As Pillow does not: a header of 20000x20000 after an APNG's end is no second header of it."""
    path = crafted_apng(tmp_path / "clip.png", (16, 16), FRAMES)
    path.write_bytes(path.read_bytes() + _chunk(b"IHDR", (20000).to_bytes(4, "big") * 2 + b"\x08\x06\0\0\0"))
    assert png.png_sizes(path) == ((16, 16), (16, 16), True)
    assert read_video(path).shape == (2, 16, 16, 3)


def test_an_apng_at_the_limit_is_read_and_one_over_it_is_never_given_to_pillow(tmp_path, monkeypatch):
    """The limit is inclusive. One over it is refused from its chunks alone: Pillow 10 fills a buffer of its size on
    opening it, whatever asks (whether it is animated, the clip, the photo)."""
    from vidbooth.data import images, video

    for module in (images, video):
        monkeypatch.setattr(module, "MAX_PHOTO_PIXELS", 16 * 16)
    at_limit = crafted_apng(tmp_path / "at.png", (16, 16), FRAMES)
    assert read_video(at_limit).shape == (2, 16, 16, 3) and load_image(at_limit, min_side=1).size == (16, 16)
    over = crafted_apng(tmp_path / "over.png", (17, 16), [(0, 0, 16, 16, 1)] * 2)
    opened, open_image = [], Image.open
    monkeypatch.setattr(Image, "open", lambda path, *rest: opened.append(str(path)) or open_image(path, *rest))
    with pytest.raises(UserError, match=r"is too large \(17x16 = 0 megapixels a frame, limit 0\): downscale it$"):
        read_video(over)
    with pytest.raises(UserError, match=r"is too large \(17x16 = 0 megapixels, limit 0\): downscale it or replace it$"):
        load_image(over, min_side=1)
    assert str(over) not in opened
