"""The reporting layer: what users see on stdout/stderr."""

import pytest

from vidbooth import reporting
from vidbooth.errors import UserError


def test_table_into_a_pipe_keeps_each_row_on_one_line(capsys):
    long_prompt = "a S* circle moving in a circle, " * 4  # far wider than rich's 80-column default off a terminal
    reporting.table("demo", ["variant", "prompt", "score"], [("subject", long_prompt.strip(), 0.12345)], to_stdout=True)
    lines = capsys.readouterr().out.splitlines()
    row = [line for line in lines if "subject" in line]
    assert len(row) == 1, lines
    assert long_prompt.strip() in row[0] and "0.1235" in row[0]


def test_long_messages_into_a_pipe_stay_on_one_line(capsys, monkeypatch):
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    message = "image sim. of the photos themselves through nano's autoencoder: 0.743 " * 3
    reporting.info(message.strip())
    reporting.warn(message.strip())
    lines = capsys.readouterr().err.splitlines()
    assert lines == [message.strip(), "warning: " + message.strip()]


def test_table_and_progress_show_names_as_they_are_not_as_markup(capsys, monkeypatch):
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    reporting.table("library [red]x", ["video"], [("take[bold].mp4",), ("x[/].mp4",)], to_stdout=True)
    with reporting.progress("motion [/]M", total=1) as task:
        task.advance(loss=0.5)
    captured = capsys.readouterr()
    assert "library [red]x" in captured.out and "take[bold].mp4" in captured.out and "x[/].mp4" in captured.out
    assert "motion [/]M" in captured.err


def test_what_files_hold_is_shown_without_its_control_characters(capsys, monkeypatch):
    """A shared adapter's metadata or a manifest holding a terminal's escape sequences (retitle it, clear it) was
    printed as it was, in errors and in `vidbooth list`: each control character shows as \\xNN instead."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    crafted = "nano\x1b]0;pwned\x07\x1b[2J\x9b31m\x00"
    shown = "nano\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x00"
    reporting.error(f"trained on another base ({crafted})")
    reporting.warn(crafted)
    reporting.info(crafted)
    reporting.table(crafted, ["class noun"], [(crafted,)], to_stdout=True)
    with reporting.progress(f"sampling {crafted}", total=1) as task:
        task.advance()
    captured = capsys.readouterr()
    assert captured.err.splitlines()[:3] == [f"error: trained on another base ({shown})", f"warning: {shown}", shown]
    assert f"sampling {shown}" in captured.err.splitlines()[-1]
    assert captured.out.count(shown) == 2
    assert not any(ch in captured.out + captured.err for ch in "\x1b\x07\x9b\x00")


def test_a_message_stays_one_line_and_shows_text_in_its_own_order(capsys, monkeypatch):
    """A photo named with a line break, or a name holding a right-to-left mark (which shows 'gpj.exe' as 'exe.jpg'),
    had printed a second line or reordered text: both are shown escaped, other letters as they are."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    reporting.warn("skipped photo a\nerror: b.jpg")
    reporting.info("naïve \u202egpj.exe 日本")
    assert capsys.readouterr().err.splitlines() == ["warning: skipped photo a\\x0aerror: b.jpg",
                                                    "naïve \\u202egpj.exe 日本"]


