"""The diffusion training objective shared by the training methods: MSE of the model's prediction at random timesteps."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vidbooth.errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def training_scheduler(scheduler_config: dict):
    """The DDPM noise schedule of the model (its scheduler config), used to noise training latents."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(scheduler_config)
    if scheduler.config.prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"this model predicts '{scheduler.config.prediction_type}', which training does not support: "
            f"use a model that predicts {' or '.join(PREDICTION_TYPES)}"
        )
    return scheduler


def sample_timesteps(
    batch: int, total: int, generator: torch.Generator, high_noise_fraction: float = 0.0, high_noise_from: int = 0
) -> torch.Tensor:
    """`batch` timesteps uniform in [0, total), except a `high_noise_fraction` of them uniform in
    [high_noise_from, total): the noise levels at which a video's layout and motion are decided."""
    timesteps = torch.randint(0, total, (batch,), generator=generator)
    if high_noise_fraction:
        high = torch.randint(high_noise_from, total, (batch,), generator=generator)
        timesteps = torch.where(torch.rand(batch, generator=generator) < high_noise_fraction, high, timesteps)
    return timesteps


@dataclass(frozen=True)
class HighNoise:
    """Which share of training timesteps to draw from [start, T) instead of [0, T) (`TrainConfig.high_noise_*`)."""

    fraction: float = 0.0
    start: int = 0

    @classmethod
    def of(cls, train_config) -> HighNoise:
        return cls(train_config.high_noise_fraction, train_config.high_noise_from)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance inside the loss: the prediction trained is uncond + scale * (cond - uncond),
    where uncond, the prediction for `negative_embeds` (1, L, D), is computed without gradients and inside
    `unconditional_context()` (e.g. with the adapters being trained switched off)."""

    scale: float
    negative_embeds: torch.Tensor
    unconditional_context: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext)


def denoising_loss(
    backbone,
    scheduler,
    latents: torch.Tensor,
    text_embeds: torch.Tensor,
    generator: torch.Generator,
    high_noise: HighNoise = HighNoise(),
    guidance: Guidance | None = None,
):
    """Per-sample MSE (B,) between the UNet's prediction and its target, for latents (B, C, F, h, w).

    Noise and timesteps (uniform but for the `high_noise` share) are drawn on the CPU from `generator`
    (reproducible on any device). The target is what the model predicts: the noise ('epsilon'), the velocity
    ('v_prediction') or the clean latents ('sample'). With `guidance`, the prediction is the guided one that
    sampling at that scale would use.
    """
    batch = latents.shape[0]
    # noised and targeted in fp32: in half precision 1 - alpha_bar rounds away near t = 0 (no noise in bf16 at
    # nano's first 10 timesteps); the UNet gets its input in its own precision
    latents = latents.float()
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)  # (B, C, F, h, w)
    total = scheduler.config.num_train_timesteps
    if high_noise.fraction and not 0 <= high_noise.start < total:
        raise UserError(
            f"train.high_noise_from must be below the model's {total} training timesteps, got {high_noise.start}"
        )
    timesteps = sample_timesteps(batch, total, generator, high_noise.fraction, high_noise.start)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "sample":
        target = latents
    else:
        target = scheduler.get_velocity(latents, noise, timesteps)
    noisy = noisy.to(backbone.dtype)
    prediction = backbone.unet_forward(noisy, timesteps, text_embeds)
    if guidance is not None:
        with torch.no_grad(), guidance.unconditional_context():
            negative = guidance.negative_embeds.expand(batch, -1, -1)
            unconditional = backbone.unet_forward(noisy, timesteps, negative)
        prediction = unconditional + guidance.scale * (prediction - unconditional)
    return (prediction.float() - target).pow(2).flatten(1).mean(1)
