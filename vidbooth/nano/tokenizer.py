"""nano's tokenizer: OpenAI CLIP's byte-level BPE, rebuilt offline from the merges list in the open-clip-torch wheel.

The wheel (MIT licence) carries `open_clip/bpe_simple_vocab_16e6.txt.gz`: a header line, then BPE merges in rank
order. OpenAI's vocabulary is the 256 byte symbols, the same with an end-of-word marker, one token per merge
(the first 48,894 merges), and the two special tokens: 49,408 ids in all, the ids real CLIP models use.
We read the file out of the wheel with zipfile; open_clip is never installed or imported.
"""

from __future__ import annotations

import gzip
import lzma
import zipfile
import zlib
from pathlib import Path

from vidbooth.errors import UserError

VOCAB_SIZE = 49408
MAX_LENGTH = 77
START, END = "<|startoftext|>", "<|endoftext|>"
_MERGES_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
_END_OF_WORD = "</w>"


def byte_symbols() -> list[str]:
    """The 256 stand-ins byte-level BPE uses for bytes, in OpenAI's order: printable bytes first, then the rest."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def read_merges(wheel: str | Path) -> list[str]:
    """The merges used by CLIP ('a b' strings, best first) from an open-clip-torch wheel."""
    wheel = Path(wheel)
    try:
        with zipfile.ZipFile(wheel) as archive:
            text = gzip.decompress(archive.read(_MERGES_MEMBER)).decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, UnicodeDecodeError,
            RuntimeError) as exc:  # EOF: cut short; RuntimeError: encrypted, or an unknown compression (its subclass
        # NotImplementedError)
        raise UserError(
            f"cannot read {_MERGES_MEMBER} from {wheel}: get the wheel with `pip download open-clip-torch --no-deps`"
        ) from exc
    lines = text.split("\n")[1:]  # line 0 is a version header
    return lines[: VOCAB_SIZE - 2 * 256 - 2]


def clip_vocab(merges: list[str]) -> dict[str, int]:
    symbols = byte_symbols()
    tokens = symbols + [s + _END_OF_WORD for s in symbols] + [m.replace(" ", "") for m in merges] + [START, END]
    return {token: index for index, token in enumerate(tokens)}


def build_clip_tokenizer(wheel: str | Path, max_length: int = MAX_LENGTH):
    """A `transformers.CLIPTokenizer` with OpenAI CLIP's exact vocabulary and ids."""
    from transformers import CLIPTokenizer

    merges = read_merges(wheel)
    vocab = clip_vocab(merges)
    if len(vocab) != VOCAB_SIZE:
        raise UserError(f"{wheel} holds {len(vocab)} CLIP tokens instead of {VOCAB_SIZE}: use an open-clip-torch wheel")
    pairs = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=max_length)
