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


def test_an_apng_cut_short_while_it_is_walked_is_walked_no_further_than_its_end(tmp_path):
    """The walk went on to the size the file had had, 12 bytes a step, reading nothing: 6 s for one of 100 MB cut
    to its first chunks while it was walked (an export writing it anew)."""
    whole = crafted_apng(tmp_path / "clip.png", (16, 16), FRAMES).read_bytes()
    head = whole[: whole.index(b"fcTL") - 4]  # signature, header, animation control: as far as the cut leaves

    class Reads(io.BytesIO):
        count = 0

        def read(self, *size):
            self.count += 1
            return super().read(*size)

    file = Reads(head)
    assert png._walk(file, 100_000_000) == ((16, 16), (16, 16), True)
    assert file.count < 10
