"""VideoBooth's image prompts: the token mapper and splice, the attention injections (an exact no-op until trained,
the unconditional half of guidance without them), the coarse-to-fine training, its file, resume, and the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from omegaconf import OmegaConf
from PIL import Image

from tests.badinputs import capture_warnings
from vidbooth.adapters.base import conditional_half_only, load_tensors
from vidbooth.adapters.image_prompt import (
    TokenMapper,
    capturing,
    clear_references,
    find_span,
    injections,
    set_injection_scale,
    splice_tokens,
)
from vidbooth.cli.app import main
from vidbooth.config.image_prompt import ImagePromptConfig
from vidbooth.config.schema import ZeroShotConfig
from vidbooth.config.train import TrainConfig
from vidbooth.data.video import read_video
from vidbooth.engine import image_prompt as image_prompt_engine
from vidbooth.engine.appearance import load_appearance_encoder
from vidbooth.engine.image_prompt import (
    WARNINGS_SHOWN,
    ImagePromptModel,
    ImagePromptSpec,
    folder_examples,
    load_image_prompt_model,
    prepare_image_prompt,
    train_image_prompt,
    training_items,
)
from vidbooth.engine.sampling import sample_video
from vidbooth.data.images import pixels_to_tensor
from vidbooth.data.subject_clips import find_subject_clips, load_subject_clip
from vidbooth.errors import UserError
from vidbooth.fileio import exclusive_lock
from vidbooth.nano.world import Sprite, render_photos

from tests.media import make_subject_clips

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(out, base, **changes) -> ImagePromptConfig:
    cfg = ImagePromptConfig(out=str(out), **changes)
    cfg.backbone.base = str(base)
    cfg.runtime.device = "cpu"
    cfg.data.clips = 4
    cfg.data.num_frames = 2
    cfg.coarse = TrainConfig(lr=1e-3, steps=2, batch_size=2, checkpoint_every=1)
    cfg.fine = TrainConfig(lr=1e-3, steps=2, batch_size=2, checkpoint_every=1)
    return cfg


@pytest.fixture(scope="module")
def trained(tiny_base_dirs, tmp_path_factory):
    """An image-prompt model of the tiny UNet3D base, 2 + 2 steps."""
    out = tmp_path_factory.mktemp("image-prompt") / "tiny.safetensors"
    return train_image_prompt(_config(out, tiny_base_dirs["unet3d"]))


def _model(backbone) -> ImagePromptModel:
    encoder = load_appearance_encoder(None, backbone)
    dim = int(backbone.text_encoder.config.hidden_size)
    return ImagePromptModel(backbone, ImagePromptSpec("sprite", 1, encoder.dim, dim, 4 * dim, ""), encoder)


def test_splice_replaces_the_span_and_keeps_the_length():
    text = torch.arange(6, dtype=torch.float32).view(1, 6, 1).repeat(2, 1, 1)  # positions 0..5
    one = splice_tokens(text, [(2, 4), (1, 2)], torch.full((2, 1, 1), -1.0))
    assert one[0, :, 0].tolist() == [0, 1, -1, 4, 5, 5]  # two places become one: the last is repeated
    assert one[1, :, 0].tolist() == [0, -1, 2, 3, 4, 5]
    three = splice_tokens(text[:1], [(1, 2)], torch.full((1, 3, 1), -1.0))
    assert three[0, :, 0].tolist() == [0, -1, -1, -1, 2, 3]  # one becomes three: the end is cut
    assert find_span([5, 7, 8, 9], [8, 9]) == (2, 4) and find_span([5, 7], [8]) is None


def test_token_mapper_gives_layer_normed_tokens():
    mapper = TokenMapper(image_dim=5, text_dim=8, num_tokens=3)
    tokens = mapper(torch.randn(2, 5))
    assert tokens.shape == (2, 3, 8)
    assert torch.allclose(tokens.mean(-1), torch.zeros(2, 3), atol=1e-5)


def test_untrained_injections_change_nothing_and_train_only_themselves(tiny_backbones):
    bb = tiny_backbones["unet3d"]
    latents = torch.randn(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    text = bb.encode_prompt(["a sprite", "a cat"])
    before = bb.unet_forward(latents, torch.tensor([500, 20]), text)
    model = _model(bb)
    try:
        names = list(injections(bb.unet))
        assert names and all(name.endswith(".attn1") for name in names)
        with capturing(bb.unet):
            bb.unet_forward(latents[:, :, :1], torch.tensor([500, 20]), text)
        assert all(layer.reference is not None for layer in injections(bb.unet).values())
        assert torch.equal(bb.unet_forward(latents, torch.tensor([500, 20]), text), before)
        tensors = model.state_dict()
        assert {k.split(".")[0] for k in tensors} == {"mapper", "inject"}
        assert all(not p.requires_grad for p in bb.unet.parameters() if not any(p is q for q in _own(bb)))
    finally:
        model.remove()
    assert not injections(bb.unet)


def _own(bb):
    return [p for layer in injections(bb.unet).values() for p in layer.parameters()]


def test_injections_act_on_the_conditional_half_of_guidance_only(tiny_backbones):
    bb = tiny_backbones["unet3d"]
    model = _model(bb)
    try:
        for layer in injections(bb.unet).values():
            torch.nn.init.normal_(layer.up.weight, std=0.5)  # as if trained
        latents = torch.randn(1, 4, 2, 16, 16, generator=torch.Generator().manual_seed(1))
        text = bb.encode_prompt(["", "a sprite"])
        with capturing(bb.unet):
            bb.unet_forward(latents[:, :, :1].repeat(2, 1, 1, 1, 1), torch.tensor([300, 300]), text)
        batch = latents.repeat(2, 1, 1, 1, 1)
        with conditional_half_only(bb.unet, 1):
            guided = bb.unet_forward(batch, torch.tensor([300, 300]), text)
        set_injection_scale(bb.unet, 0.0)
        plain = bb.unet_forward(batch, torch.tensor([300, 300]), text)
        assert torch.equal(guided[0], plain[0])  # unconditional: as without the image prompt
        assert not torch.allclose(guided[1], plain[1])
    finally:
        model.remove()


def test_training_writes_one_safetensors_file_that_loads_back(trained, tiny_backbones):
    tensors, metadata = load_tensors(trained)
    assert metadata["method"] == "image_prompt" and json.loads(metadata["spec"])["word"] == "sprite"
    assert set(json.loads(metadata["losses"])) == {"coarse", "fine"}
    assert not trained.with_name(trained.name + ".run").exists()  # checkpoints go once the model is saved
    bb = tiny_backbones["unet3d"]
    model = load_image_prompt_model(bb, trained)
    try:
        assert model.state_dict().keys() == tensors.keys()
        assert all(torch.equal(model.state_dict()[k], tensors[k]) for k in tensors)
        assert any(layer.up.weight.abs().sum() > 0 for layer in injections(bb.unet).values())  # the fine stage ran
    finally:
        model.remove()


def test_a_stop_while_the_model_is_written_leaves_the_old_file_whole(tiny_base_dirs, tmp_path, monkeypatch):
    """The model file is written beside its name and renamed in: Ctrl-C part-way through leaves the file that was
    there untouched (it had been truncated and half-written in place) and no temporary file."""
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"the previous model")
    real_save = image_prompt_engine.save_tensors

    def half_then_ctrl_c(path, tensors, metadata):
        real_save(path, tensors, metadata)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(image_prompt_engine, "save_tensors", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train_image_prompt(_config(out, tiny_base_dirs["unet3d"], overwrite=True))
    assert out.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "model.safetensors.run"]


def test_a_stages_high_noise_share_is_trained_with(trained, tiny_base_dirs, tmp_path):
    """The fine stage's high_noise_* settings were accepted and never used."""
    cfg = _config(tmp_path / "high.safetensors", tiny_base_dirs["unet3d"])
    cfg.fine.high_noise_fraction, cfg.fine.high_noise_from = 1.0, 900
    ours, theirs = load_tensors(train_image_prompt(cfg))[0], load_tensors(trained)[0]
    assert ours.keys() == theirs.keys()
    differ = {key for key in ours if not torch.equal(ours[key], theirs[key])}
    assert differ and all(not key.startswith("mapper") for key in differ), differ  # the coarse stage's are equal


