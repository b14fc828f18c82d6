"""A diffusers attention processor that routes the attention product through `vidbooth.attention`."""

from __future__ import annotations

import torch
from torch import nn

from vidbooth.attention.backends import attention, resolve_backend


class VidboothAttnProcessor:
    """Same math as diffusers' default processor; the attention product goes to the chosen backend.

    `backend=None` follows the current `attention_backend(...)` context.
    """

    def __init__(self, backend: str | None = None):
        self.backend = backend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.ndim == 4:  # (B, C, H, W) -> (B, HW, C)
            image_shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        batch, q_len, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))  # (B, h, L, D)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        out = attention(q, k, v, attention_mask, backend=self.backend)
        out = out.transpose(1, 2).reshape(batch, q_len, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if image_shape is not None:
            out = out.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def set_attention_backend(model: nn.Module, backend: str, device: torch.device | str | None = None) -> str:
    """Install a `VidboothAttnProcessor` on every diffusers `Attention` in `model`; return the backend used. A layer
    with cross-frame attention (`cross_frame.use_cross_frame_attention`) keeps it around the new processor."""
    from diffusers.models.attention_processor import Attention

    from vidbooth.attention.cross_frame import CrossFrameAttnProcessor

    resolved = resolve_backend(backend, device)
    for module in model.modules():
        if isinstance(module, Attention):
            processor = VidboothAttnProcessor(resolved)
            if isinstance(module.processor, CrossFrameAttnProcessor):
                processor = CrossFrameAttnProcessor(processor)
            module.set_processor(processor)
    return resolved
