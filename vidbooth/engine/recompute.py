"""Gradient checkpointing for training (`train.gradient_checkpointing`): the UNet's layers keep only their inputs
for the backward pass and run again to recompute what they need there, trading about one more forward pass of the
UNet for most of the memory its activations take (docs/precision.md#gradient-checkpointing).

It works alike on every family's UNet (diffusers' UNet3DConditionModel has no checkpointing of its own): each
layer of the down, mid and up blocks (resnets, spatial and temporal transformers, temporal convolutions, motion
modules, resamplers) and UNet3D's first temporal transformer is run through `torch.utils.checkpoint` while
gradients are recorded. Adapters injected inside a layer are recomputed with it; at inference (no gradients)
the layers run as they are. The recomputation runs the same operations on the same inputs in the same context
(the context variables of the forward call, such as cross-frame attention's frame count, are carried to it), so
the gradients, and the trained weights, are the same as without it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vidbooth.errors import RECOMPUTING


def recomputed_layers(unet: nn.Module) -> list[nn.Module]:
    """The layers whose activations are recomputed: every member of a block's module lists (the blocks of
    `down_blocks`, `mid_block` and `up_blocks`), and `transformer_in` where the UNet has one."""
    blocks = [*getattr(unet, "down_blocks", ()), getattr(unet, "mid_block", None), *getattr(unet, "up_blocks", ())]
    layers = [getattr(unet, "transformer_in", None)]
    for block in blocks:
        if block is not None:
            layers += [layer for child in block.children() if isinstance(child, nn.ModuleList) for layer in child]
    return [layer for layer in dict.fromkeys(layers) if layer is not None]  # a layer shared by two: wrapped once


def _recomputing(forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        context = contextvars.copy_context()  # as the forward call saw it, for the recomputation in backward
        return checkpoint(context.run, forward, *args, use_reentrant=False, **kwargs)

    return run


@contextlib.contextmanager
def gradient_checkpointing(unet: nn.Module) -> Iterator[int]:
    """Within this block, `unet`'s layers (`recomputed_layers`) recompute their activations in the backward pass;
    yields how many layers that is. The layers are as before afterwards."""
    layers = recomputed_layers(unet)
    if not layers:
        raise ValueError(f"{type(unet).__name__} has no down, mid or up blocks whose layers could be recomputed")
    before = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = _recomputing(layer.forward)
    try:
        yield len(layers)
    except BaseException as exc:
        exc.add_note(RECOMPUTING)
        raise
    finally:
        for layer, forward in zip(layers, before):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
