"""A small attention-backend registry.

Every backend takes query/key/value shaped (B, heads, L, D) and an optional additive or boolean mask
broadcastable to (B, heads, Lq, Lk), and returns (B, heads, Lq, D). `attention()` dispatches to the
backend chosen by, in order: its `backend=` argument, the innermost `with attention_backend(...)`, or
the process default set by `resolve_backend`.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidbooth.errors import UserError

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Backend:
    name: str
    fn: AttentionFn
    is_available: Callable[[torch.device | None], bool]
    why_unavailable: str


_REGISTRY: dict[str, Backend] = {}
_current: contextvars.ContextVar[str] = contextvars.ContextVar("vidbooth_attention", default="sdpa")


def register_backend(name: str, is_available: Callable[[torch.device | None], bool] = lambda d: True, why: str = ""):
    def decorator(fn: AttentionFn) -> AttentionFn:
        _REGISTRY[name] = Backend(name, fn, is_available, why)
        return fn

    return decorator


def _xformers_usable(device: torch.device | None) -> bool:
    """On CUDA (or, with no device, anywhere), whether xformers is installed with its compiled kernels: a wheel built
    for another torch still imports, printing that it has none, and would fail at the first attention."""
    if (device is not None and device.type != "cuda") or importlib.util.find_spec("xformers") is None:
        return False
    try:
        import xformers
    except Exception:  # an install broken otherwise: not usable either
        return False
    return bool(getattr(xformers, "_has_cpp_library", True))


@register_backend("math")
def _math(q, k, v, mask=None):
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)  # (B, h, Lq, Lk); scaled first: fp16 range
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


@register_backend("sdpa")
def _sdpa(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@register_backend(
    "xformers",
    is_available=_xformers_usable,
    why="xformers runs only on CUDA, installed with kernels built for this torch (pip install 'vidbooth[cuda]', or "
        "the xformers release made for your torch version)",
)
def _xformers(q, k, v, mask=None):
    if q.shape[-1] % XFORMERS_HEAD_ALIGNMENT or v.shape[-1] % XFORMERS_HEAD_ALIGNMENT:
        return _sdpa(q, k, v, mask)
    import xformers.ops as xops

    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    if mask is not None:
        # xformers wants a dense (B, h, Lq, Lk) bias whose last dim is aligned in memory.
        lk = k.shape[2]
        padded = (lk + 7) // 8 * 8
        bias = torch.zeros(q.shape[0], q.shape[1], q.shape[2], padded, dtype=q.dtype, device=q.device)
        mask = bias[..., :lk].copy_(mask.expand(q.shape[0], q.shape[1], q.shape[2], lk))
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # xformers works in (B, L, h, D)
    out = torch.cat([
        xops.memory_efficient_attention(q[i : i + XFORMERS_MAX_BATCH], k[i : i + XFORMERS_MAX_BATCH],
                                        v[i : i + XFORMERS_MAX_BATCH],
                                        attn_bias=None if mask is None else mask[i : i + XFORMERS_MAX_BATCH])
        for i in range(0, q.shape[0], XFORMERS_MAX_BATCH)
    ])
    return out.transpose(1, 2)


XFORMERS_HEAD_ALIGNMENT = 8
"""xformers' kernels take heads of a multiple of 8 values only (in fp16 and bf16 on Ampere and later GPUs, 4 in fp32;
'No operator found for memory_efficient_attention_forward ... query.shape[-1] % 8 != 0'): nano's heads of 4, and
the tiny models' of 2 and 4, go through SDPA, which takes any."""

XFORMERS_MAX_BATCH = 65535
"""xformers' kernels fail from a batch of 65536 ('CUDA error: invalid configuration argument', xformers issue 845):
a temporal attention's batch is 2 x videos x latent height x width, 65536 for 8 AnimateDiff videos at 512x512.
Larger batches go through in parts."""


def registered_backends() -> list[str]:
    return sorted(_REGISTRY)


def available_backends(device: torch.device | str | None = None) -> list[str]:
    device = torch.device(device) if isinstance(device, str) else device
    return [n for n in registered_backends() if _REGISTRY[n].is_available(device)]


def resolve_backend(name: str, device: torch.device | str | None = None) -> str:
    """Turn 'auto' or a backend name into a usable backend name for `device`, or raise a UserError."""
    device = torch.device(device) if isinstance(device, str) else device
    name = (name or "auto").lower()
    if name == "auto":
        if device is not None and device.type == "cuda" and _REGISTRY["xformers"].is_available(device):
            return "xformers"
        return "sdpa"
    if name not in _REGISTRY:
        raise UserError(
            f"unknown attention backend '{name}' (from --attention, runtime.attention, or $VIDBOOTH_ATTENTION when "
            "they say auto): "
            f"choose one of auto, {', '.join(registered_backends())}"
        )
    backend = _REGISTRY[name]
    if not backend.is_available(device):
        choices = ", ".join(available_backends(device))
        where = device.type if device is not None else "this machine"
        raise UserError(f"attention backend '{name}' cannot run on {where}: {backend.why_unavailable}; choose {choices}")
    return name


def attention(q, k, v, mask: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """Scaled dot-product attention over (B, heads, L, D) tensors with the selected backend. Over one key with no
    mask (the temporal attention of a 1-frame video: subject training's photos) the softmax is 1 and the result is
    `v` itself, with no kernel run (PyTorch's SDPA took 5x the time of the product there)."""
    if k.shape[-2] == 1 and mask is None:
        return v.expand(*q.shape[:-1], v.shape[-1])
    return _REGISTRY[backend or _current.get()].fn(q, k, v, mask)


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[str]:
    """Use backend `name` for every `attention()` call in this block (and this thread/task)."""
    resolved = resolve_backend(name)
    token = _current.set(resolved)
    try:
        yield resolved
    finally:
        _current.reset(token)
