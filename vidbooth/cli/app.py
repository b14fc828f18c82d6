"""The `vidbooth` command: a Typer app with one file per command.

Each command module only parses flags, builds its config and calls one engine function. Heavy imports
(torch, diffusers) happen inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator

import typer

from vidbooth import __version__

app = typer.Typer(
    name="vidbooth",
    help="Personalise text-to-video diffusion models: learn a subject from photos and a motion from a clip.",
    epilog="Start with: vidbooth demo. Each command has its page under docs/ in the vidbooth repository "
    "(subject.md for the subject commands, motion.md, generate.md, ...).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=True,  # --install-completion: commands, flags and library names (docs/installation.md)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's shows a value (<bool>) after every flag
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vidbooth {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    quiet: bool = typer.Option(
        False, "--quiet", help="No progress bars or information lines; results, warnings and errors stay (as "
        "VIDBOOTH_QUIET=1)."
    ),
    home: str | None = typer.Option(
        None, "--home", metavar="DIR",
        help="Library folder, where subjects and motions are saved (default: $VIDBOOTH_HOME, else "
        "$XDG_DATA_HOME/vidbooth or ~/.local/share/vidbooth).",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug or _debug_asked([])
    if home is not None and not home.strip():
        from vidbooth.errors import UserError

        raise UserError("--home is empty: give the library folder, or leave --home out for the default")
    if home:
        os.environ["VIDBOOTH_HOME"] = home
    if quiet:
        os.environ["VIDBOOTH_QUIET"] = "1"  # put back when the command ends (process_state_kept)


def _said(command: Callable) -> Callable:
    """`command`, with a Ctrl-C that says what it stopped (`errors.KeyboardInterrupted`: both a KeyboardInterrupt and
    an `Interrupted`) raised as a plain `Interrupted`, whose message `main` prints: typer turns every
    KeyboardInterrupt into a bare exit code 130. An EOFError, which typer would call 'aborted', is a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from vidbooth.errors import Interrupted

        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as exc:
            if isinstance(exc, Interrupted):
                raise Interrupted(str(exc), exc.exit_code) from exc
            raise
        except EOFError as exc:  # typer takes it for Ctrl-D at a prompt ('aborted'); no command reads stdin
            raise RuntimeError("a file ended early (the EOFError above)") from exc  # a traceback, as any we cannot word

    return run


class _Argument(typer.core.TyperArgument):
    """A positional argument whose help shows its name alone: typer adds its Python type (`CLIPS <list[str]>`)."""

    def display_type_rich(self, ctx) -> None:
        return None


class _Command(typer.core.TyperCommand):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is typer.core.TyperArgument:
                param.__class__ = _Argument


def _register() -> None:
    from vidbooth.cli import demo, evaluate, generate, image_prompt, motion, pretrain, subject
    from vidbooth.cli import list as list_command

    commands = [  # name, function, the line `vidbooth --help` shows, whether a bare command shows its help
        ("train-subject", subject.train_subject, "Learn a subject from 3-5 photos: pseudo-word, identity adapter.",
         True),
        ("train-motion", motion.train_motion, "Learn a motion from a clip (or clips) as a motion adapter.", True),
        ("generate", generate.generate, "Generate videos from a prompt, with learned subjects, motions or a photo.",
         True),
        ("evaluate", evaluate.evaluate, "Score videos: text, subject and motion fidelity, temporal consistency.", True),
        ("list", list_command.list_library, "Show the learned subjects and motions.", False),
        ("demo", demo.demo, "Learn a subject and a motion on nano and score each step (runs with no arguments).",
         False),
        ("textual-inversion", subject.textual_inversion, "Learn a subject's pseudo-word only (subject stage 1).",
         True),
        ("identity-adapter", subject.identity_adapter, "Add the identity adapter to a subject (subject stage 2).",
         True),
        ("motion-adapter", motion.train_motion, "Same as train-motion (DreamVideo's name for the stage).", True),
        ("train-image-prompt", image_prompt.train_image_prompt,
         "Train a base's image-prompt model (VideoBooth) (runs with no arguments).", False),
        ("pretrain", pretrain.pretrain, "Pretrain nano from its procedural world (runs with no arguments).", False),
    ]
    for name, function, summary, help_when_bare in commands:
        app.command(name, cls=_Command, short_help=summary, no_args_is_help=help_when_bare)(_said(function))


