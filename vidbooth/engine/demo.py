"""`vidbooth demo`: personalisation, end to end, on a subject and a motion the base model never saw.

1. The procedural world (vidbooth.nano.world) picks a held-out sprite and a held-out motion by seed,
   renders 4 photos of the sprite and one clip of the motion (performed by another sprite).
2. train-subject and train-motion run on the base into the demo's own library (`<out>/library`).
3. Seven variants are generated, `num_videos` each: the subject with the class noun only, with the
   pseudo-word only (identity adapter at 0), with pseudo-word + identity adapter; the motion by the
   base alone and with the motion adapter; the pseudo-word with the motion adapter; and all together.
4. Every video is scored against the truth: the world probe reads colour, shape and motion; motion
   fidelity compares its optical flow with the reference clip's (vidbooth.eval.motion).
5. Each personalisation step is compared with the variant before it, video by video (every variant is sampled
   from the same noise): the mean difference, its standard error and in how many videos the step did better.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vidbooth.config.demo import DemoConfig
from vidbooth.data.video import check_writable_dir, ensure_writable_dir, save_contact_sheet, write_video
from vidbooth.errors import RERUN_ERRORS, DiskFull, Interrupted, UserError, stopping_signal
from vidbooth.fileio import exclusive_lock, write_together
from vidbooth.reporting import info, table

SUBJECT, MOTION = "S*", "M"
IMAGE_PROMPT_FILE = "image_prompt.png"
"""In `inputs/`: the photo the image-prompt variant shows (on a base with its own image-prompt model)."""
MOTION_NOUN = "shape"
"""The class of every demo motion performer: the base draws any shape for it, so the clip's sprite is not learned."""


@dataclass
class Variant:
    key: str
    label: str
    prompt: str
    identity_scale: float
    motion_scale: float
    image_prompt: bool = False
    """Made from a photo of the subject by the base's image-prompt model (VideoBooth), with no training."""
    per_video: dict[str, list[float]] = field(default_factory=dict)
    """Each score, one value per video, in sampling order."""

    @property
    def scores(self) -> dict[str, float]:
        """Each score's mean over the variant's videos."""
        return {key: float(np.mean(values)) for key, values in self.per_video.items()}


STEPS = (
    ("pseudo-word over class noun", "textual_inversion", "class_noun", "image_similarity"),
    ("+ identity adapter over pseudo-word", "identity", "textual_inversion", "image_similarity"),
    ("+ motion adapter over base model", "motion_adapter", "base_motion", "motion_fidelity"),
)
"""What the demo claims: each variant (second) does better than the one before it (third) on a score (fourth)."""


@dataclass
class Step:
    label: str
    variant: str
    over: str
    score: str
    difference: float
    """Mean over videos of variant's score minus the other's on the same noise."""
    standard_error: float | None
    """Of that mean: the differences' sample standard deviation over the square root of their number (one video:
    None)."""
    better_in: int
    videos: int


@dataclass
class DemoReport:
    base: str
    subject: str
    motion: str
    variants: list[Variant]
    seconds: dict[str, float]
    folder: Path
    photos_through_autoencoder: float
    """Image similarity of the subject photos passed through the base's autoencoder, against the photos: every
    video is decoded by that autoencoder, so videos can be expected to score near or below it."""
    steps: list[Step] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    """The demo's settings as given (seed, fast, num_videos, step counts: 0 for the recipe's, runtime)."""


@contextlib.contextmanager
def _library_at(folder: Path) -> Iterator[None]:
    """Train into the demo's own library, never the user's."""
    previous = os.environ.get("VIDBOOTH_HOME")
    os.environ["VIDBOOTH_HOME"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("VIDBOOTH_HOME", None)
        else:
            os.environ["VIDBOOTH_HOME"] = previous


DEMO_ENTRIES = ("inputs", "library", "videos", "metrics.json")
"""What a demo writes in its folder."""
_ASIDE_PREFIX = ".previous-"
_LOCK = ".demo.lock"


def check_demo_folder(out: Path) -> None:
    """A demo replaces what an earlier demo wrote in its folder, so `out` must be new, empty or an earlier demo's."""
    if not out.is_dir():
        return
    ours = (*DEMO_ENTRIES, _LOCK)
    others = sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(_ASIDE_PREFIX))
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(f"--out {out} holds files that no demo wrote ({listed}), and a demo replaces what is in its "
                        "folder: give a new or empty folder, or an earlier demo's")


