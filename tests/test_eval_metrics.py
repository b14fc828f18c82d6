"""Evaluation metrics on cases with known answers, and the CLIP/DINO loaders on tiny models saved to disk."""

from __future__ import annotations

import numpy as np
import pytest
from media import moving_square, smooth_image
from PIL import Image

from vidbooth.data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from vidbooth.eval import metrics
from vidbooth.eval.features import (
    ModelUnavailable,
    floor_half,
    load_clip,
    load_dino,
    preprocess,
    round_half,
)
from vidbooth.eval.motion import motion_fidelity, motion_signature

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


# ----- embedding metrics -----


def test_temporal_consistency_is_one_for_identical_frames_and_zero_for_orthogonal_ones():
    same = np.tile([[3.0, 4.0, 0.0]], (5, 1))
    alternating = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    assert metrics.temporal_consistency(same) == pytest.approx(1.0)
    assert metrics.temporal_consistency(alternating) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        metrics.temporal_consistency(same[:1])


def test_clip_t_and_reference_similarity_are_mean_cosines():
    frames = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert metrics.clip_t(frames, np.array([2.0, 0.0])) == pytest.approx((1.0 + np.sqrt(0.5)) / 2)
    references = np.array([[0.0, 5.0], [1.0, 0.0]])
    # pairs: (f0,r0)=0, (f0,r1)=1, (f1,r0)=sqrt(.5), (f1,r1)=sqrt(.5)
    assert metrics.reference_similarity(frames, references) == pytest.approx((1.0 + 2 * np.sqrt(0.5)) / 4)


def test_clip_preprocessing_matches_transformers_clip_image_processor():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = [smooth_image(1, 51, 95), smooth_image(2, 90, 50)]
    expected = processor(images=images, return_tensors="np")["pixel_values"]
    ours = preprocess(images, 32, 32, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, floor_half)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_dino_preprocessing_resizes_shorter_side_then_crops_the_centre_with_imagenet_statistics():
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    image[:, 140:160] = 255  # a white band in the middle, black elsewhere
    pixels = preprocess([image], 8, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), round_half)
    # 100x300 -> 8x24, centre crop keeps columns 8..15, the band covers about columns 11..12 after resizing
    assert pixels.shape == (1, 3, 8, 8)
    assert pixels[0, 0, 4, 0] == pytest.approx(-2.0, abs=0.05)  # black: (0 - .5) / .25
    assert pixels[0, 0, 4, 3:5].max() > 1.0  # the white band is kept by the centre crop
    assert round_half(27) == 14 and floor_half(27) == 13


# ----- loaders on tiny models -----


def test_tiny_clip_loads_from_a_folder_and_embeds_images_and_text(tiny_clip_dir):
    clip = load_clip(str(tiny_clip_dir), device="cpu")
    images = np.stack([smooth_image(0), smooth_image(1), smooth_image(0)])
    image_embeds = clip.image_embeds(images)
    text_embeds = clip.text_embeds(["a sks dog", "a cat"])
    assert image_embeds.shape == (3, 16) and text_embeds.shape == (2, 16)
    np.testing.assert_allclose(image_embeds[0], image_embeds[2], atol=1e-6)
    assert not np.allclose(text_embeds[0], text_embeds[1])
    assert clip.description["class"] == "CLIPModel" and clip.description["name"] == str(tiny_clip_dir)


def test_a_dino_with_weights_it_does_not_use_loads_without_transformers_load_report(tmp_path, capfd):
    """A ViT saved with its pooler, loaded without it, had printed transformers' 'LOAD REPORT' table (with colour
    codes) into the log of `vidbooth evaluate`; the level transformers logs at is left as it was."""
    import torch
    from media import TINY_VIT
    from transformers import ViTConfig, ViTModel
    from transformers.utils import logging

    from vidbooth.eval.features import load_dino

    torch.manual_seed(0)
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=True).save_pretrained(tmp_path / "vit-with-pooler")
    capfd.readouterr()
    before = logging.get_verbosity()
    logging.set_verbosity_warning()  # transformers' own default (an earlier test may have quietened it)
    try:
        assert load_dino(str(tmp_path / "vit-with-pooler"), device="cpu") is not None
        assert capfd.readouterr().err == "" and logging.get_verbosity() == logging.WARNING
    finally:
        logging.set_verbosity(before)


