"""`vidbooth demo` end to end at reduced steps."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidbooth.cli.app import main
from vidbooth.data.video import read_video

VARIANTS = {"class_noun", "textual_inversion", "identity", "image_prompt", "base_motion", "motion_adapter",
            "textual_inversion_motion", "both"}
"""On nano, which has its own image-prompt model."""
SCORES = {"image_similarity", "colour_correct", "shape_correct", "motion_correct", "motion_fidelity"}


def _run(out, base, *extra):
    return main(["demo", "--out", str(out), "--base", base, "--num-videos", "2", "--device", "cpu",
                 "--set", "subject_steps=2", "--set", "motion_steps=2", "--set", "num_inference_steps=2", *extra])


def _check(out, seed=0, count=2, fast=False):
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["variants"]) == VARIANTS
    settings = metrics["settings"]  # a --fast run's file had been indistinguishable from a full one's
    assert (settings["seed"], settings["num_videos"], settings["fast"]) == (seed, count, fast)
    for scores in metrics["variants"].values():
        assert SCORES <= set(scores) and math.isfinite(scores["image_similarity"])
    for key in VARIANTS:
        assert (out / "videos" / f"{key}.mp4").is_file() and (out / "videos" / f"{key}.png").is_file()
    assert len(list((out / "inputs" / "photos").iterdir())) == 4 and (out / "inputs" / "motion.mp4").is_file()
    assert (out / "library" / "subjects" / "S%2A" / "manifest.json").is_file()
    _check_scores_match_the_videos(out, metrics, seed, count)
    return metrics


def _demo_truth(seed):
    """The held-out sprite and motion, and the reference clip, exactly as `run_demo` picks and renders them."""
    from vidbooth.nano.world import make_split, render_motion_clips

    split = make_split()
    sprite, motion = split.demo_choice(seed)
    performer = next(s for s in split.pretraining_sprites() if s.colour != sprite.colour and s.shape != sprite.shape)
    return sprite, motion, render_motion_clips(motion, performer, n=1, num_frames=8, size=64, seed=seed)[0]


def _videos_from_sheet(out, key):
    """A variant's videos read back losslessly from its contact sheet (one video per row); the mp4 is the first."""
    mp4 = read_video(out / "videos" / f"{key}.mp4")
    f, h, w, _ = mp4.shape
    sheet = np.asarray(Image.open(out / "videos" / f"{key}.png").convert("RGB"))
    videos = sheet.reshape(-1, h, f, w, 3).transpose(0, 2, 1, 3, 4)
    assert np.abs(videos[0].astype(float) - mp4).mean() < 5, key  # same video up to compression (others: > 9)
    return videos


def _check_scores_match_the_videos(out, metrics, seed, count):
    """Re-score every variant's written videos with the demo's own scoring: metrics.json must agree."""
    from vidbooth.engine.appearance import load_appearance_encoder
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.demo import image_similarity, image_similarity_per_video, score_each_video, through_autoencoder
    from vidbooth.eval.motion import motion_signature

    sprite, motion, reference = _demo_truth(seed)
    backbone = load_backbone(metrics["base"], device="cpu")
    encoder = load_appearance_encoder(None, backbone)
    photos = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((out / "inputs" / "photos").iterdir())])
    photo_embeds = encoder.embed(photos)
    photos_score = image_similarity(encoder, through_autoencoder(backbone, photos)[:, None], photo_embeds)
    assert metrics["photos_through_autoencoder"]["image_similarity"] == pytest.approx(photos_score, abs=1e-6)
    for key, recorded in metrics["variants"].items():
        videos = _videos_from_sheet(out, key)
        assert len(videos) == count, key
        per_video = score_each_video(videos, sprite, motion, motion_signature(reference))
        per_video["image_similarity"] = list(image_similarity_per_video(encoder, videos, photo_embeds))
        assert set(per_video) == set(recorded["per_video"]) == SCORES
        for score, values in per_video.items():
            assert values == pytest.approx(recorded["per_video"][score], abs=1e-6), (key, score)
        assert {k: np.mean(v) for k, v in per_video.items()} == pytest.approx({k: recorded[k] for k in SCORES}, abs=1e-6)
    _check_steps(metrics, count)


