"""Joint inference: subject and motion adapters together, the prompt, and the checks before loading."""

from __future__ import annotations

import shutil

import pytest
import torch

from vidbooth.adapters.base import BottleneckAdapter, ParallelAdapter, adapters_of, remove, set_scale
from vidbooth.adapters.identity import KIND as IDENTITY, inject_identity_adapter, subject_kind
from vidbooth.adapters.motion import KIND as MOTION, MotionAdapterSpec, inject_motion_adapter, set_appearance
from vidbooth.engine.compose import apply_personalisation, with_subject_token
from vidbooth.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = ("unet3d", "animatediff")


# ---- the adapters compose by addition, whatever the order ------------------------------------------
@pytest.fixture(params=FAMILIES)
def backbone(request, tiny_backbones):
    bb = tiny_backbones[request.param]
    yield bb
    remove(bb.unet, MOTION)
    remove(bb.unet, IDENTITY)


def randomised(bb, kind, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters_of(bb.unet, kind).values():
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def add_identity(bb):
    inject_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), 0.5)
    randomised(bb, IDENTITY, seed=1)


def add_motion(bb):
    inject_motion_adapter(bb.unet, bb.temporal_layers(), MotionAdapterSpec(("attn1", "attn2", "ff"), 0.5, 6))
    randomised(bb, MOTION, seed=2)
    set_appearance(bb.unet, None)


def output(bb):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 4, 8, 8, generator=g)  # (B, C, F, h, w): a CFG-sized batch
    with torch.no_grad():
        return bb.unet_forward(latents, torch.tensor(400), bb.encode_prompt(["", "a dog running"]))


def test_subject_and_motion_adapters_touch_disjoint_layers(backbone):
    add_identity(backbone)
    add_motion(backbone)
    identity, motion = set(adapters_of(backbone.unet, IDENTITY)), set(adapters_of(backbone.unet, MOTION))
    assert identity and motion and not identity & motion
    temporal = tuple(name + "." for name in backbone.temporal_layers())
    assert all(n.startswith(temporal) for n in motion) and not any(n.startswith(temporal) for n in identity)


def test_composition_does_not_depend_on_loading_order(backbone):
    add_identity(backbone)
    add_motion(backbone)
    subject_first = output(backbone)
    remove(backbone.unet, IDENTITY)
    remove(backbone.unet, MOTION)
    add_motion(backbone)
    add_identity(backbone)
    assert torch.equal(output(backbone), subject_first)


def test_each_scale_switches_its_adapter_alone(backbone):
    base = output(backbone)
    add_identity(backbone)
    subject_only = output(backbone)
    add_motion(backbone)
    both = output(backbone)
    set_scale(backbone.unet, MOTION, 0.0)
    assert torch.equal(output(backbone), subject_only)
    set_scale(backbone.unet, MOTION, 1.0)
    set_scale(backbone.unet, IDENTITY, 0.0)
    motion_only = output(backbone)
    set_scale(backbone.unet, MOTION, 0.0)
    assert torch.equal(output(backbone), base)
    for a, b in ((both, subject_only), (both, motion_only), (subject_only, base), (motion_only, base)):
        assert (a - b).abs().max().item() > 1e-4  # every adapter does change the output


