"""VideoBooth: videos of the subject in an image prompt, with no per-subject training (`../shared/method.md` §5).

An image-prompt model is learned once per base, coarse to fine (`train_image_prompt`), on clips whose subject is
known: nano's procedural world, which renders each clip's sprite in a photo of its own (another place, size and
background) and captions the clip with a generic word ('a sprite moving left') that the image prompt stands for.

1. coarse: `TokenMapper` maps the photo's image embedding (the base's image encoder, as the motion adapter's
   appearance guidance uses) to tokens that replace the word in the encoded prompt;
2. fine, with the mapper frozen: `ImageInjection`s let every spatial self-attention attend to the photo's features,
   taken from a UNet pass over the photo's latent noised to the same timestep.
(Trained together the fine path would learn everything and the coarse one nothing: the paper's finding.)

`generate --image-prompt photo.png --image-prompt-model model.safetensors` then makes a video of the photo's
subject: `prepare_image_prompt` makes the `ImagePromptCondition` that drives the sampler.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vidbooth.adapters.base import (
    adapter_state_dict,
    check_values,
    load_adapter_state_dict,
    load_metadata,
    load_tensors,
    save_tensors,
)
from vidbooth.adapters.image_prompt import (
    KIND,
    TokenMapper,
    capturing,
    clear_references,
    find_span,
    inject_image_injection,
    injections,
    remove_image_injection,
    splice_tokens,
)
from vidbooth.config.checks import BUILTIN_BASES
from vidbooth.config.image_prompt import ImagePromptConfig
from vidbooth.data.subject_clips import SubjectClip, find_subject_clips, folder_digest, load_subject_clip
from vidbooth.engine.backbone import Backbone
from vidbooth.engine.objective import HighNoise, sample_timesteps, training_scheduler
from vidbooth.errors import UserError
from vidbooth.fileio import absolute_path, expand_user, lock_beside, lock_file_beside, refuse_if_held, write_together
from vidbooth.nano.model import IMAGE_PROMPT_MODEL
from vidbooth.reporting import info, progress, warn

STAGES = ("coarse", "fine")
ENCODER_SETTING = "--image-encoder"
"""How train-image-prompt is given an image encoder (or `--set encoder=`), for errors: as train-motion's."""
OWN_IMAGE_PROMPT_MODEL = IMAGE_PROMPT_MODEL
"""A base folder's own image-prompt model, used when `--image-prompt` comes without `--image-prompt-model`."""
FORMAT = 1
WARNINGS_SHOWN = 3
"""How many of the clips' sampling warnings `folder_examples` shows before it counts the rest."""


@dataclass(frozen=True)
class ImagePromptSpec:
    """What rebuilds an image-prompt model before its tensors load (saved in the file's metadata)."""

    word: str
    num_tokens: int
    image_dim: int
    text_dim: int
    hidden_dim: int
    encoder: str

    def __post_init__(self) -> None:
        """A ValueError for a field training would not have written (from a damaged or crafted file's metadata)."""
        sizes = {key: getattr(self, key) for key in ("num_tokens", "image_dim", "text_dim", "hidden_dim")}
        if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in sizes.values()):
            raise ValueError(f"sizes {sizes} are not all positive whole numbers")
        if not (isinstance(self.word, str) and self.word and isinstance(self.encoder, str)):
            raise ValueError(f"word {str(self.word)[:40]!r} or encoder {str(self.encoder)[:80]!r} is no text")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def mapper_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the mapper's weights this spec builds (`TokenMapper`), by their names in the file."""
        return {"mapper.net.0.weight": (self.hidden_dim, self.image_dim),
                "mapper.net.2.weight": (self.num_tokens * self.text_dim, self.hidden_dim),
                "mapper.norm.weight": (self.text_dim,)}


