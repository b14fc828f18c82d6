"""Writing files and folders atomically: each is written to a temporary file or folder beside it, flushed to the
disk, then renamed over its final name with the permissions a new one would get."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from vidbooth.errors import UserError, deferred_stops

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` as a safetensors file through Python's file I/O, so that a full disk raises `OSError`
    (ENOSPC) like every other write: safetensors' own writer reports it as a `SafetensorError` with no errno."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    header, size = _sorted_metadata(data)
    with open(path, "wb") as file:
        file.write(header)
        file.write(memoryview(data)[8 + size :])  # the tensors' bytes as the writer made them, not a copy of them:
        # slicing and joining them had held three copies at once (+2.2 GB saving a real-size motion's checkpoint)


def _sorted_metadata(data: bytes) -> tuple[bytes, int]:
    """The header of a safetensors file's bytes with its metadata in key order (the writer orders them at random, so
    two identical trainings wrote different bytes and fingerprints), and the size of the header it replaces. Tensor
    entries stay as written, and the data after the header is unchanged."""
    import json

    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])  # a copy of the header alone
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as the writer keeps it
    return len(text).to_bytes(8, "little") + text, size


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def with_usual_modes(folder: Path) -> None:
    """Give the files under `folder` 0666 and its folders 0777, minus the umask, as for any file the user creates:
    safetensors' writer (inside diffusers' and transformers' `save_pretrained`) makes its files 0600, which the other
    users of a shared cache or model folder cannot read."""
    mask = current_umask()
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def publish(temporary: str | Path, path: str | Path) -> None:
    """Rename `temporary` over `path` atomically. `tempfile.mkstemp` creates files readable by their owner only
    (0600); the published file gets the usual 0666 minus the umask, like any file the user creates."""
    os.chmod(temporary, 0o666 & ~current_umask())
    os.replace(temporary, path)


_CANNOT_FLUSH = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
"""What fsync raises on file systems that do not flush (some network, FUSE and virtual-machine shared folders):
there a write is left to the system, as it was before vidbooth flushed."""


_FULL_FSYNC = getattr(fcntl, "F_FULLFSYNC", None)
"""macOS's full flush: its fsync leaves the data in the drive's own cache, which a power loss empties."""


def _flush(fd: int) -> None:
    """fsync, or on macOS F_FULLFSYNC (where a file system lacks it, such as some network ones, fsync)."""
    if _FULL_FSYNC is not None:
        try:
            fcntl.fcntl(fd, _FULL_FSYNC)
            return
        except OSError:
            pass
    os.fsync(fd)


def sync_file(path: str | Path) -> None:
    """Ask the system to put the file's data on the disk (fsync), so that a rename published after it does not
    name an empty or partly written file after a power loss (file systems may write a rename before the data it
    names). Windows flushes only a file opened for writing (a read-only one is left to the system there)."""
    try:
        fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    except PermissionError:
        if os.name == "nt":
            return
        raise
    try:
        _flush(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_FLUSH:
            raise
    finally:
        os.close(fd)


def sync_folder(folder: str | Path) -> None:
    """Flush a folder's entries (renames, new names) to the disk. Windows cannot open a folder, and some file
    systems refuse to flush one: there it is left to the system."""
    if os.name == "nt":
        return
    with suppress(OSError):
        sync_file(folder)


def sync_tree(folder: Path) -> None:
    """Flush every regular file and folder under `folder`, and `folder` itself: a built folder before it is renamed
    in. Links and special files (a FIFO, whose opening would wait for a writer) are left alone."""
    for root, _, files in os.walk(folder):
        for name in files:
            if stat.S_ISREG(os.lstat(os.path.join(root, name)).st_mode):
                sync_file(os.path.join(root, name))
        sync_folder(root)


STALE_TEMPORARY_S = 3600
"""A temporary file or folder older than this was left by a killed run (a running one publishes each well within
it): the next write beside it removes it."""


def remove_stale_temporaries(folder: Path, pattern: str = ".tmp-*", older_than_s: float = STALE_TEMPORARY_S,
                             by_ctime: bool = False, files_only: bool = False) -> None:
    """Remove what a killed run (SIGKILL, power loss) left of its temporary files and folders in `folder`: the
    names matching `pattern` not touched for `older_than_s` seconds (0: all of them, for a folder no other run
    writes in). `by_ctime`: age by the inode's change time, which making a hard link sets (its modification time
    is the old file's). `files_only`: leave folders (a folder being built beside its final name may match)."""
    import time

    for temporary in Path(folder).glob(pattern):
        with suppress(OSError):  # another run published or removed it meanwhile
            status = temporary.lstat()  # a link is removed as a file, never followed
            is_folder = stat.S_ISDIR(status.st_mode)
            if files_only and is_folder:
                continue
            if time.time() - (status.st_ctime if by_ctime else status.st_mtime) >= older_than_s:
                if is_folder:
                    shutil.rmtree(temporary)
                else:
                    temporary.unlink()


