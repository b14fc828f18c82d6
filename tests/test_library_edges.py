"""Library edge cases: names with a line break, folders in the way of an artifact, what a refused or finished run
leaves behind, and Ctrl-C while an artifact is saved."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from vidbooth import library
from vidbooth.errors import UserError


@pytest.mark.parametrize("name", ["S*\n", "dog\n", "a\nb", "\n", "S*\r\n"])
def test_a_name_with_a_line_break_is_refused_and_shown_escaped(name):
    with pytest.raises(UserError, match=r"invalid motion name '.*\\n.*'") as refused:
        library.validate_name(name, "motion")
    assert "\n" not in str(refused.value)
    assert library.validate_name("S*") == "S*"


@pytest.mark.parametrize(("name", "why"), [
    ("cafe\u0301", "it holds a combining acute accent (U+0301): type the accented letter as one character"),
    ("my dog", "' ' (space) is not allowed"),
    ("dog\U0001F600", "(grinning face) is not allowed"),
    ("a\tb", "a control character (U+0009) is not allowed"),
    # 'Ś*' typed under LANG=C: Python keeps the bytes it cannot read as lone surrogates
    ("\udcc5\udc9a*", "it holds bytes that are not text in this terminal's encoding (type it under LANG=C.UTF-8)"),
    (".x", "it starts with '.'"),
    ("x" * 65, "it has 65 characters"),
])
def test_a_refused_name_says_what_in_it_is_refused(name, why):
    """'café' pasted from a macOS file name is 'cafe' + a combining accent: it had been refused as if it were not
    letters, without saying which character was wrong."""
    with pytest.raises(UserError, match="invalid motion name") as refused:
        library.validate_name(name, "motion")
    assert f"{why}; use 1-64 letters" in str(refused.value)
    assert library.validate_name("caf\u00e9") == "caf\u00e9"  # the same letters, é as one character


# ---- something that is not an artifact at an artifact's folder --------------------------------------------------
def _save(name="S*", kind="subject", overwrite=False, value=b"{}"):
    with library.staged_artifact(kind, name, overwrite=overwrite) as stage:
        (stage / "adapter.bin").write_bytes(value)
        library.write_json(stage / library.MANIFEST, {"name": name, "kind": kind})


def _hand_made(isolated_home, kind_dir="subjects", name="S%2A"):
    folder = isolated_home / kind_dir / name
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_hand_made_folder_in_the_way_is_refused_up_front_and_kept(isolated_home, overwrite):
    folder = _hand_made(isolated_home)
    with pytest.raises(UserError, match=r"S%2A is in the way of subject 'S\*': it is a folder without manifest.json, "
                       r"not a vidbooth subject.*never deletes.*move it out of .*subjects, then run the command again"):
        library.check_free("subject", "S*", overwrite=overwrite)
    with pytest.raises(UserError, match="in the way"):
        _save(overwrite=overwrite)
    assert (folder / "notes.txt").read_text() == "mine" and sorted(folder.iterdir()) == [folder / "notes.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_hand_made_folder_that_appears_while_training_is_kept_and_the_error_says_resume(isolated_home, overwrite):
    if overwrite:
        _save(value=b"old")
    with pytest.raises(UserError, match=r"subject 'S\*' was not saved .the library is unchanged.*--resume") as refused:
        with library.staged_artifact("subject", "S*", overwrite=overwrite) as stage:
            (stage / "adapter.bin").write_bytes(b"new")
            library.write_json(stage / library.MANIFEST, {"name": "S*", "kind": "subject"})
            target = isolated_home / "subjects" / "S%2A"
            if overwrite:  # the user replaced the old version by a folder of their own while training ran
                import shutil

                shutil.rmtree(target)
            (target).mkdir(parents=True)
            (target / "notes.txt").write_text("mine")
    assert "\n" not in str(refused.value) and "never deletes" in str(refused.value)
    assert (isolated_home / "subjects" / "S%2A" / "notes.txt").read_text() == "mine"
    assert not list((isolated_home / ".staging").iterdir())
    assert not (isolated_home / ".trash").exists() or not list((isolated_home / ".trash").iterdir())


def test_a_file_or_a_link_in_the_way_is_refused_and_an_empty_folder_is_not(isolated_home, tmp_path):
    root = isolated_home / "subjects"
    root.mkdir(parents=True)
    (root / "a").write_text("a file")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "b").symlink_to(elsewhere)
    for name, what in (("a", "a file"), ("b", "a link")):
        with pytest.raises(UserError, match=f"in the way of subject '{name}': it is {what}"):
            _save(name, overwrite=True)
    assert (root / "a").read_text() == "a file" and (root / "b").resolve() == elsewhere.resolve()
    (root / "c").mkdir()  # empty: nothing to lose, so it needs no --overwrite
    _save("c")
    assert library.read_manifest(root / "c", verify=False)["name"] == "c"


def test_overwrite_still_replaces_an_artifact(isolated_home):
    _save(value=b"old")
    _save(overwrite=True, value=b"new")
    assert (isolated_home / "subjects" / "S%2A" / "adapter.bin").read_bytes() == b"new"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_train_motion_refuses_a_hand_made_folder_before_loading_a_model(overwrite, tmp_path, isolated_home,
                                                                        monkeypatch, capsys):
    import vidbooth.engine.backbone
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded (and trained) before the library was checked")

    monkeypatch.setattr(vidbooth.engine.backbone, "load_backbone", refuse)
    folder = _hand_made(isolated_home, "motions", "m")
    clip = write_clip(tmp_path / "clip.mp4")
    assert main(["train-motion", str(clip), "--name", "m", "--recipe", "tiny/motion", *overwrite]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [" ".join(err.split())]
    assert "is in the way of motion 'm'" in err and "move it out of" in " ".join(err.split())
    assert sorted(p.relative_to(isolated_home) for p in isolated_home.rglob("*")) == [
        folder.parent.relative_to(isolated_home), folder.relative_to(isolated_home),
        (folder / "notes.txt").relative_to(isolated_home)]


# ---- Ctrl-C while an artifact is saved --------------------------------------------------------------------------
def test_ctrl_c_while_saving_leaves_the_library_unchanged_and_says_resume(isolated_home):
    from vidbooth.errors import Interrupted

    _save(value=b"old")
    with pytest.raises(Interrupted, match=r"stopped by SIGINT while saving: subject 'S\*' was not saved .the library "
                       r"is unchanged.; the training is kept: rerun the same command with --resume") as stopped:
        with library.staged_artifact("subject", "S*", overwrite=True) as stage:
            (stage / "adapter.bin").write_bytes(b"new")
            raise KeyboardInterrupt  # Ctrl-C while the preview renders
    assert stopped.value.exit_code == 130 and isinstance(stopped.value, KeyboardInterrupt)  # still one
    assert (isolated_home / "subjects" / "S%2A" / "adapter.bin").read_bytes() == b"old"
    assert not list((isolated_home / ".staging").iterdir())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGXCPU])
def test_a_stop_while_tidying_up_a_saved_artifact_finishes_it_then_stops(signum):
    from vidbooth.errors import Interrupted, clear_stops, held_stops

    finished = []
    with pytest.raises(Interrupted, match=rf"^stopped by {signum.name}; motion 'm' is saved$") as stopped:
        with held_stops("motion 'm' is saved"):
            os.kill(os.getpid(), signum)
            finished.append(True)  # the signal did not cut the block short
    if signum == signal.SIGXCPU:  # the kernel's reminder each second past the limit: the stop is already told
        with held_stops("motion 'm' is saved"):
            os.kill(os.getpid(), signum)
        clear_stops()
    assert finished and stopped.value.exit_code == 128 + signum
    assert isinstance(stopped.value, KeyboardInterrupt) == (signum == signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # pytest's own handlers are back


def test_ctrl_c_at_the_rename_or_while_checkpoints_are_removed_says_the_artifact_is_saved(
    tmp_path, isolated_home, monkeypatch, capsys
):
    """It had said 'interrupted' (at the rename, 'was not saved') though the motion was saved."""
    import shutil

    import vidbooth.engine.train
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.motion import load_motion

    clip = write_clip(tmp_path / "clip.mp4")
    argv = ["train-motion", str(clip), "--name", "m", "--recipe", "tiny/motion", "--steps", "1", "--num-frames", "2",
            "--resolution", "16", "--no-preview"]
    real_rmtree, real_replace = shutil.rmtree, os.replace

    def ctrl_c_then(real):
        def call(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)
        return call

    run_dir = vidbooth.engine.train.run_folder("motion", "m", "motion")
    monkeypatch.setattr(vidbooth.engine.train.shutil, "rmtree", lambda path, **kwargs: (  # the run's own folder
        ctrl_c_then(real_rmtree) if Path(path) == run_dir else real_rmtree)(path, **kwargs))
    assert main(argv) == 130
    monkeypatch.setattr(vidbooth.engine.train.shutil, "rmtree", real_rmtree)
    home = isolated_home
    assert "stopped by SIGINT; motion 'm' is saved" in capsys.readouterr().err
    assert not run_dir.exists() and not run_dir.parent.exists()  # the checkpoints are gone all the same
    load_motion(load_backbone("tiny", device="cpu"), "m")

    monkeypatch.setattr(library.os, "replace", lambda src, dst: (  # Ctrl-C as the staged motion is renamed in
        ctrl_c_then(real_replace) if Path(src).parent.name == ".staging" else real_replace)(src, dst))
    assert main([*argv, "--overwrite"]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert f"stopped by SIGINT; motion 'm' is saved in {home / 'motions' / 'm'}" in err and "not saved" not in err
    monkeypatch.setattr(library.os, "replace", real_replace)
    assert not (home / ".trash").exists() and not (home / ".staging").exists()  # emptied, and gone as they came
    load_motion(load_backbone("tiny", device="cpu"), "m")


def test_ctrl_c_while_a_subjects_first_run_folder_is_removed_still_removes_the_second(
    tmp_path, isolated_home, monkeypatch, capsys
):
    import shutil

    import vidbooth.engine.train
    from tests.badinputs import write_photos
    from vidbooth.cli.app import main

    runs = isolated_home / ".runs" / "subjects" / "S%2A"
    real_rmtree = shutil.rmtree

    def rmtree(path, **kwargs):
        if Path(path).parent == runs and not list(Path(path).parent.glob("*-stopped")):
            os.kill(os.getpid(), signal.SIGINT)  # once, at the first stage's folder
            (runs / "x-stopped").mkdir()
        return real_rmtree(path, **kwargs)

    monkeypatch.setattr(vidbooth.engine.train.shutil, "rmtree", rmtree)
    photos = write_photos(tmp_path / "photos")
    args = ["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", "--recipe", "tiny/subject",
            "--ti-steps", "1", "--identity-steps", "1", "--set", "data.resolution=16", "--no-preview"]
    assert main(args) == 130
    assert "stopped by SIGINT; subject 'S*' is saved" in capsys.readouterr().err
    assert sorted(p.name for p in runs.iterdir()) == ["x-stopped"]  # both stages' checkpoints are gone


def test_ctrl_c_during_the_preview_then_resume_saves_without_training_again(tmp_path, isolated_home, monkeypatch,
                                                                            capsys):
    import vidbooth.engine.motion
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main

    clip = write_clip(tmp_path / "clip.mp4")
    argv = ["train-motion", str(clip), "--name", "m", "--recipe", "tiny/motion", "--steps", "2", "--num-frames", "2",
            "--resolution", "16", "--preview", "--set", "preview.num_inference_steps=1"]
    real_preview = vidbooth.engine.motion._write_preview

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vidbooth.engine.motion, "_write_preview", ctrl_c)
    assert main(argv) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "while saving: motion 'm' was not saved" in err and "rerun the same command with --resume" in err
    assert not (isolated_home / "motions" / "m").exists()
    monkeypatch.setattr(vidbooth.engine.motion, "_write_preview", real_preview)
    steps = []
    monkeypatch.setattr("vidbooth.engine.train._optimizer_step", lambda *args: steps.append(args))
    monkeypatch.delenv("VIDBOOTH_QUIET")
    assert main([*argv, "--resume"]) == 0
    assert steps == []  # the checkpoint of the last step was kept: nothing is trained again
    said = " ".join(capsys.readouterr().err.split())
    assert "motion 'm': 2 steps" in said and "no step run now" in said and "nan" not in said  # had said 'nan s/step'
    assert (isolated_home / "motions" / "m" / "preview.png").is_file()


def test_a_full_disk_while_the_preview_is_written_is_told_as_a_full_disk_keeping_the_training(
    tmp_path, isolated_home, monkeypatch, capsys
):
    import vidbooth.engine.motion
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main

    clip = write_clip(tmp_path / "clip.mp4")
    argv = ["train-motion", str(clip), "--name", "m", "--recipe", "tiny/motion", "--steps", "2", "--num-frames", "2",
            "--resolution", "16", "--preview", "--set", "preview.num_inference_steps=1"]

    def no_room(backbone, cfg, prompt, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(vidbooth.engine.motion, "_write_preview", no_room)
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: the disk is full: motion 'm' was not saved (the library is unchanged); free space in "
                      f"{isolated_home} and run the same command with --resume"]
    assert not (isolated_home / "motions" / "m").exists() and not list(isolated_home.glob(".staging/*"))
    assert [p.name for p in (isolated_home / ".runs" / "motions" / "m").rglob("step-*")] == ["step-0000002"]


# ---- what a refused or finished run leaves behind -------------------------------------------------------------
def test_the_lock_leaves_a_library_it_created_as_it_found_it(isolated_home):
    assert not isolated_home.exists()
    with pytest.raises(UserError, match="refused"):
        with library.artifact_lock("motion", "m"):
            assert (isolated_home / ".locks").is_dir()
            raise UserError("refused after the lock was taken (say, by the model's own size check)")
    assert not isolated_home.exists()  # it had kept .locks/, and the library folder with it
    isolated_home.mkdir()
    (isolated_home / "mine.txt").write_text("x")
    with library.artifact_lock("motion", "m"):
        pass
    assert sorted(p.name for p in isolated_home.iterdir()) == ["mine.txt"]


def test_a_run_folder_is_removed_with_its_last_stage_and_kept_while_another_holds_a_checkpoint(isolated_home):
    from vidbooth.engine.train import remove_runs, run_folder

    stages = {stage: run_folder("subject", "S*", stage) for stage in ("textual-inversion", "identity")}
    for folder in stages.values():
        (folder / "checkpoints" / "step-0000001").mkdir(parents=True)
    remove_runs([stages["textual-inversion"]], "subject 'S*'")
    assert not stages["textual-inversion"].exists() and stages["identity"].is_dir()  # a stopped stage's checkpoint
    remove_runs([stages["identity"]], "subject 'S*'")
    assert not stages["identity"].parent.exists()  # .runs/subjects/S%2A/ had been left behind, empty
    assert (isolated_home / ".runs" / "subjects").is_dir()  # a library's own folder, shared with other names


def test_train_motion_refused_after_the_lock_leaves_no_library_and_a_finished_one_no_run_folder(
    tmp_path, isolated_home, capsys
):
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main

    clip = str(write_clip(tmp_path / "c.mp4"))
    argv = ["train-motion", clip, "--name", "m", "--recipe", "tiny/motion", "--steps", "1", "--num-frames", "2",
            "--no-preview"]
    assert main([*argv, "--resolution", "30"]) == 2  # refused by the model's own size check, once it is loaded
    assert "data.resolution (--resolution) 30 must be a positive multiple of 4" in capsys.readouterr().err
    assert not isolated_home.exists()
    assert main([*argv, "--resolution", "16"]) == 0
    assert sorted(p.name for p in isolated_home.iterdir()) == ["motions"]
    assert main([*argv, "--resolution", "16", "--overwrite"]) == 0  # in a library that exists
    assert sorted(p.name for p in isolated_home.iterdir()) == ["motions"]  # had kept an empty .runs/motions/
    (isolated_home / ".runs" / "motions").mkdir(parents=True)  # there before the run: the library's to keep
    assert main([*argv, "--resolution", "16", "--overwrite"]) == 0
    assert (isolated_home / ".runs" / "motions").is_dir() and not (isolated_home / ".runs" / "motions" / "m").exists()


def test_an_io_error_as_the_library_saves_says_to_resume_and_the_resume_saves(tmp_path, isolated_home, monkeypatch,
                                                                             capsys):
    """It had said 'run the command again', which the finished run's checkpoint then refused without --resume."""
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main

    argv = ["train-motion", str(write_clip(tmp_path / "c.mp4")), "--name", "m", "--recipe", "tiny/motion", "--steps",
            "1", "--num-frames", "2", "--resolution", "16", "--no-preview"]
    real_sync_tree = library.sync_tree

    def failing_device(folder):
        raise OSError(errno.EIO, "Input/output error", str(folder))

    monkeypatch.setattr(library, "sync_tree", failing_device)
    assert main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    runs = isolated_home / ".runs" / "motions" / "m"
    assert line.startswith("error: Input/output error: ") and line.endswith(
        f": rerun the same command with --resume to go on from its last checkpoint ({runs})")
    monkeypatch.setattr(library, "sync_tree", real_sync_tree)
    assert main([*argv, "--resume"]) == 0 and (isolated_home / "motions" / "m").is_dir()


