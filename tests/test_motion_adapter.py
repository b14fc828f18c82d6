"""The motion adapter on both tiny families: no-op at init, placement, training, condition layout, file round trip."""

from __future__ import annotations

import json

import pytest
import torch

from vidbooth.adapters.base import adapters_of, load_tensors, remove, save_tensors, set_scale
from vidbooth.adapters.motion import (
    KIND,
    MotionAdapterSpec,
    inject_motion_adapter,
    load_motion_state_dict,
    motion_parameters,
    motion_state_dict,
    set_appearance,
)
from vidbooth.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = ("unet3d", "animatediff")
ALL_SUBLAYERS = ("attn1", "attn2", "ff")
COND_DIM = 6


@pytest.fixture(params=FAMILIES)
def backbone(request, tiny_backbones):
    bb = tiny_backbones[request.param]
    yield bb
    remove(bb.unet, KIND)  # the session backbones are shared: leave them as found
    remove(bb.unet, "identity")


def inputs(bb, batch=1, frames=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, frames, 8, 8, generator=g)  # (B, C, F, h, w)
    text = bb.encode_prompt(["a dog running"] * batch)
    return latents, torch.tensor(500), text


def forward(bb, latents, t, text):
    with torch.no_grad():
        return bb.unet_forward(latents, t, text)


def inject(bb, targets=ALL_SUBLAYERS, cond_dim=COND_DIM):
    return inject_motion_adapter(bb.unet, bb.temporal_layers(), MotionAdapterSpec(tuple(targets), 0.5, cond_dim))


