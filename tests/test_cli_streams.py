"""What the command line writes where, through the real entry point: results on stdout for scripts, plain whatever
the terminal says; a reader that goes away; a stdout whose encoding lacks a name's letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from vidbooth import library


def _vidbooth(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vidbooth", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _subject(name: str) -> None:
    with library.staged_artifact("subject", name) as stage:
        save_file({"w": torch.ones(3)}, str(stage / "adapter.safetensors"))
        library.write_json(stage / library.MANIFEST, {"name": name, "kind": "subject", "class_noun": "dog"})


def test_list_is_read_whole_with_forced_colour_and_a_stdout_that_cannot_hold_the_names_letters(isolated_home):
    """`list --json` under FORCE_COLOR=1 had held colour codes (not JSON), and under LANG=C without UTF-8 mode a
    subject named 'Ś*' had ended `list` in a UnicodeEncodeError traceback."""
    _subject("Ś*")
    ascii_stdout = {"FORCE_COLOR": "1", "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    out, err = _vidbooth("list", "--json", env=ascii_stdout).communicate(timeout=120)
    assert err == b"" and [manifest["name"] for manifest in json.loads(out)] == ["Ś*"]
    listed = _vidbooth("list", env=ascii_stdout)
    out, err = listed.communicate(timeout=120)
    assert listed.returncode == 0 and b"Traceback" not in err and b"\\u015a*" in out


def test_a_reader_of_stdout_that_goes_away_stops_the_command_quietly(isolated_home):
    """`vidbooth list | head -1`: exit 141, as a shell has it for a process ended by SIGPIPE (rich had exited 1,
    which for evaluate means that some videos failed)."""
    listing = _vidbooth("list", "--json")
    listing.stdout.close()  # before the command writes: its reader is gone
    assert listing.wait(timeout=120) == 141 and listing.stderr.read() == b""


def test_a_reader_of_stderr_that_goes_away_does_not_stop_the_work(tiny_base_dirs, tmp_path):
    """A closed log (`... 2>&1 | tee log`, tee killed) had ended generate (or an hours-long training) at its next
    message, with nothing written; the messages go nowhere and the video is written, its path on stdout."""
    out = tmp_path / "clip.mp4"
    generate = _vidbooth("generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--out", str(out),
                         "--frames", "2", "--steps", "2", "--device", "cpu", env={"VIDBOOTH_QUIET": "0"})
    generate.stderr.close()
    assert generate.wait(timeout=300) == 0 and out.is_file()
    assert generate.stdout.read().decode().splitlines() == [str(out)]



@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
def test_a_full_disk_under_the_messages_does_not_stop_the_work_and_under_a_result_is_an_error(tiny_base_dirs,
                                                                                             tmp_path, isolated_home):
    """stderr on a full disk (or /dev/full) had ended generate with 1 at its first info line, nothing written; a
    result sent to a full disk (`list --json > file`, `evaluate --json -`) had ended with 0 and a cut or empty
    file."""
    out = tmp_path / "clip.mp4"
    with open("/dev/full", "w") as full:
        generate = subprocess.Popen(
            [sys.executable, "-m", "vidbooth", "generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt",
             "a dog", "--out", str(out), "--frames", "2", "--steps", "2", "--device", "cpu"],
            env={**os.environ, "VIDBOOTH_QUIET": "0"}, stdout=subprocess.PIPE, stderr=full)
        assert generate.wait(timeout=300) == 0 and out.is_file()
        assert generate.stdout.read().decode().splitlines() == [str(out)]
        _subject("S*")
        listing = subprocess.Popen([sys.executable, "-m", "vidbooth", "list", "--json"], stdout=full,
                                   stderr=subprocess.PIPE)
        assert listing.wait(timeout=120) == 2
    assert listing.stderr.read().decode().splitlines() == [
        "error: cannot write the result to stdout (the disk is full): make room where it goes, or send it elsewhere, "
        "and run the command again"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
def test_a_listing_table_sent_to_a_full_disk_is_one_error_line(isolated_home):
    _subject("S*")
    with open("/dev/full", "w") as full:
        listing = subprocess.Popen([sys.executable, "-m", "vidbooth", "list"], stdout=full, stderr=subprocess.PIPE)
        assert listing.wait(timeout=120) == 2
    told = listing.stderr.read().decode().splitlines()
    assert told == ["error: cannot write the result to stdout (the disk is full): make room where it goes, or send "
                    "it elsewhere, and run the command again"]  # as --json's (it had been the generic full disk's)


def test_an_argument_the_locale_cannot_read_is_one_line_before_any_work(tiny_base_dirs, tmp_path):
    """Under LANG=C with PYTHONUTF8=0 a name's UTF-8 bytes reach Python as lone surrogates, which no config or
    manifest (UTF-8 text) can hold: generate had sampled, then ended in a UnicodeEncodeError traceback."""
    out = os.fsencode(tmp_path) + "/Ś.mp4".encode()
    generate = _vidbooth("generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--out",
                         os.fsdecode(out), "--frames", "2", "--device", "cpu",
                         env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""})
    printed, err = generate.communicate(timeout=300)
    assert generate.returncode == 2 and printed == b"" and os.listdir(tmp_path) == []
    assert err.decode().splitlines() == [
        f"error: '{os.fsdecode(tmp_path)}/\\udcc5\\udc9a.mp4' holds bytes that are not text in this terminal's "
        "encoding: run vidbooth under a UTF-8 locale (LANG=C.UTF-8), or rename the file"]


def test_stdout_writes_a_file_names_unread_bytes_back_and_escapes_other_letters():
    """What an ASCII stdout (LANG=C, PYTHONUTF8=0) cannot hold: a name's bytes that the locale could not read come
    out as those bytes (as Python's surrogateescape has it), any other letter as an escape (it had raised)."""
    import codecs

    from vidbooth.cli.app import STDOUT_ERRORS, _escape

    codecs.register_error(STDOUT_ERRORS, _escape)
    assert "take-\udcc5\udc9a Ś.mp4".encode("ascii", STDOUT_ERRORS) == b"take-\xc5\x9a \\u015a.mp4"
    assert "\udc80\udcff".encode("ascii", STDOUT_ERRORS) == b"\x80\xff"  # the first and last such byte


def test_every_byte_the_locale_could_not_read_is_refused_in_an_argument():
    import pytest

    from vidbooth.cli.app import _refuse_undecodable
    from vidbooth.errors import UserError

    for word in ("a\udc80", "a\udcff"):
        with pytest.raises(UserError, match="holds bytes that are not text in this terminal's encoding"):
            _refuse_undecodable(["generate", "--out", word])
    _refuse_undecodable(["generate", "--out", "Ś.mp4", "\udc7f"])  # letters, and no byte kept as a surrogate


def test_a_library_or_cache_folder_the_locale_could_not_read_is_refused(monkeypatch, tmp_path):
    """Under LC_ALL=C with PYTHONUTF8=0 a $VIDBOOTH_CACHE with an 'è' had ended in 'its tokenizer cannot be read ...
    delete the cache and it is built again', which could not help."""
    from vidbooth.cli.app import _refuse_undecodable
    from vidbooth.errors import UserError

    unread = str(tmp_path / "cach\udce8")  # a byte no encoding here reads (Latin-1 è)
    for name in ("VIDBOOTH_HOME", "VIDBOOTH_CACHE", "HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(name, str(tmp_path))
    for name in ("VIDBOOTH_HOME", "VIDBOOTH_CACHE"):
        with monkeypatch.context() as patched:
            patched.setenv(name, unread)
            with pytest.raises(UserError, match=rf"^\${name} \(.*\) holds bytes that are not text in this terminal's "
                                                rf"encoding: .* or set \${name} to another folder$"):
                _refuse_undecodable(["list"])
    stands_in = (("HOME", ("VIDBOOTH_HOME", "VIDBOOTH_CACHE")), ("XDG_DATA_HOME", ("VIDBOOTH_HOME",)))
    for name, unused_while_set in stands_in:
        monkeypatch.setenv(name, unread)
        _refuse_undecodable(["list"])  # both (or the library) elsewhere: not read
        with monkeypatch.context() as patched:
            patched.delenv(unused_while_set[-1])
            if name == "XDG_DATA_HOME":
                patched.setenv("HOME", str(tmp_path))
            with pytest.raises(UserError, match=rf"^\${name} "):
                _refuse_undecodable(["list"])
        monkeypatch.setenv(name, str(tmp_path))


def test_a_removed_current_folder_and_python_OO_are_one_line_each(monkeypatch, capsys, tmp_path, isolated_home):
    """A removed current folder had ended generate in torch's 'oneMKL FATAL ERROR: Cannot load libtorch_cpu.so' (or
    a FileNotFoundError traceback); python -OO in a traceback from diffusers' docstring handling."""
    from vidbooth.cli.app import main

    def removed():
        raise FileNotFoundError(2, "No such file or directory")

    with monkeypatch.context() as patched:
        patched.setattr(os, "getcwd", removed)
        assert main(["generate", "--prompt", "a dog"]) == 2
    assert capsys.readouterr().err == ("error: the current folder no longer exists (removed after the shell went into "
                                       "it): cd to an existing folder and run the command again\n")
    optimised = subprocess.run([sys.executable, "-OO", "-m", "vidbooth", "generate", "--prompt", "a dog"],
                               capture_output=True, timeout=300, cwd=tmp_path)
    assert optimised.returncode == 2 and optimised.stdout == b""
    assert optimised.stderr.decode() == ("error: python -OO (or PYTHONOPTIMIZE=2) strips the docstrings that diffusers "
                                         "and transformers read: run vidbooth without it (-O is fine)\n")
    version = subprocess.run([sys.executable, "-OO", "-m", "vidbooth", "--version"], capture_output=True, timeout=300,
                             cwd=tmp_path, text=True)
    assert version.returncode == 0 and version.stdout.startswith("vidbooth ") and version.stderr == ""


def test_an_io_error_is_one_line_naming_the_file(monkeypatch, capsys, tmp_path, isolated_home):
    """EIO (a failing device, or ffmpeg stopping midway through a video) had been a traceback."""
    import errno

    import vidbooth.engine.generate as engine
    from vidbooth.cli.app import main

    def failed(cfg):
        raise OSError(errno.EIO, "ffmpeg stopped before the end of the video (its own lines above say why)",
                      str(tmp_path / "out.mp4"))

    monkeypatch.setattr(engine, "generate", failed)
    assert main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "out.mp4")]) == 2
    assert capsys.readouterr().err == ("error: ffmpeg stopped before the end of the video (its own lines above say "
                                       f"why): {tmp_path / 'out.mp4'}: run the command again\n")