def test_an_image_prompt_model_of_another_base_is_refused(trained, tiny_backbones):
    bb = tiny_backbones["animatediff"]
    with pytest.raises(UserError, match="trained on another base"):
        load_image_prompt_model(bb, trained)
    assert not injections(bb.unet)


def test_an_image_prompt_model_with_a_damaged_spec_is_one_error(trained, tiny_backbones, tmp_path):
    """Its spec of another version (an unknown key) had been a TypeError traceback."""

    tensors, metadata = load_tensors(trained)
    spec = json.loads(metadata["spec"]) | {"gate": 0.5}
    damaged = tmp_path / "damaged.safetensors"
    save_file(tensors, str(damaged), metadata | {"spec": json.dumps(spec)})
    with pytest.raises(UserError, match="its 'spec' metadata is damaged or from another vidbooth version"):
        load_image_prompt_model(tiny_backbones["unet3d"], damaged)
    assert not injections(tiny_backbones["unet3d"].unet)


@pytest.mark.parametrize("change, message", [
    ({"hidden_dim": 8_000_000}, r"does not fit its tensors \(mapper.net.0.weight\)"),
    ({"num_tokens": 4}, r"does not fit its tensors \(mapper.net.2.weight\)"),
    ({"hidden_dim": -5}, "damaged"), ({"hidden_dim": 2.5}, "damaged"), ({"hidden_dim": "256"}, "damaged"),
    ({"hidden_dim": True}, "damaged"), ({"word": ""}, "damaged"), ({"encoder": None}, "damaged"),
])
def test_a_spec_is_checked_against_the_files_tensors_before_anything_is_built(change, message, trained,
                                                                              tiny_backbones, tmp_path, monkeypatch):
    """A crafted spec sized the mapper before its tensors were checked: hidden_dim 8e6 took 6.5 GB and 26 s to be
    refused, 3e7 more memory than the machine has; a negative, fractional or text size was a traceback."""
    from vidbooth.engine import image_prompt as engine

    tensors, metadata = load_tensors(trained)
    crafted = tmp_path / "crafted.safetensors"
    save_file(tensors, str(crafted), metadata | {"spec": json.dumps(json.loads(metadata["spec"]) | change)})

    def never(*args, **kwargs):
        raise AssertionError("the mapper was built to the crafted spec's sizes")

    monkeypatch.setattr(engine, "TokenMapper", never)
    with pytest.raises(UserError, match=message):
        load_image_prompt_model(tiny_backbones["unet3d"], crafted)
    assert not injections(tiny_backbones["unet3d"].unet)


def test_a_mapper_of_whole_numbers_or_nan_is_refused(trained, tiny_backbones, tmp_path):
    tensors, metadata = load_tensors(trained)
    for cast, message in ((lambda t: t.to(torch.int8), "holds int8 values"), (lambda t: t * float("nan"), "holds NaN")):
        crafted = tmp_path / "crafted.safetensors"
        save_file(tensors | {"mapper.norm.weight": cast(tensors["mapper.norm.weight"])}, str(crafted), metadata)
        with pytest.raises(UserError, match=f"tensor mapper.norm.weight {message}"):
            load_image_prompt_model(tiny_backbones["unet3d"], crafted)
        assert not injections(tiny_backbones["unet3d"].unet)


def test_the_prompt_must_name_the_word(trained, tiny_backbones):
    bb = tiny_backbones["unet3d"]
    model = load_image_prompt_model(bb, trained)
    try:
        photo = render_photos(Sprite("circle", "red", "solid"), 1, 32)[0]
        with pytest.raises(UserError, match="does not contain 'sprite'"):
            prepare_image_prompt(model, photo, "a dog running", torch.Generator())
    finally:
        model.remove()


def test_the_image_prompt_changes_the_video_and_its_tokens_alone_do_too(trained, tiny_backbones):
    bb = tiny_backbones["unet3d"]
    model = load_image_prompt_model(bb, trained)
    try:
        photo = render_photos(Sprite("circle", "red", "solid"), 1, 32)[0]

        def video(**kwargs):
            return sample_video(bb, "a sprite", num_frames=2, num_inference_steps=3, guidance_scale=3.0,
                                generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)

        cond = prepare_image_prompt(model, photo, "a sprite", torch.Generator().manual_seed(1))
        full = video(prompt_embeds=cond.prompt_embeds, before_unet=cond.before_unet)
        set_injection_scale(bb.unet, 0.0)
        tokens_only = video(prompt_embeds=cond.prompt_embeds, before_unet=cond.before_unet)
        clear_references(bb.unet)
        assert torch.equal(tokens_only, video(prompt_embeds=cond.prompt_embeds))
        assert not torch.equal(full, tokens_only) and not torch.equal(tokens_only, video())
    finally:
        model.remove()


def test_loading_an_image_prompt_model_leaves_the_callers_random_stream_as_it_was(trained, tiny_backbones):
    before = torch.random.get_rng_state()
    load_image_prompt_model(tiny_backbones["unet3d"], trained).remove()
    assert torch.equal(torch.random.get_rng_state(), before)  # its initial weights, replaced, had been drawn


def test_an_image_prompt_gives_the_same_videos_whatever_the_batch_size(trained, tiny_backbones):
    bb = tiny_backbones["unet3d"]
    model = load_image_prompt_model(bb, trained)
    try:
        photo = render_photos(Sprite("circle", "red", "solid"), 1, 32)[0]
        cond = prepare_image_prompt(model, photo, "a sprite", torch.Generator().manual_seed(1), num_videos=3)
        videos = [sample_video(bb, ["a sprite"] * 3, num_frames=2, num_inference_steps=3, guidance_scale=3.0,
                               generator=torch.Generator().manual_seed(0), output_type="latent", batch_size=size,
                               prompt_embeds=cond.prompt_embeds, before_unet=cond.before_unet) for size in (None, 2)]
        assert torch.allclose(videos[1], videos[0], atol=1e-5) and (videos[0][0] - videos[0][2]).abs().mean() > 0.1
    finally:
        model.remove()


def _stop_in_fine(cfg: ImagePromptConfig, monkeypatch) -> None:
    """Train `cfg` until its fine stage starts, where it stops as a killed run would."""
    import vidbooth.engine.train as engine

    real_train = engine.train

    def stop_in_fine(method, *args, **kwargs):
        if method.stage == "fine":
            raise UserError("stopped")
        return real_train(method, *args, **kwargs)

    monkeypatch.setattr(engine, "train", stop_in_fine)
    with pytest.raises(UserError, match="stopped"):
        train_image_prompt(cfg)
    monkeypatch.setattr(engine, "train", real_train)


