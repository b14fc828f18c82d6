"""End to end with the tiny models: train-motion -> library artifact -> list -> generate --motion; resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.badinputs import write_clip, write_clip_file
from vidbooth.adapters.base import adapters_of, load_tensors
from vidbooth.adapters.motion import KIND
from vidbooth.cli.app import main
from vidbooth.data.images import hash_file
from vidbooth.data.video import read_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["--recipe", "tiny/motion", "--steps", "2", "--num-frames", "4", "--set", "preview.num_inference_steps=1"]
NO_PREVIEW = ["--recipe", "tiny/motion", "--steps", "2", "--num-frames", "4", "--no-preview"]
"""QUICK without a preview: the preview's settings would be warned of as having no effect."""


def square_clip(path, num_frames=12, size=64):
    """A red square sliding right over black: a motion, at 8 fps, in the clip file `path` names (a video, or an
    animated WebP or PNG)."""
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for i in range(num_frames):
        frames[i, 20:44, 4 + 3 * i : 28 + 3 * i] = (230, 30, 30)
    return write_clip_file(frames, path)


@pytest.mark.parametrize("base", ["tiny", "tiny-animatediff"])
def test_train_motion_writes_a_complete_artifact_that_loads_exactly(base, tmp_path, isolated_home, monkeypatch):
    import vidbooth.engine.sampling as sampling

    import vidbooth.engine.motion as motion_engine

    bars, real_progress = [], sampling.progress
    monkeypatch.setattr(sampling, "progress", lambda name, **kwargs: bars.append(name) or real_progress(name, **kwargs))
    conditions, real_preview = [], motion_engine._write_preview

    def preview(backbone, *args):  # sampled as generate samples the motion: no training frame's appearance held
        conditions.extend(adapter.condition for adapter in adapters_of(backbone.unet, KIND).values())
        return real_preview(backbone, *args)

    monkeypatch.setattr(motion_engine, "_write_preview", preview)
    clip = square_clip(tmp_path / "slide.mp4")
    args = ["--name", "slide", "--class-noun", "square", "--base", base, "--lr", "0.05"]
    assert main(["train-motion", str(clip), *args, *QUICK]) == 0
    assert bars == ["preview (--no-preview skips it)"]  # a bar that says what it samples (it had said 'sampling')
    assert conditions and all(condition is None for condition in conditions)
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.motion import load_motion

    folder = isolated_home / "motions" / "slide"
    manifest = json.loads((folder / "manifest.json").read_text())

    bb = load_backbone(base, device="cpu")
    assert manifest["kind"] == "motion" and manifest["base_fingerprint"] == bb.fingerprint
    assert manifest["clips"][0]["sha256"] == hash_file(clip) and manifest["captions"] == ["a square"]
    assert manifest["training"]["steps"] == 2 and manifest["config"]["train"]["steps"] == 2
    assert manifest["adapter"]["appearance_encoder"] == "tiny-clip" and manifest["adapter"]["cond_dim"] == 16

    tensors, metadata = load_tensors(folder / manifest["paths"]["motion_adapter"])
    assert metadata["base_fingerprint"] == bb.fingerprint
    assert sum(t.numel() for t in tensors.values()) == manifest["adapter"]["trainable_parameters"]
    ups = [t for k, t in tensors.items() if k.endswith(".up.weight")]
    assert len(ups) == 3 * len(bb.temporal_layers()) and max(t.abs().max().item() for t in ups) > 0  # it trained

    clip_frames = read_video(folder / manifest["paths"]["clips"][0])
    assert clip_frames.shape[0] == 4
    preview = np.asarray(Image.open(folder / manifest["paths"]["preview"]))
    assert preview.shape == (32, 4 * 32, 3)  # 4 frames of 32x32 side by side
    assert not list((isolated_home / ".staging").glob("*")) and not list((isolated_home / ".runs").rglob("step-*"))

    # loaded on a fresh backbone: exactly the stored weights, and a changed output
    latents, text = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0)), bb.encode_prompt(["x"])
    with torch.no_grad():
        before = bb.unet_forward(latents, torch.tensor(500), text)
        load_motion(bb, "slide", scale=1.0)
        after = bb.unet_forward(latents, torch.tensor(500), text)
    loaded = {f"{n}.{k}": v for n, a in adapters_of(bb.unet, KIND).items() for k, v in a.state_dict().items()}
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert (after - before).abs().max().item() > 1e-6


