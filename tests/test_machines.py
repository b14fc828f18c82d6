"""A training over several machines whose disks are not shared, as two processes of one `accelerate launch` on this
machine: the second process takes its own library and working folder (a hook run first in every process), so the
two see different files under the same paths, as two machines do."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from badinputs import write_photos
from test_motion_cli import _SECOND_PROCESS_KILLED_AT_STEP_3, square_clip

_SECOND_MACHINE = """
import os

if os.environ.get("RANK") == "1":
    os.environ["VIDBOOTH_HOME"] = os.environ["SECOND_MACHINE_HOME"]
    os.chdir(os.environ["SECOND_MACHINE_DIR"])
"""

_STOPPED_AT_STEP_2 = """
import os
import signal

if os.environ.get("RANK") == "0":
    import vidbooth.engine.train as train

    _accumulate = train._accumulate

    def _stopped_at_step_2(method, data, cfg, step, accelerator):
        if step == 1:  # the second step: both processes stop after it, with its checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        return _accumulate(method, data, cfg, step, accelerator)

    train._accumulate = _stopped_at_step_2
"""

_FIRST_PROCESS_KILLED_AT_STEP_3 = _SECOND_PROCESS_KILLED_AT_STEP_3.replace('"RANK") == "1"', '"RANK") == "0"')


def _machines(tmp_path, hook: str = ""):
    """The two machines' working folders (the first is the launch's) and the environment that makes them so."""
    first, second = tmp_path / "machine-0", tmp_path / "machine-1"
    for folder in (first, second):
        folder.mkdir()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SECOND_MACHINE + hook)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]),
                        "SECOND_MACHINE_HOME": str(tmp_path / "home-1"), "SECOND_MACHINE_DIR": str(second)}
    return first, second, env


def _train(launch, machine, env, *more, steps="2"):
    command = ["train-motion", "slide.mp4", "--name", "slide", "--class-noun", "square", "--base", "tiny", "--recipe",
               "tiny/motion", "--num-frames", "4", "--no-preview", "--steps", steps, *more]
    return _run(launch, machine, env, command)


def _run(launch, machine, env, command):
    return subprocess.run([*launch, "-m", "vidbooth", *command, "--device", "cpu"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=machine)


def _errors(done) -> list[str]:
    """The error lines, also one that ran into the other process's progress bar (the two share one pipe here)."""
    found = (re.search(r"(?:^|loss=[\d.]+)(error(?: \(process \d+\))?: .*)", line) for line in done.stderr.splitlines())
    return [match.group(1) for match in found if match]


def _said(done) -> list[str]:
    """The error line of each process, first process first (with no 'error: ' or 'error (process 1): ')."""
    errors = _errors(done)
    first = [line.removeprefix("error: ") for line in errors if line.startswith("error: ")]
    second = [line.removeprefix("error (process 1): ") for line in errors if line.startswith("error (process 1): ")]
    assert len(errors) == 2 and len(first) == len(second) == 1, done.stderr
    return first + second


def test_inputs_refused_on_one_machine_stop_both_in_one_line_each(tmp_path, isolated_home, two_process_launch):
    """A motion of the name already in one machine's library only. Refused by the second machine, the first had
    waited two hours for it to meet; refused by the first, the second ended in a traceback of torch's."""
    first, second, env = _machines(tmp_path)
    for machine in (first, second):
        square_clip(machine / "slide.mp4")
    for refusing, home in ((1, tmp_path / "home-1"), (0, isolated_home)):
        (home / "motions" / "slide").mkdir(parents=True)
        (home / "motions" / "slide" / "manifest.json").write_text(json.dumps({"kind": "motion", "name": "slide"}))
        done = _train(two_process_launch, first, env)
        assert done.returncode != 0
        said = _said(done)
        assert said[refusing].startswith("motion 'slide' already exists in "), said
        assert said[1 - refusing] == (
            "another process of this run refused its inputs or settings (its own error line, on its machine, says "
            "why): every machine of a run needs the same files at the same paths, and one library (VIDBOOTH_HOME on "
            "a file system they share)"), said
        shutil.rmtree(home / "motions")


@pytest.mark.parametrize("command", ["train-subject", "train-image-prompt"])
def test_an_input_refused_on_the_second_machine_only_stops_both(command, tmp_path, isolated_home, two_process_launch):
    first, second, env = _machines(tmp_path)
    if command == "train-subject":  # the photos on the first machine only
        write_photos(first / "photos")
        args = ["train-subject", "photos", "--name", "S*", "--class-noun", "dog", "--base", "tiny", "--recipe",
                "tiny/subject", "--ti-steps", "1", "--identity-steps", "1", "--no-preview"]
        refused = "photo path not found: photos: "
    else:  # a model already at --out on the second machine only
        (second / "model.safetensors").write_bytes(b"")
        args = ["train-image-prompt", "--base", "tiny", "--out", "model.safetensors", "--coarse-steps", "1",
                "--fine-steps", "1", "--clips", "2"]
        refused = "model.safetensors exists: pass --overwrite to replace it"
    done = _run(two_process_launch, first, env, args)
    assert done.returncode != 0
    said = _said(done)
    assert said[0].startswith("another process of this run refused its inputs or settings"), said
    assert said[1].startswith(refused), said
    assert not (isolated_home / "subjects").exists() and not (first / "model.safetensors").exists()