_register()


def _click_exceptions() -> tuple[type[Exception], ...]:
    """Usage-error classes of click and of the copy of click that typer 0.20+ bundles (`typer._click`)."""
    import importlib

    classes = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            classes.append(importlib.import_module(module).ClickException)
        except ImportError:
            continue
    return tuple(classes)


INTERRUPTED = 130
"""Exit code of a command stopped by Ctrl-C (128 + SIGINT)."""


ONE_PROCESS_COMMANDS = ("generate", "evaluate", "demo", "pretrain", "list")
"""Commands that do not share their work across processes: under a launcher each process would do it all again
and write the same files."""

TRAINING_COMMANDS = ("train-subject", "train-motion", "textual-inversion", "identity-adapter", "motion-adapter",
                     "train-image-prompt")
"""Commands that share their work across the processes of a launch."""


def _refuse_undecodable(argv: list[str]) -> None:
    """A UserError for an argument holding bytes that the locale could not read as text (Python keeps them as lone
    surrogates): written into a config or manifest, which are UTF-8 text, they had ended generate in a traceback
    after sampling. Python reads the command line as UTF-8 in every locale but a C one with PYTHONUTF8=0."""
    from vidbooth.errors import UserError, unread_byte

    for word in argv:
        if any(map(unread_byte, word)):
            shown = word.encode("utf-8", "backslashreplace").decode()
            raise UserError(f"'{shown}' holds bytes that are not text in this terminal's encoding: run vidbooth "
                            "under a UTF-8 locale (LANG=C.UTF-8), or rename the file")
    env = os.environ
    folders = ["VIDBOOTH_HOME", "VIDBOOTH_CACHE"]  # and where they are when unset: a cache built there had been
    folders += ["HOME"] if not (env.get("VIDBOOTH_HOME") and env.get("VIDBOOTH_CACHE")) else []  # called damaged
    folders += ["XDG_DATA_HOME"] if not env.get("VIDBOOTH_HOME") else []
    for name in folders:
        if any(map(unread_byte, env.get(name, ""))):
            shown = env[name].encode("utf-8", "backslashreplace").decode()
            raise UserError(f"${name} ({shown}) holds bytes that are not text in this terminal's encoding: run "
                            f"vidbooth under a UTF-8 locale (LANG=C.UTF-8), or set ${name} to another folder")


def _refuse_a_process_that_cannot_work(argv: list[str]) -> None:
    """One line, before anything is imported, for a process that would fail in a confusing way: one whose current
    folder was removed (torch then failed to load with a oneMKL FATAL ERROR, as if broken), or a command run with
    `python -OO`, whose stripped docstrings diffusers and transformers fail on (a traceback); `--version` needs
    neither."""
    from vidbooth.errors import UserError

    try:
        os.getcwd()
    except FileNotFoundError:
        raise UserError("the current folder no longer exists (removed after the shell went into it): cd to an "
                        "existing folder and run the command again") from None
    if sys.flags.optimize >= 2 and argv != ["--version"]:
        raise UserError("python -OO (or PYTHONOPTIMIZE=2) strips the docstrings that diffusers and transformers read: "
                        "run vidbooth without it (-O is fine)")


