"""A GIF's block structure walked without decoding it, so that its frames' sizes are known before Pillow reads it.

Pillow grows a GIF's screen to a frame that reaches past it and, for a frame to be cleared afterwards (disposal
method 2 or 3), fills a buffer of the frame's stated size while seeking to it: a 16x16 GIF whose frame says
20000x20000 took 1.5 GB before a check of the image's size could run. The walk below reads only the bytes that
give the structure (headers, descriptors, graphic control extensions and the length of each data sub-block), not the
pixel data: it gives the frames' times too, which Pillow gives only frame by frame, decoding each frame it passes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
_EXTENSION, _IMAGE, _TRAILER = 0x21, 0x2C, 0x3B  # '!', ',' and ';': what starts each block
_GRAPHIC_CONTROL, _COMMENT, _APPLICATION = 0xF9, 0xFE, 0xFF  # extension labels that Pillow reads apart
_LOOP_EXTENSION = b"NETSCAPE2.0"
_Found = TypeVar("_Found")


class _Bytes(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, at: int, /) -> int: ...


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
    return _walked(path, lambda data: _first_over(data, max_pixels, frames))


def frame_delays(path: Path) -> list[int] | None:
    """Each frame's time in ms as Pillow gives it on seeking to the frame (its info["duration"]: the delay of the
    last graphic control extension before the frame's image, 0 where there is none), from the GIF's block structure:
    Pillow decodes each frame it seeks past, and a clip's frame times are wanted before its first frame is read.
    None when the file is no GIF or cannot be read, or is cut short while walked."""
    return _walked(path, lambda data: [frame.delay for frame in _frames(data)])


def _walked(path: Path, walk: Callable[[_Bytes], _Found]) -> _Found | None:
    """What `walk` finds in the bytes of the GIF at `path`; None when the file is no GIF, cannot be read or is cut
    short while walked (Pillow's opening or reading it then says what is wrong)."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if file.read(6) not in GIF_SIGNATURES or size < 13:
                return None
            return walk(_FileBytes(file, size))
    except (OSError, _CutSince):
        return None


class _CutSince(Exception):
    """The file ends before the size it had when the walk began (written anew meanwhile)."""


class _FileBytes:
    """A file's bytes, read 64 KB at a time as the walk comes to them. Not mapped: reading a mapped page past the
    end of a file cut meanwhile (an export or a copy writing it anew) kills the process with SIGBUS."""

    def __init__(self, file, size: int):
        self._file, self._size, self._start, self._block = file, size, 0, b""

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, at: int) -> int:
        offset = at - self._start
        if not 0 <= offset < len(self._block):
            self._file.seek(at)
            self._start, self._block, offset = at, self._file.read(1 << 16), 0
            if not self._block:
                raise _CutSince
        return self._block[offset]


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
    order (`_frames`)."""
    return ((frame.right, frame.bottom) for frame in _frames(data))


class _Frame(NamedTuple):
    right: int
    bottom: int
    delay: int
    """In ms, as Pillow gives it (`frame_delays`)."""


def _frames(data: _Bytes) -> Iterator[_Frame]:
    """Each frame's edges and delay, in order, walking a GIF's blocks as Pillow does: a byte that starts no block is
    skipped, an extension is read as Pillow reads it (`_past_extension`), the trailer (';') ends the walk, and so
    does the end of the data (a GIF cut short), wherever it falls."""
    size = len(data)
    flags = data[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # header, logical screen, global colour table
    imaged = False  # an image descriptor seen: Pillow has read its first frame
    delay = 0  # of the frame to come
    while at < size:
        kind = data[at]
        if kind == _TRAILER:
            return
        if kind == _EXTENSION:
            delay = _control_delay(data, at, delay)
            at = _past_extension(data, at, loop_read=not imaged)
        elif kind == _IMAGE:
            imaged = True
            if at + 10 > size:  # the descriptor is cut: Pillow cannot read this frame
                return
            yield _Frame(_u16(data, at + 1) + _u16(data, at + 5), _u16(data, at + 3) + _u16(data, at + 7), delay)
            delay = 0
            image_flags = data[at + 9]
            at += 10 + (3 << ((image_flags & 7) + 1) if image_flags & 0x80 else 0)  # descriptor, local table
            at = _past_sub_blocks(data, at + 1)  # LZW minimum code size, then data sub-blocks
        else:
            at += 1


def _control_delay(data: _Bytes, at: int, delay: int) -> int:
    """The delay in ms that the extension at `at` gives the frame to come, if it is a graphic control extension,
    else `delay`: its first sub-block holds flags, then the delay in hundredths of a second. Pillow passes over one
    whose first sub-block is empty, and fails on one shorter than the delay (opening or counting the frames)."""
    if at + 5 >= len(data) or data[at + 1] != _GRAPHIC_CONTROL or data[at + 2] < 3:
        return delay
    return _u16(data, at + 4) * 10


def _past_extension(data: _Bytes, at: int, loop_read: bool) -> int:
    """Where the extension at `at` ends as Pillow reads it: its introducer and label, then data sub-blocks up to an
    empty one, as the specification has it, but for one other than a comment, Pillow reads its first sub-block (and,
    while reading the first frame, `loop_read`, a NETSCAPE2.0 application extension's second, its loop count) before
    looking for the empty one: an empty sub-block read there does not end it, and the next byte is read as the
    length of a sub-block (a frame that only Pillow would find had been let through, whatever its size)."""
    size = len(data)
    if at + 2 >= size:
        return size
    label, at = data[at + 1], at + 2
    if label == _COMMENT:
        return _past_sub_blocks(data, at)
    read_first = 1
    if label == _APPLICATION and loop_read and data[at] >= len(_LOOP_EXTENSION) and at + 12 <= size and all(
            data[at + 1 + index] == byte for index, byte in enumerate(_LOOP_EXTENSION)):
        read_first = 2
    for _ in range(read_first):
        if at < size:
            at += data[at] + 1
    return _past_sub_blocks(data, at)


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
