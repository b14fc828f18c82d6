"""The one place where vidbooth talks to the user.

Engine code never prints: it calls `info`, `warn`, `table`, `progress` and `result` here. Messages go to stderr so
that stdout holds only results: the written videos' paths, `list --json`, and the tables a command is run to see.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from vidbooth.errors import OutputClosed, UserError, raise_pending_stop


class _Console(Console):
    """rich's Console, with a closed stream handled as a command needs (rich exits with 1, as if it had failed)."""

    @property
    def file(self):
        """The stream written to; stdout's writes whole or an error (`_WholeWrites`), as a result's are."""
        stream = Console.file.fget(self)
        return stream if _is_stderr(stream) or getattr(stream, "buffer", None) is None else _WholeWrites(stream)

    @file.setter
    def file(self, new_file) -> None:
        Console.file.fset(self, new_file)

    def on_broken_pipe(self) -> None:
        stream_closed(self.file)

    def _check_buffer(self) -> None:
        try:
            super()._check_buffer()
        except OSError as exc:  # a full disk or failing device under the messages: the command goes on without them
            if not _is_stderr(self.file):  # (it had ended with 1 at its first info line); a result's is an error
                _result_not_written(self.file, exc)
            _write_nowhere(self.file)


class _WholeWrites:
    """A text stream whose writes are whole or an error (`_write_whole`): a table over 64 KB into `| head -1` had
    ended with 0, rich's write taking part of it; the rest of the stream's attributes are the stream's own."""

    def __init__(self, stream: object):
        self._stream = stream

    def write(self, text: str) -> int:
        _write_whole(self._stream, text)
        return len(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def stream_closed(stream: object) -> None:
    """The reader of `stream` went away: its descriptor now writes nowhere (so that Python's last flush does not fail
    too). On stdout the command stops (`OutputClosed`); on stderr it goes on without its messages, so that a training
    run whose log reader died (`... 2>&1 | tee log`, tee stopped) still finishes and saves. (A closed terminal is
    SIGHUP, which ends the process: run long trainings under nohup or tmux.)"""
    _write_nowhere(stream)
    if not _is_stderr(stream):
        raise OutputClosed()


def _descriptor(stream: object) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _is_stderr(stream: object) -> bool:
    import sys

    return stream is sys.stderr or _descriptor(stream) == 2


def _write_nowhere(stream: object) -> None:
    """Point `stream`'s descriptor at the null device, so that what it still holds is flushed there."""
    descriptor = _descriptor(stream)
    if descriptor is not None:
        nowhere = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(nowhere, descriptor)
        finally:
            os.close(nowhere)


console = _Console(stderr=True, highlight=False)
stdout_console = _Console(highlight=False)


RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
"""Where a launcher puts the process's rank (torchrun, MPI implementations), read in accelerate's order."""


SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where the same launchers put the number of processes."""


LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")
"""Where the same launchers put the process's rank among those of its machine, in the same order."""

LOCAL_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                        "MV2_COMM_WORLD_LOCAL_SIZE")
"""Where they put the number of processes on the process's machine, in the same order."""


def _launcher_value(names: tuple[str, ...], default: str) -> str:
    return next((os.environ[name] for name in names if name in os.environ), default)


def _rank() -> str:
    return _launcher_value(RANK_VARIABLES, "0")


def process_count() -> int:
    """How many processes a launcher started for this command (1 without one)."""
    value = _launcher_value(SIZE_VARIABLES, "1")
    return int(value) if value.strip().isdigit() else 1


def _other_process() -> bool:
    """Any process but the first under a multi-process launcher (`accelerate launch`, torchrun, mpirun): each reads
    the same inputs, so it would repeat every line the first one shows. (A RANK without a number of processes, left
    in the environment, had silenced every line and result.)"""
    return process_count() > 1 and _rank() != "0" and not leftover_launcher_variables()


_ONE_PROCESS_VALUES = {"RANK": ("", "0"), "LOCAL_RANK": ("", "0"), "WORLD_SIZE": ("", "0", "1")}
"""torchrun's variables, and their values that say one process."""


def leftover_launcher_variables() -> list[str]:
    """torchrun's variables set here ('RANK=1', ...) when they say another process or several, but no launcher
    started this one: torchrun (and accelerate launch through it) also sets MASTER_ADDR, where its processes meet.
    [] when they say one process, with MASTER_ADDR, or under mpirun (whose own variables count)."""
    env = os.environ
    here = [name for name in _ONE_PROCESS_VALUES if name in env]
    if "MASTER_ADDR" in env or all(env[name].strip() in _ONE_PROCESS_VALUES[name] for name in here):
        return []
    return [f"{name}={env[name]}" for name in here]


