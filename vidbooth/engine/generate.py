"""`vidbooth generate`: load a backbone, sample, and write the video, its contact sheet and its config."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import torch

from vidbooth.config import GenerateConfig, save_config
from vidbooth.config.schema import ZeroShotConfig
from vidbooth.data.video import (
    WRITE_EXTENSIONS,
    check_writable_dir,
    ensure_writable_dir,
    save_contact_sheet,
    write_video,
)
from vidbooth.errors import UserError
from vidbooth.fileio import write_together
from vidbooth.library import artifact_dir
from vidbooth.reporting import info, warn


@dataclass
class GenerateResult:
    video: Path
    contact_sheet: Path
    config: Path
    prompt: str


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """The video path and, beside it, '<stem>.png' (contact sheet) and '<stem>.yaml' (resolved config). Refused
    before any work: a path that a folder takes, and a video of the other type beside it (it owns the same
    contact sheet and config, which this one would replace)."""
    out = Path(out).expanduser()
    if out.suffix.lower() not in WRITE_EXTENSIONS:
        raise UserError(f"--out {out} must end in .mp4 or .gif")
    paths = out, out.with_suffix(".png"), out.with_suffix(".yaml")
    for path in paths:
        if path.is_dir():
            raise UserError(f"--out {out}: {path} is a folder, and generate writes a file there: choose another --out")
    videos = [p for p in out.parent.glob(f"{glob.escape(out.stem)}.*")
              if p.stem == out.stem and p.suffix.lower() in WRITE_EXTENSIONS] if out.parent.is_dir() else []
    for sibling in videos:
        same = sibling.name == out.name or (out.exists() and sibling.samefile(out))  # letter case may not count
        if not same:  # another type, or the same in other letters (a.GIF beside a.gif)
            raise UserError(
                f"--out {out}: {sibling} is beside it and its contact sheet and config ({paths[1].name}, "
                f"{paths[2].name}) would be replaced: choose another name, or delete {sibling.name}"
            )
    if not videos:  # no earlier video owns them: they are someone's files (a --recipe, a photo)
        for path in paths[1:]:
            if path.exists():
                raise UserError(
                    f"--out {out}: {path} exists and no video beside it was written with it, so generate would "
                    "replace a file that is not its own (a recipe, a picture): choose another --out, or delete it if "
                    "it is left from an earlier video"
                )
    return paths


def generate(cfg: GenerateConfig) -> GenerateResult:
    from vidbooth.engine.backbone import ZERO_SHOT, load_backbone_for
    from vidbooth.engine.sampling import make_scheduler

    if not cfg.prompt.strip():
        raise UserError('no prompt: pass --prompt "..." describing the video (or a --recipe that sets prompt)')
    video_path, sheet_path, config_path = output_paths(cfg.out)
    check_writable_dir(video_path.parent)  # made only when the video is written: a later error leaves nothing
    make_scheduler(cfg.sampling.scheduler, {})  # reject bad settings before loading the model
    for name in cfg.subjects:
        artifact_dir("subject", name)  # unknown names fail before the model loads
    if cfg.motion:
        artifact_dir("motion", cfg.motion)
    if cfg.subject_scale != 1 and not cfg.subjects:
        warn(f"--subject-scale {cfg.subject_scale:g} has no effect without --subject")
    if cfg.motion_scale != 1 and not cfg.motion:
        warn(f"--motion-scale {cfg.motion_scale:g} has no effect without --motion")
    if cfg.sampling.negative_prompt.strip() and cfg.sampling.guidance_scale <= 1:
        warn(f"--negative-prompt has no effect at --guidance-scale {cfg.sampling.guidance_scale:g}: it acts through "
             "classifier-free guidance, which needs a scale above 1")

    bb = load_backbone_for(cfg.backbone, cfg.runtime)
    z = cfg.sampling.zero_shot
    if bb.family == ZERO_SHOT and cfg.sampling.num_frames > 1:
        info(f"{cfg.backbone.base} is an image model with no motion adapter: its frames are made zero-shot "
             f"(Text2Video-Zero, the scene moving by {z.motion_field_strength_x:g}, {z.motion_field_strength_y:g} "
             "pixels per frame); --motion-adapter animates it with an AnimateDiff motion module instead")
    elif bb.family != ZERO_SHOT and z != ZeroShotConfig():
        warn(f"sampling.zero_shot (--motion-field-strength-x/-y) has no effect on {cfg.backbone.base}, a "
             f"{bb.family} model: it moves the videos of image models without a motion adapter (Text2Video-Zero)")
    prompt, negative_prompt = cfg.prompt, cfg.sampling.negative_prompt
    if cfg.subjects or cfg.motion:
        from vidbooth.engine.compose import apply_personalisation

        applied = apply_personalisation(
            bb, prompt, cfg.subjects, cfg.motion, cfg.subject_scale, cfg.motion_scale, negative_prompt
        )
        for note in applied.notes:
            warn(note)
        prompt, negative_prompt = applied.prompt, applied.negative_prompt
    frames = sample_frames(bb, cfg, prompt, negative_prompt)
    ensure_writable_dir(video_path.parent)
    write_together([  # all or none: never a new video beside an old contact sheet or config
        (video_path, lambda tmp: write_video(frames, tmp, fps=cfg.sampling.fps)),
        (sheet_path, lambda tmp: save_contact_sheet(frames, tmp)),
        (config_path, lambda tmp: save_config(cfg, tmp)),
    ])
    info(f"wrote {video_path}, {sheet_path.name} and {config_path.name}")
    return GenerateResult(video_path, sheet_path, config_path, prompt)


def sample_frames(backbone, cfg: GenerateConfig, prompt: str, negative_prompt: str):
    """One video (F, H, W, 3) uint8 for `prompt` and `negative_prompt` with the other sampling settings of `cfg`."""
    from vidbooth.engine.sampling import sample_video

    s = cfg.sampling
    generator = torch.Generator("cpu").manual_seed(cfg.runtime.seed)
    return sample_video(
        backbone,
        prompt,
        negative_prompt=negative_prompt,
        num_frames=s.num_frames,
        height=s.height,
        width=s.width,
        num_inference_steps=s.num_inference_steps,
        guidance_scale=s.guidance_scale,
        scheduler=s.scheduler,
        generator=generator,
        eta=s.eta,
        decode_chunk_size=s.decode_chunk_size,
        zero_shot=s.zero_shot,
    )[0]
