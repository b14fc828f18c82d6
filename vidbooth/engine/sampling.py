"""The denoising loop, written out in full over a diffusers scheduler.

Classifier-free guidance as in the ModelScope/diffusers text-to-video pipelines: one UNet call on the
batch [negative, positive], then `uncond + guidance_scale * (cond - uncond)`; adapters learned for the
conditional half only (`conditional_only`) act on the positive half. With the same model,
scheduler, steps and seed the result matches diffusers' `TextToVideoSDPipeline`, `AnimateDiffPipeline` and
(DDIM) `TextToVideoZeroPipeline` (tested), DDIM's eta noise included.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable

import numpy as np
import torch

from vidbooth.adapters.base import conditional_half_only
from vidbooth.config.checks import MAX_FRAMES, scheduler_key
from vidbooth.config.schema import ZeroShotConfig
from vidbooth.engine.backbone import ZERO_SHOT
from vidbooth.engine.zero_shot import check_strengths, chunked_unet_forward, other_frames, warp_steps
from vidbooth.errors import UserError
from vidbooth.reporting import progress

MAX_SIZE_FACTOR = 8
"""Heights and widths up to this many times the model's native size are taken. Beyond it no model is of use, and a
typo (`--width 100000`) would run for hours inside one layer, where Ctrl-C cannot stop it."""


def make_scheduler(name: str, scheduler_config: dict):
    """A fresh scheduler of kind `name` ('ddim' or 'dpm++') from the model's scheduler config."""
    key = scheduler_key(name)
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    # a latent model's schedule never clips: DDIM's default clip_sample=True would clip its latents to [-1, 1] when
    # the model's config is another scheduler's (PNDM, DPM-Solver), which has no such key
    scheduler_config = {"clip_sample": False} | dict(scheduler_config)
    if key == "ddim":
        return DDIMScheduler.from_config(scheduler_config)
    return DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++", solver_order=2)


def set_timesteps(sched, num_inference_steps: int, device) -> None:
    """`sched.set_timesteps`, without the DeprecationWarning numpy 2 raises when DPM-Solver++ makes an array of a
    tensor (diffusers' own code; nothing a user can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy keyword", DeprecationWarning)
        sched.set_timesteps(num_inference_steps, device=device)


def check_frames(backbone, num_frames: int, name: str = "--num-frames") -> None:
    """A UserError for a frame count the model cannot take; `name`: how the message names the setting."""
    if num_frames < 1:
        raise UserError(f"{name} must be at least 1, got {num_frames}")
    max_frames = getattr(backbone.unet.config, "motion_max_seq_length", None)
    if max_frames and num_frames > max_frames:
        raise UserError(f"{name} {num_frames} is more than this motion module takes ({max_frames}): use "
                        f"{max_frames} or fewer")
    if num_frames > MAX_FRAMES:
        raise UserError(f"{name} {num_frames} is more than vidbooth takes ({MAX_FRAMES}): ask for fewer")


def check_steps(backbone, num_inference_steps: int, name: str = "--num-inference-steps") -> None:
    """A UserError for a number of sampling steps the model's schedule cannot give."""
    noise_levels = int(backbone.scheduler_config.get("num_train_timesteps", 1000))
    if not 1 <= num_inference_steps < noise_levels:
        raise UserError(
            f"{name} must be from 1 to {noise_levels - 1} (the model was trained on {noise_levels} noise levels), "
            f"got {num_inference_steps}"
        )


def check_preview(backbone, num_frames: int, num_inference_steps: int, section: str = "preview") -> None:
    """The preview's settings, checked before training so that a bad one does not fail the run at its end."""
    check_frames(backbone, num_frames, f"{section}.num_frames (--set {section}.num_frames=N)")
    check_steps(backbone, num_inference_steps, f"{section}.num_inference_steps (--set {section}.num_inference_steps=N)")


