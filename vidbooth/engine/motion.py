"""Motion learning (DreamVideo §3.2, `../shared/method.md` §2): a motion adapter in the temporal layers, trained
on one or a few clips with appearance guidance, stored in the library beside subjects.

`train_motion(cfg)` runs on the shared training loop (`vidbooth.engine.train`). Frozen work is done once
before it: the clips' VAE latents, their captions' text embeddings and the appearance embedding of every
training frame. Each step then picks one random frame per sample for the guidance and drops its embedding
with probability `appearance.p_image_zero` (a zero embedding: `W_cond` has no bias, so zero = no condition).

`load_motion(backbone, name, scale)` puts a stored motion adapter on a backbone for generation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from vidbooth import __version__, reporting
from vidbooth.adapters.base import adapters_of, load_tensors, remove, save_tensors, set_scale
from vidbooth.adapters.motion import (
    KIND,
    MotionAdapterSpec,
    cast_motion_adapter,
    inject_motion_adapter,
    load_motion_state_dict,
    motion_parameters,
    motion_state_dict,
    set_appearance,
)
from vidbooth.config.motion import MotionConfig
from vidbooth.data.clips import (check_clip_exists, clip_to_tensor, load_clip_for_sampling, prepare_clip,
                                 sample_frames)
from vidbooth.data.images import hash_file, hash_files, is_image_file, natural_sort_key
from vidbooth.engine.backbone import Backbone
from vidbooth.engine.objective import HighNoise, denoising_loss, training_scheduler
from vidbooth.errors import UserError
from vidbooth.fileio import absolute_path
from vidbooth.eval.motion import NO_MOTION, moving_signature
from vidbooth.reporting import info

ADAPTER_FILE = "motion_adapter.safetensors"
PREVIEW_FILE = "preview.png"
CONFIG_FILE = "config.yaml"
STAGE = "motion"


@dataclass
class TrainingClip:
    source: str
    sha256: str
    caption: str
    frames: np.ndarray
    """The sampled frames (F, H, W, 3) uint8, not yet sized for the model."""
    fps: float
    """Frame rate of the sampled frames."""


@dataclass
class MotionResult:
    name: str
    path: Path
    steps: int
    loss: float
    step_seconds: float
    trainable_parameters: int


# ---- the method the training loop optimises --------------------------------------------------------
class MotionAdapterMethod:
    """The backbone's denoising loss with a motion adapter in its temporal layers; only the adapter trains."""

    def __init__(
        self, backbone: Backbone, spec: MotionAdapterSpec, p_image_zero: float, high_noise: HighNoise = HighNoise()
    ):
        self.backbone = backbone
        self.high_noise = high_noise
        self.spec = spec
        self.p_image_zero = p_image_zero
        self.noise_scheduler = training_scheduler(backbone.scheduler_config)
        inject_motion_adapter(backbone.unet, backbone.temporal_layers(), spec)
        self.params = motion_parameters(backbone.unet)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.params

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        bb = self.backbone
        set_appearance(bb.unet, self._appearance(batch, generator))
        latents = batch["latents"].to(bb.device, bb.dtype)  # (B, C, F, h, w)
        text = batch["text"].to(bb.device, bb.dtype)  # (B, L, D)
        return denoising_loss(bb, self.noise_scheduler, latents, text, generator, self.high_noise).mean()

    def _appearance(self, batch: dict, generator: torch.Generator) -> torch.Tensor | None:
        """e of one random frame per sample, zeroed with probability p_image_zero; None without guidance."""
        if self.spec.cond_dim is None:
            return None
        per_frame = batch["appearance"]  # (B, F, cond_dim)
        b, f = per_frame.shape[:2]
        frame = torch.randint(0, f, (b,), generator=generator)
        keep = (torch.rand(b, generator=generator) >= self.p_image_zero).float()
        return (per_frame[torch.arange(b), frame] * keep[:, None]).to(self.backbone.device)  # (B, cond_dim)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return motion_state_dict(self.backbone.unet)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_motion_state_dict(self.backbone.unet, state, "checkpoint")


