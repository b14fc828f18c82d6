"""One loader for every base model, and the `Backbone` that every command works on.

Families:
- 'unet3d': a diffusers `UNet3DConditionModel` text-to-video model (ModelScope T2V, zeroscope).
- 'animatediff': an SD1.5-family image model plus a `MotionAdapter`, combined into a `UNetMotionModel`
  (or a folder whose unet already is a `UNetMotionModel`).
- 'text2video-zero': an image model (`UNet2DConditionModel`) given no motion adapter, run zero-shot on the frames
  of a video with cross-frame attention (Text2Video-Zero; its latent motion is in `vidbooth.engine.zero_shot`).

`base` is a local diffusers folder, a hub id (downloaded only when the network allows), or a built-in
name ('tiny', 'tiny-animatediff': random tiny models for tests and smoke runs; 'nano': the small model
vidbooth ships, pretrained on its procedural world, in `vidbooth/assets/nano/`, see docs/nano.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vidbooth.config.checks import BUILTIN_BASES, HUB_ID, base_found, local_base
from vidbooth.engine.positions import extra_input_channels, with_positions
from vidbooth.errors import UserError, not_the_inputs_fault
from vidbooth.fileio import disk_full, expand_user, folder_beside, lock_file_beside, publish_folder, refuse_if_held
from vidbooth.nano import PACKAGED

BUILTIN = {"tiny": "unet3d", "tiny-animatediff": "animatediff"}
ZERO_SHOT = "text2video-zero"
"""The family of an image model without a motion adapter."""
NANO = PACKAGED
COMPONENTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")


def with_absolute_paths(backbone_config):
    """A `BackboneConfig` whose base and motion adapter, where they name a local folder, are absolute paths (for a
    saved config.yaml that reruns from anywhere); hub ids and built-in names stay as given."""
    from dataclasses import replace

    from vidbooth.fileio import absolute_path

    return replace(
        backbone_config,
        base=absolute_path(backbone_config.base, BUILTIN_BASES),
        motion_adapter=absolute_path(backbone_config.motion_adapter),
    )


def cache_dir() -> Path:
    """$VIDBOOTH_CACHE ('~' expanded, relative taken from the working folder; empty means unset, as for
    $VIDBOOTH_HOME), else ~/.cache/vidbooth."""
    env = os.environ.get("VIDBOOTH_CACHE")
    return expand_user(env).absolute() if env else Path.home() / ".cache" / "vidbooth"


@dataclass
class Backbone:
    family: str
    source: str
    tokenizer: object
    text_encoder: nn.Module
    vae: nn.Module
    unet: nn.Module
    scheduler_config: dict
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    attention_backend: str = "sdpa"
    extras: dict = field(default_factory=dict)
    image_fingerprint: str | None = None
    """An image model's own fingerprint (text encoder, VAE, 2D UNet), with or without a motion adapter: a subject
    learned on it works with any motion module (AnimateDiff). None for a video model."""

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        """Native pixel size: the UNet's sample size times the VAE factor."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this: the VAE factor times the UNet's downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @functools.cached_property
    def position_channels(self) -> int:
        """Channels the UNet takes after its latents (0, or 3 position maps: `vidbooth.engine.positions`)."""
        return extra_input_channels(self.unet, self.latent_channels)

    # ---- layers where adapters go ---------------------------------------------------------------
    def spatial_cross_attention_layers(self) -> dict[str, nn.Module]:
        """Every cross-attention (`is_cross_attention`) outside the temporal layers."""
        return self._spatial_attention_layers(cross=True)

    def spatial_self_attention_layers(self) -> dict[str, nn.Module]:
        """Every self-attention outside the temporal layers (where image prompts' features go)."""
        return self._spatial_attention_layers(cross=False)

    def _spatial_attention_layers(self, cross: bool) -> dict[str, nn.Module]:
        from diffusers.models.attention_processor import Attention

        temporal = tuple(n + "." for n in self.temporal_layers())
        return {
            _unwrapped(name): m
            for name, m in self.unet.named_modules()
            if isinstance(m, Attention) and m.is_cross_attention == cross and not name.startswith(temporal)
        }

    def temporal_layers(self) -> dict[str, nn.Module]:
        """Temporal transformers: UNet3D `transformer_in` and `temp_attentions.*`; AnimateDiff `motion_modules.*`."""
        from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

        kinds: tuple[type, ...] = (TransformerTemporalModel,)
        if self.family == "animatediff":
            from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

            kinds = (AnimateDiffTransformer3D,)
        return {_unwrapped(name): m for name, m in self.unet.named_modules() if isinstance(m, kinds)}

    # ---- the three frozen pieces ----------------------------------------------------------------
    def tokenize(self, prompts: list[str], names: list[str] | None = None) -> torch.Tensor:
        """Token ids padded to the text encoder's length; a prompt longer than that is cut, with a warning that calls
        it by its name in `names` (one per prompt; default 'prompt')."""
        limit = self.tokenizer.model_max_length
        for prompt, name in dict.fromkeys(zip(prompts, names or ["prompt"] * len(prompts))):
            ids = self.tokenizer(prompt, truncation=False).input_ids
            if len(ids) > limit:
                from vidbooth.reporting import warn

                dropped = self.tokenizer.decode(ids[limit - 1 : -1]).strip()  # the last kept place holds the end token
                shown = dropped if len(dropped) <= 40 else f"{dropped[:40]}..."
                warn(f"the {name} is {len(ids)} tokens but the text encoder reads {limit}: its end is ignored, from "
                     f"'{shown}'; shorten it")
        ids = self.tokenizer(prompts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
        return ids.input_ids.to(self.device)

    def cut_away(self, prompt: str, word_ids: list[int]) -> bool:
        """Whether the tokens `word_ids` stand in `prompt` only past the tokens the text encoder reads (the last place
        read holds the end token), where `tokenize` cuts them away with the prompt's end."""
        from vidbooth.adapters.image_prompt import find_span

        span = find_span(self.tokenizer(prompt, truncation=False, verbose=False).input_ids, word_ids)
        return span is not None and span[1] > self.tokenizer.model_max_length - 1

    def encode_prompt(self, prompts: list[str], names: list[str] | None = None) -> torch.Tensor:
        """Text embeddings (B, L, D) from the last hidden state, as diffusers' T2V pipelines use (`names`: as
        `tokenize` takes them)."""
        return self.encode_ids(self.tokenize(prompts, names))

    def encode_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0].to(self.dtype)

    def unet_forward(self, latents: torch.Tensor, timestep, text_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        """Noise prediction for latents (B, C, F, h, w) and text embeddings (B, L, D)."""
        if self.family == ZERO_SHOT:  # the frames as a batch of images, each video's frames attending to its first
            from vidbooth.attention.cross_frame import frames_per_video

            frames = latents.shape[2]
            images = latents.transpose(1, 2).flatten(0, 1)  # (B * F, C, h, w)
            if torch.is_tensor(timestep) and timestep.ndim:  # one per video -> one per frame
                timestep = timestep.repeat_interleave(frames, dim=0)
            with frames_per_video(frames):
                noise = self.unet(images, timestep, encoder_hidden_states=text_embeds.repeat_interleave(frames, dim=0),
                                  return_dict=False, **kwargs)[0]
            return noise.unflatten(0, (-1, frames)).transpose(1, 2)
        if self.family == "animatediff":
            text_embeds = text_embeds.repeat_interleave(latents.shape[2], dim=0)  # one copy per frame
        else:
            latents = with_positions(latents, self.position_channels)
        return self.unet(latents, timestep, encoder_hidden_states=text_embeds, return_dict=False, **kwargs)[0]

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor, sample: bool = False, generator=None,
                     chunk_size: int = 8) -> torch.Tensor:
        """Pixels (B, F, 3, H, W) in [-1, 1] -> scaled latents (B, C, F, h, w), encoded `chunk_size` frames at a time:
        an image-prompt model's training batch (128 frames) encoded at once needed tens of GB at 512x512."""
        b, f = pixels.shape[:2]
        flat = pixels.flatten(0, 1)
        chunks = []
        for i in range(0, flat.shape[0], chunk_size):
            dist = self.vae.encode(flat[i : i + chunk_size].to(self.vae.device, self.vae.dtype)).latent_dist
            chunks.append(dist.sample(generator) if sample else dist.mean)  # one generator: the noise of one batch
        latents = torch.cat(chunks) * self.vae.config.scaling_factor
        return latents.unflatten(0, (b, f)).transpose(1, 2).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
        """Scaled latents (B, C, F, h, w) -> pixels (B, F, 3, H, W) in [-1, 1], decoded `chunk_size` frames at a time."""
        b, _, f = latents.shape[:3]
        flat = latents.transpose(1, 2).flatten(0, 1) / self.vae.config.scaling_factor
        chunks = [
            self.vae.decode(flat[i : i + chunk_size].to(self.vae.dtype)).sample for i in range(0, flat.shape[0], chunk_size)
        ]
        return torch.cat(chunks).float().unflatten(0, (b, f))


