"""`evaluate_videos`: score generated videos against a prompt, reference images and a reference motion.

The flow: gather jobs (videos, globs, manifest lines), read the shared references, decide each job's metrics,
load only the feature models those metrics need, score every job, then show and write the report. Input that
concerns every job (an empty --ref-images folder, an unreadable --ref-video) stops the run with a UserError.
A problem with one video is recorded against it and the others still run; with a single video and no
manifest it is raised instead, so the command fails with that one message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vidbooth import __version__, reporting
from vidbooth.data.video import ensure_writable_dir, read_video
from vidbooth.errors import UserError
from vidbooth.eval.features import ImageEmbedder, ImageTextEmbedder, ModelUnavailable, load_clip, load_dino
from vidbooth.eval.jobs import EvalJob, jobs_from_manifest, jobs_from_videos
from vidbooth.eval.metrics import clip_t, reference_similarity, temporal_consistency
from vidbooth.eval.motion import METHOD, MIN_FLOW, WORK_SIDE, motion_signature, signature_similarity
from vidbooth.eval.references import motion_clip_paths, read_image_folder, read_motion_clip, subject_photos
from vidbooth.eval.report import METRIC_LABELS, METRICS, EvaluationReport, VideoResult, show, write_csv, write_json

if TYPE_CHECKING:
    from vidbooth.config.evaluate import EvaluateConfig

CLIP_METRICS = ("clip_t", "clip_i", "t_cons")
DINO_METRICS = ("dino_i",)
REFERENCE_IMAGE_METRICS = ("clip_i", "dino_i")


def evaluate_videos(config: EvaluateConfig) -> EvaluationReport:
    requested = requested_metrics(config.metrics)
    _check_outputs(config)
    jobs = _gather_jobs(config)
    motion_paths = _reference_motion_paths(config)
    if requested and "motion_fidelity" in requested and not motion_paths:
        raise UserError("motion_fidelity needs a reference motion: pass --motion NAME or --ref-video CLIP")
    single = len(jobs) == 1 and not config.manifest
    # Without a manifest every job shares the prompt and references, so a gap in them concerns the whole run.
    plans = [_plan(job, requested, bool(motion_paths), single, shared_inputs=not config.manifest) for job in jobs]
    needed = {name for metrics in plans for name in metrics or ()}
    scorer = _Scorer(motion_paths, config.device, config.batch_size)
    scorer.load_models(needed, config.clip_model, config.dino_model)
    if needed and needed <= set(scorer.unavailable):
        raise UserError("no metric can be computed: " + "; ".join(sorted(set(scorer.unavailable.values()))))
    results = []
    with reporting.progress("evaluating", total=len(jobs)) as task:
        for job, metrics in zip(jobs, plans):
            results.append(_evaluate_job(job, metrics, scorer, single))
            task.advance()
    report = EvaluationReport(results, scorer.unavailable, scorer.models, [str(p) for p in motion_paths], _versions())
    show(report)
    if config.json:
        write_json(report, config.json)
    if config.csv:
        write_csv(report, config.csv)
    return report


def requested_metrics(names: list[str]) -> list[str] | None:
    """Canonical metric names in canonical order, or None for 'auto'. Accepts 'CLIP-T', 't.cons', 'motion'."""
    wanted = {_canonical(part) for name in names for part in str(name).split(",") if part.strip()}
    if not wanted or wanted == {"auto"}:
        return None
    unknown = sorted(wanted - set(METRICS))
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)}: choose from auto, {', '.join(METRICS)}")
    return [name for name in METRICS if name in wanted]


def _canonical(name: str) -> str:
    name = name.strip().lower().replace("-", "_").replace(".", "_")
    return "motion_fidelity" if name == "motion" else name


def _check_outputs(config: EvaluateConfig) -> None:
    for path in (config.json, config.csv):
        if path:
            ensure_writable_dir(Path(path).parent)


def _gather_jobs(config: EvaluateConfig) -> list[EvalJob]:
    if config.subject and config.ref_images:
        raise UserError("--subject and --ref-images both give reference images: pass only one")
    references = str(subject_photos(config.subject)) if config.subject else config.ref_images
    if references:
        read_image_folder(references)  # shared by every job: a bad folder stops the run here
    jobs = jobs_from_manifest(config.manifest, config.prompt, references) if config.manifest else []
    jobs += jobs_from_videos(list(config.videos), config.prompt, references)
    if not jobs:
        raise UserError("no video to evaluate: give one or more VIDEO files or globs, or --manifest FILE")
    return jobs


def _reference_motion_paths(config: EvaluateConfig) -> list[Path]:
    if config.motion and config.ref_video:
        raise UserError("--motion and --ref-video both give a reference motion: pass only one")
    if config.motion:
        return motion_clip_paths(config.motion)
    return [Path(config.ref_video)] if config.ref_video else []


def _plan(
    job: EvalJob, requested: list[str] | None, has_motion: bool, single: bool, shared_inputs: bool
) -> list[str] | None:
    """The metrics of `job`, or None when it cannot run (the reason is then in `job.problem`).

    Raises instead for a single video, and when the missing prompt or references are shared by every job.
    """
    if job.problem is None:
        try:
            return _job_metrics(job, requested, has_motion)
        except UserError as exc:
            if single or shared_inputs:
                raise
            job.problem = str(exc)
    if single:
        raise UserError(_failure_message(job, job.problem))
    return None


def _job_metrics(job: EvalJob, requested: list[str] | None, has_motion: bool) -> list[str]:
    if requested is None:
        auto = {"clip_t", "t_cons"} | (set(REFERENCE_IMAGE_METRICS) if job.reference_images else set())
        requested = [name for name in METRICS if name in auto or (name == "motion_fidelity" and has_motion)]
    if "clip_t" in requested and not job.prompt:
        raise UserError(
            f"no prompt for {job.video}: CLIP-T needs one; pass --prompt, fill the manifest's third field, "
            "or choose --metrics without clip_t"
        )
    missing_references = [METRIC_LABELS[n] for n in REFERENCE_IMAGE_METRICS if n in requested]
    if missing_references and not job.reference_images:
        raise UserError(
            f"no reference images for {job.video}: {'/'.join(missing_references)} need --subject, --ref-images "
            "or the manifest's second field"
        )
    return requested


def _evaluate_job(job: EvalJob, metrics: list[str] | None, scorer: _Scorer, single: bool) -> VideoResult:
    result = VideoResult(job.video, job.source, job.prompt, job.reference_images)
    if metrics is None:
        result.error = _failure_message(job, job.problem)
        return result
    try:
        result.metrics = scorer.score(job, metrics)
    except UserError as exc:
        if single:
            raise
        result.error = _failure_message(job, str(exc))
    return result


def _failure_message(job: EvalJob, message: str) -> str:
    return f"{job.source}: {message}" if job.source else message


class _Scorer:
    """Feature models, reference embeddings and motion signatures, each computed once and reused per job."""

    def __init__(self, motion_paths: list[Path], device: str, batch_size: int):
        self.device, self.batch_size = device, batch_size
        self.clip: ImageTextEmbedder | None = None
        self.dino: ImageEmbedder | None = None
        self.unavailable: dict[str, str] = {}
        self.models: dict[str, dict] = {}
        self._reference_signatures = [self._reference_signature(path) for path in motion_paths]
        if motion_paths:
            self.models["motion"] = {"method": METHOD}
        self._texts: dict[str, np.ndarray] = {}
        self._images: dict[str, list[np.ndarray]] = {}
        self._references: dict[tuple[str, str], np.ndarray] = {}

    @staticmethod
    def _reference_signature(path: Path) -> np.ndarray:
        signature = motion_signature(read_motion_clip(path))
        if not signature.any():
            raise UserError(
                f"reference motion clip {path} shows no motion (nothing moves more than {MIN_FLOW} px between frames "
                f"at {WORK_SIDE} px): choose a clip with visible motion"
            )
        return signature

    def load_models(self, needed: set[str], clip_model: str, dino_model: str) -> None:
        if needed & set(CLIP_METRICS):
            self.clip = self._load("clip", load_clip, clip_model, needed & set(CLIP_METRICS))
        if needed & set(DINO_METRICS):
            self.dino = self._load("dino", load_dino, dino_model, needed & set(DINO_METRICS))

    def _load(self, role: str, loader: Callable, name: str, metrics: set[str]):
        try:
            embedder = loader(name, self.device, self.batch_size)
        except ModelUnavailable as exc:
            self.models[role] = {"name": name, "status": "unavailable", "reason": str(exc)}
            self.unavailable.update({metric: str(exc) for metric in METRICS if metric in metrics})
            return None
        self.models[role] = embedder.description | {"status": "loaded"}
        return embedder

    def score(self, job: EvalJob, metrics: list[str]) -> dict[str, float | None]:
        frames = read_video(job.video)
        values: dict[str, float | None] = dict.fromkeys(metrics)
        if self.clip is not None and set(metrics) & set(CLIP_METRICS):
            frame_embeds = self.clip.image_embeds(frames)
            if "clip_t" in metrics:
                values["clip_t"] = clip_t(frame_embeds, self._text_embed(job.prompt))
            if "clip_i" in metrics:
                values["clip_i"] = reference_similarity(frame_embeds, self._reference_embeds(self.clip, "clip", job))
            if "t_cons" in metrics and len(frames) > 1:
                values["t_cons"] = temporal_consistency(frame_embeds)
        if self.dino is not None and "dino_i" in metrics:
            reference_embeds = self._reference_embeds(self.dino, "dino", job)
            values["dino_i"] = reference_similarity(self.dino.image_embeds(frames), reference_embeds)
        if "motion_fidelity" in metrics and len(frames) > 1:
            values["motion_fidelity"] = self._motion_fidelity(frames)
        return values

    def _text_embed(self, prompt: str) -> np.ndarray:
        if prompt not in self._texts:
            self._texts[prompt] = self.clip.text_embeds([prompt])[0]
        return self._texts[prompt]

    def _reference_embeds(self, embedder: ImageEmbedder, role: str, job: EvalJob) -> np.ndarray:
        folder = job.reference_images
        if folder not in self._images:
            self._images[folder] = read_image_folder(folder)
        if (role, folder) not in self._references:
            self._references[role, folder] = embedder.image_embeds(self._images[folder])
        return self._references[role, folder]

    def _motion_fidelity(self, frames: np.ndarray) -> float:
        signature = motion_signature(frames)
        return float(np.mean([signature_similarity(signature, ref) for ref in self._reference_signatures]))


def _versions() -> dict[str, str]:
    import cv2
    import torch
    import transformers

    return {
        "vidbooth": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