def test_a_stopped_training_resumes_to_the_same_model(tiny_base_dirs, tmp_path, monkeypatch):
    base = tiny_base_dirs["unet3d"]
    reference = train_image_prompt(_config(tmp_path / "whole.safetensors", base))
    out = tmp_path / "stopped.safetensors"
    _stop_in_fine(_config(out, base), monkeypatch)
    assert not out.exists() and (tmp_path / "stopped.safetensors.run" / "coarse").is_dir()
    with pytest.raises(UserError, match="--resume"):
        train_image_prompt(_config(out, base))
    warnings = capture_warnings(monkeypatch)
    train_image_prompt(_config(out, base, resume=True))
    assert not any("nothing to resume" in w for w in warnings), warnings  # the fine stage had not begun
    ours, theirs = load_tensors(out)[0], load_tensors(reference)[0]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_cli_trains_then_generates_from_an_image_prompt(tiny_base_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    base = str(tiny_base_dirs["unet3d"])
    model = tmp_path / "ip.safetensors"
    assert main(["train-image-prompt", "--base", base, "--out", str(model), "--coarse-steps", "2", "--fine-steps",
                 "1", "--clips", "2", "--set", "data.num_frames=2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"use it with generate --image-prompt PHOTO --image-prompt-model {model}, or put it in the base's" in err
    assert model.is_file()
    photo = tmp_path / "subject.png"
    Image.fromarray(render_photos(Sprite("square", "blue", "striped"), 1, 64)[0]).save(photo)
    out = tmp_path / "v.mp4"
    args = ["generate", "--base", base, "--image-prompt", str(photo), "--image-prompt-model", str(model),
            "--prompt", "a sprite jumping", "--out", str(out), "--frames", "3", "--steps", "2", "--device", "cpu"]
    assert main(args) == 0
    assert "image prompt" in capsys.readouterr().err and read_video(out).shape == (3, 32, 32, 3)
    config = out.with_suffix(".yaml").read_text()
    assert "image_prompt: " in config and str(model) in config


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a dog"], "does not contain 'sprite'"),
    (["--prompt", "a sprite", "--image-prompt", "missing.png"], "missing.png"),
    (["--prompt", "a sprite", "--image-prompt", "broken.png"], "--image-prompt: "),  # found once it is decoded
    (["--prompt", "a sprite", "--image-prompt-model", "none.safetensors"], "--image-prompt-model: file not found: "),
    (["--prompt", "a sprite", "--image-prompt-model", "model.bin"], "pickle"),
    (["--prompt", "a sprite", "--image-prompt-scale", "-1"], "image_prompt_scale"),
    (["--prompt", "a sprite", "--image-prompt-word", ""], "--image-prompt-word) must be one word"),  # had been ignored
    (["--prompt", "a sprite", "--image-prompt-word", "a sprite"], "must be one word, the prompt's word"),
    (["--prompt", "a sprite", "--image-prompt-model", "."], "is a folder: give the .safetensors file in it"),
    (["--prompt", "a sprite", "--image-prompt-model", "adapter.safetensors"], "is not a vidbooth image-prompt model "
                                                                              "(a .safetensors file made by `vidbooth "
                                                                              "train-image-prompt`); give one made by"),
])
def test_bad_image_prompt_inputs_are_one_error_line(args, message, trained, tiny_base_dirs, tmp_path, capsys):
    photo = tmp_path / "subject.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    (tmp_path / "model.bin").write_bytes(b"x")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "adapter.safetensors"), {"method": "identity"})
    out = tmp_path / "out" / "v.mp4"
    given = ["--image-prompt", str(photo), "--image-prompt-model", str(trained)]
    code = main(["generate", "--base", str(tiny_base_dirs["unet3d"]), *given, *[
        str(tmp_path / a) if a.endswith((".png", ".safetensors", ".bin")) else a for a in args
    ], "--out", str(out), "--frames", "2", "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not out.parent.exists()


def test_a_prompt_without_the_whole_word_is_refused_before_the_model_loads(trained, tmp_path, capsys, monkeypatch):
    """'two sprites' had passed the early check (a substring) and failed only once the model was loaded."""
    from vidbooth.engine import backbone

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(backbone, "load_backbone_for", no_loading)
    photo = tmp_path / "subject.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    args = ["generate", "--prompt", "two sprites", "--image-prompt", str(photo), "--image-prompt-model", str(trained),
            "--out", str(tmp_path / "v.mp4")]
    assert main(args) == 2
    assert "the prompt does not contain 'sprite'" in capsys.readouterr().err


def test_a_word_past_the_text_encoders_length_is_told_as_such(trained, tiny_base_dirs, tmp_path, capsys):
    """A long prompt whose word the text encoder cuts away had been told it 'does not contain' the word."""
    photo = tmp_path / "subject.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    args = ["generate", "--base", str(tiny_base_dirs["unet3d"]), "--image-prompt", str(photo), "--image-prompt-model",
            str(trained), "--prompt", "a " + "very " * 40 + "nice sprite", "--out", str(tmp_path / "out" / "v.mp4"),
            "--frames", "2", "--steps", "1", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'sprite'" in err and "after the 32 tokens the text encoder reads" in err and "not contain" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_caption_whose_word_is_past_the_text_encoders_length_is_refused_naming_its_clip(tiny_base_dirs, tmp_path,
                                                                                          capsys, monkeypatch):
    """It had been refused as a prompt that 'does not contain' the word, naming no clip and advising a generate flag."""
    monkeypatch.setattr(image_prompt_engine, "training_items", lambda *a, **k: pytest.fail("the clips were read"))
    clips = make_subject_clips(tmp_path / "clips", count=2, masks=())
    (clips / "clip2.txt").write_text("a " + "very " * 40 + "nice subject")
    out = tmp_path / "m" / "ip.safetensors"
    code = main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--data", str(clips), "--word",
                 "subject", "--out", str(out), "--set", "data.num_frames=2", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "clip2.mp4" in err and "after the 32 tokens the text encoder reads" in err, err
    assert not (tmp_path / "m").exists()


def test_a_transparent_photo_prompts_as_its_subject_cut_out_onto_white(trained, tiny_base_dirs, tmp_path):
    """A background remover's PNG: the sprite at the left of a wide canvas, transparent elsewhere. Centre-cropped,
    as before, the photo kept none of the sprite."""
    sprite = render_photos(Sprite("square", "blue", "striped"), 1, 96)[0]
    canvas = np.zeros((160, 400, 4), np.uint8)
    canvas[32:128, 4:100, :3], canvas[32:128, 4:100, 3] = sprite, 255
    Image.fromarray(canvas, "RGBA").save(tmp_path / "transparent.png")
    cut = np.full((116, 116, 3), 255, np.uint8)  # 96 px and 10% free on each side (116 = 96 x 1.2, rounded up)
    cut[10:106, 10:106] = sprite
    Image.fromarray(cut).save(tmp_path / "cut.png")
    videos = []
    for name in ("transparent", "cut", "centre"):
        if name == "centre":  # the old reading: transparency on white, centre-cropped
            Image.fromarray(np.where(canvas[..., 3:] > 0, canvas[..., :3], 255).astype(np.uint8)).save(
                tmp_path / "centre.png")
        out = tmp_path / "videos" / f"{name}.mp4"
        assert main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--image-prompt",
                     str(tmp_path / f"{name}.png"), "--image-prompt-model", str(trained), "--prompt", "a sprite",
                     "--out", str(out), "--frames", "2", "--steps", "2", "--device", "cpu"]) == 0
        videos.append(read_video(out))
    assert np.array_equal(videos[0], videos[1]) and not np.array_equal(videos[0], videos[2])


