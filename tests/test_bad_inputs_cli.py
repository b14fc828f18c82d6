"""The generated bad-input corpus (tests/badinputs.py), driven through the CLI of the commands that take photos.

Clip inputs go through `train-motion` in tests/test_motion_inputs.py and through `evaluate` in
tests/test_eval_cli.py; generate's own inputs in tests/test_cli_generate.py.
"""

from __future__ import annotations

import json

import pytest

import badinputs
from vidbooth.cli.app import main

pytestmark = pytest.mark.usefixtures("fails_rather_than_hangs")  # a bad number let through may loop for days

FAST = ["--class-noun", "ball", "--steps", "1", "--device", "cpu", "--batch-size", "1", "--set", "data.resolution=16",
        "--set", "preview.enabled=false"]


def _library_files(home):
    return sorted(p.relative_to(home) for p in home.rglob("*") if ".locks" not in p.parts) if home.exists() else []


@pytest.mark.parametrize("kind", badinputs.REFUSED_IMAGE_KINDS)
def test_refused_photo_is_one_line_exit_2_naming_the_file(kind, tmp_path, isolated_home, capsys):
    folder = tmp_path / "photos"
    badinputs.write_photo(folder / "good_1.png")
    bad = badinputs.make_bad_image(kind, folder)
    before = _library_files(isolated_home)
    assert main(["textual-inversion", str(folder), "--name", "S*", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and bad.name in err
    assert _library_files(isolated_home) == before


@pytest.mark.parametrize("kind", badinputs.REFUSED_PHOTO_FOLDER_KINDS)
def test_refused_photo_folder_is_one_line_exit_2(kind, tmp_path, isolated_home, capsys):
    folder = badinputs.make_bad_photo_folder(kind, tmp_path / "in")
    assert main(["textual-inversion", str(folder), "--name", "S*", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert lines[-1].startswith("error:")  # one error line; a warning may come first (skipped HEIC files)
    assert not any(line.startswith("error:") for line in lines[:-1])
    assert "".join(str(folder).split()) in "".join(err.split())  # names the folder, however rich wraps it
    assert not (isolated_home / "subjects").exists()


@pytest.mark.parametrize("argv, what", [
    (["train-subject", "", "--name", "S*", "--class-noun", "ball"], "photo"),
    (["textual-inversion", "  ", "--name", "S*", *FAST], "photo"),
    (["train-motion", "", "--name", "M", "--steps", "1"], "clip"),
])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(argv, what, tmp_path, isolated_home, capsys,
                                                                   monkeypatch):
    """An unset shell variable ("$PHOTOS") had been the current folder: its photos (or its frames, as a clip) taken
    unasked."""
    for index in range(3):
        badinputs.write_photo(tmp_path / f"{index:03}.png")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: an empty {what} path was given (an unset shell variable?): give the "
                                       f"{what} file or folder\n")
    assert _library_files(isolated_home) == []


def test_every_accepted_photo_kind_trains_in_one_run(tmp_path, tiny_base_dirs, isolated_home):
    """CMYK, 16-bit, palette, RGBA, grayscale, EXIF-rotated, animated, webp/bmp, unicode paths and a
    12000x8000 JPEG, all in one folder: the subject trains and keeps every photo."""
    folder = tmp_path / badinputs.UNICODE_FOLDER
    assert "huge_jpeg" in badinputs.ACCEPTED_IMAGE_KINDS
    for kind in badinputs.ACCEPTED_IMAGE_KINDS:
        badinputs.make_bad_image(kind, folder / kind)
    flat = tmp_path / "flat photos"
    flat.mkdir()
    for index, path in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        path.rename(flat / f"{index:02d} {path.name}")
    count = len(list(flat.iterdir()))
    assert main(["textual-inversion", str(flat), "--name", "S*", "--base", str(tiny_base_dirs["unet3d"]), *FAST]) == 0
    manifest = json.loads((isolated_home / "subjects" / "S%2A" / "manifest.json").read_text())
    assert len(manifest["photos"]) == count


def test_generate_into_an_unwritable_place(tmp_path, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    assert main(["generate", "--prompt", "x", "--out", str(blocker / "out.mp4"), "--steps", "1"]) == 2
    assert "cannot create output folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- numbers
# Nonsense numbers in flags and --set keys: refused up front in one line, before a model loads or anything is
# written (no output folder, no run folder, nothing in the library).

SEED_RANGE = "must be a whole number from 0 to 4294967295"
NOT_NEGATIVE = "must be a finite number of 0 or more"


def _written(root) -> list:
    return sorted(p.relative_to(root) for p in root.rglob("*") if ".locks" not in p.parts)


def _refused_in_one_line(argv, message, root, capsys) -> None:
    before = _written(root)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert _written(root) == before  # nothing written, not even an empty folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-frames", "0"], "sampling.num_frames (--num-frames) must be at least 1, got 0"),
        (["--num-inference-steps", "-1"], "sampling.num_inference_steps (--num-inference-steps) must be at least 1"),
        (["--height", "0"], "sampling.height (--height) must be a positive number of pixels, got 0"),
        (["--width", "-8"], "sampling.width (--width) must be a positive number of pixels, got -8"),
        (["--height", "30"], "--height 30 must be a positive multiple of 4"),  # the model's own check
        (["--width", "99999999999999999999"],  # had suggested 'use e.g. 99999999999999999996'
         "--width 99999999999999999999 is more than 8 times this model's native size (32): use at most 256"),
        (["--guidance-scale", "-1"], f"sampling.guidance_scale (--guidance-scale) {NOT_NEGATIVE}"),
        (["--guidance-scale", "nan"], f"sampling.guidance_scale (--guidance-scale) {NOT_NEGATIVE}"),
        (["--fps", "0"], "sampling.fps (--fps) must be at least 1, got 0"),
        (["--fps", "1001"], "sampling.fps (--fps) must be at most 1000, got 1001"),  # an empty mp4 at 2**32
        (["--seed", "-1"], f"runtime.seed (--seed) {SEED_RANGE}, got -1"),
        (["--seed", str(2**64)], f"runtime.seed (--seed) {SEED_RANGE}"),
        (["--subject-scale", "-1"], "subject_scale (--subject-scale) must be a finite number of 0 or more"),
        (["--motion-scale", "inf"], "motion_scale (--motion-scale) must be a finite number of 0 or more"),
        (["--set", "sampling.decode_chunk_size=0"], "sampling.decode_chunk_size must be at least 1, got 0"),
        (["--set", "sampling.eta=5"], "sampling.eta must be in [0, 1]"),
    ],
)
def test_generate_refuses_bad_numbers(args, message, tmp_path, tiny_base_dirs, capsys):
    out = tmp_path / "videos" / "new" / "clip.mp4"
    argv = ["generate", "--prompt", "a ball", "--out", str(out), "--base", str(tiny_base_dirs["unet3d"]),
            "--device", "cpu", "--steps", "1", "--frames", "2", *args]
    _refused_in_one_line(argv, message, tmp_path, capsys)


TRAIN_FAST = {
    "textual-inversion": ["--class-noun", "ball", "--steps", "1", "--batch-size", "1"],
    "train-subject": ["--class-noun", "ball", "--ti-steps", "1", "--identity-steps", "1", "--batch-size", "1"],
}
PREVIEW = ["--set", "preview.enabled=true", "--set", "preview.num_frames=2", "--set", "preview.num_inference_steps=1"]
PRIOR = ["--prior-preservation", "--num-class-images", "1", "--set", "prior.num_inference_steps=1"]


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("textual-inversion", ["--seed", "-1"], f"runtime.seed (--seed) {SEED_RANGE}, got -1"),
        ("textual-inversion", ["--set", "textual_inversion.train.seed=4294967296"],
         f"train.seed (--seed) {SEED_RANGE}"),
        ("textual-inversion", ["--lr", "inf"],
         "textual_inversion.train.lr (--lr) must be a finite positive number, got inf"),
        ("textual-inversion", ["--lr", "1e39"],  # had reached AdamW: a float32 overflow traceback
         "textual_inversion.train.lr (--lr) must be at most 3.4e+37, got 1e+39"),
        ("train-subject", ["--resolution", "30"],  # the model's own check, once loaded: it had named --height
         "data.resolution (--resolution) 30 must be a positive multiple of 4 for this model: use e.g. 32"),
        ("textual-inversion", ["--num-vectors", "40"],  # cut at 32 tokens: it had learned without the class noun
         "with textual_inversion.num_vectors (--num-vectors) 40 takes 54 tokens, more than the text encoder's 32"),
        ("textual-inversion", ["--num-vectors", "0"], "textual_inversion.num_vectors (--num-vectors) must be at least 1, "
         "got 0"),
        ("textual-inversion", ["--num-vectors", "2147483648"],  # had filled 24 GB making its tokens' names
         "textual_inversion.num_vectors (--num-vectors) must be at most 256, got 2147483648: a pseudo-word's vectors"),
        ("textual-inversion", ["--set", "textual_inversion.train.grad_accumulation=2147483648"],  # never ended step 1
         "textual_inversion.train.grad_accumulation must be at most 1024, got 2147483648"),
        ("textual-inversion", ["--class-noun", " ".join(["dog"] * 30)],  # after a transformers log line
         "more than the text encoder's 32: use a shorter --class-noun (90 tokens), fewer vectors"),
        ("train-subject", ["--resolution", "100000"],  # it had trained on, for hours
         "data.resolution (--resolution) 100000 is more than 8 times this model's native size (32): use at most 256"),
        ("train-subject", ["--ti-steps", "0"], "textual_inversion.train.steps (--ti-steps) must be at least 1, got 0"),
        ("train-subject", ["--batch-size", "0"],
         "textual_inversion.train.batch_size (--batch-size) must be at least 1, got 0"),
        ("train-subject", ["--batch-size", "100000"],  # one UNet call that ran for minutes, past Ctrl-C
         "textual_inversion.train.batch_size (--batch-size) must be at most 1024, got 100000"),
        ("train-subject", ["--set", "identity.train.lr=-1"],  # train-subject has no --lr: the key alone
         "identity.train.lr must be a finite positive number, got -1.0"),
        ("textual-inversion", ["--scale-jitter", "1"], "data.scale_jitter (--scale-jitter) must be in [0, 1), got 1.0"),
        ("train-subject", ["--hidden-ratio", "0"], "identity.hidden_ratio (--hidden-ratio) must be in (0, 4], got 0.0"),
        ("textual-inversion", ["--set", "textual_inversion.train.adam_beta1=1.5"],
         "textual_inversion.train.adam_beta1 must be in [0, 1)"),
        ("textual-inversion", ["--set", "textual_inversion.train.adam_epsilon=-1"],
         "textual_inversion.train.adam_epsilon must be a finite positive number"),
        ("textual-inversion", ["--set", "textual_inversion.train.max_grad_norm=nan"],
         "textual_inversion.train.max_grad_norm must be a finite number of 0 or more"),
        ("textual-inversion", ["--set", "textual_inversion.guidance_scale=nan"],
         "textual_inversion.guidance_scale must be 0 (off) or positive, got nan"),
        ("textual-inversion", [*PREVIEW, "--set", "preview.num_frames=0"], "preview.num_frames must be at least 1"),
        ("textual-inversion", [*PREVIEW, "--set", "preview.num_inference_steps=0"],
         "preview.num_inference_steps must be at least 1"),
        ("textual-inversion", [*PREVIEW, "--set", "preview.guidance_scale=-1"],
         "preview.guidance_scale must be a finite number of 0 or more"),
        ("train-subject", [*PRIOR, "--set", "prior.sample_batch_size=0"], "prior.sample_batch_size must be at least 1"),
        ("train-subject", [*PRIOR, "--set", "prior.sample_batch_size=100000"],  # one batch: had run out of memory
         "prior.sample_batch_size must be at most 1024, got 100000"),
        ("train-subject", [*PRIOR, "--set", "prior.guidance_scale=-1"],
         "prior.guidance_scale must be a finite number of 0 or more"),
        ("train-subject", [*PRIOR, "--prior-weight", "nan"],
         "prior.weight (--prior-weight) must be a finite number of 0 or more, got nan"),
        ("train-subject", [*PRIOR, "--class-images", ""],  # an unset $DIR: it had generated them without a word
         "--class-images is empty: give the folder of class images, or drop it to generate them"),
        ("train-subject", [*PRIOR, "--set", "prior.prompt=a {noun} at rest"],  # had been a KeyError at sampling
         "prior.prompt may contain '{}' once (the class noun's place) and no other braces, got 'a {noun} at rest'"),
        ("train-subject", ["--set", "identity.train.high_noise_fraction=1", "--set",  # had trained stage 1 first,
         "identity.train.high_noise_from=1000"],  # leaving a checkpoint that refused the corrected run
         "identity.train.high_noise_from must be below the 1000 noise levels (training timesteps) of"),
    ],
)
def test_subject_training_refuses_bad_numbers(command, args, message, tmp_path, tiny_base_dirs, capsys):
    folder = tmp_path / "photos"
    for i in range(3):
        badinputs.write_photo(folder / f"{i}.png", 64, 64)
    argv = [command, str(folder), "--name", "S*", "--base", str(tiny_base_dirs["unet3d"]), "--device", "cpu",
            *TRAIN_FAST[command], "--set", "data.resolution=16", "--set", "preview.enabled=false", *args]
    _refused_in_one_line(argv, message, tmp_path, capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resolution", "0"], "data.resolution (--resolution) must be at least 8 pixels, got 0"),
        (["--fps", "inf"], "data.fps (--fps) must be a finite positive number, got inf"),
        (["--stride", "0"], "data.stride (--stride) must be at least 1, got 0"),
        (["--num-frames", "100000"], "data.num_frames (--num-frames) must be at most 1024, got 100000"),
        (["--fps", "4", "--stride", "2"], "--fps 4 and --stride 2 both choose the clips' frames: give one of them"),
        (["--steps", "0"], "train.steps (--steps) must be at least 1, got 0"),
        (["--lr", "1e39"], "train.lr (--lr) must be at most 3.4e+37, got 1e+39"),
        (["--set", "adapter.hidden_ratio=5"], "adapter.hidden_ratio must be in (0, 4], got 5.0"),
        (["--seed", "4294967296"], f"runtime.seed (--seed) {SEED_RANGE}"),
        (["--preview", "--set", "preview.num_inference_steps=0"], "preview.num_inference_steps must be at least 1"),
        (["--preview", "--set", "preview.num_inference_steps=1", "--set", "preview.guidance_scale=nan"],
         "preview.guidance_scale must be a finite number of 0 or more"),
        (["--set", "train.high_noise_fraction=0.5", "--set", "train.high_noise_from=5000"],
         "train.high_noise_from must be below the 1000 noise levels (training timesteps) of"),
    ],
)
def test_train_motion_refuses_bad_numbers(args, message, tmp_path, tiny_base_dirs, capsys):
    clip = badinputs.write_clip(tmp_path / "clip.mp4", num_frames=4, width=64, height=64)
    argv = ["train-motion", str(clip), "--name", "m", "--base", str(tiny_base_dirs["unet3d"]), "--device", "cpu",
            "--steps", "1", "--num-frames", "2", "--resolution", "16", "--no-preview", *args]
    _refused_in_one_line(argv, message, tmp_path, capsys)


