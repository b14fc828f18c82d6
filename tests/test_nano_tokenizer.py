"""nano's tokenizer rebuilt from an open-clip-torch wheel: the same vocabulary and ids as the packaged one. The wheel
here is a stand-in holding only the merges file, laid out as open_clip's: a header line, the merges in rank order,
then merges CLIP does not use."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from vidbooth.errors import UserError
from vidbooth.nano import pretrain as nano
from vidbooth.nano.tokenizer import VOCAB_SIZE, build_clip_tokenizer, read_merges

PACKAGED_TOKENIZER = Path(nano.PACKAGED) / "tokenizer"


def packaged_merges() -> list[str]:
    merges = json.loads((PACKAGED_TOKENIZER / "tokenizer.json").read_text())["model"]["merges"]
    return [" ".join(pair) if isinstance(pair, list) else pair for pair in merges]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A stand-in open-clip-torch wheel: header, CLIP's 48,894 merges, then unused ones that must be cut off."""
    unused = ["r ed</w>", "stri ped</w>", "cir cle</w>"]
    text = "\n".join(["bpe_simple_vocab_16e6.txt#version: 0.2", *packaged_merges(), *unused]) + "\n"
    path = tmp_path_factory.mktemp("wheel") / "open_clip_torch-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("open_clip/bpe_simple_vocab_16e6.txt.gz", gzip.compress(text.encode("utf-8")))
    return path


def test_the_merges_are_those_after_the_header_and_no_more(wheel):
    """(mutation testing: one merge too few had no test)"""
    merges = read_merges(wheel)
    assert len(merges) == VOCAB_SIZE - 2 * 256 - 2 == 48894
    assert merges == packaged_merges()


def test_a_tokenizer_built_from_the_wheel_is_the_packaged_one(wheel):
    built = nano.load_tokenizer(str(wheel), 77)  # as pretrain takes --set tokenizer=<wheel>
    packaged = nano.load_tokenizer("nano", 77)
    assert len(built) == len(packaged) == VOCAB_SIZE
    assert built.get_vocab() == packaged.get_vocab()
    prompt = "a red striped circle moves right across a photographed, unusual background!"
    ids = built(prompt).input_ids
    assert ids == packaged(prompt).input_ids and ids[0] == VOCAB_SIZE - 2 and ids[-1] == VOCAB_SIZE - 1


def test_a_wheel_without_the_merges_file_says_where_to_get_one(tmp_path):
    empty = tmp_path / "other-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("other/__init__.py", "")
    with pytest.raises(UserError, match=r"cannot read open_clip/bpe_simple_vocab_16e6.txt.gz from .*: get the wheel "
                                        r"with `pip download open-clip-torch --no-deps`"):
        build_clip_tokenizer(empty)


def test_a_wheel_with_too_few_merges_is_refused_naming_the_token_count(tmp_path):
    text = "\n".join(["bpe_simple_vocab_16e6.txt#version: 0.2", *packaged_merges()[:1000]])
    short = tmp_path / "open_clip_torch-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(short, "w") as archive:
        archive.writestr("open_clip/bpe_simple_vocab_16e6.txt.gz", gzip.compress(text.encode("utf-8")))
    with pytest.raises(UserError, match=rf"^{short} holds 1514 CLIP tokens instead of {VOCAB_SIZE}: use an "
                                        r"open-clip-torch wheel$"):
        build_clip_tokenizer(short)


def _flagged(archive: bytes, flag_bits: int = 0, method: int | None = None) -> bytes:
    """`archive` (one member) with its member marked in both headers as encrypted (flag bit 0) or compressed by
    `method` (zipfile reads neither)."""
    data = bytearray(archive)
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local header, central directory
        at = data.index(signature) + flags
        data[at:at + 2] = (int.from_bytes(data[at:at + 2], "little") | flag_bits).to_bytes(2, "little")
        if method is not None:
            data[at + 2:at + 4] = method.to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize("damage", ["cut short", "corrupt", "not text", "encrypted", "unknown compression",
                                    "corrupt lzma"])
def test_a_wheel_whose_merges_file_is_damaged_says_where_to_get_one_not_aborted(damage, tmp_path):
    """A merges file cut short had come out of pretrain as 'error: aborted' (EOFError, which click takes for Ctrl-D at
    a prompt), exit 1; an encrypted one (RuntimeError) or one compressed in a way zipfile cannot read
    (NotImplementedError) had been tracebacks."""
    packed = gzip.compress("bpe_simple_vocab_16e6.txt#version: 0.2\na b\n".encode("utf-8"))
    member = {"cut short": packed[:-12], "corrupt": packed[:10] + b"\xff" * 20 + packed[30:],
              "not text": gzip.compress(b"\xff\xfe\xfa")}.get(damage, packed)
    damaged = tmp_path / "open_clip_torch-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(damaged, "w", zipfile.ZIP_LZMA if damage == "corrupt lzma" else zipfile.ZIP_STORED) as archive:
        archive.writestr("open_clip/bpe_simple_vocab_16e6.txt.gz", member)
    if damage == "corrupt lzma":  # the member's compressed bytes, after the local header and LZMA's 4-byte header
        data = bytearray(damaged.read_bytes())
        start = data.index(b".txt.gz") + len(".txt.gz") + 8
        damaged.write_bytes(bytes(data[:start]) + b"\xff" * 16 + bytes(data[start + 16:]))
    elif damage == "encrypted":
        damaged.write_bytes(_flagged(damaged.read_bytes(), flag_bits=1))
    elif damage == "unknown compression":
        damaged.write_bytes(_flagged(damaged.read_bytes(), method=99))  # 99: AES, which zipfile does not read
    with pytest.raises(UserError, match=rf"^cannot read open_clip/bpe_simple_vocab_16e6.txt.gz from {damaged}: get "
                                        r"the wheel with `pip download open-clip-torch --no-deps`$"):
        nano.load_tokenizer(str(damaged), 77)
