"""A learned artifact's config.yaml is the recipe that rebuilds it: the settings each stage it holds really ran
with, and every local path absolute, so that `--recipe <artifact>/config.yaml --overwrite` works from anywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.badinputs import write_clip, write_photos
from vidbooth.adapters.base import load_tensors
from vidbooth.cli.app import main
from vidbooth.engine.appearance import build_tiny_clip_vision

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = [
    "--recipe", "tiny/subject",
    "--set", "data.resolution=16",
    "--set", "prior.num_inference_steps=1",
    "--set", "prior.guidance_scale=1.0",
    "--batch-size", "1",
    "--no-preview",
]  # fmt: skip
SUBJECT_FILES = ("learned_embeds.safetensors", "identity_adapter.safetensors")


def subject_dir(home: Path) -> Path:
    return home / "subjects" / "S%2A"


def saved(folder: Path) -> tuple[dict, dict]:
    """(config.yaml, manifest.json) of an artifact."""
    return yaml.safe_load((folder / "config.yaml").read_text()), json.loads((folder / "manifest.json").read_text())


def tensors(folder: Path, files) -> list[dict[str, torch.Tensor]]:
    return [load_tensors(folder / file)[0] for file in files]


def assert_same_tensors(before: list[dict], after: list[dict]) -> None:
    for first, second in zip(before, after, strict=True):
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def rerun(folder: Path, tmp_path: Path, monkeypatch, command: str) -> None:
    """`<command> --recipe <copy of config.yaml> --overwrite` from a folder that is not the one trained in."""
    recipe = tmp_path / f"{folder.name}.yaml"
    recipe.write_text((folder / "config.yaml").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    monkeypatch.chdir(elsewhere)
    assert main([command, "--recipe", str(recipe), "--overwrite"]) == 0


def test_a_subject_built_in_two_runs_records_what_each_stage_ran_with_and_reruns_in_one(
    tmp_path, isolated_home, monkeypatch
):
    """textual-inversion, then identity-adapter with other settings: config.yaml holds stage 1's settings from the
    first run (class noun, vectors, steps, lr, seed) and stage 2's from the second, and one train-subject run of
    it ends with the same tensors."""
    monkeypatch.chdir(tmp_path)
    write_photos(tmp_path / "photos")
    stage_one = ["--name", "S*", "--class-noun", "dog", "--num-vectors", "2", "--steps", "2", "--lr", "0.02"]
    assert main(["textual-inversion", "photos", *stage_one, *FAST, "--seed", "4"]) == 0
    assert main(["identity-adapter", "photos", "--name", "S*", "--steps", "3", *FAST, "--seed", "7"]) == 0
    folder = subject_dir(isolated_home)
    config, manifest = saved(folder)
    assert config["stages"] == ["textual_inversion", "identity"]
    assert config["class_noun"] == "dog" and config["textual_inversion"]["num_vectors"] == 2
    ti, identity = config["textual_inversion"]["train"], config["identity"]["train"]
    assert (ti["steps"], ti["lr"], ti["seed"]) == (2, 0.02, 4)
    assert (identity["steps"], identity["seed"], config["runtime"]["seed"]) == (3, 7, 7)
    assert manifest["config"] == config
    assert {stage: entry["steps"] for stage, entry in manifest["stages"].items()} == {
        "textual_inversion": 2, "identity": 3
    }  # fmt: skip

    built = tensors(folder, SUBJECT_FILES)
    rerun(folder, tmp_path, monkeypatch, "train-subject")
    assert_same_tensors(built, tensors(folder, SUBJECT_FILES))
    assert set(saved(folder)[1]["stages"]) == {"textual_inversion", "identity"}


def test_a_textual_inversion_subject_records_that_stage_alone_and_reruns_as_one(tmp_path, isolated_home, monkeypatch):
    """No identity-adapter (or prior) settings in the config of a subject that has no adapter, and train-subject
    on that config learns the embedding alone again. A built-in base stays a name even beside a folder so named."""
    monkeypatch.chdir(tmp_path)
    write_photos(tmp_path / "photos")
    (tmp_path / "tiny").mkdir()  # not the base: 'tiny' is the built-in model
    args = ["textual-inversion", "photos", "--name", "S*", "--class-noun", "dog", "--steps", "2", "--base", "tiny"]
    assert main([*args, *FAST]) == 0
    folder = subject_dir(isolated_home)
    config, manifest = saved(folder)
    assert config["stages"] == ["textual_inversion"] and "identity" not in config and "prior" not in config
    assert config["textual_inversion"]["train"]["steps"] == 2 and config["backbone"]["base"] == "tiny"
    assert manifest["config"] == config and manifest["base"] == "tiny"

    built = tensors(folder, SUBJECT_FILES[:1])
    rerun(folder, tmp_path, monkeypatch, "train-subject")
    assert_same_tensors(built, tensors(folder, SUBJECT_FILES[:1]))
    assert not (folder / SUBJECT_FILES[1]).exists() and set(saved(folder)[1]["stages"]) == {"textual_inversion"}


def test_a_subject_config_holds_absolute_paths(tmp_path, isolated_home, monkeypatch, tiny_base_dirs):
    """Base folder, photos and class images given relative to two working folders are absolute in config.yaml and
    the manifest; identity-adapter finds the relative base of stage 1 from another folder."""
    work, other = tmp_path / "work", tmp_path / "other"
    shutil.copytree(tiny_base_dirs["unet3d"], work / "models" / "t2v")
    write_photos(work / "photos")
    write_photos(other / "dogs", count=2, seed=1)
    monkeypatch.chdir(work)
    args = ["--name", "S*", "--class-noun", "dog", "--steps", "1", "--base", "models/t2v"]
    assert main(["textual-inversion", "photos", *args, *FAST]) == 0
    monkeypatch.chdir(other)
    prior = ["--prior-preservation", "--class-images", "dogs", "--num-class-images", "2"]
    no_base = FAST[2:]  # without --recipe or --base: the subject's own base, which its config.yaml names
    assert main(["identity-adapter", "../work/photos", "--name", "S*", "--steps", "1", *prior, *no_base]) == 0

    config, manifest = saved(subject_dir(isolated_home))
    assert config["backbone"]["base"] == manifest["base"] == str(work / "models" / "t2v")
    assert config["photos"] == [str(work / "photos")] and config["prior"]["class_images"] == str(other / "dogs")
    assert manifest["config"] == config
    assert [Path(photo["source"]).parent for photo in manifest["photos"]] == [work / "photos"] * 3
    for file in SUBJECT_FILES:  # the tensors' own record of their base
        assert load_tensors(subject_dir(isolated_home) / file)[1]["base"] == str(work / "models" / "t2v")


def test_a_motion_config_holds_absolute_paths(tmp_path, isolated_home, monkeypatch, tiny_base_dirs):
    """train-motion with a relative base folder, clip and appearance encoder: all absolute in config.yaml (a hub id
    would stay as given), and the config reruns from another folder."""
    work = tmp_path / "work"
    shutil.copytree(tiny_base_dirs["unet3d"], work / "models" / "t2v")
    build_tiny_clip_vision(seed=3).save_pretrained(work / "models" / "clip")
    write_clip(work / "c.mp4")
    monkeypatch.chdir(work)
    args = ["train-motion", "c.mp4", "--name", "m", "--recipe", "tiny/motion", "--steps", "1", "--num-frames", "4"]
    args += ["--base", "models/t2v", "--image-encoder", "models/clip", "--no-preview"]
    assert main(args) == 0
    folder = isolated_home / "motions" / "m"
    config, manifest = saved(folder)
    assert config["clips"] == [str(work / "c.mp4")]
    assert config["backbone"]["base"] == manifest["base"] == str(work / "models" / "t2v")
    assert config["appearance"]["encoder"] == str(work / "models" / "clip")
    assert manifest["config"] == config and manifest["clips"][0]["source"] == str(work / "c.mp4")
    assert not (isolated_home / ".runs" / "motions" / "m").exists()  # no empty runs folder left behind

    built = tensors(folder, ["motion_adapter.safetensors"])
    rerun(folder, tmp_path, monkeypatch, "train-motion")
    assert_same_tensors(built, tensors(folder, ["motion_adapter.safetensors"]))


def test_absolute_path_keeps_what_is_not_a_local_path(tmp_path, monkeypatch):
    from vidbooth.fileio import absolute_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nano").mkdir()
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert absolute_path("org/model") == str(tmp_path / "org" / "model")  # a folder wins over a hub id, as loading
    assert absolute_path("other/model") == "other/model"  # a hub id
    assert absolute_path("nano", {"nano"}) == "nano"  # a built-in wins over a folder, as loading
    assert absolute_path(None) is None and absolute_path("") == ""


def test_a_second_stage_on_other_photos_warns_that_the_config_cannot_rebuild_the_subject(
    tmp_path, isolated_home, capsys
):
    photos, fewer = write_photos(tmp_path / "photos"), write_photos(tmp_path / "fewer", count=2)
    assert main(["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", "--steps", "1", *FAST]) == 0
    capsys.readouterr()
    assert main(["identity-adapter", str(photos), "--name", "S*", "--steps", "1", *FAST]) == 0
    assert "will not rebuild" not in capsys.readouterr().err  # the same photos: one run rebuilds it
    assert main(["identity-adapter", str(fewer), "--name", "S*", "--steps", "1", "--overwrite", *FAST]) == 0
    err = capsys.readouterr().err
    assert "learned with other photos than this identity adapter" in err and "will not rebuild" in err
    assert yaml.safe_load((subject_dir(isolated_home) / "config.yaml").read_text())["photos"] == [str(fewer)]


def test_precision_settings_differ_only_by_what_they_mean_on_this_device(
    tmp_path, isolated_home, capsys, fresh_accelerate_state
):
    """On a CPU `auto` is fp32 and no mixed precision: a stage 1 run with `fp32`/`no` and a stage 2 run with
    `auto` rebuild alike in one run, so nothing warns; bf16 mixed precision does differ."""
    photos = write_photos(tmp_path / "photos")
    explicit = ["--precision", "fp32", "--set", "textual_inversion.train.mixed_precision=no"]
    args = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", "--steps", "1", *explicit]
    assert main([*args, *FAST]) == 0
    capsys.readouterr()
    assert main(["identity-adapter", str(photos), "--name", "S*", "--steps", "1", *FAST]) == 0
    assert "will not rebuild" not in capsys.readouterr().err
    bf16 = ["--set", "identity.train.mixed_precision=bf16"]
    fresh_accelerate_state()
    assert main(["identity-adapter", str(photos), "--name", "S*", "--steps", "1", "--overwrite", *FAST, *bf16]) == 0
    err = capsys.readouterr().err
    assert "learned with other mixed_precision than this identity adapter" in err and "runtime.precision" not in err


@pytest.mark.parametrize("change", ["edited", "deleted"])
def test_stage_one_settings_come_from_the_manifest_when_config_yaml_was_edited_or_deleted(
    change, tmp_path, isolated_home, capsys
):
    """config.yaml is a copy for rerunning, which its user may edit or delete: what identity-adapter records as
    stage 1's settings is the manifest's record of what trained it."""
    photos = write_photos(tmp_path / "photos")
    args = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", "--steps", "2", *FAST]
    assert main([*args, "--set", "textual_inversion.train.lr=0.02"]) == 0
    recipe = subject_dir(isolated_home) / "config.yaml"
    if change == "edited":
        recipe.write_text("textual_inversion: {train: {steps: 999}}\n")
    else:
        recipe.unlink()
    capsys.readouterr()
    assert main(["identity-adapter", str(photos), "--name", "S*", "--steps", "1", *FAST]) == 0
    assert "cannot read" not in capsys.readouterr().err
    ti = saved(subject_dir(isolated_home))[0]["textual_inversion"]["train"]
    assert (ti["steps"], ti["lr"]) == (2, 0.02)


def test_a_subject_built_in_two_runs_with_other_mixed_precisions_reruns_with_one(tmp_path, isolated_home, monkeypatch):
    """One train-subject run refuses two mixed precisions, so the config.yaml of a subject whose stage 1 ran with
    another one holds the second run's for both stages (with the warning that the rerun is not exact)."""
    photos = write_photos(tmp_path / "photos")
    args = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", "--steps", "1", *FAST]
    assert main([*args, "--set", "textual_inversion.train.mixed_precision=no"]) == 0
    assert main(["identity-adapter", str(photos), "--name", "S*", "--steps", "1", *FAST]) == 0
    config = saved(subject_dir(isolated_home))[0]
    assert config["textual_inversion"]["train"]["mixed_precision"] == "auto"
    assert config["identity"]["train"]["mixed_precision"] == "auto"
    rerun(subject_dir(isolated_home), tmp_path, monkeypatch, "train-subject")


