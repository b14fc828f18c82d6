"""The embedding metrics of DreamVideo and VideoBooth, each a plain function over (N, D) embedding arrays.

Every embedding is L2-normalised first, so each metric is a mean of cosine similarities in [-1, 1].
"""

from __future__ import annotations

import numpy as np


def normalise(embeds: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (as float64)."""
    embeds = np.atleast_2d(np.asarray(embeds, dtype=np.float64))
    return embeds / np.maximum(np.linalg.norm(embeds, axis=-1, keepdims=True), 1e-12)


def clip_t(frame_embeds: np.ndarray, text_embed: np.ndarray) -> float:
    """CLIP-T: mean over frames of cos(frame CLIP image embedding, prompt CLIP text embedding)."""
    return float(np.mean(normalise(frame_embeds) @ normalise(text_embed)[0]))


def reference_similarity(frame_embeds: np.ndarray, reference_embeds: np.ndarray) -> float:
    """CLIP-I (CLIP embeddings) or DINO-I (DINO embeddings): mean cosine over every (frame, reference) pair."""
    return float(np.mean(normalise(frame_embeds) @ normalise(reference_embeds).T))


def temporal_consistency(frame_embeds: np.ndarray) -> float:
    """T.Cons: mean cosine between the CLIP image embeddings of consecutive frames (needs 2+ frames)."""
    frames = normalise(frame_embeds)
    if len(frames) < 2:
        raise ValueError("temporal consistency needs at least 2 frames")
    return float(np.mean(np.sum(frames[:-1] * frames[1:], axis=-1)))
