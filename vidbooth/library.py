"""The vidbooth library: learned subjects and motions on disk, written atomically.

Layout (`$VIDBOOTH_HOME`, default `~/.local/share/vidbooth`, or `--home`):

    subjects/<dir>/   manifest.json, adapter files (safetensors), photos/, preview.png
    motions/<dir>/    manifest.json, adapter files (safetensors), clips/, preview.png
    .staging/         artifacts being written (never read as artifacts)
    .trash/           the previous version while an --overwrite swap is in flight
    .locks/           one lock file per artifact being trained
    .runs/            training checkpoints (`engine.train.run_folder`), kept while a stopped run may --resume

`<dir>` is the artifact name with every character outside [A-Za-z0-9_.-] percent-encoded ('S*' -> 'S%2A').
An artifact appears only when complete: it is written under `.staging/` and renamed into place. An
interrupted swap (SIGKILL between moving the old version aside and renaming the new one in) is rolled
back to the old version the next time the library is opened.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from vidbooth.config.checks import BUILTIN_BASES
from vidbooth.errors import DiskFull, Interrupted, UserError, held_stops, stopped, stopping_signal, unread_byte
from vidbooth.fileio import (
    absolute_path, disk_full, exclusive_lock, expand_user, refuse_if_held, sync_folder, sync_tree,
)

KINDS = {"subject": "subjects", "motion": "motions"}
TRAINED_BY = {"subject": ("train-subject", "PHOTOS --class-noun NOUN"), "motion": ("train-motion", "CLIP")}
"""The command that learns an artifact of each kind, and what else it needs besides --name, as messages show it."""
MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_NAME = re.compile(r"[\w*+@.\-]{1,64}")
"""A whole name (`fullmatch`: `$` would also accept a name ending in a newline)."""
_SAFE = re.compile(r"[A-Za-z0-9_.\-]")
MAX_DIR_NAME = 180
"""Longest encoded name: with the prefixes and suffixes of lock, staging and swap entries it stays within the
255 bytes a file name may have."""


def library_home() -> Path:
    """The library folder, absolute: a relative $VIDBOOTH_HOME or --home is taken from the working folder, and said
    (and listed) as the folder it is."""
    env = os.environ.get("VIDBOOTH_HOME")
    if env:
        return expand_user(env).absolute()
    data = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(data):  # the XDG spec: a relative (or empty) value is ignored
        data = str(Path.home() / ".local" / "share")
    return Path(data) / "vidbooth"


def _folder_home() -> Path:
    """The library folder; a UserError when something other than a folder is at that path."""
    home = library_home()
    if home.exists() and not home.is_dir():
        raise UserError(f"the library {home} is a file, not a folder: choose another with --home or $VIDBOOTH_HOME")
    return home


def validate_name(name: str, kind: str = "subject") -> str:
    if not _NAME.fullmatch(name or "") or name.startswith("."):
        shown = f"'{name}'" if (name or "").isprintable() else repr(name)  # escaped, so that a line break shows as \n
        raise UserError(
            f"invalid {kind} name {shown}: {_why_refused(name or '')}; use 1-64 letters, digits and _ - . * + @ (no "
            f"spaces, line breaks or / \\ : ? \" < > |)"
        )
    if len(dir_name(name)) > MAX_DIR_NAME:
        raise UserError(
            f"{kind} name '{name}' is too long as a folder name ({len(dir_name(name))} characters once its non-ASCII "
            f"letters are encoded, at most {MAX_DIR_NAME}): use a shorter name"
        )
    return name


def _why_refused(name: str) -> str:
    """What makes `name` no valid name, in words: its first character that no name may hold (by its Unicode name, a
    combining accent with how to type it), or its length, or its leading dot."""
    import unicodedata

    refused = next((c for c in name if not _NAME.fullmatch(c)), None)
    if refused is not None:
        code = f"U+{ord(refused):04X}"
        if refused in "\r\n":
            return "a line break is not allowed"
        if unread_byte(refused):
            return "it holds bytes that are not text in this terminal's encoding (type it under LANG=C.UTF-8)"
        if not refused.isprintable():
            return f"a control character ({code}) is not allowed"
        what = unicodedata.name(refused, code).lower()
        if unicodedata.combining(refused):  # as in a name pasted from macOS, whose é is e + U+0301
            return f"it holds a {what} ({code}): type the accented letter as one character"
        return f"'{refused}' ({what}) is not allowed"
    if not name:
        return "it is empty"
    return f"it has {len(name)} characters" if len(name) > 64 else "it starts with '.'"


def dir_name(name: str) -> str:
    return "".join(c if _SAFE.match(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def runs_folder(kind: str, name: str, home: Path | None = None) -> Path:
    """Where the trainings of artifact `name` keep their checkpoints while a stopped one may --resume, a folder per
    stage (`engine.train.run_folder`)."""
    return (home or _folder_home()) / ".runs" / KINDS[kind] / dir_name(name)


def _kind_root(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    return _folder_home() / KINDS[kind]


def known_names(kind: str) -> list[str]:
    return sorted(m["name"] for m in list_artifacts(kind))


def names_at_rest(kind: str) -> list[str]:
    """The names of the artifacts of `kind` as they lie in the library, read only: nothing rolled back or removed (as
    `list_artifacts` does), nothing said of what cannot be read; none when the library cannot be read. For hints."""
    names = []
    with contextlib.suppress(OSError):
        for path in sorted((library_home() / KINDS[kind]).iterdir()):
            with contextlib.suppress(OSError, UserError):
                if path.is_dir() and not path.name.startswith("."):
                    names.append(read_manifest(path, verify=False)["name"])
    return names


def named_artifacts(subjects: list[str] | None, motion: str | None) -> list[tuple[str, str]]:
    """(kind, name) of each subject, once each and in order, then of the motion: what generate names."""
    return [("subject", name) for name in dict.fromkeys(subjects or [])] + ([("motion", motion)] if motion else [])


def artifact_dir(kind: str, name: str, must_exist: bool = True) -> Path:
    """The folder of artifact `name`; with must_exist, a UserError listing the known names if it is absent."""
    validate_name(name, kind)
    recover()
    path = _kind_root(kind) / dir_name(name)
    if must_exist and not (path / MANIFEST).is_file():
        if what := _in_the_way(path):
            raise UserError(
                f"{path} is {what}, not a vidbooth {kind}: move it out of {path.parent}, then train '{name}'"
            )
        if renamed := _folder_holding(kind, name):
            first = f"remove the empty folder {path}, then " if path.is_dir() else ""
            raise UserError(f"{kind} '{name}' is in {renamed}, a folder renamed by hand: {first}rename it back to "
                            f"{path.name}")
        known = known_names(kind)
        hint = f"known {KINDS[kind]}: {', '.join(known)}" if known else \
            f"no {KINDS[kind]} yet: learn one with vidbooth {' '.join(TRAINED_BY[kind])} --name {shlex.quote(name)}"
        others = [other for other in KINDS
                  if other != kind and (_kind_root(other) / dir_name(name) / MANIFEST).is_file()]
        if others:
            hint += f"; '{name}' is a {others[0]}"
        if any(runs_folder(kind, name).glob("*/checkpoints/step-*")):
            hint += f"; a stopped training of {kind} '{name}' can be finished: rerun it with --resume"
        raise UserError(f"unknown {kind} '{name}' in {library_home()} ({hint})")
    return path


def _folder_holding(kind: str, name: str) -> Path | None:
    """The folder of `kind` whose manifest names `name`, though the folder has another name."""
    root = _kind_root(kind)
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if not folder.name.startswith(".") and json.loads((folder / MANIFEST).read_text()).get("name") == name:
                return folder
    return None


PHOTOS_DIR = "photos"
"""In a subject's folder: copies of the photos it was learned from (identity-adapter's default, evaluate's
references)."""
CLIPS_DIR = "clips"
"""In a motion's folder: copies of the clips it was learned from (evaluate's references)."""

REQUIRED_KEYS = {
    "subject": (("base", "base_fingerprint", "class_noun", "num_vectors"),
                ("embeddings", "identity_adapter", "config")),
    "motion": (("base", "base_fingerprint", "class_noun"), ("motion_adapter", "config")),
}
"""What the engine reads of each kind's manifest: (its keys, the keys of its "paths")."""