class ImagePromptModel:
    """An image-prompt model put on a backbone: the mapper, the image encoder it reads, and the injections."""

    def __init__(self, backbone: Backbone, spec: ImagePromptSpec, encoder, with_injections: bool = True):
        self.backbone, self.spec, self.encoder = backbone, spec, encoder
        self._layers = backbone.spatial_self_attention_layers()  # checked now, before training's coarse stage
        if not self._layers:
            raise UserError(f"{backbone.source} has no spatial self-attention layers for the image prompt's features: "
                            "image prompts need a UNet with spatial transformer blocks")
        self.mapper = TokenMapper(spec.image_dim, spec.text_dim, spec.num_tokens, spec.hidden_dim).to(backbone.device)
        if with_injections:
            self.add_injections()

    def add_injections(self) -> None:
        inject_image_injection(self.backbone.unet, self._layers)

    def remove(self) -> None:
        remove_image_injection(self.backbone.unet)

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"mapper.{k}": v.detach().cpu().contiguous() for k, v in self.mapper.state_dict().items()}
        return tensors | {f"inject.{k}": v for k, v in adapter_state_dict(self.backbone.unet, KIND).items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "") -> None:
        """Load `state_dict()`'s tensors; missing, unexpected or misshapen ones are a UserError."""
        mapper = {k.removeprefix("mapper."): v for k, v in tensors.items() if k.startswith("mapper.")}
        own = self.mapper.state_dict()
        wrong = sorted(set(own) ^ set(mapper)) or [k for k in own if own[k].shape != mapper[k].shape]
        if wrong:
            raise UserError(f"{source}: its mapper tensors do not fit its 'spec' metadata (mapper.{wrong[0]}): train "
                            "it again with `vidbooth train-image-prompt`")  # the base's fingerprint was checked
        for key, tensor in mapper.items():
            check_values(source, f"mapper.{key}", tensor)
        injected = {k.removeprefix("inject."): v for k, v in tensors.items() if not k.startswith("mapper.")}
        load_adapter_state_dict(self.backbone.unet, KIND, injected, source)  # checks names and shapes too
        self.mapper.load_state_dict(mapper)

    # ---- the condition ------------------------------------------------------------------------------
    def image_embeds(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 photos -> (N, image_dim) embeddings."""
        return self.encoder.embed(images).to(self.backbone.device)

    def word_span(self, input_ids: torch.Tensor, word: str | None = None,
                  prompts: list[str] | None = None) -> list[tuple[int, int]]:
        """Where the word stands in each tokenized prompt; a UserError when a prompt lacks it (or, given the
        `prompts` tokenized, has it only past the tokens the text encoder reads)."""
        word = word or self.spec.word
        word_ids = self.backbone.tokenizer(word, add_special_tokens=False).input_ids
        spans = []
        for row, ids in enumerate(input_ids.tolist()):
            span = find_span(ids, word_ids) if word_ids else None
            if span is None and prompts is not None and self.word_cut_away(prompts[row], word):
                raise UserError(f"'{word}', the word the image prompt replaces, comes after the "
                                f"{self.backbone.tokenizer.model_max_length} tokens the text encoder reads of the "
                                "prompt: put it nearer the start, or shorten the prompt")
            if span is None:
                raise UserError(
                    f"the prompt does not contain '{word}', the word the image prompt replaces: write it where the "
                    f"subject goes, e.g. \"a {word} moving left\" (or pass --image-prompt-word)"
                )
            spans.append(span)
        return spans

    def word_cut_away(self, prompt: str, word: str) -> bool:
        """Whether `prompt` names `word` only past the tokens the text encoder reads, which cut it away."""
        word_ids = self.backbone.tokenizer(word, add_special_tokens=False).input_ids
        return bool(word_ids) and self.backbone.cut_away(prompt, word_ids)

    def prompt_embeds(self, input_ids: torch.Tensor, image_embeds: torch.Tensor, word: str | None = None,
                      prompts: list[str] | None = None):
        """The encoded prompts (`prompts` tokenized) with the word replaced by the mapped image tokens."""
        text = self.backbone.encode_ids(input_ids)
        tokens = self.mapper(image_embeds.float())
        return splice_tokens(text, self.word_span(input_ids, word, prompts), tokens)


def image_latents(backbone: Backbone, images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> scaled latents (N, C, 1, h, w), the VAE's mean."""
    from vidbooth.data.images import pixels_to_tensor

    return backbone.encode_video(pixels_to_tensor(images).unsqueeze(1).to(backbone.device))


def capture(backbone: Backbone, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
            text_embeds: torch.Tensor) -> None:
    """One UNet pass over the image prompts' latents (B, C, 1, h, w) noised to `timesteps`, which leaves each
    injection its layer's input as the reference; `text_embeds` (B, L, D) are the videos' prompts."""
    noisy = scheduler.add_noise(latents.float(), noise.float(), timesteps)  # fp32: see objective.denoising_loss
    with torch.no_grad(), capturing(backbone.unet):
        backbone.unet_forward(noisy.to(backbone.dtype), timesteps, text_embeds)


class ImagePromptCondition:
    """A prepared image prompt for `sample_video`: its prompt embeddings, and the hook that refreshes the
    injections' references at each step's timestep (`before_unet`)."""

    def __init__(self, model: ImagePromptModel, prompt_embeds: torch.Tensor, latents: torch.Tensor,
                 noise: torch.Tensor):
        self.model, self.prompt_embeds, self.latents, self.noise = model, prompt_embeds, latents, noise
        self.scheduler = training_scheduler(model.backbone.scheduler_config)

    def before_unet(self, timestep: torch.Tensor, text_embeds: torch.Tensor) -> None:
        layers = injections(self.model.backbone.unet).values()
        if all(layer.scale == 0 for layer in layers):
            return  # tokens only: the photo's features would be multiplied by 0
        timesteps = timestep.reshape(-1)[:1].to(self.latents.device)
        # one pass for every video: they share the photo, its noise and the prompt; with the prompt's positive
        # embedding (the last row), as the injections act on the positive half alone
        capture(self.model.backbone, self.scheduler, self.latents, self.noise, timesteps, text_embeds[-1:])
        for layer in layers:
            layer.reference = layer.reference.repeat(text_embeds.shape[0], 1, 1)

    def close(self) -> None:
        clear_references(self.model.backbone.unet)


def prepare_image_prompt(model: ImagePromptModel, photo: np.ndarray, prompt: str, generator: torch.Generator,
                         word: str | None = None, num_videos: int = 1) -> ImagePromptCondition:
    """The condition for `num_videos` videos of `prompt` showing the subject of `photo`, (H, W, 3) uint8 at the
    video's size; `generator` draws the noise of the photo's latent (the same at every step, as in training)."""
    bb = model.backbone
    ids = bb.tokenize([prompt])
    embeds = model.prompt_embeds(ids, model.image_embeds(photo[None]), word, [prompt])
    latents = image_latents(bb, photo[None])
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    return ImagePromptCondition(model, embeds.repeat(num_videos, 1, 1), latents, noise)


def own_image_prompt_model(base: str, revision: str | None = None) -> Path:
    """Where the base keeps its own image-prompt model (nano ships one), used without `--image-prompt-model`; the
    file may not exist."""
    from vidbooth.engine.backbone import resolve_base

    return resolve_base(base, revision) / OWN_IMAGE_PROMPT_MODEL


def trained_word(path: str | Path) -> str:
    """The word an image-prompt model file replaces, read from its metadata alone, before any model loads: a
    UserError when the file is missing, pickled, no safetensors, or no image-prompt model."""
    path = expand_user(path)
    metadata = load_metadata(path)
    if metadata.get("method") != KIND:  # an identity or motion adapter, say
        raise UserError(f"{path} is not a vidbooth image-prompt model (a .safetensors file made by `vidbooth "
                        "train-image-prompt`)")
    try:
        return str(json.loads(metadata["spec"])["word"])
    except (KeyError, ValueError, TypeError):
        return ""  # a damaged spec: loading the model says so


def _recorded_adapter(given: str | None, loaded: str | None) -> str:
    """The motion adapter as a file records it: as given, a local folder made absolute (a hub id stays an id, not
    its cache's snapshot folder, which a refusal would then tell the user to pass); else the one the base brought
    (a built-in's), else ''."""
    return absolute_path(given) or loaded or ""


def _same_folder(recorded: str, given: str) -> bool:
    return absolute_path(recorded, BUILTIN_BASES) == absolute_path(given, BUILTIN_BASES)  # '..', links resolved


def _another_base(path: Path, metadata: dict, backbone: Backbone) -> str:
    """Why an image-prompt model does not fit `backbone`, and the fix. On the image model it was trained on, the
    difference is the motion adapter (its fine features were learned beside those motion modules or none): "use it
    with --base <the same folder>" had sent the user back to the command that was refused."""
    base = metadata.get("base", "?")
    told = (f"image-prompt model {path} was trained on another base ({base}, fingerprint "
            f"{metadata.get('base_fingerprint')}) than {backbone.source} (fingerprint {backbone.fingerprint})")
    own_temporal_layers = backbone.image_fingerprint is None or metadata.get("image_fingerprint") == ""
    if own_temporal_layers and _same_folder(base, backbone.source):  # UNet3D, UNetMotionModel: no adapter applies
        return f"{told}: the same folder, with other weights than it was trained on: train one for these"
    if not metadata.get("image_fingerprint") and _same_folder(base, backbone.source):  # a file of before it was kept
        return (f"{told}: the same folder, with another motion adapter (or none) than the one it was trained with, or "
                "with changed weights: give the --motion-adapter it was trained with")
    if not metadata.get("image_fingerprint") or metadata["image_fingerprint"] != backbone.image_fingerprint:
        return f"{told}: use it with --base {base}"
    adapter = metadata.get("motion_adapter") or ""
    trained_with = f"with the motion adapter {adapter}" if adapter else "without a motion adapter"
    loaded_with = backbone.extras.get("motion_adapter")
    fix = f"add --motion-adapter {adapter}" if adapter else "leave out --motion-adapter"
    if adapter and loaded_with and _same_folder(adapter, loaded_with):
        return (f"image-prompt model {path} was trained on this image model ({base}), and the motion adapter "
                f"{adapter} it was trained with has other weights now: train one for these")
    if adapter and loaded_with:
        fix = f"use --motion-adapter {adapter} in place of {loaded_with}"
    return (f"image-prompt model {path} was trained on this image model ({base}) {trained_with}, and its fine "
            f"features go with those motion modules: {fix}, or train one for this combination")


def load_image_prompt_model(backbone: Backbone, path: str | Path) -> ImagePromptModel:
    """Put the image-prompt model saved in `path` on `backbone` (which must be the base it was trained on)."""
    from vidbooth.engine.appearance import load_appearance_encoder

    path = expand_user(path)
    tensors, metadata = load_tensors(path)
    if metadata.get("method") != KIND or "spec" not in metadata:
        raise UserError(f"{path} is not a vidbooth image-prompt model (made by `vidbooth train-image-prompt`)")
    if metadata.get("base_fingerprint") != backbone.fingerprint:
        raise UserError(_another_base(path, metadata, backbone))
    try:
        spec = ImagePromptSpec(**json.loads(metadata["spec"]))
    except (TypeError, ValueError) as exc:  # not JSON, not an object, or keys of another version
        raise UserError(f"{path}: its 'spec' metadata is damaged or from another vidbooth version ({exc}): train it "
                        "again with `vidbooth train-image-prompt`") from exc
    for key, shape in spec.mapper_shapes().items():  # before anything is built to the spec's sizes
        if key not in tensors or tuple(tensors[key].shape) != shape:
            raise UserError(f"{path}: its 'spec' metadata does not fit its tensors ({key}): train it again with "
                            "`vidbooth train-image-prompt`")
    encoder = load_appearance_encoder(spec.encoder or None, backbone, setting=None)  # the model's own
    if encoder.dim != spec.image_dim:
        raise UserError(f"image-prompt model {path} reads {spec.image_dim}-wide image embeddings; {encoder.name} "
                        f"gives {encoder.dim}")
    with torch.random.fork_rng(devices=[]):  # initial weights, replaced below: the caller's stream stays as it was
        model = ImagePromptModel(backbone, spec, encoder)
    try:
        model.load_state_dict(tensors, str(path))
    except UserError:
        model.remove()
        raise
    model.mapper.eval()
    return model


# ---- training -------------------------------------------------------------------------------------
class _Method:
    """One stage: 'coarse' trains the mapper (no injections yet), 'fine' the injections (the mapper frozen)."""

    def __init__(self, model: ImagePromptModel, stage: str, high_noise: HighNoise = HighNoise()):
        self.model, self.stage, self.high_noise = model, stage, high_noise
        self.scheduler = training_scheduler(model.backbone.scheduler_config)
        if stage == "coarse":
            self.params = list(model.mapper.parameters())
        else:
            model.mapper.requires_grad_(False)
            self.params = [p for layer in injections(model.backbone.unet).values() for p in layer.parameters()]
        for p in self.params:
            p.requires_grad_(True)

    def trainable_parameters(self):
        return self.params

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): p.detach().cpu().clone() for i, p in enumerate(self.params)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(state[str(i)])

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        bb = self.model.backbone
        latents = batch["latents"].to(bb.device, torch.float32)  # noised in fp32: see objective.denoising_loss
        tokens = self.model.mapper(batch["image_embeds"].to(bb.device).float())
        spans = [tuple(span) for span in batch["span"].tolist()]
        text = splice_tokens(batch["text"].to(bb.device, bb.dtype), spans, tokens)
        noise = torch.randn(latents.shape, generator=generator).to(bb.device)
        timesteps = sample_timesteps(latents.shape[0], self.scheduler.config.num_train_timesteps, generator,
                                     self.high_noise.fraction, self.high_noise.start)
        timesteps = timesteps.to(bb.device)
        if self.stage == "fine":
            images = batch["image_latents"].to(bb.device)
            image_noise = torch.randn(images.shape, generator=generator).to(bb.device)
            capture(bb, self.scheduler, images, image_noise, timesteps, text)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        prediction = bb.unet_forward(noisy.to(bb.dtype), timesteps, text)
        kind = self.scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": latents}.get(kind)
        if target is None:
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        # the references stay until the next step's capture replaces them: the backward pass may run the layers
        # again (gradient checkpointing), and must see them as the forward pass did
        return (prediction.float() - target).pow(2).mean()


