"""How long reading a long animated GIF or WebP takes, each frame decoded once against twice.

fps, frame count and the repeat of held frames need every frame's time before the first frame is read; Pillow gives
a frame's time only on seeking to it, decoding each frame it passes (a WebP's, each frame it times), so every clip
was decoded twice. A GIF's times are now read from its blocks and a WebP's from its chunks. The reference row reads
them as before, by Pillow, decoding (the same module with no stored times: `_stored_durations` gives None). Writes
`--frames` frames of `--size` (a textured square moving over a gradient) as GIF and as lossy WebP in a temporary
folder, then reads each whole (`read_video`), alternating the two ways; prints the median seconds and their ratio.

    python benchmarks/bench_animation_read.py [--frames 120] [--size 640x360] [--runs 5]

Measured on 2 CPU cores, 120 frames of 640x360, median of 7 runs: GIF (0.9 MB, Pillow writes the moving part of
each frame only) 0.209 s decoded twice, 0.137 s once (0.66 of the reference); lossy WebP (0.3 MB) 0.226 s, 0.141 s
(0.62). The frame times alone: a GIF's walk 3.5 ms against 75 ms decoding, a WebP's chunks 0.5 ms against 82 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def write_clip(path: Path, frames: int, width: int, height: int) -> Path:
    import numpy as np
    from PIL import Image

    ys, xs = np.mgrid[:height, :width]
    background = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 90)], axis=-1).astype(np.uint8)
    texture = np.kron(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8), np.ones((8, 8, 1),
                                                                                                      np.uint8))
    images = []
    for index in range(frames):
        frame = background.copy()
        x, y = index * (width - 96) // frames, (height - 96) // 2
        frame[y : y + 96, x : x + 96] = texture
        images.append(Image.fromarray(frame))
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))

    from vidbooth.data import video

    stored_durations = video._stored_durations

    def read(path: Path, decoding_twice: bool) -> float:
        video._stored_durations = (lambda path: None) if decoding_twice else stored_durations
        video._frame_durations_cached.cache_clear()
        try:
            started = time.perf_counter()
            frames = video.read_video(path)
            assert len(frames) == args.frames, len(frames)
            return time.perf_counter() - started
        finally:
            video._stored_durations = stored_durations

    os.environ["VIDBOOTH_QUIET"] = "1"
    print(f"{args.frames} frames of {width}x{height}, {os.cpu_count()} cores, median of {args.runs} runs")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".gif", ".webp"):
            path = write_clip(Path(tmp) / f"clip{suffix}", args.frames, width, height)
            read(path, decoding_twice=False)  # warm-up
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.runs):
                for decoding_twice in times:
                    times[decoding_twice].append(read(path, decoding_twice))
            twice, once = statistics.median(times[True]), statistics.median(times[False])
            print(f"{suffix[1:]:>4} ({path.stat().st_size / 1e6:.1f} MB): decoded twice {twice:.3f} s, once "
                  f"{once:.3f} s ({once / twice:.2f} of the reference)")


if __name__ == "__main__":
    main()