def _refuse_a_launcher(argv: list[str]) -> None:
    from vidbooth.errors import UserError
    from vidbooth.reporting import first_of_its_machine, leftover_launcher_variables, process_count

    leftover = leftover_launcher_variables()
    if leftover:  # a shell that kept a launcher's variables: every process but the first had ended without a word
        names = " ".join(setting.split("=")[0] for setting in leftover)
        are, them = ("is", "it") if len(leftover) == 1 else ("are", "them")
        raise UserError(f"{' and '.join(leftover)} {are} set, as torchrun and accelerate launch set {them} for their "
                        f"processes, but MASTER_ADDR is not: no launcher started this command; unset {names} (left "
                        "from another run?) and run it again")

    command = _command_of(argv)
    if command in ONE_PROCESS_COMMANDS and process_count() > 1:
        if not first_of_its_machine():  # the first of each machine says why; the others would repeat it
            raise typer.Exit(UserError.exit_code)
        raise UserError(f"{command} runs in one process, and this launcher started {process_count()}: run it "
                        "without accelerate launch (the training commands share their work across processes)")


GLOBAL_OPTIONS = ("--home", "--debug", "--quiet", "--version")
"""Options of `vidbooth` itself, given before the command."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    from vidbooth.cli.process_state import process_state_kept
    from vidbooth.errors import stops_recorded
    from vidbooth.reporting import library_warnings_as_lines

    # once the command has ended, a signal waits until its outcome is told: a launcher that saw another process die
    # sends this one SIGTERM, which had ended it between its handlers being put back and its error line
    with stops_recorded(), process_state_kept(), library_warnings_as_lines():  # a script calling main keeps its
        return _told(argv)  # random streams, --home, ... and Python's way of showing warnings


def _told(argv: list[str] | None) -> int:
    """The command's exit code, its error or stop told in one line."""
    from vidbooth.errors import (
        Interrupted,
        OutputClosed,
        UserError,
        clear_stops,
        lost_another_process,
        out_of_system_resources,
        raise_pending_stop,
    )
    from vidbooth.reporting import error, stopped

    _escaping_stdout()
    args = sys.argv[1:] if argv is None else argv
    _state["debug"] = _debug_asked(args)  # not an earlier call's: a refusal before typer's had come as a traceback
    try:
        with _stop_signals():
            try:
                _refuse_a_process_that_cannot_work(args)
                _refuse_a_launcher(args)
                _refuse_undecodable(args)
                code = app(args=argv, standalone_mode=False)  # typer.Exit(n) inside a command comes back as n
                raise_pending_stop()  # a stop Python dropped in the last phase (a finaliser's) is answered, not lost
            finally:
                clear_stops()  # the command has ended: a signal it got is answered below, or was acted on
    except UserError as exc:
        if _state["debug"]:
            _tell_the_other_processes(args, exc)
            raise
        error(_going_on_from_its_checkpoint(str(exc), exc))  # a machine's limit met after a checkpoint
        _tell_the_other_processes(args, exc)
        return exc.exit_code
    except Interrupted as exc:
        stopped(str(exc))
        return exc.exit_code
    except OutputClosed as exc:  # `| head -1`: nothing to say, and nowhere to say it
        return exc.exit_code
    except KeyboardInterrupt:
        stopped("interrupted")
        return INTERRUPTED
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        error("aborted")
        return 1
    except OSError as exc:
        command = _command_of(args)
        message = (out_of_memory_message(exc, command) or out_of_system_resources(exc)  # ENOMEM: out of memory
                   or os_error_message(exc))
        if message is None or _state["debug"]:
            raise
        error(_going_on_from_its_checkpoint(message, exc))
        return 2
    except (MemoryError, RuntimeError, ImportError) as exc:
        message = (out_of_memory_message(exc, _command_of(args))
                   or out_of_system_resources(exc))  # "can't start new thread"
        if message is None and lost_another_process(exc):  # a training's own says which step it kept
            message = ("another process of this run stopped (the launcher's report below says which and why): rerun "
                       "the same command")
        if message is None or _state["debug"]:
            raise
        error(_going_on_from_its_checkpoint(message, exc))
        return 2
    except Exception as exc:  # click usage errors (a missing or unknown option) have their own exit codes
        if isinstance(exc, _click_exceptions()):
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command: its help is the answer
                exc.show()
            else:  # one line, as every other error
                ctx = getattr(exc, "ctx", None)
                global_option = getattr(exc, "option_name", None) in GLOBAL_OPTIONS and ctx and ctx.parent
                message = exc.format_message()
                if global_option:  # `vidbooth list --home DIR`: click's 'Possible options' would not hold it
                    given = exc.option_name + (" DIR" if exc.option_name == "--home" else "")
                    message = f"No such option: {exc.option_name}"
                    command = "" if exc.option_name == "--version" else f" {ctx.info_name} ..."
                    hint = f" ({exc.option_name} goes before the command: vidbooth {given}{command})"
                else:
                    hint = f" (see '{ctx.command_path} --help')" if ctx else ""
                error(message + hint)
            return exc.exit_code
        raise
    if code == INTERRUPTED:  # typer returns Ctrl-C as this exit code, silently
        stopped("interrupted")  # told by the first process, as every stop
    return code if isinstance(code, int) else 0


