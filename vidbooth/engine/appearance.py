"""Appearance embeddings `e` for the motion adapter's guidance: one vector per video frame.

The encoder is chosen by the recipe key `appearance.encoder`:
- empty (the default): the base model's own image encoder when its folder has one (`image_encoder/`, as the
  packaged nano model does), else the VAE fallback below;
- a CLIP vision model (`CLIPVisionModelWithProjection`) from a local folder or a hub id, e.g.
  'openai/clip-vit-base-patch32': `e` is its projected image embedding. Preprocessing is ours (no
  torchvision): resize the short side to the model's image size (bicubic, antialiased), centre crop,
  normalise with the mean/std of the folder's `preprocessor_config.json` (OpenAI CLIP's by default);
- 'tiny-clip': a tiny random CLIP vision model for the built-in tiny backbones; it is built from a config,
  saved under the cache folder and loaded back through the same loader as real models;
- 'vae': the fallback, the backbone's own VAE latent of the frame average-pooled to a 4x4 grid and
  flattened (latent_channels * 16 values). It carries colour and coarse layout, which is the appearance
  the guidance must explain, and needs no extra model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from vidbooth.data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from vidbooth.engine.backbone import Backbone, cache_dir, resolve_base
from vidbooth.engine.tiny import save_transformers_model
from vidbooth.errors import UserError
from vidbooth.fileio import expand_user, folder_beside, publish_folder

TINY_CLIP = "tiny-clip"
VAE = "vae"
VAE_GRID = 4
BATCH = 16


class AppearanceEncoder(Protocol):
    name: str
    dim: int

    def embed(self, frames: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 frames -> (N, dim) float32 embeddings on the backbone's device."""
        ...


class ClipImageEncoder:
    def __init__(self, name: str, model, mean: tuple[float, ...], std: tuple[float, ...]):
        self.name = name
        self.model = model
        self.dim = int(model.config.projection_dim)
        self.image_size = int(model.config.image_size)
        self.mean_std = (tuple(mean), tuple(std))

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised pixels (N, 3, S, S), exactly as CLIP's image processor (eval's)."""
        from vidbooth.eval.features import floor_half, preprocess

        pixels = preprocess(frames, self.image_size, self.image_size, self.mean_std[0], self.mean_std[1], floor_half)
        return torch.from_numpy(pixels).to(next(self.model.parameters()).device)

    @torch.no_grad()
    def embed(self, frames: np.ndarray) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        chunks = [
            self.model(pixel_values=self.preprocess(frames[i : i + BATCH]).to(dtype)).image_embeds.float()
            for i in range(0, len(frames), BATCH)
        ]
        return torch.cat(chunks)  # (N, dim)


class VaeLatentEncoder:
    """Fallback: the frame's VAE latent mean, average-pooled to a VAE_GRID x VAE_GRID grid."""

    name = VAE

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.dim = int(backbone.vae.config.latent_channels) * VAE_GRID * VAE_GRID

    @torch.no_grad()
    def embed(self, frames: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W)
        chunks = []
        for i in range(0, len(pixels), BATCH):
            latents = self.backbone.encode_video(pixels[i : i + BATCH].unsqueeze(0))[0].transpose(0, 1)  # (n, C, h, w)
            chunks.append(F.adaptive_avg_pool2d(latents.float(), VAE_GRID).flatten(1))
        return torch.cat(chunks)  # (N, dim)


def load_appearance_encoder(encoder: str | None, backbone: Backbone, setting: str | None = "--image-encoder"
                            ) -> AppearanceEncoder:
    """The encoder named in the recipe, or the default for this backbone (see the module docstring); `setting`:
    the option that named it, for the errors (None: a file's record, which no option replaces)."""
    if encoder == VAE:
        return VaeLatentEncoder(backbone)
    if not encoder:
        own = Path(backbone.extras["folder"]) / "image_encoder"
        if not (own / "config.json").is_file():
            return VaeLatentEncoder(backbone)
        return _clip_encoder(f"{backbone.source}/image_encoder", own, backbone)
    folder = _tiny_clip_folder() if encoder == TINY_CLIP else _resolve_encoder(encoder, setting)
    return _clip_encoder(encoder, folder, backbone)


