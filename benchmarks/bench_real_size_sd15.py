"""Real-size SD1.5 paths (AnimateDiff, Text2Video-Zero, image prompts) on randomly initialised models.

Usage: python benchmarks/bench_real_size_sd15.py OUT_FOLDER

Saves, under OUT_FOLDER, models with the real architectures' configs and random weights (fp16 safetensors, as real
ones ship), since real weights cannot be downloaded here:
- `sd15/`: a Stable Diffusion 1.5 folder in diffusers layout (StableDiffusionPipeline's model_index.json, with
  safety_checker and feature_extractor null): UNet2DConditionModel (0.86 B parameters), CLIP ViT-L/14 text tower,
  the SD VAE, SD1.5's PNDM scheduler config and a CLIPTokenizer with the real CLIP BPE vocabulary (vidbooth's
  packaged nano tokenizer, which is OpenAI CLIP's);
- `animatediff-motion-adapter-v1-5-2/`: a MotionAdapter with guoyww/animatediff-motion-adapter-v1-5-2's config;
- `clip-vit-base-patch32/`: a CLIPVisionModelWithProjection with openai/clip-vit-base-patch32's vision config, the
  image encoder the animatediff/motion recipe names (for appearance guidance and image prompts).

The vidbooth commands are then run on them (see the table below); this script only writes the models and prints
what it wrote. The outputs are noise, as the weights are random: what is measured is whether each command runs at
real dimensions, its wall time and its peak resident memory (`/usr/bin/time -v`).

Saving the three folders: 30.7 s, 3.56 GiB peak. Parameters: UNet 859.5 M, text encoder 123.1 M, VAE 83.7 M,
motion adapter 453.2 M, CLIP vision 87.8 M (2.0 GB + 0.87 GB + 0.17 GB of fp16 files).

Measured (2 CPU cores, shared with another session; fp32 on the CPU; the shipped recipes with only these
overrides: 64x64 pixels (--resolution 64 / --height 64 --width 64), 4 frames, 2 steps of each stage, batch 1,
2 sampling steps, prior preservation with 1-2 class images of 2 steps, `--image-encoder` / `encoder=` the CLIP
folder above; wall time and peak resident set of the whole command from /usr/bin/time -v, in GiB):

  command (recipe)                                                   wall s  peak GiB  result
  train-subject --recipe animatediff/subject, + preview (2 frames, 2 steps, at 512x512: the preview is always at
    the model's native size)                                          187     8.59     ok (preview 99 s of it)
  train-subject --recipe animatediff/subject --no-preview              30      6.92     ok (class image cached)
  train-subject on the image model alone (no recipe), --no-preview     26      5.98     ok
  train-motion --recipe animatediff/motion --no-preview                44     10.07     ok (7.2 s/step, 91 M
    trainable); after the write_safetensors fix (one copy of a file's bytes): 33 s, 9.28 GiB
  generate --recipe animatediff/generate --subject                     22      6.94     ok
  generate --recipe animatediff/generate --motion                      23      6.94     ok
  generate --recipe animatediff/generate --subject --motion            30      6.93     ok
  generate --recipe text2video-zero/generate                           18      6.00     ok
  generate --recipe text2video-zero/generate --subject (learned with the motion adapter)  19  6.00  ok
  generate --recipe text2video-zero/generate --subject (learned on the image model)       19  5.99  ok
  train-image-prompt --data (1 clip) with the motion adapter           45      8.57     ok (needed --set
    backbone.motion_adapter=: the command had no --motion-adapter flag; fixed)
  train-image-prompt --data, image model alone                         38      6.82     ok
  generate --recipe animatediff/generate --image-prompt                27      6.94     ok
  generate --recipe text2video-zero/generate --image-prompt (its own)  23      6.00     ok
  generate --recipe text2video-zero/generate --image-prompt (model trained with the motion adapter)
                                                                       12      6.00     refused, as designed; the
    message said "use it with --base models/sd15", the base given (fixed: it names the motion adapter)

Loading alone (load_backbone, fp32, with the motion adapter): 11.4 s, 6.9 GiB peak, 6.06 GiB held after.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
    pad_token_id=1,
)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=512,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
MOTION_ADAPTER_V152 = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True,
)
CLIP_B32_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
    patch_size=32, projection_dim=512, hidden_act="quick_gelu",
)
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.0",
    "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_diffusers_half(model, folder: Path) -> int:
    count = parameter_count(model)
    model.half().save_pretrained(folder, safe_serialization=True)
    return count


def save_transformers_half(model, folder: Path) -> int:
    count = parameter_count(model)
    model.half().save_pretrained(folder, safe_serialization=True)
    return count


def save_tokenizer(folder: Path) -> None:
    """The packaged nano tokenizer (tokenizer.json only: the real CLIP vocabulary and merges) saved as a
    CLIPTokenizer, which writes vocab.json and merges.txt as SD1.5's folder has them."""
    from transformers import CLIPTokenizer

    from vidbooth.engine.backbone import NANO

    tokenizer = CLIPTokenizer.from_pretrained(NANO / "tokenizer")
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(folder)


def save_sd15(folder: Path) -> dict[str, int]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    counts = {"unet": save_diffusers_half(UNet2DConditionModel(**SD15_UNET), folder / "unet")}
    counts["text_encoder"] = save_transformers_half(CLIPTextModel(CLIPTextConfig(**SD15_TEXT)), folder / "text_encoder")
    counts["vae"] = save_diffusers_half(AutoencoderKL(**SD_VAE), folder / "vae")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2))
    save_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return counts


def save_motion_adapter(folder: Path) -> int:
    from diffusers import MotionAdapter

    return save_diffusers_half(MotionAdapter(**MOTION_ADAPTER_V152), folder)


def save_clip_vision(folder: Path) -> int:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return save_transformers_half(CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_B32_VISION)), folder)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "real-size-sd15")
    torch.manual_seed(0)
    for name in ("sd15", "animatediff-motion-adapter-v1-5-2", "clip-vit-base-patch32"):
        shutil.rmtree(out / name, ignore_errors=True)
    with torch.no_grad():
        counts = save_sd15(out / "sd15")
        counts["motion_adapter"] = save_motion_adapter(out / "animatediff-motion-adapter-v1-5-2")
        counts["image_encoder"] = save_clip_vision(out / "clip-vit-base-patch32")
    for name, count in counts.items():
        print(f"{name}: {count / 1e6:.1f} M parameters")
    print(f"saved under {out.absolute()}")


if __name__ == "__main__":
    main()