STDOUT_ERRORS = "vidbooth-escape"
"""How stdout writes what its encoding cannot hold: a file name's bytes that the locale could not read (kept as
lone surrogates) as those bytes, as Python's surrogateescape writes them, and any other letter as an escape."""


def _escape(problem: UnicodeEncodeError) -> tuple[bytes, int]:
    from vidbooth.errors import unread_byte

    text = problem.object[problem.start : problem.end]
    return b"".join(bytes([ord(c) - 0xDC00]) if unread_byte(c) else
                    c.encode("ascii", "backslashreplace") for c in text), problem.end


def _escaping_stdout() -> None:
    """stdout writes what its encoding cannot hold as STDOUT_ERRORS says (a subject named 'Ś*' listed under LANG=C,
    or into a Windows pipe, had ended in a UnicodeEncodeError traceback); stderr escapes it already."""
    import codecs

    if getattr(sys.stdout, "errors", None) not in ("strict", "surrogateescape"):
        return
    codecs.register_error(STDOUT_ERRORS, _escape)
    with contextlib.suppress(AttributeError, ValueError):  # a stream that is not a TextIOWrapper, or a closed one
        sys.stdout.reconfigure(errors=STDOUT_ERRORS)


def os_error_message(exc: OSError) -> str | None:
    """One line for a full disk, a file or folder this process may not use (a library or cache of another user, a
    read-only file system), and a few more a user can act on (a mount that went away); None for any other error."""
    import errno

    from vidbooth.fileio import disk_full

    if disk_full(exc):
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"the disk is full{where}: free space and run the command again"
    where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name) or "a file or folder"
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return (f"{(exc.strerror or 'permission denied').lower()}: {where}: give yourself access to it, or use another "
                "folder (for what the command writes: --out; for the library: --home; for vidbooth's cache: "
                "$VIDBOOTH_CACHE), and run the command again")
    if exc.errno == errno.EFBIG:
        return (f"a file grew past what this file system or your file-size limit (ulimit -f) allows, writing {where}: "
                "write to another file system, or raise the limit, and run the command again")
    if exc.errno == errno.ENAMETOOLONG:
        return f"a file name is too long for this file system: {where}: choose a shorter name or path"
    if exc.errno == errno.EIO:  # a device's error, or ffmpeg stopping midway (data.video)
        return f"{exc.strerror or 'input/output error'}: {where}: run the command again"
    if exc.filename and exc.errno in (errno.ESTALE, errno.ENOTCONN):  # a network (NFS) or FUSE mount that went away
        return (f"{(exc.strerror or os.strerror(exc.errno)).lower()}: {where}: its file system (a network or FUSE "
                "mount) went away; mount it again and run the command again")  # (a socket's ENOTCONN names no file)
    if exc.errno == errno.EXDEV:
        return (f"cannot move {where} across file systems: keep the folders vidbooth moves between (the library "
                "and its subfolders, --out and its folder) on one file system")
    return None


