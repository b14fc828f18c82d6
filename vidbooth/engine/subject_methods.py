"""The two subject-learning methods, as `vidbooth.engine.train.Method`s.

Both train on photo latents as 1-frame videos (B, C, 1, h, w), encoded once before training. Captions are
drawn per sample from the step's generator.
- `TextualInversionMethod`: only the placeholder rows train, so the text encoder runs every step on
  caption ids tokenised once. Optionally its loss is on the classifier-free-guided prediction.
- `IdentityAdapterMethod`: the text encoder is frozen, so caption embeddings are computed once; with
  prior preservation each step also denoises as many class images, weighted by `prior_weight`. Optionally
  its loss is on the guided prediction with the adapters in the conditional pass only.
"""

from __future__ import annotations

import torch
from torch import nn

from vidbooth.adapters.base import load_adapter_state_dict
from vidbooth.adapters.identity import KIND as IDENTITY_KIND
from vidbooth.adapters.identity import identity_parameters, identity_state_dict
from vidbooth.adapters.textual_inversion import PlaceholderEmbedding
from vidbooth.engine.objective import Guidance, HighNoise, denoising_loss, training_scheduler


def _pick(count: int, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(count, (batch,), generator=generator).to(device)


class TextualInversionMethod:
    """Learn the placeholder rows of `embedding` from photos captioned by `caption_ids` (T, L)."""

    def __init__(
        self,
        backbone,
        caption_ids: torch.Tensor,
        embedding: PlaceholderEmbedding,
        high_noise: HighNoise = HighNoise(),
        guidance: Guidance | None = None,
    ):
        self.backbone = backbone
        self.high_noise = high_noise
        self.guidance = guidance
        self.caption_ids = caption_ids
        self.embedding = embedding
        self.scheduler = training_scheduler(backbone.scheduler_config)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.embedding.rows]

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        latents = batch["latents"]  # (B, C, 1, h, w)
        ids = self.caption_ids[_pick(len(self.caption_ids), latents.shape[0], generator, self.caption_ids.device)]
        text = self.backbone.encode_ids(ids)  # (B, L, D), through the placeholder rows
        return denoising_loss(
            self.backbone, self.scheduler, latents, text, generator, self.high_noise, self.guidance
        ).mean()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rows": self.embedding.rows.detach()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.embedding.rows.copy_(state["rows"])


class IdentityAdapterMethod:
    """Train the injected identity adapters; optionally keep class prompts in place with class images."""

    def __init__(
        self,
        backbone,
        caption_embeds: torch.Tensor,
        class_latents: torch.Tensor | None = None,
        class_embeds: torch.Tensor | None = None,
        prior_weight: float = 1.0,
        high_noise: HighNoise = HighNoise(),
        guidance: Guidance | None = None,
    ):
        self.backbone = backbone
        self.high_noise = high_noise
        self.guidance = guidance
        self.caption_embeds = caption_embeds  # (T, L, D), computed once
        self.class_latents = class_latents  # (Nc, C, 1, h, w) or None
        self.class_embeds = class_embeds  # (1, L, D) or None
        self.prior_weight = prior_weight
        self.scheduler = training_scheduler(backbone.scheduler_config)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return identity_parameters(self.backbone.unet)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        latents = batch["latents"]  # (B, C, 1, h, w)
        b, device = latents.shape[0], latents.device
        text = self.caption_embeds[_pick(len(self.caption_embeds), b, generator, device)]  # (B, L, D)
        if self.class_latents is None:
            losses = denoising_loss(
                self.backbone, self.scheduler, latents, text, generator, self.high_noise, self.guidance
            )
            return losses.mean()
        class_latents = self.class_latents[_pick(len(self.class_latents), b, generator, device)]
        latents = torch.cat([latents, class_latents])  # (2B, C, 1, h, w): one UNet call for both terms
        text = torch.cat([text, self.class_embeds.expand(b, -1, -1)])
        per_sample = denoising_loss(
            self.backbone, self.scheduler, latents, text, generator, self.high_noise, self.guidance
        )  # (2B,)
        return per_sample[:b].mean() + self.prior_weight * per_sample[b:].mean()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return identity_state_dict(self.backbone.unet)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state_dict(self.backbone.unet, IDENTITY_KIND, state, "checkpoint")
