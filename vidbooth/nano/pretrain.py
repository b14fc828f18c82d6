"""Pretrain nano on the procedural world: autoencoder, then tiny CLIP, then UNet; resumable and deterministic.

Every step draws its clips, noise, timesteps and dropout from seeds derived from (seed, stage, step), so a run
stopped and resumed from its checkpoint continues exactly as an uninterrupted one. Checkpoints hold weights and
AdamW moments in safetensors and the rest in state.json (see `vidbooth.nano.checkpoint`).
"""

from __future__ import annotations

import copy
import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidbooth.config.pretrain import PretrainConfig, check_run_folder, run_in_progress
from vidbooth.data.video import check_writable_dir
from vidbooth.engine.objective import sample_timesteps
from vidbooth.engine.positions import extra_input_channels, with_positions
from vidbooth.engine.train import StopRequests
from vidbooth.errors import Interrupted, UserError, not_the_inputs_fault, stopped
from vidbooth.fileio import disk_full, lock_beside, write_together
from vidbooth.nano import PACKAGED
from vidbooth.nano import checkpoint as ckpt
from vidbooth.nano.arch import STAGES
from vidbooth.nano.evaluation import eval_pairs, probe_backbone
from vidbooth.nano.model import (
    build_clip,
    build_unet,
    build_vae,
    check_export_folder,
    save_nano,
    scheduler_config,
)
from vidbooth.nano.world import make_split, sample_pretraining_batch
from vidbooth.reporting import info, progress

TEMPORAL = ("temp_convs", "temp_attentions", "transformer_in")
WARMUP_FRACTION = 0.05
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
"""A CLIPTokenizer folder holds one of these (vocab.json with merges.txt)."""
EXPORTED_PARTS = ("text_encoder", "image_encoder", "vae", "unet")
"""The folders of an exported model that --init-from loads weights from."""


@dataclass
class PretrainResult:
    run_dir: Path
    finished: bool
    """False when stopped by --max-minutes (resume to continue)."""
    steps: dict[str, int]
    curve: list[dict] = field(default_factory=list)
    model_dir: Path | None = None


@dataclass
class _Models:
    tokenizer: object
    vae: torch.nn.Module
    clip: torch.nn.Module
    unet: torch.nn.Module

    def denoiser(self) -> torch.nn.ModuleDict:
        """What the UNet stage trains and checkpoints: the UNet and the text tower (shared with `clip`)."""
        return torch.nn.ModuleDict({"unet": self.unet, "text_encoder": self.clip.text_model})

    def of(self, stage: str) -> torch.nn.Module:
        return {"autoencoder": self.vae, "clip": self.clip, "unet": self.denoiser()}[stage]


