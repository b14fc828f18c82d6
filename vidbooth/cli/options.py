"""Flags shared by several commands, so that every command spells them the same way."""

from __future__ import annotations

import typer

Recipe = typer.Option(
    None, "--recipe", "-r", help="Recipe YAML file, or a name under recipes/ such as zeroscope/subject."
)
Sets = typer.Option(
    None, "--set", help="Override any config key of this command (see its docs page): --set key=value (repeatable)."
)
Base = typer.Option(None, "--base", help="Base model: diffusers folder, hub id, or built-in name (default: nano).")
MotionAdapterPath = typer.Option(None, "--motion-adapter", help="AnimateDiff MotionAdapter (folder or hub id) for an SD1.5 base.")
Device = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N")
Precision = typer.Option(None, "--precision", help="auto | fp32 | fp16 | bf16 (auto: fp16 on CUDA, fp32 on CPU).")
Attention = typer.Option(None, "--attention", help="Attention backend: auto | sdpa | xformers | math.")
Seed = typer.Option(None, "--seed", help="Random seed.")


def runtime_overrides(base, motion_adapter, device, precision, attention, seed) -> dict:
    """Explicit flags as dotted config keys (None = not given)."""
    return {
        "backbone.base": base,
        "backbone.motion_adapter": motion_adapter,
        "runtime.device": device,
        "runtime.precision": precision,
        "runtime.attention": attention,
        "runtime.seed": seed,
    }
