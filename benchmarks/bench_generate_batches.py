"""What `generate --batch-size` trades: peak memory and time of several videos denoised fewer at a time.

nano, `--num-videos` videos sampled at each batch size, each size in a fresh process (memory freed by one size
would hide the next one's growth); prints, against all at once, the peak memory of sampling (CUDA's peak
allocation, or on CPU the resident set's peak growth once the model is loaded), the time, and the largest
difference of the videos' pixels in [0, 1] (target < 1e-3: the same videos).

    python benchmarks/bench_generate_batches.py [--num-videos 8] [--sizes 8,4,1] [--steps 10] [--frames 8]
                                                  [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import PeakMemory


def sample(args, size: int, out: Path) -> None:
    """In this process: the videos at batch size `size` to `out` (.npy), the figures on stdout as JSON."""
    torch.set_num_threads(args.threads)
    os.environ["VIDBOOTH_QUIET"] = "1"
    from vidbooth.engine.backbone import load_backbone, quiet_libraries
    from vidbooth.engine.sampling import sample_video

    quiet_libraries()
    backbone = load_backbone("nano", device=args.device)
    with PeakMemory(backbone.device) as peak:
        start = time.perf_counter()
        videos = sample_video(backbone, ["a red striped square moving left"] * args.num_videos,
                              num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=2.0,
                              output_type="np", generator=torch.Generator().manual_seed(0), batch_size=size)
        seconds = time.perf_counter() - start
    np.save(out, videos)
    print(json.dumps({"peak": peak.peak, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-videos", type=int, default=8)
    parser.add_argument("--sizes", default="8,4,1", help="batch sizes, the first being the reference")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: this batch size alone
    parser.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return sample(args, args.one, args.to)

    print(f"nano on {args.device}, {args.num_videos} videos of {args.frames} frames, {args.steps} ddim steps, "
          f"guidance 2, {args.threads} thread(s), each batch size in its own process")
    reference = None
    with tempfile.TemporaryDirectory() as scratch:
        for size in (int(size) for size in args.sizes.split(",")):
            out = Path(scratch) / f"{size}.npy"
            child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", str(size), "--to", str(out)],
                                   capture_output=True, text=True, check=True)
            figures = json.loads(child.stdout.strip().splitlines()[-1])
            videos = np.load(out)
            reference = reference or (videos, figures)
            difference = float(np.abs(videos - reference[0]).max())
            print(f"batch size {size}: peak memory {figures['peak'] / 2**20:.0f} MiB "
                  f"({figures['peak'] / reference[1]['peak']:.2f} x), {figures['seconds']:.2f} s "
                  f"({figures['seconds'] / reference[1]['seconds']:.2f} x), largest pixel difference {difference:.1e}")


if __name__ == "__main__":
    main()
