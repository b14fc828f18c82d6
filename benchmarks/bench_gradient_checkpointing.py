"""Gradient checkpointing (`train.gradient_checkpointing`) against none, training a motion adapter on the same
UNet3D in one run: seconds per step and peak memory of training, and whether the trained weights are the same.

Each setting trains in its own fresh process (interleaved repeats, medians shown), through the shared training
loop, on the same saved model, latents, caption and appearance embeddings and seed (bench_motion.py's set-up).
Memory: CUDA peak allocated, or on CPU the peak growth of the resident set over the level before training
(Linux's VmHWM), warm-up included.

    python benchmarks/bench_gradient_checkpointing.py [--width 64] [--frames 16] [--latent 32] [--steps 5]
                                                       [--repeats 3] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_motion import parse_arguments, run_method, save_model

SETTINGS = ("off", "on")


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], SETTINGS, frames=16, latent=32, steps=5)
    torch.set_num_threads(args.threads)
    os.environ["VIDBOOTH_QUIET"] = "1"
    if args.worker:
        figures = run_method("motion-adapter", Path(args.folder), args, gradient_checkpointing=args.worker == "on")
        print(json.dumps(figures))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(Path(tmp) / "model", args.width, args.latent)
        runs = {setting: [] for setting in SETTINGS}
        for _ in range(args.repeats):
            for setting in SETTINGS:
                command = [sys.executable, __file__, "--worker", setting, "--folder", str(folder)] + sys.argv[1:]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = {setting: {key: statistics.median(run[key] for run in runs[setting])
                      for key in ("seconds_per_step", "peak_training_mb")} for setting in SETTINGS}
    first = runs["off"][0]
    print(f"UNet3D width {args.width} ({first['unet_parameters'] / 1e6:.2f}M parameters), motion adapter, "
          f"{args.frames} frames, latent {args.latent}x{args.latent}, batch 1, fp32 on {args.device}, {args.steps} "
          f"steps after a 2-step warm-up, median of {args.repeats} interleaved runs; torch threads {args.threads}")
    print(f"{'gradient checkpointing':<24} {'s/step':>8} {'peak MB':>8}  ({first['memory']})")
    for setting, row in rows.items():
        print(f"{setting:<24} {row['seconds_per_step']:>8.3f} {row['peak_training_mb']:>8.1f}")
    on, off = rows["on"], rows["off"]
    same = {run["weights"] for setting in SETTINGS for run in runs[setting]}
    print(f"on / off: {on['seconds_per_step'] / off['seconds_per_step']:.2f}x step time, "
          f"{on['peak_training_mb'] / max(off['peak_training_mb'], 1e-9):.2f}x peak memory; trained weights "
          f"{'the same' if len(same) == 1 else 'DIFFERENT'} in all {sum(map(len, runs.values()))} runs")


if __name__ == "__main__":
    main()
