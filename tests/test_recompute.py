"""Gradient checkpointing (engine/recompute.py): the same outputs and gradients for a fraction of the activations
kept for the backward pass, on every family's UNet, and the layers as they were afterwards."""

from __future__ import annotations

import contextlib

import pytest
import torch

from vidbooth.adapters.base import remove
from vidbooth.adapters.identity import KIND as IDENTITY
from vidbooth.adapters.identity import identity_parameters, inject_identity_adapter
from vidbooth.engine.backbone import load_backbone
from vidbooth.engine.recompute import gradient_checkpointing, recomputed_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backbones(tiny_backbones, tiny_base_dirs):
    """Each family: UNet3D, AnimateDiff's UNetMotionModel, and an image model animated zero-shot, whose
    cross-frame attention reads its frame count from a context variable set around the UNet call only: the
    recomputation in the backward pass, after that call, must see it as the forward pass did."""
    return tiny_backbones | {"zero-shot": load_backbone(str(tiny_base_dirs["animatediff"]), device="cpu")}


@contextlib.contextmanager
def _identity_adapter(bb):
    """An identity adapter whose up-projections are not zero, so that every one of its weights gets a gradient."""
    inject_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), 0.5)
    params = identity_parameters(bb.unet)
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.1)
    try:
        yield params
    finally:
        remove(bb.unet, IDENTITY)


def _step(bb, params, context):
    """One loss and its backward pass: the prediction, the gradients of the text and of `params`, and the bytes of
    the tensors kept for backward outside the recomputed layers."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 3, 8, 8, generator=g)
    text = torch.randn(2, bb.tokenizer.model_max_length, bb.text_encoder.config.hidden_size, generator=g)
    text.requires_grad_(True)
    kept = []

    def pack(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    for p in params:
        p.grad = None
    with context, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        prediction = bb.unet_forward(latents, torch.tensor([300, 700]), text)
        prediction.pow(2).mean().backward()
    return prediction.detach(), [text.grad, *(p.grad for p in params)], sum(kept)


@pytest.mark.parametrize("family", ["unet3d", "animatediff", "zero-shot"])
def test_the_same_prediction_and_gradients_for_a_fraction_of_the_kept_activations(backbones, family):
    bb = backbones[family]
    with _identity_adapter(bb) as params:
        prediction, grads, kept = _step(bb, params, contextlib.nullcontext())
        with gradient_checkpointing(bb.unet) as count:
            recomputed, recomputed_grads, recomputed_kept = _step(bb, params, contextlib.nullcontext())
    assert count == len(recomputed_layers(bb.unet)) > 10
    assert torch.equal(prediction, recomputed)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(torch.equal(a, b) for a, b in zip(grads, recomputed_grads, strict=True))
    assert recomputed_kept < kept / 5  # the layers' activations are not kept


def test_layers_run_as_they_are_without_gradients_and_are_restored_after(backbones, monkeypatch):
    bb = backbones["unet3d"]
    layers = recomputed_layers(bb.unet)
    monkeypatch.setattr("vidbooth.engine.recompute.checkpoint", lambda *a, **k: pytest.fail("checkpointed"))
    latents, text = torch.zeros(1, 4, 2, 8, 8), torch.zeros(1, 32, bb.text_encoder.config.hidden_size)
    with torch.no_grad():
        before = bb.unet_forward(latents, torch.tensor([10]), text)
        with gradient_checkpointing(bb.unet):
            assert all("forward" in layer.__dict__ for layer in layers)
            assert torch.equal(bb.unet_forward(latents, torch.tensor([10]), text), before)
    assert not any("forward" in layer.__dict__ for layer in layers)
    with pytest.raises(ValueError, match="no down, mid or up blocks"):
        with gradient_checkpointing(torch.nn.Linear(2, 2)):
            pass


def test_under_bf16_autocast_the_recomputation_is_autocast_too(backbones):
    """Mixed-precision training (`train.mixed_precision`): the backward pass runs the layers again in the forward
    pass's autocast state; in fp32 they would keep tensors of another type and be refused."""
    bb = backbones["unet3d"]
    with _identity_adapter(bb) as params:
        prediction, grads, _ = _step(bb, params, torch.autocast("cpu", dtype=torch.bfloat16))
        with gradient_checkpointing(bb.unet):
            recomputed, recomputed_grads, _ = _step(bb, params, torch.autocast("cpu", dtype=torch.bfloat16))
    assert prediction.dtype == torch.bfloat16 and torch.equal(prediction, recomputed)
    assert all(torch.equal(a, b) for a, b in zip(grads, recomputed_grads, strict=True))


def test_a_layer_shared_by_two_blocks_is_wrapped_once_and_restored():
    """Wrapped twice, its restoring had failed on the second `del layer.forward`."""
    shared = torch.nn.Linear(2, 2)
    block = torch.nn.Module()
    block.resnets = torch.nn.ModuleList([shared])
    unet = torch.nn.Module()
    unet.down_blocks = torch.nn.ModuleList([block])
    unet.up_blocks = torch.nn.ModuleList([block])
    assert recomputed_layers(unet) == [shared]
    with gradient_checkpointing(unet) as count:
        x = torch.ones(1, 2, requires_grad=True)
        shared(x).sum().backward()
    assert count == 1 and "forward" not in shared.__dict__ and x.grad is not None


def test_unet3ds_first_temporal_transformer_is_recomputed_too(backbones):
    unet = backbones["unet3d"].unet
    assert unet.transformer_in in recomputed_layers(unet)


def test_a_forward_already_set_on_a_layer_is_put_back():
    """A layer whose instance forward was replaced before (a hook, an outer wrapper) gets that one back."""
    layer = torch.nn.Linear(2, 2)
    own = layer.forward
    layer.forward = lambda x: own(x) * 2
    block = torch.nn.Module()
    block.resnets = torch.nn.ModuleList([layer])
    unet = torch.nn.Module()
    unet.down_blocks = torch.nn.ModuleList([block])
    set_before = layer.forward
    with gradient_checkpointing(unet):
        assert layer.forward is not set_before
    assert layer.forward is set_before


def test_training_with_gradient_checkpointing_needs_the_unet(tmp_path):
    """A caller that forgot train(..., unet=) is told, rather than trained without it."""
    from vidbooth.config.train import TrainConfig
    from vidbooth.engine.train import make_accelerator, train

    class Nothing:
        def trainable_parameters(self):
            return [torch.nn.Parameter(torch.zeros(1))]

    with pytest.raises(ValueError, match=r"gradient checkpointing needs the UNet: pass train\(..., unet=\)"):
        train(Nothing(), [{"x": torch.zeros(1)}], TrainConfig(steps=1, gradient_checkpointing=True), tmp_path,
              make_accelerator("no", device="cpu"))
