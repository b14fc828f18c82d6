"""`vidbooth evaluate` end to end through `vidbooth.cli.app.main`, with tiny CLIP/ViT models saved to disk."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from badinputs import capture_warnings, write_clip_file
from media import moving_square, smooth_image
from PIL import Image

from vidbooth.cli.app import main
from vidbooth.data.video import read_video, write_video
from vidbooth.errors import UserError
from vidbooth.eval import metrics as embedding_metrics
from vidbooth.eval.evaluate import requested_metrics
from vidbooth.eval.features import load_clip, load_dino
from vidbooth.eval.motion import motion_fidelity
from vidbooth.eval.references import read_image_folder


@pytest.fixture
def media(tmp_path) -> dict[str, Path]:
    """Two generated videos (moving right, moving left), a reference clip (moving right) and reference photos."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(20 + i)).save(photos / f"photo{i}.png")
    (tmp_path / "empty").mkdir()
    return {
        "right": write_video(moving_square(frames=8), tmp_path / "right.mp4"),
        "left": write_video(moving_square(frames=8)[::-1].copy(), tmp_path / "left.gif"),
        "reference_clip": write_video(moving_square(frames=10, seed=3, background=90), tmp_path / "reference.gif"),
        "still": write_video(np.stack([smooth_image(0)] * 4), tmp_path / "still.mp4"),
        "photos": photos,
        "empty": tmp_path / "empty",
    }


def run(*args: object) -> int:
    return main(["evaluate", *map(str, args)])


def models(clip: Path, dino: Path) -> list[str]:
    return ["--clip-model", str(clip), "--dino-model", str(dino)]


def error_lines(captured) -> list[str]:
    return [line for line in captured.err.splitlines() if line.startswith("error:")]


def dino_i(video: Path, photos: Path, dino) -> float:
    """DINO-I of `video` against the images in `photos` with the loaded `dino`, from the library's own functions."""
    return embedding_metrics.reference_similarity(
        dino.image_embeds(read_video(video)), dino.image_embeds(read_image_folder(photos))
    )


def expected_metrics(video: Path, prompt: str, photos: Path, reference_clip: Path, clip, dino) -> dict:
    """Every metric of `video` with the loaded `clip` and `dino`, from the library's own metric functions."""
    frames = read_video(video)
    frame_embeds, photo_embeds = clip.image_embeds(frames), clip.image_embeds(read_image_folder(photos))
    return {
        "clip_t": embedding_metrics.clip_t(frame_embeds, clip.text_embeds([prompt])[0]),
        "clip_i": embedding_metrics.reference_similarity(frame_embeds, photo_embeds),
        "dino_i": dino_i(video, photos, dino),
        "t_cons": embedding_metrics.temporal_consistency(frame_embeds),
        "motion_fidelity": motion_fidelity(frames, read_video(reference_clip)),
    }


def test_every_metric_is_computed_and_written_as_json_and_csv(media, tiny_clip_dir, tiny_vit_dir, tmp_path):
    out_json, out_csv = tmp_path / "results" / "scores.json", tmp_path / "results" / "scores.csv"
    references = ["--ref-images", media["photos"], "--ref-video", media["reference_clip"]]
    outputs = ["--json", out_json, "--csv", out_csv]
    videos = [media["right"], media["left"]]
    code = run(*videos, "--prompt", "a square", *references, *models(tiny_clip_dir, tiny_vit_dir), *outputs)
    assert code == 0
    report = json.loads(out_json.read_text())
    right, left = (video["metrics"] for video in report["videos"])
    assert set(right) == {"clip_t", "clip_i", "dino_i", "t_cons", "motion_fidelity"}
    assert right["motion_fidelity"] > 0.9 and left["motion_fidelity"] < 0.2
    inputs = ("a square", media["photos"], media["reference_clip"], load_clip(str(tiny_clip_dir)),
              load_dino(str(tiny_vit_dir)))
    assert right == pytest.approx(expected_metrics(media["right"], *inputs), abs=1e-5)
    assert left == pytest.approx(expected_metrics(media["left"], *inputs), abs=1e-5)
    for name, summary in report["aggregate"].items():
        assert summary["count"] == 2
        assert summary["mean"] == pytest.approx((right[name] + left[name]) / 2)
    assert report["failed"] == 0 and report["unavailable"] == {}
    assert report["models"]["clip"]["name"] == str(tiny_clip_dir)
    assert report["models"]["clip"]["class"] == "CLIPModel" and report["models"]["dino"]["class"] == "ViTModel"
    assert "farneback" in report["models"]["motion"]["method"]
    import transformers

    assert report["versions"]["transformers"] == transformers.__version__ and report["versions"]["vidbooth"]
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["video"] for row in rows] == [str(media["right"]), str(media["left"])]
    assert float(rows[1]["motion_fidelity"]) == pytest.approx(left["motion_fidelity"])
    assert not list(out_json.parent.glob(".tmp-*"))


