"""A corpus of awkward and broken user inputs, generated into a folder at test time (no binaries in git).

Every kind is one small writer. Kinds come in two groups per input type:
- REFUSED_*: vidbooth must raise `UserError` whose message names the offending file (or folder).
- ACCEPTED_*: odd but valid; vidbooth must load them (possibly with a warning).

    path = make_bad_image("truncated_jpg", tmp_path)       # -> tmp_path / "truncated.jpg"
    corpus = make_bad_corpus(tmp_path)                    # every kind: {"image/truncated_jpg": Path, ...}

Pixel content is chosen so tests can check it: `write_photo` draws red/green/blue/yellow quadrants (top-left,
top-right, bottom-left, bottom-right), and frame i of `clip_frames` is solid grey at `frame_level(i)`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from vidbooth.data.video import ANIMATION_EXTENSIONS, write_video

RED, GREEN, BLUE, YELLOW, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 255, 255)
QUADRANT_COLOURS = (RED, GREEN, BLUE, YELLOW)
HUGE_SIZE = (12000, 8000)
UNICODE_FOLDER = "fotos de mi perro 🐶"
UNICODE_PHOTO = "ñ 1.png"


def quadrant_image(width: int, height: int) -> Image.Image:
    """RGB image with red, green, blue and yellow quadrants (top-left, top-right, bottom-left, bottom-right)."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    top, left = height // 2, width // 2
    pixels[:top, :left], pixels[:top, left:], pixels[top:, :left], pixels[top:, left:] = QUADRANT_COLOURS
    return Image.fromarray(pixels)


def write_photo(path: Path, width: int = 160, height: int = 120) -> Path:
    """A quadrant photo in the format of `path`'s extension (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    quadrant_image(width, height).save(path)
    return path


def write_photos(folder: Path, count: int = 3, seed: int = 0) -> Path:
    """`count` random 96x80 photos, photo0.png, photo1.png, ..., in `folder` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(folder / f"photo{i}.png")
    return folder


def frame_level(index: int) -> int:
    """Grey level of frame `index` in `clip_frames` (distinct for up to 30 frames, far apart enough for h264)."""
    return 16 + 8 * index


def clip_frames(num_frames: int, width: int = 96, height: int = 64) -> np.ndarray:
    """(F, H, W, 3) uint8 frames; frame i is solid grey at `frame_level(i)`."""
    levels = np.array([frame_level(i) for i in range(num_frames)], dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def write_clip(path: Path, num_frames: int = 12, width: int = 96, height: int = 64, fps: int = 8) -> Path:
    """A clip of `clip_frames` (.mp4 or .gif, or an animated .webp, .png or .apng), parent folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_clip_file(clip_frames(num_frames, width, height), path, fps=fps)


def write_clip_file(frames: np.ndarray, path: Path, fps: int = 8) -> Path:
    """(F, H, W, 3) uint8 frames as the clip file `path` names: a video vidbooth writes (.mp4, .gif), or an animated
    WebP or PNG (.webp; .png or .apng), lossless, each frame shown 1/fps s, as web pages' animations are written."""
    if path.suffix.lower() not in ANIMATION_EXTENSIONS:
        return write_video(frames, path, fps=fps)
    images = [Image.fromarray(frame) for frame in frames]
    kind = {"format": "WEBP", "lossless": True} if path.suffix.lower() == ".webp" else {"format": "PNG"}
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, **kind)
    return path


