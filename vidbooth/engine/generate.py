"""`vidbooth generate`: load a backbone, sample, and write the video, its contact sheet and its config."""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from vidbooth.config import GenerateConfig, save_config
from vidbooth.config.schema import ZeroShotConfig
from vidbooth.data.video import (
    WRITE_EXTENSIONS,
    check_writable_dir,
    contact_sheet_writer,
    ensure_writable_dir,
    video_writer,
)
from vidbooth.errors import UserError
from vidbooth.fileio import expand_user, lock_beside, write_together
from vidbooth.library import artifact_dir, named_artifacts, read_manifest
from vidbooth.reporting import info, result, warn


@dataclass
class GenerateResult:
    videos: list[Path]
    """Every video written (`num_videos` of them)."""
    contact_sheet: Path
    config: Path
    prompt: str

    @property
    def video(self) -> Path:
        """The (first) video."""
        return self.videos[0]


def _personalised_with(cfg: GenerateConfig, applied) -> str:
    """'with subject S* (pseudo-word, identity adapter at 1) and motion M (at 1)': what generate applied."""
    parts = []
    for subject in applied.subjects:
        has_adapter = subject.manifest["paths"].get("identity_adapter")
        adapter = f", identity adapter at {cfg.subject_scale:g}" if has_adapter else " only"
        parts.append(f"subject {subject.name} (pseudo-word{adapter})")
    if cfg.motion:
        parts.append(f"motion {cfg.motion} (at {cfg.motion_scale:g})")
    return "with " + " and ".join(parts)


NAME_MAX = 255
"""Bytes in a file name that common file systems take (ext4, XFS, APFS)."""


def video_paths(out: Path, num_videos: int) -> list[Path]:
    """`out` itself for one video; '<stem>-1<ext>' to '<stem>-N<ext>' beside it for more."""
    if num_videos == 1:
        return [out]
    return [out.parent / f"{out.stem}-{index}{out.suffix}" for index in range(1, num_videos + 1)]


def _own_videos(out: Path) -> list[Path]:
    """Videos beside `out` that own its contact sheet and config: '<stem>.<video type>' or '<stem>-<N>.<type>'."""
    if not out.parent.is_dir():
        return []
    named = re.compile(rf"{re.escape(out.stem)}(-[0-9]+)?")
    return [p for p in out.parent.glob(f"{glob.escape(out.stem)}*")
            if p.suffix.lower() in WRITE_EXTENSIONS and named.fullmatch(p.stem)]


def output_paths(out: str | Path, num_videos: int = 1) -> tuple[list[Path], Path, Path]:
    """The video paths (`video_paths`) and, beside them, '<stem>.png' (contact sheet) and '<stem>.yaml' (resolved
    config). Refused before any work: a path that a folder takes, and a video of the other type beside it (it owns
    the same contact sheet and config, which this one would replace)."""
    given, out = str(out), expand_user(out)
    videos = video_paths(out, num_videos)
    for name in (videos[-1].name, f"{out.stem}.yaml"):  # before asking the file system of a name it refuses to look up
        size = len(os.fsencode(name))
        if size > NAME_MAX:
            raise UserError(f"--out {given}: the file name {name} is {size} bytes, more than the {NAME_MAX} that "
                            f"file systems take (generate writes {out.suffix}, .png and .yaml files of that name): "
                            "choose a shorter name")
    if given and out.is_dir() and out.suffix.lower() not in WRITE_EXTENSIONS:  # a folder named o.mp4: below
        raise UserError(f"--out {given} is a folder: give a video file path, such as {out / 'video.mp4'}")
    if out.name.lower() in WRITE_EXTENSIONS:  # Path(".mp4").suffix is empty
        raise UserError(f"--out {given} has no name before {out.name}: give one, such as video{out.name}")
    if out.suffix.lower() not in WRITE_EXTENSIONS:  # named as given: Path("") is ".", and a trailing / goes
        raise UserError(f"--out {given or repr(given)} must end in .mp4 or .gif")
    sheet, config = out.with_suffix(".png"), out.with_suffix(".yaml")
    for path in (*videos, sheet, config):
        if path.is_dir():
            raise UserError(f"--out {out}: {path} is a folder, and generate writes a file there: choose another --out")
    owners = _own_videos(out)
    for sibling in owners:  # letter case may not count: samefile
        same = any(sibling.name == video.name or (video.exists() and sibling.samefile(video)) for video in videos)
        if not same and sibling.suffix != out.suffix:  # another type, or the same in other letters (a.GIF, a.gif)
            raise UserError(
                f"--out {out}: {sibling} is beside it and its contact sheet and config ({sheet.name}, "
                f"{config.name}) would be replaced: choose another name, or delete {sibling.name}"
            )
    if not owners:  # no earlier video owns them: they are someone's files (a --recipe, a photo)
        for path in (sheet, config):
            if path.exists():
                raise UserError(
                    f"--out {out}: {path} exists and no video beside it was written with it, so generate would "
                    "replace a file that is not its own (a recipe, a picture): choose another --out, or delete it if "
                    "it is left from an earlier video"
                )
    return videos, sheet, config