def test_a_lock_whose_folder_was_just_removed_makes_it_again(tmp_path):
    """The last user of a new library's `.locks/` removes it when it is empty; a process about to lock a file in
    it must make it again rather than fail."""
    from vidbooth.fileio import exclusive_lock

    lock = tmp_path / "gone" / ".locks" / "motions__m.lock"
    with exclusive_lock(lock, lambda owner: f"busy {owner}") as held:
        assert held.read_text().isdigit()
    assert not lock.exists()


def test_a_refused_resume_names_the_stage_key_and_the_flag_of_the_command(tmp_path, tiny_base_dirs, monkeypatch,
                                                                           capsys):
    import badinputs
    import vidbooth.engine.subject
    from vidbooth.cli.app import main

    folder = tmp_path / "photos"
    for i in range(3):
        badinputs.write_photo(folder / f"{i}.png", 64, 64)
    argv = ["textual-inversion", str(folder), "--name", "S*", "--class-noun", "ball", "--base",
            str(tiny_base_dirs["unet3d"]), "--device", "cpu", "--steps", "1", "--batch-size", "1", "--set",
            "data.resolution=16", "--no-preview", "--lr", "0.005"]

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vidbooth.engine.subject, "_save_artifact", ctrl_c)  # stopped after training: kept
    assert main(argv) == 130
    capsys.readouterr()
    loads = []
    monkeypatch.setattr(vidbooth.engine.subject, "load_backbone_for", lambda *args: loads.append(args))
    assert main([*argv[:-1], "0.001", "--resume"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "other settings (textual_inversion.train.lr (--lr) was 0.005, now 0.001)" in err, err
    assert loads == []  # refused before the model loads (it had taken the load's seconds first)


def test_using_a_name_whose_folder_was_made_by_hand_says_so_not_unknown(isolated_home):
    folder = _hand_made(isolated_home)
    with pytest.raises(UserError, match=r"S%2A is a folder without manifest.json, not a vidbooth subject: move it "
                       r"out of .*subjects, then train 'S\*'"):
        library.artifact_dir("subject", "S*")  # what identity-adapter and generate --subject look up
    assert (folder / "notes.txt").is_file()


# ---- what appears while training, and a library this process may not write ---------------------------------------
@pytest.mark.parametrize("what", ["a hand-made folder", "an artifact"])
def test_what_appears_at_the_folder_while_training_is_refused_at_the_save_with_resume(isolated_home, what):
    """check_free passed before training; the save's own check had repeated check_free's message ('then run the
    command again', 'pass --overwrite'), and a run without --resume discards what was trained."""
    target = library.check_free("subject", "S*", overwrite=False)
    if what == "an artifact":  # say, saved from another library path or by hand while this run trained
        _save(value=b"theirs")
        fix = "rerun the same command with --resume --overwrite"
    else:
        _hand_made(isolated_home)
        fix = "move it out of .*subjects, then rerun the same command with --resume"
    with pytest.raises(UserError, match=rf"subject 'S\*' was not saved .the library is unchanged.*{fix}") as refused:
        _save(value=b"ours")
    assert "run the command again" not in str(refused.value) and "\n" not in str(refused.value)
    kept = "adapter.bin" if what == "an artifact" else "notes.txt"
    assert (target / kept).read_bytes() == (b"theirs" if what == "an artifact" else b"mine")
    assert not list(isolated_home.glob(".staging/*"))  # refused before the preview: nothing was staged


def test_recover_leaves_a_swap_it_cannot_roll_back_on_a_read_only_library(isolated_home, monkeypatch):
    """generate, identity-adapter and every lookup recover the library first: on a library this process may not
    write, that had been a PermissionError traceback."""
    import os

    _save()
    live = isolated_home / "subjects" / "S%2A"
    aside = isolated_home / ".trash" / f"subjects__S%2A.{library._host_tag()}-999999999.abcdef01"  # a dead writer's
    aside.parent.mkdir()
    os.replace(live, aside)

    def read_only(src, dst):
        raise PermissionError(13, "Permission denied", str(src), None, str(dst))

    with monkeypatch.context() as patched:
        patched.setattr(library.os, "replace", read_only)
        with pytest.raises(UserError, match="unknown subject 'S\\*'"):
            library.artifact_dir("subject", "S*")
        assert aside.is_dir()  # left for a process that may write
    assert library.artifact_dir("subject", "S*") == live and not aside.exists()


def test_a_save_the_library_refuses_is_one_line_that_keeps_the_training(isolated_home, monkeypatch):
    import os

    real_replace = os.replace

    def read_only_folder(src, dst, *args, **kwargs):
        if ".staging" in str(src):
            raise PermissionError(13, "Permission denied", str(src), None, str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(library.os, "replace", read_only_folder)
    with pytest.raises(UserError, match=r"subject 'S\*' was not saved .the library is unchanged.: Permission denied "
                       r".*rerun the same command with --resume") as refused:
        _save()
    assert "\n" not in str(refused.value) and not (isolated_home / "subjects" / "S%2A").exists()


def test_a_folder_of_the_library_that_training_writes_in_is_checked_before_training(isolated_home, monkeypatch):
    """A subjects/ (or .locks/, .runs/...) of another user: the save, or the lock, had failed with a traceback."""
    import os

    _save("other")
    real_access = os.access
    monkeypatch.setattr(library.os, "access", lambda path, mode: Path(path).name != "subjects" and
                        real_access(path, mode))
    with pytest.raises(UserError, match=r"cannot write to .*subjects in the library .*: make it writable for you, or "
                       "choose another library with --home"):
        library.check_free("subject", "S*", overwrite=False)


def test_a_lock_file_of_another_user_that_is_held_says_busy(tmp_path, monkeypatch):
    """Another user's run holds the lock; its file (mode 0644) cannot be opened for writing here: that had been a
    PermissionError traceback, not 'being trained by another process'."""
    import os

    from vidbooth import fileio

    lock = tmp_path / ".locks" / "motions__m.lock"
    lock.parent.mkdir()
    real_open = os.open

    def not_writable(path, flags, *args):
        if flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    with fileio.exclusive_lock(lock, lambda owner: f"busy {owner}"), monkeypatch.context() as patched:
        patched.setattr(fileio.os, "open", not_writable)
        with pytest.raises(UserError, match=f"busy {os.getpid()}"):
            with fileio.exclusive_lock(lock, lambda owner: f"busy {owner}"):
                pass
    monkeypatch.setattr(fileio.os, "open", not_writable)
    with pytest.raises(PermissionError):  # not held: the error stands (the command line makes it one line)
        with fileio.exclusive_lock(lock, lambda owner: f"busy {owner}"):
            pass


def test_a_permission_error_is_one_line_on_the_command_line(monkeypatch, capsys):
    import vidbooth.library
    from vidbooth.cli.app import main

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/shared/vidbooth/motions")

    monkeypatch.setattr(vidbooth.library, "list_artifacts", unreadable)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: permission denied: /shared/vidbooth/motions: give yourself "
                                                   "access to it, or use another folder (for what the command writes: "
                                                   "--out; for the library: --home; for vidbooth's cache: "
                                                   "$VIDBOOTH_CACHE)")


def test_train_motion_checks_the_name_again_once_it_holds_the_lock(tmp_path, isolated_home, monkeypatch, capsys):
    """Two terminals: the second run passed its first check while the first still trained, then got the lock once
    the first had saved the motion. It had trained in full, then been refused at the save."""
    import vidbooth.engine.backbone
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main

    real_lock = library.artifact_lock

    def first_run_saves_then_releases(kind, name):
        _save(name, kind)
        return real_lock(kind, name)

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded (and trained) for a name that another run had just saved")

    monkeypatch.setattr(library, "artifact_lock", first_run_saves_then_releases)
    monkeypatch.setattr(vidbooth.engine.backbone, "load_backbone", refuse)
    clip = write_clip(tmp_path / "clip.mp4")
    assert main(["train-motion", str(clip), "--name", "m", "--recipe", "tiny/motion"]) == 2
    assert "motion 'm' already exists" in capsys.readouterr().err
    assert not list(isolated_home.glob(".locks/*"))


@pytest.mark.parametrize("folder", ["subjects", ".locks", ".staging", ".trash", ".runs", ".runs/subjects"])
def test_a_file_where_the_library_keeps_a_folder_is_refused_before_training(isolated_home, folder):
    """A file at subjects/ had let a run train in full and then be refused as if motions/<name> had appeared; one at
    .locks/ had been a NotADirectoryError traceback."""
    (isolated_home / folder).parent.mkdir(parents=True, exist_ok=True)
    (isolated_home / folder).write_text("mine")
    with pytest.raises(UserError, match=f"{folder} is a file where the library .* keeps a folder: move it out of"):
        library.check_free("subject", "S*", overwrite=False)
    assert (isolated_home / folder).read_text() == "mine"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_name_that_reaches_another_names_folder_by_letter_case_is_refused(isolated_home, monkeypatch, overwrite):
    """On macOS or Windows `s*` reaches the folder of `S*`, and --overwrite would have replaced that subject. Such a
    file system is imitated here: a link `s%2A` to `S%2A` that the folder's listing does not show."""
    _save("S*")
    subjects = isolated_home / "subjects"
    (subjects / "s%2A").symlink_to("S%2A")
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda folder: [e for e in real_listdir(folder) if e != "s%2A"])
    refused = r"subject 's\*' would be saved in .*S%2A, another name's folder: .*letter case"
    with pytest.raises(UserError, match=refused):
        library.check_free("subject", "s*", overwrite)
    assert library.read_manifest(subjects / "S%2A", verify=False)["name"] == "S*"


def test_recover_takes_a_staging_or_trash_folder_that_goes_while_it_is_listed(isolated_home, monkeypatch):
    """A run that made a new library removes its empty .staging and .trash when it ends; the other rank of an
    `accelerate launch` recovering at that moment had failed with FileNotFoundError (seen in the two-process test)."""
    for folder in (".staging", ".trash"):
        (isolated_home / folder).mkdir(parents=True)
    real_iterdir = Path.iterdir

    def removed_meanwhile(self):
        if self.name in (".staging", ".trash"):
            self.rmdir()  # gone between the check and the listing
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", removed_meanwhile)
    library.recover()
    assert not (isolated_home / ".staging").exists() and not (isolated_home / ".trash").exists()
    library.recover()  # and absent from the start


def test_an_artifact_is_saved_when_the_library_folder_it_goes_into_is_removed_meanwhile(isolated_home, monkeypatch):
    """A run that made a new library removes the library's empty folders when it ends: subjects/ may go between
    another run's making it and renaming its artifact into it. The save makes it again."""
    import contextlib

    from tests.test_library import _write

    real_held_stops = library.held_stops

    @contextlib.contextmanager
    def subjects_removed_first(message):
        with contextlib.suppress(OSError):
            (isolated_home / "subjects").rmdir()  # empty: the other run's tidying-up
        with real_held_stops(message):
            yield

    monkeypatch.setattr(library, "held_stops", subjects_removed_first)
    with library.staged_artifact("subject", "S*") as stage:
        _write(stage)
    assert [m["name"] for m in library.list_artifacts("subject")] == ["S*"]


@pytest.mark.parametrize("error, expected", [
    (OSError(27, "File too large", "/mnt/fat32/out.mp4"),
     "error: a file grew past what this file system or your file-size limit (ulimit -f) allows, writing "
     "/mnt/fat32/out.mp4: write to another file system, or raise the limit, and run the command again"),
    (OSError(36, "File name too long", "/x/" + "a" * 300 + ".mp4"),
     "error: a file name is too long for this file system: /x/" + "a" * 300 + ".mp4: choose a shorter name or path"),
    (OSError(18, "Invalid cross-device link", "/home/v/.staging/m", None, "/mnt/other/motions/m"),
     "error: cannot move /home/v/.staging/m -> /mnt/other/motions/m across file systems: keep the folders vidbooth "
     "moves between (the library and its subfolders, --out and its folder) on one file system"),
])
def test_a_file_too_large_a_name_too_long_and_a_move_across_file_systems_are_one_line(error, expected, monkeypatch,
                                                                                       capsys):
    """Each had been a traceback with exit 1."""
    import vidbooth.library
    from vidbooth.cli.app import main

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(vidbooth.library, "list_artifacts", fail)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == expected + "\n"


def test_a_library_folder_on_another_disk_is_refused_before_training(isolated_home, monkeypatch):
    """motions/ linked to another file system: the rename from .staging/ failed after training (EXDEV traceback)."""
    _save("kept", "motion")
    motions = library.artifact_dir("motion", "kept").parent
    real_stat = os.stat

    def on_another_disk(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        if Path(path) == motions:
            fields = list(result[:10])
            fields[2] += 1  # st_dev
            return os.stat_result(fields)
        return result

    library.check_free("motion", "new", overwrite=False)  # one disk: free
    monkeypatch.setattr(os, "stat", on_another_disk)
    with pytest.raises(UserError, match=rf"^{motions} is on another file system than the library {isolated_home}, so "
                                        "a trained motion could not be moved into it: keep the library's folders on "
                                        r"one disk \(link the whole library instead, or use --home\)$"):
        library.check_free("motion", "new", overwrite=False)


def test_list_shows_an_artifact_whose_overwrite_a_kill_left_half_done(isolated_home, capsys):
    """Killed between moving the old version to .trash/ and the new one in: `list` had left it out without a word
    until another command recovered the library."""
    from vidbooth.cli.app import main

    _save("kept", "motion")
    live = library.artifact_dir("motion", "kept")
    aside = isolated_home / ".trash" / f"motions__kept.{library._host_tag()}-999999999.abcdef01"  # a dead writer's
    aside.parent.mkdir()
    os.replace(live, aside)
    assert main(["list", "--json"]) == 0
    assert [entry["name"] for entry in json.loads(capsys.readouterr().out)] == ["kept"]
    assert live.is_dir() and not aside.exists()


@pytest.mark.parametrize("key, named, ok", [
    ("motion_adapter", "adapter.safetensors", True), ("config", "config.yaml", True), ("preview", None, True),
    ("clips", ["clips/clip-00.mp4", "clips/clip-01.mp4"], True),
    ("motion_adapter", "/tmp/elsewhere/adapter.safetensors", False), ("config", "../M2/config.yaml", False),
    ("config", "sub/../../config.yaml", False), ("config", "", False), ("config", 3, False),
    ("clips", ["clips/clip-00.mp4", "/etc/passwd"], False), ("config", "outside.yaml", False),
    ("motion_adapter", "unhashed.safetensors", False), ("motion_adapter", "adapter.SAFETENSORS", False),
    ("motion_adapter", "adapter.st", False), ("motion_adapter", "config.yaml", False),
])
def test_a_manifest_may_name_only_the_artifacts_own_files(isolated_home, tmp_path, key, named, ok):
    """A shared artifact whose manifest names a file outside its folder (by path or through a link), or a tensor
    file its hashes leave out, would have the engine load a file no hash covers: it is refused, with or without
    verification."""
    from safetensors.torch import save_file
    import torch

    (tmp_path / "secret.yaml").write_text("theirs")
    with library.staged_artifact("motion", "M") as stage:
        save_file({"w": torch.zeros(1)}, str(stage / "adapter.safetensors"))
        (stage / "adapter.st").write_bytes(b"tensors no hash covers")
        (stage / "outside.yaml").symlink_to(tmp_path / "secret.yaml")  # a link out of the folder, as tar keeps
        library.write_json(stage / library.MANIFEST, {
            "name": "M", "kind": "motion", "base": "nano", "base_fingerprint": "0", "class_noun": "sprite",
            "paths": {"motion_adapter": "adapter.safetensors", "config": "config.yaml"} | {key: named}})
    folder = isolated_home / "motions" / "M"
    for verify in (True, False):
        if ok:
            assert library.read_manifest(folder, verify=verify)["paths"][key] == named
        else:
            with pytest.raises(UserError, match=rf"paths.{key} names .*, not a file of the artifact .* "
                                                r"retrain it \(vidbooth train-motion ... --name M --overwrite\)"):
                library.read_manifest(folder, verify=verify)


@pytest.mark.parametrize("kind", ["subject", "motion"])
def test_a_name_being_trained_now_is_told_so_and_not_taken_for_a_stopped_run(kind, world_inputs, capsys):
    """Another process training the name has checkpoints in its run folder: the second run had been told 'a
    stopped run left a checkpoint: rerun with --resume' (and, with --resume, 'other settings'), not to wait."""
    from vidbooth.cli.app import main
    from vidbooth.engine.train import CHECKPOINTS, STATE_FILE, run_folder

    photos, clip = world_inputs
    name, stage = ("S*", "textual-inversion") if kind == "subject" else ("M", "motion")
    checkpoint = run_folder(kind, name, stage) / CHECKPOINTS / "step-0000130"
    checkpoint.mkdir(parents=True)
    (checkpoint / STATE_FILE).write_text("{}")
    command = (["train-subject", str(photos), "--class-noun", "circle"] if kind == "subject"
               else ["train-motion", str(clip)])
    with library.artifact_lock(kind, name):  # flock: another open file of this process is another holder
        for extra in ([], ["--resume"]):
            assert main([*command, "--name", name, "--base", "tiny", *extra]) == 2
            told = capsys.readouterr().err.strip().splitlines()[-1]
            assert told == f"error: {kind} '{name}' is being trained by another process (pid {os.getpid()}); " \
                           "wait for it to finish"
    assert main([*command, "--name", name, "--base", "tiny"]) == 2  # free again: a stopped run's checkpoint
    assert "a stopped run left a checkpoint" in capsys.readouterr().err


def test_a_pretrain_run_in_progress_is_not_told_there_is_nothing_to_resume(tmp_path, capsys):
    """A run before its first checkpoint holds the folder's lock: `--resume` beside it had said 'nothing to resume
    in ...: run without --resume to start'."""
    from vidbooth.cli.app import main
    from vidbooth.fileio import lock_beside

    run = tmp_path / "runs" / "nano"
    with lock_beside(run, lambda owner: owner):
        assert main(["pretrain", "--out", str(run), "--resume"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: another pretrain (pid {os.getpid()}) is writing {run}: wait for it to end, or give another --out")


def test_a_run_folder_given_through_a_link_takes_the_same_lock(tmp_path):
    """`--out alias` for `runs/nano` had taken 'alias.lock' and read the live run's checkpoints as it saved them."""
    from vidbooth.fileio import lock_beside

    (tmp_path / "runs" / "nano").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "runs" / "nano")
    with lock_beside(tmp_path / "runs" / "nano", lambda owner: f"busy {owner}"):
        with pytest.raises(UserError, match=f"^busy {os.getpid()}$"):
            with lock_beside(tmp_path / "alias", lambda owner: f"busy {owner}"):
                pass
        with pytest.raises(UserError, match=f"^busy {os.getpid()}$"):
            with lock_beside(tmp_path / "runs" / "nano" / ".", lambda owner: f"busy {owner}"):
                pass


@pytest.mark.parametrize("code", ["ENOLCK", "EOPNOTSUPP"])
def test_a_file_system_without_locks_is_said_so_once_and_leaves_no_lock_file(code, isolated_home, monkeypatch):
    """Some network and FUSE mounts refuse flock: every run had been told 'being trained by another process (pid
    unknown)', for ever, and each left a lock file in a library it had created."""
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UserError, match=r"^cannot lock .*motions__M.lock \(.+\): this file system does not take file "
                                        r"locks \(some network and FUSE mounts do not\); put it on a local disk"):
        with library.artifact_lock("motion", "M"):
            pass
    assert not isolated_home.exists()  # the library it created, lock file and all, is gone again
    library.refuse_if_being_trained("motion", "M")  # a probe says nothing: the lock itself says it


def test_without_locks_another_runs_lock_file_is_left_and_no_descriptor_leaks(isolated_home, monkeypatch):
    """(mutation testing) Where flock fails, a lock file this run did not make is not removed, the probe before
    the checkpoint checks says nothing (the lock itself says what is wrong), and the file is closed."""
    import errno
    import fcntl

    lock = isolated_home / ".locks" / "motions__M.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("123")

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    open_files = len(os.listdir("/proc/self/fd"))
    library.refuse_if_being_trained("motion", "M")
    with pytest.raises(UserError, match="this file system does not take file locks"):
        with library.artifact_lock("motion", "M"):
            pass
    assert lock.read_text() == "123" and len(os.listdir("/proc/self/fd")) == open_files


@pytest.mark.usefixtures("fails_rather_than_hangs")  # without its lock the engine would pretrain for an hour
def test_pretrain_through_a_link_beside_a_live_run_is_told_so(tmp_path, capsys, monkeypatch):
    """(mutation testing) The probe before the run folder's checks follows links too; the lock itself names the
    other run where the probe found the folder free a moment before."""
    from vidbooth.cli.app import main
    from vidbooth.config import pretrain as pretrain_config
    from vidbooth.config.pretrain import PretrainConfig
    from vidbooth.fileio import lock_beside
    from vidbooth.nano import pretrain

    run = tmp_path / "runs" / "nano"
    run.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(run)
    with lock_beside(run, lambda owner: owner):
        assert main(["pretrain", "--out", str(tmp_path / "alias"), "--resume"]) == 2
        assert f"another pretrain (pid {os.getpid()}) is writing" in capsys.readouterr().err
        monkeypatch.setattr(pretrain_config, "refuse_if_held", lambda *args: None)  # free when it looked
        with pytest.raises(UserError, match=rf"^another pretrain \(pid {os.getpid()}\) is writing {run}: wait"):
            pretrain.pretrain(PretrainConfig(out=str(run)))


def test_a_full_disk_as_the_library_saves_is_a_disk_full_error_naming_the_library(isolated_home, monkeypatch):
    """A DiskFull (with where space is needed), which the demo words as 'run the demo again': it has no --resume."""
    from vidbooth.errors import DiskFull

    def no_room(action, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(library, "_into_folder", no_room)
    with pytest.raises(DiskFull, match=r"^the disk is full: subject 'S\*' was not saved .*--resume$") as refused:
        _save()
    assert refused.value.folder == isolated_home


def test_a_library_folder_it_may_not_write_in_is_one_line_before_training(isolated_home, tmp_path, monkeypatch,
                                                                           capsys):
    """Made by a refused probe file, as root may write anywhere."""
    from tests.badinputs import write_photos
    from vidbooth.cli.app import main

    photos = write_photos(tmp_path / "photos")
    isolated_home.mkdir()
    touch = Path.touch

    def refused(path, *args, **kwargs):
        if path.name.startswith(".write-test-"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return touch(path, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", refused)
    args = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", "--recipe", "tiny/subject",
            "--set", "data.resolution=16", "--no-preview", "--steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: cannot write to the library {isolated_home} (Permission denied): choose another with "
                   "--home"), err
    assert sorted(path.name for path in isolated_home.iterdir()) == []


def test_list_leaves_out_a_file_and_a_hidden_folder_beside_the_artifacts_without_a_word(isolated_home, capsys):
    """A Finder's .DS_Store, a note or an editor's hidden folder in motions/ are not damaged motions."""
    from vidbooth.cli.app import main

    _save("kept", "motion")
    (isolated_home / "motions" / ".DS_Store").write_bytes(b"\0")
    (isolated_home / "motions" / "notes.txt").write_text("mine")
    (isolated_home / "motions" / ".cache").mkdir()
    assert main(["list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [entry["name"] for entry in json.loads(out)] == ["kept"] and err == ""
    assert (isolated_home / "motions" / "notes.txt").read_text() == "mine"


def test_a_save_finished_but_for_removing_the_old_version_is_kept_and_the_old_version_removed(isolated_home):
    """Killed after the new version was renamed in and before the old one, set aside in .trash/, was removed."""
    _save("S*", value=b"old")
    live = library.artifact_dir("subject", "S*")
    aside = isolated_home / ".trash" / f"subjects__S%2A.{library._host_tag()}-999999999.abcdef01"  # a dead writer's
    shutil.copytree(live, aside)
    (live / "adapter.bin").write_bytes(b"new")
    library.recover()
    assert (live / "adapter.bin").read_bytes() == b"new" and not aside.exists()


def test_a_save_in_flight_by_another_users_process_is_left_to_it(isolated_home, monkeypatch):
    """A library shared by two users: signalling the other's live process is refused (EPERM), which means alive."""
    writer = 2**22 + 1  # above any pid_max (at most 2**22 on Linux): nothing is signalled
    staging = isolated_home / ".staging" / f"S%2A.{library._host_tag()}-{writer}.deadbeef"
    staging.mkdir(parents=True)
    kill = os.kill

    def not_yours(pid, signum):
        if pid == writer:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return kill(pid, signum)

    monkeypatch.setattr(library.os, "kill", not_yours)
    library.recover()
    assert staging.is_dir()
    monkeypatch.setattr(library.os, "kill", kill)  # the process is gone
    library.recover()
    assert not staging.exists()


def test_entries_vidbooth_did_not_name_in_its_staging_and_trash_folders_do_not_stop_a_lookup(isolated_home):
    """A Finder's .DS_Store or a folder copied in by hand carry no writer's pid."""
    _save()
    for folder in (".staging", ".trash"):
        (isolated_home / folder).mkdir(exist_ok=True)
        (isolated_home / folder / ".DS_Store").write_bytes(b"\0")
    (isolated_home / ".staging" / "copy of S%2A").mkdir()
    (isolated_home / ".trash" / "subjects__copy").mkdir()  # a kind's folder, but no writer
    stray = isolated_home / ".trash" / f"photos__dog.{library._host_tag()}-999999999.ab"  # a dead writer's; no kind
    stray.mkdir()
    assert library.artifact_dir("subject", "S*") == isolated_home / "subjects" / "S%2A"
    assert not (isolated_home / ".staging" / "copy of S%2A").exists()
    assert (isolated_home / ".trash" / ".DS_Store").is_file() and not (isolated_home / ".DS_Store").exists()
    assert (isolated_home / ".trash" / "subjects__copy").is_dir() and not (isolated_home / "subjects" / "copy").exists()
    assert stray.is_dir() and not (isolated_home / "photos").exists()


def test_a_folder_vidbooth_cannot_read_at_the_artifacts_place_is_refused_before_training_and_kept(
    tmp_path, isolated_home, monkeypatch, capsys
):
    """A folder without read permission (made by another user, mode 0300); made by patching its listing here, as
    root may read any folder."""
    import vidbooth.engine.backbone
    from tests.badinputs import write_clip
    from vidbooth.cli.app import main

    monkeypatch.setattr(vidbooth.engine.backbone, "load_backbone", lambda *args, **kwargs: pytest.fail("trained"))
    folder = _hand_made(isolated_home, "motions", "m")
    iterdir = Path.iterdir

    def unreadable(path):
        if path == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return iterdir(path)

    monkeypatch.setattr(Path, "iterdir", unreadable)
    clip = write_clip(tmp_path / "clip.mp4")
    assert main(["train-motion", str(clip), "--name", "m", "--recipe", "tiny/motion", "--overwrite"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder} is in the way of motion 'm': it is a folder "
                                                     "vidbooth cannot read, not a vidbooth motion"), errors
    assert (folder / "notes.txt").read_text() == "mine"
