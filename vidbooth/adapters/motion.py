"""DreamVideo's motion adapter: bottleneck adapters in parallel to the layers of every temporal transformer.

Inside each temporal transformer (UNet3D `transformer_in` / `temp_attentions`, AnimateDiff `motion_modules`)
every `BasicTransformerBlock` has a temporal self-attention `attn1`, a second temporal self-attention
`attn2` and a feed-forward `ff`. The adapter goes beside the ones named in `targets` (`../shared/method.md` §2):

    h' = h + GELU(h_e W_down) W_up,   h_e = h + broadcast(e W_cond)

`e` is the appearance embedding of one frame of the training clip. Tokens inside a temporal transformer
are laid out (B*H*W, F, C), sample-major, for both families; `BottleneckAdapter` repeats each row of the
condition over its sample's H*W token groups, so the condition must hold one row per sample, or a single
row that then applies to every sample (what classifier-free guidance's doubled batch needs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vidbooth.adapters.base import (
    BottleneckAdapter,
    adapter_state_dict,
    adapters_of,
    hidden_ratio_of,
    inject,
    layer_width,
    load_adapter_state_dict,
    set_condition,
    whole_number_of,
)
from vidbooth.errors import UserError

KIND = "motion"
SUBLAYERS = ("attn1", "attn2", "ff")
"""The sublayers of a temporal transformer block a motion adapter may sit beside."""
MAX_COND_DIM = 16384
"""The widest appearance embedding a file may declare (CLIP image towers give 512-1280, the VAE fallback 16 per
latent channel: 64 on nano)."""


@dataclass(frozen=True)
class MotionAdapterSpec:
    """What a saved motion adapter needs to be rebuilt; stored in its safetensors metadata."""

    targets: tuple[str, ...]
    """Sublayers of each temporal transformer block to adapt: any of attn1, attn2, ff."""
    hidden_ratio: float
    """Bottleneck width as a fraction of the layer width (DreamVideo's code: half)."""
    cond_dim: int | None
    """Width of the appearance embedding e; None: no appearance guidance."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MotionAdapterSpec:
        """The spec a file's metadata holds; a ValueError (or KeyError, TypeError) for one that training would not
        have written, before any module is built from it."""
        data = json.loads(text)
        targets, cond_dim = data["targets"], data["cond_dim"]
        if not isinstance(targets, list) or not targets or not set(targets) <= set(SUBLAYERS):
            raise ValueError(f"targets {str(targets)[:60]!r} is not a list of {', '.join(SUBLAYERS)}")
        if cond_dim is not None:
            whole_number_of("cond_dim", cond_dim, MAX_COND_DIM)
        return cls(targets=tuple(targets), hidden_ratio=hidden_ratio_of(data["hidden_ratio"]), cond_dim=cond_dim)


def motion_target_names(temporal_layers: dict[str, nn.Module], targets: tuple[str, ...]) -> list[str]:
    """Names (in `unet.named_modules()`) of the sublayers `targets` of every block in the temporal transformers."""
    from diffusers.models.attention import BasicTransformerBlock

    names = []
    for layer_name, layer in temporal_layers.items():
        for block_name, block in layer.named_modules():
            if not isinstance(block, BasicTransformerBlock):
                continue
            for sublayer in targets:
                if getattr(block, sublayer, None) is not None:
                    names.append(f"{layer_name}.{block_name}.{sublayer}")
    return names


def inject_motion_adapter(unet: nn.Module, temporal_layers: dict[str, nn.Module], spec: MotionAdapterSpec) -> list[str]:
    """Put a zero-initialised motion adapter beside every targeted temporal sublayer; returns their names."""
    names = motion_target_names(temporal_layers, spec.targets)
    if not names:
        raise UserError("this model has no temporal transformer layers to put a motion adapter in")

    def make_adapter(_name: str, layer: nn.Module) -> BottleneckAdapter:
        width = layer_width(layer)
        return BottleneckAdapter(width, max(1, round(width * spec.hidden_ratio)), cond_dim=spec.cond_dim)

    return inject(unet, names, KIND, make_adapter)


def motion_parameters(unet: nn.Module) -> list[nn.Parameter]:
    return [p for adapter in adapters_of(unet, KIND).values() for p in adapter.parameters()]


def cast_motion_adapter(unet: nn.Module, dtype: torch.dtype) -> None:
    """Adapters train in fp32; for inference they take the backbone's dtype (fp16/bf16 activations)."""
    for adapter in adapters_of(unet, KIND).values():
        adapter.to(dtype)


def set_appearance(unet: nn.Module, embedding: torch.Tensor | None) -> None:
    """Appearance condition e for the next forwards: (B, cond_dim) one row per sample, (1, cond_dim), or None."""
    set_condition(unet, KIND, embedding)


def motion_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    return adapter_state_dict(unet, KIND)


def load_motion_state_dict(unet: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    load_adapter_state_dict(unet, KIND, state, source)