def check_geometry(backbone, num_frames: int, height: int, width: int) -> None:
    """Raise a UserError for sizes and frame counts the model cannot take."""
    check_frames(backbone, num_frames)
    for flag, value in (("--height", height), ("--width", width)):
        check_not_too_large(backbone, flag, value)  # first: a typo's 'use e.g. 99999999999999999996' helps no one
        multiple = backbone.size_multiple
        if value <= 0 or value % multiple:
            near = [size for size in (value // multiple * multiple, (value // multiple + 1) * multiple) if size > 0] \
                or [multiple]
            raise UserError(f"{flag} {value} must be a positive multiple of {multiple} for this model: use e.g. "
                            f"{' or '.join(map(str, near))}")


def check_not_too_large(backbone, flag: str, size: int) -> None:
    """A UserError when `size` (pixels) is over MAX_SIZE_FACTOR times the model's native size."""
    limit = MAX_SIZE_FACTOR * backbone.default_size
    if size > limit:
        raise UserError(
            f"{flag} {size} is more than {MAX_SIZE_FACTOR} times this model's native size ({backbone.default_size}): "
            f"use at most {limit}"
        )


def training_resolution(backbone, resolution: int | None, setting: str = "data.resolution (--resolution)") -> int:
    """data.resolution, or the model's native size; a UserError naming `setting` (the key and the command's flag)
    when the model cannot take it."""
    size = resolution or backbone.default_size
    multiple = backbone.size_multiple
    if size <= 0 or size % multiple:
        nearest = max(multiple, round(size / multiple) * multiple)
        raise UserError(f"{setting} {size} must be a positive multiple of {multiple} for this model: use e.g. "
                        f"{nearest}")
    check_not_too_large(backbone, setting, size)
    return size


@torch.no_grad()
def sample_video(
    backbone,
    prompt: str | list[str],
    negative_prompt: str | list[str] = "",
    num_frames: int = 8,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 9.0,
    scheduler: str = "ddim",
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    eta: float = 0.0,
    decode_chunk_size: int = 8,
    output_type: str = "uint8",
    description: str = "sampling",
    zero_shot: ZeroShotConfig | None = None,
    prompt_embeds: torch.Tensor | None = None,
    before_unet: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    settings: str | None = None,
    batch_size: int | None = None,
):
    """Generate videos for `prompt`.

    output_type: 'uint8' -> (B, F, H, W, 3) uint8; 'np' -> the same in float32 [0, 1] (as diffusers);
    'pt' -> (B, F, 3, H, W) float as the decoder gives it (about [-1, 1], not clamped); 'latent' -> (B, C, F, h, w).
    `description` names the progress bar: what is being sampled ('preview', 'class images', a demo variant). An
    image model without a motion adapter makes videos of several frames with Text2Video-Zero (`zero_shot`'s
    settings, default ones if None): the first frame alone is denoised for a few more steps.
    `prompt_embeds` (B, L, D), when given, replace the encoded `prompt` (an image prompt's tokens in them);
    `before_unet(t, text_embeds)` runs before every UNet call (an image prompt's pass at that timestep).
    `settings`: the config section whose keys set these (a training's `preview` or `prior`), which messages name in
    place of generate's flags. `batch_size`: videos the UNet denoises at once (None: all); each video is the same
    whatever it is (up to the rounding of kernels at another batch size), its noise cut from the whole batch's.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    height = height or backbone.default_size
    width = width or backbone.default_size
    check_geometry(backbone, num_frames, height, width)
    check_steps(backbone, num_inference_steps, *([_named(settings, "num_inference_steps")] if settings else []))

    guided = guidance_scale > 1.0
    negative_names = ["negative prompt"] * len(negatives)  # what a warning of a too-long one calls it
    if prompt_embeds is None and guided:
        text = backbone.encode_prompt(negatives + prompts, negative_names + ["prompt"] * len(prompts))  # (2B, L, D)
    elif prompt_embeds is None:
        text = backbone.encode_prompt(prompts)  # (B, L, D)
    else:
        if prompt_embeds.shape[0] != len(prompts):
            raise ValueError(f"prompt_embeds holds {prompt_embeds.shape[0]} prompts, not {len(prompts)}")
        text = prompt_embeds.to(backbone.device, backbone.dtype)
        if guided:
            text = torch.cat([backbone.encode_prompt(negatives, negative_names), text])

    sched = make_scheduler(scheduler, backbone.scheduler_config)
    set_timesteps(sched, num_inference_steps, backbone.device)
    shape = (
        len(prompts),
        backbone.latent_channels,
        num_frames,
        height // backbone.vae_scale_factor,
        width // backbone.vae_scale_factor,
    )  # (B, C, F, h, w)
    if latents is None:
        from diffusers.utils.torch_utils import randn_tensor

        latents = randn_tensor(shape, generator=generator, device=backbone.device, dtype=backbone.dtype)
    latents = latents.to(backbone.device, backbone.dtype) * sched.init_noise_sigma
    zero_shot_steps = None
    if backbone.family == ZERO_SHOT and num_frames > 1:
        zero_shot = zero_shot or ZeroShotConfig()
        check_strengths(zero_shot, height, width)
        zero_shot_steps = warp_steps(sched.timesteps, zero_shot.t0, zero_shot.t1, sched.config.num_train_timesteps)
    accepted = inspect.signature(sched.step).parameters
    eta_noise = eta > 0 and "variance_noise" in accepted  # DDIM's noise, drawn here (BatchDraws)
    step_kwargs = {"eta": eta} if "eta" in accepted else {}  # dpm++ (2M) draws none

    def denoise(latents, text, steps, sched, draws, bar):
        for t in steps:
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = sched.scale_model_input(model_in, t)
            if before_unet is not None:
                before_unet(t, text)
            if zero_shot_steps:
                noise = chunked_unet_forward(backbone, model_in, t, text, zero_shot.chunk_size)
            else:
                noise = backbone.unet_forward(model_in, t, text)
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            drawn = {"variance_noise": _eta_noise(draws, noise, backbone.family)} if eta_noise else {}
            latents = sched.step(noise, t, latents, **step_kwargs, **drawn).prev_sample
            bar.advance()
        return latents

    def sample(latents, text, draws, bar):  # one batch of videos
        sched = make_scheduler(scheduler, backbone.scheduler_config)
        set_timesteps(sched, num_inference_steps, backbone.device)
        steps = list(sched.timesteps)
        if zero_shot_steps:  # Text2Video-Zero: the first frame alone to t1, then t0; the others made from it
            i1, i0 = zero_shot_steps
            first_at_t1 = denoise(latents[:, :, :1], text, steps[:i1], sched, draws, bar)
            first_at_t0 = denoise(first_at_t1, text, steps[i1:i0], sched, draws, bar)
            after_last = float(getattr(sched, "final_alpha_cumprod", 1.0))  # DDIM's; dpm++ ends clean
            alphas = [float(sched.alphas_cumprod[int(t)]) for t in steps] + [after_last]
            others = other_frames(first_at_t0, num_frames, zero_shot, height, width, alphas[i0], alphas[i1], draws)
            latents = torch.cat([first_at_t1, others], dim=2)
            sched = make_scheduler(scheduler, backbone.scheduler_config)  # a multistep solver starts afresh at t1
            set_timesteps(sched, num_inference_steps, backbone.device)
            steps = steps[i1:]
        return denoise(latents, text, steps, sched, draws, bar)

    count = len(prompts)
    batch_size = min(batch_size or count, count)
    batches = [range(first, min(first + batch_size, count)) for first in range(0, count, batch_size)]
    state = generator.get_state() if generator is not None else None  # each batch draws from it afresh
    extra_steps = zero_shot_steps[1] - zero_shot_steps[0] if zero_shot_steps else 0  # t1 to t0: alone, then all
    with progress(description, total=(len(sched.timesteps) + extra_steps) * len(batches)) as bar:
        done = []
        for videos in batches:
            draws = BatchDraws(generator, state, count, videos)
            rows = [*videos, *(count + v for v in videos)] if guided else list(videos)
            halves = conditional_half_only(backbone.unet, len(videos)) if guided else contextlib.nullcontext()
            with halves:
                done.append(sample(latents[videos.start:videos.stop], text[rows], draws, bar))
            if generator is not None:  # left where the whole batch's draws leave it
                generator.set_state(draws.generator.get_state())
        latents = torch.cat(done)

    guidance = _named(settings, "guidance_scale") if settings else "--guidance-scale"
    advice = "run with --precision fp32 (or bf16)" if backbone.dtype == torch.float16 else f"lower {guidance}"
    made = f"{scheduler}, {num_inference_steps} steps"
    if not torch.isfinite(latents).all():  # never write a video of garbage frames as if it were a result
        raise UserError(f"sampling produced NaN or infinite values ({made}): {advice}")
    if output_type == "latent":
        return latents
    video = backbone.decode_latents(latents, chunk_size=decode_chunk_size)  # (B, F, 3, H, W) in [-1, 1]
    if not torch.isfinite(video).all():  # latents too large for the decoder (guidance 1e38 had saved noise)
        raise UserError(f"sampling produced latents the decoder turns into NaN or infinite pixels ({made}): {advice}")
    if output_type == "pt":
        return video
    video = to_numpy_frames(video)
    if output_type == "np":
        return video
    return to_uint8(video)


def _eta_noise(draws: BatchDraws, like: torch.Tensor, family: str) -> torch.Tensor:
    """DDIM's eta noise for latents `like` (B, C, F, h, w), drawn in the layout of diffusers' pipeline for the
    model's family, so that the same seed gives the same video: the UNet3D and Text2Video-Zero pipelines step on
    the frames as images (B*F, C, h, w), AnimateDiff's on the video as it is."""
    if family == "animatediff":
        return draws.randn(like.shape, like.device, like.dtype)
    return draws.randn_frames(like.shape, like.device, like.dtype)


def _named(section: str, key: str) -> str:
    """How a message names `section.key`, a setting without a flag."""
    return f"{section}.{key} (--set {section}.{key}=N)"


def to_numpy_frames(video: torch.Tensor) -> np.ndarray:
    """Decoded pixels (B, F, 3, H, W) in [-1, 1] -> (B, F, H, W, 3) floats in [0, 1]."""
    return (video / 2 + 0.5).clamp(0, 1).permute(0, 1, 3, 4, 2).cpu().numpy()


def to_uint8(video: np.ndarray) -> np.ndarray:
    return (video * 255).round().astype(np.uint8)


class BatchDraws:
    """The random draws of a sampling run for `videos` (a range of indices) of a batch of `total`, each cut from the
    draw that the whole batch makes from `generator` at `state` (its state when sampling began): a video's noise is
    the same whatever batch it is denoised in. Without a generator, fresh noise."""

    def __init__(self, generator: torch.Generator | None, state: torch.Tensor | None, total: int, videos: range):
        self.generator, self.total, self.videos = generator, total, videos
        if generator is not None:
            self.generator = torch.Generator(generator.device)
            self.generator.set_state(state)

    def randn(self, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """Normal noise of `shape`, whose first dimension holds the same number of rows for each video."""
        from diffusers.utils.torch_utils import randn_tensor

        if self.generator is None:
            return randn_tensor(tuple(shape), device=device, dtype=dtype)
        rows = shape[0] // len(self.videos)
        whole = randn_tensor((rows * self.total, *shape[1:]), generator=self.generator, device=device, dtype=dtype)
        return whole[rows * self.videos.start : rows * self.videos.stop]

    def randn_frames(self, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """Normal noise for videos of `shape` (B, C, F, h, w), drawn for their frames laid out as images (B*F, C, h,
        w), as diffusers' image-wise pipelines draw it."""
        b, c, f, h, w = shape
        return self.randn((b * f, c, h, w), device, dtype).unflatten(0, (b, f)).transpose(1, 2)
