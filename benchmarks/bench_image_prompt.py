"""What an image prompt costs at generation: nano with its shipped image-prompt model against nano alone.

The image prompt adds, per denoising step, one UNet pass over the photo's latent (one frame, batch doubled by
guidance) and, in every spatial self-attention, an attention from the frames to the photo's features. Runs of
each are interleaved in one process; prints the median time ratio (image prompt / plain, same steps and frames;
expected about 1 + 1/frames plus the extra attention) and the ratio with the fine path off (tokens only).

    python benchmarks/bench_image_prompt.py [--runs 5] [--steps 10] [--frames 8] [--num-videos 1] [--threads 1]

With --num-videos N the videos are sampled in one batch, as `generate --num-videos N` does; the photo's pass runs
once for all of them (its share of the time falls as N grows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--num-videos", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vidbooth.adapters.image_prompt import clear_references, set_injection_scale
    from vidbooth.engine.backbone import NANO, load_backbone
    from vidbooth.engine.image_prompt import OWN_IMAGE_PROMPT_MODEL, load_image_prompt_model, prepare_image_prompt
    from vidbooth.engine.sampling import sample_video
    from vidbooth.nano.world import Sprite, render_photos

    os.environ["VIDBOOTH_QUIET"] = "1"
    backbone = load_backbone("nano", device="cpu")
    model = load_image_prompt_model(backbone, NANO / OWN_IMAGE_PROMPT_MODEL)
    photo = render_photos(Sprite("circle", "red", "striped"), 1, 64)[0]
    prompt = "a sprite moving left"
    condition = prepare_image_prompt(model, photo, prompt, torch.Generator().manual_seed(1), num_videos=args.num_videos)

    def run(image_prompt: bool, scale: float = 1.0):
        set_injection_scale(backbone.unet, scale)
        extra = dict(prompt_embeds=condition.prompt_embeds, before_unet=condition.before_unet) if image_prompt else {}
        started = time.perf_counter()
        sample_video(backbone, [prompt] * args.num_videos, num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=2.0,
                     generator=torch.Generator().manual_seed(0), output_type="latent", **extra)
        clear_references(backbone.unet)
        return time.perf_counter() - started

    run(False), run(True)  # warm-up
    times = {"plain": [], "image prompt": [], "tokens only": []}
    for _ in range(args.runs):
        times["plain"].append(run(False))
        times["image prompt"].append(run(True))
        times["tokens only"].append(run(True, 0.0))
    plain = statistics.median(times["plain"])
    print(f"nano, {args.num_videos} video(s) of {args.frames} frames, {args.steps} steps, guidance 2, "
          f"{torch.get_num_threads()} threads, {args.runs} runs each")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>13}: median {median:.3f} s, ratio to plain {median / plain:.2f}")


if __name__ == "__main__":
    main()
