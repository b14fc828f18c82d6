"""Subject learning end to end through `vidbooth.cli.app.main`, on the tiny built-in models."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.badinputs import capture_warnings, write_photos
from vidbooth.adapters.base import load_tensors
from vidbooth.cli.app import main
from vidbooth.library import dir_name, list_artifacts, write_json

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = [
    "--recipe", "tiny/subject",
    "--set", "data.resolution=16",
    "--set", "preview.num_frames=2",
    "--set", "preview.num_inference_steps=1",
    "--set", "preview.guidance_scale=1.0",
    "--batch-size", "1",
]  # fmt: skip
NO_PREVIEW = ["--recipe", "tiny/subject", "--set", "data.resolution=16", "--batch-size", "1", "--no-preview"]
"""FAST without a preview: the preview's settings would be warned of as having no effect."""
PRIOR_FAST = ["--set", "prior.num_inference_steps=1", "--set", "prior.guidance_scale=1.0"]
"""With --prior-preservation only: without it they have no effect, and are warned of."""
BASES = {"unet3d": "tiny", "animatediff": "tiny-animatediff"}


@pytest.fixture
def photos(tmp_path) -> Path:
    return write_photos(tmp_path / "photos")


def subject_dir(home: Path, name: str = "S*") -> Path:
    return home / "subjects" / name.replace("*", "%2A")


def library_is_empty(home: Path) -> bool:
    staged = list((home / ".staging").iterdir()) if (home / ".staging").is_dir() else []
    return not list_artifacts("subject") and not staged


def train_subject(photos: Path, *extra: str, name: str = "S*", steps: int = 2) -> int:
    fast = NO_PREVIEW if "--no-preview" in extra else FAST
    args = ["train-subject", str(photos), "--name", name, "--class-noun", "dog", *fast]
    prior = PRIOR_FAST if "--prior-preservation" in extra else []
    return main([*args, *prior, "--ti-steps", str(steps), "--identity-steps", str(steps), *extra])


def test_the_preview_is_sampled_as_generate_samples_it(photos, isolated_home, monkeypatch, fresh_accelerate_state):
    """Not under training's autocast, which on a GPU ran it in fp16, the VAE kept in fp32 for overflowing in fp16
    too (the motion preview and generate never were): a bf16 autocast on the CPU stands in for it."""
    import vidbooth.engine.sampling as sampling

    real, autocast = sampling.sample_video, []
    monkeypatch.setattr(sampling, "sample_video", lambda *args, **kwargs: autocast.append(
        torch.is_autocast_enabled("cpu")) or real(*args, **kwargs))
    mixed = ["--precision", "bf16", "--set", "textual_inversion.train.mixed_precision=bf16", "--set",
             "identity.train.mixed_precision=bf16"]
    assert train_subject(photos, *mixed, steps=1) == 0
    assert autocast == [False] and (subject_dir(isolated_home) / "preview.png").is_file()


@pytest.mark.parametrize("family", list(BASES))
def test_train_subject_writes_a_complete_subject(family, photos, isolated_home, capsys, tiny_backbones):
    assert train_subject(photos, "--base", BASES[family]) == 0
    folder = subject_dir(isolated_home)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml", "identity_adapter.safetensors", "learned_embeds.safetensors", "manifest.json", "photos",
        "preview.png",
    ]  # fmt: skip
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["name"] == manifest["token"] == "S*" and manifest["class_noun"] == "dog"
    assert manifest["family"] == family and manifest["vidbooth_version"]
    assert len(manifest["base_fingerprint"]) == 16 and manifest["config"]["identity"]["hidden_ratio"] == 0.5
    assert [p["sha256"] for p in manifest["photos"]] == manifest["stages"]["identity"]["photos"]
    assert all((folder / p["file"]).is_file() for p in manifest["photos"])
    assert set(load_tensors(folder / "learned_embeds.safetensors")[0]) == {"S*"}
    assert not (isolated_home / ".runs" / "subjects" / "S%2A").exists()  # checkpoints dropped, and their folder

    capsys.readouterr()
    assert main(["list"]) == 0
    assert "S* dog" in capsys.readouterr().out


def test_load_subject_applies_token_and_adapter(photos, isolated_home, tiny_backbones):
    import copy

    from vidbooth.adapters.base import adapters_of
    from vidbooth.adapters.identity import subject_kind
    from vidbooth.engine.subject import load_subject

    assert train_subject(photos, "--set", "identity.train.lr=0.05") == 0
    bb = copy.deepcopy(tiny_backbones["unet3d"])
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))

    def output(prompt):
        with torch.no_grad():
            return bb.unet_forward(latents, torch.tensor(500), bb.encode_prompt([prompt]))

    base = output("a photo of a dog")
    subject = load_subject(bb, "S*", scale=1.0)
    assert subject.expand_prompt("a S* dog") == "a S* dog" and subject.class_noun == "dog"
    assert len(adapters_of(bb.unet, subject_kind("S*"))) == len(bb.spatial_cross_attention_layers())
    assert not any(a.conditional_only for a in adapters_of(bb.unet, subject_kind("S*")).values())  # both halves
    assert not torch.equal(output("a photo of a dog"), base)  # the identity adapter acts
    from vidbooth.adapters.base import set_scale

    set_scale(bb.unet, subject_kind("S*"), 0.0)
    assert torch.equal(output("a photo of a dog"), base)


def test_identity_layers_choose_where_the_adapter_goes_and_loading_follows_the_file(
    photos, isolated_home, tiny_backbones
):
    import copy

    from vidbooth.adapters.base import adapters_of, set_scale
    from vidbooth.adapters.identity import subject_kind
    from vidbooth.engine.subject import load_subject

    layers = "identity.layers=[mid_block.*,up_blocks.1.*]"
    assert train_subject(photos, "--set", layers, "--set", "identity.train.lr=0.05") == 0
    tensors = load_tensors(subject_dir(isolated_home) / "identity_adapter.safetensors")[0]
    assert {key.rsplit(".", 2)[0] for key in tensors} == {
        "mid_block.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    }  # not down_blocks.0's
    bb = copy.deepcopy(tiny_backbones["unet3d"])
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))

    def output():
        with torch.no_grad():
            return bb.unet_forward(latents, torch.tensor(500), bb.encode_prompt(["a S* dog"]))

    load_subject(bb, "S*", scale=1.0)
    assert sorted(adapters_of(bb.unet, subject_kind("S*"))) == sorted({key.rsplit(".", 2)[0] for key in tensors})
    adapted = output()
    set_scale(bb.unet, subject_kind("S*"), 0.0)
    assert not torch.equal(adapted, output())


def test_identity_layers_that_match_no_layer_are_refused_before_training(photos, isolated_home, capsys, monkeypatch):
    from vidbooth.engine import subject

    monkeypatch.setattr(subject, "_textual_inversion", lambda run: pytest.fail("trained before the check"))
    assert train_subject(photos, "--set", "identity.layers=[up_blocks.9.*]") == 2
    err = capsys.readouterr().err
    assert "identity.layers ['up_blocks.9.*'] matches none of this model's 4 spatial cross-attention layers" in err
    assert library_is_empty(isolated_home)


def test_stages_one_by_one(photos, isolated_home, capsys):
    ti = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *FAST, "--steps", "2"]
    assert main(ti) == 0
    manifest = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())
    assert manifest["paths"]["identity_adapter"] is None and "identity" not in manifest["stages"]
    capsys.readouterr()
    main(["list"])
    assert "(embedding only)" in capsys.readouterr().out

    identity = ["identity-adapter", str(photos), "--name", "S*", *FAST, "--steps", "2"]
    assert main(identity) == 0
    manifest = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())
    assert manifest["paths"]["identity_adapter"] == "identity_adapter.safetensors"
    assert set(manifest["stages"]) == {"textual_inversion", "identity"}

    capsys.readouterr()
    assert main(identity) == 2
    assert "already has an identity adapter" in capsys.readouterr().err


def test_identity_adapter_takes_the_subjects_own_photos_when_given_none(photos, isolated_home, capsys, monkeypatch):
    """They are kept in the subject's folder; identity-adapter had asked for them again ('no photos given')."""
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    assert main(["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *FAST, "--steps", "1"]) == 0
    learned = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())["photos"]
    capsys.readouterr()
    assert main(["identity-adapter", "--name", "S*", *FAST, "--steps", "1"]) == 0
    err = capsys.readouterr().err
    assert f"photos: the ones subject 'S*' was learned from ({subject_dir(isolated_home) / 'photos'})" in err
    assert "learned with other data" not in err  # the same photos as the pseudo-word's
    manifest = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())
    assert manifest["stages"]["identity"]["photos"] == manifest["stages"]["textual_inversion"]["photos"]
    # the copies keep their names and where they came from (had been renamed 00-00-<name>, sourced from themselves)
    assert manifest["photos"] == learned and learned[0]["source"] == str(sorted(photos.iterdir())[0])
    assert sorted(p.name for p in (subject_dir(isolated_home) / "photos").iterdir()) == [
        Path(entry["file"]).name for entry in learned]
    recipe = subject_dir(isolated_home).parent.parent / "config.yaml"  # a rerun replaces the subject's own copy
    recipe.write_text((subject_dir(isolated_home) / "config.yaml").read_text())
    assert yaml.safe_load(recipe.read_text())["photos"] == [entry["source"] for entry in learned]  # the originals
    for original in photos.iterdir():  # gone: config.yaml names the subject's copies, which a rerun still reads
        original.unlink()
    assert main(["identity-adapter", "--name", "S*", *FAST, "--steps", "1", "--overwrite"]) == 0
    recipe.write_text((subject_dir(isolated_home) / "config.yaml").read_text())
    assert yaml.safe_load(recipe.read_text())["photos"] == [str(subject_dir(isolated_home) / "photos")]
    assert main(["train-subject", "--recipe", str(recipe), "--overwrite", "--ti-steps", "1", "--identity-steps",
                 "1"]) == 0
    assert json.loads((subject_dir(isolated_home) / "manifest.json").read_text())["photos"] == learned