@pytest.mark.parametrize(
    ("stages", "flags", "named"),
    [
        ("[textual_inversion]", ["--identity-steps", "3"], "--identity-steps acts on the identity stage"),
        ("[textual_inversion]", ["--prior-preservation", "--hidden-ratio", "1"],
         "--hidden-ratio and --prior-preservation act on the identity stage"),
        ("[identity]", ["--num-vectors", "2"], "--num-vectors acts on the textual_inversion stage"),
    ],
)  # fmt: skip
def test_train_subject_refuses_flags_of_a_stage_it_leaves_out(stages, flags, named, tmp_path, isolated_home, capsys):
    """A textual-inversion subject's config.yaml reruns that stage alone: a flag of the other stage would do
    nothing, so it is refused in one line before anything is written."""
    photos = write_photos(tmp_path / "photos")
    args = ["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", *FAST, "--set", f"stages={stages}"]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "\n" not in err and not (isolated_home / "subjects").exists()


def test_train_subject_of_the_identity_stage_alone_takes_the_base_from_the_subject(tmp_path, isolated_home):
    """Like identity-adapter, train-subject adding stage 2 to a subject trains on the subject's base when no
    --base or --recipe names one (it loaded the default base, then refused it)."""
    photos = write_photos(tmp_path / "photos")
    quick = ["--set", "data.resolution=16", "--batch-size", "1", "--no-preview"]
    args = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", "--base", "tiny", "--steps", "1"]
    assert main([*args, *quick]) == 0
    args = ["train-subject", str(photos), "--name", "S*", "--set", "stages=[identity]"]
    assert main([*args, "--set", "identity.train.steps=1", *quick]) == 0
    config, manifest = saved(subject_dir(isolated_home))
    assert manifest["base"] == config["backbone"]["base"] == "tiny" and manifest["stages"]["identity"]["steps"] == 1