@contextlib.contextmanager
def _replacing_earlier_demo(out: Path) -> Iterator[None]:
    """The block writes a new demo into `out`, which it holds locked (a second demo into the same folder is refused).
    An earlier demo there is first set aside (in `out/.previous-*`) and removed only when the block succeeds; when
    it fails or is stopped, what it wrote is removed and the earlier demo put back, so `out` never mixes two demos'
    files. (After a kill -9 the next run puts back what was set aside, if what the killed run wrote is unfinished.)"""
    made = [folder for folder in (out, *out.absolute().parents) if not folder.exists()]  # innermost first
    ensure_writable_dir(out)

    def busy(owner: str) -> str:
        return f"another demo (pid {owner}) is writing into {out}: wait for it to finish, or give another --out"

    try:
        with exclusive_lock(out / _LOCK, busy):
            _put_back_a_killed_runs_earlier_demo(out)
            aside = Path(tempfile.mkdtemp(prefix=_ASIDE_PREFIX, dir=out))
            for name in DEMO_ENTRIES:
                if os.path.lexists(out / name):
                    os.replace(out / name, aside / name)
            try:
                yield
            except BaseException:
                for name in DEMO_ENTRIES:
                    _remove(out / name)
                for entry in aside.iterdir():
                    os.replace(entry, out / entry.name)
                raise
            finally:
                _remove(aside)
    except BaseException:
        for folder in made:  # the folders made for `out`, its parents too
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if nothing else appeared in it meanwhile
        raise


def _put_back_a_killed_runs_earlier_demo(out: Path) -> None:
    """A demo killed (kill -9) while it wrote left the demo before it set aside: that one is put back when the killed
    run had not finished (its metrics.json, written last, is missing), and removed otherwise."""
    for leftover in sorted(out.glob(f"{_ASIDE_PREFIX}*")):
        if (leftover / "metrics.json").is_file() and not (out / "metrics.json").is_file():
            for name in DEMO_ENTRIES:
                _remove(out / name)
            for entry in leftover.iterdir():
                os.replace(entry, out / entry.name)
            info(f"put back the demo in {out} that a killed demo had set aside")
        _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _in_the_demos_terms() -> Iterator[None]:
    """Training's messages in what the demo takes: its 'rerun with --resume' does not apply to the demo, which has no
    --resume and starts over (after a stop, or a full disk); nor do the keys and --overwrite that a diverging loss
    names."""
    from vidbooth.engine.train import LossNotFinite

    try:
        yield
    except Interrupted as exc:  # its exit code is 128 + the signal's number
        name = stopping_signal(exc).name
        raise Interrupted(f"the demo was stopped by {name}: run it again to start over", exc.exit_code) from exc
    except KeyboardInterrupt as exc:  # a Ctrl-C outside training (making the inputs, sampling)
        raise Interrupted("the demo was stopped by SIGINT: run it again to start over", 130) from exc
    except LossNotFinite as exc:
        fix = ("run the demo again with --precision fp32" if exc.half else
               "the demo's learning rates are fixed: learn the subject and motion with train-subject and train-motion "
               "and a lower learning rate (train-motion --lr N; train-subject --set textual_inversion.train.lr=N "
               "--set identity.train.lr=N)")
        raise UserError(f"the demo's training diverged (its loss became NaN or infinite at step {exc.step}): "
                        f"{fix}") from exc
    except DiskFull as exc:  # a checkpoint's, or the library's when it saved what was learned
        raise UserError(f"the disk is full: free space on the disk of {exc.folder}, then run the demo again (it "
                        "starts over)") from exc
    except RERUN_ERRORS as exc:
        with contextlib.suppress(AttributeError):  # the command line's 'rerun with --resume to go on from it'
            del exc.kept_checkpoint
        raise