def test_adapters_on_one_layer_add_their_deltas():
    """Where two adapters share a layer, the definition is out = base(h) + delta_1(h) + delta_2(h)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    first, second = BottleneckAdapter(8, 4), BottleneckAdapter(8, 4, cond_dim=3)
    for adapter in (first, second):
        torch.nn.init.normal_(adapter.up.weight)
    second.condition = torch.randn(1, 3)
    h = torch.randn(5, 7, 8)
    wrapped = ParallelAdapter(layer, {"a": first, "b": second})
    expected = layer(h) + first(h) + second(h)
    assert torch.allclose(wrapped(h), expected, atol=1e-6)
    assert (wrapped(h) - layer(h)).abs().max().item() > 1e-3


# ---- the prompt ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a dog running on the beach", "a S* dog running on the beach"),
        ("A Dog surfing", "A S* Dog surfing"),
        ("surfing on a wave", "a S* dog surfing on a wave"),
        ("a hotdog stand", "a S* dog a hotdog stand"),
    ],
)
def test_missing_token_is_inserted_with_a_note(prompt, expected):
    updated, note = with_subject_token(prompt, "S*", "dog")
    assert updated == expected
    assert note is not None and expected in note


def test_the_token_without_its_star_gets_a_hint():
    """'a S dog' (the shell, or a typo, dropped the '*'): the note asks whether S* was meant."""
    updated, note = with_subject_token("a S dog jumps", "S*", "dog")
    assert updated == "a S S* dog jumps" and note.endswith("did you mean S*?")
    for prompt in ["a dog jumps", "a Sam dog jumps"]:
        assert "did you mean" not in with_subject_token(prompt, "S*", "dog")[1]
    assert "did you mean" not in with_subject_token("a dog finishing its tasks", "sks", "dog")[1]


@pytest.mark.parametrize("prompt", ["S* dog jumps", "s* dog jumps", "S*'s dog jumps", "a dog, S*, jumps"])
def test_prompt_with_the_token_is_kept(prompt):
    """The token counts where the tokenizer reads it: in any case, beside punctuation."""
    assert with_subject_token(prompt, "S*", "dog") == (prompt, None)


def test_a_token_inside_a_longer_word_is_not_the_subject(tiny_backbones):
    """'sks' inside 'tasks' is neither taken for the subject in the prompt nor read as it by the tokenizer."""
    import copy

    from vidbooth.adapters import textual_inversion as ti

    updated, note = with_subject_token("a dog finishing its tasks", "sks", "dog")
    assert updated == "a sks dog finishing its tasks" and note is not None
    tokenizer = copy.deepcopy(tiny_backbones["unet3d"].tokenizer)
    before = tokenizer.tokenize("tasks")
    rows = torch.zeros(1, tiny_backbones["unet3d"].text_encoder.get_input_embeddings().embedding_dim)
    ti.add_placeholder_tokens(tokenizer, copy.deepcopy(tiny_backbones["unet3d"].text_encoder), ["sks"], rows)
    assert tokenizer.tokenize("tasks") == before
    assert tokenizer.tokenize("a SKS dog")[1] == tokenizer.tokenize("sks's")[0] == "sks"


def test_a_token_ending_inside_another_subjects_is_not_that_subject():
    """'sks' inside '*sks' (both subjects loaded) is '*sks' for the tokenizer: 'sks' is put in, not taken as there."""
    updated, note = with_subject_token("a *sks cat", "sks", "dog", ["sks", "*sks"])
    assert updated == "a sks dog a *sks cat" and note is not None
    assert with_subject_token("a *sks cat", "*sks", "cat", ["sks", "*sks"]) == ("a *sks cat", None)


# ---- stored artifacts ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stored(tmp_path_factory, shared_cache):
    """A library with subjects S* (dog) and T* (cat) and motion 'wave' on tiny, and motion 'wave-ad' on
    tiny-animatediff."""
    from tests.badinputs import write_clip, write_photo
    from vidbooth.config import BackboneConfig
    from vidbooth.config.motion import AppearanceConfig, MotionConfig, MotionDataConfig, PreviewConfig
    from vidbooth.config.subject import IdentityConfig, SubjectConfig, SubjectPreviewConfig, TextualInversionConfig
    from vidbooth.config.train import TrainConfig
    from vidbooth.engine.motion import train_motion
    from vidbooth.engine.subject import train_subject

    root = tmp_path_factory.mktemp("compose")
    photos = root / "photos"
    for i in range(3):
        write_photo(photos / f"p{i}.png")
    clip = str(write_clip(root / "clip.mp4", num_frames=12))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"VIDBOOTH_HOME": root / "home", "VIDBOOTH_CACHE": shared_cache, "VIDBOOTH_QUIET": 1}.items():
            mp.setenv(key, str(value))
        quick = TrainConfig(steps=1, batch_size=1)
        for name, class_noun, num_vectors in (("S*", "dog", 1), ("T*", "cat", 2)):
            train_subject(
                SubjectConfig(
                    backbone=BackboneConfig(base="tiny"),
                    name=name,
                    photos=str(photos),
                    class_noun=class_noun,
                    textual_inversion=TextualInversionConfig(num_vectors=num_vectors, train=quick),
                    identity=IdentityConfig(train=quick),
                    preview=SubjectPreviewConfig(enabled=False),
                )
            )
        for name, base, encoder in (("wave", "tiny", "tiny-clip"), ("wave-ad", "tiny-animatediff", None)):
            train_motion(
                MotionConfig(
                    name=name,
                    clips=[clip],
                    backbone=BackboneConfig(base=base),
                    train=quick,
                    data=MotionDataConfig(num_frames=4),
                    appearance=AppearanceConfig(encoder=encoder),
                    preview=PreviewConfig(enabled=False),
                )
            )
    return root / "home"


@pytest.fixture
def library(stored, isolated_home):
    for kind in ("subjects", "motions"):
        shutil.copytree(stored / kind, isolated_home / kind)
    return isolated_home


def fresh(base="tiny"):
    from vidbooth.engine.backbone import load_backbone

    return load_backbone(base, device="cpu")


def test_subject_and_motion_load_on_one_backbone(library):
    bb = fresh()
    result = apply_personalisation(bb, "a dog running", ["S*"], "wave", subject_scale=0.8, motion_scale=0.6)
    assert result.prompt == "a S* dog running" and len(result.notes) == 1
    assert result.motion["name"] == "wave" and [s.name for s in result.subjects] == ["S*"]
    motion, identity = adapters_of(bb.unet, MOTION), adapters_of(bb.unet, subject_kind("S*"))
    assert len(identity) == len(bb.spatial_cross_attention_layers())
    assert len(motion) == 3 * len(bb.temporal_layers())
    assert {a.scale for a in motion.values()} == {0.6} and {a.scale for a in identity.values()} == {0.8}
    assert all(a.condition is None for a in motion.values())  # appearance dropped at inference
    assert "S*" in bb.tokenizer.get_vocab()


def test_loading_a_subject_and_a_motion_leaves_the_callers_random_stream_as_it_was(library):
    """Their adapters' initial weights, replaced by the stored ones, had been drawn from torch's global stream: a
    notebook's own draws after a load came out otherwise."""
    bb = fresh()
    before = torch.random.get_rng_state()
    apply_personalisation(bb, "a S* dog running", ["S*"], "wave")
    assert torch.equal(torch.random.get_rng_state(), before)