def test_the_config_written_beside_the_video_reruns_it_from_another_folder(trained, tiny_base_dirs, tmp_path,
                                                                         monkeypatch):
    """Given relative paths (the base, the photo, the model), the `.yaml` kept them relative: rerun elsewhere it
    could not find the photo."""
    import shutil

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    shutil.copytree(tiny_base_dirs["unet3d"], work / "base")
    shutil.copy(trained, work / "ip.safetensors")
    Image.fromarray(render_photos(Sprite("square", "blue", "striped"), 1, 64)[0]).save(work / "subject.png")
    monkeypatch.chdir(work)
    assert main(["generate", "--base", "base", "--image-prompt", "subject.png", "--image-prompt-model",
                 "ip.safetensors", "--prompt", "a sprite", "--out", "v.mp4", "--frames", "2", "--steps", "2",
                 "--device", "cpu"]) == 0
    config = OmegaConf.load(work / "v.yaml")
    assert (config.backbone.base, config.image_prompt, config.image_prompt_model) == (
        str(work / "base"), str(work / "subject.png"), str(work / "ip.safetensors"))
    monkeypatch.chdir(elsewhere)
    assert main(["generate", "--recipe", str(work / "v.yaml"), "--out", "again.mp4"]) == 0
    assert np.array_equal(read_video(elsewhere / "again.mp4"), read_video(work / "v.mp4"))


def test_a_base_without_its_own_image_prompt_model_says_how_to_get_one(tiny_base_dirs, tmp_path, capsys):
    photo = tmp_path / "subject.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    code = main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--image-prompt", str(photo), "--prompt",
                 "a sprite", "--out", str(tmp_path / "v.mp4"), "--frames", "2", "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no image-prompt model of its own" in err
    # for this base: `train-image-prompt` alone trains one for nano, which this base then refuses
    assert f"train one with `vidbooth train-image-prompt --base {tiny_base_dirs['unet3d']} --out" in err
    assert not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize("args, message", [
    (["--out", "m.pt"], "must end in .safetensors"),
    (["--clips", "0"], "data.clips (--num-clips) must be at least 1"),  # --clips: the old name, still taken
    (["--set", "word=two words"], "one word"),
    (["--data", "missing"], "--data missing: not found"),
    (["--data", "missing", "--num-clips", "3"], "drop --num-clips"),
    (["--set", "num_tokens=0"], "num_tokens"),
    (["--set", "data.num_frames=100000"], "data.num_frames (--num-frames) must be at most 1024, got 100000"),  # OOM
    (["--batch-size", "0"], "coarse.batch_size (--batch-size) must be at least 1, got 0"),
    (["--out", ""], "out (--out) is empty (an unset shell variable?): give the .safetensors file"),  # '--out .'
    (["--coarse-steps", "0"], "coarse.steps (--coarse-steps) must be at least 1, got 0"),  # had named no flag
    (["--set", "fine.high_noise_fraction=1", "--set", "fine.high_noise_from=1000"],
     "fine.high_noise_from must be below the 1000 noise levels"),
])
def test_bad_training_inputs_are_one_error_line(args, message, tiny_base_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--device", "cpu", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_a_resolution_the_model_cannot_take_names_the_setting_and_its_flag(tiny_base_dirs, tmp_path, capsys):
    """It names data.resolution and --resolution, as train-motion's (train-image-prompt had no --resolution)."""
    code = main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--device", "cpu", "--out",
                 str(tmp_path / "m" / "ip.safetensors"), "--set", "data.resolution=33", "--num-clips", "1",
                 "--coarse-steps", "1", "--fine-steps", "1", "--set", "data.num_frames=2"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the warning that the clips are nano's world's
    assert code == 2 and err.startswith("error: data.resolution (--resolution) 33 must be a positive multiple of"), err
    assert not (tmp_path / "m").exists()


def test_a_file_where_the_run_keeps_its_checkpoints_is_refused_before_training(tiny_base_dirs, tmp_path, capsys,
                                                                              monkeypatch):
    """It had been a NotADirectoryError traceback at the first checkpoint, after the model had loaded."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.safetensors.run").write_text("a file")
    code = main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--device", "cpu", "--out",
                 "m.safetensors"])
    assert code == 2 and capsys.readouterr().err.strip() == (
        "error: m.safetensors.run, where the run keeps its checkpoints, is a file: move it away, or choose another "
        "--out")


def test_an_empty_data_folder_flag_is_refused_not_taken_for_the_world(tmp_path, capsys, monkeypatch):
    """`--data "$CLIPS"` with the variable unset had trained on nano's world clips (minutes) in place of the user's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(image_prompt_engine, "train_image_prompt", lambda cfg: pytest.fail("trained"))
    assert main(["train-image-prompt", "--data", "", "--out", "m.safetensors"]) == 2
    assert capsys.readouterr().err == ("error: --data is empty (an unset shell variable?): give a folder of clips, or "
                                       "leave --data out to train on nano's world\n")
    assert not list(tmp_path.iterdir())


def test_a_base_without_spatial_self_attention_is_refused_before_training(tiny_base_dirs, tmp_path, capsys,
                                                                         monkeypatch):
    """It had been found only when the fine stage began, after the coarse stage had trained."""
    from vidbooth.engine.backbone import Backbone

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Backbone, "spatial_self_attention_layers", lambda self: {})
    monkeypatch.setattr(image_prompt_engine, "training_items", lambda *a, **k: pytest.fail("read the clips"))
    code = main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--device", "cpu", "--out",
                 "m.safetensors"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the warning that the clips are nano's world's
    assert code == 2 and err.startswith("error: ") and "has no spatial self-attention layers" in err, err
    assert not list(tmp_path.iterdir())


