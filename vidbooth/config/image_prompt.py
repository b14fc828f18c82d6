"""`ImagePromptConfig`: everything `vidbooth train-image-prompt` runs with (VideoBooth's image-prompt model).

YAML key = dataclass field = flag name; the recipe lives in `recipes/nano/image-prompt.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from vidbooth.config import checks
from vidbooth.config.schema import BackboneConfig, RuntimeConfig
from vidbooth.config.train import TrainConfig
from vidbooth.errors import UserError

MAX_CLIPS = 100_000


@dataclass
class ImagePromptDataConfig:
    folder: str | None = None
    """A folder of clips, each with a caption and a photo (or mask) of its subject (docs/image-prompt.md);
    default: none, nano's procedural world."""
    clips: int = 512
    """World clips made for training, each of a pretraining sprite and motion with a photo of its sprite (with a
    folder: all of its clips are used)."""
    num_frames: int = 8
    resolution: int | None = None
    """Square training size in pixels; default: the model's native size."""
    split_seed: int = 0
    """The world split whose pretraining sprites and motions are used (nano's is 0): held-out sprites stay unseen."""
    seed: int = 0
    """Picks the clips and photos."""


@dataclass
class ImagePromptConfig:
    SETTINGS_NAME: ClassVar[str] = "image-prompt"
    """The command's name for its settings: docs/<name>.md lists them, recipes/<model>/<name>.yaml are shipped."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: ImagePromptDataConfig = field(default_factory=ImagePromptDataConfig)
    coarse: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, steps=400, batch_size=4))
    """Stage 1: the mapper from image embedding to word tokens."""
    fine: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, steps=400, batch_size=4))
    """Stage 2, the mapper frozen: the attention injections."""
    word: str = "sprite"
    """The word of the training captions that the image prompt replaces ('a sprite moving left'); prompts given
    with an image prompt must contain it."""
    num_tokens: int = 1
    """Tokens the image prompt becomes in the prompt."""
    hidden_dim: int | None = None
    """The mapper's hidden width; default: 4 x the text width."""
    encoder: str | None = None
    """Image encoder: a CLIP vision folder or hub id, 'tiny-clip', 'vae'; empty: the base's image_encoder/ or 'vae'."""
    out: str = "image_prompt.safetensors"
    """Where the model is saved (one safetensors file); checkpoints go to '<out>.run/' until it is."""
    overwrite: bool = False
    """Replace --out, and start over from a stopped run's checkpoints."""
    resume: bool = False
    """Continue a stopped run from its last checkpoint."""

    def __post_init__(self) -> None:
        self.coarse.check("coarse")
        self.fine.check("fine")
        checks.at_least("data.clips", self.data.clips, 1)
        checks.at_most("data.clips", self.data.clips, MAX_CLIPS)
        checks.at_least("data.num_frames", self.data.num_frames, 2)
        checks.at_most("data.num_frames", self.data.num_frames, checks.MAX_FRAMES)
        checks.at_least("num_tokens", self.num_tokens, 1)
        checks.at_most("num_tokens", self.num_tokens, 16)
        if self.hidden_dim is not None:
            checks.at_least("hidden_dim", self.hidden_dim, 1)
        if self.data.resolution is not None and self.data.resolution < 8:
            raise UserError(f"data.resolution must be at least 8 pixels, got {self.data.resolution}")
        if self.coarse.mixed_precision != self.fine.mixed_precision:
            raise UserError(
                f"coarse.mixed_precision ({self.coarse.mixed_precision}) and fine.mixed_precision "
                f"({self.fine.mixed_precision}) must be the same: one run holds one mixed-precision setting"
            )
        # --data's own check (cli/image_prompt.py) comes first; an empty folder had trained on nano's world instead
        checks.not_empty("data.folder", self.data.folder, "--data", "a folder of clips")
        checks.not_empty("out", self.out, "--out",  # had been told as the flag's, once torch had loaded
                         "the .safetensors file the model is saved to (default: image_prompt.safetensors)")
        one_word = f"word must be one word (the one the image prompt replaces), got '{self.word}'"
        checks.not_empty("word", self.word, "--word", "one word, the one the image prompt replaces", one_word)
        if len(self.word.split()) != 1:
            raise UserError(f"word must be one word (the one the image prompt replaces), got '{self.word}'")
