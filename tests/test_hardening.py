"""Interruptions and failures during a save never corrupt the library; untrusted files are never unpickled."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import badinputs
from vidbooth import library
from vidbooth.adapters.base import load_tensors
from vidbooth.cli.app import main
from vidbooth.errors import UserError

FAST = ["--class-noun", "ball", "--ti-steps", "1", "--identity-steps", "1", "--device", "cpu", "--batch-size", "1",
        "--set", "data.resolution=16"]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _train(photos, base, *extra) -> int:
    return main(["train-subject", str(photos), "--name", "S*", "--base", str(base), *FAST, *extra])


def _files(name="S*"):
    return library.read_manifest(library.artifact_dir("subject", name))["files"]


def test_sigkill_during_save_leaves_the_old_artifact(photos, tiny_base_dirs, isolated_home):
    assert _train(photos, tiny_base_dirs["unet3d"], "--set", "preview.enabled=false") == 0
    old = _files()
    cmd = [sys.executable, "-m", "vidbooth", "train-subject", str(photos), "--name", "S*", "--overwrite",
           "--base", str(tiny_base_dirs["unet3d"]), *FAST, "--seed", "1",
           "--set", "preview.num_inference_steps=50"]  # a slow preview keeps the save open long enough
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = isolated_home / ".staging"
    deadline = time.monotonic() + 240
    while not (staging.is_dir() and any(staging.iterdir())):
        assert proc.poll() is None, "training ended before it started saving"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # mid-save: the new artifact is partly written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _files() == old  # the old version, intact (hashes verified by read_manifest)
    assert not any(staging.iterdir())  # the dead writer's staging folder was cleaned up
    # the killed trainer's lock is stale: the next training takes it over and replaces the subject
    assert _train(photos, tiny_base_dirs["unet3d"], "--overwrite", "--seed", "2", "--set", "preview.enabled=false") == 0
    assert _files() != old


def test_full_disk_during_save_keeps_the_library(photos, tiny_base_dirs, isolated_home, monkeypatch, capsys):
    assert _train(photos, tiny_base_dirs["unet3d"], "--set", "preview.enabled=false") == 0
    old = _files()

    def disk_full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(library, "sync_tree", disk_full)
    code = _train(photos, tiny_base_dirs["unet3d"], "--overwrite", "--seed", "3", "--set", "preview.enabled=false")
    err = capsys.readouterr().err
    assert code == 2 and "the disk is full" in err and "library is unchanged" in err
    assert _files() == old and not (isolated_home / ".staging").exists()  # emptied, and removed as it came


def test_unwritable_library_is_one_line(photos, tiny_base_dirs, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["--home", str(blocker / "lib"), "train-subject", str(photos), "--name", "S*",
                 "--base", str(tiny_base_dirs["unet3d"]), *FAST])
    assert code == 2
    assert "cannot write to the library" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, message",
    [
        (["train-subject", "{empty}", "--name", "S*", "--class-noun", "dog"], "no photos found"),
        (["train-motion", "{empty}/missing.mp4", "--name", "m"], "missing.mp4"),
        (["train-subject", "{photos}", "--name", "S*", "--class-noun", "dog", "--base", "{empty}"],
         "is not a diffusers text-to-video model"),
        (["train-motion", "{clip}", "--name", "m", "--base", "{empty}"], "is not a diffusers text-to-video model"),
    ],
)
def test_a_refused_training_does_not_create_the_library(command, message, tmp_path, capsys):
    home, empty = tmp_path / "new-library", tmp_path / "empty"
    empty.mkdir()
    photos = [badinputs.write_photo(tmp_path / "photos" / f"{i}.png", 64, 64) for i in range(3)][0].parent
    clip = badinputs.write_clip(tmp_path / "clip.mp4", num_frames=4, width=64, height=64)
    command = [arg.format(empty=empty, photos=photos, clip=clip) for arg in command]
    code = main(["--home", str(home), *command])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not home.exists()  # the checks before training write nothing, not even the library folder


NO_USER = "~nouser-vidbooth"
"""A relative name that starts with '~' but names no user: a folder or file so named, not a home folder."""


@pytest.mark.parametrize(
    "command, message",
    [
        (["train-subject", NO_USER, "--name", "S*", "--class-noun", "dog"], f"photo path not found: {NO_USER}"),
        (["train-motion", f"{NO_USER}.mp4", "--name", "m"], f"clip not found: {NO_USER}.mp4"),
        (["generate", "--prompt", "a dog", "--base", NO_USER], f"base model not found: {NO_USER}"),
        (["evaluate", f"{NO_USER}.mp4", "--prompt", "a dog"], f"{NO_USER}.mp4"),
        (["train-subject", "photos", "--name", "S*", "--class-noun", "dog", "--prior-preservation",
          "--class-images", NO_USER], NO_USER),
    ],
)
def test_a_path_named_tilde_and_no_user_is_that_path(command, message, tmp_path, monkeypatch, capsys):
    """Path.expanduser raises RuntimeError for '~nouser': it had been a traceback; such a name is a path here."""
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        badinputs.write_photo(tmp_path / "photos" / f"{i}.png", 64, 64)
    code = main(["--home", str(tmp_path / "library"), *command])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".pth"])
def test_pickle_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"embedding{suffix}"
    path.write_bytes(pickle.dumps({"S*": [1.0, 2.0]}))
    with pytest.raises(UserError, match="refusing to load.*pickle"):
        load_tensors(path)


def test_a_pickle_renamed_to_safetensors_is_not_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "adapter.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_tensors(path)
    assert not (tmp_path / "pwned").exists()


def test_running_out_of_memory_is_one_line_with_the_size_and_what_to_lower(photos, tiny_base_dirs, isolated_home,
                                                                           monkeypatch, tmp_path, capsys):
    import torch

    import vidbooth.engine.generate as generate_engine
    import vidbooth.engine.train as train_engine

    assert _train(photos, tiny_base_dirs["unet3d"], "--set", "preview.enabled=false") == 0
    old = _files()

    def cuda_full(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                     "79.15 GiB of which 1.2 GiB is free.")

    monkeypatch.setattr(train_engine, "_accumulate", cuda_full)
    code = _train(photos, tiny_base_dirs["unet3d"], "--overwrite", "--seed", "3", "--set", "preview.enabled=false")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: out of memory (it asked for 2.00 GiB more): ask for less at once")
    assert "(a smaller --batch-size or --resolution" in err[-1]  # what this command can ask for less of
    assert err[-1].endswith("or use --precision fp16 on a GPU or --gradient-checkpointing, and run it again")
    assert "Traceback" not in "".join(err) and _files() == old  # the stored subject is untouched
    code = _train(photos, tiny_base_dirs["unet3d"], "--overwrite", "--gradient-checkpointing", "--set",
                  "preview.enabled=false")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("or use --precision fp16 on a GPU, and run it again")  # it was on

    monkeypatch.setattr(generate_engine, "sample_videos", lambda *args: torch.empty(10**14))  # the CPU allocator fails
    out = tmp_path / "v.mp4"
    code = main(["generate", "--prompt", "a dog", "--out", str(out), "--base", str(tiny_base_dirs["unet3d"]),
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: out of memory (it asked for 372529.0 GiB at once)")
    assert "(--batch-size 1 (the same videos, one at a time), fewer --num-frames" in err[-1] and not out.exists()
    assert "--gradient-checkpointing" not in err[-1]

    monkeypatch.setattr(generate_engine, "sample_videos", lambda *args: torch.zeros(2) @ torch.zeros(3))
    with pytest.raises(RuntimeError, match="size mismatch|shapes|size"):  # any other error keeps its traceback
        main(["generate", "--prompt", "a dog", "--out", str(out), "--base", str(tiny_base_dirs["unet3d"]),
              "--device", "cpu"])


def test_another_process_lost_outside_training_is_one_line(tiny_base_dirs, monkeypatch, tmp_path, capsys):
    """gloo's error when a peer died (a 60-line traceback under the launcher's) becomes one line, in a run of
    several processes only: in one, the same words are a bug and keep their traceback."""
    import torch.distributed as dist

    import vidbooth.engine.generate as generate_engine
    from vidbooth.errors import lost_another_process

    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:38024. This is "
                        "typically caused by a remote worker crashing.")

    def failed_exchange(*args):
        raise gloo

    monkeypatch.setattr(generate_engine, "sample_videos", failed_exchange)
    command = ["generate", "--prompt", "a dog", "--out", str(tmp_path / "v.mp4"), "--base",
               str(tiny_base_dirs["unet3d"]), "--device", "cpu"]
    assert not lost_another_process(gloo)
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        main(command)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *args: 2)
    assert lost_another_process(gloo) and not lost_another_process(RuntimeError("size mismatch"))
    assert not lost_another_process(OSError("Broken pipe"))
    capsys.readouterr()
    assert main(command) == 2
    assert capsys.readouterr().err == ("error: another process of this run stopped (the launcher's report below says "
                                       "which and why): rerun the same command\n")


def test_the_out_of_memory_line_names_what_the_command_can_ask_less_of():
    """It named --num-frames, --height/--width and --batch-size to every command, pretrain (none of them) too."""
    from vidbooth.cli.app import LESS_AT_ONCE, _command_of, out_of_memory_message

    full = MemoryError()
    assert _command_of(["--home", "lib", "pretrain", "--out", "x"]) == "pretrain"
    assert out_of_memory_message(full, "pretrain") == (
        "out of memory: ask for less at once (a smaller --set unet.batch=N (or autoencoder.batch, clip.batch), or a "
        "smaller --set arch.size=N), and run it again")
    assert "(a smaller batch)" in out_of_memory_message(full, None)
    assert out_of_memory_message(ValueError("shapes differ"), "pretrain") is None
    commands = set(main_commands())
    assert set(LESS_AT_ONCE) <= commands and commands - set(LESS_AT_ONCE) == {"list"}  # list allocates nothing
    import re

    import typer

    from vidbooth.cli.app import app

    for name, command in typer.main.get_command(app).commands.items():  # every flag named is one the command has
        flags = {flag for param in command.params for flag in param.opts}
        message = out_of_memory_message(full, name) if name in LESS_AT_ONCE else ""
        assert set(re.findall(r"--[a-z][a-z-]*", message)) <= flags, name  # --precision only where it is a flag


def test_each_way_an_allocation_fails_is_out_of_memory_and_says_how_much_was_asked():
    """(mutation testing) Each of ran_out_of_memory's conditions on its own, and a size under 0.05 MiB."""
    import errno

    from vidbooth.cli.app import out_of_memory_message
    from vidbooth.errors import ran_out_of_memory

    for failed in (OSError(errno.ENOMEM, "mmap failed"), RuntimeError("Cannot allocate memory"),
                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
                   RuntimeError("CUDA out of memory."), MemoryError()):
        assert ran_out_of_memory(failed), failed
    assert not ran_out_of_memory(OSError(errno.ENOENT, "No such file or directory"))
    told = out_of_memory_message(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000 "
                                              "bytes"), "generate")
    assert told.startswith("out of memory (it asked for 0.1 MiB at once)")  # not 0.0


def main_commands() -> list[str]:
    import typer

    from vidbooth.cli.app import app

    return list(typer.main.get_command(app).commands)


@pytest.mark.parametrize("words", ["Connection closed by peer", "Connection reset by peer", "remote process exited",
                                   "Broken pipe", "NCCL communicator was aborted"])
def test_each_way_gloo_and_nccl_say_another_process_died_is_read_so(words, monkeypatch):
    """Only in a run of several processes (mutation testing: one pattern of five had been tested)."""
    import torch.distributed as dist

    from vidbooth.errors import lost_another_process

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *args: 2)
    assert lost_another_process(RuntimeError(f"[pair.cc:553] {words} [127.0.0.1]:38024"))
    assert lost_another_process(dist.DistNetworkError("the store went away"))
    monkeypatch.setattr(dist, "get_world_size", lambda *args: 1)
    assert not lost_another_process(RuntimeError(words))
