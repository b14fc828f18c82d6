"""One table over every adapter kind (PEFT's TEST_CASES style), on both tiny backbone families:

- attaching the adapter leaves the model's output unchanged;
- one optimizer step changes only the parameters the adapter trains;
- saving, then loading into a fresh backbone, reproduces the outputs exactly.

To add a kind, append an `AdapterCase` to `CASES`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vidbooth.adapters import identity, motion, textual_inversion
from vidbooth.adapters.base import load_tensors, save_tensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = ("unet3d", "animatediff")


@dataclass(frozen=True)
class AdapterCase:
    name: str
    attach: Callable[[object], None]
    """Add the adapter to a backbone, in the state training starts from."""
    trainable: Callable[[object], list[torch.nn.Parameter]]
    """The parameters training optimises."""
    save: Callable[[object, Path], None]
    """Write the adapter's trained state into a folder."""
    load: Callable[[object, Path], None]
    """Apply a saved state to a fresh backbone."""
    prompt: str = "a photo of S* dog"
    """A prompt the adapter acts on (textual inversion: one holding its token)."""
    base_prompt: str = "a photo of a dog"
    """A prompt whose output must not change when the adapter is attached."""
    num_frames: int = 2


# ---- textual inversion ----------------------------------------------------------------------------
def _attach_textual_inversion(bb) -> None:
    init = textual_inversion.initial_rows(bb.text_encoder, textual_inversion.class_noun_ids(bb.tokenizer, "dog"), 1)
    ids = textual_inversion.add_placeholder_tokens(bb.tokenizer, bb.text_encoder, ["S*"], init)
    textual_inversion.wrap_placeholder_embedding(bb.text_encoder, ids)


def _save_textual_inversion(bb, folder: Path) -> None:
    rows = textual_inversion.merge_placeholder_embedding(bb.text_encoder)
    textual_inversion.save_learned_embeddings(folder / textual_inversion.EMBEDDINGS_FILE, "S*", rows, {})


def _load_textual_inversion(bb, folder: Path) -> None:
    textual_inversion.load_learned_embeddings(bb.tokenizer, bb.text_encoder, folder / textual_inversion.EMBEDDINGS_FILE)


# ---- identity adapter -----------------------------------------------------------------------------
def _attach_identity(bb) -> None:
    identity.inject_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), hidden_ratio=0.5)


def _save_identity(bb, folder: Path) -> None:
    identity.save_identity_adapter(folder / identity.ADAPTER_FILE, bb.unet, 0.5, {})


def _load_identity(bb, folder: Path) -> None:
    identity.load_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), folder / identity.ADAPTER_FILE)


# ---- motion adapter (appearance-conditioned) ------------------------------------------------------
MOTION_SPEC = motion.MotionAdapterSpec(("attn1", "attn2", "ff"), 0.5, cond_dim=6)
APPEARANCE = torch.randn(1, 6, generator=torch.Generator().manual_seed(0))


def _attach_motion(bb) -> None:
    motion.inject_motion_adapter(bb.unet, bb.temporal_layers(), MOTION_SPEC)
    motion.set_appearance(bb.unet, APPEARANCE)


def _save_motion(bb, folder: Path) -> None:
    save_tensors(folder / "motion.safetensors", motion.motion_state_dict(bb.unet), {"spec": MOTION_SPEC.to_json()})


def _load_motion(bb, folder: Path) -> None:
    tensors, meta = load_tensors(folder / "motion.safetensors")
    motion.inject_motion_adapter(bb.unet, bb.temporal_layers(), motion.MotionAdapterSpec.from_json(meta["spec"]))
    motion.load_motion_state_dict(bb.unet, tensors, "motion.safetensors")
    motion.set_appearance(bb.unet, APPEARANCE)