def test_either_may_be_omitted(library):
    bb = fresh()
    only_motion = apply_personalisation(bb, "a cat", [], "wave")
    assert only_motion.prompt == "a cat" and only_motion.notes == []
    assert not adapters_of(bb.unet, subject_kind("S*"))
    bb = fresh()
    only_subject = apply_personalisation(bb, "S* dog sleeps", ["S*"], None)
    assert only_subject.motion is None and not adapters_of(bb.unet, MOTION)
    assert adapters_of(bb.unet, subject_kind("S*"))


def test_several_subjects_in_one_prompt(library):
    bb = fresh()
    result = apply_personalisation(bb, "a dog and a cat play", ["S*", "T*"], "wave", negative_prompt="T* asleep, S*")
    assert result.prompt == "a S* dog and a T* T*_1 cat play" and len(result.notes) == 2  # T* has two vectors
    assert result.negative_prompt == "T* T*_1 asleep, S*"  # spelled out as in the prompt, nothing inserted
    assert adapters_of(bb.unet, subject_kind("S*")) and adapters_of(bb.unet, subject_kind("T*"))


def test_a_part_of_a_pseudo_word_is_refused_in_one_line(library):
    """T* has two vectors: 'T*_1' alone is refused, naming the whole and what to write."""
    with pytest.raises(UserError, match=r"^'T\*_1' is a part of subject T\*'s pseudo-word of 2 vectors \(T\* T\*_1\)"):
        apply_personalisation(fresh(), "a T*_1 cat", ["T*"], None)


def test_subject_and_motion_from_different_bases_is_an_error_naming_both(library):
    bb = fresh("tiny-animatediff")
    with pytest.raises(UserError) as caught:
        apply_personalisation(bb, "a dog", ["S*"], "wave-ad")
    message = str(caught.value)
    for part in ("subject 'S*'", "motion 'wave-ad'", "tiny-animatediff"):
        assert part in message
    assert not adapters_of(bb.unet, MOTION) and not adapters_of(bb.unet, subject_kind("S*"))  # nothing loaded


@pytest.mark.parametrize(("subjects", "motion", "listed"), [(["R2"], None, "S*, T*"), (["S*"], "walk", "wave, wave-ad")])
def test_unknown_names_list_the_known_ones(library, subjects, motion, listed):
    with pytest.raises(UserError, match="unknown") as caught:
        apply_personalisation(fresh(), "a dog", subjects, motion)
    assert listed in str(caught.value)