def quiet_libraries() -> None:
    """Silence diffusers/transformers progress bars and advice; vidbooth reports progress itself. diffusers also
    logs, at error level, each missing weights file that it then raises about: vidbooth reports the error."""
    import logging

    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity(logging.CRITICAL)


def _unwrapped(name: str) -> str:
    """The name a layer had before an adapter wrapped it ('x.attn2.base_layer' -> 'x.attn2')."""
    return name.replace(".base_layer", "")


# ---- loading --------------------------------------------------------------------------------------
def resolve_base(base: str, revision: str | None = None, flag: str | None = "--base") -> Path:
    """Return the local folder for `base`, building a built-in model or fetching a hub id when needed; errors name
    `flag`, the option that gave it (None: a name recorded in a file, which no option replaces)."""
    if base == "nano":
        if not (NANO / "unet").is_dir():
            raise UserError(f"the packaged nano model is missing from {NANO}: reinstall vidbooth")
        return NANO
    if base in BUILTIN:
        if cache_dir().exists() and not cache_dir().is_dir():
            raise UserError(f"the cache {cache_dir()} is a file: point $VIDBOOTH_CACHE at a folder")
        folder = cache_dir() / "builtin" / base
        if not (folder / "model_index.json").is_file():
            from vidbooth.engine.tiny import motion_adapter_folder, save_tiny_backbone

            with folder_beside(folder) as stage:  # an interrupted build leaves nothing behind
                built = save_tiny_backbone(stage / folder.name, BUILTIN[base])
                publish_folder(built, folder)
                if motion_adapter_folder(built).exists():
                    publish_folder(motion_adapter_folder(built), motion_adapter_folder(folder))
        return folder
    path = expand_user(base)
    if path.exists():
        if not path.is_dir():
            given = f" ({flag})" if flag else ""
            raise UserError(f"base model {path}{given} is a file: give a diffusers model folder (with "
                            f"model_index.json); {_single_file_hint(path)}")
        return path
    base_found(base, flag)  # else a hub id
    return _from_hub(base, revision, flag, not_here=path)


