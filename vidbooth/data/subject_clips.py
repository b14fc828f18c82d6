"""A folder of clips whose subject is known, for training an image-prompt model on real videos (VideoBooth's data).

    clips/
      walk.mp4          a clip: any video vidbooth reads (mp4, mov, webm, gif, ...) or a folder of its frames
      walk.txt          its caption, naming the subject by the model's word: "a subject walking on the beach"
      walk.png          a photo of the clip's subject (any photo type but .gif, which is a clip; a transparent
                        background is cut away: `load_subject_photo`), or instead
      walk.mask.png     a mask of the subject in the clip's first frame (white on black), which cuts it out
                        onto white and crops it, as the paper segments the subject from the first frame (in
                        training, then put at a random size and place: `place_at_random`)

`find_subject_clips` checks the whole folder from its files alone (no decoding), so that a missing caption or photo
is refused before any model loads; `load_subject_clip` reads one example at the training size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vidbooth import reporting
from vidbooth.data.clips import load_clip_for_sampling, prepare_clip, sample_frames
from vidbooth.data.images import IMAGE_EXTENSIONS, is_image_file, load_image, natural_sort_key, prepare_photo, to_rgb
from vidbooth.data.video import VIDEO_EXTENSIONS
from vidbooth.errors import UserError
from vidbooth.fileio import expand_user
from vidbooth.words import read_tokens

MASK_SUFFIX = ".mask"
CAPTION_SUFFIX = ".txt"
MASK_MARGIN = 0.1
"""The cut-out subject's crop leaves this fraction of its larger side free around it."""


@dataclass(frozen=True)
class SubjectClip:
    clip: Path
    caption: str
    photo: Path | None
    """A photo of the subject, or None when `mask` cuts it out of the first frame."""
    mask: Path | None


def check_data_folder(folder: str | Path) -> Path:
    """The --data folder (~ expanded); a UserError when it is not there or not a folder."""
    folder = expand_user(folder)
    if not folder.is_dir():
        problem = "not found" if not folder.exists() else "not a folder"
        raise UserError(f"--data {folder}: {problem}; give a folder of clips, each with a caption and a subject photo "
                        "(docs/image-prompt.md#training-on-your-own-clips)")
    return folder


def find_subject_clips(folder: str | Path, word: str) -> list[SubjectClip]:
    """Every clip of `folder` with its caption and its photo or mask, in natural name order. A UserError names the
    first clip that lacks one, or whose caption does not contain `word`, and says how many more do."""
    folder = check_data_folder(folder)
    clips = [entry for entry in sorted(folder.iterdir(), key=natural_sort_key) if _is_clip(entry)]
    if not clips:
        raise UserError(f"no clips in {folder}: add videos ({', '.join(VIDEO_EXTENSIONS)}) or folders of frames, each "
                        "with a caption <name>.txt and a subject photo <name>.png or mask <name>.mask.png")
    stems: dict[str, Path] = {}
    for clip in clips:
        other = stems.setdefault(_stem(clip).lower(), clip)
        if other != clip:
            raise UserError(f"{other.name} and {clip.name} in {folder} are both clips named '{_stem(clip)}': rename "
                            "one (its caption, photo and mask go by that name; a subject photo cannot be a .gif)")
    found, problems, both, used = [], [], [], set()
    names: dict[str, list[Path]] = {}  # 'walk.TXT' and 'walk.mask.PNG' are found too
    for entry in sorted(folder.iterdir()):
        names.setdefault(entry.name.lower(), []).append(entry)
    for clip in clips:
        captions = names.get((_stem(clip) + CAPTION_SUFFIX).lower(), [])
        photos, masks = _companions(clip, "", names), _companions(clip, MASK_SUFFIX, names)
        used.update(captions + photos + masks)
        twice = [(kind, files) for kind, files in (("captions", captions), ("subject photos", photos), ("masks", masks))
                 if len(files) > 1]
        if twice:
            kind, files = twice[0]
            problems.append(f"{clip} has {len(files)} {kind} ({', '.join(file.name for file in files)}): keep one")
            continue
        caption_file = captions[0] if captions else clip.with_name(_stem(clip) + CAPTION_SUFFIX)
        if not caption_file.is_file():
            problems.append(f"{clip} has no caption: write it in {caption_file}")
            continue
        try:
            caption = " ".join(caption_file.read_text(encoding="utf-8-sig").split())  # without a byte-order mark
        except (OSError, UnicodeDecodeError):
            problems.append(f"cannot read {caption_file} as UTF-8 text: save it again as plain text")
            continue
        if not read_tokens(caption, [word]):  # as the tokenizer with the word added reads it
            problems.append(f"the caption of {clip} ('{caption[:60]}') does not contain '{word}', the word the "
                            "subject's photo replaces: write it where the subject is named, or give the captions' "
                            "word with --word")
            continue
        photo, mask = (photos or [None])[0], (masks or [None])[0]
        if photo is None and mask is None:
            problems.append(f"{clip} has no subject photo: add {_stem(clip)}.png (a photo of its subject) or "
                            f"{_stem(clip)}{MASK_SUFFIX}.png (its mask in the first frame)")
            continue
        found.append(SubjectClip(clip, caption, photo, None if photo else mask))
        if photo and mask:
            both.append(clip.name)
    if problems:
        more = f" ({len(problems) - 1} more clip(s) have a problem)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    if both:
        more = f" and {len(both) - 1} more" if len(both) > 1 else ""
        reporting.warn(f"{both[0]}{more} in {folder} have both a photo and a mask: the photo is used, the mask not")
    _warn_of_files_of_no_clip(folder, [entry for entries in names.values() for entry in entries], used)
    return found