def test_a_subject_named_twice_is_loaded_once(library):
    """`--subject S* --subject S*` applies S* once (a second load had failed: the layer already has its adapter)."""
    result = apply_personalisation(fresh(), "a S* dog", ["S*", "S*"])
    assert [subject.name for subject in result.subjects] == ["S*"] and result.prompt == "a S* dog"


def train_one_step(folder, name, class_noun):
    """Subject `name` on tiny, one step a stage, from one photo written in `folder`."""
    from tests.badinputs import write_photo
    from vidbooth.config import BackboneConfig
    from vidbooth.config.subject import IdentityConfig, SubjectConfig, SubjectPreviewConfig, TextualInversionConfig
    from vidbooth.config.train import TrainConfig
    from vidbooth.engine.subject import train_subject

    write_photo(folder / "photos" / "p.png")
    quick = TrainConfig(steps=1, batch_size=1)
    train_subject(SubjectConfig(backbone=BackboneConfig(base="tiny"), name=name, photos=str(folder / "photos"),
                                class_noun=class_noun, textual_inversion=TextualInversionConfig(train=quick),
                                identity=IdentityConfig(train=quick), preview=SubjectPreviewConfig(enabled=False)))


def test_a_subject_whose_name_begins_another_ones_is_told_apart(library, tmp_path):
    """Subjects T* and T*-2: the tokenizer reads 'T*-2' as T*-2 alone (the longer token), so a prompt holding only
    T*-2 lacks T*, which is inserted with a note; and spelling T*'s two vectors out leaves T*-2 whole (it had taken
    'T*-2' for T*: nothing inserted, and the prompt became 'a T* T*_1-2 dog', neither subject's tokens)."""
    train_one_step(tmp_path, "T*-2", "dog")
    bb = fresh()
    result = apply_personalisation(bb, "a T*-2 dog runs", ["T*", "T*-2"], negative_prompt="T*-2 asleep")
    assert result.prompt == "a T* T*_1 cat a T*-2 dog runs" and len(result.notes) == 1
    assert result.negative_prompt == "T*-2 asleep"
    pieces = bb.tokenizer.tokenize(result.prompt)  # every vector of both subjects
    assert pieces[1:3] == ["t*", "t*_1"] and "t*-2" in pieces


@pytest.mark.parametrize("prompt", ["red " * 40 + "S* dog runs", "red " * 40 + "dog runs"])
def test_a_prompt_cut_before_the_subjects_pseudo_word_is_refused(library, prompt):
    """The text encoder reads its first tokens only (tiny's: 32): a pseudo-word past them, written or inserted before
    the class noun, had been cut off with a warning that showed only the words before it, and the video made
    without the subject."""
    with pytest.raises(UserError, match=r"subject S\*'s pseudo-word .* cut off.*: shorten the prompt"):
        apply_personalisation(fresh(), prompt, ["S*"])
    long_but_kept = "a S* dog runs" + " fast" * 40  # only words after the pseudo-word are cut: a warning
    assert apply_personalisation(fresh(), long_but_kept, ["S*"]).prompt == long_but_kept


def test_a_pseudo_word_already_spelled_out_is_kept(library):
    """T* of two vectors written out in full, as diffusers' prompts write it ('T* T*_1'), stays so: it had become
    'T* T*_1 T*_1', the second vector twice."""
    result = apply_personalisation(fresh(), "a T* t*_1 cat and a T* cat", ["T*"], negative_prompt="T*  T*_1")
    assert result.prompt == "a T* T*_1 cat and a T* T*_1 cat" and result.negative_prompt == "T* T*_1"


def test_a_pseudo_word_typed_with_a_combining_accent_is_the_subject(library, tmp_path):
    """'café' as macOS can paste it, 'cafe' + U+0301: the tokenizer reads it as the subject's 'café' (it composes
    accents, NFC), which had been inserted a second time, with a warning that the prompt lacked it."""
    train_one_step(tmp_path, "café", "dog")
    result = apply_personalisation(fresh(), "a cafe\u0301 dog runs", ["café"], negative_prompt="cafe\u0301")
    assert result.prompt == "a café dog runs" and result.notes == [] and result.negative_prompt == "café"
