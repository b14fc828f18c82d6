"""Photos in: every awkward file loads as RGB or is refused with a one-line UserError naming it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import badinputs
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from vidbooth.data import images
from vidbooth.data.images import (
    MIN_SIDE,
    augment_photo,
    hash_file,
    load_image,
    load_photo_folder,
    photos_to_tensor,
    prepare_photo,
)
from vidbooth.errors import UserError

# VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's peak (the pytest process, with torch loaded).
MEASURE_HUGE_LOAD = r"""
import json, re, sys, time
from vidbooth.data.images import load_image
def status_kib(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1))
resident_kib = status_kib("VmRSS")
start = time.perf_counter()
img = load_image(sys.argv[1])
seconds = time.perf_counter() - start
peak_mib = (status_kib("VmHWM") - resident_kib) / 1024
print(json.dumps({"size": img.size, "seconds": seconds, "peak_mib": peak_mib, "pixel": img.getpixel((9, 9))}))
"""


@pytest.fixture
def warned(monkeypatch) -> list[str]:
    return badinputs.capture_warnings(monkeypatch)


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory) -> Path:
    return badinputs.make_bad_image("huge_jpeg", tmp_path_factory.mktemp("huge"))


def rgb_at(img: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(img.getpixel((x, y)))


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 3) -> None:
    assert np.abs(np.subtract(actual, expected)).max() <= tolerance, f"{actual} != {expected}"


@pytest.mark.parametrize("kind", badinputs.REFUSED_IMAGE_KINDS)
def test_refused_photo_raises_one_line_user_error_naming_the_file(kind, tmp_path):
    path = badinputs.make_bad_image(kind, tmp_path)
    with pytest.raises(UserError) as raised:
        load_image(path)
    message = str(raised.value)
    assert str(path) in message and "\n" not in message
    assert "replace" in message


@pytest.mark.parametrize("kind", [k for k in badinputs.ACCEPTED_IMAGE_KINDS if k != "huge_jpeg"])
def test_accepted_photo_loads_as_rgb(kind, tmp_path):
    img = load_image(badinputs.make_bad_image(kind, tmp_path))
    assert img.mode == "RGB"
    assert min(img.size) >= MIN_SIDE


def test_one_pixel_photo_message_states_the_minimum(tmp_path):
    with pytest.raises(UserError, match=f"1x1 pixels.*at least {MIN_SIDE} pixels"):
        load_image(badinputs.make_bad_image("one_pixel_png", tmp_path))


def test_rgba_transparency_composites_on_white(tmp_path):
    img = load_image(badinputs.make_bad_image("rgba_png", tmp_path))
    assert rgb_at(img, 10, 10) == badinputs.WHITE
    assert rgb_at(img, 100, 10) == badinputs.RED


def test_palette_transparency_composites_on_white(tmp_path):
    img = load_image(badinputs.make_bad_image("palette_png_transparent", tmp_path))
    assert rgb_at(img, 10, 10) == badinputs.WHITE
    assert rgb_at(img, 100, 10) == badinputs.BLUE


def test_grey_with_alpha_blends_half_way_to_white(tmp_path):
    img = load_image(badinputs.make_bad_image("la_png", tmp_path))
    assert_close(rgb_at(img, 5, 5), (152, 152, 152), tolerance=2)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    img = load_image(badinputs.make_bad_image("png_16bit", tmp_path))
    assert rgb_at(img, 5, 5) == (128, 128, 128)


def test_grayscale_becomes_equal_rgb_channels(tmp_path):
    assert rgb_at(load_image(badinputs.make_bad_image("grayscale_png", tmp_path)), 5, 5) == (100, 100, 100)


def test_cmyk_jpeg_converts_to_rgb_colours(tmp_path):
    assert_close(rgb_at(load_image(badinputs.make_bad_image("cmyk_jpeg", tmp_path)), 50, 50), badinputs.RED, 6)


def test_exif_orientation_rotates_photo_upright(tmp_path):
    img = load_image(badinputs.make_bad_image("exif_rotated_jpeg", tmp_path))
    assert img.size == (96, 160)  # stored 160x96
    # Rotating 90 degrees clockwise moves the stored top-left (red) quadrant to the top-right.
    assert_close(rgb_at(img, 90, 5), badinputs.RED, 8)
    assert_close(rgb_at(img, 5, 5), badinputs.BLUE, 8)


@pytest.mark.parametrize("kind", ["animated_gif", "animated_webp", "animated_png"])
def test_animated_photo_uses_first_frame_with_a_warning(kind, tmp_path, warned):
    path = badinputs.make_bad_image(kind, tmp_path)
    img = load_image(path)
    assert_close(rgb_at(img, 48, 48), badinputs.RED)
    assert len(warned) == 1 and str(path) in warned[0] and "first frame" in warned[0]


def test_a_photo_of_two_frames_is_animated_too(tmp_path, warned):
    first, second = Image.new("RGB", (96, 96), badinputs.RED), Image.new("RGB", (96, 96), badinputs.BLUE)
    first.save(tmp_path / "two.gif", save_all=True, append_images=[second], duration=100)
    load_image(tmp_path / "two.gif")
    assert len(warned) == 1 and "is animated (2 frames): using its first frame only" in warned[0]


def test_a_cut_animated_gif_or_a_bit_flipped_png_is_refused_as_damaged(tmp_path):
    """Pillow reads through a GIF's frames to count them: a download cut in its second frame (a third of all cut
    points) had been an IndexError traceback. A PNG's pixel data is decoded without its checksum: one flipped bit had
    changed most of the photo without a word."""
    whole = badinputs.make_bad_image("animated_gif", tmp_path)
    data = whole.read_bytes()
    cut = tmp_path / "cut.gif"
    for end in range(len(data) - 1, len(data) * 2 // 3, -7):  # cuts in the second frame (its 1st is intact)
        cut.write_bytes(data[:end])
        try:
            load_image(cut)
        except UserError as exc:
            assert str(exc) == f"cannot read image {cut}: it is truncated or corrupt; remove or replace it"
    png = tmp_path / "photo.png"
    ramp = np.linspace(0, 255, 96).astype(np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (96, 1)), np.tile(ramp[:, None], (1, 96)), np.full((96, 96), 128)], -1)
                    .astype(np.uint8)).save(png)
    pixels = np.asarray(load_image(png))
    data = png.read_bytes()
    for at in range(data.index(b"IDAT") + 8, len(data)):  # the first flip in the pixel data that Pillow decodes
        damaged = bytearray(data)
        damaged[at] ^= 0x10
        png.write_bytes(bytes(damaged))
        with contextlib.suppress(Exception), Image.open(png) as im:
            if not np.array_equal(np.asarray(im.convert("RGB")), pixels):
                break
    else:
        pytest.fail("no flipped bit decodes")
    with pytest.raises(UserError, match="photo.png: it is truncated or corrupt"):  # its checksum no longer matches
        load_image(png)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures resident memory through /proc")
def test_huge_jpeg_loads_fast_in_bounded_memory(huge_jpeg):
    """Decoding 96 MP in full peaks at about 730 MB; JPEG draft decoding at 1/4 scale needs about 65 MB."""
    run = subprocess.run(
        [sys.executable, "-c", MEASURE_HUGE_LOAD, str(huge_jpeg)], capture_output=True, text=True, check=True
    )
    measured = json.loads(run.stdout)
    assert measured["size"] == [1536, 1024]
    assert measured["peak_mib"] < 150
    assert measured["seconds"] < 5
    assert_close(tuple(measured["pixel"]), (230, 120, 30))
    assert "DecompressionBomb" not in run.stderr


def test_huge_jpeg_raises_no_decompression_bomb_warning_and_keeps_pillow_limit(huge_jpeg):
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = load_image(huge_jpeg, max_short_side=512)
    assert img.size == (768, 512)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_photo_above_pixel_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PHOTO_PIXELS", 10_000)
    path = badinputs.write_photo(tmp_path / "big.png", 160, 120)
    with pytest.raises(UserError, match="too large.*downscale it"):
        load_image(path)


def test_photo_shrunk_to_max_short_side_or_kept_at_full_resolution(tmp_path):
    path = badinputs.write_photo(tmp_path / "p.png", 300, 200)
    assert load_image(path, max_short_side=100).size == (150, 100)
    assert load_image(path, max_short_side=None).size == (300, 200)
    assert load_image(path).size == (300, 200)  # never enlarged


def test_photo_folder_sorted_naturally_skipping_junk(tmp_path, warned):
    for name in ("img10.png", "img2.jpg", "img1.webp"):
        badinputs.write_photo(tmp_path / name)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "._img1.jpg").write_bytes(b"macOS resource fork, not a jpeg")
    badinputs.write_photo(tmp_path / "nested" / "img0.png")
    photos = load_photo_folder(tmp_path)
    assert [p.name for p, _ in photos] == ["img1.webp", "img2.jpg", "img10.png"]
    assert all(img.mode == "RGB" for _, img in photos)
    assert warned == []


def test_photo_folder_accepts_a_single_file_and_unicode_paths(tmp_path):
    path = badinputs.make_bad_image("unicode_path_png", tmp_path)
    assert "🐶" in str(path) and " " in path.name
    assert [p for p, _ in load_photo_folder(path)] == [path]
    assert [p for p, _ in load_photo_folder(path.parent)] == [path]


@pytest.mark.parametrize("kind", badinputs.REFUSED_PHOTO_FOLDER_KINDS)
def test_refused_photo_folder_raises_user_error_naming_it(kind, tmp_path):
    path = badinputs.make_bad_photo_folder(kind, tmp_path)
    with pytest.raises(UserError) as raised:
        load_photo_folder(path)
    assert str(path) in str(raised.value)


def test_corrupt_photo_in_folder_is_named(tmp_path):
    path = badinputs.make_bad_photo_folder("folder_with_corrupt_photo", tmp_path)
    with pytest.raises(UserError, match=r"b\.jpg.*remove or replace it"):
        load_photo_folder(path)


def test_heic_photos_are_skipped_with_advice(tmp_path, warned):
    folder = badinputs.make_bad_photo_folder("folder_of_heic", tmp_path)
    badinputs.write_photo(folder / "IMG_0002.jpg")
    assert [p.name for p, _ in load_photo_folder(folder)] == ["IMG_0002.jpg"]
    assert "IMG_0001.HEIC" in warned[0] and "convert" in warned[0]


def test_a_single_heic_photo_is_refused_with_advice_also_when_named_jpg(tmp_path):
    """One HEIC given alone (a photo path, an image prompt) had been 'not a supported photo type' or 'corrupt or
    misnamed', with no word of converting it; so had an iPhone photo renamed .jpg."""
    folder = badinputs.make_bad_photo_folder("folder_of_heic", tmp_path)
    heic = folder / "IMG_0001.HEIC"
    renamed = tmp_path / "IMG_0001.jpg"
    renamed.write_bytes(heic.read_bytes())
    for path in (heic, renamed):
        for read in (load_image, load_photo_folder):
            with pytest.raises(UserError, match=rf"^{re.escape(str(path))} is a HEIC/RAW camera photo, which vidbooth "
                               "cannot read: convert it to JPEG or PNG"):
                read(path)