def test_cli_trains_on_a_folder_of_clips_then_generates(tiny_base_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    base = str(tiny_base_dirs["unet3d"])
    clips = make_subject_clips(tmp_path / "clips", count=3, word="dog")
    model = tmp_path / "ip.safetensors"
    assert main(["train-image-prompt", "--base", base, "--data", str(clips), "--word", "dog", "--out", str(model),
                 "--coarse-steps", "2", "--fine-steps", "1", "--set", "data.num_frames=2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"3 clips of {clips}" in err and "procedural world" not in err
    metadata = load_tensors(model)[1]
    assert json.loads(metadata["spec"])["word"] == "dog" and metadata["data"] == f"3 clips of {clips}"
    out = tmp_path / "v.mp4"
    assert main(["generate", "--base", base, "--image-prompt", str(clips / "clip1.png"), "--image-prompt-model",
                 str(model), "--prompt", "a dog jumping", "--out", str(out), "--frames", "3", "--steps", "2",
                 "--device", "cpu"]) == 0
    assert read_video(out).shape == (3, 32, 32, 3)


def test_a_folders_training_items_are_its_clips_captions_and_photos(tiny_backbones, tmp_path):
    bb = tiny_backbones["unet3d"]
    model = _model(bb)
    model.remove()
    clips = make_subject_clips(tmp_path / "clips", count=2, word="sprite", masks=(1,))
    cfg = _config(tmp_path / "m.safetensors", "unused")
    examples = find_subject_clips(clips, "sprite")
    items = training_items(model, folder_examples(examples, cfg, 32), "sprite", total=2, chunk=1)
    assert len(items) == 2
    # the one cut out by its mask, put at a random size and place drawn for it
    rng = np.random.default_rng(np.random.SeedSequence(cfg.data.seed).spawn(2)[1])
    frames, photo = load_subject_clip(examples[1], cfg.data.num_frames, 32, rng)
    assert not np.array_equal(photo, load_subject_clip(examples[1], cfg.data.num_frames, 32)[1])
    with torch.no_grad():
        latents = bb.encode_video(pixels_to_tensor(frames)[None]).float()[0]
        photo_latents = bb.encode_video(pixels_to_tensor(photo[None])[None]).float()[0]
    assert torch.allclose(items[1]["latents"], latents, atol=1e-5)
    assert torch.allclose(items[1]["image_latents"], photo_latents, atol=1e-5)
    assert torch.allclose(items[1]["image_embeds"], model.image_embeds(photo[None]).float()[0], atol=1e-5)
    ids = bb.tokenize(["a sprite moving right"])
    assert items[1]["span"].tolist() == list(model.word_span(ids)[0])
    assert torch.allclose(items[1]["text"], bb.encode_ids(ids).float()[0], atol=1e-5)


def test_a_folder_of_short_clips_warns_a_few_times_naming_the_clips(tmp_path, monkeypatch):
    """Each clip too short for the frames sampled warned on its own, without its name: a folder of 2,000 warned
    2,000 times."""
    warned = []
    monkeypatch.setattr("vidbooth.engine.image_prompt.warn", warned.append)
    clips = make_subject_clips(tmp_path / "clips", count=5, masks=(), num_frames=4)
    examples = find_subject_clips(clips, "subject")
    cfg = _config(tmp_path / "m.safetensors", "unused")
    cfg.data.num_frames = 8
    read = list(folder_examples(examples, cfg, 32))
    assert [clip.shape for _, clip, _ in read] == [(8, 32, 32, 3)] * 5  # 4 frames spread over 8
    assert len(warned) == WARNINGS_SHOWN + 1
    for index, message in enumerate(warned[:WARNINGS_SHOWN]):
        assert message.startswith(f"clip clip{index + 1}.mp4: the clip has 4 frames but 8 frames"), message
    assert warned[-1] == f"2 more such warning(s), for 2 more clip(s) of {clips}"


def test_resuming_on_changed_clips_is_refused(tiny_base_dirs, tmp_path, monkeypatch):
    clips = make_subject_clips(tmp_path / "clips", count=2)
    out = tmp_path / "stopped.safetensors"

    def config(**changes):
        cfg = _config(out, tiny_base_dirs["unet3d"], word="subject", **changes)
        cfg.data.folder = str(clips)
        return cfg

    _stop_in_fine(config(), monkeypatch)
    (clips / "clip2.txt").write_text("a subject moving left")
    import vidbooth.engine.backbone

    real_load = vidbooth.engine.backbone.load_backbone_for
    monkeypatch.setattr(vidbooth.engine.backbone, "load_backbone_for", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(UserError, match=r"cannot resume .*data.folder was contents \w+, now contents \w+"):
        train_image_prompt(config(resume=True))  # before the model loads and the clips are read
    monkeypatch.setattr(vidbooth.engine.backbone, "load_backbone_for", real_load)
    (clips / "clip2.txt").write_text("a subject moving right")
    assert train_image_prompt(config(resume=True)) == out and out.is_file()


@pytest.mark.parametrize("stopped_with, changed, told", [
    ({}, ["--word", "subject"], ["(word (--word) was sprite, now subject)"]),
    ({"hidden_dim": 16}, ["--set", "hidden_dim=32"], ["hidden_dim", "was 16, now 32"]),
], ids=["word", "hidden width"])
def test_resuming_with_another_setting_is_refused_before_the_model_loads_naming_it(stopped_with, changed, told,
                                                                                  tiny_base_dirs, tmp_path,
                                                                                  monkeypatch, capsys):
    """It was refused once the model had loaded and the clips were read, naming `spec.word`."""
    import vidbooth.engine.backbone

    out = tmp_path / "stopped.safetensors"
    _stop_in_fine(_config(out, tiny_base_dirs["unet3d"], **stopped_with), monkeypatch)
    capsys.readouterr()
    monkeypatch.setattr(vidbooth.engine.backbone, "load_backbone_for", lambda *a, **k: pytest.fail("loaded"))
    assert main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--out", str(out), "--device", "cpu",
                 "--resume", *changed, "--clips", "4", "--coarse-steps", "2", "--fine-steps", "2",
                 "--set", "data.num_frames=2", "--set", "coarse.batch_size=2", "--set", "fine.batch_size=2",
                 "--set", "coarse.lr=1e-3", "--set", "fine.lr=1e-3", "--set", "coarse.checkpoint_every=1",
                 "--set", "fine.checkpoint_every=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert all(part in err for part in told) and "\n" not in err, err
    assert not out.exists() and (tmp_path / "stopped.safetensors.run" / "coarse").is_dir()


def test_a_second_run_writing_the_same_model_is_refused(tiny_base_dirs, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    with exclusive_lock(out.with_name(out.name + ".lock"), lambda owner: "busy"):
        code = main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--out", str(out), "--device",
                     "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"another train-image-prompt (pid {os.getpid()}) is writing {out}" in err, err
    assert not out.exists() and not out.with_name(out.name + ".run").exists()


def test_a_failed_run_leaves_no_folder_it_made(tiny_base_dirs, tmp_path, capsys):
    clips = make_subject_clips(tmp_path / "clips", count=1, masks=(0,))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(clips / "clip1.mask.png")  # found, refused when read
    out = tmp_path / "new" / "deeper" / "m.safetensors"
    code = main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--data", str(clips), "--word",
                 "subject", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "marks nothing" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def test_an_existing_model_file_is_kept_without_overwrite(trained, tiny_base_dirs, tmp_path, capsys):
    out = tmp_path / "kept.safetensors"
    out.write_bytes(trained.read_bytes())
    code = main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--out", str(out), "--device", "cpu"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == trained.read_bytes()
    folder = tmp_path / "a.safetensors"  # a folder of that name, left as it is even with --overwrite
    (folder / "inside").mkdir(parents=True)
    code = main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--out", str(folder), "--overwrite",
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: --out {folder} is a folder: give a file path ending in .safetensors"], err
    assert [p.name for p in folder.iterdir()] == ["inside"]


def test_an_image_model_learns_image_prompts_and_animates_them_zero_shot(tiny_base_dirs, tmp_path):
    """Text2Video-Zero with an image prompt: the photo's pass runs once per video, its features reach every frame
    of every chunk."""
    from vidbooth.engine.backbone import load_backbone

    base = tiny_base_dirs["animatediff"]  # its folder alone: an image model
    path = train_image_prompt(_config(tmp_path / "image-model.safetensors", base))
    bb = load_backbone(str(base), device="cpu")
    assert bb.family == "text2video-zero"
    model = load_image_prompt_model(bb, path)
    photo = render_photos(Sprite("circle", "red", "solid"), 1, 32)[0]
    cond = prepare_image_prompt(model, photo, "a sprite", torch.Generator().manual_seed(1))
    videos = [
        sample_video(bb, "a sprite", num_frames=5, num_inference_steps=3, guidance_scale=3.0,
                     generator=torch.Generator().manual_seed(0), output_type="latent",
                     prompt_embeds=cond.prompt_embeds, before_unet=cond.before_unet, zero_shot=zero_shot)
        for zero_shot in (ZeroShotConfig(chunk_size=2), ZeroShotConfig(chunk_size=8))
    ]
    assert torch.allclose(videos[0], videos[1], atol=1e-5)  # chunked or not, the same video


def test_two_processes_train_one_image_prompt_model(tmp_path, two_process_launch):
    """`accelerate launch` with two CPU processes (gloo): both train on their own batches, one file is written."""
    import os
    import subprocess

    out = tmp_path / "two.safetensors"
    command = [*two_process_launch, "-m", "vidbooth", "train-image-prompt", "--base", "tiny", "--out", str(out),
               "--coarse-steps", "2", "--fine-steps", "2", "--clips", "4", "--set", "data.num_frames=2",
               "--set", "coarse.batch_size=1", "--set", "fine.batch_size=1", "--device", "cpu"]
    hooks = tmp_path / "hooks"  # the second process as the first of another machine, which says where the file is
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text('import os\nif os.environ.get("RANK") == "1":\n    os.environ["LOCAL_RANK"]'
                                            ' = "0"\n')
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]),
                        "VIDBOOTH_QUIET": "0"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("launch-tmp", "hooks")) == ["two.safetensors"]
    assert json.loads(load_tensors(out)[1]["processes"]) == 2
    assert done.stderr.count(f"saved the image-prompt model in {out} ") == 1, done.stderr
    assert done.stderr.count(f"the image-prompt model {out} is saved on the first machine of this run (127.0.0.1), "
                             "by its first process\n") == 1, done.stderr


def test_the_photos_pass_runs_conditional_only_adapters_whole_and_serves_every_video(trained, tiny_backbones):
    """With a subject whose identity adapter acts on guidance's conditional half only, and several videos: the
    photo's pass (the positive half's size) runs those adapters on all of it, and each video gets the photo."""
    from vidbooth.adapters.identity import inject_identity_adapter, mark_conditional_only, remove as remove_kind

    bb = tiny_backbones["unet3d"]
    inject_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), 0.5, "identity:test")
    mark_conditional_only(bb.unet, "identity:test")
    model = load_image_prompt_model(bb, trained)
    try:
        photo = render_photos(Sprite("circle", "red", "solid"), 1, 32)[0]
        cond = prepare_image_prompt(model, photo, "a sprite", torch.Generator().manual_seed(1), num_videos=3)
        assert cond.prompt_embeds.shape[0] == 3 and cond.latents.shape[0] == 1  # one photo's pass for every video
        videos = sample_video(bb, ["a sprite"] * 3, num_frames=2, num_inference_steps=2, guidance_scale=3.0,
                              latents=torch.randn(1, 4, 2, 16, 16).repeat(3, 1, 1, 1, 1), output_type="latent",
                              prompt_embeds=cond.prompt_embeds, before_unet=cond.before_unet)
        assert torch.allclose(videos[0], videos[2], atol=1e-5)  # the same noise and photo: the same video

        # the photo's pass inside a guidance step (adapters set to the conditional half) runs them whole
        from vidbooth.adapters.base import adapters_of, adapters_off

        with torch.no_grad():
            for adapter in adapters_of(bb.unet, "identity:test").values():  # trained: no longer a no-op
                weight = adapter.up.weight
                weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))

        def references(*blocks):
            with contextlib.ExitStack() as stack:
                for block in blocks:
                    stack.enter_context(block)
                cond.before_unet(torch.tensor([500]), torch.cat([cond.prompt_embeds] * 2))
            return torch.cat([layer.reference.flatten() for layer in injections(bb.unet).values()])

        in_guidance = references(conditional_half_only(bb.unet, 3))
        assert torch.allclose(in_guidance, references(), atol=1e-5)  # as with the adapters on every sample
        assert not torch.allclose(in_guidance, references(adapters_off(bb.unet, "identity:test")), atol=1e-3)
    finally:
        model.remove()
        remove_kind(bb.unet, "identity:test")


