"""Schema of `vidbooth evaluate`. YAML key = dataclass field = CLI flag name."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from vidbooth.config import checks
from vidbooth.eval.features import DEFAULT_DINO_MODEL


@dataclass
class EvaluateConfig:
    SETTINGS_NAME: ClassVar[str] = "evaluate"
    """The command's name for its settings: docs/<name>.md lists them (it ships no recipes)."""
    videos: list[str] = field(default_factory=list)
    """Videos to score; glob patterns ('out/*.mp4') are expanded."""
    manifest: str | None = None
    """Text file of `video|||reference_image_folder|||prompt` lines (DreamVideo's format); paths relative to it."""
    prompt: str | None = None
    """Prompt of every video (CLIP-T); a manifest line's own prompt takes precedence."""
    subject: str | None = None
    """Library subject whose training photos are the reference images (CLIP-I, DINO-I)."""
    ref_images: str | None = None
    """Folder of reference images (CLIP-I, DINO-I); instead of `subject`."""
    motion: str | None = None
    """Library motion whose training clip(s) are the reference motion (motion fidelity)."""
    ref_video: str | None = None
    """Reference motion clip (motion fidelity); instead of `motion`."""
    metrics: list[str] = field(default_factory=lambda: ["auto"])
    """Metrics to compute, from clip_t, clip_i, dino_i, t_cons, motion_fidelity, probe_colour, probe_shape,
    probe_motion ('probe': all three). 'auto': CLIP-T and T.Cons, plus CLIP-I/DINO-I where reference images are
    given and motion fidelity where a reference motion is; with clip_model 'nano', the probe metrics too."""
    clip_model: str = "auto"
    """CLIP model (transformers CLIPModel): local folder or hub id; 'nano' for the shipped nano model's image
    tower, whose metrics are reported as nano-T (unavailable), nano-I and nano T.Cons. 'auto': nano when what is
    evaluated comes from nano (the config `generate` wrote beside each video, the library subject and motion),
    else openai/clip-vit-base-patch32."""
    probe: bool | None = None
    """The world-probe metrics (probe colour/shape/motion) for videos whose prompt is a world caption: true adds
    them, false leaves them out, null (auto): with clip_model nano under metrics auto."""
    dino_model: str = DEFAULT_DINO_MODEL
    """DINO model (transformers ViTModel or Dinov2Model): local folder or hub id."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    batch_size: int = 16
    """Frames embedded at once."""
    json: str | None = None
    """Write per-video and aggregate results as JSON to this path ('-': on stdout, the table then on stderr)."""
    csv: str | None = None
    """Write one CSV row per video to this path ('-': on stdout, as json)."""

    def __post_init__(self) -> None:
        # an empty clip_model or dino_model had been read as the current folder, an empty device as auto unsaid
        for key, what in (("manifest", "a manifest file"), ("subject", "a learned subject's name"),
                          ("ref_images", "a folder of reference images"), ("motion", "a learned motion's name"),
                          ("ref_video", "a reference clip"), ("json", "a file, or - for stdout"),
                          ("csv", "a file, or - for stdout"), ("clip_model", "a CLIP folder or hub id, nano or auto"),
                          ("dino_model", "a DINO folder or hub id"), ("device", "auto, cpu, cuda or cuda:N")):
            checks.not_empty(key, getattr(self, key), "--" + key.replace("_", "-"), what)
        # an unset shell variable (`"$VIDEO"`): it had been a traceback; a recipe's or a --set's is told as theirs
        checks.no_empty_entries("videos", self.videos, "path", "the path", "an empty video path was given (an unset "
                                "shell variable?): give the video file, or a glob pattern of them", "VIDEOS")
        checks.no_empty_entries("metrics", self.metrics, "metric", "a metric's name",  # had been 'auto' unsaid
                                "--metrics is empty (an unset shell variable?): give metric names, or leave it out")
        # '~' as the shell would have expanded it, also where it could not (`--json=~/scores.json`, a recipe)
        self.videos = [os.path.expanduser(video) for video in self.videos]
        for key in ("manifest", "ref_images", "ref_video", "json", "csv"):
            if getattr(self, key):
                setattr(self, key, os.path.expanduser(getattr(self, key)))
        checks.at_least("batch_size", self.batch_size, 1, "--batch-size")
