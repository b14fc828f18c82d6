"""An empty setting, or an empty item of a list setting, is told as the recipe's or the --set's that gave it (one
line, exit 2, nothing written); "(an unset shell variable?)" is said only where a flag or argument gave it."""

from __future__ import annotations

import pytest

from vidbooth.cli.app import main

ENGINES = [("vidbooth.engine.generate", "generate"), ("vidbooth.engine.subject", "train_subject"),
           ("vidbooth.engine.motion", "train_motion"), ("vidbooth.eval.evaluate", "evaluate_videos"),
           ("vidbooth.engine.image_prompt", "train_image_prompt"), ("vidbooth.nano.pretrain", "pretrain"),
           ("vidbooth.engine.demo", "run_demo")]


@pytest.fixture(autouse=True)
def no_engine(monkeypatch):
    """An empty value let through fails the test here, before any model trains or writes."""
    import importlib

    def reached(*args, **kwargs):
        raise AssertionError("an empty value reached the engine")

    for module, name in ENGINES:
        monkeypatch.setattr(importlib.import_module(module), name, reached)


def _files(*folders):
    return sorted(str(p) for folder in folders if folder.exists() for p in folder.rglob("*"))


def _refused(argv, tmp_path, isolated_home, monkeypatch, capsys) -> str:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    before = _files(work, isolated_home)
    assert main(argv) == 2
    assert _files(work, isolated_home) == before
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: "):-1]