@pytest.mark.parametrize("code, strerror", [("ESTALE", "Stale file handle"),
                                             ("ENOTCONN", "Transport endpoint is not connected")])
def test_a_file_on_a_mount_that_went_away_is_one_line_saying_to_mount_it_again(code, strerror, monkeypatch, capsys,
                                                                              tmp_path, isolated_home):
    """A dropped NFS or FUSE mount (ESTALE, ENOTCONN) had been a traceback."""
    import errno

    import vidbooth.engine.generate as engine
    from vidbooth.cli.app import main

    def failed(cfg):
        raise OSError(getattr(errno, code), strerror, str(tmp_path / "mnt" / "out.mp4"))

    monkeypatch.setattr(engine, "generate", failed)
    assert main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "out.mp4")]) == 2
    assert capsys.readouterr().err == (f"error: {strerror.lower()}: {tmp_path / 'mnt' / 'out.mp4'}: its file system (a "
                                       "network or FUSE mount) went away; mount it again and run the command again\n")


def test_an_os_error_is_the_traceback_under_debug_or_where_vidbooth_has_no_words_for_it(monkeypatch, capsys, tmp_path,
                                                                                         isolated_home):
    import errno

    import vidbooth.engine.generate as engine
    from vidbooth.cli.app import main

    raised = []

    def failed(cfg):
        raise raised[-1]

    monkeypatch.setattr(engine, "generate", failed)
    generate = ["generate", "--prompt", "a dog", "--out", str(tmp_path / "out.mp4")]
    raised.append(OSError(errno.EIO, "Input/output error", str(tmp_path / "out.mp4")))
    with pytest.raises(OSError) as shown:
        main(["--debug", *generate])
    assert shown.value is raised[-1]
    for unworded in (OSError(errno.EBADF, "Bad file descriptor"),  # a program's error: its traceback is the report
                     OSError(errno.ENOTCONN, "Transport endpoint is not connected")):  # a socket's, not a mount's
        raised.append(unworded)
        with pytest.raises(OSError) as shown:
            main(generate)
        assert shown.value is raised[-1] and not (tmp_path / "out.mp4").exists()