def randomise(adapters, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters.values():
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_adapter_is_a_no_op_at_init(backbone):
    x = inputs(backbone)
    before = forward(backbone, *x)
    inject(backbone)
    set_appearance(backbone.unet, torch.randn(1, COND_DIM))
    after = forward(backbone, *x)
    assert (after - before).abs().max().item() == 0.0
    randomise(adapters_of(backbone.unet, KIND))  # proves the adapters are on the forward path
    assert (forward(backbone, *x) - before).abs().max().item() > 1e-4


def test_adapters_sit_in_every_temporal_block_and_only_there(backbone):
    temporal = tuple(backbone.temporal_layers())
    names = inject(backbone)
    blocks = {n.rsplit(".", 1)[0] for n in names}
    assert len(names) == 3 * len(blocks)
    assert all(n.startswith(tuple(t + "." for t in temporal)) for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == set(ALL_SUBLAYERS)
    assert len({n.split(".transformer_blocks")[0] for n in names}) == len(temporal)


def test_targets_are_configurable(backbone):
    names = inject(backbone, targets=("ff",))
    assert names and all(n.endswith(".ff") for n in names)
    assert len(names) == len(backbone.temporal_layers())  # one block per temporal transformer in the tiny models


def test_one_step_changes_only_adapter_parameters(backbone):
    inject(backbone)
    adapters = adapters_of(backbone.unet, KIND)
    params = motion_parameters(backbone.unet)
    assert {id(p) for p in backbone.unet.parameters() if p.requires_grad} == {id(p) for p in params}
    frozen = {n: p.detach().clone() for n, p in backbone.unet.named_parameters() if not p.requires_grad}
    ups = {n: a.up.weight.detach().clone() for n, a in adapters.items()}
    downs = {n: a.down.weight.detach().clone() for n, a in adapters.items()}
    latents, t, text = inputs(backbone)
    set_appearance(backbone.unet, torch.randn(1, COND_DIM))
    backbone.unet_forward(latents, t, text).pow(2).mean().backward()
    torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0).step()
    assert all(torch.equal(frozen[n], p) for n, p in backbone.unet.named_parameters() if n in frozen)
    assert all(p.grad is None for n, p in backbone.unet.named_parameters() if n in frozen)
    # W_up starts at zero, so the first step moves every up-projection and nothing upstream of it yet.
    assert all((a.up.weight - ups[n]).abs().max().item() > 1e-3 for n, a in adapters.items())
    assert all(torch.equal(a.down.weight, downs[n]) for n, a in adapters.items())


def test_per_sample_condition_follows_the_token_layout(backbone):
    """Rows of the condition go to their own sample, for a real batch and for CFG's doubled batch."""
    inject(backbone)
    randomise(adapters_of(backbone.unet, KIND))
    latents, t, text = inputs(backbone, batch=2)
    cond = torch.randn(2, COND_DIM, generator=torch.Generator().manual_seed(3))
    set_appearance(backbone.unet, cond)
    batched = forward(backbone, latents, t, text)
    for i in range(2):
        set_appearance(backbone.unet, cond[i : i + 1])
        alone = forward(backbone, latents[i : i + 1], t, text[i : i + 1])
        assert torch.allclose(batched[i : i + 1], alone, atol=1e-5)
    set_appearance(backbone.unet, cond[:1])  # one row applies to every sample (CFG: [negative, positive])
    shared = forward(backbone, latents, t, text)
    set_appearance(backbone.unet, cond[:1].expand(2, -1))
    assert torch.allclose(shared, forward(backbone, latents, t, text), atol=1e-6)
    assert (shared - batched).abs().max().item() > 1e-5  # the condition does change the output


def test_dropped_condition_equals_zero_embedding(backbone):
    """At inference the condition is dropped (None); it must equal the zero embedding seen in training."""
    inject(backbone)
    randomise(adapters_of(backbone.unet, KIND))
    x = inputs(backbone)
    set_appearance(backbone.unet, None)
    dropped = forward(backbone, *x)
    set_appearance(backbone.unet, torch.zeros(1, COND_DIM))
    assert torch.equal(dropped, forward(backbone, *x))


def test_guidance_off_has_no_condition_layer(backbone):
    inject(backbone, cond_dim=None)
    assert all(a.cond is None for a in adapters_of(backbone.unet, KIND).values())
    assert not any(".cond." in k for k in motion_state_dict(backbone.unet))


def test_save_then_load_is_exact(backbone, tmp_path):
    spec = MotionAdapterSpec(ALL_SUBLAYERS, 0.5, COND_DIM)
    inject_motion_adapter(backbone.unet, backbone.temporal_layers(), spec)
    randomise(adapters_of(backbone.unet, KIND))
    set_scale(backbone.unet, KIND, 0.7)
    x = inputs(backbone)
    expected = forward(backbone, *x)
    save_tensors(tmp_path / "m.safetensors", motion_state_dict(backbone.unet), {"spec": spec.to_json()})
    remove(backbone.unet, KIND)

    tensors, meta = load_tensors(tmp_path / "m.safetensors")
    loaded_spec = MotionAdapterSpec.from_json(meta["spec"])
    assert loaded_spec == spec
    inject_motion_adapter(backbone.unet, backbone.temporal_layers(), loaded_spec)
    load_motion_state_dict(backbone.unet, tensors, "m.safetensors")
    set_scale(backbone.unet, KIND, 0.7)
    assert torch.equal(forward(backbone, *x), expected)


@pytest.mark.parametrize("p_image_zero", [0.0, 0.25, 1.0])
def test_training_takes_one_random_frames_appearance_dropped_at_the_given_rate(tiny_backbones, p_image_zero):
    """Appearance guidance conditions each sample on the embedding of one frame picked at random from its clip,
    replaced by zeros with probability p_image_zero (DreamVideo)."""
    from vidbooth.engine.motion import MotionAdapterMethod

    bb = tiny_backbones["unet3d"]
    try:
        method = MotionAdapterMethod(bb, MotionAdapterSpec(ALL_SUBLAYERS, 0.5, 2), p_image_zero)
        per_frame = (torch.arange(4.0) + 1)[None, :, None].expand(2000, 4, 2)  # frame k's embedding is k+1
        chosen = method._appearance({"appearance": per_frame}, torch.Generator().manual_seed(0))[:, 0]
    finally:
        remove(bb.unet, KIND)
    assert (chosen == 0).float().mean().item() == pytest.approx(p_image_zero, abs=0.03)
    if p_image_zero < 1:
        counts = torch.bincount(chosen[chosen > 0].long(), minlength=5)[1:].float()
        assert (counts / counts.sum() - 0.25).abs().max() < 0.04  # each frame about as often


@pytest.mark.parametrize("change, message", [
    ({"targets": "attn1"}, "targets 'attn1' is not a list of attn1, attn2, ff"),
    ({"targets": ["norm1"]}, "is not a list of attn1, attn2, ff"),
    ({"targets": []}, "is not a list"),
    ({"hidden_ratio": "abc"}, r"hidden_ratio 'abc' is not a number in \(0, 4\]"),
    ({"hidden_ratio": 1e6}, "is not a number in"), ({"hidden_ratio": -1}, "is not a number in"),
    ({"cond_dim": -3}, "cond_dim -3 is not a whole number from 1 to 16384"), ({"cond_dim": 10**9}, "from 1 to"),
    ({"cond_dim": 7}, r"its adapter config \(cond_dim 7\) does not fit its tensors"),
    ({"cond_dim": None}, r"\(cond_dim None\) does not fit its tensors"),
])
def test_a_damaged_or_crafted_spec_is_one_error_before_anything_is_built(change, message, tiny_backbones, tmp_path):
    """A spec in a motion's file sized its adapters before the tensors were checked; a bad one was a traceback."""
    from vidbooth.engine.motion import motion_spec_of

    bb = tiny_backbones["unet3d"]
    spec = MotionAdapterSpec(ALL_SUBLAYERS, 0.5, COND_DIM)
    inject_motion_adapter(bb.unet, bb.temporal_layers(), spec)
    tensors = motion_state_dict(bb.unet)
    remove(bb.unet, KIND)
    file = tmp_path / "motions" / "M" / "m.safetensors"  # where the library keeps motion 'M'
    assert motion_spec_of(file, spec.to_json(), tensors) == spec
    crafted = json.dumps(json.loads(spec.to_json()) | change)
    with pytest.raises(UserError, match=message) as refused:
        motion_spec_of(file, crafted, tensors)
    assert str(file) in str(refused.value)
    assert f"retrain it (vidbooth train-motion ... --name M --overwrite), or delete {file.parent}" in str(refused.value)


def _stored_motion(bb, metadata: dict | None = None, change=None) -> None:
    """Motion 'm' in the library, learned on `bb` (left as found); `change` alters its tensors before they are saved,
    `metadata` replaces the file's (the library's seal still matches: a file replaced with its manifest)."""
    from vidbooth import library

    spec = MotionAdapterSpec(ALL_SUBLAYERS, 0.5, None)
    inject_motion_adapter(bb.unet, bb.temporal_layers(), spec)
    tensors = motion_state_dict(bb.unet)
    remove(bb.unet, KIND)
    if change:
        change(tensors)
    manifest = {"name": "m", "kind": "motion", "base": "tiny", "base_fingerprint": bb.fingerprint,
                "class_noun": "square", "paths": {"motion_adapter": "motion_adapter.safetensors", "config": None}}
    with library.staged_artifact("motion", "m") as stage:
        save_tensors(stage / "motion_adapter.safetensors", tensors, {"spec": spec.to_json()} if metadata is None
                     else metadata)
        library.write_json(stage / library.MANIFEST, manifest)


def test_a_motion_loaded_on_a_model_that_has_one_is_one_error_that_keeps_the_first(tiny_backbones, isolated_home):
    import copy

    from vidbooth.engine.motion import load_motion

    bb = copy.deepcopy(tiny_backbones["unet3d"])
    _stored_motion(bb)
    load_motion(bb, "m")
    loaded = dict(adapters_of(bb.unet, KIND))
    with pytest.raises(UserError, match=r"^a motion adapter is already loaded: load one motion \('m'\) at a time$"):
        load_motion(bb, "m", scale=0.5)
    assert adapters_of(bb.unet, KIND) == loaded and all(a.scale == 1.0 for a in loaded.values())


def test_a_motion_file_without_its_adapter_config_is_refused(tiny_backbones, isolated_home):
    import copy

    from vidbooth.engine.motion import load_motion

    bb = copy.deepcopy(tiny_backbones["unet3d"])
    _stored_motion(bb, metadata={"method": "motion"})
    folder = isolated_home / "motions" / "m"
    with pytest.raises(UserError, match=rf"^{folder / 'motion_adapter.safetensors'} lacks its adapter config in the "
                                        r"metadata: retrain it \(vidbooth train-motion \.\.\. --name m --overwrite\), "
                                        rf"or delete {folder}$"):
        load_motion(bb, "m")
    assert not adapters_of(bb.unet, KIND)


@pytest.mark.parametrize("change, message", [
    (lambda tensors: tensors.popitem(), r"does not fit this model \(1 missing, 0 unexpected tensors"),
    (lambda tensors: tensors.update({key: t * float("nan") for key, t in tensors.items()}), "holds NaN or infinite"),
])
def test_a_motion_file_whose_tensors_do_not_load_leaves_no_adapter(change, message, tiny_backbones, isolated_home):
    import copy

    from vidbooth.engine.motion import load_motion

    bb = copy.deepcopy(tiny_backbones["unet3d"])
    _stored_motion(bb, change=change)
    with pytest.raises(UserError, match=message):
        load_motion(bb, "m")
    assert not adapters_of(bb.unet, KIND)
