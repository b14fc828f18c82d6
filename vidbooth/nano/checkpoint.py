"""A pretraining run folder: per-stage weights and optimizer moments (safetensors) and `state.json`.

Layout of `out/`:
- state.json: stage steps done, wall seconds per stage, the architecture, the probe curve;
- <stage>.safetensors: the stage's model weights; <stage>.optim.safetensors: its AdamW moments;
- curve.csv: the probe curve, one row per evaluation.
Files are written to a temporary name and renamed, so an interrupted write never leaves a torn checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from vidbooth.errors import UserError
from vidbooth.fileio import write_safetensors, write_together

STATE_FILE = "state.json"
CURVE_FILE = "curve.csv"
CURVE_COLUMNS = ("unet_step", "unet_minutes", "loss", "colour", "shape", "motion", "direction", "prompts")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_together([(path, lambda tmp: write_safetensors(tmp, tensors, {"format": "pt"}))])


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise UserError(f"checkpoint {path} is unreadable ({type(exc).__name__}): delete the run folder") from exc


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW moments and step counts as flat tensors ('<param index>.<key>')."""
    return {
        f"{index}.{key}": torch.as_tensor(value)
        for index, per_param in optimizer.state_dict()["state"].items()
        for key, value in per_param.items()
    }


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def read_state(run_dir: Path) -> dict | None:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: delete the run folder and rerun") from exc


def write_state(run_dir: Path, state: dict) -> None:
    """The run's state and its probe curve (as CSV), replaced together."""
    curve = io.StringIO()
    writer = csv.DictWriter(curve, fieldnames=CURVE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(state.get("curve", []))
    write_together([
        (run_dir / STATE_FILE, lambda tmp: tmp.write_text(json.dumps(state, indent=2, sort_keys=True))),
        (run_dir / CURVE_FILE, lambda tmp: tmp.write_text(curve.getvalue(), newline="")),
    ])