def read_manifest(path: Path, verify: bool = True) -> dict:
    """The artifact's manifest, validated; with `verify` (for an artifact about to be used), it must hold every key
    the engine reads (`REQUIRED_KEYS`), and every tensor file must match its recorded sha256."""
    where = path / MANIFEST
    if not where.exists():
        raise UserError(f"{path} has no {MANIFEST}, so it is no complete vidbooth artifact: move it out of "
                        f"{path.parent} (or delete it), then train it again")
    try:
        manifest = json.loads(where.read_text(), parse_constant=_not_json)
    except (OSError, ValueError) as exc:
        raise UserError(f"manifest {where} cannot be read or is not valid JSON (damaged): {redo(path)}") from exc
    if not isinstance(manifest, dict) or not {"name", "kind", "schema_version", "files"} <= manifest.keys():
        raise UserError(f"manifest {where} lacks name/kind/schema_version/files (damaged): {redo(path)}")
    if not all(isinstance(manifest[key], str) and manifest[key] for key in ("name", "kind")):
        raise UserError(f"manifest {where} has no text name or kind (damaged): {redo(path)}")
    expected = next((kind for kind, folder in KINDS.items() if path.parent.name == folder), manifest["kind"])
    if manifest["kind"] != expected:  # a subject copied among the motions was listed, and loaded, as one
        raise UserError(
            f"{path} holds {manifest['kind']} '{manifest['name']}', not a {expected}: move it to "
            f"{path.parent.parent / KINDS.get(manifest['kind'], manifest['kind'] + 's')}"
        )
    if dir_name(manifest["name"]) != path.name:
        raise UserError(
            f"{path} holds {manifest['kind']} '{manifest['name']}', whose folder is named {dir_name(manifest['name'])}: "
            f"rename the folder back, or retrain it under the new name"
        )
    version = manifest["schema_version"]
    if not _count(version):
        raise UserError(f"manifest {where}: schema_version is {_as_written(version)}, not a whole number of at least "
                        f"1 (damaged, or edited by hand): {redo(path)}")
    if version > SCHEMA_VERSION:
        raise UserError(f"{where} has schema version {version}, newer than this vidbooth understands: upgrade vidbooth")
    _check_paths(path, where, manifest)
    if verify:
        _verify_files(path, manifest["files"])
        _check_keys(where, manifest)
    return manifest


