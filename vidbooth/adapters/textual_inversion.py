"""Textual inversion: a new pseudo-word (`S*`) whose embedding rows are the only weights that train.

DreamVideo's subject stage 1 (`../shared/method.md` §2). The placeholder token(s) are added to the
tokenizer and the text encoder's embedding matrix grows by one row per vector. During training the
embedding module is swapped for `PlaceholderEmbedding`, which keeps the old matrix frozen and looks up the
new ids in a separate fp32 parameter: no other row can change, by construction. After training the rows
are merged back into a plain `nn.Embedding`.

With `num_vectors > 1` the tokens are `S*`, `S*_1`, ... and prompts must spell them all out
(`expand_placeholder`), the convention of diffusers' `load_textual_inversion`, which loads our
`learned_embeds.safetensors` (`{token: (num_vectors, dim)}`) as is.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from vidbooth import reporting
from vidbooth.adapters.base import check_values, load_tensors, save_tensors
from vidbooth.errors import UserError
from vidbooth.words import read_tokens, without_tokens

EMBEDDINGS_FILE = "learned_embeds.safetensors"


def placeholder_tokens(token: str, num_vectors: int) -> list[str]:
    """['S*'] or ['S*', 'S*_1', ..., 'S*_{n-1}']."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand_placeholder(prompt: str, token: str, num_vectors: int, others: Iterable[str] = ()) -> str:
    """Write a multi-vector token out in full: 'a S* dog' -> 'a S* S*_1 dog' (the tokenizer ignores case), once: 'a S*
    S*_1 dog' stays so; `others`: the other added tokens (`read_tokens`). A part of it written alone ('S*_1', or 'S*
    S*_1' of three vectors) is a UserError: the subject is its vectors together."""
    if num_vectors == 1:
        return prompt
    tokens = placeholder_tokens(token, num_vectors)
    own = {t.lower() for t in tokens}
    found = [match for match in read_tokens(prompt, [*tokens, *others]) if match.group().lower() in own]
    pieces, done, index = [], 0, 0
    while index < len(found):
        run = found[index : index + num_vectors]
        if not _written_out(prompt, run, tokens):
            _check_not_a_part(run[0], tokens)
            run = run[:1]
        pieces += [prompt[done : run[0].start()], " ".join(tokens)]
        done, index = run[-1].end(), index + len(run)
    return "".join(pieces) + prompt[done:]


def _written_out(prompt: str, run: list[re.Match], tokens: list[str]) -> bool:
    """Whether the tokens read `run` are `tokens`, in order, with nothing but spaces between them."""
    in_order = [match.group().lower() for match in run] == [token.lower() for token in tokens]
    return in_order and all(not prompt[a.end() : b.start()].strip() for a, b in zip(run, run[1:]))


def _check_not_a_part(match: re.Match, tokens: list[str]) -> None:
    """A UserError for one of a pseudo-word's later vectors ('S*_1') read outside its whole write-out."""
    if match.group().lower() != tokens[0].lower():
        raise UserError(
            f"'{match.group()}' is a part of subject {tokens[0]}'s pseudo-word of {len(tokens)} vectors "
            f"({' '.join(tokens)}): write {tokens[0]} alone in the prompt, which stands for all of them"
        )


def class_noun_ids(tokenizer, class_noun: str) -> list[int]:
    """Token ids of the class noun, without start/end/unknown tokens; a UserError when there are none."""
    ids = tokenizer(class_noun, add_special_tokens=False, verbose=False).input_ids  # a long one is refused later
    ids = [i for i in ids if i != tokenizer.unk_token_id]
    if not ids:
        raise UserError(f"class noun '{class_noun}' tokenises to nothing: give a plain word such as dog or person")
    return ids


RARE_WORDS_FROM = 0.9
"""Where in a BPE vocabulary (as a fraction of its size) the words are rare enough to be a subject's name unwarned:
CLIP's 'sks', DreamBooth's, is at 0.97; 'sprite' is at 0.66 and 'backpack' at 0.30."""


def check_placeholder_is_new(tokenizer, token: str, num_vectors: int, class_noun: str) -> None:
    """Refuse a placeholder that already is a token (it would change an existing word), equals the class noun or is a
    word of it; warn of one that is a common whole word (prompts that use the subject lose that word)."""
    if token.lower() == class_noun.strip().lower():
        raise UserError(f"the subject name '{token}' equals the class noun: give a rare --name such as sks or 'S*'")
    if found := read_tokens(class_noun, [token]):  # every caption would hold the pseudo-word twice
        rest = without_tokens(class_noun, found) or "dog"
        raise UserError(f"the class noun '{class_noun.strip()}' holds the subject name '{token}': give what the "
                        f"subject is without it, e.g. --class-noun {shlex.quote(rest)}")
    vocab = {key.lower(): index for key, index in tokenizer.get_vocab().items()}
    taken = [t for t in placeholder_tokens(token, num_vectors) if t.lower() in vocab]
    if taken:
        raise UserError(
            f"'{taken[0]}' is already a token of this model's tokenizer: give a rare --name such as sks or 'S*'"
        )
    index = vocab.get(f"{token.lower()}</w>")  # a whole word of a BPE vocabulary, which orders them common first
    if index is not None and index < RARE_WORDS_FROM * len(vocab):
        reporting.warn(f"the subject name '{token}' is a word of this model's tokenizer: in every prompt that uses "
                       f"this subject, '{token}' will mean the subject, not the word; a rare name such as sks or S* "
                       "keeps the word")


