"""Video files in and out, with no system ffmpeg: imageio + imageio-ffmpeg for mp4/mov/webm/mkv, Pillow for GIF and
animated PNG (APNG) or WebP.

Frames are numpy arrays of shape (F, H, W, 3), dtype uint8, RGB.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import math
import os
import queue
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Generator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vidbooth import reporting
from vidbooth.data.gif import GrownScreen, grown_screen
from vidbooth.data.gif import frame_delays as gif_frame_delays
from vidbooth.data.images import MAX_PHOTO_PIXELS, open_image, pillow_limits_lifted, to_rgb
from vidbooth.data.png import png_sizes, reaches_its_end
from vidbooth.data.webp import frame_durations as webp_frame_durations
from vidbooth.errors import CHECK_THE_PATH, UserError, not_the_inputs_fault
from vidbooth.fileio import write_together

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif")
ANIMATION_EXTENSIONS = (".webp", ".png", ".apng")
"""Photo types that are a clip when animated (web pages' animated WebP and APNG), read as GIFs are. Not among the
VIDEO_EXTENSIONS, which find the clips in a folder: there a .png or .webp file is a photo (a subject's, a contact
sheet), and a still one given as a clip is refused as a still image."""
CLIP_FILE_EXTENSIONS = VIDEO_EXTENSIONS + ANIMATION_EXTENSIONS
WRITE_EXTENSIONS = (".mp4", ".gif")


def read_video(path: str | Path, max_frames: int | None = None, max_short_side: int | None = None) -> np.ndarray:
    """Read all frames (or the first `max_frames`) of a video file as (F, H, W, 3) uint8, upright (rotation
    metadata applied) and at their displayed shape (non-square pixels stretched out).

    With `max_short_side`, each frame is shrunk as it is decoded (area resampling, never enlarged) so that its
    shorter side is at most that many pixels: long 4K clips then fit in memory. A file that decodes to clearly fewer
    frames than it holds (truncated or damaged) is refused.
    """
    with contextlib.closing(video_frames(path, max_short_side)) as frames:  # stopped early: ffmpeg ends now
        return np.stack(list(itertools.islice(frames, max_frames)))


def video_frames(path: str | Path, max_short_side: int | None = None) -> Generator[np.ndarray, None, None]:
    """The frames of a video file one at a time, as `read_video` reads them, so that what the caller keeps of them
    (a motion signature keeps 12 numbers a frame) is all that grows with the clip's length. The checks that need
    every frame (an empty or truncated file) run when the last one has been taken."""
    path = Path(path)
    problem = video_file_problem(path)
    if problem:
        raise UserError(problem)
    by_pillow = _read_by_pillow(path)
    count, damage = 0, []
    try:
        decoder = _read_animation(path) if by_pillow else _read_ffmpeg(path, damage)
        with contextlib.closing(decoder) as decoded:
            for frame in decoded:
                count += 1
                frame = _shrink_frame(frame, max_short_side)  # the frame at its size let go before the next decodes
                yield frame
    except GeneratorExit:  # the caller has the frames it wants (and ffmpeg's log of them, read to its end)
        _warn_of_damage(path, damage)
        raise
    except UserError:
        raise
    except Exception as exc:
        not_the_inputs_fault(exc)
        raise UserError(f"cannot read video {path}: it is corrupt, truncated or in an unsupported codec; re-encode it, "
                        f"e.g. ffmpeg -i {shlex.quote(str(path))} -c:v libx264 -pix_fmt yuv420p fixed.mp4") from exc
    if count == 0:
        raise UserError(f"video has no readable frames: {path}")
    _check_complete(path, count, by_pillow)
    _warn_of_damage(path, damage)
    if _is_gif(path) and not _ends_whole(path):
        reporting.warn(f"{path} is cut off (it lacks the end marker of a whole GIF): its {count} frames may be only "
                       "the start of the clip; re-export or re-download it")


def _ends_whole(gif: Path) -> bool:
    """Whether a GIF ends with its trailer byte (';'): a download or copy cut short does not, and Pillow reads the
    frames before the cut without a word (9 of 16)."""
    with open(gif, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b";"


def _warn_of_damage(path: Path, damage: list[str]) -> None:
    """ffmpeg conceals what it cannot decode (a smear, a repeated frame) and goes on: say so, once per file read."""
    if damage:
        reporting.warn(f"{path} is damaged (ffmpeg: '{damage[0]}'): some of its frames may be broken or repeated; "
                       "re-export or re-download it if the result looks wrong")


def video_file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be a video file, judged without decoding it (missing, a folder, another type, empty)."""
    path = Path(path)
    if not path.exists():
        return f"video not found: {path}: {CHECK_THE_PATH}"
    if path.is_dir():
        return f"{path} is a folder, not a video file: give a video file in it"
    if path.suffix.lower() not in CLIP_FILE_EXTENSIONS:
        return (f"unsupported video type '{path.suffix}' for {path}: use one of {', '.join(VIDEO_EXTENSIONS)}, or an "
                f"animated {'/'.join(ANIMATION_EXTENSIONS)}")
    if path.stat().st_size == 0:
        return f"video file is empty (0 bytes): {path}; copy or export it again (a download or copy may have failed)"
    try:
        image = _image_kind(path)
    except PermissionError:  # ffmpeg would say only that it found no video in it: 'corrupt'
        return f"cannot read video {path}: permission denied; fix its permissions or copy it"
    cut_short = _cut_short_reason(path, image)
    if cut_short:  # Pillow would fail part-way, or (a WebP) call it no image at all
        return f"{path} is cut short ({cut_short}): re-export or re-download it"
    animated = _is_animated(path) if image in ANIMATION_KINDS else False
    if animated is None:  # had been told as a still image, one frame
        return (f"cannot read video {path}: it is a corrupt {image} file (Pillow cannot open it); re-export or "
                "re-download it")
    if animated:  # web pages' animations: an APNG, an animated WebP
        return None
    if image and path.suffix.lower() in ANIMATION_EXTENSIONS:
        return f"{path} is a still {image} image (one frame), not a video: give a video file or an animation"
    if image:
        return f"{path} is a {image} image named {path.suffix}, not a video: give a video file"
    return None


ANIMATION_KINDS = ("PNG", "WebP")
"""The photo formats (as `_image_kind` names them) that Pillow reads as clips when they are animated."""


def _cut_short_reason(path: Path, image: str | None) -> str | None:
    """Why a PNG or WebP file is cut short (a download or copy stopped midway), or None when it is whole."""
    if image == "WebP":
        stored, size = _riff_size(path), path.stat().st_size
        return f"{size:,} of the {stored:,} bytes its header gives" if stored > size else None
    if image == "PNG" and not reaches_its_end(path):
        return "it lacks the end marker of a whole PNG"
    return None


def _riff_size(path: Path) -> int:
    """The size a RIFF file (a WebP) says it has: its 8-byte header and the length that header stores."""
    with open(path, "rb") as file:
        return 8 + int.from_bytes(file.read(8)[4:8], "little")


def _is_animated(path: Path) -> bool | None:
    """Whether Pillow reads the PNG or WebP at `path` as an animation; None where it cannot open it (corrupt)."""
    stat = path.stat()
    return _is_animated_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _is_animated_cached(path: str, size: int, mtime_ns: int) -> bool | None:
    """Opening a WebP reads all of it (0.13 s for 22 MB), and reading one clip asks several times (keyed as
    `_frame_durations_cached`)."""
    sizes = png_sizes(Path(path))
    if sizes is not None and sizes.canvas[0] * sizes.canvas[1] > MAX_PHOTO_PIXELS:
        return sizes.animated  # not opened: Pillow 10 fills a buffer of its size (`_check_png_sizes`)
    try:
        with open_image(Path(path)) as im:  # under our pixel limit, not Pillow's: no bomb warning, nor error
            return bool(getattr(im, "is_animated", False))
    except Exception as exc:  # an APNG whose first frame reaches past its image, a WebP frame past its canvas
        not_the_inputs_fault(exc)
        return None


def _image_kind(path: Path) -> str | None:
    """The still-image format a file's first bytes show (a photo saved under a video's name), or None."""
    try:
        with open(path, "rb") as file:
            head = file.read(12)
    except PermissionError:
        raise
    except OSError:
        return None  # reading it says why
    if head.startswith(b"\x89PNG"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


DEFAULT_FRAME_MS = 100
"""What browsers show a frame of a GIF, APNG or animated WebP for when its stored time is missing or 10 ms or less
(10 fps)."""


def _is_gif(path: Path) -> bool:
    """Whether the file is named .gif and really is a GIF: sites often serve MP4s named .gif, which ffmpeg reads."""
    if path.suffix.lower() != ".gif":
        return False
    with open(path, "rb") as file:
        return file.read(6) in (b"GIF87a", b"GIF89a")


def _read_by_pillow(path: Path) -> bool:
    """Whether Pillow reads the clip: a GIF named .gif, or an animated PNG or WebP, whatever its clip name."""
    return _is_gif(path) or _image_kind(path) in ANIMATION_KINDS and bool(_is_animated(path))


def _open_animation(path: Path) -> Image.Image:
    """The GIF, APNG or animated WebP at `path`, opened under our pixel limit, not Pillow's (as photos are)."""
    _check_gif_frames(path)
    _check_png_sizes(path)
    with pillow_limits_lifted():
        im = Image.open(path)
    try:
        _check_frame_pixels(path, im)
    except UserError:
        im.close()
        raise
    return im


def _check_gif_frames(path: Path) -> None:
    """A UserError for a GIF with a frame that takes its screen over our pixel limit, found from the GIF's block
    structure before Pillow opens it: Pillow gives a frame to be cleared after it (disposal method 2) its stated
    size while seeking to it, before `_check_frame_pixels` can look (a 20000x20000 one on a 16x16 screen: 1.5 GB)."""
    grown = grown_screen(path, MAX_PHOTO_PIXELS)
    if grown:
        raise _too_large(path, grown.width, grown.height, grown)


def _check_png_sizes(path: Path) -> None:
    """A UserError for an APNG that a header chunk (IHDR) gives over our pixel limit, found from its chunks before
    Pillow opens it: Pillow 10 fills a buffer of the image's size when its first frame is to be cleared after it, and
    one of a frame's size on seeking past a frame that a second header has let past the image (20000x20000: 1.5 GB),
    before `_check_frame_pixels` can look. A second header makes it corrupt, as Pillow 13 finds decoding the frame."""
    sizes = png_sizes(path)
    if sizes is None:
        return
    width, height = sizes.largest
    if width * height <= MAX_PHOTO_PIXELS:
        return
    if not sizes.header_repeated:
        raise _too_large(path, width, height)
    raise UserError(f"cannot read video {path}: it is corrupt (a second image header gives {width}x{height} = "
                    f"{width * height / 1e6:.0f} megapixels, its first {sizes.canvas[0]}x{sizes.canvas[1]}); re-encode "
                    f"it, e.g. ffmpeg -i {shlex.quote(str(path))} -c:v libx264 -pix_fmt yuv420p fixed.mp4")


def _check_frame_pixels(path: Path, im: Image.Image) -> None:
    """A UserError for an animation whose frames are over our pixel limit (Pillow's is lifted)."""
    width, height = im.size
    if width * height > MAX_PHOTO_PIXELS:
        raise _too_large(path, width, height)


def _too_large(path: Path, width: int, height: int, grown: GrownScreen | None = None) -> UserError:
    too_large = (f"video {path} is too large ({width}x{height} = {width * height / 1e6:.0f} megapixels a frame, "
                 f"limit {MAX_PHOTO_PIXELS / 1e6:.0f})")
    if grown is None or not grown.past_the_screen:
        return UserError(f"{too_large}: downscale it")
    fixed = shlex.quote(str(path.with_name(f"{path.stem}_clipped.gif")))
    return UserError(f"{too_large}: its frame {grown.index + 1} reaches past its {grown.screen[0]}x{grown.screen[1]} "
                     f"screen; re-encode it clipped to the screen, as browsers show it, e.g. ffmpeg -i "
                     f"{shlex.quote(str(path))} {fixed}")


def _decode_frame(path: Path, im: Image.Image, index: int) -> None:
    """Seek to frame `index` and decode it, under our pixel limit: a GIF frame larger than the screen grows it
    (cropped back once decoded), which Pillow's limit, lifted here, had bounded (a 20000x20000 frame took 400 MB).
    A GIF has had its frames judged before it was opened (`_check_gif_frames`): this check is for APNG and WebP."""
    with pillow_limits_lifted():
        im.seek(index)
        _check_frame_pixels(path, im)
        im.load()


def _animation_frames(im: Image.Image) -> range:
    """The indices of the frames an animation shows: an APNG's first image may be a still for viewers that do not
    animate, which Pillow counts as frame 0 and browsers do not show."""
    return range(1 if im.info.get("default_image") else 0, getattr(im, "n_frames", 1))


def _frame_durations(path: Path) -> tuple[int, ...]:
    """Each frame's display time in ms, as browsers show it (DEFAULT_FRAME_MS for 10 ms or less)."""
    stat = path.stat()
    return _frame_durations_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _frame_durations_cached(path: str, size: int, mtime_ns: int) -> tuple[int, ...]:
    """fps, frame count and reading one clip need every frame's time before its first frame is read, so they share
    one look at them (keyed by the file's size and mtime, so a rewritten file is read again): from the file's own
    structure where it stores them as Pillow gives them (`_stored_durations`), else from Pillow, which gives a
    frame's time on seeking to it and decodes each frame it seeks past (a WebP's, each frame it gives a time for).

    Opened as for reading, so that the checks before a decode run as they do there, and Pillow's count of the frames
    (which a GIF's is walked for, with no decoding) is the one the stored times must match."""
    with _open_animation(Path(path)) as im:
        shown = _animation_frames(im)
        stored = _stored_durations(Path(path))
        if stored is not None and len(stored) == shown.stop:
            durations = [stored[i] for i in shown]
        else:  # an APNG, or a file whose structure Pillow reads otherwise (it says how, or fails on it, decoding)
            durations = [_pillows_duration(Path(path), im, i) for i in shown]
    return tuple(duration if duration > 10 else DEFAULT_FRAME_MS for duration in durations)


def _stored_durations(path: Path) -> list[int] | None:
    """Each frame's time in ms as Pillow would give it, read from a GIF's blocks or a WebP's chunks without decoding,
    for every frame Pillow counts; None for an APNG, whose times Pillow gives as it walks its chunks on seeking,
    a walk that passes over damage (a chunk it cannot read ends a frame's) and checks the frames' order and places
    only then: its times are taken from Pillow, decoding, so that they and its errors stay as Pillow gives them."""
    if _image_kind(path) == "WebP":
        return webp_frame_durations(path)
    return gif_frame_delays(path) if _is_gif(path) else None


def _pillows_duration(path: Path, im: Image.Image, index: int) -> int:
    """Frame `index`'s time in ms as Pillow gives it, decoding the frame."""
    _decode_frame(path, im, index)
    return int(im.info.get("duration") or 0)  # an APNG's is a fraction of a second: in ms, a float


def _frame_repeats(durations: tuple[int, ...]) -> list[int]:
    """How many times to show each frame at the animation's base rate (one frame's time, `_frame_time`).

    Encoders, Pillow's GIF, APNG and WebP writers included, store a frame that does not change as one frame held
    longer: a clip that pauses would otherwise read back short and with its timing lost. (An animation still
    throughout is one frame and stays one.)
    """
    frame_time = _frame_time(durations)
    return [max(1, round(d / frame_time)) for d in durations]


def _frame_time(durations: tuple[int, ...]) -> float:
    """The time of one frame of the animation's clip: the mean of its shortest frame times, those within the 10 ms a
    GIF can store them by (a clip at 8 fps alternates 120 and 130 ms; at 40 fps, 20 and 30)."""
    shortest = [d for d in durations if d <= min(durations) + 10]
    return sum(shortest) / len(shortest)


def _read_animation(path: Path) -> Generator[np.ndarray, None, None]:
    """Frames composited on the animation's screen, cropped to its size as browsers do: Pillow, like them, enlarges
    a GIF's screen to a first frame larger than it, but it also grows it for a later frame that is larger, which
    browsers clip (and the frames would then differ in size).

    Stopped early (a caller that wants the first frames only), it decodes the rest before it ends: a frame that
    cannot be decoded refuses the file however few frames are taken, as when every frame's time was learnt by
    decoding it (a GIF's and a WebP's now are not, `_stored_durations`)."""
    repeats_of = _frame_repeats(_frame_durations(path))
    with _open_animation(path) as im:
        width, height = im.size  # after the first frame
        frames = zip(_animation_frames(im), repeats_of, strict=True)
        try:
            for i, repeats in frames:
                _decode_frame(path, im, i)
                frame = _frame_pixels(im, width, height)
                for _ in range(repeats):
                    yield frame
                del frame  # before the next frame is decoded: the caller keeps what it wants of it
        except GeneratorExit:
            for i, _ in frames:
                _decode_frame(path, im, i)
            raise


_BAND_ROWS = 256


def _frame_pixels(im: Image.Image, width: int, height: int) -> np.ndarray:
    """The decoded frame's pixels, transparency on white as photos, in its top left `width` x `height`, copied out a
    band of rows at a time: `np.asarray` of the whole frame had held two copies of it at once besides Pillow's (and
    the RGB copy that `to_rgb` makes of a frame already RGB another), 2.4 GB more at 250 megapixels."""
    rgb = im if im.mode == "RGB" and "transparency" not in im.info else to_rgb(im)
    width, height = min(width, rgb.width), min(height, rgb.height)
    pixels = np.empty((height, width, 3), np.uint8)
    with pillow_limits_lifted():  # Pillow 10 checks a crop as it checks an image it opens
        for top in range(0, height, _BAND_ROWS):
            bottom = min(top + _BAND_ROWS, height)
            pixels[top:bottom] = np.asarray(rgb.crop((0, top, width, bottom)))
    pixels.flags.writeable = False  # yielded once for each repeat, read-only as `np.asarray` of the image had been
    return pixels


MAX_PIXEL_STRETCH = 4
"""Pixels up to this many times wider than tall (or taller than wide) are stretched to the shape players show;
beyond it (a damaged header's 4000:1, which made a 4.6 KB clip 96x384000 frames and GBs of memory) the stored
pixels are taken as square."""
_PLAUSIBLE = rf"between(sar\,{1 / MAX_PIXEL_STRETCH}\,{MAX_PIXEL_STRETCH})"
_DISPLAY_SHAPE = ["-vf", rf"scale=iw*max(1\,if({_PLAUSIBLE}\,sar\,1)):ih*max(1\,if({_PLAUSIBLE}\,1/sar\,1)),setsar=1"]
"""ffmpeg's filter that stretches non-square pixels (a stored 120x96 shown as 160x96) to the shape players show."""


def _ffmpeg_input(path: str | Path) -> str:
    """`path` as ffmpeg's input, through its file protocol: else a name like 'pipe:take1.mp4' or 'data:clip.mp4'
    is taken for a protocol (standard input, inline data) and the clip refused as corrupt."""
    return f"file:{path}"


_FIRST_VIDEO = ["-map", "0:v:0"]
"""The file's first video stream, the one whose frame rate and duration the header gives (`_ffmpeg_header`); left
to itself ffmpeg decodes the largest, so a file holding two would be read at the other's rate."""


def _read_ffmpeg(path: Path, damage: list[str] | None = None) -> Generator[np.ndarray, None, None]:
    """Frames at the file's average frame rate, the one `video_fps` reports. Left to itself ffmpeg emits a
    variable-frame-rate file at its base rate instead (often 25 or 30 fps for an 8 fps phone clip, pauses copied
    as runs of equal frames), so the frames and the reported rate would disagree and motion would be learned and
    measured at the wrong speed. ffmpeg applies rotation metadata itself. What ffmpeg says of damaged data is added
    to `damage`."""
    fps = _stream_fps(path)
    rate = ["-r", f"{fps:.6g}"] if fps else []
    yield from _decode_ffmpeg(path, _FIRST_VIDEO + rate + _DISPLAY_SHAPE, damage)


_SIZE_CHANGED = re.compile(r"video parameters changed to .*?, (\d+)x(\d+)")
"""What ffmpeg (6.1 on) logs when a decoded frame's size or format differs from the frame before it."""

_STREAM_SIZE = re.compile(r" (\d+)x(\d+)[, ]")

_DAMAGE = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\] (.*(?:error while decoding|invalid nal unit size|concealing \d+|"
                     r"error splitting the input|corrupt (?:decoded )?frame|missing picture in access unit|"
                     r"error decoding).*)", re.IGNORECASE)
"""What ffmpeg's decoders log of damaged data ('[h264 @ 0x...] error while decoding MB 0 8'), which they conceal.
Not 'Invalid data found when processing input', which webcams' MJPEG gives for their private APP fields."""


def _decode_ffmpeg(path: Path, output_params: list[str], damage: list[str] | None = None
                   ) -> Generator[np.ndarray, None, None]:
    """Each frame ffmpeg decodes, as RGB, in one ffmpeg run whose log is read alongside (the command
    imageio-ffmpeg's reader runs, which hides that log).

    The log is how a frame size that changes part-way is seen at no extra cost: ffmpeg would stretch every frame to
    the first one's size without a word (`_refuse_size_change`). When reading stops early, the frames handed out
    are checked too, since ffmpeg logs a change before it outputs the changed frame; so may be a few frames after
    them, which ffmpeg had decoded ahead.
    """
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-nostats", "-i", _ffmpeg_input(path),
               "-pix_fmt", "rgb24", "-vcodec", "rawvideo", "-f", "image2pipe", *output_params, "-"]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    changes: list[tuple[int, int]] = []
    damage = [] if damage is None else damage
    head: queue.Queue = queue.Queue()
    # the log is read in a thread from the start: read here, a log whose output description is not recognised would
    # be waited on to its end while ffmpeg waits for its frames to be read
    log_reader = threading.Thread(target=_read_log, args=(process.stderr, head, changes, damage), daemon=True)
    log_reader.start()
    try:
        try:
            found = head.get(timeout=LOG_HEAD_SECONDS)
        except queue.Empty:
            raise RuntimeError(f"ffmpeg described no video output in {LOG_HEAD_SECONDS} s") from None
        if isinstance(found, str):
            raise RuntimeError("ffmpeg gave no video output:\n" + found)
        (width, height), stored = found
        frame_bytes = width * height * 3
        while raw := process.stdout.read(frame_bytes):
            if len(raw) < frame_bytes:
                raise RuntimeError(f"ffmpeg's output of {path} ends part-way through a frame")
            yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
    except GeneratorExit:
        pass  # the caller wants no more frames; those it has are still checked
    finally:
        _end_ffmpeg(process)
        log_reader.join(timeout=5)
        if not log_reader.is_alive():  # else it still reads it: left to the collector
            process.stderr.close()  # unclosed, it was a ResourceWarning for each video read
    _refuse_size_change(path, stored, changes)


LOG_HEAD_SECONDS = 60
"""How long ffmpeg may take to describe its output (it does so before decoding a frame) before a read gives up."""

_OUTPUT_HEADER = re.compile(r"Output #\d+, ")
"""Where ffmpeg's log starts describing its output; anywhere in a line, after a message that ended without a line
break ('Odd rotation angle. ... (ffmpeg-devel@ffmpeg.org)Output #0, image2pipe, ...')."""


def _read_log(stderr, head: queue.Queue, changes: list[tuple[int, int]], damage: list[str]) -> None:
    """Read ffmpeg's whole log (so that it never blocks on it). Up to its description of the output (written before
    the first frame) it puts on `head` the (width, height) of the frames ffmpeg outputs and the stored size of the
    video stream it decodes (None if not found), or the log's last lines when it ends without one; then it keeps
    the frame sizes ffmpeg changes to. What it says of damaged data goes to `damage` throughout."""
    lines, stored_sizes, decoded, in_output, described = [], {}, None, False, False
    for raw in stderr:
        line = raw.decode(errors="replace")
        if found := _DAMAGE.search(line):
            damage.append(found[1].strip())
        if described:
            if match := _SIZE_CHANGED.search(line):
                changes.append((int(match[1]), int(match[2])))
            continue
        lines.append(line)
        in_output = in_output or bool(_OUTPUT_HEADER.search(line))
        stream = re.match(r"\s*Stream #0:(\d+)\S*: Video: .*", line)
        size = _STREAM_SIZE.search(line) if stream else None
        if stream and size and not in_output:
            stored_sizes[stream[1]] = (int(size[1]), int(size[2]))
        mapping = re.match(r"\s*Stream #0:(\d+) -> ", line)
        if mapping and decoded is None:
            decoded = stored_sizes.get(mapping[1])
        if stream and size and in_output:
            head.put(((int(size[1]), int(size[2])), decoded))
            described = True
    if not described:
        head.put("".join(lines[-20:]))


def _end_ffmpeg(process: subprocess.Popen) -> None:
    """Stop ffmpeg now if it is still writing (closing its output ends it), else reap it."""
    process.stdout.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _refuse_size_change(path: Path, first: tuple[int, int] | None, changes: list[tuple[int, int]]) -> None:
    """Refuse a video whose frames change size part-way from `first` (clips joined without re-encoding, some screen
    and call recordings): it could only be read stretched or cropped to one size, so the user decides how. A change
    of pixel format alone is fine."""
    other = next((size for size in changes if size != first), None)
    if first is None or other is None:
        return
    width, height = first[0] + first[0] % 2, first[1] + first[1] % 2
    fixed = shlex.quote(str(path.with_name(f"{path.stem}_{width}x{height}.mp4")))
    raise UserError(
        f"video {path} changes frame size part-way ({first[0]}x{first[1]}, then {other[0]}x{other[1]}) and would "
        f"be read stretched: re-encode it at one size, e.g. ffmpeg -i {shlex.quote(str(path))} -vf "
        f"scale={width}:{height}:force_original_aspect_ratio=decrease,pad={width}:{height}:-1:-1 {fixed}, "
        "or cut it where the size changes"
    )


def _shrink_frame(frame: np.ndarray, max_short_side: int | None) -> np.ndarray:
    height, width = frame.shape[:2]
    if max_short_side is None or min(height, width) <= max_short_side:
        return frame
    scale = max_short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def video_fps(path: str | Path, default: float = 8.0) -> float:
    """Frames per second stored in the file, or `default` when it cannot be read."""
    path = Path(path)
    try:
        if _read_by_pillow(path):
            return 1000.0 / _frame_time(_frame_durations(path))
        return _stream_fps(path) or default
    except Exception:
        return default


def _stream_fps(path: Path) -> float | None:
    """The video stream's average frame rate as ffmpeg reports it, or None when it cannot be known.

    Where ffmpeg's header gives none that can be read (imageio-ffmpeg reads none from "1k fps", ffmpeg's way of
    writing 1,000 or more, and none is written for a stream whose rate is unknown, as in browser-recorded WebM,
    whose header then says its time base's "1k"), the rate is counted from the packets' timestamps instead: else
    such a clip was read frame by frame at 1,000 fps and said to be 8 fps, its motion slowed a hundredfold.
    """
    fps = _ffmpeg_header(path).get("fps")
    if fps and np.isfinite(fps) and fps > 0:
        return float(fps)
    stat = path.stat()
    return _packet_rate_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _packet_rate_cached(path: str, size: int, mtime_ns: int) -> float | None:
    """The first video stream's average frame rate from its packets' presentation times (copied, not decoded):
    the frames after the first over the time from the first to the last. None for fewer than two timed frames."""
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", _ffmpeg_input(path),
               *_FIRST_VIDEO, "-c", "copy", "-f", "framecrc", "-"]
    listing = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=600).stdout
    time_base = re.search(r"^#tb 0: (\d+)/(\d+)$", listing, flags=re.MULTILINE)
    times = [int(fields[2]) for line in listing.splitlines() if not line.startswith("#")
             and len(fields := line.split(",")) > 2 and fields[2].strip().lstrip("-").isdigit()
             and int(fields[2]) > -2**62]  # ffmpeg lists a packet without a time as the smallest int64
    if time_base is None or len(times) < 2 or max(times) == min(times):
        return None
    seconds = (max(times) - min(times)) * int(time_base[1]) / int(time_base[2])
    return (len(times) - 1) / seconds