@pytest.mark.parametrize("command, recipe_text, sets, message", [
    ("evaluate", 'videos: [""]\n', [],
     "recipe {recipe}: videos holds an empty path: write the path there or remove it, or give VIDEOS on the command "
     "line"),
    ("evaluate", "prompt: a dog\n", ["--set", 'videos=[""]'],
     '--set videos=[""] holds an empty path: write the path there or remove it, or give VIDEOS on the command line'),
    ("evaluate", 'videos: [a.mp4]\nmetrics: [clip_t, ""]\n', [],
     "recipe {recipe}: metrics holds an empty metric: write a metric's name there or remove it"),
    ("train-subject", "name: S\nclass_noun: ball\n", ["--set", 'photos=[""]'],
     '--set photos=[""] holds an empty path: write the path there or remove it, or give PHOTOS on the command line'),
    ("train-subject", 'name: S\nphotos: [dog]\nidentity: {layers: ["*", " "]}\n', [],
     "recipe {recipe}: identity.layers holds an empty pattern: write a layer pattern there or remove it"),
    ("train-motion", "name: M\n", ["--set", 'clips=""'],
     '--set clips="" holds an empty path: write the path there or remove it, or give CLIPS on the command line'),
    ("generate", 'prompt: a dog\nsubjects: [S, ""]\n', [],
     "recipe {recipe}: subjects holds an empty name: write a learned subject's name there or remove it"),
    ("generate", "prompt: a dog\n", ["--set", "backbone.base="],
     "--set backbone.base= is empty: give a model folder, a hub id, or nano (the default), or leave the setting out"),
    ("generate", "prompt: a dog\nimage_prompt_word: ''\n", [],
     "recipe {recipe}: image_prompt_word is empty: give one word, the prompt's word that the image prompt replaces, "
     "or leave the setting out"),
    ("train-image-prompt", "data: {folder: ''}\n", [],
     "recipe {recipe}: data.folder is empty: give a folder of clips, or leave the setting out"),
    ("train-image-prompt", "word: sprite\n", ["--set", "word="],
     "--set word= is empty: give one word, the one the image prompt replaces, or leave the setting out"),
    ("pretrain", "out: ''\n", [],
     "recipe {recipe}: out is empty: give the run folder (default: runs/nano), or leave the setting out"),
    ("demo", "fast: true\n", ["--set", "base="],
     "--set base= is empty: give a model folder, a hub id, or nano (the default), or leave the setting out"),
    ("demo", "out: ' '\n", [],
     "recipe {recipe}: out is empty: give the folder the demo writes into (default: demo), or leave the setting out"),
    # a required name or class noun had been told as '--name is required', a flag never typed
    ("train-subject", "name: ''\nclass_noun: ball\n", [],
     "recipe {recipe}: name is empty: write the subject's name and pseudo-word (e.g. 'S*') there, or give --name on "
     "the command line"),
    ("identity-adapter", "overwrite: true\n", ["--set", "name="],  # no photos: the subject's own, but a name
     "--set name= is empty: write the subject's name and pseudo-word (e.g. 'S*') there, or give --name on the "
     "command line"),
    ("train-subject", "name: S*\nphotos: [dog]\nclass_noun: ' '\n", [],
     "recipe {recipe}: class_noun is empty: write what the subject is (dog, person, mug) there, or give --class-noun "
     "on the command line"),
    ("train-motion", "clips: [a.mp4]\n", ["--set", "name="],
     "--set name= is empty: write the name the motion gets in the library there, or give --name on the command line"),
    # had been 'got []' and "unknown scheduler ''"
    ("train-subject", "name: S*\nclass_noun: ball\nstages: ['']\n", [],
     "recipe {recipe}: stages holds an empty stage: write a stage's name (textual_inversion or identity) there or "
     "remove it"),
    ("generate", "prompt: a dog\nsampling: {scheduler: ''}\n", [],
     "recipe {recipe}: sampling.scheduler is empty: give ddim or dpm++, or leave the setting out"),
    # had been taken as auto, read as the current folder, or refused as --out's once torch had loaded
    ("generate", "prompt: a dog\nruntime: {device: ''}\n", [],
     "recipe {recipe}: runtime.device is empty: give auto, cpu, cuda or cuda:N, or leave the setting out"),
    # a section given whole by a --set: the key in it that is empty named too
    ("generate", "prompt: a dog\n", ["--set", "runtime={device: ''}"],
     "--set runtime={{device: ''}}: runtime.device is empty: give auto, cpu, cuda or cuda:N, or leave the setting out"),
    ("train-subject", "name: S\nphotos: [dog]\nclass_noun: ball\n", ["--set", 'identity={layers: ["*", ""]}'],
     '--set identity={{layers: ["*", ""]}}: identity.layers holds an empty pattern: write a layer pattern there or '
     "remove it"),
    ("train-motion", "name: M\nclips: [a.mp4]\n", ["--set", "runtime.precision="],
     "--set runtime.precision= is empty: give auto, fp32, fp16 or bf16, or leave the setting out"),
    ("demo", "runtime: {attention: ''}\n", [],
     "recipe {recipe}: runtime.attention is empty: give auto, sdpa, xformers or math, or leave the setting out"),
    ("evaluate", "videos: [a.mp4]\nclip_model: ''\n", [],
     "recipe {recipe}: clip_model is empty: give a CLIP folder or hub id, nano or auto, or leave the setting out"),
    ("evaluate", "videos: [a.mp4]\n", ["--set", "dino_model="],
     "--set dino_model= is empty: give a DINO folder or hub id, or leave the setting out"),
    ("evaluate", "videos: [a.mp4]\ndevice: ''\n", [],
     "recipe {recipe}: device is empty: give auto, cpu, cuda or cuda:N, or leave the setting out"),
    ("pretrain", "tokenizer: ''\n", [],
     "recipe {recipe}: tokenizer is empty: give nano, a CLIPTokenizer folder or an open-clip-torch wheel (.whl), or "
     "leave the setting out"),
    ("generate", "prompt: a dog\n", ["--set", "out="],
     "--set out= is empty: give the video to write, .mp4 or .gif (default: out.mp4), or leave the setting out"),
    ("train-image-prompt", "out: ''\n", [],
     "recipe {recipe}: out is empty: give the .safetensors file the model is saved to (default: "
     "image_prompt.safetensors), or leave the setting out"),
], ids=["evaluate-recipe-video", "evaluate-set-video", "evaluate-recipe-metric", "subject-set-photo",
        "subject-recipe-layer", "motion-set-clip", "generate-recipe-subject", "generate-set-base",
        "generate-recipe-word", "image-prompt-recipe-folder", "image-prompt-set-word", "pretrain-recipe-out",
        "demo-set-base", "demo-recipe-out", "subject-recipe-name", "identity-set-name", "subject-recipe-class-noun",
        "motion-set-name", "subject-recipe-stage", "generate-recipe-scheduler", "generate-recipe-device",
        "generate-set-section-device", "subject-set-section-layer", "motion-set-precision", "demo-recipe-attention",
        "evaluate-recipe-clip-model", "evaluate-set-dino-model", "evaluate-recipe-device", "pretrain-recipe-tokenizer",
        "generate-set-out", "image-prompt-recipe-out"])