def test_a_manifest_batch_reports_bad_lines_keeps_going_and_exits_1(
    media, tiny_clip_dir, tiny_vit_dir, tmp_path, capsys
):
    manifest = tmp_path / "list.txt"
    manifest.write_text(
        "# video|||reference images|||prompt\n"
        f"right.mp4|||photos|||a square moving right\n"
        f"missing.mp4|||photos|||a square\n"
        f"left.gif|||photos\n"
        f"\n"
        f"left.gif|||empty|||a square\n"
        f"{media['left']}|||{media['photos']}|||a square moving left\n"
        f"right.mp4|||photos|||a square|||moving right\n"  # had been scored against 'a square|||moving right'
    )
    out_json = tmp_path / "scores.json"
    code = run("--manifest", manifest, *models(tiny_clip_dir, tiny_vit_dir), "--json", out_json)
    assert code == 1
    videos = json.loads(out_json.read_text())["videos"]
    assert [video["error"] is None for video in videos] == [True, False, False, False, True, False]
    assert videos[0]["prompt"] == "a square moving right" and videos[0]["metrics"]["clip_i"] is not None
    assert videos[4]["metrics"]["dino_i"] is not None
    errors = error_lines(capsys.readouterr())
    assert any("list.txt line 3" in line and "missing.mp4" in line for line in errors)
    assert any("list.txt line 4" in line and "expected 'video|||" in line for line in errors)
    assert any("list.txt line 6" in line and "no readable image" in line for line in errors)
    assert any("list.txt line 8" in line and "(4 fields)" in line for line in errors)
    assert errors[-1] == "error: 4 of 6 videos could not be evaluated: see above"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unreadable video", "broken.mp4: it is corrupt, truncated or in an unsupported codec; re-encode it, e.g. "
                             "ffmpeg -i "),
        ("empty reference folder", "holds no readable image"),
        ("reference file that is no image", "is neither a folder nor a"),
        ("no prompt", "no prompt for"),
        ("unknown metric", "unknown metric(s) sharpness"),
        ("unmatched glob", "matches no video"),
        ("no prompt for any video of a batch", "no prompt for"),
        ("motion without a reference", "needs a reference motion"),
        ("reference clip without motion", "shows no motion"),
        ("a subject and reference images", "--subject and --ref-images both give reference images: pass only one"),
        ("a motion and a reference clip", "--motion and --ref-video both give a reference motion: pass only one"),
        ("an image metric without references", "no reference images for"),
        ("no video", "no video to evaluate: give one or more VIDEO files or globs, or --manifest FILE"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(case, expected, media, tiny_clip_dir, tiny_vit_dir, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    args = {
        "unreadable video": [broken, "--prompt", "x"],
        "empty reference folder": [media["right"], "--prompt", "x", "--ref-images", media["empty"]],
        "reference file that is no image": [media["right"], "--prompt", "x", "--ref-images", broken],
        "no prompt": [media["right"]],
        "unknown metric": [media["right"], "--prompt", "x", "--metrics", "clip_t,sharpness"],
        "unmatched glob": [tmp_path / "nothing-*.mp4", "--prompt", "x"],
        "no prompt for any video of a batch": [media["right"], media["left"]],
        "motion without a reference": [media["right"], "--prompt", "x", "--metrics", "motion"],
        "reference clip without motion": [media["right"], "--prompt", "x", "--ref-video", media["still"]],
        "a subject and reference images": [media["right"], "-p", "x", "--subject", "S*", "--ref-images",
                                           media["photos"]],
        "a motion and a reference clip": [media["right"], "-p", "x", "--motion", "M", "--ref-video", media["still"]],
        "an image metric without references": [media["right"], "--prompt", "x", "--metrics", "clip_i"],
        "no video": ["--prompt", "x"],
    }[case]
    assert run(*args, *models(tiny_clip_dir, tiny_vit_dir)) == 2
    errors = error_lines(capsys.readouterr())
    assert len(errors) == 1 and expected in errors[0]


def test_an_unavailable_model_is_reported_and_the_other_metrics_still_run(media, tiny_vit_dir, tmp_path, capsys):
    out_json = tmp_path / "scores.json"
    missing = tmp_path / "no-clip-here"
    args = [media["right"], "-p", "x", "--ref-images", media["photos"], *models(missing, tiny_vit_dir)]
    code = run(*args, "--json", out_json)
    assert code == 0
    report = json.loads(out_json.read_text())
    assert set(report["unavailable"]) == {"clip_t", "clip_i", "t_cons"}
    assert all("pass --clip-model <local folder> (--clip-model nano for videos of nano)" in reason
               for reason in report["unavailable"].values())
    assert report["models"]["clip"]["status"] == "unavailable"
    metrics = report["videos"][0]["metrics"]
    assert metrics["clip_t"] is None
    assert metrics["dino_i"] == pytest.approx(dino_i(media["right"], media["photos"], load_dino(str(tiny_vit_dir))), abs=1e-5)
    assert "CLIP-T, CLIP-I, T.Cons unavailable" in capsys.readouterr().err


def test_when_no_metric_can_be_computed_the_run_fails_saying_how_to_fix_it(media, tmp_path, capsys):
    assert run(media["right"], "-p", "x", "--clip-model", tmp_path / "missing") == 2
    errors = error_lines(capsys.readouterr())
    assert len(errors) == 1 and "no metric can be computed" in errors[0] and "--clip-model" in errors[0]


@pytest.mark.parametrize(
    "video, expected",
    [("missing.mp4", "video not found"), ("empty.mp4", "(0 bytes)"), ("empty.mp4", "copy or export it again"),
     ("photos", "is a folder, not a video file: give a video file in it, or all of them as a quoted pattern: "),
     ("notes.txt", "unsupported video type '.txt'")],
)
def test_a_video_that_is_not_there_is_the_error_before_any_model_loads(video, expected, media, tmp_path, capsys,
                                                                       monkeypatch):
    """A mistyped path is named, not hidden behind the default CLIP model's 'not in the cache' (offline)."""
    (tmp_path / "empty.mp4").touch()
    (tmp_path / "notes.txt").write_text("not a video")
    loaded = []
    monkeypatch.setattr("vidbooth.eval.evaluate._Scorer.load_models", lambda self, *args: loaded.append(args))
    assert run(tmp_path / video, "-p", "x", "--clip-model", tmp_path / "missing") == 2
    errors = error_lines(capsys.readouterr())
    assert len(errors) == 1 and expected in errors[0] and video in errors[0], errors
    assert loaded == []


@pytest.mark.parametrize("flag, target, expected", [
    ("--json", "right.mp4", "--json {} must end in .json"),  # was: the video replaced by the scores
    ("--csv", "right.mp4", "--csv {} must end in .csv"),
    ("--json", "photos", "--json {} is a folder: give a file in it"),  # was: a traceback
    ("--csv", "right.mp4/scores.csv", "is not a folder; choose another --csv"),  # was: 'choose another place'
])
def test_an_output_that_is_not_a_file_of_its_type_is_refused_and_nothing_is_replaced(flag, target, expected, media,
                                                                                     tmp_path, capsys):
    path = tmp_path / target
    before = sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*"))
    assert run(media["right"], "-p", "x", "--clip-model", "nano", "--metrics", "t_cons", flag, path) == 2
    errors = error_lines(capsys.readouterr())
    assert len(errors) == 1 and expected.format(path) in errors[0], errors
    assert sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*")) == before
    assert read_video(media["right"]).shape[0] == 8


def test_a_batch_in_which_every_video_fails_is_its_errors_and_no_empty_table(media, tmp_path, capsys):
    (tmp_path / "empty.mp4").touch()
    assert run(tmp_path / "missing.mp4", tmp_path / "empty.mp4", "-p", "x", "--clip-model", "nano") == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == ""
    errors = error_lines(captured)
    assert len(errors) == 3 and "video not found" in errors[0] and "(0 bytes)" in errors[1], errors
    assert errors[2] == "error: 2 of 2 videos could not be evaluated: see above"


def test_subject_photos_and_motion_clips_come_from_the_library(media, tiny_clip_dir, tiny_vit_dir, tmp_path, capsys):
    from vidbooth.library import artifact_dir

    subject = artifact_dir("subject", "S*", must_exist=False)
    (subject / "photos").mkdir(parents=True)
    trained_on = {"file": "photos/a.jpg", "sha256": "0" * 64}  # not this photo: it was changed since
    (subject / "manifest.json").write_text(json.dumps({"name": "S*", "kind": "subject", "photos": [trained_on]}))
    Image.fromarray(smooth_image(7)).save(subject / "photos" / "a.jpg")
    motion = artifact_dir("motion", "slide", must_exist=False)
    (motion / "clips").mkdir(parents=True)
    (motion / "manifest.json").write_text(json.dumps({"name": "slide", "kind": "motion"}))
    (motion / "clips" / "clip.gif").write_bytes(media["reference_clip"].read_bytes())
    out_json = tmp_path / "scores.json"
    args = [media["right"], "-p", "x", "--subject", "S*", "--motion", "slide", *models(tiny_clip_dir, tiny_vit_dir)]
    assert run(*args, "--json", out_json) == 0
    report = json.loads(out_json.read_text())
    assert report["videos"][0]["reference_images"] == str(subject / "photos")
    assert f"warning: subject 'S*': {subject / 'photos' / 'a.jpg'} differs from the photo it was trained on" in (
        capsys.readouterr().err)
    assert report["reference_motion"] == [str(motion / "clips" / "clip.gif")]
    assert report["videos"][0]["metrics"]["motion_fidelity"] > 0.9
    assert run(media["right"], "-p", "x", "--subject", "nobody", *models(tiny_clip_dir, tiny_vit_dir)) == 2
    assert "unknown subject 'nobody'" in error_lines(capsys.readouterr())[0]


def test_a_glob_evaluates_every_matching_video(media, tiny_clip_dir, tiny_vit_dir, tmp_path):
    out_json = tmp_path / "scores.json"
    pattern = tmp_path / "*.gif"  # left.gif and reference.gif
    assert run(pattern, "-p", "x", "--metrics", "t-cons", *models(tiny_clip_dir, tiny_vit_dir), "--json", out_json) == 0
    videos = json.loads(out_json.read_text())["videos"]
    assert [Path(v["video"]).name for v in videos] == ["left.gif", "reference.gif"]
    assert all(list(v["metrics"]) == ["t_cons"] for v in videos)


def test_metric_names_are_read_leniently_and_checked():
    assert requested_metrics(["auto"]) is None
    assert requested_metrics(["T.Cons,CLIP-T", "motion"]) == ["clip_t", "t_cons", "motion_fidelity"]
    with pytest.raises(UserError, match="choose from auto, clip_t"):
        requested_metrics(["fvd"])
    assert requested_metrics(["clip_i, dino_i"]) == ["clip_i", "dino_i"]


def test_a_generated_video_is_scored_against_the_prompt_it_was_generated_from(
    media, tiny_clip_dir, tiny_vit_dir, tmp_path, capsys
):
    """`vidbooth generate` writes out.yaml beside out.mp4: without --prompt, CLIP-T uses its prompt with the
    subject's pseudo-word taken out, as the README's `evaluate out.mp4 --subject S* --motion M` expects."""
    video = media["right"]
    video.with_suffix(".yaml").write_text("prompt: S* square moving right, as s* does, not XS*\nsubjects: [S*]\n")
    out_json = tmp_path / "scores.json"
    assert run(video, "--metrics", "clip_t", *models(tiny_clip_dir, tiny_vit_dir), "--json", out_json) == 0
    result = json.loads(out_json.read_text())["videos"][0]
    assert result["prompt"] == "square moving right, as does, not XS*"  # as tokenized: any case, whole words
    clip = load_clip(str(tiny_clip_dir))
    expected = embedding_metrics.clip_t(clip.image_embeds(read_video(video)), clip.text_embeds([result["prompt"]])[0])
    assert result["metrics"]["clip_t"] == pytest.approx(expected, abs=1e-5)
    # an explicit --prompt wins; a video without a readable config beside it still needs one
    assert run(video, "-p", "a ball", "--metrics", "clip_t", *models(tiny_clip_dir, tiny_vit_dir), "--json", out_json) == 0
    assert json.loads(out_json.read_text())["videos"][0]["prompt"] == "a ball"
    capsys.readouterr()
    video.with_suffix(".yaml").write_text("prompt: [unclosed\n")
    assert run(video, "--metrics", "clip_t", *models(tiny_clip_dir, tiny_vit_dir)) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()  # the error alone did not say why
    assert warning.startswith(f"warning: {video.with_suffix('.yaml')} beside the video is not valid YAML (did not "
                              "find expected ',' or ']' at line 2, column 1)")  # had said 'while parsing a flow ...'
    assert error.startswith(f"error: no prompt for {video}")


def test_a_given_prompt_is_scored_without_the_subjects_pseudo_word(media, tiny_clip_dir, tiny_vit_dir, tmp_path,
                                                                    capsys, monkeypatch):
    """`-p "a S* square moving right" --subject S*`: CLIP-T (and the probe) score the prompt without S*."""
    from vidbooth import library

    monkeypatch.setenv("VIDBOOTH_QUIET", "0")  # the change is said in an info line

    with library.staged_artifact("subject", "S*") as stage:  # a subject whose photos are the reference images
        (stage / "photos").mkdir()
        for photo in media["photos"].iterdir():
            (stage / "photos" / photo.name).write_bytes(photo.read_bytes())
        library.write_json(stage / library.MANIFEST, {"kind": "subject", "name": "S*"})
    out_json = tmp_path / "scores.json"
    code = run(media["right"], "-p", "a s* square moving right", "--subject", "S*", "--metrics", "clip_t",
               *models(tiny_clip_dir, tiny_vit_dir), "--json", out_json)
    assert code == 0, capsys.readouterr().err
    assert json.loads(out_json.read_text())["videos"][0]["prompt"] == "a square moving right"
    assert 'scoring against "a square moving right": the prompt without S*' in capsys.readouterr().err
    # a manifest line's own prompt too (it had been scored with S*), beside a line without one
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{media['right']}||||||a S* square moving right\n{media['right']}||||||a square\n")
    code = run("--manifest", manifest, "--subject", "S*", "--metrics", "clip_t", *models(tiny_clip_dir, tiny_vit_dir),
               "--json", out_json)
    assert code == 0, capsys.readouterr().err
    assert [v["prompt"] for v in json.loads(out_json.read_text())["videos"]] == ["a square moving right", "a square"]
    assert "scoring 1 manifest prompt(s) without S*, which CLIP never saw" in capsys.readouterr().err


def test_in_a_batch_a_video_without_its_own_prompt_fails_alone(media, tiny_clip_dir, tiny_vit_dir, tmp_path, capsys):
    """Without --prompt each video's prompt is its own (from the config beside it): one video lacking it fails
    that video, exit 1, and the others are still scored."""
    media["right"].with_suffix(".yaml").write_text("prompt: a square moving right\n")
    out_json = tmp_path / "scores.json"
    code = run(media["right"], media["still"], "--metrics", "clip_t", *models(tiny_clip_dir, tiny_vit_dir),
               "--json", out_json)
    assert code == 1
    assert error_lines(capsys.readouterr()) == [
        f"error: no prompt for {media['still']}: CLIP-T needs one; pass --prompt, or choose --metrics without clip_t",
        "error: 1 of 2 videos could not be evaluated: see above",
    ]
    videos = json.loads(out_json.read_text())["videos"]
    assert [v["prompt"] for v in videos][:1] == ["a square moving right"] and "clip_t" in videos[0]["metrics"]


def test_reference_folders_read_every_photo_type_that_subject_training_takes(tmp_path, capsys):
    """A subject's photos are copied into the library as given: a .tiff or .gif one must count as a reference."""
    for i, suffix in enumerate((".png", ".tiff", ".gif")):
        Image.fromarray(smooth_image(i)).save(tmp_path / f"photo{i}{suffix}")
    (tmp_path / "._photo0.png").write_bytes(b"macOS metadata, not an image")
    images = read_image_folder(tmp_path)
    assert len(images) == 3 and all(image.shape == (48, 64, 3) for image in images)
    assert "skipping" not in capsys.readouterr().err  # the hidden file is not an image to skip


def test_one_photo_is_a_reference_too(media, tiny_clip_dir, tiny_vit_dir, tmp_path):
    """An image prompt's photo, given as it is: the same scores as a folder holding only it."""
    photo = media["photos"] / "photo0.png"
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "photo0.png").write_bytes(photo.read_bytes())
    one, folder = read_image_folder(photo), read_image_folder(alone)
    assert len(one) == len(folder) == 1 and np.array_equal(one[0], folder[0])
    results = []
    for reference in (photo, alone):
        out = tmp_path / f"{reference.name}.json"
        assert main(["evaluate", str(media["right"]), "-p", "x", "--ref-images", str(reference),
                     *models(tiny_clip_dir, tiny_vit_dir), "--json", str(out)]) == 0
        results.append(json.loads(out.read_text())["videos"][0]["metrics"]["clip_i"])
    assert results[0] is not None and results[0] == results[1]


def test_reference_images_are_read_as_subject_training_reads_photos(tmp_path, capsys):
    """CLIP-I/DINO-I compare with the photos as the subject learned them: transparency on white (not black),
    16-bit grey scaled to 8 bits (not clipped to white); a broken file is skipped with the reason."""
    cutout = np.zeros((64, 64, 4), np.uint8)
    cutout[16:48, 16:48] = (200, 50, 50, 255)
    Image.fromarray(cutout, "RGBA").save(tmp_path / "a-cutout.png")
    Image.fromarray(np.full((64, 64), 32768, np.uint16)).save(tmp_path / "b-grey16.png")
    (tmp_path / "c-broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cutout_read, grey_read = read_image_folder(tmp_path)
    assert cutout_read[0, 0].tolist() == [255, 255, 255] and cutout_read[32, 32].tolist() == [200, 50, 50]
    assert grey_read[0, 0].tolist() == [128, 128, 128]
    err = capsys.readouterr().err
    assert "skipping reference image" in err and "c-broken.jpg" in err and "corrupt" in err


def test_large_videos_are_scored_from_frames_shrunk_while_decoding(tmp_path, monkeypatch):
    """A long phone clip at full size would fill the memory; what evaluate decodes has a shorter side of 512, and
    the reference clip is read a frame at a time (a minute of 720p had taken 3.7 GB when it was held whole)."""
    import vidbooth.eval.evaluate as evaluate_module
    import vidbooth.eval.references as references_module
    from vidbooth.data.video import video_frames

    decoded, streamed = [], []

    def recording(path, **kwargs):
        frames = read_video(path, **kwargs)
        decoded.append(frames.shape)
        return frames

    def one_at_a_time(path, **kwargs):
        for frame in video_frames(path, **kwargs):
            streamed.append(frame.shape)
            yield frame

    monkeypatch.setattr(evaluate_module, "read_video", recording)
    monkeypatch.setattr(references_module, "video_frames", one_at_a_time)
    big = np.kron(moving_square(frames=6), np.ones((1, 9, 12, 1), np.uint8))  # 6 frames of 768x576 (w x h)
    video, clip = write_video(big, tmp_path / "big.mp4"), write_video(big[::-1].copy(), tmp_path / "clip.mp4")
    assert run(video, "--ref-video", clip, "--metrics", "motion", "--device", "cpu", "--json", tmp_path / "s.json") == 0
    assert decoded == [(6, 512, 683, 3)] and streamed == [(512, 683, 3)] * 6  # the video; the reference clip
    from vidbooth.eval.motion import motion_fidelity

    score = json.loads((tmp_path / "s.json").read_text())["videos"][0]["metrics"]["motion_fidelity"]
    assert score == pytest.approx(motion_fidelity(read_video(video, max_short_side=512),
                                                  read_video(clip, max_short_side=512)))  # as when held whole


@pytest.mark.parametrize("name", ["reference.webp", "reference.png"])
def test_an_animated_webp_or_png_is_a_reference_clip_and_a_video_as_a_gif_is(name, media, tmp_path):
    """Web pages' animations (Giphy's and Tenor's WebP, APNG) had been refused as of an unsupported video type."""
    gif = media["reference_clip"]
    animation = write_clip_file(read_video(gif), tmp_path / name)  # lossless: the GIF's frames, at its 8 fps
    scores = []
    for video, reference in ((media["right"], gif), (media["right"], animation), (animation, gif)):
        out = tmp_path / "s.json"
        assert run(video, "--ref-video", reference, "--metrics", "motion", "--device", "cpu", "--json", out) == 0
        scores.append(json.loads(out.read_text())["videos"][0]["metrics"]["motion_fidelity"])
    assert scores[1] == pytest.approx(scores[0]) and scores[2] == pytest.approx(1.0)


def test_a_video_longer_than_generate_makes_is_refused_without_being_held_whole(tmp_path, capsys):
    """A 1 KB GIF holding its second frame for 30 s reads as 1,501 frames at its 50 fps (an hour's hold, as 180,000:
    240 GiB at 512x512); evaluate holds and embeds every frame, so it stops reading past 1,024 and says so."""
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    gif = tmp_path / "held.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[20, 30_000], loop=0)
    assert run(gif, "--metrics", "nano_t_cons", "--clip-model", "nano") == 2
    errors = error_lines(capsys.readouterr())
    assert errors == [f"error: {gif} is longer than 1024 frames, the most vidbooth generates: evaluate a part of it "
                      "(ffmpeg -i IN -frames:v 1024 OUT.mp4)"]


def test_file_names_with_brackets_are_scored_shown_and_written(media, tmp_path, capsys):
    """Rich had read 'x[/].mp4' as markup: a traceback after scoring, and no JSON."""
    import shutil

    odd = tmp_path / "x[/].mp4"  # the file '].mp4' in the folder 'x['
    odd.parent.mkdir()
    shutil.copy(media["right"], odd)
    bold = shutil.copy(media["right"], tmp_path / "take[bold].mp4")
    out = tmp_path / "scores.json"
    assert run(odd, bold, "--clip-model", "nano", "-p", "a square", "--metrics", "t_cons", "--json", out) == 0
    shown = capsys.readouterr().out
    assert "x[/].mp4" in shown and "take[bold].mp4" in shown
    assert [v["video"] for v in json.loads(out.read_text())["videos"]] == [str(odd), str(bold)]


def test_a_tilde_in_output_and_reference_paths_is_the_home_folder(media, tmp_path, monkeypatch):
    """`--json=~/scores.json` reaches vidbooth unexpanded (the shell expands ~ only at a word's start)."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    shutil.copy(media["reference_clip"], tmp_path / "home" / "ref.gif")
    monkeypatch.chdir(tmp_path)
    assert run(media["right"], "--ref-video=~/ref.gif", "--metrics", "motion", "--json=~/s.json", "--csv=~/s.csv") == 0
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["ref.gif", "s.csv", "s.json"]
    assert not (tmp_path / "~").exists()


def test_an_unreadable_reference_image_is_warned_about_once(media, tmp_path, capsys):
    (media["photos"] / "bad.png").write_text("junk")
    assert run(media["right"], "--ref-images", media["photos"], "--clip-model", "nano", "--metrics", "nano_i") == 0
    assert capsys.readouterr().err.count("skipping reference image") == 1


def test_a_dino_model_that_goes_unused_is_warned_of(media, tiny_clip_dir, tiny_vit_dir, monkeypatch):
    """--dino-model without reference images, or with --metrics leaving DINO-I out, had been taken without a word."""
    warned = capture_warnings(monkeypatch)
    video, named = media["right"], models(tiny_clip_dir, tiny_vit_dir)
    assert run(video, "--prompt", "a square", *named) == 0
    assert run(video, "--ref-images", media["photos"], *named, "--metrics", "clip_i") == 0
    assert run(video, "--ref-images", media["photos"], *named, "--prompt", "a square") == 0  # used: no warning
    assert warned == [
        f"--dino-model {tiny_vit_dir} has no effect: DINO-I is not computed (it needs reference images: --subject or "
        "--ref-images)",
        f"--dino-model {tiny_vit_dir} has no effect: DINO-I is not computed (--metrics leaves dino_i out)",
    ]


@pytest.mark.parametrize("device, expected", [("cuda:7", "--device cuda:7: this machine has 1 GPU, cuda:0"),
                                              ("cuda:x", "unknown device 'cuda:x'")])
def test_a_gpu_that_is_not_there_is_one_error_line(device, expected, media, tiny_clip_dir, tiny_vit_dir, capsys,
                                                  monkeypatch):
    """evaluate had its own device check, which let any 'cuda...' through where CUDA exists: a traceback."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert run(media["right"], "-p", "x", "--device", device, *models(tiny_clip_dir, tiny_vit_dir)) == 2
    errors = error_lines(capsys.readouterr())
    assert len(errors) == 1 and expected in errors[0]


def test_the_mean_leaves_out_videos_without_the_metric():
    """(mutation testing: a mean over every video, failed ones included, had passed)"""
    from vidbooth.eval.report import EvaluationReport, VideoResult

    results = [VideoResult("a.mp4", metrics={"clip_t": 0.2}), VideoResult("b.mp4", metrics={"clip_t": 0.4}),
               VideoResult("c.mp4", metrics={"clip_t": None}), VideoResult("d.mp4", error="unreadable")]
    report = EvaluationReport(results, {}, {}, [], {})
    assert report.aggregate()["clip_t"] == {"mean": pytest.approx(0.3), "count": 2}


def test_the_last_video_of_a_run_of_several_has_the_runs_prompt(tmp_path):
    """(mutation testing: take-3 of three left without its prompt had passed)"""
    from vidbooth.eval.jobs import generated_prompt

    (tmp_path / "take.yaml").write_text("prompt: a dog\nnum_videos: 3\n")
    assert generated_prompt(tmp_path / "take-3.mp4") == "a dog"
    assert generated_prompt(tmp_path / "take-4.mp4") is None


def test_a_pseudo_word_that_begins_another_is_taken_out_where_the_tokenizer_reads_it(tmp_path):
    """Subjects T* and T*-2: 'T*-2' is the second's pseudo-word alone (it had lost its 'T*' to the first's, leaving
    '-2' in the prompt scored)."""
    from vidbooth.eval.jobs import generated_prompt

    (tmp_path / "take.yaml").write_text("prompt: a T* dog and a T*-2 cat\nsubjects: [T*, T*-2]\n")
    assert generated_prompt(tmp_path / "take.mp4") == "a dog and a cat"


@pytest.mark.parametrize(("prompt", "scored"), [("a *sks dog and a x*sks cat", "a dog and a x*sks cat"),
                                               ("a sks\u00b2 dog, a \u00bdsks cat", "a \u00b2 dog, a \u00bd cat")])
def test_a_pseudo_word_is_taken_out_only_where_the_tokenizer_reads_it(tmp_path, prompt, scored):
    """Subjects sks and *sks: 'x*sks' holds neither (it had lost its 'sks', leaving 'x*'); 'sks' before '²' is read
    (Python's word characters hold '²', the tokenizer's do not)."""
    from vidbooth.eval.jobs import generated_prompt

    (tmp_path / "take.yaml").write_text(f"prompt: {prompt}\nsubjects: [sks, '*sks']\n", encoding="utf-8")
    assert generated_prompt(tmp_path / "take.mp4") == scored


def test_a_pseudo_word_written_out_in_its_vectors_is_taken_out_whole(tmp_path):
    """T* of two vectors written 'T* T*_1', as generate takes it: 'T*_1' had been left in the prompt scored."""
    from vidbooth.eval.jobs import generated_prompt

    (tmp_path / "take.yaml").write_text("prompt: a T* t*_1 cat\nsubjects: [T*]\n")
    assert generated_prompt(tmp_path / "take.mp4") == "a cat"
    vectors = " ".join(f"T*_{index}" for index in range(1, 12))  # the 12th vector: two digits
    (tmp_path / "take.yaml").write_text(f"prompt: a T* {vectors} cat\nsubjects: [T*]\n")
    assert generated_prompt(tmp_path / "take.mp4") == "a cat"


def test_a_pseudo_word_typed_with_a_combining_accent_is_taken_out(tmp_path):
    """'cafe' + U+0301, as macOS may paste it, is subject 'café' to generate (it composes accents, NFC, as CLIP's
    tokenizer does): its yaml keeps the prompt as typed, whose pseudo-word had been left in the prompt scored."""
    from vidbooth.eval.jobs import generated_prompt

    (tmp_path / "take.yaml").write_text("prompt: a cafe\u0301 dog\nsubjects: [caf\u00e9]\n", encoding="utf-8")
    assert generated_prompt(tmp_path / "take.mp4") == "a dog"


def test_a_one_video_run_does_not_claim_a_video_named_like_the_first_of_several(tmp_path):
    """A one-video run at take.mp4 after a run of several at take.mp4 (or beside a clip named take-1.mp4) writes
    take.yaml with num_videos 1, for take.mp4 only: take-1.mp4, from the earlier run, had been scored against its
    prompt."""
    from vidbooth.eval.jobs import generated_prompt

    (tmp_path / "take.yaml").write_text("prompt: a cat\nout: take.mp4\nnum_videos: 1\n")
    assert generated_prompt(tmp_path / "take.mp4") == "a cat"
    assert generated_prompt(tmp_path / "take-1.mp4") is None


def test_motion_fidelity_is_the_mean_over_the_reference_clips(monkeypatch):
    """(mutation testing) A motion learned from several clips scored against its best clip alone went unseen."""
    import vidbooth.eval.evaluate as evaluate

    similarities = iter([0.2, 0.8])
    monkeypatch.setattr(evaluate, "motion_signature", lambda frames: "generated")
    monkeypatch.setattr(evaluate, "signature_similarity", lambda signature, reference: next(similarities))
    scorer = object.__new__(evaluate._Scorer)
    scorer._reference_signatures = ["clip 1", "clip 2"]
    assert scorer._motion_fidelity(np.zeros((2, 8, 8, 3), np.uint8)) == pytest.approx(0.5)


def test_auto_scores_with_nanos_towers_only_when_every_video_is_nanos(tmp_path, monkeypatch):
    """(mutation testing) Videos of nano and of another base together: CLIP scores them all."""
    import vidbooth.eval.evaluate as evaluate
    from vidbooth.config.evaluate import EvaluateConfig
    from vidbooth.eval.jobs import EvalJob

    bases = {"a.mp4": "nano", "b.mp4": "cerspense/zeroscope_v2_576w"}
    monkeypatch.setattr(evaluate, "generated_base", lambda video: bases[video])
    both = [EvalJob("a.mp4"), EvalJob("b.mp4")]
    assert evaluate._clip_model(EvaluateConfig(), both) == (evaluate.DEFAULT_CLIP_MODEL, False)
    assert evaluate._clip_model(EvaluateConfig(), both[:1]) == (evaluate.NANO_NAME, True)


def test_json_or_csv_given_as_a_dash_go_to_stdout_for_a_script_and_the_table_to_stderr(media, tmp_path, capsys,
                                                                                       monkeypatch):
    """A script had to write a temporary file to read the scores: `--json -` had been refused as not ending in
    .json, and stdout held a table drawn with box characters."""
    monkeypatch.chdir(tmp_path)  # where a file named '-' would be written
    args = [media["right"], media["still"], "-p", "a square", "--clip-model", "nano", "--metrics", "t_cons"]
    assert run(*args, "--json", "-", "--csv", tmp_path / "scores.csv") == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [video["video"] for video in report["videos"]] == [str(media["right"]), str(media["still"])]
    assert "nano_t_cons" in report["aggregate"] and "vidbooth evaluate" in captured.err  # the table, on stderr
    assert [row["video"] for row in csv.DictReader((tmp_path / "scores.csv").open())] == [
        str(media["right"]), str(media["still"])]  # the other output still a file
    assert run(*args, "--csv", "-") == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and not out.endswith("\n\n")
    rows = list(csv.DictReader(out.splitlines()))
    assert float(rows[0]["nano_t_cons"]) == pytest.approx(report["videos"][0]["metrics"]["nano_t_cons"])
    assert run(*args, "--json", "-", "--csv", "-") == 2
    assert error_lines(capsys.readouterr()) == ["error: --json - and --csv - both ask for stdout: give one of them a "
                                                "file"]
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("manifest that is a folder", "cannot read manifest {folder}: give a UTF-8 text file of "
                                      "video|||ref_dir|||prompt lines"),
        ("manifest that is not UTF-8", "cannot read manifest {latin}: give a UTF-8 text file"),
        ("manifest of comments only", "manifest {comments} has no video line: add lines of the form "
                                      "video|||ref_dir|||prompt"),
        ("missing reference folder", "reference image folder not found: {missing}: check the spelling"),
        ("reference clip of one frame", "reference motion clip {one} has a single frame: motion needs a clip with 2 "
                                        "or more frames"),
    ],
)
def test_an_unusable_manifest_or_reference_is_one_error_line_and_nothing_is_written(
        case, expected, media, tiny_clip_dir, tiny_vit_dir, tmp_path, capsys):
    paths = {"folder": tmp_path / "list", "latin": tmp_path / "latin.txt", "comments": tmp_path / "comments.txt",
             "missing": tmp_path / "no photos", "one": tmp_path / "one.mp4"}
    paths["folder"].mkdir()
    paths["latin"].write_bytes(f"{media['right']}||||||un caf\xe9 qui bouge\n".encode("latin-1"))
    paths["comments"].write_text("# video|||ref_dir|||prompt\n\n")
    write_video(read_video(media["right"])[:1], paths["one"])
    args = {
        "manifest that is a folder": ["--manifest", paths["folder"]],
        "manifest that is not UTF-8": ["--manifest", paths["latin"]],
        "manifest of comments only": ["--manifest", paths["comments"]],
        "missing reference folder": [media["right"], "-p", "x", "--ref-images", paths["missing"]],
        "reference clip of one frame": [media["right"], "-p", "x", "--metrics", "motion", "--ref-video", paths["one"]],
    }[case]
    out = tmp_path / "scores.json"
    assert run(*args, *models(tiny_clip_dir, tiny_vit_dir), "--json", out) == 2
    [error] = error_lines(capsys.readouterr())
    assert error.startswith("error: " + expected.format(**paths)), error
    assert not out.exists()