@pytest.mark.parametrize("stages", ["[]", "[identity,textual_inversion]", "[identity,identity]", "[motion]"])
def test_stages_must_be_known_each_once_in_order(stages):
    from vidbooth.config import load_config
    from vidbooth.config.subject import SubjectConfig
    from vidbooth.errors import UserError

    with pytest.raises(UserError, match=r"stages must be \[textual_inversion, identity\], \[textual_inversion\] or"):
        load_config(SubjectConfig, None, [f"stages={stages}"])
    assert load_config(SubjectConfig, None, ["stages=[identity]"]).stages == ["identity"]


def test_train_subject_adding_the_identity_stage_warns_of_a_recipe_base_not_the_subjects(tmp_path, isolated_home,
                                                                                       capsys, monkeypatch):
    """As identity-adapter does: the recipe's base is kept, and said before it loads."""
    import vidbooth.engine.subject as engine
    from vidbooth.library import MANIFEST, staged_artifact, write_json

    with staged_artifact("subject", "S*") as stage:
        write_json(stage / MANIFEST, {"name": "S*", "kind": "subject", "schema_version": 1, "files": {},
                                      "paths": {"config": "config.yaml"},
                                      "config": {"backbone": {"base": str(tmp_path)}}})
    ran = []
    monkeypatch.setattr(engine, "train_subject", ran.append)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone:\n  base: tiny\n")
    photos = write_photos(tmp_path / "photos")
    args = ["train-subject", str(photos), "--name", "S*", "--set", "stages=[identity]", "--no-preview"]
    assert main([*args, "--recipe", str(recipe)]) == 0
    assert f"recipe {recipe} sets the base tiny, not {tmp_path}, on which subject S* was" in capsys.readouterr().err
    assert [cfg.backbone.base for cfg in ran] == ["tiny"]