def _not_json(constant: str) -> object:
    """NaN and Infinity, which Python's json reads but JSON has not: `list --json` printed them back as they were."""
    raise ValueError(f"{constant} is not JSON")


def redo(path: Path) -> str:
    """What to do about the damaged artifact in folder `path`: retrain it (its kind and name read from where it is),
    or delete it."""
    kind = next((kind for kind, folder in KINDS.items() if path.parent.name == folder), None)
    if kind is None:
        return f"retrain it with --overwrite, or delete {path}"
    name = shlex.quote(urllib.parse.unquote(path.name))
    return f"retrain it (vidbooth {TRAINED_BY[kind][0]} ... --name {name} --overwrite), or delete {path}"


def _as_written(value: object) -> str:
    """A manifest value as its JSON spells it (5, "1", null, true), cut to 40 characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


VALUE_TYPES = (  # (key, kinds it applies to, test, what it must be); optional keys are tested where present
    ("base", KINDS, _text, "text"),
    ("base_fingerprint", KINDS, _text, "text"),
    ("image_fingerprint", KINDS, lambda value: value is None or _text(value), "text or null"),
    ("class_noun", ("subject",), _text, "text"),
    ("class_noun", ("motion",), lambda value: value is None or isinstance(value, str), "text or null"),
    ("num_vectors", ("subject",), _count, "a whole number of at least 1"),
    ("token", ("subject",), _text, "text"),
    ("tokens", ("subject",), lambda value: isinstance(value, list) and all(map(_text, value)), "a list of texts"),
    ("stages", ("subject",), lambda value: isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()),
     "a mapping of stage to mapping"),
)
"""What the engine takes each manifest value it reads to be (a motion's class_noun may be null: it learns without)."""


def _check_keys(where: Path, manifest: dict) -> None:
    """A UserError for a manifest without a key that the engine reads, or with one of another type (else a KeyError
    or TypeError where it is used)."""
    keys, paths = REQUIRED_KEYS.get(manifest["kind"], ((), ()))
    missing = [key for key in keys if key not in manifest]
    recorded = manifest.get("paths")
    missing += [f"paths.{key}" for key in paths if not (isinstance(recorded, dict) and key in recorded)]
    if missing:
        raise UserError(f"manifest {where} lacks {', '.join(missing)} (damaged, or edited by hand): "
                        f"{redo(where.parent)}")
    for key, kinds, test, what in VALUE_TYPES:
        if manifest["kind"] in kinds and key in manifest and not test(manifest[key]):
            raise UserError(f"manifest {where}: {key} is {_as_written(manifest[key])}, not {what} (damaged, or "
                            f"edited by hand): {redo(where.parent)}")


TENSOR_PATHS = ("embeddings", "identity_adapter", "motion_adapter")
"""The keys of a manifest's `paths` whose files are loaded as tensors: each must be a hashed file (`files`)."""


def _check_paths(folder: Path, where: Path, manifest: dict) -> None:
    """A UserError for a file the manifest names (`paths`) that is not one of the artifact's own: an absolute path,
    one through `..` or a link out of its folder (a shared artifact could make it load a file no hash covers), or a
    tensor file its hashes (`files`) leave out."""
    recorded = manifest.get("paths") if isinstance(manifest.get("paths"), dict) else {}
    hashed = manifest["files"] if isinstance(manifest["files"], dict) else {}
    for key, named in recorded.items():
        if named is None:
            continue
        for rel in named if isinstance(named, list) else [named]:  # a list: the clips
            if not _own_file(folder, rel) or (key in TENSOR_PATHS and rel not in hashed):
                raise UserError(f"manifest {where}: paths.{key} names {str(rel)[:80]!r}, not a file of the artifact "
                                f"(edited by hand, or not made by vidbooth): {redo(folder)}")


def _own_file(folder: Path, rel: object) -> bool:
    """Whether `rel` names a file inside `folder`, by its name and, where it is there, by where links lead."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or Path(rel).drive:
        return False
    if any(part in ("..", "") for part in rel.replace("\\", "/").split("/")):
        return False
    return not os.path.lexists(folder / rel) or (folder / rel).resolve().is_relative_to(folder.resolve())


def _verify_files(path: Path, recorded: dict) -> None:
    present = {str(p.relative_to(path)) for p in path.rglob("*.safetensors")}
    if not isinstance(recorded, dict) or present != set(recorded):
        raise UserError(f"artifact {path} does not match its manifest (tensor files added or removed): {redo(path)}")
    for rel, digest in recorded.items():
        if sha256_file(path / rel) != digest:
            raise UserError(f"artifact {path}: {rel} does not match its manifest hash (modified or damaged): "
                            f"{redo(path)}")


def learned_on(manifest: dict, fingerprint: str, image_fingerprint: str | None) -> bool:
    """Whether an artifact (its manifest) fits the loaded base: the same model, or for a subject the same image model
    with or without a motion module (AnimateDiff: personalise the image model, then animate it with any)."""
    if manifest.get("base_fingerprint") == fingerprint:
        return True
    return manifest.get("kind") == "subject" and image_fingerprint is not None and (
        manifest.get("image_fingerprint") == image_fingerprint)


def check_base(kind: str, name: str, manifest: dict, base: str, fingerprint: str,
               image_fingerprint: str | None = None) -> None:
    """A UserError when artifact `name` was learned on another base model than the one loaded (`learned_on`)."""
    if learned_on(manifest, fingerprint, image_fingerprint):
        return
    learned = manifest.get("base")
    fix = f"use --base {shlex.quote(str(learned))}"
    if str(learned) == absolute_path(str(base), BUILTIN_BASES):  # the same model (a folder as recorded: absolute),
        # other weights: say how it was loaded when it was learned
        config = manifest.get("config")
        backbone = config.get("backbone") if isinstance(config, dict) else None
        backbone = backbone if isinstance(backbone, dict) else {}
        flags = {"motion_adapter": "--motion-adapter ", "revision": "--set backbone.revision=",
                 "variant": "--set backbone.variant="}
        given = [f"{flag}{shlex.quote(str(backbone[key]))}" for key, flag in flags.items() if backbone.get(key)]
        fix = (f"load it as it was learned with ({' '.join(given)})" if given
               else "the model's weights have changed since it was learned (another download or revision)")
    raise UserError(
        f"{kind} '{name}' was learned on {learned} (fingerprint {manifest.get('base_fingerprint')}), not on {base} "
        f"as loaded now (fingerprint {fingerprint}): {fix}, or retrain it on this base"
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _seal(stage: Path) -> None:
    """Record the schema version and every tensor file's sha256 in the staged manifest."""
    manifest = json.loads((stage / MANIFEST).read_text())
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["files"] = {str(p.relative_to(stage)): sha256_file(p) for p in sorted(stage.rglob("*.safetensors"))}
    write_json(stage / MANIFEST, manifest)


def list_artifacts(kind: str, problems: list[str] | None = None) -> list[dict]:
    """The manifests of the artifacts of `kind`; one that cannot be read is left out, and why is appended to
    `problems` when it is given. A swap that a killed run left half done is rolled back first, so that its
    artifact is listed."""
    recover()
    root = _kind_root(kind)
    if not root.is_dir():
        if root.exists() and problems is not None:
            problems.append(f"{root} is a file, not the folder of the {KINDS[kind]}: move it out of the library")
        return []
    out = []
    for path in sorted(root.iterdir()):
        try:
            if not path.is_dir() or path.name.startswith("."):
                continue
            if not (path / MANIFEST).is_file():
                raise UserError(f"{path} has no {MANIFEST}: it is not a vidbooth {kind}; move it out of {root}")
            out.append(read_manifest(path, verify=False) | {"path": str(path)})
        except UserError as exc:
            if problems is not None:
                problems.append(str(exc))
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


FOREIGN_WRITER_SECONDS = 3600
"""How long a staging or swap entry written from another machine (a library shared over the network) is left
alone: its writer's pid means nothing here, and saving an artifact takes seconds."""


@functools.cache
def _host_tag() -> str:
    """This machine (and boot) in the names of staging and swap entries, so that another machine sharing the
    library never judges them by a pid of its own."""
    import socket

    boot = Path("/proc/sys/kernel/random/boot_id")
    boot_id = boot.read_text().strip() if boot.is_file() else ""
    return hashlib.sha256(f"{socket.gethostname()}/{boot_id}".encode()).hexdigest()[:8]


def _writer(field: str, entry: Path) -> tuple[bool, bool]:
    """(may still be writing, is this process) for a staging or swap entry whose name holds `field`:
    '<host>-<pid>', or '<pid>' as written before host tags."""
    host, _, pid = field.rpartition("-")
    if not pid.isdigit():
        return False, False
    if host and host != _host_tag():
        try:
            status = entry.stat()  # ctime: a rename into .trash/ changes it, not the moved folder's mtime
        except FileNotFoundError:
            return False, False
        return time.time() - max(status.st_mtime, status.st_ctime) < FOREIGN_WRITER_SECONDS, False
    return _pid_alive(int(pid)), int(pid) == os.getpid()


def recover() -> None:
    """Roll back swaps interrupted mid-way and drop staging folders of dead processes."""
    home = _folder_home()
    for entry in _entries(home / ".trash"):
        kind_dir, _, rest = entry.name.partition("__")
        target_name, writer, _ = (rest.rsplit(".", 2) + ["", ""])[:3]  # '<dir>.<host>-<pid>.<hex>'
        if kind_dir not in KINDS.values() or not (target_name and writer):
            continue  # not set aside by vidbooth (a Finder's .DS_Store): it had been moved to the library's top
        alive, is_self = _writer(writer, entry)
        if alive and not is_self:
            continue  # its swap is in flight: leave it to that process
        live = home / kind_dir / target_name
        if live.exists():
            shutil.rmtree(entry, ignore_errors=True)
            continue
        with contextlib.suppress(OSError):  # a library this process may not write: left for one that may
            live.parent.mkdir(parents=True, exist_ok=True)
            os.replace(entry, live)
    for entry in _entries(home / ".staging"):
        writer = entry.name.rsplit(".", 2)[-2] if entry.name.count(".") >= 2 else ""
        if not _writer(writer, entry)[0]:
            shutil.rmtree(entry, ignore_errors=True)


def _into_folder(action, folder: Path) -> None:
    """`action()`, a mkdir or rename into `folder`, making `folder` (again) if it is not there: a run that made a
    new library removes the library's empty folders when it ends, maybe while another run saves into them."""
    try:
        action()
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        action()


def _entries(folder: Path) -> list[Path]:
    """What `folder` holds; nothing when it is absent or goes while it is listed (a run that made a new library
    removes its empty `.staging` and `.trash` when it ends, while another process, the other rank of an
    `accelerate launch` say, may be recovering)."""
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


@contextlib.contextmanager
def artifact_lock(kind: str, name: str) -> Iterator[Path]:
    """Exclusive lock on training `name` (`fileio.exclusive_lock` on a file under `.locks/`). The library's own
    folders that were not there when it began are removed again at the end when they are empty, so that a run
    refused (or stopped) before it saved anything leaves a library as it found it (absent, if it was), and a
    finished one no empty `.runs/<kind>/` or `.staging/` beside its artifact."""
    home = _folder_home()
    runs = runs_folder(kind, name, home)
    own = [home / ".locks", home / ".staging", home / ".trash", home / KINDS[kind], runs, *runs.parents[:2], home]
    absent = [folder for folder in own if not folder.exists()]  # whichever of these the run makes, it may remove
    locks = writable_home() / ".locks"

    try:
        with exclusive_lock(locks / _lock_name(kind, name), _training_elsewhere(kind, name)) as lock:
            yield lock
    finally:
        for folder in absent:  # those left empty (one with a checkpoint or an artifact in it is kept)
            with contextlib.suppress(OSError):  # not empty (or gone): kept
                folder.rmdir()


def refuse_if_being_trained(kind: str, name: str) -> None:
    """`artifact_lock`'s refusal, told before the checks of a stopped run's checkpoints: another process training
    `name` now had been taken for a stopped run ('rerun with --resume'). On the first process only: under a launcher
    the others run this while the first may already hold the lock."""
    from vidbooth.reporting import first_process

    if first_process():
        refuse_if_held(_folder_home() / ".locks" / _lock_name(kind, name), _training_elsewhere(kind, name))


def _lock_name(kind: str, name: str) -> str:
    return f"{KINDS[kind]}__{dir_name(name)}.lock"


def _training_elsewhere(kind: str, name: str) -> Callable[[str], str]:
    return lambda owner: f"{kind} '{name}' is being trained by another process (pid {owner}); wait for it to finish"


def writable_home(create: bool = True) -> Path:
    """The library folder, created if needed; a UserError if it cannot be written. With `create` False a folder
    that does not exist yet is left uncreated, its nearest existing parent checked instead (for checks that run
    before anything is written)."""
    home = _folder_home()
    if not create and not home.exists():
        parent = next(folder for folder in home.parents if folder.exists())
        if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
            raise UserError(
                f"cannot write to the library {home} (cannot create it in {parent}): choose another with --home"
            )
        return home
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the library {home} ({exc.strerror}): choose another with --home") from exc
    return home


def _is_artifact(path: Path) -> bool:
    """Whether `path` is an artifact's own folder (damaged or not), which --overwrite may replace: a folder, not a
    link, holding a manifest.json file."""
    return not path.is_symlink() and (path / MANIFEST).is_file()


def _other_name_at(path: Path) -> str | None:
    """The folder of another name that `path` reaches on a file system that does not tell letter case apart (macOS
    and Windows by default: `s*` reaches `S%2A`), whose --overwrite would replace that artifact; else None."""
    if not path.exists():
        return None
    entries = os.listdir(path.parent)
    if path.name in entries:
        return None
    return next((entry for entry in entries if os.path.samefile(path.parent / entry, path)), None)


def _in_the_way(path: Path) -> str | None:
    """What is at artifact folder `path` when it is something vidbooth must not replace (a file, a link, a folder
    holding things but no manifest, such as one made by hand); None when `path` is free, an empty folder, or an
    artifact (damaged or not: --overwrite replaces it)."""
    if path.is_symlink():
        return "a link"
    if not path.exists():
        return None
    if not path.is_dir():
        return "a file"
    if _is_artifact(path):
        return None
    try:
        empty = not any(path.iterdir())
    except OSError:
        return "a folder vidbooth cannot read"
    return None if empty else f"a folder without {MANIFEST}"


def _check_writable(home: Path, folders: list[Path]) -> None:
    """A UserError naming the first of the library's `folders` that is a file (made by hand, say), or a folder that
    this process may not write in; those that do not exist yet are fine, and so is a link to a folder."""
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise UserError(
                f"{folder} is a file where the library {home} keeps a folder: move it out of {folder.parent}, or "
                "choose another library with --home"
            )
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(
                f"cannot write to {folder} in the library {home}: make it writable for you, or choose another "
                "library with --home"
            )


NEVER_DELETED = "vidbooth never deletes what is not an artifact (not even with --overwrite)"


def check_free(kind: str, name: str, overwrite: bool) -> Path:
    """Refuse early (before any training) when the library, or a folder of it that training `name` writes in, is a
    file or is not writable, something that is not an artifact is at `name`'s folder, or `name` exists without
    --overwrite; creates nothing (an existing library gets a probe file, removed at once)."""
    home = writable_home(create=False)
    path = artifact_dir(kind, name, must_exist=False)
    runs = runs_folder(kind, name, home)
    stages = [folder for folder in runs.iterdir() if folder.is_dir()] if runs.is_dir() else []  # of a stopped run
    _check_writable(home, [path.parent, home / ".locks", home / ".staging", home / ".trash", *runs.parents[:2], runs,
                           *stages])
    _check_one_file_system(home, [path.parent, home / ".staging", home / ".trash"], kind)
    if other := _other_name_at(path):
        raise UserError(
            f"{kind} '{name}' would be saved in {path.parent / other}, another name's folder: this file system does "
            "not tell names apart by letter case, so choose a name that differs in more than case"
        )
    if what := _in_the_way(path):
        raise UserError(
            f"{path} is in the way of {kind} '{name}': it is {what}, not a vidbooth {kind}, and {NEVER_DELETED}; "
            f"move it out of {path.parent}, then run the command again"
        )
    if _is_artifact(path) and not overwrite:
        raise UserError(f"{kind} '{name}' already exists in {library_home()}: pass --overwrite to replace it")
    if _is_artifact(path):
        _check_writable(home, [path])  # --overwrite moves it to .trash/, which rewrites its '..'
    return path


def _check_one_file_system(home: Path, folders: list[Path], kind: str) -> None:
    """A trained artifact is renamed from .staging/ into its kind's folder (and an old one to .trash/): a link that
    puts one of them on another disk made the rename fail after training. Refused before it."""
    devices = {folder: os.stat(folder).st_dev for folder in (home, *folders) if folder.is_dir()}
    apart = [folder for folder, device in devices.items() if device != devices.get(home)]
    if apart:
        raise UserError(
            f"{apart[0]} is on another file system than the library {home}, so a trained {kind} could not be moved "
            "into it: keep the library's folders on one disk (link the whole library instead, or use --home)"
        )


@contextlib.contextmanager
def staged_artifact(kind: str, name: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on normal exit it atomically becomes the artifact `name`.

    The staging folder must end up holding a manifest. On any exception it is removed and the library
    is unchanged. What `check_free` refused before training is refused again, before the block (the preview) and
    before the rename, with messages that keep the training: rerun with --resume.
    """
    target = artifact_dir(kind, name, must_exist=False)
    home = library_home()
    token = f"{_host_tag()}-{os.getpid()}.{uuid.uuid4().hex[:8]}"
    stage = home / ".staging" / f"{dir_name(name)}.{token}"
    aside = None  # where the old version waits during an --overwrite swap
    saved = False
    unsaved = f"{kind} '{name}' was not saved (the library is unchanged)"
    done = f"{kind} '{name}' is saved in {target}"
    resume = "then rerun the same command with --resume to save what was trained"

    def refuse_what_appeared() -> None:
        if what := _in_the_way(target):
            raise UserError(
                f"{unsaved}: {target} is in the way of {kind} '{name}': it is {what}, not a vidbooth {kind}, and "
                f"{NEVER_DELETED}; move it out of {target.parent}, {resume}"
            )
        if _is_artifact(target) and not overwrite:
            raise UserError(
                f"{unsaved}: a {kind} of that name appeared in the library while training; rerun the same command "
                "with --resume --overwrite to replace it with what was trained"
            )

    try:
        refuse_what_appeared()  # before the preview renders
        _into_folder(stage.mkdir, stage.parent)
        yield stage
        if not (stage / MANIFEST).is_file():
            raise RuntimeError("an artifact must be written with its manifest")
        _seal(stage)
        sync_tree(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        refuse_what_appeared()  # only an artifact is ever replaced
        if target.is_dir() and not _is_artifact(target):
            with contextlib.suppress(OSError):
                target.rmdir()  # an empty folder holds nothing to lose (rmdir fails if anything is put in it)
        if target.exists():
            if not overwrite:
                raise UserError(f"{unsaved}: {target} appeared while it was being saved; move it out of "
                                f"{target.parent}, {resume}")
            aside = home / ".trash" / f"{KINDS[kind]}__{target.name}.{token}"
            _into_folder(lambda: os.replace(target, aside), aside.parent)
            if not _is_artifact(aside):  # replaced by something else since the check above: keep it
                os.replace(aside, target)
                raise UserError(
                    f"{unsaved}: {target} changed while it was being saved and is no vidbooth {kind} now, and "
                    f"{NEVER_DELETED}; move it out of {target.parent}, {resume}"
                )
        with held_stops(done):  # the rename and its record are one step
            # a folder that appeared since is never replaced: rename refuses a full one
            _into_folder(lambda: os.replace(stage, target), target.parent)
            saved = True
        sync_folder(target.parent)
    except OSError as exc:
        if disk_full(exc):
            raise DiskFull(
                f"the disk is full: {unsaved}; free space in {home} and run the same command with --resume", home
            ) from exc
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR) and not saved:
            raise UserError(
                f"{unsaved}: {target} appeared while it was being saved; move it out of {target.parent}, {resume}"
            ) from exc
        if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            raise UserError(
                f"{unsaved}: {exc.strerror} ({exc.filename or home}); make the library writable for you, {resume}"
            ) from exc
        if not saved and (runs := runs_folder(kind, name, home)).is_dir():  # an I/O error, too many open files...:
            exc.kept_checkpoint = str(runs)  # the command line says to go on from it, not 'run it again' (refused)
        raise
    except (KeyboardInterrupt, Interrupted) as exc:
        if saved:  # held by the rename: its message says the artifact is saved
            raise
        stopped_by = stopping_signal(exc)
        raise stopped(
            stopped_by,
            f"stopped by {stopped_by.name} while saving: {unsaved}; the training is kept: rerun the same command "
            "with --resume to save it",
        ) from exc
    finally:
        with held_stops(done) if saved else contextlib.nullcontext():  # a saved artifact's tidying-up is finished
            if aside is not None and aside.exists():
                if saved:
                    shutil.rmtree(aside, ignore_errors=True)
                elif not target.exists():  # stopped between moving the old version aside and renaming the new in
                    os.replace(aside, target)  # put it back (what appeared there meanwhile, `recover` judges later)
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