def _single_file_hint(path: Path) -> str:
    """How to turn a single-file Stable Diffusion checkpoint into a folder once (a .ckpt is a pickle: run it only
    on a file you trust), as a command that survives quotes and spaces in the path."""
    import shlex
    import sys

    folder = json.dumps(str(path.with_suffix("")))  # Python literals: the shell's single quotes hold them whole
    code = (f"import diffusers; diffusers.StableDiffusionPipeline.from_single_file({json.dumps(str(path))})"
            f".save_pretrained({folder})")
    return (f"a single-file checkpoint converts once into that folder (in a Python you trust with the file) with "
            f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}")


def _rebuild_hint(folder: Path) -> str:
    """For a built-in model, which vidbooth builds into its cache: how to have it built again."""
    if folder.parent != cache_dir() / "builtin":
        return ""
    return f"; it is vidbooth's own build: delete {folder} and it is built again"


def load_tokenizer(folder: Path):
    """The CLIP tokenizer in `folder`, without the tokenizers library's stray lines on stdout; no longer than the text
    encoder beside it reads (with no model_max_length in its files, transformers makes it 1e30 tokens long)."""
    from transformers import CLIPTokenizer

    from vidbooth.reporting import TOKENIZER_NOISE, native_lines_dropped

    missing = [] if (folder / "tokenizer.json").is_file() else [
        name for name in ("vocab.json", "merges.txt") if not (folder / name).is_file()]
    if missing:  # without both, it had loaded empty: every prompt no tokens at all
        raise UserError(f"{folder} lacks {', '.join(missing)} (or a tokenizer.json): the model's tokenizer is "
                        "incomplete; copy or download its tokenizer/ folder again")
    with native_lines_dropped(TOKENIZER_NOISE):
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    positions = _text_positions(folder.parent / "text_encoder")
    if positions:
        tokenizer.model_max_length = min(tokenizer.model_max_length, positions)
    return tokenizer


def _text_positions(text_encoder: Path) -> int | None:
    """How many tokens the CLIP text encoder in `text_encoder` reads; None where its config cannot be read (loading
    it then tells why)."""
    from transformers import CLIPTextConfig

    try:
        return int(CLIPTextConfig.from_pretrained(text_encoder).max_position_embeddings)
    except (OSError, ValueError, TypeError):
        return None


def _load_tokenizer(folder: Path):
    try:
        return load_tokenizer(folder)
    except (OSError, ValueError, KeyError, UserError):
        raise
    except Exception as exc:  # the tokenizers library's own errors are plain Exceptions (a damaged vocab.json)
        not_the_inputs_fault(exc)
        raise ValueError(f"its tokenizer cannot be read ({str(exc).splitlines()[0]})") from exc


ANIMATEDIFF_SCHEDULE = {"beta_schedule": "linear", "clip_sample": False}
"""The noise schedule AnimateDiff's motion modules were trained with, and sample with in AnimateDiff's own inference
configs (the image model's betas and "leading" timesteps; diffusers' examples also set timestep_spacing="linspace",
other timesteps): it replaces the image model's own for the animatediff family (sampling and training alike)."""

