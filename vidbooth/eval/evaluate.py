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
from vidbooth.data.video import check_writable_dir, ensure_writable_dir, read_video
from vidbooth.errors import UserError
from vidbooth.eval.features import (
    DEFAULT_DINO_MODEL,
    NANO_NAME,
    NANO_NO_TEXT_REASON,
    ImageEmbedder,
    ImageTextEmbedder,
    ModelUnavailable,
    is_nano,
    load_clip,
    load_dino,
    load_nano_image,
    on_this_machine,
)
from vidbooth.eval.jobs import EvalJob, generated_base, jobs_from_manifest, jobs_from_videos, without_pseudo_words
from vidbooth.eval.metrics import clip_t, reference_similarity, temporal_consistency
from vidbooth.eval.motion import METHOD, NO_MOTION, motion_signature, signature_similarity
from vidbooth.eval.references import (
    MAX_VIDEO_FRAMES,
    VIDEO_SHORT_SIDE,
    motion_clip_paths,
    motion_clip_signature,
    read_image_folder,
    subject_photos,
)
from vidbooth.eval.report import (
    METRIC_LABELS,
    METRICS,
    TO_STDOUT,
    EvaluationReport,
    VideoResult,
    print_report,
    show,
    write_reports,
)

if TYPE_CHECKING:
    from vidbooth.config.evaluate import EvaluateConfig

CLIP_METRICS = ("clip_t", "clip_i", "t_cons")
NANO_METRICS = ("nano_t", "nano_i", "nano_t_cons")
NANO_NAMES = dict(zip(CLIP_METRICS, NANO_METRICS))
"""With --clip-model nano, each CLIP metric is measured by nano's towers and reported under its nano name."""
IMAGE_TOWER_METRICS = CLIP_METRICS + NANO_METRICS
DINO_METRICS = ("dino_i",)
REFERENCE_IMAGE_METRICS = ("clip_i", "nano_i", "dino_i")
PROBE_METRICS = ("probe_colour", "probe_shape", "probe_motion")
BETWEEN_FRAMES_METRICS = ("t_cons", "nano_t_cons", "motion_fidelity", "probe_motion")
"""What changes between frames: none for a video of one frame."""
_ALIASES = {"motion": ("motion_fidelity",), "probe": PROBE_METRICS} | {
    nano: (clip,) for clip, nano in NANO_NAMES.items()
}
SELECTABLE = tuple(name for name in METRICS if name not in NANO_METRICS)
AUTO = "auto"
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
"""The CLIP of DreamVideo's metric script, for videos of any base but nano."""


def evaluate_videos(config: EvaluateConfig) -> EvaluationReport:
    requested = requested_metrics(config.metrics)
    if config.probe is False and requested and set(requested) & set(PROBE_METRICS):
        raise UserError("probe is off (--no-probe) but --metrics names probe metrics: pass only one of them")
    _check_outputs(config)
    jobs, shared_images = _gather_jobs(config)
    motion_paths = _reference_motion_paths(config)
    if requested and "motion_fidelity" in requested and not motion_paths:
        raise UserError("motion_fidelity needs a reference motion: pass --motion NAME or --ref-video CLIP")
    single = len(jobs) == 1 and not config.manifest
    clip_model, auto_nano = _clip_model(config, jobs)
    nano = is_nano(clip_model)
    # DINO-I under auto for nano's videos only when its model is here: nano is for machines with no network
    dino = not nano or requested is not None or on_this_machine(config.dino_model)
    choice = _MetricChoice(requested, bool(motion_paths), nano=nano, probe=config.probe, dino=dino)
    # Without a manifest every job shares the references, and the prompt when --prompt gives it (or when no video
    # has one): a gap in them concerns the whole run. A prompt read from the config beside a video is its own.
    no_prompts = not any(job.prompt for job in jobs)
    shared = [not config.manifest and bool(config.prompt or job.prompt or no_prompts) for job in jobs]
    plans = [_plan(job, choice, single, shared_inputs) for job, shared_inputs in zip(jobs, shared)]
    needed = {name for metrics in plans for name in metrics or ()}
    scorer = _Scorer(motion_paths, config.device, config.batch_size, shared_images)  # reads the reference motion
    if auto_nano and needed & set(IMAGE_TOWER_METRICS):  # said once the inputs are checked, and only when used
        reporting.info(f"scoring with nano's own towers, as the base of what is evaluated is {NANO_NAME} "
                       "(--clip-model chooses another)")
    if not dino and any(job.reference_images for job in jobs):
        reporting.info(f"DINO-I left out: {config.dino_model} is not on this machine (--metrics with dino_i, or "
                       "--dino-model <folder>, asks for it)")
    _warn_of_an_unused_dino_model(config, requested, jobs)
    scorer.load_models(needed, clip_model, config.dino_model)
    if needed and needed <= set(scorer.unavailable):
        raise UserError("no metric can be computed: " + "; ".join(sorted(set(scorer.unavailable.values()))))
    results = []
    with reporting.progress("evaluating", total=len(jobs)) as task:
        for job, metrics in zip(jobs, plans):
            results.append(_evaluate_job(job, metrics, scorer, single))
            task.advance()
    report = EvaluationReport(results, scorer.unavailable, scorer.models, [str(p) for p in motion_paths], _versions())
    for path, flag in ((config.json, "--json"), (config.csv, "--csv")):
        if path and path != TO_STDOUT:
            ensure_writable_dir(Path(path).parent, flag)
    write_reports(report, config.json, config.csv)  # both or neither: never a new JSON beside an old CSV
    show(report, table_to_stdout=TO_STDOUT not in (config.json, config.csv))  # after the files: the scores are kept
    print_report(report, config.json, config.csv)  # whatever happens while showing them
    return report