def add_placeholder_tokens(tokenizer, text_encoder: nn.Module, tokens: list[str], rows: torch.Tensor) -> list[int]:
    """Add `tokens` to the tokenizer, grow the frozen embedding matrix, set their rows (n, D); returns their ids."""
    dim = text_encoder.get_input_embeddings().embedding_dim
    if rows.shape != (len(tokens), dim):
        raise UserError(
            f"the pseudo-word '{tokens[0]}' was learned on another base model (its embedding is "
            f"{tuple(rows.shape)}, this text encoder takes ({len(tokens)}, {dim})): use the --base it was learned on "
            "(vidbooth list shows it), or retrain it"
        )
    from tokenizers import AddedToken

    # single_word: 'sks' is the subject in 'a sks dog' and "sks's", never a piece of 'tasks'
    if tokenizer.add_tokens([AddedToken(token, single_word=True) for token in tokens]) != len(tokens):
        raise UserError(f"token '{tokens[0]}' is already in use (a subject loaded twice?): load each subject once")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embedding = text_encoder.get_input_embeddings().requires_grad_(False)
    with torch.no_grad():
        embedding.weight[ids] = rows.to(embedding.weight)
    return ids


def initial_rows(text_encoder: nn.Module, init_ids: list[int], num_vectors: int) -> torch.Tensor:
    """(num_vectors, D): every vector starts at the mean embedding of the class noun's tokens."""
    weight = text_encoder.get_input_embeddings().weight
    return weight[init_ids].float().mean(0, keepdim=True).repeat(num_vectors, 1).detach()


class PlaceholderEmbedding(nn.Module):
    """The token embedding with consecutive ids [first_id, first_id + n) looked up in the trainable `rows`."""

    def __init__(self, base: nn.Embedding, first_id: int, num_vectors: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.first_id = first_id
        self.rows = nn.Parameter(base.weight[first_id : first_id + num_vectors].detach().float().clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.base(input_ids)  # (B, L, D)
        offset = input_ids - self.first_id
        is_new = (offset >= 0) & (offset < self.rows.shape[0])
        new = self.rows[offset.clamp(0, self.rows.shape[0] - 1)].to(embeds.dtype)  # (B, L, D)
        return torch.where(is_new.unsqueeze(-1), new, embeds)


def wrap_placeholder_embedding(text_encoder: nn.Module, ids: list[int]) -> PlaceholderEmbedding:
    """Swap in a `PlaceholderEmbedding` for the new ids (consecutive, last in the vocabulary); returns it."""
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ValueError(f"placeholder ids must be consecutive, got {ids}")
    wrapper = PlaceholderEmbedding(text_encoder.get_input_embeddings(), ids[0], len(ids))
    text_encoder.set_input_embeddings(wrapper)
    return wrapper


def merge_placeholder_embedding(text_encoder: nn.Module) -> torch.Tensor:
    """Write the trained rows into the embedding matrix, restore the plain `nn.Embedding`; returns the rows (n, D)."""
    wrapper = text_encoder.get_input_embeddings()
    if not isinstance(wrapper, PlaceholderEmbedding):
        raise ValueError("the text encoder has no placeholder embedding to merge")
    rows = wrapper.rows.detach().float().cpu().clone()
    with torch.no_grad():
        wrapper.base.weight[wrapper.first_id : wrapper.first_id + rows.shape[0]] = rows.to(wrapper.base.weight)
    text_encoder.set_input_embeddings(wrapper.base)
    return rows


def save_learned_embeddings(path: Path, token: str, rows: torch.Tensor, metadata: dict) -> None:
    """`{token: (n, D)}`, the layout diffusers' `load_textual_inversion` reads."""
    save_tensors(path, {token: rows.detach().float().cpu().contiguous()}, {"method": "textual_inversion"} | metadata)


def read_learned_embeddings(path: Path) -> tuple[str, torch.Tensor]:
    """The token and its rows (n, D) from a `learned_embeds.safetensors`."""
    tensors, _ = load_tensors(path)
    if len(tensors) != 1:
        raise UserError(f"{path} holds {len(tensors)} tensors, expected one {{token: embedding}}: retrain the subject")
    token, rows = next(iter(tensors.items()))
    check_values(path, token, rows)
    return token, rows if rows.ndim == 2 else rows.unsqueeze(0)


def load_learned_embeddings(
    tokenizer, text_encoder: nn.Module, path: Path, expected: tuple[str | None, int] | None = None
) -> tuple[str, int]:
    """Add the learned token(s) of `path` to a tokenizer and text encoder; returns (token, num_vectors). With
    `expected` (the token, where recorded, and number of vectors of a subject's manifest), a file holding others is
    refused."""
    token, rows = read_learned_embeddings(path)
    if expected is not None and (expected[0] not in (None, token) or rows.shape[0] != expected[1]):
        raise UserError(f"{path} holds the pseudo-word '{token}' of {rows.shape[0]} vector(s), but the subject's "
                        f"manifest records '{expected[0] or token}' of {expected[1]} (altered since): retrain the "
                        "subject")
    with torch.random.fork_rng(devices=[]):  # the grown matrix's initial rows, replaced: the caller's stream is kept
        add_placeholder_tokens(tokenizer, text_encoder, placeholder_tokens(token, rows.shape[0]), rows)
    return token, rows.shape[0]
