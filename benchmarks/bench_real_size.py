"""Real-size checks: randomly initialised models with real architectures' configs, through the real commands.

Usage:
    python benchmarks/bench_real_size.py build DIR [--family modelscope|animatediff] [--dtype fp16|fp32]
    python benchmarks/bench_real_size.py run DIR WORK [--recipe-family modelscope|zeroscope] [--only LABEL]

Real weights cannot be downloaded here, and the test suite runs on tiny models only: this checks that the commands
run at real dimensions, and measures their wall time and peak resident memory. The outputs are noise.

`build` saves into DIR, in diffusers layout with safetensors weights (fp16 by default, as real models ship), a model
with real configs and random weights. The models are built on the meta device in the stored dtype, then filled with
small random weights, so no fp32 copy is ever made. The tokenizer is a `CLIPTokenizer` made from the real CLIP BPE
vocabulary that nano ships.
- `--family modelscope`: ModelScope T2V 1.7B: `UNet3DConditionModel` (block_out_channels 320/640/1280/1280, 2
  layers per block, cross_attention_dim 1024, attention_head_dim 64; 1.41 B parameters), the OpenCLIP ViT-H text
  tower as `CLIPTextModel` (1024 wide, 23 layers, 16 heads; 340 M), SD's `AutoencoderKL` (84 M), ModelScope's DDIM
  scheduler config (pad token `!`, as ModelScope's); and a CLIP ViT-L/14 (`CLIPModel`, 428 M) at DIR-clip for
  `evaluate --clip-model`.
- `--family animatediff`: SD1.5: `UNet2DConditionModel` (860 M), the CLIP ViT-L/14 text tower (123 M), the SD VAE,
  SD1.5's PNDM scheduler, StableDiffusionPipeline's model_index.json (no safety checker); an AnimateDiff
  `MotionAdapter` with guoyww/animatediff-motion-adapter-v1-5-2's config (453 M) at DIR-motion-adapter; and the
  vision tower of openai/clip-vit-base-patch32 (`CLIPVisionModelWithProjection`, 88 M), the image encoder the
  animatediff/motion recipe names, at DIR-clip.

`run` runs, each in its own process under `/usr/bin/time -v`, the real commands on a `--family modelscope` DIR with
the recipes of the family (`--recipe modelscope/subject` etc.), made to fit a CPU: 64x64 pixels, 1 training step,
few frames, 2 sampling steps; it prints wall seconds, peak resident set (GB) and the exit code of each. WORK is the
scratch folder (photos, clip, outputs); VIDBOOTH_HOME and VIDBOOTH_CACHE come from the environment. The SD1.5 rows
below were run by hand with the same settings.

Measured on 2 CPU cores shared with another session (fifty-third session; OMP_NUM_THREADS=1, fp16 files run in fp32
on the CPU unless said; wall seconds of the whole command, imports and loading included; peak = maximum resident
set of `/usr/bin/time -v`). Settings: 64x64 pixels, 1-2 training steps per stage, batch 1, 4 frames, 2 sampling
steps, `--no-preview` unless said, prior preservation with 1-2 class images of 2 steps; motion appearance encoder
`vae` on ModelScope (the recipes' openai/clip-vit-base-patch32 cannot be fetched offline: refused in one line, exit
2), the CLIP folder above on SD1.5. Every command worked. Three defects that showed only at real size were fixed
then: a motion checkpoint's save held three copies of its bytes (SD1.5 train-motion peaked at 10.07 GiB, then 9.28),
train-image-prompt lacked `--motion-adapter`, and an image-prompt model refused for its motion adapter said "use it
with --base" the very base given. The previews of the rows that have one were drawn at the model's own size (256 or
512 pixels), which is most of their time; a subject's preview is now drawn at the training size.

| command (`--recipe modelscope/...`) | settings | wall s | peak GB |
| --- | --- | --- | --- |
| build (this script) | fp16 files / fp32 files | 44 / 56 | - / 7.13 |
| loading alone (`load_backbone`) | fp16 files; 7.59 GB resident after it | 10 | 10.35 |
| train-subject | TI 1 + identity 1 | 29 | 9.88 |
| train-subject | `--prior-preservation`, 1 class image: made in 2 steps / cached | 35 / 28 | 9.88 / 8.42 |
| train-subject | preview on (2 steps, 4 frames; at the model's 256x256) | 95 | 10.36 |
| train-subject | `--gradient-checkpointing` | 20 | 10.36 |
| textual-inversion | `--num-vectors 2` | 15 | 10.35 |
| identity-adapter | `identity.layers=[mid_block.*,up_blocks.1.*]`, `identity.guidance_scale=9` | 24 | 10.36 |
| train-motion | 4 frames (5.2 s/step, 40.5 M adapter parameters) | 29 | 9.90 |
| train-motion | `--gradient-checkpointing` (6.0 s/step) | 24 | 10.37 |
| train-motion | 8 frames at 128x128 (19.1 s/step) | 46 | 11.16 |
| train-motion | SIGINT at step 3 of 4 (checkpoint folder 928 MB), then `--resume` | 26 (resume) | 10.38 |
| train-motion | the recipe's 32 frames (of an 8-frame clip), 64x64 (19.4 s/step) | 48 | 11.34 |
| generate | `--subject` / `--motion` / both | 24 / 29 / 26 | 9.90 / 9.89 / 9.89 |
| generate | both, `--precision bf16 --num-videos 2 --batch-size 1` | 25 | 6.95 |
| generate | fp32 files, no adapters | 19 | 7.71 |
| evaluate | `--clip-model` DIR-clip, `--subject`, `--motion` (DINO-I unavailable) | 20 | 2.00 |
| train-image-prompt | `--data` of 1 clip, 4 frames, 1 + 1 steps, encoder `vae` | 33 | 10.37 |
| generate | `--image-prompt` with that model, `--motion` | 28 | 10.37 |

With `--recipe zeroscope/...` (DPM-Solver++ for generate): train-subject 28 s / 9.87 GB, with prior 35 s / 9.88 GB,
train-motion 24 s / 9.89 GB, generate `--subject` / `--motion` / both 26 / 24 / 27 s at 9.89 GB, evaluate 20 s /
2.00 GB. The ~10.4 GB peaks are the loading's: fp32 weights (7.6 GB) plus the fp16 files' pages mapped while they
are converted; with fp32 files the same generate peaked at 7.71 GB.

SD1.5 (`--family animatediff`; peaks in GiB; building the three folders: 30.7 s, 3.56 GiB):

| command | settings | wall s | peak GiB |
| --- | --- | --- | --- |
| loading alone (`load_backbone`, with the motion adapter) | 6.06 GiB resident after it | 11 | 6.9 |
| train-subject `--recipe animatediff/subject` | preview on (2 frames, 2 steps, at 512x512: 99 s of it) | 187 | 8.59 |
| train-subject `--recipe animatediff/subject` | class image cached | 30 | 6.92 |
| train-subject on the image model alone (no recipe) | | 26 | 5.98 |
| train-motion `--recipe animatediff/motion` | 7.2 s/step, 91 M trainable | 33 | 9.28 |
| generate `--recipe animatediff/generate` | `--subject` / `--motion` / both | 22 / 23 / 30 | 6.94 |
| generate `--recipe text2video-zero/generate` | none / subjects learned with, without adapter | 18 / 19 / 19 | 6.00 |
| train-image-prompt `--data` (1 clip) | with the motion adapter / the image model alone | 42 / 38 | 8.57 / 6.82 |
| generate `--image-prompt` | `animatediff/generate` / `text2video-zero/generate` | 27 / 23 | 6.94 / 6.00 |
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
NANO_TOKENIZER = REPO / "vidbooth" / "assets" / "nano" / "tokenizer"

MODELSCOPE_UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=64,
)

OPENCLIP_H_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)

SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

MODELSCOPE_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "trained_betas": None,
}


MODELSCOPE_INDEX = {
    "_class_name": "TextToVideoSDPipeline", "_diffusers_version": "0.15.0.dev0",
    "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

CLIP_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
CLIP_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD15_TEXT = CLIP_L14_TEXT | dict(vocab_size=49408, bos_token_id=0, eos_token_id=2, pad_token_id=1)
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
SD15_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.0",
    "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
MOTION_ADAPTER_V152 = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True,
)
CLIP_B32_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=32, projection_dim=512, hidden_act="quick_gelu")


def on_meta(build, dtype: torch.dtype):
    """`build()` on the meta device, cast to `dtype`, then given real (uninitialised) storage on the CPU."""
    with torch.device("meta"):
        module = build()
    return module.to(dtype).to_empty(device="cpu")


def fill_randomly(module: torch.nn.Module, seed: int = 0) -> None:
    """Norm weights 1, biases 0, other weights N(0, 1/fan_in): activations keep their scale through the layers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            fill_parameter(name, param, generator)
        for buffer in module.buffers():
            if buffer.is_floating_point() or buffer.ndim == 0:
                buffer.zero_()
            else:
                buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))  # position_ids


