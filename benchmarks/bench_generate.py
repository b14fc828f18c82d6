"""vidbooth's generate loop vs diffusers' TextToVideoSDPipeline on the identical small model.

Same files, scheduler, steps and seed; several runs of each in one process, interleaved. Prints the
median time ratio (target <= 1.0) and the max absolute difference of the outputs (target < 1e-4).

    python benchmarks/bench_generate.py [--runs 5] [--steps 10] [--frames 8] [--scheduler ddim] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vidbooth.engine.backbone import load_backbone, quiet_libraries
    from vidbooth.engine.sampling import sample_video
    from vidbooth.engine.tiny import diffusers_reference_pipeline, save_tiny_backbone

    import os

    os.environ["VIDBOOTH_QUIET"] = "1"
    quiet_libraries()
    scratch = tempfile.TemporaryDirectory()  # removed at exit
    folder = save_tiny_backbone(Path(scratch.name) / "tiny", "unet3d")
    backbone = load_backbone(str(folder), device="cpu")
    pipe = diffusers_reference_pipeline(folder, args.scheduler)
    kwargs = dict(num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=9.0, height=32, width=32)

    def run_ours():
        return sample_video(backbone, "a dog running", scheduler=args.scheduler, output_type="np",
                            generator=torch.Generator().manual_seed(0), **kwargs)[0]

    def run_diffusers():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pipe("a dog running", generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).frames[0]

    run_ours(), run_diffusers()  # warm-up
    ours_t, ref_t, diff = [], [], 0.0
    for _ in range(args.runs):
        for fn, times in ((run_ours, ours_t), (run_diffusers, ref_t)):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
            if fn is run_ours:
                mine = out
            else:
                diff = max(diff, float(np.abs(mine - out).max()))
    ratio = statistics.median(ours_t) / statistics.median(ref_t)
    print(f"model: tiny UNet3D, {args.frames} frames 32x32, {args.steps} {args.scheduler} steps, CFG, "
          f"{args.runs} runs, {args.threads} threads")
    print(f"vidbooth median {statistics.median(ours_t):.3f} s, diffusers median {statistics.median(ref_t):.3f} s")
    print(f"time ratio vidbooth/diffusers: {ratio:.3f} (target <= 1.0)")
    print(f"max abs difference: {diff:.2e} (target < 1e-4)")


if __name__ == "__main__":
    main()