def test_an_eof_error_is_its_traceback_not_aborted(monkeypatch, capsys, tmp_path, isolated_home):
    """click takes an EOFError for Ctrl-D at a prompt: 'error: aborted', exit 1, for a compressed file cut short."""
    import vidbooth.engine.generate as engine
    from vidbooth.cli.app import main

    origin = ValueError("the stream's own error")
    cut_short = EOFError("Compressed file ended before the end-of-stream marker was reached")

    def failed(cfg):
        raise cut_short from origin

    monkeypatch.setattr(engine, "generate", failed)
    with pytest.raises(RuntimeError, match=r"^a file ended early \(the EOFError above\)$") as shown:
        main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "out.mp4")])
    assert shown.value.__cause__ is cut_short and cut_short.__cause__ is origin
    assert "aborted" not in capsys.readouterr().err


def test_an_error_that_stopped_a_training_after_a_checkpoint_says_to_resume(monkeypatch, capsys, tmp_path,
                                                                            isolated_home):
    """'free space and run the command again' (or out of memory's 'run it again') had been refused on the rerun: a
    stopped run's checkpoint needs --resume. The allocation's size is in MiB where GiB would read 0.0."""
    import errno

    import vidbooth.engine.motion as engine
    from vidbooth.cli.app import main

    clip = tmp_path / "c.mp4"
    clip.write_bytes(b"")
    for error, told in (
        (OSError(errno.ENOSPC, "No space left on device", "/lib/m.safetensors"),
         "the disk is full writing /lib/m.safetensors: free space and rerun the same command with --resume to go on "
         "from its last checkpoint (/runs/step-0000050)"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried "
                      "to allocate 524288 bytes. Error code 12 (Cannot allocate memory)"),
         "out of memory (it asked for 0.5 MiB at once): ask for less at once (fewer --num-frames, a smaller "
         "--resolution or --batch-size), or use --precision fp16 on a GPU or --gradient-checkpointing, and rerun the "
         "same command with --resume to go on from its last checkpoint (/runs/step-0000050)"),
    ):
        error.kept_checkpoint = "/runs/step-0000050"

        def failed(cfg, error=error):
            raise error

        monkeypatch.setattr(engine, "train_motion", failed)
        assert main(["train-motion", str(clip), "--name", "m"]) == 2
        assert capsys.readouterr().err == f"error: {told}\n"


