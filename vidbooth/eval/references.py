"""Reference inputs of the metrics: image folders, motion clips, and their places in the vidbooth library."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from vidbooth.config.checks import MAX_FRAMES
from vidbooth.data.images import IMAGE_EXTENSIONS, is_image_file, load_image, warn_of_camera_files
from vidbooth.data.video import VIDEO_EXTENSIONS, video_frames
from vidbooth.errors import CHECK_THE_PATH, UserError
from vidbooth.reporting import warn

MAX_VIDEO_FRAMES = MAX_FRAMES
"""The longest video scored: as many frames as `generate` makes at most. Every frame is held and embedded, so a
longer one (a film, or a small GIF holding one frame for hours) would fill the memory."""
VIDEO_SHORT_SIDE = 512
"""Videos are scored with their frames shrunk while decoding to at most this shorter side: the image towers see
224-448 px and motion fidelity 128 px, and a long phone clip at full size would fill the memory. Generated videos
(nano 64, ModelScope 256, zeroscope 320, AnimateDiff 512) are scored at their own size."""

IMAGE_KINDS = "/".join(IMAGE_EXTENSIONS)
"""The photo types subject training takes, so that a subject's own photos are always readable references."""


def read_image_folder(folder: str | Path) -> list[np.ndarray]:
    """Every readable image in `folder` (or the one photo `folder` names) as (H, W, 3) uint8 RGB, read as subject
    training reads its photos (`load_image`: upright per EXIF, transparency on white, 16-bit grey scaled, shorter
    side at most 1024); an image in a folder that cannot be read is skipped with a warning saying why."""
    folder = Path(folder)
    if folder.is_file():  # one photo: an image prompt's, say
        if not is_image_file(folder):
            raise UserError(f"reference images {folder} is neither a folder nor a {IMAGE_KINDS} image: pass the "
                            "folder that holds them, or one photo")
        return [np.asarray(load_image(folder, min_side=1))]
    if not folder.is_dir():
        raise UserError(f"reference image folder not found: {folder}: {CHECK_THE_PATH} (a folder of {IMAGE_KINDS} "
                        "images)")
    images = []
    entries = sorted(folder.iterdir())
    warn_of_camera_files(folder, entries)
    for path in (p for p in entries if is_image_file(p)):
        try:
            images.append(np.asarray(load_image(path, min_side=1)))
        except UserError as exc:
            warn(f"skipping reference image: {exc}")
    if not images:
        raise UserError(
            f"reference image folder {folder} holds no readable image: add {IMAGE_KINDS} files or pass another"
        )
    return images


def subject_photos(name: str) -> Path:
    """The training photos of library subject `name`."""
    from vidbooth.library import PHOTOS_DIR, artifact_dir

    folder = artifact_dir("subject", name) / PHOTOS_DIR
    if not (folder.is_dir() and any(is_image_file(path) for path in folder.iterdir())):
        raise UserError(f"subject '{name}' has no training photos in {folder}: pass reference images with "
                        "--ref-images instead")
    _warn_of_changed_photos(name, folder.parent)
    return folder


def _warn_of_changed_photos(name: str, subject: Path) -> None:
    """A warning for each of the subject's photo copies that differs from the photo it was trained on (the sha256
    its manifest records): the scores compare with the photos as they are now."""
    import json

    from vidbooth.library import MANIFEST, sha256_file

    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):  # read as loading the subject reads it
        for entry in json.loads((subject / MANIFEST).read_text()).get("photos") or []:
            copy = subject / str(entry["file"])
            if copy.is_file() and sha256_file(copy) != entry["sha256"]:
                warn(f"subject '{name}': {copy} differs from the photo it was trained on (its sha256 is not the "
                     "manifest's): the scores compare with it as it is now")


def motion_clip_paths(name: str) -> list[Path]:
    """The training clip(s) of library motion `name`."""
    from vidbooth.library import CLIPS_DIR, artifact_dir

    folder = artifact_dir("motion", name) / CLIPS_DIR
    clips = sorted(p for p in folder.glob("*") if p.suffix.lower() in VIDEO_EXTENSIONS) if folder.is_dir() else []
    if not clips:
        raise UserError(f"motion '{name}' has no training clip in {folder}: pass the clip with --ref-video instead")
    return clips


def motion_clip_signature(path: str | Path) -> np.ndarray:
    """The motion signature of a reference clip (all zeros where nothing moves), read a frame at a time: a long
    phone clip had been held whole, gigabytes for a minute of 720p. It must have at least 2 frames."""
    from vidbooth.eval.motion import motion_signature

    try:
        with contextlib.closing(video_frames(path, max_short_side=VIDEO_SHORT_SIDE)) as frames:  # ffmpeg ends on a stop
            return motion_signature(frames)
    except ValueError as exc:
        raise UserError(f"reference motion clip {path} has a single frame: motion needs a clip with 2 or more "
                        "frames") from exc