def write_frame_folder(folder: Path, numbers: list[int], sizes: dict[int, tuple[int, int]] | None = None) -> Path:
    """Frames `frame_<n>.png` for each n in `numbers`, frame n at grey `frame_level(n)`; sizes maps n -> (w, h)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        width, height = (sizes or {}).get(n, (96, 64))
        Image.new("RGB", (width, height), (frame_level(n),) * 3).save(folder / f"frame_{n}.png")
    return folder


def capture_warnings(monkeypatch) -> list[str]:
    """Collect the messages passed to `vidbooth.reporting.warn` for the rest of the test."""
    messages: list[str] = []
    monkeypatch.setattr("vidbooth.reporting.warn", messages.append)
    return messages


# ---------------------------------------------------------------------------------------------------- photos


def _zero_bytes(name: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(b"")
        return path

    return write


def _text_named(name: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_text("shopping list: eggs, milk\n")
        return path

    return write


def _cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _noise_photo(path: Path) -> Path:
    """A photo that compresses badly, so cutting the file leaves its pixel data incomplete."""
    pixels = np.random.default_rng(0).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _truncated_jpg(folder: Path) -> Path:
    return _cut_in_half(_noise_photo(folder / "truncated.jpg"))


def _truncated_png(folder: Path) -> Path:
    return _cut_in_half(_noise_photo(folder / "truncated.png"))


def _one_pixel_png(folder: Path) -> Path:
    path = folder / "one_pixel.png"
    Image.new("RGB", (1, 1), RED).save(path)
    return path


def _huge_jpeg(folder: Path) -> Path:
    """12000x8000 (96 MP) solid orange JPEG: about 1 s and 300 MB of RAM to write, 1.5 MB on disk."""
    path = folder / "huge.jpg"
    Image.new("RGB", HUGE_SIZE, (230, 120, 30)).save(path, quality=85)
    return path


def _animated(name: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        first, *rest = [Image.new("RGB", (96, 96), colour) for colour in (RED, GREEN, BLUE)]
        first.save(path, save_all=True, append_images=rest, duration=100, loop=0)
        return path

    return write


def _cmyk_jpeg(folder: Path) -> Path:
    path = folder / "cmyk.jpg"
    Image.new("CMYK", (128, 96), (0, 255, 255, 0)).save(path)
    return path


def _png_16bit(folder: Path) -> Path:
    """16-bit grey at 128 * 257 (mid grey), which must load as 128, not as clipped white."""
    path = folder / "grey16.png"
    Image.fromarray(np.full((96, 128), 128 * 257, dtype=np.uint16)).save(path)
    return path


def _palette_png_transparent(folder: Path) -> Path:
    """Palette image: left half transparent (index 0, black), right half opaque blue (index 1)."""
    path = folder / "palette.png"
    img = Image.new("P", (128, 96), 0)
    img.putpalette([0, 0, 0, *BLUE] + [0, 0, 0] * 254)
    img.paste(1, (64, 0, 128, 96))
    img.save(path, transparency=0)
    return path


def _rgba_png(folder: Path) -> Path:
    """Left half fully transparent black, right half opaque red."""
    path = folder / "rgba.png"
    img = Image.new("RGBA", (128, 96), (0, 0, 0, 0))
    img.paste((*RED, 255), (64, 0, 128, 96))
    img.save(path)
    return path


def _la_png(folder: Path) -> Path:
    """Grey 50 at half opacity: composites on white to 50/2 + 255/2 = about 152."""
    path = folder / "grey_alpha.png"
    Image.new("LA", (128, 96), (50, 128)).save(path)
    return path


def _grayscale_png(folder: Path) -> Path:
    path = folder / "grey.png"
    Image.new("L", (128, 96), 100).save(path)
    return path


def _exif_rotated_jpeg(folder: Path) -> Path:
    """Stored 160x96 (landscape) with EXIF orientation 6: it displays as 96x160, rotated 90 degrees clockwise."""
    path = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    quadrant_image(160, 96).save(path, exif=exif, quality=95)
    return path


def _unicode_path_png(folder: Path) -> Path:
    return write_photo(folder / UNICODE_FOLDER / UNICODE_PHOTO)


def _plain(name: str) -> Callable[[Path], Path]:
    return lambda folder: write_photo(folder / name)


def _png_named_jpg(folder: Path) -> Path:
    path = folder / "really_a_png.jpg"
    quadrant_image(160, 120).save(path, format="PNG")
    return path


_IMAGE_WRITERS: dict[str, Callable[[Path], Path]] = {
    "zero_byte_png": _zero_bytes("empty.png"),
    "zero_byte_jpg": _zero_bytes("empty.jpg"),
    "text_named_jpg": _text_named("notes.jpg"),
    "truncated_jpg": _truncated_jpg,
    "truncated_png": _truncated_png,
    "one_pixel_png": _one_pixel_png,
    "huge_jpeg": _huge_jpeg,
    "animated_gif": _animated("animated.gif"),
    "animated_webp": _animated("animated.webp"),
    "animated_png": _animated("animated.png"),
    "cmyk_jpeg": _cmyk_jpeg,
    "png_16bit": _png_16bit,
    "palette_png_transparent": _palette_png_transparent,
    "rgba_png": _rgba_png,
    "la_png": _la_png,
    "grayscale_png": _grayscale_png,
    "exif_rotated_jpeg": _exif_rotated_jpeg,
    "unicode_path_png": _unicode_path_png,
    "webp": _plain("photo.webp"),
    "bmp": _plain("photo.bmp"),
    "png_named_jpg": _png_named_jpg,
}
REFUSED_IMAGE_KINDS = (
    "zero_byte_png", "zero_byte_jpg", "text_named_jpg", "truncated_jpg", "truncated_png", "one_pixel_png"
)  # fmt: skip
ACCEPTED_IMAGE_KINDS = tuple(kind for kind in _IMAGE_WRITERS if kind not in REFUSED_IMAGE_KINDS)
BAD_IMAGE_KINDS = REFUSED_IMAGE_KINDS + ACCEPTED_IMAGE_KINDS


def make_bad_image(kind: str, folder: Path) -> Path:
    """Write the photo file of `kind` (one of BAD_IMAGE_KINDS) into `folder`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    return _IMAGE_WRITERS[kind](folder)