def test_an_image_prompt_model_being_written_on_the_first_machine_stops_both(tmp_path, two_process_launch):
    """The first process alone had refused, once the processes had met: the second went on, and was told only
    that another process had stopped."""
    from vidbooth.fileio import exclusive_lock

    first, second, env = _machines(tmp_path)
    with exclusive_lock(first / "model.safetensors.lock", lambda owner: "busy"):
        done = _run(two_process_launch, first, env, ["train-image-prompt", "--base", "tiny", "--out",
                                                     "model.safetensors", "--coarse-steps", "1", "--fine-steps", "1",
                                                     "--clips", "2"])
    assert done.returncode != 0
    said = _said(done)
    assert said[0] == (f"another train-image-prompt (pid {os.getpid()}) is writing model.safetensors: wait for it to "
                       "end, or give another --out"), said
    assert said[1].startswith("another process of this run refused its inputs or settings"), said


_NO_BF16_ON_THE_SECOND = """
import os

if os.environ.get("RANK") == "1":
    import accelerate
    from accelerate.state import PartialState

    def _no_bf16_here(self, *args, **kwargs):  # accelerate's own check comes once the processes have met
        PartialState(cpu=kwargs.get("cpu", False))
        raise ValueError("bf16 mixed precision requires a GPU (not found here)")

    accelerate.Accelerator.__init__ = _no_bf16_here
"""


def test_a_set_up_refused_on_one_machine_once_the_processes_met_stops_both(tmp_path, isolated_home,
                                                                           two_process_launch):
    """A machine whose devices lack bf16: the others had waited two hours for it in their vote."""
    first, second, env = _machines(tmp_path, _NO_BF16_ON_THE_SECOND)
    for machine in (first, second):
        square_clip(machine / "slide.mp4")
    said = _said(_train(two_process_launch, first, env))
    assert said[0].startswith("another process of this run refused its inputs or settings"), said
    assert said[1].startswith("cannot set up training: bf16 mixed precision requires a GPU (not found here): "), said


def test_other_clips_under_the_same_path_on_another_machine_are_refused(tmp_path, isolated_home, two_process_launch):
    """The motion had been learned from both clips, its manifest naming the first machine's alone."""
    first, second, env = _machines(tmp_path)
    square_clip(first / "slide.mp4")
    square_clip(second / "slide.mp4", num_frames=16)
    done = _train(two_process_launch, first, env)
    assert done.returncode != 0
    errors = _errors(done)
    assert len(errors) == 2 and all(line.endswith(
        "the processes of this run were given different inputs or settings (process 1: other files, another base "
        "model or recipe than the first): every machine of a run needs the same files at the same paths, and one "
        "library (VIDBOOTH_HOME on a file system they share)") for line in errors), done.stderr
    assert not (isolated_home / "motions" / "slide").exists()


def test_a_recipe_file_on_one_machine_only_stops_both_and_on_none_each_says_so(tmp_path, isolated_home,
                                                                                  two_process_launch):
    """Refused by the first machine before the processes met, the recipe had left the second waiting two hours for
    it (here, where one launcher starts both, the launcher ended the second without a word)."""
    first, second, env = _machines(tmp_path)
    for machine in (first, second):
        square_clip(machine / "slide.mp4")
    recipe = Path(__file__).parents[1] / "vidbooth" / "recipes" / "tiny" / "motion.yaml"
    for on_the_second in (True, False):
        if on_the_second:
            shutil.copy(recipe, second / "mine.yaml")
        else:
            (second / "mine.yaml").unlink()
        done = _train(two_process_launch, first, env, "--recipe", "mine.yaml")
        assert done.returncode != 0
        said = _said(done)
        assert said[0].startswith("recipe 'mine.yaml' not found: give a YAML file"), said
        told = "another process of this run refused" if on_the_second else "recipe 'mine.yaml' not found"
        assert said[1].startswith(told), said
    assert not (isolated_home / "motions").exists()


def test_another_checkpoint_every_on_one_machine_is_refused(tmp_path, isolated_home, two_process_launch):
    """It decides when the processes exchange values: the second process's check of its weights had met the
    first's step outcome, and was told as weights become NaN."""
    first, second, env = _machines(tmp_path)
    recipe = (Path(__file__).parents[1] / "vidbooth" / "recipes" / "tiny" / "motion.yaml").read_text()
    for machine, every in ((first, "10"), (second, "1")):
        square_clip(machine / "slide.mp4")
        (machine / "mine.yaml").write_text(recipe.replace("checkpoint_every: 10", f"checkpoint_every: {every}"))
    done = _train(two_process_launch, first, env, "--recipe", "mine.yaml", steps="4")
    assert done.returncode != 0
    assert all(line.startswith("the processes of this run were given different inputs or settings (process 1: ")
               for line in _said(done)), done.stderr
    assert not (isolated_home / "motions").exists()