def _warn_of_an_unused_dino_model(config: EvaluateConfig, requested: list[str] | None, jobs: list[EvalJob]) -> None:
    """A DINO model named where no DINO-I is computed had been taken without a word."""
    if config.dino_model == DEFAULT_DINO_MODEL:
        return
    if requested is not None and not set(requested) & set(DINO_METRICS):
        why = "--metrics leaves dino_i out"
    elif not any(job.reference_images for job in jobs):
        why = "it needs reference images: --subject or --ref-images"
    else:
        return
    reporting.warn(f"--dino-model {config.dino_model} has no effect: DINO-I is not computed ({why})")


def _clip_model(config: EvaluateConfig, jobs: list[EvalJob]) -> tuple[str, bool]:
    """`--clip-model`, or for 'auto': nano's own towers when what is evaluated comes from nano (the base in the
    config `generate` wrote beside each video, and the library subject's and motion's), else DEFAULT_CLIP_MODEL.
    The flag is whether 'auto' chose nano, which the caller says in an info line once the inputs are checked."""
    if config.clip_model != AUTO:
        return config.clip_model, False
    from vidbooth.library import artifact_dir, read_manifest

    bases = {generated_base(job.video) for job in jobs if not job.problem}
    for kind, name in (("subject", config.subject), ("motion", config.motion)):
        if name:
            bases.add(read_manifest(artifact_dir(kind, name), verify=False).get("base"))
    known = bases - {None}
    if known and all(is_nano(base) for base in known):
        return NANO_NAME, True
    return DEFAULT_CLIP_MODEL, False


def requested_metrics(names: list[str]) -> list[str] | None:
    """Canonical metric names in canonical order, or None for 'auto'. Accepts 'CLIP-T', 't.cons', 'motion',
    'probe' (the three probe metrics) and the nano names ('nano-I' asks for what nano reports as nano-I)."""
    wanted = {alias for name in names for part in str(name).split(",") if part.strip() for alias in _canonical(part)}
    if not wanted or wanted == {"auto"}:
        return None
    unknown = sorted(wanted - set(SELECTABLE))
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)}: choose from auto, {', '.join(SELECTABLE)}, probe")
    return [name for name in SELECTABLE if name in wanted]


def _canonical(name: str) -> tuple[str, ...]:
    name = name.strip().lower().replace("-", "_").replace(".", "_").replace(" ", "_")
    return _ALIASES.get(name, (name,))


def _check_outputs(config: EvaluateConfig) -> None:
    """That the outputs are files of their type whose folders can be made, without making them: a later error
    must leave nothing behind, and a mistyped --json must not replace a video."""
    if config.json == config.csv == TO_STDOUT:
        raise UserError("--json - and --csv - both ask for stdout: give one of them a file")
    for flag, path, suffix in (("--json", config.json, ".json"), ("--csv", config.csv, ".csv")):
        if not path or path == TO_STDOUT:
            continue
        if Path(path).is_dir():
            raise UserError(f"{flag} {path} is a folder: give a file in it, e.g. {Path(path) / ('scores' + suffix)}")
        if Path(path).suffix.lower() != suffix:
            raise UserError(f"{flag} {path} must end in {suffix}")
        check_writable_dir(Path(path).parent, flag)


