"""`vidbooth evaluate`: CLIP-T, CLIP-I, DINO-I, T.Cons, motion fidelity (and nano's own scores) of videos."""

from __future__ import annotations

import typer

from vidbooth.cli import options
from vidbooth.errors import UserError


class VideosFailed(UserError):
    """Some videos of a batch could not be evaluated; the others were. Exit code 1 (2 is for bad input)."""

    exit_code = 1


def evaluate(
    videos: list[str] = typer.Argument(
        None, metavar="VIDEOS",
        help="Videos (or animated GIF, WebP, PNG) to score; quoted glob patterns ('out/*.mp4') are expanded.",
    ),
    prompt: str = typer.Option(
        None, "--prompt", "-p", metavar="TEXT", help="The prompt the videos were made from (CLIP-T)."
    ),
    subject: list[str] = typer.Option(  # a list, so that a second one (generate takes several) is refused, not lost
        None, "--subject", "-s", metavar="NAME", help="Library subject: its training photos are the references (one).",
        autocompletion=options.learned_names("subject"),
    ),
    ref_images: str = typer.Option(
        None, "--ref-images", metavar="PATH", help="Reference images (CLIP-I, DINO-I): a folder of them, or one image."
    ),
    motion: str = typer.Option(
        None, "--motion", "-m", metavar="NAME", help="Library motion: its training clip(s) are the reference motion.",
        autocompletion=options.learned_names("motion"),
    ),
    ref_video: str = typer.Option(
        None, "--ref-video", metavar="PATH",
        help="Reference motion clip (motion fidelity): a video, or an animated GIF, WebP or PNG.",
    ),
    manifest: str = typer.Option(
        None, "--manifest", metavar="FILE", help="File of video|||ref_dir|||prompt lines (DreamVideo's)."
    ),
    metrics: list[str] = typer.Option(
        None,
        "--metrics",
        metavar="LIST",
        help="Comma-separated: clip_t, clip_i, dino_i, t_cons, motion_fidelity, probe (probe_colour, probe_shape, "
        "probe_motion); nano_t, nano_i, nano_t_cons are other names of clip_t, clip_i, t_cons, labelled so with "
        "--clip-model nano (default: auto).",
    ),
    clip_model: str = typer.Option(
        None, "--clip-model", metavar="MODEL", help="CLIP folder or hub id, or nano (labelled nano-*); default auto: "
        "nano for videos of nano, else openai/clip-vit-base-patch32."
    ),
    dino_model: str = typer.Option(
        None, "--dino-model", metavar="MODEL", help="DINO folder or hub id (default facebook/dino-vits16)."
    ),
    probe: bool = typer.Option(
        None, "--probe/--no-probe",
        help="World-probe metrics (colour, shape, motion) for world-caption prompts (default: on with nano).",
    ),
    batch_size: int = typer.Option(None, "--batch-size", metavar="N", help="Frames embedded at once (default 16)."),
    json_path: str = typer.Option(
        None, "--json", metavar="FILE",
        help="Also write the per-video and mean results to FILE as JSON (-: on stdout, the table on stderr).",
    ),
    csv_path: str = typer.Option(
        None, "--csv", metavar="FILE", help="Also write one CSV row per video to FILE (-: on stdout, as --json -)."
    ),
    device: str = options.Device,
    recipe: str = typer.Option(  # not options.Recipe: evaluate has no --base, and no recipes under recipes/
        None, "--recipe", "-r", metavar="FILE",
        help="YAML file of evaluate's settings (the flag names with _ for -, docs/evaluate.md).",
    ),
    sets: list[str] = options.Sets,
) -> None:
    """Score videos against their prompt, reference images and reference motion.

    Exit 0 when every video was evaluated, 1 when some videos of a batch failed (the others are still
    reported), 2 for bad input.
    """
    from vidbooth.config import load_config
    from vidbooth.config.evaluate import EvaluateConfig

    if subject and len(subject) > 1:  # click keeps the last of a single-valued option, silently
        from vidbooth.errors import UserError

        raise UserError(f"--subject is given {len(subject)} times ({', '.join(subject)}): evaluate scores against one "
                        "subject's photos; give one --subject, or --ref-images with a folder of all their photos")
    overrides = {
        "videos": list(videos) if videos else None,
        "prompt": prompt,
        "subject": subject[0] if subject else None,
        "ref_images": ref_images,
        "motion": motion,
        "ref_video": ref_video,
        "manifest": manifest,
        "metrics": list(metrics) if metrics else None,
        "clip_model": clip_model,
        "dino_model": dino_model,
        "probe": probe,
        "batch_size": batch_size,
        "json": json_path,
        "csv": csv_path,
        "device": device,
    }
    cfg = load_config(EvaluateConfig, recipe, sets, overrides)
    from vidbooth.eval.evaluate import evaluate_videos  # after the cheap checks: it loads torch

    report = evaluate_videos(cfg)
    if report.failed:
        raise VideosFailed(f"{len(report.failed)} of {len(report.results)} videos could not be evaluated: see above")