def test_resume_where_only_the_first_machine_has_the_checkpoint_is_refused_then_done_once_copied(
    tmp_path, isolated_home, two_process_launch
):
    """Both had waited for ever, and the second would have started afresh beside the first's resumed weights."""
    first, second, env = _machines(tmp_path, _STOPPED_AT_STEP_2)
    for machine in (first, second):
        square_clip(machine / "slide.mp4")
    done = _train(two_process_launch, first, env, steps="3")
    assert done.returncode != 0 and "error: stopped by SIGTERM at step 2/3" in done.stderr, done.stderr
    run = isolated_home / ".runs" / "motions" / "slide" / "motion"
    assert [p.name for p in run.rglob("step-*")] == ["step-0000002"]
    (tmp_path / "hooks" / "sitecustomize.py").write_text(_SECOND_MACHINE)
    done = _train(two_process_launch, first, env, "--resume", steps="3")
    assert done.returncode != 0
    second_run = tmp_path / "home-1" / ".runs" / "motions" / "slide" / "motion"
    for line, folder in zip(_said(done), (run, second_run)):  # each names the folder on its own machine
        assert line == (
            f"--resume: the processes of this run do not see the same checkpoints in {folder} (process 0: step 2, "
            "process 1: none): every machine of a run needs the same files at the same paths, and one library "
            "(VIDBOOTH_HOME on a file system they share); or copy that folder from the first machine to the same "
            "place on the others, then run the command again"), done.stderr
    shutil.copytree(run, second_run, dirs_exist_ok=True)  # the copy the message advises
    state = second_run / "checkpoints" / "step-0000002" / "state.json"
    state.write_text(state.read_text().replace('"step": 2', '"step": 2, "another run": true'))
    done = _train(two_process_launch, first, env, "--resume", steps="3")  # an older run's step 2 there: refused
    assert done.returncode != 0  # each process had resumed from its own weights, the replicas apart from then on
    assert _said(done)[1].startswith(f"--resume: the processes of this run do not see the same checkpoints in "
                                     f"{second_run} (process 1: another checkpoint of step 2 than the first's)")
    shutil.copytree(run, second_run, dirs_exist_ok=True)
    done = _train(two_process_launch, first, env, "--resume", steps="3")
    assert done.returncode == 0, done.stderr
    assert json.loads((isolated_home / "motions" / "slide" / "manifest.json").read_text())["training"]["steps"] == 3


_EACH_MACHINE_ONE_PROCESS = """
os.environ["LOCAL_WORLD_SIZE"] = "1"
os.environ["LOCAL_RANK"] = "0"  # the second process is the first of its machine
"""


def test_the_second_machine_shows_the_run_where_it_was_saved_and_a_stop(tmp_path, isolated_home, two_process_launch):
    """Its terminal had shown nothing through a whole run; once shown, its stop had named a checkpoint in its own
    library, where none was saved."""
    first, second, env = _machines(tmp_path, _EACH_MACHINE_ONE_PROCESS + _STOPPED_AT_STEP_2)
    for machine in (first, second):
        square_clip(machine / "slide.mp4")
    second_run = tmp_path / "home-1" / ".runs" / "motions" / "slide" / "motion"
    older = second_run / "checkpoints" / "step-0000002"  # an older run's, of the step this one stops at
    older.mkdir(parents=True)
    (older / "state.json").write_text("{}")
    done = _train(two_process_launch, first, env | {"VIDBOOTH_QUIET": "0"}, "--overwrite", steps="3")
    assert done.returncode != 0
    assert done.stderr.count("starting over: the checkpoint of an earlier, stopped run (step-0000002) is "
                             "discarded") == 1, done.stderr  # the second machine's: the first had none
    assert not (older / "state.json").exists()
    assert sorted(_errors(done)) == [
        "error (process 1): stopped by SIGTERM at step 2/3; the first process saved the checkpoint of step 2 in a "
        "library that this machine does not see: rerun the same command with --resume once every machine sees it "
        f"(one VIDBOOTH_HOME on a file system they share, or {second_run} copied from the first machine)",
        "error: stopped by SIGTERM at step 2/3; checkpoint saved in "
        f"{isolated_home / '.runs' / 'motions' / 'slide' / 'motion'}: rerun the same command with --resume to "
        "continue"], done.stderr
    (tmp_path / "hooks" / "sitecustomize.py").write_text(_SECOND_MACHINE + _EACH_MACHINE_ONE_PROCESS)
    done = _train(two_process_launch, first, env | {"VIDBOOTH_QUIET": "0"}, "--overwrite")
    assert done.returncode == 0, done.stderr
    for shown_by_each in ("learning motion 'slide' from 1 clip(s)", "motion slide ━",
                          "motion 'slide': 2 steps, loss"):
        # counted in the whole output: the two share one pipe here, where a line of one may run into the other's bar
        assert done.stderr.count(shown_by_each) == 2, (shown_by_each, done.stderr)
    assert done.stderr.count("saved motion 'slide' in ") == 1, done.stderr
    assert done.stderr.count("motion 'slide' is saved on the first machine of this run (127.0.0.1), by its first "
                             "process") == 1, done.stderr
    assert not (tmp_path / "home-1" / "motions").exists()
    for machine in (first, second):
        write_photos(machine / "photos")
    done = _run(two_process_launch, first, env | {"VIDBOOTH_QUIET": "0"}, [
        "textual-inversion", "photos", "--name", "S*", "--class-noun", "dog", "--base", "tiny", "--recipe",
        "tiny/subject", "--steps", "1", "--batch-size", "1", "--no-preview"])
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("saved subject 'S*' (token ") == 1, done.stderr
    assert done.stderr.count("subject 'S*' is saved on the first machine of this run (127.0.0.1), by its first "
                             "process") == 1, done.stderr