def test_an_empty_value_of_a_recipe_or_a_set_is_told_as_theirs(command, recipe_text, sets, message, tmp_path,
                                                               isolated_home, monkeypatch, capsys):
    """Each had named a flag never typed with "(an unset shell variable?)", named no source at all, or been taken
    (the current folder as base, nano's world in place of a folder of clips, a subject named '', metrics 'auto')."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    said = _refused([command, "--recipe", str(recipe), *sets], tmp_path, isolated_home, monkeypatch, capsys)
    assert said == message.format(recipe=recipe)
    assert "shell variable" not in said


@pytest.mark.parametrize("argv, message", [
    (["evaluate", ""], "an empty video path was given (an unset shell variable?): give the video file, or a glob "
     "pattern of them"),
    (["evaluate", "a.mp4", "--metrics", " "],
     "--metrics is empty (an unset shell variable?): give metric names, or leave it out"),
    (["train-subject", "", "--name", "S", "--class-noun", "ball"],
     "an empty photo path was given (an unset shell variable?): give the photo file or folder"),
    (["train-motion", "", "--name", "M"],
     "an empty clip path was given (an unset shell variable?): give the clip file or folder"),
    (["generate", "--prompt", "a dog", "--subject", ""],
     "subjects (--subject) holds an empty name (an unset shell variable?): give a learned subject's name"),
    (["demo", "--base", ""], "base (--base) is empty (an unset shell variable?): give a model folder, a hub id, or "
     "nano (the default), or leave it out"),
    (["generate", "--prompt", "a dog", "--scheduler", ""], "sampling.scheduler (--scheduler) is empty (an unset "
     "shell variable?): give ddim or dpm++, or leave it out"),
    (["train-subject", "dog", "--name", "S*", "--class-noun", "ball", "--device", ""], "runtime.device (--device) "
     "is empty (an unset shell variable?): give auto, cpu, cuda or cuda:N, or leave it out"),
    (["demo", "--attention", " "], "runtime.attention (--attention) is empty (an unset shell variable?): give auto, "
     "sdpa, xformers or math, or leave it out"),
    (["evaluate", "a.mp4", "--clip-model", ""], "clip_model (--clip-model) is empty (an unset shell variable?): give "
     "a CLIP folder or hub id, nano or auto, or leave it out"),
    (["evaluate", "a.mp4", "--dino-model", ""], "dino_model (--dino-model) is empty (an unset shell variable?): give "
     "a DINO folder or hub id, or leave it out"),
    (["generate", "--prompt", "a dog", "--out", ""], "out (--out) is empty (an unset shell variable?): give the "
     "video to write, .mp4 or .gif (default: out.mp4), or leave it out"),
    (["train-image-prompt", "--out", ""], "out (--out) is empty (an unset shell variable?): give the .safetensors "
     "file the model is saved to (default: image_prompt.safetensors), or leave it out"),
], ids=["evaluate-video", "evaluate-metrics", "subject-photo", "motion-clip", "generate-subject", "demo-base",
        "generate-scheduler", "subject-device", "demo-attention", "evaluate-clip-model", "evaluate-dino-model",
        "generate-out", "image-prompt-out"])
def test_an_empty_flag_or_argument_is_told_as_an_unset_shell_variable(argv, message, tmp_path, isolated_home,
                                                                      monkeypatch, capsys):
    assert _refused(argv, tmp_path, isolated_home, monkeypatch, capsys) == message


@pytest.mark.parametrize("argv, message", [
    (["train-subject", "dog", "--class-noun", "ball"], "--name is required: the subject's name and pseudo-word, e.g. "
     "--name 'S*'"),
    (["identity-adapter", "--seed", "1"], "--name is required: the subject's name and pseudo-word, e.g. --name 'S*'"),
    (["train-subject", "dog", "--name", "S*", "--class-noun", ""], "--class-noun is required: what the subject is, "
     "e.g. --class-noun dog"),
    (["train-motion", "a.mp4", "--name", ""], "--name is required: the name the motion gets in the library"),
], ids=["subject-no-name", "identity-no-name", "subject-empty-class-noun", "motion-empty-name"])
def test_a_required_name_left_out_or_given_by_its_flag_is_told_as_the_flag_s(argv, message, tmp_path,
                                                                             isolated_home, monkeypatch, capsys):
    """identity-adapter without photos had said so from the engine only, once torch had loaded."""
    assert _refused(argv, tmp_path, isolated_home, monkeypatch, capsys) == message


@pytest.mark.parametrize("given, message", [
    (["--out", "{file}"], "--out {file} is a file: give the run folder (default: runs/nano)"),
    (["--set", "out={file}"], "--set out={file} is a file: give the run folder (default: runs/nano)"),
    (["--recipe", "{recipe}"], "out: {file} in recipe {recipe} is a file: give the run folder (default: runs/nano)"),
], ids=["flag", "set", "recipe"])
def test_pretrain_s_out_that_is_a_file_is_told_as_the_flag_s_the_set_s_or_the_recipe_s(given, message, tmp_path,
                                                                                        isolated_home, monkeypatch,
                                                                                        capsys):
    """It had been told as --out's wherever it came from."""
    taken, recipe = tmp_path / "taken", tmp_path / "recipe.yaml"
    taken.write_text("a file")
    recipe.write_text(f"out: {taken}\n")
    argv = ["pretrain", *(arg.format(file=taken, recipe=recipe) for arg in given)]
    said = _refused(argv, tmp_path, isolated_home, monkeypatch, capsys)
    assert said == message.format(file=taken, recipe=recipe)