def _strip_line_prompts(jobs: list[EvalJob], subject: str) -> None:
    """Manifest lines' own prompts without the `--subject`'s pseudo-word, as `--prompt` is scored."""
    stripped = 0
    for job in jobs:
        if job.prompt and (without := without_pseudo_words(job.prompt, [subject])) != " ".join(job.prompt.split()):
            job.prompt, stripped = without, stripped + 1
    if stripped:
        reporting.info(f"scoring {stripped} manifest prompt(s) without {subject}, which CLIP never saw")


def _gather_jobs(config: EvaluateConfig) -> tuple[list[EvalJob], dict[str, list[np.ndarray]]]:
    """The videos to score, and the reference images every job shares, read once (keyed by their folder)."""
    if config.subject and config.ref_images:
        raise UserError("--subject and --ref-images both give reference images: pass only one")
    references = str(subject_photos(config.subject)) if config.subject else config.ref_images
    shared_images = {references: read_image_folder(references)} if references else {}  # a bad folder stops here
    prompt = config.prompt
    if prompt and config.subject:
        stripped = without_pseudo_words(prompt, [config.subject])
        if stripped != " ".join(prompt.split()):
            prompt = stripped
            reporting.info(f"scoring against \"{prompt}\": the prompt without {config.subject}, which CLIP never saw")
    jobs = jobs_from_manifest(config.manifest, prompt, references) if config.manifest else []
    if config.subject:
        _strip_line_prompts(jobs, config.subject)
    jobs += jobs_from_videos(list(config.videos), prompt, references)
    if not jobs:
        raise UserError("no video to evaluate: give one or more VIDEO files or globs, or --manifest FILE")
    return jobs, shared_images


def _reference_motion_paths(config: EvaluateConfig) -> list[Path]:
    if config.motion and config.ref_video:
        raise UserError("--motion and --ref-video both give a reference motion: pass only one")
    if config.motion:
        return motion_clip_paths(config.motion)
    return [Path(config.ref_video)] if config.ref_video else []


class _MetricChoice:
    """What was asked for: metric names (None for auto), whether a reference motion is given, whether the
    image-tower model is nano, whether the world probe runs (asked for with --probe, or nano under auto), and
    whether auto includes DINO-I."""

    def __init__(self, requested: list[str] | None, has_motion: bool, nano: bool, probe: bool | None, dino: bool):
        self.requested, self.has_motion, self.nano, self.dino = requested, has_motion, nano, dino
        self.probe = (nano and requested is None) if probe is None else probe


def _plan(job: EvalJob, choice: _MetricChoice, single: bool, shared_inputs: bool) -> list[str] | None:
    """The metrics of `job`, or None when it cannot run (the reason is then in `job.problem`).

    Raises instead for a single video, and when the missing prompt or references are shared by every job.
    """
    if job.problem is None:
        try:
            return _job_metrics(job, choice)
        except UserError as exc:
            if single or shared_inputs:
                raise
            job.problem = str(exc)
    if single:
        raise UserError(_failure_message(job, job.problem))
    return None


def _job_metrics(job: EvalJob, choice: _MetricChoice) -> list[str]:
    requested = choice.requested
    if requested is None:
        references = {"clip_i", "dino_i"} if choice.dino else {"clip_i"}
        auto = {"t_cons"} | (references if job.reference_images else set())
        auto |= set() if choice.nano else {"clip_t"}  # nano has no text-image score: asked for, it is unavailable
        requested = [name for name in METRICS if name in auto or (name == "motion_fidelity" and choice.has_motion)]
    if choice.nano:  # nano-T needs no prompt check: it is reported unavailable whatever the prompt
        requested = [NANO_NAMES.get(name, name) for name in requested]
    if choice.probe:
        requested = [*requested, *PROBE_METRICS]
    requested = [name for name in METRICS if name in requested]
    if "clip_t" in requested and not job.prompt:
        field = f", fill the third field of {job.source}" if job.source else ""  # a manifest's line, where it is one
        raise UserError(
            f"no prompt for {job.video}: CLIP-T needs one; pass --prompt{field}, or choose --metrics without clip_t"
        )
    missing_references = [METRIC_LABELS[n] for n in REFERENCE_IMAGE_METRICS if n in requested]
    if missing_references and not job.reference_images:
        field = f" or the second field of {job.source}" if job.source else ""
        raise UserError(
            f"no reference images for {job.video}: {'/'.join(missing_references)} "
            f"{'needs' if len(missing_references) == 1 else 'need'} --subject or --ref-images{field}"
        )
    return requested