def _check_steps(metrics, count):
    """Each recorded step is its two variants' per-video scores compared in pairs."""
    variants = metrics["variants"]
    assert [(s["variant"], s["over"], s["score"]) for s in metrics["steps"]] == [
        ("textual_inversion", "class_noun", "image_similarity"), ("identity", "textual_inversion", "image_similarity"),
        ("motion_adapter", "base_motion", "motion_fidelity")]
    for step in metrics["steps"]:
        ours, theirs = (np.array(variants[k]["per_video"][step["score"]]) for k in (step["variant"], step["over"]))
        assert step["videos"] == count and step["better_in"] == int((ours > theirs).sum())
        assert step["difference"] == pytest.approx(variants[step["variant"]][step["score"]] - variants[step["over"]][step["score"]], abs=1e-6)


def test_demo_at_reduced_steps(tmp_path, isolated_home, capsys):
    out = tmp_path / "demo"
    assert _run(out, "nano", "--fast") == 0
    printed = capsys.readouterr().out
    assert "does each step help?" in printed and "+ identity adapter over pseudo-word" in printed
    assert " of 2 " in printed  # 'better in' counts the 2 paired videos
    metrics = _check(out, fast=True)
    row = next(line for line in printed.splitlines() if "subject: class noun only" in line)
    counts = [f"{round(2 * metrics['variants']['class_noun'][key])}/2" for key in ("colour_correct", "shape_correct")]
    assert [cell.strip() for cell in row.split("│")][4:6] == counts  # the probe's reads as counts, not 0.5000
    assert metrics["base"] == "nano"
    assert set(metrics["seconds"]) == {"inputs", "train-subject", "train-motion", "generate+evaluate"}
    assert not (isolated_home / "subjects").exists()  # the user's library is untouched
    # Every variant starts from the same noise: a motion adapter 2 steps from its zero start barely changes it
    base, adapted = (_videos_from_sheet(out, key).astype(float) for key in ("base_motion", "motion_adapter"))
    assert np.abs(base - adapted).mean() < 2


def test_photos_through_nanos_autoencoder_are_a_real_round_trip_that_keeps_colour():
    """The demo's reference score: the subject photos as nano's autoencoder gives them back."""
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.demo import through_autoencoder
    from vidbooth.nano.probe import probe_video
    from vidbooth.nano.world import make_split, render_photos

    sprite, _ = make_split().demo_choice(0)
    photos = np.stack(render_photos(sprite, n=4, size=64, seed=0))
    back = through_autoencoder(load_backbone("nano", device="cpu"), photos)
    assert back.shape == photos.shape and back.dtype == np.uint8
    assert np.abs(back.astype(float) - photos).mean() > 2  # changed by the round trip (blurred) ...
    colours = [probe_video(np.repeat(image[None], 8, axis=0)).colour for image in back]
    assert colours == [sprite.colour] * 4  # ... with the colour kept


