"""The bottleneck adapter, the wrapper that puts it in parallel to a frozen layer, and adapter file I/O.

DreamVideo's adapters are one structure (`../shared/method.md` §2):
    delta = GELU(h_e W_down) W_up,   h_e = h + broadcast(e W_cond) when a condition e is given,
added to the wrapped layer's output. `W_up` starts at zero, so an injected model equals its base.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidbooth import __version__
from vidbooth.errors import CHECK_THE_PATH, UserError, not_the_inputs_fault
from vidbooth.fileio import write_safetensors


MAX_HIDDEN_RATIO = 4.0
"""The widest bottleneck, as a fraction of its layer's width, that training makes (the recipes' checks) and a file's
metadata may ask for: the modules are built from it before the file's tensors are checked against them."""


def hidden_ratio_of(value: object) -> float:
    """A bottleneck width ratio read from a file's metadata; a ValueError unless it is a number in (0, 4]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_HIDDEN_RATIO:
        raise ValueError(f"hidden_ratio {_shown(value)} is not a number in (0, {MAX_HIDDEN_RATIO:g}]")
    return float(value)


def whole_number_of(key: str, value: object, maximum: int) -> int:
    """A size read from a file's metadata; a ValueError unless it is a whole number from 1 to `maximum`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(f"{key} {_shown(value)} is not a whole number from 1 to {maximum}")
    return value


def _shown(value: object) -> str:
    """A metadata value in a message: a number as it is, anything else quoted and cut short."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return repr(str(value)[:40])


class BottleneckAdapter(nn.Module):
    """delta(h) = GELU((h + broadcast(e W_cond)) W_down) W_up, scaled by `scale` at inference."""

    def __init__(self, dim: int, hidden_dim: int, cond_dim: int | None = None):
        super().__init__()
        self.down = nn.Linear(dim, hidden_dim)
        self.up = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.cond = nn.Linear(cond_dim, dim, bias=False) if cond_dim else None
        self.scale = 1.0
        self.condition: torch.Tensor | None = None  # (B, cond_dim), set per forward by the method
        self.enabled = True
        self.conditional_only = False
        """Learned for the conditional half of classifier-free guidance only: the sampler zeroes it on the other."""
        self.sample_weights: torch.Tensor | None = None  # (B,) multipliers of each sample's delta, when set

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.cond is not None and self.condition is not None:
            e = self.cond(self.condition.to(h.dtype))  # (B, dim)
            e = e.repeat_interleave(h.shape[0] // e.shape[0], dim=0)  # one copy per token group of each sample
            h = h + e.view(e.shape[0], *([1] * (h.ndim - 2)), e.shape[-1])
        delta = self.up(F.gelu(self.down(h))) * self.scale
        if self.sample_weights is not None:
            w = self.sample_weights.to(delta).repeat_interleave(h.shape[0] // self.sample_weights.shape[0])
            delta = delta * w.view(-1, *([1] * (h.ndim - 1)))
        return delta


class ParallelAdapter(nn.Module):
    """Runs `base_layer` unchanged and adds the outputs of its adapters, computed from the layer's input."""

    def __init__(self, base_layer: nn.Module, adapters: dict[str, BottleneckAdapter] | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict(adapters or {})

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = self.base_layer(hidden_states, *args, **kwargs)
        for adapter in self.adapters.values():
            if adapter.enabled:  # the adapter runs in its own dtype (fp32 while training on a half base)
                out = out + adapter(hidden_states.to(adapter.up.weight.dtype)).to(out.dtype)
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base_layer"], name)  # behave like the wrapped layer (e.g. .processor)


def layer_width(module: nn.Module) -> int:
    """Input width of a layer an adapter can wrap (attention or feed-forward)."""
    if isinstance(module, ParallelAdapter):
        module = module.base_layer
    for attr in ("to_q", "proj_in"):
        sub = getattr(module, attr, None)
        if isinstance(sub, nn.Linear):
            return sub.in_features
    first = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ValueError(f"cannot find the width of {type(module).__name__}")
    return first.in_features


def inject(
    model: nn.Module,
    targets: Iterable[str],
    kind: str,
    make_adapter: Callable[[str, nn.Module], BottleneckAdapter],
) -> list[str]:
    """Put an adapter of `kind` in parallel to every module named in `targets` (names from `model.named_modules()`).

    Checks every target first so a failure leaves the model untouched. A module already wrapped gets
    the new adapter beside the old ones. Adapter weights follow the base layer's device; they are kept in
    fp32 for stable training. Returns the wrapped names.
    """
    targets = list(targets)
    modules = dict(model.named_modules())
    missing = [t for t in targets if t not in modules]
    if missing:
        raise ValueError(f"no such modules: {missing[:3]}")
    for name in targets:
        existing = modules[name]
        wrapper = existing if isinstance(existing, ParallelAdapter) else None
        if wrapper is not None and kind in wrapper.adapters:
            raise ValueError(f"{name} already has a '{kind}' adapter")
    for name in targets:
        layer = modules[name]
        base = layer.base_layer if isinstance(layer, ParallelAdapter) else layer
        param = next(base.parameters())
        adapter = make_adapter(name, base).to(param.device, torch.float32)
        if isinstance(layer, ParallelAdapter):
            layer.adapters[kind] = adapter
        else:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, ParallelAdapter(layer, {kind: adapter}))
    return targets


