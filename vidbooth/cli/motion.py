"""`vidbooth train-motion` (stage name: `vidbooth motion-adapter`): learn a motion from one or a few clips."""

from __future__ import annotations

import math

import typer

from vidbooth.cli import options

FLAGS = {
    "train.steps": "--steps",
    "train.lr": "--lr",
    "train.batch_size": "--batch-size",
    "train.checkpoint_every": "--checkpoint-every",
    "train.seed": "--seed",
    "captions": "--caption",
    "data.num_frames": "--num-frames",
    "data.fps": "--fps",
    "data.stride": "--stride",
    "data.resolution": "--resolution",
    "appearance.p_image_zero": "--p-image-zero",
}
"""Config key -> flag, for the error of a bad value and a refused --resume."""


def train_motion(
    clips: list[str] = typer.Argument(
        None,
        metavar="CLIPS",
        help="Video files (mp4, mov, webm, mkv, avi, m4v, gif, animated webp or png) or folders of frames (required "
        "unless the --recipe gives clips).",
    ),
    name: str = typer.Option(
        None, "--name", "-n", metavar="NAME",
        help="The motion's name in the library, for generate --motion (required unless the --recipe gives one).",
    ),
    caption: list[str] = typer.Option(
        None, "--caption", metavar="TEXT", help="Caption of each clip, in order (repeat), or one."
    ),
    class_noun: str = typer.Option(
        None, "--class-noun", metavar="NOUN", help="What moves (person, dog): default caption and preview."
    ),
    steps: int = typer.Option(
        None, "--steps", metavar="N", help="Training steps (default: 800 on nano, else 1000; DreamVideo 500-3000)."
    ),
    lr: float = typer.Option(
        None, "--lr", metavar="LR", help="Learning rate (default: 3e-3 on nano, else 1e-5 as DreamVideo)."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", metavar="N", help="Clips per training step on each process (default: 2 on nano, else 1)."
    ),
    checkpoint_every: int = typer.Option(
        None, "--checkpoint-every", metavar="N",
        help="Save a resumable checkpoint every N steps (default: 100 on nano, else 500).",
    ),
    gradient_checkpointing: bool = options.GradientCheckpointing,
    num_frames: int = typer.Option(
        None, "--num-frames", "--frames", metavar="N", help="Frames per training clip (default 8)."
    ),
    fps: float = typer.Option(
        None, "--fps", metavar="FPS",
        help="Sample the clips at this frame rate (default 8; refused with a stride: --stride or data.stride).",
    ),
    stride: int = typer.Option(None, "--stride", metavar="N", help="Take every N-th source frame instead of --fps."),
    resolution: int = typer.Option(
        None, "--resolution", metavar="PX", help="Square training size in pixels (default: the model's; nano 64)."
    ),
    appearance_guidance: bool = typer.Option(
        None, "--appearance-guidance/--no-appearance-guidance",
        help="Condition on a frame's image embedding (DreamVideo: on; nano's recipe: off).",
    ),
    image_encoder: str = typer.Option(
        None, "--image-encoder", metavar="MODEL", help="Appearance encoder for guidance: CLIP vision folder or hub id, "
        "tiny-clip or vae (default: the base's image_encoder/, else vae)."
    ),
    p_image_zero: float = typer.Option(
        None, "--p-image-zero", metavar="P", help="Chance of dropping the appearance embedding, 0-1 (default 0.5)."
    ),
    preview: bool = typer.Option(
        None, "--preview/--no-preview", help="Render preview.png into the motion (default: on)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a motion of the same name."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    base: str = options.Base,
    motion_adapter: str = options.MotionAdapterPath,
    device: str = options.Device,
    precision: str = options.TrainingPrecision,
    attention: str = options.Attention,
    seed: int = options.Seed,
    recipe: str = options.recipe("motion"),
    sets: list[str] = options.Sets,
) -> None:
    """Learn the motion in CLIPS as a motion adapter (DreamVideo); appearance guidance keeps the looks out of it."""
    from vidbooth.config import load_config
    from vidbooth.config.checks import EmptySetting
    from vidbooth.config.load import recipe_or_default, told_as_given
    from vidbooth.config.motion import MotionConfig
    from vidbooth.reporting import info

    overrides = options.runtime_overrides(base, motion_adapter, device, precision, attention, seed) | {
        "name": name,
        "clips": clips or None,
        "captions": caption or None,
        "class_noun": class_noun,
        "overwrite": overwrite or None,
        "resume": resume or None,
        "train.steps": steps,
        "train.lr": lr,
        "train.batch_size": batch_size,
        "train.checkpoint_every": checkpoint_every,
        "train.gradient_checkpointing": gradient_checkpointing,
        "train.seed": seed,
        "data.num_frames": num_frames,
        "data.fps": fps,
        "data.stride": stride,
        "data.resolution": resolution,
        "appearance.guidance": appearance_guidance,
        "appearance.encoder": image_encoder,
        "appearance.p_image_zero": p_image_zero,
        "preview.enabled": preview,
    }
    recipe = recipe_or_default(recipe, "motion", sets, overrides)
    cfg = load_config(MotionConfig, recipe, sets, overrides, flags=FLAGS)
    _check_fps_or_stride(cfg, recipe, sets, overrides)
    _check_appearance_settings(cfg, sets, {"--image-encoder": image_encoder, "--p-image-zero": p_image_zero})
    options.warn_of_idle_sets(cfg, sets)
    from vidbooth.data.clips import check_clip_exists

    try:  # what training needs, then a clip that is not there: told before torch is imported (seconds)
        cfg.check()
    except EmptySetting as exc:  # an empty name: the recipe's or the --set's that gave it
        raise told_as_given(exc, recipe, sets, overrides, cfg.SETTINGS_NAME) from exc

    def check_clips() -> None:
        for clip in cfg.clips:
            check_clip_exists(clip)

    options.inputs_exist(check_clips, cfg.clips, "clip", "clips", recipe, sets, overrides, "CLIPS")
    from vidbooth.engine.motion import train_motion as run_train_motion  # after the cheap checks: it loads torch

    result = run_train_motion(cfg)
    # a run resumed at its last step (stopped while saving) runs no step to time
    timed = f"{result.step_seconds:.2f} s/step" if math.isfinite(result.step_seconds) else "no step run now"
    info(
        f"motion '{result.name}': {result.steps} steps, loss {result.loss:.4f}, {timed}, "
        f"{result.trainable_parameters:,} trainable parameters"
    )


def _check_appearance_settings(cfg, sets: list[str] | None, flags: dict[str, object]) -> None:
    """The appearance encoder and its dropout act only with appearance guidance (off in nano's recipe): their flags
    are refused without it, their --set warned of, rather than ignored."""
    from vidbooth.config.load import given_by
    from vidbooth.errors import UserError
    from vidbooth.reporting import warn

    if cfg.appearance.guidance:
        return
    named = [flag for flag, value in flags.items() if value is not None]
    if named:
        listed = " and ".join(named)
        raise UserError(f"{listed} {'acts' if len(named) == 1 else 'act'} only with appearance guidance, which this "
                        f"run has off: add --appearance-guidance, or drop {listed}")
    for key in ("appearance.encoder", "appearance.p_image_zero"):
        if where := given_by(key, None, sets, {}):
            warn(f"{where[1]} has no effect without appearance guidance (--appearance-guidance)")


def _check_fps_or_stride(cfg, recipe: str | None, sets: list[str] | None, overrides: dict) -> None:
    """A stride, wherever it comes from, decides which frames are taken, and data.fps goes unused: so a frame rate
    given on the command line (--fps, or --set data.fps=) with a stride is refused rather than ignored. A recipe's
    data.fps (every shipped recipe has one, and so does a saved config.yaml) gives way to a stride."""
    from vidbooth.config.load import given_by
    from vidbooth.errors import UserError

    fps = given_by("data.fps", None, sets, overrides, FLAGS["data.fps"])  # no recipe: the command line only
    if cfg.data.stride is None or fps is None:
        return
    where, stride = given_by("data.stride", recipe, sets, overrides, FLAGS["data.stride"]) or ("", "data.stride")
    if where in ("flag", "set"):
        hint = "give one of them"
    else:  # the recipe's
        hint = f"drop {fps[1]}, or add --set data.stride=null to sample at {cfg.data.fps:g} fps"
    both = f"{fps[1]} gives data.fps and data.stride, which" if stride == fps[1] else f"{fps[1]} and {stride}"
    raise UserError(f"{both} both choose the clips' frames: {hint}")
