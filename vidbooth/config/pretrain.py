"""`PretrainConfig`: everything `vidbooth pretrain` runs with (recipe: recipes/nano/pretrain.yaml).

Three stages run in order, each resumable: the autoencoder (the VAE), the tiny CLIP, then the UNet.
`steps` of a stage may be raised on `--resume` to train longer, as long as no later stage has begun.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from vidbooth.config import checks
from vidbooth.config.train import MAX_BATCH_SIZE
from vidbooth.errors import UserError
from vidbooth.fileio import expand_user, lock_file_beside, refuse_if_held
from vidbooth.nano.arch import JOURNAL_FILE, LINEAR_PATHS, POSITION_CHANNELS, STAGES, STATE_FILE, NanoArch


@dataclass
class AutoencoderStage:
    steps: int = 900
    batch: int = 8
    """Clips per step; two random frames of each are reconstructed."""
    lr: float = 2e-3
    kl_weight: float = 1e-6
    sprite_weight: float = 8.0
    """Extra loss weight per unit of pixel chroma (see `autoencoder_loss`); 300 plain-MSE steps lost sprite hues."""


@dataclass
class ClipStage:
    steps: int = 300
    batch: int = 64
    """Clips per step; one random frame of each is paired with its caption."""
    lr: float = 2e-3
    caption_word_weight: float = 0.0
    """Weight of recovering each caption's words from its end-of-text state (`caption_word_loss`); 0: off."""


@dataclass
class PathPhase:
    """UNet steps start .. start + steps - 1 train on linear motions only, every clip at t >= unet.path_from."""

    start: int = 0
    steps: int = 0


@dataclass
class UNetStage:
    steps: int = 6000
    batch: int = 8
    lr: float = 1e-3
    temporal_lr_scale: float = 1.5
    """Learning-rate multiplier for the temporal layers (temporal convolutions and temporal transformers)."""
    motion_loss_weight: float = 3.0
    """Weight of the frame-difference term of the UNet loss (see `vidbooth.nano.pretrain.unet_loss`)."""
    text_encoder_lr: float = 0.0
    """Learning rate of the text tower, trained with the UNet (0: frozen). The CLIP stage sees single frames, so
    it leaves motion words nearly indistinguishable (docs/nano.md, "Training further")."""
    high_noise_fraction: float = 0.0
    """Fraction of clips trained at a timestep drawn from [high_noise_from, 1000) instead of [0, 1000)."""
    high_noise_from: int = 600
    path_phases: list[PathPhase] = field(default_factory=list)
    """Path phases, in order: their steps train on linear motions only, all at a timestep in [path_from, 1000),
    where a sample's path is chosen. Trained on every motion and timestep throughout, nano's UNet never learnt to
    choose the path from the direction word (docs/nano.md, "Training further"); empty: none."""
    path_from: int = 990
    path_replay: int = 0
    """After the last path phase, this many clips of each batch stay on it (linear motions at t >= path_from),
    so the ordinary steps that follow do not wash the word-chosen paths out again; 0: off."""
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    """Chance of training on the empty prompt, so that classifier-free guidance works."""
    eval_every: int = 300
    """Generate the evaluation prompts and probe them every this many steps (0: only at the end)."""
    eval_prompts: int = 50
    """Held-out prompts (the split's validation pairs: known sprites and motions in unseen combinations)."""
    eval_inference_steps: int = 10
    eval_guidance_scale: float = 4.0


def run_in_progress(run: Path) -> Callable[[str], str]:
    """What a pretrain is told of `run` while another process holds its lock (pid `owner`)."""
    return lambda owner: f"another pretrain (pid {owner}) is writing {run}: wait for it to end, or give another --out"


def check_run_folder(run: Path, resume: bool, holds_a_run: bool) -> None:
    """A UserError for a run folder that holds a run without --resume, or none with it. Checked before torch loads
    (a checkpoint's journal alone counts: a save killed midway) and again under the run's lock, once that journal
    is finished (one cut short leaves nothing; another run may have begun). Stage checkpoints without state.json
    are refused either way: a new run would overwrite them."""
    # the stages' own: not another model kept in the folder (an image prompt's)
    checkpoints = [path for stage in STAGES for name in (stage, f"{stage}.optim")
                   if (path := run / f"{name}.safetensors").is_file()]
    if checkpoints and not holds_a_run:
        raise UserError(f"{run} holds checkpoints but no {STATE_FILE}: put it back and pass --resume, or delete the "
                        "run folder (or give another --out) to start over")
    if holds_a_run and not resume:
        raise UserError(f"{run} already holds a pretraining run: pass --resume to continue, or another --out")
    if resume and not holds_a_run:
        raise UserError(f"nothing to resume in {run}: run without --resume to start")


