"""VideoBooth's two image-prompt paths (`../shared/method.md` §5), as adapters on a frozen base.

- Coarse: `TokenMapper` maps the image prompt's image embedding (CLIP-style, one vector) to `num_tokens` token
  embeddings in the text encoder's output space; they replace the subject's word in the encoded prompt
  (`splice_tokens`).
- Fine: an `ImageInjection` beside every spatial self-attention layer. The image prompt's latent, noised to the
  step's timestep, goes through the UNet once (`capturing`); each layer keeps what entered it. In the video's pass
  every frame's queries then attend to those keys and values too:

      delta = W_up softmax(q(h) k(r)^T / sqrt(d)) v(r),   r = the layer's input in the image prompt's pass,

  added to the layer's output. q, k, v start as copies of the layer's projections and W_up at zero, so an injected
  model equals its base. (The paper appends the image prompt's keys and values to the first frame's in cross-frame
  attention; a separate attention with a zero-initialised output is that path's start-as-a-no-op form, which any
  attention backend and any base's own attention run unchanged around.)

Saved together as one safetensors file: the mapper's tensors under 'mapper.', the injections' under
'inject.<self-attention layer>.', the settings and the base's fingerprint in the metadata.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vidbooth.adapters.base import adapters_of, inject, remove

KIND = "image_prompt"


class TokenMapper(nn.Module):
    """Image embedding (B, image_dim) -> `num_tokens` text-space tokens (B, num_tokens, text_dim)."""

    def __init__(self, image_dim: int, text_dim: int, num_tokens: int = 1, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or 4 * text_dim
        self.num_tokens = num_tokens
        self.net = nn.Sequential(
            nn.Linear(image_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_tokens * text_dim)
        )
        self.norm = nn.LayerNorm(text_dim)  # the scale of the text encoder's (layer-normed) outputs

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.net(image_embeds.to(self.norm.weight.dtype)).unflatten(-1, (self.num_tokens, -1))
        return self.norm(tokens)


class ImageInjection(nn.Module):
    """Attention from a self-attention layer's input to that layer's input in the image prompt's UNet pass.

    `ParallelAdapter` calls it with the layer's input h (B * F, L, D) and adds what it returns. While `capturing`
    it keeps h as the reference and returns zeros (the image prompt's pass is the base's own); with no reference
    it returns zeros. References are (B, M, D), one per video, repeated over each video's frames.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        dim, heads = layer.to_q.in_features, layer.heads
        self.heads = heads
        self.to_q = nn.Linear(dim, layer.to_q.out_features, bias=False)
        self.to_k = nn.Linear(dim, layer.to_k.out_features, bias=False)
        self.to_v = nn.Linear(dim, layer.to_v.out_features, bias=False)
        with torch.no_grad():
            for mine, theirs in ((self.to_q, layer.to_q), (self.to_k, layer.to_k), (self.to_v, layer.to_v)):
                mine.weight.copy_(theirs.weight.float())
        self.up = nn.Linear(layer.to_v.out_features, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = 1.0
        self.enabled = True
        self.capturing = False
        self.reference: torch.Tensor | None = None
        self.conditional_only = True
        """The image prompt is a condition: classifier-free guidance's unconditional half does without it."""
        self.sample_weights: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.capturing:
            self.reference = h.detach()
            return torch.zeros_like(h)
        if self.reference is None or self.scale == 0:
            return torch.zeros_like(h)
        ref = self.reference.to(h.dtype)
        ref = ref.repeat_interleave(h.shape[0] // ref.shape[0], dim=0)  # one copy per frame of each video
        q, k, v = (
            x.unflatten(-1, (self.heads, -1)).transpose(1, 2) for x in (self.to_q(h), self.to_k(ref), self.to_v(ref))
        )  # (batch, heads, tokens, head width)
        # PyTorch's SDPA whatever --attention says: adapters use nothing of the attention layer (docs/attention.md)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        delta = self.up(attended) * self.scale
        if self.sample_weights is not None:
            w = self.sample_weights.to(delta).repeat_interleave(h.shape[0] // self.sample_weights.shape[0])
            delta = delta * w.view(-1, 1, 1)
        return delta


def inject_image_injection(unet: nn.Module, layers: dict[str, nn.Module]) -> list[str]:
    """Put a zero-initialised `ImageInjection` beside every layer in `layers`; returns their names."""
    return inject(unet, list(layers), KIND, lambda _name, layer: ImageInjection(layer))


def injections(unet: nn.Module) -> dict[str, ImageInjection]:
    return adapters_of(unet, KIND)  # type: ignore[return-value]


def remove_image_injection(unet: nn.Module) -> int:
    return remove(unet, KIND)


@contextlib.contextmanager
def capturing(unet: nn.Module) -> Iterator[None]:
    """Inside the block the injections keep their layers' inputs as references (and add nothing). The photo's pass
    is a conditional one: adapters that act on guidance's conditional half only (`sample_weights`) act on all of it."""
    layers = list(injections(unet).values())
    weighted = [m for m in unet.modules() if getattr(m, "sample_weights", None) is not None]
    weights = [m.sample_weights for m in weighted]
    for layer in layers:
        layer.capturing = True
    for module in weighted:
        module.sample_weights = None
    try:
        yield
    finally:
        for layer in layers:
            layer.capturing = False
        for module, w in zip(weighted, weights):
            module.sample_weights = w


def clear_references(unet: nn.Module) -> None:
    for layer in injections(unet).values():
        layer.reference = None


def set_injection_scale(unet: nn.Module, scale: float) -> None:
    for layer in injections(unet).values():
        layer.scale = float(scale)


def splice_tokens(text_embeds: torch.Tensor, spans: list[tuple[int, int]], tokens: torch.Tensor) -> torch.Tensor:
    """Encoded prompts (B, L, D) with each prompt's span [start, end) replaced by its tokens (B, N, D); the rest
    moves by N - (end - start) places and the result is cut, or padded with each prompt's last place, to L."""
    length = text_embeds.shape[1]
    rows = []
    for embeds, (start, end), own in zip(text_embeds, spans, tokens.to(text_embeds.dtype)):
        row = torch.cat([embeds[:start], own, embeds[end:]])
        if row.shape[0] < length:
            row = torch.cat([row, row[-1:].expand(length - row.shape[0], -1)])
        rows.append(row[:length])
    return torch.stack(rows)


def find_span(ids: list[int], word_ids: list[int]) -> tuple[int, int] | None:
    """Where `word_ids` first occur in `ids`, as [start, end); None when they do not."""
    n = len(word_ids)
    for start in range(len(ids) - n + 1):
        if ids[start : start + n] == word_ids:
            return start, start + n
    return None
