"""nano's architecture: builders for each part from its sizes (`vidbooth.nano.arch`), and the diffusers-layout folder
they make.

nano is a text-to-video model in miniature, laid out like ModelScope T2V so that `load_backbone` loads it:
- vae/: an `AutoencoderKL`, 64x64 RGB frames -> 8x8x16 latents (factor 8, as Stable Diffusion's);
- text_encoder/ + image_encoder/: the two towers of a tiny CLIP trained contrastively on world frames and captions
  (`CLIPTextModel`, whose last hidden state conditions the UNet; `CLIPVisionModelWithProjection`, whose
  embeddings serve the motion adapter's appearance guidance and CLIP-style scores);
- unet/: a `UNet3DConditionModel` predicting the clean latents (`prediction_type: sample`);
- scheduler/: DDIM on a cosine schedule, `timestep_spacing: trailing` so sampling starts from pure noise;
- tokenizer/: OpenAI CLIP's BPE vocabulary (`vidbooth.nano.tokenizer`).
"""

from __future__ import annotations

import copy
import filecmp
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from vidbooth import __version__, reporting
from vidbooth.errors import UserError
from vidbooth.fileio import folder_beside, lock_beside, replace_folder, with_usual_modes
from vidbooth.nano.arch import NanoArch

CLIP_MEAN = (0.5, 0.5, 0.5)
CLIP_STD = (0.5, 0.5, 0.5)
"""nano's CLIP sees pixels in [-1, 1], like the VAE; written to image_encoder/preprocessor_config.json."""


def build_vae(arch: NanoArch):
    from diffusers import AutoencoderKL

    levels = len(arch.vae.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(arch.vae.block_out_channels),
        layers_per_block=arch.vae.layers_per_block,
        norm_num_groups=arch.vae.norm_num_groups,
        latent_channels=arch.vae.latent_channels,
        sample_size=arch.size,
    )


def build_clip(arch: NanoArch, tokenizer):
    """A `CLIPModel` (both towers, projections, temperature) sized by `arch.clip`, ids from `tokenizer`."""
    from transformers import CLIPConfig, CLIPModel

    c = arch.clip
    tower = {
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.heads,
        "projection_dim": c.projection_dim,
    }
    text = dict(
        tower,
        vocab_size=len(tokenizer),
        num_hidden_layers=c.text_layers,
        max_position_embeddings=c.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(tower, num_hidden_layers=c.vision_layers, image_size=arch.size, patch_size=c.patch_size)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=c.projection_dim))


def build_unet(arch: NanoArch):
    from diffusers import UNet3DConditionModel

    u = arch.unet
    levels = len(u.block_out_channels)
    return UNet3DConditionModel(
        sample_size=arch.latent_size,
        in_channels=arch.vae.latent_channels + u.position_channels,
        out_channels=arch.vae.latent_channels,
        down_block_types=("CrossAttnDownBlock3D",) * (levels - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (levels - 1),
        block_out_channels=tuple(u.block_out_channels),
        layers_per_block=u.layers_per_block,
        norm_num_groups=u.norm_num_groups,
        cross_attention_dim=arch.clip.hidden_size,
        attention_head_dim=u.attention_heads,
    )


def scheduler_config() -> dict:
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 0,
        "timestep_spacing": "trailing",
        "prediction_type": "sample",
    }


def text_encoder_of(clip):
    """The text tower of a `CLIPModel` as a standalone `CLIPTextModel` (what diffusers pipelines load)."""
    from transformers import CLIPTextModel

    model = CLIPTextModel(clip.config.text_config)
    model.load_state_dict(clip.text_model.state_dict())
    return model


