"""`vidbooth evaluate` with the shipped nano model: its image tower (nano-I, nano T.Cons) and the world probe."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidbooth.cli.app import main
from vidbooth.data.video import read_video, write_video
from vidbooth.eval.features import load_nano_image
from vidbooth.eval.metrics import reference_similarity
from vidbooth.nano.world import Motion, Sprite, caption, render_clip, render_photos

RED_SQUARE = Sprite("square", "red", "solid")
BLUE_CIRCLE = Sprite("circle", "blue", "striped")
RIGHT = Motion("right")


@pytest.fixture(scope="module")
def nano():
    return load_nano_image("cpu")


@pytest.fixture
def world(tmp_path) -> dict[str, Path]:
    """A ground-truth clip of a red square moving right, and photo folders of that sprite and of another one."""
    clip, _ = render_clip(RED_SQUARE, RIGHT, seed=1)
    folders = {}
    for name, sprite in (("own", RED_SQUARE), ("other", BLUE_CIRCLE)):
        folder = folders[name] = tmp_path / name
        folder.mkdir()
        for i, photo in enumerate(render_photos(sprite, n=4, seed=2)):
            Image.fromarray(photo).save(folder / f"{i}.png")
    return {"video": write_video(clip, tmp_path / "clip.mp4"), **folders}


def run(*args: object) -> int:
    return main(["evaluate", *map(str, args)])


def test_the_nano_image_tower_loads_offline_and_gives_unit_embeddings(nano, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = load_nano_image("cpu", batch_size=2)
    images = [np.zeros((64, 80, 3), np.uint8), np.full((40, 40, 3), 200, np.uint8), *render_photos(RED_SQUARE, 2)]
    embeds = embedder.image_embeds(images)
    assert embeds.shape == (4, 64) and embeds.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1.0, atol=1e-5)
    assert embedder.description["model"] == "nano image tower (not OpenAI CLIP)"
    assert embedder.description["class"] == "CLIPVisionModelWithProjection"


def test_nano_i_is_higher_against_the_videos_own_sprite(nano):
    frames, _ = render_clip(RED_SQUARE, RIGHT, seed=1)
    frame_embeds = nano.image_embeds(list(frames))
    own = reference_similarity(frame_embeds, nano.image_embeds(render_photos(RED_SQUARE, 4, seed=2)))
    other = reference_similarity(frame_embeds, nano.image_embeds(render_photos(BLUE_CIRCLE, 4, seed=2)))
    assert own > other


def test_a_world_clip_scores_1_on_the_probe_and_nothing_of_nano_is_labelled_clip(world, tmp_path, capsys):
    out = tmp_path / "scores.json"
    prompt = caption(RED_SQUARE, RIGHT)
    args = [world["video"], "-p", prompt, "--ref-images", world["own"], "--clip-model", "nano"]
    assert run(*args, "--dino-model", tmp_path / "no-dino", "--json", out) == 0
    report = json.loads(out.read_text())
    metrics = report["videos"][0]["metrics"]
    assert {name: metrics[name] for name in ("probe_colour", "probe_shape", "probe_motion")} == dict.fromkeys(
        ("probe_colour", "probe_shape", "probe_motion"), 1.0
    )
    assert report["aggregate"]["probe_motion"] == {"mean": 1.0, "count": 1}
    assert metrics["nano_i"] > 0.5 and 0.9 < metrics["nano_t_cons"] <= 1.0 + 1e-6
    assert "nano_t" not in metrics and "nano_t" not in report["unavailable"]  # never computable: not chosen by auto
    assert report["models"]["nano"]["model"] == "nano image tower (not OpenAI CLIP)" and "clip" not in report["models"]
    nano_names = [name for name in [*metrics, *report["aggregate"], *report["unavailable"]] if name != "dino_i"]
    assert not [name for name in nano_names if "clip" in name.lower()]
    table = capsys.readouterr().out
    assert "nano-I" in table and "T.Cons" in table and "CLIP" not in table  # the table may wrap 'nano T.Cons'


def test_auto_scores_dino_i_on_nanos_videos_only_where_the_dino_model_is_here(
    world, tmp_path, tiny_vit_dir, monkeypatch, capsys
):
    """nano is for machines with no network: under auto, DINO-I of nano's videos is left out with an info line
    (no hub probe, no warning) when the DINO model is not on this machine, and computed when it is; asked for by
    name, it is tried and reported unavailable as before."""
    import vidbooth.eval.features as features

    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    monkeypatch.setattr(features, "_hub_reachable", lambda endpoint: pytest.fail("probed the hub"))
    args = [world["video"], "-p", caption(RED_SQUARE, RIGHT), "--ref-images", world["own"], "--clip-model", "nano"]

    def scored(*extra) -> dict:
        out = tmp_path / "scores.json"
        assert run(*args, *extra, "--json", out) == 0
        return json.loads(out.read_text())

    report = scored()  # the default facebook/dino-vits16 is in no cache here
    assert "dino_i" not in report["videos"][0]["metrics"] and "dino_i" not in report["unavailable"]
    err = capsys.readouterr().err
    assert "DINO-I left out: facebook/dino-vits16 is not on this machine" in err and "warning" not in err
    assert scored("--dino-model", tiny_vit_dir)["videos"][0]["metrics"]["dino_i"] is not None
    asked = scored("--metrics", "nano-I,dino_i", "--dino-model", tmp_path / "no-dino")
    assert "dino_i" in asked["unavailable"] and "left out" not in capsys.readouterr().err


def test_a_prompt_that_is_not_a_world_caption_gives_n_a_with_the_reason(world, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert run(world["video"], "-p", "a photo of S* moving right", "--metrics", "probe", "--json", out) == 0
    video = json.loads(out.read_text())["videos"][0]
    assert video["metrics"] == dict.fromkeys(("probe_colour", "probe_shape", "probe_motion"))
    assert "not a world caption" in video["notes"]["probe"]
    assert "not a world caption" in capsys.readouterr().err


def test_the_csv_holds_the_reference_colour_and_the_notes_as_the_json_does(world, tmp_path):
    out_json, out_csv = tmp_path / "scores.json", tmp_path / "scores.csv"
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{world['video']}|||{world['own']}|||a square moving right\n"
                        f"{world['video']}|||{world['own']}|||a photo of S* moving right\n")
    assert run("--manifest", manifest, "--metrics", "probe", "--json", out_json, "--csv", out_csv) == 0
    rows = list(csv.DictReader(out_csv.open()))
    videos = json.loads(out_json.read_text())["videos"]
    assert [row["reference_colour"] for row in rows] == ["red", ""] == [v["reference_colour"] or "" for v in videos]
    assert rows[0]["probe_colour"] == "1.0" and rows[0]["notes"] == ""
    assert rows[1]["probe_colour"] == "" and rows[1]["notes"] == videos[1]["notes"]["probe"]
    assert "not a world caption" in rows[1]["notes"]


def test_a_video_of_one_frame_has_no_value_for_what_changes_between_frames_and_says_why(world, tmp_path, capsys):
    """The probe read one frame as still and scored probe motion 0, counted in the mean; T.Cons was n/a unexplained."""
    one = write_video(read_video(world["video"])[:1], tmp_path / "one.mp4")
    out = tmp_path / "scores.json"
    assert run(one, "-p", caption(RED_SQUARE, RIGHT), "--clip-model", "nano", "--metrics", "nano_i,t_cons", "--probe",
               "--ref-images", world["own"], "--json", out) == 0
    video = json.loads(out.read_text())["videos"][0]
    assert video["metrics"]["nano_t_cons"] is None and video["metrics"]["probe_motion"] is None
    assert video["metrics"]["probe_colour"] == 1.0 and video["metrics"]["nano_i"] > 0.5
    assert video["notes"]["frames"] == "one frame: nano T.Cons, probe motion need two or more"
    assert f"{one}: one frame: nano T.Cons, probe motion need two or more" in capsys.readouterr().err


def test_a_manifest_line_without_references_shows_n_a_not_a_blank(world, tmp_path, capsys):
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{world['video']}|||{world['own']}|||a square moving right\n"
                        f"{world['video']}||||||a square moving right\n")
    assert run("--manifest", manifest, "--clip-model", "nano") == 0  # nano-I only where there are references
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if "clip.mp4" in line]
    assert [row[1] for row in rows] == [rows[0][1], "n/a"] and float(rows[0][1]) > 0.5, rows  # nano-I


def test_the_probe_flag_adds_the_probe_to_other_metrics_without_a_model(world, tmp_path):
    out = tmp_path / "scores.json"
    prompt = caption(RED_SQUARE, RIGHT)
    args = [world["video"], "-p", prompt, "--probe", "--metrics", "motion", "--ref-video", world["video"]]
    assert run(*args, "--json", out) == 0
    report = json.loads(out.read_text())
    assert set(report["videos"][0]["metrics"]) == {"motion_fidelity", "probe_colour", "probe_shape", "probe_motion"}
    assert "clip" not in report["models"] and "nano" not in report["models"]


def test_no_probe_leaves_the_probe_out_of_nanos_auto_metrics_and_contradicting_metrics_are_refused(
        world, tmp_path, capsys):
    prompt = caption(RED_SQUARE, RIGHT)
    for flags, probed in (([], True), (["--no-probe"], False)):
        out = tmp_path / f"scores{len(flags)}.json"
        assert run(world["video"], "-p", prompt, "--clip-model", "nano", *flags, "--json", out) == 0
        metrics = set(json.loads(out.read_text())["videos"][0]["metrics"])
        assert ({"probe_colour", "probe_shape", "probe_motion"} <= metrics) is probed, metrics
        assert "nano_t_cons" in metrics
    capsys.readouterr()
    assert run(world["video"], "-p", prompt, "--no-probe", "--metrics", "t_cons,probe_motion") == 2
    err = capsys.readouterr().err
    assert "probe is off (--no-probe) but --metrics names probe metrics: pass only one of them" in err


def test_nano_i_ranks_the_videos_own_sprite_first_through_the_cli(world, tmp_path):
    scores = []
    for folder in ("own", "other"):
        out = tmp_path / f"{folder}.json"
        args = [world["video"], "--ref-images", world[folder], "--clip-model", "nano", "--metrics", "nano-I"]
        assert run(*args, "--json", out) == 0
        scores.append(json.loads(out.read_text())["videos"][0]["metrics"]["nano_i"])
    assert scores[0] > scores[1]


def test_only_nano_t_asked_for_is_one_error_line_saying_why(world, capsys):
    assert run(world["video"], "-p", "a dog", "--clip-model", "nano", "--metrics", "clip_t") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no metric can be computed" in errors[0] and "no projection" in errors[0]


@pytest.mark.parametrize("base, expected", [("nano", "nano"), ("tiny", "clip"), (None, "clip")])
def test_the_default_clip_model_follows_the_base_that_generated_the_video(
    base, expected, world, tmp_path, capsys, monkeypatch
):
    """With no --clip-model, a video whose generate config names nano is scored with nano's towers (offline);
    any other base, or no config, asks for OpenAI CLIP, which this offline machine has not got."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")  # the choice is said in an info line
    if base:
        world["video"].with_suffix(".yaml").write_text(f"backbone:\n  base: {base}\nprompt: a red square\n")
    out = tmp_path / "scores.json"
    code = run(world["video"], "--ref-images", world["own"], "--metrics", "clip_i", "--json", out)
    captured = capsys.readouterr()
    err = captured.out + captured.err
    if expected == "nano":
        assert code == 0 and "scoring with nano's own towers" in err, err
        assert json.loads(out.read_text())["videos"][0]["metrics"]["nano_i"] > 0.5
    else:
        assert code == 2 and "openai/clip-vit-base-patch32" in err and "nano's own towers" not in err, err