def test_reference_images_say_which_heic_files_they_skip(tmp_path, warned):
    """evaluate --ref-images had skipped them without a word, and a folder of them 'held no readable image'."""
    from vidbooth.eval.references import read_image_folder

    folder = badinputs.make_bad_photo_folder("folder_of_heic", tmp_path)
    with pytest.raises(UserError, match="holds no readable image"):
        read_image_folder(folder)
    assert "IMG_0001.HEIC" in warned[0] and "convert them to JPEG or PNG" in warned[0]


def test_photo_folder_minimum_count(tmp_path):
    badinputs.write_photo(tmp_path / "a.png")
    with pytest.raises(UserError, match="found 1 photo.*at least 3"):
        load_photo_folder(tmp_path, min_count=3)


@pytest.mark.parametrize(
    "source, size, shape",
    [((160, 120), 64, (64, 64, 3)), ((120, 160), (48, 80), (48, 80, 3)), ((67, 121), (64, 32), (64, 32, 3))],
)
def test_prepare_photo_shapes(source, size, shape):
    pixels = prepare_photo(badinputs.quadrant_image(*source), size)
    assert pixels.shape == shape and pixels.dtype == np.uint8


def test_prepare_photo_centre_crops_the_long_side():
    # 200x100: red|green over blue|yellow; a square centre crop keeps the middle 100 columns.
    pixels = prepare_photo(badinputs.quadrant_image(200, 100), 50)
    assert_close(tuple(pixels[5, 5]), badinputs.RED)
    assert_close(tuple(pixels[5, 45]), badinputs.GREEN)
    assert_close(tuple(pixels[45, 45]), badinputs.YELLOW)