def test_memory_the_system_would_not_map_is_out_of_memory_not_a_damaged_model(monkeypatch, capsys, tmp_path,
                                                                               isolated_home):
    """Under an address-space limit (ulimit -v) safetensors' mmap fails with 'Cannot allocate memory (12)': it had
    been told as 'cannot load the model in ...', as if the model were damaged."""
    import errno

    import vidbooth.engine.backbone as backbone
    from vidbooth.cli.app import main

    def no_memory(folder):
        raise OSError(errno.ENOMEM, "Unable to load weights from checkpoint file: unable to mmap 4096 bytes from file "
                      "<model.safetensors>: Cannot allocate memory (12)")

    monkeypatch.setattr(backbone, "_load_tokenizer", no_memory)
    assert main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "v.mp4"), "--base", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory: ask for less at once (--batch-size 1") and err.count("\n") == 1
    assert not (tmp_path / "v.mp4").exists()
    for raised, said in ((ImportError("libtorch_cpu.so: failed to map segment from shared object"), "out of memory"),
                         (RuntimeError("can't start new thread"), "cannot start another process or thread")):
        def failing(folder, raised=raised):  # a library loaded on first use (OpenCV) under ulimit -v; a thread
            raise raised

        monkeypatch.setattr(backbone, "_load_tokenizer", failing)
        assert main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "v.mp4"), "--base", "tiny"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {said}: ") and err.count("\n") == 1  # it had been a traceback