def test_under_a_launcher_only_the_first_process_speaks_but_every_one_shows_its_error(capsys, monkeypatch):
    """`accelerate launch --num_processes 2`: each process reads the same clips, and each had shown their warnings."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "1")  # quiet silences info lines, never warnings
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # torchrun's, beside its RANK and WORLD_SIZE
    for variable, rank, shown in (("RANK", "0", ["warning: short clip", "error: no disk"]),
                                  ("RANK", "1", ["error (process 1): no disk"]),
                                  ("PMI_RANK", "3", ["error (process 3): no disk"]),  # MPI's (accelerate --cpu)
                                  ("OMPI_COMM_WORLD_RANK", "2", ["error (process 2): no disk"])):
        for name in (*reporting.RANK_VARIABLES, *reporting.SIZE_VARIABLES):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(variable, rank)
        size = reporting.SIZE_VARIABLES[reporting.RANK_VARIABLES.index(variable)]
        monkeypatch.setenv(size, "4")
        reporting.info("loading")
        reporting.warn("short clip")
        reporting.error("no disk")
        assert capsys.readouterr().err.splitlines() == shown


def test_each_machines_first_process_shows_the_run_and_results_come_once(capsys, monkeypatch):
    """Two machines of two processes each: the second machine's terminal had shown nothing through a whole run,
    neither its lines nor its progress nor a stop. Results (stdout, tables) still come from the first process only."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    everything = ["loading", "warning: short clip", "error (process {rank}): stopped by SIGINT", "error (process "
                  "{rank}): no disk"]
    accelerates = {"RANK": "1", "LOCAL_RANK": "0"}  # written by accelerate for MPI's processes, 0 where MPI gave none
    mpiruns_torchrun = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
    for ranks, local_ranks, rank, local_rank, shown, written in (
            ("RANK", "LOCAL_RANK", "2", "0", everything, {}),
            ("RANK", "LOCAL_RANK", "3", "1", ["error (process 3): no disk"], {}),
            ("RANK", None, "1", None, ["error (process 1): no disk"], {}),  # a launcher without local ranks: as before
            ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "2", "0", everything, {}),
            ("PMI_RANK", "MPI_LOCALRANKID", "3", "1", ["error (process 3): no disk"], {}),
            ("PMI_RANK", None, "1", None, ["error (process 1): no disk"], accelerates),
            ("RANK", "LOCAL_RANK", "5", "1", ["error (process 5): no disk"], mpiruns_torchrun),
            ("RANK", "LOCAL_RANK", "4", "0", everything, mpiruns_torchrun)):
        for name in (*reporting.RANK_VARIABLES, *reporting.SIZE_VARIABLES, *reporting.LOCAL_RANK_VARIABLES):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(ranks, rank)
        monkeypatch.setenv(reporting.SIZE_VARIABLES[reporting.RANK_VARIABLES.index(ranks)], "4")
        if local_ranks:
            monkeypatch.setenv(local_ranks, local_rank)
        for name, value in written.items():
            monkeypatch.setenv(name, value)
        reporting.info("loading")
        reporting.warn("short clip")
        with reporting.progress("motion M", total=1) as task:
            task.advance(loss=0.5)
        reporting.stopped("stopped by SIGINT")
        reporting.error("no disk")
        reporting.result("/library/motions/M")
        reporting.table("scores", ["video"], [("a.mp4",)], to_stdout=True)
        said = capsys.readouterr()
        assert said.out == ""
        lines = [line for line in said.err.splitlines() if not line.startswith("motion M")]
        assert lines == [line.format(rank=rank) for line in shown], (ranks, rank)
        assert said.err.count("motion M") == (shown == everything), (ranks, rank)


def test_a_process_place_on_its_machine_is_the_launchers_that_started_it(monkeypatch):
    """Where class images are shared out among a machine's processes: MPI's variables when MPI started every
    process (accelerate writes LOCAL_RANK=0 there, with no LOCAL_WORLD_SIZE), torchrun's else; none when the
    launcher does not say both."""
    mpi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    for variables, place in ((torchrun, (1, 2)), (mpi | {"RANK": "3", "LOCAL_RANK": "0"}, (1, 2)),
                             (torchrun | {"LOCAL_WORLD_SIZE": "1"}, None), (torchrun | {"LOCAL_WORLD_SIZE": ""}, None),
                             ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, None),
                             (torchrun | {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",  # torchrun, one
                                          "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"},
                              (1, 2)),  # per machine, started by mpirun
                             ({}, None)):
        for name in {*reporting.RANK_VARIABLES, *reporting.SIZE_VARIABLES, *reporting.LOCAL_RANK_VARIABLES,
                     *reporting.LOCAL_SIZE_VARIABLES}:
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        assert reporting.place_on_this_machine() == place, variables


def test_under_a_launcher_a_stop_is_told_once_not_by_every_process(capsys, monkeypatch):
    """A Ctrl-C reaches every process of `accelerate launch`; each had printed "stopped by SIGINT ..."."""
    from vidbooth.cli import app
    from vidbooth.errors import Interrupted

    def stopped_command(argv):
        raise Interrupted("stopped by SIGINT at step 3/10; checkpoint saved", 130)

    monkeypatch.setattr(app, "_refuse_a_launcher", stopped_command)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    for rank, shown in (("0", "error: stopped by SIGINT at step 3/10; checkpoint saved\n"), ("1", "")):
        monkeypatch.setenv("RANK", rank)
        assert app.main(["train-motion", "clip.mp4"]) == 130
        assert capsys.readouterr().err == shown