def test_identity_adapter_without_photos_on_a_subject_whose_copies_were_deleted_says_so(photos, isolated_home,
                                                                                        capsys):
    """Its photos/ emptied or removed by hand: it had been told 'no photos given', as if it had none to look for."""
    assert main(["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *NO_PREVIEW,
                 "--steps", "1"]) == 0
    kept = subject_dir(isolated_home) / "photos"
    for photo in kept.iterdir():
        photo.unlink()
    for removed in (False, True):
        if removed:
            kept.rmdir()
        capsys.readouterr()
        assert main(["identity-adapter", "--name", "S*", *NO_PREVIEW, "--steps", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (f"error: subject 'S*' keeps no copies of its photos in {kept}: give the photos to train its "
                       "identity adapter on (vidbooth identity-adapter PHOTOS... --name 'S*')")
    assert main(["identity-adapter", str(photos), "--name", "S*", *NO_PREVIEW, "--steps", "1"]) == 0


def test_the_pseudo_words_settings_are_kept_from_config_yaml_when_the_manifest_lacks_them(photos, isolated_home,
                                                                                        monkeypatch):
    """A subject whose manifest does not record its settings (another vidbooth version's): identity-adapter reads
    its pseudo-word's from config.yaml, and with that gone too says so and records its own run's."""
    ti = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *NO_PREVIEW, "--steps", "1"]
    assert main([*ti, "--set", "textual_inversion.train.lr=0.0123"]) == 0
    manifest_path = subject_dir(isolated_home) / "manifest.json"

    def without_settings() -> None:
        manifest = json.loads(manifest_path.read_text())
        del manifest["config"]
        write_json(manifest_path, manifest)

    def learned_at() -> float:
        return json.loads(manifest_path.read_text())["config"]["textual_inversion"]["train"]["lr"]

    without_settings()
    warned = capture_warnings(monkeypatch)
    assert main(["identity-adapter", "--name", "S*", *NO_PREVIEW, "--steps", "1"]) == 0
    assert learned_at() == 0.0123 and not [line for line in warned if "cannot read the settings" in line], warned
    without_settings()
    (subject_dir(isolated_home) / "config.yaml").unlink()
    assert main(["identity-adapter", "--name", "S*", *NO_PREVIEW, "--steps", "1", "--overwrite"]) == 0
    assert learned_at() != 0.0123
    assert [line for line in warned if "cannot read the settings" in line] == [
        "cannot read the settings that learned the pseudo-word of subject 'S*' (config.yaml is missing): its new "
        "config.yaml records this run's textual_inversion settings instead"]


def record_calls(monkeypatch, *names: str) -> dict[str, list]:
    """The first argument of every call to each `Backbone.<name>` from now on, in call order."""
    from vidbooth.engine.backbone import Backbone

    calls = {name: [] for name in names}

    def recording(name):
        original = getattr(Backbone, name)

        def wrapper(self, first, *args, **kwargs):
            calls[name].append(first.cpu() if isinstance(first, torch.Tensor) else first)
            return original(self, first, *args, **kwargs)

        return wrapper

    for name in names:
        monkeypatch.setattr(Backbone, name, recording(name))
    return calls


def test_frozen_work_is_computed_once(photos, monkeypatch, isolated_home):
    calls = record_calls(monkeypatch, "encode_video", "encode_prompt")
    assert train_subject(photos, "--no-preview", steps=4) == 0
    counts = {name: len(made) for name, made in calls.items()}
    assert counts == {"encode_video": 1, "encode_prompt": 1}  # photos once; identity captions once
    assert not (subject_dir(isolated_home) / "preview.png").exists()


def test_prior_preservation_generates_class_images_once(photos, isolated_home, tmp_path, monkeypatch):
    from vidbooth.engine.backbone import cache_dir

    monkeypatch.setenv("VIDBOOTH_CACHE", str(tmp_path / "cache"))  # not the session's, where other tests' are

    def cached() -> dict:
        return {p: p.stat().st_mtime_ns for p in (cache_dir() / "class-images").rglob("*.png")}

    assert train_subject(photos, "--prior-preservation", "--num-class-images", "2") == 0
    made = cached()
    assert len(made) == 2
    manifest = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())
    assert manifest["config"]["prior"]["enabled"] is True

    assert train_subject(photos, "--prior-preservation", "--num-class-images", "2", name="T*") == 0
    assert cached() == made  # none made again, none rewritten


def test_prior_preservation_with_given_class_images(photos, tmp_path, isolated_home, monkeypatch, capsys):
    import vidbooth.engine.prior as prior
    from vidbooth.data.images import load_photo_folder, photos_to_tensor

    def refuse(*args, **kwargs):
        raise AssertionError("class images were generated although a folder was given")

    monkeypatch.setattr(prior, "generate_class_images", refuse)
    class_dir = write_photos(tmp_path / "dogs", count=2, seed=1)  # unlike the subject's photos
    encoded = record_calls(monkeypatch, "encode_video")["encode_video"]
    assert train_subject(photos, "--prior-preservation", "--class-images", str(class_dir)) == 0
    err = capsys.readouterr().err  # the tiny recipe asks for 4
    assert f"only 2 class images in {class_dir}, fewer than prior.num_class_images (--num-class-images) 4" in err
    class_pixels = photos_to_tensor([image for _, image in load_photo_folder(class_dir)], 16)  # data.resolution
    assert len(encoded) == 2 and torch.equal(encoded[1], class_pixels)  # the photos, then the class images
    prior_config = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())["config"]["prior"]
    assert prior_config["enabled"] is True and prior_config["class_images"] == str(class_dir)


def test_the_class_prompt_holds_the_class_noun_where_its_template_says(photos, isolated_home, monkeypatch):
    """nano's captions are 'a S* circle standing still': its class images had come from 'a photo of a circle',
    words nano never saw, and drawn no circle; the class prompt, like DreamBooth's, is now the caption without S*."""
    import vidbooth.engine.prior as prior

    asked = []
    real = prior.generate_class_images
    monkeypatch.setattr(prior, "generate_class_images",
                        lambda bb, prompt, *rest: asked.append(prompt) or real(bb, prompt, *rest))
    args = ["--prior-preservation", "--num-class-images", "1", "--set", "prior.prompt=a {} at rest"]
    assert train_subject(photos, *args) == 0
    assert train_subject(photos, "--prior-preservation", "--num-class-images", "1", name="T*") == 0
    assert list(dict.fromkeys(asked)) == ["a dog at rest", "a photo of a dog"]  # (a second call fills in any missing)
    from vidbooth.config import load_config
    from vidbooth.config.subject import SubjectConfig

    nano = load_config(SubjectConfig, "nano/subject", None, {"photos": ["x"], "name": "S*", "class_noun": "circle"})
    assert prior.class_prompt(nano.prior, "circle") == "a circle standing still"
    assert nano.data.captions[0].format("circle") == "a circle standing still"  # the caption without S*


def test_a_prior_weight_of_0_is_warned_of(photos, isolated_home, monkeypatch):
    warned = capture_warnings(monkeypatch)
    assert train_subject(photos, "--prior-preservation", "--num-class-images", "1", "--prior-weight", "0") == 0
    assert [w for w in warned if w.startswith("prior.weight (--prior-weight) is 0: the class images are made")]


def test_class_images_in_a_subfolder_or_only_videos_are_said_to_be_so(photos, tmp_path, capsys):
    nested = tmp_path / "dogs"
    write_photos(nested / "inner", count=2, seed=1)
    assert train_subject(photos, "--prior-preservation", "--class-images", str(nested)) == 2
    assert f"no class images found in {nested} (they are in its subfolder inner/): give --class-images " in (
        capsys.readouterr().err)
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "dog.mp4").write_bytes(b"")
    assert train_subject(photos, "--prior-preservation", "--class-images", str(clips)) == 2
    assert "(only videos: class images are still images)" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_weights(photos, tmp_path, monkeypatch):
    """SIGINT in stage 2: exit 130 and nothing in the library; --resume skips the finished stage 1 and ends
    with the weights of an uninterrupted run, and the manifest keeps the time stage 1 took before."""
    import time

    from vidbooth.engine.subject_methods import IdentityAdapterMethod, TextualInversionMethod

    args = ["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", *FAST, "--ti-steps", "3"]
    args += ["--identity-steps", "4", "--set", "preview.enabled=false", "--set", "identity.train.lr=0.01"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["--home", str(whole), *args]) == 0

    original_loss, calls = IdentityAdapterMethod.loss, []

    def interrupting_loss(self, batch, generator):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original_loss(self, batch, generator)

    monkeypatch.setattr(IdentityAdapterMethod, "loss", interrupting_loss)
    original_ti_loss = TextualInversionMethod.loss

    def slow_loss(self, batch, generator):  # stage 1 takes at least 3 x 0.05 s
        time.sleep(0.05)
        return original_ti_loss(self, batch, generator)

    monkeypatch.setattr(TextualInversionMethod, "loss", slow_loss)
    assert main(["--home", str(split), *args]) == 130
    assert not (split / "subjects").exists() or not list((split / "subjects").iterdir())
    monkeypatch.setattr(IdentityAdapterMethod, "loss", original_loss)

    def no_stage_one(*args):
        raise AssertionError("stage 1 ran again")

    monkeypatch.setattr(TextualInversionMethod, "loss", no_stage_one)
    assert main(["--home", str(split), *args, "--resume"]) == 0
    for file in ("learned_embeds.safetensors", "identity_adapter.safetensors"):
        finished = [load_tensors(subject_dir(home) / file)[0] for home in (whole, split)]
        assert finished[0].keys() == finished[1].keys()
        assert all(torch.equal(finished[0][key], finished[1][key]) for key in finished[0]), file
    # the finished stage ran no step on resume: its manifest loss is the checkpoint's, not NaN (invalid JSON)
    text = (subject_dir(split) / "manifest.json").read_text()
    stage_one = json.loads(text)["stages"]["textual_inversion"]
    assert "NaN" not in text and stage_one["steps"] == 3 and 0 < stage_one["final_loss"] < 10
    assert stage_one["seconds"] >= 0.15  # the first run's time, not the resumed run's 0 s