def generate(cfg: GenerateConfig) -> GenerateResult:
    if not cfg.prompt.strip():
        raise UserError('no prompt: pass --prompt "..." describing the video (or a --recipe that sets prompt)')
    written_videos, sheet_path, config_path = output_paths(cfg.out, cfg.num_videos)
    check_writable_dir(sheet_path.parent)  # made only when the video is written: a later error leaves nothing

    def busy(owner: str) -> str:
        return (f"another generate (pid {owner}) is writing {sheet_path.with_suffix('')}.* (--out {cfg.out}): wait "
                "for it to finish, or give another --out")

    # two runs of one --out had each renamed its files in: a video of one beside the other's contact sheet and config
    with lock_beside(sheet_path.with_name(f".{sheet_path.stem[:48]}"), busy):  # '.<stem>.lock', hidden
        return _generate(cfg, written_videos, sheet_path, config_path)


def _generate(cfg: GenerateConfig, written_videos: list[Path], sheet_path: Path, config_path: Path) -> GenerateResult:
    # unknown, damaged or altered artifacts, and ones that cannot be used together, fail before the model loads
    learned = [(kind, name, read_manifest(artifact_dir(kind, name)))
               for kind, name in named_artifacts(cfg.subjects, cfg.motion)]

    from vidbooth.engine.backbone import ZERO_SHOT, load_backbone_for
    from vidbooth.engine.compose import check_learned_together
    from vidbooth.engine.sampling import make_scheduler

    check_learned_together(learned)
    cfg.learned_files = _learned_files(learned, cfg.learned_files)

    scheduler = make_scheduler(cfg.sampling.scheduler, {})  # its step's arguments, for the eta warning below
    if cfg.sampling.eta != 0 and "eta" not in inspect.signature(scheduler.step).parameters:
        warn(f"sampling.eta {cfg.sampling.eta:g} has no effect with --scheduler {cfg.sampling.scheduler}: only ddim "
             "takes it")
    if cfg.subject_scale != 1 and not cfg.subjects:
        warn(f"--subject-scale {cfg.subject_scale:g} has no effect without --subject")
    _warn_of_subjects_left_out(cfg.prompt, cfg.subjects)
    if cfg.motion_scale != 1 and not cfg.motion:
        warn(f"--motion-scale {cfg.motion_scale:g} has no effect without --motion")
    image_prompt = _check_image_prompt(cfg)
    if cfg.sampling.negative_prompt.strip() and cfg.sampling.guidance_scale <= 1:
        warn(f"--negative-prompt has no effect at --guidance-scale {cfg.sampling.guidance_scale:g}: it acts through "
             "classifier-free guidance, which needs a scale above 1")

    bb = load_backbone_for(cfg.backbone, cfg.runtime)
    z = cfg.sampling.zero_shot
    if bb.family == ZERO_SHOT and cfg.sampling.num_frames > 1:
        info(f"{cfg.backbone.base} is an image model with no motion adapter: its frames are made zero-shot "
             f"(Text2Video-Zero, the scene moving by {z.motion_field_strength_x:g}, {z.motion_field_strength_y:g} "
             "pixels per frame); --motion-adapter animates it with an AnimateDiff motion module instead")
    elif bb.family != ZERO_SHOT and z != ZeroShotConfig():
        article = "an" if bb.family.startswith("a") else "a"  # an animatediff, a unet3d
        warn(f"sampling.zero_shot (--motion-field-strength-x/-y) has no effect on {cfg.backbone.base}, {article} "
             f"{bb.family} model: it moves the videos of image models without a motion adapter (Text2Video-Zero)")
    prompt, negative_prompt = cfg.prompt, cfg.sampling.negative_prompt
    if cfg.subjects or cfg.motion:
        from vidbooth.engine.compose import apply_personalisation

        applied = apply_personalisation(
            bb, prompt, cfg.subjects, cfg.motion, cfg.subject_scale, cfg.motion_scale, negative_prompt
        )
        _check_unchanged(learned)
        for note in applied.notes:
            warn(note)
        prompt, negative_prompt = applied.prompt, applied.negative_prompt
        info(_personalised_with(cfg, applied))
    condition = _image_prompt(bb, cfg, *image_prompt, prompt) if image_prompt else None
    videos = sample_videos(bb, cfg, prompt, negative_prompt, condition)  # (N, F, H, W, 3)
    ensure_writable_dir(sheet_path.parent)
    columns = videos.shape[1] if len(videos) > 1 else None  # a row per video
    write_together([  # all or none: never a new video beside an old contact sheet or config
        *[(path, video_writer(frames, path, fps=cfg.sampling.fps)) for path, frames in zip(written_videos, videos)],
        (sheet_path, contact_sheet_writer(videos.reshape(-1, *videos.shape[2:]), columns)),
        (config_path, lambda tmp: save_config(_rerun_config(cfg), tmp)),
    ])
    written = str(written_videos[0]) if len(videos) == 1 else f"{len(videos)} videos ({written_videos[0]} ...)"
    info(f"wrote {written}, {sheet_path.name} and {config_path.name}")
    for path in written_videos:  # on stdout, for a script: `video=$(vidbooth generate ...)`
        result(str(path))
    return GenerateResult(written_videos, sheet_path, config_path, prompt)


