"""Words in prompts as the CLIP tokenizer reads the tokens added to it (a subject's pseudo-word, an image prompt's
word): in any case, the longest where several begin, and only as whole words by Unicode's word characters. Text
alone, no torch: the data layer's caption checks use it too."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_OTHER_ALPHABETIC_SYMBOLS = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189))
"""Symbols that Unicode counts as letters (circled, squared and negative-squared A-Z: 'Ⓐ'), as the tokenizer does."""


def is_word_character(char: str) -> bool:
    """What the tokenizer's whole-word rule for added tokens takes as part of a word: Unicode's word characters
    (letters, combining marks, decimal digits, letter numbers, connectors such as '_', the joiners). Python's `\\w`
    differs: it takes '²' and '½' and leaves out combining accents, so 'sks²' had not been read as 'sks'."""
    category = unicodedata.category(char)
    return (category[0] in "LM" or category in ("Nd", "Nl", "Pc") or char in "\u200c\u200d"
            or any(low <= ord(char) <= high for low, high in _OTHER_ALPHABETIC_SYMBOLS))


def read_tokens(text: str, tokens: Iterable[str]) -> list[re.Match]:
    """Where the tokenizer reads the added `tokens` in `text`, as `add_placeholder_tokens` registers them: found left
    to right, in any case, the longest where several begin; one with a word character beside it (`is_word_character`:
    'sks' in 'a SKS dog' and "sks's", not in 'tasks') is no token, and hides the shorter ones inside it: with 'sks'
    and '*sks' added, 'x*sks' holds neither and 'a *sks' only '*sks'."""
    longest_first = sorted({token.lower() for token in tokens}, key=len, reverse=True)
    if not longest_first:
        return []
    found = re.compile("|".join(map(re.escape, longest_first)), flags=re.IGNORECASE).finditer(text)
    return [match for match in found if _whole_word(text, match.start(), match.end())]


def _whole_word(text: str, start: int, end: int) -> bool:
    """Whether `text[start:end]` has no word character (`is_word_character`) just before or after it."""
    return not (start > 0 and is_word_character(text[start - 1]) or end < len(text) and is_word_character(text[end]))


def without_tokens(text: str, found: list[re.Match]) -> str:
    """`text` without the tokens `found` in it (`read_tokens`), its spaces collapsed: 'a S* dog' -> 'a dog'."""
    ends, starts = [0] + [match.end() for match in found], [match.start() for match in found] + [len(text)]
    return " ".join(" ".join(text[end:start] for end, start in zip(ends, starts)).split())


def reads_token(text: str, token: str, others: Iterable[str] = ()) -> bool:
    """Whether the tokenizer reads `token` in `text`, with the tokens `others` added too (`read_tokens`)."""
    return any(match.group().lower() == token.lower() for match in read_tokens(text, [token, *others]))