def test_a_photo_at_the_name_limit_is_copied_under_a_name_cut_to_fit_and_evaluate_checks_the_copies(
    photos, isolated_home, capsys
):
    """Its numbered copy ('00-' + the name) had been too long: the save failed with ENAMETOOLONG after training.
    evaluate --subject warns of a copy changed since (its scores had compared with it without a word)."""
    first = sorted(photos.iterdir())[0]
    longest = first.with_name("x" * 3 + "é" * 124 + first.suffix)  # 251 bytes + '.png': the file system's 255
    first.rename(longest)
    assert train_subject(photos, "--no-preview") == 0
    copies = sorted((subject_dir(isolated_home) / "photos").iterdir())
    assert len(copies) == len(list(photos.iterdir())) and all(len(os.fsencode(c.name)) <= 255 for c in copies)
    cut = r"\d\d-xxxé{122}" + re.escape(first.suffix)  # 254 bytes: no half of an 'é' where the name was cut
    assert sum(bool(re.fullmatch(cut, c.name)) for c in copies) == 1
    from vidbooth.eval.references import subject_photos

    capsys.readouterr()
    assert subject_photos("S*") == subject_dir(isolated_home) / "photos"
    assert capsys.readouterr().err == ""  # the copies are as trained
    copies[0].write_bytes(copies[1].read_bytes())
    subject_photos("S*")
    assert capsys.readouterr().err.splitlines() == [f"warning: subject 'S*': {copies[0]} differs from the photo it was "
                                                    "trained on (its sha256 is not the manifest's): the scores "
                                                    "compare with it as it is now"]


def test_a_numbered_copy_name_taken_already_is_numbered_again_within_the_limit(tmp_path, monkeypatch):
    """(mutation testing) A subject's own copy '01-<name>' (255 bytes) beside another photo <name>, whose numbered
    name is then taken: numbered again, it is cut to fit too (it had failed with ENAMETOOLONG)."""
    import vidbooth.engine.subject as subject

    name = "y" * 248 + ".png"
    own, other = tmp_path / "own", tmp_path / "other"
    for folder, file_name in ((own, "01-" + name), (other, name)):
        folder.mkdir()
        (folder / file_name).write_bytes(b"photo")
    monkeypatch.setattr(subject, "_own_photos", lambda subject_name: (own.resolve(), {}))
    photos = subject._Photos(files=[own / ("01-" + name), other / name], images=[None, None], hashes=["h0", "h1"])
    entries = subject._copy_photos(photos, tmp_path / "copies", "S")
    names = sorted(p.name for p in (tmp_path / "copies").iterdir())
    assert names == sorted(["01-" + name, "01-01-" + "y" * 245 + ".png"])  # 255 bytes each
    assert [entry["file"] for entry in entries] == ["photos/01-" + name, "photos/01-01-" + "y" * 245 + ".png"]


@pytest.mark.parametrize("limit", ["disk", "open files"])
def test_a_full_disk_under_the_class_images_after_stage_one_says_to_resume(limit, photos, isolated_home, monkeypatch,
                                                                          capsys):
    """The class images' cache filling the disk (or too few open files) after stage 1 had said 'run the command
    again', which stage 1's checkpoint then refused without --resume."""
    import errno

    import vidbooth.engine.prior as prior
    from vidbooth.engine.train import list_checkpoints
    from vidbooth.errors import not_the_inputs_fault

    def disk_full(*args, **kwargs):
        if limit == "open files":
            not_the_inputs_fault(OSError(errno.EMFILE, "Too many open files"))
        raise OSError(errno.ENOSPC, "No space left on device", "class-images/0003.png")

    monkeypatch.setattr(prior, "generate_class_images", disk_full)
    args = [*NO_PREVIEW, *PRIOR_FAST, "--prior-preservation", "--num-class-images", "2",
            "--set", "textual_inversion.train.checkpoint_every=1"]
    assert train_subject(photos, *args) == 2
    first, kept = list_checkpoints(isolated_home / ".runs" / "subjects" / "S%2A" / "textual-inversion")  # the last
    problem = ("the disk is full writing class-images/0003.png: free space" if limit == "disk" else
               "too many open files (this process may have")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {problem}") and line.endswith(
        f"and rerun the same command with --resume to go on from its last checkpoint ({kept})")


def test_a_stop_between_the_stages_on_another_machine_says_where_stage_ones_checkpoint_is(isolated_home):
    """A second machine, whose library is not shared, had named its own library's folder, where no checkpoint is (or
    said to run the command again, which the first machine's checkpoint refuses)."""
    from types import SimpleNamespace

    from vidbooth.engine.subject import _stage_one_kept
    from vidbooth.engine.train import TrainResult
    from vidbooth.errors import Interrupted

    kept = isolated_home / ".runs" / "subjects" / "S%2A" / "textual-inversion"
    for first, said in ((True, f"the textual inversion's checkpoint is kept in {kept}: rerun the same command with "
                                "--resume to continue"),
                        (False, "the first process saved the checkpoint of step 3 in a library that this machine does "
                                "not see: rerun the same command with --resume once every machine sees it (one "
                                f"VIDBOOTH_HOME on a file system they share, or {kept} copied from the first "
                                "machine)")):
        run = SimpleNamespace(cfg=SimpleNamespace(name="S*"), accelerator=SimpleNamespace(is_main_process=first),
                              results={"textual_inversion": TrainResult(step=3, start_step=0)})
        with pytest.raises(Interrupted) as stopped, _stage_one_kept(run):
            raise KeyboardInterrupt
        assert str(stopped.value) == f"stopped by SIGINT before the identity adapter's training; {said}"
        with pytest.raises(MemoryError) as failed, _stage_one_kept(run):  # its checkpoint is kept: the line says so
            raise MemoryError()
        kept_there = f"step 3, in the first process's library: copy {kept} from its machine here first"
        assert getattr(failed.value, "kept_checkpoint", None) == (None if first else kept_there)


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGXCPU, 152)],
    ids=["SIGINT", "SIGTERM", "SIGXCPU"],  # SIGXCPU: past a soft CPU-time limit; its default dumps core
)
def test_a_stop_between_the_stages_says_to_resume_and_the_resume_keeps_stage_one(
    signum, code, photos, isolated_home, monkeypatch, capsys
):
    """Ctrl-C (or SIGTERM) while the class images are made, after stage 1 finished: like a stop in training, one
    line says that stage 1's checkpoint is kept and to resume; --resume does not train stage 1 again."""
    import vidbooth.engine.prior as prior
    from vidbooth.engine.subject_methods import TextualInversionMethod
    from vidbooth.engine.train import list_checkpoints

    original_generate = prior.generate_class_images

    def stopped_generate(*args, **kwargs):
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(prior, "generate_class_images", stopped_generate)
    args = [*NO_PREVIEW, *PRIOR_FAST, "--prior-preservation", "--num-class-images", "2"]
    assert train_subject(photos, *args) == code
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: stopped by {signal.Signals(signum).name} before the identity adapter's training")
    assert line.endswith("rerun the same command with --resume to continue")
    assert library_is_empty(isolated_home)
    assert list_checkpoints(isolated_home / ".runs" / "subjects" / "S%2A" / "textual-inversion")

    def no_stage_one(*args):
        raise AssertionError("stage 1 ran again")

    monkeypatch.setattr(prior, "generate_class_images", original_generate)
    monkeypatch.setattr(TextualInversionMethod, "loss", no_stage_one)
    capsys.readouterr()
    assert train_subject(photos, *args, "--resume") == 0
    assert "nothing to resume" not in capsys.readouterr().err  # stage 1 resumed; stage 2 simply begins


def fake_subject(home: Path, name: str) -> None:
    folder = subject_dir(home, name)
    folder.mkdir(parents=True)
    write_json(folder / "manifest.json", {"kind": "subject", "name": name, "schema_version": 1, "files": {}})


