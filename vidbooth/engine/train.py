"""The training loop every vidbooth method shares.

A method (textual inversion, identity adapter, motion adapter, ...) implements the small `Method`
protocol below. `train()` owns the rest: AdamW (weight decay 0) and its learning-rate schedule, gradient
accumulation, `accelerate` (device, fp16/bf16 autocast with loss scaling, gradients averaged over
processes), seeding, checkpoints, `--resume`, SIGINT/SIGTERM, the NaN guard and the progress bar.

Usage (the order matters)::

    accelerator = make_accelerator(cfg.train.mixed_precision, device=cfg.runtime.device,
                                   base_precision=cfg.runtime.precision)
    backbone = load_backbone(cfg.backbone.base, device=backbone_device(accelerator), ...)
    seed_everything(cfg.train.seed)           # so that the method's initialisation is seeded
    method = MyMethod(backbone, ...)          # frozen work (VAE latents, text embeddings) done here, once
    data = [{"latents": ..., "caption": 0}, ...]   # items: dicts of tensors / numbers, collated per batch
    result = train(method, data, cfg.train, run_folder("subject", name, "identity"), accelerator,
                   resume=cfg.resume, signature={...settings that must match to resume...}, unet=backbone.unet)

Determinism: every micro-batch gets its own CPU `torch.Generator` derived from (seed, step, micro-batch,
process), and batches are drawn from a per-epoch permutation derived from (seed, epoch). Nothing depends on
the history of a run, so a resumed run ends with the same weights as an uninterrupted one (bit-identical on
CPU). Methods must draw their randomness (noise, timesteps, dropout of conditions) from the generator they
are given, on the CPU, and move it to the device.

Checkpoints, every `checkpoint_every` steps and at the last step, are folders `<run>/checkpoints/step-NNNNNNN/`
holding `trainable.safetensors` (the method's `state_dict()`), `optimizer.safetensors` (AdamW moments and the
RNG states) and `state.json` (step, parameter groups, loss scaler, run signature). Nothing is pickled. A
checkpoint appears only when complete; resuming a finished run restores its last one and runs no step.

Interruption: SIGINT or SIGTERM finishes the current step, saves a checkpoint and raises
`vidbooth.errors.Interrupted` (exit 130 / 143); a second signal stops at once. A non-finite loss raises
`UserError` before the optimizer step, so the last checkpoint on disk is the last good state.

With several processes (`accelerate launch --multi_gpu --num_processes N`, or torchrun; on CPU they use gloo),
every process runs the same code on its own batches and gradients are averaged over processes before each
step; only the main process writes checkpoints (`accelerator.is_main_process`); callers write artifacts on it
alone. (`accelerate launch --cpu --num_processes N` starts N processes only through mpirun.)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from vidbooth import __version__, reporting
from vidbooth.config.train import TrainConfig
from vidbooth.errors import (RERUN_ERRORS, DiskFull, Interrupted, UserError, cpu_limit_again, failing, held_stops,
                             is_failing, lost_another_process, not_the_inputs_fault, ran_out_of_memory, stop_signals,
                             stopped)
from vidbooth.fileio import (disk_full, folder_beside, remove_stale_temporaries, sync_folder, sync_tree,
                             write_safetensors)
from vidbooth.library import sha256_file

CHECKPOINTS = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CHECKPOINT_FORMAT = 1

T = TypeVar("T")


class CheckpointDiskFull(DiskFull):
    """The disk filled up while a checkpoint was saved; `folder` is where space is needed."""


class LossNotFinite(UserError):
    """The loss, or the trained weights, became NaN or infinite at `step`; `half`: the run was in half precision
    (fp16/bf16 autocast, or a frozen base cast to fp16/bf16)."""

    def __init__(self, message: str, step: int, half: bool):
        super().__init__(message)
        self.step, self.half = step, half


@runtime_checkable
class Method(Protocol):
    """What a training method provides. Everything not returned by `trainable_parameters` stays frozen."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters to optimise, fp32, always in the same order (the optimizer state is keyed by it)."""
        ...

    def loss(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        """Scalar loss for one collated micro-batch; all randomness comes from `generator` (a CPU generator)."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable state, as tensors (what a checkpoint stores)."""
        ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()` exactly."""
        ...


@dataclass
class TrainResult:
    step: int
    """The step training ended at (== cfg.steps)."""
    start_step: int
    """The step this run started from (> 0 when resumed)."""
    losses: list[float] = field(default_factory=list)
    """Mean loss of every step run now, over every process's batches."""
    seconds: float = 0.0
    """Wall time of the steps run (checkpoint writes included)."""
    total_seconds: float = 0.0
    """Wall time of the stage over all its runs: a resumed one adds what its stopped runs spent."""
    step_times: list[float] = field(default_factory=list)
    """Wall time of each step run (checkpoint writes excluded)."""
    resumed_loss: float | None = None
    """The loss saved with the checkpoint this run resumed from."""
    earlier_losses: list[float] = field(default_factory=list)
    """The losses of the (up to 10) steps before this run's first, saved with the checkpoint it resumed from."""
    skipped_steps: int = 0
    """Steps run now whose update fp16's loss scaler skipped (their gradients overflowed)."""

    @property
    def loss(self) -> float:
        """Mean of the last (up to) 10 step losses, those before a resume included (a resumed run's had been only
        the steps since); when none is known, the loss of the checkpoint resumed from (one saved before the 51st
        session, of a finished stage that resumes at its end), else nan."""
        tail = self.recent_losses
        if tail:
            return sum(tail) / len(tail)
        return float("nan") if self.resumed_loss is None else self.resumed_loss

    @property
    def recent_losses(self) -> list[float]:
        """The last (up to) 10 step losses, those before a resume included: what a checkpoint saves."""
        return (self.earlier_losses + self.losses)[-10:]

    @property
    def step_seconds(self) -> float:
        """Mean wall time of the steps run now, checkpoint writes excluded; nan when none ran."""
        return sum(self.step_times) / len(self.step_times) if self.step_times else float("nan")


# ---- setup ----------------------------------------------------------------------------------------
def resolve_mixed_precision(mixed_precision: str, device_type: str, setting: str = "train.mixed_precision",
                            base_precision: str = "auto") -> str:
    """'auto' -> autocast on CUDA in the frozen base's half type (bf16 for a bf16 base, else fp16), none elsewhere;
    fp16 needs CUDA, and autocast in the other half type than the base's is refused (`setting`: the key a message
    names; `base_precision`: runtime.precision, --precision)."""
    if device_type != "cuda":
        if mixed_precision == "fp16":
            raise UserError(f"mixed precision fp16 ({setting}) needs CUDA: train on a GPU, or set {setting} to no "
                            "or bf16 on this machine")
        return "no" if mixed_precision == "auto" else mixed_precision  # an fp16 base is refused as it loads
    from vidbooth.device import resolve_dtype

    base = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(resolve_dtype(base_precision, torch.device("cuda")))
    if mixed_precision == "auto":
        return "bf16" if base == "bf16" else "fp16"
    fix = " ".join(f"--set {key}=auto" for key in setting.split(" and "))
    if mixed_precision == "no" and base == "fp16":
        reporting.warn(f"{setting} is no but the base is in fp16 (--precision): the gradients pass through its fp16 "
                       f"layers with no loss scaling, and small ones vanish; give {fix} (fp16 with a loss scaler), or "
                       "--precision fp32")
    if {mixed_precision, base} == {"fp16", "bf16"}:
        raise UserError(f"{setting} is {mixed_precision} but the base is in {base} (--precision): autocast in the "
                        f"other half type defeats the choice; give {fix} (auto follows --precision), or --precision "
                        f"{mixed_precision}")
    return mixed_precision


BARRIER_SECONDS = 2 * 3600
"""How long the processes of a run wait for one another (NCCL's default, 10 minutes, is shorter than a large
model's class images or preview made by some processes while the others wait; a process that died is noticed at
once all the same)."""


def make_accelerator(mixed_precision: str = "auto", device: str = "auto", setting: str = "train.mixed_precision",
                     base_precision: str = "auto", quiet: bool = False):
    """The process's `accelerate.Accelerator`; load the backbone on `backbone_device(accelerator)`, in
    `base_precision` (runtime.precision), which 'auto' mixed precision follows. `quiet`: no warning of the
    launcher's settings (for a process that meets the others only to stop them).

    `device` is vidbooth's runtime device (auto | cpu | cuda | cuda:N). Under `accelerate launch` each
    process gets its own device from the launcher, and the processes hold one mixed-precision setting; a process
    that no launcher started sets accelerate up afresh for another (a script's second training).
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from vidbooth.device import resolve_device

    resolved = resolve_device(device)
    on_cpu = resolved.type == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    precision = resolve_mixed_precision(mixed_precision, "cpu" if on_cpu else "cuda", setting, base_precision)
    if not on_cpu and resolved.index is not None and "LOCAL_RANK" not in os.environ:
        torch.cuda.set_device(resolved.index)  # one process: accelerate takes the current GPU, so make it this one
    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=BARRIER_SECONDS))]
    launched = ", ".join(f"{name}={os.environ[name]}" for name in reporting.SIZE_VARIABLES if name in os.environ)
    try:
        try:
            accelerator = Accelerator(cpu=on_cpu, mixed_precision=precision, kwargs_handlers=handlers)
        except ValueError as exc:
            if not _set_up_before_in_this_process(exc):
                raise
            # an earlier command in this process (a script's, a notebook's) trained in another precision: with no
            # launcher that state is this process's alone, so it starts afresh
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)
            accelerator = Accelerator(cpu=on_cpu, mixed_precision=precision, kwargs_handlers=handlers)
    except ValueError as exc:
        reason = str(exc).splitlines()[0]
        if "MASTER_ADDR" in reason and launched:  # an MPI launcher's or srun's variables (accelerate then sets
            # torchrun's), with nowhere named for the processes to meet
            raise UserError(f"cannot set up training: {reason} ({launched} is set): export MASTER_ADDR (the first "
                            "process's host) and MASTER_PORT for every process, or start them with torchrun or "
                            "accelerate launch") from exc
        raise UserError(f"cannot set up training: {reason}: check --device and {setting} (no; fp16 on CUDA; bf16 "
                        "where the device has it)") from exc
    except RuntimeError as exc:
        if "Gloo connectFullMesh failed" in str(exc):
            raise UserError(_not_connected(exc)) from exc
        if not isinstance(exc, getattr(torch.distributed, "DistError", ())):
            raise
        raise UserError(_not_met(exc)) from exc
    except ImportError as exc:  # ACCELERATE_USE_DEEPSPEED=true left by another tool: a traceback had ended the run
        raise UserError(f"cannot set up training: {str(exc).splitlines()[0]} (asked for by {_accelerate_variables()}, "
                        "left by another tool?): unset that, or install what it names") from exc
    wanted = "cpu" if on_cpu else "cuda"
    if accelerator.device.type != wanted:  # ACCELERATE_TORCH_DEVICE overrides accelerate's own cpu=True
        raise UserError(f"accelerate put training on {accelerator.device.type}, not {wanted} as --device says (asked "
                        f"for by {_accelerate_variables()}, left by another tool?): unset that")
    if accelerator.num_processes != reporting.process_count():  # on GPUs accelerate meets only processes given a
        raise UserError(  # LOCAL_RANK: under mpirun or srun alone each would train the same run alone, silently
            f"cannot set up training: the launcher started {reporting.process_count()} processes"
            f"{f' ({launched})' if launched else ''}, but they did not meet (this one would train alone): start them "
            "with torchrun or accelerate launch (under Slurm: srun torchrun ...)")
    if quiet:
        return accelerator
    if accelerator.num_processes == 1 and _asked_for_several_cpu_processes():
        reporting.warn(
            "accelerate launch --cpu started a single process (it runs several only through mpirun): for N CPU "
            "processes with gloo use `accelerate launch --multi_gpu --num_processes N ... --device cpu` or torchrun"
        )
    _warn_of_the_launchers_precision(precision, setting, on_cpu)
    return accelerator


def _not_met(exc: RuntimeError) -> str:
    """What to say when the processes of a launch could not meet (torch's DistError, a traceback of its C++ frames):
    the first process, which the others meet at, stopped before it got there (told in its own output, on another
    machine when there are several), or cannot be reached or listen there."""
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    reason = _first_line(exc)
    if reporting.first_process():
        return (f"cannot set up the meeting point of this run's processes at {where} ({reason}): give the launcher "
                "another --main_process_port, or check that this machine has that address")
    return (f"cannot meet the first process of this run at {where} ({reason}): it stopped before training began (its "
            "own error line, on its machine, says why) or cannot be reached from here; start every machine's launch "
            "with the same inputs and --main_process_ip")


def _first_line(exc: Exception) -> str:
    """The first line of `exc`'s message that says something (torch's errors go on with C++ frames); its type's name
    where none does."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _not_connected(exc: RuntimeError) -> str:
    """What to say when the processes met but gloo could not connect them to one another: each listens on the
    address its machine's host name resolves to, or on the loopback where it resolves to none of the machine's (seen
    across two network namespaces: a host name unknown to the resolver, as in many containers)."""
    import socket

    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except (OSError, UnicodeError):  # UnicodeError: a name Python's idna codec refuses (a part over 63 letters)
        address = "nothing"
    reason = _first_line(exc).rsplit("] ", 1)[-1]  # after gloo's source file and line
    interface = os.environ.get("GLOO_SOCKET_IFNAME")
    where = (f"GLOO_SOCKET_IFNAME={interface}" if interface else
             f"this machine's host name {host!r}, which resolves to {address}")
    return (f"the processes of this run met but could not connect to one another ({reason}): gloo listens on the "
            f"address of {where}; set GLOO_SOCKET_IFNAME on each machine to its network interface that reaches the "
            "others (`ip route get MASTER_ADDR` names it), and run again")


def _accelerate_variables() -> str:
    """The ACCELERATE_* variables set here ('ACCELERATE_USE_DEEPSPEED=true, ...'), for a message; or what sets them."""
    names = sorted(name for name in os.environ if name.startswith("ACCELERATE_"))
    return ", ".join(f"{name}={os.environ[name]}" for name in names) or "accelerate's config (accelerate config)"


_LAUNCHER_PRECISION_WARNED: set[str] = set()
"""The settings already warned of by `_warn_of_the_launchers_precision` (train-subject sets up two stages)."""


def _warn_of_the_launchers_precision(precision: str, setting: str, on_cpu: bool) -> None:
    """`accelerate launch --mixed_precision fp16` (or an `accelerate config` saying so) sets a precision that vidbooth
    does not take: its own setting decides, and a user who asked the launcher for half precision is told so (not for
    fp16 on a CPU, which cannot take it)."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if launcher in ("", "no") or launcher == precision or setting in _LAUNCHER_PRECISION_WARNED:
        return
    if on_cpu and launcher == "fp16":
        return
    _LAUNCHER_PRECISION_WARNED.add(setting)
    trains = "without mixed precision" if precision == "no" else f"in {precision}"
    fix = " ".join(f"--set {key}={launcher}" for key in setting.split(" and "))
    fix = f"for {launcher} give {fix}" if launcher in ("fp16", "bf16") else "vidbooth takes no, fp16 or bf16"
    reporting.warn(f"accelerate launch's mixed precision ({launcher}) is not used: vidbooth trains {trains} as "
                   f"{setting} says (auto: the base's half type on CUDA, none elsewhere); {fix}")


def _set_up_before_in_this_process(exc: ValueError) -> bool:
    """Whether `exc` is accelerate refusing another setting than an earlier Accelerator's, in a process that no
    launcher started (whose state, under one, the other processes share)."""
    return "already been initialized" in str(exc) and reporting.process_count() == 1 and "LOCAL_RANK" not in os.environ


def backbone_device(accelerator) -> str:
    """The `load_backbone(device=...)` name of this process's device ('cpu', or 'cuda:N' under a launcher)."""
    device = accelerator.device
    if device.type == "cpu":
        return "cpu"
    return str(device) if device.index is not None else f"cuda:{torch.cuda.current_device()}"


def _asked_for_several_cpu_processes() -> bool:
    """`accelerate launch --cpu --num_processes N>1` sets these for the one process it starts without mpirun."""
    env = os.environ
    on_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    return on_cpu and "MASTER_ADDR" in env and "WORLD_SIZE" not in env


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) before building a method, so its initialisation is reproducible."""
    from accelerate.utils import set_seed

    set_seed(seed)


def run_folder(kind: str, name: str, stage: str) -> Path:
    """Where the checkpoints of training artifact `name` (stage `stage`) live: `$VIDBOOTH_HOME/.runs/...`."""
    from vidbooth.library import library_home, runs_folder, validate_name

    validate_name(name, kind)
    return runs_folder(kind, name, library_home()) / stage


def check_high_noise(train_configs: Sequence[TrainConfig], base: str, revision: str | None = None,
                     folder: Path | None = None) -> None:
    """Refuse, before the model loads, a high-noise range that starts at or past `base`'s noise levels (else found
    at the first step of its stage, after the model loaded and earlier stages trained). `folder`: `base`'s, where
    the caller has it from `base_model_folder` already; else it is looked up only when a range is used."""
    used = [config for config in train_configs if config.high_noise_fraction]
    if not used:
        return
    from vidbooth.engine.backbone import base_model_folder, noise_levels

    levels = noise_levels(folder or base_model_folder(base, revision))
    for config in used:
        if config.high_noise_from >= levels:
            raise UserError(f"{config.setting_name('high_noise_from')} must be below the {levels} noise levels "
                            f"(training timesteps) of {base}, got {config.high_noise_from}")


def refuse_to_discard(run_dirs: Sequence[Path], resume: bool, overwrite: bool) -> None:
    """Before a model loads: a stopped run's checkpoint in one of `run_dirs` (the command's stages) is neither
    continued nor thrown away unasked; --resume continues it, --overwrite starts over (as `pretrain` refuses a run
    folder in use). A --resume that finds no checkpoint in any of them is warned of, once for the command: a later
    stage that has not begun simply starts."""
    if resume and not any(list_checkpoints(run_dir) for run_dir in run_dirs):
        reporting.warn(f"nothing to resume in {run_dirs[0].parent}: starting from step 0")
    if resume or overwrite:
        return
    for run_dir in run_dirs:
        if checkpoints := list_checkpoints(run_dir):
            raise UserError(
                f"a stopped run left a checkpoint in {run_dir} ({checkpoints[-1].name}): rerun with --resume to "
                "continue it, or with --overwrite to start over"
            )


def saved_by_the_first(accelerator, saved: str) -> None:
    """Where the first process saved what this launch trained (`saved`: "subject 'S*'"), shown on each other
    machine: its run had ended without a word of it (the processes of the first machine are silent but the first)."""
    if not accelerator.is_main_process:
        reporting.info(f"{saved} is saved on the first machine of this run "
                       f"({os.environ.get('MASTER_ADDR', 'its launch')}), by its first process")


def remove_runs(run_dirs: Sequence[Path], saved: str) -> None:
    """Drop finished runs' checkpoints (call on the main process once the artifact is saved), and the artifact's
    run folder with them when no other stage's run is left in it. A Ctrl-C or SIGTERM meanwhile stops the command
    once they are gone, saying that `saved` ("subject 'S*'") is saved."""
    with held_stops(f"{saved} is saved"):
        for run_dir in run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # another stage's checkpoints are kept, and their folder with them
                Path(run_dir).parent.rmdir()


# ---- randomness -----------------------------------------------------------------------------------
def derived_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on `parts`."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed("step", seed, step, micro, rank))


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(derived_seed("epoch", seed, epoch))
    return tuple(torch.randperm(n, generator=generator).tolist())


def batch_indices(n: int, batch_size: int, seed: int, first_position: int) -> list[int]:
    """Items at stream positions [first, first + batch_size): each epoch is a fresh seeded permutation."""
    positions = range(first_position, first_position + batch_size)
    return [_epoch_order(seed, p // n, n)[p % n] for p in positions]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then the schedule's decay."""
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.lr_warmup_steps) / max(1, cfg.steps - cfg.lr_warmup_steps)
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - progress)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---- checkpoints ----------------------------------------------------------------------------------
def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in `run_dir`, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def _optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{key}": value.detach().cpu().contiguous()
        for index, per_param in state["state"].items()
        for key, value in per_param.items()
    }
    return tensors, state["param_groups"]


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def save_checkpoint(run_dir: Path, step: int, method: Method, optimizer, accelerator, signature: dict, loss: float,
                    recent_losses: list[float] | None = None):
    """Write checkpoint `step` atomically (a temporary folder renamed into place); returns its folder.
    `recent_losses`: the last (up to) 10 step losses, which a resumed run's loss goes on from."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    with folder_beside(final) as tmp:  # a failed or interrupted save leaves no half-written folder behind
        trainable = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
        write_safetensors(tmp / TRAINABLE_FILE, trainable, {"format": "pt"})
        moments, param_groups = _optimizer_tensors(optimizer)
        write_safetensors(tmp / OPTIMIZER_FILE, moments | _rng_tensors(), {"format": "pt"})
        scaler = getattr(accelerator, "scaler", None)
        state = {
            "format": CHECKPOINT_FORMAT,
            "vidbooth_version": __version__,
            "step": step,
            "loss": loss,
            "recent_losses": list(recent_losses or [loss]),
            "signature": signature,
            "param_groups": param_groups,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "sha256": {name: sha256_file(tmp / name) for name in (TRAINABLE_FILE, OPTIMIZER_FILE)},
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
        sync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    sync_folder(root)
    return final


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _read_checkpoint(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    try:
        state = json.loads((folder / STATE_FILE).read_text())
        trainable = load_file(str(folder / TRAINABLE_FILE))
        extra = load_file(str(folder / OPTIMIZER_FILE))
    except Exception as exc:
        not_the_inputs_fault(exc)
        raise _unreadable(folder, type(exc).__name__) from exc
    if not isinstance(state, dict):
        raise _unreadable(folder, f"{STATE_FILE} holds no settings")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {folder} has format {state.get('format')}: rerun with --overwrite to start over")
    # each of its parts as a save writes it: an edited or damaged state.json had resumed at another step, or failed
    kinds = {"step": int, "loss": int | float, "signature": dict, "param_groups": list, "scaler": dict | None}
    if bad := next((key for key, kind in kinds.items()  # true is an int to Python: no save writes it as a step
                    if not isinstance(state.get(key, ...), kind) or isinstance(state.get(key), bool)), None):
        raise _unreadable(folder, f"its {bad} in {STATE_FILE} is missing or of another kind")
    if not _finite_number(state["loss"]):  # true, NaN or Infinity, as of recent_losses below: no save writes one
        raise _unreadable(folder, f"its loss in {STATE_FILE} is missing or of another kind")
    recent = state.setdefault("recent_losses", [])  # none before the 51st session
    # a save writes finite numbers only (a step whose loss is not finite stops the run): true, NaN or Infinity
    # had been taken from an edited state.json, a NaN written on as the manifest's final_loss
    if not isinstance(recent, list) or not all(_finite_number(x) for x in recent):
        raise _unreadable(folder, f"its recent_losses in {STATE_FILE} is of another kind")
    if f"step-{state['step']:07d}" != folder.name:
        raise _unreadable(folder, f"{STATE_FILE} says step {state['step']}")
    recorded = state.get("sha256") if isinstance(state.get("sha256"), dict) else {}  # none before the 36th session
    if changed := [name for name, digest in recorded.items() if sha256_file(folder / name) != digest]:
        raise _unreadable(folder, f"{changed[0]} is not the file saved")  # bits flipped in its weights: no error else
    if bad := next((key for key, t in trainable.items() if t.is_floating_point() and not t.isfinite().all()), None):
        raise UserError(f"checkpoint {folder} holds NaN or infinite values ({bad}; damaged, or saved as the training "
                        "diverged): delete it and rerun")
    return state, trainable, extra


def _finite_number(value: Any) -> bool:
    """A JSON number that is no true/false (Python's bool is an int) and is finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _unreadable(folder: Path, what: str) -> UserError:
    return UserError(f"checkpoint {folder} cannot be read (damaged or cut short: {what}): delete it and rerun with "
                     "--resume, which continues from the checkpoint before it if there is one (--overwrite starts "
                     "over)")


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; a value that is a JSON object in text (a motion adapter's spec) is flattened
    too, so that a message names the setting in it that changed."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, str) and value.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_UNNAMED_SETTINGS = {
    "base": ("the base model (--base; its fingerprint)", None),
    "runtime_seed": ("runtime.seed (--seed)", None),
    "train.processes": ("the number of processes", 1),
    "train.resolved_mixed_precision": ("the mixed precision", "no"),
    "base_dtype": ("the base model's precision (--precision)", "torch.float32"),
    "embedding": ("the subject's pseudo-word, learned again since this run stopped", None),
}
"""Signature keys that are no config key: how a message names each, and its value when the signature lacks it."""
NOT_SETTINGS = {"embedding"}
"""Signature keys that no setting can make equal again (a pseudo-word learned anew): a resume refused for them alone
says only to start over."""


def _shown(value: object) -> str | None:
    """A setting's value as a message shows it (`none`, `''`, a list in brackets); None when it is too long to."""
    def one(item: object) -> str | None:
        if item is None:
            return "none"
        return (str(item) or "''") if isinstance(item, int | float | str | bool) else None

    items = [one(item) for item in value] if isinstance(value, list) else []
    text = f"[{', '.join(items)}]" if isinstance(value, list) and None not in items else one(value)
    return text if text is not None and len(text) <= 40 else None


def _changed_settings(now: dict, then: dict, cfg: TrainConfig) -> tuple[set[str], str]:
    """The signature keys that differ between two signatures, and those settings named as the user sets them
    ('identity.train.lr (--lr) was 0.001, now 0.002'); a value is shown when it is short."""
    now, then = _flatten(now), _flatten(then)
    changed = {key for key in set(now) | set(then) if now.get(key) != then.get(key)}
    described = []
    for key in sorted(changed):
        name, default = _UNNAMED_SETTINGS.get(key, (None, None))
        if name is None:
            head, _, rest = key.partition(".")
            name = cfg.setting_name(rest if head == "train" else key)
        old, new = _shown(then.get(key, default)), _shown(now.get(key, default))
        described.append(f"{name} was {old}, now {new}" if old is not None and new is not None else name)
    return changed, "; ".join(described)


def _other_settings(folder: Path, now: dict, then: dict, cfg: TrainConfig) -> UserError:
    changed, described = _changed_settings(now, then, cfg)
    same = "" if changed <= NOT_SETTINGS else "use the same settings, or "  # what no setting gives back
    return UserError(
        f"cannot resume from {folder}: it was trained with other settings ({described}); "
        f"{same}rerun with --overwrite instead of --resume to start over"
    )


@contextlib.contextmanager
def kept_if_preview_fails() -> Iterator[None]:
    """Around the preview, made once training has ended: a UserError in it (a sample that diverged, say) says that
    the training is kept in its last checkpoint and how to save it without training again."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, UserError) and not ran_out_of_memory(exc):
            raise
        problem = exc if isinstance(exc, UserError) else "it ran out of memory"
        raise UserError(f"the preview failed: {problem}; the training is kept: rerun the same command with --resume "
                        "(and --no-preview to skip the preview) to save it without training again") from exc


def refuse_other_settings(run_dir: Path, resume: bool, cfg: TrainConfig, known: dict, accelerator,
                          within: tuple[str, dict] | None = None) -> None:
    """Before the model loads: with `resume`, refuse the newest checkpoint in `run_dir` when the settings known
    without the model (`cfg`, and the top-level signature keys in `known`) differ from those it recorded, with the
    message resuming would give once the model is loaded. The whole signature is compared again on resuming.
    `within` = (signature key, {setting: value}): settings recorded inside a key whose other parts are known only
    with the model (a spec, as a dict or its JSON), compared and named as the config keys they are."""
    if not resume or not (checkpoints := list_checkpoints(run_dir)):
        return
    try:
        then = dict(json.loads((checkpoints[-1] / STATE_FILE).read_text())["signature"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # JSON nested past Python's stack, too
        return  # resuming says the checkpoint is unreadable
    now = _full_signature(cfg, known, accelerator)
    if any(then.get(key) != value for key, value in now.items()):  # only the keys known here are compared
        raise _other_settings(checkpoints[-1], now, {key: then[key] for key in now if key in then}, cfg)
    if within is not None:
        recorded = then.get(within[0])
        with contextlib.suppress(TypeError, ValueError):
            recorded = json.loads(recorded) if isinstance(recorded, str) else recorded
        if isinstance(recorded, dict) and (changed := {k: v for k, v in within[1].items() if recorded.get(k) != v}):
            raise _other_settings(checkpoints[-1], changed, {key: recorded.get(key) for key in changed}, cfg)


def _restore(
    folder: Path, method: Method, optimizer, accelerator, signature: dict, cfg: TrainConfig
) -> tuple[int, float, list[float]]:
    """Load checkpoint `folder` into the method, optimizer, loss scaler and RNGs; returns its step, its loss and
    the losses of the (up to 10) steps up to it."""
    state, trainable, extra = _read_checkpoint(folder)
    if state["signature"] != signature:
        raise _other_settings(folder, signature, state["signature"], cfg)
    try:  # tensors missing or of other shapes, or parameter groups not these: a damaged or edited checkpoint
        method.load_state_dict({k: v.to(accelerator.device) for k, v in trainable.items()})
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in extra.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                per_param.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
        if not per_param or any(not {"exp_avg", "exp_avg_sq"} <= set(moments) for moments in per_param.values()):
            raise KeyError("AdamW's moments")  # a checkpoint is of steps taken: they made them
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(extra["rng.torch"])
        if torch.cuda.is_available():
            cuda_states = _cuda_rng_states(extra)
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise _unreadable(folder, f"{type(exc).__name__} restoring it") from exc
    return state["step"], float(state["loss"]), [float(x) for x in state["recent_losses"]][-10:]


def _cuda_rng_states(extra: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The saved CUDA generator states in device order: rng.cuda.2 before rng.cuda.10 (not sorted as text)."""
    return [extra[f"rng.cuda.{index}"] for index in range(sum(key.startswith("rng.cuda.") for key in extra))]


# ---- signals --------------------------------------------------------------------------------------
class StopRequests:
    """Turns SIGINT/SIGTERM (those not ignored) into a request to stop after the current step; a second signal
    stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.again: int | None = None  # the second signal, which stopped the run at once
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if cpu_limit_again(signum):
            return
        if self.signum is not None and not is_failing():
            self.again = signum
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in stop_signals()}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _stopped(signum: int, step: int, cfg: TrainConfig, run_dir: Path, accelerator) -> Interrupted:
    """The error of a run stopped by `signum` (as the processes agreed on it) once checkpoint `step` is saved (by
    the first process: another machine may not see it, and had named its own library's folder)."""
    saved = (f"checkpoint saved in {run_dir}: rerun the same command with --resume to continue"
             if sees_the_firsts(accelerator, run_dir, step) else resume_advice(run_dir, step))
    return stopped(signum, f"stopped by {signal.Signals(signum).name} at step {step}/{cfg.steps}; {saved}")


def sees_the_firsts(accelerator, run_dir: Path, saved: int) -> bool:
    """Whether this process sees checkpoint `saved`, which the first process saved (none saved: nothing to see)."""
    return accelerator.is_main_process or not saved or sees_checkpoint(run_dir, saved)


def mark_kept_checkpoint(exc: BaseException, accelerator, run_dir: Path, saved: int) -> None:
    """`exc`, an error that stopped a run once checkpoint `saved` was saved, carries where the run goes on from
    (`kept_checkpoint`, which the command line tells instead of 'run it again', refused by that checkpoint): on a
    machine that does not see the first process's library, the step and the folder to copy."""
    if not sees_the_firsts(accelerator, run_dir, saved):
        exc.kept_checkpoint = (f"step {saved}, in the first process's library: copy {run_dir} from its machine "
                               "here first")
    elif checkpoints := list_checkpoints(run_dir):
        exc.kept_checkpoint = str(checkpoints[-1])


def sees_checkpoint(run_dir: Path, step: int) -> bool:
    """Whether this process sees a checkpoint of `step` in `run_dir`: one on another machine, whose library is not
    shared, may see none. It sees no older run's: a run started afresh removes them on each machine, and one
    resumed from is the first's (--resume compares their contents)."""
    return any(path.name == f"step-{step:07d}" for path in list_checkpoints(run_dir))


SECONDS_FILE = "seconds.json"
"""Beside a stage's checkpoints: the wall time spent on the stage so far, for a resumed run's manifest."""


class _StageClock:
    """The wall time of a stage over all its runs: this run's so far plus, when it resumes, what its earlier runs
    spent, as recorded beside their checkpoints (`SECONDS_FILE`)."""

    def __init__(self, run_dir: Path, resume: bool):
        self.record = Path(run_dir) / SECONDS_FILE
        self.earlier = 0.0
        if resume and list_checkpoints(run_dir):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError, RecursionError):
                self.earlier = float(json.loads(self.record.read_text())["seconds"])
        self.started, self.ended = time.perf_counter(), None

    @property
    def seconds(self) -> float:
        return self.earlier + (self.ended or time.perf_counter()) - self.started

    def save(self) -> None:
        """Record the time so far for the next resume (the main process, with each checkpoint: a run killed
        outright had lost what it spent since it started)."""
        with contextlib.suppress(OSError):
            self.record.write_text(json.dumps({"seconds": self.seconds}))


@contextlib.contextmanager
def _stage_clock(run_dir: Path, resume: bool, main_process: bool):
    """Time the training of a stage whose checkpoints are in `run_dir` (a `_StageClock`, stopped when the block
    ends); its total is recorded beside the checkpoints by the main process when the run ends, stopped or not."""
    clock = _StageClock(run_dir, resume)
    try:
        yield clock
    finally:
        clock.ended = time.perf_counter()
        if main_process and list_checkpoints(run_dir):  # none: nothing to resume, nothing to add to
            clock.save()


# ---- the loop -------------------------------------------------------------------------------------
def _agree(accelerator, values: list[float]) -> list[float]:
    """Element-wise sum over processes (so that every process takes the same decision)."""
    if accelerator.num_processes == 1:
        return values
    from accelerate.utils import reduce

    return reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum").tolist()


def _step_outcome(accelerator, signum: int | None, loss: float) -> tuple[int | None, bool, float]:
    """What every process agrees on after a step: the signal that stops the run (`_signal_agreed`), whether any loss
    was not finite, and the step's loss over every process's batches (it had been the first process's alone; NaN or
    infinite where any was: a process whose own loss was finite had named it as the one that became NaN)."""
    *signals, bad, total = _agree(accelerator, [*_signal_votes(signum), float(not math.isfinite(loss)), loss])
    return _signal_agreed(signals), bool(bad), total / accelerator.num_processes


def _agreed_signal(accelerator, signum: int | None) -> int | None:
    return _signal_agreed(_agree(accelerator, _signal_votes(signum)))


_STOPS_FIRST_TO_LAST = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGXCPU", None), signal.SIGINT) if s)
"""The signals that stop a run, the one that all processes tell first: a scheduler's or launcher's stop, a CPU-time
limit, then Ctrl-C."""


def _signal_votes(signum: int | None) -> list[float]:
    return [float(signum == stop) for stop in _STOPS_FIRST_TO_LAST]


def _signal_agreed(votes: list[float]) -> int | None:
    """The signal every process stops on, from the sums of their `_signal_votes`: the first of `_STOPS_FIRST_TO_LAST`
    that any process got, else None. A process that got none stops on it too, so that all say and exit alike."""
    return next((stop for stop, count in zip(_STOPS_FIRST_TO_LAST, votes) if count), None)


def _kept(run_dir: Path) -> tuple[str, str]:
    """What a run stopped without a checkpoint of its last step keeps, and how the same command goes on from it."""
    last = list_checkpoints(run_dir)
    if not last:
        return "no checkpoint was saved yet", "(it starts over)"
    return f"the last checkpoint is {last[-1]}", "with --resume to continue"


def resume_advice(run_dir: Path, saved: int = 0) -> str:
    """How the same command goes on from a stopped run; `saved`, the step of a checkpoint the first process is known
    to have saved, which a process on another machine may not see (its library not shared)."""
    if saved and not sees_checkpoint(run_dir, saved):
        return (f"the first process saved the checkpoint of step {saved} in a library that this machine does not "
                "see: rerun the same command with --resume once every machine sees it (one VIDBOOTH_HOME on a file "
                f"system they share, or {run_dir} copied from the first machine)")
    kept, rerun = _kept(run_dir)
    return f"{kept}: rerun the same command {rerun}"


def _average_gradients(params: list[nn.Parameter], accelerator) -> None:
    """Every process's gradients become their mean; a parameter that no process gave a gradient keeps none, as on
    one process (AdamW skips it: a zero gradient would move it by its momentum and weight decay)."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import reduce

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    had = torch.tensor([float(p.grad is not None) for p in params], device=grads[0].device, dtype=grads[0].dtype)
    flat = reduce(torch.cat([g.flatten() for g in grads] + [had]), "mean")
    *chunks, anyone_had = flat.split([g.numel() for g in grads] + [len(params)])
    for p, chunk, given in zip(params, chunks, anyone_had.tolist()):
        p.grad = chunk.view_as(p).clone() if given > 0 else None


def _broadcast_parameters(params: list[nn.Parameter], accelerator) -> None:
    """Start every process from the main process's initial weights."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast

    with torch.no_grad():
        flat = broadcast(torch.cat([p.detach().flatten() for p in params]).contiguous())
        for p, chunk in zip(params, flat.split([p.numel() for p in params])):
            p.copy_(chunk.view_as(p))


def _full_signature(cfg: TrainConfig, signature: dict, accelerator) -> dict:
    """The caller's signature plus the training settings that change the result (JSON round-tripped): the
    config, and the process count (the batch per step and the data order follow it) and resolved mixed precision
    where they are not the single-process, full-precision defaults (so older single-process runs stay resumable)."""
    from dataclasses import asdict

    same_result = ("checkpoint_every", "keep_checkpoints", "gradient_checkpointing")  # a resume may change them
    settings = {k: v for k, v in asdict(cfg).items() if k not in same_result}
    if accelerator.num_processes != 1:
        settings["processes"] = accelerator.num_processes
    if str(accelerator.mixed_precision) != "no":
        settings["resolved_mixed_precision"] = str(accelerator.mixed_precision)
    return json.loads(json.dumps({"train": settings} | signature, sort_keys=True, default=str))


def dtype_signature(dtype: torch.dtype) -> dict:
    """The frozen base's precision for a resume signature; nothing for fp32, so older runs stay resumable."""
    return {} if dtype == torch.float32 else {"base_dtype": str(dtype)}


def _check_trainable(params: list[nn.Parameter]) -> None:
    if not params:
        raise ValueError("the method has no trainable parameters")
    for p in params:
        if not p.requires_grad or p.dtype != torch.float32:
            raise ValueError(f"trainable parameters must be fp32 and require grad (got {p.dtype}, {p.requires_grad})")


def _micro_batch(data: Sequence, cfg: TrainConfig, step: int, micro: int, accelerator):
    from torch.utils.data import default_collate

    position = ((step * cfg.grad_accumulation + micro) * accelerator.num_processes + accelerator.process_index)
    indices = batch_indices(len(data), cfg.batch_size, cfg.seed, position * cfg.batch_size)
    return default_collate([data[i] for i in indices])


def _accumulate(method: Method, data: Sequence, cfg: TrainConfig, step: int, accelerator) -> float:
    """Run the micro-batches of one optimizer step (backward included); returns their mean loss (nan if any is)."""
    losses = []
    for micro in range(cfg.grad_accumulation):
        batch = _micro_batch(data, cfg, step, micro, accelerator)
        generator = step_generator(cfg.seed, step, micro, accelerator.process_index)
        with accelerator.autocast():
            loss = method.loss(batch, generator)
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            return value
        accelerator.backward(loss / cfg.grad_accumulation)
    return sum(losses) / len(losses)


def _optimizer_step(optimizer, params: list[nn.Parameter], cfg: TrainConfig, step: int, accelerator) -> None:
    _average_gradients(params, accelerator)
    if cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _start(run_dir, method, optimizer, params, accelerator, resume: bool, signature: dict, cfg) -> TrainResult:
    """Restore the newest checkpoint (with resume) or start afresh; returns a result starting at the first step
    to run."""
    checkpoints = list_checkpoints(run_dir)
    _agree_on_the_run(accelerator, Path(run_dir), signature | {"checkpoint_every": cfg.checkpoint_every},
                      checkpoints[-1] if resume and checkpoints else None)
    if resume and checkpoints:
        if accelerator.is_main_process:  # the run's lock is held: what a killed save left is no one's
            remove_stale_temporaries(Path(run_dir) / CHECKPOINTS, older_than_s=0)
        step, loss, recent_losses = _restore(checkpoints[-1], method, optimizer, accelerator, signature, cfg)
        reporting.info(f"resuming from step {step} ({checkpoints[-1]})")  # each machine's: the processes agreed
        return TrainResult(step=step, start_step=step, resumed_loss=loss, earlier_losses=recent_losses)
    if checkpoints and not resume:  # said by each machine's first process, which removes them below
        reporting.warn(
            f"starting over: the checkpoint of an earlier, stopped run ({checkpoints[-1].name}) is discarded; "
            "--resume continues a stopped run instead"
        )
    accelerator.wait_for_everyone()
    # each machine's first process (an older run's checkpoints in a library of its own had been named by a stop); in
    # a shared library, side by side: each is done before the broadcast below lets the first go on
    if reporting.first_of_its_machine():
        for path in (Path(run_dir), Path(run_dir) / CHECKPOINTS):  # a file where a folder of the run belongs: damage
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        shutil.rmtree(Path(run_dir) / CHECKPOINTS, ignore_errors=True)
    _broadcast_parameters(params, accelerator)
    return TrainResult(step=0, start_step=0)


SAME_FILES_EVERYWHERE = ("every machine of a run needs the same files at the same paths, and one library "
                         "(VIDBOOTH_HOME on a file system they share)")


def _agree_on_the_run(accelerator, run_dir: Path, signature: dict, resuming: Path | None) -> None:
    """Refuse, on every process of a launch, a run whose processes were given different inputs or settings
    (`signature`, with those that decide when the processes exchange values: another checkpoint_every on one machine
    had one process's check of its weights meet the other's step outcome, told as a NaN), or see
    different checkpoints to resume from (`resuming`: this process's newest, with --resume). Each process reads its
    own files, which on several machines may differ: a motion had been learned from two different clips while its
    manifest named the first, and a library on each machine's own disk had the others wait for ever for the first
    one's resumed run, or start afresh beside it."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather

    def digest(data: bytes) -> int:
        return int.from_bytes(hashlib.sha256(data).digest()[:7], "big")

    settings = digest(json.dumps(signature, sort_keys=True).encode())
    step = _checkpoint_step(resuming) if resuming is not None else -1
    held = -1  # the checkpoint's own: its state file holds its files' hashes
    if resuming is not None:
        with contextlib.suppress(OSError):
            held = digest((resuming / STATE_FILE).read_bytes())
    everyone = gather(torch.tensor([[settings, step, held]], dtype=torch.int64, device=accelerator.device)).tolist()
    differing = [str(index) for index, (other, _, _) in enumerate(everyone) if other != everyone[0][0]]
    if differing:
        raise UserError(
            f"the processes of this run were given different inputs or settings (process {', '.join(differing)}: "
            f"other files, another base model or recipe than the first): {SAME_FILES_EVERYWHERE}"
        )
    steps = [step for _, step, _ in everyone]
    others = [str(index) for index, (_, _, other) in enumerate(everyone) if other != everyone[0][2]]
    if len(set(steps)) > 1 or others:
        seen = ", ".join(f"process {index}: {f'step {step}' if step >= 0 else 'none'}"
                         for index, step in enumerate(steps))
        if len(set(steps)) == 1:  # a library on each machine's disk, one holding an older run's checkpoint there
            seen = f"process {', '.join(others)}: another checkpoint of step {steps[0]} than the first's"
        raise UserError(
            f"--resume: the processes of this run do not see the same checkpoints in {run_dir} ({seen}): "
            f"{SAME_FILES_EVERYWHERE}; or copy that folder from the first machine to the same place on the others, "
            "then run the command again"
        )


def checked_then_met(checks: Callable[[], T], settings: dict, then: Callable[[T, Any], None] | None = None
                     ) -> tuple[T, Any]:
    """A training command's start: `checks()` of its inputs, settings and library (their result is returned with the
    accelerator), `make_accelerator(**settings)`, then `then(result, accelerator)` for the checks that need it. The
    processes of a launch stop together when any refused: that one says why, the others that it did (a single
    process is refused at once, before torch's work). Each process checks its own files, which on several machines
    may differ: one that stopped before meeting the others had left them waiting two hours to meet it, or ended
    them with a traceback of torch's. An error it raises is marked `others_told` (told, or they could not be met)."""
    refusal = result = None
    try:
        try:
            result = checks()
        except UserError as exc:
            if reporting.process_count() == 1:
                raise
            refusal = exc
        try:
            accelerator = make_accelerator(**settings)
        except UserError as exc:
            if (met := _met_before_the_set_up_failed()) is not None:  # a device without bf16, say: they are told
                _stop_together(met, refusal or exc)
            if refusal is None:
                raise
            raise refusal from None  # what a refused setting may cause in setting up gives way to the refusal
        if refusal is None and then is not None:
            try:
                then(result, accelerator)
            except UserError as exc:
                refusal = exc
        _stop_together(accelerator, refusal)
    except UserError as exc:
        exc.others_told = True
        raise
    return result, accelerator


def _met() -> bool:
    """Whether this process has met the others of its launch (torch's process group is set up)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _met_before_the_set_up_failed():
    """accelerate's state of a process whose set-up failed once it had met the others (accelerate refuses bf16 on a
    device without it after the processes met), for `_stop_together`; None where they had not met."""
    if reporting.process_count() == 1 or not _met():
        return None
    from accelerate.state import PartialState

    state = PartialState()
    return state if state.device is not None else None


def _stop_together(accelerator, refusal: UserError | None) -> None:
    """Every process of a launch raises when any refused: that one its `refusal`, the others that one did."""
    refused = _agree(accelerator, [float(refusal is not None)])[0]
    if refusal is not None:
        raise refusal
    if refused:
        raise UserError("another process of this run refused its inputs or settings (its own error line, on its "
                        f"machine, says why): {SAME_FILES_EVERYWHERE}")


@contextlib.contextmanager
def held_by_the_first(accelerator, lock: Callable[[], contextlib.AbstractContextManager],
                      check: Callable[[], None] | None = None) -> Iterator[None]:
    """The run's `lock()`, taken by the first process of a launch for them all, and `check()` made under it (a run
    that held the lock until now may have saved what this one would write); every process stops together when
    either refuses. The first alone had refused, once the processes had met: the others went on, to be told that
    another process had stopped, or to wait for it (NCCL)."""
    with contextlib.ExitStack() as held:
        refusal = None
        if accelerator.is_main_process:
            try:
                held.enter_context(lock())
                if check is not None:
                    check()
            except UserError as exc:
                refusal = exc
        _stop_together(accelerator, refusal)
        yield


def refused_before_meeting(refusal: UserError, device: str = "auto") -> None:
    """For a process of a training launch whose command was refused before it met the others (a recipe file missing
    on its machine), once its error is told: meet them and say so through `checked_then_met`, so that they stop
    too. They had waited two hours for it to meet them, or ended in a traceback of torch's. Nothing for a single
    process, or one that has met the others or tried to (its refusal `others_told`, or raised once they met). A
    stop signal ends the wait at once."""
    if reporting.process_count() == 1 or _met() or getattr(refusal, "others_told", False):
        return

    def refused():
        raise refusal

    stops = {stop: signal.signal(stop, signal.SIG_DFL) for stop in _STOPS_FIRST_TO_LAST}  # its error is told already
    try:
        checked_then_met(refused, {"device": device, "quiet": True})
    except Exception:  # its refusal, or that they could not be met: its own error is told already
        pass
    finally:
        for stop, handler in stops.items():
            signal.signal(stop, handler)


def _checkpoint_step(checkpoint: Path) -> int:
    """The step in a checkpoint's name (step-0000006); 0 for a name that holds none."""
    digits = checkpoint.name.removeprefix("step-")
    return int(digits) if digits.isdigit() else 0


def _recomputed(unet: nn.Module | None, cfg: TrainConfig):
    """`cfg.gradient_checkpointing` on `unet` for the block it is entered for; nothing when it is off."""
    if not cfg.gradient_checkpointing:
        return contextlib.nullcontext()
    if unet is None:
        raise ValueError("gradient checkpointing needs the UNet: pass train(..., unet=)")
    from vidbooth.engine.recompute import gradient_checkpointing

    return gradient_checkpointing(unet)


class _NoProgress:
    def advance(self, n: int = 1, **fields: object) -> None:
        pass


@contextlib.contextmanager
def _progress_bar(description: str, total: int, completed: int) -> Iterator:
    """The rich bar (loss over every process, it/s, ETA) on the first process of each machine; nothing on the
    others."""
    if reporting.first_of_its_machine():
        with reporting.progress(description, total=total, completed=completed) as task:
            yield task
    else:
        yield _NoProgress()


def train(
    method: Method,
    data: Sequence,
    cfg: TrainConfig,
    run_dir: str | Path,
    accelerator,
    *,
    resume: bool = False,
    signature: dict | None = None,
    description: str = "training",
    unet: nn.Module | None = None,
) -> TrainResult:
    """Optimise `method` for `cfg.steps` steps on batches drawn from `data` and return how it went.

    `signature`: JSON-able settings that must be equal to resume (the method's config, the data's hashes);
    `cfg` is added to it (except the checkpoint knobs). A checkpoint with another signature is refused. Without
    `resume` old checkpoints in `run_dir` are deleted. Raises `Interrupted` after saving a checkpoint on
    SIGINT/SIGTERM and `UserError` on a non-finite loss. The run folder is left in place: `remove_runs` it once
    the result is saved. `unet`: the model whose activations `cfg.gradient_checkpointing` recomputes.
    """
    if len(data) == 0:
        raise ValueError("no training data")
    signature = _full_signature(cfg, signature or {}, accelerator)
    params = list(method.trainable_parameters())
    _check_trainable(params)
    optimizer = accelerator.prepare(
        torch.optim.AdamW(
            params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon, weight_decay=0.0
        )
    )
    run_dir = Path(run_dir)
    if cfg.lr_warmup_steps > cfg.steps:
        reporting.warn(f"{cfg.setting_name('lr_warmup_steps')} {cfg.lr_warmup_steps} is more than "
                       f"{cfg.setting_name('steps')} {cfg.steps}: the learning rate never reaches "
                       f"{cfg.setting_name('lr')}; shorten the warm-up")
    result = _start(run_dir, method, optimizer, params, accelerator, resume, signature, cfg)
    step = saved = result.step  # `saved`: the step of the last checkpoint that every process saw the first one save

    def diverged(what: str, at: int) -> LossNotFinite:
        if not sees_the_firsts(accelerator, run_dir, saved):
            kept = f"the last good checkpoint, of step {saved}, is in the first process's library"
        elif last := list_checkpoints(run_dir):
            kept = f"the last good checkpoint is {last[-1]}"
        else:
            kept = "no checkpoint was saved yet"
        # half precision: autocast, or a frozen base cast to fp16/bf16 (its signature says, `dtype_signature`)
        half = str(accelerator.mixed_precision) != "no" or "base_dtype" in signature
        mixed = cfg.full_key("mixed_precision")
        fp32 = f" (or train in fp32: --precision fp32 --set {mixed}=no)" if half else ""
        rate = cfg.setting_name("lr")
        rate = rate if rate.endswith(")") else f"{rate} (--set {rate}=N)"  # one without a flag of its own
        return LossNotFinite(  # a resume would repeat the same steps: other settings mean starting over
            f"{what} at step {at}: training stopped and {kept}; lower the learning rate {rate}{fp32} and run again "
            "with --overwrite instead of --resume", at, half
        )

    def checkpoint(at: int, loss: float) -> None:
        nonlocal saved
        # the loss of each step is checked; the weights its update made, before they are kept: the last step's
        # (fp16 without a loss scaler can overflow a gradient) would have been saved. All processes decide
        # together (their weights are the same), and before a stop's checkpoint too: weights not worth keeping
        # end the run as a NaN loss does
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
        if _agree(accelerator, [float(not finite)])[0]:
            raise diverged("the trained weights became NaN or infinite", at)
        if accelerator.is_main_process:
            try:
                save_checkpoint(run_dir, at, method, optimizer, accelerator, signature, loss, result.recent_losses)
            except OSError as exc:
                if not disk_full(exc):
                    raise
                kept, rerun = _kept(run_dir)
                raise CheckpointDiskFull(
                    f"the disk is full: the checkpoint of step {at} was not saved and {kept}; free space in "
                    f"{run_dir.parent}, then rerun the same command {rerun}", run_dir.parent
                ) from exc
            _prune_checkpoints(run_dir, cfg.keep_checkpoints)
            clock.save()
        accelerator.wait_for_everyone()
        saved = at

    started = time.perf_counter()
    with (
        _recomputed(unet, cfg),
        _stage_clock(run_dir, resume, accelerator.is_main_process) as clock,
        StopRequests() as stop,
        _progress_bar(description, cfg.steps, step) as bar,
    ):
        try:
            while step < cfg.steps:
                step_started = time.perf_counter()
                loss = _accumulate(method, data, cfg, step, accelerator)
                signum, bad_loss, mean_loss = _step_outcome(accelerator, stop.signum, loss)
                if bad_loss:
                    raise diverged(f"loss became {mean_loss}", step + 1)
                _optimizer_step(optimizer, params, cfg, step, accelerator)
                result.skipped_steps += bool(getattr(optimizer, "step_was_skipped", False))
                step += 1
                loss = mean_loss
                result.losses.append(loss)
                result.step_times.append(time.perf_counter() - step_started)
                bar.advance(loss=loss)
                if signum:
                    checkpoint(step, loss)
                    raise _stopped(signum, step, cfg, run_dir, accelerator)
                if step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    checkpoint(step, loss)  # the last one lets a finished stage "resume" at once
            # a signal after the last step's check (in its optimizer step or checkpoint): that checkpoint is saved, so
            # the run stops as any stop does, rather than go on to save the artifact and render its preview
            if signum := _agreed_signal(accelerator, stop.signum):
                raise _stopped(signum, step, cfg, run_dir, accelerator)
        except KeyboardInterrupt as exc:
            if isinstance(exc, Interrupted) or stop.again is None:  # a stop of ours, or Ctrl-C before the handler
                raise
            raise stopped(stop.again, f"stopped at once by a second {signal.Signals(stop.again).name} at step "
                          f"{step}/{cfg.steps}; {resume_advice(run_dir, saved)}") from None
        except RERUN_ERRORS as exc:
            if isinstance(exc, RuntimeError) and lost_another_process(exc):
                failing()  # the launcher's SIGTERM to this process, on seeing the other die, is not told in its place
                raise UserError(f"another process of this run stopped at step {step}/{cfg.steps} (the launcher's "
                                f"report below says which and why); {resume_advice(run_dir, saved)}") from exc
            mark_kept_checkpoint(exc, accelerator, run_dir, saved)  # out of memory, a file-size limit...
            raise
    result.step = step
    result.seconds, result.total_seconds = time.perf_counter() - started, clock.seconds
    _warn_of_skipped_steps(result, cfg)
    return result


SKIPPED_STEPS_WARNED = 0.1
"""The share of a run's steps that fp16's loss scaler may skip before a warning says so: a few at the start, while
it finds its scale, are how it works."""


def _warn_of_skipped_steps(result: TrainResult, cfg: TrainConfig) -> None:
    ran = result.step - result.start_step
    if ran and result.skipped_steps > max(3, SKIPPED_STEPS_WARNED * ran):  # the same on every process
        mixed = cfg.full_key("mixed_precision")
        reporting.warn(f"fp16's loss scaler skipped {result.skipped_steps} of the {ran} steps (their gradients "
                       f"overflowed in half precision): fewer updates than asked were made; train in bf16 or fp32 "
                       f"(--precision bf16 or fp32, --set {mixed}=bf16 or no) or with a lower learning rate")