def _evaluate_job(job: EvalJob, metrics: list[str] | None, scorer: _Scorer, single: bool) -> VideoResult:
    result = VideoResult(job.video, job.source, job.prompt, job.reference_images)
    if metrics is None:
        result.error = _failure_message(job, job.problem)
        return result
    probing = bool(set(metrics) & set(PROBE_METRICS))
    try:
        colour = scorer.reference_colour(job) if probing else None
        result.metrics = scorer.score(job, metrics, colour, result.notes)
    except UserError as exc:
        if single:
            raise
        result.error = _failure_message(job, str(exc))
    if probing and result.error is None:
        result.reference_colour = colour
        problem = world_caption_problem(job.prompt, colour, bool(job.reference_images))
        if problem is not None:
            result.notes["probe"] = problem
    return result


def _failure_message(job: EvalJob, message: str) -> str:
    return f"{job.source}: {message}" if job.source else message


class _Scorer:
    """Feature models, reference embeddings and motion signatures, each computed once and reused per job."""

    def __init__(self, motion_paths: list[Path], device: str, batch_size: int,
                 images: dict[str, list[np.ndarray]] | None = None):
        self.device, self.batch_size = device, batch_size
        self.clip: ImageTextEmbedder | None = None
        self.dino: ImageEmbedder | None = None
        self.unavailable: dict[str, str] = {}
        self.models: dict[str, dict] = {}
        self._reference_signatures = [self._reference_signature(path) for path in motion_paths]
        if motion_paths:
            self.models["motion"] = {"method": METHOD}
        self._texts: dict[str, np.ndarray] = {}
        self._images: dict[str, list[np.ndarray]] = dict(images or {})  # read once: a bad image warned about once
        self._references: dict[tuple[str, str], np.ndarray] = {}
        self._colours: dict[str, str | None] = {}

    @staticmethod
    def _reference_signature(path: Path) -> np.ndarray:
        signature = motion_clip_signature(path)
        if not signature.any():
            raise UserError(f"reference motion clip {path} {NO_MOTION}: choose a clip with visible motion")
        return signature

    def load_models(self, needed: set[str], clip_model: str, dino_model: str) -> None:
        if needed & set(CLIP_METRICS):
            self.clip = self._load("clip", load_clip, clip_model, needed & set(CLIP_METRICS))
        if needed & set(NANO_METRICS):
            nano_metrics = needed & set(NANO_METRICS)
            self.clip = self._load("nano", lambda _, *args: load_nano_image(*args), clip_model, nano_metrics)
            if "nano_t" in needed and "nano_t" not in self.unavailable:
                self.unavailable["nano_t"] = NANO_NO_TEXT_REASON
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

    def score(self, job: EvalJob, metrics: list[str], colour: str | None = None,
              notes: dict[str, str] | None = None) -> dict[str, float | None]:
        """The job's `metrics`; `colour` is the probe's truth where the prompt names none (`reference_colour`).
        Why some have no value is put in `notes` (a video of one frame has no change between frames)."""
        frames = read_video(job.video, max_frames=MAX_VIDEO_FRAMES + 1, max_short_side=VIDEO_SHORT_SIDE)
        if len(frames) > MAX_VIDEO_FRAMES:
            raise UserError(f"{job.video} is longer than {MAX_VIDEO_FRAMES} frames, the most vidbooth generates: "
                            f"evaluate a part of it (ffmpeg -i IN -frames:v {MAX_VIDEO_FRAMES} OUT.mp4)")
        values: dict[str, float | None] = dict.fromkeys(metrics)
        if self.clip is not None and set(metrics) & set(IMAGE_TOWER_METRICS) - {"nano_t"}:
            frame_embeds = self.clip.image_embeds(frames)
            if "clip_t" in metrics:
                values["clip_t"] = clip_t(frame_embeds, self._text_embed(job.prompt))
            for name in ("clip_i", "nano_i"):
                if name in metrics:
                    values[name] = reference_similarity(frame_embeds, self._reference_embeds(self.clip, "clip", job))
            for name in ("t_cons", "nano_t_cons"):
                if name in metrics and len(frames) > 1:
                    values[name] = temporal_consistency(frame_embeds)
        if self.dino is not None and "dino_i" in metrics:
            reference_embeds = self._reference_embeds(self.dino, "dino", job)
            values["dino_i"] = reference_similarity(self.dino.image_embeds(frames), reference_embeds)
        if "motion_fidelity" in metrics and len(frames) > 1:
            values["motion_fidelity"] = self._motion_fidelity(frames)
        if set(metrics) & set(PROBE_METRICS):
            scores = probe_scores(frames, job.prompt, colour)
            values.update({name: value for name, value in scores.items() if name in metrics})
        between_frames = [name for name in BETWEEN_FRAMES_METRICS if name in metrics]
        if len(frames) < 2 and between_frames:
            values.update(dict.fromkeys(between_frames))  # the probe read a still video as 'still'
            if notes is not None:
                labels = ", ".join(METRIC_LABELS[name] for name in between_frames)
                notes["frames"] = f"one frame: {labels} need two or more"
        return values

    def reference_colour(self, job: EvalJob) -> str | None:
        """The colour the probe reads in the job's reference images when its prompt, a world caption, names none;
        else None."""
        from vidbooth.nano.world import read_prompt

        truth = read_prompt(job.prompt)
        if truth is None or truth.colour is not None or not job.reference_images:
            return None
        folder = job.reference_images
        if folder not in self._colours:
            self._colours[folder] = images_colour(self._reference_images(folder))
        return self._colours[folder]

    def _text_embed(self, prompt: str) -> np.ndarray:
        if prompt not in self._texts:
            self._texts[prompt] = self.clip.text_embeds([prompt])[0]
        return self._texts[prompt]

    def _reference_embeds(self, embedder: ImageEmbedder, role: str, job: EvalJob) -> np.ndarray:
        folder = job.reference_images
        if (role, folder) not in self._references:
            self._references[role, folder] = embedder.image_embeds(self._reference_images(folder))
        return self._references[role, folder]

    def _reference_images(self, folder: str) -> list[np.ndarray]:
        if folder not in self._images:
            self._images[folder] = read_image_folder(folder)
        return self._images[folder]

    def _motion_fidelity(self, frames: np.ndarray) -> float:
        signature = motion_signature(frames)
        return float(np.mean([signature_similarity(signature, ref) for ref in self._reference_signatures]))