def fill_parameter(name: str, param: torch.Tensor, generator: torch.Generator) -> None:
    if name.endswith("bias"):
        param.zero_()
    elif param.ndim <= 1:
        param.fill_(1.0)
    else:
        fan_in = math.prod(param.shape[1:])
        std = 0.02 if "embedding" in name else 1.0 / math.sqrt(fan_in)
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
        param.copy_(noise.to(param.dtype))


def random_model(build, dtype: torch.dtype, seed: int):
    model = on_meta(build, dtype)
    fill_randomly(model, seed)
    return model


def save_diffusers_model(model, folder: Path) -> int:
    model.save_pretrained(folder, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def save_transformers(model, folder: Path) -> int:
    from vidbooth.engine.tiny import save_transformers_model

    save_transformers_model(model, folder)
    return sum(p.numel() for p in model.parameters())


def save_tokenizer(folder: Path, **settings) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(NANO_TOKENIZER, **settings)
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(folder)


def write_index(folder: Path, index: dict, scheduler: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))


def build_modelscope(folder: Path, dtype: torch.dtype) -> dict[str, int]:
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    write_index(folder, MODELSCOPE_INDEX, MODELSCOPE_SCHEDULER)
    save_tokenizer(folder / "tokenizer", pad_token="!")
    counts = {
        "unet": save_diffusers_model(random_model(lambda: UNet3DConditionModel(**MODELSCOPE_UNET), dtype, 1),
                                     folder / "unet"),
        "text_encoder": save_transformers(random_model(lambda: CLIPTextModel(CLIPTextConfig(**OPENCLIP_H_TEXT)),
                                                       dtype, 2), folder / "text_encoder"),
        "vae": save_diffusers_model(random_model(lambda: AutoencoderKL(**SD_VAE), dtype, 3), folder / "vae"),
    }
    clip = folder.with_name(folder.name + "-clip")  # for evaluate --clip-model
    config = CLIPConfig(text_config=CLIP_L14_TEXT, vision_config=CLIP_L14_VISION, projection_dim=768)
    model = random_model(lambda: CLIPModel(config), torch.float32, 4)
    model.logit_scale.data.fill_(math.log(100.0))
    counts["clip-l14"] = save_transformers(model, clip)
    save_tokenizer(clip)
    return counts


