"""`SubjectConfig`: what `vidbooth textual-inversion`, `identity-adapter` and `train-subject` run with.

YAML key = dataclass field; recipes live in `recipes/<base>/subject.yaml`. Defaults are DreamVideo's
official settings (`../shared/method.md` §2).
"""

from __future__ import annotations

import math
import os
import string
from dataclasses import dataclass, field
from typing import ClassVar

from vidbooth.config import checks
from vidbooth.config.schema import BackboneConfig, RuntimeConfig
from vidbooth.config.train import MAX_BATCH_SIZE, TrainConfig
from vidbooth.errors import UserError

STAGES = ("textual_inversion", "identity")
"""The subject stages, in the order they run: the pseudo-word's embedding, then the identity adapter."""
MAX_VECTORS = 256
"""Vectors of a pseudo-word at most, before the model says how many its prompts hold (a typo of 2**31 had filled
the memory making their tokens' names)."""

DEFAULT_CAPTIONS = [
    "a photo of {}",
    "a photo of a {}",
    "a close-up photo of the {}",
    "a good photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of my {}",
    "a rendering of a {}",
]


def _one_subject_place(caption: str) -> bool:
    """Whether `caption` has exactly one replacement field, a plain `{}`, as `str.format` reads it (`{x}`,
    `{} {}` or a lone `{` failed there with a traceback)."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(caption)
                  if name is not None]
    except ValueError:
        return False
    return fields == [("", "", None)]


@dataclass
class SubjectDataConfig:
    resolution: int | None = None
    """Square training size in pixels (DreamVideo: 256); default: the model's native size."""
    flip: bool = False
    """Augment with left-right mirrored copies (only for subjects without a meaningful left and right)."""
    scale_jitter: float = 0.0
    """Augment with random zoom-ins of up to this fraction (0.1 = 10%)."""
    views: int = 4
    """Augmented copies of each photo, encoded once before training (used only with flip or scale_jitter)."""
    captions: list[str] = field(default_factory=lambda: list(DEFAULT_CAPTIONS))
    """Caption templates; '{}' becomes '<token> <class noun>' ('a photo of S* dog')."""


@dataclass
class TextualInversionConfig:
    num_vectors: int = 1
    """Embedding vectors for the pseudo-word (DreamVideo: 1). More vectors: tokens S*, S*_1, ..."""
    guidance_scale: float = 0.0
    """Above 1: learn the pseudo-word under classifier-free guidance at this scale (the loss is on the guided
    prediction, the empty prompt unconditional), as generation samples it. Set it to generation's guidance_scale
    when guidance shifts the learned subject's colour. 1 or below: the plain conditional loss (DreamVideo)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, steps=3000, batch_size=4))

    def __post_init__(self) -> None:
        self.train.check("textual_inversion.train")


@dataclass
class IdentityConfig:
    hidden_ratio: float = 0.5
    """Adapter bottleneck width as a fraction of each cross-attention layer's width (DreamVideo: 0.5)."""
    layers: list[str] = field(default_factory=lambda: ["*"])
    """Which spatial cross-attention layers get an adapter: patterns (`*` any text) matched against their module
    names, such as 'mid_block.*' (DreamVideo: every one, '*'). The adapter file holds the layers it was given."""
    guidance_scale: float = 0.0
    """Above 1: train the adapter under classifier-free guidance at this scale with the adapter in the conditional
    pass only (the unconditional pass is the base's), and apply it to the conditional half of guidance at
    sampling (recorded in the adapter file). 1 or below: the plain loss, the adapter on both halves (DreamVideo)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, steps=1000, batch_size=4))

    def __post_init__(self) -> None:
        self.train.check("identity.train")


@dataclass
class PriorConfig:
    """DreamBooth's prior preservation, for the identity-adapter stage (textual inversion cannot drift)."""

    enabled: bool = False
    """Train on class images too, so that '<class noun>' prompts keep their meaning."""
    class_images: str | None = None
    """Folder of class images; default: generate them with the frozen base model (cached for reuse)."""
    num_class_images: int = 200
    """Class images to use (DreamBooth: about 200)."""
    weight: float = 1.0
    """lambda: weight of the class-image loss."""
    prompt: str = ""
    """Prompt of the generated class images, '{}' in it the class noun ('a {} standing still'): the captions
    without the subject's pseudo-word, as in DreamBooth; default 'a photo of a <class noun>'."""
    num_inference_steps: int = 25
    guidance_scale: float = 9.0
    sample_batch_size: int = 4
    """Class images generated per batch."""

    def __post_init__(self) -> None:
        checks.sampling("prior", None, self.num_inference_steps, self.guidance_scale)
        checks.at_least("prior.sample_batch_size", self.sample_batch_size, 1)
        checks.at_most("prior.sample_batch_size", self.sample_batch_size, MAX_BATCH_SIZE)  # one sampling batch


