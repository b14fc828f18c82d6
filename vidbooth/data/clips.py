"""Motion clips in: a video file or a folder of numbered frames, sampled and sized for the model.

Policies (each one tested in tests/test_data_clips.py):
- Sources: video files go through `vidbooth.data.video.read_video` (mp4, mov, webm, mkv, avi, m4v, gif, animated
  webp or png). A folder holds frames with photo extensions, ordered by the number in their names (`f2.png`
  before `f10.png`); hidden and non-image files are skipped. A folder has no frame rate, so `folder_fps` (default
  8) is used.
- Refused (`UserError` naming the file): fewer than 2 frames, frames smaller than `MIN_SIDE` pixels, empty,
  corrupt or unsupported files, a video that decodes to clearly fewer frames than its header promises (truncated),
  and two frames in a folder with the same number (e.g. `f1.png` and `f1.jpg`).
- Fixed up with a warning: gaps in a folder's numbering (the frames present are used back to back; the warning
  lists what is missing), and frames whose size differs from the first frame's (resized and centre-cropped to it).
- Memory: frames are shrunk while decoding so their shorter side is at most `WORKING_SHORT_SIDE`, and
  `load_clip_for_sampling` decodes only the leading frames that sampling will use, so long clips are cheap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vidbooth import reporting
from vidbooth.data.images import (
    MIN_SIDE,
    WORKING_SHORT_SIDE,
    is_image_file,
    load_image,
    natural_sort_key,
    pixels_to_tensor,
    prepare_photo,
    refuse_path_not_text,
)
from vidbooth.data.video import read_video, video_fps
from vidbooth.errors import CHECK_THE_PATH, UserError
from vidbooth.fileio import given_path

if TYPE_CHECKING:
    import torch

DEFAULT_FOLDER_FPS = 8.0
DEFAULT_SAMPLE_FPS = 8.0


def check_clip_exists(source: str | Path) -> Path:
    """The clip's path (~ expanded); a UserError when nothing is there, told before a model (and torch) loads."""
    path = given_path(source, "clip")
    if not path.exists():
        raise UserError(f"clip not found: {path}: {CHECK_THE_PATH} (a clip is a video file or a folder of frames)")
    refuse_path_not_text("clip", path)
    return path


def load_clip(
    path: str | Path,
    max_frames: int | None = None,
    max_short_side: int | None = WORKING_SHORT_SIDE,
    folder_fps: float = DEFAULT_FOLDER_FPS,
) -> tuple[np.ndarray, float]:
    """Read a clip's frames (F, H, W, 3) uint8 and its frame rate; only the first `max_frames` when given.

    Frames are shrunk so their shorter side is at most `max_short_side` (None keeps full resolution).
    """
    path = Path(path)
    if path.is_dir():
        frames = _load_frame_folder(path, max_frames, max_short_side)
    else:
        frames = read_video(path, max_frames=max_frames, max_short_side=max_short_side)  # refuses truncated files
    _check_frames(path, frames)
    return frames, clip_fps(path, folder_fps)


def clip_fps(path: str | Path, folder_fps: float = DEFAULT_FOLDER_FPS) -> float:
    """Frame rate of a video file (8 when it does not say), or `folder_fps` for a folder of frames."""
    path = Path(path)
    return folder_fps if path.is_dir() else video_fps(path)