def test_pretrain_takes_a_tilde_as_the_home_folder(tmp_path, monkeypatch):
    """`--out ~/runs` had made a folder named '~' in the current one."""
    from vidbooth.config.pretrain import PretrainConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = PretrainConfig(out="~/runs", export="~/nano")
    cfg.check()
    assert (cfg.out, cfg.export) == (str(tmp_path / "runs"), str(tmp_path / "nano"))
    blank = PretrainConfig(export="  ")  # had exported into a folder named with two spaces
    blank.check()
    assert blank.export == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threads", "0"], "threads (--threads) must be at least 1, got 0"),
        (["--out", ""], "--out is empty: give the run folder"),
        (["--max-minutes", "-1"], "max_minutes (--max-minutes) must be a finite number of 0 or more (0: no limit)"),
        (["--seed", "-1"], f"seed (--seed) {SEED_RANGE}, got -1"),
        (["--set", "unet.batch=0"], "unet.batch must be at least 1, got 0"),
        (["--set", "clip.lr=0"], "clip.lr must be a finite positive number, got 0.0"),
        (["--set", "unet.high_noise_from=1000"], "unet.high_noise_from must be in [0, 1000), got 1000"),
        (["--set", "unet.eval_prompts=0"], "unet.eval_prompts must be at least 1, got 0"),
        (["--export", "{tmp}/run"], "--export {tmp}/run and --out {tmp}/run overlap"),  # found after the training
        (["--export", "{tmp}"], "overlap: export to a folder outside the run folder"),  # replaced whole: the run too
        (["--export", "{tmp}/run/model"], "overlap"),
        (["--export", "{tmp}/a.txt"], "{tmp}/a.txt is a file: give a folder to export the nano model to"),
        (["--out", "{tmp}/a.txt/run"], "cannot create output folder {tmp}/a.txt/run: {tmp}/a.txt is not a folder; "
                                       "choose another --out"),
        (["--export", "{tmp}/a.txt/model"], "{tmp}/a.txt is not a folder; choose another --export"),
        # an unset shell variable: a run from scratch, or none exported, in place of the one asked for
        (["--init-from", ""], "init_from (--init-from) is empty (an unset shell variable?): give nano or an exported"),
        (["--export", " "], "export (--export) is empty (an unset shell variable?): give a folder for the model"),
        (["--out", "{tmp}/held"], "the run's model folder {tmp}/held/model holds other files than a nano model, and "
                                  "an export replaces the whole folder: move them out of it"),  # found after training
        # model shapes and weights, before any model is built (tracebacks from diffusers or transformers, a size the
        # UNet cannot halve found after the autoencoder and CLIP stages, 4096 px or a NaN found in training)
        (["--set", "arch.size=40"], "arch.size must be from 32 to 1024 pixels and a multiple of 32 (the VAE's and the "
                                    "UNet's downsampling) and of arch.clip.patch_size 8, got 40"),
        (["--set", "arch.size=4096"], "arch.size must be from 32 to 1024 pixels"),
        (["--set", "arch.num_frames=100000"], "arch.num_frames must be at most 1024, got 100000"),
        (["--set", "arch.vae.block_out_channels=[]"], "arch.vae.block_out_channels must list one or more"),
        (["--set", "arch.vae.norm_num_groups=5"], "arch.vae.norm_num_groups 5 must divide every"),
        (["--set", "arch.clip.heads=3"], "arch.clip.heads 3 must divide arch.clip.hidden_size 64"),
        (["--set", "arch.unet.attention_heads=0"], "arch.unet.attention_heads must be at least 1, got 0"),
        (["--set", "unet.temporal_lr_scale=nan"], "unet.temporal_lr_scale must be a finite number of 0 or more"),
        (["--set", "unet.text_encoder_lr=nan"], "unet.text_encoder_lr must be a finite number of 0 or more (0 freezes"),
    ],
)
def test_pretrain_refuses_bad_numbers(args, message, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "held" / "model").mkdir(parents=True)
    (tmp_path / "held" / "model" / "mine.txt").write_text("")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    message = message.replace("{tmp}", str(tmp_path))
    _refused_in_one_line(["pretrain", "--out", str(tmp_path / "run"), *args], message, tmp_path, capsys)


