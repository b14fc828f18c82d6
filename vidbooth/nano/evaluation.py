"""Score a text-to-video backbone on the nano world: generate held-out prompts and read them back with the probe."""

from __future__ import annotations

import numpy as np
import torch

from vidbooth.nano.probe import probe_video, score_against_caption
from vidbooth.nano.world import LINEAR_MOTIONS, Motion, Split, Sprite, caption

CHUNK = 25


def eval_pairs(split: Split, count: int) -> list[tuple[Sprite, Motion]]:
    """`count` of the split's validation pairs (known sprites and motions in untrained combinations), spread evenly."""
    pairs = split.validation_pairs
    indices = np.linspace(0, len(pairs) - 1, min(count, len(pairs))).round().astype(int)
    return [pairs[i] for i in indices]


def score_videos(videos, pairs: list[tuple[Sprite, Motion]]) -> dict[str, float]:
    """Fractions of videos whose probed colour, shape and motion match; `direction`: motion over linear motions only."""
    scores = [score_against_caption(probe_video(video), pair) for video, pair in zip(videos, pairs)]
    linear = [s["motion_correct"] for s, (_, motion) in zip(scores, pairs) if motion.name in LINEAR_MOTIONS]
    return {
        "colour": float(np.mean([s["colour_correct"] for s in scores])),
        "shape": float(np.mean([s["shape_correct"] for s in scores])),
        "motion": float(np.mean([s["motion_correct"] for s in scores])),
        "direction": float(np.mean(linear)) if linear else float("nan"),
        "prompts": len(scores),
    }


def generate_for(backbone, pairs, num_frames: int, steps: int, guidance_scale: float, seed: int = 0) -> np.ndarray:
    """(N, F, H, W, 3) uint8 videos, one per pair's caption, with fixed seeded noise."""
    from vidbooth.engine.sampling import sample_video

    videos = []
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(pairs), CHUNK):
        prompts = [caption(sprite, motion) for sprite, motion in pairs[start : start + CHUNK]]
        end = min(start + CHUNK, len(pairs))
        videos.append(
            sample_video(
                backbone,
                prompts,
                num_frames=num_frames,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generator,
                description=f"probe: sampling prompts {start + 1}-{end} of {len(pairs)}",
            )
        )
    return np.concatenate(videos)


def probe_backbone(backbone, pairs, num_frames: int, steps: int, guidance_scale: float, seed: int = 0) -> dict:
    videos = generate_for(backbone, pairs, num_frames, steps, guidance_scale, seed)
    return score_videos(videos, pairs)
