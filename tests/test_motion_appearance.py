"""Appearance encoders for the motion adapter's guidance: which one is chosen, preprocessing, output shapes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vidbooth.engine.appearance import (
    ClipImageEncoder,
    VaeLatentEncoder,
    build_tiny_clip_vision,
    load_appearance_encoder,
)
from vidbooth.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frames(n=3, height=40, width=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def test_vae_fallback_pools_the_latent(tiny_backbones):
    bb = tiny_backbones["unet3d"]
    encoder = load_appearance_encoder("vae", bb)
    assert isinstance(encoder, VaeLatentEncoder) and encoder.dim == 4 * 16
    e = encoder.embed(frames())
    assert e.shape == (3, 64) and e.dtype == torch.float32
    assert (e[0] - e[1]).abs().max().item() > 1e-3  # different frames, different embeddings
    assert torch.allclose(encoder.embed(frames()[:1]), e[:1], atol=1e-5)  # alone = within a batch


def test_default_is_the_vae_for_a_base_without_an_image_encoder(tiny_backbones):
    assert isinstance(load_appearance_encoder(None, tiny_backbones["unet3d"]), VaeLatentEncoder)


def test_default_is_the_bases_own_image_encoder(tiny_base_dirs, tmp_path):
    """A base folder with image_encoder/ (as the packaged nano model) brings its own encoder and normalisation."""
    from vidbooth.engine.backbone import load_backbone

    base = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "with-encoder")
    build_tiny_clip_vision(seed=3).save_pretrained(base / "image_encoder")
    (base / "image_encoder" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    )
    encoder = load_appearance_encoder("", load_backbone(str(base), device="cpu"))
    assert isinstance(encoder, ClipImageEncoder) and encoder.name.endswith("/image_encoder") and encoder.dim == 16
    white = encoder.preprocess(np.full((1, 40, 40, 3), 255, dtype=np.uint8))
    assert torch.allclose(white, torch.ones_like(white), atol=1e-5)  # (1 - 0.5) / 0.5
    assert encoder.embed(frames()).shape == (3, 16)


def test_clip_preprocessing_crops_the_centre_of_portrait_and_landscape_frames(tiny_backbones):
    encoder = load_appearance_encoder("tiny-clip", tiny_backbones["unet3d"])
    portrait = np.zeros((1, 120, 60, 3), dtype=np.uint8)
    portrait[:, 30:90] = 255  # white middle half, black top and bottom quarters
    pixels = encoder.preprocess(portrait)
    assert pixels.shape == (1, 3, 32, 32)
    mean, std = (torch.tensor(v) for v in encoder.mean_std)
    white = (1 - mean) / std
    assert torch.allclose(pixels[0, :, 4:28, :].mean(dim=(1, 2)), white, atol=0.05)  # the crop is the white middle
    landscape = encoder.preprocess(frames(height=30, width=90))
    assert landscape.shape == (3, 3, 32, 32)


def test_tiny_clip_is_deterministic_across_loads(tiny_backbones):
    bb = tiny_backbones["unet3d"]
    first = load_appearance_encoder("tiny-clip", bb).embed(frames())
    again = load_appearance_encoder("tiny-clip", bb).embed(frames())
    assert torch.equal(first, again) and first.shape == (3, 16)


def test_unknown_encoder_is_a_user_error_with_the_choices(tiny_backbones, tmp_path):
    with pytest.raises(UserError, match="tiny-clip' or 'vae'"):
        load_appearance_encoder(str(tmp_path / "no-such-encoder"), tiny_backbones["unet3d"])


def test_a_whole_clip_folder_is_taken_as_its_vision_tower(tiny_backbones, tmp_path):
    """As openai/clip-vit-large-patch14 ships: its projection width sits at the config's top level, and the encoder
    had failed to load with a traceback (a projection of the default 512 wide); the embedding is CLIP's own."""
    from media import save_tiny_clip
    from transformers import CLIPModel

    folder = save_tiny_clip(tmp_path / "clip")
    encoder = load_appearance_encoder(str(folder), tiny_backbones["unet3d"])
    assert isinstance(encoder, ClipImageEncoder) and encoder.dim == 16
    pixels = encoder.preprocess(frames())
    with torch.no_grad():
        expected = CLIPModel.from_pretrained(folder).get_image_features(pixel_values=pixels)
    expected = getattr(expected, "pooler_output", expected)
    assert torch.allclose(encoder.embed(frames()), expected, atol=1e-5)