BAD_INPUTS = {
    "missing folder": (lambda d: d / "nope", [], "not found"),
    "empty folder": (lambda d: d, [], "no photos"),
    "no readable image": (lambda d: (d / "notes.txt").write_text("hi") and d, [], "no photos"),
    "corrupt image": (lambda d: (d / "a.jpg").write_bytes(b"not a jpeg at all") and d, [], "a.jpg"),
    "zero-byte image": (lambda d: (d / "a.png").touch() or d, [], "0 bytes"),
    "invalid name": (lambda d: write_photos(d), ["--name", "my dog"], "invalid subject name"),
    "class noun of nothing": (lambda d: write_photos(d), ["--class-noun", "\u200b"], "tokenises to nothing"),
    "name exists": (lambda d: write_photos(d), ["--name", "taken"], "already exists"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, isolated_home, capsys):
    make_photos, extra, message = BAD_INPUTS[case]
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = make_photos(folder)
    fake_subject(isolated_home, "taken")
    before = sorted(p.relative_to(isolated_home) for p in isolated_home.rglob("*"))
    args = ["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", *FAST, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    after = sorted(p.relative_to(isolated_home) for p in isolated_home.rglob("*") if ".locks" not in p.parts)
    assert after == before


def test_list_shows_subjects_and_motions(isolated_home, capsys):
    fake_subject(isolated_home, "S*")
    motion = isolated_home / "motions" / "wave"
    motion.mkdir(parents=True)
    write_json(motion / "manifest.json", {"kind": "motion", "name": "wave", "schema_version": 1, "files": {}})
    assert main(["list", "--json"]) == 0
    assert [(m["kind"], m["name"]) for m in json.loads(capsys.readouterr().out)] == [("subject", "S*"), ("motion", "wave")]
    assert main(["list", "--kind", "motion"]) == 0
    out = capsys.readouterr().out
    assert "wave" in out and "S*" not in out
    assert main(["list", "--kind", "robots"]) == 2
    assert "--kind robots is unknown: use subject, motion or all" in capsys.readouterr().err
    newer = isolated_home / "motions" / "jump"
    newer.mkdir()
    write_json(newer / "manifest.json", {"kind": "motion", "name": "jump", "schema_version": 99, "files": {}})
    assert main(["list"]) == 0  # the others are still listed; the one it cannot read is named, not hidden
    captured = capsys.readouterr()
    assert "wave" in captured.out and "S*" in captured.out and "jump" not in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "not listed:" in warnings[0] and "jump" in warnings[0] and "upgrade" in warnings[0]


def test_list_says_what_kind_is_missing_and_reads_sparse_manifests(isolated_home, capsys, monkeypatch):
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    motion = isolated_home / "motions" / "wave"
    motion.mkdir(parents=True)
    manifest = {"kind": "motion", "name": "wave", "schema_version": 1, "files": {}, "captions": None, "base": None}
    write_json(motion / "manifest.json", manifest)
    assert main(["list", "--kind", "subject"]) == 0
    assert f"no subjects in the library {isolated_home}: learn one with train-subject" in capsys.readouterr().err
    assert main(["list"]) == 0  # nulls where details go are shown as blanks, not a traceback
    assert "wave" in capsys.readouterr().out
    fake_subject(isolated_home, "S*")
    write_json(subject_dir(isolated_home) / "manifest.json",
               {"kind": "subject", "name": "S*", "schema_version": 1, "files": {}, "paths": None, "token": None})
    assert main(["list", "--kind", "subject"]) == 0
    assert "S* (embedding only)" in capsys.readouterr().out


def test_identity_adapter_needs_an_existing_subject(photos, capsys):
    assert main(["identity-adapter", str(photos), "--name", "ghost", *FAST]) == 2
    assert "unknown subject 'ghost'" in capsys.readouterr().err


def test_a_subject_whose_manifest_lacks_what_training_reads_is_one_error_line(photos, isolated_home, capsys):
    """A manifest edited by hand (or damaged) without "paths" had been a KeyError traceback."""
    fake_subject(isolated_home, "S*")
    assert main(["identity-adapter", str(photos), "--name", "S*", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: manifest ") and err.count("\n") == 1 and err.endswith(
        "lacks base, base_fingerprint, class_noun, num_vectors, paths.embeddings, paths.identity_adapter, "
        "paths.config (damaged, or edited by hand): retrain it (vidbooth train-subject ... --name 'S*' --overwrite), "
        f"or delete {isolated_home / 'subjects' / dir_name('S*')}\n")


def test_two_processes_train_one_subject(photos, isolated_home, two_process_launch):
    """Two CPU processes with gloo: completes and writes one artifact (about 13 s).

    `accelerate launch --cpu` starts several processes only through mpirun; `--multi_gpu` uses torchrun's
    launcher, and `--device cpu` keeps each process on the CPU (gloo).
    """
    command = [*two_process_launch, "-m", "vidbooth", "train-subject", str(photos), "--name", "S*"]
    command += ["--class-noun", "dog", *FAST, "--ti-steps", "3", "--identity-steps", "3", "--device", "cpu"]
    command += ["--prior-preservation", "--num-class-images", "3", *PRIOR_FAST]  # the two make them together
    command += ["--set", "prior.prompt=a {} seen by two processes"]  # class images no other test has cached
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"VIDBOOTH_QUIET": "0"})
    assert done.returncode == 0, done.stderr
    assert ", 2 processes sharing them)" in done.stderr and done.stderr.count("generating 3 class images") == 1
    assert [m["name"] for m in list_artifacts("subject")] == ["S*"]
    manifest = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())
    assert manifest["stages"]["identity"]["processes"] == 2
    assert list((photos.parent / "launch-tmp").glob("torchelastic_*"))  # the launcher's leftovers stay in tmp_path