# ---- inputs ---------------------------------------------------------------------------------------
def read_training_clips(cfg: MotionConfig) -> list[TrainingClip]:
    """Decode and sample every clip (only the frames sampling uses); any bad clip raises a UserError first."""
    data = cfg.data
    target_fps = None if data.stride else data.fps
    clips = []
    for index, source in enumerate(cfg.clips):
        path = check_clip_exists(source)
        named = len(cfg.clips) > 1  # which clip a warning or refusal is about
        with _naming_clip(path) if named else contextlib.nullcontext():
            frames, fps = load_clip_for_sampling(path, data.num_frames, target_fps, data.stride)
            sampled = sample_frames(frames, fps, data.num_frames, target_fps, data.stride,
                                    warn=(lambda message: reporting.warn(f"clip {path}: {message}")) if named else None)
        sampled_fps = fps / data.stride if data.stride else data.fps
        caption = cfg.caption_for(index)
        clips.append(TrainingClip(str(path.resolve()), source_sha256(path), caption, sampled, sampled_fps))
    return clips


def warn_of_repeated_clips(clips: list[TrainingClip]) -> None:
    """One warning naming a clip given twice, or copied under another name: it counts once for each time."""
    from vidbooth.data.images import copies

    found = copies([Path(clip.source) for clip in clips], [clip.sha256 for clip in clips])
    if found:
        first, copy = found[0]
        what = f"clip {copy} is given twice" if first == copy else f"clip {copy} is the same clip as {first}"
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        reporting.warn(f"{what}{more}: it counts once for each time it is given; give each clip once")


@contextlib.contextmanager
def _naming_clip(path: Path) -> Iterator[None]:
    """A UserError raised inside that does not name `path` is raised again naming it: with several clips, the
    refusal of 'this 1 fps clip' did not say which."""
    try:
        yield
    except UserError as exc:
        if str(path) in str(exc):
            raise
        raise UserError(f"clip {path}: {exc}") from exc


def warn_of_still_clips(clips: list[TrainingClip]) -> None:
    """One warning for each clip in which nothing moves, by the test with which `evaluate --motion` refuses such a
    clip as its reference: a motion learned from it learns stillness, and could never be evaluated."""
    seen = set()  # a clip given twice is warned of once
    for clip in clips:
        if clip.sha256 in seen:
            continue
        seen.add(clip.sha256)
        if len(clip.frames) > 1 and moving_signature(clip.frames) is None:
            reporting.warn(f"clip {clip.source} {NO_MOTION}: the motion adapter will learn stillness; choose a clip "
                           "with visible motion")


def source_sha256(path: Path) -> str:
    """sha256 of a video file, or of a frame folder's (name, sha256) list in frame order."""
    if not path.is_dir():
        return hash_file(path)
    return hash_files(sorted((p for p in path.iterdir() if is_image_file(p)), key=natural_sort_key))


def training_items(backbone: Backbone, clips: list[TrainingClip], size: int, encoder) -> list[dict]:
    """The frozen work, done once: per clip its latents (C, F, h, w), text embedding (L, D) and, with
    guidance, the appearance embedding of every frame (F, cond_dim). All kept on the CPU."""
    texts = {c: backbone.encode_prompt([c])[0].cpu() for c in {clip.caption for clip in clips}}
    items = []
    for clip in clips:
        frames = prepare_clip(clip.frames, size)  # (F, S, S, 3)
        item = {"latents": backbone.encode_video(clip_to_tensor(frames))[0].cpu(), "text": texts[clip.caption]}
        if encoder is not None:
            item["appearance"] = encoder.embed(frames).cpu()
        items.append(item)
    return items


# ---- training -------------------------------------------------------------------------------------
def train_motion(cfg: MotionConfig) -> MotionResult:
    """Learn the motion of `cfg.clips` as motion adapter `cfg.name` and store it in the library."""
    from vidbooth.engine.train import checked_then_met, held_by_the_first, refuse_other_settings, run_folder
    from vidbooth.library import artifact_lock, check_free

    def resumable(clips: list[TrainingClip], accelerator) -> None:  # other settings: refused before the model loads
        refuse_other_settings(run_folder("motion", cfg.name, STAGE), cfg.resume, cfg.train,
                              _settings_signature(cfg, clips), accelerator)

    settings = {"mixed_precision": cfg.train.mixed_precision, "device": cfg.runtime.device,
                "base_precision": cfg.runtime.precision}
    clips, accelerator = checked_then_met(lambda: _checked_clips(cfg), settings, resumable)
    with held_by_the_first(accelerator, lambda: artifact_lock("motion", cfg.name),
                           lambda: check_free("motion", cfg.name, cfg.overwrite)):
        return _train_locked(cfg, clips, accelerator)