# ---------------------------------------------------------------------------------------------------- photo folders


def _missing_folder(folder: Path) -> Path:
    return folder / "no such folder"


def _empty_folder(folder: Path) -> Path:
    path = folder / "empty"
    path.mkdir()
    return path


def _folder_without_photos(folder: Path) -> Path:
    path = folder / "no photos"
    path.mkdir()
    (path / "notes.txt").write_text("not a photo")
    (path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_clip(path / "clip.mp4", num_frames=2)
    return path


def _folder_with_corrupt_photo(folder: Path) -> Path:
    path = folder / "one broken"
    write_photo(path / "a.jpg")
    _truncated_jpg(path).rename(path / "b.jpg")
    return path


def _folder_of_heic(folder: Path) -> Path:
    path = folder / "iphone"
    path.mkdir()
    (path / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    return path


_PHOTO_FOLDER_WRITERS: dict[str, Callable[[Path], Path]] = {
    "missing_folder": _missing_folder,
    "empty_folder": _empty_folder,
    "folder_without_photos": _folder_without_photos,
    "folder_with_corrupt_photo": _folder_with_corrupt_photo,
    "folder_of_heic": _folder_of_heic,
}
REFUSED_PHOTO_FOLDER_KINDS = tuple(_PHOTO_FOLDER_WRITERS)


def make_bad_photo_folder(kind: str, folder: Path) -> Path:
    """Create the photo folder of `kind` (one of REFUSED_PHOTO_FOLDER_KINDS) under `folder`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    return _PHOTO_FOLDER_WRITERS[kind](folder)


# ---------------------------------------------------------------------------------------------------- clips


def _truncated_mp4(folder: Path) -> Path:
    """Cut in half; imageio-ffmpeg writes the index (moov) at the end, so ffmpeg cannot open what is left."""
    return _cut_in_half(write_clip(folder / "truncated.mp4", num_frames=24))


def _truncated_faststart_mp4(folder: Path) -> Path:
    """Index moved to the front, then half the frame data cut off: ffmpeg silently decodes the frames that survive."""
    import imageio_ffmpeg

    noise = np.random.default_rng(0).integers(0, 256, (24, 64, 96, 3), dtype=np.uint8)  # every frame costs alike
    source = write_video(noise, folder / "whole.mp4")
    path = folder / "truncated_faststart.mp4"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(source)]
    subprocess.run([*command, "-c", "copy", "-movflags", "+faststart", str(path)], check=True)
    source.unlink()
    data = path.read_bytes()
    media_start = data.index(b"mdat")
    path.write_bytes(data[: media_start + (len(data) - media_start) // 2])
    return path


def _one_frame_mp4(folder: Path) -> Path:
    return write_clip(folder / "one_frame.mp4", num_frames=1)


def _png_named_mp4(folder: Path) -> Path:
    """A photo saved under a video's name: ffmpeg reads it as a video of one frame."""
    path = folder / "clip.mp4"
    write_photo(path.with_suffix(".png"), 96, 96).rename(path)
    return path


def _xyz_file(folder: Path) -> Path:
    path = folder / "clip.xyz"
    path.write_bytes(b"\x00\x01 not a video")
    return path


def _one_frame_folder(folder: Path) -> Path:
    return write_frame_folder(folder / "one frame", [1])


def _empty_frame_folder(folder: Path) -> Path:
    path = folder / "no frames"
    path.mkdir()
    return path


def _frames_with_corrupt_frame(folder: Path) -> Path:
    path = write_frame_folder(folder / "corrupt frame", [1, 2, 3, 4])
    (path / "frame_3.png").write_bytes(b"")
    return path


def _frames_with_duplicate_number(folder: Path) -> Path:
    path = write_frame_folder(folder / "duplicate", [1, 2, 3])
    write_photo(path / "frame_2.jpg", 96, 64)
    return path


def _tiny_frames(folder: Path) -> Path:
    return write_frame_folder(folder / "tiny", [1, 2, 3], sizes={n: (16, 16) for n in (1, 2, 3)})


def _frames_with_gap(folder: Path) -> Path:
    """Frames 1-3 and 7-8: 4-6 are missing."""
    return write_frame_folder(folder / "gap", [1, 2, 3, 7, 8])


def _frames_mixed_sizes(folder: Path) -> Path:
    """Frames 1-4 are 96x64 except frame 3, which is 80x80."""
    return write_frame_folder(folder / "mixed", [1, 2, 3, 4], sizes={3: (80, 80)})


def _frames_unpadded_numbers(folder: Path) -> Path:
    """frame_1 ... frame_11 without zero padding: name order would put frame_10 before frame_2."""
    return write_frame_folder(folder / "unpadded", list(range(1, 12)))


def _gif_clip(folder: Path) -> Path:
    return write_clip(folder / "clip.gif", num_frames=6)


def _animation_clip(name: str) -> Callable[[Path], Path]:
    """An animated WebP or APNG clip of 6 frames, as web pages have them."""
    return lambda folder: write_clip(folder / name, num_frames=6)


def _truncated_animation(name: str) -> Callable[[Path], Path]:
    """An animated WebP or APNG cut in half, as a download stopped midway leaves it."""
    return lambda folder: _cut_in_half(write_clip(folder / name, num_frames=24, width=96, height=96))


def _still_photo_clip(name: str) -> Callable[[Path], Path]:
    """A still WebP or PNG given as a clip: a photo, not an animation of one frame."""
    return lambda folder: write_photo(folder / name, 96, 96)


def _portrait_odd_mp4(folder: Path) -> Path:
    """121 high, 67 wide: h264 needs even sizes, so write_video pads it to 122x68."""
    return write_clip(folder / "portrait.mp4", num_frames=6, width=67, height=121)


def _unicode_frames_folder(folder: Path) -> Path:
    return write_frame_folder(folder / "clips de mi perro 🐶" / "ñ frames", [1, 2, 3])


_CLIP_WRITERS: dict[str, Callable[[Path], Path]] = {
    "zero_byte_mp4": _zero_bytes("empty.mp4"),
    "text_named_mp4": _text_named("notes.mp4"),
    "truncated_mp4": _truncated_mp4,
    "truncated_faststart_mp4": _truncated_faststart_mp4,
    "one_frame_mp4": _one_frame_mp4,
    "png_named_mp4": _png_named_mp4,
    "xyz_file": _xyz_file,
    "one_frame_folder": _one_frame_folder,
    "empty_frame_folder": _empty_frame_folder,
    "frames_with_corrupt_frame": _frames_with_corrupt_frame,
    "frames_with_duplicate_number": _frames_with_duplicate_number,
    "tiny_frames": _tiny_frames,
    "frames_with_gap": _frames_with_gap,
    "frames_mixed_sizes": _frames_mixed_sizes,
    "frames_unpadded_numbers": _frames_unpadded_numbers,
    "gif_clip": _gif_clip,
    "webp_clip": _animation_clip("clip.webp"),
    "apng_clip": _animation_clip("clip.png"),
    "truncated_webp": _truncated_animation("truncated.webp"),
    "truncated_apng": _truncated_animation("truncated.png"),
    "still_webp": _still_photo_clip("still.webp"),
    "still_png": _still_photo_clip("still.png"),
    "portrait_odd_mp4": _portrait_odd_mp4,
    "unicode_frames_folder": _unicode_frames_folder,
}
ACCEPTED_CLIP_KINDS = (
    "frames_with_gap", "frames_mixed_sizes", "frames_unpadded_numbers", "gif_clip", "webp_clip", "apng_clip",
    "portrait_odd_mp4", "unicode_frames_folder",
)  # fmt: skip
REFUSED_CLIP_KINDS = tuple(kind for kind in _CLIP_WRITERS if kind not in ACCEPTED_CLIP_KINDS)
BAD_CLIP_KINDS = REFUSED_CLIP_KINDS + ACCEPTED_CLIP_KINDS


def make_bad_clip(kind: str, folder: Path) -> Path:
    """Write the clip (video file or frame folder) of `kind` (one of BAD_CLIP_KINDS) into `folder`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    return _CLIP_WRITERS[kind](folder)


def make_bad_corpus(folder: Path, include_huge: bool = False) -> dict[str, Path]:
    """Every kind, each in its own subfolder, keyed 'image/<kind>', 'photo_folder/<kind>' and 'clip/<kind>'.

    The 96 MP JPEG is left out unless `include_huge` (it takes about a second and 300 MB of RAM to write).
    """
    makers = {"image": make_bad_image, "photo_folder": make_bad_photo_folder, "clip": make_bad_clip}
    kinds = {"image": BAD_IMAGE_KINDS, "photo_folder": REFUSED_PHOTO_FOLDER_KINDS, "clip": BAD_CLIP_KINDS}
    return {
        f"{group}/{kind}": makers[group](kind, folder / group / kind)
        for group in makers
        for kind in kinds[group]
        if include_huge or kind != "huge_jpeg"
    }


def unreadable(path: Path, monkeypatch) -> Path:
    """`path` made unreadable: by its mode, or as root (whom no mode stops) by refusing to open it."""
    import builtins
    import os

    path.chmod(0)
    if os.geteuid() == 0:
        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
    return path
