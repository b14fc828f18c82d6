"""Cross-frame attention (Text2Video-Zero): in a self-attention layer of an image model run on the frames of a
video, every frame takes its keys and values from the first frame of its video, so all frames draw one scene.

The image model sees the frames of B videos as a batch of B * F images, (B * F, L, D), video by video. How many
frames a video has is set around the UNet call (`frames_per_video`); outside it, or at 1 frame, the layers attend
as usual (training on photos, class images).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

_frames: contextvars.ContextVar[int] = contextvars.ContextVar("vidbooth_cross_frame_frames", default=1)


@contextlib.contextmanager
def frames_per_video(num_frames: int) -> Iterator[None]:
    """Within this block, cross-frame attention layers see batches of `num_frames`-frame videos."""
    token = _frames.set(num_frames)
    try:
        yield
    finally:
        _frames.reset(token)


def first_frame_context(hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B * F, L, D) -> the first frame of each video repeated over its frames, (B * F, L, D)."""
    videos = hidden_states.unflatten(0, (-1, num_frames))  # (B, F, L, D)
    return videos[:, :1].expand_as(videos).flatten(0, 1)


class CrossFrameAttnProcessor:
    """Wraps a self-attention layer's processor: its keys and values come from each video's first frame."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        num_frames = _frames.get()
        if encoder_hidden_states is None and num_frames > 1:
            if hidden_states.shape[0] % num_frames:
                raise ValueError(f"a batch of {hidden_states.shape[0]} is not whole videos of {num_frames} frames")
            encoder_hidden_states = first_frame_context(hidden_states, num_frames)
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def use_cross_frame_attention(model: nn.Module) -> list[str]:
    """Wrap the processor of every self-attention (not `is_cross_attention`) in `model`; returns their names.
    Call it after the attention backend is set, which installs fresh processors."""
    from diffusers.models.attention_processor import Attention

    names = []
    for name, module in model.named_modules():
        if isinstance(module, Attention) and not module.is_cross_attention:
            processor = module.processor
            if not isinstance(processor, CrossFrameAttnProcessor):
                module.set_processor(CrossFrameAttnProcessor(processor))
            names.append(name)
    return names
