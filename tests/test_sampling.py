import contextlib
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vidbooth.engine.backbone import load_backbone
from vidbooth.engine.sampling import sample_video
from vidbooth.engine.tiny import diffusers_reference_pipeline
from vidbooth.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _diffusers_scheduler(name, folder, **overrides):
    """The scheduler docs/generate.md promises, built by diffusers alone (not by vidbooth's make_scheduler)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_pretrained(folder, subfolder="scheduler", **overrides)
    return DPMSolverMultistepScheduler.from_pretrained(
        folder, subfolder="scheduler", algorithm_type="dpmsolver++", solver_order=2, **overrides
    )  # DPM-Solver++ 2M


@pytest.mark.parametrize("scheduler, eta", [("ddim", 0.0), ("dpm++", 0.0), ("ddim", 1.0)])
def test_matches_diffusers_text_to_video_pipeline(tiny_base_dirs, tiny_backbones, scheduler, eta):
    """Two prompts; with DDIM's eta its noise too, which diffusers draws for the frames laid out as images (it had
    been drawn for the video's layout: the same seed gave another video, 0.4 of its largest latent apart)."""
    folder = tiny_base_dirs["unet3d"]
    pipe = diffusers_reference_pipeline(folder, scheduler)
    pipe.scheduler = _diffusers_scheduler(scheduler, folder)  # independent of vidbooth's scheduler building
    kwargs = dict(num_frames=4, height=32, width=32, num_inference_steps=5, guidance_scale=7.5, eta=eta)
    prompts, negatives = ["a red dog", "a cat"], ["blurry", ""]
    expected = pipe(
        prompts, negative_prompt=negatives, generator=torch.Generator().manual_seed(3), output_type="np", **kwargs
    ).frames
    ours = sample_video(
        tiny_backbones["unet3d"], prompts, negative_prompt=negatives, scheduler=scheduler,
        generator=torch.Generator().manual_seed(3), output_type="np", **kwargs,
    )
    assert ours.shape == expected.shape == (2, 4, 32, 32, 3)
    assert np.abs(ours - expected).max() < 1e-4


@pytest.mark.parametrize("scheduler, eta", [("ddim", 1.0), ("dpm++", 0.0)])
def test_matches_diffusers_animatediff_pipeline(tiny_base_dirs, tiny_backbones, scheduler, eta):
    """An image model with a motion module, against diffusers' AnimateDiffPipeline given the schedule vidbooth
    documents for AnimateDiff (linear betas, no clipping); it draws DDIM's eta noise for the video as it is."""
    import warnings

    from diffusers import AnimateDiffPipeline, AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from vidbooth.engine.tiny import motion_adapter_folder

    folder = tiny_base_dirs["animatediff"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = AnimateDiffPipeline(
            vae=AutoencoderKL.from_pretrained(folder / "vae"),
            text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"), unet=UNet2DConditionModel.from_pretrained(
                folder / "unet"), motion_adapter=MotionAdapter.from_pretrained(motion_adapter_folder(folder)),
            scheduler=_diffusers_scheduler(scheduler, folder, beta_schedule="linear", clip_sample=False),
        )
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_frames=4, height=32, width=32, num_inference_steps=5, guidance_scale=7.5, eta=eta)
    prompts, negatives = ["a red dog", "a cat"], ["blurry", ""]
    expected = pipe(prompts, negative_prompt=negatives, generator=torch.Generator().manual_seed(7),
                    output_type="latent", **kwargs).frames
    ours = sample_video(tiny_backbones["animatediff"], prompts, negative_prompt=negatives, scheduler=scheduler,
                        generator=torch.Generator().manual_seed(7), output_type="latent", **kwargs)
    assert ours.shape == expected.shape == (2, 4, 4, 16, 16)
    assert (ours - expected).abs().max() < 1e-5 * expected.abs().max()


