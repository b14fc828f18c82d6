"""A command that fails or is interrupted mid-write leaves the library and its outputs as they were, or complete.

Each test makes one write fail part-way (a monkeypatched function raises KeyboardInterrupt, as Ctrl-C would)
and checks that the previous files are untouched and that no temporary file is left behind.
"""

from __future__ import annotations

import os
import types

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vidbooth import library
from vidbooth.cli.app import main


def _stage(stage, value: float) -> None:
    save_file({"w": torch.full((3,), value)}, str(stage / "adapter.safetensors"))
    manifest = {"name": "S*", "kind": "subject", "base": "tiny", "base_fingerprint": "0", "class_noun": "dog",
                "num_vectors": 1, "paths": {"embeddings": None, "identity_adapter": None, "config": None}}
    library.write_json(stage / library.MANIFEST, manifest)


def test_ctrl_c_during_an_overwrite_swap_puts_the_old_artifact_back(isolated_home, monkeypatch):
    """Ctrl-C after the old version was moved aside and before the new one is renamed in: the old version is back
    in place when the command ends, not only after the next `recover()` (`vidbooth list` does not recover)."""
    with library.staged_artifact("subject", "S*") as stage:
        _stage(stage, 1.0)
    live = isolated_home / "subjects" / library.dir_name("S*")
    real_replace = os.replace

    def ctrl_c_on_rename_in(src, dst):
        if ".staging" in str(src) and str(dst) == str(live):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", ctrl_c_on_rename_in)
    with pytest.raises(KeyboardInterrupt):
        with library.staged_artifact("subject", "S*", overwrite=True) as stage:
            _stage(stage, 2.0)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (live / library.MANIFEST).is_file()  # checked before anything calls recover()
    assert load_file(str(live / "adapter.safetensors"))["w"][0] == 1.0
    assert [m["name"] for m in library.list_artifacts("subject")] == ["S*"]
    assert not any((isolated_home / ".trash").iterdir()) and not any((isolated_home / ".staging").iterdir())
    library.read_manifest(live)  # hashes still match


def _partial_png_then_ctrl_c(self, fp, *args, **kwargs):
    with open(fp, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n half")
    raise KeyboardInterrupt


def test_ctrl_c_while_writing_a_contact_sheet_leaves_no_temporary_file(tmp_path, monkeypatch):
    from vidbooth.data.video import save_contact_sheet

    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"old sheet")
    monkeypatch.setattr(Image.Image, "save", _partial_png_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_contact_sheet(np.zeros((2, 8, 8, 3), dtype=np.uint8), sheet)
    assert sheet.read_bytes() == b"old sheet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]


def test_generate_interrupted_while_writing_keeps_the_previous_outputs(tmp_path, monkeypatch):
    """Ctrl-C while the config is written: no truncated .yaml, and no new video beside the old sheet/config."""
    from vidbooth.engine import backbone
    from vidbooth.engine import generate as generate_engine

    out = tmp_path / "clip.mp4"
    old = {out: b"old video", out.with_suffix(".png"): b"old sheet", out.with_suffix(".yaml"): b"old: config\n"}
    for path, data in old.items():
        path.write_bytes(data)
    monkeypatch.setattr(backbone, "load_backbone_for", lambda *args, **kwargs: types.SimpleNamespace(family="unet3d"))
    monkeypatch.setattr(generate_engine, "sample_videos", lambda *args: np.zeros((1, 2, 16, 16, 3), dtype=np.uint8))

    def half_a_config_then_ctrl_c(cfg, path):
        with open(path, "w") as handle:
            handle.write("prompt: a d")
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_engine, "save_config", half_a_config_then_ctrl_c)
    code = main(["generate", "--prompt", "a dog", "--out", str(out), "--frames", "2", "--steps", "1",
                 "--device", "cpu"])
    assert code == 130
    assert {path: path.read_bytes() for path in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.png", "clip.yaml"]


def test_evaluate_interrupted_while_writing_keeps_the_previous_json_and_csv(tmp_path, monkeypatch):
    """Ctrl-C while the CSV is written: not a new JSON beside the old CSV."""
    from vidbooth import fileio
    from vidbooth.data.video import write_video

    frames = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    for i in range(4):
        frames[i, 4:10, 2 + 2 * i : 8 + 2 * i] = 255  # a square moving right
    video = write_video(frames, tmp_path / "video.gif")
    reference = write_video(frames, tmp_path / "reference.gif")
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    out_json.write_text('{"old": true}\n')
    out_csv.write_text("old\n")
    calls = []
    real_mkstemp = fileio.tempfile.mkstemp

    def mkstemp_ctrl_c_on_the_second_file(*args, **kwargs):
        calls.append(kwargs.get("prefix"))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(fileio, "tempfile", types.SimpleNamespace(mkstemp=mkstemp_ctrl_c_on_the_second_file))
    code = main(["evaluate", str(video), "--ref-video", str(reference), "--metrics", "motion_fidelity",
                 "--json", str(out_json), "--csv", str(out_csv), "--device", "cpu"])
    assert code == 130 and len(calls) == 2
    assert out_json.read_text() == '{"old": true}\n' and out_csv.read_text() == "old\n"
    assert not list(tmp_path.glob(".tmp-*"))


def test_an_interrupted_checkpoint_save_leaves_the_previous_checkpoints_and_no_temporary_folder(tmp_path, monkeypatch):
    from pathlib import Path

    from vidbooth.engine.train import list_checkpoints, save_checkpoint

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(3)
    optimizer.step()
    method = types.SimpleNamespace(state_dict=lambda: {"w": weight.detach()})
    first = save_checkpoint(tmp_path, 10, method, optimizer, None, {"run": "a"}, 0.5)

    def ctrl_c(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", ctrl_c)  # the last file of the checkpoint, after both tensor files
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 20, method, optimizer, None, {"run": "a"}, 0.4)
    assert list_checkpoints(tmp_path) == [first]
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_an_interrupted_build_of_a_builtin_base_leaves_nothing_and_the_next_run_builds_it(tmp_path, monkeypatch):
    import vidbooth.engine.tiny as tiny
    from vidbooth.engine.backbone import resolve_base

    monkeypatch.setenv("VIDBOOTH_CACHE", str(tmp_path / "cache"))
    real_save = tiny.save_tiny_backbone

    def half_then_ctrl_c(folder, *args, **kwargs):
        (folder / "unet").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "save_tiny_backbone", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        resolve_base("tiny-animatediff")
    assert list((tmp_path / "cache" / "builtin").iterdir()) == []
    monkeypatch.setattr(tiny, "save_tiny_backbone", real_save)
    folder = resolve_base("tiny-animatediff")
    assert (folder / "model_index.json").is_file() and tiny.motion_adapter_folder(folder).is_dir()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, tiny.motion_adapter_folder(folder).name]


