"""Errors a user can act on.

`UserError` carries a one-line message that says what is wrong and how to fix it. The CLI prints it
without a traceback (unless `--debug`) and exits with code 2. Everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Iterator
from pathlib import Path


CHECK_THE_PATH = "check the spelling, or quote paths that contain spaces"
"""How to fix a path that is not there, for every "... not found: PATH" message."""
RECOMPUTING = "vidbooth: raised while gradient checkpointing recomputed the UNet's activations"
"""The note (`add_note`) on an error raised under gradient checkpointing: running out of memory there, the command
line does not suggest turning it on."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line with exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        # one line: line breaks (and the indentation around them) become a space; other spaces stay as they are, as
        # in a folder named 'My  Photos', which a message must show as it is to be found or pasted
        super().__init__(re.sub(r"[ \t]*[\r\n]+[ \t]*", " ", str(message)).strip())


def ran_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation that failed: torch's CUDA or CPU allocator, Python's MemoryError, or a shared
    library that could not be mapped (under an address-space limit, `ulimit -v`, OpenCV imported on first use)."""
    text = str(exc).lower()
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or getattr(exc, "errno", None) == errno.ENOMEM
            or any(words in text for words in ("out of memory", "can't allocate memory", "cannot allocate memory",
                                               "failed to map segment from shared object")))  # a library not loaded


def out_of_system_resources(exc: BaseException) -> str | None:
    """One line for an error that says this process reached a limit of the machine on open files, processes or
    threads (`ulimit -n`, `ulimit -u`, a container's pids limit), not that a file it read or wrote is at fault; None
    for any other."""
    code, text = getattr(exc, "errno", None), str(exc)
    if code == errno.ENFILE or "Too many open files in system" in text:
        return "the system's table of open files is full: close other programs and run the command again"
    if code == errno.EMFILE or "Too many open files" in text or "os error 24" in text:
        try:
            import resource

            at_once = f"this process may have {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} open at once"
        except (ImportError, OSError, ValueError):
            at_once = "this process's limit is reached"
        return (f"too many open files ({at_once}, ulimit -n): raise the limit, e.g. ulimit -n 4096, and run the "
                "command again")
    if code == errno.EAGAIN or "can't start new thread" in text:
        return ("cannot start another process or thread: a limit on them is reached (ulimit -u, or a container's "
                "pids limit); raise it or end other programs, and run the command again")
    return None


class MachineLimit(UserError):
    """This process reached a limit of the machine on open files, processes or threads (`out_of_system_resources`);
    its message says to run the command again, which a training that saved a checkpoint does with --resume."""


RERUN_ERRORS = (OSError, MemoryError, RuntimeError, MachineLimit)
"""The errors whose line may end 'run the command again' (a full disk, out of memory, a machine's limit): one that
stops a training after a checkpoint carries it (`kept_checkpoint`), so that the line says to rerun with --resume."""


def not_the_inputs_fault(exc: BaseException) -> None:
    """Raise `exc` as the command line tells it when it says the machine ran out of memory, open files, processes
    or threads: a caller that would call any error in reading a file damage ('delete it and start over') calls this
    first, since that advice would lose a good checkpoint, photo or model."""
    if ran_out_of_memory(exc):
        raise exc
    if message := out_of_system_resources(exc):
        raise MachineLimit(message) from exc


_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote process exited", "Broken pipe",
              "NCCL communicator was aborted")
"""What gloo's and NCCL's errors say when another process of the run has died (gloo: 'Connection closed by peer
[127.0.0.1]:38024. This is typically caused by a remote worker crashing')."""


def lost_another_process(exc: BaseException) -> bool:
    """Whether `exc` is a collective operation that failed because another process of a multi-process run died."""
    import sys

    dist = sys.modules.get("torch.distributed")  # never imported: not a multi-process run
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return False
    return isinstance(exc, getattr(dist, "DistNetworkError", ())) or (
        isinstance(exc, RuntimeError) and any(words in str(exc) for words in _PEER_LOST))


class DiskFull(UserError):
    """The disk filled up while a run's work was saved; `folder` is where space is needed. Its message says how the
    same command goes on (with --resume), which a command with no --resume (the demo) words its own way."""

    def __init__(self, message: str, folder):
        super().__init__(message)
        self.folder = folder


class Interrupted(BaseException):
    """A command was stopped by a signal (training: after saving a resumable checkpoint); exit 128 + signal. Not an
    `Exception`, as KeyboardInterrupt is not: code that turns any Exception into its own error (a library's lazy
    import, a reader that calls what it cannot read damaged) must let a stop through, not report it as that error."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def unread_byte(character: str) -> bool:
    """Whether `character` stands for a byte that the locale could not read as text (of a command line or a file
    name): Python keeps such a byte as a lone surrogate, U+DC80 to U+DCFF, which no UTF-8 file can hold."""
    return 0xDC80 <= ord(character) <= 0xDCFF


class OutputClosed(BaseException):
    """The reader of the command's results went away (`vidbooth list | head -1`): the command stops without a word,
    exit 141, a shell's code for a process ended by SIGPIPE (Python raises an error in its place)."""

    exit_code = 141


class KeyboardInterrupted(Interrupted, KeyboardInterrupt):
    """Ctrl-C with a message: an `Interrupted`, whose message the command line prints (and the demo rewords), and
    still a KeyboardInterrupt for code that stops on one."""


def stopped(signum: int, message: str) -> Interrupted:
    """The error that stops a command on signal `signum` with `message` (a `KeyboardInterrupted` for Ctrl-C)."""
    import signal

    return (KeyboardInterrupted if signum == signal.SIGINT else Interrupted)(message, 128 + signum)


def stop_signals() -> tuple[int, ...]:
    """SIGINT, SIGTERM and SIGXCPU (past a soft CPU-time limit, such as a batch scheduler sets), less any this process
    ignores. A command started with one ignored (a script's background job ignores SIGINT, so that Ctrl-C in the
    script's terminal does not reach it) keeps ignoring it, as POSIX tools do: vidbooth's own handlers go only where a
    signal would have been acted on."""
    import signal

    named = (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGXCPU", None))
    return tuple(signum for signum in named if signum is not None and signal.getsignal(signum) != signal.SIG_IGN)


_cpu_limits: set[int] = set()
"""SIGXCPU, once acted on. Past a soft CPU-time limit the kernel sends it again each second until the hard limit's
SIGKILL: only the first is a request to stop (the later ones had stopped a run at once, as a second Ctrl-C does,
in the checkpoint that the first had asked for)."""


def cpu_limit_again(signum: int, note: bool = True) -> bool:
    """Whether `signum` is a SIGXCPU after one already acted on; with `note`, this one counts as acted on."""
    import signal

    if signum != getattr(signal, "SIGXCPU", None):
        return False
    again = signum in _cpu_limits
    if note:
        _cpu_limits.add(signum)
    return again


@contextlib.contextmanager
def stops_recorded() -> Iterator[list[int]]:
    """While the block runs, SIGINT and SIGTERM are recorded in the yielded list instead of acted on; the handlers
    before are put back when it ends. Only the main thread gets signals: elsewhere nothing changes."""
    import signal
    import threading

    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def record(got, frame) -> None:
        if not cpu_limit_again(got, note=False):
            held.append(got)

    previous = {signum: signal.signal(signum, record) for signum in stop_signals()}
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def held_stops(done: str) -> Iterator[None]:
    """Run the block to its end even when SIGINT or SIGTERM arrives (tidying up after an artifact is saved, which a
    stop would only leave half done), then stop: "stopped by SIGINT; <done>"."""
    import signal

    with stops_recorded() as held:
        yield
    if held:
        cpu_limit_again(held[0])
        raise stopped(held[0], f"stopped by {signal.Signals(held[0]).name}; {done}")


@contextlib.contextmanager
def deferred_stops() -> Iterator[None]:
    """Run the block to its end even when SIGINT or SIGTERM arrives, then deliver the signal as if it came now, to
    the handler that was there (the command line's, which stops the command, or a training loop's, which stops after
    its step). For a few renames that must all happen or none."""
    import signal

    with stops_recorded() as held:
        yield
    for signum in dict.fromkeys(held):
        signal.raise_signal(signum)


def stopping_signal(exc: BaseException):
    """The signal (a `signal.Signals`) that `exc`, a KeyboardInterrupt or an `Interrupted`, stands for."""
    import signal

    return signal.Signals(exc.exit_code - 128) if isinstance(exc, Interrupted) else signal.SIGINT


_stops: list[int] = []
"""Signals the command line's handler has received. Python drops an exception raised while a finaliser runs
('Exception ignored in ... KeyboardInterrupt'), so a Ctrl-C can be lost; the record lets the next phase see it."""


_failing: list[bool] = []
"""Set once a command has met the error it ends with (`failing`): a signal then is only noted."""


def failing() -> None:
    """The command is ending with the error being raised: a signal from now on is only noted, not raised in its
    place (a launcher that saw another process die sends SIGTERM to this one as it reports why)."""
    _failing.append(True)


def is_failing() -> bool:
    return bool(_failing)


def stop(signum: int, frame: object = None) -> None:
    """Signal handler for a command: note `signum`, then raise KeyboardInterrupt (SIGINT) or `Interrupted`."""
    if cpu_limit_again(signum):
        return
    _stops.append(signum)
    if not _failing:
        _raise_for(signum)


def clear_stops() -> None:
    _stops.clear()
    _failing.clear()
    _cpu_limits.clear()


def raise_pending_stop() -> None:
    """Raise what the first noted signal raised, in case Python dropped it."""
    if _stops:
        _raise_for(_stops[0])


def _raise_for(signum: int) -> None:
    import signal

    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(f"stopped by {signal.Signals(signum).name}", 128 + signum)


def yaml_problem(exc: Exception, path: Path | None = None) -> str:
    """What a YAML error found, and where in the file at `path`: 'found duplicate key num_frames at line 3, column
    3'; its first line alone says only what was being read ('while constructing a mapping')."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return str(exc).splitlines()[0]
    if path is None or mark is None:
        return problem
    with contextlib.suppress(OSError, UnicodeDecodeError, IndexError):
        if path.read_text(encoding="utf-8")[mark.index] == "\t":
            problem += " (a tab: indent with spaces)"
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