def first_process() -> bool:
    """Whether this is the only process, or the first under a multi-process launcher."""
    return not _other_process()


def first_of_its_machine() -> bool:
    """Whether this process shows the run's lines and progress: the only process, or the first of its machine under
    a launcher (a second machine had shown nothing, through a whole run). The local rank is read from MPI's
    variables when MPI started every process (accelerate then writes RANK and LOCAL_RANK, 0 where MPI gave none),
    else from torchrun's (which mpirun may have started, one per machine). A launcher that gives none leaves the
    lines to the first process."""
    if not _other_process():
        return True
    return _machine_value(LOCAL_RANK_VARIABLES, _rank()) == "0"


def place_on_this_machine() -> tuple[int, int] | None:
    """This process's rank among those of its machine and their number, as the launcher says (None where it does
    not say both)."""
    rank, size = (_machine_value(names, "").strip() for names in (LOCAL_RANK_VARIABLES, LOCAL_SIZE_VARIABLES))
    return (int(rank), int(size)) if rank.isdigit() and size.isdigit() and int(rank) < int(size) else None


def _machine_value(names: tuple[str, ...], default: str) -> str:
    """The value of a launcher's variable of the process's machine (`names`, in `RANK_VARIABLES`' order): MPI's when
    MPI started every process, else torchrun's."""
    mpi = [index for index, name in enumerate(RANK_VARIABLES) if index and name in os.environ]
    started_by_mpi = mpi and os.environ.get(SIZE_VARIABLES[mpi[0]], "").strip() == str(process_count())
    return os.environ.get(names[mpi[0] if started_by_mpi else 0], default)


def _quiet() -> bool:
    """Quiet when asked, and on every process but the first of its machine."""
    return os.environ.get("VIDBOOTH_QUIET", "").strip().lower() not in OFF or not first_of_its_machine()


OFF = ("", "0", "false", "no", "off")
"""Values of an on/off environment variable (VIDBOOTH_QUIET) that leave it off."""


def _redraws(target: Console) -> bool:
    """Whether `target` is a terminal that a progress bar redraws on and a table fits: what rich takes for one, and
    a terminal in fact. FORCE_COLOR (set in CI for coloured logs) makes rich take any stream for a terminal, and a
    log had filled with a bar's redraws; TTY_INTERACTIVE=0 and TERM=dumb say that a terminal cannot redraw."""
    try:
        return target.is_interactive and target.file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@contextlib.contextmanager
def native_lines_dropped(noise: str) -> Iterator[None]:
    """Inside the block, lines that native code writes straight to the stdout file descriptor (where no Python
    setting reaches) and that contain `noise` are dropped; every other line is written once the block ends. For the
    tokenizers library, which prints 'Ignored unknown kwarg option __type' on stdout (where `--json` puts results)
    for each special token of the tokenizer files real models ship."""
    import sys
    import tempfile

    from vidbooth.errors import deferred_stops

    try:
        sys.stdout.flush()
        caught = tempfile.TemporaryFile()
    except (OSError, ValueError, AttributeError):  # no room for the file, no stdout: nothing to filter
        yield
        return
    with caught:
        try:
            saved = os.dup(1)
        except OSError:  # no stdout descriptor (a service)
            yield
            return
        try:
            os.dup2(caught.fileno(), 1)
            yield
        finally:
            with deferred_stops():  # stdout put back, and its kept lines written, whatever signal comes meanwhile
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.flush()
                os.dup2(saved, 1)
                os.close(saved)
                caught.seek(0)
                lines = caught.read().decode(errors="replace").splitlines(True)
                kept = [line for line in lines if noise not in line]
                if kept:
                    sys.stdout.write("".join(kept))
                    sys.stdout.flush()