def _ffmpeg_header(path: Path) -> dict:
    """What ffmpeg's header says of the file (fps, duration, sizes), without decoding a frame."""
    stat = path.stat()
    return dict(_ffmpeg_header_cached(str(path), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _ffmpeg_header_cached(path: str, size: int, mtime_ns: int) -> dict:
    """One ffmpeg start for the frame rate and the duration of one read (keyed as `_frame_durations_cached`): its
    description of the file, with nothing decoded, read as imageio-ffmpeg reads it ("fps" from the first video
    stream's line, none from "1k fps"; "duration" of the longest stream, 0 if not given). A file with no video
    stream is a UserError when it has sound, else an error that reading it calls the file unreadable.

    Run here, not through imageio-ffmpeg's reader, whose pipes were left open when ffmpeg had already ended."""
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", _ffmpeg_input(path)]
    log = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=600).stderr
    streams = [line for line in log.splitlines() if re.match(r"\s*Stream #", line)]
    video = next((line for line in streams if " Video: " in line), None)
    if video is None:
        if any(" Audio: " in line for line in streams):
            raise UserError(f"{path} has no video stream (only sound): give a video file")
        raise RuntimeError(f"ffmpeg found no video stream in {path}:\n" + "\n".join(log.splitlines()[-5:]))
    fps = re.search(r" (\d+(?:\.\d*)?) fps", video)
    duration = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", log)
    seconds = int(duration[1]) * 3600 + int(duration[2]) * 60 + float(duration[3]) if duration else 0.0
    return {"fps": float(fps[1]) if fps else 0.0, "duration": seconds}


TRUNCATION_TOLERANCE = 0.1
"""A file may decode to this share of its frames fewer (at least 2) than it lists before it counts as truncated."""


def video_frame_count(path: str | Path) -> int | None:
    """How many frames the file's header promises (an animation's frame count, or duration x `_stream_fps`), without
    decoding.

    None when the header gives no duration. The duration is the longest stream's, so a file whose sound runs on past
    its picture promises more frames than its video has: `_check_complete` tells the two apart.
    """
    path = Path(path)
    try:
        if _read_by_pillow(path):
            return sum(_frame_repeats(_frame_durations(path)))
        meta = _ffmpeg_header(path)
    except Exception:
        return None
    duration, fps = meta.get("duration") or 0, _stream_fps(path) or 0
    return round(duration * fps) if duration > 0 and fps > 0 else None


def _check_complete(path: Path, decoded: int, by_pillow: bool) -> None:
    """Refuse a file that decoded to clearly fewer frames than it holds: truncated or damaged."""
    promised = video_frame_count(path)
    tolerance = max(2, TRUNCATION_TOLERANCE * promised) if promised else 0
    if not promised or promised - decoded <= tolerance:
        return
    if not by_pillow:  # the header's duration is the longest stream's: the sound may run on past the picture
        fps, duration = _stream_fps(path), _ffmpeg_header(path)["duration"]
        stored, damaged = _stored_seconds(path, ["-map", "0"])
        if not damaged and stored is not None and (duration - stored) * fps <= tolerance:
            picture, damaged = _stored_seconds(path, _FIRST_VIDEO)  # its packets end where its frames do
            if not damaged and picture is not None and picture * fps - decoded <= tolerance:
                return  # every stream's packets are there to the end: the picture just ends first
    raise UserError(
        f"video {path} ends early (decoded {decoded} of the {promised} frames its header lists): "
        "it is truncated or corrupt; re-export or re-download it"
    )


def _stored_seconds(path: Path, streams: list[str]) -> tuple[float | None, bool]:
    """How far into the file the packets of `streams` (ffmpeg's -map options) reach, in seconds, counted by copying
    them (nothing decoded), and whether ffmpeg found the file damaged on the way (such as 'partial file' for a cut
    MP4)."""
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", _ffmpeg_input(path), *streams,
               "-c", "copy", "-f", "null", "-"]
    result = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=600)
    times = re.findall(r"time=(\d+):(\d+):(\d+(?:\.\d+)?)", result.stderr)
    damaged = result.returncode != 0 or bool(re.search(r"partial file|invalid data|truncat|corrupt", result.stderr,
                                                       flags=re.IGNORECASE))
    if not times:
        return None, damaged
    hours, minutes, seconds = times[-1]
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds), damaged


