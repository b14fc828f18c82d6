"""`vidbooth train-image-prompt`: learn a base's image-prompt model (VideoBooth), once, for every subject."""

from __future__ import annotations

import typer

from vidbooth.cli import options


def train_image_prompt(
    out: str = typer.Option(
        None, "--out", "-o", metavar="FILE",
        help="The model file to write (default: image_prompt.safetensors, the name of a base folder's own); its "
        "checkpoints go to FILE.run/ beside it.",
    ),
    coarse_steps: int = typer.Option(
        None, "--coarse-steps", metavar="N", help="Steps of stage 1, the image-to-token mapper (default: 1500 on nano, "
        "else 400)."
    ),
    fine_steps: int = typer.Option(
        None, "--fine-steps", metavar="N", help="Steps of stage 2, the attention injections (default: 1500 on nano, "
        "else 400)."
    ),
    data: str = typer.Option(
        None, "--data", metavar="DIR", help="A folder of clips, each with a caption and a subject photo or mask "
        "(default: nano's world)."
    ),
    word: str = typer.Option(
        None, "--word", metavar="WORD", help="The captions' word that the photo replaces (default: sprite)."
    ),
    clips: int = typer.Option(
        None, "--num-clips", "--clips", metavar="N",
        help="World clips to train on, without --data (default: 2048 on nano, else 512).",
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", metavar="N", help="Clips per training step on each process, in each stage (default 4)."
    ),
    checkpoint_every: int = typer.Option(
        None, "--checkpoint-every", metavar="N",
        help="Save a resumable checkpoint every N steps, in each stage (default: 250 on nano, else 500).",
    ),
    num_frames: int = typer.Option(
        None, "--num-frames", "--frames", metavar="N", help="Frames per training clip (default 8)."
    ),
    resolution: int = typer.Option(
        None, "--resolution", metavar="PX", help="Square training size in pixels (default: the model's; nano 64)."
    ),
    image_encoder: str = typer.Option(
        None, "--image-encoder", metavar="MODEL", help="Image encoder the photo is read with: CLIP vision folder or "
        "hub id, tiny-clip or vae (default: the base's image_encoder/, else vae)."
    ),
    gradient_checkpointing: bool = options.GradientCheckpointing,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out; start a stopped run over."),
    resume: bool = typer.Option(False, "--resume", help="Continue a stopped run from its last checkpoint."),
    base: str = options.Base,
    motion_adapter: str = options.MotionAdapterPath,
    device: str = options.Device,
    precision: str = options.TrainingPrecision,
    attention: str = options.Attention,
    seed: int = options.Seed,
    recipe: str = options.recipe("image-prompt"),
    sets: list[str] = options.Sets,
) -> None:
    """Train the image-prompt model of a base, coarse (mapper) then fine (injections), on your clips or nano's world."""
    from vidbooth.config import load_config
    from vidbooth.config.image_prompt import ImagePromptConfig
    from vidbooth.config.load import recipe_or_default
    from vidbooth.errors import UserError

    if data is not None and not data.strip():  # else the world's clips, for minutes, in place of the user's
        raise UserError("--data is empty (an unset shell variable?): give a folder of clips, or leave --data out to "
                        "train on nano's world")
    if data is not None and clips is not None:
        raise UserError("--num-clips counts world clips; with --data every clip of the folder is used: drop "
                        "--num-clips")
    overrides = options.runtime_overrides(base, motion_adapter, device, precision, attention, None) | {
        "out": out,
        "coarse.steps": coarse_steps,
        "fine.steps": fine_steps,
        "coarse.batch_size": batch_size,
        "fine.batch_size": batch_size,
        "coarse.checkpoint_every": checkpoint_every,
        "fine.checkpoint_every": checkpoint_every,
        "coarse.gradient_checkpointing": gradient_checkpointing,
        "fine.gradient_checkpointing": gradient_checkpointing,
        "data.num_frames": num_frames,
        "data.resolution": resolution,
        "encoder": image_encoder,
        "data.folder": data,
        "word": word,
        "data.clips": clips,
        "overwrite": overwrite or None,
        "resume": resume or None,
        "coarse.seed": seed,
        "fine.seed": seed,
        "data.seed": seed,
    }
    flags = {"coarse.steps": "--coarse-steps", "fine.steps": "--fine-steps", "data.folder": "--data",
             "word": "--word", "data.clips": "--num-clips", "coarse.seed": "--seed", "fine.seed": "--seed",
             "data.seed": "--seed", "coarse.batch_size": "--batch-size", "fine.batch_size": "--batch-size",
             "coarse.checkpoint_every": "--checkpoint-every", "fine.checkpoint_every": "--checkpoint-every",
             "data.num_frames": "--num-frames", "data.resolution": "--resolution",
             "encoder": "--image-encoder"}  # named in the error of a bad value
    recipe = recipe_or_default(recipe, "image-prompt", sets, overrides)
    cfg = load_config(ImagePromptConfig, recipe, sets, overrides, flags=flags)
    if cfg.data.folder:
        from vidbooth.data.subject_clips import check_data_folder

        check_data_folder(cfg.data.folder)
    from vidbooth.engine.image_prompt import train_image_prompt as run  # after the cheap checks: it loads torch

    run(cfg)