@pytest.mark.parametrize(
    "video, args, message",
    [
        ("clip.mp4", ["--batch-size", "0"], "batch_size (--batch-size) must be at least 1, got 0"),
        ("clip.mp4", ["--set", "batch_size=-2"], "batch_size (--batch-size) must be at least 1, got -2"),
        ("missing.mp4", [], "video not found"),  # a later error: the --json folder used to be made before it
    ],
)
def test_evaluate_refuses_bad_numbers(video, args, message, tmp_path, capsys):
    badinputs.write_clip(tmp_path / "clip.mp4", num_frames=4, width=64, height=64)
    argv = ["evaluate", str(tmp_path / video), "--prompt", "a ball", "--clip-model", "nano", "--metrics", "t_cons",
            "--device", "cpu", "--json", str(tmp_path / "scores" / "new" / "scores.json"), *args]
    _refused_in_one_line(argv, message, tmp_path, capsys)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train-subject", "--name", "S*", "--class-noun", "ball"], "no photos given"),
        (["train-subject", "photos"], "--name is required: the subject's name and pseudo-word, e.g. --name 'S*'"),
        (["identity-adapter", "photos"], "--name is required"),
        (["train-motion", "--name", "m"], "no training clips given"),
        (["generate", "--seed", "1"], "no prompt: pass --prompt"),
    ],
)
def test_a_missing_input_that_a_recipe_could_give_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    """PHOTOS, CLIPS, --name and --prompt may come from a --recipe (a saved config.yaml), so the parser lets them
    be absent; without one, the command still says what is missing."""
    monkeypatch.chdir(tmp_path)
    _refused_in_one_line(argv, message, tmp_path, capsys)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--prompt", "x", "--bogus"], "No such option: --bogus"),
        (["generate", "--prompt", "x", "--num-frames", "abc"], "Invalid value for '--num-frames'"),
        (["train-motion", "clip.mp4", "--name"], "Option '--name' requires an argument"),
        (["nosuch"], "No such command 'nosuch'"),
        (["list", "--home", "/tmp/lib"],  # click had offered 'Possible options: --help', which holds no --home
         "error: No such option: --home (--home goes before the command: vidbooth --home DIR list ...)"),
        (["generate", "--debug"], "(--debug goes before the command: vidbooth --debug generate ...)"),
        (["list", "--version"], "error: No such option: --version (--version goes before the command: vidbooth "
         "--version)"),
    ],
)
def test_usage_errors_are_a_usage_message_and_exit_2_not_a_traceback(argv, message, capsys):
    """typer 0.20+ raises usage errors from its own copy of click (typer._click), not from click."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err  # it had been four lines: usage, hint, blank, error


def test_the_version_is_the_packages_and_help_has_a_short_flag(capsys):
    """The version had been written twice (pyproject.toml and __init__.py); -h had been an unknown option."""
    import re
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"vidbooth {project['version']}"
    assert main(["-h"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"motion-adapter +Same as train-motion", listing)  # not a second command's copy of its help
    assert main(["generate", "-h"]) == 0 and "--num-videos" in capsys.readouterr().out


@pytest.mark.parametrize("command, key, argument", [("train-subject", "photos", "PHOTOS"),
                                                    ("train-motion", "clips", "CLIPS")])
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_input_path_of_a_recipe_is_told_as_the_recipes(command, key, argument, empty, tmp_path, capsys):
    """It had been "photo path not found: , named by the recipe ... (moved since?)", a path of no name."""
    recipe = tmp_path / "config.yaml"
    recipe.write_text(f'name: S\nclass_noun: ball\n{key}: ["{empty}"]\n')
    assert main([command, "--recipe", str(recipe)]) == 2
    assert capsys.readouterr().err == (f"error: recipe {recipe}: {key} holds an empty path: write the path there or "
                                       f"remove it, or give {argument} on the command line\n")


@pytest.mark.parametrize(
    "command, given, message",
    [
        ("generate", "motion: ''", "recipe {recipe}: motion is empty: give a learned motion's name, or leave the "
         "setting out"),
        ("generate", "image_prompt: ' '", "recipe {recipe}: image_prompt is empty: give a photo of the subject"),
        ("generate", "--set image_prompt_model=", "--set image_prompt_model= is empty: give an image-prompt model's"),
        ("evaluate", "ref_images: ''", "recipe {recipe}: ref_images is empty: give a folder of reference images"),
        ("evaluate", "--set json=", "--set json= is empty: give a file, or - for stdout, or leave the setting out"),
    ],
)
def test_an_empty_setting_of_a_recipe_or_a_set_is_told_as_theirs(command, given, message, tmp_path, capsys):
    """Not as a flag the user never typed ('motion (--motion) is empty (an unset shell variable?)')."""
    recipe = tmp_path / "recipe.yaml"
    sets = given.split(" ", 1) if given.startswith("--") else []
    needed = "prompt: a dog" if command == "generate" else "videos: [x.mp4]"
    recipe.write_text(f"{needed}\n{'' if sets else given}\n")
    assert main([command, "--recipe", str(recipe), *sets]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(recipe=recipe)) and err.count("\n") == 1, err
    assert "shell variable" not in err and "(--" not in err


@pytest.mark.parametrize("command, key, what, argument", [("train-subject", "photos", "photo path", "PHOTOS"),
                                                          ("train-motion", "clips", "clip", "CLIPS")])
def test_an_input_the_recipe_names_that_is_gone_says_so_and_how_to_give_another(command, key, what, argument,
                                                                                tmp_path, capsys):
    """A subject's or motion's config.yaml rerun after its photos or clip moved had said only 'check the spelling'
    of a path the user never typed."""
    recipe = tmp_path / "config.yaml"
    recipe.write_text(f"name: S\nclass_noun: ball\n{key}: [{tmp_path / 'moved.mp4'}]\n")
    assert main([command, "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {what} not found: {tmp_path / 'moved.mp4'}, named by the recipe {recipe} (moved since?): "
                   f"give {argument} on the command line to use others\n")
    assert main([command, "--recipe", str(recipe), "--set", f"{key}=[{tmp_path / 'typo.mp4'}]"]) == 2
    err = capsys.readouterr().err  # given on the command line: the message is the path's own
    assert "named by the recipe" not in err and "typo.mp4: check the spelling" in err