def test_dpm_solver_sampling_raises_no_warning(tiny_backbones):
    """diffusers' DPM-Solver++ makes arrays of tensors, which NumPy 2 warns of on every generate; vidbooth hides
    that one warning, and only it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample_video(tiny_backbones["unet3d"], "a cat", num_frames=2, num_inference_steps=2, scheduler="dpm++",
                     generator=torch.Generator().manual_seed(0), output_type="latent")
    assert [str(warning.message) for warning in caught] == []


def test_ddim_eta_adds_noise_drawn_from_the_generator(tiny_backbones):
    """sampling.eta reaches DDIM: eta 1 adds noise at each step (drawn from the seeded generator, so it repeats),
    eta 0 adds none (diffusers' pipeline is matched above)."""
    run = lambda eta: sample_video(tiny_backbones["unet3d"], "a cat", num_frames=3, num_inference_steps=3,
                                   guidance_scale=5.0, eta=eta, generator=torch.Generator().manual_seed(0),
                                   output_type="np")
    assert np.array_equal(run(1.0), run(1.0)) and np.abs(run(1.0) - run(0.0)).max() > 0.05


@pytest.mark.parametrize("case", ["ddim eta 1", "dpm++", "conditional-only adapter"])
def test_each_video_is_the_same_whatever_the_batch_size(tiny_backbones, case):
    """--batch-size denoises fewer videos at once for less memory: each video keeps its own prompt and noise, DDIM's
    eta noise included, and the generator is left where one batch leaves it."""
    import copy

    from vidbooth.adapters.base import adapters_of
    from vidbooth.adapters.identity import inject_identity_adapter, mark_conditional_only

    bb = tiny_backbones["unet3d"]
    if case == "conditional-only adapter":
        bb = copy.deepcopy(bb)
        inject_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), 0.5)
        for adapter in adapters_of(bb.unet, "identity").values():
            torch.nn.init.normal_(adapter.up.weight, std=0.1)
        mark_conditional_only(bb.unet)

    def run(batch_size):
        generator = torch.Generator().manual_seed(5)
        latents = sample_video(bb, ["a cat", "a dog", "a red dog"], num_frames=2, num_inference_steps=3,
                               guidance_scale=4.0, generator=generator, output_type="latent",
                               scheduler="dpm++" if case == "dpm++" else "ddim", eta=1.0 if "eta" in case else 0.0,
                               batch_size=batch_size)
        return latents, torch.rand(1, generator=generator)

    (whole, after), *others = [run(size) for size in (None, 1, 2)]
    for latents, then in others:
        assert (latents - whole).abs().max() < 1e-5 * whole.abs().max() and torch.equal(then, after)
    assert (whole[0] - whole[1]).abs().mean() > 0.1


def test_the_generator_is_left_past_the_noise_sampling_drew_and_the_bar_counts_every_batch(tiny_backbones,
                                                                                           monkeypatch):
    """(mutation testing) DDIM's eta noise is drawn from copies of the generator, batch by batch: the caller's
    generator must still move past it, as one batch's draws move it; and the progress bar counts every batch's
    steps."""
    from vidbooth.engine import sampling

    def after(eta):
        generator = torch.Generator().manual_seed(5)
        sample_video(tiny_backbones["unet3d"], ["a cat"] * 3, num_frames=2, num_inference_steps=2, guidance_scale=3.0,
                     eta=eta, generator=generator, output_type="latent", batch_size=2)
        return torch.rand(1, generator=generator)

    assert not torch.equal(after(1.0), after(0.0))
    bars = []

    @contextlib.contextmanager
    def counted(description, total):
        bars.append([total, 0])
        yield SimpleNamespace(advance=lambda *args, **kwargs: bars[-1].__setitem__(1, bars[-1][1] + 1))

    monkeypatch.setattr(sampling, "progress", counted)
    sample_video(tiny_backbones["unet3d"], ["a cat"] * 3, num_frames=2, num_inference_steps=2, output_type="latent",
                 generator=torch.Generator().manual_seed(5), batch_size=1)
    assert bars == [[6, 6]]


def test_seed_determinism_and_guidance_effect(tiny_backbones):
    bb = tiny_backbones["unet3d"]
    run = lambda seed, gs: sample_video(bb, "a cat", num_frames=3, num_inference_steps=3, guidance_scale=gs,
                                        generator=torch.Generator().manual_seed(seed), output_type="np")
    a, b, c = run(0, 5.0), run(0, 5.0), run(1, 5.0)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert np.abs(run(0, 1.0) - a).max() > 1e-4  # guidance changes the result


def test_animatediff_family_samples(tiny_backbones):
    video = sample_video(tiny_backbones["animatediff"], "a cat", num_frames=4, num_inference_steps=2,
                         generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 4, 32, 32, 3) and video.dtype == np.uint8


def test_bf16_on_cpu(tiny_base_dirs, tiny_backbones):
    bb16 = load_backbone(str(tiny_base_dirs["unet3d"]), device="cpu", precision="bf16")
    assert bb16.unet.dtype == bb16.text_encoder.dtype == torch.bfloat16
    kwargs = dict(num_frames=2, num_inference_steps=3, output_type="np")
    low = sample_video(bb16, "a cat", generator=torch.Generator().manual_seed(0), **kwargs)
    full = sample_video(tiny_backbones["unet3d"], "a cat", generator=torch.Generator().manual_seed(0), **kwargs)
    assert np.isfinite(low).all()
    assert 0 < np.abs(low - full).mean() < 0.05  # same model, lower precision: close, not equal


