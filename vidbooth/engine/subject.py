"""Subject learning: DreamVideo's two subject stages with DreamBooth's prior preservation, and loading a subject.

    train_textual_inversion(cfg)  stage 1: the pseudo-word's embedding           -> library subject
    train_identity_adapter(cfg)   stage 2: identity adapter, embedding frozen    -> adds to the subject
    train_subject(cfg)            both stages in one run (photo latents encoded once)
    load_subject(backbone, name)  apply a stored subject (token rows + identity adapter) to a backbone

Everything that can be checked without the model (name, library, photos, class noun, class images) is
checked before it is loaded. A subject appears in the library only when complete; its folder holds
`learned_embeds.safetensors`, `identity_adapter.safetensors` (after stage 2), `manifest.json`,
`config.yaml`, `photos/` (copies of the training photos) and `preview.png`. `config.yaml` is the recipe that
rebuilds the subject as it is in one `train-subject --recipe config.yaml --overwrite` run: the stages it holds,
each with the settings that trained it (stage 1's from the subject's manifest when a later run added
stage 2), every local path absolute.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf
from PIL import Image

from vidbooth import __version__, reporting
from vidbooth.adapters.base import adapters_of, adapters_off, remove, set_scale
from vidbooth.adapters.identity import (
    ADAPTER_FILE,
    inject_identity_adapter,
    load_identity_adapter,
    mark_conditional_only,
    save_identity_adapter,
    select_layers,
    subject_kind,
)
from vidbooth.adapters.identity import KIND as IDENTITY_KIND
from vidbooth.adapters.textual_inversion import (
    EMBEDDINGS_FILE,
    add_placeholder_tokens,
    check_placeholder_is_new,
    class_noun_ids,
    expand_placeholder,
    initial_rows,
    load_learned_embeddings,
    merge_placeholder_embedding,
    placeholder_tokens,
    save_learned_embeddings,
    wrap_placeholder_embedding,
)
from vidbooth.config.subject import STAGES, SubjectConfig
from vidbooth.device import resolve_device, resolve_dtype
from vidbooth.engine.backbone import base_model_folder, load_backbone_for
from vidbooth.engine.compose import with_subject_token
from vidbooth.engine.objective import Guidance, HighNoise
from vidbooth.engine.sampling import check_preview, training_resolution
from vidbooth.engine.train import (
    TrainResult,
    backbone_device,
    check_high_noise,
    checked_then_met,
    derived_seed,
    dtype_signature,
    held_by_the_first,
    kept_if_preview_fails,
    mark_kept_checkpoint,
    refuse_other_settings,
    refuse_to_discard,
    remove_runs,
    resolve_mixed_precision,
    resume_advice,
    run_folder,
    saved_by_the_first,
    sees_the_firsts,
    seed_everything,
    train,
)
from vidbooth.errors import RERUN_ERRORS, Interrupted, UserError, stopped, stopping_signal
from vidbooth.fileio import absolute_path
from vidbooth.library import (
    MANIFEST,
    PHOTOS_DIR,
    artifact_dir,
    artifact_lock,
    check_base,
    check_free,
    known_names,
    read_manifest,
    refuse_if_being_trained,
    staged_artifact,
    write_json,
)

KIND = "subject"
STAGE_FOLDERS = {"textual_inversion": "textual-inversion", "identity": "identity"}
PREVIEW_FILE = "preview.png"
CONFIG_FILE = "config.yaml"
ENCODE_CHUNK = 8


def train_textual_inversion(cfg: SubjectConfig) -> Path:
    """Stage 1 alone: a new subject holding the learned embedding. Returns the artifact folder."""
    return _train(cfg, ("textual_inversion",))


def train_identity_adapter(cfg: SubjectConfig) -> Path:
    """Stage 2 alone, on an existing subject (its embedding frozen): adds the identity adapter. Without photos, the
    ones the subject was learned from (kept in its folder) are used."""
    return _train(cfg, ("identity",), own_photos=True)


def _take_its_own_photos(cfg: SubjectConfig) -> None:
    """Without photos given, those subject `cfg.name` was learned from (kept in its folder)."""
    if not cfg.photos and cfg.name:
        folder = artifact_dir(KIND, cfg.name) / PHOTOS_DIR
        if not (folder.is_dir() and any(folder.iterdir())):  # removed by hand: not 'no photos given'
            raise UserError(f"subject '{cfg.name}' keeps no copies of its photos in {folder}: give the photos to train "
                            "its identity adapter on (vidbooth identity-adapter PHOTOS... --name "
                            f"{shlex.quote(cfg.name)})")
        reporting.info(f"photos: the ones subject '{cfg.name}' was learned from ({folder})")
        cfg.photos = [str(folder)]


def train_subject(cfg: SubjectConfig) -> Path:
    """The stages `cfg.stages` names (default both: embedding, then identity adapter). Returns the artifact
    folder."""
    return _train(cfg, tuple(cfg.stages))


# ---- applying a stored subject ---------------------------------------------------------------------
@dataclass
class LoadedSubject:
    name: str
    token: str
    num_vectors: int
    class_noun: str
    folder: Path
    manifest: dict = field(repr=False)

    def expand_prompt(self, prompt: str, others: Iterable[str] = ()) -> str:
        """Spell out a multi-vector token ('a S* dog' -> 'a S* S*_1 dog'); a no-op for one vector. `others`: the
        tokens of the other subjects loaded with it (`read_tokens`)."""
        return expand_placeholder(prompt, self.token, self.num_vectors, others)

    @property
    def tokens(self) -> list[str]:
        return placeholder_tokens(self.token, self.num_vectors)


def recorded_embedding(manifest: dict) -> tuple[str | None, int]:
    """The pseudo-word (None where an older manifest has no "token") and number of vectors that a subject's manifest
    records: its learned_embeds must hold them."""
    return manifest.get("token"), manifest["num_vectors"]


def load_subject(backbone, name: str, scale: float = 1.0) -> LoadedSubject:
    """Add subject `name`'s token(s) to the backbone's tokenizer/text encoder and its identity adapter (if any,
    as adapter kind `subject_kind(name)`, at `scale`, in the backbone's dtype). Several subjects can be loaded.
    Prompts must go through `LoadedSubject.expand_prompt`."""
    folder = artifact_dir(KIND, name)
    manifest = read_manifest(folder)
    check_base(KIND, name, manifest, backbone.source, backbone.fingerprint, backbone.image_fingerprint)
    adapter_file = manifest["paths"]["identity_adapter"]
    kind = subject_kind(name)
    if adapters_of(backbone.unet, kind):  # a notebook cell run again: the adapter cannot sit twice in a layer
        raise UserError(f"subject '{name}' is already loaded on this model: load each subject once (load the model "
                        "again to start afresh)")
    if adapter_file:  # first: a failed load takes its adapters out again
        load_identity_adapter(backbone.unet, backbone.spatial_cross_attention_layers(), folder / adapter_file, kind)
        for adapter in adapters_of(backbone.unet, kind).values():
            adapter.to(backbone.dtype)
        set_scale(backbone.unet, kind, scale)
    try:
        embeddings = folder / manifest["paths"]["embeddings"]
        token, num_vectors = load_learned_embeddings(backbone.tokenizer, backbone.text_encoder, embeddings,
                                                     recorded_embedding(manifest))
    except UserError:
        remove(backbone.unet, kind)
        raise
    return LoadedSubject(name, token, num_vectors, manifest["class_noun"], folder, manifest)


# ---- the run ---------------------------------------------------------------------------------------
@dataclass
class _Photos:
    files: list[Path]
    images: list[Image.Image]
    hashes: list[str]


@dataclass
class _Run:
    cfg: SubjectConfig
    stages: tuple[str, ...]
    class_noun: str
    photos: _Photos
    existing: dict | None  # manifest of the subject being extended (identity stage alone)
    earlier: SubjectConfig | None  # the config that built the subject being extended, when readable
    class_images: list[Path] | None  # the user's class images, when given (read, a few at a time, when encoded)
    class_images_sha256: str | None  # their names and bytes, for --resume
    backbone: object = None
    accelerator: object = None
    size: int = 0
    latents: torch.Tensor | None = None  # (N x views, C, 1, h, w)
    identity_layers: dict | None = None  # the cross-attention layers `identity.layers` names (identity stage)
    results: dict[str, TrainResult] = field(default_factory=dict)
    preview_prompt: str | None = None  # preview.prompt as the preview samples it (`_preview_prompt`)

    @property
    def token(self) -> str:
        return self.cfg.name

    @property
    def num_vectors(self) -> int:
        return self.existing["num_vectors"] if self.existing else self.cfg.textual_inversion.num_vectors

    def captions(self) -> list[str]:
        subject = f"{self.token} {self.class_noun}"
        return [expand_placeholder(c.format(subject), self.token, self.num_vectors) for c in self.cfg.data.captions]


def _train(cfg: SubjectConfig, stages: tuple[str, ...], own_photos: bool = False) -> Path:
    """Check the inputs, then (holding the subject's lock) load the model, encode the photos once, run the
    stages and, on the main process, save the subject and drop the run's checkpoints. `own_photos`: without photos
    given, take the subject's own."""

    def checks() -> _Run:
        if own_photos:
            _take_its_own_photos(cfg)
        return _prepare(cfg, stages)

    def resumable(run: _Run, accelerator) -> None:  # a --resume with other settings is refused before the model loads
        for stage in stages:
            run_dir = run_folder(KIND, cfg.name, STAGE_FOLDERS[stage])
            refuse_other_settings(run_dir, cfg.resume, getattr(cfg, stage).train, _settings_signature(run, stage),
                                  accelerator)

    def unchanged() -> None:  # under the lock: another run of this name that held it until now may have saved it
        if _check_library(cfg, stages) != run.existing:
            raise UserError(
                f"subject '{cfg.name}' was changed by another run while this one waited for it: run the command again"
            )

    settings = {"mixed_precision": getattr(cfg, stages[0]).train.mixed_precision, "device": cfg.runtime.device,
                "setting": " and ".join(f"{stage}.train.mixed_precision" for stage in stages),
                "base_precision": cfg.runtime.precision}
    run, accelerator = checked_then_met(checks, settings, resumable)
    run.accelerator = accelerator
    main = run.accelerator.is_main_process
    with held_by_the_first(accelerator, lambda: artifact_lock(KIND, cfg.name), unchanged):
        run.backbone = load_backbone_for(cfg.backbone, cfg.runtime, backbone_device(run.accelerator))
        if "identity" in stages:
            # checked before any training, used by the identity stage
            run.identity_layers = select_layers(run.backbone.spatial_cross_attention_layers(), cfg.identity.layers)
        run.size = training_resolution(run.backbone, cfg.data.resolution)
        if cfg.preview.enabled:  # made after training: a setting it cannot take is told now, not then
            check_preview(run.backbone, cfg.preview.num_frames, cfg.preview.num_inference_steps)
        if "identity" in stages and cfg.prior.enabled and not cfg.prior.class_images:  # made after textual inversion
            check_preview(run.backbone, 1, cfg.prior.num_inference_steps, section="prior")
        run.latents = _encode_photos(run)
        rows = _textual_inversion(run) if "textual_inversion" in stages else _load_existing_embedding(run)
        if "identity" in stages:
            _identity(run, rows)
        if main:
            _save_artifact(run, rows)
            runs = [run_folder(KIND, cfg.name, STAGE_FOLDERS[stage]) for stage in stages]
            remove_runs(runs, f"subject '{cfg.name}'")
        run.accelerator.wait_for_everyone()
    saved_by_the_first(accelerator, f"subject '{cfg.name}'")
    return artifact_dir(KIND, cfg.name, must_exist=False)


def _check_library(cfg: SubjectConfig, stages: tuple[str, ...]) -> dict | None:
    """Refuse what the library holds under the name (a subject without --overwrite, or, to add stage 2, no subject
    or one that has it); returns the manifest of the subject that stage 2 extends."""
    if "textual_inversion" in stages:
        check_free(KIND, cfg.name, cfg.overwrite)
        return None
    existing = read_manifest(artifact_dir(KIND, cfg.name))
    if existing["paths"]["identity_adapter"] and not cfg.overwrite:
        raise UserError(f"subject '{cfg.name}' already has an identity adapter: pass --overwrite to retrain it")
    return existing


def _prepare(cfg: SubjectConfig, stages: tuple[str, ...]) -> _Run:
    """Every check that needs no model: name, library state, photos, class noun, class images."""
    from vidbooth.data.images import load_image
    from vidbooth.data.images import hash_files
    from vidbooth.engine.prior import class_image_files

    cfg.check(stages)
    refuse_if_being_trained(KIND, cfg.name)  # another run of this name now is no stopped run
    existing = _check_library(cfg, stages)
    refuse_to_discard([run_folder(KIND, cfg.name, STAGE_FOLDERS[stage]) for stage in stages], cfg.resume, cfg.overwrite)
    earlier = None if existing is None else _earlier_config(cfg.name, existing)
    class_noun = cfg.class_noun.strip() or existing["class_noun"]
    photos = _load_photos(cfg.photos)
    base_folder = base_model_folder(cfg.backbone.base, cfg.backbone.revision)  # a wrong --base fails here, early
    check_high_noise([getattr(cfg, stage).train for stage in stages], cfg.backbone.base, folder=base_folder)
    if "textual_inversion" in stages:
        _check_tokens(cfg, class_noun, base_folder)
        _warn_of_names_alike(cfg.name)
    class_images = digest = None
    if "identity" in stages and cfg.prior.enabled and cfg.prior.weight == 0:
        reporting.warn("prior.weight (--prior-weight) is 0: the class images are made and denoised at every step but "
                       "count for nothing; drop --prior-preservation, or give a weight above 0")
    if "identity" in stages and cfg.prior.enabled and cfg.prior.class_images:
        files = class_image_files(cfg.prior.class_images, cfg.prior.num_class_images)
        for file in files:  # each read once now, so that a bad one fails before the model loads; kept: none
            load_image(file)
        class_images, digest = files, hash_files(files)
        if len(files) < cfg.prior.num_class_images:  # once they are read: a bad one is the one line said
            reporting.warn(
                f"only {len(files)} class images in {cfg.prior.class_images}, fewer than prior.num_class_images "
                f"(--num-class-images) {cfg.prior.num_class_images}: training uses these {len(files)}"
            )
    run = _Run(cfg, stages, class_noun, photos, existing, earlier, class_images, digest)
    run.preview_prompt = _preview_prompt(run)  # its warning before the minutes of training, not after them
    return run


def _earlier_config(name: str, existing: dict) -> SubjectConfig | None:
    """The settings that built subject `name` (its manifest `existing`), above all its pseudo-word's: the manifest's
    record of them (config.yaml is a copy for rerunning, which its user may have edited or deleted), else
    config.yaml. None, with a warning, when neither can be read (a subject from another vidbooth version, say)."""
    from omegaconf.errors import OmegaConfBaseException

    from vidbooth.config import load_config
    from vidbooth.config.load import literal

    with contextlib.suppress(KeyError, TypeError, ValueError, OmegaConfBaseException, UserError):
        recorded = OmegaConf.merge(OmegaConf.structured(SubjectConfig), literal(existing["config"]))
        return OmegaConf.to_object(recorded)
    path = artifact_dir(KIND, name) / (existing.get("paths", {}).get("config") or CONFIG_FILE)
    try:
        if not path.is_file():
            raise UserError(f"{path.name} is missing")
        return load_config(SubjectConfig, str(path))
    except UserError as exc:
        reporting.warn(
            f"cannot read the settings that learned the pseudo-word of subject '{name}' ({exc}): its new "
            "config.yaml records this run's textual_inversion settings instead"
        )
        return None


def _load_photos(paths: list[str]) -> _Photos:
    from vidbooth.data.images import hash_file, load_photos

    loaded = load_photos(paths)
    if len(loaded) < 3:
        reporting.warn(f"only {len(loaded)} photo(s) of the subject: 3-5 varied photos learn it better")
    files = [path for path, _ in loaded]
    hashes = [hash_file(path) for path in files]
    _warn_of_copied_photos(files, hashes)
    return _Photos(files, [image for _, image in loaded], hashes)


def _warn_of_copied_photos(files: list[Path], hashes: list[str]) -> None:
    """One warning naming a photo whose bytes another name holds too (a photo copied twice counts twice)."""
    from vidbooth.data.images import copies

    found = copies(files, hashes)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        reporting.warn(f"photo {found[0][1]} is the same file as {found[0][0]}{more}: it counts once for each "
                       "name; remove the copy")


def _warn_of_names_alike(name: str) -> None:
    """A warning when another subject's name differs from `name` only in letter case: their pseudo-words read alike
    (generate refuses the two in one prompt)."""
    alike = [other for other in known_names(KIND) if other != name and other.lower() == name.lower()]
    if alike:
        reporting.warn(f"subject '{alike[0]}' differs from '{name}' only in letter case: the two cannot be used in "
                       "one prompt (their pseudo-words read alike); rename one to use them together")


def _check_tokens(cfg: SubjectConfig, class_noun: str, base_folder: Path) -> None:
    """With the tokenizer alone: the class noun must tokenise to something and the pseudo-word must be new."""
    from vidbooth.engine.backbone import load_tokenizer

    folder = base_folder / "tokenizer"
    if not folder.is_dir():
        return  # load_backbone says what is missing
    tokenizer = load_tokenizer(folder)
    class_noun_ids(tokenizer, class_noun)
    check_placeholder_is_new(tokenizer, cfg.name, cfg.textual_inversion.num_vectors, class_noun)
    _check_caption_lengths(tokenizer, cfg, class_noun)


def _check_caption_lengths(tokenizer, cfg: SubjectConfig, class_noun: str) -> None:
    """Each caption with the pseudo-word written out in its `num_vectors` tokens must fit the text encoder whole:
    cut, it would lose the class noun (or the pseudo-word's last vectors) without a word."""
    num_vectors, limit = cfg.textual_inversion.num_vectors, tokenizer.model_max_length
    for caption in cfg.data.captions:
        # the pseudo-word is not in the vocabulary yet: "a", one token, stands in for each of its vectors
        length = len(tokenizer(caption.format(f"a {class_noun}"), verbose=False).input_ids) - 1 + num_vectors
        if length > limit:
            noun = len(class_noun_ids(tokenizer, class_noun))
            shorter = f"a shorter --class-noun ({noun} tokens), " if noun > limit // 4 else ""
            raise UserError(
                f"caption '{caption.format(f'{cfg.name} {class_noun}')}' with textual_inversion.num_vectors "
                f"(--num-vectors) {num_vectors} takes {length} tokens, more than the text encoder's {limit}: use "
                f"{shorter}fewer vectors or shorter data.captions"
            )


def _encode_latents(backbone, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (N, 1, 3, H, W) -> latent means (N, C, 1, h, w), a few at a time."""
    starts = range(0, len(pixels), ENCODE_CHUNK)
    chunks = [backbone.encode_video(pixels[i : i + ENCODE_CHUNK].to(backbone.device)) for i in starts]
    return torch.cat(chunks)


def _encode_photos(run: _Run) -> torch.Tensor:
    """The photos (and their augmented views), encoded by the VAE once for every stage."""
    from vidbooth.data.images import photos_to_tensor

    data = run.cfg.data
    augment = data.flip or data.scale_jitter > 0
    generator = torch.Generator().manual_seed(derived_seed("views", run.cfg.runtime.seed))
    views = [
        photos_to_tensor(run.photos.images, run.size, data.flip, data.scale_jitter, generator)
        for _ in range(data.views if augment else 1)
    ]
    return _encode_latents(run.backbone, torch.cat(views))  # (N x views, C, 1, h, w)


def _signature(run: _Run, stage: str) -> dict:
    """What must be equal for --resume to continue `stage`."""
    return _settings_signature(run, stage) | {"base": run.backbone.fingerprint} | dtype_signature(run.backbone.dtype)


def _settings_signature(run: _Run, stage: str) -> dict:
    """The part of `stage`'s resume signature known before the model loads (all but the base and its precision)."""
    cfg = run.cfg
    signature = {
        "stage": stage,
        "photos": run.photos.hashes,
        "token": run.token,
        "class_noun": run.class_noun,
        "data": OmegaConf.to_container(OmegaConf.structured(cfg.data)),
        "runtime_seed": cfg.runtime.seed,
    }
    if stage == "textual_inversion":
        ti = cfg.textual_inversion
        return signature | {"num_vectors": ti.num_vectors} | _guided_signature(ti.guidance_scale)
    layers = {"layers": list(cfg.identity.layers)} if cfg.identity.layers != ["*"] else {}  # as for guidance below
    return signature | {"hidden_ratio": cfg.identity.hidden_ratio, "prior": _prior_signature(run)} | layers | (
        _guided_signature(cfg.identity.guidance_scale)
    )


def _prior_signature(run: _Run) -> dict | None:
    """What decides the class images and their loss: given ones by their names and bytes (not by path, so the same
    folder named another way still resumes), generated ones by how they are sampled (the seed is the run's). Not
    prior.sample_batch_size: each image has its own noise, so the batch layout changes nothing."""
    prior = run.cfg.prior
    if not prior.enabled:
        return None
    used = {"weight": prior.weight, "num_class_images": prior.num_class_images}
    if run.class_images_sha256:
        return used | {"class_images_sha256": run.class_images_sha256}
    sampling = {"prompt": prior.prompt, "num_inference_steps": prior.num_inference_steps}
    return used | sampling | {"guidance_scale": prior.guidance_scale}


def _guided_signature(guidance_scale: float) -> dict:
    """The guidance of a guided stage; nothing for a plain one, so that runs from before the key stay resumable."""
    return {"guidance_scale": guidance_scale} if guidance_scale > 1 else {}


def _loss_guidance(bb, scale: float, unconditional_context=contextlib.nullcontext) -> Guidance | None:
    """Classifier-free guidance for a stage's loss, the empty prompt as unconditional; None at scale 1 or below."""
    if scale <= 1:
        return None
    with torch.no_grad():
        negative = bb.encode_prompt([""])  # no placeholder in it: fixed while the stage trains
    return Guidance(scale, negative, unconditional_context)


def _caption_check(run: _Run, ids: torch.Tensor) -> None:
    """Every tokenised caption (T, L) must still hold the placeholder after truncation."""
    placeholder = run.backbone.tokenizer.convert_tokens_to_ids(run.token)
    if not bool((ids == placeholder).any(dim=1).all()):
        raise UserError("a caption is too long: the tokenizer cuts off the subject's token; shorten data.captions")


def _textual_inversion(run: _Run) -> torch.Tensor:
    """Stage 1: add the placeholder token(s) initialised from the class noun and learn their rows; returns them."""
    from vidbooth.engine.subject_methods import TextualInversionMethod

    bb, ti = run.backbone, run.cfg.textual_inversion
    init = initial_rows(bb.text_encoder, class_noun_ids(bb.tokenizer, run.class_noun), ti.num_vectors)
    ids = add_placeholder_tokens(bb.tokenizer, bb.text_encoder, placeholder_tokens(run.token, ti.num_vectors), init)
    caption_ids = bb.tokenize(run.captions())  # (T, L), tokenised once
    _caption_check(run, caption_ids)
    seed_everything(ti.train.seed)
    method = TextualInversionMethod(
        bb, caption_ids, wrap_placeholder_embedding(bb.text_encoder, ids), HighNoise.of(ti.train),
        _loss_guidance(bb, ti.guidance_scale),
    )
    _train_stage(run, "textual_inversion", method, _signature(run, "textual_inversion"), "textual inversion")
    return merge_placeholder_embedding(bb.text_encoder)


def _train_stage(run: _Run, stage: str, method, signature: dict, description: str) -> None:
    """Train one stage on the photo latents and record its result."""
    run_dir = run_folder(KIND, run.cfg.name, STAGE_FOLDERS[stage])
    run.results[stage] = train(
        method,
        [{"latents": latents} for latents in run.latents],
        getattr(run.cfg, stage).train,
        run_dir,
        run.accelerator,
        resume=run.cfg.resume,
        signature=signature,
        description=description,
        unet=run.backbone.unet,
    )


def _load_existing_embedding(run: _Run) -> torch.Tensor:
    from vidbooth.adapters.textual_inversion import read_learned_embeddings

    bb = run.backbone
    check_base(KIND, run.cfg.name, run.existing, bb.source, bb.fingerprint, bb.image_fingerprint)
    if run.earlier is not None:  # once the base is known to fit (another base's recipe has other data), before training
        _warn_if_not_one_run(run, run.earlier)
    path = artifact_dir(KIND, run.cfg.name) / run.existing["paths"]["embeddings"]
    load_learned_embeddings(bb.tokenizer, bb.text_encoder, path, recorded_embedding(run.existing))
    return read_learned_embeddings(path)[1]


def _class_prior(run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Class latents (Nc, C, 1, h, w) and the class prompt's embedding (1, L, D), computed once."""
    from vidbooth.data.images import load_image, photos_to_tensor
    from vidbooth.engine.prior import class_prompt, make_class_images_together, read_class_images

    prior, bb = run.cfg.prior, run.backbone
    prompt = class_prompt(prior, run.class_noun)
    if run.class_images is None:
        folder = make_class_images_together(bb, prompt, prior.num_class_images, run.size, prior, run.cfg.runtime.seed,
                                            run.accelerator)
        images = read_class_images(folder, prior.num_class_images)
        latents = _encode_latents(bb, photos_to_tensor(images, run.size))
    else:  # a chunk at a time: 200 large photos, and their pixels at once, had all been held for the whole run
        chunks = [run.class_images[i : i + ENCODE_CHUNK] for i in range(0, len(run.class_images), ENCODE_CHUNK)]
        latents = torch.cat([_encode_latents(bb, photos_to_tensor([load_image(f) for f in chunk], run.size))
                             for chunk in chunks])
    with torch.no_grad():
        embeds = bb.encode_prompt([prompt])
    return latents, embeds


def _identity(run: _Run, rows: torch.Tensor) -> None:
    """Stage 2: train identity adapters beside the spatial cross-attentions `identity.layers` names, the embedding
    frozen."""
    from vidbooth.engine.subject_methods import IdentityAdapterMethod

    bb, ident = run.backbone, run.cfg.identity
    with _stage_one_kept(run):
        class_latents, class_embeds = _class_prior(run) if run.cfg.prior.enabled else (None, None)
        with torch.no_grad():
            caption_embeds = bb.encode_prompt(run.captions())  # (T, L, D), encoded once
        seed_everything(ident.train.seed)
        inject_identity_adapter(bb.unet, run.identity_layers, ident.hidden_ratio)
        # guided: the adapter learns the conditional pass; the unconditional one is the base's
        guidance = _loss_guidance(bb, ident.guidance_scale, lambda: adapters_off(bb.unet, IDENTITY_KIND))
        method = IdentityAdapterMethod(
            bb, caption_embeds, class_latents, class_embeds, run.cfg.prior.weight, HighNoise.of(ident.train), guidance
        )
    signature = _signature(run, "identity") | {"embedding": hashlib.sha256(rows.numpy().tobytes()).hexdigest()}
    _train_stage(run, "identity", method, signature, "identity adapter")
    if guidance is not None:
        mark_conditional_only(bb.unet, IDENTITY_KIND)  # for the preview, and recorded in the adapter file


@contextlib.contextmanager
def _stage_one_kept(run: _Run):
    """Around what runs between the two stages of one run (class images, encodings): a Ctrl-C or SIGTERM there
    leaves stage 1's final checkpoint, so the message says to resume, as a stop during training does; so does an
    error that says to run the command again (a full disk under the class images' cache, out of memory), which
    the checkpoint would refuse without --resume."""
    if "textual_inversion" not in run.results:  # stage 1 did not run here: nothing of this run is kept
        yield
        return
    kept = run_folder(KIND, run.cfg.name, STAGE_FOLDERS["textual_inversion"])
    step = run.results["textual_inversion"].step  # its last checkpoint, which the first process saved
    try:
        yield
    except RERUN_ERRORS as exc:
        mark_kept_checkpoint(exc, run.accelerator, kept, step)
        raise
    except (KeyboardInterrupt, Interrupted) as exc:  # the command line's handler raises these for SIGINT, SIGTERM
        stopped_by = stopping_signal(exc)
        where = (f"the textual inversion's checkpoint is kept in {kept}: rerun the same command with --resume to "
                 "continue") if sees_the_firsts(run.accelerator, kept, step) else resume_advice(kept, step)
        raise stopped(stopped_by, f"stopped by {stopped_by.name} before the identity adapter's training; {where}"
                      ) from exc


# ---- the artifact ----------------------------------------------------------------------------------
def _save_artifact(run: _Run, rows: torch.Tensor) -> None:
    cfg, bb = run.cfg, run.backbone
    rerun = rerun_config(run)  # its base is absolute when a local folder, as the tensors' metadata records it
    provenance = {"base": rerun.backbone.base, "base_fingerprint": bb.fingerprint, "class_noun": run.class_noun}
    with staged_artifact(KIND, cfg.name, overwrite=cfg.overwrite or run.existing is not None) as stage:
        save_learned_embeddings(stage / EMBEDDINGS_FILE, run.token, rows, provenance)
        if "identity" in run.stages:
            save_identity_adapter(stage / ADAPTER_FILE, bb.unet, cfg.identity.hidden_ratio, provenance)
        photos = _copy_photos(run.photos, stage / PHOTOS_DIR, cfg.name)
        (stage / CONFIG_FILE).write_text(_recipe_yaml(rerun))
        with kept_if_preview_fails():
            preview = _render_preview(run, stage / PREVIEW_FILE) if cfg.preview.enabled else None
        write_json(stage / MANIFEST, _manifest(run, photos, preview, _held_settings(asdict(rerun))))
    added = ", identity adapter added" if run.existing is not None else ""
    reporting.info(f"saved subject '{cfg.name}' (token {run.token}{added}) in {artifact_dir(KIND, cfg.name)}")


def rerun_config(run: _Run) -> SubjectConfig:
    """The recipe that rebuilds the subject as saved, from anywhere: `train-subject --recipe config.yaml
    --overwrite`. This run's settings, with the stages the subject holds and the subject's class noun; when this
    run only added stage 2, `textual_inversion.*` from the config that built stage 1 (but this run's mixed
    precision, which one run of both stages shares); every local path absolute, and the run's own mode flags
    (--overwrite, --resume) dropped."""
    from vidbooth.engine.backbone import with_absolute_paths

    cfg = run.cfg
    held = list(STAGES) if "identity" in run.stages else ["textual_inversion"]
    ti = cfg.textual_inversion
    if run.earlier is not None:  # stage 1 ran before; one run of both stages takes one mixed precision: this run's
        earlier = run.earlier.textual_inversion
        ti = replace(earlier, train=replace(earlier.train, mixed_precision=cfg.identity.train.mixed_precision))
    return replace(
        cfg,
        stages=held,
        class_noun=run.class_noun,
        textual_inversion=replace(ti, num_vectors=run.num_vectors),
        photos=_rerun_photos(cfg.name, cfg.photos),
        backbone=with_absolute_paths(cfg.backbone),
        prior=replace(cfg.prior, class_images=absolute_path(cfg.prior.class_images)),
        overwrite=False,
        resume=False,
    )


def _warn_if_not_one_run(run: _Run, earlier: SubjectConfig) -> None:
    """Stage 2 about to be added to a subject whose stage 1 ran with other shared settings (photos, data, ...):
    one run of config.yaml uses one value for both stages (this run's), so it cannot rebuild the subject exactly;
    say which differ."""
    cfg = run.cfg
    device = resolve_device(cfg.runtime.device)
    stage_one = run.existing.get("stages", {}).get("textual_inversion", {})
    differ = {
        "photos": stage_one.get("photos", run.photos.hashes) != run.photos.hashes,
        "class_noun": run.existing.get("class_noun", run.class_noun) != run.class_noun,
        "data": earlier.data != cfg.data,
        "runtime.seed": (cfg.data.flip or cfg.data.scale_jitter > 0) and earlier.runtime.seed != cfg.runtime.seed,
        "runtime.precision": _differ_here(earlier.runtime.precision, cfg.runtime.precision, resolve_dtype, device),
        "mixed_precision": _differ_here(  # each with its base's precision, which auto follows
            (earlier.textual_inversion.train.mixed_precision, earlier.runtime.precision),
            (cfg.identity.train.mixed_precision, cfg.runtime.precision),
            lambda setting, on: resolve_mixed_precision(setting[0], on.type, base_precision=setting[1]),
            device,
        ),
    }
    keys = [key for key, differs in differ.items() if differs]
    if keys:
        reporting.warn(
            f"the pseudo-word of subject '{cfg.name}' was learned with other {', '.join(keys)} than this identity "
            "adapter: its config.yaml will hold this run's, so rerunning it in one run will not rebuild the subject "
            "exactly"
        )


def _differ_here(earlier, this, resolve, device: torch.device) -> bool:
    """Whether two precision settings mean different things on `device` (`auto` is fp32 and no mixed precision
    on a CPU, so `auto` and `fp32` or `no` do not differ there); a setting `device` cannot take (fp16 on a CPU,
    from a run on a GPU) differs by name. `resolve(setting, device)`."""
    try:
        return resolve(earlier, device) != resolve(this, device)
    except UserError:
        return earlier != this


def _held_settings(settings: dict) -> dict:
    """A subject's settings without the sections of a stage it does not hold (a subject of textual inversion
    alone records no identity-adapter or prior settings it never ran with)."""
    if "identity" in settings["stages"]:
        return settings
    return {key: value for key, value in settings.items() if key not in ("identity", "prior")}


def _recipe_yaml(cfg: SubjectConfig) -> str:
    """`cfg` as config.yaml: YAML that loads back to the same values (texts holding '${' escaped), with only the
    sections of the stages the subject holds."""
    from vidbooth.config.load import literal

    merged = OmegaConf.merge(OmegaConf.structured(SubjectConfig), literal(asdict(cfg)))
    return OmegaConf.to_yaml(OmegaConf.create(_held_settings(OmegaConf.to_container(merged))))


def _own_photos(name: str) -> tuple[Path, dict[str, str]]:
    """Subject `name`'s folder of photo copies, and the source its manifest records for each copy (by file name):
    a run that takes the photos from there (identity-adapter without photos, or its config.yaml rerun) records
    where they came from, not the copies it is about to replace."""
    folder = artifact_dir(KIND, name, must_exist=False) / PHOTOS_DIR
    try:
        recorded = read_manifest(folder.parent, verify=False).get("photos") if folder.is_dir() else None
    except UserError:
        recorded = None
    sources = {Path(str(entry.get("file"))).name: entry.get("source") for entry in recorded or []
               if isinstance(entry, dict) and isinstance(entry.get("source"), str)}
    return folder.resolve(), sources


def _copy_photos(photos: _Photos, folder: Path, name: str) -> list[dict]:
    """Copies of the photos in `folder` (numbered, as 00-<name>), and their manifest entries. The subject's own copies
    keep their names and the sources the manifest recorded for them."""
    folder.mkdir()
    own, sources = _own_photos(name)
    entries, used = [], set()
    longest = _longest_name(folder)
    for index, (path, digest) in enumerate(zip(photos.files, photos.hashes)):
        kept = path.resolve().parent == own
        target = path.name if kept and path.name not in used else _cut(f"{index:02d}-{path.name}", longest)
        while target in used:  # a numbered name that a kept one already took
            target = _cut(f"{index:02d}-{target}", longest)
        used.add(target)
        shutil.copyfile(path, folder / target)
        source = sources.get(path.name) if kept else None
        entries.append({"file": f"photos/{target}", "source": source or absolute_path(str(path)), "sha256": digest})
    return entries


def _longest_name(folder: Path) -> int:
    """The longest file name, in bytes, that the file system of `folder` takes (255 on most)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or no answer
        return 255


def _cut(file_name: str, longest: int) -> str:
    """`file_name` cut before its suffix to at most `longest` bytes: a photo whose name is near the limit, once
    numbered, had failed the save after the whole training (ENAMETOOLONG)."""
    if len(os.fsencode(file_name)) <= longest:
        return file_name
    suffix = Path(file_name).suffix
    if len(os.fsencode(suffix)) >= longest // 2:  # no room for the name before it: cut it too
        suffix = ""
    room = longest - len(os.fsencode(suffix))
    return os.fsencode(file_name[: len(file_name) - len(suffix)])[:room].decode(errors="ignore") + suffix


def _rerun_photos(name: str, photos: list[str]) -> list[str]:
    """`photos` as config.yaml records them: absolute, and the subject's own folder of copies as the original photos
    its manifest records, where every one of them is still there (else the folder, which a rerun replacing the
    subject still reads)."""
    own, sources = _own_photos(name)
    rerun = []
    for given in photos:
        copies = sorted(Path(given).iterdir()) if Path(given).resolve() == own else []
        if copies and all(copy.name in sources and Path(sources[copy.name]).is_file() for copy in copies):
            rerun += [sources[copy.name] for copy in copies]
        else:
            rerun.append(absolute_path(given))
    return rerun


def _preview_prompt(run: _Run) -> str | None:
    """preview.prompt with the pseudo-word, as generate puts it in (a warning where it had to be inserted); None
    without one, or without a preview."""
    preview = run.cfg.preview
    if not (preview.enabled and preview.prompt):
        return None
    written_out = expand_placeholder(preview.prompt, run.token, run.num_vectors)  # 'S*_1' alone: refused, unwarned
    given, note = with_subject_token(written_out, run.token, run.class_noun, what="preview.prompt")
    if note:
        reporting.warn(note)
    return expand_placeholder(given, run.token, run.num_vectors)


def _render_preview(run: _Run, path: Path) -> str:
    """A contact sheet of one video of the learned subject (identity adapter included when trained)."""
    from vidbooth.data.video import save_contact_sheet
    from vidbooth.engine.sampling import sample_video

    preview, bb = run.cfg.preview, run.backbone
    # else the first caption ('a photo of S* dog'; nano's 'a S* cross standing still'), in words the base knows
    prompt = run.preview_prompt or run.captions()[0]
    generator = torch.Generator().manual_seed(run.cfg.runtime.seed)
    frames = sample_video(  # as generate samples it: not under training's autocast (fp16 even for the fp32 VAE)
        bb,
        prompt,
        description="preview (--no-preview skips it)",
        num_frames=preview.num_frames,
        height=run.size,  # the size the photos were learned at, as train-motion's preview: a --resolution lowered
        width=run.size,  # to fit time or memory had been drawn at the model's own size (512 on SD1.5)
        num_inference_steps=preview.num_inference_steps,
        guidance_scale=preview.guidance_scale,
        generator=generator,
        settings="preview",
    )[0]  # (F, H, W, 3)
    save_contact_sheet(frames, path)
    return path.name


def _manifest(run: _Run, photos: list[dict], preview: str | None, settings: dict) -> dict:
    cfg, bb = run.cfg, run.backbone
    stages = dict(run.existing.get("stages", {})) if run.existing else {}
    for stage, result in run.results.items():
        stages[stage] = {
            "steps": result.step,
            "final_loss": result.loss,
            "seconds": round(result.total_seconds, 2),
            "processes": run.accelerator.num_processes,
            "photos": run.photos.hashes,
        }
    return {
        "kind": KIND,
        "name": cfg.name,
        "token": run.token,
        "tokens": placeholder_tokens(run.token, run.num_vectors),
        "num_vectors": run.num_vectors,
        "class_noun": run.class_noun,
        "base": settings["backbone"]["base"],  # absolute when a local folder
        "base_fingerprint": bb.fingerprint,
        "image_fingerprint": bb.image_fingerprint,
        "family": bb.family,
        "vidbooth_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "paths": {  # "files" is the library's seal: {tensor file: sha256}
            "embeddings": EMBEDDINGS_FILE,
            "identity_adapter": ADAPTER_FILE if "identity" in run.stages else None,
            "preview": preview,
            "config": CONFIG_FILE,
        },
        "photos": photos,
        "stages": stages,
        "config": settings,  # as config.yaml holds them
    }
