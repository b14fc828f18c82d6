"""Tiny CLIP/ViT models saved to disk and synthetic media with known content, for the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_VIT = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
)


def save_tiny_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from vidbooth.engine.tiny import tiny_text_config, tiny_tokenizer_files

    tiny_tokenizer_files(folder)
    text = tiny_text_config(len(json.loads((folder / "vocab.json").read_text())), dim=16, layers=1)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=TINY_VIT, projection_dim=16)).save_pretrained(folder)
    return folder


def save_tiny_vit(folder: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(**TINY_VIT)
    torch.manual_seed(0)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def smooth_image(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A random but spatially smooth RGB image, so that resizing keeps its content."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))


def moving_square(
    direction=(1, 0), frames=12, size=64, square=16, start=(10, 24), speed=2, seed=0, background=40
) -> np.ndarray:
    """(F, size, size, 3) uint8: a randomly textured square sliding `speed` px per frame along `direction`."""
    rng = np.random.default_rng(seed)
    texture = np.kron(rng.integers(0, 256, (square // 4, square // 4, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    video = np.full((frames, size, size, 3), background, dtype=np.uint8)
    for i, frame in enumerate(video):
        x, y = start[0] + direction[0] * speed * i, start[1] + direction[1] * speed * i
        frame[y : y + square, x : x + square] = texture
    return video


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg that imageio-ffmpeg bundles (the one vidbooth reads with), quietly, failing loudly."""
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *args], check=True, capture_output=True,
                   timeout=60)


def joined_video(path: Path, *segments: tuple[str, str], rate: int = 8, seconds: int = 1) -> Path:
    """Test-pattern segments joined the way people join clips, with ffmpeg's concat demuxer and no re-encoding, so
    the stream changes part-way just as its segments differ. Each segment is (size, pixel format), e.g.
    ("64x48", "yuv420p"); the codec follows the suffix: h264 for .mp4/.mkv, VP9 for .webm."""
    codec = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"] if path.suffix == ".webm" else [
        "-c:v", "libx264"]
    parts = []
    for i, (size, pix_fmt) in enumerate(segments):
        part = path.with_name(f"{path.stem}.part{i}{path.suffix}")
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", *codec, "-pix_fmt", pix_fmt,
               str(part))
        parts.append(part)
    listing = path.with_name(f"{path.stem}.parts.txt")
    listing.write_text("".join(f"file '{part.name}'\n" for part in parts))
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(path))
    for leftover in (*parts, listing):
        leftover.unlink()
    return path


def _gif_blocks(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """A GIF split into its header with logical screen (6 + 7 bytes), its global colour table and its blocks
    (extensions and images, each whole, the trailer left off)."""
    flags = data[10]
    table_end = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks, at = [], table_end
    while data[at] != 0x3B:  # ';' ends the file
        start = at
        if data[at] == 0x21:  # '!' extension: label, then sub-blocks
            at += 2
        else:  # ',' image: descriptor, local colour table, LZW code size, then sub-blocks
            image_flags = data[at + 9]
            at += 10 + (3 << ((image_flags & 7) + 1) if image_flags & 0x80 else 0) + 1
        while data[at]:
            at += data[at] + 1
        blocks.append(data[start : at + 1])
        at += 1
    return data[:13], data[13:table_end], blocks


def gif_with_oversized_frame(path: Path, first: np.ndarray, second: np.ndarray) -> Path:
    """A two-frame GIF whose logical screen is `first`'s size and whose second frame, `second`, is larger (some
    encoders write these; browsers clip such a frame to the screen). Made from two one-frame GIFs by Pillow, the
    second's global colour table moved into its image as a local one."""
    import io

    from PIL import Image

    encoded = []
    for frame in (first, second):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="GIF")
        encoded.append(buffer.getvalue())
    screen, table, blocks = _gif_blocks(encoded[0])
    second_screen, second_table, second_blocks = _gif_blocks(encoded[1])
    image = next(block for block in second_blocks if block[0] == 0x2C)
    local_flags = (image[9] & 0x40) | 0x80 | (second_screen[10] & 7)  # keep interlacing; table size as it was
    image = image[:9] + bytes([local_flags]) + second_table + image[10:]
    path.write_bytes(screen + table + b"".join(blocks) + image + b";")
    return path


def crafted_gif(path: Path, screen: tuple[int, int], frames: list[tuple[int, int, int, int, int]],
                trailer: bool = True) -> Path:
    """A GIF written byte by byte: a `screen`, a black-and-white global colour table, a loop extension and, for each
    of `frames` (left, top, width, height, disposal method), a graphic control extension and an image of white
    pixels at that place. A frame of up to 65,536 pixels holds all of them; a larger one, one pixel only (a decoder
    fails on it: it is for a frame that is refused before it is decoded)."""
    data = gif_screen(screen) + b"!\xff\x0bNETSCAPE2.0\x03\x01\0\0\0"
    data += b"".join(gif_frame(*frame) for frame in frames)
    path.write_bytes(data + (b";" if trailer else b""))
    return path


def gif_screen(screen: tuple[int, int]) -> bytes:
    """A GIF's header and logical `screen`, with a black-and-white global colour table."""
    return b"GIF89a" + _u16s(*screen) + bytes([0x80, 0, 0]) + b"\0\0\0\xff\xff\xff"