@dataclass
class PretrainConfig:
    SETTINGS_NAME: ClassVar[str] = "pretrain"
    """The command's name for its settings: docs/<name>.md lists them, recipes/<model>/<name>.yaml are shipped."""
    arch: NanoArch = field(default_factory=NanoArch)
    autoencoder: AutoencoderStage = field(default_factory=AutoencoderStage)
    clip: ClipStage = field(default_factory=ClipStage)
    unet: UNetStage = field(default_factory=UNetStage)
    seed: int = 0
    """Seeds the initial weights and every step's data and noise (a resumed run continues the same stream)."""
    split_seed: int = 0
    """The world's held-out split (vidbooth.nano.world.make_split); recorded in the model's nano.json."""
    linear_paths: str = "random"
    """How the world lays out linear motions: 'random' starts or 'edge' to edge, so the word fixes the path."""
    tokenizer: str = "nano"
    """'nano' (the packaged model's tokenizer/), a CLIPTokenizer folder, or an open-clip-torch wheel (.whl)."""
    out: str = "runs/nano"
    """Run folder: checkpoints (safetensors), state.json, curve.csv, and the exported model in model/."""
    export: str = ""
    """Also write the finished diffusers-layout model here (e.g. vidbooth/assets/nano)."""
    resume: bool = False
    """Continue the run in `out` from its last checkpoint."""
    init_from: str = ""
    """Start a new run in `out` from an exported nano model ('nano': the packaged one) at its recorded steps:
    its weights, fresh AdamW moments, the same seeds, so the data stream continues where it stopped."""
    max_minutes: float = 0.0
    """Stop (after a checkpoint) once this much wall time has passed; 0: no limit."""
    checkpoint_minutes: float = 5.0
    threads: int = 1
    """torch CPU threads."""

    def __post_init__(self) -> None:  # as the config is loaded: a recipe's or a --set's empty out is told as theirs
        checks.not_empty("out", self.out, "--out", "the run folder (default: runs/nano)",
                         "--out is empty: give the run folder (default: runs/nano)")
        # an empty one had been looked for in the current folder, once torch had loaded
        checks.not_empty("tokenizer", self.tokenizer, None, "nano, a CLIPTokenizer folder or an open-clip-torch "
                         "wheel (.whl)")

    def check(self, out_given: str | None = None) -> None:
        """Raise a UserError naming the first bad value by its key (and flag, where it has one). `out_given`: how
        the message names the out that gave the run folder (`given_by`'s 'out: X in recipe PATH'; else --out's)."""
        if self.init_from and self.resume:  # first: the run folder's checks would tell of the folder instead
            raise UserError("give --init-from to start a run from a model, or --resume to continue a run, not both")
        self.out = str(expand_user(self.out))  # '~/runs' is the home folder's, as elsewhere
        self.export = str(expand_user(self.export)) if self.export.strip() else ""
        if expand_user(self.out).exists() and not expand_user(self.out).is_dir():
            raise UserError(f"{out_given or f'--out {self.out}'} is a file: give the run folder (default: runs/nano)")
        run = Path(self.out)
        refuse_if_held(lock_file_beside(run), run_in_progress(run))  # not 'nothing to resume' (no checkpoint yet)
        check_run_folder(run, self.resume, (run / STATE_FILE).is_file() or (run / JOURNAL_FILE).is_file())
        if self.export.strip():
            run, export = (expand_user(p).resolve() for p in (self.out, self.export))
            if run == export or run in export.parents or export in run.parents:  # found after training, or the
                raise UserError(  # export, which replaces its folder whole, would take the run with it
                    f"--export {self.export} and --out {self.out} overlap: export to a folder outside the run folder "
                    "(the run keeps its own copy of the model in <out>/model)")
        checks.non_negative("max_minutes", self.max_minutes, "--max-minutes", hint=" (0: no limit)")
        checks.at_least("threads", self.threads, 1, "--threads")
        checks.seed("seed", self.seed)
        checks.seed("split_seed", self.split_seed, flag=None)
        checks.positive("checkpoint_minutes", self.checkpoint_minutes)
        for name, stage in (("autoencoder", self.autoencoder), ("clip", self.clip), ("unet", self.unet)):
            checks.at_least(f"{name}.steps", stage.steps, 0)
            checks.at_least(f"{name}.batch", stage.batch, 1)
            checks.at_most(f"{name}.batch", stage.batch, MAX_BATCH_SIZE)  # one forward: a typo would exhaust memory
            checks.positive(f"{name}.lr", stage.lr)
        for key in ("warmup_steps", "eval_every"):
            checks.at_least(f"unet.{key}", getattr(self.unet, key), 0)
        checks.at_least("unet.eval_prompts", self.unet.eval_prompts, 1)
        checks.at_least("unet.eval_inference_steps", self.unet.eval_inference_steps, 1)
        checks.non_negative("unet.eval_guidance_scale", self.unet.eval_guidance_scale)
        _check_arch(self.arch)
        if not 0 <= self.unet.high_noise_fraction <= 1:
            raise UserError(f"unet.high_noise_fraction must be in [0, 1], got {self.unet.high_noise_fraction}")
        if not 0 <= self.unet.high_noise_from < 1000:
            raise UserError(f"unet.high_noise_from must be in [0, 1000), got {self.unet.high_noise_from}")
        unet = self.unet
        if not 0 <= unet.path_from < 1000:
            raise UserError(f"unet.path_from must be in [0, 1000), got {unet.path_from}")
        previous_end = 0
        for phase in unet.path_phases:
            if phase.start < previous_end or phase.steps < 1:
                raise UserError(
                    f"unet.path_phases: each phase needs steps >= 1 and must start at or after the end of the one "
                    f"before (step {previous_end}), got start {phase.start}, steps {phase.steps}"
                )
            if phase.start >= unet.steps:
                raise UserError(
                    f"unet.path_phases: a phase starts at step {phase.start}, past the last UNet step ({unet.steps}), "
                    "so it would never run: lower its start or raise unet.steps"
                )
            previous_end = phase.start + phase.steps
        if unet.path_replay and not (unet.path_phases and 0 < unet.path_replay < unet.batch):
            raise UserError(
                f"unet.path_replay {unet.path_replay} must be below unet.batch ({unet.batch}) and needs a path phase "
                "(unet.path_phases); set it to 0 to turn replay off"
            )
        # NaN passed a `< 0` test: a NaN text-tower rate froze the tower, a NaN weight failed at the first step
        checks.non_negative("unet.text_encoder_lr", self.unet.text_encoder_lr, hint=" (0 freezes the text tower)")
        checks.non_negative("clip.caption_word_weight", self.clip.caption_word_weight, hint=" (0 turns it off)")
        for key in ("unet.temporal_lr_scale", "unet.motion_loss_weight", "autoencoder.kl_weight",
                    "autoencoder.sprite_weight"):
            section, name = key.split(".")
            checks.non_negative(key, getattr(getattr(self, section), name))
        if not 0 <= self.unet.caption_dropout < 1:
            raise UserError(f"unet.caption_dropout must be in [0, 1), got {self.unet.caption_dropout}")
        if self.arch.unet.position_channels not in (0, POSITION_CHANNELS):
            channels = self.arch.unet.position_channels
            raise UserError(f"arch.unet.position_channels must be 0 or {POSITION_CHANNELS}, got {channels}")
        if self.linear_paths not in LINEAR_PATHS:
            raise UserError(f"linear_paths must be one of {', '.join(LINEAR_PATHS)}, got '{self.linear_paths}'")