def _check_unchanged(learned: list[tuple[str, str, dict]]) -> None:
    """A UserError when a subject or motion checked before the model loaded was replaced since (another run
    retrained it with --overwrite): what was loaded may mix its two versions, and its digest in the written config
    would name the first."""
    for kind, name, manifest in learned:
        try:
            unchanged = read_manifest(artifact_dir(kind, name), verify=False) == manifest
        except UserError:  # removed, or caught between its two versions
            unchanged = False
        if not unchanged:
            raise UserError(f"{kind} '{name}' was replaced while generate loaded it (retrained by another run?): run "
                            "generate again")


def _learned_files(learned: list[tuple[str, str, dict]], recorded: dict[str, str]) -> dict[str, str]:
    """A digest of each learned artifact's tensor files (its manifest's sha256s), keyed 'subject S*'; a warning for
    one that `recorded` (a rerun config's) holds another digest for: it was retrained or replaced since."""
    digests = {}
    for kind, name, manifest in learned:
        key = f"{kind} {name}"
        digests[key] = hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:16]
        if recorded.get(key) not in (None, digests[key]):
            warn(f"{kind} '{name}' was retrained or replaced since this config was written: the video will differ "
                 "from the one made with it")
    return digests


def _rerun_config(cfg: GenerateConfig) -> GenerateConfig:
    """`cfg` as written beside the video: its local files (the base, a motion adapter, the image prompt and its
    model) as absolute paths, so that `--recipe video.yaml` reruns it from any folder."""
    from dataclasses import replace

    from vidbooth.engine.backbone import with_absolute_paths
    from vidbooth.fileio import absolute_path

    return replace(cfg, backbone=with_absolute_paths(cfg.backbone), image_prompt=absolute_path(cfg.image_prompt),
                   image_prompt_model=absolute_path(cfg.image_prompt_model))


def _warn_of_subjects_left_out(prompt: str, subjects: list[str] | None) -> None:
    """A learned subject's name in the prompt with no --subject for it: the video would not show the subject (its
    pseudo-word is not in the base's tokenizer, or, a common word, means only that word there)."""
    from vidbooth.words import read_tokens
    from vidbooth.library import names_at_rest

    learned = {name.lower(): name for name in names_at_rest("subject")}
    given = {name.lower() for name in subjects or []}
    prompt = unicodedata.normalize("NFC", prompt)  # as the prompt is personalised
    named = dict.fromkeys(learned[match.group().lower()] for match in read_tokens(prompt, learned.values()))
    for name in (name for name in named if name.lower() not in given):
        warn(f"the prompt names {name}, a learned subject, without --subject {shlex.quote(name)}: the video will not "
             f"show the subject; add --subject {shlex.quote(name)} to show it")