def test_prepare_photo_upscales_small_photos():
    assert prepare_photo(badinputs.quadrant_image(64, 64), 256).shape == (256, 256, 3)


def test_prepare_photo_rejects_non_positive_size():
    with pytest.raises(UserError, match="positive"):
        prepare_photo(badinputs.quadrant_image(64, 64), (0, 64))


def test_photos_to_tensor_shape_and_range():
    photos = [Image.new("RGB", (80, 64), badinputs.WHITE), Image.new("RGB", (64, 90), (0, 0, 0))]
    tensor = photos_to_tensor(photos, (32, 48))
    assert tensor.shape == (2, 1, 3, 32, 48) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert torch.all(tensor[0] == 1.0) and torch.all(tensor[1] == -1.0)


def test_photos_to_tensor_without_augmentation_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    photos_to_tensor([badinputs.quadrant_image(64, 64)], 32)
    assert torch.equal(torch.rand(1), expected)


def test_flip_is_deterministic_for_a_seeded_generator():
    photos = [badinputs.quadrant_image(64, 64)] * 8
    first = photos_to_tensor(photos, 32, flip=True, generator=torch.Generator().manual_seed(1))
    again = photos_to_tensor(photos, 32, flip=True, generator=torch.Generator().manual_seed(1))
    plain = photos_to_tensor(photos, 32)
    assert torch.equal(first, again)
    flipped = [not torch.equal(first[i], plain[i]) for i in range(8)]
    assert any(flipped) and not all(flipped)
    for i in np.flatnonzero(flipped):
        assert torch.equal(first[i], plain[i].flip(-1))