def _warn_of_files_of_no_clip(folder: Path, entries: list[Path], used: set[Path]) -> None:
    """Say which captions and photos among `folder`'s `entries` go with no clip: a clip of a kind not read
    (walk.mpeg) is left out with them."""
    left = [entry for entry in sorted(entries, key=natural_sort_key) if entry not in used and (
        entry.suffix.lower() == CAPTION_SUFFIX or entry.suffix.lower() not in VIDEO_EXTENSIONS and is_image_file(entry))
        and not entry.name.startswith(".")]
    if left:
        more = f" and {len(left) - 1} more file{'s' if len(left) > 2 else ''}" if len(left) > 1 else ""
        go, they = ("go", "they are") if len(left) > 1 else ("goes", "it is")
        reporting.warn(f"{left[0].name}{more} in {folder} {go} with no clip (a video of their name: "
                       f"{', '.join(VIDEO_EXTENSIONS)}, or a folder of frames so named): {they} left out")


def load_subject_clip(example: SubjectClip, num_frames: int, size: int, rng: np.random.Generator | None = None,
                      warn: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The clip's first `num_frames` frames (sampled at about 8 fps, as train-motion does) and its subject photo,
    both resized and centre-cropped to `size`: (F, size, size, 3) and (size, size, 3) uint8. With `rng`, a subject
    cut out by a mask is put at a random size and place on white (`place_at_random`). Sampling's warnings (a clip
    too short) go to `warn`."""
    frames, fps = load_clip_for_sampling(example.clip, num_frames)  # one decode, of the frames used
    clip = prepare_clip(sample_frames(frames, fps, num_frames, warn=warn), size)
    if example.photo is not None:
        return clip, prepare_photo(load_subject_photo(example.photo), size)
    subject = cut_out(frames[0], _read_mask(example.mask, frames.shape[1:3]))
    photo = prepare_photo(Image.fromarray(subject), size)
    return clip, photo if rng is None else place_at_random(photo, rng)


def load_subject_photo(path: str | Path) -> Image.Image:
    """A photo of a subject, as RGB. One with a transparent background (as background removers save it) is cut out
    as a mask cuts a clip's subject: its opaque pixels on white, in a square crop around them (`cut_out`), so that a
    subject off the middle of a wide photo is neither cropped away nor small."""
    image = load_image(path, keep_alpha=True)
    if image.mode != "RGBA":
        return image
    opaque = np.asarray(image.getchannel("A")) >= 128
    if not opaque.any():
        raise UserError(f"{path} is transparent everywhere: give a photo in which the subject shows")
    rgb = to_rgb(image)
    return rgb if opaque.all() else Image.fromarray(cut_out(np.asarray(rgb), opaque))


def cut_out(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The masked subject of `frame` (H, W, 3) on white, in a square crop around it with `MASK_MARGIN` free."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(np.ceil(max(bottom - top, right - left) * (1 + 2 * MASK_MARGIN)))
    canvas = np.full((side, side, 3), 255, np.uint8)
    y0, x0 = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    region = np.where(mask[top:bottom, left:right, None], frame[top:bottom, left:right], 255)
    canvas[y0:y0 + bottom - top, x0:x0 + right - left] = region
    return canvas


def place_at_random(photo: np.ndarray, rng: np.random.Generator, smallest: float = 0.5) -> np.ndarray:
    """A square photo on white, shrunk to between `smallest` and all of its side and put at a random place on white,
    so that the photo cut from a clip's own first frame does not match its frame pixel for pixel."""
    side = photo.shape[0]
    new_side = max(1, round(side * rng.uniform(smallest, 1.0)))
    small = np.asarray(Image.fromarray(photo).resize((new_side, new_side), Image.Resampling.LANCZOS))
    top, left = (int(rng.integers(side - new_side + 1)) for _ in range(2))
    placed = np.full_like(photo, 255)
    placed[top:top + new_side, left:left + new_side] = small
    return placed


