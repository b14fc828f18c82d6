"""`vidbooth pretrain`: train the nano base model from scratch on the procedural world, or continue a run."""

from __future__ import annotations

import typer

from vidbooth.cli import options


def pretrain(
    out: str = typer.Option(
        None, "--out", "-o", metavar="DIR", help="Run folder: checkpoints, state.json, curve.csv, model/ (default "
        "runs/nano); one that holds a run needs --resume."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    init_from: str = typer.Option(
        None, "--init-from", metavar="MODEL", help="Start from an exported model ('nano': the packaged one)."
    ),
    max_minutes: float = typer.Option(
        None, "--max-minutes", metavar="MINUTES",
        help="Checkpoint and stop after this many minutes (default 0: no limit).",
    ),
    export: str = typer.Option(
        None, "--export", metavar="DIR", help="Also write the finished model here (diffusers layout)."
    ),
    threads: int = typer.Option(None, "--threads", metavar="N", help="CPU threads for torch (default 1)."),
    seed: int = options.Seed,
    recipe: str = typer.Option(
        "nano/pretrain", "--recipe", "-r", metavar="RECIPE", show_default=False,
        help="Recipe: a YAML file, or a shipped one (default nano/pretrain).",
    ),
    sets: list[str] = options.Sets,
) -> None:
    """Pretrain nano (autoencoder, tiny CLIP, UNet3D) with a probe curve; resumable and deterministic by seed."""
    from vidbooth.config import checks, load_config
    from vidbooth.config.load import given_by
    from vidbooth.config.pretrain import PretrainConfig
    from vidbooth.reporting import info

    # an unset shell variable: a run from scratch (hours), or no export, in place of the one asked for
    checks.not_empty("init_from", init_from, "--init-from", "nano or an exported model's folder")
    checks.not_empty("export", export, "--export", "a folder for the model")
    overrides = {
        "out": out,
        "resume": resume or None,
        "init_from": init_from,
        "max_minutes": max_minutes,
        "export": export,
        "threads": threads,
        "seed": seed,
    }
    cfg = load_config(PretrainConfig, recipe, sets, overrides)
    where = given_by("out", recipe, sets, overrides, "--out")  # an out that is a file: the recipe's, a --set's too
    cfg.check(where[1] if where else None)  # the stages and sizes, told before torch is imported
    from vidbooth.nano.pretrain import pretrain as run_pretrain  # after the cheap checks: it loads torch

    result = run_pretrain(cfg)
    steps = ", ".join(f"{stage} {count}" for stage, count in result.steps.items())
    state = "finished" if result.finished else "stopped"  # the stop's own line said how to continue
    info(f"pretraining {state}: {steps} steps; run folder {result.run_dir}")