_PICKLES = (".bin", ".pt", ".pth", ".ckpt")


def _weights_hint(folder: Path, components: Sequence[str], variant: str | None, converter: str) -> str:
    """Why the weights of `components` (subfolders of `folder`; "" for `folder` itself) did not load, read off the
    files there, and how to fix it: weights only in a variant (`*.fp16.safetensors`) not asked for, only in
    pickled files (which vidbooth never loads; `converter` is the diffusers class that rewrites them), or none."""
    problems, variants, pickled = [], set(), set()
    for name in components:
        files = [f.name for f in (folder / name).iterdir() if f.is_file()] if (folder / name).is_dir() else []
        tensors = [f for f in files if f.endswith(".safetensors")]
        kinds = {_variant_of(f) for f in tensors}
        where = f"{name}/" if name else "it"
        if not tensors and any(f.endswith(_PICKLES) for f in files):
            pickled |= {_variant_of(f) for f in files if f.endswith(_PICKLES)}
            problems.append(f"{where} holds only pickled weights, which vidbooth never loads")
        elif not tensors and "models--" in str(folder):  # fetched from the hub: vidbooth takes only .safetensors
            problems.append(f"{where} holds no .safetensors weights (if the model ships only pickled .bin weights, "
                            "download it whole, convert them and pass its folder)")
        elif not tensors:
            problems.append(f"{where} holds no weights (an unfinished download? download it again)")
        elif variant and variant not in kinds:
            problems.append(f"{where} has no {variant} weights" + (" (drop backbone.variant)" if None in kinds else ""))
        elif not variant and None not in kinds:
            variants |= kinds
            problems.append(f"{where} holds only {'/'.join(sorted(kinds))} weights")
    if not problems:
        return ""
    fixes = []
    if len(variants) == 1:
        fixes.append(f"add --set backbone.variant={variants.pop()}")
    if pickled:
        import shlex
        import sys

        variant = pickled.pop() if len(pickled) == 1 and None not in pickled else None
        variant_of_pickles = f", variant={json.dumps(variant)}" if variant else ""
        path = json.dumps(str(folder))  # a Python literal in double quotes: the shell's single quotes hold it whole
        # no use_safetensors=False: a part saved as safetensors beside pickled ones must still load
        code = (f"import diffusers; diffusers.{converter}.from_pretrained({path}{variant_of_pickles})"
                f".save_pretrained({path})")
        fixes.append(f"convert them once with {shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    return f" ({'; '.join(problems)}{': ' if fixes else ''}{' and '.join(fixes)})"


def _variant_of(file_name: str) -> str | None:
    """The variant a weights file is of ('fp16' of 'model.fp16.safetensors' or 'x.fp16-00001-of-00002.bin'), or
    None ('model.safetensors', 'unet_v1.5.safetensors': a variant starts with a letter)."""
    parts = file_name.split(".")
    variant = parts[-2].split("-")[0] if len(parts) >= 3 else ""
    return variant if re.fullmatch(r"[A-Za-z]\w*", variant) else None


def _is_missing_weights(exc: Exception) -> bool:
    return "no file named" in str(exc).lower() and ".safetensors" in str(exc)


def base_model_folder(base: str, revision: str | None = None) -> Path:
    """The local folder of `base` once it is known to hold a diffusers text-to-video model, without loading it:
    for commands that write before they load the model."""
    folder = resolve_base(base, revision)
    _unet_class(folder)
    return folder


def noise_levels(folder: Path) -> int:
    """How many noise levels the model in `folder` (`base_model_folder`'s) was trained on (its scheduler's
    `num_train_timesteps`), without loading it: sampling takes fewer steps than that."""
    config = folder / "scheduler" / "scheduler_config.json"
    try:
        return int(json.loads(config.read_text()).get("num_train_timesteps", 1000))
    except (OSError, ValueError, AttributeError):
        return 1000  # as diffusers' schedulers default


def is_image_model(base: str, revision: str | None = None) -> bool:
    """Whether `base` loads as an image model alone (Text2Video-Zero) when no motion adapter is given: a
    `UNet2DConditionModel`, other than the built-in 'tiny-animatediff', which comes with its own motion adapter.
    Checks `base` as `base_model_folder` does (a UserError when it is no diffusers model), without loading it."""
    return _unet_class(resolve_base(base, revision)) == "UNet2DConditionModel" and base not in BUILTIN


def _from_hub(repo_id: str, revision: str | None, flag: str | None = "--base", not_here: Path | None = None
              ) -> Path:
    """The local snapshot of a hub id (from the hub cache, else downloaded); `not_here`: the local path the same
    text names, which does not exist: the error names it when its parent folder does (a mistyped folder reads as
    a hub id)."""
    from huggingface_hub import snapshot_download

    from vidbooth import reporting

    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        with reporting.downloading(repo_id):
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:
        _refuse_hub_error(exc, repo_id, revision, flag)
        typo = not_here is not None and not_here.parent.is_dir()  # 'models/name' beside a models/ folder
        nor_folder = f", and there is no folder {not_here.absolute()}" if typo else ""
        then = f"pass its local folder with {flag}" if flag else "copy it into the hub cache here"
        raise UserError(
            f"cannot fetch '{repo_id}' from the hub (offline, or no such model){nor_folder}: download it where the "
            f"network allows and {then}"
        ) from exc


def _refuse_hub_error(exc: Exception, repo_id: str, revision: str | None, flag: str | None) -> None:
    """The causes of a failed download that "offline, or no such model" would misname: a full disk (left to the
    command line's own message), a gated model, a revision the model does not have."""
    from huggingface_hub.utils import GatedRepoError, RevisionNotFoundError

    if isinstance(exc, OSError) and disk_full(exc):
        raise exc
    if isinstance(exc, GatedRepoError):
        raise UserError(f"cannot fetch '{repo_id}' from the hub: it is gated; accept its terms on its page at "
                        "huggingface.co, log in here (hf auth login), and run again") from exc
    if isinstance(exc, RevisionNotFoundError):
        fix = "; fix backbone.revision (--set backbone.revision=...) or leave it out" if flag == "--base" else ""
        raise UserError(f"cannot fetch '{repo_id}' at revision '{revision or 'main'}': the model has no such branch, "
                        f"tag or commit{fix}") from exc


def _class_name(config: Path) -> str | None:
    """The `_class_name` a diffusers config file names, or None."""
    try:
        return json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _motion_adapter_folder(motion_adapter: str, revision: str | None = None) -> Path:
    """The local folder of an AnimateDiff MotionAdapter given by --motion-adapter (a folder or a hub id), checked
    before any model loads; its messages name --motion-adapter, not --base."""
    path = expand_user(motion_adapter)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"--motion-adapter {motion_adapter} is no AnimateDiff MotionAdapter folder (it has no "
                            "config.json): give the folder of one, such as guoyww/animatediff-motion-adapter-v1-5-2's")
        return path
    if not HUB_ID.match(motion_adapter):
        raise UserError(f"motion adapter not found: {motion_adapter} (give an AnimateDiff MotionAdapter folder or a "
                        "hub id like guoyww/animatediff-motion-adapter-v1-5-2)")
    return _from_hub(motion_adapter, revision, "--motion-adapter", not_here=path)


