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


class CrossFrameAttnProcessor:
    """Wraps a self-attention layer's processor: its keys and values come from each video's first frame.

    Every frame of a video attends to the same keys and values, so the layer runs once per video, on the queries of
    all its frames in one sequence (B, F * L, D) against its first frame (B, L, D): the same numbers as frame by
    frame, with the keys and values projected once instead of F times (every other step of the layer, the
    projections, output and residual, is token by token)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        num_frames = _frames.get()
        if encoder_hidden_states is not None or num_frames == 1 or hidden_states.ndim != 3:
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        if hidden_states.shape[0] % num_frames:
            raise ValueError(f"a batch of {hidden_states.shape[0]} is not whole videos of {num_frames} frames")
        videos = hidden_states.unflatten(0, (-1, num_frames))  # (B, F, L, D)
        out = self.inner(attn, videos.flatten(1, 2), videos[:, 0], *args, **kwargs)  # (B, F * L, D)
        return out.unflatten(1, (num_frames, -1)).flatten(0, 1)


def use_cross_frame_attention(model: nn.Module) -> None:
    """Wrap the processor of every self-attention (not `is_cross_attention`) in `model`; `set_attention_backend`
    keeps the wrapping when it installs another backend's processors."""
    from diffusers.models.attention_processor import Attention

    for module in model.modules():
        if isinstance(module, Attention) and not module.is_cross_attention:
            if not isinstance(module.processor, CrossFrameAttnProcessor):
                module.set_processor(CrossFrameAttnProcessor(module.processor))
