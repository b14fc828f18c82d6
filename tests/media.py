"""Tiny CLIP/ViT models saved to disk and synthetic media with known content, for the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_VIT = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
)


def save_tiny_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from vidbooth.engine.tiny import tiny_text_config, tiny_tokenizer_files

    tiny_tokenizer_files(folder)
    text = tiny_text_config(len(json.loads((folder / "vocab.json").read_text())), dim=16, layers=1)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=TINY_VIT, projection_dim=16)).save_pretrained(folder)
    return folder


def save_tiny_vit(folder: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(**TINY_VIT)
    torch.manual_seed(0)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def smooth_image(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A random but spatially smooth RGB image, so that resizing keeps its content."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))


def moving_square(
    direction=(1, 0), frames=12, size=64, square=16, start=(10, 24), speed=2, seed=0, background=40
) -> np.ndarray:
    """(F, size, size, 3) uint8: a randomly textured square sliding `speed` px per frame along `direction`."""
    rng = np.random.default_rng(seed)
    texture = np.kron(rng.integers(0, 256, (square // 4, square // 4, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    video = np.full((frames, size, size, 3), background, dtype=np.uint8)
    for i, frame in enumerate(video):
        x, y = start[0] + direction[0] * speed * i, start[1] + direction[1] * speed * i
        frame[y : y + square, x : x + square] = texture
    return video