def test_too_few_open_files_is_told_as_the_limit_not_as_a_corrupt_clip(tmp_path, isolated_home):
    """Under `ulimit -n` too low for ffmpeg's pipes, train-motion had called a good clip 'corrupt, truncated or in an
    unsupported codec' (and generate failed with a traceback, the tokenizer 'delete the cache')."""
    import resource

    from tests.badinputs import write_clip

    clip = write_clip(tmp_path / "c.mp4")
    argv = [sys.executable, "-m", "vidbooth", "train-motion", str(clip), "--name", "m", "--recipe", "tiny/motion",
            "--steps", "1", "--num-frames", "2", "--resolution", "16", "--no-preview"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (9, 9)))
    told = done.stderr.splitlines()[-1]
    limit = ("error: too many open files (this process may have 9 open at once, ulimit -n): raise the limit, e.g. "
             "ulimit -n 4096, and ")
    # where the files run out depends on Python's own (on 3.13 after the first checkpoint, which it then names)
    assert done.returncode == 2 and told.startswith(limit), done.stderr
    assert told.removeprefix(limit) in ("run the command again", "rerun the same command with --resume to go on from "
                                        f"its last checkpoint ({isolated_home / '.runs' / 'motions' / 'm'})"), told
    assert not (isolated_home / "motions").exists()