def folder_digest(examples: list[SubjectClip]) -> str:
    """What a resumed run checks is the same data: each file's name and size, and the captions."""
    digest = hashlib.sha256()
    for example in examples:
        for path in (example.clip, example.photo, example.mask):
            if path is not None:  # a frame that is a link to a missing file is told of when it is read
                size = sum(f.lstat().st_size for f in path.iterdir() if is_image_file(f)) if path.is_dir() else \
                    (path.stat() if path.exists() else path.lstat()).st_size  # a clip that is a link to nothing too
                digest.update(os.fsencode(path.name) + f":{size};".encode())  # names undecodable as UTF-8 too
        digest.update(example.caption.encode() + b"\n")
    return digest.hexdigest()[:16]


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The mask at `path` as a boolean (H, W) at the frame's `shape` (frames are read shrunk, so a mask at the
    video's size or any scale of it fits); a UserError when its proportions differ or it is empty."""
    image = load_image(path, max_short_side=None, min_side=1, keep_alpha=True)
    height, width = shape
    if abs(image.width / image.height - width / height) > 0.02:
        raise UserError(f"mask {path} is {image.width}x{image.height} but its clip's frames are {width}x{height}: "
                        "make the mask from the clip's first frame, at its size (or scaled with it)")
    alpha = np.asarray(image.getchannel("A")) if image.mode == "RGBA" else None
    if alpha is not None and (alpha < 128).any():  # a cut-out, as segmenters save it: its opaque part is the subject
        grey = np.asarray(Image.fromarray(alpha).resize((width, height), Image.Resampling.NEAREST))
    else:  # white on black; transparency on white had made a cut-out's whole frame the subject
        grey = np.asarray(to_rgb(image).convert("L").resize((width, height), Image.Resampling.NEAREST))
    mask = grey > 127
    if not mask.any():
        raise UserError(f"mask {path} marks nothing: paint the subject white on black")
    return mask


def _is_clip(entry: Path) -> bool:
    if entry.name.startswith("."):
        return False
    if entry.is_dir():
        return any(is_image_file(f) for f in entry.iterdir())
    return entry.suffix.lower() in VIDEO_EXTENSIONS  # a link to a missing file too: reading it says so


def _stem(clip: Path) -> str:
    return clip.name if clip.is_dir() else clip.stem


def _companions(clip: Path, suffix: str, names: dict[str, list[Path]]) -> list[Path]:
    """Each `<stem><suffix>.<photo extension>` beside the clip (not .gif, which is a clip), its name in any case;
    `names`: the folder's entries by their lower-case names."""
    return [candidate for extension in IMAGE_EXTENSIONS if extension not in VIDEO_EXTENSIONS
            for candidate in names.get((_stem(clip) + suffix + extension).lower(), []) if is_image_file(candidate)]