@contextlib.contextmanager
def downloading(repo_id: str, say: bool = True) -> Iterator[None]:
    """Say that `repo_id` is being downloaded from the Hugging Face hub (unless `say` is False: said already, or
    HF_HUB_OFFLINE is set) and show the hub's own progress bars for it (the libraries' bars are otherwise off: a
    multi-gigabyte base had downloaded without a word). The bars are not shown where info lines are not
    (VIDBOOTH_QUIET, processes but the first of each machine), nor where the user turned them off
    (HF_HUB_DISABLE_PROGRESS_BARS)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if say and not constants.HF_HUB_OFFLINE:  # offline, the hub's library fails at once: nothing is downloaded
        info(f"downloading {repo_id} from the Hugging Face hub (once: later runs read its cache)")
    were_off = are_progress_bars_disabled()
    if were_off and not _quiet() and not constants.HF_HUB_DISABLE_PROGRESS_BARS:
        enable_progress_bars()
    try:
        yield
    finally:
        if were_off:
            disable_progress_bars()


TOKENIZER_NOISE = "Ignored unknown kwarg option"
"""What the tokenizers library prints on stdout, once per special token, reading the tokenizer files of SD1.5 and
ModelScope."""


_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"  # all but tab and line break; bidi marks
_CONTROL = re.compile(f"[{_CONTROLS}]")
_CONTROL_OR_LINE_BREAK = re.compile(f"[\n{_CONTROLS}]")


def printable(text: str, one_line: bool = False) -> str:
    """`text` with its control characters (a terminal's escape sequences among them, and the marks that reverse
    the direction of text; tab and line break stay) shown as \\xNN or \\uNNNN: what is printed of file names and
    of what files hold (a shared adapter's metadata, a manifest) cannot retitle, clear or recolour the user's
    terminal, or show text other than it is. `one_line`: a line break too (a message is one line)."""
    pattern = _CONTROL_OR_LINE_BREAK if one_line else _CONTROL
    return pattern.sub(lambda match: _escaped(match.group()), text)


def _escaped(character: str) -> str:
    return f"\\x{ord(character):02x}" if ord(character) < 0x100 else f"\\u{ord(character):04x}"


def info(message: str) -> None:
    if not _quiet():
        # one line each: a terminal wraps it, a log keeps it whole
        console.print(escape(printable(message, one_line=True)), soft_wrap=True)


def warn(message: str) -> None:
    """A warning, shown even when quiet, but once on each machine under a multi-process launcher."""
    if first_of_its_machine():
        console.print(f"[yellow]warning:[/yellow] {escape(printable(message, one_line=True))}", soft_wrap=True)


_reading = threading.local()


@contextlib.contextmanager
def reading(path: object) -> Iterator[None]:
    """A library's warning inside the block (Pillow's of a photo's damaged EXIF data) names `path`, the file this
    thread is reading (photos are read in threads)."""
    previous = getattr(_reading, "path", None)
    _reading.path = path
    try:
        yield
    finally:
        _reading.path = previous


@contextlib.contextmanager
def library_warnings_as_lines() -> Iterator[None]:
    """Inside the block a library's Python warning is one warning line, naming the file being read where there is
    one (`reading`), instead of Python's two lines of the library's own source, which said nothing of which photo.
    Pillow's are shown for each photo (Python shows a warning once for its text), every other line once."""
    import warnings

    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        where = getattr(_reading, "path", None)
        text = (f"reading {where}: " if where is not None else "") + str(message).strip()
        if text not in shown:
            shown.add(text)
            warn(text)

    with warnings.catch_warnings():  # puts Python's filters and way of showing back; the whole command is inside
        warnings.filterwarnings("always", category=UserWarning, module=r"PIL\.")
        warnings.showwarning = show
        yield


def error(message: str) -> None:
    """An error, on every process under a launcher (one may fail alone: a file missing on one machine), each but the
    first's naming its process."""
    where = f" (process {_rank()})" if _other_process() else ""
    console.print(f"[red]error{where}:[/red] {escape(printable(message, one_line=True))}", soft_wrap=True)


def stopped(message: str) -> None:
    """A command stopped by a signal: shown by the first process of each machine only, as a launcher passes a Ctrl-C
    to every process and a training run stops them all together (a process stopped alone is named by the
    launcher)."""
    if first_of_its_machine():
        error(message)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], to_stdout: bool = False) -> None:
    """A titled table; in a terminal it fits the window, into a file or pipe each row stays on one line. Every text
    is shown as it is (a file name such as 'take[bold].mp4' is not read as markup). Shown by the first process
    only, as `info` is."""
    if _other_process():
        return
    t = Table(title=Text(printable(title)))
    for c in columns:
        t.add_column(Text(c), overflow="fold")  # a narrow terminal folds a name or path onto more lines, never cuts it
    for r in rows:
        t.add_row(*[Text(f"{v:.4f}" if isinstance(v, float) else printable(str(v))) for v in r])
    target = stdout_console if to_stdout else console
    too_narrow = target.width < 4 * len(columns) + 1  # COLUMNS=10: every cell had come out empty
    if too_narrow or not _redraws(target):  # rich would wrap at 80 columns; a console as wide as the table does not
        natural = target.measure(t, options=target.options.update_width(10_000)).maximum
        target = _Console(file=target.file, width=max(target.width, natural), highlight=False)
    target.print(t)


