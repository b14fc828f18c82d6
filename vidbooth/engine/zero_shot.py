"""Text2Video-Zero's motion dynamics in the latents (arXiv 2303.13439), for an image model without a motion adapter.

The first frame is denoised alone from pure noise to `t0`, then copied and translated by a global motion field,
frame k by k times (motion_field_strength_x, motion_field_strength_y) pixels, to make the other frames.
Those are noised back (DDPM forward) to `t1`, a higher noise level, joined to the first frame as it was at `t1`,
and all frames are denoised together from `t1`, with cross-frame attention (`vidbooth.attention.cross_frame`)
keeping them one scene. `t0` and `t1` are positions in the schedule (1: pure noise); diffusers'
`TextToVideoZeroPipeline` gives them as steps of 50 (44 and 47), which are 0.88 and 0.94 here. The paper's
optional background smoothing needs a salient-object detector and is not done.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidbooth.config.schema import ZeroShotConfig
from vidbooth.errors import UserError


def warp_steps(timesteps, t0: float, t1: float, noise_levels: int = 1000) -> tuple[int, int]:
    """The sampling-step indices (i1, i0) at which the first frame reaches t1 and t0 (step i starts at the i-th of
    the schedule's `timesteps`, of `noise_levels`): the steps whose timesteps are nearest t1 and t0 times
    `noise_levels`, with 0 <= i1 < i0 < len(timesteps); diffusers' t1 = 47 and t0 = 44 of 50 steps are i1 = 2 and
    i0 = 5 (timesteps 941 and 881 of SD1.5's). Read off the timesteps, they are the same noise levels whatever the
    scheduler's spacing (DPM-Solver++'s 999, 979, 959, 939, ... put 0.94 at i1 = 3). The one exception is a single
    step: i0 = 1 is then the clean end, the first frame denoised whole before its translations are noised back to the
    start."""
    levels = [float(t) for t in timesteps]
    last = len(levels) - 1

    def nearest(place: float) -> int:
        return min(range(len(levels)), key=lambda i: abs(levels[i] - place * noise_levels))

    i1 = min(nearest(t1), max(last - 1, 0))
    i0 = min(max(i1 + 1, nearest(t0)), max(last, 1))
    return i1, i0


def check_strengths(settings: ZeroShotConfig, height: int, width: int) -> None:
    """A UserError for a motion field that moves the scene a whole frame or more per frame (the mirrored edges
    would then repeat it, not move it)."""
    for axis, size in (("x", width), ("y", height)):
        strength = getattr(settings, f"motion_field_strength_{axis}")
        if abs(strength) >= size:
            raise UserError(
                f"--motion-field-strength-{axis} {strength:g} moves the scene a whole frame ({size} pixels) or more "
                f"per frame: use less than {size} (diffusers' default is 12)"
            )


def translate_frames(
    first: torch.Tensor, num_frames: int, strength_x: float, strength_y: float, height: int, width: int
) -> torch.Tensor:
    """The first frame's latents (B, C, 1, h, w) translated to make frames 1 to num_frames - 1, (B, C, F - 1, h, w).

    Frame k shows what the first shows k * (strength_x, strength_y) pixels of the `height` x `width` video further
    on (the nearest latent pixel, the edges mirrored), so positive strengths move the scene left and up. This is
    diffusers' warp (`create_motion_field_and_warp_latents`: a flow on a pixel grid, its coordinates scaled to
    [-1, 1] and resized to the latents' size), computed in closed form; diffusers' flow is always on a 512 x 512
    grid, so its strengths are 512ths of the frame, which are pixels at SD1.5's 512 x 512.
    """
    b, c, _, h, w = first.shape
    shift = torch.arange(1, num_frames, dtype=torch.float64)[:, None, None]  # (F - 1, 1, 1)

    def axis(n_latent: int, n_pixels: int, strength: float) -> torch.Tensor:
        pixel = (torch.arange(n_latent, dtype=torch.float64) + 0.5) * n_pixels / n_latent - 0.5  # a bilinear resize
        return (pixel + strength * shift) / n_pixels * 2 - 1  # (F - 1, 1, n_latent)

    x = axis(w, width, strength_x).expand(-1, h, w)
    y = axis(h, height, strength_y).transpose(1, 2).expand(-1, h, w)
    grid = torch.stack([x, y], dim=-1).to(first.device, torch.float32).repeat(b, 1, 1, 1)  # (B * (F - 1), h, w, 2)
    image = first[:, :, 0].float().repeat_interleave(num_frames - 1, dim=0)  # (B * (F - 1), C, h, w)
    moved = F.grid_sample(image, grid, mode="nearest", padding_mode="reflection", align_corners=False)
    return moved.to(first.dtype).unflatten(0, (b, num_frames - 1)).transpose(1, 2)


def renoise(latents: torch.Tensor, alpha_t0: float, alpha_t1: float, noise: torch.Tensor) -> torch.Tensor:
    """DDPM forward from the noise level of cumulative alpha `alpha_t0` to the higher one of `alpha_t1`."""
    ratio = alpha_t1 / alpha_t0
    return ratio**0.5 * latents + (1 - ratio) ** 0.5 * noise.to(latents)


def other_frames(
    first_at_t0: torch.Tensor, num_frames: int, settings: ZeroShotConfig, height: int, width: int,
    alpha_t0: float, alpha_t1: float, draws,
) -> torch.Tensor:
    """Frames 1 to num_frames - 1 at t1, (B, C, F - 1, h, w), from the first frame's latents at t0 (B, C, 1, h, w):
    translated by `settings`' motion field, then noised back from cumulative alpha `alpha_t0` to `alpha_t1`. The
    noise is drawn frame by frame, as diffusers' pipeline draws it for its one video, from `draws` (a
    `sampling.BatchDraws`)."""
    moved = translate_frames(
        first_at_t0, num_frames, settings.motion_field_strength_x, settings.motion_field_strength_y, height, width
    )
    return renoise(moved, alpha_t0, alpha_t1, draws.randn_frames(moved.shape, moved.device, moved.dtype))


def chunked_unet_forward(backbone, latents: torch.Tensor, timestep, text: torch.Tensor, chunk_size: int):
    """`backbone.unet_forward` on the frames of (B, C, F, h, w) latents `chunk_size` at a time, the first frame in
    every chunk: with cross-frame attention a frame's prediction depends on itself and the first frame only, so
    this is the prediction of all frames at once, with the memory of `chunk_size` frames."""
    frames = latents.shape[2]
    if frames <= chunk_size:
        return backbone.unet_forward(latents, timestep, text)
    outputs = [backbone.unet_forward(latents[:, :, :chunk_size], timestep, text)]
    for start in range(chunk_size, frames, chunk_size - 1):
        frame_ids = [0, *range(start, min(start + chunk_size - 1, frames))]
        outputs.append(backbone.unet_forward(latents[:, :, frame_ids], timestep, text)[:, :, 1:])
    return torch.cat(outputs, dim=2)
