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
], ids=["evaluate-recipe-video", "evaluate-set-video", "evaluate-recipe-metric", "subject-set-photo",
        "subject-recipe-layer", "motion-set-clip", "generate-recipe-subject", "generate-set-base",
        "generate-recipe-word", "image-prompt-recipe-folder", "image-prompt-set-word", "pretrain-recipe-out",
        "demo-set-base", "demo-recipe-out"])
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
], ids=["evaluate-video", "evaluate-metrics", "subject-photo", "motion-clip", "generate-subject", "demo-base"])
def test_an_empty_flag_or_argument_is_told_as_an_unset_shell_variable(argv, message, tmp_path, isolated_home,
                                                                      monkeypatch, capsys):
    assert _refused(argv, tmp_path, isolated_home, monkeypatch, capsys) == message


def test_an_empty_flag_whose_check_is_worded_apart_names_its_flag_as_before(tmp_path, isolated_home, monkeypatch,
                                                                              capsys):
    """`--word " "` had lost its flag's name ('word must be one word ...') once an empty setting was told apart from
    the other values a check refuses, whose messages are given their flags."""
    said = _refused(["train-image-prompt", "--word", " "], tmp_path, isolated_home, monkeypatch, capsys)
    assert said == "word (--word) must be one word (the one the image prompt replaces), got ' '"