def test_scale_jitter_zooms_in_deterministically():
    photo = badinputs.quadrant_image(128, 128)
    zoomed = augment_photo(photo, 64, scale_jitter=0.5, generator=torch.Generator().manual_seed(3))
    again = augment_photo(photo, 64, scale_jitter=0.5, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(zoomed, again)
    assert zoomed.shape == (64, 64, 3)
    assert not np.array_equal(zoomed, prepare_photo(photo, 64))


@pytest.mark.parametrize("jitter", [-0.1, 1.0])
def test_scale_jitter_out_of_range_is_refused(jitter):
    with pytest.raises(UserError, match="scale_jitter"):
        augment_photo(badinputs.quadrant_image(64, 64), 32, scale_jitter=jitter)


def test_hash_file_is_sha256_hex(tmp_path):
    path = badinputs.write_photo(tmp_path / "a.png")
    assert hash_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="missing.png"):
        hash_file(tmp_path / "missing.png")


def test_huge_photo_is_not_decoded_at_full_size(huge_jpeg, monkeypatch):
    decoded_sizes = []
    original_load = ImageFile.ImageFile.load

    def recording_load(self):
        decoded_sizes.append(self.size)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    start = time.perf_counter()
    load_image(huge_jpeg)
    assert time.perf_counter() - start < 5
    assert max(w * h for w, h in decoded_sizes) <= 3000 * 2000


def test_a_name_with_a_superscript_digit_sorts_instead_of_crashing(tmp_path):
    """'²' is a digit to str.isdigit but not to the regex that splits names: int() of it had crashed."""
    for name in ("2.png", "10.png", "²1 notes.png", "①.png"):
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / name)
    names = [path.name for path, _ in load_photo_folder(tmp_path)]
    assert names[:2] == ["2.png", "10.png"] and set(names[2:]) == {"①.png", "²1 notes.png"}


def test_a_broken_link_among_the_photos_is_named_not_skipped(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "moved.jpg").symlink_to(tmp_path / "elsewhere" / "moved.jpg")
    with pytest.raises(UserError, match=r"moved\.jpg is a link to a missing file .*: fix the link or remove it"):
        load_photo_folder(tmp_path)


def test_a_phone_photo_with_a_depth_map_is_not_called_animated(tmp_path, warned):
    """Ultra HDR and portrait-mode JPEGs hold a second picture (MPO): the first is the photo."""
    path = tmp_path / "phone.jpg"
    photo = Image.new("RGB", (200, 120), "red")
    photo.save(path, format="MPO", save_all=True, append_images=[photo.resize((100, 60))])
    assert np.asarray(load_image(path)).shape == (120, 200, 3) and warned == []


