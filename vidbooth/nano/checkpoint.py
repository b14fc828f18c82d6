"""A pretraining run folder: per-stage weights and optimizer moments (safetensors) and `state.json`.

Layout of `out/`:
- state.json: stage steps done, wall seconds per stage, the architecture, the probe curve;
- <stage>.safetensors: the stage's model weights; <stage>.optim.safetensors: its AdamW moments;
- curve.csv: the probe curve, one row per evaluation.
A checkpoint's files are written to temporary names and renamed together, and each weights file records its
step, so an interrupted save never leaves weights of one step beside the state of another unnoticed. The renames
are recorded in saving.json first: a run killed while renaming is finished by the next `--resume`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import torch

from vidbooth.errors import UserError, not_the_inputs_fault
from vidbooth.fileio import finish_writing, remove_stale_temporaries, write_safetensors, write_together
from vidbooth.nano.arch import JOURNAL_FILE, STATE_FILE

CURVE_FILE = "curve.csv"
CURVE_COLUMNS = ("unet_step", "unet_minutes", "loss", "colour", "shape", "motion", "direction", "prompts")


def tensors_write(path: Path, tensors: dict[str, torch.Tensor], step: int) -> tuple[Path, Callable[[Path], None]]:
    """The (path, write) of a `write_together` that saves `tensors` as of `step`."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return path, lambda tmp: write_safetensors(tmp, tensors, {"format": "pt", "step": str(step)})


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], step: int = 0) -> None:
    write_together([tensors_write(path, tensors, step)])


def load_tensors(path: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors in `path`; with `step`, refused unless they were saved at that step (files from before steps
    were recorded pass)."""
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"checkpoint {path} is missing: delete the run folder, or pass another --out, and start over")
    try:
        with safe_open(str(path), framework="pt") as file:
            saved_step = (file.metadata() or {}).get("step")
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except Exception as exc:
        not_the_inputs_fault(exc)
        raise UserError(f"checkpoint {path} cannot be read (damaged or cut short: {type(exc).__name__}): delete the "
                        "run folder and start over") from exc
    if step is not None and saved_step is not None and saved_step != str(step):
        raise UserError(
            f"checkpoint {path} holds step {saved_step} but {STATE_FILE} says {step} (the run was stopped while "
            "saving): delete the run folder, or pass another --out, and start over"
        )
    return tensors


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """The shape of each tensor in `path`; empty when the file cannot be read (`restore` says why)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return {key: file.get_slice(key).get_shape() for key in file.keys()}
    except Exception:
        return {}


def restore(path: Path, step: int, load: Callable[[dict[str, torch.Tensor]], object]) -> None:
    """`load` the tensors of `path`, saved at `step`, into a model or optimizer; tensors that do not fit it (of
    other shapes or names: a damaged or edited file) are refused in one line."""
    tensors = load_tensors(path, step)
    try:
        load(tensors)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"checkpoint {path} does not fit this run (damaged or edited: {type(exc).__name__}): delete "
                        "the run folder and start over") from exc


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW moments and step counts as flat tensors ('<param index>.<key>')."""
    return {
        f"{index}.{key}": torch.as_tensor(value)
        for index, per_param in optimizer.state_dict()["state"].items()
        for key, value in per_param.items()
    }


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    if not tensors:  # the moments of steps taken: an empty file had restarted them without a word
        raise ValueError("no AdamW moments")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def read_state(run_dir: Path, stages: tuple[str, ...] = ()) -> dict | None:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{path} is not valid JSON: delete the run folder and rerun") from exc
    if not _state_shape(state) or not all(stage in state["steps"] and stage in state["seconds"] for stage in stages):
        raise UserError(f"{path} is damaged (its settings, step counts or curve are missing or of another kind): "
                        "delete the run folder and rerun")
    return state


def _state_shape(state: object) -> bool:
    """Whether a run's state holds what a save writes (an edited or damaged one had been a traceback)."""
    def numbers(value: object, kind: Callable[[object], bool]) -> bool:
        return isinstance(value, dict) and all(kind(v) for v in value.values())

    def probe(row: object) -> bool:
        return isinstance(row, dict) and _whole(row.get("unet_step"))

    arch = state.get("arch", state.get("architecture")) if isinstance(state, dict) else None
    return (isinstance(arch, dict) and isinstance(arch.get("unet"), dict)
            and all(_whole(state.get(key)) for key in ("seed", "split_seed"))
            and numbers(state.get("steps"), _whole) and numbers(state.get("seconds"), _number)
            and isinstance(state.get("curve"), list) and all(probe(row) for row in state["curve"])
            and _number(state.get("vae_scaling_factor", 1.0))  # true had scaled the latents by 1
            and isinstance(state.get("fresh_moments", []), list))


def _whole(value: object) -> bool:
    """A JSON whole number: not true or false, which Python takes for 1 and 0 and no save writes."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def provenance_shape(provenance: object, stages: tuple[str, ...]) -> bool:
    """Whether an exported model's nano.json holds what `--init-from` takes from it (a run's state, in minutes)."""
    return (isinstance(provenance, dict) and _state_shape(provenance | {"seconds": provenance.get("minutes")})
            and all(stage in provenance["steps"] and stage in provenance["minutes"] for stage in stages)
            and _number(provenance.get("logit_scale", 1.0)))


def state_writes(run_dir: Path, state: dict) -> list[tuple[Path, Callable[[Path], object]]]:
    """The (path, write) pairs of a `write_together` that saves the run's state and its probe curve (as CSV)."""
    curve = io.StringIO()
    writer = csv.DictWriter(curve, fieldnames=CURVE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(state.get("curve", []))
    text = json.dumps(state, indent=2, sort_keys=True)
    return [
        (run_dir / STATE_FILE, lambda tmp: tmp.write_text(text)),
        (run_dir / CURVE_FILE, lambda tmp: tmp.write_text(curve.getvalue(), newline="")),
    ]


def write_state(run_dir: Path, state: dict) -> None:
    """The run's state and its probe curve, replaced together."""
    write_together(state_writes(run_dir, state), run_dir / JOURNAL_FILE)


def finish_stopped_save(run_dir: Path) -> bool:
    """Finish the checkpoint that a run killed while saving it had written but not put in place, and remove the
    temporary files a killed run left; True when there was a save to finish. Call it with the run's lock held."""
    finished = finish_writing(run_dir / JOURNAL_FILE)
    for pattern in (".tmp-*", ".old-*"):  # new files not put in place; old ones kept to be put back
        remove_stale_temporaries(run_dir, pattern, older_than_s=0)
    return finished