def test_guided_textual_inversion_learns_under_guidance(photos, tmp_path, monkeypatch, capsys):
    """textual_inversion.guidance_scale reaches the loss: one extra, empty prompt is encoded and other rows are
    learned; a negative scale is a one-line error."""
    ti = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *FAST, "--steps", "3"]
    ti += ["--set", "preview.enabled=false", "--set", "textual_inversion.train.lr=0.05"]
    assert main(["--home", str(tmp_path / "plain"), *ti]) == 0
    calls = record_calls(monkeypatch, "encode_prompt")
    assert main(["--home", str(tmp_path / "guided"), *ti, "--set", "textual_inversion.guidance_scale=3"]) == 0
    assert calls["encode_prompt"] == [[""]]
    rows = [load_tensors(subject_dir(tmp_path / run) / "learned_embeds.safetensors")[0] for run in ("plain", "guided")]
    assert rows[0].keys() == rows[1].keys()
    assert all(not torch.allclose(rows[0][key], rows[1][key]) for key in rows[0])

    capsys.readouterr()
    assert main(["--home", str(tmp_path / "bad"), *ti, "--set", "textual_inversion.guidance_scale=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "textual_inversion.guidance_scale must be 0 (off) or positive" in err


def test_identity_adapter_under_guidance_is_conditional_only(photos, isolated_home, tiny_backbones, monkeypatch):
    """identity.guidance_scale: the unconditional pass of every training step runs with the adapters off, the
    file records `conditional_only`, and a loaded subject's adapters act on the conditional half only."""
    import contextlib
    import copy

    import vidbooth.engine.subject as subject_engine
    from vidbooth.adapters.base import adapters_of
    from vidbooth.adapters.identity import KIND as IDENTITY_KIND
    from vidbooth.adapters.identity import subject_kind
    from vidbooth.engine.subject import load_subject

    switched_off = []
    original = subject_engine.adapters_off

    @contextlib.contextmanager
    def recording(model, kind):
        with original(model, kind):
            trained = adapters_of(model, IDENTITY_KIND).values()  # the adapters training injected, whatever `kind` is
            switched_off.append(len(trained) > 0 and all(not a.enabled for a in trained))
            yield

    monkeypatch.setattr(subject_engine, "adapters_off", recording)
    extra = ["--set", "identity.guidance_scale=2", "--set", "preview.enabled=false"]
    assert train_subject(photos, *extra, steps=3) == 0
    assert switched_off == [True] * 3  # once per identity step, none in textual inversion
    _, metadata = load_tensors(subject_dir(isolated_home) / "identity_adapter.safetensors")
    assert metadata["conditional_only"] == "true"
    bb = copy.deepcopy(tiny_backbones["unet3d"])
    load_subject(bb, "S*")
    assert all(a.conditional_only for a in adapters_of(bb.unet, subject_kind("S*")).values())


def test_the_saved_config_reruns_the_training_from_anywhere(tmp_path, isolated_home, monkeypatch, tiny_backbones):
    """`config.yaml` in the subject is a recipe: `--recipe config.yaml --overwrite` retrains it to the same tensors
    with no PHOTOS or --name given again, from another folder (the photos' path is absolute)."""

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    write_photos(tmp_path / "photos")
    assert train_subject(Path("photos"), "--base", "tiny", "--seed", "5") == 0
    folder = subject_dir(isolated_home)
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["photos"] == [str(tmp_path / "photos")] and saved["name"] == "S*"
    assert saved["overwrite"] is False and saved["resume"] is False  # this run's mode, not part of the recipe
    files = ("learned_embeds.safetensors", "identity_adapter.safetensors")
    first = [load_tensors(folder / f)[0] for f in files]
    recipe = tmp_path / "subject.yaml"
    recipe.write_text((folder / "config.yaml").read_text())
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train-subject", "--recipe", str(recipe)]) == 2  # the subject exists: replacing it is asked for
    assert main(["train-subject", "--recipe", str(recipe), "--overwrite"]) == 0
    for before, file in zip(first, files, strict=True):
        after = load_tensors(folder / file)[0]
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_photos_can_be_given_as_files_and_folders_each_photo_once(tmp_path, isolated_home):
    """`train-subject photos/*.png` (the shell's expansion) trains on those files; a file also inside a given
    folder is one photo, not two."""
    first = write_photos(tmp_path / "a", count=2)
    second = write_photos(tmp_path / "b", count=2, seed=1)
    given = [first / "photo0.png", first / "photo1.png", second, second / "photo1.png"]
    args = ["train-subject", *map(str, given), "--name", "S*", "--class-noun", "dog", *FAST]
    assert main([*args, "--ti-steps", "1", "--identity-steps", "1"]) == 0
    manifest = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())
    sources = [Path(p["source"]) for p in manifest["photos"]]
    assert sources == [first / "photo0.png", first / "photo1.png", second / "photo0.png", second / "photo1.png"]
    saved = yaml.safe_load((subject_dir(isolated_home) / "config.yaml").read_text())
    assert saved["photos"] == [str(path) for path in given]


def test_class_images_of_another_prompt_size_seed_or_sampling_are_cached_apart(tmp_path, monkeypatch):
    """Each setting class images depend on is in their cache folder's key: one left out would reuse images of
    another class or size."""
    from dataclasses import replace

    from vidbooth.config.subject import PriorConfig
    from vidbooth.engine.prior import class_image_folder

    monkeypatch.setenv("VIDBOOTH_CACHE", str(tmp_path))
    prior = PriorConfig()
    folder = class_image_folder("fp", "a photo of a dog", 64, prior, 0)
    others = [class_image_folder("fp", "a photo of a cat", 64, prior, 0), class_image_folder("fp", "a photo of a dog",
              128, prior, 0), class_image_folder("fp", "a photo of a dog", 64, prior, 1),
              class_image_folder("fp", "a photo of a dog", 64, replace(prior, num_inference_steps=7), 0),
              class_image_folder("fp", "a photo of a dog", 64, replace(prior, guidance_scale=3.5), 0),
              class_image_folder("other", "a photo of a dog", 64, prior, 0)]
    assert folder == class_image_folder("fp", "a photo of a dog", 64, PriorConfig(), 0)
    assert len({folder, *others}) == 7


def test_a_class_image_depends_on_its_index_and_seed_not_on_its_batch(tiny_backbones, tmp_path, monkeypatch):
    """Three class images made in one batch equal those made one, then two at a time (the cache held one), and an
    image lost from the cache is made again the same; another seed is another cache folder with other images."""
    from vidbooth.config.subject import PriorConfig
    from vidbooth.engine.prior import class_image_folder, generate_class_images, read_class_images

    bb = tiny_backbones["unet3d"]
    prior = PriorConfig(num_inference_steps=2, guidance_scale=1.0, sample_batch_size=4)

    def made(cache: str, counts: list[int], seed: int = 0) -> list[np.ndarray]:
        monkeypatch.setenv("VIDBOOTH_CACHE", str(tmp_path / cache))
        for count in counts:
            folder = generate_class_images(bb, "a photo of a dog", count, 16, prior, seed)
        assert folder == class_image_folder(bb.fingerprint, "a photo of a dog", 16, prior, seed)
        return [np.asarray(image) for image in read_class_images(folder, 3)]

    together, apart = made("together", [3]), made("apart", [1, 3])
    assert len(together) == len(apart) == 3
    assert all(np.array_equal(a, b) for a, b in zip(together, apart))
    folder = class_image_folder(bb.fingerprint, "a photo of a dog", 16, prior, 0)
    (folder / "00001.png").unlink()
    stale, fresh = folder / ".tmp-00001-killed.png", folder / ".tmp-00002-writing.png"
    for temporary in (stale, fresh):
        temporary.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * 3600,) * 2)  # left by a run killed two hours ago
    assert np.array_equal(made("apart", [3])[1], together[1])  # a lost image is made again, the same
    assert not stale.exists() and fresh.exists()  # another run may be writing the fresh one
    assert not np.array_equal(together[0], together[1])  # each image its own noise
    other_seed = made("together", [3], seed=1)
    assert class_image_folder(bb.fingerprint, "a photo of a dog", 16, prior, 1) != class_image_folder(
        bb.fingerprint, "a photo of a dog", 16, prior, 0
    )
    assert not any(np.array_equal(a, b) for a, b in zip(together, other_seed))
    settings_file = class_image_folder(bb.fingerprint, "a photo of a dog", 16, prior, 1) / "settings.json"
    settings = json.loads(settings_file.read_text())  # what the folder's key holds, for a person looking in
    assert settings["seed"] == 1 and settings["num_inference_steps"] == 2 and settings["guidance_scale"] == 1.0
    monkeypatch.setenv("VIDBOOTH_CACHE", str(tmp_path / "shared"))  # 2 processes, each its share: the same images
    second = generate_class_images(bb, "a photo of a dog", 5, 16, prior, 0, share=(1, 2))
    assert sorted(path.name for path in second.glob("*.png")) == ["00001.png", "00003.png"]
    generate_class_images(bb, "a photo of a dog", 5, 16, prior, 0, share=(0, 2))
    assert all(np.array_equal(a, b) for a, b in zip(read_class_images(second, 3), together))