def probe_scores(frames: np.ndarray, prompt: str | None, colour: str | None = None) -> dict[str, float | None]:
    """probe colour/shape/motion: 1.0 where the world probe reads from `frames` what `prompt`, in the world's
    words, says, 0.0 where it does not; None for what the prompt does not say (all three when it is not in the
    world's words). `colour` stands in for a colour the prompt does not name (the subject photos')."""
    from dataclasses import replace

    from vidbooth.nano.world import read_prompt

    truth = read_prompt(prompt)
    if truth is None:
        return dict.fromkeys(PROBE_METRICS)
    from vidbooth.nano.probe import probe_video

    if truth.colour is None:
        truth = replace(truth, colour=colour)
    read = probe_video(frames)
    return {
        f"probe_{part}": None if getattr(truth, part) is None else float(getattr(read, part) == getattr(truth, part))
        for part in ("colour", "shape", "motion")
    }


def images_colour(images: list[np.ndarray]) -> str | None:
    """The colour the world probe reads in more than half of `images` (each read as a 1-frame video), or None when
    no colour is read that often."""
    from collections import Counter

    from vidbooth.nano.probe import UNKNOWN, probe_video

    reads = Counter(probe_video(image[None]).colour for image in images)
    colour, count = reads.most_common(1)[0] if reads else (UNKNOWN, 0)
    return colour if colour != UNKNOWN and 2 * count > len(images) else None


def world_caption_problem(prompt: str | None, colour: str | None = None, references: bool = False) -> str | None:
    """Why some or all probe metrics of a video with `prompt` are n/a, or None when the prompt says all the probe
    reads (colour, shape and motion; the colour may come from the reference images instead, `colour`, when
    `references` are given)."""
    from vidbooth.nano.world import read_prompt

    example = "e.g. 'a red striped square moving left'"
    if not prompt:
        return f"probe metrics n/a: no prompt (the probe needs a world caption, {example})"
    truth = read_prompt(prompt)
    if truth is None:
        return (
            f"probe metrics n/a: prompt '{prompt}' is not a world caption "
            f"('a [<colour>] [<pattern>] [<shape>] <motion>', {example})"
        )
    said = {"colour": truth.colour or colour, "shape": truth.shape}
    unsaid = [part for part, value in said.items() if value is None]
    if unsaid:
        shown = " and the reference images show no one colour" if references and "colour" in unsaid else ""
        return f"probe {' and '.join(unsaid)} n/a: prompt '{prompt}' names no {' or '.join(unsaid)}{shown}"
    return None


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