def build_animatediff(folder: Path, dtype: torch.dtype) -> dict[str, int]:
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    write_index(folder, SD15_INDEX, SD15_SCHEDULER)
    save_tokenizer(folder / "tokenizer")
    vision = CLIPVisionConfig(**CLIP_B32_VISION)
    return {
        "unet": save_diffusers_model(random_model(lambda: UNet2DConditionModel(**SD15_UNET), dtype, 1),
                                     folder / "unet"),
        "text_encoder": save_transformers(random_model(lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT)), dtype, 2),
                                          folder / "text_encoder"),
        "vae": save_diffusers_model(random_model(lambda: AutoencoderKL(**SD_VAE), dtype, 3), folder / "vae"),
        "motion-adapter": save_diffusers_model(random_model(lambda: MotionAdapter(**MOTION_ADAPTER_V152), dtype, 4),
                                               folder.with_name(folder.name + "-motion-adapter")),
        "clip-b32-vision": save_transformers(random_model(lambda: CLIPVisionModelWithProjection(vision), dtype, 5),
                                             folder.with_name(folder.name + "-clip")),
    }


BUILDERS = {"modelscope": build_modelscope, "animatediff": build_animatediff}


def build(folder: Path, family: str, dtype: torch.dtype) -> None:
    start = time.perf_counter()
    counts = BUILDERS[family](folder, dtype)
    print(json.dumps({k: f"{v / 1e6:.1f}M" for k, v in counts.items()}), f"{time.perf_counter() - start:.0f} s")