def test_a_scoring_model_downloaded_from_the_hub_is_said(monkeypatch, tiny_vit_dir):
    """evaluate's CLIP and DINO come from the hub where they are not on this machine: said, with the hub's bars."""
    import vidbooth.eval.features as features
    from huggingface_hub.utils import are_progress_bars_disabled

    infos, bars = [], []
    monkeypatch.setattr("vidbooth.reporting.info", infos.append)
    monkeypatch.setattr("vidbooth.reporting._quiet", lambda: False)
    monkeypatch.setattr(features, "_in_hub_cache", lambda repo_id: False)
    monkeypatch.setattr(features, "_offline", lambda: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # as the hub's library reads it
    monkeypatch.setattr(features, "_hub_reachable", lambda endpoint: True)

    class Model:
        @staticmethod
        def from_pretrained(source, **kwargs):
            bars.append(not are_progress_bars_disabled())
            return source

    load = features._pretrained_loader("org/dino", "--dino-model")
    assert load(Model, "a model config") == load(Model, "a DINO ViT") == "org/dino"  # said once, for both parts
    assert features._pretrained_loader(str(tiny_vit_dir), "--dino-model")(Model, "a DINO ViT") == str(tiny_vit_dir)
    assert infos == ["downloading org/dino from the Hugging Face hub (once: later runs read its cache)"]
    assert bars == [True, True, False]


def test_embeddings_match_transformers_own_preprocessing(tiny_clip_dir, tiny_vit_dir):
    """CLIP: CLIPImageProcessor at the model's size. DINO: shorter side to 256/224 of it (37 for 32), centre
    crop, ImageNet statistics, which transformers' BitImageProcessor also computes; the embedding is the CLS token."""
    import torch
    from transformers import BitImageProcessor, CLIPImageProcessor, CLIPModel, ViTModel

    images = [smooth_image(5, 48, 64), smooth_image(6, 64, 48)]
    clip_pixels = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})(
        images=images, return_tensors="pt"
    )["pixel_values"]
    dino_pixels = BitImageProcessor(
        size={"shortest_edge": 37},
        crop_size={"height": 32, "width": 32},
        resample=Image.Resampling.BICUBIC,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        clip_expected = CLIPModel.from_pretrained(tiny_clip_dir).get_image_features(pixel_values=clip_pixels)
        vit = ViTModel.from_pretrained(tiny_vit_dir, add_pooling_layer=False)
        dino_expected = vit(pixel_values=dino_pixels).last_hidden_state[:, 0]
    clip_expected = getattr(clip_expected, "pooler_output", clip_expected)
    np.testing.assert_allclose(load_clip(str(tiny_clip_dir), "cpu").image_embeds(images), clip_expected, atol=1e-5)
    np.testing.assert_allclose(load_dino(str(tiny_vit_dir), "cpu").image_embeds(images), dino_expected, atol=1e-5)


def test_identical_frames_give_temporal_consistency_one(tiny_clip_dir):
    clip = load_clip(str(tiny_clip_dir), device="cpu")
    still = np.stack([smooth_image(3)] * 6)
    changing = np.stack([smooth_image(seed) for seed in range(6)])
    assert metrics.temporal_consistency(clip.image_embeds(still)) == pytest.approx(1.0, abs=1e-6)
    assert metrics.temporal_consistency(clip.image_embeds(changing)) < 0.9999


def test_a_video_of_the_reference_image_scores_highest_clip_i_and_dino_i(tiny_clip_dir, tiny_vit_dir):
    clip, dino = load_clip(str(tiny_clip_dir), device="cpu"), load_dino(str(tiny_vit_dir), device="cpu")
    reference = smooth_image(10)
    candidates = {"reference": np.stack([reference] * 4)} | {
        f"other{seed}": np.stack([smooth_image(seed)] * 4) for seed in range(11, 15)
    }
    for embedder in (clip, dino):
        reference_embeds = embedder.image_embeds([reference])
        scores = {
            name: metrics.reference_similarity(embedder.image_embeds(video), reference_embeds)
            for name, video in candidates.items()
        }
        assert scores["reference"] == pytest.approx(1.0, abs=1e-5)
        assert max(scores, key=scores.get) == "reference"
        assert all(score < 1.0 - 1e-4 for name, score in scores.items() if name != "reference")


def test_dinov2_models_are_loaded_too(tmp_path):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(tmp_path)
    dino = load_dino(str(tmp_path), device="cpu")
    assert dino.description["class"] == "Dinov2Model"
    assert dino.image_embeds([smooth_image(0), smooth_image(1)]).shape == (2, 16)


def test_hub_ids_load_from_the_hugging_face_cache_layout(tiny_clip_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--tiny-org--tiny-clip"
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    for file in tiny_clip_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    clip = load_clip("tiny-org/tiny-clip", device="cpu")
    assert clip.description["name"] == "tiny-org/tiny-clip"
    assert clip.description["revision"] == SNAPSHOT
    direct = load_clip(str(tiny_clip_dir), device="cpu")
    np.testing.assert_allclose(clip.image_embeds([smooth_image(0)]), direct.image_embeds([smooth_image(0)]), atol=1e-6)


def test_missing_models_are_unavailable_with_how_to_supply_them(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelUnavailable, match=r"not found: pass --clip-model <local folder>"):
        load_clip(str(tmp_path / "no-such-folder"), device="cpu")
    with pytest.raises(ModelUnavailable, match=r"not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_dino("facebook/dino-vits16", device="cpu")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match=r"cannot load a CLIP model from .*pass --clip-model"):
        load_clip(str(tmp_path / "broken"), device="cpu")


# ----- motion fidelity -----


def test_motion_fidelity_of_a_clip_with_itself_is_one():
    clip = moving_square()
    assert motion_fidelity(clip, clip) == pytest.approx(1.0, abs=1e-9)


def test_reversed_and_perpendicular_motions_score_low():
    right = moving_square()
    up = moving_square(direction=(0, -1), start=(24, 44))
    assert motion_fidelity(right[::-1], right) < 0.1
    assert motion_fidelity(up, right) < 0.1


def test_motion_fidelity_ignores_appearance_position_scale_and_frame_count():
    reference = moving_square()
    elsewhere_bigger_other_colours = moving_square(
        frames=20, size=128, square=40, start=(5, 60), speed=3, seed=5, background=200
    )
    assert motion_fidelity(elsewhere_bigger_other_colours, reference) > 0.95


def test_rotation_and_zoom_are_told_apart_from_their_opposites():
    import cv2

    image = cv2.resize(smooth_image(4, 64, 64), (96, 96), interpolation=cv2.INTER_LINEAR)

    def warped(angle_step: float, zoom_step: float) -> np.ndarray:
        matrices = [cv2.getRotationMatrix2D((48, 48), angle_step * i, 1 + zoom_step * i) for i in range(8)]
        return np.stack([cv2.warpAffine(image, m, (96, 96), borderMode=cv2.BORDER_REFLECT) for m in matrices])

    turning_left, turning_right = warped(3, 0), warped(-3, 0)
    zooming_in, zooming_out = warped(0, 0.03), warped(0, -0.03)
    assert motion_fidelity(turning_left, turning_left) == pytest.approx(1.0)
    assert motion_fidelity(turning_left, turning_right) < 0.5
    assert motion_fidelity(zooming_in, zooming_out) < 0.5
    assert motion_fidelity(turning_left, zooming_in) < 0.5


def test_a_moving_clip_with_each_frame_shown_twice_reads_as_the_same_motion():
    """31 steps interpolated onto 16 time points fell on the 0 -> 0, 1 -> 1, ... repeats alone: a clip sampled at
    twice its rate (train-motion --num-frames 32 from 16 frames) was read as still. Longer clips are averaged."""
    from vidbooth.eval.motion import moving_signature

    frames = np.zeros((16, 64, 64, 3), np.uint8)
    for i in range(16):
        frames[i, 20:44, 4 + 2 * i : 28 + 2 * i] = (230, 30, 30)
    twice = np.repeat(frames, 2, axis=0)
    assert moving_signature(twice) is not None
    assert motion_fidelity(twice, frames) > 0.99 and motion_fidelity(twice[::-1], frames) < 0.1
    assert moving_signature(np.repeat(frames[:1], 6, axis=0)) is None  # a still clip stays still


@pytest.mark.parametrize("num_steps", [2, 5, 15, 16, 17, 31, 33, 63])
def test_every_step_of_a_clip_counts_in_its_signature(num_steps):
    """Whatever the clip's length, one step's motion moves some of the 16 time points (and only its own part of the
    clip's time): none is skipped between the points."""
    from vidbooth.eval.motion import TIME_STEPS, _resample_in_time

    for moving in range(num_steps):
        steps = np.zeros((num_steps, 3))
        steps[moving] = 1.0
        resampled = _resample_in_time(steps, TIME_STEPS)
        assert resampled.shape == (TIME_STEPS, 3) and resampled.min() >= 0 and resampled.any(), moving
        centre = (np.arange(TIME_STEPS) @ resampled[:, 0]) / resampled[:, 0].sum() / (TIME_STEPS - 1)
        near = max(1.0 / TIME_STEPS, 0.5 / (num_steps - 1)) + 1e-9  # a point's share of time, or a step's
        assert abs(centre - moving / (num_steps - 1)) <= near, (moving, centre)
    constant = _resample_in_time(np.ones((num_steps, 3)), TIME_STEPS)
    assert np.allclose(constant, 1.0)  # a steady motion stays steady


def test_a_still_video_has_an_all_zero_signature_and_zero_fidelity():
    still = np.stack([smooth_image(0)] * 5)
    assert not motion_signature(still).any()
    assert motion_fidelity(still, moving_square(size=48)) == 0.0
    with pytest.raises(ValueError, match="at least 2 frames"):
        motion_signature(still[:1])


def test_the_motion_signatures_flow_is_read_at_128_px_on_the_shorter_side():
    from vidbooth.eval.motion import _to_work_gray

    assert _to_work_gray(np.zeros((240, 320, 3), np.uint8)).shape == (128, 171)
    assert _to_work_gray(np.zeros((64, 32, 3), np.uint8)).shape == (256, 128)


def test_a_direction_between_two_bins_is_shared_between_them_by_closeness():
    from vidbooth.eval.motion import _direction_histogram

    halfway, quarter = np.pi / 8, np.pi / 16  # bins are 45 degrees apart, bin 0 at 0 (right)
    np.testing.assert_allclose(_direction_histogram(np.array([[np.cos(halfway), np.sin(halfway)]])),
                               [0.5, 0.5, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(_direction_histogram(np.array([[2 * np.cos(quarter), 2 * np.sin(quarter)]])),
                               [1.5, 0.5, 0, 0, 0, 0, 0, 0])


def test_flow_counts_from_half_a_pixel_and_its_turn_is_told_by_its_column():
    """Flow of 0.4 px is still (MIN_FLOW 0.5); 0.75 px to the right fills the right bin by its total. A turn that is
    counter-clockwise on screen (y points down) is the third of [expansion, contraction, ccw, cw]."""
    from vidbooth.eval.motion import _rotation_and_zoom, _step_features

    for dx, right_bin in ((0.4, 0.0), (0.75, 0.75 * 32 * 32)):
        flow = np.zeros((32, 32, 2), np.float32)
        flow[..., 0] = dx
        features = _step_features(flow)
        assert features[0] == pytest.approx(right_bin) and features[1:8].sum() == 0
    ys, xs = np.mgrid[0:9, 0:9].reshape(2, -1)
    counter_clockwise = np.stack([ys - 4, -(xs - 4)], axis=-1).astype(float)  # at the right (x>4) it moves up
    parts = _rotation_and_zoom(counter_clockwise, xs, ys)
    assert parts[2] > 270 and parts[[0, 1, 3]].max() < 1e-9


def test_normalise_scales_small_rows_to_unit_length_and_leaves_zero_rows_zero():
    """(mutation testing: a norm floor of 1 in place of 1e-12, which leaves short rows short, had passed)"""
    np.testing.assert_allclose(metrics.normalise([[0.03, 0.04]]), [[0.6, 0.8]])
    assert metrics.normalise([[0.0, 0.0]]).tolist() == [[0.0, 0.0]]


def _white_square(step: tuple[int, int]) -> np.ndarray:
    """8 frames of 64x64 RGB: a 16 px white square on black, from (8, 8), moving `step` px (x, y) per frame."""
    video = np.zeros((8, 64, 64, 3), np.uint8)
    for i, frame in enumerate(video):
        x, y = 8 + step[0] * i, 8 + step[1] * i
        frame[y : y + 16, x : x + 16] = 255
    return video


def test_motion_fidelity_of_a_white_square_in_three_directions_and_at_four_times_the_size():
    """Pinned values (opencv versions differ a little: +-0.01, and their order). (mutation testing: 8 time steps,
    a Farneback window of 5, and swapped shrink/enlarge interpolations had passed)"""
    right, diagonal, down = _white_square((3, 0)), _white_square((2, 2)), _white_square((0, 3))
    diagonal_big = np.repeat(np.repeat(diagonal, 4, axis=1), 4, axis=2)  # 256 px: shrunk to 128, not enlarged
    assert motion_signature(right).shape == (16, 12)
    right_diagonal, right_down = motion_fidelity(right, diagonal), motion_fidelity(right, down)
    diagonal_sizes = motion_fidelity(diagonal, diagonal_big)
    assert right_diagonal == pytest.approx(0.0587, abs=0.01)
    assert right_down == pytest.approx(0.1039, abs=0.01)
    assert diagonal_sizes == pytest.approx(0.9972, abs=0.01)
    assert right_diagonal < right_down < diagonal_sizes < 1.0


def test_a_scoring_model_folder_of_another_kind_is_refused_naming_its_kind(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailable, match=r"^'[^']+' is a 'bert' model, not a DINO ViT or DINOv2: "):
        load_dino(str(tmp_path), device="cpu")


def test_a_hub_model_not_cached_is_refused_in_one_line_when_the_hub_cannot_be_reached(monkeypatch):
    import socket

    import vidbooth.eval.features as features

    monkeypatch.setattr(features, "_offline", lambda: False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
    with pytest.raises(ModelUnavailable) as refused:
        features._locate("org/not-cached-dino", "--dino-model")
    assert str(refused.value) == (f"'org/not-cached-dino' is not in the Hugging Face cache and {endpoint} cannot be "
                                  "reached: pass --dino-model <local folder>")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert features._locate("org/not-cached-dino", "--dino-model") == ("org/not-cached-dino", {})


def test_a_name_the_hub_would_refuse_as_an_id_is_not_cached_and_offline_is_one_line(monkeypatch):
    import vidbooth.eval.features as features

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not features.on_this_machine("org--x/dino")
    with pytest.raises(ModelUnavailable, match=r"^'org--x/dino' is not in the Hugging Face cache and HF_HUB_OFFLINE"):
        features._locate("org--x/dino", "--dino-model")


def test_loading_a_scoring_model_leaves_transformers_progress_bars_as_they_were(tiny_vit_dir):
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.enable_progress_bar()
    try:
        load_dino(str(tiny_vit_dir), device="cpu")
        assert logging.is_progress_bar_enabled()
    finally:
        if not was_enabled:
            logging.disable_progress_bar()


def test_a_nano_install_without_its_image_tower_or_with_a_damaged_one_says_to_reinstall(monkeypatch, tmp_path):
    from vidbooth.eval.features import load_nano_image

    monkeypatch.setattr("vidbooth.nano.PACKAGED", tmp_path)
    folder = tmp_path / "image_encoder"
    with pytest.raises(ModelUnavailable) as missing:
        load_nano_image("cpu")
    assert str(missing.value) == f"the packaged nano model's image_encoder is missing from {folder}: reinstall vidbooth"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ModelUnavailable, match=r"^cannot load nano's image tower from .*image_encoder \(Expecting "
                                               r"property name .*\): reinstall vidbooth$"):
        load_nano_image("cpu")