def test_an_animatediff_base_takes_image_prompts_beside_its_motion_modules(tmp_path):
    """The injections go beside the image model's self-attention only, never the motion modules' attention."""
    from vidbooth.engine.backbone import load_backbone

    path = train_image_prompt(_config(tmp_path / "animatediff.safetensors", "tiny-animatediff"))
    bb = load_backbone("tiny-animatediff", device="cpu")
    model = load_image_prompt_model(bb, path)
    try:
        names = list(injections(bb.unet))
        assert names and not any("motion_modules" in name for name in names)
        photo = render_photos(Sprite("circle", "red", "solid"), 1, 32)[0]
        cond = prepare_image_prompt(model, photo, "a sprite", torch.Generator().manual_seed(1))

        def video(scale):
            set_injection_scale(bb.unet, scale)
            return sample_video(bb, "a sprite", num_frames=3, num_inference_steps=2, guidance_scale=3.0,
                                generator=torch.Generator().manual_seed(0), output_type="latent",
                                prompt_embeds=cond.prompt_embeds, before_unet=cond.before_unet)

        full, tokens_only = video(1.0), video(0.0)
        assert torch.isfinite(full).all() and not torch.equal(full, tokens_only)
    finally:
        model.remove()


def test_an_image_prompt_composes_with_a_learned_subject_and_motion(trained, tiny_base_dirs, world_inputs, tmp_path,
                                                                   isolated_home):
    """`generate --subject --motion --image-prompt` end to end: the subject's identity adapter (learned for the
    conditional half of guidance only), the motion adapter and the photo's injections in one video."""
    photos, clip = world_inputs
    base = str(tiny_base_dirs["unet3d"])
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", "--base", base, "--recipe",
                 "tiny/subject", "--set", "data.resolution=32", "--set", "preview.enabled=false", "--set",
                 "identity.guidance_scale=3", "--batch-size", "1", "--ti-steps", "2", "--identity-steps", "2"]) == 0
    assert main(["train-motion", str(clip), "--name", "M", "--base", base, "--recipe", "tiny/motion", "--steps", "2",
                 "--num-frames", "4", "--set", "data.resolution=32", "--no-preview"]) == 0
    identity = load_tensors(isolated_home / "subjects" / "S%2A" / "identity_adapter.safetensors")[1]
    assert identity["conditional_only"] == "true"
    out = tmp_path / "all.mp4"
    assert main(["generate", "--subject", "S*", "--motion", "M", "--image-prompt", str(photos / "0.png"),
                 "--image-prompt-model", str(trained), "--prompt", "a S* dog and a sprite", "--out", str(out),
                 "--frames", "3", "--steps", "2", "--guidance-scale", "3", "--device", "cpu"]) == 0
    assert read_video(out).shape == (3, 32, 32, 3)


def test_a_damaged_own_model_of_the_base_says_to_train_it_again(tiny_base_dirs, tmp_path, capsys):
    """Without --image-prompt-model the file is the base's own: the message had told to leave that flag out."""
    import shutil

    from vidbooth.engine.image_prompt import OWN_IMAGE_PROMPT_MODEL

    base = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "base")
    save_file({"w": torch.zeros(2)}, str(base / OWN_IMAGE_PROMPT_MODEL), {"method": "identity"})
    photo = tmp_path / "subject.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    assert main(["generate", "--base", str(base), "--prompt", "a sprite", "--image-prompt", str(photo),
                 "--out", str(tmp_path / "v.mp4")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: the image-prompt model of {base}: {base / OWN_IMAGE_PROMPT_MODEL} is not a vidbooth image-prompt "
        "model (a .safetensors file made by `vidbooth train-image-prompt`); train it again with `vidbooth "
        f"train-image-prompt --base {base}`, or give another with --image-prompt-model")


