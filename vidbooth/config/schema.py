"""Schemas shared by every command. YAML key = dataclass field = CLI flag name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from vidbooth.config import checks
from vidbooth.errors import UserError


@dataclass
class BackboneConfig:
    base: str = "nano"
    """Base text-to-video model: a local diffusers folder, a hub id, or a built-in name ('nano', the shipped small
    model; 'tiny', 'tiny-animatediff': random tiny models for smoke tests)."""
    motion_adapter: str | None = None
    """AnimateDiff only: a diffusers MotionAdapter (folder or hub id) to combine with an SD1.5-family base."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `base` is a hub id."""
    variant: str | None = None
    """Weights variant to load (e.g. 'fp16') when the model provides one."""

    def __post_init__(self) -> None:
        # an empty base had been read as the current folder (". is not a diffusers ... model")
        checks.not_empty("backbone.base", self.base, "--base", "a model folder, a hub id, or nano (the default)",
                         "backbone.base (--base) is empty: give a model folder, a hub id, or nano (the default)")
        checks.base_found(self.base)
        checks.not_empty("backbone.motion_adapter", self.motion_adapter, "--motion-adapter",  # had made zero-shot
                         "a MotionAdapter folder or hub id", "backbone.motion_adapter (--motion-adapter) is empty: "
                         "give a MotionAdapter folder or hub id, or leave it out")


@dataclass
class RuntimeConfig:
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    precision: str = "auto"
    """auto | fp32 | fp16 | bf16. auto: fp16 on CUDA, fp32 on CPU."""
    attention: str = "auto"
    """Attention backend: auto | sdpa | xformers | math. Env: VIDBOOTH_ATTENTION."""
    seed: int = 0
    """0 to 2**32 - 1."""

    def __post_init__(self) -> None:
        # an empty one (an unset shell variable, a recipe's '') had been taken as auto without a word
        for key, what in (("device", "auto, cpu, cuda or cuda:N"), ("precision", "auto, fp32, fp16 or bf16"),
                          ("attention", "auto, sdpa, xformers or math")):
            checks.not_empty(f"runtime.{key}", getattr(self, key), f"--{key}", what)
        checks.seed("runtime.seed", self.seed)


GIF_MAX_FPS = 50
"""A GIF frame lasts a whole number of hundredths of a second, and browsers show 1 or 0 as 10."""
MAX_FPS = 1000
"""A frame rate ffmpeg still writes (at 2**32 it wrote an empty file, and at 1e9 a stream that reads as 0 fps)."""


@dataclass
class ZeroShotConfig:
    """Text2Video-Zero's motion in the latents, for an image model without a motion adapter: the first frame is
    denoised alone to `t0`, translated by (`motion_field_strength_x`, `motion_field_strength_y`) pixels per frame
    to make the others, noised back to `t1`, and all frames are denoised from there together."""

    motion_field_strength_x: float = 12.0
    """Pixels per frame by which the scene moves left (negative: right); diffusers' default, 12 (its unit is a
    512th of the frame: a pixel at 512 x 512)."""
    motion_field_strength_y: float = 12.0
    """Pixels per frame by which the scene moves up (negative: down)."""
    t0: float = 0.88
    """Where in the schedule (1: pure noise, 0: clean) the first frame is translated; diffusers' t0 = 44 of 50."""
    t1: float = 0.94
    """Where the translated frames are noised back to, and all frames denoised from; diffusers' t1 = 47 of 50."""
    chunk_size: int = 8
    """Frames the UNet denoises at once (lower = less memory), each chunk with the first frame: a frame depends on
    itself and the first frame only, so the video is the same for any chunk size."""

    def __post_init__(self) -> None:
        for axis in ("x", "y"):
            value = getattr(self, f"motion_field_strength_{axis}")
            if not math.isfinite(value):
                raise UserError(
                    f"sampling.zero_shot.motion_field_strength_{axis} (--motion-field-strength-{axis}) must be a "
                    f"finite number of pixels per frame, got {value}"
                )
        checks.at_least("sampling.zero_shot.chunk_size", self.chunk_size, 2)
        if not 0 < self.t0 < self.t1 < 1:
            raise UserError(
                f"sampling.zero_shot.t0 and t1 must be in (0, 1) with t0 below t1 (1 is pure noise), got t0 "
                f"{self.t0} and t1 {self.t1}"
            )