def world_examples(cfg: ImagePromptConfig, size: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """cfg.data.clips (caption, clip, photo) of nano's world: pretraining sprites and motions, each clip with a
    photo of its sprite rendered apart."""
    from vidbooth.nano.world import make_split, render_clip, render_photos

    split = make_split(cfg.data.split_seed)
    sprites, motions = split.pretraining_sprites(), split.pretraining_motions()
    rng = np.random.default_rng(cfg.data.seed)
    for _ in range(cfg.data.clips):
        sprite, motion = sprites[rng.integers(len(sprites))], motions[rng.integers(len(motions))]
        clip = render_clip(sprite, motion, cfg.data.num_frames, size, int(rng.integers(2**31)))[0]
        photo = render_photos(sprite, 1, size, int(rng.integers(2**31)))[0]
        yield f"a {cfg.word} {motion.phrase}", clip, photo


def folder_examples(examples: list[SubjectClip], cfg: ImagePromptConfig, size: int, threads: int = 4, window: int = 32):
    """(caption, clip, photo) of each clip of a `--data` folder (`data.subject_clips`), read by `threads` threads
    (decoding runs in ffmpeg processes) `window` clips at a time; a subject cut out by its mask is put at a random
    size and place, drawn for each clip from `cfg.data.seed`. Sampling's warnings name their clip and come once all
    are read, the first `WARNINGS_SHOWN` of them and how many more (a folder of short clips warned once per clip)."""
    from concurrent.futures import ThreadPoolExecutor

    rngs = [np.random.default_rng(seed) for seed in np.random.SeedSequence(cfg.data.seed).spawn(len(examples))]
    warnings: list[tuple[int, str]] = []  # (clip index, warning): list.append is safe across threads

    def read(index: int):
        example = examples[index]
        return example.caption, *load_subject_clip(example, cfg.data.num_frames, size, rngs[index],
                                                   warn=lambda message: warnings.append((index, message)))

    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(examples), window):
            yield from pool.map(read, range(start, min(start + window, len(examples))))
    warnings.sort()
    for index, message in warnings[:WARNINGS_SHOWN]:
        warn(f"clip {examples[index].clip.name}: {message}")
    if len(warnings) > WARNINGS_SHOWN:
        clips = len({index for index, _ in warnings[WARNINGS_SHOWN:]})
        warn(f"{len(warnings) - WARNINGS_SHOWN} more such warning(s), for {clips} more clip(s) of "
             f"{examples[0].clip.parent}")