def test_a_folder_without_photos_names_every_accepted_type(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no photos found") as caught:
        images._photo_files(tmp_path)
    assert all(extension in str(caught.value) for extension in images.IMAGE_EXTENSIONS)


def test_a_file_pillow_cannot_open_is_told_with_what_to_do(tmp_path):
    """Not only corrupt or misnamed: also a valid file of a kind Pillow does not decode (a 16-bit TIFF with alpha)."""
    path = tmp_path / "noise.png"
    path.write_bytes(b"not a picture " * 10)
    with pytest.raises(UserError, match=r"noise\.png is not an image Pillow can read \(corrupt, misnamed, or of a kind "
                                        r"it does not decode.*\): replace it with a PNG or JPEG of it, or remove it$"):
        load_image(path)


def test_a_folder_whose_photos_are_in_a_subfolder_names_it(tmp_path):
    """An unpacked archive often puts the photos one folder down: the error gives the folder to pass instead."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "dog").mkdir()
    Image.new("RGB", (80, 80), "red").save(tmp_path / "dog" / "a.jpg")
    with pytest.raises(UserError, match=r"\(they are in its subfolder dog/\): give .*dog$"):
        images._photo_files(tmp_path)


def test_an_avif_photo_whose_first_brand_is_mif1_is_no_heic():
    """HEIF files name their kinds in their first box; 'mif1' alone is neither HEIC nor AVIF."""
    from vidbooth.data.images import _is_heic

    def ftyp(major: bytes, *compatible: bytes) -> bytes:
        body = major + b"\0\0\0\0" + b"".join(compatible)
        return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body

    assert _is_heic(ftyp(b"heic", b"mif1", b"heic")) and _is_heic(ftyp(b"mif1", b"heic"))
    assert not _is_heic(ftyp(b"mif1", b"avif", b"miaf")) and not _is_heic(ftyp(b"avif", b"mif1"))
    assert not _is_heic(b"\x89PNG\r\n\x1a\n")


def test_a_portrait_photo_is_cropped_to_its_middle_rows():
    """Red, green and blue bands of 64 rows each: the square kept is the green middle one."""
    pixels = np.zeros((192, 64, 3), np.uint8)
    pixels[:64], pixels[64:128], pixels[128:] = [255, 0, 0], [0, 255, 0], [0, 0, 255]
    out = prepare_photo(Image.fromarray(pixels), 64)
    assert (out.reshape(-1, 3) == [0, 255, 0]).all()


def test_16_bit_grey_is_scaled_to_8_bits_whatever_its_brightest_value():
    """65535 is white and 51400 is 200: each value is divided by 257; a dark 16-bit photo stays dark."""
    from vidbooth.data.images import to_rgb

    row = Image.fromarray(np.array([[0, 200, 51400, 65535] * 16] * 64, dtype=np.uint16))
    assert np.asarray(to_rgb(row))[0, :4, 0].tolist() == [0, 1, 200, 255]
    dark = Image.fromarray(np.full((64, 64), 200, np.uint16))
    assert dark.mode.startswith("I;16") and np.asarray(to_rgb(dark))[0, 0].tolist() == [1, 1, 1]


def test_an_rgba_image_is_put_on_white_without_a_copy_of_it_first(monkeypatch):
    """`to_rgb` had converted an RGBA image to RGBA, a copy (1 GB at 250 megapixels), and held a white image through
    the RGB conversion (120 megapixels: +1.9 GB, now +0.9). Half see-through red on white is pink, as before."""
    from vidbooth.data.images import to_rgb

    converted, convert = [], Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda im, mode=None, *a, **kw: converted.append(mode)
                        or convert(im, mode, *a, **kw))
    rgb = to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 128)))
    assert converted == ["RGB"] and np.asarray(rgb)[0, 0].tolist() == [255, 127, 127]


def test_premultiplied_alpha_is_put_on_white_as_its_rgba_is():
    """RGBa (alpha multiplied in) is made RGBA before it is put on white; only RGBA itself is composited as it is."""
    from vidbooth.data.images import to_rgb

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    assert np.asarray(to_rgb(rgba.convert("RGBa")))[0, 0].tolist() == [255, 127, 127]


def test_scale_jitter_places_its_window_by_its_own_draws(monkeypatch):
    """Draws (no flip, zoom 0.5, x 0, y 1) take the bottom-left quarter: the blue quadrant."""
    pixels = np.zeros((128, 128, 3), np.uint8)
    pixels[:64, :64], pixels[:64, 64:], pixels[64:, :64], pixels[64:, 64:] = [255, 0, 0], [0, 255, 0], [0, 0, 255], [
        255, 255, 0]
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.tensor([0.9, 1.0, 0.0, 1.0]))
    out = augment_photo(Image.fromarray(pixels), 32, flip=True, scale_jitter=0.5)
    assert np.abs(out.astype(int) - [0, 0, 255]).max() <= 30  # blue throughout, but for Lanczos ringing at an edge


def test_a_file_that_cannot_be_read_for_its_hash_says_what_to_do(tmp_path):
    import pytest

    from vidbooth.data.images import hash_file
    from vidbooth.errors import UserError

    with pytest.raises(UserError, match=rf"^cannot read {tmp_path} \(is a directory\): check that it is readable, or "
                                        "leave it out$"):
        hash_file(tmp_path)


def test_a_photo_is_shrunk_to_the_working_size_but_never_enlarged(tmp_path):
    """Enlarging one smaller than the working size would change nothing downstream but memory and time."""
    Image.fromarray(np.zeros((200, 90, 3), np.uint8)).save(tmp_path / "small.png")  # short side under 128
    Image.fromarray(np.zeros((600, 300, 3), np.uint8)).save(tmp_path / "large.png")
    assert load_image(tmp_path / "small.png", max_short_side=128).size == (90, 200)
    assert load_image(tmp_path / "large.png", max_short_side=128).size == (128, 256)


def _damaged_exif_photo(path: Path) -> Path:
    """A JPEG whose EXIF image description claims 5000 bytes that the file does not hold; its pixels are whole."""
    import io
    import struct

    exif = Image.Exif()
    exif[0x010E] = "a description long enough to be stored at an offset"
    raw = bytearray(exif.tobytes())
    entry = raw.find(b"\x01\x0e\x00\x02")  # tag 0x010E, type ASCII, big-endian as Pillow writes it
    raw[entry + 4 : entry + 8] = struct.pack(">I", 5000)
    buffer = io.BytesIO()
    Image.fromarray(np.full((96, 128, 3), 180, np.uint8)).save(buffer, "JPEG", exif=bytes(raw))
    path.write_bytes(buffer.getvalue())
    return path


PILLOWS_DAMAGED_EXIF_WARNINGS = ("Tag data larger than file. Skipping tag 270",  # newer Pillow (12)
                                 "Truncated File Read")  # Pillow 10.0, the floor
"""What Pillow says of `_damaged_exif_photo`'s EXIF block."""


def test_a_librarys_warning_is_one_line_naming_the_photo_being_read(tmp_path, capsys):
    """Pillow's warning of a damaged EXIF block had reached stderr as Python shows it, two lines of Pillow's own
    source that named no photo; the command line shows it as a warning line naming the photo (in any thread)."""
    from concurrent.futures import ThreadPoolExecutor

    from vidbooth.reporting import library_warnings_as_lines

    photo = _damaged_exif_photo(tmp_path / "dog.jpg")
    shown = warnings.showwarning
    with warnings.catch_warnings(), library_warnings_as_lines():
        warnings.simplefilter("always")
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(load_image, photo).result().size == (128, 96)
        warnings.warn("not while reading a file")
        warnings.warn("not while reading a file")  # a line once, whatever Python's filters say
    assert warnings.showwarning is shown
    err = capsys.readouterr().err.splitlines()
    assert err[1:] == ["warning: not while reading a file"] and err[0] in [
        f"warning: reading {photo}: {said}" for said in PILLOWS_DAMAGED_EXIF_WARNINGS], err


def test_the_command_line_shows_a_librarys_warning_as_one_line(tmp_path, capsys, isolated_home):
    from vidbooth.cli.app import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg"):
        _damaged_exif_photo(photos / name)
    (photos / "c.png").write_bytes(b"")  # an empty photo: refused once the others are read
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", "--recipe", "tiny/subject",
                 "--no-preview"]) == 2
    err = capsys.readouterr().err.splitlines()
    for name in ("a.jpg", "b.jpg"):
        assert any(f"warning: reading {photos / name}: {said}" in err for said in PILLOWS_DAMAGED_EXIF_WARNINGS), err
    assert err[-1].startswith("error: ") and not any("UserWarning" in line for line in err)