def test_a_first_process_that_stopped_before_the_others_met_it_is_one_line(monkeypatch):
    """On another machine (its own launcher), the first process ended before they met, refused by a check that runs
    before they do (a recipe file missing there): torch's error had ended this one in a traceback of C++ frames."""
    import torch
    from accelerate import Accelerator

    from vidbooth.engine import train
    from vidbooth.errors import UserError

    def lost(*args, **kwargs):
        raise torch.distributed.DistNetworkError("Failed to recv, got 0 bytes. Connection was likely closed.\n[C++ "
                                                 "frames]")

    monkeypatch.setattr(Accelerator, "__init__", lost)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29511")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UserError) as refused:
        train.make_accelerator("no", device="cpu")
    assert str(refused.value) == (
        "cannot meet the first process of this run at 10.0.0.1:29511 (Failed to recv, got 0 bytes. Connection was "
        "likely closed.): it stopped before training began (its own error line, on its machine, says why) or cannot "
        "be reached from here; start every machine's launch with the same inputs and --main_process_ip")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match=r"^cannot set up the meeting point of this run's processes at 10.0.0.1:29511 "
                                        r"\(Failed to recv.*\): give the launcher another --main_process_port"):
        train.make_accelerator("no", device="cpu")
    monkeypatch.setattr(Accelerator, "__init__", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="^other$"):  # any other error is not taken for one
        train.make_accelerator("no", device="cpu")


_GLOO_NOT_CONNECTED = ("Gloo connectFullMesh failed with [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/"
                       "pair.cc:152] timed out connecting: SO_ERROR: Connection refused, remote=[127.0.0.1]:35030")
"""torch's error where the processes met, but gloo listened on the loopback (seen across two network namespaces)."""


def test_processes_that_met_but_gloo_could_not_connect_are_told_to_set_its_interface(monkeypatch):
    """It had been a traceback (a RuntimeError, not torch's DistError)."""
    import socket

    from accelerate import Accelerator

    from vidbooth.engine import train
    from vidbooth.errors import UserError

    def not_connected(*args, **kwargs):
        raise RuntimeError(_GLOO_NOT_CONNECTED)

    resolve = socket.gethostbyname
    monkeypatch.setattr(Accelerator, "__init__", not_connected)
    monkeypatch.setattr(socket, "gethostname", lambda: "machine-1")
    monkeypatch.setattr(socket, "gethostbyname", lambda host: (_ for _ in ()).throw(socket.gaierror(-2, "unknown")))
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    with pytest.raises(UserError) as refused:
        train.make_accelerator("no", device="cpu")
    assert str(refused.value) == (
        "the processes of this run met but could not connect to one another (timed out connecting: SO_ERROR: "
        "Connection refused, remote=[127.0.0.1]:35030): gloo listens on the address of this machine's host name "
        "'machine-1', which resolves to nothing; set GLOO_SOCKET_IFNAME on each machine to its network interface that "
        "reaches the others (`ip route get MASTER_ADDR` names it), and run again")
    monkeypatch.setattr(socket, "gethostbyname", resolve)
    monkeypatch.setattr(socket, "gethostname", lambda: "n" * 64)  # Linux allows 64 letters; Python's idna codec 63
    with pytest.raises(UserError, match=r"host name 'n{64}', which resolves to nothing; set GLOO_SOCKET_IFNAME"):
        train.make_accelerator("no", device="cpu")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth9")
    with pytest.raises(UserError, match=r"gloo listens on the address of GLOO_SOCKET_IFNAME=eth9; set "):
        train.make_accelerator("no", device="cpu")


def test_the_first_machine_killed_outright_is_told_with_the_checkpoint_it_saved(tmp_path, isolated_home,
                                                                                 two_process_launch):
    """The second machine, whose library holds no checkpoint, had advised a plain rerun that starts over."""
    first, second, env = _machines(tmp_path, _FIRST_PROCESS_KILLED_AT_STEP_3)
    for machine in (first, second):
        square_clip(machine / "slide.mp4")
    done = _train(two_process_launch, first, env, "--set", "train.checkpoint_every=2", steps="4")
    assert done.returncode != 0
    second_run = tmp_path / "home-1" / ".runs" / "motions" / "slide" / "motion"
    assert [line for line in _errors(done)] == [
        "error (process 1): another process of this run stopped at step 2/4 (the launcher's report below says which "
        "and why); the first process saved the checkpoint of step 2 in a library that this machine does not see: "
        "rerun the same command with --resume once every machine sees it (one VIDBOOTH_HOME on a file system they "
        f"share, or {second_run} copied from the first machine)"], done.stderr
    assert [p.name for p in (isolated_home / ".runs").rglob("step-*")] == ["step-0000002"]


_OWN_CACHE_AND_NO_LOCAL_WORLD_SIZE = """
os.environ.pop("LOCAL_WORLD_SIZE", None)  # as a launcher that does not set it (accelerate sets 1 on the CPU)
if os.environ.get("RANK") == "1":
    os.environ["VIDBOOTH_CACHE"] = os.environ["SECOND_MACHINE_CACHE"]
"""


def _subject_with_class_images(launch, machines, env, count: str, *settings: str) -> None:
    """train-subject with `count` class images made by the launch's processes (each sampled in one step), on each
    machine's photos; it must succeed."""
    for machine in machines:
        write_photos(machine / "photos")
    done = _run(launch, machines[0], env, [
        "train-subject", "photos", "--name", "S*", "--class-noun", "dog", "--base", "tiny", "--recipe", "tiny/subject",
        "--ti-steps", "1", "--identity-steps", "1", "--no-preview", "--prior-preservation", "--num-class-images", count,
        "--set", "prior.num_inference_steps=1", *settings])
    assert done.returncode == 0, done.stderr