def training_items(model: ImagePromptModel, examples, word: str, total: int, chunk: int = 16) -> list[dict]:
    """The `total` examples encoded once for training: the clips' and photos' latents, the photos' image embeddings,
    the encoded captions and where `word` stands in each (read `chunk` examples at a time)."""
    from vidbooth.data.images import pixels_to_tensor

    bb, items, examples = model.backbone, [], iter(examples)
    with progress("image prompt: reading clips", total=total) as bar:
        while batch := list(itertools.islice(examples, chunk)):
            prompts, clips, photos = zip(*batch)
            videos = torch.stack([pixels_to_tensor(c) for c in clips]).to(bb.device)  # (n, F, 3, H, W)
            latents = bb.encode_video(videos).float().cpu()
            photo_batch = np.stack(photos)
            image = image_latents(bb, photo_batch).float().cpu()
            embeds = model.image_embeds(photo_batch).float().cpu()
            ids = bb.tokenize(list(prompts))
            with torch.no_grad():
                text = bb.encode_ids(ids).float().cpu()
            spans = model.word_span(ids, word)
            for i in range(len(latents)):
                items.append({"latents": latents[i], "image_latents": image[i], "image_embeds": embeds[i],
                              "text": text[i], "span": torch.tensor(spans[i])})
            bar.advance(len(batch))
    return items