@pytest.mark.slow
def test_demo_personalisation_helps_on_the_shipped_model(tmp_path, isolated_home):
    """The demo at its default training steps, with 4 videos per variant, on the default seed 0: each subject
    step raises image similarity and the identity adapter keeps the subject's colour; the motion adapter raises
    motion fidelity and makes the held-out motion (a circle) appear; without the identity adapter the composed
    videos keep the motion at least as often (measured, 4 videos: -0.268 -> 0.683 -> 0.768; colour 4/4; fidelity
    0.359 -> 0.648; circle 0/4 -> 2/4; composed, circle 1/4 with the identity adapter, 3/4 without, colour
    4/4 and 3/4. On another 2-core machine, the subject's figures the same, the motion adapter came out otherwise
    (float sums differ with the processor and the thread count): fidelity 0.359 -> 0.600, circle 4/4, composed
    4/4 with and without the identity adapter; on one thread there, fidelity 0.359 -> 0.538)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seed", "0", "--num-videos", "4", "--device", "cpu"]) == 0
    scores = _check(out, seed=0, count=4)["variants"]
    similarity = [scores[k]["image_similarity"] for k in ("class_noun", "textual_inversion", "identity")]
    assert similarity[0] + 0.1 < similarity[1] < similarity[2], similarity
    assert scores["identity"]["colour_correct"] >= 0.75
    fidelity = [scores[k]["motion_fidelity"] for k in ("base_motion", "motion_adapter")]
    assert fidelity[0] + 0.2 < fidelity[1], fidelity
    assert scores["base_motion"]["motion_correct"] <= 0.25 and scores["motion_adapter"]["motion_correct"] >= 0.5
    composed, without_identity = scores["both"], scores["textual_inversion_motion"]
    assert without_identity["colour_correct"] >= 0.75 and composed["colour_correct"] >= 0.75
    assert without_identity["motion_correct"] >= composed["motion_correct"]


def test_paired_steps_compare_each_video_with_the_same_noise_in_the_variant_before():
    from vidbooth.engine.demo import Variant, paired_steps

    def variant(key, similarity, fidelity):
        return Variant(key, key, "", 0.0, 0.0, per_video={"image_similarity": similarity, "motion_fidelity": fidelity})

    steps = paired_steps([
        variant("class_noun", [0.1, 0.2, 0.3], [0, 0, 0]),
        variant("textual_inversion", [0.2, 0.5, 0.2], [0, 0, 0]),  # differences 0.1, 0.3, -0.1
        variant("identity", [0.2, 0.5, 0.2], [0, 0, 0]),  # a tie is not better
        variant("base_motion", [0, 0, 0], [0.5, 0.5, 0.5]),
        variant("motion_adapter", [0, 0, 0], [0.4, 0.4, 0.4]),
    ])
    first, tie, motion = steps
    assert (first.variant, first.over, first.score) == ("textual_inversion", "class_noun", "image_similarity")
    assert first.difference == pytest.approx(0.1) and first.better_in == 2 and first.videos == 3
    assert first.standard_error == pytest.approx(0.2 / math.sqrt(3))  # sample sd of (0.1, 0.3, -0.1) is 0.2
    assert tie.difference == 0 and tie.better_in == 0 and tie.standard_error == 0
    assert motion.score == "motion_fidelity" and motion.difference == pytest.approx(-0.1) and motion.better_in == 0


@pytest.mark.parametrize("args, expected", [
    (["--num-videos", "0"], "num_videos (--num-videos) must be at least 1, got 0"),
    (["--num-videos", "100000"], "num_videos (--num-videos) must be at most 256, got 100000"),  # one batch: no memory
    (["--set", "subject_steps=-1"], "subject_steps must be at least 0, got -1"),
    (["--set", "num_inference_steps=-2"], "num_inference_steps must be at least 0, got -2"),
    (["--set", "num_inference_steps=1000"],
     "num_inference_steps (--set num_inference_steps=N) must be from 1 to 999 (nano"),
    (["--seed", "-1"], "seed (--seed) must be a whole number from 0"),
    (["--set", "seed=-1"], "seed (--seed) must be a whole number from 0"),
    (["--set", "runtime.seed=5"], "runtime.seed 5 is not the demo's seed: give seed (--seed) instead"),  # ignored
    (["--base", "no/such/base/here"], "base model not found: no/such/base/here"),
    (["--base", str(Path(__file__).parent)], "is not a diffusers text-to-video model"),
    (["--device", "tpu"], "unknown device 'tpu'"),  # these three had been found after the inputs were made
    (["--device", "mps"], "--device mps: Apple GPUs (MPS) are not supported; use --device cpu or auto (the CPU)"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--attention", "bogus"], "unknown attention backend 'bogus'"),
])
def test_bad_demo_settings_are_one_error_line_before_anything_is_written(args, expected, tmp_path, capsys):
    out = tmp_path / "deep" / "demo"
    assert main(["demo", "--out", str(out), *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "deep").exists()


def test_an_image_model_base_is_refused_before_anything_is_written(tiny_base_dirs, tmp_path, capsys):
    """It would make videos zero-shot, but the demo's motion step needs temporal layers: refused at once, not after
    minutes of subject training."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--base", str(tiny_base_dirs["animatediff"])]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "is an image model: the demo also learns a motion" in errors[0], errors
    assert not out.exists()


def test_a_tilde_in_out_is_the_home_folder(tmp_path, monkeypatch):
    """'--out ~/demo' had made a folder named '~' in the current one."""
    from vidbooth.config.demo import DemoConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    assert DemoConfig(out="~/demo").out == str(tmp_path / "demo")