def test_a_photo_whose_name_is_not_text_is_refused_in_one_line(tmp_path):
    """A name whose bytes are not text in the locale (Latin-1 bytes under UTF-8; any non-ASCII under LANG=C with
    PYTHONUTF8=0) reaches Python as lone surrogates: copied into the library, it had made a manifest that the next
    command failed on (a UnicodeEncodeError traceback)."""
    import os

    from PIL import Image

    from vidbooth.data.images import load_photos
    from vidbooth.errors import UserError

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in (b"a.png", b"caf\xe9.png"):  # 'café' in Latin-1
        Image.new("RGB", (8, 8)).save(os.fsdecode(os.fsencode(folder) + b"/" + name))
    with pytest.raises(UserError, match=r"^photo '.*/caf\\udce9\.png' has a name that is not text in this terminal's "
                                        r"encoding: run vidbooth under a UTF-8 locale \(LANG=C\.UTF-8\), or rename "
                                        r"the file$"):
        load_photos([folder])


def _train_subject(*photos: Path) -> int:
    from vidbooth.cli.app import main

    return main(["train-subject", *map(str, photos), "--name", "S*", "--class-noun", "dog", "--recipe",
                 "tiny/subject", "--no-preview"])


def test_a_photo_that_cannot_be_read_is_refused_as_permission_denied(tmp_path, capsys, isolated_home, monkeypatch):
    photos = badinputs.write_photos(tmp_path / "photos")
    locked = badinputs.unreadable(photos / "photo1.png", monkeypatch)
    assert _train_subject(photos) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: cannot read image {locked}: permission denied; fix its permissions or copy it")
    assert not (isolated_home / "subjects").exists()