def sample_frames(
    frames: np.ndarray, fps: float, num_frames: int, target_fps: float | None = None, stride: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Pick `num_frames` frames from the start of a clip; see `sample_indices` for which ones."""
    return frames[sample_indices(len(frames), fps, num_frames, target_fps, stride, warn)]


def sample_indices(
    frame_count: int, fps: float, num_frames: int, target_fps: float | None = None, stride: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Indices of `num_frames` frames taken every `stride` frames, or at `target_fps`, from frame 0.

    With neither, the stride is the whole number of frames closest to an 8 fps result (3 for a 24 fps clip, at
    least 1). When the clip is shorter than that needs, the frames are spread evenly over the whole clip instead
    (repeating frames when it has fewer than `num_frames`) and a warning says so (given to `warn`, by default
    `reporting.warn`, which a reader of many clips replaces to gather them).
    """
    warn = warn or reporting.warn
    step = _sampling_step(fps, num_frames, target_fps, stride)
    wanted = _stepped_indices(step, num_frames)
    if wanted[-1] < frame_count:
        _check_frames_differ(wanted, fps, step, warn)
        return wanted
    warn(
        f"the clip has {frame_count} frames but {num_frames} frames taken every {step:g} frames need "
        f"{wanted[-1] + 1}: spreading them evenly over the clip; use a longer clip, fewer frames or a smaller stride"
    )
    return np.floor(np.linspace(0, frame_count - 1, num_frames) + 0.5).astype(np.int64)


def _check_frames_differ(indices: np.ndarray, fps: float, step: float, warn: Callable[[str], None]) -> None:
    """A clip sampled faster than its own frame rate repeats frames: refused when all are one frame (the motion
    would be stillness), warned about otherwise."""
    distinct = len(np.unique(indices))
    if distinct == len(indices):
        return
    sampled_at = fps / step
    if distinct < 2:
        raise UserError(
            f"sampling {len(indices)} frames at {sampled_at:g} fps takes only the first frame of this {fps:g} fps "
            f"clip, so there is no motion to learn: sample it at {fps:g} fps or less (--fps {fps:g} or --stride 1)"
        )
    warn(
        f"the clip has {fps:g} frames a second and is sampled at {sampled_at:g}: its {distinct} frames in use repeat "
        f"to make {len(indices)}; sample it at {fps:g} fps (--fps {fps:g} or --stride 1) to use each frame once"
    )


def frames_needed(fps: float, num_frames: int, target_fps: float | None = None, stride: int | None = None) -> int:
    """How many leading frames `sample_indices` reads when the clip is long enough."""
    return int(_stepped_indices(_sampling_step(fps, num_frames, target_fps, stride), num_frames)[-1]) + 1


def prepare_clip(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (shorter side first, Lanczos) and centre-crop every frame to `size`; returns (F, H, W, 3) uint8."""
    return np.stack([prepare_photo(Image.fromarray(frame), size) for frame in frames])


def clip_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 frames -> float32 tensor (1, F, 3, H, W) in [-1, 1]."""
    return pixels_to_tensor(frames).unsqueeze(0)


def load_clip_for_sampling(
    path: str | Path,
    num_frames: int,
    target_fps: float | None = None,
    stride: int | None = None,
    folder_fps: float = DEFAULT_FOLDER_FPS,
) -> tuple[np.ndarray, float]:
    """`load_clip` of only the leading frames that `sample_frames` with the same settings uses (at least 2), and the
    clip's fps: a long clip costs no more than a short one."""
    fps = clip_fps(path, folder_fps)
    return load_clip(path, max_frames=max(2, frames_needed(fps, num_frames, target_fps, stride)), folder_fps=folder_fps)


def load_and_sample_clip(
    path: str | Path,
    num_frames: int,
    size: int | tuple[int, int],
    target_fps: float | None = None,
    stride: int | None = None,
    folder_fps: float = DEFAULT_FOLDER_FPS,
) -> np.ndarray:
    """Load, sample and size a motion clip in one go, decoding only the frames that sampling uses."""
    frames, fps = load_clip_for_sampling(path, num_frames, target_fps, stride, folder_fps)
    return prepare_clip(sample_frames(frames, fps, num_frames, target_fps, stride), size)


def _stepped_indices(step: float, num_frames: int) -> np.ndarray:
    # capped where int64 still holds it (--fps 1e-30 had wrapped to a negative index): past any clip's end all the same
    return np.floor(np.minimum(np.arange(num_frames) * step + 1e-6, 2.0**62)).astype(np.int64)


def _sampling_step(fps: float, num_frames: int, target_fps: float | None, stride: int | None) -> float:
    if num_frames < 1:
        raise UserError(f"--num-frames must be at least 1, got {num_frames}")
    if fps <= 0:
        raise UserError(f"the clip's frame rate must be positive, got {fps}: set a positive fps for frame folders")
    if target_fps is not None and stride is not None:
        raise UserError("give --fps or --stride for sampling the clip, not both")
    if stride is not None:
        if stride < 1:
            raise UserError(f"--stride must be at least 1, got {stride}")
        return float(stride)
    if target_fps is not None:
        if not 0 < target_fps < math.inf:  # nan too
            raise UserError(f"--fps must be a positive number, got {target_fps}")
        return fps / target_fps
    return float(max(1, round(fps / DEFAULT_SAMPLE_FPS)))


def _check_frames(path: Path, frames: np.ndarray) -> None:
    if len(frames) < 2:
        raise UserError(f"{path} has only 1 frame: a motion clip needs at least 2 frames; use a longer clip")
    height, width = frames.shape[1:3]
    if min(height, width) < MIN_SIDE:
        raise UserError(
            f"clip {path} is too small ({width}x{height} pixels): "
            f"use one at least {MIN_SIDE} pixels on its shorter side"
        )


def _load_frame_folder(folder: Path, max_frames: int | None, max_short_side: int | None) -> np.ndarray:
    files = _frame_files(folder)[:max_frames]
    _warn_about_gaps(folder, files)
    frames = [np.asarray(load_image(file, max_short_side)) for file in files]
    return _match_first_frame_size(folder, files, frames)


def _frame_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if is_image_file(p)), key=natural_sort_key)
    if len(files) < 2:
        raise UserError(
            f"{folder} has {len(files)} image frame(s): a motion clip needs at least 2; "
            "give a video file or a folder of numbered frames (.png, .jpg)"
        )
    unnumbered = [file.name for file in files if _frame_number(file) is None]
    if len(unnumbered) == len(files):
        return files  # in name order
    if unnumbered:
        shown = ", ".join(unnumbered[:3]) + (", ..." if len(unnumbered) > 3 else "")
        raise UserError(
            f"{folder} holds numbered frames and {len(unnumbered)} image(s) without a number ({shown}), whose place "
            "in the clip is unknown: remove them or number them"
        )
    files.sort(key=lambda file: (_frame_number(file), natural_sort_key(file)))
    _check_unique_numbers(folder, files)
    return files