def write_together(writes: Sequence[tuple[Path, Callable[[Path], object]]], journal: Path | None = None) -> None:
    """For each (path, write): `write(temporary)` fills a temporary file beside `path`; once all are written they
    are published. A failure or Ctrl-C while writing or publishing leaves every path as it was (never a new file
    beside an old companion, never a truncated one) and no temporary file behind: a Ctrl-C or SIGTERM during the
    renames is delivered once they are done, and a rename that fails puts back the files already replaced.
    With `journal`, a kill (SIGKILL, power loss) during the renames can be made good too: the renames still to do
    are recorded there first, and `finish_writing(journal)` does them."""
    temporaries: list[Path] = []
    try:
        for path, write in writes:
            remove_stale_temporaries(Path(path).parent, _temporary_pattern(Path(path)), files_only=True)
            if os.name != "nt":  # Windows' st_ctime is the creation time, which a hard link shares with the old file
                remove_stale_temporaries(Path(path).parent, _temporary_pattern(Path(path), "old"), by_ctime=True,
                                         files_only=True)
            fd, temporary = _temporary_file(path)
            os.close(fd)
            temporaries.append(Path(temporary))
            try:
                write(Path(temporary))
                sync_file(temporary)
            except OSError as exc:
                if exc.filename is None or str(exc.filename) == temporary:  # name the file, not its temporary
                    exc.filename = str(path)
                raise
        with deferred_stops():
            _publish_all(temporaries, [Path(path) for path, _ in writes], journal)
        for folder in dict.fromkeys(Path(path).parent for path, _ in writes):
            sync_folder(folder)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


def finish_writing(journal: Path) -> bool:
    """Do the renames that the `write_together` recorded in `journal` was killed before finishing (its files were
    all written), and remove what it had kept; False when there is no such journal."""
    import json

    try:
        record = json.loads(Path(journal).read_text())
    except FileNotFoundError:
        return False
    except (ValueError, RecursionError):  # killed while writing the journal itself: no rename had begun
        record = None
    if not _journal_shape(record):  # as cut short (or damaged otherwise: renames of its own would be guesses)
        record = {"renames": [], "olds": []}
    for temporary, path in record["renames"]:
        if os.path.lexists(temporary):
            publish(temporary, path)
    for old in record["olds"]:
        Path(old).unlink(missing_ok=True)
    Path(journal).unlink()
    return True


def _journal_shape(record: object) -> bool:
    """Whether a journal holds what `_publish_all` writes: renames as [temporary, path] pairs, and old files."""
    return (isinstance(record, dict) and isinstance(record.get("renames"), list) and isinstance(record.get("olds"), list)
            and all(isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
                    for pair in record["renames"]) and all(isinstance(old, str) for old in record["olds"]))


def _publish_all(temporaries: list[Path], paths: list[Path], journal: Path | None) -> None:
    """Rename each temporary over its path; if one rename fails, the paths replaced before it get their old files
    back (kept as hard links until all are in) and new ones are removed, then the error is raised."""
    import json

    olds: list[Path | None] = []
    try:
        for path in paths:
            olds.append(_keep_old(path))
        if journal is not None:
            renames = [[str(temporary), str(path)] for temporary, path in zip(temporaries, paths)]
            record = json.dumps({"renames": renames, "olds": [str(old) for old in olds if old]})
            Path(journal).write_text(record)
            sync_file(journal)
            sync_folder(Path(journal).parent)
        done: list[Path] = []
        try:
            for temporary, path in zip(temporaries, paths):
                publish(temporary, path)
                done.append(path)
        except BaseException:
            for path, old in zip(done, olds):
                with suppress(OSError):
                    if old:
                        os.replace(old, path)
                    else:
                        path.unlink()
            raise
    finally:
        for old in olds:
            if old:
                old.unlink(missing_ok=True)
        if journal is not None:
            Path(journal).unlink(missing_ok=True)


