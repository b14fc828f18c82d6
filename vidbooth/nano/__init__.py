"""nano: a procedural sprite world with known truth (`world`) and a probe that reads it back from videos (`probe`)."""

from pathlib import Path

PACKAGED = Path(__file__).resolve().parents[1] / "assets" / "nano"
"""The shipped nano model's folder (`--base nano`)."""