def test_an_empty_out_is_refused_rather_than_writing_into_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_demo_says_to_run_it_again_not_to_resume(tmp_path, isolated_home, monkeypatch, capsys):
    import vidbooth.engine.demo as demo
    from vidbooth.errors import Interrupted

    def stopped(*args):
        raise Interrupted("stopped by SIGTERM at step 3/600; ...: rerun the same command with --resume", 143)

    monkeypatch.setattr(demo, "_train_subject", stopped)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--base", "tiny"]) == 143
    err = capsys.readouterr().err
    assert "the demo was stopped by SIGTERM: run it again to start over" in err and "--resume" not in err
    assert not (tmp_path / "demo").exists()  # what it had written (its inputs) is gone with the folder it made

    def ctrl_c(*args, **kwargs):  # outside training: it had said only 'interrupted', and left the new folder's parents
        raise KeyboardInterrupt

    monkeypatch.setattr("vidbooth.nano.world.render_motion_clips", ctrl_c)
    assert main(["demo", "--out", str(tmp_path / "a" / "b" / "demo"), "--base", "tiny"]) == 130
    assert capsys.readouterr().err.strip().endswith("the demo was stopped by SIGINT: run it again to start over")
    assert list(tmp_path.iterdir()) == []


def _earlier_demo(out):
    (out / "videos").mkdir(parents=True)
    (out / "videos" / "identity.png").write_bytes(b"earlier")
    (out / "metrics.json").write_text("{}")
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_a_demo_stopped_over_an_earlier_one_puts_the_earlier_one_back(tmp_path, isolated_home, monkeypatch):
    import vidbooth.engine.demo as demo
    from vidbooth.errors import Interrupted

    out = tmp_path / "demo"
    earlier = _earlier_demo(out)
    trained = []

    def stopped(*args):  # after train-subject has written into the demo's library
        trained.append(sorted(p.name for p in out.iterdir()))
        raise Interrupted("stopped by SIGINT", 130)

    monkeypatch.setattr(demo, "_train_motion", stopped)
    assert _run(out, "tiny") == 130
    assert trained and "library" in trained[0] and "inputs" in trained[0]  # the new demo was being written in place
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == earlier
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "videos"]  # nothing set aside is left


@pytest.mark.parametrize("where", ["checkpoint", "library", "out of memory", "open files"])
def test_a_full_disk_while_the_demo_trains_says_to_run_the_demo_again(where, tmp_path, isolated_home, monkeypatch,
                                                                      capsys):
    """Training's messages had said to rerun 'with --resume', which the demo does not have: a full disk at a
    checkpoint, or as the library saved what was learned, and an error after a checkpoint (out of memory)."""
    import vidbooth.engine.demo as demo
    from vidbooth.engine.train import CheckpointDiskFull
    from vidbooth.errors import DiskFull, MachineLimit

    out = tmp_path / "demo"
    earlier = _earlier_demo(out)

    def failed(*args):
        if where in ("out of memory", "open files"):
            limit = MachineLimit("too many open files: ..., and run it again")
            exc = MemoryError() if where == "out of memory" else limit
            exc.kept_checkpoint = str(out / "x")
            raise exc
        full = CheckpointDiskFull if where == "checkpoint" else DiskFull
        raise full("the disk is full: ... (with --resume to continue from the checkpoint)", out / "x")

    monkeypatch.setattr(demo, "_train_motion", failed)
    assert _run(out, "tiny") == 2
    told = capsys.readouterr().err.splitlines()[-1]
    if where in ("out of memory", "open files"):
        said = "error: out of memory: " if where == "out of memory" else "error: too many open files: "
        assert told.startswith(said) and told.endswith("and run it again")  # no --resume
    else:
        assert told == (f"error: the disk is full: free space on the disk of {out / 'x'}, then run the demo again (it "
                        "starts over)")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == earlier


@pytest.mark.parametrize("half, fix", [(True, "run the demo again with --precision fp32"),
                                       (False, "the demo's learning rates are fixed: learn the subject and motion "
                                               "with train-subject and train-motion and a lower learning rate "
                                               "(train-motion --lr N; train-subject --set textual_inversion.train.lr=N "
                                               "--set identity.train.lr=N)")])
