"""vidbooth: personalise text-to-video diffusion models with your own subjects and motions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vidbooth")  # pyproject.toml's, the one place it is written
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
