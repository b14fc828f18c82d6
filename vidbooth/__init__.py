"""vidbooth: personalise text-to-video diffusion models with your own subjects and motions."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("vidbooth")  # pyproject.toml's, the one place it is written
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
"""The shipped recipes (a link to the top-level recipes/, packaged): recipes/<model>/<command>.yaml."""


def shipped_recipes(kind: str) -> list[str]:
    """The recipes shipped for a command's recipe name `kind` ('motion' -> ['animatediff/motion', ...])."""
    return sorted(f"{path.parent.name}/{kind}" for path in RECIPES_DIR.glob(f"*/{kind}.yaml"))
