"""User photos in: any common file, any mode or size, turned into model-ready pixels.

Policies (each one tested in tests/test_data_images.py):
- Colour: every mode becomes RGB. Transparency (RGBA, LA, palette or single-colour transparency) is composited
  on white; 16-bit grey (I;16, I) is scaled to 8 bits, and a float TIFF's 0..1 to 0..255; CMYK is converted.
- Orientation: the EXIF orientation tag is applied, so a portrait phone photo stays portrait.
- Animation: an animated GIF/WebP/PNG given as a photo is accepted; its first frame is used and a warning says so.
- Size: photos smaller than `MIN_SIDE` pixels on the shorter side are refused (upscaling them would only teach the
  model blur). Photos larger than `MAX_PHOTO_PIXELS` are refused as likely decompression bombs. In between, photos
  are shrunk on load so that their shorter side is at most `WORKING_SHORT_SIDE`; JPEGs are decoded at 1/2, 1/4 or
  1/8 scale directly (`Image.draft`), so a 96-megapixel JPEG costs tens of megabytes, not gigabytes. Other formats
  are decoded in full first: about 4 bytes per pixel for 8-bit RGBA, and at the peak of a 16-bit RGBA PNG's
  conversion about 13 (3.3 GB for one of 249 megapixels, just under the limit).
- Broken files: a file with a photo extension that is empty, truncated, corrupt or not an image raises a
  `UserError` naming the file. Files with other extensions and hidden files are skipped when reading a folder.

Sizes are `int` (square) or `(height, width)`, as in diffusers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from vidbooth import reporting
from vidbooth.data.gif import grown_screen
from vidbooth.data.png import png_sizes
from vidbooth.errors import CHECK_THE_PATH, UserError, not_the_inputs_fault, unread_byte
from vidbooth.fileio import given_path

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif")
UNSUPPORTED_PHOTO_EXTENSIONS = (".heic", ".heif", ".dng", ".cr2", ".nef", ".arw", ".raw")
MIN_SIDE = 64
MAX_PHOTO_PIXELS = 250_000_000
WORKING_SHORT_SIDE = 1024
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The pixel normalisation OpenAI's CLIP image towers were trained with (the default of a folder that names none)."""

_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_PIXEL_LIMIT_LOCK = threading.Lock()
_threads_lifting = 0
"""How many `pillow_limits_lifted` blocks are running (a decode holds no lock: threads decode side by side)."""
_pillow_limits: tuple = ()
"""Pillow's own limits, saved by the first of them and put back by the last."""


def load_image(
    path: str | Path, max_short_side: int | None = WORKING_SHORT_SIDE, min_side: int = MIN_SIDE,
    keep_alpha: bool = False,
) -> Image.Image:
    """Read one photo as an RGB image, oriented by EXIF and shrunk so its shorter side is at most `max_short_side`.

    `max_short_side=None` keeps full resolution. Transparency is put on white, or with `keep_alpha` a photo that
    has it comes as RGBA. Raises `UserError` naming the file when it is missing, empty, not an image, corrupt,
    truncated, smaller than `min_side` or larger than `MAX_PHOTO_PIXELS`.
    """
    path = Path(path)
    check_image_file(path)
    _refuse_camera_file(path)
    _check_gif_first_frame(path)
    _check_png_size(path)
    with reporting.reading(path), open_image(path) as im:  # Pillow warns of damaged EXIF data, naming no photo
        _check_dimensions(path, im, min_side)
        _warn_if_animated(path, im)
        _decode(path, im, max_short_side)
        keep = keep_alpha and im.mode not in _HIGH_BIT_DEPTH_MODES and _has_alpha(im)
        return _shrink(im.convert("RGBA") if keep else to_rgb(im), max_short_side)


def load_photo_folder(path: str | Path, min_count: int = 1) -> list[tuple[Path, Image.Image]]:
    """Load every photo in a folder (or one photo file), in natural name order (`img2` before `img10`).

    Hidden files, subfolders and files without a photo extension are skipped silently; camera formats Pillow
    cannot read (HEIC, RAW) are skipped with a warning. A file with a photo extension that cannot be read raises
    `UserError` naming it. Raises `UserError` when the path is missing or fewer than `min_count` photos are found.
    """
    path = Path(path)
    files = _photo_files(path)
    if len(files) < min_count:
        raise UserError(
            f"found {len(files)} photo(s) in {path} but at least {min_count} are needed: add more photos of the subject"
        )
    return [(file, load_image(file)) for file in files]