class _Run:
    """The run folder's state plus the wall clock: when to checkpoint and when to stop."""

    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.dir = Path(cfg.out)
        self.split = make_split(cfg.split_seed)
        self.started = time.monotonic()
        self.mark = self.started
        self.last_save = self.started
        state = ckpt.read_state(self.dir, STAGES)
        arch = asdict(cfg.arch)
        check_run_folder(self.dir, cfg.resume, state is not None)  # again, under the run's lock
        self.identity = _identity({"arch": arch, "seed": cfg.seed, "split_seed": cfg.split_seed,
                                   "linear_paths": cfg.linear_paths})
        if state is not None and _identity(state) != self.identity:
            raise UserError(
                f"{self.dir} was trained with other settings ({_identity_difference(_identity(state), self.identity)})"
                ": use the same ones, or a new --out"
            )
        self.state = state or {
            "arch": arch,
            "seed": cfg.seed,
            "split_seed": cfg.split_seed,
            "linear_paths": cfg.linear_paths,
            "steps": dict.fromkeys(STAGES, 0),
            "seconds": dict.fromkeys(STAGES, 0.0),
            "curve": [],
        }

    def world_batch(
        self, rng: np.random.Generator, batch: int, linear_only: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        """`batch` pretraining clips (B, F, H, W, 3) uint8 and their captions, from the recipe's world."""
        arch, paths = self.cfg.arch, self.cfg.linear_paths
        return sample_pretraining_batch(rng, batch, arch.num_frames, arch.size, self.split, paths, linear_only)

    def out_of_time(self) -> bool:
        return self.cfg.max_minutes > 0 and time.monotonic() - self.started > self.cfg.max_minutes * 60

    def due(self) -> bool:
        return time.monotonic() - self.last_save > self.cfg.checkpoint_minutes * 60

    def tick(self, stage: str) -> None:
        """Add the wall time since the last tick to `stage`."""
        now = time.monotonic()
        self.state["seconds"][stage] += now - self.mark
        self.mark = now

    def minutes(self, stage: str) -> float:
        return (self.state["seconds"][stage] + time.monotonic() - self.mark) / 60

    def save(self, stage: str, model: torch.nn.Module, optimizer, step: int) -> None:
        """Weights, optimizer moments, state and curve, written together (see `write_together`)."""
        self.tick(stage)
        state = copy.deepcopy(self.state)
        state["steps"][stage] = step
        if stage in state.get("fresh_moments", []):
            state["fresh_moments"].remove(stage)  # its moments are saved from now on
        try:
            write_together([
                ckpt.tensors_write(self.dir / f"{stage}.safetensors", model.state_dict(), step),
                ckpt.tensors_write(self.dir / f"{stage}.optim.safetensors", ckpt.optimizer_tensors(optimizer), step),
                *ckpt.state_writes(self.dir, state),
            ], self.dir / ckpt.JOURNAL_FILE)
        except OSError as exc:
            if not disk_full(exc):
                raise
            saved = (self.dir / ckpt.STATE_FILE).is_file()
            before = self.state.get("steps", {}).get(stage, 0) if saved else 0
            if before:
                kept, rerun = f" and the one of step {before} is kept", "with --resume to continue from it"
            elif saved:  # the stage's first: an earlier stage's checkpoint is what is kept
                kept, rerun = "", f"with --resume (the {stage} stage starts over)"
            else:
                kept, rerun = "", "(it starts over)"
            raise UserError(
                f"the disk is full: the {stage} checkpoint of step {step} was not saved{kept}; free space in "
                f"{self.dir}, then run the same command {rerun}"
            ) from exc
        self.state = state
        self.last_save = time.monotonic()


def _identity(record: dict) -> tuple:
    """What a run folder or exported model must share with the recipe to be continued (runs from before
    linear_paths and position_channels existed used random starts and no position channels)."""
    arch = copy.deepcopy(record.get("arch", record.get("architecture")))
    arch["unet"].setdefault("position_channels", 0)
    return (arch, record["seed"], record["split_seed"], record.get("linear_paths", "random"))


def _identity_difference(then: tuple, now: tuple) -> str:
    """What differs between two `_identity`s, as 'seed 0 there, 5 here' ('arch.unet.channels ...' for the arch)."""
    names = ("arch", "seed", "split_seed", "linear_paths")
    parts = []
    for name, old, new in zip(names, then, now):
        if name == "arch":
            old_arch, new_arch = _flat(old), _flat(new)
            parts += [f"arch.{key} {old_arch.get(key)} there, {new_arch.get(key)} here"
                      for key in dict.fromkeys([*old_arch, *new_arch]) if old_arch.get(key) != new_arch.get(key)]
        elif old != new:
            parts.append(f"{name} {old} there, {new} here")
    return "; ".join(parts)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def step_seed(seed: int, stage: str, step: int) -> int:
    return int(np.random.SeedSequence([seed, STAGES.index(stage), step]).generate_state(1)[0])


def load_tokenizer(source: str, max_length: int):
    from transformers import CLIPTokenizer

    from vidbooth.nano.tokenizer import build_clip_tokenizer

    if source.endswith(".whl"):
        return build_clip_tokenizer(source, max_length)
    folder = PACKAGED / "tokenizer" if source == "nano" else Path(source)
    fix = "give 'nano', a CLIPTokenizer folder or an open-clip-torch wheel (.whl)"
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):  # an empty folder loads as 2 tokens
        raise UserError(f"tokenizer '{source}' not found (no {' or '.join(TOKENIZER_FILES)} in it): {fix}")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    except Exception as exc:  # the tokenizers library's own errors are plain Exceptions
        not_the_inputs_fault(exc)
        raise UserError(f"tokenizer '{source}' cannot be read ({str(exc).splitlines()[0]}): {fix}") from exc
    tokenizer.model_max_length = max_length
    return tokenizer


