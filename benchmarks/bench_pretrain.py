"""nano pretraining speed (clips/s of each stage's training step) and the shipped base's probe scores.

Usage: python benchmarks/bench_pretrain.py [--prompts 50] [--inference-steps 10] [--guidance 4] [--repeats 3]
                                           [--threads 1]
Each stage's speed comes with the share of its step spent making the batch in the procedural world (the rest is
the model's forward, backward and AdamW). The probe part generates the held-out prompts (the split's validation
pairs) with `--base nano`, reads colour, shape and motion back with the world probe, and gives each score as a
multiple of chance (one guess among the world's colours, shapes, motions or linear directions).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def stage_speeds(repeats: int) -> dict[str, tuple[float, float]]:
    """Per stage, at the recipe's batch sizes: clips per second of one training step (batch, forward, backward,
    AdamW), and the fraction of the step's time spent sampling the batch from the world."""
    from diffusers import DDPMScheduler

    from vidbooth.config import load_config
    from vidbooth.config.pretrain import PretrainConfig
    from vidbooth.nano import pretrain as nano
    from vidbooth.nano.model import build_clip, build_unet, build_vae, scheduler_config
    from vidbooth.nano.world import make_split, sample_pretraining_batch

    cfg = load_config(PretrainConfig, "nano/pretrain")
    arch, split = cfg.arch, make_split(cfg.split_seed)
    tokenizer = nano.load_tokenizer(cfg.tokenizer, arch.clip.max_length)
    vae, clip, unet = build_vae(arch), build_clip(arch, tokenizer), build_unet(arch)
    schedule = DDPMScheduler.from_config(scheduler_config())
    rng = np.random.default_rng(0)
    data_seconds = [0.0]

    def sample(batch):
        start = time.perf_counter()
        batch = sample_pretraining_batch(rng, batch, arch.num_frames, arch.size, split)
        data_seconds[0] += time.perf_counter() - start
        return batch

    def autoencoder(generator):
        videos, _ = sample(cfg.autoencoder.batch)
        return nano.autoencoder_loss(vae, nano.pixels(videos[:, :2]).flatten(0, 1), generator, 1e-6, 8.0)

    def clip_step(generator):
        videos, captions = sample(cfg.clip.batch)
        return nano.clip_loss(clip, tokenizer, nano.pixels(videos[:, 0]), captions, cfg.clip.caption_word_weight)

    def unet_step(generator):
        videos, captions = sample(cfg.unet.batch)
        latents, text = nano.encode_clips(vae, clip.text_model, tokenizer, videos, captions)
        return nano.unet_loss(unet, schedule, latents, text, generator, cfg.unet.motion_loss_weight)

    speeds = {}
    for name, model, batch, step in (
        ("autoencoder", vae, cfg.autoencoder.batch, autoencoder),
        ("clip", clip, cfg.clip.batch, clip_step),
        ("unet", torch.nn.ModuleDict({"unet": unet, "text": clip.text_model}), cfg.unet.batch, unet_step),
    ):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for index in range(repeats + 1):
            if index == 1:
                start, data_seconds[0] = time.perf_counter(), 0.0
            loss = step(torch.Generator().manual_seed(index))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - start
        speeds[name] = (batch * repeats / seconds, data_seconds[0] / seconds)
    return speeds


def shipped_scores(prompts: int, inference_steps: int, guidance: float) -> tuple[dict, dict]:
    from vidbooth.engine.backbone import NANO, load_backbone
    from vidbooth.nano.evaluation import eval_pairs, generate_for, score_videos
    from vidbooth.nano.world import make_split

    provenance = json.loads((NANO / "nano.json").read_text())
    backbone = load_backbone("nano", device="cpu")
    pairs = eval_pairs(make_split(provenance["split_seed"]), prompts)
    start = time.perf_counter()
    videos = generate_for(backbone, pairs, provenance["architecture"]["num_frames"], inference_steps, guidance)
    scores = score_videos(videos, pairs)
    scores["videos/s"] = len(pairs) / (time.perf_counter() - start)
    return provenance, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50, help="held-out prompts to generate and probe")
    parser.add_argument("--inference-steps", type=int, default=10, help="DDIM steps (10: as the docs' figures and "
                        "pretraining's probe, unet.eval_inference_steps)")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per stage")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("VIDBOOTH_QUIET", "1")  # no sampling progress bar between the tables
    from vidbooth.engine.backbone import quiet_libraries
    from vidbooth.nano.world import COLOURS, LINEAR_MOTIONS, MOTIONS, SHAPES

    quiet_libraries()

    print(f"training step speed ({args.threads} thread(s), recipe nano/pretrain)")
    for stage, (speed, data_share) in stage_speeds(args.repeats).items():
        print(f"  {stage:<12} {speed:8.2f} clips/s, {data_share:4.0%} of it making the batch")

    provenance, scores = shipped_scores(args.prompts, args.inference_steps, args.guidance)
    steps = ", ".join(f"{k} {v}" for k, v in provenance["steps"].items())
    print(f"\nshipped nano ({steps} steps; DDIM {args.inference_steps}, guidance {args.guidance})")
    read = ", ".join(f"{name} {scores[key]:.0%} ({scores[key] * choices:.1f}x chance)" for name, key, choices in (
        ("colour", "colour", len(COLOURS)), ("shape", "shape", len(SHAPES)), ("motion", "motion", len(MOTIONS)),
        ("direction (linear motions)", "direction", len(LINEAR_MOTIONS))))
    print(f"  {scores['prompts']} held-out prompts: {read}; {scores['videos/s']:.2f} videos/s")
    print("\ntraining curve (probe during pretraining, DDIM 10 steps)")
    print(f"  {'step':>6} {'min':>6} {'colour':>6} {'shape':>6} {'motion':>6} {'dir':>6}")
    for row in provenance["curve"]:
        print(f"  {row['unet_step']:>6} {row['unet_minutes']:>6.1f} {row['colour']:>6.0%} {row['shape']:>6.0%} "
              f"{row['motion']:>6.0%} {row['direction']:>6.0%}")


if __name__ == "__main__":
    main()