def _keep_old(path: Path) -> Path | None:
    """A second name (a hard link, or where the file system has none, a copy) for the file at `path`, so that it
    can be put back; None when there is no file (or a folder, which the rename will refuse) there. Its name is not a
    temporary's: a link has the old file's age, which `remove_stale_temporaries` would take for a killed write's."""
    if not os.path.lexists(path) or path.is_dir():
        return None
    fd, name = _temporary_file(path, kind="old")
    os.close(fd)
    old = Path(name)
    old.unlink()
    try:
        os.link(path, old, follow_symlinks=False)  # a link at `path` is kept as the link
    except OSError:
        shutil.copy2(path, old, follow_symlinks=False)
    return old


def _temporary_prefix(path: Path, kind: str = "tmp") -> str:
    """The start of the temporary files' names for `path`: short, so that a name near the file system's 255-byte
    limit still leaves room for it."""
    return f".{kind}-{path.stem[:24]}-"


def _temporary_pattern(path: Path, kind: str = "tmp") -> str:
    """The names `_temporary_file` gives `path`'s temporaries (mkstemp adds 8 characters): not those of another
    file whose name starts the same ('take-1.mp4' of 'take.mp4')."""
    import glob

    return f"{glob.escape(_temporary_prefix(path, kind))}{'?' * 8}{glob.escape(path.suffix)}"