def _with_motion_modules(unet2d, source: Path, folder: Path, dtype: torch.dtype):
    """The image model's UNet with the motion modules of the MotionAdapter in `source` (UNetMotionModel), for a run
    in `dtype`; one UserError naming the adapter when they do not fit (other block widths or counts, missing
    weights)."""
    from diffusers import MotionAdapter, UNetMotionModel

    variant = _only_variant(source)  # no setting picks an adapter's: a download of its fp16 variant alone
    try:
        adapter = MotionAdapter.from_pretrained(source, use_safetensors=True, variant=variant,
                                                torch_dtype=_adapter_dtype(dtype, source, variant))
        check_complete(adapter, "its")
        unet = _made_of(unet2d, adapter)
        # in fp32: diffusers casts the adapter to the UNet's dtype, and a bf16 run's fp16 UNet would round it twice
        return unet if unet is not None else UNetMotionModel.from_unet2d(unet2d.float(), adapter)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # RuntimeError: weights of other shapes
        reason = str(exc).strip().splitlines()[0]
        hint = _weights_hint(source, [""], None, "MotionAdapter") if _is_missing_weights(exc) else ""
        raise UserError(f"motion adapter {source} does not fit the image model in {folder}: {reason}{hint}") from exc


def _only_variant(folder: Path) -> str | None:
    """The variant ('fp16') of the .safetensors weights in `folder` where all are of that one; else None."""
    kinds = {_variant_of(file.name) for file in folder.glob("*.safetensors")}
    return kinds.pop() if len(kinds) == 1 else None