def load_photos(paths: list[str | Path]) -> list[tuple[Path, Image.Image]]:
    """The photos of every folder or photo file in `paths` (each as `load_photo_folder` reads it), in the order
    given; a photo named twice (a file and its folder, say) is loaded once."""
    files: dict[str, Path] = {}
    for path in paths:
        for file in _photo_files(Path(path)):
            files.setdefault(os.path.realpath(file), file)  # not resolve(), which raises on a link to itself
    return [(file, load_image(file)) for file in files.values()]


def prepare_photo(img: Image.Image, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (shorter side first, Lanczos) and centre-crop a photo to `size`; returns (H, W, 3) uint8."""
    height, width = target_size(size)
    return _resize_box(img, width, height, centre_crop_box(img.width, img.height, width, height))


def augment_photo(
    img: Image.Image,
    size: int | tuple[int, int],
    flip: bool = False,
    scale_jitter: float = 0.0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Like `prepare_photo`, plus random augmentation drawn from `generator` (deterministic for a seeded one).

    `flip`: mirror left-right with probability 1/2. `scale_jitter` in [0, 1): zoom in by cropping a window
    between `1 - scale_jitter` and 1 times the centre crop, at a random position inside it. Without augmentation
    no random numbers are drawn.
    """
    import torch

    if not 0.0 <= scale_jitter < 1.0:
        raise UserError(f"scale_jitter must be in [0, 1), got {scale_jitter}: use e.g. 0.1 for up to 10% zoom")
    if not flip and scale_jitter == 0.0:
        return prepare_photo(img, size)
    height, width = target_size(size)
    flip_draw, zoom_draw, x_draw, y_draw = torch.rand(4, generator=generator).tolist()
    crop = centre_crop_box(img.width, img.height, width, height)
    pixels = _resize_box(img, width, height, _zoom_box(crop, 1.0 - scale_jitter * zoom_draw, x_draw, y_draw))
    return np.ascontiguousarray(pixels[:, ::-1]) if flip and flip_draw < 0.5 else pixels


def photos_to_tensor(
    images: Sequence[Image.Image],
    size: int | tuple[int, int],
    flip: bool = False,
    scale_jitter: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Photos as 1-frame videos: a float32 tensor (N, 1, 3, H, W) in [-1, 1], optionally augmented."""
    pixels = np.stack([augment_photo(img, size, flip, scale_jitter, generator) for img in images])
    return pixels_to_tensor(pixels).unsqueeze(1)


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> float32 tensor (N, 3, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).float() / 127.5 - 1.0


def hash_file(path: str | Path) -> str:
    """sha256 of a file's bytes, as hex, for manifests."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        reason = exc.strerror.lower() if exc.strerror else exc
        raise UserError(f"cannot read {path} ({reason}): check that it is readable, or leave it out") from exc
    return digest.hexdigest()


def hash_files(files: Sequence[Path]) -> str:
    """One sha256 over the files' names and bytes, in order (a frame folder's, class images'): what a resumed run
    must find unchanged. Names are taken as the bytes they are, so a name not UTF-8 hashes too."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(os.fsencode(file.name) + f":{hash_file(file)}\n".encode())
    return digest.hexdigest()


def copies(files: Sequence[Path], digests: Sequence[str]) -> list[tuple[Path, Path]]:
    """(first, copy) for each of `files` whose digest (`hash_file`) an earlier one has: a photo or clip given
    twice, or copied under another name, which would count once for each time it is given."""
    first: dict[str, Path] = {}
    found = []
    for file, digest in zip(files, digests):
        if digest in first:
            found.append((first[digest], file))
        first.setdefault(digest, file)
    return found


def target_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """`size` as (height, width); an int means a square."""
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise UserError(f"height and width must be positive, got {height}x{width}: set a model resolution like 512")
    return height, width


def centre_crop_box(width: int, height: int, target_width: int, target_height: int) -> tuple[float, ...]:
    """The largest centred (left, top, right, bottom) box of a width x height image with the target aspect ratio."""
    scale = min(width / target_width, height / target_height)
    crop_width, crop_height = target_width * scale, target_height * scale
    left, top = (width - crop_width) / 2, (height - crop_height) / 2
    return left, top, left + crop_width, top + crop_height


def natural_sort_key(path: Path) -> list[str | int]:
    """Sort key that orders digit runs by value: 'frame2.png' before 'frame10.png'."""
    return [int(part) if part.isdecimal() else part.lower() for part in re.split(r"(\d+)", path.name)]


def is_image_file(path: Path) -> bool:
    """A visible file whose extension is one of `IMAGE_EXTENSIONS` (hidden files such as macOS '._x.jpg' are not);
    a link to a missing file counts, so that reading it says so rather than the photo going missing unnoticed."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


def _zoom_box(box: tuple[float, ...], zoom: float, x_draw: float, y_draw: float) -> tuple[float, ...]:
    left, top, right, bottom = box
    width, height = (right - left) * zoom, (bottom - top) * zoom
    left += (right - left - width) * x_draw
    top += (bottom - top - height) * y_draw
    return left, top, left + width, top + height


def _resize_box(img: Image.Image, width: int, height: int, box: tuple[float, ...]) -> np.ndarray:
    resized = to_rgb(img).resize((width, height), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return np.asarray(resized)


def check_photos_exist(paths: Sequence[str | Path]) -> None:
    """The error `load_photos` would give for the first of `paths` that is not there, told before a model (and
    torch, seconds of imports) loads."""
    for path in paths:
        _check_exists(given_path(path, "photo"))


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise UserError(f"photo path not found: {path}: {CHECK_THE_PATH}")


def _photo_files(path: Path) -> list[Path]:
    path = given_path(path, "photo")  # '~/dog' from a recipe or a --set is the home folder's, as a clip's
    _check_exists(path)
    if path.is_file():
        _refuse_camera_file(path)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise UserError(f"{path} is not a supported photo type: use one of {', '.join(IMAGE_EXTENSIONS)}")
        refuse_path_not_text("photo", path)
        return [path]
    if not path.is_dir():  # a pipe (<(...)) or a device: listing it had been a NotADirectoryError traceback
        raise UserError(f"{path} is neither a photo file nor a folder: save the photo to a file and give that")
    entries = sorted(path.iterdir(), key=natural_sort_key)
    warn_of_camera_files(path, entries)
    photos = [p for p in entries if is_image_file(p)]
    if not photos:
        inner = [p for p in entries if p.is_dir() and holds_images(p)]
        if inner:  # as an unpacked archive often has them
            raise UserError(f"no photos found in {path} (they are in its subfolder {inner[0].name}/): give {inner[0]}")
        kinds = f"{', '.join(IMAGE_EXTENSIONS[:-1])} or {IMAGE_EXTENSIONS[-1]}"  # every accepted type
        raise UserError(f"no photos found in {path}: add 3-5 photos of the subject as {kinds} files")
    for photo in photos:  # its name goes into the library's manifest (UTF-8), which had then failed to be read back
        if any(map(unread_byte, photo.name)):
            shown = str(photo).encode("utf-8", "backslashreplace").decode()
            raise UserError(f"photo '{shown}' has a name that is not text in this terminal's encoding: run vidbooth "
                            "under a UTF-8 locale (LANG=C.UTF-8), or rename the file")
    for where in (path, *photos):
        refuse_path_not_text("photo", where)
    return photos


def holds_images(folder: Path) -> bool:
    """Whether `folder` holds an image of a type photos may be (one it may not read holds none it can use)."""
    try:
        return any(is_image_file(f) for f in folder.iterdir())
    except OSError:  # a subfolder it may not read says nothing
        return False


def refuse_path_not_text(what: str, path: Path) -> None:
    """A UserError when `path` made absolute, as config.yaml and the manifest (UTF-8 files) record it, holds bytes
    that are not text in the locale: a folder so named, reached by a relative path or a link, had passed every
    check and failed the save after the whole training (a UnicodeEncodeError traceback)."""
    where = os.path.realpath(path)
    if any(map(unread_byte, where)):
        shown = where.encode("utf-8", "backslashreplace").decode()
        raise UserError(f"{what} path '{shown}' is not text in this terminal's encoding: run vidbooth under a UTF-8 "
                        "locale (LANG=C.UTF-8), or rename the folder or file whose name is not")


def warn_of_camera_files(folder: Path, entries: Sequence[Path]) -> None:
    """Say which of a folder's `entries` are HEIC/RAW camera files, which are skipped (Pillow reads none)."""
    unreadable = [p.name for p in entries if p.suffix.lower() in UNSUPPORTED_PHOTO_EXTENSIONS]
    if unreadable:
        names = ", ".join(unreadable[:3])
        reporting.warn(f"skipped {len(unreadable)} HEIC/RAW photo(s) in {folder} ({names}): convert them to JPEG or "
                       "PNG")


_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"}
_AVIF_BRANDS = {b"avif", b"avis"}
"""HEIF files name their kinds in their first box: HEIC (HEVC pictures, which Pillow cannot read) or AVIF (which it
reads); 'mif1' alone says neither."""


def _is_heic(head: bytes) -> bool:
    """Whether a file starting with `head` (its first 64 bytes or so) is a HEIC picture, by its ftyp box's brands."""
    if head[4:8] != b"ftyp":
        return False
    size = int.from_bytes(head[:4], "big")
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    return bool(brands & _HEIC_BRANDS) and not brands & _AVIF_BRANDS


def _refuse_camera_file(path: Path) -> None:
    """A UserError for a HEIC/RAW camera file, by its name or (a HEIC renamed .jpg) its first bytes."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as file:
            head = file.read(64)
        if path.suffix.lower() in UNSUPPORTED_PHOTO_EXTENSIONS or _is_heic(head):
            raise UserError(f"{path} is a HEIC/RAW camera photo, which vidbooth cannot read: convert it to JPEG or "
                            "PNG (on a Mac: sips -s format jpeg IN --out OUT.jpg)")


def check_image_file(path: Path) -> None:
    """A UserError unless `path` is a file with something in it: what `load_image` checks before reading."""
    if path.is_symlink() and not path.exists():
        if os.path.islink(os.path.realpath(path)):  # realpath stops where a loop starts
            raise UserError(f"{path} is a link that loops back on itself ({os.readlink(path)}): fix the link or "
                            "remove it")
        raise UserError(f"{path} is a link to a missing file ({os.readlink(path)}): fix the link or remove it")
    if not path.exists():
        raise UserError(f"image not found: {path}: {CHECK_THE_PATH}")
    if not path.is_file():
        raise UserError(f"{path} is not a file: give an image file")
    if path.stat().st_size == 0:
        raise UserError(f"image {path} is empty (0 bytes): remove or replace it")


@contextlib.contextmanager
def pillow_limits_lifted() -> Iterator[None]:
    """Open or decode without Pillow's global decompression-bomb warning/error; `_check_dimensions` applies our
    limit. A PNG's compressed metadata (a colour profile, an editor's workflow) may take up to Pillow's limit for all
    of it (64 MB), not 1 MB a chunk: a photo with more had been refused as corrupt. Pillow reads the chunks after the
    pixels while decoding them, so decoding is lifted too; the limits are Pillow's again once no thread is inside."""
    global _threads_lifting, _pillow_limits
    from PIL import PngImagePlugin

    with _PIXEL_LIMIT_LOCK:
        if _threads_lifting == 0:
            _pillow_limits = Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK
            Image.MAX_IMAGE_PIXELS = None
            PngImagePlugin.MAX_TEXT_CHUNK = max(_pillow_limits[1], PngImagePlugin.MAX_TEXT_MEMORY)
        _threads_lifting += 1
    try:
        yield
    finally:
        with _PIXEL_LIMIT_LOCK:
            _threads_lifting -= 1
            if _threads_lifting == 0:
                Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK = _pillow_limits


def open_image(path: Path) -> Image.Image:
    try:
        with pillow_limits_lifted():
            return Image.open(path)
    except PermissionError as exc:
        raise UserError(f"cannot read image {path}: permission denied; fix its permissions or copy it") from exc
    except Exception as exc:
        not_the_inputs_fault(exc)
        raise UserError(f"{path} is not an image Pillow can read (corrupt, misnamed, or of a kind it does not decode, "
                        "such as a 16-bit TIFF with transparency): replace it with a PNG or JPEG of it, or remove it"
                        ) from exc


def _check_gif_first_frame(path: Path) -> None:
    """A UserError for a GIF whose first frame, the one a photo uses, takes its screen over `MAX_PHOTO_PIXELS`, found
    from its block structure: opening it gives a frame to be cleared after it (disposal method 2) its stated size
    before `_check_dimensions` can look (a 20000x20000 one on a 16x16 screen: 400 MB). Its later frames are never
    decoded."""
    grown = grown_screen(path, MAX_PHOTO_PIXELS, frames=1)
    if grown is None:
        return
    too_large = (f"image {path} is too large ({grown.width}x{grown.height} = {grown.width * grown.height / 1e6:.0f} "
                 f"megapixels, limit {MAX_PHOTO_PIXELS / 1e6:.0f})")
    if not grown.past_the_screen:
        raise UserError(f"{too_large}: downscale it or replace it")
    raise UserError(f"{too_large}: its first frame reaches past its {grown.screen[0]}x{grown.screen[1]} screen; "
                    f"re-encode it clipped to the screen, e.g. ffmpeg -i {shlex.quote(str(path))} -frames:v 1 "
                    f"{shlex.quote(str(path.with_name(f'{path.stem}_clipped.png')))}, or replace it")


def _check_png_size(path: Path) -> None:
    """A UserError for a PNG over `MAX_PHOTO_PIXELS`, found from its header chunk before Pillow opens it: Pillow 10,
    opening an APNG whose first frame is cleared after it, fills a buffer of the whole image before `_check_dimensions`
    can look (20000x20000: 1.5 GB). Headers between an APNG's frames are not read for a photo, its first frame."""
    sizes = png_sizes(path)
    if sizes is not None:
        _check_pixels(path, *sizes.canvas)


def _check_dimensions(path: Path, im: Image.Image, min_side: int) -> None:
    width, height = im.size
    if min(width, height) < min_side:
        raise UserError(
            f"image {path} is too small ({width}x{height} pixels): "
            f"replace it with one at least {min_side} pixels on its shorter side"
        )
    _check_pixels(path, width, height)


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PHOTO_PIXELS:
        raise UserError(
            f"image {path} is too large ({width}x{height} = {width * height / 1e6:.0f} megapixels, limit "
            f"{MAX_PHOTO_PIXELS / 1e6:.0f}): downscale it or replace it"
        )


def _warn_if_animated(path: Path, im: Image.Image) -> None:
    if im.format == "MPO":  # a phone photo with its depth or gain map, not an animation
        return
    try:  # Pillow counts a GIF's or TIFF's frames by reading through them: a cut or damaged one fails here
        frames = im.n_frames if getattr(im, "is_animated", False) else 1
    except Exception as exc:
        not_the_inputs_fault(exc)
        raise UserError(f"cannot read image {path}: it is truncated or corrupt; remove or replace it") from exc
    if frames > 1:
        reporting.warn(f"{path} is animated ({frames} frames): using its first frame only")


def _decode(path: Path, im: Image.Image, max_short_side: int | None) -> None:
    """Load pixels (JPEG at a reduced scale when that still covers `max_short_side`) and apply EXIF orientation. A
    PNG's checksums are checked too: Pillow decodes its pixel data without them, so one flipped bit had changed most
    of a photo without a word."""
    try:
        if max_short_side is not None:
            im.draft(im.mode, _short_side_size(im.size, max_short_side))
        with pillow_limits_lifted():  # a PNG's text after its pixels is read here
            im.load()
        if im.format == "PNG":
            with open_image(path) as whole:  # under our pixel limit, not Pillow's: a 200 MP PNG had been called corrupt
                whole.verify()
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as exc:
        not_the_inputs_fault(exc)
        raise UserError(f"cannot read image {path}: it is truncated or corrupt; remove or replace it") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """A new RGB image: transparency on white, 16-bit grey scaled to 8 bits, everything else converted."""
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        img = _to_8bit_grey(img)
    if _has_alpha(img):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # not copied first: 1 GB at 250 megapixels
        on_white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return on_white.convert("RGB")  # the white image let go before this copy, not held through it
    return img.convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """16-bit modes map 0..65535 to 0..255; a float image no brighter than 1 (a float TIFF, as most tools write
    one) maps 0..1 to 0..255, and had been black; other 32-bit int/float images are taken as 8-bit unless they
    exceed 255."""
    values = np.asarray(img, dtype=np.float32)
    if img.mode == "F" and values.max(initial=0) <= 1:
        values = values * 255
    elif img.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _short_side_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    width, height = size
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(img: Image.Image, max_short_side: int | None) -> Image.Image:
    if max_short_side is None or min(img.size) <= max_short_side:
        return img
    return img.resize(_short_side_size(img.size, max_short_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