def test_a_library_subject_on_nano_makes_the_default_clip_model_nano(world, tmp_path, isolated_home, capsys):
    _nano_subject(world, isolated_home)
    assert run(world["video"], "--subject", "S*", "--metrics", "clip_i", "--json", tmp_path / "s.json") == 0, (
        capsys.readouterr().err
    )
    assert "nano_i" in json.loads((tmp_path / "s.json").read_text())["videos"][0]["metrics"]


def test_a_prompt_naming_part_of_the_truth_is_probed_for_that_part(world, tmp_path, capsys):
    """'a S* square moving right' less its pseudo-word names the shape and the motion but not the colour."""
    out = tmp_path / "scores.json"
    assert run(world["video"], "-p", "a square moving right", "--metrics", "probe", "--json", out) == 0
    video = json.loads(out.read_text())["videos"][0]
    assert video["metrics"]["probe_colour"] is None and video["metrics"]["probe_motion"] == 1.0
    assert video["metrics"]["probe_shape"] == 1.0  # the clip's sprite is a square
    assert "probe colour n/a: prompt 'a square moving right' names no colour" in video["notes"]["probe"]
    assert main(["evaluate", str(world["video"]), "-p", "a square moving left", "--metrics", "probe_motion",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["videos"][0]["metrics"]["probe_motion"] == 0.0
    assert run(world["video"], "-p", "a circle moving right", "--metrics", "probe_shape", "--json", out) == 0
    assert json.loads(out.read_text())["videos"][0]["metrics"]["probe_shape"] == 0.0


def test_a_prompt_naming_no_colour_is_probed_against_the_reference_images_colour(world, tmp_path, isolated_home,
                                                                                 capsys, monkeypatch):
    """'a S* square moving right' with --subject S*: the pseudo-word carries the colour, so the probe compares the
    video's colour with the one it reads in the subject's photos (red), or in other reference images (blue)."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    _nano_subject(world, isolated_home)
    out = tmp_path / "scores.json"
    assert run(world["video"], "--subject", "S*", "-p", "a S* square moving right", "--metrics", "probe",
               "--json", out) == 0
    video = json.loads(out.read_text())["videos"][0]
    assert video["reference_colour"] == "red" and video["notes"] == {}
    assert video["metrics"]["probe_colour"] == 1.0 and video["metrics"]["probe_motion"] == 1.0
    err = " ".join(capsys.readouterr().err.split())
    assert "clip.mp4, whose prompt names no colour: against red, the colour of the reference images " in err
    assert run(world["video"], "--ref-images", world["other"], "-p", "a square moving right", "--metrics", "probe",
               "--json", out) == 0
    video = json.loads(out.read_text())["videos"][0]
    assert video["reference_colour"] == "blue" and video["metrics"]["probe_colour"] == 0.0
    assert run(world["video"], "--ref-images", world["other"], "-p", "a red square moving right", "--metrics",
               "probe", "--json", out) == 0
    video = json.loads(out.read_text())["videos"][0]  # a colour the prompt names is the truth
    assert video["reference_colour"] is None and video["metrics"]["probe_colour"] == 1.0


def test_reference_images_of_no_one_colour_leave_probe_colour_unscored(world, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for index, photo in enumerate([*Path(world["own"]).glob("[01].png"), *Path(world["other"]).glob("[01].png")]):
        (mixed / f"{index}.png").write_bytes(photo.read_bytes())
    out = tmp_path / "scores.json"
    assert run(world["video"], "--ref-images", mixed, "-p", "a square moving right", "--metrics", "probe",
               "--json", out) == 0
    video = json.loads(out.read_text())["videos"][0]
    assert video["reference_colour"] is None and video["metrics"]["probe_colour"] is None
    assert video["notes"]["probe"] == ("probe colour n/a: prompt 'a square moving right' names no colour and the "
                                       "reference images show no one colour")


def test_a_manifest_line_whose_reference_folder_cannot_be_read_fails_alone(world, tmp_path, capsys, monkeypatch):
    """The reference colour is read after scoring: a line whose folder holds no image is one failure, and the
    line whose photos are red is probed against red."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    (tmp_path / "empty").mkdir()
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{world['video']}|||{tmp_path / 'empty'}|||a square moving right\n"
                        f"{world['video']}|||{world['own']}|||a square moving right\n")
    out = tmp_path / "scores.json"
    assert run("--manifest", manifest, "--metrics", "probe", "--json", out) == 1
    failed, scored = json.loads(out.read_text())["videos"]
    assert "no readable image" in failed["error"] and failed["reference_colour"] is None
    assert scored["reference_colour"] == "red" and scored["metrics"]["probe_colour"] == 1.0
    err = " ".join(capsys.readouterr().err.split())
    assert "clip.mp4, whose prompt names no colour: against red, the colour of the reference images" in err, err


def test_the_probe_reads_every_colour_from_the_worlds_photos():
    from vidbooth.eval.evaluate import images_colour
    from vidbooth.nano.world import COLOURS, PATTERNS, SHAPES

    for index, colour in enumerate(COLOURS):
        for shape in SHAPES:
            sprite = Sprite(shape, colour, PATTERNS[index % len(PATTERNS)])
            photos = render_photos(sprite, n=4, seed=index)
            assert images_colour(photos) == colour, sprite
    grey = [np.full((64, 64, 3), 128, np.uint8)] * 3
    assert images_colour(grey) is None and images_colour([]) is None


def _nano_subject(world, home: Path) -> None:
    subject = home / "subjects" / "S%2A"
    (subject / "photos").mkdir(parents=True)
    for photo in Path(world["own"]).iterdir():
        (subject / "photos" / photo.name).write_bytes(photo.read_bytes())
    manifest = {"kind": "subject", "name": "S*", "schema_version": 1, "base": "nano", "paths": {}, "files": {}}
    (subject / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("extra, expected", [
    (["nope.mp4"], "error: video not found: nope.mp4"),
    (["VIDEO", "--ref-video", "nothere.mp4"], "nothere.mp4"),
])
def test_bad_input_with_a_nano_subject_is_one_error_line_and_no_tower_line(
    extra, expected, world, isolated_home, capsys, monkeypatch
):
    """The choice of nano's towers is said only once the inputs are checked: a bad one is the only line."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    _nano_subject(world, isolated_home)
    args = [str(world["video"]) if arg == "VIDEO" else arg for arg in extra]
    assert run(*args, "--subject", "S*") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines


def test_motion_fidelity_alone_says_nothing_of_the_towers_it_does_not_use(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    world["video"].with_suffix(".yaml").write_text("backbone:\n  base: nano\nprompt: a red square moving right\n")
    out = tmp_path / "scores.json"
    assert run(world["video"], "--ref-video", world["video"], "--metrics", "motion", "--json", out) == 0
    captured = capsys.readouterr()
    assert "towers" not in captured.out + captured.err, captured.err
    assert json.loads(out.read_text())["videos"][0]["metrics"]["motion_fidelity"] > 0.9


def test_nano_t_asked_for_is_reported_unavailable_with_its_reason(world, tmp_path):
    out = tmp_path / "scores.json"
    args = [world["video"], "-p", caption(RED_SQUARE, RIGHT), "--clip-model", "nano", "--metrics", "clip_t,t_cons"]
    assert run(*args, "--json", out) == 0
    report = json.loads(out.read_text())
    assert report["videos"][0]["metrics"]["nano_t"] is None and "no projection" in report["unavailable"]["nano_t"]


def test_a_library_subject_or_motion_without_its_training_inputs_names_the_flag_to_give_them(
        world, isolated_home, capsys):
    """A subject without photos/ had been 'reference image folder not found: ...: check the spelling', a message for
    a mistyped path the user never typed."""
    _nano_subject(world, isolated_home)
    for photo in (isolated_home / "subjects" / "S%2A" / "photos").iterdir():  # an empty folder, then none
        photo.unlink()
    motion = isolated_home / "motions" / "M"
    motion.mkdir(parents=True)
    (motion / "manifest.json").write_text(json.dumps({"kind": "motion", "name": "M", "schema_version": 1,
                                                      "paths": {}, "files": {}}))
    photos = isolated_home / "subjects" / "S%2A" / "photos"
    for flag, name, expected in (("--subject", "S*", f"subject 'S*' has no training photos in {photos}: pass "
                                  "reference images with --ref-images"),
                                 ("--motion", "M", f"motion 'M' has no training clip in {motion / 'clips'}: pass the "
                                  "clip with --ref-video")):
        assert run(world["video"], flag, name) == 2
        assert capsys.readouterr().err == f"error: {expected} instead\n"
    photos.rmdir()
    assert run(world["video"], "--subject", "S*") == 2
    assert "has no training photos in" in capsys.readouterr().err


def test_a_video_without_a_prompt_is_probed_as_n_a_saying_the_probe_needs_a_world_caption(world, tmp_path):
    out = tmp_path / "scores.json"
    assert run(world["video"], "--metrics", "probe", "--json", out) == 0
    video = json.loads(out.read_text())["videos"][0]
    assert video["prompt"] is None
    assert video["metrics"] == dict.fromkeys(("probe_colour", "probe_shape", "probe_motion"))
    assert video["notes"]["probe"] == ("probe metrics n/a: no prompt (the probe needs a world caption, e.g. 'a red "
                                       "striped square moving left')")