def _adapter_dtype(dtype: torch.dtype, source: Path, variant: str | None = None) -> torch.dtype:
    """fp16 for a motion adapter of an fp16 run whose files hold every tensor it has; else fp32. diffusers computes
    the frame-position tables that some AnimateDiff ports' files lack in the dtype it loads in, and fp16's would not
    be fp32's cast. (In bf16, loading its fp16 weights before the cast to bf16 peaked higher than loading them in
    fp32: 4.87 GB against 4.26 GB for the AnimateDiff base of benchmarks/bench_load.py.)"""
    from diffusers import MotionAdapter

    if dtype != torch.float16:
        return torch.float32
    try:
        with torch.device("meta"):
            wanted = MotionAdapter.from_config(MotionAdapter.load_config(source)).state_dict().keys()
    except Exception:  # a config that loading it then tells of
        return torch.float32
    return dtype if wanted <= (_stored_tensors(source, variant) or {}).keys() else torch.float32


def _made_of(unet2d, adapter):
    """The UNetMotionModel that diffusers' `from_unet2d` builds, made of the image model's and the adapter's own
    tensors (in their dtypes, until the backbone is cast): built empty, then given them.
    Built as diffusers builds it, it drew random weights and then copied theirs in (the two and the copy held at
    once: an AnimateDiff base in fp32 peaked at twice its size, benchmarks/bench_load.py). None where its weights
    are not exactly theirs by name and shape (a PIA adapter's conv_in, which diffusers makes of both)."""
    from diffusers import UNetMotionModel

    if adapter.config.get("conv_in_channels"):
        return None
    with torch.device("meta"):  # this thread's only
        unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
    theirs, wanted = unet2d.state_dict() | adapter.state_dict(), unet.state_dict()
    if theirs.keys() != wanted.keys() or any(theirs[key].shape != tensor.shape for key, tensor in wanted.items()):
        return None  # diffusers then refuses weights of other shapes, or ones it has no place for (GLIGEN's)
    unet.load_state_dict({key: theirs[key] for key in wanted}, assign=True)
    return None if any(buffer.is_meta for buffer in unet.buffers()) else unet  # one its files do not hold


def check_complete(module, whose: str) -> None:
    """A ValueError when weights were missing from the files `module` was loaded from: diffusers only logs that and
    leaves those parameters empty ('meta'), which fail later with no word of why."""
    missing = [name for name, tensor in (*module.named_parameters(), *module.named_buffers()) if tensor.is_meta]
    if missing:
        raise ValueError(f"{whose} weights lack {len(missing)} tensor(s), such as {missing[0]}")


def _folder_hint(folder: Path) -> str:
    """For a folder given in place of a model's: the hub cache entry of one, or a part of one."""
    snapshots = sorted(p for p in (folder / "snapshots").glob("*") if (p / "model_index.json").is_file())
    if snapshots:
        return f" (it is a hub cache entry: pass its snapshot folder, {snapshots[-1]})"
    if (folder.parent / "model_index.json").is_file():
        return f" (it is a part of one: pass the folder holding model_index.json, {folder.parent})"
    return ""


def _unet_class(folder: Path) -> str:
    config = folder / "unet" / "config.json"
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()] or ([] if config.is_file() else ["unet/config.json"])
    if missing:  # a missing vae/ had reached diffusers, which then looked for it on the hub
        if _class_name(folder / "config.json") == "MotionAdapter":
            raise UserError(f"{folder} is an AnimateDiff motion adapter, not a base model: pass it with "
                            "--motion-adapter, and the image model it animates with --base")
        raise UserError(f"{folder} is not a diffusers text-to-video model: missing {', '.join(missing)}"
                        f"{_folder_hint(folder)}")
    try:
        settings = json.loads(config.read_text())
        unet_class = settings["_class_name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{config} is not a valid diffusers config{_rebuild_hint(folder)}") from exc
    if settings.get("addition_embed_type"):  # SDXL: a second text encoder and size conditions the loop does not give
        raise UserError(
            f"{folder} is an SDXL-style model (its UNet takes added '{settings['addition_embed_type']}' conditions "
            "and a second text encoder): vidbooth supports SD1.5-family image models, ModelScope/zeroscope and "
            "AnimateDiff"
        )
    return unet_class


