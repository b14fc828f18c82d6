"""`vidbooth generate`: text (and learned subjects/motions) to video."""

from __future__ import annotations

import typer

from vidbooth.cli import options


def generate(
    prompt: str = typer.Option(
        None, "--prompt", "-p", help="What the video shows (required unless the --recipe gives one)."
    ),
    out: str = typer.Option(None, "--out", "-o", help="Output .mp4 or .gif (default out.mp4)."),
    negative_prompt: str = typer.Option(None, "--negative-prompt", help="What to steer away from."),
    num_frames: int = typer.Option(None, "--num-frames", "--frames", help="Frames to generate."),
    height: int = typer.Option(None, "--height", help="Height in pixels (default: the model's)."),
    width: int = typer.Option(None, "--width", help="Width in pixels (default: the model's)."),
    num_inference_steps: int = typer.Option(None, "--num-inference-steps", "--steps", help="Denoising steps."),
    guidance_scale: float = typer.Option(None, "--guidance-scale", help="Classifier-free guidance strength."),
    scheduler: str = typer.Option(None, "--scheduler", help="ddim | dpm++"),
    fps: int = typer.Option(None, "--fps", help="Frames per second of the written video."),
    subject: list[str] = typer.Option(
        None, "--subject", "-s", metavar="NAME", help="Learned subject to include (repeatable)."
    ),
    motion: str = typer.Option(None, "--motion", "-m", help="Learned motion to apply."),
    subject_scale: float = typer.Option(None, "--subject-scale", help="Identity adapter strength (0 = token only)."),
    motion_scale: float = typer.Option(None, "--motion-scale", help="Motion adapter strength (0 = base motion)."),
    base: str = options.Base,
    motion_adapter: str = options.MotionAdapterPath,
    device: str = options.Device,
    precision: str = options.Precision,
    attention: str = options.Attention,
    seed: int = options.Seed,
    recipe: str = options.Recipe,
    sets: list[str] = options.Sets,
) -> None:
    """Generate a video from a prompt, optionally with learned subjects and a learned motion."""
    from vidbooth.config import GenerateConfig, load_config
    from vidbooth.config.load import recipe_or_default
    from vidbooth.engine.generate import generate as run_generate

    overrides = options.runtime_overrides(base, motion_adapter, device, precision, attention, seed) | {
        "prompt": prompt,
        "out": out,
        "sampling.negative_prompt": negative_prompt,
        "sampling.num_frames": num_frames,
        "sampling.height": height,
        "sampling.width": width,
        "sampling.num_inference_steps": num_inference_steps,
        "sampling.guidance_scale": guidance_scale,
        "sampling.scheduler": scheduler,
        "sampling.fps": fps,
        "subjects": subject or None,
        "motion": motion,
        "subject_scale": subject_scale,
        "motion_scale": motion_scale,
    }
    named = [("subject", name) for name in subject or []] + ([("motion", motion)] if motion else [])
    overrides |= options.learned_backbone(recipe, sets, overrides, named)
    cfg = load_config(GenerateConfig, recipe_or_default(recipe, "generate", sets, overrides), sets, overrides)
    run_generate(cfg)