def test_a_diverging_loss_in_the_demo_names_what_the_demo_takes(half, fix, tmp_path, isolated_home, monkeypatch,
                                                                 capsys):
    """Training's message names its keys (--set identity.train.lr=N) and --overwrite, which the demo refuses."""
    import vidbooth.engine.demo as demo
    from vidbooth.engine.train import LossNotFinite

    def diverged(*args):
        raise LossNotFinite("loss became nan at step 7: ... --set identity.train.lr=N ... --overwrite", 7, half)

    monkeypatch.setattr(demo, "_train_subject", diverged)
    assert _run(tmp_path / "demo", "tiny") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: the demo's training diverged (its loss became NaN or infinite at step 7): {fix}")


def test_a_finished_demo_replaces_an_earlier_one_whole(tmp_path, isolated_home):
    out = tmp_path / "demo"
    _earlier_demo(out)
    (out / ".previous-killed").mkdir()  # set aside by a run that was killed outright
    assert _run(out, "tiny") == 0
    assert sorted(p.name for p in out.iterdir()) == ["inputs", "library", "metrics.json", "videos"]
    assert (out / "videos" / "identity.png").read_bytes() != b"earlier" and json.loads((out / "metrics.json").read_text())


def test_a_reader_of_the_table_that_goes_away_keeps_the_finished_demo(tmp_path, isolated_home, monkeypatch):
    """`vidbooth demo | head`: the table is shown once the demo is in place; it had been shown inside the swap, whose
    roll-back then put the earlier demo back over the finished one."""
    import vidbooth.engine.demo as demo
    from vidbooth.errors import OutputClosed

    out = tmp_path / "demo"
    _earlier_demo(out)

    def closed(report):
        raise OutputClosed()

    monkeypatch.setattr(demo, "_show", closed)
    assert _run(out, "tiny") == 141
    assert (out / "videos" / "identity.png").read_bytes() != b"earlier" and json.loads((out / "metrics.json").read_text())


def test_a_folder_holding_other_files_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "project"
    (out / "videos").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    assert _run(out, "tiny") == 2
    err = capsys.readouterr().err
    assert "holds files that no demo wrote (notes.txt)" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "videos"]


def test_a_second_demo_into_a_folder_being_written_is_refused(tmp_path, capsys):
    from vidbooth.engine.demo import _replacing_earlier_demo

    out = tmp_path / "demo {owner}{0}"  # braces in the path stay as they are in the message
    _earlier_demo(out)
    with _replacing_earlier_demo(out):  # a demo running in this folder
        (out / "metrics.json").write_text('{"running": true}')
        assert _run(out, "tiny") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"another demo (pid {os.getpid()}) is writing into {out}:" in err[0]
        assert (out / "metrics.json").read_text() == '{"running": true}'  # the running demo's files are untouched
    assert not (out / ".demo.lock").exists()
    # the running demo finished: what it wrote replaced the earlier demo
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == {
        Path("metrics.json"): b'{"running": true}'}


def test_the_demos_recipe_help_describes_the_demos_yaml_not_a_training_recipe():
    import typer

    from vidbooth.cli.app import app

    demo = typer.main.get_command(app).commands["demo"]
    (recipe,) = [param for param in demo.params if "--recipe" in param.opts]
    assert "recipes/" not in recipe.help and "demo" in recipe.help


def test_a_demo_killed_over_an_earlier_one_gets_the_earlier_one_put_back_by_the_next_run(tmp_path):
    """kill -9 left the earlier demo in .previous-*, beside the killed run's unfinished inputs/ and library/: the
    next run removed the earlier demo, and a failure of that run then left nothing of either."""
    from vidbooth.engine.demo import _replacing_earlier_demo

    out = tmp_path / "demo"
    earlier = _earlier_demo(out)
    aside = out / ".previous-killed"
    aside.mkdir()
    for name in ("metrics.json", "videos"):
        os.replace(out / name, aside / name)
    (out / "inputs").mkdir()
    (out / "inputs" / "photo.png").write_bytes(b"half written")
    with pytest.raises(RuntimeError):
        with _replacing_earlier_demo(out):
            raise RuntimeError("the next run fails too")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == earlier
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "videos"]


def test_the_demos_library_does_not_outlive_it_where_no_library_was_set(tmp_path, monkeypatch):
    from vidbooth.engine.demo import _library_at

    monkeypatch.delenv("VIDBOOTH_HOME", raising=False)
    with _library_at(tmp_path / "library"):
        assert os.environ["VIDBOOTH_HOME"] == str(tmp_path / "library")
    assert "VIDBOOTH_HOME" not in os.environ
