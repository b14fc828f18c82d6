"""`DemoConfig`: what `vidbooth demo` runs with (see docs/demo.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from vidbooth.config import checks
from vidbooth.config.schema import RuntimeConfig
from vidbooth.errors import UserError
from vidbooth.fileio import expand_user

MAX_VIDEOS = checks.MAX_VIDEOS


@dataclass
class DemoConfig:
    SETTINGS_NAME: ClassVar[str] = "demo"
    """The command's name for its settings: docs/<name>.md lists them (it ships no recipes)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    base: str = "nano"
    """Base model: 'nano' (trained with recipes/nano/*) or any other base (trained with recipes/tiny/*)."""
    out: str = "demo"
    """Folder for inputs, videos, contact sheets, metrics.json and the demo's own library."""
    seed: int = 0
    """Picks the held-out subject and motion, and seeds training and sampling."""
    fast: bool = False
    """Fewer training and sampling steps and fewer videos: about half the time, noisier numbers."""
    num_videos: int = 8
    """Videos per variant (each with its own noise); the scores are averaged over them. At most MAX_VIDEOS: a
    variant's videos are sampled in one batch (nano: 128 in 56 s and 1.2 GB on 2 CPU cores)."""
    subject_steps: int = 0
    """Textual-inversion steps, the identity adapter training half as many (0: the recipe's, nano 600 and 300)."""
    motion_steps: int = 0
    """Motion-adapter steps (0: the recipe's)."""
    num_inference_steps: int = 0
    """Sampling steps (0: the recipe's)."""

    def __post_init__(self) -> None:  # checked before anything is trained or written
        checks.not_empty("out", self.out, "--out", "the folder the demo writes into (default: demo)",
                         "--out is empty: give the folder the demo writes into (default: demo)")
        checks.not_empty("base", self.base, "--base", "a model folder, a hub id, or nano (the default)")  # not '.'
        self.out = str(expand_user(self.out))  # '~/demo' is the home folder's, as elsewhere
        checks.base_found(self.base)
        checks.at_least("num_videos", self.num_videos, 1, "--num-videos")
        checks.at_most("num_videos", self.num_videos, MAX_VIDEOS, "--num-videos")
        checks.seed("seed", self.seed)
        if self.runtime.seed != 0:  # every step is seeded from `seed`: this one was ignored without a word
            raise UserError(f"runtime.seed {self.runtime.seed} is not the demo's seed: give seed (--seed) instead")
        for key in ("subject_steps", "motion_steps", "num_inference_steps"):
            checks.at_least(key, getattr(self, key), 0)  # 0: the recipe's
