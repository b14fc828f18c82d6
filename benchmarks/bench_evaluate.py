"""Memory of evaluate's reference motion: a long clip read a frame at a time against the same clip held whole.

`evaluate --ref-video` reduces the reference clip to its motion signature (`eval.references.motion_clip_signature`,
which reads it with `data.video.video_frames`); it had read the whole clip first. Both ways run here on one clip
(an ffmpeg test pattern, written once into a temporary folder), each measured by its peak resident-set growth, and
must give the same signature.

Usage: python benchmarks/bench_evaluate.py [--seconds 20] [--size 640x360] [--fps 24]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import PeakMemory


def write_clip(path: Path, seconds: float, size: str, fps: int) -> Path:
    import imageio_ffmpeg

    source = f"testsrc2=size={size}:rate={fps}:duration={seconds}"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "lavfi", "-i", source,
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the clip")
    parser.add_argument("--fps", type=int, default=24)
    args = parser.parse_args()

    from vidbooth.data.video import read_video
    from vidbooth.eval.motion import motion_signature
    from vidbooth.eval.references import VIDEO_SHORT_SIDE, motion_clip_signature

    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        clip = write_clip(Path(folder) / "reference.mp4", args.seconds, args.size, args.fps)
        rows = []
        for name, signature_of in (
            ("held whole (before)", lambda: motion_signature(read_video(clip, max_short_side=VIDEO_SHORT_SIDE))),
            ("a frame at a time", lambda: motion_clip_signature(clip)),
        ):
            start = time.perf_counter()
            with PeakMemory(cpu) as peak:
                signature = signature_of()
            rows.append((name, peak.peak / 2**20, time.perf_counter() - start, signature))
    frames = round(args.seconds * args.fps)
    print(f"reference clip: {frames} frames of {args.size} at {args.fps} fps")
    for name, megabytes, seconds, _ in rows:
        print(f"{name:22s} peak +{megabytes:8.1f} MB  {seconds:6.1f} s")
    (_, whole_mb, _, whole), (_, streamed_mb, _, streamed) = rows
    print(f"memory ratio (a frame at a time / held whole): {streamed_mb / whole_mb:.3f}")
    print(f"signatures equal: {np.array_equal(whole, streamed)}")


if __name__ == "__main__":
    main()
