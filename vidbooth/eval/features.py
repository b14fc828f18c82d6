"""Image and text embeddings for the metrics, from models loaded with transformers.

`load_clip` and `load_dino` take a local folder (anything written by `save_pretrained`) or a hub id and go
through `from_pretrained`, so tiny test models and real ones share this code. A model that cannot be had
(folder missing, hub id not cached while offline) raises `ModelUnavailable`; the evaluator then reports its
metrics as unavailable and runs the others.

Preprocessing is written here with PIL and numpy (no torchvision):
- CLIP: resize the shorter side to the model's image size (bicubic), centre crop, CLIP mean/std; the same
  pixels as transformers' CLIPImageProcessor.
- DINO: resize the shorter side to 256/224 of the model's image size (bicubic), centre crop, ImageNet mean/std;
  torchvision's Resize(256) + CenterCrop(224) + Normalize, as in DINO's evaluation.

- nano (the shipped small base model, `--clip-model nano`): its `image_encoder` (`CLIPVisionModelWithProjection`)
  with the resize, crop, mean and std of its own `preprocessor_config.json`. It is an image embedder only: nano's
  text tower has no projection into the image space, so there is no text-image score with it.

Another family plugs in by implementing `ImageEmbedder` / `ImageTextEmbedder`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from vidbooth.data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from vidbooth.errors import not_the_inputs_fault
from vidbooth.fileio import expand_user

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_RESIZE_RATIO = 256 / 224
HUB_PROBE_TIMEOUT_S = 3.0
NANO_NAME = "nano"
NANO_DESCRIPTION = "nano image tower (not OpenAI CLIP)"
NANO_NO_TEXT_REASON = (
    "nano's text tower (CLIPTextModel) has no projection into its image embedding space, so no text-image "
    "score can be computed with nano: use --clip-model with a CLIP model for CLIP-T"
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""What a hub id looks like ('openai/clip-vit-base-patch32'); anything else that is not a folder is a missing folder."""


class ModelUnavailable(Exception):
    """A feature model could not be loaded; the message says why."""


class ImageEmbedder(Protocol):
    description: dict[str, Any]

    def image_embeds(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 embeddings of N (H, W, 3) uint8 RGB images (sizes may differ)."""
        ...


class ImageTextEmbedder(ImageEmbedder, Protocol):
    def text_embeds(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 embeddings of N prompts, in the same space as `image_embeds`."""
        ...


def floor_half(excess: int) -> int:
    """Centre-crop offset as transformers' CLIPImageProcessor computes it."""
    return excess // 2


def round_half(excess: int) -> int:
    """Centre-crop offset as torchvision's CenterCrop (DINO's evaluation transform) computes it."""
    return int(round(excess / 2.0))


def preprocess(
    images: Sequence[np.ndarray],
    resize_to: int,
    crop_to: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_offset: Callable[[int], int],
) -> np.ndarray:
    """(N, 3, crop_to, crop_to) float32: shorter side to `resize_to` (bicubic), centre crop, normalise."""
    batch = [_resize_and_crop(Image.fromarray(np.asarray(i)), resize_to, crop_to, crop_offset) for i in images]
    pixels = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in batch])  # (N, H, W, 3)
    pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def _resize_and_crop(
    image: Image.Image, resize_to: int, crop_to: int, crop_offset: Callable[[int], int]
) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    long_resized = int(resize_to * long / short)
    size = (resize_to, long_resized) if width <= height else (long_resized, resize_to)
    image = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    left, top = crop_offset(size[0] - crop_to), crop_offset(size[1] - crop_to)
    return image.crop((left, top, left + crop_to, top + crop_to))