def write_inputs(work: Path) -> tuple[Path, Path]:
    """Three 96x96 photos of a coloured square and an 8-frame clip of it moving right."""
    import numpy as np
    from PIL import Image

    from vidbooth.data.video import write_video

    photos, clip = work / "photos", work / "clip.mp4"
    photos.mkdir(parents=True, exist_ok=True)
    frames = []
    for index in range(8):
        frame = np.full((96, 96, 3), 200, np.uint8)
        frame[30:60, 10 + 6 * index: 40 + 6 * index] = (200, 30, 30)
        frames.append(frame)
        if index < 3:
            Image.fromarray(frame).save(photos / f"photo-{index}.png")
    write_video(np.stack(frames), clip, fps=8)
    return photos, clip


def commands(base: Path, work: Path, family: str) -> list[tuple[str, list[str]]]:
    photos, clip = write_inputs(work)
    fit = ["--set", "data.resolution=64"]
    steps = ["--steps", "2", "--guidance-scale", "9"]
    subject = "S*" if family == "modelscope" else "Z*"
    prior_subject = "P*" if family == "modelscope" else "Q*"
    motion = f"slide-{family}"
    out = work / f"{family}"
    sample = ["--recipe", f"{family}/generate", "--base", str(base), "--height", "64", "--width", "64", "--frames", "4"]
    return [
        ("train-subject", ["train-subject", str(photos), "--name", subject, "--class-noun", "square",
                           "--recipe", f"{family}/subject", "--base", str(base), "--ti-steps", "1",
                           "--identity-steps", "1", "--batch-size", "1", *fit, "--no-preview", "--overwrite"]),
        ("train-subject +prior", ["train-subject", str(photos), "--name", prior_subject, "--class-noun", "square",
                                  "--recipe", f"{family}/subject", "--base", str(base), "--ti-steps", "1",
                                  "--identity-steps", "1", "--batch-size", "1", "--prior-preservation",
                                  "--num-class-images", "1", "--set", "prior.num_inference_steps=2", *fit,
                                  "--no-preview", "--overwrite"]),
        ("train-motion", ["train-motion", str(clip), "--name", motion, "--class-noun", "square",
                          "--recipe", f"{family}/motion", "--base", str(base), "--steps", "1", "--frames", "4",
                          "--set", "appearance.encoder=vae", *fit, "--no-preview", "--overwrite"]),
        ("generate --subject", ["generate", "--subject", subject, "--prompt", f"a {subject} square",
                                *sample, *steps, "--out", str(out) + "-s.mp4"]),
        ("generate --motion", ["generate", "--motion", motion, "--prompt", "a square",
                               *sample, *steps, "--out", str(out) + "-m.mp4"]),
        ("generate both", ["generate", "--subject", subject, "--motion", motion, "--prompt", f"a {subject} square",
                           *sample, *steps, "--out", str(out) + "-sm.mp4"]),
        ("evaluate", ["evaluate", str(out) + "-sm.mp4", "--subject", subject, "--motion", motion,
                      "--clip-model", str(base.with_name(base.name + "-clip")), "--json", str(out) + "-eval.json"]),
    ]


def timed(argv: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, peak resident set (GB), exit code and the last lines of stderr of `python -m vidbooth argv`."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "vidbooth", *argv],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    tail = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("\t"))[-1500:]
    return wall, int(peak.group(1)) / 1024**2 if peak else float("nan"), done.returncode, tail


def run(base: Path, work: Path, family: str, only: list[str] | None) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for label, argv in commands(base, work, family):
        if only and label not in only:
            continue
        wall, peak, code, tail = timed(argv)
        print(f"| {family} {label} | {wall:.0f} s | {peak:.2f} GB | {'ok' if code == 0 else f'failed ({code})'} |",
              flush=True)
        if code != 0:
            print(tail, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    make = sub.add_parser("build")
    make.add_argument("folder", type=Path)
    make.add_argument("--family", choices=sorted(BUILDERS), default="modelscope")
    make.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    go = sub.add_parser("run")
    go.add_argument("folder", type=Path)
    go.add_argument("work", type=Path)
    go.add_argument("--recipe-family", default="modelscope", choices=["modelscope", "zeroscope"])
    go.add_argument("--only", action="append")
    args = parser.parse_args()
    if args.what == "build":
        build(args.folder, args.family, torch.float16 if args.dtype == "fp16" else torch.float32)
    else:
        run(args.folder.resolve(), args.work.resolve(), args.recipe_family, args.only)


if __name__ == "__main__":
    main()
