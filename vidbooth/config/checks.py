"""Value checks shared by the config dataclasses: each raises a one-line `UserError` naming the key (and the flag
that sets it, where there is one), so that bad numbers stop a command before it loads a model or writes a file."""

from __future__ import annotations

import math
import re
from pathlib import Path

from vidbooth.errors import UserError
from vidbooth.fileio import expand_user

MAX_SEED = 2**32 - 1
"""Largest seed every seeded library takes (NumPy's legacy seeding, which accelerate's `set_seed` uses)."""
MAX_FRAMES = 1024
"""Frames per video or clip taken at most: text-to-video models are trained on 16-32, and a typo (100000) would
run out of memory, or run for hours inside one layer where Ctrl-C cannot stop it."""
MAX_VIDEOS = 256
"""Videos sampled in one batch (nano: 128 in 56 s and 1.2 GB on 2 CPU cores)."""


BUILTIN_BASES = ("nano", "tiny", "tiny-animatediff")
"""The base names that are no path, even where a folder of that name exists: the packaged nano and two random tiny
models for smoke tests."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""A hub id (org/name): a base or motion adapter so named that is no folder here is fetched."""


def local_base(base: str) -> bool:
    """Whether `base` names a built-in model or a folder or file here: no hub id, of which a revision picks one."""
    return base in BUILTIN_BASES or expand_user(base).exists()


def base_found(base: str, flag: str | None = "--base") -> None:
    """A UserError for a base that is no built-in name, no folder or file here and no hub id: checked with the
    settings, so that a mistyped folder is told at once (it had waited for torch and diffusers to load, 4 s).
    `flag`: the option that gave it (None: a name recorded in a file, which no option replaces)."""
    if local_base(base) or HUB_ID.match(base):
        return
    given = f" ({flag})" if flag else ""
    raise UserError(f"base model not found: {base}{given}: give a diffusers model folder, a hub id like org/name, or "
                    f"a built-in model ({', '.join(sorted(BUILTIN_BASES))})")


def _name(key: str, flag: str | None) -> str:
    return f"{key} ({flag})" if flag else key


def at_least(key: str, value: int | float, minimum: int, flag: str | None = None) -> None:
    """`value` >= `minimum` (NaN fails)."""
    if not value >= minimum:
        raise UserError(f"{_name(key, flag)} must be at least {minimum}, got {value}")


def at_most(key: str, value: int | float, maximum: int, flag: str | None = None, hint: str = "") -> None:
    """`value` <= `maximum`."""
    if value > maximum:
        raise UserError(f"{_name(key, flag)} must be at most {maximum}, got {value}{hint}")


def non_negative(key: str, value: float, flag: str | None = None, hint: str = "") -> None:
    """A finite number >= 0 (NaN and infinity fail)."""
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"{_name(key, flag)} must be a finite number of 0 or more{hint}, got {value}")


def positive(key: str, value: float, flag: str | None = None) -> None:
    """A finite number > 0 (NaN and infinity fail)."""
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{_name(key, flag)} must be a finite positive number, got {value}")


class EmptySetting(UserError):
    """Setting `key` given empty, or with an empty item (`entry`: what an item is, 'path'): told as its flag's (an
    unset shell variable; `told`, where the flag's message is worded otherwise); `load_config` (or `told_as_given`,
    for a check made after it) tells one that a recipe or a --set gave empty as theirs (`where_empty`). `argument`:
    what gives it on the command line instead; given for a setting that is no list, it marks a required one (its
    default is empty, and `told` is said where it is left out), for which leaving the setting out is no fix."""

    def __init__(self, key: str, flag: str | None, what: str, told: str | None = None, entry: str | None = None,
                 argument: str | None = None):
        self.key, self.what, self.entry, self.argument = key, what, entry, argument
        super().__init__(told or f"{_name(key, flag)} is empty (an unset shell variable?): give {what}, or leave it "
                         "out")

    def where_empty(self, where: tuple[str, str] | None, recipe: Path | None) -> str:
        """The message for the empty value that `where` (`given_by`: a flag, a --set, a recipe) gave."""
        kind = where[0] if where else "flag"
        if kind not in ("set", "recipe"):
            return str(self)
        given = where[1] if kind == "set" else f"recipe {recipe}: {self.key}"
        if kind == "set" and where[1].removeprefix("--set ").partition("=")[0].strip() != self.key:
            given += f": {self.key}"  # a section given whole (`--set runtime={device: ''}`): the key named too
        if self.entry:
            instead = f", or give {self.argument} on the command line" if self.argument else ""
            return f"{given} holds an empty {self.entry}: write {self.what} there or remove it{instead}"
        if self.argument:  # a required setting: left out, it is refused too
            return f"{given} is empty: write {self.what} there, or give {self.argument} on the command line"
        return f"{given} is empty: give {self.what}, or leave the setting out"


def not_empty(key: str, value: str | None, flag: str | None, what: str, told: str | None = None) -> None:
    """A setting that is either left out (None) or names something: an empty one (an unset shell variable, as in
    `--motion "$MOTION"`) had been taken as left out, and the command done without it."""
    if value is not None and not value.strip():
        raise EmptySetting(key, flag, what, told)


def no_empty_entries(key: str, values: list[str], entry: str, what: str, told: str,
                     argument: str | None = None) -> None:
    """Each item of the list setting `key` names something: an empty one (`"$VIDEO"` unset, `videos: [""]`) had
    been the current folder, a traceback, or left out without a word. `told`: the message where a flag or
    argument gave it."""
    if any(isinstance(value, str) and not value.strip() for value in values):
        raise EmptySetting(key, None, what, told, entry, argument)


def seed(key: str, value: int, flag: str | None = "--seed") -> None:
    """A seed every library takes: 0 to 2**32 - 1."""
    if not 0 <= value <= MAX_SEED:
        raise UserError(f"{_name(key, flag)} must be a whole number from 0 to {MAX_SEED}, got {value}")


def sampling(prefix: str, num_frames: int | None, num_inference_steps: int, guidance_scale: float) -> None:
    """The sampling settings of a preview or of class-image generation."""
    if num_frames is not None:
        at_least(f"{prefix}.num_frames", num_frames, 1)
    at_least(f"{prefix}.num_inference_steps", num_inference_steps, 1)
    non_negative(f"{prefix}.guidance_scale", guidance_scale, hint=" (1 or less: no guidance)")


SCHEDULERS = ("ddim", "dpm++")
_SCHEDULER_ALIASES = {"dpmsolver++": "dpm++", "dpm-solver++": "dpm++", "dpmpp": "dpm++"}


def scheduler_key(name: str) -> str:
    """'ddim' or 'dpm++' for a scheduler name as given (any case, DPM-Solver++'s other spellings); a UserError for
    any other, before anything loads."""
    key = _SCHEDULER_ALIASES.get(name.lower(), name.lower())
    if key not in SCHEDULERS:
        raise UserError(f"unknown scheduler '{name}': choose one of {', '.join(SCHEDULERS)}")
    return key