def write_video(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """Write (F, H, W, 3) uint8 frames as .mp4 (h264) or .gif, atomically (temp file, then rename)."""
    path = Path(path)
    ensure_writable_dir(path.parent, flag=None)
    write_together([(path, video_writer(frames, path, fps))])
    return path


def video_writer(frames: np.ndarray, path: str | Path, fps: int = 8) -> Callable[[Path], None]:
    """What writes (F, H, W, 3) uint8 frames as the video `path` names (.mp4 or .gif), into the file it is given:
    for `write_together`, which gives it a temporary file beside `path` (a `write_video` there would make a
    temporary of the temporary)."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITE_EXTENSIONS:
        raise UserError(f"cannot write '{suffix}' video {path}: use .mp4 or .gif")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    return lambda temporary: _encode(frames, Path(temporary), fps)


def _encode(frames: np.ndarray, path: Path, fps: int) -> None:
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=_gif_frame_times(len(frames), fps),
                       loop=0)
    else:
        _write_mp4(frames, str(path), fps)
        if not os.path.getsize(path):
            raise UserError(f"ffmpeg wrote an empty video at {fps} fps: try a lower frame rate")
        if not _whole_mp4(path):  # ffmpeg stopped midway, and its writer does not say so: kept, it had passed as whole
            raise _cut_short(path)


def _whole_mp4(path: Path) -> bool:
    """Whether the MP4 file `path` is whole: its top-level boxes fill it exactly and one is the index (`moov`, which
    ffmpeg writes last). A file cut short by a full disk or a file-size limit ends inside a box, or lacks the index."""
    size, at, kinds = os.path.getsize(path), 0, set()
    with open(path, "rb") as file:
        while at < size:
            file.seek(at)
            header = file.read(16)
            if len(header) < 8:
                return False
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1 and len(header) == 16:  # a 64-bit size follows
                length = int.from_bytes(header[8:16], "big")
            elif length == 0:  # to the end of the file: only an unfinished mdat is written so
                length = size - at
            if length < 8:
                return False
            kinds.add(kind)
            at += length
    return at == size and b"moov" in kinds


def _cut_short(path: Path) -> OSError:
    """The error behind a video that ffmpeg stopped writing midway (it does not tell its caller): the file-size
    limit (ulimit -f) when the file reached it, a full disk when no room is left, else an I/O error saying so."""
    import errno
    import shutil

    size = os.path.getsize(path)
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and size >= limit:
            return OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
    except ImportError:  # Windows has no such limit
        pass
    if shutil.disk_usage(path.parent).free < 1024 * 1024:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, "ffmpeg stopped before the end of the video (its own lines above say why)", str(path))


def _gif_frame_times(count: int, fps: int) -> list[int]:
    """Each frame's time in ms for a GIF at `fps`. A GIF stores hundredths of a second: one time for every frame
    (125 ms cut to 120) played 8 fps at 8.33; frame i instead ends at i+1 frames' time rounded, so the clip
    lasts count / fps seconds (12 and 13 hundredths alternate at 8 fps)."""
    ends = [math.floor(100 * i / fps + 0.5) for i in range(count + 1)]
    return [10 * (end - start) for start, end in zip(ends, ends[1:])]


def _write_mp4(frames: np.ndarray, path: str, fps: int) -> None:
    import imageio.v2 as imageio

    # h264 with yuv420p needs even sizes; pad by repeating the last row/column.
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    writer = imageio.get_writer(
        path, format="FFMPEG", fps=fps, codec="libx264", quality=8, pixelformat="yuv420p", macro_block_size=1
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def contact_sheet(frames: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tile (F, H, W, 3) frames into one image, left to right then top to bottom."""
    f, h, w, c = frames.shape
    columns = columns or min(f, 8)
    rows = math.ceil(f / columns)
    sheet = np.zeros((rows * h, columns * w, c), dtype=frames.dtype)
    for i, frame in enumerate(frames):
        r, col = divmod(i, columns)
        sheet[r * h : (r + 1) * h, col * w : (col + 1) * w] = frame
    return sheet


def save_contact_sheet(frames: np.ndarray, path: str | Path, columns: int | None = None) -> Path:
    """Write the contact sheet as PNG, atomically (temp file, then rename; no temp file is left on failure)."""
    path = Path(path)
    ensure_writable_dir(path.parent, flag=None)
    write_together([(path, contact_sheet_writer(frames, columns))])
    return path


def contact_sheet_writer(frames: np.ndarray, columns: int | None = None) -> Callable[[Path], None]:
    """What writes the contact sheet as PNG into the file it is given (for `write_together`, as `video_writer`)."""
    sheet = Image.fromarray(contact_sheet(frames, columns))
    return lambda temporary: sheet.save(temporary, format="PNG")


def _another(flag: str | None) -> str:
    return f"choose another {flag}" if flag else "choose another place for the output"


def check_writable_dir(folder: str | Path, flag: str | None = "--out") -> Path:
    """Raise a UserError if `folder` could not be created or written, leaving nothing behind: its nearest
    existing ancestor must be a writable folder (tried with a nameless file). `ensure_writable_dir` creates it when
    there is something to write. `flag`: the option that gave it, which the message says to change."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists() or _broken_link(p) or p == p.parent)
    if _broken_link(existing):  # a link to nothing (an unmounted drive): making the folder would fail on it
        raise UserError(f"cannot create output folder {folder}: {_link_to_nothing(existing)}; {_another(flag)}")
    if not existing.is_dir():
        raise UserError(f"cannot create output folder {folder}: {existing} is not a folder; {_another(flag)}")
    if not os.access(existing, os.W_OK | os.X_OK) or not _can_create_in(existing):
        if existing == folder:
            raise UserError(f"output folder is not writable: {folder}; {_another(flag)}")
        raise UserError(f"cannot create output folder {folder}: {existing} is not writable; {_another(flag)}")
    return folder


def _link_to_nothing(link: Path) -> str:
    """Why the link `link`, whose target cannot be reached, cannot hold a folder: a loop, or where it ends."""
    target = os.readlink(link)
    end = os.path.realpath(link)  # through relative targets and links to links
    if os.path.islink(end):  # realpath stops where a loop starts
        return f"{link} is a link to {target} that loops back on itself (fix or remove it)"
    where = target if end == target else f"{target}, that is {end}"
    return f"{link} is a link to {where}, which does not exist (mount or create it)"


def _broken_link(path: Path) -> bool:
    """Whether `path` is a link whose target is missing or a loop (not one this process may not look through)."""
    if not os.path.islink(path):
        return False
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno in (errno.ENOENT, errno.ELOOP)
    return False


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be made in `folder`, by making a nameless one (O_TMPFILE where there is one, else a
    temporary name removed at once). Permissions alone can say yes where the file system says no (/sys for root)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def ensure_writable_dir(folder: str | Path, flag: str | None = "--out") -> Path:
    """Create `folder` if needed; raise a UserError if it cannot be written (`flag`: as `check_writable_dir`)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        broken = next((p for p in (folder, *folder.parents) if _broken_link(p)), None)
        reason = _link_to_nothing(broken) if broken else exc.strerror.lower() if exc.strerror else exc
        raise UserError(f"cannot create output folder {folder}: {reason}; {_another(flag)}") from exc
    if not os.access(folder, os.W_OK):
        raise UserError(f"output folder is not writable: {folder}; {_another(flag)}")
    return folder