def gif_frame(left: int, top: int, width: int, height: int, disposal: int) -> bytes:
    """A graphic control extension and an image of white pixels at that place, as `crafted_gif` writes each frame."""
    data = b"!\xf9\x04" + bytes([disposal << 2]) + _u16s(10) + b"\0\0"  # 100 ms, no transparency
    data += b"," + _u16s(left, top, width, height) + b"\0\x02"  # no local table; 2-bit LZW codes
    lzw = _lzw_of_ones(width * height if width * height <= 1 << 16 else 1)
    for at in range(0, len(lzw), 255):
        data += bytes([len(lzw[at : at + 255])]) + lzw[at : at + 255]
    return data + b"\0"


def _u16s(*values: int) -> bytes:
    return b"".join(value.to_bytes(2, "little") for value in values)


def _lzw_of_ones(pixels: int) -> bytes:
    """`pixels` pixels of colour 1 as LZW data with 2-bit codes, written as pairs after a clear code so that the
    code table never grows past 3-bit codes (no compression): clear (4), 1, 1, ..., end (5)."""
    codes = []
    for done in range(0, pixels, 2):
        codes += [4, 1] + ([1] if done + 1 < pixels else [])
    codes.append(5)
    packed, buffer, filled = bytearray(), 0, 0
    for code in codes:  # least significant bit first
        buffer, filled = buffer | code << filled, filled + 3
        while filled >= 8:
            packed.append(buffer & 0xFF)
            buffer, filled = buffer >> 8, filled - 8
    return bytes(packed + (bytes([buffer]) if filled else b""))


def crafted_apng(path: Path, canvas: tuple[int, int], frames: list[tuple[int, int, int, int, int]],
                 later_canvas: tuple[int, int] | None = None, still: bool = False) -> Path:
    """An APNG written chunk by chunk: an 8-bit RGBA `canvas` and, for each of `frames` (left, top, width, height,
    disposal op: 0 none, 1 clear, 2 previous), a frame control chunk and grey pixels, the first frame's in IDAT (the
    image viewers that do not animate show) unless `still` puts an image of the canvas's size there, apart from the
    animation. An image of up to 65,536 pixels holds all of them; a larger one, one pixel only (a decoder fails on
    it). `later_canvas`: a second header chunk giving that size, just before the second frame's control chunk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def header(width: int, height: int) -> bytes:
        return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))  # 8-bit RGBA, not interlaced

    def pixels(width: int, height: int) -> bytes:
        width, height = (width, height) if width * height <= 1 << 16 else (1, 1)
        return zlib.compress((b"\0" + b"\x80\x80\x80\xff" * width) * height)  # each row: filter 0, then RGBA

    data = b"\x89PNG\r\n\x1a\n" + header(*canvas) + chunk(b"acTL", struct.pack(">II", len(frames), 0))
    if still:
        data += chunk(b"IDAT", pixels(*canvas))
    sequence = 0
    for index, (left, top, width, height, disposal) in enumerate(frames):
        if index == 1 and later_canvas:
            data += header(*later_canvas)
        data += chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, left, top, 1, 10, disposal, 0))
        sequence += 1
        if index == 0 and not still:
            data += chunk(b"IDAT", pixels(width, height))
        else:
            data += chunk(b"fdAT", struct.pack(">I", sequence) + pixels(width, height))
            sequence += 1
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def webp_canvas(path: Path, canvas: tuple[int, int], count: int = 2) -> Path:
    """An animated WebP of `count` 16x16 frames at the top left, as Pillow writes it, whose extended header (VP8X)
    is then made to give a `canvas` of another size (up to 16,777,216 a side)."""
    import io

    from PIL import Image

    frames = [Image.new("RGBA", (16, 16), (60 * index, 200, 90, 255)) for index in range(count)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"VP8X", "Pillow wrote an animated WebP without an extended header"
    data[24:30] = (canvas[0] - 1).to_bytes(3, "little") + (canvas[1] - 1).to_bytes(3, "little")  # each less one
    path.write_bytes(bytes(data))
    return path


def make_subject_clips(folder: Path, count=3, word="subject", masks=(2,), size=64, num_frames=8):
    """`count` world clips of `num_frames` frames of red sprites moving right, captioned with `word`; a photo beside
    each, except the clips in `masks`, which get the mask of their first frame (a disc inside the sprite) instead."""
    from PIL import Image

    from vidbooth.data.video import write_video
    from vidbooth.nano.world import Motion, Sprite, render_clip, render_photos

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        sprite = Sprite(("circle", "square", "triangle")[index % 3], "red", "solid")
        frames, truth = render_clip(sprite, Motion("right"), num_frames, size, seed=index)
        write_video(frames, folder / f"clip{index + 1}.mp4")
        (folder / f"clip{index + 1}.txt").write_text(f"a {word}\n  moving right\n")
        if index in masks:
            ys, xs = np.mgrid[:size, :size]
            (x, y), radius = truth.centres[0], truth.radii[0] * 0.95  # inside a circle sprite
            disc = ((xs - x) ** 2 + (ys - y) ** 2 <= radius**2).astype(np.uint8) * 255
            Image.fromarray(disc).save(folder / f"clip{index + 1}.mask.png")
        else:
            Image.fromarray(render_photos(sprite, 1, size, seed=index)[0]).save(folder / f"clip{index + 1}.png")
    return folder