def test_into_a_log_a_progress_bar_is_written_every_so_often_not_only_at_its_end(capsys, monkeypatch):
    """`vidbooth demo > log` had shown nothing of a 15-minute training until it ended."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    monkeypatch.setattr(reporting, "LOG_EVERY_SECONDS", 0.0)
    with reporting.progress("textual inversion", total=3) as task:
        for _ in range(3):
            task.advance(loss=0.25)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[3] for line in lines] == ["1/3", "2/3", "3/3"] and all("loss=0.25" in line for line in lines)
    monkeypatch.setattr(reporting, "LOG_EVERY_SECONDS", 30.0)
    with reporting.progress("textual inversion", total=3) as task:
        for _ in range(3):
            task.advance()
    assert len(capsys.readouterr().err.splitlines()) == 1  # its end only, within 30 s


def test_into_a_log_a_bars_line_is_whole_whatever_columns_says(capsys, monkeypatch):
    """With COLUMNS=40 (a CI runner's), rich had cut a logged bar's line to its description and the start of its
    fields, dropping the step count, times and loss."""
    from rich.console import Console

    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    monkeypatch.setattr(reporting, "console", Console(stderr=True, width=40, highlight=False))  # as COLUMNS=40 makes it
    monkeypatch.setattr(reporting, "LOG_EVERY_SECONDS", 0.0)
    with reporting.progress("identity adapter", total=2) as task:
        for _ in range(2):
            task.advance(loss=0.125)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[3] for line in lines] == ["1/2", "2/2"]
    assert all("eta" in line and "loss=0.125" in line for line in lines)


def test_under_a_launcher_commands_that_do_not_share_work_are_refused_and_tables_come_once(capsys, monkeypatch,
                                                                                        isolated_home):
    """generate and evaluate had run in full on every process, writing the same files twice and printing the results
    table twice on stdout. (An earlier call of main with --debug had had the refusal raised, with its traceback.)"""
    from vidbooth.cli.app import main

    assert main(["--debug", "list"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    for command in (["generate", "--prompt", "a dog"], ["evaluate", "out.mp4"], ["demo"], ["list"]):
        assert main(command) == 2
        assert capsys.readouterr().err == (f"error: {command[0]} runs in one process, and this launcher started 2: run "
                                           "it without accelerate launch (the training commands share their work "
                                           "across processes)\n")
    with pytest.raises(UserError, match="generate runs in one process"):  # with its traceback, as asked
        main(["--debug", "generate", "--prompt", "a dog"])
    assert main(["--home", "--debug", "generate", "--prompt", "a dog"]) == 2  # a library folder named --debug
    assert capsys.readouterr().err.startswith("error: generate runs in one process")
    monkeypatch.setenv("RANK", "1")
    assert main(["generate", "--prompt", "a dog"]) == 2 and capsys.readouterr().err == ""  # said once, by process 0
    monkeypatch.setenv("LOCAL_RANK", "0")  # the first process of a second machine: said there too
    assert main(["generate", "--prompt", "a dog"]) == 2
    assert capsys.readouterr().err.startswith("error (process 1): generate runs in one process")
    monkeypatch.delenv("LOCAL_RANK")
    reporting.table("scores", ["video"], [("a.mp4",)], to_stdout=True)
    assert capsys.readouterr().out == ""


def test_an_error_shows_a_path_with_its_spaces_as_they_are(tmp_path, capsys, isolated_home):
    """An error's message had every run of spaces squeezed to one: a folder 'My  Clips' was named 'My Clips', which
    a user could not find or paste. Only line breaks become spaces."""
    from vidbooth.cli.app import main

    missing = tmp_path / "My  Clips" / "dance.mp4"
    assert main(["train-motion", str(missing), "--name", "M"]) == 2
    assert capsys.readouterr().err == (f"error: clip not found: {missing}: check the spelling, or quote paths that "
                                       "contain spaces (a clip is a video file or a folder of frames)\n")
    assert str(UserError("a\n    b  c\r\n")) == "a b  c"


def test_native_lines_with_the_tokenizer_noise_are_dropped_and_the_others_kept(capfd):
    """(mutation testing: keeping every line had passed)"""
    import os

    with reporting.native_lines_dropped(reporting.TOKENIZER_NOISE):
        os.write(1, b"Ignored unknown kwarg option __type\nkeep\n")
    assert capfd.readouterr().out == "keep\n"


def test_a_quiet_progress_bar_writes_nothing(capsys, monkeypatch):
    """(mutation testing: a bar drawn under VIDBOOTH_QUIET had passed)"""
    monkeypatch.setenv("VIDBOOTH_QUIET", "1")
    with reporting.progress("x", total=3) as task:
        task.advance()
    assert capsys.readouterr().err == ""


def test_a_quiet_download_keeps_the_hubs_progress_bars_off(monkeypatch):
    """(mutation testing: turning the hub's bars on under VIDBOOTH_QUIET had passed)"""
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    monkeypatch.setenv("VIDBOOTH_QUIET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", False)
    were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        with reporting.downloading("someone/model", say=False):
            assert are_progress_bars_disabled()
        assert are_progress_bars_disabled()
        monkeypatch.setenv("VIDBOOTH_QUIET", "0")  # the same download, not quiet: the bars are on inside only
        with reporting.downloading("someone/model", say=False):
            assert not are_progress_bars_disabled()
        assert are_progress_bars_disabled()
    finally:
        if not were_off:
            enable_progress_bars()


class _Terminal:
    """A stream that says it is a terminal, as a user's is."""

    def __init__(self):
        import io

        self.written = io.StringIO()

    def write(self, text):
        return self.written.write(text)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_in_a_narrow_terminal_a_table_folds_names_and_paths_and_never_cuts_them(monkeypatch):
    """At 80 columns `vidbooth list` had shown 'my-favourite-gold…', the name to give --subject, and evaluate its
    videos' paths as '/tmp/aud…'."""
    terminal = _Terminal()
    console = reporting._Console(file=terminal, width=40, force_terminal=True, color_system=None)
    monkeypatch.setattr(reporting, "stdout_console", console)
    name, path = "my-favourite-golden-retriever-sks", "/runs/experiment-2026-12-06/take-12.mp4"
    reporting.table("library", ["name", "kind", "path"], [(name, "subject", path)], to_stdout=True)
    lines = terminal.written.getvalue().splitlines()
    assert max(len(line) for line in lines) == 40  # the terminal's width, not the table's
    rows = [line.split("│") for line in lines if line.count("│") == 4]
    assert "".join(row[1].strip() for row in rows) == name and "".join(row[3].strip() for row in rows) == path


def test_in_a_terminal_too_narrow_for_its_columns_a_table_keeps_its_text(monkeypatch):
    """At COLUMNS=10 every cell of `vidbooth list` had come out empty: the table is then written at its own width,
    for the terminal to wrap."""
    terminal = _Terminal()
    console = reporting._Console(file=terminal, width=10, force_terminal=True, color_system=None)
    monkeypatch.setattr(reporting, "stdout_console", console)
    reporting.table("subjects", ["name", "class noun", "kind"], [("S*", "dog", "subject")], to_stdout=True)
    rows = [line for line in terminal.written.getvalue().splitlines() if line.count("│") == 4]
    assert [cell.strip() for cell in rows[0].split("│")[1:4]] == ["S*", "dog", "subject"]


def test_forced_colour_into_a_log_writes_lines_not_redraws(monkeypatch):
    """FORCE_COLOR=1 (CI's, for coloured logs) makes rich take any stream for a terminal: a bar had redrawn into the
    log 9 times a second, carriage returns and escape codes, past the 30-second throttle."""
    import io

    log = io.StringIO()
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    monkeypatch.setattr(reporting, "console", reporting._Console(file=log, stderr=True, force_terminal=True))
    assert reporting.console.is_terminal  # what FORCE_COLOR makes of a file
    with reporting.progress("motion M", total=50) as task:
        for _ in range(50):
            task.advance(loss=0.5)
    written = log.getvalue()
    assert "\r" not in written and "\x1b" not in written
    assert len(written.splitlines()) == 1 and "50/50" in written  # its end only, within 30 s


def test_quiet_is_off_for_the_words_that_say_off(monkeypatch):
    for value, quiet in (("1", True), ("yes", True), ("0", False), ("false", False), ("No", False), ("off", False)):
        monkeypatch.setenv("VIDBOOTH_QUIET", value)
        assert reporting._quiet() is quiet, value


def test_a_result_goes_to_stdout_plain_even_when_quiet(capsys, monkeypatch):
    monkeypatch.setenv("VIDBOOTH_QUIET", "1")
    reporting.result("/videos/take [bold]1.mp4")
    assert capsys.readouterr().out == "/videos/take [bold]1.mp4\n"


def test_a_result_is_written_as_it_is_into_a_pipe_escaped_in_a_terminal_and_dropped_without_a_stdout(monkeypatch):
    """`video=$(vidbooth generate ...)` must get the path that exists (a DEL in a name had come out as '\\x7f'); a
    terminal is not to be driven by a name's control characters; no stdout (`>&-`) had been a traceback after the
    video was written."""
    import io
    import sys

    name = "/videos/take\x7f 1.mp4"
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stdout", pipe)
    reporting.result(name)
    assert pipe.getvalue() == name + "\n"
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    reporting.result(name)
    assert terminal.written.getvalue() == "/videos/take\\x7f 1.mp4\n"
    monkeypatch.setattr(sys, "stdout", None)
    reporting.result(name)
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    reporting.result(name)


def test_a_launchers_variables_left_in_the_shell_are_one_error_line_not_silence(capsys, monkeypatch, isolated_home):
    """RANK=1 left in a shell (a sourced torchrun environment, a worker pod's) had silenced every line and result,
    exit 0; with WORLD_SIZE=2 too, `list` had ended with 2 and no word."""
    from vidbooth.cli.app import main

    for name in (*reporting.RANK_VARIABLES, *reporting.SIZE_VARIABLES, "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    assert reporting.first_process()
    reporting.warn("short clip")
    assert capsys.readouterr().err == "warning: short clip\n"
    assert main(["list"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: RANK=1 is set, as torchrun and accelerate launch set it for their processes, but MASTER_ADDR is not: "
        "no launcher started this command; unset RANK (left from another run?) and run it again"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["list", "--json"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: RANK=1 and WORLD_SIZE=2 are set, as torchrun and accelerate launch set them for their processes, but "
        "MASTER_ADDR is not: no launcher started this command; unset RANK WORLD_SIZE (left from another run?) and run "
        "it again"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process, as a launcher of one sets them
    assert main(["list", "--json"]) == 0 and capsys.readouterr().out == "[]\n"
    monkeypatch.setenv("WORLD_SIZE", "4")  # a rank that says one process does not make four one (mutation testing)
    assert main(["list", "--json"]) == 2 and "RANK=0 and WORLD_SIZE=4 are set" in capsys.readouterr().err
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("PMI_RANK", "1")  # an MPI rank with no number of processes: one process, which speaks
    assert reporting.first_process()


def test_a_stream_on_descriptor_2_is_stderr_and_a_failed_message_write_points_it_at_nothing(tmp_path):
    """(mutation testing) A console whose file is another wrapper of descriptor 2 (as rich's may be) is stderr: its
    closed reader does not stop the command. And once a message cannot be written (stderr on a full disk), the
    descriptor writes to the null device, so that Python's last flush at exit does not fail on it too."""
    import subprocess
    import sys

    import pytest

    from vidbooth.errors import OutputClosed

    script = """
import io, os, sys
from vidbooth import reporting
console = reporting._Console(file=sys.stderr)
console.print("a message that cannot be written")
print(os.readlink("/proc/self/fd/2"), flush=True)
other = io.TextIOWrapper(io.FileIO(2, "w", closefd=False))  # descriptor 2, not sys.stderr
reporting.stream_closed(other)  # stderr's reader went away: the command goes on
"""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=full, text=True,
                              timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines() == ["/dev/null"]
    with open(tmp_path / "out.txt", "w") as stdout, pytest.raises(OutputClosed):  # stdout's reader: it stops
        reporting.stream_closed(stdout)


class _Writer:
    """A script's own stream (as contextlib.redirect_stdout takes): write and flush, no isatty or fileno."""

    def __init__(self, reader_gone: bool = False):
        self.parts, self.reader_gone = [], reader_gone

    def write(self, text: str) -> int:
        if self.reader_gone:
            raise BrokenPipeError(32, "Broken pipe")
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_forced_colour_into_a_stream_without_isatty_writes_lines_not_redraws(monkeypatch):
    log = _Writer()
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    monkeypatch.setattr(reporting, "console", reporting._Console(file=log, stderr=True, force_terminal=True))
    with reporting.progress("motion M", total=50) as task:
        for _ in range(50):
            task.advance(loss=0.5)
    written = "".join(log.parts)
    assert "\r" not in written and "\x1b" not in written and "50/50" in written


def test_a_result_into_a_scripts_stream_whose_reader_went_away_stops_the_command(monkeypatch):
    import sys

    from vidbooth.errors import OutputClosed

    monkeypatch.setattr(sys, "stdout", _Writer(reader_gone=True))
    with pytest.raises(OutputClosed):
        reporting.result("/videos/take.mp4")


@pytest.mark.parametrize("write", [
    lambda: reporting.result("{\n" + "x" * 200_000),
    lambda: reporting.table("scores", ["video", "score"], [(f"{i}.mp4", 0.5) for i in range(6000)], to_stdout=True),
], ids=["result", "table"])
def test_output_longer_than_a_pipe_holds_whose_reader_goes_away_mid_write_stops_the_command(write, monkeypatch):
    """`evaluate --json - | head -1` with a report over 64 KB (or a table as long) had ended with 0: the pipe took
    part of the write, and Python's buffered writer (or rich's write) returned the part it took, dropping the rest
    without an error."""
    import io
    import os
    import sys
    import threading
    import time

    from vidbooth.errors import OutputClosed

    read_end, write_end = os.pipe()

    def reader() -> None:  # `head -1`: once the writer waits on a full pipe, it reads a little and goes away
        time.sleep(0.5)
        os.read(read_end, 10)
        os.close(read_end)

    thread = threading.Thread(target=reader)
    stdout = io.TextIOWrapper(io.FileIO(write_end, "w"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    thread.start()
    try:
        with pytest.raises(OutputClosed):
            write()
    finally:
        thread.join()
        stdout.close()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_results_and_tables_on_a_stdout_whose_encoding_starts_with_a_byte_order_mark_have_one(monkeypatch, encoding):
    """PYTHONIOENCODING=utf-8-sig (`evaluate --csv - > scores.csv` for Excel on Windows): the stream starts with one
    byte-order mark, as its text layer writes it; whole writes that encoded each text afresh had put one before every
    result and table."""
    import codecs
    import io
    import sys

    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding=encoding, newline="\n")
    monkeypatch.setattr(sys, "stdout", stdout)
    reporting.result("take-1.mp4")
    reporting.result("take-2.mp4")
    reporting.table("scores", ["video"], [("take-1.mp4",)], to_stdout=True)
    text = raw.getvalue().decode(encoding)
    assert text.startswith("take-1.mp4\ntake-2.mp4\n") and "\ufeff" not in text, ascii(text[:40])
    assert raw.getvalue().startswith({"utf-8-sig": codecs.BOM_UTF8, "utf-16": codecs.BOM_UTF16}[encoding])


def test_a_result_under_a_live_progress_bar_is_written_whole_on_stdout(monkeypatch):
    """A progress bar in a terminal puts rich's proxy in place of sys.stdout, which holds what it is given until a
    line ends and then prints it on the bar's console (stderr): a result's first character, written through the
    text layer for its byte-order mark, had gone there."""
    import io
    import sys

    from rich.console import Console
    from rich.file_proxy import FileProxy

    raw, bar = io.BytesIO(), io.StringIO()
    stdout = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
    monkeypatch.setattr(sys, "stdout", FileProxy(Console(file=bar), stdout))
    reporting.result("/videos/take.mp4")
    assert (raw.getvalue(), bar.getvalue()) == (b"/videos/take.mp4\n", "")
