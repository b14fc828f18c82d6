"""A GIF's block structure walked without decoding it, so that its frames' sizes are known before Pillow reads it.

Pillow grows a GIF's screen to a frame that reaches past it and, for a frame to be cleared afterwards (disposal
method 2 or 3), fills a buffer of the frame's stated size while seeking to it: a 16x16 GIF whose frame says
20000x20000 took 1.5 GB before a check of the image's size could run. The walk below reads only the bytes that
give the structure (headers, descriptors and the length of each data sub-block), not the pixel data.
"""

from __future__ import annotations

import itertools
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
_EXTENSION, _IMAGE, _TRAILER = 0x21, 0x2C, 0x3B  # '!', ',' and ';': what starts each block
_Bytes = bytes | mmap.mmap


class GrownScreen(NamedTuple):
    """The first frame of a GIF that takes its screen, as Pillow grows it, past a number of pixels."""

    index: int
    """Of the frame, 0 for the first."""
    width: int
    height: int
    """The screen's size once that frame is shown (the largest right and bottom edges of the frames so far)."""
    screen: tuple[int, int]
    """The screen's size that the GIF states."""

    @property
    def past_the_screen(self) -> bool:
        return (self.width, self.height) != self.screen


def grown_screen(path: Path, max_pixels: int, frames: int | None = None) -> GrownScreen | None:
    """The first of the first `frames` frames (all with None) of the GIF at `path` that grows its screen to more
    than `max_pixels` pixels, or None when none does, the file is no GIF or it cannot be read (opening it says why).
    A GIF cut short is walked up to where it ends: its frames before that are judged, and reading it says the rest.
    """
    try:
        with open(path, "rb") as file:
            if file.read(6) not in GIF_SIGNATURES or os.fstat(file.fileno()).st_size < 13:
                return None
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:  # shares the page cache: no copy
                return _first_over(view, max_pixels, frames)
    except (OSError, ValueError):  # unreadable, or nothing to map (a pipe): Pillow's opening it reports it
        return None


def _first_over(data: _Bytes, max_pixels: int, frames: int | None) -> GrownScreen | None:
    screen = width, height = _u16(data, 6), _u16(data, 8)
    if width * height > max_pixels:  # the screen alone
        return GrownScreen(0, width, height, screen)
    for index, (right, bottom) in enumerate(itertools.islice(frame_edges(data), frames)):
        width, height = max(width, right), max(height, bottom)
        if width * height > max_pixels:
            return GrownScreen(index, width, height, screen)
    return None


def frame_edges(data: _Bytes) -> Iterator[tuple[int, int]]:
    """Each frame's right and bottom edges (left + width, top + height) as its image descriptor states them, in
    order, walking a GIF's blocks as Pillow does: a byte that starts no block is skipped, the trailer (';') ends the
    walk, and so does the end of the data (a GIF cut short), wherever it falls."""
    size = len(data)
    flags = data[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # header, logical screen, global colour table
    while at < size:
        kind = data[at]
        if kind == _TRAILER:
            return
        if kind == _EXTENSION:
            at = _past_sub_blocks(data, at + 2)  # introducer, label, then data sub-blocks
        elif kind == _IMAGE:
            if at + 10 > size:  # the descriptor is cut: Pillow cannot read this frame
                return
            yield _u16(data, at + 1) + _u16(data, at + 5), _u16(data, at + 3) + _u16(data, at + 7)
            image_flags = data[at + 9]
            at += 10 + (3 << ((image_flags & 7) + 1) if image_flags & 0x80 else 0)  # descriptor, local table
            at = _past_sub_blocks(data, at + 1)  # LZW minimum code size, then data sub-blocks
        else:
            at += 1


def _past_sub_blocks(data: _Bytes, at: int) -> int:
    """Where a chain of data sub-blocks starting at `at` ends: after its empty block, or at the end of the data."""
    size = len(data)
    while at < size:
        length = data[at]
        at += length + 1
        if not length:
            break
    return at


def _u16(data: _Bytes, at: int) -> int:
    return data[at] | data[at + 1] << 8