def test_the_photo_is_captured_at_each_steps_timestep_with_the_prompts_positive_row(monkeypatch):
    """(mutation testing) A reference captured with the negative prompt's row, or at another timestep than the
    video's, would weaken VideoBooth's fine features without an error."""
    from types import SimpleNamespace

    captured = []
    layer = SimpleNamespace(scale=1.0, reference=None)

    def capture(backbone, scheduler, latents, noise, timesteps, text_embeds):
        captured.append((timesteps.tolist(), text_embeds))
        layer.reference = torch.ones(1, 3, 2)

    monkeypatch.setattr(image_prompt_engine, "capture", capture)
    monkeypatch.setattr(image_prompt_engine, "injections", lambda unet: {"layer": layer})
    condition = object.__new__(image_prompt_engine.ImagePromptCondition)
    condition.model, condition.latents = SimpleNamespace(backbone=SimpleNamespace(unet=None)), torch.zeros(1, 4)
    condition.scheduler, condition.noise = None, torch.zeros(1, 4)
    negative, positive = torch.zeros(5, 8), torch.ones(5, 8)
    condition.before_unet(torch.tensor([640, 640]), torch.stack([negative, positive]))
    assert captured[0][0] == [640] and torch.equal(captured[0][1], positive[None])
    assert layer.reference.shape == (2, 3, 2)  # one reference for each row of the guidance batch


def test_the_fine_stage_captures_the_photo_at_the_videos_timesteps(tiny_backbones, monkeypatch):
    """(mutation testing) The photo noised to another timestep than the clip it conditions went unseen."""
    bb = tiny_backbones["unet3d"]
    model = _model(bb)
    try:
        method = image_prompt_engine._Method(model, "fine")
        seen = {}

        def capture(backbone, scheduler, latents, noise, timesteps, text):
            seen["photo"] = timesteps

        def unet_forward(noisy, timesteps, text):
            seen["video"] = timesteps
            return torch.zeros_like(noisy)

        monkeypatch.setattr(image_prompt_engine, "capture", capture)
        monkeypatch.setattr(bb, "unet_forward", unet_forward)
        dim = int(bb.text_encoder.config.hidden_size)
        batch = {"latents": torch.randn(3, 4, 2, 8, 8), "image_latents": torch.randn(3, 4, 1, 8, 8),
                 "image_embeds": torch.randn(3, model.encoder.dim), "text": torch.randn(3, 6, dim),
                 "span": torch.tensor([[2, 3]] * 3)}
        method.loss(batch, torch.Generator().manual_seed(0))
        assert len(set(seen["video"].tolist())) > 1 and torch.equal(seen["photo"], seen["video"])
    finally:
        model.remove()


def test_gradient_checkpointing_trains_the_same_model(trained, tiny_base_dirs, tmp_path, recomputations):
    """The fine stage's injections attend to the photo's features captured before the UNet call: they must still
    be there when the backward pass runs the layers again."""
    cfg = _config(tmp_path / "recomputed.safetensors", tiny_base_dirs["unet3d"])
    cfg.coarse.gradient_checkpointing = cfg.fine.gradient_checkpointing = True
    ours, theirs = load_tensors(train_image_prompt(cfg))[0], load_tensors(trained)[0]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert recomputations  # and it did recompute


def test_a_model_trained_into_the_bases_folder_is_said_to_be_its_own(tiny_base_dirs, tmp_path, capsys, monkeypatch):
    """It had been told to put it where it already was."""
    import shutil

    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    base = tmp_path / "my-base"
    shutil.copytree(tiny_base_dirs["unet3d"], base)
    assert main(["train-image-prompt", "--base", str(base), "--out", str(base / "image_prompt.safetensors"),
                 "--coarse-steps", "1", "--fine-steps", "1", "--clips", "2", "--set", "data.num_frames=2",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"the base's own: generate --base {base} --image-prompt PHOTO uses it" in err and "put it" not in err


def test_the_photo_is_noised_in_fp32_and_given_to_the_unet_in_its_precision():
    """The photo's latents come from a half-precision base in its dtype: noised there, nano's lowest noise levels
    had rounded to none (as training's had, objective.denoising_loss)."""
    from types import SimpleNamespace

    from vidbooth.engine.backbone import NANO
    from vidbooth.engine.objective import training_scheduler

    seen = []
    unet = torch.nn.Module()
    backbone = SimpleNamespace(unet=unet, dtype=torch.bfloat16,
                               unet_forward=lambda noisy, t, text: seen.append(noisy) or torch.zeros_like(noisy))
    scheduler = training_scheduler(json.loads((NANO / "scheduler" / "scheduler_config.json").read_text()))
    latents = torch.zeros(4, 4, 1, 2, 2, dtype=torch.bfloat16)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    image_prompt_engine.capture(backbone, scheduler, latents, noise, torch.arange(4), None)  # t = 0, 1, 2, 3
    (noisy,) = seen
    assert noisy.dtype == torch.bfloat16 and (noisy.flatten(1).abs().amax(1) > 0).all()


@pytest.mark.parametrize("metadata, message", [
    (lambda trained: {"method": "image_prompt"}, "is not a vidbooth image-prompt model (made by `vidbooth "
                                                 "train-image-prompt`)"),
    (lambda trained: trained | {"spec": "{not json"}, ": its 'spec' metadata is damaged or from another vidbooth "
                                                      "version (Expecting property name enclosed in double quotes"),
])
def test_an_image_prompt_model_without_a_readable_spec_is_one_error_line(metadata, message, trained, tiny_base_dirs,
                                                                          tmp_path, capsys):
    """Its word cannot be read before the model loads: loading it tells what is wrong."""
    tensors, trained_metadata = load_tensors(trained)
    crafted = tmp_path / "crafted.safetensors"
    save_file(tensors, str(crafted), metadata(trained_metadata))
    photo = tmp_path / "subject.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    out = tmp_path / "out" / "v.mp4"
    code = main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a sprite", "--image-prompt",
                 str(photo), "--image-prompt-model", str(crafted), "--out", str(out), "--frames", "2", "--steps", "1",
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {crafted}") and message in err and len(err.splitlines()) == 1, err
    assert not out.parent.exists()


def test_a_mapper_tensor_its_spec_does_not_build_is_refused_as_a_damaged_file(trained, tiny_backbones, tmp_path):
    """The base's fingerprint matches: the file was altered, not trained on another base as it had said."""
    tensors, metadata = load_tensors(trained)
    crafted = tmp_path / "crafted.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "mapper.net.0.bias"}, str(crafted), metadata)
    with pytest.raises(UserError, match=rf"^{crafted}: its mapper tensors do not fit its 'spec' metadata "
                                        r"\(mapper.net.0.bias\): train it again with `vidbooth train-image-prompt`$"):
        load_image_prompt_model(tiny_backbones["unet3d"], crafted)
    assert not injections(tiny_backbones["unet3d"].unet)


@pytest.mark.parametrize("encoder, message", [
    ("tiny-clip", r"^image-prompt model {file} reads (\d+)-wide image embeddings; tiny-clip gives (?!\1)\d+$"),
    ("gone", r"^image encoder '{encoder}' not found$"),
])
def test_an_image_prompt_models_recorded_encoder_that_is_gone_or_of_another_width_is_refused(
        encoder, message, trained, tiny_backbones, tmp_path):
    """The spec's encoder: a folder moved since, or replaced by another model."""
    import re

    tensors, metadata = load_tensors(trained)
    encoder = encoder if encoder == "tiny-clip" else str(tmp_path / encoder)
    crafted = tmp_path / "crafted.safetensors"
    spec = json.loads(metadata["spec"]) | {"encoder": encoder}
    save_file(tensors, str(crafted), metadata | {"spec": json.dumps(spec)})
    with pytest.raises(UserError, match=message.format(file=re.escape(str(crafted)), encoder=re.escape(encoder))):
        load_image_prompt_model(tiny_backbones["unet3d"], crafted)
    assert not injections(tiny_backbones["unet3d"].unet)


def test_a_base_that_predicts_velocity_trains_the_image_prompt_against_velocity(tiny_base_dirs, tmp_path,
                                                                                monkeypatch):
    from diffusers import DDPMScheduler

    base = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "v-base")
    config = base / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"prediction_type": "v_prediction"}))
    velocities = []
    real = DDPMScheduler.get_velocity
    monkeypatch.setattr(DDPMScheduler, "get_velocity", lambda self, *a: velocities.append(1) or real(self, *a))
    out = train_image_prompt(_config(tmp_path / "v.safetensors", base))
    assert out.is_file() and len(velocities) == 4