def test_a_manifest_saved_with_a_byte_order_mark_reads_its_first_line(media, tmp_path):
    """Notepad's UTF-8 starts with U+FEFF, which had become part of the first video's name: 'video not found'."""
    from vidbooth.eval.jobs import jobs_from_manifest

    manifest = tmp_path / "list.txt"
    manifest.write_bytes("right.mp4|||photos|||a square\n# a comment\n".encode("utf-8-sig"))
    (job,) = jobs_from_manifest(manifest, None, None)
    assert (job.video, job.problem) == (str(media["right"]), None)


def test_a_missing_prompt_or_reference_names_the_manifest_field_only_for_a_manifest_line():
    """Without a manifest the line had said 'fill the manifest's third field'; with one it names the line."""
    from vidbooth.eval.evaluate import _job_metrics, _MetricChoice
    from vidbooth.eval.jobs import EvalJob

    for metric, field in (("clip_t", "third"), ("clip_i", "second")):
        choice = _MetricChoice([metric], has_motion=False, nano=False, probe=False, dino=False)
        with pytest.raises(UserError) as alone:
            _job_metrics(EvalJob("take.mp4"), choice)
        with pytest.raises(UserError) as listed:
            _job_metrics(EvalJob("take.mp4", source="list.txt line 3"), choice)
        assert "manifest" not in str(alone.value) and "field" not in str(alone.value)
        assert f"{field} field of list.txt line 3" in str(listed.value)