CASES = [
    AdapterCase(
        "textual_inversion",
        _attach_textual_inversion,
        lambda bb: [bb.text_encoder.get_input_embeddings().rows],
        _save_textual_inversion,
        _load_textual_inversion,
    ),
    AdapterCase(
        "identity", _attach_identity, lambda bb: identity.identity_parameters(bb.unet), _save_identity, _load_identity
    ),
    AdapterCase(
        "motion", _attach_motion, lambda bb: motion.motion_parameters(bb.unet), _save_motion, _load_motion, num_frames=4
    ),
]


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def fresh(tiny_backbones, family):
    """A private copy of the session backbone of `family`: cases may change its tokenizer and layers."""
    return lambda: copy.deepcopy(tiny_backbones[family])


def _named_weights(bb) -> dict[str, torch.nn.Parameter]:
    return {
        f"{part}.{name}": p
        for part in ("text_encoder", "vae", "unet")
        for name, p in getattr(bb, part).named_parameters()
    }


def _output(bb, case: AdapterCase, prompt: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, case.num_frames, 8, 8, generator=g)  # (B, C, F, h, w)
    return bb.unet_forward(latents, torch.tensor(500), bb.encode_prompt([prompt]))


def _one_step(bb, case: AdapterCase) -> None:
    params = case.trainable(bb)
    _output(bb, case, case.prompt).pow(2).mean().backward()
    torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0).step()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_attaching_leaves_output_unchanged(case, fresh):
    bb = fresh()
    with torch.no_grad():
        before = _output(bb, case, case.base_prompt)
        case.attach(bb)
        assert torch.equal(_output(bb, case, case.base_prompt), before)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_one_step_changes_only_trainable_parameters(case, fresh):
    bb = fresh()
    case.attach(bb)
    trainable = {id(p) for p in case.trainable(bb)}
    weights = _named_weights(bb)
    assert trainable and trainable == {id(p) for p in weights.values() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in weights.items()}
    _one_step(bb, case)
    changed = {name for name, p in weights.items() if not torch.equal(p, before[name])}
    assert changed, "the step changed nothing"
    assert all(id(weights[name]) in trainable for name in changed), sorted(changed)[:3]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_save_then_load_reproduces_outputs(case, fresh, tmp_path):
    trained = fresh()
    with torch.no_grad():
        untouched = _output(trained, case, case.prompt)
    case.attach(trained)
    _one_step(trained, case)
    with torch.no_grad():
        expected = _output(trained, case, case.prompt)
        case.save(trained, tmp_path)
        loaded = fresh()
        case.load(loaded, tmp_path)
        assert torch.equal(_output(loaded, case, case.prompt), expected)
    assert not torch.equal(expected, untouched)


@pytest.mark.parametrize("ratio", ["1000000.0", "-0.5", '"half"', "true", "not json"])
def test_an_identity_adapter_file_whose_ratio_training_would_not_write_is_one_error(ratio, tiny_backbones, tmp_path):
    """The file's hidden_ratio sizes the adapters before its tensors are checked: 1e6 asked for gigabytes."""
    from vidbooth.adapters.base import adapters_of
    from vidbooth.errors import UserError

    bb = tiny_backbones["unet3d"]
    _attach_identity(bb)
    tensors = identity.identity_state_dict(bb.unet)
    identity.remove(bb.unet, identity.KIND)
    save_tensors(tmp_path / "id.safetensors", tensors, {"method": "identity", "hidden_ratio": ratio})
    with pytest.raises(UserError, match=r"id.safetensors: its metadata is damaged .*train the identity adapter again"):
        identity.load_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), tmp_path / "id.safetensors")
    assert not adapters_of(bb.unet, identity.KIND)


def _identity_tensors(bb) -> dict[str, torch.Tensor]:
    """The tensors of an identity adapter of ratio 0.5 on `bb`, which is left without one."""
    _attach_identity(bb)
    tensors = identity.identity_state_dict(bb.unet)
    identity.remove(bb.unet, identity.KIND)
    return tensors