def test_a_model_of_the_same_image_model_with_another_motion_adapter_says_which_adapter(tiny_base_dirs, tmp_path):
    """Trained with a motion adapter and used on the image model alone (or the reverse), the refusal had said "use it
    with --base <the same folder>", the command that was refused (seen on a real-size SD1.5 base)."""
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.tiny import motion_adapter_folder

    folder = tiny_base_dirs["animatediff"]
    adapter = motion_adapter_folder(folder)
    cfg = _config(tmp_path / "with-adapter.safetensors", folder, coarse=TrainConfig(steps=1, batch_size=1),
                  fine=TrainConfig(steps=1, batch_size=1))
    cfg.backbone.motion_adapter = str(adapter)
    path = train_image_prompt(cfg)
    image_model = load_backbone(str(folder), device="cpu")
    with pytest.raises(UserError, match="trained on this image model") as told:
        load_image_prompt_model(image_model, path)
    assert f"add --motion-adapter {adapter}" in str(told.value) and "use it with --base" not in str(told.value)
    tensors, metadata = load_tensors(path)  # a file written before the image model and adapter were recorded
    older = tmp_path / "older.safetensors"
    save_file(tensors, older, {k: v for k, v in metadata.items() if k not in ("image_fingerprint", "motion_adapter")})
    with pytest.raises(UserError, match="give the --motion-adapter it was trained with") as told:
        load_image_prompt_model(image_model, older)
    assert "use it with --base" not in str(told.value)
    assert not injections(image_model.unet)


def test_train_image_prompt_takes_the_motion_adapter_flag_as_the_other_training_commands(tiny_base_dirs, tmp_path,
                                                                                       monkeypatch):
    """It had only `--set backbone.motion_adapter=`: `--motion-adapter`, which train-subject, train-motion and generate
    take, was 'No such option' here."""
    from vidbooth.engine.tiny import motion_adapter_folder

    taken = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(image_prompt_engine, "train_image_prompt", taken.append)
    adapter = str(motion_adapter_folder(tiny_base_dirs["animatediff"]))
    assert main(["train-image-prompt", "--base", str(tiny_base_dirs["animatediff"]), "--motion-adapter", adapter,
                 "--out", "m.safetensors"]) == 0
    assert [cfg.backbone.motion_adapter for cfg in taken] == [adapter]


def _loaded(source: str, fingerprint: str, image_fingerprint: str | None, adapter: str | None = None):
    from types import SimpleNamespace

    return SimpleNamespace(source=source, fingerprint=fingerprint, image_fingerprint=image_fingerprint,
                           extras={"motion_adapter": adapter})


def test_a_base_with_temporal_layers_of_its_own_is_not_told_to_take_a_motion_adapter(tmp_path):
    """A UNet3D (or UNetMotionModel) folder records no image model of its own (""): on the same folder with other
    weights, "give the --motion-adapter it was trained with" named a flag that has no effect on it."""
    from vidbooth.engine.image_prompt import _another_base

    folder = str(tmp_path)
    new = {"base": folder, "base_fingerprint": "a", "image_fingerprint": "", "motion_adapter": ""}
    older = {"base": folder, "base_fingerprint": "a"}
    for metadata in (new, older):
        told = _another_base(tmp_path / "m.safetensors", metadata, _loaded(folder, "b", None))
        assert "--motion-adapter" not in told and "use it with --base" not in told
        assert "the same folder, with other weights than it was trained on" in told
    told = _another_base(tmp_path / "m.safetensors", new, _loaded(folder, "b", "i"))  # an image model there now
    assert "the same folder, with other weights than it was trained on" in told
    for metadata in (new, older):  # another folder: the one it was trained on
        told = _another_base(tmp_path / "m.safetensors", metadata, _loaded(str(tmp_path / "other"), "b", None))
        assert told.endswith(f": use it with --base {folder}")
    told = _another_base(tmp_path / "m.safetensors", older, _loaded(str(tmp_path / "other"), "b", "i"))
    assert told.endswith(f": use it with --base {folder}")


def test_the_motion_adapter_an_image_prompt_model_records_is_absolute_or_the_hub_id_given(tmp_path, monkeypatch):
    """A hub id had been recorded as its cache's snapshot folder, which the refusal then told the user to pass."""
    from vidbooth.engine.image_prompt import _recorded_adapter

    monkeypatch.chdir(tmp_path)
    (tmp_path / "adapters" / "v1-5-2").mkdir(parents=True)
    snapshot = "/cache/models--guoyww--adapter/snapshots/abc"
    assert _recorded_adapter("adapters/v1-5-2", str(tmp_path / "adapters" / "v1-5-2")) == str(
        tmp_path / "adapters" / "v1-5-2")
    assert _recorded_adapter("guoyww/animatediff-motion-adapter-v1-5-2", snapshot) == (
        "guoyww/animatediff-motion-adapter-v1-5-2")
    assert _recorded_adapter(None, snapshot) == snapshot  # a built-in base's own
    assert _recorded_adapter(None, None) == ""


def test_the_same_motion_adapter_with_other_weights_is_not_told_to_be_replaced_by_itself(tmp_path):
    from vidbooth.engine.image_prompt import _another_base

    adapter = str(tmp_path / "adapter")
    metadata = {"base": str(tmp_path), "base_fingerprint": "a", "image_fingerprint": "i", "motion_adapter": adapter}
    told = _another_base(tmp_path / "m.safetensors", metadata, _loaded(str(tmp_path), "b", "i", adapter))
    assert f"in place of {adapter}" not in told
    assert f"the motion adapter {adapter} it was trained with has other weights now" in told
    other = str(tmp_path / "other")
    told = _another_base(tmp_path / "m.safetensors", metadata, _loaded(str(tmp_path), "b", "i", other))
    assert f"with the motion adapter {adapter}, and its fine features" in told
    assert f"use --motion-adapter {adapter} in place of {other}" in told
    without = metadata | {"motion_adapter": ""}
    told = _another_base(tmp_path / "m.safetensors", without, _loaded(str(tmp_path), "b", "i", other))
    assert "without a motion adapter, and its fine features" in told and ": leave out --motion-adapter, or" in told


def test_an_older_files_relative_base_is_the_same_folder_however_it_is_named(tmp_path, monkeypatch):
    """Recorded as given ('../models/sd15'): `Path.absolute()` keeps the '..', and the same folder named absolute
    had been told "use it with --base ../models/sd15", the folder that was refused."""
    from vidbooth.engine.image_prompt import _another_base

    folder = tmp_path / "models" / "sd15"
    folder.mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    older = {"base": "../models/sd15", "base_fingerprint": "a"}
    told = _another_base(tmp_path / "m.safetensors", older, _loaded(str(folder), "b", "i"))
    assert "give the --motion-adapter it was trained with" in told and "use it with --base" not in told
