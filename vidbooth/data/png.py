"""A PNG's chunks walked without decoding it, so that the sizes its headers give are known before Pillow opens it.

Pillow 10 (our oldest), opening an APNG whose first frame is cleared after it (disposal op 1, or 2 for the first
frame), fills a buffer of the image's whole size at once, and on seeking to a frame that a second header (IHDR) let
past the image's size, one of that frame's size: a 20000x20000 APNG of 16x16 frames, 262 bytes, took 1.5 GB before a
check of the image's size could run (Pillow 13 clears only a frame's place, once the next frame is sought). The walk
reads each chunk's length and kind, and the header, animation control and frame control chunks, not the pixel data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PngSizes(NamedTuple):
    """What the header chunks (IHDR) of a PNG give, and whether Pillow reads it as an animation."""

    canvas: tuple[int, int]
    """The image's size, as Pillow takes it: from the last header before the image data (one, in a valid PNG)."""
    largest: tuple[int, int]
    """The largest size (by pixels) any header gives, before the image data or between an APNG's frames."""
    animated: bool
    """Whether Pillow counts more than one frame: its animation control chunk (acTL) gives more than one, or one
    besides an image in IDAT for viewers that do not animate."""

    @property
    def header_repeated(self) -> bool:
        return self.largest != self.canvas


def png_sizes(path: Path) -> PngSizes | None:
    """The sizes the PNG at `path` gives, or None when it is no PNG, has no header or cannot be read (opening it
    says why). A still PNG is walked to its first image data only; an APNG to its end chunk (IEND) or the file's end.
    """
    try:
        with open(path, "rb") as file:
            if file.read(8) != PNG_SIGNATURE:
                return None
            return _walk(file, os.fstat(file.fileno()).st_size)
    except OSError:
        return None


def reaches_its_end(path: Path) -> bool:
    """Whether the PNG's chunks, walked by their lengths from its signature, fit in the file up to its end chunk
    (IEND). One cut short ends inside a chunk or before IEND: Pillow fails part-way through a frame."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        return any(at + 12 + length <= size for at, length, kind in _chunks(file, size) if kind == b"IEND")


def _chunks(file, size: int) -> Iterator[tuple[int, int, bytes]]:
    """Each chunk's place, data length and kind, from the signature on, with the file just past its length and kind
    (to read its data from); up to IEND, or to where the file ends."""
    at = len(PNG_SIGNATURE)
    while at + 8 <= size:
        file.seek(at)
        head = file.read(8)
        if len(head) < 8:  # cut short since its size was read: not walked on to that size, 12 bytes a step
            return
        length, kind = int.from_bytes(head[:4], "big"), head[4:8]
        yield at, length, kind
        if kind == b"IEND":
            return
        at += 12 + length  # length, kind, data, checksum


def _walk(file, size: int) -> PngSizes | None:
    canvas, largest = None, (0, 0)
    frames = None  # the count an animation control chunk gives before the image data: None in a still PNG
    imaged = still = controlled = False  # image data seen; in IDAT before any frame control chunk; such a chunk seen
    for _, length, kind in _chunks(file, size):
        if kind == b"IHDR" and length >= 8:
            header = file.read(8)
            if len(header) < 8:
                break
            width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")
            if width * height > largest[0] * largest[1]:
                largest = width, height
            if not imaged:
                canvas = width, height
        elif kind == b"acTL" and length >= 4 and not imaged:
            frames = int.from_bytes(file.read(4), "big")
        elif kind == b"fcTL":
            controlled = True
        elif kind in (b"IDAT", b"fdAT"):
            if frames is None:  # a still PNG: nothing after its image data changes its size
                break
            still = still or not imaged and kind == b"IDAT" and not controlled
            imaged = True
    if canvas is None:
        return None
    return PngSizes(canvas, largest, frames is not None and frames + still > 1)
