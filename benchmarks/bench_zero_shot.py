"""vidbooth's Text2Video-Zero vs diffusers' TextToVideoZeroPipeline on the identical small image model.

Same files, steps, noise and motion field (diffusers' grid put at the video's size and its noising back made exact,
as in tests/test_zero_shot.py); several runs of each in one process, interleaved. Prints the median time ratio
(target <= 1.0) and the max absolute difference of the outputs (target < 1e-4); and, as a reference for what the
zero-shot motion costs, the time of the same frames sampled as independent pictures.

    python benchmarks/bench_zero_shot.py [--runs 5] [--steps 20] [--frames 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = parser.parse_args()
    if args.steps < 2:  # vidbooth's one step denoises the first frame whole (i0 = 1, `warp_steps`)
        parser.error("--steps must be at least 2: diffusers' t0 must lie in [0, steps - 1] and t1 above it, so one "
                     "step has no diffusers counterpart to compare with")
    torch.set_num_threads(args.threads)

    from vidbooth.config.schema import ZeroShotConfig
    from vidbooth.engine.backbone import load_backbone, quiet_libraries
    from vidbooth.engine.sampling import sample_video
    from vidbooth.engine.tiny import diffusers_zero_shot_reference, save_tiny_backbone
    from vidbooth.engine.zero_shot import warp_steps

    os.environ["VIDBOOTH_QUIET"] = "1"
    quiet_libraries()
    size, settings = 32, ZeroShotConfig()
    scratch = tempfile.TemporaryDirectory()  # removed at exit
    folder = save_tiny_backbone(Path(scratch.name) / "image", "animatediff")  # its motion adapter is not given
    backbone = load_backbone(str(folder), device="cpu")
    pipe = diffusers_zero_shot_reference(folder, size, size)
    pipe.scheduler.set_timesteps(args.steps)  # DDIM's, as sample_video's
    i1, i0 = warp_steps(pipe.scheduler.timesteps, settings.t0, settings.t1, pipe.scheduler.config.num_train_timesteps)
    first = torch.randn(1, 4, size // 2, size // 2, generator=torch.Generator().manual_seed(0))
    common = dict(height=size, width=size, num_inference_steps=args.steps, guidance_scale=7.5)

    def run_ours():
        latents = first[:, :, None].repeat(1, 1, args.frames, 1, 1)
        return sample_video(backbone, "a horse galloping", num_frames=args.frames, latents=latents, output_type="np",
                            generator=torch.Generator().manual_seed(1), zero_shot=settings, **common)[0]

    def run_diffusers():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(pipe("a horse galloping", video_length=args.frames, latents=first, output_type="np",
                                   generator=torch.Generator().manual_seed(1), t0=args.steps - 1 - i0,
                                   t1=args.steps - 1 - i1, **common).images)

    def run_pictures():  # the same frames as a batch of independent 1-frame samples
        latents = first[:, :, None].repeat(args.frames, 1, 1, 1, 1)
        return sample_video(backbone, ["a horse galloping"] * args.frames, num_frames=1, latents=latents,
                            output_type="np", **common)

    try:
        run_ours(), run_diffusers(), run_pictures()  # warm-up
        times: dict[str, list[float]] = {"ours": [], "diffusers": [], "pictures": []}
        difference = 0.0
        for _ in range(args.runs):
            outputs = {}
            for name, fn in (("ours", run_ours), ("diffusers", run_diffusers), ("pictures", run_pictures)):
                start = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - start)
            difference = max(difference, float(np.abs(outputs["ours"] - outputs["diffusers"]).max()))
    finally:
        pipe.restore()
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"model: tiny UNet2D, {args.frames} frames {size}x{size}, {args.steps} DDIM steps, CFG, {args.runs} runs, "
          f"{args.threads} threads")
    print(f"vidbooth median {median['ours']:.3f} s, diffusers median {median['diffusers']:.3f} s, "
          f"{args.frames} independent pictures {median['pictures']:.3f} s")
    print(f"time ratio vidbooth/diffusers: {median['ours'] / median['diffusers']:.3f} (target <= 1.0)")
    print(f"time ratio vidbooth/independent pictures: {median['ours'] / median['pictures']:.3f} "
          f"(the first frame alone for {i0} more step{'s' if i0 > 1 else ''}; keys and values of one frame, "
          f"not {args.frames})")
    print(f"max abs difference: {difference:.2e} (target < 1e-4)")


if __name__ == "__main__":
    main()