def test_an_identity_adapter_file_without_its_hidden_ratio_is_refused(tiny_backbones, tmp_path):
    from vidbooth.adapters.base import adapters_of
    from vidbooth.errors import UserError

    bb = copy.deepcopy(tiny_backbones["unet3d"])
    path = tmp_path / "id.safetensors"
    save_tensors(path, _identity_tensors(bb), {"method": "identity"})
    with pytest.raises(UserError, match=rf"^{path} has no 'hidden_ratio' in its metadata: it is not a vidbooth "
                                        "identity adapter$"):
        identity.load_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), path)
    assert not adapters_of(bb.unet, identity.KIND)


@pytest.mark.parametrize("ratio, message", [("0.25", r"does not fit this model \(tensor .* is \(\d+, \d+\) in the "
                                                     r"file, \(\d+, \d+\) here\)"),
                                            ("0.5", r"holds NaN or infinite values")])
def test_an_identity_adapter_file_whose_tensors_do_not_load_leaves_no_adapter(ratio, message, tiny_backbones,
                                                                             tmp_path):
    from vidbooth.adapters.base import adapters_of
    from vidbooth.errors import UserError

    bb = copy.deepcopy(tiny_backbones["unet3d"])
    tensors = _identity_tensors(bb)
    if ratio == "0.5":
        first = next(iter(tensors))
        tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_tensors(tmp_path / "id.safetensors", tensors, {"method": "identity", "hidden_ratio": ratio})
    with pytest.raises(UserError, match=message):
        identity.load_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), tmp_path / "id.safetensors")
    assert not adapters_of(bb.unet, identity.KIND)


def _embeddings_only_subject(bb, tensors: dict[str, torch.Tensor]) -> None:
    """Subject 'S*' in the library, learned on `bb`, of a pseudo-word alone (no identity adapter)."""
    from vidbooth import library

    manifest = {"name": "S*", "kind": "subject", "base": "tiny", "base_fingerprint": bb.fingerprint,
                "class_noun": "dog", "num_vectors": 1, "token": "S*", "tokens": ["S*"],
                "paths": {"embeddings": textual_inversion.EMBEDDINGS_FILE, "identity_adapter": None, "config": None}}
    with library.staged_artifact("subject", "S*") as stage:
        save_tensors(stage / textual_inversion.EMBEDDINGS_FILE, tensors, {"method": "textual_inversion"})
        library.write_json(stage / library.MANIFEST, manifest)


def test_a_subject_of_a_pseudo_word_alone_loaded_twice_is_one_error_that_changes_nothing(tiny_backbones):
    from vidbooth.engine.subject import load_subject
    from vidbooth.errors import UserError

    bb = copy.deepcopy(tiny_backbones["unet3d"])
    width = bb.text_encoder.get_input_embeddings().embedding_dim
    _embeddings_only_subject(bb, {"S*": torch.randn(1, width)})
    load_subject(bb, "S*")
    vocab, rows = len(bb.tokenizer), bb.text_encoder.get_input_embeddings().weight.detach().clone()
    with pytest.raises(UserError, match=r"^token 'S\*' is already in use \(a subject loaded twice\?\): load each "
                                        "subject once$"):
        load_subject(bb, "S*")
    assert len(bb.tokenizer) == vocab and torch.equal(bb.text_encoder.get_input_embeddings().weight, rows)


def test_a_subjects_embeddings_file_of_two_tensors_is_refused_before_any_token_is_added(tiny_backbones):
    from vidbooth.engine.subject import load_subject
    from vidbooth.errors import UserError

    bb = copy.deepcopy(tiny_backbones["unet3d"])
    width = bb.text_encoder.get_input_embeddings().embedding_dim
    _embeddings_only_subject(bb, {"S*": torch.randn(1, width), "T*": torch.randn(1, width)})
    vocab = len(bb.tokenizer)
    with pytest.raises(UserError, match=rf"{textual_inversion.EMBEDDINGS_FILE} holds 2 tensors, expected one "
                                        r"\{token: embedding\}: retrain the subject$"):
        load_subject(bb, "S*")
    assert len(bb.tokenizer) == vocab