LESS_AT_ONCE = {
    "generate": "--batch-size 1 (the same videos, one at a time), fewer --num-frames, a smaller --height/--width",
    "demo": "fewer --num-videos, or --fast",
    "evaluate": "a smaller --batch-size",
    "pretrain": "a smaller --set unet.batch=N (or autoencoder.batch, clip.batch), or a smaller --set arch.size=N",
    "train-subject": "a smaller --batch-size or --resolution, or a smaller --set prior.sample_batch_size=N",
    "train-motion": "fewer --num-frames, a smaller --resolution or --batch-size",
    "train-image-prompt": "fewer --num-frames, a smaller --resolution or --batch-size",
}
"""What each command can ask for less of when memory runs out (the rest: a smaller batch)."""
LESS_AT_ONCE |= {"textual-inversion": LESS_AT_ONCE["train-subject"], "identity-adapter": LESS_AT_ONCE["train-subject"],
                 "motion-adapter": LESS_AT_ONCE["train-motion"]}


RECOMPUTING_COMMANDS = {"train-subject", "textual-inversion", "identity-adapter", "train-motion", "motion-adapter",
                        "train-image-prompt"}
"""Commands with --gradient-checkpointing, which trades memory for time."""
NO_PRECISION_FLAG = {"evaluate", "pretrain"}
"""Commands without --precision (evaluate scores in float32; pretrain trains nano in float32)."""


def _tell_the_other_processes(argv: list[str], refusal: Exception) -> None:
    """A training command refused in one process of a launch before its processes met (a recipe file missing on one
    machine): the others are told, so that they stop too (`engine.train.refused_before_meeting`)."""
    from vidbooth.reporting import leftover_launcher_variables, process_count

    if process_count() == 1 or leftover_launcher_variables() or _command_of(argv) not in TRAINING_COMMANDS:
        return  # (a shell that kept a launcher's variables: no launcher started it, nor any other process)
    from vidbooth.engine.train import refused_before_meeting

    refused_before_meeting(refusal, _device_given(argv))


def _device_given(argv: list[str]) -> str:
    """The device `argv` gives (--device, --set runtime.device=, else runtime.device in the --recipe file, where this
    machine reads it), which the others meet on; 'auto' without one. (A recipe's device had been left out: on a
    machine with GPUs, the refused process met the others on CUDA, they on the CPU.)"""
    device = recipe = None
    for word, value in zip(argv, [*argv[1:], ""]):
        if word == "--device" or (word == "--set" and value.startswith("runtime.device=")):
            device = value.removeprefix("runtime.device=")
        elif word.startswith(("--device=", "--set=runtime.device=")):
            device = word.rsplit("=", 1)[1]
        elif word in ("--recipe", "-r") or word.startswith("--recipe="):
            recipe = word.split("=", 1)[1] if "=" in word else value
    if device is None and recipe:
        device = _recipe_device(recipe)
    return device or "auto"


def _recipe_device(recipe: str) -> str | None:
    """runtime.device in `recipe` (a file or a shipped recipe's name); None where it gives none or cannot be read
    (the refusal itself, perhaps)."""
    from omegaconf import OmegaConf

    from vidbooth.config.load import find_recipe

    try:
        return OmegaConf.select(OmegaConf.load(find_recipe(recipe)), "runtime.device", default=None)
    except Exception:  # not read here: the others' own device is the best guess left
        return None


def _command_of(argv: list[str]) -> str | None:
    """The command named in `argv` (its first word that is not an option or an option's value)."""
    return _before_the_command(argv)[1]


def _debug_asked(argv: list[str]) -> bool:
    """--debug given to vidbooth itself, or VIDBOOTH_DEBUG set: known before typer reads `argv`, for the errors
    raised before it does."""
    return "--debug" in _before_the_command(argv)[0] or os.environ.get("VIDBOOTH_DEBUG", "") not in ("", "0")


