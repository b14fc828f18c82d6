"""The CUDA paths, end to end: training under fp16 mixed precision on an fp16 model, sampling, the attention
backends and nano. Marked gpu: skipped where CUDA is not available (the CPU suite covers the same code in fp32 and
bf16).

Measured on an H200 (twentieth session, docs/precision.md): in fp32 CUDA samples what the CPU samples (mean
difference 0.00-0.03 of 255 from the same noise); in fp16 or bf16 it differs by 6-8 of 255 on nano and 44-46 on the
random tiny models, where the CPU's bf16 differs by 0.1-0.4. So these tests compare devices in fp32 and check
half precision by what it draws, not pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidbooth.adapters.base import load_tensors
from vidbooth.cli.app import main
from vidbooth.data.video import read_video

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("fresh_accelerate_state")]  # CUDA fp16, then the CPU's

DEVICE, PRECISION = "cuda", "fp16"
ON_GPU = ["--device", DEVICE, "--precision", PRECISION]


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_subject_and_motion_train_under_fp16_and_generate_on_cuda(family, tiny_base_dirs, world_inputs, tmp_path):
    """Both stages of train-subject and train-motion under fp16 autocast (train.mixed_precision auto) on an fp16
    model; the adapters are saved in fp32 and finite; generate with both runs in fp16, and in fp32 gives the video
    the CPU gives."""
    from vidbooth.engine.tiny import motion_adapter_folder

    photos, clip = world_inputs
    base = ["--base", str(tiny_base_dirs[family])]
    if family == "animatediff":
        base += ["--motion-adapter", str(motion_adapter_folder(tiny_base_dirs[family]))]
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "ball", *base, "--ti-steps", "4",
                 "--identity-steps", "4", "--set", "preview.enabled=false", *ON_GPU]) == 0
    assert main(["train-motion", str(clip), "--name", "M", *base, "--steps", "4", "--no-preview", *ON_GPU]) == 0
    home = tmp_path / "vidbooth-home"
    for file in [home / "subjects" / "S%2A" / name for name in ("learned_embeds.safetensors",
                                                                 "identity_adapter.safetensors")] + [
            home / "motions" / "M" / "motion_adapter.safetensors"]:
        tensors, _ = load_tensors(file)
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values()), file

    videos = {}
    for device, precision in ((DEVICE, PRECISION), (DEVICE, "fp32"), ("cpu", "fp32")):
        out = tmp_path / f"{device}-{precision}.mp4"
        assert main(["generate", *base, "--subject", "S*", "--motion", "M", "--prompt", "a S* ball rolling",
                     "--frames", "4", "--steps", "3", "--out", str(out), "--device", device,
                     "--precision", precision]) == 0
        videos[device, precision] = read_video(out).astype(np.float32)
    assert videos[DEVICE, PRECISION].shape == (4, 32, 32, 3) and videos[DEVICE, PRECISION].std() > 1
    difference = np.abs(videos[DEVICE, "fp32"] - videos["cpu", "fp32"]).mean()
    print(f"{family}: mean |cuda - cpu| in fp32 = {difference:.2f} of 255")
    assert difference < 1


@pytest.mark.parametrize("family", ["unet3d", "animatediff", "text2video-zero"])
def test_every_attention_backend_matches_fp32_math_on_cuda(family, tiny_base_dirs):
    """text2video-zero: the image model alone, with cross-frame attention around each backend."""
    from vidbooth.attention import available_backends, set_attention_backend
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.tiny import motion_adapter_folder

    folder = tiny_base_dirs["animatediff" if family == "text2video-zero" else family]
    adapter = str(motion_adapter_folder(folder)) if family == "animatediff" else None
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 32, 32, generator=g)
    outputs = {}
    for precision in ("fp32", PRECISION):
        bb = load_backbone(str(folder), motion_adapter=adapter, device=DEVICE, precision=precision)
        assert bb.family == family
        for backend in available_backends(bb.device) if precision == PRECISION else ["math"]:
            set_attention_backend(bb.unet, backend, bb.device)
            with torch.no_grad():
                out = bb.unet_forward(latents.to(bb.device, bb.dtype), 500, text.to(bb.device, bb.dtype))
            outputs[f"{backend} {precision}"] = out.float().cpu()
    assert {"math fp16", "sdpa fp16"} <= set(outputs)
    reference = outputs.pop("math fp32")
    for name, out in outputs.items():
        error = (out - reference).abs().max().item()
        print(f"{family} {name}: max |difference| from fp32 math = {error:.4f}")
        assert torch.isfinite(out).all() and error < 2e-2, name


def test_nano_on_cuda_draws_what_it_draws_on_the_cpu():
    """The shipped base from the same noise: in fp32 CUDA gives the CPU's frames; in fp16 the world probe reads each
    prompt's colour (measured: 4 of 4, and the CPU's motion in 2 of 4)."""
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.sampling import sample_video
    from vidbooth.nano.probe import probe_video

    prompts = ["a red solid square moving right", "a blue striped circle moving up", "a green dotted cross moving "
               "left", "a yellow checkered triangle moving down"]
    colours = [prompt.split()[1] for prompt in prompts]
    frames = {}
    for device, precision in ((DEVICE, PRECISION), (DEVICE, "fp32"), ("cpu", "fp32")):
        bb = load_backbone("nano", device=device, precision=precision)
        frames[device, precision] = sample_video(bb, prompts, num_inference_steps=10, guidance_scale=2.0,
                                                 generator=torch.Generator().manual_seed(0))
    difference = np.abs(frames[DEVICE, "fp32"].astype(np.float32) - frames["cpu", "fp32"]).mean()
    half = [probe_video(video).colour for video in frames[DEVICE, PRECISION]]
    print(f"nano: mean |cuda - cpu| in fp32 = {difference:.2f} of 255; colours read in {PRECISION}: {half}")
    assert difference < 1 and half == colours


def test_fewer_videos_at_once_give_the_same_videos_on_cuda():
    """generate --batch-size on CUDA: the noise (DDIM's eta noise too) is drawn on the CPU generator and cut per
    video, so nano's videos denoised one at a time are those of one batch (fp32), and finite in half precision."""
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.sampling import sample_video

    for precision in ("fp32", PRECISION):
        bb = load_backbone("nano", device=DEVICE, precision=precision)
        videos = [sample_video(bb, ["a red solid square moving right"] * 3, num_inference_steps=6, guidance_scale=2.0,
                               eta=1.0, generator=torch.Generator().manual_seed(0), output_type="np", batch_size=size)
                  for size in (None, 1)]
        difference = np.abs(videos[0] - videos[1]).max() * 255
        print(f"nano on cuda, {precision}: largest |one batch - one at a time| = {difference:.2f} of 255")
        assert np.isfinite(videos[1]).all()
        if precision == "fp32":  # half precision rounds differently at each batch size
            assert difference < 1


def test_text2video_zero_samples_in_fp16_on_cuda_and_gives_the_cpus_video_in_fp32(tiny_base_dirs):
    """An image model alone on CUDA: fp16 samples a finite video (compared by value it would differ, as every half
    precision video of the random tiny models does, above), and fp32 gives the CPU's video."""
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.sampling import sample_video

    noise = torch.randn(1, 4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_inference_steps=6, guidance_scale=3.0, output_type="np")
    videos = {}
    for device, precision in ((DEVICE, PRECISION), (DEVICE, "fp32"), ("cpu", "fp32")):
        bb = load_backbone(str(tiny_base_dirs["animatediff"]), device=device, precision=precision)
        assert bb.family == "text2video-zero"
        videos[device, precision] = sample_video(bb, "a cat", num_frames=4, latents=noise,
                                                 generator=torch.Generator().manual_seed(1), **kwargs)[0]
    assert videos[DEVICE, PRECISION].shape == (4, 32, 32, 3) and np.isfinite(videos[DEVICE, PRECISION]).all()
    difference = np.abs(videos[DEVICE, "fp32"] - videos["cpu", "fp32"]).mean() * 255
    print(f"text2video-zero: mean |cuda - cpu| in fp32 = {difference:.2f} of 255")
    assert difference < 1


def test_nano_image_prompts_on_cuda_give_the_subjects_colour_and_the_cpus_video_in_fp32(tmp_path):
    """`generate --image-prompt` with nano's shipped image-prompt model: on CUDA in fp16 the probe reads the photo's
    colour in the video; in fp32 CUDA gives the CPU's video."""
    from PIL import Image

    from vidbooth.nano.probe import probe_video
    from vidbooth.nano.world import Sprite, render_photos

    photo = tmp_path / "subject.png"
    Image.fromarray(render_photos(Sprite("circle", "red", "solid"), 1, 64, seed=3)[0]).save(photo)
    videos = {}
    for device, precision in ((DEVICE, PRECISION), (DEVICE, "fp32"), ("cpu", "fp32")):
        out = tmp_path / f"{device}-{precision}.mp4"
        assert main(["generate", "--image-prompt", str(photo), "--prompt", "a sprite moving right", "--out", str(out),
                     "--device", device, "--precision", precision]) == 0
        videos[device, precision] = read_video(out).astype(np.float32)
    difference = np.abs(videos[DEVICE, "fp32"] - videos["cpu", "fp32"]).mean()
    colour = probe_video(videos[DEVICE, PRECISION].astype(np.uint8)).colour
    print(f"image prompt: mean |cuda - cpu| in fp32 = {difference:.2f} of 255 (mp4); colour in {PRECISION}: {colour}")
    assert difference < 2 and colour == "red"


def test_gradient_checkpointing_trains_under_fp16_on_cuda(world_inputs, tiny_base_dirs, isolated_home,
                                                          recomputations):
    """The recomputation in the backward pass runs on CUDA under fp16 autocast and gives the weights a run without
    it gives (on the CPU bit for bit, tests/test_motion_cli.py; here within fp16's reach): the up-projections,
    which start at 0, differ by far less than they moved."""
    _, clip = world_inputs
    args = ["train-motion", str(clip), "--base", str(tiny_base_dirs["unet3d"]), "--steps", "4", "--lr", "1e-3",
            "--no-preview", *ON_GPU]
    assert main([*args, "--name", "plain"]) == 0
    assert main([*args, "--name", "recomputed", "--gradient-checkpointing"]) == 0 and recomputations
    plain, _ = load_tensors(isolated_home / "motions" / "plain" / "motion_adapter.safetensors")
    recomputed, _ = load_tensors(isolated_home / "motions" / "recomputed" / "motion_adapter.safetensors")
    ups = [k for k in plain if k.endswith("up.weight")]
    moved = max(plain[k].abs().max().item() for k in ups)
    largest = max((plain[k] - recomputed[k]).abs().max().item() for k in ups)
    print(f"up-projections: moved up to {moved:.2e}, differ with gradient checkpointing by up to {largest:.2e}")
    assert all(torch.isfinite(t).all() for t in recomputed.values()) and ups and largest < 0.05 * moved
