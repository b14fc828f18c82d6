"""DreamVideo's identity adapter: a bottleneck adapter in parallel to every spatial cross-attention layer (or to
those `identity.layers` names).

    h' = h + GELU(h W_down) W_up,   W_up = 0 at init,   hidden = hidden_ratio x layer width

(`../shared/method.md` §2, subject stage 2). The learned `S*` embedding stays frozen while it trains.
Saved as `identity_adapter.safetensors`: the adapter tensors keyed '<cross-attention layer>.<param>',
with `hidden_ratio` in the metadata so the adapters can be rebuilt before loading, and `conditional_only`
when it was trained for the conditional half of classifier-free guidance only (`identity.guidance_scale`).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

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
    load_tensors,
    remove,
    save_tensors,
)
from vidbooth.errors import UserError

KIND = "identity"
ADAPTER_FILE = "identity_adapter.safetensors"


def subject_kind(name: str) -> str:
    """The adapter kind of a loaded subject, so that several subjects can sit in one model ('.' is not allowed)."""
    return f"{KIND}:{name.replace('%', '%25').replace('.', '%2E')}"


def hidden_size(width: int, hidden_ratio: float) -> int:
    return max(1, round(width * hidden_ratio))


def inject_identity_adapter(
    unet: nn.Module, cross_attention_layers: dict[str, nn.Module], hidden_ratio: float, kind: str = KIND
) -> list[str]:
    """Put a zero-initialised identity adapter beside every layer in `cross_attention_layers`; returns their names."""
    if not cross_attention_layers:
        raise UserError("this model has no spatial cross-attention layers to put an identity adapter in")
    if not 0 < hidden_ratio <= 4:
        raise UserError(f"identity.hidden_ratio must be in (0, 4], got {hidden_ratio}")

    def make_adapter(_name: str, layer: nn.Module) -> BottleneckAdapter:
        width = layer_width(layer)
        return BottleneckAdapter(width, hidden_size(width, hidden_ratio))

    return inject(unet, list(cross_attention_layers), kind, make_adapter)


def select_layers(cross_attention_layers: dict[str, nn.Module], patterns: list[str]) -> dict[str, nn.Module]:
    """The layers whose module name matches one of `patterns` (`*` any text); a UserError if none does."""
    chosen = {
        name: layer for name, layer in cross_attention_layers.items()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    }
    if not chosen:
        example = next(iter(cross_attention_layers), "none")
        raise UserError(
            f"identity.layers {patterns} matches none of this model's {len(cross_attention_layers)} spatial "
            f"cross-attention layers (such as '{example}'): fix the patterns or use ['*']"
        )
    return chosen


def identity_parameters(unet: nn.Module) -> list[nn.Parameter]:
    return [p for adapter in adapters_of(unet, KIND).values() for p in adapter.parameters()]


def identity_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    return adapter_state_dict(unet, KIND)


def mark_conditional_only(unet: nn.Module, kind: str = KIND) -> None:
    """The adapters of `kind` act on the conditional half of guidance only (the sampler zeroes the other)."""
    for adapter in adapters_of(unet, kind).values():
        adapter.conditional_only = True


def save_identity_adapter(path: Path, unet: nn.Module, hidden_ratio: float, metadata: dict) -> None:
    conditional_only = any(a.conditional_only for a in adapters_of(unet, KIND).values())
    meta = {"method": KIND, "hidden_ratio": json.dumps(hidden_ratio)} | metadata
    if conditional_only:
        meta["conditional_only"] = "true"
    save_tensors(path, identity_state_dict(unet), meta)


def load_identity_adapter(
    unet: nn.Module, cross_attention_layers: dict[str, nn.Module], path: Path, kind: str = KIND
) -> dict[str, str]:
    """Inject identity adapters of `kind` shaped as in `path`, beside the layers it holds tensors for, and load its
    tensors; returns the file's metadata."""
    tensors, metadata = load_tensors(path)
    if "hidden_ratio" not in metadata:
        raise UserError(f"{path} has no 'hidden_ratio' in its metadata: it is not a vidbooth identity adapter")
    held = {
        name: layer for name, layer in cross_attention_layers.items() if any(k.startswith(f"{name}.") for k in tensors)
    }  # none: a file for another model, which loading below reports
    try:
        hidden_ratio = hidden_ratio_of(json.loads(metadata["hidden_ratio"]))
    except ValueError as exc:  # not JSON, or not a ratio training makes: checked before the adapters are built
        raise UserError(f"{path}: its metadata is damaged ({exc}): train the identity adapter again") from exc
    with torch.random.fork_rng(devices=[]):  # initial weights, replaced below: the caller's stream stays as it was
        inject_identity_adapter(unet, held or cross_attention_layers, hidden_ratio, kind)
    try:
        load_adapter_state_dict(unet, kind, tensors, str(path))
    except UserError:
        remove(unet, kind)  # leave the model as it was
        raise
    if metadata.get("conditional_only") == "true":
        mark_conditional_only(unet, kind)
    return metadata
