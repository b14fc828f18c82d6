"""Device and precision: `auto` means CUDA in fp16 when there is a GPU, else CPU in fp32. Used by the engine and by
evaluate's feature models alike."""

from __future__ import annotations

import torch

from vidbooth.errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from exc
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            have = "1 GPU, cuda:0" if count == 1 else f"{count} GPUs, cuda:0 to cuda:{count - 1}"
            raise UserError(f"--device {name}: this machine has {have}")
        return device
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("mps"):  # a Mac's GPU: auto takes its CPU
        raise UserError(f"--device {name}: Apple GPUs (MPS) are not supported; use --device cpu or auto (the CPU)")
    raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    precision = (precision or "auto").lower()
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in DTYPES:
        raise UserError(f"unknown precision '{precision}': use auto, fp32, fp16 or bf16")
    if precision == "fp16" and device.type == "cpu":
        raise UserError("fp16 is not supported on CPU: use --precision bf16 or fp32")
    return DTYPES[precision]