def test_chunked_decode_matches_single_pass(tiny_backbones):
    bb = tiny_backbones["unet3d"]
    latents = torch.randn(1, 4, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bb.decode_latents(latents, chunk_size=2), bb.decode_latents(latents, chunk_size=8), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_frames=0), "at least 1"),
        (dict(height=30), r"^--height 30 must be a positive multiple of 4 for this model: use e.g. 28 or 32$"),
        (dict(width=-8), r"^--width -8 must be a positive multiple of 4 for this model: use e.g. 4$"),
        (dict(width=100000), r"--width 100000 is more than 8 times this model's native size \(32\): use at most 256"),
        (dict(height=264, width=32), "--height 264 is more than 8 times"),
        (dict(num_frames=1025), r"--num-frames 1025 is more than vidbooth takes \(1024\)"),
        (dict(scheduler="euler"), "unknown scheduler 'euler'"),
        (dict(num_inference_steps=0), "from 1 to 999"),
        (dict(num_inference_steps=1000, scheduler="dpm++"), r"from 1 to 999 \(the model was trained on 1000 noise"),
        (dict(num_inference_steps=1500), "from 1 to 999"),
    ],
)
def test_bad_settings(tiny_backbones, kwargs, message):
    with pytest.raises(UserError, match=message):
        sample_video(tiny_backbones["unet3d"], "x", **kwargs)


def test_a_sample_that_diverges_is_an_error_not_a_video(tiny_backbones, monkeypatch):
    """NaN latents (fp16 overflow on a GPU, say) stop with advice instead of writing garbage frames."""
    bb = tiny_backbones["unet3d"]
    forward = bb.unet_forward
    monkeypatch.setattr(bb, "unet_forward", lambda *args, **kwargs: forward(*args, **kwargs) * float("nan"))
    with pytest.raises(UserError, match=r"NaN or infinite values \(ddim, 2 steps\): lower --guidance-scale$"):
        sample_video(bb, "x", num_frames=2, num_inference_steps=2, height=16, width=16)
    # a training's preview names its own setting: train-subject has no --guidance-scale
    with pytest.raises(UserError, match=r"lower preview.guidance_scale \(--set preview.guidance_scale=N\)$"):
        sample_video(bb, "x", num_frames=2, num_inference_steps=2, height=16, width=16, settings="preview")


def test_steps_a_trainings_images_cannot_take_name_its_setting(tiny_backbones):
    with pytest.raises(UserError, match=r"^prior.num_inference_steps \(--set prior.num_inference_steps=N\) must be "
                                        r"from 1 to 999"):
        sample_video(tiny_backbones["unet3d"], "x", num_frames=1, num_inference_steps=1000, settings="prior")


def test_too_many_frames_for_motion_module(tiny_backbones):
    with pytest.raises(UserError, match=r"^--num-frames 33 is more than this motion module takes \(32\): use 32 or "
                                        r"fewer$"):
        sample_video(tiny_backbones["animatediff"], "x", num_frames=33)


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_conditional_only_adapters_act_on_the_conditional_half(tiny_backbones, family):
    """During guided sampling a `conditional_only` adapter leaves the unconditional half to the base layer."""
    import copy

    from vidbooth.adapters.base import ParallelAdapter, adapters_of
    from vidbooth.adapters.identity import inject_identity_adapter, mark_conditional_only

    bb = copy.deepcopy(tiny_backbones[family])
    inject_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), 0.5)
    for adapter in adapters_of(bb.unet, "identity").values():
        torch.nn.init.normal_(adapter.up.weight, std=0.1)
    mark_conditional_only(bb.unet)
    wrapper = next(m for m in bb.unet.modules() if isinstance(m, ParallelAdapter))
    seen = []
    wrapper.register_forward_hook(
        lambda module, args, kwargs, out: seen.append((module.base_layer(*args, **kwargs), out)), with_kwargs=True
    )
    sample_video(bb, ["a cat", "a dog"], num_frames=2, num_inference_steps=1, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(0), output_type="latent")
    base, out = seen[0]
    half = out.shape[0] // 2  # [negatives, prompts], each sample's frames together
    assert torch.allclose(out[:half], base[:half]) and not torch.allclose(out[half:], base[half:], atol=1e-4)
    assert all(a.sample_weights is None for a in adapters_of(bb.unet, "identity").values())