def test_class_images_are_whole_on_a_machine_that_made_only_its_share(tmp_path, isolated_home, two_process_launch):
    """Each machine's cache its own, and the shares split over all processes: each machine's cache held only its
    share, and the run stopped saying that a cached class image could not be read ('delete it and run again')."""
    first, second, env = _machines(tmp_path, _OWN_CACHE_AND_NO_LOCAL_WORLD_SIZE)
    env = env | {"SECOND_MACHINE_CACHE": str(tmp_path / "cache-1"), "VIDBOOTH_HOME": str(isolated_home)}
    _subject_with_class_images(two_process_launch, (first, second), env, "2", "--set", "prior.prompt=a {} on two")
    for cache in (tmp_path / "cache-1", Path(os.environ["VIDBOOTH_CACHE"])):  # the second machine's, the first's
        folders = [settings.parent for settings in cache.rglob("settings.json") if "on two" in settings.read_text()]
        assert len(folders) == 1, cache
        assert sorted(p.name for p in folders[0].glob("*.png")) == ["00000.png", "00001.png"], cache


_COUNTS_CLASS_IMAGES = """
if os.environ.get("RANK") is not None:  # each process of the launch, not the launcher
    import vidbooth.engine.sampling as sampling

    _sample_video = sampling.sample_video

    def _counted(backbone, prompts, *args, **kwargs):
        if kwargs.get("settings") == "prior":
            with open(os.environ["CLASS_IMAGES_MADE"], "a") as made:
                made.write(f"{os.environ['RANK']} {len(prompts)}\\n")
        return _sample_video(backbone, prompts, *args, **kwargs)

    sampling.sample_video = _counted
"""


def test_class_images_in_a_cache_the_machines_share_are_made_once(tmp_path, isolated_home, two_process_launch):
    """Each machine's processes had shared out every class image among themselves: with a cache the machines
    share, each machine made them all."""
    first, second, env = _machines(tmp_path, _EACH_MACHINE_ONE_PROCESS + _COUNTS_CLASS_IMAGES)
    made = tmp_path / "made.txt"
    env = env | {"VIDBOOTH_CACHE": str(tmp_path / "cache"), "CLASS_IMAGES_MADE": str(made)}
    _subject_with_class_images(two_process_launch, (first, second), env, "4", "--set", "prior.sample_batch_size=1")
    assert sorted(made.read_text().splitlines()) == ["0 1", "0 1", "1 1", "1 1"]  # two each, four in all
    assert len(list((tmp_path / "cache").rglob("0000?.png"))) == 4


def test_identity_adapter_for_a_subject_in_the_first_machines_library_only(tmp_path, isolated_home,
                                                                           two_process_launch):
    """The second machine, whose library lacks the subject, had stopped before the processes met: the first waited
    two hours for it."""
    from vidbooth.cli.app import main

    first, _, env = _machines(tmp_path)
    photos = write_photos(tmp_path / "photos")
    assert main(["textual-inversion", str(photos), "--name", "V*", "--class-noun", "dog", "--base", "tiny",
                 "--recipe", "tiny/subject", "--steps", "1", "--batch-size", "1", "--no-preview"]) == 0
    done = _run(two_process_launch, first, env, ["identity-adapter", "--name", "V*", "--recipe", "tiny/subject",
                                                 "--steps", "1", "--no-preview"])
    assert done.returncode != 0
    said = _said(done)
    assert said[0].startswith("another process of this run refused its inputs or settings"), said
    assert said[1].startswith(f"unknown subject 'V*' in {tmp_path / 'home-1'}"), said


def test_a_refusal_is_told_at_once_alone_and_before_a_setup_error_it_caused_under_a_launcher(monkeypatch):
    """A single process does not set up training to refuse its inputs; under a launcher, a refused setting that
    also fails the set-up (the mixed precision, say) is told as the check said it, not as the set-up did."""
    from vidbooth import reporting
    from vidbooth.engine import train
    from vidbooth.errors import UserError

    def refused():
        raise UserError("refused by its check")

    def set_up(**settings):
        raise UserError("cannot set up training")

    monkeypatch.setattr(train, "make_accelerator", lambda **settings: pytest.fail("training was set up"))
    with pytest.raises(UserError, match="^refused by its check$"):
        train.checked_then_met(refused, {})
    monkeypatch.setattr(reporting, "process_count", lambda: 2)
    monkeypatch.setattr(train, "make_accelerator", set_up)
    with pytest.raises(UserError, match="^refused by its check$"):
        train.checked_then_met(refused, {})
    with pytest.raises(UserError, match="^cannot set up training$"):  # with no refusal, the set-up's own error
        train.checked_then_met(lambda: None, {})


