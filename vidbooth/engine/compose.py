"""Joint inference (DreamVideo §3.3): learned subjects and a learned motion on one backbone.

Subjects (pseudo-word embedding + identity adapter in the spatial cross-attentions) and motions (motion
adapter in the temporal transformers) are trained apart on the frozen base and touch disjoint layers, so
composing them is loading both: `apply_personalisation` does that after checking they belong together.

The motion adapter's appearance condition is dropped at inference (zero embedding, which equals no
condition as `W_cond` has no bias). Training dropped it half of the time, so the adapter has learned to
produce the motion without it; giving it a frame of the training clip would pull that clip's looks back in,
and the looks of the generated video must come from the prompt and the subject instead.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from vidbooth.words import reads_token
from vidbooth.errors import UserError


@dataclass
class Personalisation:
    prompt: str
    """The prompt to sample with: subject tokens inserted where missing, multi-vector tokens spelled out."""
    negative_prompt: str = ""
    """The negative prompt with multi-vector tokens spelled out (nothing inserted)."""
    notes: list[str] = field(default_factory=list)
    """What was changed, for the user (e.g. the inserted subject token)."""
    subjects: list = field(default_factory=list)
    """`vidbooth.engine.subject.LoadedSubject` of each subject, in the order given."""
    motion: dict | None = None
    """The motion's manifest, when one was loaded."""


def apply_personalisation(
    backbone,
    prompt: str,
    subjects: list[str] | None = None,
    motion: str | None = None,
    subject_scale: float = 1.0,
    motion_scale: float = 1.0,
    negative_prompt: str = "",
) -> Personalisation:
    """Load `subjects` and `motion` (either may be empty) on `backbone` and return the prompts to sample with.

    Every name is checked before anything is loaded: unknown names raise a UserError listing the known
    ones, and a subject and a motion learned on different base models raise one naming both.
    """
    from vidbooth.engine.motion import load_motion
    from vidbooth.engine.subject import load_subject
    from vidbooth.library import artifact_dir, named_artifacts, read_manifest

    subjects = list(dict.fromkeys(subjects or []))
    # their tensor files are hashed as each is loaded, below
    learned = [(kind, name, read_manifest(artifact_dir(kind, name), verify=False))
               for kind, name in named_artifacts(subjects, motion)]
    check_learned_together(learned)

    loaded = [load_subject(backbone, name, subject_scale) for name in subjects]
    # composed as CLIP's tokenizer composes accents (NFC): 'cafe' + U+0301, as macOS may paste it, is subject 'café'
    prompt, negative_prompt = (unicodedata.normalize("NFC", text) for text in (prompt, negative_prompt))
    result = Personalisation(prompt=prompt, negative_prompt=negative_prompt, subjects=loaded)
    tokens = [token for subject in loaded for token in subject.tokens]  # 'sks' is not in '*sks', the longer one
    for subject in loaded:
        result.prompt, note = with_subject_token(result.prompt, subject.token, subject.class_noun, tokens)
        if note:
            result.notes.append(note)
        result.prompt = subject.expand_prompt(result.prompt, tokens)
        result.negative_prompt = subject.expand_prompt(result.negative_prompt, tokens)
    check_pseudo_words_read(backbone, result.prompt, loaded)
    if motion:
        result.motion = load_motion(backbone, motion, motion_scale)
    return result


def check_learned_together(learned: list[tuple[str, str, dict]]) -> None:
    """(kind, name, manifest) of the subjects and motion applied together: each must go with the first
    (`check_same_base`), and no two subjects may write a token alike ('S*' of 2 vectors is 'S* S*_1')."""
    for other in learned[1:]:
        check_same_base(learned[0], other)
    owner: dict[str, tuple[str, list[str]]] = {}
    for kind, name, manifest in learned:
        tokens = [str(t) for t in manifest.get("tokens") or [name]] if kind == "subject" else []
        for token in tokens:
            other, other_tokens = owner.setdefault(token.lower(), (name, tokens))
            if other != name:
                raise UserError(
                    f"subjects '{other}' and '{name}' cannot be used together: both write the token '{token}' "
                    f"('{other}' is {' '.join(other_tokens)}, '{name}' is {' '.join(tokens)}): retrain one under "
                    "another name"
                )


def check_same_base(first: tuple[str, str, dict], second: tuple[str, str, dict]) -> None:
    """(kind, name, manifest) pairs learned on different base models (fingerprints) raise a UserError naming both;
    a subject learned on the image model that a motion's motion module animates goes with it (AnimateDiff)."""
    from vidbooth.library import learned_on

    (kind_a, name_a, a), (kind_b, name_b, b) = first, second
    subject, other = (a, b) if kind_a == "subject" else (b, a)  # learned_on's leeway is a subject's
    if not learned_on(subject, other.get("base_fingerprint"), other.get("image_fingerprint")):
        raise UserError(
            f"{kind_a} '{name_a}' was learned on {a.get('base')} (fingerprint {a.get('base_fingerprint')}) but "
            f"{kind_b} '{name_b}' on {b.get('base')} (fingerprint {b.get('base_fingerprint')}): they cannot be "
            f"combined; retrain one of them on the other's base"
        )


def check_pseudo_words_read(backbone, prompt: str, subjects: list) -> None:
    """A UserError when a subject's pseudo-word lies past the tokens of `prompt` that the text encoder reads: cut
    off, it would leave the subject out of the video."""
    for subject in subjects:
        if backbone.cut_away(prompt, backbone.tokenizer.convert_tokens_to_ids(subject.tokens)):
            raise UserError(
                f"subject {subject.name}'s pseudo-word {subject.token} comes after the "
                f"{backbone.tokenizer.model_max_length} tokens the text encoder reads of the prompt: it would be cut "
                f"off, leaving the subject out of the video: shorten the prompt, or write {subject.token} nearer its "
                "start"
            )


def with_subject_token(
    prompt: str, token: str, class_noun: str, others: Iterable[str] = (), what: str = "the prompt"
) -> tuple[str, str | None]:
    """Return the prompt with '<token> <class noun>' in it, and a warning's text when it had to be inserted.

    The token goes before the first whole-word class noun ('a dog running' -> 'a S* dog running');
    without one, 'a <token> <class noun>' is put in front of the prompt. `others`: the tokens of the other subjects
    (`read_tokens`); `what`: the prompt's name in the warning.
    """
    if reads_token(prompt, token, others):
        return prompt, None
    noun = re.search(rf"\b{re.escape(class_noun)}\b", prompt, flags=re.IGNORECASE) if class_noun else None
    if noun:
        updated = f"{prompt[: noun.start()]}{token} {prompt[noun.start():]}"
    else:
        updated = " ".join(part for part in ("a", token, class_noun, prompt.strip()) if part)
    note = f"{what} lacks the subject token '{token}': using \"{updated}\""
    bare = re.sub(r"\W", "", token)
    if bare and bare != token and bare in re.findall(r"\w+", prompt):
        note += f"; did you mean {token}?"  # 'a S dog': the shell or a typo dropped the '*'
    return updated, note