def test_weights_that_do_not_fit_their_config_are_a_one_line_error(tiny_backbones, tmp_path):
    folder = tmp_path / "bad"
    build_tiny_clip_vision().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"projection_dim": config["projection_dim"] * 2}))
    with pytest.raises(UserError, match="cannot load the image encoder .* as a CLIP vision model"):
        load_appearance_encoder(str(folder), tiny_backbones["unet3d"])


@pytest.mark.parametrize("text, reason", [("{not json", "Expecting property name"),
                                          ('{"image_mean": [0.5], "image_std": [0.5, 0.5, 0.5]}', "three numbers"),
                                          ("[1, 2]", "no JSON object")])
def test_a_damaged_preprocessor_config_is_one_error(text, reason, tiny_backbones, tmp_path):
    """The encoder folder's preprocessor_config.json was read after the load's checks: bad JSON was a traceback."""
    folder = tmp_path / "encoder"
    build_tiny_clip_vision(seed=3).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(text)
    with pytest.raises(UserError, match=f"cannot load the image encoder '{folder}' as a CLIP vision model: .*{reason}"):
        load_appearance_encoder(str(folder), tiny_backbones["unet3d"])


@pytest.mark.parametrize("config", [None, {"crop_size": 32}])
def test_a_folder_that_gives_no_mean_and_std_is_normalised_as_openai_clip_is(tmp_path, config):
    """Real CLIP vision folders without image_mean/image_std were trained on OpenAI CLIP's normalisation."""
    from vidbooth.engine.appearance import _normalisation

    if config is not None:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    mean, std = _normalisation(tmp_path)
    np.testing.assert_allclose(mean, (0.48145466, 0.4578275, 0.40821073))
    np.testing.assert_allclose(std, (0.26862954, 0.26130258, 0.27577711))


def test_the_vae_fallback_encodes_pixels_in_the_vaes_range(tiny_backbones, monkeypatch):
    """(mutation testing) Frames scaled to [0, 1] instead of the VAE's [-1, 1] embedded without a complaint."""
    bb = tiny_backbones["unet3d"]
    seen = []
    encode = bb.encode_video
    monkeypatch.setattr(bb, "encode_video", lambda pixels: seen.append(pixels) or encode(pixels))
    black_and_white = np.zeros((2, 40, 56, 3), np.uint8)
    black_and_white[1] = 255
    load_appearance_encoder("vae", bb).embed(black_and_white)
    pixels = torch.cat(seen, dim=1)  # (1, F, 3, H, W)
    assert pixels[:, 0].unique().tolist() == [-1.0] and pixels[:, 1].unique().tolist() == [1.0]


def test_training_items_embed_the_appearance_of_every_frame(tiny_backbones):
    """(mutation testing) Embedding the first frame alone (method: a random frame each step) went unseen."""
    from types import SimpleNamespace

    from vidbooth.engine.motion import training_items

    class Recording:
        def embed(self, frames):
            return torch.from_numpy(np.array(frames, dtype=np.float32)).mean(dim=(1, 2))  # (F, 3): each frame's own

    clip_frames = frames(n=4, height=32, width=32)
    clip = SimpleNamespace(frames=clip_frames, caption="a dog")
    item = training_items(tiny_backbones["unet3d"], [clip], 32, Recording())[0]
    assert item["appearance"].shape == (4, 3)
    assert len({tuple(row.tolist()) for row in item["appearance"]}) == 4  # four different frames


def test_a_recorded_image_encoder_that_cannot_be_fetched_says_the_hubs_error(monkeypatch):
    """Named by a file (no flag to give): "not found" with the hub's reason, which tells to copy it into the cache."""
    from vidbooth.engine.appearance import _resolve_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"^image encoder 'someone/clip' not found \(cannot fetch 'someone/clip' from "
                                        r"the hub .*copy it into the hub cache here\)$"):
        _resolve_encoder("someone/clip", None)