def run_demo(cfg: DemoConfig) -> DemoReport:
    from vidbooth.engine.backbone import base_model_folder, is_image_model, noise_levels

    from vidbooth.attention import resolve_backend
    from vidbooth.device import resolve_device, resolve_dtype

    base = cfg.base
    device = resolve_device(cfg.runtime.device)  # before the demo folder is taken: a bad one had been found after
    resolve_dtype(cfg.runtime.precision, device)
    resolve_backend(cfg.runtime.attention, device)
    check_writable_dir(cfg.out)
    out = Path(cfg.out)
    check_demo_folder(out)
    if is_image_model(base):  # a wrong --base is its one error line, with nothing written yet
        raise UserError(
            f"--base {base} is an image model: the demo also learns a motion, which needs a video model's temporal "
            "layers; use nano (the default) or a ModelScope/zeroscope folder"
        )
    levels = noise_levels(base_model_folder(base))
    if cfg.num_inference_steps >= levels:  # else found only at sampling, after all the training
        raise UserError(f"num_inference_steps (--set num_inference_steps=N) must be from 1 to {levels - 1} ({base} "
                        f"was trained on {levels} noise levels; 0 takes the recipe's), got {cfg.num_inference_steps}")
    with _replacing_earlier_demo(out), _in_the_demos_terms():
        report = _run_demo(cfg, out)
    _show(report)  # once the folder is in place: a reader of stdout that goes away (`| head`) must not undo it
    return report


def _run_demo(cfg: DemoConfig, out: Path) -> DemoReport:
    from vidbooth.nano.world import caption, make_split, render_motion_clips, render_photos

    base = cfg.base
    family = "nano" if base == "nano" else "tiny"  # the recipes the demo trains with
    split = make_split()
    sprite, motion = split.demo_choice(cfg.seed)
    performer = next(s for s in split.pretraining_sprites() if s.colour != sprite.colour and s.shape != sprite.shape)
    described = caption(sprite, motion).removesuffix(f" {motion.phrase}")  # "a red striped square"
    info(f"demo subject: {described} (held out); motion: {motion.name} (held out)")

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    photos_dir = ensure_writable_dir(out / "inputs" / "photos")
    for i, photo in enumerate(render_photos(sprite, n=4, size=64, seed=cfg.seed)):
        Image.fromarray(photo).save(photos_dir / f"photo_{i}.png")
    reference = render_motion_clips(motion, performer, n=1, num_frames=8, size=64, seed=cfg.seed)[0]
    clip_path = write_video(reference, out / "inputs" / "motion.mp4")
    seconds["inputs"] = time.perf_counter() - started

    with _library_at(out / "library"):
        started = time.perf_counter()
        _train_subject(cfg, base, family, photos_dir, sprite.shape)
        seconds["train-subject"] = time.perf_counter() - started
        started = time.perf_counter()
        _train_motion(cfg, base, family, clip_path)
        seconds["train-motion"] = time.perf_counter() - started
        started = time.perf_counter()
        image_prompt = _own_image_prompt(base)
        if image_prompt:
            Image.fromarray(render_photos(sprite, n=1, size=64, seed=cfg.seed + 1)[0]).save(
                out / "inputs" / IMAGE_PROMPT_FILE)  # another photo than the 4 the videos are scored against
        variants = _variants(sprite.shape, motion, image_prompt[1] if image_prompt else None)
        photos_score = _generate_and_score(cfg, base, family, variants, sprite, motion, reference, photos_dir, out,
                                           image_prompt[0] if image_prompt else None)
        seconds["generate+evaluate"] = time.perf_counter() - started

    settings = {key: value for key, value in asdict(cfg).items() if key != "out"}
    report = DemoReport(base, described, motion.name, variants, seconds, out, photos_score, paired_steps(variants),
                        settings)
    _write_metrics(report)
    return report