def load_backbone(
    base: str = "tiny",
    motion_adapter: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    attention: str = "auto",
    revision: str | None = None,
    variant: str | None = None,
) -> Backbone:
    """Load a text-to-video backbone from a folder, hub id or built-in name; frozen and in eval mode."""
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel

    from vidbooth.attention import resolve_backend, set_attention_backend
    from vidbooth.device import resolve_device, resolve_dtype

    quiet_libraries()
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    backend = resolve_backend(attention, torch_device)  # fail before loading gigabytes

    folder = resolve_base(base, revision)
    if revision and local_base(base):
        from vidbooth.reporting import warn

        warn(f"backbone.revision {revision} has no effect on {base}: a revision picks a version of a hub id's model, "
             "and a local folder holds one; leave it out")
    loading = _being_replaced_check(folder)
    unet_class = _unet_class(folder)
    if base in BUILTIN and BUILTIN[base] == "animatediff" and motion_adapter is None:
        motion_adapter = str(folder.with_name(folder.name + "-motion-adapter"))
    adapter_source = image_fingerprint = None  # the latter: an image model's own, with a motion adapter on it
    if motion_adapter and unet_class == "UNet2DConditionModel":
        adapter_source = _motion_adapter_folder(motion_adapter)  # a wrong one fails before anything loads
    elif motion_adapter:
        from vidbooth.reporting import warn

        warn(f"--motion-adapter {motion_adapter} has no effect on {base}: its UNet ({unet_class}) has temporal "
             "layers of its own; a motion adapter animates an image model")
    kw = {"use_safetensors": True} | ({"variant": variant} if variant else {})  # never unpickle a user's file
    unet_dtype = {"torch_dtype": _load_dtype(dtype, folder / "unet", variant)}  # see _load_dtype
    try:
        tokenizer = _load_tokenizer(folder / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(
            folder / "text_encoder", **kw, dtype=_load_dtype(dtype, folder / "text_encoder", variant))
        vae = AutoencoderKL.from_pretrained(folder / "vae", **kw)  # fp32, kept so when it asks for upcasting
        if unet_class == "UNet3DConditionModel":
            family, unet = "unet3d", UNet3DConditionModel.from_pretrained(folder / "unet", **kw, **unet_dtype)
            extra_input_channels(unet, int(unet.config.out_channels))  # refuse unknown extra inputs now
        elif unet_class == "UNetMotionModel":
            # in fp32: its files may lack frame-position tables, computed in the dtype it loads in (_adapter_dtype)
            family, unet = "animatediff", UNetMotionModel.from_pretrained(folder / "unet", **kw)
        elif unet_class == "UNet2DConditionModel" and not adapter_source:
            family, unet = ZERO_SHOT, UNet2DConditionModel.from_pretrained(folder / "unet", **kw, **unet_dtype)
        elif unet_class == "UNet2DConditionModel":
            unet2d = UNet2DConditionModel.from_pretrained(folder / "unet", **kw, **unet_dtype)
            check_complete(unet2d, "its UNet's")
            image_fingerprint = compute_fingerprint({"text_encoder": text_encoder, "vae": vae, "unet": unet2d})
            family, unet = "animatediff", _with_motion_modules(unet2d, adapter_source, folder, dtype)
        else:
            raise UserError(
                f"unsupported UNet class '{unet_class}' in {folder}: vidbooth supports UNet3D, AnimateDiff and image "
                "models (UNet2DConditionModel)"
            )
        for whose, module in (("its text encoder's", text_encoder), ("its VAE's", vae), ("its UNet's", unet)):
            check_complete(module, whose)
        scheduler_config = _scheduler_config(folder)
        if family == "animatediff":  # SD1.5's own schedule is scaled_linear
            scheduler_config = scheduler_config | ANIMATEDIFF_SCHEDULE
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        not_the_inputs_fault(exc)  # 'Unable to load weights ... Cannot allocate memory (12)': no damaged model
        reason = str(exc).splitlines()[0]
        weighted = ("text_encoder", "vae", "unet")
        hint = _weights_hint(folder, weighted, variant, "DiffusionPipeline") if _is_missing_weights(exc) else ""
        rebuild = "" if variant else _rebuild_hint(folder)  # a built-in model has no variants: building it again
        raise UserError(f"cannot load the model in {folder}: {reason}{hint}{rebuild}") from exc  # gives none

    loading()
    fingerprint = compute_fingerprint({"text_encoder": text_encoder, "vae": vae, "unet": unet})
    if family == ZERO_SHOT:
        image_fingerprint = fingerprint
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False).eval()
    keep_vae_fp32 = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    text_encoder.to(torch_device, dtype)
    unet.to(torch_device, dtype)
    vae.to(torch_device, torch.float32 if keep_vae_fp32 else dtype)
    set_attention_backend(unet, backend, torch_device)
    set_attention_backend(vae, backend, torch_device)
    if family == ZERO_SHOT:
        from vidbooth.attention.cross_frame import use_cross_frame_attention

        use_cross_frame_attention(unet)
    return Backbone(
        family=family,
        source=str(base),
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler_config=scheduler_config,
        fingerprint=fingerprint,
        device=torch_device,
        dtype=dtype,
        attention_backend=backend,
        extras={"folder": str(folder), "motion_adapter": str(adapter_source) if adapter_source else None},
        image_fingerprint=image_fingerprint,
    )