def _clip_encoder(name: str, folder: Path, backbone: Backbone) -> ClipImageEncoder:
    from transformers import CLIPVisionModelWithProjection

    try:
        config = _vision_config(Path(folder))
        model = CLIPVisionModelWithProjection.from_pretrained(folder, config=config, use_safetensors=True)
        mean, std = _normalisation(Path(folder))
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: weights of other shapes than the config's
        reason = str(exc).splitlines()[0]
        reason += " (only .safetensors weights are loaded)" if "safetensors" in str(exc) else ""
        raise UserError(f"cannot load the image encoder '{name}' as a CLIP vision model: {reason}") from exc
    dtype = backbone.dtype if backbone.device.type == "cuda" else torch.float32
    model.requires_grad_(False).eval().to(backbone.device, dtype)
    return ClipImageEncoder(name, model, mean, std)


def _vision_config(folder: Path):
    """The vision tower's config, also from a whole CLIP's folder (model_type 'clip', as openai/clip-vit-large-patch14
    ships), which keeps the projection width at its top level: transformers takes the tower's settings from its
    vision_config but leaves projection_dim at its default, and the projection's weights then fail to load."""
    from transformers import CLIPVisionConfig

    config = CLIPVisionConfig.from_pretrained(folder)
    whole = folder / "config.json"
    data = json.loads(whole.read_text()) if whole.is_file() else {}
    if data.get("model_type") == "clip" and "projection_dim" in data:
        config.projection_dim = data["projection_dim"]
    return config


def check_encoder(encoder: str | None, setting: str = "--image-encoder") -> None:
    """Before the base model loads: a UserError when a named image encoder (not the base's own, the VAE's or the
    built-in tiny CLIP) is neither a folder nor a downloaded hub id."""
    if encoder and encoder not in (VAE, TINY_CLIP):
        _resolve_encoder(encoder, setting)


def _resolve_encoder(encoder: str, setting: str | None) -> Path:
    try:
        return resolve_base(encoder, flag=setting)
    except UserError as exc:
        a_file = expand_user(encoder).is_file()
        fetched = not a_file and not str(exc).startswith("base model not found")
        problem = "is a file, not a folder" if a_file else f"not found ({exc})" if fetched else "not found"
        if setting is None:
            raise UserError(f"image encoder '{encoder}' {problem}") from exc
        others = f"'{TINY_CLIP}' or '{VAE}', or leave it empty for the base model's default"
        if fetched:  # the hub's error already says how to give a folder: not wrapped in "not found (...)" with more
            raise UserError(f"image encoder ({setting}): {exc}; or give {others}") from exc
        raise UserError(f"image encoder '{encoder}' ({setting}) {problem}: give a CLIP vision folder, a hub id "
                        f"already downloaded, {others}") from exc


def _normalisation(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image mean and std of the folder's preprocessor_config.json (OpenAI CLIP's without one); a ValueError
    for a file that is no JSON object or whose mean or std are not three numbers."""
    config = folder / "preprocessor_config.json"
    if not config.is_file():
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    data = json.loads(config.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{config.name} holds no JSON object")
    if "image_mean" not in data or "image_std" not in data:
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    values = data["image_mean"], data["image_std"]
    if not all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v) for v in values):
        raise ValueError(f"{config.name}: image_mean and image_std must be three numbers each")
    return tuple(map(float, values[0])), tuple(map(float, values[1]))


def build_tiny_clip_vision(seed: int = 0):
    """A 2-layer CLIP vision model on 32x32 images with 16-dim embeddings, seeded random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return CLIPVisionModelWithProjection(config)


def _tiny_clip_folder() -> Path:
    folder = cache_dir() / "builtin" / TINY_CLIP
    if (folder / "config.json").is_file():
        return folder
    with folder_beside(folder) as tmp:  # an interrupted save leaves nothing behind
        save_transformers_model(build_tiny_clip_vision(), tmp)
        publish_folder(tmp, folder)
    return folder