def test_a_process_refused_before_meeting_meets_the_others_on_its_device_only_if_it_had_not(tmp_path, monkeypatch):
    """One that had met them (its refusal told to them already) would have joined whatever the others did next. Its
    device is the flag's, a --set's, else its recipe's (left out, it had met them on CUDA where they met on the
    CPU)."""
    import signal

    import torch

    from vidbooth import reporting
    from vidbooth.cli.app import _tell_the_other_processes
    from vidbooth.engine import train
    from vidbooth.errors import UserError

    met = []

    def refused() -> UserError:  # each command's own
        return UserError("recipe 'mine.yaml' not found")

    def make_accelerator(device, quiet):  # a stop signal ends its wait for them at once
        assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        assert quiet  # no warning of the launcher's mixed precision after the error line
        met.append(device)

    monkeypatch.setattr(train, "make_accelerator", make_accelerator)
    monkeypatch.setattr(train, "_agree", lambda accelerator, values: met.append(values) or values)
    _tell_the_other_processes(["train-motion", "clip.mp4", "--device", "cpu"], refused())
    assert met == []  # a single process
    monkeypatch.setattr(reporting, "process_count", lambda: 2)
    _tell_the_other_processes(["generate", "--device", "cpu"], refused())
    assert met == []  # a command that each process runs alone
    monkeypatch.setattr(reporting, "leftover_launcher_variables", lambda: ["WORLD_SIZE=2"])
    _tell_the_other_processes(["train-motion", "clip.mp4", "--device", "cpu"], refused())
    assert met == []  # a launcher's variables left in a shell: no launcher, no other process
    monkeypatch.setattr(reporting, "leftover_launcher_variables", lambda: [])
    previous = signal.signal(signal.SIGTERM, handler := lambda signum, frame: None)
    try:
        _tell_the_other_processes(["train-motion", "clip.mp4", "--device", "cpu"], refused())
        _tell_the_other_processes(["--home", "h", "train-subject", "photos", "--device=cuda:1"], refused())
        _tell_the_other_processes(["identity-adapter", "S*"], refused())
        assert signal.getsignal(signal.SIGTERM) is handler  # the default only while it waits for the others
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert met == ["cpu", [1.0], "cuda:1", [1.0], "auto", [1.0]]
    for given in (["--set", "runtime.device=cpu"], ["--set=runtime.device=cpu"], ["--device", "cuda", "--device=cpu"]):
        _tell_the_other_processes(["train-motion", "clip.mp4", "--set", "train.lr=1", *given], refused())
        assert met[-2:] == ["cpu", [1.0]], given
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("runtime:\n  device: cpu\n")
    for given, device in ((["-r", str(recipe)], "cpu"), ([f"--recipe={recipe}"], "cpu"),
                          (["--recipe", str(recipe), "--device", "cuda:1"], "cuda:1"),
                          (["--recipe", str(recipe), "--set", "runtime.device=auto"], "auto"),
                          (["--recipe", str(tmp_path / "missing.yaml")], "auto"), (["--recipe", "tiny/motion"], "auto"),
                          (["--device", "", "--recipe", str(recipe)], "auto")):
        _tell_the_other_processes(["train-motion", "clip.mp4", "--set", "train.lr=1", *given], refused())
        assert met[-2:] == [device, [1.0]], given
    recipe.write_text("runtime: [")  # unreadable
    _tell_the_other_processes(["train-motion", "clip.mp4", "--recipe", str(recipe)], refused())
    assert met[-2:] == ["auto", [1.0]]
    del met[6:]
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    _tell_the_other_processes(["train-motion", "clip.mp4"], refused())
    assert met == ["cpu", [1.0], "cuda:1", [1.0], "auto", [1.0]]
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)

    def not_met(**settings):
        raise UserError("cannot meet the first process of this run")

    monkeypatch.setattr(train, "make_accelerator", not_met)
    with pytest.raises(UserError) as raised:  # a refusal or not, told or not met: trying again would wait as long
        train.checked_then_met(lambda: None, {})
    assert raised.value.others_told
    monkeypatch.setattr(train, "make_accelerator", make_accelerator)
    _tell_the_other_processes(["train-motion", "clip.mp4"], raised.value)
    _tell_the_other_processes(["train-motion", "clip.mp4"], refused())
    assert met == ["cpu", [1.0], "cuda:1", [1.0], "auto", [1.0], "auto", [1.0]]