def _frame_number(file: Path) -> int | None:
    """The last number in the file's stem: 'shot2_frame_0007.png' -> 7."""
    digits = re.findall(r"\d+", file.stem)
    return int(digits[-1]) if digits else None


def _check_unique_numbers(folder: Path, files: list[Path]) -> None:
    for earlier, later in zip(files, files[1:]):
        if _frame_number(earlier) == _frame_number(later):
            raise UserError(
                f"frames {earlier.name} and {later.name} in {folder} have the same number: keep only one of them"
            )


def _warn_about_gaps(folder: Path, files: list[Path]) -> None:
    numbers = [_frame_number(file) for file in files]
    if None in numbers:
        return
    gaps = [_format_range(a + 1, b - 1) for a, b in zip(numbers, numbers[1:]) if b - a > 1]
    if gaps:
        shown = ", ".join(gaps[:5]) + (", ..." if len(gaps) > 5 else "")
        reporting.warn(
            f"frame numbers in {folder} have gaps (missing {shown}): using the {len(files)} frames present back to "
            "back; re-export the frames if that is wrong"
        )


def _format_range(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _match_first_frame_size(folder: Path, files: list[Path], frames: list[np.ndarray]) -> np.ndarray:
    height, width = frames[0].shape[:2]
    odd = [i for i, frame in enumerate(frames) if frame.shape[:2] != (height, width)]
    if odd:
        example = frames[odd[0]]
        reporting.warn(
            f"{len(odd)} of {len(frames)} frames in {folder} differ in size from the first ({width}x{height}), e.g. "
            f"{files[odd[0]].name} is {example.shape[1]}x{example.shape[0]}: resized and centre-cropped them to match"
        )
        for i in odd:
            frames[i] = prepare_photo(Image.fromarray(frames[i]), (height, width))
    return np.stack(frames)