def pixels(images: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float() / 127.5 - 1.0


def autoencoder_loss(
    vae, frames: torch.Tensor, generator: torch.Generator, kl_weight: float, sprite_weight: float
) -> torch.Tensor:
    """Reconstruction MSE of frames (N, 3, H, W) through a sampled latent, plus a small KL term.

    Pixels weigh 1 + sprite_weight * chroma (0 for grey, 1 for pure colour): the world's sprites are saturated
    and its backgrounds nearly grey, so the few sprite pixels are not drowned by the background's many.
    """
    posterior = vae.encode(frames).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    chroma = (frames.amax(dim=1, keepdim=True) - frames.amin(dim=1, keepdim=True)) / 2  # (N, 1, H, W) in [0, 1]
    weights = 1.0 + sprite_weight * chroma
    return (weights * (recon - frames) ** 2).mean() / weights.mean() + kl_weight * posterior.kl().mean()


def clip_loss(
    clip, tokenizer, frames: torch.Tensor, captions: list[str], caption_word_weight: float = 0.0
) -> torch.Tensor:
    """Symmetric contrastive loss of frames (B, 3, H, W) against their captions; equal captions share the target.

    Plus `caption_word_weight` x `caption_word_loss`, from the same forward pass of the text tower.
    """
    ids = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
    out = clip(input_ids=ids, pixel_values=frames)
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    targets = same / same.sum(1, keepdim=True)
    loss = (F.cross_entropy(out.logits_per_image, targets) + F.cross_entropy(out.logits_per_text, targets)) / 2
    if caption_word_weight:
        hidden = out.text_model_output.last_hidden_state
        loss = loss + caption_word_weight * caption_word_loss(clip.text_model, ids, hidden)
    return loss


def caption_word_loss(text_model, input_ids: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Recover each caption's words from its end-of-text state, read out through the tower's own token table.

    Cross-entropy against a uniform target over the caption's tokens (between start and end of text). A frame
    cannot show motion, so the contrastive loss alone leaves motion words nearly identical in the tower
    (docs/nano.md); this term keeps every word of the caption apart at the state the later tokens copy.
    `hidden` is the tower's last hidden state (B, L, D) for `input_ids` when the caller already has it.
    """
    if hidden is None:
        hidden = text_model(input_ids).last_hidden_state  # final layer norm applied
    end = (input_ids == text_model.config.eos_token_id).int().argmax(dim=1)  # the first end-of-text token
    logits = hidden[torch.arange(len(input_ids)), end] @ text_model.embeddings.token_embedding.weight.T  # (B, V)
    positions = torch.arange(input_ids.shape[1])[None]
    words = (positions > 0) & (positions < end[:, None])
    targets = torch.zeros_like(logits).scatter_add_(1, input_ids, words.float())
    return F.cross_entropy(logits, targets / targets.sum(dim=1, keepdim=True).clamp(min=1))


def encode_clips(vae, text_model, tokenizer, videos: np.ndarray, captions: list[str]):
    """Scaled VAE latents (B, C, F, h, w) of uint8 videos (B, F, H, W, 3) and text embeddings (B, L, D).

    The text embeddings carry gradients when the text tower's parameters require them.
    """
    batch, frames = videos.shape[:2]
    with torch.no_grad():
        latents = vae.encode(pixels(videos).flatten(0, 1)).latent_dist.mean * vae.config.scaling_factor
    ids = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
    return latents.unflatten(0, (batch, frames)).transpose(1, 2), text_model(ids)[0]


def unet_loss(
    unet,
    noise_schedule,
    latents: torch.Tensor,
    text: torch.Tensor,
    generator: torch.Generator,
    motion_weight: float,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """x0-prediction MSE (prediction_type 'sample') at `timesteps` (default: uniform), plus `motion_weight` x the
    MSE of the frame-to-frame differences. The world's backgrounds are static, so those differences are the
    sprite's motion; the extra term has the same minimiser (the differences of the conditional mean), it only
    weighs motion more.
    """
    total = noise_schedule.config.num_train_timesteps
    if timesteps is None:
        timesteps = sample_timesteps(latents.shape[0], total, generator)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = noise_schedule.add_noise(latents, noise, timesteps)
    unet_input = with_positions(noisy, extra_input_channels(unet, latents.shape[1]))
    prediction = unet(unet_input, timesteps, encoder_hidden_states=text).sample  # (B, C, F, h, w)
    loss = F.mse_loss(prediction, latents)
    if motion_weight:
        loss = loss + motion_weight * F.mse_loss(prediction.diff(dim=2), latents.diff(dim=2))
    return loss


def _lr_factor(step: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then constant."""
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def _adopt_model(run: _Run, source: str, tokenizer) -> None:
    """Fill a new run folder from an exported nano model: stage weights, steps, minutes, curve, VAE scaling."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    from vidbooth.engine.backbone import check_complete

    folder = PACKAGED if source == "nano" else Path(source)
    provenance = _read_provenance(folder)
    if _identity(provenance) != run.identity:
        raise UserError(f"{folder} was trained with other settings than this run's "
                        f"({_identity_difference(_identity(provenance), run.identity)}): continue it with those")
    for stage in STAGES[:-1]:  # before anything is written (the run folder would then refuse a corrected rerun)
        done, asked = provenance["steps"][stage], getattr(run.cfg, stage).steps
        if asked > done and any(provenance["steps"][later] for later in STAGES[STAGES.index(stage) + 1:]):
            raise UserError(f"with --init-from {source}, {stage}.steps must be at most {done}, where it stopped "
                            f"before its later stages began, got {asked}")
    for part in EXPORTED_PARTS:  # a path that is no folder is taken for a hub id: not asked of the hub
        if not (folder / part).is_dir():
            raise UserError(f"{folder} is not a complete nano export (no {part}/): check --init-from, or export the "
                            "model again")
    clip = build_clip(run.cfg.arch, tokenizer)  # the text projection stays fresh: the CLIP stage is done
    try:
        text_model = CLIPTextModel.from_pretrained(folder / "text_encoder")
        _check_vocabulary(text_model.config.vocab_size, run.cfg.tokenizer, tokenizer, folder)
        clip.text_model.load_state_dict(text_model.state_dict())
        image = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder")
        clip.vision_model.load_state_dict(image.vision_model.state_dict())
        clip.visual_projection.load_state_dict(image.visual_projection.state_dict())
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        unet = UNet3DConditionModel.from_pretrained(folder / "unet")
        for module in (vae, unet):
            check_complete(module, f"its {type(module).__name__}")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        not_the_inputs_fault(exc)
        raise UserError(f"{folder} cannot be loaded (damaged or edited: {str(exc).splitlines()[0]}): check "
                        "--init-from, or export the model again") from exc
    if "logit_scale" in provenance:  # the learned temperature, kept so that the new export reports it too
        clip.logit_scale.data.fill_(float(np.log(provenance["logit_scale"])))
    denoiser = _Models(tokenizer, vae, clip, unet).denoiser()
    run.dir.mkdir(parents=True, exist_ok=True)  # only now: a bad --init-from leaves no run folder behind
    for stage, model in (("autoencoder", vae), ("clip", clip), ("unet", denoiser)):
        tensors = {k: v.float() for k, v in model.state_dict().items()}
        ckpt.save_tensors(run.dir / f"{stage}.safetensors", tensors, provenance["steps"][stage])
    run.state.update(
        steps=provenance["steps"],
        seconds={stage: minutes * 60 for stage, minutes in provenance["minutes"].items()},
        curve=provenance["curve"],
        vae_scaling_factor=vae.config.scaling_factor,
        fresh_moments=list(STAGES),  # an exported model has no optimizer moments: a continued stage starts them anew
    )
    ckpt.write_state(run.dir, run.state)


def _check_vocabulary(tokens: int, source: str, tokenizer, trained: Path) -> None:
    """Refuse weights whose token table (`tokens` rows) is not the tokenizer's: they would not load, and a
    checkpoint that does not fit is otherwise told as damaged (to be deleted)."""
    if tokens != len(tokenizer):
        raise UserError(f"{trained} was trained with a tokenizer of {tokens} tokens, but tokenizer '{source}' has "
                        f"{len(tokenizer)}: give the one it was trained with (--set tokenizer=...)")


def _check_checkpoint_vocabulary(weights: Path, model: torch.nn.Module, table: str, source: str, tokenizer) -> None:
    """`_check_vocabulary` of a checkpoint whose tensors all fit `model` but its token `table`."""
    saved = ckpt.tensor_shapes(weights)
    expected = {key: list(tensor.shape) for key, tensor in model.state_dict().items()}
    if table in saved and saved | {table: expected.get(table)} == expected:
        _check_vocabulary(saved[table][0], source, tokenizer, weights)


def _read_provenance(folder: Path) -> dict:
    """The nano.json of the exported model in `folder`, refused in one line unless it holds what --init-from takes."""
    try:
        provenance = json.loads((folder / "nano.json").read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"{folder} is not an exported nano model (no readable nano.json): check --init-from") from exc
    if not ckpt.provenance_shape(provenance, STAGES):
        raise UserError(f"{folder}/nano.json is damaged (its settings, step counts, minutes or curve are missing or of "
                        "another kind): check --init-from, or export the model again")
    return provenance


def _build(cfg: PretrainConfig, run: _Run) -> _Models:
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.tokenizer, cfg.arch.clip.max_length)
    if cfg.init_from:
        _adopt_model(run, cfg.init_from, tokenizer)
    models = _Models(tokenizer, build_vae(cfg.arch), build_clip(cfg.arch, tokenizer), build_unet(cfg.arch))
    for stage, text_model in (("clip", "text_model"), ("unet", "text_encoder")):
        if run.state["steps"][stage]:
            _check_checkpoint_vocabulary(run.dir / f"{stage}.safetensors", models.of(stage),
                                         f"{text_model}.embeddings.token_embedding.weight", cfg.tokenizer, tokenizer)
    for stage in STAGES:
        if run.state["steps"][stage]:
            ckpt.restore(run.dir / f"{stage}.safetensors", run.state["steps"][stage], models.of(stage).load_state_dict)
    if "vae_scaling_factor" in run.state:
        models.vae.register_to_config(scaling_factor=run.state["vae_scaling_factor"])
    run.dir.mkdir(parents=True, exist_ok=True)
    return models


def _loop(
    run: _Run,
    stage: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    total: int,
    warmup: int,
    loss_at: Callable[[int, np.random.Generator, torch.Generator], torch.Tensor],
    after_step: Callable[[int, float], bool] | None = None,
) -> bool:
    """Train `stage` from its recorded step to `total`; False when stopped by the time limit.

    `after_step(steps_done, loss)` returning True (it evaluated) forces a checkpoint, so weights match the curve.
    """
    start = run.state["steps"][stage]
    if start and stage not in run.state.get("fresh_moments", []):
        ckpt.restore(run.dir / f"{stage}.optim.safetensors", start,
                     lambda tensors: ckpt.load_optimizer_tensors(optimizer, tensors))
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    model.train()
    loss_value = float("nan")
    with StopRequests() as stop, progress(stage, total=total, completed=start) as bar:
        for step in range(start, total):
            seed = step_seed(run.cfg.seed, stage, step)
            torch.manual_seed(seed)
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * _lr_factor(step, warmup)
            loss = loss_at(step, np.random.default_rng(seed), torch.Generator().manual_seed(seed))
            if not torch.isfinite(loss):
                again = "rerun with --resume" if (run.dir / ckpt.STATE_FILE).is_file() else "run it again"
                raise UserError(f"{stage} loss became {loss.item()} at step {step}: lower the learning rate (--set "
                                f"{stage}.lr=N) and {again}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
            bar.advance(loss=loss_value)
            evaluated = after_step is not None and after_step(step + 1, loss_value)
            if evaluated or stop.signum or run.due() or run.out_of_time() or step + 1 == total:
                run.save(stage, model, optimizer, step + 1)
            if stop.signum:
                name = signal.Signals(stop.signum).name
                raise stopped(
                    stop.signum,
                    f"pretraining stopped by {name} at {stage} step {step + 1}; checkpoint saved in {run.dir}: "
                    f"{_to_continue(run.cfg)}",
                )
            if run.out_of_time() and step + 1 < total:
                return False
    run.state["last_loss"] = dict(run.state.get("last_loss", {}), **{stage: loss_value})
    return True


def _later_stage_started(run: _Run, stage: str) -> bool:
    return any(run.state["steps"][s] for s in STAGES[STAGES.index(stage) + 1 :])


def _autoencoder_stage(run: _Run, models: _Models) -> bool:
    cfg, arch, vae = run.cfg.autoencoder, run.cfg.arch, models.vae
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)

    def loss_at(step, rng, generator):
        videos, _ = run.world_batch(rng, cfg.batch)
        picks = rng.integers(arch.num_frames, size=(cfg.batch, 2))
        frames = pixels(np.stack([videos[i, picks[i]] for i in range(cfg.batch)])).flatten(0, 1)  # (2B, 3, H, W)
        return autoencoder_loss(vae, frames, generator, cfg.kl_weight, cfg.sprite_weight)

    return _loop(run, "autoencoder", vae, optimizer, cfg.steps, int(cfg.steps * WARMUP_FRACTION), loss_at)


@torch.no_grad()
def _scaling_factor(run: _Run, vae) -> float:
    """1 / std of the latents of a fixed batch of frames, so that latents have unit variance (as SD's 0.18215)."""
    videos, _ = run.world_batch(np.random.default_rng(run.cfg.seed), 16)
    vae.eval()
    latents = vae.encode(pixels(videos).flatten(0, 1)).latent_dist.mean
    return float(1.0 / latents.std())


def _clip_stage(run: _Run, models: _Models) -> bool:
    cfg, arch, clip = run.cfg.clip, run.cfg.arch, models.clip
    optimizer = torch.optim.AdamW(clip.parameters(), lr=cfg.lr, weight_decay=0.0)

    def loss_at(step, rng, generator):
        videos, captions = run.world_batch(rng, cfg.batch)
        frames = pixels(videos[np.arange(cfg.batch), rng.integers(arch.num_frames, size=cfg.batch)])  # (B, 3, H, W)
        return clip_loss(clip, models.tokenizer, frames, captions, cfg.caption_word_weight)

    return _loop(run, "clip", clip, optimizer, cfg.steps, int(cfg.steps * WARMUP_FRACTION), loss_at)


def eval_backbone(models: _Models):
    """The models being trained as a `Backbone`, so that the shared sampling loop generates with them."""
    from vidbooth.engine.backbone import Backbone

    return Backbone(
        family="unet3d",
        source="nano-pretraining",
        tokenizer=models.tokenizer,
        text_encoder=models.clip.text_model,
        vae=models.vae,
        unet=models.unet,
        scheduler_config=scheduler_config(),
        fingerprint="",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def _evaluate(run: _Run, models: _Models, step: int, loss: float) -> None:
    cfg = run.cfg.unet
    models.unet.eval()
    pairs = eval_pairs(run.split, cfg.eval_prompts)
    with torch.no_grad():
        scores = probe_backbone(
            eval_backbone(models), pairs, run.cfg.arch.num_frames, cfg.eval_inference_steps, cfg.eval_guidance_scale
        )
    models.unet.train()
    row = {"unet_step": step, "unet_minutes": round(run.minutes("unet"), 2), "loss": round(loss, 5), **scores}
    run.state["curve"] = [r for r in run.state["curve"] if r["unet_step"] != step] + [row]
    info(
        f"probe at unet step {step} ({row['unet_minutes']:.1f} min): colour {scores['colour']:.0%}, "
        f"shape {scores['shape']:.0%}, motion {scores['motion']:.0%}, direction {scores['direction']:.0%} "
        f"over {scores['prompts']} held-out prompt{'' if scores['prompts'] == 1 else 's'}"
    )


def _unet_stage(run: _Run, models: _Models) -> bool:
    from diffusers import DDPMScheduler

    cfg, unet = run.cfg.unet, models.unet
    for module in (models.vae, models.clip):
        module.requires_grad_(False).eval()
    text_model = models.clip.text_model
    text_model.requires_grad_(cfg.text_encoder_lr > 0)
    noise_schedule = DDPMScheduler.from_config(scheduler_config())
    total_timesteps = noise_schedule.config.num_train_timesteps
    temporal = [p for n, p in unet.named_parameters() if any(t in n.split(".") for t in TEMPORAL)]
    temporal_ids = {id(p) for p in temporal}
    spatial = [p for p in unet.parameters() if id(p) not in temporal_ids]
    groups = [{"params": spatial, "lr": cfg.lr}, {"params": temporal, "lr": cfg.lr * cfg.temporal_lr_scale}]
    if cfg.text_encoder_lr > 0:
        groups.append({"params": list(text_model.parameters()), "lr": cfg.text_encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    last = cfg.path_phases[-1] if cfg.path_phases else None
    replay_from = last.start + last.steps if last else cfg.steps  # path_replay needs a phase (checked)

    def loss_at(step, rng, generator):
        # A high_noise_fraction of the clips get a timestep in [high_noise_from, T): that is where a trajectory
        # is decided (noised to t=799 and denoised, a clip keeps its motion; from t=899 it does not). The path
        # phases put every clip there, and path_replay clips of each batch after the last stay on it.
        on_paths = any(phase.start <= step < phase.start + phase.steps for phase in cfg.path_phases)
        replay = cfg.path_replay if step >= replay_from else 0
        videos, captions = run.world_batch(rng, cfg.batch - replay, linear_only=on_paths)
        if replay:
            path_videos, path_captions = run.world_batch(rng, replay, linear_only=True)
            videos, captions = np.concatenate([videos, path_videos]), captions + path_captions
        captions = ["" if drop else c for c, drop in zip(captions, rng.random(cfg.batch) < cfg.caption_dropout)]
        latents, text = encode_clips(models.vae, models.clip.text_model, models.tokenizer, videos, captions)
        high_noise = (1.0, cfg.path_from) if on_paths else (cfg.high_noise_fraction, cfg.high_noise_from)
        timesteps = sample_timesteps(cfg.batch, total_timesteps, generator, *high_noise)  # the stream without replay
        if replay:
            timesteps[-replay:] = sample_timesteps(replay, total_timesteps, generator, 1.0, cfg.path_from)
        return unet_loss(unet, noise_schedule, latents, text, generator, cfg.motion_loss_weight, timesteps)

    def after_step(step: int, loss: float) -> bool:
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            _evaluate(run, models, step, loss)
            return True
        return False

    return _loop(run, "unet", models.denoiser(), optimizer, cfg.steps, cfg.warmup_steps, loss_at, after_step)


def _to_continue(cfg: PretrainConfig) -> str:
    """How to continue a stopped run: --resume, in place of the --init-from that started it."""
    if cfg.init_from:
        return "rerun the same command with --resume in place of --init-from to continue"
    return "rerun the same command with --resume to continue"


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Run (or resume) the stages in order and export the model when all are done."""
    from vidbooth.engine.backbone import quiet_libraries

    cfg.check()
    run_dir = Path(cfg.out)
    check_writable_dir(run_dir)  # before hours of training, not after
    check_export_folder(run_dir / "model", "the run's model folder")
    if cfg.export:
        check_export_folder(cfg.export)
    quiet_libraries()

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with lock_beside(run_dir, run_in_progress(run_dir)):
            if run_dir.is_dir() and ckpt.finish_stopped_save(run_dir):
                info(f"finished saving the checkpoint that a stopped run was writing in {run_dir}")
            return _pretrain(cfg)
    finally:
        torch.set_num_threads(threads)  # the caller's (a script's, a notebook's) again


def _pretrain(cfg: PretrainConfig) -> PretrainResult:
    run = _Run(cfg)
    models = _build(cfg, run)
    stage_fns = {"autoencoder": _autoencoder_stage, "clip": _clip_stage, "unet": _unet_stage}
    for stage in STAGES:
        total = getattr(cfg, stage).steps
        if run.state["steps"][stage] < total:
            if _later_stage_started(run, stage):
                raise UserError(f"{stage}.steps was raised to {total} after a later stage began: use a new --out")
            run.mark = time.monotonic()
            if not stage_fns[stage](run, models):
                info(
                    f"stopped after {cfg.max_minutes:g} minutes at {stage} step {run.state['steps'][stage]}: "
                    f"{_to_continue(cfg)}"
                )
                model_dir = _export(run, models) if run.state["steps"]["unet"] else None  # the weights so far
                return PretrainResult(run.dir, False, dict(run.state["steps"]), run.state["curve"], model_dir)
            ckpt.write_state(run.dir, run.state)
        if stage == "autoencoder" and "vae_scaling_factor" not in run.state:
            # here, not at the stage's end: a run stopped right after its last autoencoder step comes back here
            run.state["vae_scaling_factor"] = _scaling_factor(run, models.vae)
            models.vae.register_to_config(scaling_factor=run.state["vae_scaling_factor"])
            ckpt.write_state(run.dir, run.state)
    model_dir = _export(run, models)
    return PretrainResult(run.dir, True, dict(run.state["steps"]), run.state["curve"], model_dir)


def _export(run: _Run, models: _Models) -> Path:
    """`export`, where a stop while it writes says that the training is saved and how to have the model written."""
    try:
        return export(run, models)
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.exit_code - 128 if isinstance(exc, Interrupted) else signal.SIGINT
        raise stopped(signum, f"pretraining stopped by {signal.Signals(signum).name} while writing its model; its "
                              f"training is saved in {run.dir}: {_to_continue(run.cfg)}") from exc


def export(run: _Run, models: _Models) -> Path:
    provenance = {
        "seed": run.cfg.seed,
        "split_seed": run.cfg.split_seed,
        "linear_paths": run.cfg.linear_paths,
        "steps": run.state["steps"],
        "minutes": {k: round(v / 60, 1) for k, v in run.state["seconds"].items()},
        "logit_scale": models.clip.logit_scale.exp().item(),
        "curve": run.state["curve"],
    }
    parts = (run.cfg.arch, models.tokenizer, models.vae, models.clip, models.unet, provenance)
    folder = save_nano(run.dir / "model", *parts)
    if run.cfg.export:
        save_nano(run.cfg.export, *parts)
    info(f"nano model written to {folder}" + (f" and {run.cfg.export}" if run.cfg.export else ""))
    return folder