def test_a_photo_file_of_another_type_is_refused_naming_the_types_taken(tmp_path, capsys, isolated_home):
    notes = tmp_path / "notes.txt"
    notes.write_text("the dog's name is Rex\n")
    assert _train_subject(badinputs.write_photos(tmp_path / "photos"), notes) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {notes} is not a supported photo type: use one of .jpg, .jpeg, .jfif, .png, .webp, .bmp, .gif, "
        ".tif, .tiff, .avif")
    assert not (isolated_home / "subjects").exists()


def test_an_image_prompt_that_is_a_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    from vidbooth.cli.app import main

    out = tmp_path / "out" / "v.mp4"
    photos = badinputs.write_photos(tmp_path / "photos")
    assert main(["generate", "--prompt", "x", "--image-prompt", str(photos), "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --image-prompt: {photos} is not a file: give an image file")
    assert not out.parent.exists()


def test_png_above_pillows_pixel_limit_but_within_ours_loads(tmp_path, monkeypatch):
    """The PNG's checksum check reopened it under Pillow's own limit (179 MP): a 196 MP PNG was called corrupt."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # stands for Pillow's limit, without a 196 MP file
    path = badinputs.write_photo(tmp_path / "wide.png", 160, 120)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (160, 120)
    assert Image.MAX_IMAGE_PIXELS == 5_000


def test_a_link_to_itself_among_the_photos_is_named_as_a_loop(tmp_path):
    """A folder holding a link that loops (loop.jpg -> loop.jpg) had stopped train-subject with a RuntimeError
    traceback from Path.resolve."""
    badinputs.write_photos(tmp_path, count=2)
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    with pytest.raises(UserError, match=r"loop\.jpg is a link that loops back on itself \(loop\.jpg\): fix the link"):
        images.load_photos([tmp_path])


def test_a_float_tiff_of_values_0_to_1_is_scaled_to_8_bits_not_black(tmp_path):
    """Float TIFFs hold 0..1 as a rule: taken as 8-bit values, a photo had loaded as black without a word."""
    values = np.tile(np.array([0.0, 0.5, 1.0, 0.25], np.float32), (64, 16))
    Image.fromarray(values, "F").save(tmp_path / "float.tif")
    assert np.asarray(load_image(tmp_path / "float.tif"))[0, :4, 0].tolist() == [0, 128, 255, 64]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_photo_that_is_a_pipe_or_a_device_is_refused_in_one_line(tmp_path):
    """A pipe (as <(...) gives) or /dev/null had been listed as a folder: a NotADirectoryError traceback."""
    os.mkfifo(tmp_path / "photo.jpg")
    for path in (tmp_path / "photo.jpg", Path("/dev/null")):
        with pytest.raises(UserError, match=rf"^{re.escape(str(path))} is neither a photo file nor a folder: save"):
            images.load_photos([path])


def test_a_photo_folder_under_the_home_folder_may_be_given_with_a_tilde(tmp_path, monkeypatch):
    """'~/dog' from a recipe or a --set had been 'photo path not found', where clips and class images expand it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    badinputs.write_photos(tmp_path / "dog", count=2)
    images.check_photos_exist(["~/dog"])
    assert [path for path, _ in images.load_photos(["~/dog"])] == sorted((tmp_path / "dog").iterdir())
    assert len(load_photo_folder("~/dog")) == 2


def test_a_photo_folder_named_with_a_tilde_that_names_no_user_is_the_folder_so_named(tmp_path, monkeypatch):
    """'~old' (a folder here; no user 'old') is what the shell passes it as: Path.expanduser's RuntimeError 'Could not
    determine home directory' had been a traceback, where the folder had been read before '~' was expanded."""
    from vidbooth.fileio import absolute_path

    monkeypatch.chdir(tmp_path)
    badinputs.write_photos(tmp_path / "~no-such-user-here", count=2)
    images.check_photos_exist(["~no-such-user-here"])
    [(photo, _), _] = images.load_photos(["~no-such-user-here"])
    assert absolute_path(str(photo)) == str(tmp_path / photo)  # as the subject's manifest records it


def test_a_jpeg_saved_as_jfif_is_a_photo_of_the_folder(tmp_path):
    """Windows browsers save web JPEGs as .jfif: such photos had been left out of a folder without a word."""
    badinputs.write_photos(tmp_path, count=2)
    badinputs.quadrant_image(160, 120).save(tmp_path / "from the web.jfif", format="JPEG")
    assert "from the web.jfif" in [path.name for path, _ in load_photo_folder(tmp_path)]


def test_photos_in_a_folder_whose_name_is_not_text_are_refused_before_training(tmp_path, monkeypatch):
    """Reached through a link or a relative path from inside it, such a folder had passed every check: the
    manifest and config.yaml, which record it absolute, then failed to be written after the whole training."""
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    badinputs.write_photos(folder, count=2)
    (tmp_path / "photos").symlink_to(folder)
    monkeypatch.chdir(folder)
    for given in (tmp_path / "photos", Path("."), Path("photo0.png")):
        with pytest.raises(UserError, match=r"^photo path '.*/caf\\udce9(/photo0\.png)?' is not text in this "
                                            r"terminal's encoding: run vidbooth under a UTF-8 locale"):
            images.load_photos([given])


def test_an_image_prompt_in_a_folder_whose_name_is_not_text_is_refused_before_sampling(tmp_path, capsys,
                                                                                      monkeypatch):
    """Given from inside that folder, its absolute path, which the .yaml beside the video records, had failed that
    write after sampling (a UnicodeEncodeError traceback)."""
    from vidbooth.cli.app import main

    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    badinputs.write_photo(folder / "dog.png")
    monkeypatch.chdir(folder)
    out = tmp_path / "out" / "v.mp4"
    assert main(["generate", "--prompt", "x", "--image-prompt", "dog.png", "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        r"error: --image-prompt: image prompt path '" + str(tmp_path) + r"/caf\udce9/dog.png' is not text in this ")
    assert not out.parent.exists()


def test_a_png_with_compressed_metadata_over_1_mb_loads_and_keeps_pillows_limit(tmp_path):
    """An editor's workflow or a colour profile, compressed, over Pillow's 1 MB a chunk: refused as corrupt."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("workflow", "x" * 3_000_000, zip=True)
    badinputs.quadrant_image(160, 120).save(tmp_path / "made.png", pnginfo=info)
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    assert load_image(tmp_path / "made.png").size == (160, 120)
    assert PngImagePlugin.MAX_TEXT_CHUNK == limit


def test_a_png_with_compressed_metadata_over_1_mb_after_its_pixels_loads(tmp_path):
    """Pillow reads the chunks after the pixels while it decodes them, where its 1 MB a chunk had not been lifted:
    a whole photo with a large compressed text chunk at its end was refused as truncated or corrupt."""
    import struct
    import zlib

    from PIL import PngImagePlugin

    path = tmp_path / "made.png"
    badinputs.quadrant_image(160, 120).save(path)
    data = path.read_bytes()
    end = data.rindex(b"IEND") - 4  # Pillow writes text chunks before the pixels: put one after them, before IEND
    body = b"zTXt" + b"workflow\0\0" + zlib.compress(b"x" * 3_000_000)
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data[:end] + chunk + data[end:])
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    assert np.asarray(load_image(path))[0, 0].tolist() == list(badinputs.RED)
    assert PngImagePlugin.MAX_TEXT_CHUNK == limit


def test_pillows_limits_stay_lifted_while_any_thread_is_inside_and_are_pillows_again_after(monkeypatch):
    """Counted: a thread that leaves while another decodes keeps them lifted for it; one that leaves by an error
    counts as left; the last one out puts back Pillow's own, not the lifted ones a later one would have seen."""
    import threading

    from PIL import PngImagePlugin

    from vidbooth.data.images import pillow_limits_lifted

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    inside, leave, seen = threading.Event(), threading.Event(), []

    def other_thread():
        with pillow_limits_lifted():
            inside.set()
            leave.wait(10)
            seen.append(Image.MAX_IMAGE_PIXELS)

    thread = threading.Thread(target=other_thread)
    thread.start()
    inside.wait(10)
    with pytest.raises(ValueError), pillow_limits_lifted():
        with pillow_limits_lifted():  # nested in one thread too
            assert Image.MAX_IMAGE_PIXELS is None and PngImagePlugin.MAX_TEXT_CHUNK == PngImagePlugin.MAX_TEXT_MEMORY
        assert Image.MAX_IMAGE_PIXELS is None
        raise ValueError
    leave.set()
    thread.join()
    assert seen == [None] and Image.MAX_IMAGE_PIXELS == 5_000
    assert PngImagePlugin.MAX_TEXT_CHUNK < PngImagePlugin.MAX_TEXT_MEMORY