def test_each_machines_processes_make_each_class_image_once(tmp_path, monkeypatch):
    """Two machines of two processes each, as four threads that meet at each barrier. With a cache of each
    machine's own, its two processes each make half of the class images; with one the machines share, each process
    a quarter. Each machine's processes had shared out every image among themselves: with a shared cache, each
    machine made them all; a launcher that did not say how many processes a machine runs (DeepSpeed's) had had each
    process make every one that the other machine's processes made (the host names now tell). Ranks dealt out to
    the machines in turn had had one process of each machine make all that the other machine made, the other idle
    (a review's find)."""
    import threading
    from types import SimpleNamespace

    import vidbooth.engine.prior as prior_module
    import vidbooth.engine.sampling as sampling
    from vidbooth.config.subject import PriorConfig

    made, process, sent = [], threading.local(), {}

    def sample_video(backbone, prompts, *args, **kwargs):
        made.append((process.rank, len(prompts)))
        return np.zeros((len(prompts), 1, 16, 16, 3), np.uint8)

    def gather_object(values: list) -> list:  # accelerate's, over the threads
        sent[process.rank] = values
        process.barrier.wait()
        return [value for rank in sorted(sent) for value in sent[rank]]

    monkeypatch.setattr(sampling, "sample_video", sample_video)
    monkeypatch.setattr(prior_module, "cache_dir", lambda: process.cache)
    monkeypatch.setattr(prior_module.reporting, "place_on_this_machine", lambda: process.place)
    monkeypatch.setattr("accelerate.utils.gather_object", gather_object)
    monkeypatch.setattr(prior_module.socket, "gethostname", lambda: process.host)
    bb = SimpleNamespace(fingerprint="f", source="tiny", vae_scale_factor=8, latent_channels=4)
    prior, folders = PriorConfig(sample_batch_size=8), {}

    def run(rank: int, cache: Path, place: tuple[int, int] | None, host: str, barrier: threading.Barrier) -> None:
        process.rank, process.cache, process.place, process.host, process.barrier = rank, cache, place, host, barrier
        accelerator = SimpleNamespace(process_index=rank, num_processes=4, wait_for_everyone=barrier.wait)
        folders[rank] = prior_module.make_class_images_together(bb, "a dog", 16, 16, prior, 0, accelerator)

    # ranks 0, 1 on the first machine, or dealt out in turn (mpirun --map-by node): 0, 2 there; a launcher that
    # says the ranks on each machine, or one that does not (the host names then tell; the launcher's, where it
    # says, even on machines of one host name), or says it to the first of each machine only (accelerate's
    # LOCAL_WORLD_SIZE=1 on the CPU, where the launcher set none)
    for caches, each_made, dealt, says in ((("0-first", "0-second"), 8, False, "all"),
                                           (("1-first", "1-second"), 8, True, "all"),
                                           (("2-shared", "2-shared"), 4, False, "all"),
                                           (("3-first", "3-second"), 8, True, "none"),
                                           (("4-first", "4-second"), 8, False, "first")):
        made.clear()
        barrier = threading.Barrier(4, timeout=60)
        machine_of, local = (lambda r: r % 2, lambda r: r // 2) if dealt else (lambda r: r // 2, lambda r: r % 2)
        said = {"all": lambda r: (local(r), 2), "none": lambda r: None,
                "first": lambda r: None if local(r) else (0, 1)}[says]
        threads = [threading.Thread(target=run, args=(
            rank, tmp_path / caches[machine_of(rank)], said(rank),
            "localhost" if says == "all" else f"node-{machine_of(rank)}", barrier)) for rank in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [sum(n for who, n in made if who == rank) for rank in range(4)] == [each_made] * 4, (caches, dealt)
        assert all(len(list(folder.glob("*.png"))) == 16 for folder in folders.values())


def interrupt_identity_stage(monkeypatch, at_call: int = 2):
    """SIGINT from the identity stage's `at_call`-th loss: the run checkpoints and stops (exit 130). Returns the
    original loss."""
    from vidbooth.engine.subject_methods import IdentityAdapterMethod

    original_loss, calls = IdentityAdapterMethod.loss, []

    def interrupting_loss(self, batch, generator):
        calls.append(1)
        if len(calls) == at_call:
            os.kill(os.getpid(), signal.SIGINT)
        return original_loss(self, batch, generator)

    monkeypatch.setattr(IdentityAdapterMethod, "loss", interrupting_loss)
    return original_loss


def test_resume_is_refused_when_a_class_image_changed(photos, tmp_path, isolated_home, monkeypatch, capsys):
    """The class images' contents are part of what a resumed run must find unchanged, not just their folder."""
    from vidbooth.engine.subject_methods import IdentityAdapterMethod

    class_dir = write_photos(tmp_path / "dogs", count=2, seed=1)
    args = [*NO_PREVIEW, *PRIOR_FAST, "--prior-preservation", "--class-images", str(class_dir),
            "--num-class-images", "2"]
    original_loss = interrupt_identity_stage(monkeypatch)
    assert train_subject(photos, *args, steps=3) == 130
    monkeypatch.setattr(IdentityAdapterMethod, "loss", original_loss)
    write_photos(class_dir, count=1, seed=2)  # photo0.png: same name and size, other pixels
    capsys.readouterr()
    assert train_subject(photos, *args, "--resume", steps=3) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume" in err and "class_images_sha256" in err and "\n" not in err
    assert library_is_empty(isolated_home)


def test_resume_finds_the_same_class_images_named_another_way(photos, tmp_path, isolated_home, monkeypatch):
    """What a resume checks of given class images is their names and bytes: the same folder, given relative
    before and absolute now, resumes; so do settings that change no image (the batch of generated ones, and the
    generation settings, unused with given images), which had been refused."""
    from vidbooth.engine.subject_methods import IdentityAdapterMethod

    class_dir = write_photos(tmp_path / "dogs", count=2, seed=1)
    monkeypatch.chdir(tmp_path)
    args = [*NO_PREVIEW, *PRIOR_FAST, "--prior-preservation", "--num-class-images", "2", "--class-images"]
    original_loss = interrupt_identity_stage(monkeypatch)
    assert train_subject(photos, *args, "dogs", steps=3) == 130
    monkeypatch.setattr(IdentityAdapterMethod, "loss", original_loss)
    unused = ["--set", "prior.sample_batch_size=1", "--set", "prior.num_inference_steps=7"]
    assert train_subject(photos, *args, str(class_dir), *unused, "--resume", steps=3) == 0
    config = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())["config"]
    assert config["prior"]["class_images"] == str(class_dir)


@pytest.mark.parametrize(
    "flags", [["--class-images", "dogs"], ["--num-class-images", "2"], ["--class-images", "x", "--prior-weight", "0.5"]]
)
@pytest.mark.parametrize("command", ["train-subject", "identity-adapter"])
def test_prior_flags_without_prior_preservation_are_refused(command, flags, photos, isolated_home, capsys):
    args = [command, str(photos), "--name", "S*", *FAST, *flags]
    assert main(args + (["--class-noun", "dog"] if command == "train-subject" else [])) == 2
    err = capsys.readouterr().err.strip()
    named = " and ".join(flag for flag in flags if flag.startswith("--"))
    assert f"error: {named} need" in err and "add --prior-preservation" in err and "\n" not in err
    assert library_is_empty(isolated_home)


@pytest.mark.parametrize("command, sets, warned", [
    ("train-subject", ["prior.weight=2"], ["--set prior.weight=2 has no effect without --prior-preservation"]),
    ("textual-inversion", ["identity.hidden_ratio=0.25", "prior.enabled=true"], [
        "--set identity.hidden_ratio=0.25 has no effect: it acts on the identity stage, which this run leaves out",
        "--set prior.enabled=true has no effect: it acts on the identity stage, which this run leaves out"]),
    ("identity-adapter", ["textual_inversion.num_vectors=3"], [
        "--set textual_inversion.num_vectors=3 has no effect: it acts on the textual_inversion stage, which this run "
        "leaves out"]),
    ("textual-inversion", ["stages=[identity]"], [
        "--set stages=[identity] has no effect: textual-inversion runs the textual_inversion stage alone "
        "(train-subject runs the stages it names)"]),
    ("textual-inversion", ["preview.enabled=false", "preview.prompt=x"], [
        "--set preview.prompt=x has no effect: the preview is off (--preview turns it on)",
        "--set preview.num_frames=2 has no effect: the preview is off (--preview turns it on)",
        "--set preview.num_inference_steps=1 has no effect: the preview is off (--preview turns it on)",
        "--set preview.guidance_scale=1.0 has no effect: the preview is off (--preview turns it on)"]),
    ("train-subject", ["data.views=8"], [
        "--set data.views=8 has no effect: the photos are not augmented (--flip or --scale-jitter makes the views)"]),
    ("identity-adapter", ["data.views=8", "data.flip=true"], []),
])
def test_settings_that_would_do_nothing_are_warned_of(command, sets, warned, photos, monkeypatch):
    """They had been accepted silently (the flags that set them are refused)."""
    import vidbooth.cli.subject as cli
    import vidbooth.engine.subject as engine

    messages = []
    monkeypatch.setattr(cli, "warn", messages.append)
    monkeypatch.setattr("vidbooth.reporting.warn", messages.append)
    for function in ("train_subject", "train_textual_inversion", "train_identity_adapter"):
        monkeypatch.setattr(engine, function, lambda cfg: None)
    monkeypatch.setattr("vidbooth.cli.options.learned_backbone", lambda *args: {})
    monkeypatch.setattr("vidbooth.library.artifact_dir", lambda kind, name: None)  # identity-adapter's subject
    args = [command, str(photos), "--name", "S*", *FAST, *[arg for item in sets for arg in ("--set", item)]]
    assert main(args + (["--class-noun", "dog"] if command != "identity-adapter" else [])) == 0
    assert messages == warned


def test_prior_flags_apply_when_a_recipe_or_set_enables_the_prior(photos, monkeypatch):
    import vidbooth.engine.subject as engine

    ran = []
    monkeypatch.setattr(engine, "train_subject", ran.append)
    args = ["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", *FAST, "--prior-weight", "0.5"]
    assert main([*args, "--set", "prior.enabled=true"]) == 0
    assert ran[0].prior.enabled and ran[0].prior.weight == 0.5


CLASS_IMAGE_ERRORS = {
    "missing folder": (lambda d: d / "nope", "class image folder not found"),
    "a file": (lambda d: write_photos(d, count=1) / "photo0.png", "--class-images must be a folder of class images"),
    "no images": (lambda d: (d / "notes.txt").write_text("hi") and d, "no class images found in"),
    "a corrupt image": (lambda d: (d / "dog.png").write_bytes(b"not a png") and d, "dog.png"),  # and no warning
}


@pytest.mark.parametrize("case", list(CLASS_IMAGE_ERRORS))
def test_bad_class_images_are_one_line_about_class_images(case, photos, tmp_path, isolated_home, capsys):
    make, message = CLASS_IMAGE_ERRORS[case]
    folder = tmp_path / "dogs"
    folder.mkdir()
    given = make(folder)
    assert train_subject(photos, "--prior-preservation", "--class-images", str(given)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(given) in err and "photo" not in err.replace(str(given), "") and "\n" not in err
    assert library_is_empty(isolated_home)


@pytest.mark.parametrize("command", ["train-subject", "identity-adapter"])
def test_a_subject_saved_by_another_run_while_this_one_waited_for_the_lock_is_refused_before_training(
    command, photos, isolated_home, monkeypatch, capsys
):
    """Two terminals: the second run passed its first check while the first still trained, then got the lock once
    the first had saved. It had trained in full, then been refused at its save."""
    import vidbooth.engine.subject as engine
    from vidbooth import library

    if command == "identity-adapter":
        assert main(["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", "--steps", "1",
                     *NO_PREVIEW]) == 0
    real_lock = library.artifact_lock

    def first_run_saves_then_releases(kind, name):
        manifest = subject_dir(isolated_home) / "manifest.json"
        if command == "train-subject":  # the other run's whole subject
            with library.staged_artifact(kind, name) as stage:
                write_json(stage / library.MANIFEST, {"name": name, "kind": kind})
        else:  # the other run's identity adapter, added to the subject
            data, adapter = json.loads(manifest.read_text()), manifest.parent / "identity_adapter.safetensors"
            adapter.write_bytes(b"its tensors")
            write_json(manifest, data | {"paths": data["paths"] | {"identity_adapter": adapter.name},
                                         "files": data["files"] | {adapter.name: library.sha256_file(adapter)}})
        return real_lock(kind, name)

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded (and trained) for a subject another run had just saved")

    monkeypatch.setattr(engine, "artifact_lock", first_run_saves_then_releases)
    monkeypatch.setattr(engine, "load_backbone_for", refuse)
    capsys.readouterr()
    noun = ["--class-noun", "dog"] if command == "train-subject" else []
    args = [command, str(photos), "--name", "S*", *FAST, *noun]
    assert main([*args, "--steps" if command == "identity-adapter" else "--ti-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    expected = "already exists" if command == "train-subject" else "already has an identity adapter"
    assert expected in err and "\n" not in err


def test_a_stopped_runs_checkpoint_is_neither_continued_nor_discarded_unasked(
    photos, isolated_home, monkeypatch, capsys
):
    """Rerunning a stopped command without --resume had thrown its checkpoints away with a warning (hours of a real
    run); it is refused before a model loads, and --overwrite starts over."""
    from vidbooth.engine.subject_methods import IdentityAdapterMethod

    original_loss = interrupt_identity_stage(monkeypatch)
    assert train_subject(photos, "--no-preview", steps=3) == 130
    monkeypatch.setattr(IdentityAdapterMethod, "loss", original_loss)
    runs = isolated_home / ".runs" / "subjects" / "S%2A"
    kept = sorted(p.relative_to(runs) for p in runs.rglob("step-*"))
    capsys.readouterr()
    assert train_subject(photos, "--no-preview", steps=3) == 2
    err = capsys.readouterr().err.strip()
    assert "a stopped run left a checkpoint in" in err
    assert "rerun with --resume to continue it, or with --overwrite" in err
    assert "\n" not in err and sorted(p.relative_to(runs) for p in runs.rglob("step-*")) == kept
    assert train_subject(photos, "--no-preview", "--overwrite", steps=3) == 0
    assert "starting over" in capsys.readouterr().err and not runs.exists()


def test_the_saved_line_names_the_subjects_folder_and_an_added_identity_adapter(
    photos, isolated_home, monkeypatch, capsys
):
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    folder = subject_dir(isolated_home)
    assert main(["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", "--steps", "1",
                 *NO_PREVIEW]) == 0
    assert f"saved subject 'S*' (token S*) in {folder}" in capsys.readouterr().err
    assert main(["identity-adapter", str(photos), "--name", "S*", "--steps", "1", *NO_PREVIEW]) == 0
    assert f"saved subject 'S*' (token S*, identity adapter added) in {folder}" in capsys.readouterr().err


def test_a_photo_copied_under_another_name_is_warned_of(photos, monkeypatch):
    """'IMG_1.jpg' and 'IMG_1 copy.jpg': the same photo had counted twice without a word."""
    import shutil

    import vidbooth.engine.subject as engine

    warned = []
    monkeypatch.setattr("vidbooth.reporting.warn", warned.append)
    shutil.copy(photos / "photo1.png", photos / "photo1 copy.png")
    shutil.copy(photos / "photo1.png", photos / "photo9.png")
    loaded = engine._load_photos([str(photos)])
    assert len(loaded.files) == 5
    assert len(warned) == 1 and warned[0].endswith(" (and 1 more): it counts once for each name; remove the copy")
    assert str(photos / "photo1 copy.png") in warned[0] and str(photos / "photo1.png") in warned[0]
    warned.clear()
    engine._load_photos([str(photos / "photo0.png"), str(photos / "photo2.png"), str(photos / "photo1.png")])
    assert warned == []


def test_identity_adapter_on_another_base_says_so_alone(photos, isolated_home, capsys):
    """It had first warned that the pseudo-word was 'learned with other data' (the other base's recipe), then been
    refused for the base."""
    assert main(["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *FAST, "--steps", "1"]) == 0
    capsys.readouterr()
    assert main(["identity-adapter", "--name", "S*", *FAST, "--steps", "1", "--base", "tiny-animatediff",
                 "--set", "data.resolution=32"]) == 2  # as another base's recipe may have it
    err = capsys.readouterr().err
    assert "subject 'S*' was learned on tiny (fingerprint" in err and "learned with other" not in err, err


def test_no_prior_preservation_with_a_class_flag_says_they_contradict(photos, tmp_path, capsys):
    """It had said '--class-images needs --prior-preservation: add --prior-preservation', against what was typed;
    and a 'no' for a stage the run leaves out had been refused as if it asked for something."""
    assert train_subject(photos, "--no-prior-preservation", "--class-images", str(tmp_path)) == 2
    assert "--class-images and --no-prior-preservation contradict each other: drop one" in capsys.readouterr().err
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", *NO_PREVIEW, "--ti-steps", "2",
                 "--no-prior-preservation", "--set", "stages=[textual_inversion]"]) == 0


def test_identity_stage_trains_with_the_prior_weight_and_high_noise_it_was_given(photos, isolated_home, monkeypatch,
                                                                               one_torch_thread):
    """(mutation testing: a prior weight of 1 or default high-noise settings in stage 2 had passed)"""
    from vidbooth.engine.objective import HighNoise
    from vidbooth.engine.subject_methods import IdentityAdapterMethod

    seen = []
    original = IdentityAdapterMethod.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append((self.prior_weight, self.high_noise))

    monkeypatch.setattr(IdentityAdapterMethod, "__init__", recording)
    assert train_subject(photos, "--prior-preservation", "--num-class-images", "1", "--prior-weight", "0.3",
                         "--set", "identity.train.high_noise_fraction=0.5",
                         "--set", "identity.train.high_noise_from=900", "--no-preview") == 0
    assert seen == [(0.3, HighNoise(0.5, 900))]


def test_the_prior_weight_is_part_of_the_resume_signature():
    """(mutation testing)"""
    from types import SimpleNamespace

    from vidbooth.config.subject import PriorConfig
    from vidbooth.engine.subject import _prior_signature

    def signature(weight):
        return _prior_signature(SimpleNamespace(cfg=SimpleNamespace(prior=PriorConfig(enabled=True, weight=weight)),
                                                class_images_sha256=None))

    assert signature(0.3) != signature(1.0)


def test_resume_is_refused_when_the_subjects_pseudo_word_was_learned_again(photos, isolated_home, monkeypatch,
                                                                            capsys):
    """A stopped identity-adapter run trained its adapter against the subject's pseudo-word; once that was learned
    again (textual-inversion --overwrite), a resume would go on against another embedding: it is refused."""
    from vidbooth.engine.subject_methods import IdentityAdapterMethod

    stage_one = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *NO_PREVIEW, "--steps", "2"]
    stage_two = ["identity-adapter", "--name", "S*", *NO_PREVIEW, "--steps", "3"]
    assert main(stage_one) == 0
    original_loss = interrupt_identity_stage(monkeypatch)
    assert main(stage_two) == 130
    monkeypatch.setattr(IdentityAdapterMethod, "loss", original_loss)
    assert main([*stage_one, "--overwrite", "--seed", "7"]) == 0
    capsys.readouterr()
    assert main([*stage_two, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume" in err and err.endswith("(the subject's pseudo-word, learned again since this run "
                                                   "stopped); rerun with --overwrite instead of --resume to start over")
    assert "\n" not in err


def test_the_photos_augmented_views_follow_the_seed():
    """--seed picks the flips and zooms of the photos' views: the same seed gives the same views, another seed
    others (mutation testing: views drawn from a fixed seed had passed)."""
    from types import SimpleNamespace

    from PIL import Image

    from vidbooth.config.subject import SubjectConfig
    from vidbooth.engine.subject import _encode_photos

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(2)]

    def views(seed: int) -> torch.Tensor:
        cfg = SubjectConfig()
        cfg.data.flip, cfg.data.scale_jitter, cfg.data.views, cfg.runtime.seed = True, 0.3, 4, seed
        backbone = SimpleNamespace(device="cpu", encode_video=lambda pixels: pixels)  # the views themselves
        return _encode_photos(SimpleNamespace(cfg=cfg, photos=SimpleNamespace(images=images), size=32,
                                              backbone=backbone))

    first = views(0)
    assert first.shape == (8, 1, 3, 32, 32)
    assert torch.equal(first, views(0)) and not torch.equal(first, views(1))


def test_a_preview_setting_the_model_cannot_take_is_told_before_training(photos, isolated_home, monkeypatch, capsys):
    """The preview comes after training: a preview.num_inference_steps of 1000 (the model has 1000 noise levels)
    had failed the run once it had trained, losing the training."""
    import vidbooth.engine.subject as engine

    real_train = engine.train
    monkeypatch.setattr(engine, "train", lambda *args, **kwargs: pytest.fail("it trained"))
    assert train_subject(photos, "--set", "preview.num_inference_steps=1000") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: preview.num_inference_steps (--set preview.num_inference_steps=N) must be from 1 to 999 (the model "
        "was trained on 1000 noise levels), got 1000")
    assert library_is_empty(isolated_home)
    monkeypatch.setattr(engine, "train", real_train)
    assert train_subject(photos, "--set", "preview.num_inference_steps=1000", "--no-preview") == 0  # not made: fine


def test_a_failed_preview_keeps_the_training_and_says_how_to_save_it(photos, isolated_home, monkeypatch, capsys):
    """A preview that fails once training has ended (a sample that diverged) had ended the run with the sampler's
    message alone: the training is in its last checkpoint, and --resume saves it without training again."""
    import vidbooth.engine.sampling as sampling
    from vidbooth.errors import UserError

    real_sample = sampling.sample_video

    def diverging(*args, **kwargs):
        raise UserError("the sample became NaN")

    monkeypatch.setattr(sampling, "sample_video", diverging)
    assert train_subject(photos) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: the preview failed: the sample became NaN; the training is kept: rerun the same command with --resume "
        "(and --no-preview to skip the preview) to save it without training again")
    assert library_is_empty(isolated_home)
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    monkeypatch.setattr(sampling, "sample_video", out_of_memory)
    assert train_subject(photos, "--resume") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: the preview failed: it ran out of memory; the training is kept: rerun the same command with --resume")
    monkeypatch.setattr(sampling, "sample_video", real_sample)
    assert train_subject(photos, "--resume", "--no-preview") == 0
    assert (subject_dir(isolated_home) / "manifest.json").is_file()


def test_the_resume_signature_holds_the_photos():
    """(mutation testing) A --resume after a photo was replaced would have continued on other photos."""
    from types import SimpleNamespace

    from vidbooth.config.subject import SubjectConfig
    from vidbooth.engine.subject import _settings_signature

    def signature(hashes, stage):
        run = SimpleNamespace(cfg=SubjectConfig(), photos=SimpleNamespace(hashes=hashes), token="S*", class_noun="dog",
                              class_images_sha256=None)
        return _settings_signature(run, stage)

    for stage in ("textual_inversion", "identity"):
        assert signature(["a", "b"], stage) == signature(["a", "b"], stage) != signature(["a", "c"], stage)


def test_given_class_images_are_cut_to_num_class_images(tmp_path):
    """(mutation testing) --num-class-images 3 with a folder of 5 had trained on all 5."""
    from vidbooth.engine.prior import class_image_files

    folder = write_photos(tmp_path / "dogs", count=5)
    assert [p.name for p in class_image_files(folder, 3)] == ["photo0.png", "photo1.png", "photo2.png"]


def test_a_name_differing_from_another_subjects_only_in_letter_case_is_warned_of(photos, isolated_home, capsys):
    """generate refuses 's*' and 'S*' in one prompt (their pseudo-words read alike); training 's*' beside 'S*' had
    said nothing."""
    fake_subject(isolated_home, "S*")
    assert main(["textual-inversion", str(photos), "--name", "s*", "--class-noun", "dog", *FAST, "--steps", "1"]) == 0
    assert ("warning: subject 'S*' differs from 's*' only in letter case: the two cannot be used in one prompt "
            "(their pseudo-words read alike); rename one to use them together") in capsys.readouterr().err
    assert main(["textual-inversion", str(photos), "--name", "S2", "--class-noun", "dog", *FAST, "--steps", "1"]) == 0
    assert "letter case" not in capsys.readouterr().err


def test_identity_adapter_refuses_a_pseudo_word_file_that_its_manifest_does_not_record(photos, isolated_home, capsys):
    """A learned_embeds re-sealed with 3 vectors under a manifest of 1 had been trained on (captions spelled for 1)
    and sealed as a subject that generate then refuses."""
    from safetensors.torch import save_file

    from vidbooth.library import sha256_file

    assert main(["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *FAST, "--steps", "1"]) == 0
    folder = subject_dir(isolated_home)
    tensors = load_tensors(folder / "learned_embeds.safetensors")[0]
    save_file({"S*": tensors["S*"].repeat(3, 1)}, str(folder / "learned_embeds.safetensors"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["learned_embeds.safetensors"] = sha256_file(folder / "learned_embeds.safetensors")
    write_json(folder / "manifest.json", manifest)
    capsys.readouterr()
    assert main(["identity-adapter", "--name", "S*", *FAST, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the pseudo-word 'S*' of 3 vector(s), but the subject's manifest records " \
        "'S*' of 1 (altered since): retrain the subject" in err
    assert json.loads((folder / "manifest.json").read_text()) == manifest  # nothing sealed


def test_photo_copies_keep_the_subjects_own_names_without_colliding_with_numbered_ones(tmp_path, isolated_home):
    """A photo given first is numbered 00-a.png; the subject's own copy of that name, given after it, is numbered
    anew rather than overwriting it (both are listed, each with its source), and a numbered name that a kept copy
    took first is numbered again."""
    from vidbooth.engine.subject import _copy_photos, _Photos

    own = subject_dir(isolated_home) / "photos"
    own.mkdir(parents=True)
    (own / "00-a.png").write_bytes(b"own")
    write_json(own.parent / "manifest.json", {"kind": "subject", "name": "S*", "schema_version": 1, "files": {},
                                              "photos": [{"file": "photos/00-a.png", "source": "/was/a.png"}]})
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a.png").write_bytes(b"new")
    photos = _Photos(files=[tmp_path / "new" / "a.png", own / "00-a.png"], images=[], hashes=["h-new", "h-own"])
    entries = _copy_photos(photos, tmp_path / "copies", "S*")
    assert [(entry["file"], entry["source"]) for entry in entries] == [
        ("photos/00-a.png", str(tmp_path / "new" / "a.png")), ("photos/01-00-a.png", "/was/a.png")]
    assert (tmp_path / "copies" / "00-a.png").read_bytes() == b"new"
    assert (tmp_path / "copies" / "01-00-a.png").read_bytes() == b"own"
    (own / "00-a.png").rename(own / "01-a.png")  # kept first, it takes the name the second photo is numbered to
    photos = _Photos(files=[own / "01-a.png", tmp_path / "new" / "a.png"], images=[], hashes=["h-own", "h-new"])
    entries = _copy_photos(photos, tmp_path / "again", "S*")
    assert [entry["file"] for entry in entries] == ["photos/01-a.png", "photos/01-01-a.png"]
    assert (tmp_path / "again" / "01-a.png").read_bytes() == b"own"


def test_gradient_checkpointing_learns_the_same_subject(photos, isolated_home, recomputations):
    """Both stages, with prior preservation and the guided losses (their unconditional passes run without
    gradients, the adapters switched off around them): the same tensors, bit for bit, as without."""
    args = ["train-subject", str(photos), "--class-noun", "dog", *NO_PREVIEW, "--ti-steps", "2", "--identity-steps",
            "2", "--prior-preservation", *PRIOR_FAST, "--set", "prior.num_class_images=2",
            "--set", "textual_inversion.guidance_scale=3", "--set", "identity.guidance_scale=3"]
    assert main([*args, "--name", "plain"]) == 0 and recomputations == []
    assert main([*args, "--name", "recomputed", "--gradient-checkpointing"]) == 0 and recomputations
    for file in ("learned_embeds.safetensors", "identity_adapter.safetensors"):
        plain, _ = load_tensors(isolated_home / "subjects" / "plain" / file)
        recomputed, _ = load_tensors(isolated_home / "subjects" / "recomputed" / file)
        plain, recomputed = list(plain.values()), list(recomputed.values())  # the embedding's key is the name
        assert len(plain) == len(recomputed) and all(map(torch.equal, plain, recomputed))
    config = yaml.safe_load((isolated_home / "subjects" / "recomputed" / "config.yaml").read_text())
    assert config["textual_inversion"]["train"]["gradient_checkpointing"] is True
    assert config["identity"]["train"]["gradient_checkpointing"] is True


def test_prior_steps_the_model_cannot_take_are_refused_before_textual_inversion_trains(photos, isolated_home, capsys):
    """The class images are made after textual inversion: a bad prior.num_inference_steps had been told then, as a
    '--num-inference-steps' that train-subject does not have, with a stopped run left behind."""
    code = main(["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", *NO_PREVIEW, "--ti-steps", "2",
                 "--identity-steps", "2", "--prior-preservation", "--set", "prior.num_inference_steps=1000"])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: prior.num_inference_steps (--set prior.num_inference_steps=N) must be from 1 to 999 (the model was "
        "trained on 1000 noise levels), got 1000")
    assert not (isolated_home / ".runs").exists() or not any((isolated_home / ".runs").rglob("step-*"))


def test_a_subject_saved_by_another_run_while_this_one_met_its_lock_is_refused(photos, isolated_home, monkeypatch,
                                                                               capsys):
    """The library is checked again under the run's lock: another run of the name may have saved it meanwhile."""
    import contextlib

    import vidbooth.engine.subject as subject

    taken = subject.artifact_lock

    @contextlib.contextmanager
    def saved_meanwhile(kind, name):
        subject_dir(isolated_home, name).mkdir(parents=True)
        write_json(subject_dir(isolated_home, name) / "manifest.json", {"kind": kind, "name": name})
        with taken(kind, name) as lock:
            yield lock

    monkeypatch.setattr(subject, "artifact_lock", saved_meanwhile)
    assert train_subject(photos, "--no-preview") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: subject 'S*' already exists in "), err
    assert json.loads((subject_dir(isolated_home) / "manifest.json").read_text()) == {"kind": "subject", "name": "S*"}


def test_a_resolution_below_8_pixels_is_refused_before_anything_is_written(photos, isolated_home, capsys):
    assert train_subject(photos, "--resolution", "4") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.resolution (--resolution) must be at least 8 pixels, got 4" in err
    assert not isolated_home.exists() or library_is_empty(isolated_home)


def test_a_pseudo_word_learned_in_fp16_on_a_gpu_is_warned_of_when_a_cpu_adds_the_identity_adapter(
    photos, isolated_home, capsys
):
    ti = ["textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *NO_PREVIEW, "--steps", "1"]
    assert main(ti) == 0
    manifest_file = subject_dir(isolated_home) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["config"]["runtime"]["precision"] = "fp16"
    manifest["config"]["textual_inversion"]["train"]["mixed_precision"] = "fp16"
    write_json(manifest_file, manifest)
    capsys.readouterr()
    assert main(["identity-adapter", "--name", "S*", *NO_PREVIEW, "--steps", "1"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "learned with other runtime.precision, mixed_precision than this identity adapter" in err, err


def test_a_subject_with_a_damaged_manifest_is_retrained_from_its_own_photos(photos, isolated_home, tmp_path):
    assert train_subject(photos, "--no-preview", steps=1) == 0
    own = subject_dir(isolated_home) / "photos"
    kept = tmp_path / "kept-photos"
    kept.mkdir()
    for photo in own.iterdir():
        (kept / photo.name).write_bytes(photo.read_bytes())
    (subject_dir(isolated_home) / "manifest.json").write_text("{ damaged")
    assert train_subject(own, "--no-preview", "--overwrite", steps=1) == 0
    manifest = json.loads((subject_dir(isolated_home) / "manifest.json").read_text())
    assert sorted(Path(entry["file"]).name for entry in manifest["photos"]) == sorted(p.name for p in kept.iterdir())
    assert all((own / photo.name).read_bytes() == photo.read_bytes() for photo in kept.iterdir())
