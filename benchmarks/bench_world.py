"""Nano world speed and probe accuracy: clips/s of `sample_pretraining_batch` and the probe on ground truth.

Usage: python benchmarks/bench_world.py [--clips 130]
Speeds are also given as a ratio to the first row's (8 frames at 64 px; clean 64 px clips for the probe).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from vidbooth.nano.probe import probe_accuracy
from vidbooth.nano.world import Motion, Sprite, cycling_pairs, render_clip, sample_pretraining_batch

CONDITIONS = [  # (size, blur sigma px, noise sigma 0-255)
    (64, 0.0, 0.0),
    (32, 0.0, 0.0),
    (64, 1.0, 6.0),
    (32, 0.6, 4.0),
    (64, 1.5, 8.0),
    (32, 1.0, 6.0),
    (64, 2.5, 10.0),
]


def clips_per_second(num_frames: int, size: int, batch: int = 32, repeats: int = 8) -> float:
    rng = np.random.default_rng(0)
    sample_pretraining_batch(rng, batch, num_frames, size)
    start = time.perf_counter()
    for _ in range(repeats):
        sample_pretraining_batch(rng, batch, num_frames, size)
    return batch * repeats / (time.perf_counter() - start)


def degraded_clips(pairs: list[tuple[Sprite, Motion]], size: int, blur: float, noise: float) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    clips = []
    for index, (sprite, motion) in enumerate(pairs):
        frames = render_clip(sprite, motion, size=size, seed=5000 + index)[0]
        if blur:
            frames = np.stack([cv2.GaussianBlur(frame, (0, 0), blur) for frame in frames])
        clips.append(np.clip(frames + rng.normal(0.0, noise, frames.shape), 0, 255).astype(np.uint8))
    return clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=130, help="ground-truth clips per condition")
    args = parser.parse_args()

    print("sample_pretraining_batch")
    reference = None
    for num_frames, size in [(8, 64), (8, 32), (16, 64)]:
        speed = clips_per_second(num_frames, size)
        reference = reference or speed
        print(f"  {num_frames:>2} frames x {size} px: {speed:7.0f} clips/s ({speed / reference:4.2f}x)")

    pairs = cycling_pairs(args.clips)
    print(f"\nprobe on {args.clips} ground-truth clips (every shape x motion, colours and patterns cycling)")
    print(f"  {'size':>4} {'blur':>4} {'noise':>5} | {'colour':>6} {'shape':>6} {'motion':>6} | {'videos/s':>8} "
          f"{'ratio':>6}")
    reference = None
    first = CONDITIONS[0]
    probe_accuracy(degraded_clips(pairs[:4], *first), pairs[:4])  # warm-up: the first condition had read slowest
    for size, blur, noise in CONDITIONS:
        clips = degraded_clips(pairs, size, blur, noise)
        start = time.perf_counter()
        accuracy = probe_accuracy(clips, pairs)
        speed = len(clips) / (time.perf_counter() - start)
        reference = reference or speed
        print(
            f"  {size:>4} {blur:>4.1f} {noise:>5.1f} | {accuracy['colour']:>6.1%} {accuracy['shape']:>6.1%} "
            f"{accuracy['motion']:>6.1%} | {speed:>8.0f} {speed / reference:>5.2f}x"
        )


if __name__ == "__main__":
    main()