@pytest.mark.parametrize("name", ["slide.webp", "slide.png"])
def test_train_motion_learns_from_an_animated_webp_or_png_as_from_a_video(name, tmp_path, isolated_home):
    """Web pages' animations (Giphy's and Tenor's WebP, APNG) had been refused as of an unsupported video type."""
    clip = square_clip(tmp_path / name)
    assert main(["train-motion", str(clip), "--name", "slide", "--class-noun", "square", *NO_PREVIEW]) == 0
    folder = isolated_home / "motions" / "slide"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["clips"][0]["sha256"] == hash_file(clip)
    sampled = read_video(folder / manifest["paths"]["clips"][0])  # the frames it learned from, as an mp4
    assert sampled.shape[0] == 4 and sampled[..., 0].max() > 200  # the red square


def test_stage_alias_list_generate_and_unknown_motion(tmp_path, isolated_home, capsys):
    clip = square_clip(tmp_path / "slide.mp4")
    assert main(["motion-adapter", str(clip), "--name", "slide", "--caption", "a red square", *QUICK]) == 0
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "slide" in listed and "motion" in listed and "a red square" in listed

    out = tmp_path / "out.mp4"
    args = ["generate", "--prompt", "a red square", "--motion", "slide", "--motion-scale", "0.8", "--out", str(out)]
    assert main([*args, "--recipe", "tiny/generate", "--steps", "2", "--num-frames", "4"]) == 0
    assert read_video(out).shape == (4, 32, 32, 3)

    capsys.readouterr()
    args = ["generate", "--prompt", "x", "--motion", "walk", "--out", str(tmp_path / "o.mp4"), "--steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown motion 'walk'" in err and "slide" in err


def test_existing_name_needs_overwrite(tmp_path, isolated_home, capsys):
    clip = str(write_clip(tmp_path / "c.mp4"))
    assert main(["train-motion", clip, "--name", "m", *NO_PREVIEW]) == 0
    first = (isolated_home / "motions" / "m" / "manifest.json").read_text()
    assert main(["train-motion", clip, "--name", "m", *NO_PREVIEW]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (isolated_home / "motions" / "m" / "manifest.json").read_text() == first
    assert main(["train-motion", clip, "--name", "m", *NO_PREVIEW, "--overwrite", "--steps", "3"]) == 0
    assert json.loads((isolated_home / "motions" / "m" / "manifest.json").read_text())["training"]["steps"] == 3


def test_interrupted_run_leaves_nothing_and_resumes_to_the_same_weights(tmp_path, isolated_home, monkeypatch,
                                                                           capsys):
    """Ctrl-C in step 2 of 3: a checkpoint, exit 130, no artifact; --resume with another --lr is refused before the
    model loads; --resume ends bit-identical to an uninterrupted run, and the manifest's training time counts both
    runs."""
    import os
    import signal
    import time

    from vidbooth.engine import motion

    clip = str(square_clip(tmp_path / "slide.mp4"))
    args = ["train-motion", clip, "--recipe", "tiny/motion", "--num-frames", "4", "--steps", "3", "--no-preview"]
    assert main([*args, "--name", "reference"]) == 0
    reference, _ = load_tensors(isolated_home / "motions" / "reference" / "motion_adapter.safetensors")

    real_loss, calls = motion.MotionAdapterMethod.loss, []

    def loss_with_ctrl_c(self, batch, generator):
        calls.append(1)
        time.sleep(0.2)  # the stopped run takes at least 0.4 s
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the training loop finishes this step, saves, and stops
        return real_loss(self, batch, generator)

    monkeypatch.setattr(motion.MotionAdapterMethod, "loss", loss_with_ctrl_c)
    assert main([*args, "--name", "m"]) == 130
    assert len(calls) == 2 and not (isolated_home / "motions" / "m").exists()
    assert [p.name for p in (isolated_home / ".runs").rglob("step-*")] == ["step-0000002"]
    monkeypatch.setattr(motion.MotionAdapterMethod, "loss", real_loss)
    assert main([*args, "--name", "m"]) == 2  # without --resume: refused, the checkpoint kept (it had been discarded)
    assert [p.name for p in (isolated_home / ".runs").rglob("step-*")] == ["step-0000002"]
    capsys.readouterr()
    with monkeypatch.context() as patched:
        loads = []
        patched.setattr("vidbooth.engine.backbone.load_backbone_for", lambda *args: loads.append(args))
        assert main([*args, "--name", "m", "--resume", "--lr", "0.5"]) == 2
    assert "other settings (train.lr (--lr) was 0.001, now 0.5)" in " ".join(capsys.readouterr().err.split())
    assert loads == []
    assert main([*args, "--name", "m", "--resume"]) == 0
    resumed, _ = load_tensors(isolated_home / "motions" / "m" / "motion_adapter.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    manifest = json.loads((isolated_home / "motions" / "m" / "manifest.json").read_text())
    assert manifest["training"]["seconds"] >= 0.4  # the stopped run's time too, not only the resumed step's


def test_guidance_off_trains_an_unconditioned_adapter(tmp_path, isolated_home):
    clip = str(square_clip(tmp_path / "slide.mp4"))
    assert main(["train-motion", clip, "--name", "m", *NO_PREVIEW, "--no-appearance-guidance"]) == 0
    manifest = json.loads((isolated_home / "motions" / "m" / "manifest.json").read_text())
    assert manifest["adapter"]["cond_dim"] is None and manifest["adapter"]["appearance_encoder"] is None
    tensors, _ = load_tensors(isolated_home / "motions" / "m" / "motion_adapter.safetensors")
    assert not any(".cond." in k for k in tensors)


def test_low_precision_trains_previews_and_loads(tmp_path, isolated_home, fresh_accelerate_state):
    """bf16 backbone (as fp16 on CUDA): adapters train in fp32 under autocast, preview and load in the model's dtype."""
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.motion import load_motion

    clip = str(square_clip(tmp_path / "slide.mp4"))
    low = ["--precision", "bf16", "--set", "train.mixed_precision=bf16"]
    assert main(["train-motion", clip, "--name", "m", *QUICK, *low]) == 0
    tensors, _ = load_tensors(isolated_home / "motions" / "m" / "motion_adapter.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    bb = load_backbone("tiny", device="cpu", precision="bf16")
    load_motion(bb, "m")
    assert {p.dtype for a in adapters_of(bb.unet, KIND).values() for p in a.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = bb.unet_forward(torch.randn(1, 4, 4, 8, 8, dtype=torch.bfloat16), torch.tensor(10), bb.encode_prompt(["x"]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_two_processes_train_one_motion(tmp_path, isolated_home, two_process_launch):
    """`accelerate launch` with two CPU processes (gloo): completes, writes one artifact, and records both."""
    import os
    import subprocess

    clip = square_clip(tmp_path / "slide.mp4")
    command = [*two_process_launch, "-m", "vidbooth", "train-motion", str(clip), "--name", "slide"]
    command += ["--class-noun", "square", "--base", "tiny", *QUICK, "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (isolated_home / "motions").iterdir()) == ["slide"]
    manifest = json.loads((isolated_home / "motions" / "slide" / "manifest.json").read_text())
    assert manifest["training"]["processes"] == 2 and manifest["training"]["steps"] == 2


def test_accelerate_launch_cpu_asked_for_two_processes_is_warned_of_starting_one(tmp_path, isolated_home,
                                                                                 two_process_launch):
    """Without mpirun `accelerate launch --cpu --num_processes 2` starts one process, which trains alone: said
    once, with the command that starts two."""
    import os
    import subprocess

    clip = square_clip(tmp_path / "slide.mp4")
    launch = [*two_process_launch[:3], "--cpu", *two_process_launch[3:]]
    launch.remove("--multi_gpu")
    command = [*launch, "-m", "vidbooth", "train-motion", str(clip), "--name", "slide", "--base", "tiny", *QUICK]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ | {"VIDBOOTH_QUIET": "0"})
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("warning: accelerate launch --cpu started a single process (it runs several only "
                             "through mpirun): for N CPU processes with gloo use `accelerate launch --multi_gpu "
                             "--num_processes N ... --device cpu` or torchrun") == 1, done.stderr
    manifest = json.loads((isolated_home / "motions" / "slide" / "manifest.json").read_text())
    assert manifest["training"]["processes"] == 1


_SAVED_BY_ANOTHER_RUN_WHILE_THEY_MET = """
import os

if os.environ.get("RANK") == "0":
    import contextlib
    import json
    from pathlib import Path

    import vidbooth.library as library

    _artifact_lock = library.artifact_lock

    @contextlib.contextmanager
    def _saved_meanwhile(kind, name):
        folder = Path(os.environ["VIDBOOTH_HOME"]) / "motions" / name
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"kind": kind, "name": name}))
        with _artifact_lock(kind, name) as lock:
            yield lock

    library.artifact_lock = _saved_meanwhile
"""


def test_a_motion_saved_by_another_run_once_the_processes_met_stops_both(tmp_path, isolated_home,
                                                                         two_process_launch):
    """Found under the run's lock, which the first process takes: it alone had refused, and the second went on to
    be told that another process had stopped (or, on NCCL, to wait for it)."""
    import os
    import subprocess

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SAVED_BY_ANOTHER_RUN_WHILE_THEY_MET)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    clip = square_clip(tmp_path / "slide.mp4")
    command = [*two_process_launch, "-m", "vidbooth", "train-motion", str(clip), "--name", "slide", "--class-noun",
               "square", "--base", "tiny", *QUICK, "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    ours = sorted(line for line in done.stderr.splitlines() if line.startswith("error"))  # in either order
    assert len(ours) == 2 and ours[1].startswith("error: motion 'slide' already exists in "), done.stderr
    assert ours[0].startswith("error (process 1): another process of this run refused its inputs or settings"), ours


def test_the_saved_config_reruns_the_training_from_anywhere(tmp_path, isolated_home, monkeypatch):
    """`config.yaml` in the artifact is a recipe: `--recipe config.yaml --overwrite` retrains the same motion to the
    same weights, with no clips or --name given again, from another folder (the clips' paths are absolute)."""
    import yaml

    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    write_clip(tmp_path / "work" / "c.mp4")
    assert main(["train-motion", "c.mp4", "--name", "m", *NO_PREVIEW, "--seed", "3"]) == 0
    folder = isolated_home / "motions" / "m"
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["clips"] == [str(tmp_path / "work" / "c.mp4")] and saved["name"] == "m"
    assert saved["overwrite"] is False and saved["resume"] is False  # this run's mode, not part of the recipe
    first = load_tensors(folder / "motion_adapter.safetensors")[0]
    recipe = tmp_path / "motion.yaml"
    recipe.write_text((folder / "config.yaml").read_text())
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train-motion", "--recipe", str(recipe)]) == 2  # the motion exists: replacing it is asked for
    assert main(["train-motion", "--recipe", str(recipe), "--overwrite"]) == 0
    again = load_tensors(folder / "motion_adapter.safetensors")[0]
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


_FULL_DISK_AT_CHECKPOINTS = """
import errno
import vidbooth.fileio


def _full_at_checkpoints(path, mode="r", *args, **kwargs):
    if "step-" in str(path) and "w" in mode:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return open(path, mode, *args, **kwargs)


vidbooth.fileio.open = _full_at_checkpoints
"""


def test_two_processes_stop_together_when_the_main_one_meets_a_full_disk(
    tmp_path, isolated_home, two_process_launch
):
    """Only the main process writes checkpoints; when it cannot, it stops with the one-line error and the launcher
    ends the other process too (no process left waiting at a barrier). With an empty cache, both processes build
    the tiny base first, so this also checks that whichever copy is published loads."""
    import os
    import subprocess

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_FULL_DISK_AT_CHECKPOINTS)  # runs first in every launched process
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env["VIDBOOTH_CACHE"] = str(tmp_path / "cache")  # both processes build the tiny base: the copy that wins must work
    clip = square_clip(tmp_path / "slide.mp4")
    command = [*two_process_launch, "-m", "vidbooth", "train-motion", str(clip), "--name", "slide", "--base", "tiny"]
    command += [*NO_PREVIEW, "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    message = "error: the disk is full: the checkpoint of step 2 was not saved and no checkpoint was saved yet"
    assert message in done.stderr and "then rerun the same command (it starts over)" in done.stderr  # not --resume
    assert not (isolated_home / "motions" / "slide").exists()
    assert not list((isolated_home / ".runs").rglob("*step-*"))


_SECOND_PROCESS_KILLED_AT_STEP_3 = """
import os
import signal

if os.environ.get("RANK") == "1":
    import vidbooth.engine.train as train

    _accumulate = train._accumulate

    def _killed_at_step_3(method, data, cfg, step, accelerator):
        if step == 2:  # steps 1 and 2 done, step 2's checkpoint saved (checkpoint_every=2)
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer does
        return _accumulate(method, data, cfg, step, accelerator)

    train._accumulate = _killed_at_step_3
"""


def test_the_first_process_says_in_one_line_that_another_one_died(tmp_path, isolated_home, two_process_launch):
    """A process killed outright (out of memory, a lost machine): the other meets a closed connection in the next
    step's exchange; it says so in one line naming the checkpoint to resume from, not a traceback of gloo's
    error; --resume then finishes the run."""
    import os
    import subprocess

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SECOND_PROCESS_KILLED_AT_STEP_3)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    clip = square_clip(tmp_path / "slide.mp4")
    command = [*two_process_launch, "-m", "vidbooth", "train-motion", str(clip), "--name", "slide", "--base", "tiny",
               "--recipe", "tiny/motion", "--steps", "4", "--num-frames", "4", "--no-preview", "--device", "cpu",
               "--set", "train.checkpoint_every=2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(ours) == 1, done.stderr
    assert ours[0].startswith("error: another process of this run stopped at step 2/4 (the launcher's report below "
                              "says which and why); the last checkpoint is "), ours
    assert ours[0].endswith("step-0000002: rerun the same command with --resume to continue"), ours
    assert "[rank0]" not in done.stderr and "Connection closed by peer" not in done.stderr  # no traceback of ours
    assert not (isolated_home / "motions" / "slide").exists()
    (hooks / "sitecustomize.py").unlink()
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads((isolated_home / "motions" / "slide" / "manifest.json").read_text())["training"]["steps"] == 4


def _fake_artifact(home, kind: str, name: str, base: str, fingerprint: str, **more) -> None:
    from vidbooth.library import REQUIRED_KEYS, dir_name

    folder = home / f"{kind}s" / dir_name(name)
    folder.mkdir(parents=True)
    manifest = {"kind": kind, "name": name, "schema_version": 1, "base": base, "base_fingerprint": fingerprint,
                "class_noun": "dog", "num_vectors": 1, "files": {},
                "paths": dict.fromkeys(REQUIRED_KEYS[kind][1])} | more  # whole, as generate checks them
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_subject_and_a_motion_of_different_bases_are_refused_before_the_model_loads(
    tmp_path, isolated_home, capsys, monkeypatch
):
    """Their manifests say both bases: the refusal needs no model, so none is loaded (nor any 'base ...' line)."""
    import vidbooth.engine.backbone as backbone

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(backbone, "load_backbone_for", no_loading)
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    _fake_artifact(isolated_home, "subject", "T1", "tiny", "aaaa")
    _fake_artifact(isolated_home, "motion", "wave", "nano", "bbbb")
    code = main(["generate", "--prompt", "a T1 dog", "--subject", "T1", "--motion", "wave", "--device", "cpu",
                 "--out", str(tmp_path / "x.mp4")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "subject 'T1' was learned on tiny" in lines[0] and "motion 'wave' on nano" in lines[0], lines
    assert "cannot be combined" in lines[0] and not (tmp_path / "x.mp4").exists()
    _fake_artifact(isolated_home, "subject", "T2", "nano", "bbbb")  # two subjects: had loaded nano, then failed
    code = main(["generate", "--prompt", "T1 and T2", "--subject", "T1", "--subject", "T2", "--device", "cpu",
                 "--out", str(tmp_path / "x.mp4")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "subject 'T1' was learned on tiny" in lines[0] and "subject 'T2' on nano" in lines[0], lines
    _fake_artifact(isolated_home, "subject", "S*", "tiny", "aaaa", tokens=["S*", "S*_1"])
    _fake_artifact(isolated_home, "subject", "S*_1", "tiny", "aaaa", tokens=["S*_1"])
    code = main(["generate", "--prompt", "S* and S*_1", "--subject", "S*", "--subject", "S*_1", "--base", "tiny",
                 "--out", str(tmp_path / "x.mp4")])  # had said 'a subject loaded twice?', after loading the model
    assert code == 2 and capsys.readouterr().err == (
        "error: subjects 'S*' and 'S*_1' cannot be used together: both write the token 'S*_1' ('S*' is S* S*_1, "
        "'S*_1' is S*_1): retrain one under another name\n")


def test_a_clip_in_which_nothing_moves_is_warned_about_before_training(tmp_path, isolated_home, capsys, monkeypatch):
    """evaluate --motion refuses such a clip as its reference; train-motion, by the same test, says so up front."""
    from vidbooth.data.video import write_video

    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    still = np.zeros((12, 64, 64, 3), dtype=np.uint8)
    still[:, 20:44, 20:44] = (230, 30, 30)
    clip = write_video(still, tmp_path / "still.mp4")
    assert main(["train-motion", str(clip), "--name", "still", *QUICK, "--steps", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "shows no motion" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: clip ") and "still.mp4" in warnings[0], err
    assert "learn stillness" in warnings[0]
    learning = next(i for i, line in enumerate(err) if line.startswith("learning motion"))
    assert err.index(warnings[0]) < learning  # before training
    assert main(["evaluate", str(clip), "--motion", "still", "--metrics", "motion"]) == 2
    assert "shows no motion" in capsys.readouterr().err  # the motion it warned of, refused as evaluate's reference


def test_a_motion_without_caption_or_class_noun_says_so_and_lists_as_such(
    tmp_path, isolated_home, capsys, monkeypatch
):
    """The empty caption had been used without a word, and `list` showed an empty cell."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    clip = square_clip(tmp_path / "slide.mp4")
    assert main(["train-motion", str(clip), "--name", "bare", *NO_PREVIEW]) == 0
    assert "no --class-noun or --caption: the clips are learned with the empty caption" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "(no caption)" in capsys.readouterr().out
    assert main(["train-motion", str(clip), "--name", "named", "--class-noun", "square", *NO_PREVIEW]) == 0
    assert "empty caption" not in capsys.readouterr().err
    args = ["--name", "blank", "--class-noun", "square", "--caption", "", *NO_PREVIEW]
    assert main(["train-motion", str(clip), *args]) == 0  # it said no --class-noun or --caption was given
    assert "an empty --caption: the clips are learned with the empty caption" in capsys.readouterr().err


def test_appearance_settings_without_appearance_guidance_are_refused_or_warned_of(tmp_path, isolated_home, capsys,
                                                                                    monkeypatch):
    """nano's recipe has guidance off: --p-image-zero and --image-encoder were accepted and did nothing."""
    import vidbooth.engine.motion as engine

    monkeypatch.setattr(engine, "train_motion", lambda cfg: pytest.fail("it trained"))
    clip = square_clip(tmp_path / "slide.mp4")
    args = ["train-motion", str(clip), "--name", "m", "--no-appearance-guidance"]
    assert main([*args, "--p-image-zero", "0.3", "--image-encoder", "vae"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --image-encoder and --p-image-zero act only with appearance "
                                               "guidance, which this run has off: add --appearance-guidance, or drop "
                                               "--image-encoder and --p-image-zero")
    warned = []
    monkeypatch.setattr("vidbooth.reporting.warn", warned.append)
    monkeypatch.setattr(engine, "train_motion", lambda cfg: (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main([*args, "--set", "appearance.p_image_zero=0.3"])
    assert warned == ["--set appearance.p_image_zero=0.3 has no effect without appearance guidance "
                      "(--appearance-guidance)"]


def test_preview_settings_with_the_preview_off_are_warned_of(tmp_path, isolated_home, monkeypatch):
    """`--no-preview --set preview.num_inference_steps=1` had been accepted without a word."""
    import vidbooth.engine.motion as engine

    warned = []
    monkeypatch.setattr("vidbooth.reporting.warn", warned.append)
    monkeypatch.setattr(engine, "train_motion", lambda cfg: (_ for _ in ()).throw(SystemExit(0)))
    clip = square_clip(tmp_path / "slide.mp4")
    for preview in ("--preview", "--no-preview"):
        with pytest.raises(SystemExit):
            main(["train-motion", str(clip), "--name", "m", *QUICK, preview])
    assert warned == ["--set preview.num_inference_steps=1 has no effect: the preview is off (--preview turns it on)"]


def test_an_image_encoder_that_is_not_here_is_refused_before_the_model_loads(tmp_path, isolated_home, capsys,
                                                                            monkeypatch):
    """It had been found missing only after the base loaded (minutes for a real one), and the error had said to pass
    its folder with --base."""
    import vidbooth.engine.backbone as backbone

    monkeypatch.setattr(backbone, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    clip = str(write_clip(tmp_path / "c.mp4"))
    assert main(["train-motion", clip, "--name", "m", *NO_PREVIEW, "--image-encoder", "someone/clip"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: image encoder (--image-encoder): cannot fetch 'someone/clip' from the hub (offline, or no "
                   "such model): download it where the network allows and pass its local folder with --image-encoder; "
                   "or give 'tiny-clip' or 'vae', or leave it empty for the base model's default\n")  # said once
    assert not (isolated_home / "motions" / "m").exists()
    for given, problem in (("no/such/clip/folder", "not found"), (clip, "is a file, not a folder")):
        assert main(["train-motion", clip, "--name", "m", *NO_PREVIEW, "--image-encoder", given]) == 2
        assert capsys.readouterr().err == (
            f"error: image encoder '{given}' (--image-encoder) {problem}: give a CLIP vision folder, a hub id already "
            "downloaded, 'tiny-clip' or 'vae', or leave it empty for the base model's default\n")


def test_batch_size_and_checkpoint_interval_have_flags_as_for_subjects(tmp_path, isolated_home, capsys):
    """They had been --set only, though the out-of-memory hint tells the user to lower the batch size."""
    import yaml

    clip = str(write_clip(tmp_path / "c.mp4"))
    assert main(["train-motion", clip, "--name", "m", *NO_PREVIEW, "--batch-size", "3", "--checkpoint-every", "1"]) == 0
    saved = yaml.safe_load((isolated_home / "motions" / "m" / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 3 and saved["train"]["checkpoint_every"] == 1
    assert main(["train-motion", clip, "--name", "n", *NO_PREVIEW, "--batch-size", "0"]) == 2
    assert "train.batch_size (--batch-size) must be at least 1, got 0" in capsys.readouterr().err


def test_a_shared_motion_whose_adapter_spec_was_crafted_is_refused_before_its_adapters_are_built(
    tmp_path, isolated_home, monkeypatch
):
    """A motion from elsewhere, its hashes remade to match: a hidden_ratio of 1e6 in its adapter file's metadata had
    sized the adapters (gigabytes) before the tensors were checked."""
    from safetensors.torch import save_file

    from vidbooth import library
    from vidbooth.adapters import motion as motion_adapters
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.motion import load_motion
    from vidbooth.errors import UserError

    assert main(["train-motion", str(square_clip(tmp_path / "slide.mp4")), "--name", "slide", *QUICK]) == 0
    folder = isolated_home / "motions" / "slide"
    manifest = json.loads((folder / "manifest.json").read_text())
    adapter = folder / manifest["paths"]["motion_adapter"]
    tensors, metadata = load_tensors(adapter)
    adapter.chmod(0o644)
    crafted = json.loads(metadata["spec"]) | {"hidden_ratio": 1e6}
    save_file(tensors, str(adapter), metadata | {"spec": json.dumps(crafted)})
    manifest["files"][adapter.name] = library.sha256_file(adapter)
    (folder / "manifest.json").chmod(0o644)
    (folder / "manifest.json").write_text(json.dumps(manifest))

    def never(*args, **kwargs):
        raise AssertionError("adapters were built to the crafted spec")

    monkeypatch.setattr("vidbooth.engine.motion.inject_motion_adapter", never)
    backbone = load_backbone("tiny", device="cpu")
    with pytest.raises(UserError, match=r"its adapter config in the metadata is damaged \(hidden_ratio 1e\+06 is not"):
        load_motion(backbone, "slide")
    assert not adapters_of(backbone.unet, motion_adapters.KIND)


def test_a_preview_setting_the_model_cannot_take_is_told_before_training(tmp_path, isolated_home, monkeypatch,
                                                                         capsys):
    """The preview comes after training: preview.num_inference_steps 1000 (the model has 1000 noise levels) had
    failed the run once it had trained."""
    import vidbooth.engine.train as train_engine

    monkeypatch.setattr(train_engine, "train", lambda *args, **kwargs: pytest.fail("it trained"))
    clip = str(write_clip(tmp_path / "c.mp4"))
    fast = [arg for arg in NO_PREVIEW if arg != "--no-preview"]
    assert main(["train-motion", clip, "--name", "m", *fast, "--set", "preview.num_inference_steps=1000"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: preview.num_inference_steps (--set preview.num_inference_steps=N) must be from 1 to 999 (the model "
        "was trained on 1000 noise levels), got 1000")
    assert not (isolated_home / "motions" / "m").exists()


def test_a_failed_preview_keeps_the_training_and_says_how_to_save_it(tmp_path, isolated_home, monkeypatch, capsys):
    import vidbooth.engine.sampling as sampling
    from vidbooth.errors import UserError

    real_sample = sampling.sample_video

    def diverging(*args, **kwargs):
        raise UserError("the sample became NaN")

    monkeypatch.setattr(sampling, "sample_video", diverging)
    clip = str(write_clip(tmp_path / "c.mp4"))
    fast = [arg for arg in NO_PREVIEW if arg != "--no-preview"]
    assert main(["train-motion", clip, "--name", "m", *fast]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: the preview failed: the sample became NaN; the training is kept: rerun the same command with --resume")
    assert not (isolated_home / "motions" / "m").exists()
    monkeypatch.setattr(sampling, "sample_video", real_sample)
    assert main(["train-motion", clip, "--name", "m", *NO_PREVIEW, "--resume"]) == 0
    assert (isolated_home / "motions" / "m" / "manifest.json").is_file()


def test_the_resume_signature_holds_the_clips_their_captions_and_the_appearance_dropout():
    """(mutation testing) A --resume after a clip was replaced, a caption edited or p_image_zero changed would have
    continued the old run on other data."""
    from types import SimpleNamespace

    import torch

    from vidbooth.config.motion import MotionConfig
    from vidbooth.engine.motion import _signature

    def signature(clips, p_image_zero=0.5):
        cfg = MotionConfig()
        cfg.appearance.p_image_zero = p_image_zero
        clips = [SimpleNamespace(sha256=sha, caption=caption) for sha, caption in clips]
        backbone = SimpleNamespace(fingerprint="base", dtype=torch.float32)
        return _signature(cfg, clips, SimpleNamespace(to_json=lambda: "{}"), backbone, None)

    first = signature([("aaa", "a person waving")])
    assert signature([("aaa", "a person waving")]) == first
    assert signature([("bbb", "a person waving")]) != first
    assert signature([("aaa", "a person jumping")]) != first
    assert signature([("aaa", "a person waving")], p_image_zero=0.2) != first


def test_the_preview_is_sampled_from_the_training_seed(tmp_path, monkeypatch):
    """(mutation testing) A preview from unseeded noise differed from run to run of the same command."""
    from types import SimpleNamespace

    import numpy as np

    import vidbooth.engine.motion as motion
    import vidbooth.engine.sampling as sampling
    from vidbooth.config.motion import MotionConfig

    seeds = []

    def sample_video(backbone, prompt, generator=None, num_frames=8, **kwargs):
        seeds.append(generator.initial_seed())
        return np.zeros((1, num_frames, 8, 8, 3), np.uint8)

    monkeypatch.setattr(sampling, "sample_video", sample_video)
    monkeypatch.setattr(motion, "training_size", lambda backbone, cfg: 8)
    cfg = MotionConfig()
    cfg.train.seed = 17
    motion._write_preview(SimpleNamespace(), cfg, "a person waving", tmp_path / "preview.png")
    assert seeds == [17] and (tmp_path / "preview.png").is_file()


def test_gradient_checkpointing_learns_the_same_motion(tmp_path, isolated_home, recomputations):
    """With appearance guidance: the embedding is set on the adapters before the UNet call, and the recomputation
    in the backward pass must see it."""
    clip = str(square_clip(tmp_path / "slide.mp4"))
    args = ["train-motion", clip, *NO_PREVIEW, "--appearance-guidance", "--p-image-zero", "0"]
    assert main([*args, "--name", "plain"]) == 0 and recomputations == []
    assert main([*args, "--name", "recomputed", "--gradient-checkpointing"]) == 0 and recomputations
    plain, _ = load_tensors(isolated_home / "motions" / "plain" / "motion_adapter.safetensors")
    recomputed, _ = load_tensors(isolated_home / "motions" / "recomputed" / "motion_adapter.safetensors")
    assert plain.keys() == recomputed.keys() and all(torch.equal(plain[k], recomputed[k]) for k in plain)
    config = yaml.safe_load((isolated_home / "motions" / "recomputed" / "config.yaml").read_text())
    assert config["train"]["gradient_checkpointing"] is True