def _scheduler_config(folder: Path) -> dict:
    """The settings in the model's scheduler/scheduler_config.json; a UserError naming the file where they are no
    JSON object."""
    config = folder / "scheduler" / "scheduler_config.json"
    fix = _rebuild_hint(folder) or ": copy or download the model's scheduler/ folder again"
    try:
        settings = json.loads(config.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{config} is missing{fix}") from exc
    except ValueError as exc:
        raise UserError(f"{config} is not a valid diffusers config{fix}") from exc
    if not isinstance(settings, dict):
        raise UserError(f"{config} is not a valid diffusers config{fix}")
    return settings


def _load_dtype(dtype: torch.dtype, part: Path, variant: str | None) -> torch.dtype:
    """The dtype to load a part's weights in, before they are cast to `dtype`: fp16 loads as fp16, not as fp32 then
    cast (half the host memory at the peak; the same values). bf16 loads as the 16-bit floats its files hold, which
    become bf16 as they would from fp32 (those hold them exactly), else in fp32: the base's fingerprint rounds fp32
    weights to fp16, and bf16's coarser ones would give another."""
    if dtype == torch.bfloat16:
        return _stored_dtype(part, variant) or torch.float32
    return dtype if dtype == torch.float16 else torch.float32


def _stored_dtype(folder: Path, variant: str | None) -> torch.dtype | None:
    """fp16 or bf16 when the .safetensors weights of `variant` in `folder` hold floats of that dtype only; None
    else."""
    floats = set((_stored_tensors(folder, variant) or {}).values()) - {"BOOL", "U8", "I8", "I16", "I32", "I64"}
    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(floats.pop()) if len(floats) == 1 else None


def _stored_tensors(folder: Path, variant: str | None) -> dict[str, str] | None:
    """The name and dtype ('F16', 'I64', ...) of each tensor in the .safetensors weights of `variant` in `folder`,
    read from their headers; None where one cannot be read (the load then says why)."""
    from safetensors import safe_open

    stored = {}
    for file in folder.glob("*.safetensors"):
        if _variant_of(file.name) == variant:
            try:
                with safe_open(file, "pt") as weights:
                    stored |= {key: weights.get_slice(key).get_dtype() for key in weights.keys()}
            except Exception:
                return None
    return stored


def _being_replaced_check(folder: Path):
    """Refuse a model folder that an export is writing (`pretrain --export` holds '<folder>.lock' while it replaces
    the folder whole), and return a check, for when the model has loaded, that the folder was not replaced
    meanwhile: its parts might come from the two versions."""
    def busy(pid: str) -> str:
        return f"the model in {folder} is being replaced by another process (pid {pid}): run again once it ends"

    refuse_if_held(lock_file_beside(folder), busy)
    identity = _folder_identity(folder)

    def check() -> None:
        if _folder_identity(folder) != identity:
            raise UserError(f"the model in {folder} was replaced while it loaded (exported again?): run again")

    return check


def _folder_identity(folder: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(folder)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def load_backbone_for(backbone_config, runtime_config, device: str | None = None) -> Backbone:
    """`load_backbone` with a run's `BackboneConfig` and `RuntimeConfig` (`device` overrides the runtime's)."""
    from vidbooth.reporting import info

    backbone = load_backbone(
        backbone_config.base,
        motion_adapter=backbone_config.motion_adapter,
        device=device or runtime_config.device,
        precision=runtime_config.precision,
        attention=runtime_config.attention,
        revision=backbone_config.revision,
        variant=backbone_config.variant,
    )
    info(
        f"base {backbone_config.base} ({backbone.family}, fingerprint {backbone.fingerprint}) on {backbone.device} "
        f"in {str(backbone.dtype).removeprefix('torch.')}, attention {backbone.attention_backend}"
    )
    return backbone


_VOLATILE_CONFIG_KEYS = {"_name_or_path", "_diffusers_version", "transformers_version", "_commit_hash", "torch_dtype", "dtype", "_use_default_values"}


def compute_fingerprint(modules: dict[str, nn.Module], samples_per_module: int = 16) -> str:
    """A stable short hash of each module's config, parameter names and shapes, and a sample of its weights.

    Weights are sampled at evenly spaced parameters (first 8 values each) and rounded to fp16, so the
    same model loaded in fp32 or fp16 has the same fingerprint. Adapters record it to catch mismatches.
    """
    h = hashlib.sha256()
    for name in sorted(modules):
        module = modules[name]
        config = getattr(module, "config", None)
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
        config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
        h.update(name.encode())
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
        params = sorted(module.state_dict().items())
        for key, tensor in params:
            h.update(f"{key}:{tuple(tensor.shape)}".encode())
        step = max(1, len(params) // samples_per_module)
        for key, tensor in params[::step]:
            sample = tensor.detach().flatten()[:8].to("cpu", torch.float16)
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
