"""Attention backends (sdpa, xformers, math) behind one `attention()` call, and the processor that uses it."""

from vidbooth.attention.backends import (
    attention,
    attention_backend,
    available_backends,
    registered_backends,
    resolve_backend,
)
from vidbooth.attention.processor import VidboothAttnProcessor, set_attention_backend

__all__ = [
    "VidboothAttnProcessor",
    "attention",
    "attention_backend",
    "available_backends",
    "registered_backends",
    "resolve_backend",
    "set_attention_backend",
]
