"""`MotionConfig`: everything `vidbooth train-motion` (alias `motion-adapter`) runs with.

YAML key = dataclass field = flag name; recipes live in `recipes/<base>/motion.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from vidbooth.config import checks
from vidbooth.config.schema import BackboneConfig, RuntimeConfig
from vidbooth.config.train import TrainConfig
from vidbooth.errors import UserError

SUBLAYERS = ("attn1", "attn2", "ff")


@dataclass
class MotionDataConfig:
    num_frames: int = 8
    """Frames per clip, taken from its start (ModelScope: 32); a clip too short for them is spread evenly."""
    fps: float = 8.0
    """Sample the clips at this frame rate (DreamVideo: 8). A recipe's `fps` gives way to a `stride`; one given on the
    command line (`--fps`, `--set data.fps=`) with a stride is refused (cli/motion.py)."""
    stride: int | None = None
    """Take every `stride`-th source frame instead of resampling to `fps`."""
    resolution: int | None = None
    """Square training size in pixels (centre crop; DreamVideo: 256); default: the model's native size."""


@dataclass
class MotionAdapterConfig:
    targets: list[str] = field(default_factory=lambda: list(SUBLAYERS))
    """Sublayers of every temporal transformer block to adapt: attn1, attn2 (both temporal self-attention), ff."""
    hidden_ratio: float = 0.5
    """Bottleneck width as a fraction of the layer width (DreamVideo: 0.5)."""


@dataclass
class AppearanceConfig:
    guidance: bool = True
    """Condition the adapter on an image embedding of a random frame, so it learns the motion and not the looks."""
    encoder: str | None = None
    """Image encoder: a CLIP vision folder or hub id, 'tiny-clip', 'vae'; empty: the base's image_encoder/ or 'vae'."""
    p_image_zero: float = 0.5
    """Probability of dropping the appearance embedding in a training step (DreamVideo: 0.5)."""


@dataclass
class PreviewConfig:
    """`preview.png` in the artifact: the learned motion applied to the first caption (or 'a <class_noun>')."""

    enabled: bool = True
    num_inference_steps: int = 25
    guidance_scale: float = 9.0

    def __post_init__(self) -> None:
        checks.sampling("preview", None, self.num_inference_steps, self.guidance_scale)


@dataclass
class MotionConfig:
    SETTINGS_NAME: ClassVar[str] = "motion"
    """The command's name for its settings: docs/<name>.md lists them, recipes/<model>/<name>.yaml are shipped."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, steps=1000))
    data: MotionDataConfig = field(default_factory=MotionDataConfig)
    adapter: MotionAdapterConfig = field(default_factory=MotionAdapterConfig)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    name: str = ""
    """Name of the motion in the library (what `generate --motion` takes)."""
    clips: list[str] = field(default_factory=list)
    """Training clips: video files (mp4, mov, webm, mkv, avi, m4v, gif) or folders of frames."""
    captions: list[str] = field(default_factory=list)
    """One caption per clip, or one for all; default: 'a <class_noun>'."""
    class_noun: str = ""
    """What moves in the clips (person, dog, car): the default caption and the preview prompt."""
    overwrite: bool = False
    """Replace a motion of the same name."""
    resume: bool = False
    """Continue an interrupted run from its last checkpoint."""

    def __post_init__(self) -> None:
        """Validate what the dataclass types cannot when the config is built; raises UserError naming the key."""
        checks.no_empty_entries("clips", self.clips, "path", "the path", "an empty clip path was given (an unset "
                                "shell variable?): give the clip file or folder", "CLIPS")
        self.train.check("train")
        if self.data.num_frames < 2:
            raise UserError(f"data.num_frames must be at least 2 to learn a motion, got {self.data.num_frames}")
        checks.at_most("data.num_frames", self.data.num_frames, checks.MAX_FRAMES, "--num-frames")
        if self.data.stride is not None and self.data.stride < 1:
            raise UserError(f"data.stride must be at least 1, got {self.data.stride}")
        checks.positive("data.fps", self.data.fps, "--fps")
        if self.data.resolution is not None and self.data.resolution < 8:
            raise UserError(f"data.resolution must be at least 8 pixels, got {self.data.resolution}")
        if not 0 <= self.appearance.p_image_zero <= 1:
            raise UserError(f"appearance.p_image_zero must be in [0, 1], got {self.appearance.p_image_zero}")
        unknown = sorted(set(self.adapter.targets) - set(SUBLAYERS))
        if unknown or not self.adapter.targets:
            choices = ", ".join(SUBLAYERS)
            raise UserError(f"adapter.targets {self.adapter.targets} are invalid: choose from {choices}")
        if not 0 < self.adapter.hidden_ratio <= 4:
            raise UserError(f"adapter.hidden_ratio must be in (0, 4], got {self.adapter.hidden_ratio}")

    def check(self) -> None:
        """Check that what training needs is given; raises UserError naming what is missing."""
        if not self.name:  # an empty one is told as the recipe's or the --set's by `load.told_as_given`
            raise checks.EmptySetting("name", "--name", "the name the motion gets in the library",
                                      "--name is required: the name the motion gets in the library", argument="--name")
        if not self.clips:
            raise UserError("no training clips given: pass one or more video files or frame folders")
        if self.captions and len(self.captions) not in (1, len(self.clips)):
            raise UserError(
                f"{len(self.captions)} captions for {len(self.clips)} clips: give one --caption per clip or one for all"
            )

    def caption_for(self, index: int) -> str:
        if self.captions:
            return self.captions[index if len(self.captions) > 1 else 0]
        return f"a {self.class_noun}" if self.class_noun else ""
