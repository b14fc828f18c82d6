"""Position channels: a UNet whose input has 3 channels more than its latents is given where each latent is.

Diffusers' UNet3DConditionModel has no positional embedding: the only place a pixel or a frame learns where it is
lies in the zero padding of its convolutions. nano's UNet (docs/nano.md) may instead take, after the latents,
three fixed maps: x across the width, y down the height and time along the frames, each from -1 to 1. Inpainting
UNets extend their input the same way (extra channels after the latents), so the weights stay a plain diffusers
folder; vidbooth appends the maps wherever it calls the UNet.
"""

from __future__ import annotations

import torch

from vidbooth.errors import UserError
from vidbooth.nano.arch import POSITION_CHANNELS


def position_maps(like: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, h, w) maps of x, y and frame position in [-1, 1], on `like`'s (B, C, F, h, w) device and dtype."""
    b, _, f, h, w = like.shape
    axes = [torch.linspace(-1.0, 1.0, n, device=like.device) if n > 1 else torch.zeros(1, device=like.device)
            for n in (f, h, w)]
    frame, y, x = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([x, y, frame]).to(like.dtype).expand(b, -1, -1, -1, -1)


def extra_input_channels(unet, latent_channels: int) -> int:
    """0 or POSITION_CHANNELS: how many channels the UNet takes beyond the latents; anything else is refused."""
    extra = int(unet.config.in_channels) - latent_channels
    if extra not in (0, POSITION_CHANNELS):
        raise UserError(
            f"the UNet takes {unet.config.in_channels} input channels for {latent_channels} latent channels: "
            f"vidbooth supports 0 or {POSITION_CHANNELS} extra (position) channels, not {extra}"
        )
    return extra


def with_positions(latents: torch.Tensor, extra_channels: int) -> torch.Tensor:
    """`latents` (B, C, F, h, w) followed by the position maps when the UNet takes them."""
    return torch.cat([latents, position_maps(latents)], dim=1) if extra_channels else latents