def _checked_clips(cfg: MotionConfig) -> list[TrainingClip]:
    """Every check that needs no model (settings, name, library, base, encoder); returns the clips, read."""
    from vidbooth.engine.appearance import check_encoder
    from vidbooth.engine.backbone import is_image_model
    from vidbooth.engine.train import check_high_noise, refuse_to_discard, run_folder
    from vidbooth.library import check_free, refuse_if_being_trained, validate_name

    cfg.check()
    validate_name(cfg.name, "motion")
    refuse_if_being_trained("motion", cfg.name)  # another run of this name now is no stopped run
    check_free("motion", cfg.name, cfg.overwrite)
    refuse_to_discard([run_folder("motion", cfg.name, STAGE)], cfg.resume, cfg.overwrite)
    clips = read_training_clips(cfg)
    # a wrong --base fails here, early, and so does an image model without a motion adapter
    if is_image_model(cfg.backbone.base, cfg.backbone.revision) and not cfg.backbone.motion_adapter:
        raise UserError(
            f"{cfg.backbone.base} is an image model: it has no temporal layers for a motion adapter to learn in; give "
            "--motion-adapter (an AnimateDiff motion module) to learn a motion on it"
        )
    check_high_noise([cfg.train], cfg.backbone.base, cfg.backbone.revision)
    if cfg.appearance.guidance:
        check_encoder(cfg.appearance.encoder)  # minutes before the model would have loaded
    return clips


def _train_locked(cfg: MotionConfig, clips: list[TrainingClip], accelerator) -> MotionResult:
    from vidbooth.engine.appearance import load_appearance_encoder
    from vidbooth.engine.backbone import load_backbone_for
    from vidbooth.engine.sampling import check_steps
    from vidbooth.engine.train import (backbone_device, remove_runs, run_folder, saved_by_the_first,
                                       seed_everything, train)

    backbone = load_backbone_for(cfg.backbone, cfg.runtime, backbone_device(accelerator))
    size = training_size(backbone, cfg)
    if cfg.preview.enabled:  # made after training: a setting it cannot take is told now, not then
        check_steps(backbone, cfg.preview.num_inference_steps,
                    "preview.num_inference_steps (--set preview.num_inference_steps=N)")
    encoder = load_appearance_encoder(cfg.appearance.encoder, backbone) if cfg.appearance.guidance else None
    warn_of_repeated_clips(clips)  # once every input is checked (a bad one stays a single error line)
    if reporting.first_of_its_machine():  # it measures each clip's flow, for a warning the others do not show
        warn_of_still_clips(clips)
    if not any(clip.caption for clip in clips):
        why = "an empty --caption" if cfg.captions else "no --class-noun or --caption"  # a caption wins
        info(f"{why}: the clips are learned with the empty caption (the preview too)")
    info(
        f"learning motion '{cfg.name}' from {len(clips)} clip(s), {cfg.data.num_frames} frames at {size}px on "
        f"{cfg.backbone.base} ({backbone.family}); appearance guidance: {encoder.name if encoder else 'off'}"
    )
    items = training_items(backbone, clips, size, encoder)
    spec = MotionAdapterSpec(tuple(cfg.adapter.targets), cfg.adapter.hidden_ratio, encoder.dim if encoder else None)
    seed_everything(cfg.train.seed)
    method = MotionAdapterMethod(backbone, spec, cfg.appearance.p_image_zero, HighNoise.of(cfg.train))
    run_dir = run_folder("motion", cfg.name, STAGE)
    result = train(
        method,
        items,
        cfg.train,
        run_dir,
        accelerator,
        resume=cfg.resume,
        signature=_signature(cfg, clips, spec, backbone, encoder),
        description=f"motion {cfg.name}",
        unet=backbone.unet,
    )
    trainable = sum(p.numel() for p in method.params)
    path = Path()
    if accelerator.is_main_process:
        set_appearance(backbone.unet, None)
        path = save_motion(cfg, backbone, clips, spec, encoder, result, result.total_seconds, accelerator.num_processes)
        remove_runs([run_dir], f"motion '{cfg.name}'")
    accelerator.wait_for_everyone()
    saved_by_the_first(accelerator, f"motion '{cfg.name}'")
    return MotionResult(cfg.name, path, result.step, result.loss, result.step_seconds, trainable)