def adapters_of(model: nn.Module, kind: str) -> dict[str, BottleneckAdapter]:
    """{wrapped layer name: adapter} for every adapter of `kind` in `model`."""
    return {
        name: m.adapters[kind]
        for name, m in model.named_modules()
        if isinstance(m, ParallelAdapter) and kind in m.adapters
    }


def remove(model: nn.Module, kind: str) -> int:
    """Take out every adapter of `kind`; wrappers left empty are replaced by their base layer."""
    count = 0
    for name, wrapper in list(model.named_modules()):
        if isinstance(wrapper, ParallelAdapter) and kind in wrapper.adapters:
            del wrapper.adapters[kind]
            count += 1
            if not wrapper.adapters:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, wrapper.base_layer)
    return count


def set_scale(model: nn.Module, kind: str, scale: float) -> None:
    for adapter in adapters_of(model, kind).values():
        adapter.scale = float(scale)


@contextlib.contextmanager
def adapters_off(model: nn.Module, kind: str) -> Iterator[None]:
    """Every adapter of `kind` switched off inside the block (as if not injected)."""
    adapters = list(adapters_of(model, kind).values())
    states = [a.enabled for a in adapters]
    for a in adapters:
        a.enabled = False
    try:
        yield
    finally:
        for a, state in zip(adapters, states):
            a.enabled = state


@contextlib.contextmanager
def conditional_half_only(model: nn.Module, batch_size: int) -> Iterator[None]:
    """For a guidance batch [unconditional x batch_size, conditional x batch_size]: adapters marked
    `conditional_only` act on the conditional half only inside the block (any adapter module with the
    `conditional_only` and `sample_weights` attributes of `BottleneckAdapter`)."""
    adapters = [m for m in model.modules() if getattr(m, "conditional_only", False) and hasattr(m, "sample_weights")]
    if not adapters:
        yield
        return
    device = adapters[0].up.weight.device  # made once, not moved in every layer's forward
    weights = torch.cat([torch.zeros(batch_size, device=device), torch.ones(batch_size, device=device)])
    for a in adapters:
        a.sample_weights = weights
    try:
        yield
    finally:
        for a in adapters:
            a.sample_weights = None


def set_condition(model: nn.Module, kind: str, condition: torch.Tensor | None) -> None:
    """Give every conditioned adapter of `kind` the per-sample condition (B, cond_dim) for the next forwards."""
    for adapter in adapters_of(model, kind).values():
        adapter.condition = condition


def adapter_state_dict(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """Only the adapter tensors of `kind`, keyed '<wrapped layer>.<param>'."""
    return {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, adapter in adapters_of(model, kind).items()
        for key, value in adapter.state_dict().items()
    }


def load_adapter_state_dict(model: nn.Module, kind: str, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Load tensors saved by `adapter_state_dict`; missing or unexpected keys are an error."""
    adapters = adapters_of(model, kind)
    expected = {f"{n}.{k}": (a, k) for n, a in adapters.items() for k in a.state_dict()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"adapter file {source} does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected "
            f"tensors, e.g. {(missing or unexpected)[0]}): it was trained on another base model, or altered since"
        )
    for key, (adapter, param_key) in expected.items():  # all checked before any is loaded
        target = adapter.get_parameter(param_key)
        if target.shape != state[key].shape:
            raise UserError(f"adapter file {source} does not fit this model (tensor {key} is "
                            f"{tuple(state[key].shape)} in the file, {tuple(target.shape)} here): it was trained on "
                            "another base, or altered since; use that --base, or retrain it")
        check_values(source, key, state[key])
    with torch.no_grad():
        for key, (adapter, param_key) in expected.items():
            adapter.get_parameter(param_key).copy_(state[key])


def check_values(source: object, key: str, tensor: torch.Tensor) -> None:
    """A UserError for a tensor no training writes: whole numbers or booleans (which loading would cast silently),
    or NaN or infinite values (which would turn every video into noise, blamed on the sampling settings)."""
    if not tensor.is_floating_point():
        raise UserError(f"{source}: tensor {key} holds {str(tensor.dtype).removeprefix('torch.')} values, not "
                        "floating-point ones: it was not made by vidbooth")
    if not torch.isfinite(tensor).all():
        raise UserError(f"{source}: tensor {key} holds NaN or infinite values (damaged, or saved from a training "
                        "that diverged): train it again")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """safetensors with the config and provenance as JSON metadata (the file describes itself)."""
    meta = {"format": "pt", "vidbooth_version": __version__}
    meta.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()})
    write_safetensors(path, tensors, meta)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file and its metadata. Pickle files are refused: they can run code when loaded."""
    with _safetensors(path) as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def load_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, checked as `load_tensors` checks it, without reading its tensors."""
    with _safetensors(path) as f:
        return dict(f.metadata() or {})


@contextlib.contextmanager
def _safetensors(path: Path):
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(f"refusing to load {path}: pickle files ({path.suffix}) can run code; convert it to .safetensors")
    if path.is_dir():
        raise UserError(f"{path} is a folder: give the .safetensors file in it")
    if not path.is_file():
        raise UserError(f"file not found: {path}: {CHECK_THE_PATH}")
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except UserError:
        raise
    except Exception as exc:
        not_the_inputs_fault(exc)
        raise UserError(f"{path} is not a valid safetensors file (corrupt or truncated): retrain or replace it") from exc