@pytest.mark.parametrize(("raised", "said"), [
    (OSError(24, "Too many open files"), "error: too many open files (this process may have"),
    (BlockingIOError(11, "Resource temporarily unavailable"), "error: cannot start another process or thread: a "
     "limit on them is reached (ulimit -u, or a container's pids limit)"),
    (RuntimeError("can't start new thread"), "error: cannot start another process or thread"),
    (OSError(23, "Too many open files in system"), "error: the system's table of open files is full: close other"),
], ids=["EMFILE", "EAGAIN", "thread", "ENFILE"])
def test_a_limit_on_processes_or_files_met_reading_a_clip_or_a_checkpoint_is_not_called_damage(
    raised, said, monkeypatch, capsys, tmp_path, isolated_home
):
    """ffmpeg not started (`ulimit -u`, a pids limit) had been 'corrupt video'; a checkpoint not opened, 'delete the
    run folder and start over', which would have lost it."""
    import vidbooth.data.video as video
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main
    from vidbooth.errors import UserError
    from vidbooth.nano import checkpoint

    clip = write_clip(tmp_path / "c.mp4")

    def cannot(*args, **kwargs):
        raise raised

    monkeypatch.setattr(video.subprocess, "Popen", cannot)
    argv = ["train-motion", str(clip), "--name", "m", "--recipe", "tiny/motion", "--steps", "1", "--num-frames", "2",
            "--resolution", "16", "--no-preview"]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(said)
    monkeypatch.setattr("safetensors.safe_open", cannot)
    (tmp_path / "state.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as told:
        checkpoint.load_tensors(tmp_path / "state.safetensors")
    assert f"error: {told.value}".startswith(said)


def test_the_open_files_line_gives_the_limit_this_process_may_raise_and_the_systems_table_its_own(monkeypatch):
    """(mutation testing) The soft limit, which `ulimit -n` raises up to the hard one; ENFILE, whose text holds
    EMFILE's, is the whole system's table."""
    import errno
    import resource

    from vidbooth.errors import out_of_system_resources

    monkeypatch.setattr(resource, "getrlimit", lambda which: (9, 4096))
    assert "this process may have 9 open at once" in out_of_system_resources(OSError(errno.EMFILE, "Too many open"))
    assert out_of_system_resources(OSError(errno.ENFILE, os.strerror(errno.ENFILE))).startswith(
        "the system's table of open files is full")


def test_too_many_open_files_in_a_command_is_one_line(monkeypatch, capsys, tmp_path, isolated_home):
    """(mutation testing) Met outside any reader (here in training), it reaches the command line as an OSError."""
    import errno

    import vidbooth.engine.motion as motion
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main

    def too_many(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(motion, "train_motion", too_many)
    assert main(["train-motion", str(write_clip(tmp_path / "c.mp4")), "--name", "m", "--base", "tiny"]) == 2
    assert capsys.readouterr().err.startswith("error: too many open files (this process may have")


def test_each_reader_that_would_call_a_file_damaged_tells_a_machine_limit_as_it_is(tmp_path, monkeypatch,
                                                                                   tiny_base_dirs):
    """Out of open files (or memory) while reading a good file: each of these had told it to delete or replace it."""
    from transformers import CLIPVisionModelWithProjection

    import vidbooth.data.images as images
    import vidbooth.engine.backbone as backbone
    import vidbooth.eval.features as features
    from tests.badinputs import write_photos
    from vidbooth.adapters.base import load_metadata
    from vidbooth.engine.train import _read_checkpoint
    from vidbooth.errors import UserError

    def cannot(error):
        def call(*args, **kwargs):
            raise error
        return call

    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "state.json").write_text("{}")
    photo = sorted(write_photos(tmp_path / "photos").iterdir())[0]

    class Loaded:  # a model class of transformers'
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            raise raising

    readers = [(lambda: load_metadata(tmp_path / "a.safetensors"), "safetensors.safe_open"),
               (lambda: _read_checkpoint(tmp_path), "safetensors.torch.load_file"),
               (lambda: images.open_image(tmp_path / "a.png"), (images.Image, "open")),
               (lambda: backbone.load_backbone(tiny_base_dirs["unet3d"]), (backbone, "load_tokenizer"))]
    class Animated:  # a GIF whose frames are counted by reading through them
        format, is_animated = "GIF", True

        @property
        def n_frames(self):
            raise raising

    raising = None
    readers += [(lambda: images._warn_if_animated(tmp_path / "a.gif", Animated()), None),
                (lambda: images.load_image(photo), (images.ImageOps, "exif_transpose")),
                (lambda: features.load_nano_image("cpu"), (CLIPVisionModelWithProjection, "from_pretrained")),
                (lambda: features._pretrained_loader(str(tmp_path), "--dino-model")(Loaded, "x"), None)]
    for read, where in readers:
        for error, told in [(OSError(24, "Too many open files"), UserError),
                            (Exception("Error while initializing BPE: Too many open files (os error 24)"), UserError),
                            (MemoryError(), MemoryError)]:
            raising = error
            with monkeypatch.context() as patched:
                if where is not None:  # else the reader's own object raises `raising`
                    patched.setattr(*((where,) if isinstance(where, str) else where), cannot(error))
                with pytest.raises(told) as raised:
                    read()
            assert raised.value is error or str(raised.value).startswith("too many open files (this process may")


@pytest.mark.parametrize("given, kept", [(None, "false"), ("true", "true")])
def test_the_command_turns_tokenizers_threads_off_unless_the_user_set_them(given, kept):
    """tokenizers 0.22 (the floor) printed four lines into generate's output when ffmpeg started after a prompt had
    been tokenised with threads."""
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    env |= {"TOKENIZERS_PARALLELISM": given} if given else {}
    script = ("import os, vidbooth.cli.app as app\n"
              "app.main = lambda: print(os.environ.get('TOKENIZERS_PARALLELISM')) or 0\n"
              "app.run()\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"{kept}\n", done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
@pytest.mark.parametrize("as_json", [False, True])
def test_a_result_past_the_file_size_limit_says_to_raise_it(as_json, isolated_home, tmp_path):
    """A listing into a file past `ulimit -f` (EFBIG) had been told to make room where it goes (as for a full
    disk), where there was room."""
    import resource

    _subject("S*")

    def limited() -> None:  # in the child: Python ignores SIGXFSZ, so the write fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    with open(tmp_path / "listing.txt", "w") as listing:
        done = subprocess.run([sys.executable, "-m", "vidbooth", "list", *(["--json"] if as_json else [])],
                              stdout=listing, stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=limited)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "error: cannot write the result to stdout (past the file system's or your file-size limit): raise the limit "
        "(ulimit -f) or send it elsewhere, and run the command again"], done.stderr
