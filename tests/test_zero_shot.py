"""Text2Video-Zero on an image model without a motion adapter: the latent motion, cross-frame attention, and the
whole sampler against diffusers' (deprecated) TextToVideoZeroPipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from vidbooth.attention import VidboothAttnProcessor
from vidbooth.attention.cross_frame import CrossFrameAttnProcessor, frames_per_video
from vidbooth.cli.app import main
from vidbooth.config.schema import ZeroShotConfig
from vidbooth.data.video import read_video
from vidbooth.engine.backbone import load_backbone
from vidbooth.engine.sampling import sample_video
from vidbooth.engine.tiny import diffusers_zero_shot_module
from vidbooth.engine.zero_shot import renoise, translate_frames, warp_steps
from vidbooth.errors import UserError

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*(meshgrid|align_corners).*:UserWarning"),  # inside diffusers' pipeline
]


@pytest.fixture(scope="module")
def image_model(tiny_base_dirs):
    """The tiny SD1.5-style folder loaded with no motion adapter."""
    return load_backbone(str(tiny_base_dirs["animatediff"]), device="cpu")


def test_translation_matches_diffusers_warp_at_512_pixels():
    """diffusers' flow grid is always 512 x 512; a 512-pixel video's strengths are the same pixels here."""
    warp = diffusers_zero_shot_module().create_motion_field_and_warp_latents
    first = torch.randn(1, 4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    for strength_x, strength_y in ((12, 12), (-7, 3), (0.3, 0), (40, -25)):
        ours = translate_frames(first, 5, strength_x, strength_y, 512, 512)
        theirs = warp(strength_x, strength_y, frame_ids=[1, 2, 3, 4], latents=first[:, :, 0].repeat(4, 1, 1, 1))
        assert ours.shape == (1, 4, 4, 64, 64)
        assert torch.equal(ours[0].transpose(0, 1), theirs), (strength_x, strength_y)


def test_positive_strengths_move_the_scene_left_and_up_by_that_many_pixels_per_frame():
    first = torch.zeros(2, 1, 1, 16, 16)
    first[:, 0, 0, 8, 10] = 1.0  # a dot at row 8, column 10 of a 16x16 latent (a 32x32 video: 2 pixels per latent)
    moved = translate_frames(first, 3, 4, 2, 32, 32)  # 2 latent pixels left and 1 up per frame
    assert moved.shape == (2, 1, 2, 16, 16)
    for k, frame in enumerate(moved[0, 0], start=1):
        assert frame.nonzero().tolist() == [[8 - k, 10 - 2 * k]]
    assert torch.equal(moved[0], moved[1])
    assert torch.equal(translate_frames(first, 3, 0, 0, 32, 32)[:, :, 1], first[:, :, 0])


def _leading(steps: int) -> list[int]:
    """SD1.5's DDIM timesteps ('leading', offset 1): 981, 961, 941, ... at 50 steps."""
    return [(steps - 1 - i) * (1000 // steps) + 1 for i in range(steps)]


def test_warp_steps_follow_diffusers_t0_and_t1_and_stay_in_order():
    assert warp_steps(_leading(50), 0.88, 0.94) == (2, 5)  # diffusers: timesteps[-47 - 1] and [-44 - 1]
    assert warp_steps(_leading(10), 0.88, 0.94) == (0, 1)
    assert warp_steps(_leading(20), 0.88, 0.94) == (0, 1)  # 901 is nearer 880 than 851 is
    assert warp_steps(_leading(2), 0.88, 0.94) == (0, 1)
    assert warp_steps(_leading(1), 0.88, 0.94) == (0, 1)  # the one step: the first frame denoised whole
    linspace = [999, 979, 959, 939, 919, 899, 879, 859]  # DPM-Solver++'s first of 50: the same places, a step on
    assert warp_steps(linspace, 0.88, 0.94) == (3, 6)
    for steps in range(2, 120):
        for t0, t1 in ((0.01, 0.02), (0.5, 0.6), (0.88, 0.94), (0.98, 0.99)):
            i1, i0 = warp_steps(_leading(steps), t0, t1)
            assert 0 <= i1 < i0 <= steps - 1


def test_renoise_takes_a_latent_to_the_higher_noise_level():
    clean = torch.randn(4, 64, 64, 64, generator=torch.Generator().manual_seed(0))
    alpha_t0, alpha_t1 = 0.6, 0.2
    noisy = alpha_t0**0.5 * clean + (1 - alpha_t0) ** 0.5 * torch.randn_like(clean)
    noisier = renoise(noisy, alpha_t0, alpha_t1, torch.randn(clean.shape, generator=torch.Generator().manual_seed(1)))
    assert (noisier - alpha_t1**0.5 * clean).std().item() == pytest.approx((1 - alpha_t1) ** 0.5, rel=0.01)


def _attention():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=16, heads=2, dim_head=8)


def test_cross_frame_attention_takes_keys_and_values_from_each_videos_first_frame():
    attn = _attention()
    hidden = torch.randn(2 * 3, 5, 16)  # 2 videos of 3 frames, 5 tokens each
    plain = VidboothAttnProcessor("sdpa")
    attn.set_processor(CrossFrameAttnProcessor(plain))
    with torch.no_grad():
        assert torch.equal(attn(hidden), plain(attn, hidden))  # outside a video: ordinary self-attention
        with frames_per_video(3):
            out = attn(hidden)
            firsts = hidden.unflatten(0, (2, 3))[:, 0]
            for video in range(2):
                for frame in range(3):
                    row = video * 3 + frame
                    expected = plain(attn, hidden[row : row + 1], firsts[video : video + 1])
                    assert torch.allclose(out[row : row + 1], expected, atol=1e-6)
            assert torch.allclose(out[[0, 3]], plain(attn, hidden[[0, 3]]), atol=1e-6)  # first frames: unchanged
            with pytest.raises(ValueError, match="not whole videos"):
                attn(hidden[:4])


def test_another_attention_backend_keeps_cross_frame_attention(tiny_base_dirs):
    from vidbooth.attention import set_attention_backend

    zero = load_backbone(str(tiny_base_dirs["animatediff"]), device="cpu")
    before = {name for name, p in zero.unet.attn_processors.items() if isinstance(p, CrossFrameAttnProcessor)}
    set_attention_backend(zero.unet, "math", "cpu")
    after = {name: p for name, p in zero.unet.attn_processors.items() if isinstance(p, CrossFrameAttnProcessor)}
    assert before and set(after) == before and all(p.inner.backend == "math" for p in after.values())


def test_cross_frame_attention_matches_diffusers_processor():
    attn = _attention()
    hidden = torch.randn(2 * 4, 6, 16)  # guidance's [unconditional, conditional] of one 4-frame video
    with torch.no_grad():
        attn.set_processor(diffusers_zero_shot_module().CrossFrameAttnProcessor2_0(batch_size=2))
        theirs = attn(hidden)
        attn.set_processor(CrossFrameAttnProcessor(VidboothAttnProcessor("sdpa")))
        with frames_per_video(4):
            ours = attn(hidden)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("steps, eta", [(10, 0.0), (10, 1.0), (50, 0.0)])
def test_matches_diffusers_text_to_video_zero_pipeline(tiny_base_dirs, image_model, steps, eta):
    """The whole sampler, against diffusers' pipeline with its flow grid at the video's size (512 x 512 there) and
    its noising back from t0 to t1 exact (one noise level short there): `diffusers_zero_shot_reference`. With DDIM's
    eta its noise too (drawn as for images, as diffusers does); at 50 steps the first frame is denoised alone
    before t1 (at 10, t1 is the first step)."""
    from vidbooth.engine.tiny import diffusers_zero_shot_reference

    height = width = 32
    pipe = diffusers_zero_shot_reference(tiny_base_dirs["animatediff"], height, width)
    frames = 4
    i1, i0 = warp_steps(_leading(steps), 0.88, 0.94)
    first = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    try:
        expected = pipe(
            "a red dog", video_length=frames, height=height, width=width, num_inference_steps=steps, guidance_scale=6.0,
            negative_prompt="blurry", latents=first, generator=torch.Generator().manual_seed(9), t0=steps - 1 - i0,
            t1=steps - 1 - i1, motion_field_strength_x=6, motion_field_strength_y=-4, output_type="np", eta=eta,
        ).images
    finally:
        pipe.restore()
    latents = first[:, :, None].repeat(1, 1, frames, 1, 1)  # the first frame's noise; the others' is not used
    ours = sample_video(
        image_model, "a red dog", negative_prompt="blurry", num_frames=frames, height=height, width=width,
        num_inference_steps=steps, guidance_scale=6.0, latents=latents, generator=torch.Generator().manual_seed(9),
        zero_shot=ZeroShotConfig(motion_field_strength_x=6, motion_field_strength_y=-4), output_type="np", eta=eta,
    )[0]
    assert (i1 > 0) == (steps == 50)
    assert ours.shape == np.asarray(expected).shape == (frames, height, width, 3)
    assert np.abs(ours - np.asarray(expected)).max() < 1e-4
    assert np.abs(ours[1:] - ours[:1]).max() > 1e-2  # the frames are not one picture


def test_the_video_is_the_same_for_any_chunk_size(image_model):
    """Frames denoised a few at a time, each chunk with the first frame, give the video of all frames at once."""
    noise = torch.randn(2, 4, 7, 16, 16, generator=torch.Generator().manual_seed(0))
    videos = [sample_video(image_model, ["a cat", "a dog"], num_frames=7, num_inference_steps=4, guidance_scale=3.0,
                           latents=noise, generator=torch.Generator().manual_seed(1), output_type="latent",
                           zero_shot=ZeroShotConfig(chunk_size=size)) for size in (8, 2, 3)]
    for chunked in videos[1:]:
        assert torch.allclose(chunked, videos[0], atol=1e-5)
    assert (videos[0][:, :, 1:] - videos[0][:, :, :1]).abs().mean() > 0.1


def test_the_videos_are_the_same_whatever_the_batch_size(image_model):
    """The frames' noise (drawn when they are made from the first) and DDIM's eta noise are each video's own: a
    video is the same denoised alone or with others."""
    videos = [sample_video(image_model, ["a cat", "a dog", "a red dog"], num_frames=3, num_inference_steps=3,
                           guidance_scale=3.0, eta=1.0, generator=torch.Generator().manual_seed(1),
                           output_type="latent", batch_size=size) for size in (None, 2)]
    assert torch.allclose(videos[1], videos[0], atol=1e-5)
    assert (videos[0][0] - videos[0][2]).abs().mean() > 0.1


def test_one_sampling_step_makes_a_video_too(image_model):
    """A one-step preview: the first frame denoised whole, translated, noised back to the start, then every frame
    denoised in one step (two UNet calls)."""
    video = sample_video(image_model, "a cat", num_frames=3, num_inference_steps=1, guidance_scale=1.0,
                         generator=torch.Generator().manual_seed(0), output_type="np")
    assert video.shape == (1, 3, 32, 32, 3) and np.isfinite(video).all()


def test_the_first_frame_is_what_the_image_model_draws_alone(image_model):
    """Cross-frame attention leaves the first frame's own attention as it is, and every other layer of an image model
    works frame by frame: so the first frame of a video is the 1-frame picture from the same noise."""
    noise = torch.randn(2, 4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_inference_steps=6, guidance_scale=3.0, output_type="latent")
    video = sample_video(image_model, ["a cat", "a dog"], num_frames=4, latents=noise,
                         generator=torch.Generator().manual_seed(1), **kwargs)
    picture = sample_video(image_model, ["a cat", "a dog"], num_frames=1, latents=noise[:, :, :1], **kwargs)
    assert video.shape == (2, 4, 4, 16, 16)
    assert torch.allclose(video[:, :, :1], picture, atol=1e-5)
    assert (video[:, :, 1:] - video[:, :, :1]).abs().mean() > 0.1


def test_generate_on_an_image_model_writes_a_zero_shot_video(tiny_base_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    out = tmp_path / "zero.mp4"
    args = ["generate", "--base", str(tiny_base_dirs["animatediff"]), "--prompt", "a dog", "--out", str(out),
            "--frames", "4", "--steps", "3", "--device", "cpu", "--motion-field-strength-x", "-8"]
    assert main(args) == 0
    assert read_video(out).shape == (4, 32, 32, 3)
    resolved = yaml.safe_load(out.with_suffix(".yaml").read_text())["sampling"]["zero_shot"]
    assert resolved == {"motion_field_strength_x": -8.0, "motion_field_strength_y": 12.0, "t0": 0.88, "t1": 0.94,
                        "chunk_size": 8}
    err = " ".join(capsys.readouterr().err.split())
    assert "(text2video-zero, fingerprint" in err
    assert "is an image model with no motion adapter: its frames are made zero-shot (Text2Video-Zero" in err
    assert "the scene moving by -8, 12 pixels per frame" in err


def test_zero_shot_settings_on_a_video_model_are_warned_about(tiny_base_dirs, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    args = ["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--out", str(out), "--frames",
            "2", "--steps", "1", "--device", "cpu"]
    assert main([*args, "--motion-field-strength-y", "0"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "sampling.zero_shot (--motion-field-strength-x/-y) has no effect on " in err and "a unet3d model" in err
    assert main(args) == 0 and "zero_shot" not in capsys.readouterr().err


def test_dpm_solver_makes_a_zero_shot_video(image_model):
    """The multistep solver starts afresh at t1 for all frames (its history of the first frame alone is dropped)."""
    video = sample_video(image_model, "a cat", num_frames=3, num_inference_steps=5, scheduler="dpm++",
                         generator=torch.Generator().manual_seed(0), output_type="np")
    assert video.shape == (1, 3, 32, 32, 3) and np.isfinite(video).all()


@pytest.mark.parametrize("args, message", [
    (["--motion-field-strength-x", "nan"], "sampling.zero_shot.motion_field_strength_x (--motion-field-strength-x) "
                                           "must be a finite number of pixels per frame, got nan"),
    (["--set", "sampling.zero_shot.t0=0.95"], "t0 and t1 must be in (0, 1) with t0 below t1"),
    (["--set", "sampling.zero_shot.chunk_size=1"], "sampling.zero_shot.chunk_size must be at least 2, got 1"),
    (["--motion-field-strength-y=-1e30"], "--motion-field-strength-y -1e+30 moves the scene a whole frame (32 pixels) "
                                          "or more per frame: use less than 32"),
])
def test_bad_zero_shot_settings_are_one_error_line(args, message, tiny_base_dirs, tmp_path, capsys):
    out = tmp_path / "zero.mp4"
    code = main(["generate", "--base", str(tiny_base_dirs["animatediff"]), "--prompt", "a dog", "--out", str(out),
                 "--frames", "2", "--device", "cpu", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_train_motion_on_an_image_model_says_it_needs_a_motion_adapter(tiny_base_dirs, tmp_path, isolated_home,
                                                                         capsys, monkeypatch):
    """Refused from the model's config, before its weights load."""
    import vidbooth.engine.backbone as backbone
    from tests.badinputs import write_clip

    monkeypatch.setattr(backbone, "load_backbone", None)  # never reached

    clip = write_clip(tmp_path / "clip.mp4")
    code = main(["train-motion", str(clip), "--name", "M", "--base", str(tiny_base_dirs["animatediff"]),
                 "--recipe", "tiny/motion", "--steps", "1", "--num-frames", "4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "is an image model: it has no temporal layers for a motion adapter" in err and "--motion-adapter" in err
    assert not (isolated_home / "motions").exists() or not list((isolated_home / "motions").iterdir())


def test_a_subject_learned_on_an_image_model_is_animated_zero_shot(tiny_base_dirs, tmp_path, isolated_home):
    """Personalised Text2Video-Zero: textual inversion and the identity adapter learned on the image model, then
    videos of the subject with no video model at all."""
    from tests.badinputs import write_photos

    base = str(tiny_base_dirs["animatediff"])
    fast = ["--recipe", "tiny/subject", "--set", "data.resolution=32", "--set", "preview.num_inference_steps=2",
            "--batch-size", "1", "--ti-steps", "2", "--identity-steps", "2"]
    assert main(["train-subject", str(write_photos(tmp_path / "photos")), "--name", "S*", "--class-noun", "dog",
                 "--base", base, *fast]) == 0
    manifest = json.loads((isolated_home / "subjects" / "S%2A" / "manifest.json").read_text())
    assert manifest["base"] == base
    out = tmp_path / "s.mp4"
    assert main(["generate", "--base", base, "--subject", "S*", "--prompt", "a S* dog running", "--out", str(out),
                 "--frames", "3", "--steps", "3", "--device", "cpu"]) == 0
    assert read_video(out).shape == (3, 32, 32, 3)


def test_a_motion_field_of_a_whole_frame_is_refused_and_one_pixel_less_is_not():
    from vidbooth.engine.zero_shot import check_strengths

    check_strengths(ZeroShotConfig(motion_field_strength_x=63), 64, 64)
    with pytest.raises(UserError, match="whole frame"):
        check_strengths(ZeroShotConfig(motion_field_strength_x=64), 64, 64)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_with_one_step_the_frames_are_noised_back_from_where_the_step_left_the_first(image_model, monkeypatch,
                                                                                    scheduler):
    """With one step the first frame is translated after it is denoised whole: DDIM leaves it at its final noise
    level (alphas_cumprod[0] without set_alpha_to_one, as the tiny and SD1.5 schedules are), not at none; dpm++
    leaves it clean."""
    from vidbooth.engine import sampling

    seen, other_frames = [], sampling.other_frames

    def recorded(first, num_frames, settings, height, width, alpha_t0, alpha_t1, draws):
        seen.append((alpha_t0, alpha_t1))
        return other_frames(first, num_frames, settings, height, width, alpha_t0, alpha_t1, draws)

    monkeypatch.setattr(sampling, "other_frames", recorded)
    sample_video(image_model, "a cat", num_frames=2, num_inference_steps=1, guidance_scale=1.0, scheduler=scheduler,
                 generator=torch.Generator().manual_seed(0), output_type="latent")
    sched = sampling.make_scheduler(scheduler, image_model.scheduler_config)
    sampling.set_timesteps(sched, 1, "cpu")
    after = float(sched.alphas_cumprod[0]) if scheduler == "ddim" else 1.0
    assert after < 1.0 or scheduler == "dpm++"
    at_the_step = float(sched.alphas_cumprod[int(sched.timesteps[0])])
    assert seen == [(pytest.approx(after, abs=1e-7), pytest.approx(at_the_step))]


@pytest.mark.parametrize("scheduler, spacing, t1_step, t0_step", [
    ("ddim", None, 941, 881),  # SD1.5's leading timesteps: diffusers' t1 = 47 and t0 = 44 of 50 steps
    ("dpm++", None, 939, 879),  # DPM-Solver++'s linspace timesteps: 999, 979, 959, 939, ...
    ("ddim", "trailing", 939, 879),  # 999, 979, 959, 939, ...
])
def test_t0_and_t1_are_the_same_noise_levels_whatever_the_timestep_spacing(image_model, monkeypatch, scheduler,
                                                                            spacing, t1_step, t0_step):
    """t0 and t1 are places in the schedule (timesteps of 1000): the first frame is translated at the step nearest
    880 and all frames start at the one nearest 940, whichever timesteps the scheduler takes (they had been
    counted in steps from the end, one step noisier than meant where the timesteps do not start one step below
    the top)."""
    if spacing:
        spaced = image_model.scheduler_config | {"timestep_spacing": spacing}
        monkeypatch.setattr(image_model, "scheduler_config", spaced)
    calls, forward = [], image_model.unet_forward

    def recorded(latents, t, text, **kwargs):
        calls.append((latents.shape[2], int(t)))  # (frames, timestep) of each UNet call
        return forward(latents, t, text, **kwargs)

    monkeypatch.setattr(image_model, "unet_forward", recorded)
    sample_video(image_model, "a cat", num_frames=2, num_inference_steps=50, guidance_scale=1.0, scheduler=scheduler,
                 generator=torch.Generator().manual_seed(0), output_type="latent")
    alone = [t for frames, t in calls if frames == 1]
    together = [t for frames, t in calls if frames == 2]
    assert together[0] == t1_step and t1_step in alone  # the first frame passes t1 alone, then all start there
    assert alone[alone.index(t1_step):] + [t0_step] == together[: len(alone) - alone.index(t1_step) + 1]



def test_the_progress_bar_counts_every_unet_step(image_model, monkeypatch):
    """The first frame's steps alone to t0 are i0, the frames' together from t1 are steps - i1: the bar's total is
    what it advances."""
    import contextlib

    import vidbooth.engine.sampling as sampling

    seen = {}

    class Bar:
        def advance(self, n=1, **fields):
            seen["done"] = seen.get("done", 0) + n

    @contextlib.contextmanager
    def progress(description, total, completed=0):
        seen["total"] = total
        yield Bar()

    monkeypatch.setattr(sampling, "progress", progress)
    sample_video(image_model, "a cat", num_frames=2, num_inference_steps=50, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(0), output_type="latent")
    assert seen["done"] == seen["total"] == 50 + 5 - 2