def _disk_full(path):
    import errno

    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_run_resumes_from_the_last_one(tmp_path, isolated_home,
                                                                                       monkeypatch, capsys):
    import io

    import vidbooth.fileio as fileio
    from tests.badinputs import write_clip

    clip = str(write_clip(tmp_path / "c.mp4", num_frames=6, width=64, height=64))
    args = ["train-motion", clip, "--name", "m", "--recipe", "tiny/motion", "--num-frames", "4", "--steps", "4",
            "--set", "train.checkpoint_every=2", "--no-preview"]

    class FullDisk(io.FileIO):
        def write(self, data):  # the operating system's answer when the disk fills mid-file
            super().write(bytes(data)[:10])
            raise _disk_full(self.name)

    def full_at_step_4(path, mode="r", *rest, **kwargs):
        if "step-0000004" in str(path) and "w" in mode:
            return FullDisk(path, "w")
        return open(path, mode, *rest, **kwargs)

    monkeypatch.setattr(fileio, "open", full_at_step_4, raising=False)
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith("error: the disk is full: the checkpoint of step 4 was not saved and the last "
                              "checkpoint is "), err
    runs = isolated_home / ".runs"
    assert [p.name for p in runs.rglob("*") if "step-" in p.name] == ["step-0000002"]  # no half-written step 4
    assert not (isolated_home / "motions" / "m").exists()
    monkeypatch.delattr(fileio, "open")
    assert main([*args, "--resume"]) == 0
    assert (isolated_home / "motions" / "m" / "manifest.json").is_file()


def test_a_full_disk_while_writing_a_video_is_one_line_and_leaves_nothing(tmp_path, tiny_base_dirs, monkeypatch,
                                                                           capsys):
    import vidbooth.data.video as video

    def full(frames, path, fps):
        Path(path).write_bytes(b"half")
        raise _disk_full(path)

    from pathlib import Path

    monkeypatch.setattr(video, "_encode", full)
    out = tmp_path / "out" / "clip.mp4"
    code = main(["generate", "--prompt", "a dog", "--out", str(out), "--base", str(tiny_base_dirs["unet3d"]),
                 "--device", "cpu", "--steps", "1", "--frames", "2"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in "".join(err)  # the video's name, not its temporary file's
    assert err[-1] == f"error: the disk is full writing {out}: free space and run the command again"
    assert not out.parent.exists() or not any(out.parent.iterdir())