def _train_subject(cfg: DemoConfig, base: str, family: str, photos: Path, class_noun: str) -> None:
    from vidbooth.config import load_config
    from vidbooth.config.subject import SubjectConfig
    from vidbooth.engine.subject import train_subject

    subject = load_config(SubjectConfig, f"{family}/subject", None, _runtime(cfg) | {
        "backbone.base": base, "name": SUBJECT, "photos": [str(photos)], "class_noun": class_noun, "overwrite": True,
    })
    ti, identity = subject.textual_inversion.train, subject.identity.train
    if cfg.subject_steps:
        ti.steps, identity.steps = cfg.subject_steps, max(1, cfg.subject_steps // 2)
    if cfg.fast:
        ti.steps, identity.steps = max(1, ti.steps // 2), max(1, identity.steps // 2)
    subject.preview.enabled = False
    train_subject(subject)


def _train_motion(cfg: DemoConfig, base: str, family: str, clip: Path) -> None:
    from vidbooth.config import load_config
    from vidbooth.config.motion import MotionConfig
    from vidbooth.engine.motion import train_motion

    motion = load_config(MotionConfig, f"{family}/motion", None, _runtime(cfg) | {
        "backbone.base": base, "name": MOTION, "clips": [str(clip)], "class_noun": MOTION_NOUN, "overwrite": True,
    })
    steps = cfg.motion_steps or motion.train.steps
    motion.train.steps = max(1, steps // 2) if cfg.fast else steps
    motion.preview.enabled = False
    train_motion(motion)


def _runtime(cfg: DemoConfig) -> dict:
    """The demo's runtime settings as overrides of a recipe's: those left on auto leave the recipe's (nano's
    recipes keep fp32 on a GPU too)."""
    r = cfg.runtime
    chosen = {"runtime.device": r.device, "runtime.precision": r.precision, "runtime.attention": r.attention}
    return {key: value for key, value in chosen.items() if value != "auto"} | {"runtime.seed": cfg.seed}


def _own_image_prompt(base: str) -> tuple[Path, str] | None:
    """The base's own image-prompt model (nano ships one) and the word its prompts name the subject by."""
    from vidbooth.engine.image_prompt import own_image_prompt_model, trained_word

    path = own_image_prompt_model(base)
    word = trained_word(path) if path.is_file() else None
    return (path, word) if word else None


def _variants(noun: str, motion, image_prompt_word: str | None = None) -> list[Variant]:
    """The demo's prompts: the subject's class noun is its shape ("circle"), the performer's is `MOTION_NOUN`.

    The subject prompts say the subject is at rest, as the captions of its photos do (recipes/nano/subject.yaml).
    With `image_prompt_word` (a base with its own image-prompt model) the subject is also shown from a photo with
    no training, the word standing for it.
    """
    from vidbooth.nano.world import MOTION_PHRASES

    moving, at_rest = motion.phrase, MOTION_PHRASES["still"]  # "moving in a circle", "standing still"
    from_photo = [Variant("image_prompt", "subject: image prompt, no training", f"a {image_prompt_word} {at_rest}",
                          0.0, 0.0, image_prompt=True)] if image_prompt_word else []
    return [
        Variant("class_noun", "subject: class noun only", f"a {noun} {at_rest}", 0.0, 0.0),
        Variant("textual_inversion", "subject: pseudo-word", f"a {SUBJECT} {noun} {at_rest}", 0.0, 0.0),
        Variant("identity", "subject: pseudo-word + identity adapter", f"a {SUBJECT} {noun} {at_rest}", 1.0, 0.0),
        *from_photo,
        Variant("base_motion", "motion: base model", f"a {MOTION_NOUN} {moving}", 0.0, 0.0),
        Variant("motion_adapter", "motion: + motion adapter", f"a {MOTION_NOUN} {moving}", 0.0, 1.0),
        # The identity adapter, trained on still photos, can hold the sprite still: this row shows the motion without it
        Variant("textual_inversion_motion", "pseudo-word + motion", f"a {SUBJECT} {noun} {moving}", 0.0, 1.0),
        Variant("both", "subject + motion", f"a {SUBJECT} {noun} {moving}", 1.0, 1.0),
    ]


def _generate_and_score(cfg, base, family, variants, sprite, motion, reference, photos: Path, out: Path,
                        image_prompt_model: Path | None = None) -> float:
    """Generate and score every variant (filling `variant.per_video`); returns the photos' own image similarity
    after a round trip through the base's autoencoder. An image-prompt variant shows `inputs/image_prompt.png`
    through `image_prompt_model`."""
    from vidbooth.adapters.base import set_scale
    from vidbooth.adapters.identity import subject_kind
    from vidbooth.adapters.motion import KIND as MOTION_KIND
    from vidbooth.config import BackboneConfig, GenerateConfig, load_config
    from vidbooth.engine.backbone import load_backbone_for
    from vidbooth.engine.compose import apply_personalisation
    from vidbooth.engine.sampling import sample_video
    from vidbooth.eval.motion import motion_signature

    recipe = load_config(GenerateConfig, f"{family}/generate", None, _runtime(cfg))
    sampling = recipe.sampling
    steps = cfg.num_inference_steps or sampling.num_inference_steps
    count = max(2, cfg.num_videos // 2) if cfg.fast else cfg.num_videos
    if cfg.fast:
        steps = max(2, steps // 2)
    backbone = load_backbone_for(BackboneConfig(base=base), recipe.runtime)
    from vidbooth.engine.appearance import load_appearance_encoder

    encoder = load_appearance_encoder(None, backbone)  # nano's image tower (the VAE's latents on bases without one)
    photo_pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(photos.iterdir())])
    photo_embeds = encoder.embed(photo_pixels)
    photos_score = image_similarity(encoder, through_autoencoder(backbone, photo_pixels)[:, None], photo_embeds)
    reference_signature = motion_signature(reference)  # once for every variant's videos
    loaded = apply_personalisation(backbone, f"a {SUBJECT}", [SUBJECT], MOTION)
    subject = loaded.subjects[0]
    videos_dir = ensure_writable_dir(out / "videos")
    for variant in variants:
        set_scale(backbone.unet, subject_kind(SUBJECT), variant.identity_scale)
        set_scale(backbone.unet, MOTION_KIND, variant.motion_scale)
        condition = _image_prompt_condition(backbone, image_prompt_model, out, variant, cfg.seed, count)
        extra = {"prompt_embeds": condition.prompt_embeds, "before_unet": condition.before_unet} if condition else {}
        # The same noise for every variant: each comparison is paired, so differences come from the prompt and adapters
        generator = torch.Generator("cpu").manual_seed(cfg.seed)
        videos = sample_video(
            backbone, [subject.expand_prompt(variant.prompt)] * count, num_frames=sampling.num_frames,
            num_inference_steps=steps, guidance_scale=sampling.guidance_scale, scheduler=sampling.scheduler,
            generator=generator, description=f"sampling {variant.key}", **extra,
        )  # (N, F, H, W, 3)
        if condition:
            condition.close()
        write_video(videos[0], videos_dir / f"{variant.key}.mp4", fps=sampling.fps)
        write_video(videos[0], videos_dir / f"{variant.key}.gif", fps=sampling.fps)
        save_contact_sheet(videos.reshape(-1, *videos.shape[2:]), videos_dir / f"{variant.key}.png",
                           columns=videos.shape[1])
        variant.per_video = score_each_video(videos, sprite, motion, reference_signature)
        variant.per_video["image_similarity"] = image_similarity_per_video(encoder, videos, photo_embeds).tolist()
    return photos_score


def _image_prompt_condition(backbone, model_path: Path | None, out: Path, variant: Variant, seed: int, count: int):
    """The image-prompt condition of `variant` for `count` videos (None unless it is the image-prompt one): the
    photo `inputs/image_prompt.png` in place of the model's word."""
    if not variant.image_prompt:
        return None
    from vidbooth.engine.image_prompt import load_image_prompt_model, prepare_image_prompt

    model = load_image_prompt_model(backbone, model_path)
    photo = np.asarray(Image.open(out / "inputs" / IMAGE_PROMPT_FILE).convert("RGB"))
    return prepare_image_prompt(model, photo, variant.prompt, torch.Generator("cpu").manual_seed(seed + 1),
                                num_videos=count)


def through_autoencoder(backbone, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 images encoded and decoded by the backbone's VAE, as generated frames are decoded."""
    from vidbooth.data.images import pixels_to_tensor
    from vidbooth.engine.sampling import to_numpy_frames, to_uint8

    with torch.no_grad():
        latents = backbone.encode_video(pixels_to_tensor(images).unsqueeze(1).to(backbone.device, backbone.dtype))
    return to_uint8(to_numpy_frames(backbone.decode_latents(latents)))[:, 0]


def score_each_video(videos: np.ndarray, sprite, motion, reference_signature: np.ndarray) -> dict[str, list[float]]:
    """Per video: the probe's colour/shape/motion correctness (0 or 1) against the truth, and motion fidelity to
    the reference clip's motion signature (`eval.motion.motion_signature`, computed once by the caller)."""
    from vidbooth.eval.motion import motion_signature, signature_similarity
    from vidbooth.nano.probe import probe_video, score_against_caption

    probed = [score_against_caption(probe_video(v), (sprite, motion)) for v in videos]
    scores = {key: [float(p[key]) for p in probed] for key in ("colour_correct", "shape_correct", "motion_correct")}
    scores["motion_fidelity"] = [float(signature_similarity(motion_signature(v), reference_signature))
                                 for v in videos]
    return scores


def image_similarity_per_video(encoder, videos: np.ndarray, photo_embeds: torch.Tensor) -> np.ndarray:
    """(N,) CLIP-I with the base's own image tower: per video, the mean cosine of each frame with each photo."""
    from vidbooth.eval.metrics import normalise

    frames = encoder.embed(videos.reshape(-1, *videos.shape[2:])).float().cpu().numpy()
    cosines = normalise(frames) @ normalise(photo_embeds.float().cpu().numpy()).T  # (N * F, photos)
    return cosines.reshape(len(videos), -1).mean(axis=1)


def image_similarity(encoder, videos: np.ndarray, photo_embeds: torch.Tensor) -> float:
    """CLIP-I over all videos: the mean cosine of every frame with every subject photo."""
    return float(image_similarity_per_video(encoder, videos, photo_embeds).mean())


def paired_steps(variants: list[Variant]) -> list[Step]:
    """Each of `STEPS` measured video by video: the variants share their noise, so the pairs differ only by the
    prompt and adapters."""
    by_key = {v.key: v for v in variants}
    steps = []
    for label, key, over, score in STEPS:
        differences = np.subtract(by_key[key].per_video[score], by_key[over].per_video[score])
        count = len(differences)
        error = float(differences.std(ddof=1) / np.sqrt(count)) if count > 1 else None
        better = int((differences > 0).sum())
        steps.append(Step(label, key, over, score, float(differences.mean()), error, better, count))
    return steps


def _write_metrics(report: DemoReport) -> None:
    data = {
        "base": report.base,
        "settings": report.settings,
        "subject": report.subject,
        "motion": report.motion,
        "seconds": report.seconds,
        "photos_through_autoencoder": {"image_similarity": report.photos_through_autoencoder},
        "variants": {
            v.key: {"label": v.label, "prompt": v.prompt, **v.scores, "per_video": v.per_video} for v in report.variants
        },
        "steps": [asdict(step) for step in report.steps],
    }
    text = json.dumps(data, indent=2)
    write_together([(report.folder / "metrics.json", lambda tmp: tmp.write_text(text))])


def _show(report: DemoReport) -> None:
    def read(variant, key: str) -> str:  # in how many videos the probe read the truth, as the docs count them
        hits = variant.per_video[key]
        return f"{round(sum(hits))}/{len(hits)}"

    rows = [
        (v.label, v.prompt, v.scores["image_similarity"], read(v, "colour_correct"), read(v, "shape_correct"),
         read(v, "motion_correct"), v.scores["motion_fidelity"])
        for v in report.variants
    ]
    table(f"vidbooth demo on '{report.base}': subject {report.subject}, motion {report.motion}",
          ["variant", "prompt", "image sim.", "colour", "shape", "motion", "motion fid."], rows, to_stdout=True)
    names = {"image_similarity": "image sim.", "motion_fidelity": "motion fid."}
    table(
        "does each step help? the same noise for every variant, so videos are compared in pairs",
        ["step", "score", "difference", "s.e.", "better in"],
        [(s.label, names[s.score], f"{s.difference:+.3f}",
          "-" if s.standard_error is None else f"{s.standard_error:.3f}", f"{s.better_in} of {s.videos}") for s in report.steps],
        to_stdout=True,
    )
    info(f"image sim. of the photos themselves through {report.base}'s autoencoder: "
         f"{report.photos_through_autoencoder:.3f} (videos, decoded by it, can be expected to score near or below it)")
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in report.seconds.items())
    info(f"wrote {report.folder}/ (videos/, inputs/, library/, metrics.json); time: {timing}")