def train_image_prompt(cfg: ImagePromptConfig) -> Path:
    """Train the image-prompt model of `cfg.backbone` coarse to fine, on the clips of `cfg.data.folder` or else on
    nano's world, and save it to `cfg.out` (a second run writing the same file meanwhile is refused)."""
    from vidbooth.data.video import check_writable_dir
    from vidbooth.engine.train import check_high_noise, checked_then_met, held_by_the_first

    given, out = cfg.out, expand_user(cfg.out)

    def busy(owner: str) -> str:
        return f"another train-image-prompt (pid {owner}) is writing {out}: wait for it to end, or give another --out"

    def checks() -> list[SubjectClip] | None:
        _check_out(given, out, cfg.overwrite)
        refuse_if_held(lock_file_beside(out), busy)  # here, where every process of a launch stops on it together
        check_writable_dir(out.parent)
        examples = find_subject_clips(cfg.data.folder, cfg.word) if cfg.data.folder else None
        check_high_noise([cfg.coarse, cfg.fine], cfg.backbone.base, cfg.backbone.revision)
        return examples

    settings = {"mixed_precision": cfg.coarse.mixed_precision, "device": cfg.runtime.device,
                "setting": "coarse.mixed_precision and fine.mixed_precision", "base_precision": cfg.runtime.precision}
    examples, accelerator = checked_then_met(checks, settings)
    # the lock makes the folder; a run that fails before its first checkpoint leaves none
    with held_by_the_first(accelerator, lambda: lock_beside(out, busy)):
        return _train(cfg, out, examples, accelerator)