def _before_the_command(argv: list[str]) -> tuple[list[str], str | None]:
    """The options given to vidbooth itself in `argv` (before its command; without their values) and the command."""
    words, options = iter(argv), []
    for word in words:
        if not word.startswith("-"):
            return options, word
        options.append(word)
        if word == "--home":
            next(words, None)
    return options, None


def _going_on_from_its_checkpoint(message: str, exc: BaseException) -> str:
    """`message` for an error that stopped a training run which had saved a checkpoint (`kept_checkpoint`, set by
    the training loop): its 'run the command again', which a stopped run's checkpoint refuses, becomes how to go
    on from that checkpoint."""
    kept = getattr(exc, "kept_checkpoint", None)
    if kept is None:
        return message
    ending = next((end for end in ("run the command again", "run it again") if message.endswith(end)), None)
    go_on = f"rerun the same command with --resume to go on from its last checkpoint ({kept})"
    return f"{message[: -len(ending)]}{go_on}" if ending else f"{message}; {go_on}"


def _amount(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 / 10 else f"{max(size / 2**20, 0.1):.1f} MiB"


def out_of_memory_message(exc: BaseException, command: str | None = None) -> str | None:
    """One line for an allocation that failed (torch's CUDA or CPU allocator, or Python's MemoryError) with the
    size asked for when the error says it, and what `command` can ask for less of; None for any other error."""
    from vidbooth.errors import RECOMPUTING, ran_out_of_memory

    if not ran_out_of_memory(exc):
        return None
    text = str(exc)
    asked = ""
    if found := re.search(r"tried to allocate (\d+) bytes", text, flags=re.IGNORECASE):
        asked = f" (it asked for {_amount(int(found.group(1)))} at once)"  # 0.5 MiB had been '0.0 GiB'
    elif found := re.search(r"tried to allocate ([\d.]+ [KMGT]i?B)", text, flags=re.IGNORECASE):
        asked = f" (it asked for {found.group(1)} more)"
    less = LESS_AT_ONCE.get(command or "", "a smaller batch")
    half = "" if command in NO_PRECISION_FLAG else ", or use --precision fp16 on a GPU"
    was_on = RECOMPUTING in getattr(exc, "__notes__", ())
    recompute = " or --gradient-checkpointing" if command in RECOMPUTING_COMMANDS and not was_on else ""
    return f"out of memory{asked}: ask for less at once ({less}){half}{recompute}, and run it again"


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM outside training (which checkpoints first): noted, then raised as KeyboardInterrupt
    and `Interrupted` (exit 143), so that clean-up runs and one line says what happened. SIGTERM's default would
    end the process silently, with no clean-up."""
    import signal
    import threading

    from vidbooth.errors import Interrupted, stop, stop_signals

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, stop) for signum in stop_signals()}
    shown = sys.unraisablehook

    def unshown_stops(unraisable) -> None:  # a stop that Python drops in a finaliser is noted (errors._stops) and
        if not isinstance(unraisable.exc_value, (KeyboardInterrupt, Interrupted)):  # acted on: not a traceback too
            shown(unraisable)

    sys.unraisablehook = unshown_stops
    try:
        yield
    finally:
        sys.unraisablehook = shown
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def quiet_tokenizers_forks() -> None:
    """Tokenizers' threads off unless the user set them (TOKENIZERS_PARALLELISM): tokenizers 0.22 (the floor) printed
    four lines of warning into each command's output when ffmpeg was started after a prompt had been tokenised. A
    prompt's few tokens gain nothing from threads."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run() -> None:
    """The `vidbooth` command: `main`, then exit with its code. A Ctrl-C or SIGTERM after main returned, while the
    interpreter shuts down, had ended the process by that signal without a word (130 for a run whose work was saved
    and told): the outcome is told, so they are ignored then."""
    quiet_tokenizers_forks()
    code = main()
    import signal

    from vidbooth.errors import stop_signals

    for signum in stop_signals():
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    run()