def test_a_refusal_before_meeting_under_debug_is_also_told_to_the_others(tmp_path, monkeypatch):
    """--debug raises the error for its traceback: the others had been left waiting two hours for it."""
    from vidbooth import reporting
    from vidbooth.cli.app import main
    from vidbooth.engine import train
    from vidbooth.errors import UserError

    told = []
    monkeypatch.setattr(reporting, "process_count", lambda: 2)
    monkeypatch.setattr(train, "refused_before_meeting", lambda refusal, device: told.append((str(refusal), device)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="^recipe 'mine.yaml' not found"):
        main(["--debug", "train-motion", "clip.mp4", "--name", "slide", "--recipe", "mine.yaml", "--device", "cpu"])
    assert len(told) == 1 and told[0][0].startswith("recipe 'mine.yaml' not found") and told[0][1] == "cpu", told


def _gathered_with(monkeypatch, other):
    """accelerate's gather as the first of two processes sees it, the second's row being `other`'s."""
    import torch

    monkeypatch.setattr("accelerate.utils.gather", lambda rows: torch.cat([rows, other.to(rows.dtype)]))


def _row(monkeypatch, run_dir, signature, resuming):
    """What a process gives the gather of `_agree_on_the_run` for these inputs."""
    from types import SimpleNamespace

    from vidbooth.engine import train

    given = []
    monkeypatch.setattr("accelerate.utils.gather", lambda rows: given.append(rows) or rows)
    train._agree_on_the_run(SimpleNamespace(num_processes=2, device="cpu"), run_dir, signature, resuming)
    return given[0]


def test_processes_given_other_settings_or_other_checkpoints_to_resume_are_refused_without_a_launch(
    tmp_path, monkeypatch
):
    """The fast twin of the launched tests above: each line as the first process words it."""
    from types import SimpleNamespace

    from test_train_engine import config, make_method, toy_data

    from vidbooth.engine import train
    from vidbooth.errors import UserError

    run, copied = tmp_path / "run", tmp_path / "copied"
    train.train(make_method(), toy_data(), config(steps=2, checkpoint_every=2), run,
                train.make_accelerator("no", device="cpu"))
    shutil.copytree(run, copied)
    checkpoint = train.list_checkpoints(run)[-1]
    two = SimpleNamespace(num_processes=2, device="cpu")
    same = ("every machine of a run needs the same files at the same paths, and one library (VIDBOOTH_HOME on a "
            "file system they share)")
    _gathered_with(monkeypatch, _row(monkeypatch, run, {"recipe": "mine"}, None))
    with pytest.raises(UserError) as refused:
        train._agree_on_the_run(two, run, {"recipe": "theirs"}, None)
    assert str(refused.value) == ("the processes of this run were given different inputs or settings (process 1: "
                                  f"other files, another base model or recipe than the first): {same}")
    train._agree_on_the_run(two, run, {"recipe": "mine"}, None)
    _gathered_with(monkeypatch, _row(monkeypatch, run, {}, None))  # the second machine's library has none
    with pytest.raises(UserError) as refused:
        train._agree_on_the_run(two, run, {}, checkpoint)
    assert str(refused.value) == (
        f"--resume: the processes of this run do not see the same checkpoints in {run} (process 0: step 2, process "
        f"1: none): {same}; or copy that folder from the first machine to the same place on the others, then run "
        "the command again")
    state = copied / "checkpoints" / checkpoint.name / train.STATE_FILE
    state.write_text(state.read_text().replace('"step": 2', '"step": 2, "another run": true'))
    _gathered_with(monkeypatch, _row(monkeypatch, copied, {}, train.list_checkpoints(copied)[-1]))
    with pytest.raises(UserError, match=r"^--resume: the processes of this run do not see the same checkpoints in "
                                        r".*run \(process 1: another checkpoint of step 2 than the first's\): every"):
        train._agree_on_the_run(two, run, {}, checkpoint)
    shutil.copytree(run, copied, dirs_exist_ok=True)  # the copy the message advises
    _gathered_with(monkeypatch, _row(monkeypatch, copied, {}, train.list_checkpoints(copied)[-1]))
    train._agree_on_the_run(two, run, {}, checkpoint)


def test_a_process_whose_set_up_or_checks_pass_stops_when_another_refused_without_a_launch(monkeypatch):
    """Its set-up refused once the processes met (bf16 on a device without it), a process tells the others; one
    whose own checks passed stops when another's vote says it refused."""
    import torch

    from vidbooth import reporting
    from vidbooth.engine import train
    from vidbooth.errors import UserError

    votes = []

    def set_up_refused(**settings):
        raise UserError("cannot set up training: bf16 mixed precision requires a GPU (not found here)")

    monkeypatch.setattr(reporting, "process_count", lambda: 2)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(train, "_agree", lambda accelerator, values: votes.append(values) or [values[0] + 1.0])
    monkeypatch.setattr(train, "make_accelerator", set_up_refused)
    with pytest.raises(UserError, match=r"^cannot set up training: bf16 mixed precision requires a GPU") as refused:
        train.checked_then_met(lambda: None, {})
    assert votes == [[1.0]] and refused.value.others_told
    monkeypatch.setattr(train, "make_accelerator", lambda **settings: "met")
    with pytest.raises(UserError) as refused:
        train.checked_then_met(lambda: "checked", {})
    assert str(refused.value) == (
        "another process of this run refused its inputs or settings (its own error line, on its machine, says why): "
        "every machine of a run needs the same files at the same paths, and one library (VIDBOOTH_HOME on a file "
        "system they share)")
    assert votes == [[1.0], [0.0]] and refused.value.others_told
    monkeypatch.setattr(train, "_agree", lambda accelerator, values: values)
    assert train.checked_then_met(lambda: "checked", {}) == ("checked", "met")


@pytest.fixture
def two_hosts(tmp_path):
    """Two network namespaces joined by a veth pair (10.77.0.1 and 10.77.0.2), each process started in one under a
    host name of its own that no resolver knows (`unshare --uts`): two machines on one network, as far as gloo, the
    launcher and vidbooth's host-name checks can tell. Needs root and iproute2; the namespaces, the link and every
    process in them go with the test, however it ends."""
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("unshare")):
        pytest.skip("needs root, ip (iproute2) and unshare, for two network namespaces")
    for rank in (0, 1):
        (tmp_path / f"machine-{rank}").mkdir()
        square_clip(tmp_path / f"machine-{rank}" / "slide.mp4")
    tag = f"vb{os.getpid() % 100_000}"
    spaces, ends = [f"{tag}n0", f"{tag}n1"], [f"{tag}a", f"{tag}b"]
    started: list[subprocess.Popen] = []

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def start(rank: int, command: list[str], interface: bool = True) -> subprocess.Popen:
        folder = tmp_path / f"machine-{rank}"
        env = os.environ | {"VIDBOOTH_HOME": str(tmp_path / f"home-{rank}"),
                            "VIDBOOTH_CACHE": str(tmp_path / f"cache-{rank}"), "TMPDIR": str(folder),
                            "VIDBOOTH_QUIET": "0"}
        env.pop("GLOO_SOCKET_IFNAME", None)
        env |= {"GLOO_SOCKET_IFNAME": ends[rank]} if interface else {}
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                  "--machine_rank", str(rank), "--main_process_ip", "10.77.0.1", "--main_process_port", "29511",
                  "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vidbooth"]
        script = f'hostname "machine-{rank}" && exec "$@"'
        started.append(subprocess.Popen(
            ["ip", "netns", "exec", spaces[rank], "unshare", "--uts", "sh", "-c", script, "sh", *launch, *command,
             "--device", "cpu"], cwd=folder, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True))
        return started[-1]

    try:
        try:
            for space in spaces:
                ip("netns", "add", space)
            ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
            for space, end, address in zip(spaces, ends, ("10.77.0.1/24", "10.77.0.2/24")):
                ip("link", "set", end, "netns", space)
                ip("-n", space, "addr", "add", address, "dev", end)
                ip("-n", space, "link", "set", end, "up")
                ip("-n", space, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot make network namespaces here: {exc.stderr.decode().strip()}")
        yield start
    finally:
        _stop(started)
        for space in spaces:  # a launcher's processes run in sessions of their own: whatever is left in the space
            listed = subprocess.run(["ip", "netns", "pids", space], capture_output=True, text=True).stdout.split()
            for pid in listed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", space], capture_output=True)
        subprocess.run(["ip", "link", "del", ends[0]], capture_output=True)  # where it was made but not moved


def _stop(launches: list[subprocess.Popen]) -> None:
    """Stop the launches still running: SIGTERM, which a launcher passes on to the process it started (in a session
    of its own) and gives 30 s before killing it, then SIGKILL."""
    for launch in launches:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGTERM)
    for launch in launches:
        try:
            launch.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)