MAX_SIDE = 1024
"""The largest frame side pretraining takes: a typo (4096) would fail in memory after setup."""


def _check_arch(arch) -> None:
    """The model shapes, before any model is built: a bad one failed inside diffusers or transformers with their
    traceback, or (a size the UNet cannot halve) at the first evaluation, after every stage before it had run."""
    vae, clip, unet = arch.vae, arch.clip, arch.unet
    for key, channels, groups in (("vae", vae.block_out_channels, vae.norm_num_groups),
                                  ("unet", unet.block_out_channels, unet.norm_num_groups)):
        if not channels or min(channels) < 1:
            raise UserError(f"arch.{key}.block_out_channels must list one or more channel counts, got {list(channels)}")
        checks.at_least(f"arch.{key}.norm_num_groups", groups, 1)
        if any(count % groups for count in channels):
            raise UserError(f"arch.{key}.norm_num_groups {groups} must divide every arch.{key}.block_out_channels "
                            f"entry, got {list(channels)}")
    for key in ("vae.latent_channels", "vae.layers_per_block", "clip.hidden_size", "clip.intermediate_size",
                "clip.text_layers", "clip.vision_layers", "clip.heads", "clip.patch_size", "clip.projection_dim",
                "unet.layers_per_block", "unet.attention_heads"):
        section, name = key.split(".")
        checks.at_least(f"arch.{key}", getattr(getattr(arch, section), name), 1)
    checks.at_least("arch.clip.max_length", clip.max_length, 2)
    if clip.hidden_size % clip.heads:
        raise UserError(f"arch.clip.heads {clip.heads} must divide arch.clip.hidden_size {clip.hidden_size}")
    if any(count % unet.attention_heads for count in unet.block_out_channels):
        raise UserError(f"arch.unet.attention_heads {unet.attention_heads} must divide every "
                        f"arch.unet.block_out_channels entry, got {list(unet.block_out_channels)}")
    factor = 2 ** (len(vae.block_out_channels) - 1) * 2 ** (len(unet.block_out_channels) - 1)
    if not 32 <= arch.size <= MAX_SIDE or arch.size % factor or arch.size % clip.patch_size:
        raise UserError(f"arch.size must be from 32 to {MAX_SIDE} pixels and a multiple of {factor} (the VAE's and "
                        f"the UNet's downsampling) and of arch.clip.patch_size {clip.patch_size}, got {arch.size}")
    checks.at_least("arch.num_frames", arch.num_frames, 2)
    checks.at_most("arch.num_frames", arch.num_frames, checks.MAX_FRAMES)