def _temporary_file(path: Path, kind: str = "tmp") -> tuple[int, str]:
    """mkstemp beside `path`. A folder that refuses new files for a reason other than a full disk or permissions
    (which the command line says in its own words), such as /proc, is a UserError naming `path`."""
    try:
        return tempfile.mkstemp(prefix=_temporary_prefix(path, kind), suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        if disk_full(exc) or isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            raise
        reason = (exc.strerror or str(exc)).lower()
        raise UserError(f"cannot write {path}: {path.parent} takes no new files ({reason})") from exc


@contextmanager
def folder_beside(path: Path) -> Iterator[Path]:
    """A new empty folder beside `path` for the block to fill and move into place. Whatever is left of it when the
    block ends (it failed, was interrupted, or lost a race and did not move it) is removed. `path`'s parent is
    created if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name[:24]}-", dir=path.parent))
    os.chmod(temporary, 0o777 & ~current_umask())  # mkdtemp makes it 0700; a published folder gets the usual mode
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def publish_folder(built: Path, path: Path) -> None:
    """Rename the finished folder `built` to `path`, unless another process published one there first (then
    theirs is kept and `built` stays for its `folder_beside` to remove)."""
    sync_tree(built)
    try:
        os.replace(built, path)
    except OSError:
        if not Path(path).is_dir():
            raise
    sync_folder(Path(path).parent)


def replace_folder(built: Path, path: Path) -> None:
    """Put the finished folder `built` at `path`, replacing what is there: the old folder is renamed aside, the
    new one renamed in, and the old one removed, so `path` is never a mix of the two. (A kill between the two
    renames leaves the old folder beside `path`, named `.old-<name>-*`.)"""
    path = Path(path)
    sync_tree(built)
    if not path.exists():
        os.replace(built, path)
        sync_folder(path.parent)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".old-{path.name}-", dir=path.parent))
    os.replace(path, aside / path.name)
    try:
        os.replace(built, path)
    except BaseException:
        os.replace(aside / path.name, path)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    sync_folder(path.parent)


@contextmanager
def exclusive_lock(lock: Path, busy: Callable[[str], str]) -> Iterator[Path]:
    """Hold an operating-system lock on the file `lock` for the block; the system releases it when its holder exits
    however it ends, so there is no stale lock to take over (and no race between two processes taking one over).
    The file holds the holder's pid; a second process gets a UserError with the message `busy(pid)`, and so does one
    on a file system that cannot lock (some network and FUSE mounts), with what to do."""
    folder_gone = 0
    while True:
        created = not lock.exists()  # removed again where the file system cannot lock it
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # its folder was removed (empty, by its last user) since it was made: make it again
            folder_gone += 1
            if folder_gone > 3:
                raise
            lock.parent.mkdir(parents=True, exist_ok=True)
            continue
        except PermissionError:  # another user's lock file (mode 0644): busy when it is held, else the error stands
            refuse_if_held(lock, busy)
            raise
        try:
            locked = _try_lock(fd)
        except OSError as exc:
            os.close(fd)
            if created:
                with suppress(OSError):
                    lock.unlink()
            raise UserError(f"cannot lock {lock} ({exc.strerror or exc}): this file system does not take file locks "
                            "(some network and FUSE mounts do not); put it on a local disk (--home, --out)") from exc
        if not locked:
            owner = _holder(fd)
            os.close(fd)
            raise UserError(busy(owner))
        if _is_file(fd, lock):
            break
        os.close(fd)  # we locked a file its last holder had just removed; lock the one at the path now
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield lock
    finally:
        if os.name != "nt":  # removed while still locked, so that nobody locks a file that is about to go
            lock.unlink(missing_ok=True)
        os.close(fd)
        if os.name == "nt":  # Windows cannot remove an open file; a leftover unlocked lock file is harmless
            with suppress(OSError):
                lock.unlink(missing_ok=True)


def lock_file_beside(path: Path) -> Path:
    """'<path>.lock' beside `path`, its links resolved: a run given the folder through a link or by another name
    takes the same lock."""
    where = Path(os.path.realpath(path))  # and 'runs/.' or '.' have no name to put '.lock' after
    return where.with_name(where.name + ".lock")


@contextmanager
def lock_beside(path: Path, busy: Callable[[str], str]) -> Iterator[Path]:
    """`exclusive_lock` on `lock_file_beside(path)` (a file or folder the block writes), making the folders above
    it as needed; those it made are removed again (if still empty) when the block fails."""
    lock_file = lock_file_beside(path)
    made = [folder for folder in lock_file.parents if not folder.exists()]
    try:
        with exclusive_lock(lock_file, busy) as lock:
            yield lock
    except BaseException:
        for folder in made:
            with suppress(OSError):
                folder.rmdir()
        raise


def refuse_if_held(lock: Path, busy: Callable[[str], str]) -> None:
    """A UserError `busy(pid)` when another process holds the lock on the file `lock` (which this process need not
    be able to write); nothing when it is free or absent. For a check that, made before the lock is taken, would
    otherwise mistake another process's live run for a stopped one."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        if not _try_lock(fd):  # flock takes a file open for reading too
            raise UserError(busy(_holder(fd)))
    except OSError:  # a file system that cannot lock: exclusive_lock says so
        pass
    finally:
        os.close(fd)  # a lock taken here is released with it


def _holder(fd: int) -> str:
    """The pid written in the open lock file `fd`, or 'unknown'."""
    try:
        return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    except OSError:  # Windows refuses to read a locked byte
        return "unknown"


def _try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on the open file `fd`; False if another open file holds it. An OSError
    when the file system takes no locks (ENOLCK, EOPNOTSUPP, ...)."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if os.name == "nt" or exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _is_file(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the file now at `path`."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)


def expand_user(path: str | os.PathLike) -> Path:
    """`path` with a leading '~' or '~user' made the home folder's, as the shell would; a '~old' that names no user
    stays as it is (a folder so named), where Path.expanduser raises RuntimeError."""
    return Path(os.path.expanduser(path))


def given_path(path: str | os.PathLike, what: str) -> Path:
    """`expand_user(path)` of a path the user gave as `what` ("photo", "clip"); a UserError for an empty one (an unset
    shell variable: "$PHOTOS"), which would otherwise be the current folder, its photos or frames taken unasked."""
    if isinstance(path, str) and not path.strip():
        raise UserError(f"an empty {what} path was given (an unset shell variable?): give the {what} file or folder")
    return expand_user(path)


def absolute_path(value: str | None, names: Collection[str] = ()) -> str | None:
    """`value` as an absolute path when it names an existing local file or folder and is none of the built-in
    `names` (which win over a folder of the same name); anything else (None, a hub id, a built-in) as it is."""
    if not value or value in names:
        return value
    path = expand_user(value)
    return str(path.resolve()) if path.exists() else value
