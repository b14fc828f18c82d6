"""Tiny backbones of both families, built from configs and saved in diffusers layout.

Used by the test suite and by `vidbooth generate --base tiny` (random weights: it proves the plumbing,
not the quality). They are loaded back through `load_backbone`, the same code that loads real models.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from vidbooth import __version__
from vidbooth.fileio import with_usual_modes, write_safetensors

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def tiny_tokenizer_files(folder: Path) -> None:
    """A character-level CLIP BPE vocabulary (no merges): every word splits into characters."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    for tok in SPECIAL:
        vocab[tok] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 32, "clean_up_tokenization_spaces": False})
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": SPECIAL[0], "eos_token": SPECIAL[1], "unk_token": SPECIAL[1], "pad_token": SPECIAL[1]})
    )


def save_transformers_model(model, folder: Path) -> None:
    """What `model.save_pretrained(folder)` writes (config.json, model.safetensors), from any process. transformers
    5 writes the weights only on torch.distributed rank 0, so a built-in model that another rank built under
    `accelerate launch` had none, and when that rank's copy reached the cache first every later load failed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]  # as save_pretrained writes it: the base's fingerprint reads it
    model.config.save_pretrained(folder)
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})


def tiny_text_config(vocab_size: int, dim: int, layers: int = 2) -> dict:
    """A tiny CLIP text tower's settings (`CLIPTextConfig` keywords) for the tiny tokenizer's `vocab_size`."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=dim,
        intermediate_size=dim * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def _text_encoder(vocab_size: int, dim: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**tiny_text_config(vocab_size, dim)))


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        norm_num_groups=8,
        latent_channels=4,
        sample_size=32,
    )


def _scheduler_config() -> dict:
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }


def build_tiny_unet3d(cross_attention_dim: int = 32):
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )


def build_tiny_unet2d(cross_attention_dim: int = 32):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )


def build_tiny_motion_adapter():
    from diffusers import MotionAdapter

    return MotionAdapter(
        block_out_channels=(16, 32),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
        motion_max_seq_length=32,
        use_motion_mid_block=False,
    )


def save_tiny_backbone(folder: str | Path, family: str = "unet3d", seed: int = 0) -> Path:
    """Build a tiny backbone with seeded random weights and save it in diffusers layout.

    family 'unet3d' writes a ModelScope-style folder; 'animatediff' writes an SD1.5-style folder plus a
    sibling `<folder>-motion-adapter` MotionAdapter folder, as a user would have on disk.
    Returns the base folder.
    """
    folder = Path(folder)
    torch.manual_seed(seed)
    dim = 32
    tiny_tokenizer_files(folder / "tokenizer")
    vocab_size = len(json.loads((folder / "tokenizer" / "vocab.json").read_text()))
    save_transformers_model(_text_encoder(vocab_size, dim), folder / "text_encoder")
    _vae().save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(_scheduler_config()))
    if family == "unet3d":
        build_tiny_unet3d(dim).save_pretrained(folder / "unet")
        pipeline_class = "TextToVideoSDPipeline"
    elif family == "animatediff":
        build_tiny_unet2d(dim).save_pretrained(folder / "unet")
        build_tiny_motion_adapter().save_pretrained(motion_adapter_folder(folder))
        pipeline_class = "StableDiffusionPipeline"
    else:
        raise ValueError(f"unknown family {family!r}")
    index = {
        "_class_name": pipeline_class,
        "_diffusers_version": "0.42.0",
        "_vidbooth_version": __version__,
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet3DConditionModel" if family == "unet3d" else "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    for written in (folder, motion_adapter_folder(folder)):
        if written.is_dir():
            with_usual_modes(written)
    return folder


def diffusers_reference_pipeline(folder: str | Path, scheduler: str = "ddim"):
    """diffusers' own (deprecated) TextToVideoSDPipeline on a UNet3D folder, with diffusers' default attention
    processors: the reference our sampling loop is tested and benchmarked against."""
    import warnings

    from diffusers import AutoencoderKL, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from vidbooth.engine.sampling import make_scheduler

    folder = Path(folder)
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToVideoSDPipeline(
            vae=AutoencoderKL.from_pretrained(folder / "vae"),
            text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            unet=UNet3DConditionModel.from_pretrained(folder / "unet"),
            scheduler=make_scheduler(scheduler, scheduler_config),
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_zero_shot_module():
    """The module of diffusers' deprecated TextToVideoZeroPipeline (its warp and cross-frame processor live there),
    imported without its deprecation warning."""
    import sys
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import TextToVideoZeroPipeline

    return sys.modules[TextToVideoZeroPipeline.__module__]


def diffusers_zero_shot_reference(folder: str | Path, height: int, width: int):
    """diffusers' own (deprecated) TextToVideoZeroPipeline on an image-model folder: the reference vidbooth's
    Text2Video-Zero is tested and benchmarked against, with two differences undone. Its motion field is put on a
    `height` x `width` grid (diffusers always makes it 512 x 512, so its strengths are 512ths of the frame where
    vidbooth's are pixels), and it noises back from t0 to t1 exactly (diffusers multiplies the alphas of t0 to
    t1 - 1, one noise level short). The pipeline's module is patched while the returned pipeline exists; call
    `restore()` on it to undo that."""
    import warnings

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.utils.torch_utils import randn_tensor
    from transformers import CLIPTextModel, CLIPTokenizer

    from vidbooth.engine.zero_shot import renoise

    folder = Path(folder)
    module = diffusers_zero_shot_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = module.TextToVideoZeroPipeline(
            vae=AutoencoderKL.from_pretrained(folder / "vae"),
            text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
            scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)

    def flow_at_video_size(motion_field_strength_x, motion_field_strength_y, frame_ids, device, dtype):
        flow = torch.zeros((len(frame_ids), 2, height, width), device=device, dtype=dtype)
        for index, frame in enumerate(frame_ids):
            flow[index, 0], flow[index, 1] = motion_field_strength_x * frame, motion_field_strength_y * frame
        return flow

    def exact_forward(x_t0, t0, t1, generator):
        alphas = pipe.scheduler.alphas_cumprod
        noise = randn_tensor(x_t0.size(), generator=generator, dtype=x_t0.dtype, device=x_t0.device)
        return renoise(x_t0, float(alphas[t0]), float(alphas[t1]), noise)

    original = module.create_motion_field
    module.create_motion_field = flow_at_video_size
    pipe.forward_loop = exact_forward
    pipe.restore = lambda: setattr(module, "create_motion_field", original)
    return pipe


def motion_adapter_folder(base_folder: str | Path) -> Path:
    base_folder = Path(base_folder)
    return base_folder.with_name(base_folder.name + "-motion-adapter")
