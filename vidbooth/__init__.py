"""vidbooth: personalise text-to-video diffusion models with your own subjects and motions."""

__version__ = "0.1.0"