@dataclass
class SubjectPreviewConfig:
    """`preview.png` in the artifact: a contact sheet of one video of the learned subject."""

    enabled: bool = True
    prompt: str = ""
    """Default: the first of `data.captions` ('a photo of <token> <class noun>'; nano's 'a S* cross standing still')."""
    num_frames: int = 8
    num_inference_steps: int = 25
    guidance_scale: float = 9.0

    def __post_init__(self) -> None:
        checks.sampling("preview", self.num_frames, self.num_inference_steps, self.guidance_scale)


@dataclass
class SubjectConfig:
    SETTINGS_NAME: ClassVar[str] = "subject"
    """The command's name for its settings: docs/<name>.md lists them, recipes/<model>/<name>.yaml are shipped."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: SubjectDataConfig = field(default_factory=SubjectDataConfig)
    textual_inversion: TextualInversionConfig = field(default_factory=TextualInversionConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    preview: SubjectPreviewConfig = field(default_factory=SubjectPreviewConfig)
    name: str = ""
    """The subject's name in the library, also its pseudo-word in prompts (S*, sks)."""
    photos: list[str] = field(default_factory=list)
    """Photos of the subject, 3-5 in all: folders of photos and/or photo files. A recipe may give one path as a
    plain string."""
    class_noun: str = ""
    """What the subject is (dog, person, mug); initialises the pseudo-word and forms the captions."""
    overwrite: bool = False
    """Replace a subject of the same name (identity-adapter: retrain an existing identity adapter)."""
    resume: bool = False
    """Continue an interrupted run from its last checkpoint."""
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    """The stages `train-subject` runs: both (default), [textual_inversion] alone, or [identity] alone (added to an
    existing subject). A subject's config.yaml records the stages its files hold, so that it reruns as built;
    `textual-inversion` and `identity-adapter` run their own stage whatever this says."""

    def __post_init__(self) -> None:
        if isinstance(self.photos, (str, os.PathLike)):  # SubjectConfig(photos="dog/") from Python
            self.photos = [os.fspath(self.photos)]
        checks.no_empty_entries("photos", self.photos, "path", "the path", "an empty photo path was given (an unset "
                                "shell variable?): give the photo file or folder", "PHOTOS")
        self._check_values()

    def check_name(self) -> None:
        """The name every stage needs: an empty one is an `EmptySetting`, which `load.told_as_given` tells as the
        recipe's or the --set's that gave it empty (left out, or an empty --name: '--name is required')."""
        if not self.name:  # one of spaces is told by the library's name rules
            raise checks.EmptySetting("name", "--name", "the subject's name and pseudo-word (e.g. 'S*')",
                                      "--name is required: the subject's name and pseudo-word, e.g. --name 'S*'",
                                      argument="--name")

    def check(self, stages: tuple[str, ...]) -> None:
        """Check that what the stages that will run need is given; raises UserError naming what is missing (an
        `EmptySetting` for an empty name or class noun: see `check_name`)."""
        self.check_name()
        if not self.photos:
            raise UserError("no photos given: pass a folder with 3-5 photos of the subject, or the photo files")
        if "textual_inversion" in stages and not self.class_noun.strip():
            raise checks.EmptySetting("class_noun", "--class-noun", "what the subject is (dog, person, mug)",
                                      "--class-noun is required: what the subject is, e.g. --class-noun dog",
                                      argument="--class-noun")
        if len(stages) > 1 and self.textual_inversion.train.mixed_precision != self.identity.train.mixed_precision:
            raise UserError(
                "textual_inversion.train.mixed_precision and identity.train.mixed_precision differ: one run "
                "uses one setting, so make them equal"
            )

    def _check_values(self) -> None:
        """Validate what the dataclass types cannot when the config is built; raises UserError naming the key."""
        if self.data.resolution is not None and self.data.resolution < 8:
            raise UserError(f"data.resolution must be at least 8 pixels, got {self.data.resolution}")
        if not 0 <= self.data.scale_jitter < 1:
            raise UserError(f"data.scale_jitter must be in [0, 1), got {self.data.scale_jitter}")
        if self.data.views < 1:
            raise UserError(f"data.views must be at least 1, got {self.data.views}")
        if ("{" in self.prior.prompt or "}" in self.prior.prompt) and not _one_subject_place(self.prior.prompt):
            raise UserError(f"prior.prompt may contain '{{}}' once (the class noun's place) and no other braces, got "
                            f"{self.prior.prompt!r}")
        bad = [c for c in self.data.captions if not _one_subject_place(c)]
        if bad or not self.data.captions:
            raise UserError(f"data.captions must each contain '{{}}' once (the subject's place) and no other braces "
                            f"(write a brace as {{{{ or }}}}), got {bad or 'none'}")
        checks.at_least("textual_inversion.num_vectors", self.textual_inversion.num_vectors, 1)
        checks.at_most("textual_inversion.num_vectors", self.textual_inversion.num_vectors, MAX_VECTORS,
                       hint=": a pseudo-word's vectors fit in a prompt with the rest of it (CLIP's: 77 tokens)")
        for stage, stage_cfg in (("textual_inversion", self.textual_inversion), ("identity", self.identity)):
            if not (stage_cfg.guidance_scale >= 0 and math.isfinite(stage_cfg.guidance_scale)):
                raise UserError(f"{stage}.guidance_scale must be 0 (off) or positive, got {stage_cfg.guidance_scale}")
        # an empty stage had been told as 'got []'
        checks.no_empty_entries("stages", self.stages, "stage", f"a stage's name ({' or '.join(STAGES)})",
                                "stages holds an empty stage: give [textual_inversion, identity], [textual_inversion] "
                                "or [identity]")
        if not self.stages or [s for s in STAGES if s in self.stages] != list(self.stages):
            raise UserError(
                f"stages must be [{', '.join(STAGES)}], [{STAGES[0]}] or [{STAGES[1]}] (each once, in that order), "
                f"got [{', '.join(map(str, self.stages))}]"
            )
        if not self.identity.layers:
            raise UserError("identity.layers is empty: give patterns of the cross-attention layers, e.g. ['*']")
        checks.no_empty_entries("identity.layers", self.identity.layers, "pattern", "a layer pattern",  # matched no
                                "identity.layers holds an empty pattern: give patterns of the cross-attention layers, "
                                "e.g. ['*']")  # layer, without a word
        if not 0 < self.identity.hidden_ratio <= 4:
            raise UserError(f"identity.hidden_ratio must be in (0, 4], got {self.identity.hidden_ratio}")
        if self.prior.enabled:
            checks.at_least("prior.num_class_images", self.prior.num_class_images, 1, "--num-class-images")
            checks.non_negative("prior.weight", self.prior.weight, "--prior-weight")