def training_size(backbone: Backbone, cfg: MotionConfig) -> int:
    """data.resolution, or the model's native size; a UserError when the model cannot take it or data.num_frames."""
    from vidbooth.engine.sampling import check_frames, training_resolution

    size = training_resolution(backbone, cfg.data.resolution)
    check_frames(backbone, cfg.data.num_frames)
    return size


def _signature(cfg: MotionConfig, clips, spec: MotionAdapterSpec, backbone: Backbone, encoder) -> dict:
    """Settings that must be equal for --resume to continue a run."""
    from vidbooth.engine.train import dtype_signature

    return _settings_signature(cfg, clips) | {
        "base": backbone.fingerprint,
        "adapter": spec.to_json(),
        "appearance": {"encoder": encoder.name if encoder else None, "p_image_zero": cfg.appearance.p_image_zero},
    } | dtype_signature(backbone.dtype)


def _settings_signature(cfg: MotionConfig, clips) -> dict:
    """The part of the resume signature known before the model loads."""
    return {
        "method": "motion",
        "clips": [c.sha256 for c in clips],
        "captions": [c.caption for c in clips],
        "data": asdict(cfg.data),
    }


# ---- the artifact ---------------------------------------------------------------------------------
def save_motion(
    cfg: MotionConfig, backbone: Backbone, clips, spec, encoder, result, seconds: float, processes: int = 1
) -> Path:
    """Write the artifact atomically: adapter tensors, the training clips, a preview, the config and the manifest."""
    from vidbooth.config import save_config
    from vidbooth.data.video import write_video
    from vidbooth.library import CLIPS_DIR, MANIFEST, artifact_dir, staged_artifact, write_json

    provenance = {"method": KIND, "base_fingerprint": backbone.fingerprint, "spec": spec.to_json()}
    with staged_artifact("motion", cfg.name, cfg.overwrite) as stage:
        save_tensors(stage / ADAPTER_FILE, motion_state_dict(backbone.unet), provenance)
        cast_motion_adapter(backbone.unet, backbone.dtype)  # for the preview; the file keeps fp32
        clip_files = [f"{CLIPS_DIR}/clip-{index:02d}.mp4" for index in range(len(clips))]
        for clip, file in zip(clips, clip_files):
            write_video(clip.frames, stage / file, fps=max(1, round(clip.fps)))
        preview_prompt = clips[0].caption
        if cfg.preview.enabled:
            from vidbooth.engine.train import kept_if_preview_fails

            with kept_if_preview_fails():
                _write_preview(backbone, cfg, preview_prompt, stage / PREVIEW_FILE)
        rerun = rerun_config(cfg)
        save_config(rerun, stage / CONFIG_FILE)
        # the manifest's base and config as config.yaml holds them
        manifest = _manifest(rerun, backbone, clips, clip_files, spec, encoder, result, seconds, processes)
        write_json(stage / MANIFEST, manifest)
    path = artifact_dir("motion", cfg.name)
    info(f"saved motion '{cfg.name}' in {path}")
    return path


def rerun_config(cfg: MotionConfig) -> MotionConfig:
    """The recipe that retrains the motion from anywhere, `train-motion --recipe config.yaml --overwrite`: `cfg`
    with every local path (clips, base, motion adapter, appearance encoder) absolute and the run's own mode flags
    (--overwrite, --resume) dropped. Hub ids and built-in names stay as they are."""
    from vidbooth.config.checks import BUILTIN_BASES
    from vidbooth.engine.appearance import TINY_CLIP, VAE
    from vidbooth.engine.backbone import with_absolute_paths

    encoders = {VAE, TINY_CLIP, *BUILTIN_BASES}
    return replace(
        cfg,
        clips=[absolute_path(clip) for clip in cfg.clips],
        backbone=with_absolute_paths(cfg.backbone),
        appearance=replace(cfg.appearance, encoder=absolute_path(cfg.appearance.encoder, encoders)),
        overwrite=False,
        resume=False,
    )