@dataclass
class SamplingConfig:
    scheduler: str = "ddim"
    """ddim | dpm++ (DPM-Solver++ multistep)."""
    num_inference_steps: int = 25
    guidance_scale: float = 9.0
    negative_prompt: str = ""
    num_frames: int = 8
    height: int | None = None
    """Output height in pixels; default: the model's native size."""
    width: int | None = None
    fps: int = 8
    decode_chunk_size: int = 8
    """Frames decoded by the VAE at once (lower = less memory)."""
    eta: float = 0.0
    """DDIM eta in [0, 1] (0 = deterministic)."""
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    """Used by image models without a motion adapter only (Text2Video-Zero)."""

    def __post_init__(self) -> None:
        # checked before the model loads or the output folder is made; an empty one had been 'unknown scheduler'
        checks.not_empty("sampling.scheduler", self.scheduler, "--scheduler", " or ".join(checks.SCHEDULERS))
        checks.scheduler_key(self.scheduler)
        checks.at_least("sampling.num_frames", self.num_frames, 1, "--num-frames")
        checks.at_most("sampling.num_frames", self.num_frames, checks.MAX_FRAMES, "--num-frames")
        checks.at_least("sampling.num_inference_steps", self.num_inference_steps, 1, "--num-inference-steps")
        checks.non_negative("sampling.guidance_scale", self.guidance_scale, "--guidance-scale",
                            " (1 or less: no guidance)")
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(
                    f"sampling.{key} (--{key}) must be a positive number of pixels, got {value}: "
                    f"leave it out for the model's own size"
                )
        checks.at_least("sampling.fps", self.fps, 1, "--fps")
        checks.at_most("sampling.fps", self.fps, MAX_FPS, "--fps")
        checks.at_least("sampling.decode_chunk_size", self.decode_chunk_size, 1)
        if not 0 <= self.eta <= 1:
            raise UserError(f"sampling.eta must be in [0, 1] (0: deterministic DDIM), got {self.eta}")


@dataclass
class GenerateConfig:
    SETTINGS_NAME: ClassVar[str] = "generate"
    """The command's name for its settings: docs/<name>.md lists them, recipes/<model>/<name>.yaml are shipped."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt: str = ""
    out: str = "out.mp4"
    """Output video (.mp4 or .gif); a contact sheet PNG and the resolved config are written beside it."""
    num_videos: int = 1
    """Videos of the prompt, each with its own noise: more than one are written as <out>-1.mp4 ... <out>-N.mp4 (the
    first is the one video of the same seed), with one contact sheet (a row per video) and one config."""
    batch_size: int | None = None
    """Videos the UNet denoises at once (None: all num_videos); each video is the same whatever it is."""
    subjects: list[str] = field(default_factory=list)
    """Learned subjects to use (library names); their tokens go into the prompt."""
    motion: str | None = None
    """A learned motion (library name)."""
    subject_scale: float = 1.0
    """Strength of the subjects' identity adapters (0 = pseudo-word only)."""
    motion_scale: float = 1.0
    """Strength of the motion adapter (0 = the base model's motion)."""
    image_prompt: str | None = None
    """A photo of the subject to show (VideoBooth: no training per subject); the prompt names it by the image-prompt
    model's word ('a sprite moving left' on nano)."""
    image_prompt_model: str | None = None
    """The image-prompt model (`vidbooth train-image-prompt`'s .safetensors); default: the base's own
    `image_prompt.safetensors` (nano ships one)."""
    image_prompt_word: str | None = None
    """The prompt's word that the image prompt replaces; default: the one the image-prompt model was trained with."""
    image_prompt_scale: float = 1.0
    """Strength of the image prompt's fine features (0: its tokens in the prompt only)."""
    learned_files: dict[str, str] = field(default_factory=dict)
    """Written by generate beside the video: a digest of each subject's and motion's tensor files
    ('subject S*': sha256), so that a rerun of that config whose subject or motion was retrained since says so."""

    def __post_init__(self) -> None:
        hint = " (0: the adapter off, 1: as trained)"
        checks.at_least("num_videos", self.num_videos, 1, "--num-videos")
        checks.at_most("num_videos", self.num_videos, checks.MAX_VIDEOS, "--num-videos")
        if self.batch_size is not None:
            checks.at_least("batch_size", self.batch_size, 1, "--batch-size")
        checks.non_negative("subject_scale", self.subject_scale, "--subject-scale", hint)
        checks.non_negative("motion_scale", self.motion_scale, "--motion-scale", hint)
        checks.non_negative("image_prompt_scale", self.image_prompt_scale, "--image-prompt-scale",
                            " (0: the image prompt's tokens only, 1: as trained)")
        # an empty out had been refused as "--out '' must end in .mp4 or .gif", the flag's, once torch had loaded
        checks.not_empty("out", self.out, "--out", "the video to write, .mp4 or .gif (default: out.mp4)")
        checks.not_empty("motion", self.motion, "--motion", "a learned motion's name")
        checks.not_empty("image_prompt", self.image_prompt, "--image-prompt", "a photo of the subject")
        checks.not_empty("image_prompt_model", self.image_prompt_model, "--image-prompt-model",
                         "an image-prompt model's .safetensors")
        checks.no_empty_entries("subjects", self.subjects, "name", "a learned subject's name", "subjects (--subject) "
                                "holds an empty name (an unset shell variable?): give a learned subject's name")
        word = self.image_prompt_word
        one_word = (f"image_prompt_word (--image-prompt-word) must be one word, the prompt's word that the image "
                    f"prompt replaces, got '{word}' (leave it out for the model's own)")
        checks.not_empty("image_prompt_word", word, "--image-prompt-word", "one word, the prompt's word that the "
                         "image prompt replaces", one_word)
        if word is not None and len(word.split()) != 1:
            raise UserError(one_word)
        if self.out.lower().endswith(".gif") and self.sampling.fps > GIF_MAX_FPS:
            raise UserError(
                f"sampling.fps (--fps) {self.sampling.fps} is more than a GIF can show ({GIF_MAX_FPS}: its frame "
                "times are in hundredths of a second, and browsers slow faster ones to 10 fps): use --fps "
                f"{GIF_MAX_FPS} or less, or write .mp4"
            )
