"""An animated WebP's frame times read from its RIFF chunks, without decoding a frame.

Pillow gives a WebP frame's time only once libwebp has decoded the frame (as the difference of two timestamps, each
the sum of the times before it), so learning a clip's frame rate before reading its first frame had decoded every
frame twice. Each frame's time is stored in its ANMF chunk: that, in order, is what libwebp adds up.
"""

from __future__ import annotations

import os
from pathlib import Path

_ANMF_HEAD = 16
"""An ANMF chunk's data up to and including its frame's time: X, Y, width less one, height less one and the time,
3 bytes each, little-endian."""


def frame_durations(path: Path) -> list[int] | None:
    """Each frame's time in ms as its ANMF chunk stores it, in order; None when the file is no WebP, a chunk runs past
    the end of the file or cannot be read (Pillow's opening or reading it then says what is wrong)."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            head = file.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
                return None
            end = min(size, 8 + int.from_bytes(head[4:8], "little"))  # libwebp reads no further than the header says
            durations, at = [], 12
            while at + 8 <= end:
                file.seek(at)
                chunk = file.read(8)
                kind, length = chunk[:4], int.from_bytes(chunk[4:8], "little")
                if len(chunk) < 8 or at + 8 + length > end:
                    return None
                if kind == b"ANMF":
                    if length < _ANMF_HEAD:
                        return None
                    durations.append(int.from_bytes(file.read(_ANMF_HEAD)[12:15], "little"))
                at += 8 + length + length % 2  # a chunk of odd length is padded to an even one
            return durations
    except OSError:
        return None
