"""What to evaluate: videos from the command line (globs expanded) and lines of a manifest.

A manifest holds one `video|||reference_image_folder|||prompt` line per video, the format of DreamVideo's
metric script. Blank lines and lines starting with '#' are skipped; relative paths are taken from the
manifest's folder; an empty field falls back to the command's --ref-images/--subject or --prompt.

A video written by `vidbooth generate` has its resolved config beside it (`out.mp4` -> `out.yaml`): with no
prompt given, the prompt is read from there, the learned subjects' pseudo-words taken out ("S* dog on the
beach" -> "dog on the beach"), as prompt fidelity is measured for personalised models (DreamBooth, DreamVideo).
"""

from __future__ import annotations

import functools
import glob
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from vidbooth import reporting
from vidbooth.data.video import VIDEO_EXTENSIONS, video_file_problem
from vidbooth.errors import UserError, yaml_problem
from vidbooth.fileio import expand_user

MANIFEST_SEPARATOR = "|||"
GLOB_CHARACTERS = "*?["


@dataclass
class EvalJob:
    video: str
    prompt: str | None = None
    reference_images: str | None = None
    source: str | None = None
    """Where the job came from when that is not the video itself, e.g. 'list.txt line 3'."""
    problem: str | None = None
    """Why the job cannot run at all (a malformed manifest line, a glob that matches nothing, a missing or
    non-video file)."""


def jobs_from_videos(patterns: list[str], prompt: str | None, reference_images: str | None) -> list[EvalJob]:
    """One job per video; a pattern with * ? [ expands to the videos it matches, in name order."""
    jobs = []
    for pattern in patterns:
        if not any(c in pattern for c in GLOB_CHARACTERS) or Path(pattern).exists():
            problem = video_file_problem(pattern)  # before any model loads: a mistyped path is the first error
            if problem and Path(pattern).is_dir():  # the videos in it, as a pattern, are what evaluate takes
                problem += f", or all of them as a quoted pattern: '{Path(pattern) / '*.mp4'}'"
            jobs.append(EvalJob(pattern, prompt or generated_prompt(pattern), reference_images, problem=problem))
            continue
        found = glob.glob(str(expand_user(pattern)), recursive=True)
        matches = sorted(match for match in found if match.lower().endswith(VIDEO_EXTENSIONS))
        if not matches:
            problem = f"pattern '{pattern}' matches no video ({', '.join(VIDEO_EXTENSIONS)}): check the path"
            jobs.append(EvalJob(pattern, problem=problem))
        jobs.extend(EvalJob(match, prompt or generated_prompt(match), reference_images) for match in matches)
    return jobs


def jobs_from_manifest(manifest: str | Path, prompt: str | None, reference_images: str | None) -> list[EvalJob]:
    manifest = Path(manifest)
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()  # -sig: Notepad's byte-order mark, not a name
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(
            f"cannot read manifest {manifest}: give a UTF-8 text file of video|||ref_dir|||prompt lines"
        ) from exc
    jobs = [_manifest_job(manifest, number, line, prompt, reference_images) for number, line in enumerate(lines, 1)]
    jobs = [job for job in jobs if job is not None]
    if not jobs:
        raise UserError(f"manifest {manifest} has no video line: add lines of the form video|||ref_dir|||prompt")
    return jobs


def _manifest_job(
    manifest: Path, number: int, line: str, prompt: str | None, reference_images: str | None
) -> EvalJob | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    source = f"{manifest} line {number}"
    fields = [field.strip() for field in text.split(MANIFEST_SEPARATOR)]
    if len(fields) != 3 or not fields[0]:  # more than 3: the extra fields had become part of the prompt
        count = f" ({len(fields)} fields)" if len(fields) != 3 else ""
        problem = f"expected 'video|||reference_image_folder|||prompt' but got '{text[:80]}'{count}"
        return EvalJob("", source=source, problem=problem)
    video, references, line_prompt = fields
    video = _beside(manifest, video)
    return EvalJob(
        video=video,
        prompt=line_prompt or prompt or generated_prompt(video),
        reference_images=_beside(manifest, references) if references else reference_images,
        source=source,
        problem=video_file_problem(video),
    )


def _beside(manifest: Path, path: str) -> str:
    candidate = expand_user(path)
    return str(candidate if candidate.is_absolute() else manifest.parent / candidate)


def _generated_config(video: str | Path) -> dict | None:
    """The config that `vidbooth generate` wrote beside `video` ('<stem>.yaml', or for video k of a run of several,
    '<out>-<k>.mp4', the run's '<out>.yaml'); None when there is none. One that cannot be read is warned of (once):
    the video's prompt and base are then unknown."""
    video = Path(video)
    path = video.with_suffix(".yaml")
    taken = re.fullmatch(r"(.+)-([0-9]+)", video.stem)
    if not path.is_file() and taken:
        path = video.with_name(f"{taken[1]}.yaml")
    if not path.is_file():
        return None
    config = _read_generated_config(str(path), path.stat().st_mtime_ns)
    # a '-2' that is part of the name, not the run's second video; a one-video run names no '-1' (its video is '<out>')
    if path.stem != video.stem and not (isinstance(config, dict) and 1 <= int(taken[2]) <= _num_videos(config)
                                        and _num_videos(config) > 1):
        return None
    return config


def _num_videos(config: dict) -> int:
    value = config.get("num_videos", 1)
    return value if isinstance(value, int) else 1


@functools.lru_cache(maxsize=64)
def _read_generated_config(path: str, mtime_ns: int) -> dict | None:
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as exc:  # yaml errors have many types
        config, why = None, f"not valid YAML ({yaml_problem(exc, Path(path))})"
    else:
        why = "not a mapping of settings"
    if isinstance(config, dict):
        return config
    reporting.warn(f"{path} beside the video is {why}, so the prompt and base it was generated with are unknown: "
                   "fix or remove it, or pass the prompt (--prompt) and scoring models (--clip-model)")
    return None


def generated_base(video: str | Path) -> str | None:
    """The base model that generated `video`, from the config beside it; None when unknown."""
    backbone = (_generated_config(video) or {}).get("backbone")
    base = backbone.get("base") if isinstance(backbone, dict) else None
    return base if isinstance(base, str) else None


def generated_prompt(video: str | Path) -> str | None:
    """The prompt in the config that `vidbooth generate` wrote beside `video` ('<stem>.yaml'), without the
    subjects' pseudo-words; None when there is no such file or it names no prompt."""
    config = _generated_config(video) or {}
    prompt = config.get("prompt")
    if not isinstance(prompt, str):
        return None
    return without_pseudo_words(prompt, [str(name) for name in config.get("subjects") or []]) or None


def without_pseudo_words(prompt: str, names: list[str]) -> str:
    """`prompt` without the subject pseudo-words `names`, found as the tokenizer finds them (any case, whole
    words, with the further vectors of one written out: 'S* S*_1'; `read_tokens`): CLIP has never seen them. Its
    accents composed (NFC), as generate and CLIP read them."""
    from vidbooth.words import read_tokens, without_tokens

    prompt = unicodedata.normalize("NFC", prompt)
    vectors = {part for name in names for part in re.findall(rf"{re.escape(name)}_[0-9]+", prompt, re.IGNORECASE)}
    return without_tokens(prompt, read_tokens(prompt, [*names, *vectors]))