def image_encoder_of(clip):
    """The image tower and its projection as a `CLIPVisionModelWithProjection`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**dict(clip.config.vision_config.to_dict(), projection_dim=clip.config.projection_dim))
    model = CLIPVisionModelWithProjection(config)
    model.vision_model.load_state_dict(clip.vision_model.state_dict())
    model.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    return model


def _save_tokenizer(tokenizer, folder: Path) -> None:
    """Save `tokenizer` as loaded: without the padding and truncation that encoding leaves set on its fast
    backend, or the loading options `from_pretrained` records (a re-export leaves the shipped files as they are)."""
    clean = copy.deepcopy(tokenizer)
    clean.backend_tokenizer.no_padding()
    clean.backend_tokenizer.no_truncation()
    for option in ("is_local", "local_files_only"):
        clean.init_kwargs.pop(option, None)
    clean.save_pretrained(folder)


def check_export_folder(folder: str | Path, flag: str = "--export") -> None:
    """Refuse to export over a folder that holds anything but an earlier nano export: it is replaced whole. `flag`:
    how the folder was given ('--export'), or what it is ('the run's model folder')."""
    folder = Path(folder)
    fix = "give a new or empty folder, or an earlier export" if flag.startswith("--") else "move them out of it"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file: give a folder to export the nano model to")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "nano.json").is_file():
        raise UserError(
            f"{flag} {folder} holds other files than a nano model, and an export replaces the whole folder: {fix}"
        )
    from vidbooth.data.video import check_writable_dir

    # the export is built beside the folder, then renamed over it
    check_writable_dir(folder.parent, flag if flag.startswith("--") else None)


def save_nano(folder: str | Path, arch: NanoArch, tokenizer, vae, clip, unet, provenance: dict) -> Path:
    """Write the diffusers-layout folder (fp16 weights) that `load_backbone` and the appearance encoder read. It is
    built beside `folder` and then replaces it whole: a stop while exporting leaves the old model as it was. Of two
    exports to one folder at once the second is refused (their renames had crossed, failing with ENOTEMPTY)."""
    final = Path(folder)

    def busy(pid: str) -> str:
        return f"{final} is being exported to by another process (pid {pid}): wait for it to end, or export elsewhere"

    with lock_beside(final, busy):
        check_export_folder(final)
        with folder_beside(final) as folder:
            _write_nano(folder, arch, tokenizer, vae, clip, unet, provenance)
            _keep_image_prompt_model(final, folder)
            replace_folder(folder, final)
    return final


IMAGE_PROMPT_MODEL = "image_prompt.safetensors"
"""In a base's folder: its own image-prompt model, trained on that very model (generate's default, nano ships
one)."""


def _keep_image_prompt_model(old: Path, new: Path) -> None:
    """Carry the old folder's image-prompt model into the new export when the model it was trained on is unchanged
    (an export of the packaged nano continued by no steps); else say that it is left out, and how to train one."""
    model = old / IMAGE_PROMPT_MODEL
    if not model.is_file():
        return
    parts = ("text_encoder", "vae", "unet")  # what the image-prompt model's base fingerprint covers
    files = sorted({p.relative_to(root) for root in (old, new) for part in parts for p in (root / part).rglob("*")
                    if p.is_file()})
    if all((old / f).is_file() and (new / f).is_file() and filecmp.cmp(old / f, new / f, shallow=False)
           for f in files):
        shutil.copy2(model, new / IMAGE_PROMPT_MODEL)
        return
    reporting.warn(f"{model} was trained on the model this export replaces, so it is left out: train one for the new "
                   f"model with `vidbooth train-image-prompt --recipe nano/image-prompt --base {old} --out {model}`")


def _write_nano(folder: Path, arch: NanoArch, tokenizer, vae, clip, unet, provenance: dict) -> None:
    _save_tokenizer(tokenizer, folder / "tokenizer")
    for name, model in (
        ("text_encoder", text_encoder_of(clip)),
        ("image_encoder", image_encoder_of(clip)),
        ("vae", vae),
        ("unet", unet),
    ):
        _half_copy(model).save_pretrained(folder / name)
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": arch.size},
        "crop_size": {"height": arch.size, "width": arch.size},
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }
    (folder / "image_encoder" / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(), indent=2))
    index = {
        "_class_name": "TextToVideoSDPipeline",
        "_diffusers_version": "0.42.0",
        "_vidbooth_version": __version__,
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet3DConditionModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "nano.json").write_text(json.dumps(dict(provenance, architecture=asdict(arch)), indent=2))
    with_usual_modes(folder)


def _half_copy(model):
    return copy.deepcopy(model).to(torch.float16)