def _check_captions_fit(model: ImagePromptModel, examples: list[SubjectClip], word: str) -> None:
    """Refuse, before the clips are read, a caption whose word the text encoder cuts away, naming its clip."""
    cut = [example.clip for example in examples if model.word_cut_away(example.caption, word)]
    if cut:
        more = f" ({len(cut) - 1} more clip(s) have such a caption)" if len(cut) > 1 else ""
        raise UserError(f"the caption of {cut[0]} names '{word}' after the {model.backbone.tokenizer.model_max_length} "
                        f"tokens the text encoder reads: put it nearer the start, or shorten the caption{more}")


def _check_out(given: str, out: Path, overwrite: bool) -> None:
    """Refuse an --out that is not a safetensors file this run may write (or whose run folder is a file)."""
    if out.suffix != ".safetensors":
        raise UserError(f"--out {given or repr(given)} must end in .safetensors (the image-prompt model is one "
                        "safetensors file)")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file path ending in .safetensors")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    run_folder = out.with_name(out.name + ".run")  # its checkpoints (see _train)
    if run_folder.exists() and not run_folder.is_dir():
        raise UserError(f"{run_folder}, where the run keeps its checkpoints, is a file: move it away, or choose "
                        "another --out")


def _train(cfg: ImagePromptConfig, out: Path, examples: list[SubjectClip] | None, accelerator) -> Path:
    from vidbooth.data.video import ensure_writable_dir
    from vidbooth.engine.appearance import check_encoder, load_appearance_encoder
    from vidbooth.engine.backbone import load_backbone_for
    from vidbooth.engine.sampling import training_resolution
    from vidbooth.engine.train import (
        backbone_device,
        refuse_other_settings,
        refuse_to_discard,
        remove_runs,
        saved_by_the_first,
        seed_everything,
        train,
    )

    run_root = out.with_name(out.name + ".run")
    run_dirs = [run_root / stage for stage in STAGES]
    refuse_to_discard(run_dirs, cfg.resume, cfg.overwrite)
    data = asdict(cfg.data)
    if examples is None:
        source, count = f"{cfg.data.clips} world clips", cfg.data.clips
    else:
        source, count = f"{len(examples)} clips of {cfg.data.folder}", len(examples)
        data |= {"folder": f"contents {folder_digest(examples)}", "clips": count, "split_seed": None}
    known_spec = {"word": cfg.word, "num_tokens": cfg.num_tokens, "encoder": cfg.encoder or ""}  # the rest: model's
    if cfg.hidden_dim:
        known_spec["hidden_dim"] = cfg.hidden_dim
    for stage, train_cfg, run_dir in zip(STAGES, (cfg.coarse, cfg.fine), run_dirs):  # before the model and clips
        refuse_other_settings(run_dir, cfg.resume, train_cfg, {"method": KIND, "data": data, "stage": stage},
                              accelerator, within=("spec", known_spec))
    check_encoder(cfg.encoder or None, ENCODER_SETTING)  # before the model loads
    bb = load_backbone_for(cfg.backbone, cfg.runtime, backbone_device(accelerator))
    if examples is None and cfg.backbone.base != "nano":
        warn(f"the training clips come from nano's procedural world: on {cfg.backbone.base} this checks that training "
             "runs, and the model it makes knows only the world's sprites; train on your own clips with --data")
    size = training_resolution(bb, cfg.data.resolution)  # "data.resolution (--resolution)", as train-motion's
    encoder = load_appearance_encoder(cfg.encoder or None, bb, setting=ENCODER_SETTING)
    text_dim = int(bb.text_encoder.config.hidden_size)
    spec = ImagePromptSpec(cfg.word, cfg.num_tokens, encoder.dim, text_dim, cfg.hidden_dim or 4 * text_dim,
                           cfg.encoder or "")
    seed_everything(cfg.coarse.seed)
    model = ImagePromptModel(bb, spec, encoder, with_injections=False)
    info(f"image-prompt model for {cfg.backbone.base}: {source}, {cfg.data.num_frames} frames at {size}px; the word "
         f"'{cfg.word}' becomes {cfg.num_tokens} image token(s) ({encoder.name})")
    if examples is not None:
        _check_captions_fit(model, examples, cfg.word)
    read = world_examples(cfg, size) if examples is None else folder_examples(examples, cfg, size)
    items = training_items(model, read, cfg.word, count)
    signature = {"method": KIND, "spec": spec.to_json(), "data": data, "base": bb.fingerprint}
    losses = {}
    for stage, train_cfg, run_dir in zip(STAGES, (cfg.coarse, cfg.fine), run_dirs):
        if stage == "fine":
            model.add_injections()
        method = _Method(model, stage, HighNoise.of(train_cfg))
        result = train(method, items, train_cfg, run_dir, accelerator, resume=cfg.resume,
                       signature=signature | {"stage": stage}, description=f"image prompt: {stage}", unet=bb.unet)
        losses[stage] = result.loss
    clear_references(bb.unet)
    if accelerator.is_main_process:
        metadata = {"method": KIND, "format": str(FORMAT), "spec": spec.to_json(), "base": cfg.backbone.base,
                    "base_fingerprint": bb.fingerprint, "image_fingerprint": bb.image_fingerprint or "",
                    "motion_adapter": _recorded_adapter(cfg.backbone.motion_adapter, bb.extras.get("motion_adapter")),
                    "losses": losses, "data": source,
                    "steps": {"coarse": cfg.coarse.steps, "fine": cfg.fine.steps},
                    "processes": accelerator.num_processes}
        ensure_writable_dir(out.parent)
        state = model.state_dict()
        write_together([(out, lambda tmp: save_tensors(tmp, state, metadata))])  # never a half-written file
        remove_runs(run_dirs, f"image-prompt model {out}")
        own = own_image_prompt_model(cfg.backbone.base, cfg.backbone.revision)
        use = (f"the base's own: generate --base {cfg.backbone.base} --image-prompt PHOTO uses it"
               if own.resolve() == Path(out).resolve() else f"use it with generate --image-prompt PHOTO "
               f"--image-prompt-model {out}, or put it in the base's folder as {OWN_IMAGE_PROMPT_MODEL}")
        info(f"saved the image-prompt model in {out} (losses: coarse {losses['coarse']:.4f}, fine "
             f"{losses['fine']:.4f}); {use}")
    accelerator.wait_for_everyone()
    saved_by_the_first(accelerator, f"the image-prompt model {out}")
    return out