def test_an_empty_flag_whose_check_is_worded_apart_names_its_flag_as_before(tmp_path, isolated_home, monkeypatch,
                                                                              capsys):
    """`--word " "` had lost its flag's name ('word must be one word ...') once an empty setting was told apart from
    the other values a check refuses, whose messages are given their flags."""
    said = _refused(["train-image-prompt", "--word", " "], tmp_path, isolated_home, monkeypatch, capsys)
    assert said == "word (--word) must be one word (the one the image prompt replaces), got ' '"


def test_a_recipe_given_with_a_tilde_is_named_by_its_path(tmp_path, isolated_home, monkeypatch, capsys):
    """`--recipe=~/r.yaml` (the shell expands no ~ there): its empty setting names the file read, as its other
    errors do."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "recipe.yaml").write_text("prompt: a dog\nruntime: {device: ''}\n")
    said = _refused(["generate", "--recipe=~/recipe.yaml"], tmp_path, isolated_home, monkeypatch, capsys)
    assert said == (f"recipe {home / 'recipe.yaml'}: runtime.device is empty: give auto, cpu, cuda or cuda:N, or "
                    "leave the setting out")


def test_a_name_of_spaces_is_told_by_the_library_s_name_rules_not_as_empty(tmp_path, isolated_home, monkeypatch,
                                                                          capsys):
    """Only a name that is empty is an EmptySetting: one of spaces is a name the library refuses for its space."""
    said = _refused(["identity-adapter", "--set", "name= "], tmp_path, isolated_home, monkeypatch, capsys)
    assert said.startswith("invalid subject name ' ': ' ' (space) is not allowed; use 1-64 letters"), said


@pytest.mark.parametrize("command, recipe_text, sets, told", [
    ("train-subject", "name: S\nclass_noun: ball\nphotos:\n", [], "recipe {recipe}: config key 'photos'"),
    ("train-subject", "name: S\nclass_noun: ball\n", ["--set", "photos=null"],
     "--set photos=null: config key 'photos'"),
    ("evaluate", "videos: ~\n", [], "recipe {recipe}: config key 'videos'"),
    ("train-subject", "name: S\nphotos: [dog]\nclass_noun: ball\n", ["--set", "identity={layers: null}"],
     "--set identity={{layers: null}}: config key 'identity.layers'"),
], ids=["subject-recipe-photos", "subject-set-photos", "evaluate-recipe-videos", "subject-set-section-layers"])
def test_a_list_setting_given_null_is_told_it_takes_a_list(command, recipe_text, sets, told, tmp_path, isolated_home,
                                                           monkeypatch, capsys):
    """`photos:` left empty in a recipe, or `--set photos=null`, had been told in OmegaConf's words: "config key
    'photos': field 'photos' is not Optional"."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    said = _refused([command, "--recipe", str(recipe), *sets], tmp_path, isolated_home, monkeypatch, capsys)
    assert said == told.format(recipe=recipe) + (" takes a list, written [a, b] (one item: [a]), got null (none): give "
                                                 "one, or leave the setting out")


@pytest.mark.parametrize("command, recipe_text, sets, message", [
    ("train-subject", "name: S\nclass_noun: ball\nphotos: [~]\n", [],
     "recipe {recipe}: photos holds a null item (photos[0]): write its value there or remove it"),
    ("train-subject", "name: S\nclass_noun: ball\n", ["--set", "photos=[null]"],
     "--set photos=[null]: photos holds a null item (photos[0]): write its value there or remove it"),
    ("evaluate", "videos: [a.mp4]\nmetrics: [clip_t, null]\n", [],
     "recipe {recipe}: metrics holds a null item (metrics[1]): write its value there or remove it"),
    ("train-subject", "name: S\nphotos: [dog]\nclass_noun: ball\n", ["--set", "identity={layers: [~]}"],
     "--set identity={{layers: [~]}}: identity.layers holds a null item (identity.layers[0]): write its value there "
     "or remove it"),
], ids=["subject-recipe-photo", "subject-set-photo", "evaluate-recipe-metric", "subject-set-section-layer"])
def test_a_null_item_of_a_list_setting_is_told_as_one(command, recipe_text, sets, message, tmp_path, isolated_home,
                                                      monkeypatch, capsys):
    """A null item (`photos: [~]`) had been told as "config key 'photos[0]' takes settings, written {key: value,
    ...}, got 'None'": a list of texts, not a section."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    said = _refused([command, "--recipe", str(recipe), *sets], tmp_path, isolated_home, monkeypatch, capsys)
    assert said == message.format(recipe=recipe)