_MOTION = ["train-motion", "slide.mp4", "--name", "slide", "--class-noun", "square", "--base", "tiny", "--recipe",
           "tiny/motion", "--num-frames", "4", "--no-preview", "--steps", "2"]


@pytest.mark.slow
def test_two_launches_on_two_hosts_of_a_network_train_one_motion(two_hosts, tmp_path):
    """Two `accelerate launch --num_machines 2`, each in its own network namespace under its own host name, meet over
    the network (gloo, on the interface GLOO_SOCKET_IFNAME names) and train one motion, saved on the first."""
    second = two_hosts(1, _MOTION)
    first = two_hosts(0, _MOTION)
    said = [process.communicate(timeout=300) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], said
    assert "saved motion 'slide' in " in said[0][1]
    assert "motion 'slide' is saved on the first machine of this run (10.77.0.1), by its first process" in said[1][1]
    assert (tmp_path / "home-0" / "motions" / "slide").is_dir() and not (tmp_path / "home-1" / "motions").exists()


@pytest.mark.slow
def test_hosts_whose_names_resolve_to_no_address_are_told_to_set_gloos_interface(two_hosts):
    """Without GLOO_SOCKET_IFNAME gloo listens on the loopback (the host names resolve to nothing): the process that
    notices says so in one line (the other may wait for it until the launch is stopped)."""
    processes = [two_hosts(1, _MOTION, interface=False), two_hosts(0, _MOTION, interface=False)]
    deadline = time.monotonic() + 300
    while all(process.poll() is None for process in processes) and time.monotonic() < deadline:
        time.sleep(0.5)
    _stop(processes)  # the other may wait in gloo for the one that stopped
    errors = [line for process in processes for line in process.communicate(timeout=60)[1].splitlines()
              if re.match(r"error( \(process \d\))?: ", line)]
    assert errors and all("set GLOO_SOCKET_IFNAME on each machine to its network interface" in line
                          for line in errors), errors
    assert any("this machine's host name 'machine-" in line and "which resolves to nothing" in line for line in errors)


@pytest.mark.slow
def test_a_host_killed_outright_is_told_on_the_other_with_the_checkpoint(two_hosts, tmp_path, monkeypatch):
    """The second host's process killed at step 3 (as the out-of-memory killer does): the first host's process meets
    the closed connection over the network and says so in one line, with its checkpoint."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SECOND_PROCESS_KILLED_AT_STEP_3)  # RANK 1: the second host's process
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]))
    command = [*_MOTION[:-1], "4", "--set", "train.checkpoint_every=2"]
    second = two_hosts(1, command)
    first = two_hosts(0, command)
    said = [process.communicate(timeout=300)[1] for process in (first, second)]
    assert first.returncode != 0 and second.returncode != 0, said
    checkpoint = tmp_path / "home-0" / ".runs" / "motions" / "slide" / "motion" / "checkpoints" / "step-0000002"
    assert [line for line in said[0].splitlines() if line.startswith("error")] == [
        "error: another process of this run stopped at step 2/4 (the launcher's report below says which and why); "
        f"the last checkpoint is {checkpoint}: rerun the same command with --resume to continue"], said[0]
    assert "exitcode  : -9" in said[1] and "host      : machine-1" in said[1]