@dataclass
class ClipEmbedder:
    """CLIP image and text towers with their projections (`CLIPModel`)."""

    model: Any
    tokenizer: Any
    description: dict[str, Any]
    device: str = "cpu"
    batch_size: int = 16

    def image_embeds(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return _embed_in_batches(images, self.batch_size, self._image_features)

    def text_embeds(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        max_length = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            output = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
        return _projected(output)

    def _image_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        size = self.model.config.vision_config.image_size
        pixels = preprocess(images, size, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, floor_half)
        with torch.inference_mode():
            output = self.model.get_image_features(pixel_values=torch.from_numpy(pixels).to(self.device))
        return _projected(output)


@dataclass
class DinoEmbedder:
    """A DINO ViT (`ViTModel`) or DINOv2 (`Dinov2Model`); the embedding is the final CLS token."""

    model: Any
    description: dict[str, Any]
    device: str = "cpu"
    batch_size: int = 16

    def image_embeds(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return _embed_in_batches(images, self.batch_size, self._cls_tokens)

    def _cls_tokens(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        crop = self.model.config.image_size
        pixels = preprocess(images, round(crop * DINO_RESIZE_RATIO), crop, IMAGENET_MEAN, IMAGENET_STD, round_half)
        with torch.inference_mode():
            hidden = self.model(pixel_values=torch.from_numpy(pixels).to(self.device)).last_hidden_state
        return hidden[:, 0].float().cpu().numpy()


@dataclass
class NanoImageEmbedder:
    """nano's image tower (`CLIPVisionModelWithProjection`): projected, unit-normalised image embeddings."""

    model: Any
    resize_to: int
    crop_to: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: dict[str, Any]
    device: str = "cpu"
    batch_size: int = 16

    def image_embeds(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return _embed_in_batches(images, self.batch_size, self._embeds)

    def _embeds(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        pixels = preprocess(images, self.resize_to, self.crop_to, self.mean, self.std, floor_half)
        with torch.inference_mode():
            embeds = self.model(pixel_values=torch.from_numpy(pixels).to(self.device)).image_embeds
        embeds = embeds.float().cpu().numpy()
        return embeds / np.maximum(np.linalg.norm(embeds, axis=-1, keepdims=True), 1e-12)


def is_nano(name: str | None) -> bool:
    """Whether `--clip-model` names the shipped nano model."""
    return str(name or "").strip().lower() == NANO_NAME


def load_nano_image(device: str = "auto", batch_size: int = 16) -> NanoImageEmbedder:
    import json

    import torch
    from transformers import CLIPVisionModelWithProjection

    from vidbooth.nano import PACKAGED

    folder = PACKAGED / "image_encoder"
    if not (folder / "config.json").is_file():
        raise ModelUnavailable(f"the packaged nano model's image_encoder is missing from {folder}: reinstall vidbooth")
    try:
        settings = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
        size = settings.get("size", {})
        resize_to = int(size["shortest_edge"] if isinstance(size, dict) else size)
        crop = settings.get("crop_size", resize_to)
        crop_to = int(crop["height"] if isinstance(crop, dict) else crop)
        mean = tuple(float(v) for v in settings.get("image_mean", OPENAI_CLIP_MEAN))
        std = tuple(float(v) for v in settings.get("image_std", OPENAI_CLIP_STD))
        with _quiet_transformers():
            model = CLIPVisionModelWithProjection.from_pretrained(str(folder), dtype=torch.float32)
    except Exception as exc:  # a damaged package: bad JSON, missing keys, unreadable weights
        not_the_inputs_fault(exc)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(f"cannot load nano's image tower from {folder} ({reason}): reinstall vidbooth") from exc
    device = _resolve_device(device)
    description = _describe(model, NANO_NAME) | {
        "model": NANO_DESCRIPTION,
        "path": str(folder),
        "preprocessing": {"resize": resize_to, "crop": crop_to, "mean": list(mean), "std": list(std)},
    }
    return NanoImageEmbedder(model.eval().to(device), resize_to, crop_to, mean, std, description, device, batch_size)


def _embed_in_batches(images: Sequence[np.ndarray], batch_size: int, embed) -> np.ndarray:
    chunks = [embed(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    return np.concatenate(chunks).astype(np.float32)


def _projected(output: Any) -> np.ndarray:
    """transformers 4 returns the projected features; transformers 5 returns them as `pooler_output`."""
    features = output if hasattr(output, "float") else output.pooler_output
    return features.float().cpu().numpy()


def load_clip(name_or_path: str, device: str = "auto", batch_size: int = 16) -> ClipEmbedder:
    from transformers import AutoTokenizer, CLIPModel

    from vidbooth.reporting import TOKENIZER_NOISE, native_lines_dropped

    load = _pretrained_loader(name_or_path, "--clip-model")
    model = load(CLIPModel, "a CLIP model")
    with native_lines_dropped(TOKENIZER_NOISE):
        tokenizer = load(AutoTokenizer, "a CLIP tokenizer")
    device = _resolve_device(device)
    return ClipEmbedder(model.eval().to(device), tokenizer, _describe(model, name_or_path), device, batch_size)


DEFAULT_DINO_MODEL = "facebook/dino-vits16"
"""The DINO of DreamVideo's metric script (DINO-I)."""


def load_dino(name_or_path: str, device: str = "auto", batch_size: int = 16) -> DinoEmbedder:
    from transformers import AutoConfig, Dinov2Model, ViTModel

    load = _pretrained_loader(name_or_path, "--dino-model")
    model_type = load(AutoConfig, "a model config").model_type
    if model_type == "vit":
        model = load(ViTModel, "a DINO ViT", add_pooling_layer=False)
    elif model_type == "dinov2":
        model = load(Dinov2Model, "a DINOv2 model")
    else:
        raise ModelUnavailable(
            f"'{name_or_path}' is a '{model_type}' model, not a DINO ViT or DINOv2: "
            "pass --dino-model <local folder> holding facebook/dino-vits16 or a DINOv2 model"
        )
    device = _resolve_device(device)
    return DinoEmbedder(model.eval().to(device), _describe(model, name_or_path), device, batch_size)


def _resolve_device(name: str) -> str:
    """`--device` as the embedders take it: 'cpu', 'cuda' or 'cuda:N', checked as training and generate check it."""
    from vidbooth.device import resolve_device

    return str(resolve_device(name))


def _pretrained_loader(name_or_path: str, flag: str) -> Callable[..., Any]:
    """`load(cls, what, **kwargs)`: `cls.from_pretrained` from where `name_or_path` can be had, or ModelUnavailable."""
    from vidbooth import reporting

    source, options = _locate(name_or_path, flag)
    to_download = not options and not Path(source).is_dir()  # a hub id in no cache
    said = False  # a model's parts (config, weights, tokenizer) are loaded one by one: its download is said once

    def load(cls: Any, what: str, **kwargs: Any) -> Any:
        nonlocal said
        download = reporting.downloading(source, say=not said) if to_download else contextlib.nullcontext()
        said = True
        try:
            with _quiet_transformers(), download:
                return cls.from_pretrained(source, **options, **kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for a bad or partial folder
            not_the_inputs_fault(exc)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            message = f"cannot load {what} from '{name_or_path}' ({reason}): pass {flag} <local folder>"
            raise ModelUnavailable(message) from exc

    return load


def _locate(name_or_path: str, flag: str) -> tuple[str, dict[str, Any]]:
    """Where to load from and with which `from_pretrained` options, without waiting on a dead network."""
    path = expand_user(name_or_path)
    fix = f"pass {flag} <local folder>" + (f" ({flag} nano for videos of nano)" if flag == "--clip-model" else "")
    if path.is_dir():
        return str(path), {}
    if not HUB_ID.match(name_or_path):
        raise ModelUnavailable(f"folder '{name_or_path}' not found: {fix}")
    if _in_hub_cache(name_or_path):
        return name_or_path, {"local_files_only": True}
    from huggingface_hub import constants

    if _offline():
        raise ModelUnavailable(f"'{name_or_path}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set: {fix}")
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelUnavailable(
            f"'{name_or_path}' is not in the Hugging Face cache and {constants.ENDPOINT} cannot be reached: {fix}"
        )
    return name_or_path, {}


def on_this_machine(name_or_path: str) -> bool:
    """Whether model `name_or_path` loads with no network: a local folder, or a hub id in the Hugging Face cache."""
    if expand_user(name_or_path).is_dir():
        return True
    return bool(HUB_ID.match(name_or_path)) and _in_hub_cache(name_or_path)


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as set in the environment since."""
    from huggingface_hub import constants

    from_environment = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or from_environment


def _in_hub_cache(repo_id: str) -> bool:
    return _cached_revision(repo_id) is not None


def _cached_revision(repo_id: str) -> str | None:
    """The commit of the cached snapshot of hub model `repo_id`, or None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config_path = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(config_path).parent.name if isinstance(config_path, str) else None


def _hub_reachable(endpoint: str) -> bool:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load progress bars and its load reports (a DINO with a pooler it does not use had
    printed a 'LOAD REPORT' table, with colour codes, into a log); vidbooth shows its own progress and errors."""
    from transformers.utils import logging

    was_enabled, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if was_enabled:
            logging.enable_progress_bar()


def _describe(model: Any, name_or_path: str) -> dict[str, Any]:
    import transformers

    config = model.config
    return {
        "name": name_or_path,
        "class": type(model).__name__,
        "revision": None
        if is_nano(name_or_path) or expand_user(name_or_path).is_dir()
        else _cached_revision(name_or_path),
        "saved_with_transformers": getattr(config, "transformers_version", None),
        "loaded_with_transformers": transformers.__version__,
    }