def result(text: str) -> None:
    """A result for scripts on stdout, as it is (no colour, no wrapping): a JSON document, a written file's path; in
    a terminal with its control characters shown as escapes (`printable`), into a pipe as they are. Shown even when
    quiet, by the first process only; nothing without a stdout (`>&-`, a service)."""
    import sys

    stdout = sys.stdout
    if _other_process() or stdout is None:
        return
    try:
        terminal = stdout.isatty()
    except (AttributeError, ValueError):
        terminal = False
    try:
        _write_whole(stdout, (printable(text) if terminal else text) + "\n")
    except BrokenPipeError:
        stream_closed(stdout)
    except ValueError:  # closed by a caller in this process: nowhere to put it
        pass
    except OSError as exc:  # `--json - > file` on a full disk had ended with 0 and a cut or empty file
        _result_not_written(stdout, exc)


def _write_whole(stdout: object, text: str) -> None:
    """`text` on stdout, all of it or an error: a pipe whose reader goes away while a write waits on it takes part of
    the write, and Python's buffered writer returns the part it took with no error, the rest dropped (a JSON report
    over 64 KB into `| head -1` had ended with 0, not 141); the next write of the rest fails as the first would."""
    stdout = getattr(stdout, "rich_proxied_file", stdout)  # under a live progress bar, the stream it stands for
    buffer = getattr(stdout, "buffer", None)
    if buffer is None:  # a script's own text stream
        stdout.write(text)
        stdout.flush()
        return
    first, rest = text[:1], text[1:]
    stdout.write(first)  # by the text layer: a byte-order mark (utf-8-sig) where the stream starts, and only there
    stdout.flush()
    if os.linesep != "\n":  # as the text layer writes it
        rest = rest.replace("\n", os.linesep)
    encoder = codecs.getincrementalencoder(stdout.encoding or "utf-8")(stdout.errors or "strict")
    encoder.encode("")  # the mark a fresh encoder starts with, dropped: text.encode() had put one before every write
    data = memoryview(encoder.encode(rest, final=True))
    while data:
        taken = buffer.write(data)
        if not taken:  # no progress: nowhere to put the rest
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        data = data[taken:]
    buffer.flush()


def _result_not_written(stdout: object, exc: OSError) -> NoReturn:
    """A result (a JSON document, a table) that stdout could not take, a full disk under it: one error line."""
    from vidbooth.fileio import disk_full

    _write_nowhere(stdout)  # Python's last flush would fail on the same bytes
    if disk_full(exc):
        reason, fix = "the disk is full", "make room where it goes, or send it elsewhere"
    elif exc.errno == errno.EFBIG:
        reason = "past the file system's or your file-size limit"
        fix = "raise the limit (ulimit -f) or send it elsewhere"
    else:
        reason, fix = (exc.strerror or str(exc)).lower(), "send it elsewhere"
    raise UserError(f"cannot write the result to stdout ({reason}): {fix}, and run the command again") from exc


LOG_EVERY_SECONDS = 30.0
"""Into a file or pipe (a log, CI) a bar cannot redraw: its line is written this often, and once at its end."""
LOG_WIDTH = 10_000
"""Into a file or pipe, a bar's line is as long as it needs (not padded): rich would cut it at $COLUMNS, or 80, and
drop the step count and loss first."""


class _Task:
    """Handle returned by `progress`: advance it and attach live figures (loss, it/s)."""

    def __init__(self, progress: Progress | None, task_id: int | None):
        self._progress, self._task_id = progress, task_id
        self._logged = time.monotonic()

    def advance(self, n: int = 1, **fields: object) -> None:
        if self._progress is not None:
            speed = self._progress.tasks[0].speed if self._progress.tasks else None
            shown = dict(fields, **({"it/s": speed} if speed else {}))
            text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
            self._progress.update(self._task_id, advance=n, fields=text)
            task, shown_on = self._progress.tasks[0], self._progress.console
            if not shown_on.is_terminal and not task.finished and time.monotonic() - self._logged >= LOG_EVERY_SECONDS:
                self._logged = time.monotonic()
                shown_on.print(self._progress.get_renderable())


@contextlib.contextmanager
def progress(description: str, total: int, completed: int = 0) -> Iterator[_Task]:
    """A rich progress bar with ETA; a no-op when quiet. Each long phase starts here, so a stop signal that was
    lost on the way (see `errors.stop`) ends the command here."""
    raise_pending_stop()
    if _quiet():
        yield _Task(None, None)
        return
    columns = [
        TextColumn("{task.description}", markup=False),  # holds names the user chose
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[fields]}", markup=False),
    ]
    shown_on = console if _redraws(console) else _Console(file=console.file, width=LOG_WIDTH, highlight=False,
                                                          force_terminal=False)
    with Progress(*columns, console=shown_on, transient=False) as p:
        task_id = p.add_task(printable(description, one_line=True), total=total, completed=completed, fields="")
        yield _Task(p, task_id)