def _check_image_prompt(cfg: GenerateConfig):
    """The image prompt's photo and model file, checked before the model loads (a bad one is one error line); None
    without an image prompt. Without --image-prompt-model the base's own is taken."""
    from vidbooth.data.subject_clips import load_subject_photo

    if cfg.image_prompt is None:
        for key, default in (("image_prompt_model", None), ("image_prompt_word", None), ("image_prompt_scale", 1.0)):
            if getattr(cfg, key) != default:
                warn(f"--{key.replace('_', '-')} has no effect without --image-prompt")
        return None
    from vidbooth.words import read_tokens
    from vidbooth.engine.image_prompt import own_image_prompt_model, trained_word

    if cfg.image_prompt_model is None:
        path = own_image_prompt_model(cfg.backbone.base, cfg.backbone.revision)
        if not path.is_file():
            raise UserError(
                f"{cfg.backbone.base} has no image-prompt model of its own: train one with `vidbooth train-image-prompt "
                f"--base {shlex.quote(cfg.backbone.base)} --out FILE.safetensors ...` and pass it with "
                "--image-prompt-model FILE.safetensors"
            )
    else:
        path = expand_user(cfg.image_prompt_model)
    try:
        trained = trained_word(path)  # missing, pickled or corrupt: fail now
    except UserError as exc:
        if cfg.image_prompt_model is not None:
            raise UserError(f"--image-prompt-model: {exc}; give one made by `vidbooth train-image-prompt`, or leave "
                            "the flag out for the base's own") from exc
        raise UserError(f"the image-prompt model of {cfg.backbone.base}: {exc}; train it again with `vidbooth "
                        f"train-image-prompt --base {cfg.backbone.base}`, or give another with --image-prompt-model"
                        ) from exc
    word = cfg.image_prompt_word or trained
    if word and not read_tokens(cfg.prompt, [word]):  # whole words: the tokens are checked once loaded
        raise UserError(
            f"the prompt does not contain '{word}', the word the image prompt replaces: write it where the subject "
            f"goes, e.g. \"a {word} moving left\" (or pass --image-prompt-word)"
        )
    try:
        return load_subject_photo(cfg.image_prompt), path
    except UserError as exc:  # a photo that cannot be decoded, found once it is read
        raise UserError(f"--image-prompt: {exc}") from exc


def _image_prompt(backbone, cfg: GenerateConfig, photo, path: Path, prompt: str):
    """The image prompt's condition for `sample_video`: its model (`path`) on `backbone`, its photo at the video's
    size."""
    from vidbooth.adapters.image_prompt import set_injection_scale
    from vidbooth.data.images import prepare_photo
    from vidbooth.engine.image_prompt import load_image_prompt_model, prepare_image_prompt

    model = load_image_prompt_model(backbone, path)
    set_injection_scale(backbone.unet, cfg.image_prompt_scale)
    height = cfg.sampling.height or backbone.default_size
    width = cfg.sampling.width or backbone.default_size
    import torch

    generator = torch.Generator("cpu").manual_seed(cfg.runtime.seed + 1)
    info(f"image prompt {cfg.image_prompt} in place of '{cfg.image_prompt_word or model.spec.word}' ({path})")
    pixels = prepare_photo(photo, (height, width))
    return prepare_image_prompt(model, pixels, prompt, generator, cfg.image_prompt_word, cfg.num_videos)


def sample_videos(backbone, cfg: GenerateConfig, prompt: str, negative_prompt: str, image_prompt=None):
    """`cfg.num_videos` videos (N, F, H, W, 3) uint8 for `prompt` and `negative_prompt` with the other sampling
    settings of `cfg`, `cfg.batch_size` at a time, their noise drawn at once (the first video is the one of a
    single-video run with the same seed); `image_prompt`: an `ImagePromptCondition` to show its subject."""
    import torch

    from vidbooth.engine.sampling import sample_video

    s = cfg.sampling
    generator = torch.Generator("cpu").manual_seed(cfg.runtime.seed)
    return sample_video(
        backbone,
        [prompt] * cfg.num_videos,
        negative_prompt=negative_prompt,
        num_frames=s.num_frames,
        height=s.height,
        width=s.width,
        num_inference_steps=s.num_inference_steps,
        guidance_scale=s.guidance_scale,
        scheduler=s.scheduler,
        generator=generator,
        eta=s.eta,
        decode_chunk_size=s.decode_chunk_size,
        zero_shot=s.zero_shot,
        prompt_embeds=image_prompt.prompt_embeds if image_prompt else None,
        before_unet=image_prompt.before_unet if image_prompt else None,
        batch_size=cfg.batch_size,
    )