def _manifest(
    cfg: MotionConfig, backbone: Backbone, clips, clip_files, spec, encoder, result, seconds, processes
) -> dict:
    """The manifest; `cfg` is the config that config.yaml holds (`rerun_config`), so both name the same base."""
    return {
        "kind": "motion",
        "name": cfg.name,
        "class_noun": cfg.class_noun,
        "base": cfg.backbone.base,
        "base_fingerprint": backbone.fingerprint,
        "image_fingerprint": backbone.image_fingerprint,
        "family": backbone.family,
        "vidbooth_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "paths": {  # "files" is the library's seal: {tensor file: sha256}
            "motion_adapter": ADAPTER_FILE,
            "preview": PREVIEW_FILE if cfg.preview.enabled else None,
            "config": CONFIG_FILE,
            "clips": clip_files,
        },
        "adapter": {
            "targets": list(spec.targets),
            "hidden_ratio": spec.hidden_ratio,
            "cond_dim": spec.cond_dim,
            "appearance_encoder": encoder.name if encoder else None,
            "trainable_parameters": sum(p.numel() for p in motion_parameters(backbone.unet)),
        },
        "clips": [
            {
                "source": absolute_path(c.source), "sha256": c.sha256, "caption": c.caption,
                "frames": len(c.frames), "fps": c.fps,
            }
            for c in clips
        ],
        "training": {
            "steps": result.step, "final_loss": result.loss, "seconds": round(seconds, 2), "processes": processes
        },
        "captions": [c.caption for c in clips],
        "preview_prompt": clips[0].caption,
        "config": asdict(cfg),
    }


def _write_preview(backbone: Backbone, cfg: MotionConfig, prompt: str, path: Path) -> None:
    from vidbooth.data.video import save_contact_sheet
    from vidbooth.engine.sampling import sample_video

    size = training_size(backbone, cfg)
    frames = sample_video(
        backbone,
        prompt,
        description="preview (--no-preview skips it)",
        num_frames=cfg.data.num_frames,
        height=size,
        width=size,
        num_inference_steps=cfg.preview.num_inference_steps,
        guidance_scale=cfg.preview.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(cfg.train.seed),
        settings="preview",
    )[0]
    save_contact_sheet(frames, path)


# ---- using a stored motion ------------------------------------------------------------------------
def read_motion_manifest(name: str) -> dict:
    """The manifest of motion `name`; an unknown name raises a UserError listing the known motions."""
    from vidbooth.library import artifact_dir, read_manifest

    return read_manifest(artifact_dir("motion", name)) | {"path": str(artifact_dir("motion", name))}


def motion_spec_of(file: Path, text: str, tensors: dict[str, torch.Tensor]) -> MotionAdapterSpec:
    """The motion adapter's spec in `file`'s metadata, checked (and its appearance width against the file's own
    tensors) before any module is built from it: a UserError for one training would not have written."""
    from vidbooth.library import redo

    try:
        spec = MotionAdapterSpec.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{file}: its adapter config in the metadata is damaged ({exc}): "
                        f"{redo(file.parent)}") from exc
    held = {tuple(t.shape[1:]) for key, t in tensors.items() if key.endswith(".cond.weight")}
    if held != ({(spec.cond_dim,)} if spec.cond_dim else set()):
        raise UserError(f"{file}: its adapter config (cond_dim {spec.cond_dim}) does not fit its tensors: "
                        f"{redo(file.parent)}")
    return spec


def load_motion(backbone: Backbone, name: str, scale: float = 1.0) -> dict:
    """Put motion adapter `name` on `backbone` at strength `scale`, in the backbone's dtype, appearance condition
    dropped (see `vidbooth.engine.compose`). Returns its manifest.

    A motion learned on another base (fingerprint) is refused with a UserError naming both.
    """
    from vidbooth.library import check_base, redo

    manifest = read_motion_manifest(name)
    check_base(KIND, name, manifest, backbone.source, backbone.fingerprint)
    if adapters_of(backbone.unet, KIND):
        raise UserError(f"a motion adapter is already loaded: load one motion ('{name}') at a time")
    file = Path(manifest["path"]) / manifest["paths"]["motion_adapter"]
    tensors, metadata = load_tensors(file)
    if "spec" not in metadata:
        raise UserError(f"{file} lacks its adapter config in the metadata: {redo(file.parent)}")
    spec = motion_spec_of(file, metadata["spec"], tensors)
    with torch.random.fork_rng(devices=[]):  # initial weights, replaced below: the caller's stream stays as it was
        inject_motion_adapter(backbone.unet, backbone.temporal_layers(), spec)
    try:
        load_motion_state_dict(backbone.unet, tensors, str(file))
    except UserError:
        remove(backbone.unet, KIND)
        raise
    cast_motion_adapter(backbone.unet, backbone.dtype)
    set_scale(backbone.unet, KIND, scale)
    set_appearance(backbone.unet, None)
    return manifest
