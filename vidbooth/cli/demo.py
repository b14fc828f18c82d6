"""`vidbooth demo`: learn a held-out subject and motion on the shipped base and show that it helps."""

from __future__ import annotations

import typer

from vidbooth.cli import options


def demo(
    out: str = typer.Option(
        None, "--out", "-o", metavar="DIR", help="Folder for the videos, photos, clip and report (default: demo)."
    ),
    seed: int = typer.Option(
        None, "--seed", metavar="N",
        help="Picks the held-out subject and motion, and seeds training and sampling (default 0).",
    ),
    fast: bool = typer.Option(None, "--fast/--no-fast",
                              help="Fewer steps and videos: about half the time, noisier scores (default: off)."),
    base: str = typer.Option(
        None, "--base", metavar="MODEL", help="Base model: diffusers folder, hub id, or built-in name (default: nano); "
        "one other than nano is trained with recipes/tiny/*."
    ),
    num_videos: int = typer.Option(
        None, "--num-videos", metavar="N", help="Videos per variant (default 8); --fast halves it (at least 2)."
    ),
    device: str = options.Device,
    precision: str = typer.Option(
        None, "--precision", metavar="PRECISION", help="Precision: auto | fp32 | fp16 | bf16 (default auto: each "
        "recipe's own, fp32 in nano's on every device)."
    ),
    attention: str = options.Attention,
    recipe: str = typer.Option(  # not options.Recipe: the demo has no recipes under recipes/
        None, "--recipe", "-r", metavar="FILE",
        help="YAML file of the demo's settings (the keys of docs/demo.md, e.g. fast: true).",
    ),
    sets: list[str] = options.Sets,
) -> None:
    """Make photos of a subject and a clip of a motion the base never saw, learn both, generate, and score."""
    from vidbooth.config import load_config
    from vidbooth.config.demo import DemoConfig

    overrides = {
        "out": out,
        "seed": seed,
        "fast": fast,
        "base": base,
        "num_videos": num_videos,
        "runtime.device": device,
        "runtime.precision": precision,
        "runtime.attention": attention,
    }  # the demo seeds every step from `seed` (checked as the demo's own key)
    cfg = load_config(DemoConfig, recipe, sets, overrides)
    from vidbooth.engine.demo import run_demo  # after the cheap checks: it loads torch

    run_demo(cfg)
