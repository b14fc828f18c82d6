"""Does a base's prompt reach the sprite's path? Two figures per direction word, on nano by default.

Usage: python benchmarks/bench_motion_words.py [--base nano] [--noises 16]

1. Text tower: how far the hidden states of "a red striped square moving <word>" lie from those of the
   nearest other direction word, relative to their norm, at the motion word and at the end-of-text token.
   The UNet cross-attends to these states, so directions the tower maps to the same states look alike.
2. UNet at the top of the schedule (the first DDIM step, where nano decides a path): the clean-latent
   prediction averaged over `--noises` noise draws, decoded and read by the world probe, for each word.
   With the noise averaged out, a base that follows its motion words moves the sprite each word's way; the
   ratio compares how much the average path changes between words with how much one noise draw moves it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

WORDS = ("left", "right", "up", "down")


def main() -> None:
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.sampling import to_numpy_frames, to_uint8
    from vidbooth.nano.probe import probe_video

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="nano")
    parser.add_argument("--noises", type=int, default=16)
    args = parser.parse_args()
    if args.noises < 2:
        parser.error("--noises must be at least 2: the change between noise draws needs two of them")
    backbone = load_backbone(args.base, device="cpu", precision="fp32")
    prompts = [f"a red striped square moving {word}" for word in WORDS]
    ids = backbone.tokenize(prompts)
    word_at = int((ids[0] != ids[1]).nonzero()[0])  # the first token where "left" and "right" differ
    end_at = int((ids[0] == backbone.tokenizer.eos_token_id).nonzero()[0])
    with torch.no_grad():
        hidden = backbone.encode_ids(ids).float()
    print(f"text tower: |h(word) - h(nearest other word)| / |h(word)| at the motion word (token {word_at}) "
          f"and at the end of text (token {end_at})")
    for index, word in enumerate(WORDS):
        gaps = []
        for at in (word_at, end_at):
            others = [hidden[index, at] - hidden[other, at] for other in range(len(WORDS)) if other != index]
            gaps.append(min(float(gap.norm()) for gap in others) / float(hidden[index, at].norm()))
        print(f"  {word:>6}: {gaps[0]:.3f}  {gaps[1]:.3f}")

    frames = 8
    size = backbone.default_size // backbone.vae_scale_factor
    shape = (args.noises, backbone.latent_channels, frames, size, size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    top = backbone.scheduler_config["num_train_timesteps"] - 1
    predictions = []
    with torch.no_grad():
        for states in hidden:
            text = states[None].expand(args.noises, -1, -1).to(backbone.dtype)
            timestep = torch.full((args.noises,), top)
            predictions.append(backbone.unet_forward(noise.to(backbone.dtype), timestep, text).float())
    predictions = torch.stack(predictions)  # (words, noises, C, F, h, w)
    means = predictions.mean(dim=1)
    between_words = (means - means.mean(dim=0)).pow(2).mean().sqrt()
    between_noises = (predictions - means[:, None]).pow(2).mean().sqrt()
    print(f"UNet at t={top}, noise-averaged clean latents: change between words / change between noise draws "
          f"= {float(between_words / between_noises):.3f}")
    videos = to_uint8(to_numpy_frames(backbone.decode_latents(means.to(backbone.dtype))))  # (words, F, H, W, 3)
    for word, video in zip(WORDS, videos):
        probed = probe_video(video)
        shift = np.nan_to_num(probed.centroids[-1] - probed.centroids[0])
        print(f"  {word:>6}: probe reads '{probed.motion}', centroid moves ({shift[0]:+.1f}, {shift[1]:+.1f}) px "
              f"over {frames} frames")


if __name__ == "__main__":
    main()