def test_a_scheduler_config_of_another_kind_never_clips_the_latents(tiny_base_dirs):
    """A PNDM or DPM-Solver config has no clip_sample: DDIM's default (True) would clip the latents to [-1, 1]."""
    import json

    from vidbooth.engine.sampling import make_scheduler

    config = json.loads((tiny_base_dirs["unet3d"] / "scheduler" / "scheduler_config.json").read_text())
    other = {key: value for key, value in config.items() if key != "clip_sample"} | {"_class_name": "PNDMScheduler"}
    assert make_scheduler("ddim", other).config.clip_sample is False
    assert make_scheduler("ddim", config | {"clip_sample": True}).config.clip_sample is True  # a model's own word


def test_prompt_embeds_under_guidance_sample_what_the_prompt_does(tiny_backbones):
    """Given prompt embeddings (as image prompts give them), guidance still pairs them with the negative prompt in
    the order the prompt's own are (an inverted order steers away from the prompt; mutation testing)."""
    bb = tiny_backbones["unet3d"]
    settings = dict(num_frames=2, num_inference_steps=2, guidance_scale=7.5, output_type="latent",
                    negative_prompt="blurry")
    plain = sample_video(bb, "a dog", generator=torch.Generator().manual_seed(3), **settings)
    given = sample_video(bb, "a dog", generator=torch.Generator().manual_seed(3),
                         prompt_embeds=bb.encode_prompt(["a dog"]), **settings)
    assert torch.allclose(plain, given, atol=1e-5)


def test_to_uint8_rounds_to_the_nearest_level_rather_than_truncating():
    """Frames in [0, 1] become the nearest of the 256 levels: truncation darkens every pixel by up to one level and
    never reaches 255 short of exactly 1.0 (mutation testing)."""
    from vidbooth.engine.sampling import to_uint8

    levels = to_uint8(np.array([0.999, 0.5, 0.0015, 0.9985, 1.0, 0.0]))
    assert levels.dtype == np.uint8 and levels.tolist() == [255, 128, 0, 255, 255, 0]


def test_generate_writes_the_video_at_the_fps_asked_for(tiny_base_dirs, tmp_path):
    """(mutation testing: the video written at the default rate whatever --fps said had passed)"""
    from vidbooth.cli.app import main
    from vidbooth.data.video import video_fps

    out = tmp_path / "clip.mp4"
    assert main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--out", str(out),
                 "--num-frames", "2", "--num-inference-steps", "1", "--fps", "12", "--device", "cpu"]) == 0
    assert video_fps(out) == 12.0


def test_latents_the_decoder_turns_into_nan_are_an_error_not_a_video(tiny_backbones, monkeypatch):
    """Finite latents can still decode to NaN or infinite pixels (nano at guidance 1e38): a preview of noise had been
    saved with only numpy's 'invalid value encountered in cast' as a warning."""
    bb = tiny_backbones["unet3d"]
    decode = bb.decode_latents
    monkeypatch.setattr(bb, "decode_latents", lambda *args, **kwargs: decode(*args, **kwargs) * float("inf"))
    with pytest.raises(UserError, match=r"latents the decoder turns into NaN or infinite pixels \(ddim, 2 steps\): "
                                        r"lower preview.guidance_scale \(--set preview.guidance_scale=N\)$"):
        sample_video(bb, "x", num_frames=2, num_inference_steps=2, height=16, width=16, settings="preview")


def test_without_a_generator_pt_output_is_fresh_pixels_as_the_decoder_gives_them(tiny_backbones):
    backbone = tiny_backbones["unet3d"]
    start = sample_video(backbone, "a cat", num_frames=2, num_inference_steps=1,
                         generator=torch.Generator().manual_seed(0), output_type="latent")
    run = lambda: sample_video(backbone, "a cat", num_frames=2, num_inference_steps=2, latents=start, eta=1.0,
                               output_type="pt")  # DDIM's noise of each step: the one draw left to chance
    first, second = run(), run()
    assert first.shape[:3] == (1, 2, 3) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert not torch.equal(first, second)


def test_prompt_embeds_for_another_number_of_prompts_are_refused_naming_both_counts(tiny_backbones):
    backbone = tiny_backbones["unet3d"]
    embeds = backbone.encode_prompt(["a cat", "a dog"])
    with pytest.raises(ValueError, match=r"^prompt_embeds holds 2 prompts, not 1$"):
        sample_video(backbone, "a cat", num_frames=2, num_inference_steps=2, guidance_scale=1.0, prompt_embeds=embeds)
