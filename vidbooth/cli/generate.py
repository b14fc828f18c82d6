"""`vidbooth generate`: text (and learned subjects/motions) to video."""

from __future__ import annotations

import typer

from vidbooth.cli import options


def generate(
    prompt: str = typer.Option(
        None, "--prompt", "-p", metavar="TEXT", help="What the video shows (required unless the --recipe gives one)."
    ),
    out: str = typer.Option(
        None, "--out", "-o", metavar="PATH", help="Video to write, .mp4 or .gif (default out.mp4); its contact sheet "
        "(.png) and config (.yaml) are written beside it. An earlier video there is replaced with its own; a .png or "
        ".yaml that no video there owns is not (the run is refused)."
    ),
    num_videos: int = typer.Option(
        None, "--num-videos", metavar="N", help="Videos of the prompt, each with its own noise (default 1): "
        "<out>-1.mp4 ... <out>-N.mp4, one contact sheet and one config."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", metavar="N", help="Videos denoised at once (default: all of --num-videos); fewer take "
        "less memory and give the same videos."
    ),
    negative_prompt: str = typer.Option(
        None, "--negative-prompt", metavar="TEXT", help="What to steer away from (with guidance)."
    ),
    num_frames: int = typer.Option(
        None, "--num-frames", "--frames", metavar="N", help="Frames to generate (default 8)."
    ),
    height: int = typer.Option(None, "--height", metavar="PX", help="Height in pixels (default: the model's)."),
    width: int = typer.Option(None, "--width", metavar="PX", help="Width in pixels (default: the model's)."),
    num_inference_steps: int = typer.Option(
        None, "--num-inference-steps", "--steps", metavar="N", help="Denoising steps (default: 10 on nano, else 25)."
    ),
    guidance_scale: float = typer.Option(
        None, "--guidance-scale", metavar="SCALE",
        help="Classifier-free guidance strength (default: 2 on nano, else 9; 1 or less: off).",
    ),
    scheduler: str = typer.Option(
        None, "--scheduler", metavar="SCHEDULER",
        help="Sampler: ddim | dpm++ (DPM-Solver++ 2M) (default ddim).",
    ),
    fps: int = typer.Option(
        None, "--fps", metavar="FPS", help="Frames per second of the written video (default 8; at most 50 for .gif)."
    ),
    subject: list[str] = typer.Option(
        None, "--subject", "-s", metavar="NAME", help="Learned subject to include (repeatable).",
        autocompletion=options.learned_names("subject"),
    ),
    motion: str = typer.Option(None, "--motion", "-m", metavar="NAME", help="Learned motion to apply.",
                               autocompletion=options.learned_names("motion")),
    subject_scale: float = typer.Option(
        None, "--subject-scale", metavar="SCALE", help="Identity adapter strength (default 1; 0: the pseudo-word only)."
    ),
    motion_scale: float = typer.Option(
        None, "--motion-scale", metavar="SCALE", help="Motion adapter strength (default 1; 0: the base's motion)."
    ),
    motion_field_strength_x: float = typer.Option(
        None, "--motion-field-strength-x", metavar="PX", help="Image models (Text2Video-Zero): pixels per frame the "
        "scene moves left, negative: right (default 12)."
    ),
    motion_field_strength_y: float = typer.Option(
        None, "--motion-field-strength-y", metavar="PX", help="Image models (Text2Video-Zero): pixels per frame the "
        "scene moves up, negative: down (default 12)."
    ),
    image_prompt: str = typer.Option(
        None, "--image-prompt", metavar="PHOTO", help="A photo of the subject to show, with no training (VideoBooth); "
        "the prompt names it by the image-prompt model's word, e.g. 'a sprite moving left' on nano."
    ),
    image_prompt_model: str = typer.Option(
        None, "--image-prompt-model", metavar="FILE", help="Image-prompt model (.safetensors from train-image-prompt); "
        "default: the base's own (nano ships one)."
    ),
    image_prompt_word: str = typer.Option(
        None, "--image-prompt-word", metavar="WORD",
        help="The prompt's word the image prompt replaces (default: the model's).",
    ),
    image_prompt_scale: float = typer.Option(
        None, "--image-prompt-scale", metavar="SCALE",
        help="Strength of the image prompt's fine features (default 1; 0: its tokens only).",
    ),
    base: str = options.Base,
    motion_adapter: str = options.MotionAdapterPath,
    device: str = options.Device,
    precision: str = options.Precision,
    attention: str = options.Attention,
    seed: int = options.Seed,
    recipe: str = options.recipe("generate"),
    sets: list[str] = options.Sets,
) -> None:
    """Generate a video from a prompt, optionally with learned subjects, a learned motion or a photo."""
    from vidbooth.config import GenerateConfig, load_config
    from vidbooth.config.load import recipe_or_default

    overrides = options.runtime_overrides(base, motion_adapter, device, precision, attention, seed) | {
        "prompt": prompt,
        "out": out,
        "num_videos": num_videos,
        "batch_size": batch_size,
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
        "sampling.zero_shot.motion_field_strength_x": motion_field_strength_x,
        "sampling.zero_shot.motion_field_strength_y": motion_field_strength_y,
        "image_prompt": image_prompt,
        "image_prompt_model": image_prompt_model,
        "image_prompt_word": image_prompt_word,
        "image_prompt_scale": image_prompt_scale,
    }
    from vidbooth.library import named_artifacts

    overrides |= options.learned_backbone(recipe, sets, overrides, named_artifacts(subject, motion))
    cfg = load_config(GenerateConfig, recipe_or_default(recipe, "generate", sets, overrides), sets, overrides)
    options.warn_of_a_recipe_base(cfg.backbone.base, recipe, sets, overrides, named_artifacts(subject, motion))
    if cfg.image_prompt:
        from vidbooth.data.images import check_image_file, refuse_path_not_text
        from vidbooth.errors import UserError
        from vidbooth.fileio import expand_user

        photo = expand_user(cfg.image_prompt)
        try:
            check_image_file(photo)
            refuse_path_not_text("image prompt", photo)  # the .yaml beside the video records it
        except UserError as exc:
            raise UserError(f"--image-prompt: {exc}") from exc
    from vidbooth.engine.generate import generate as run_generate  # after the cheap checks: it loads torch

    run_generate(cfg)
