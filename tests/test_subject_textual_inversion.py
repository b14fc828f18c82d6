"""Textual inversion: only the new rows train, initialisation from the class noun, file format, bad names."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from vidbooth.adapters import textual_inversion as ti
from vidbooth.config.train import TrainConfig
from vidbooth.engine.objective import denoising_loss, training_scheduler
from vidbooth.engine.subject_methods import TextualInversionMethod
from vidbooth.engine.train import make_accelerator, seed_everything, train
from vidbooth.errors import UserError


pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture
def bb(tiny_backbones):
    return copy.deepcopy(tiny_backbones["unet3d"])


def add_token(bb, num_vectors=1, class_noun="dog"):
    init = ti.initial_rows(bb.text_encoder, ti.class_noun_ids(bb.tokenizer, class_noun), num_vectors)
    return ti.add_placeholder_tokens(bb.tokenizer, bb.text_encoder, ti.placeholder_tokens("S*", num_vectors), init)


def test_training_changes_only_the_new_rows(bb, tmp_path):
    original = bb.text_encoder.get_input_embeddings().weight.detach().clone()
    ids = add_token(bb, num_vectors=2)
    init = bb.text_encoder.get_input_embeddings().weight[ids].detach().clone()
    caption_ids = bb.tokenize([ti.expand_placeholder("a photo of S* dog", "S*", 2)])
    seed_everything(0)
    method = TextualInversionMethod(bb, caption_ids, ti.wrap_placeholder_embedding(bb.text_encoder, ids))
    data = [{"latents": torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(i))} for i in range(3)]
    cfg = TrainConfig(steps=3, lr=1e-2, batch_size=2, checkpoint_every=0)
    train(method, data, cfg, tmp_path, make_accelerator("auto", "cpu"))
    rows = ti.merge_placeholder_embedding(bb.text_encoder)

    weight = bb.text_encoder.get_input_embeddings().weight
    assert type(bb.text_encoder.get_input_embeddings()) is torch.nn.Embedding
    assert torch.equal(weight[: original.shape[0]], original)  # every old row bit-identical
    assert torch.equal(weight[ids], rows)
    assert all((rows[i] - init[i]).abs().max() > 0 for i in range(2))  # both new rows moved
    assert not any(p.requires_grad for p in bb.text_encoder.parameters())


def test_rows_start_at_the_mean_class_noun_embedding(bb):
    noun_ids = ti.class_noun_ids(bb.tokenizer, "dog")
    assert len(noun_ids) == 3  # the tiny tokenizer spells words out: d, o, g</w>
    expected = bb.text_encoder.get_input_embeddings().weight[noun_ids].mean(0)
    ids = add_token(bb, num_vectors=2)
    assert ids == [ids[0], ids[0] + 1]
    rows = bb.text_encoder.get_input_embeddings().weight[ids]
    assert torch.allclose(rows, expected.expand(2, -1))
    assert bb.tokenizer.tokenize("a photo of S* S*_1 dog")[-5:-3] == ["s*", "s*_1"]


def test_expand_placeholder():
    assert ti.expand_placeholder("a S* dog", "S*", 1) == "a S* dog"
    assert ti.expand_placeholder("a S* dog and s*", "S*", 3) == "a S* S*_1 S*_2 dog and S* S*_1 S*_2"
    assert ti.expand_placeholder("a sks dog's tasks, sks.", "sks", 2) == "a sks sks_1 dog's tasks, sks sks_1."
    assert ti.expand_placeholder("a s* S*_1  S*_2 dog", "S*", 3) == "a S* S*_1 S*_2 dog"  # written out already


def test_a_pseudo_word_inside_a_longer_one_is_left_alone():
    """'sks' ends inside '*sks' of another subject: only its own whole places are written out, '*sks' is kept."""
    assert ti.expand_placeholder("*sks dog and sks cat", "sks", 2, ["*sks", "*sks_1"]) == "*sks dog and sks sks_1 cat"
    assert ti.expand_placeholder("xS* and S*", "S*", 2, ["xS*"]) == "xS* and S* S*_1"


@pytest.mark.parametrize("prompt", ["a S*_1 dog", "a S* S*_1 dog", "a S* S*_2 dog", "S*_2, S* S*_1 S*_2"])
def test_a_part_of_a_pseudo_word_written_alone_is_refused(prompt):
    """A subject of three vectors is 'S* S*_1 S*_2' or 'S*': 'S*_1' alone had been kept, the subject written out
    again beside it, and 'S* S*_1' became 'S* S*_1 S*_2 S*_1'."""
    with pytest.raises(UserError, match=r"^'S\*_[12]' is a part of subject S\*'s pseudo-word of 3 vectors .*: write "
                                        r"S\* alone in the prompt"):
        ti.expand_placeholder(prompt, "S*", 3)


@pytest.mark.parametrize("prompt", ["*sks dog and sks cat", "a *sks", "x*sks sks", "**sks", "sks's (SKS) tasks",
                                    "S*-2 and S*", "S*-2x S*", "a S* S*_1 dog", "xS* S*xS*",
                                    # beside characters Python's \w and the tokenizer's whole words count otherwise
                                    "sks\u00b2 \u00bdsks sks", "s\u0301ks sks\u0301 sks",
                                    "\u24b6sks \u203fsks sks\u200d",
                                    "\u0661sks \u2167sks sks\u00e9 \u65e5sks sks-",
                                    # the last letter-like symbol of each range ('ⓩ'), and the one past it
                                    "\u24e9sks \U0001f149sks \U0001f169sks \U0001f189sks \u24easks sks"])
def test_the_tokens_read_are_the_tokenizers(bb, prompt):
    """`read_tokens` finds the added tokens where the tokenizer reads them, overlapping names included."""
    tokens = ["sks", "*sks", "*sks_1", "S*", "S*_1", "S*-2", "xS*"]
    rows = torch.zeros(len(tokens), bb.text_encoder.get_input_embeddings().embedding_dim)
    ti.add_placeholder_tokens(bb.tokenizer, bb.text_encoder, tokens, rows)
    added = {token.lower() for token in tokens}
    read = [piece for piece in bb.tokenizer.tokenize(prompt) if piece in added]
    assert [match.group().lower() for match in ti.read_tokens(prompt, tokens)] == read


def test_no_tokens_are_read_where_none_are_added():
    """An empty pattern matches everywhere: generate with an empty library lists no subject to read."""
    assert ti.read_tokens("a , dog.", []) == [] and ti.without_tokens("a  dog", []) == "a dog"


def test_diffusers_load_textual_inversion_reads_our_file(tiny_base_dirs, bb, tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    add_token(bb, num_vectors=2)
    rows = torch.randn(2, bb.text_encoder.config.hidden_size)
    path = tmp_path / ti.EMBEDDINGS_FILE
    ti.save_learned_embeddings(path, "S*", rows, {"class_noun": "dog"})

    folder = tiny_base_dirs["animatediff"]
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_textual_inversion(str(path))
    ids = pipe.tokenizer.convert_tokens_to_ids(["S*", "S*_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], rows)


def test_load_rejects_embeddings_of_another_width(bb, tmp_path):
    path = tmp_path / ti.EMBEDDINGS_FILE
    ti.save_learned_embeddings(path, "S*", torch.randn(1, 7), {})
    vocab = len(bb.tokenizer)
    with pytest.raises(UserError, match=r"the pseudo-word '.*' was learned on another base model \(its embedding is "
                                        r"\(1, \d+\), this text encoder takes \(1, \d+\)\): use the --base it was "
                                        r"learned on \(vidbooth list shows it\), or retrain it$"):
        ti.load_learned_embeddings(bb.tokenizer, bb.text_encoder, path)
    assert len(bb.tokenizer) == vocab  # nothing was added


def test_a_subject_whose_embedding_file_holds_another_pseudo_word_than_its_manifest_is_refused(bb):
    """A re-sealed learned_embeds holding another token had been used under that token (the prompt then lacking
    it), and one of 4000 vectors accepted."""
    from vidbooth import library
    from vidbooth.engine.subject import load_subject

    recorded = {"base": "tiny", "base_fingerprint": bb.fingerprint, "class_noun": "dog", "num_vectors": 1,
                "token": "S*", "tokens": ["S*"],
                "paths": {"embeddings": ti.EMBEDDINGS_FILE, "identity_adapter": None, "config": None}}
    width = bb.text_encoder.get_input_embeddings().embedding_dim
    vocab = len(bb.tokenizer)
    for token, vectors in (("other", 1), ("S*", 3)):
        with library.staged_artifact("subject", "S*", overwrite=True) as stage:
            ti.save_learned_embeddings(stage / ti.EMBEDDINGS_FILE, token, torch.randn(vectors, width), {})
            library.write_json(stage / library.MANIFEST, {"name": "S*", "kind": "subject"} | recorded)
        expected = (rf"holds the pseudo-word '{re.escape(token)}' of {vectors} vector\(s\), but the subject's "
                    r"manifest records 'S\*' of 1 \(altered since\): retrain the subject$")
        with pytest.raises(UserError, match=expected):
            load_subject(bb, "S*")
        assert len(bb.tokenizer) == vocab  # nothing was added


@pytest.mark.parametrize(
    ("name", "class_noun", "message"),
    [
        ("S*", "\u200b", "tokenises to nothing"),  # only unknown characters for the tiny vocabulary
        ("dog", "dog", "^the subject name 'dog' equals the class noun: give a rare --name such as sks or 'S\\*'$"),
        ("S*", "s* dog", r"the class noun 's\* dog' holds the subject name 'S\*': .* e.g. --class-noun dog$"),
        # a shell must read the example as one word (it had made 'retriever' a photo path)
        ("sks", "sks golden retriever", r"e.g. --class-noun 'golden retriever'$"),
        ("a</w>", "dog", "already a token"),
    ],
)
def test_bad_names(bb, name, class_noun, message):
    with pytest.raises(UserError, match=message):
        ti.class_noun_ids(bb.tokenizer, class_noun)
        ti.check_placeholder_is_new(bb.tokenizer, name, 1, class_noun)


def test_a_name_that_is_a_common_word_is_warned_of_and_a_rare_one_is_not(monkeypatch):
    """'backpack' and 'sprite' (nano's image-prompt word) had been taken silently: in a prompt with the subject, the
    word then means the subject. DreamBooth's 'sks' is a word of CLIP's vocabulary too, but among its rarest."""
    from badinputs import capture_warnings
    from transformers import CLIPTokenizer

    from vidbooth.engine.backbone import NANO

    tokenizer = CLIPTokenizer.from_pretrained(NANO / "tokenizer")  # OpenAI CLIP's vocabulary
    warnings = capture_warnings(monkeypatch)
    for name in ("backpack", "sprite", "Sprite", "sks", "S*", "ohwx"):
        ti.check_placeholder_is_new(tokenizer, name, 1, "dog")
    assert [w.split("'")[1] for w in warnings] == ["backpack", "sprite", "Sprite"]
    assert warnings[0].endswith("'backpack' will mean the subject, not the word; a rare name such as sks or S* keeps "
                                "the word")


def test_denoising_loss_follows_the_prediction_type(bb):
    latents = torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    text = bb.encode_prompt(["a dog", "a cat"])
    losses = {}
    for prediction_type in ("epsilon", "v_prediction", "sample"):
        scheduler = training_scheduler(bb.scheduler_config | {"prediction_type": prediction_type})
        loss = denoising_loss(bb, scheduler, latents, text, torch.Generator().manual_seed(0))
        again = denoising_loss(bb, scheduler, latents, text, torch.Generator().manual_seed(0))
        assert loss.shape == (2,) and torch.equal(loss, again)
        losses[prediction_type] = loss
    # same model, noise and timesteps: only the target differs, so every pair of losses differs
    assert not torch.allclose(losses["epsilon"], losses["v_prediction"], rtol=1e-3)
    assert not torch.allclose(losses["epsilon"], losses["sample"], rtol=1e-3)
    assert not torch.allclose(losses["v_prediction"], losses["sample"], rtol=1e-3)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoising_loss_target(prediction_type):
    """With a model that predicts zeros, the loss is the mean square of the target itself."""
    from types import SimpleNamespace

    from vidbooth.engine.tiny import _scheduler_config

    scheduler = training_scheduler(_scheduler_config() | {"prediction_type": prediction_type})
    zero_model = SimpleNamespace(dtype=torch.float32, unet_forward=lambda noisy, t, text: torch.zeros_like(noisy))
    latents = torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = denoising_loss(zero_model, scheduler, latents, None, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.randint(0, 1000, (2,), generator=g)
    target = {"epsilon": noise, "sample": latents, "v_prediction": scheduler.get_velocity(latents, noise, timesteps)}
    assert torch.allclose(loss, target[prediction_type].pow(2).flatten(1).mean(1))


def test_denoising_loss_draws_the_high_noise_share_from_the_top_of_the_schedule():
    from types import SimpleNamespace

    from vidbooth.engine.objective import HighNoise
    from vidbooth.engine.tiny import _scheduler_config

    scheduler = training_scheduler(_scheduler_config())
    seen = []
    model = SimpleNamespace(dtype=torch.float32,
                            unet_forward=lambda noisy, t, text: seen.append(t) or torch.zeros_like(noisy))
    latents = torch.randn(64, 4, 1, 2, 2)
    denoising_loss(model, scheduler, latents, None, torch.Generator().manual_seed(0))
    denoising_loss(model, scheduler, latents, None, torch.Generator().manual_seed(0), HighNoise(1.0, 990))
    uniform, high = seen
    assert (high >= 990).all() and (uniform < 990).sum() > 50
    with pytest.raises(UserError, match="high_noise_from must be below the model's 1000"):
        denoising_loss(model, scheduler, latents, None, torch.Generator(), HighNoise(0.5, 1000))


@pytest.mark.parametrize(
    "key, value", [("high_noise_fraction", 1.5), ("high_noise_fraction", -0.1), ("high_noise_from", -1)]
)
def test_train_config_refuses_bad_high_noise_settings(key, value):
    from vidbooth.config.train import TrainConfig

    with pytest.raises(UserError, match=f"^train.{key}"):
        TrainConfig(**{key: value}).check()


def test_unknown_prediction_type_is_refused(bb):
    with pytest.raises(UserError, match="predicts 'flow'"):
        training_scheduler(bb.scheduler_config | {"prediction_type": "flow"})


def test_guided_loss_is_on_the_guided_prediction_with_a_frozen_unconditional_pass():
    """uncond + s * (cond - uncond) against the target; gradients reach only the conditional text."""
    from types import SimpleNamespace

    from vidbooth.engine.objective import Guidance
    from vidbooth.engine.tiny import _scheduler_config

    scheduler = training_scheduler(_scheduler_config() | {"prediction_type": "sample"})

    def text_mean(noisy, t, text):  # the prediction is the text embedding's mean: cond and uncond are known numbers
        return text.mean((1, 2)).view(-1, 1, 1, 1, 1).expand_as(noisy)

    model = SimpleNamespace(dtype=torch.float32, unet_forward=text_mean)
    latents = torch.zeros(2, 4, 1, 2, 2)
    cond = torch.full((2, 3, 5), 0.5, requires_grad=True)
    negative = torch.full((1, 3, 5), 0.2, requires_grad=True)

    def loss(guidance=None):
        return denoising_loss(model, scheduler, latents, cond, torch.Generator().manual_seed(0), guidance=guidance)

    plain, guided = loss(), loss(Guidance(3.0, negative))
    assert torch.allclose(plain, torch.full((2,), 0.25))  # 0.5 ** 2
    assert torch.allclose(guided, torch.full((2,), 1.1**2))  # 0.2 + 3 * (0.5 - 0.2) = 1.1
    guided.sum().backward()
    assert negative.grad is None and cond.grad.abs().sum() > 0
    assert torch.allclose(loss(Guidance(1.0, negative)), plain)


def test_prior_preservation_weighs_the_class_images_term_and_keeps_the_halves_apart(bb, monkeypatch):
    """The identity loss with class images is mean(photos' losses) + prior_weight * mean(class images' losses), the
    photos first with their captions and the class images with the class prompt, in one UNet call."""
    from vidbooth.engine import subject_methods
    from vidbooth.engine.subject_methods import IdentityAdapterMethod

    seen = {}

    def per_sample_losses(backbone, scheduler, latents, text, *args):
        seen.update(latents=latents, text=text)
        return torch.tensor([1.0, 2.0, 5.0, 7.0])

    monkeypatch.setattr(subject_methods, "denoising_loss", per_sample_losses)
    length, width = bb.text_encoder.config.max_position_embeddings, bb.text_encoder.config.hidden_size
    captions, class_prompt = torch.full((3, length, width), 1.0), torch.full((1, length, width), -1.0)
    class_latents = torch.full((5, 4, 1, 8, 8), -3.0)
    method = IdentityAdapterMethod(bb, captions, class_latents, class_prompt, prior_weight=0.5)
    loss = method.loss({"latents": torch.full((2, 4, 1, 8, 8), 7.0)}, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx((1 + 2) / 2 + 0.5 * (5 + 7) / 2)
    assert (seen["latents"][:2] == 7).all() and (seen["latents"][2:] == -3).all()
    assert (seen["text"][:2] == 1).all() and (seen["text"][2:] == -1).all()


def test_learned_embeddings_that_no_training_writes_are_refused(tmp_path):
    from safetensors.torch import save_file

    for rows, message in ((torch.full((1, 32), float("nan")), "holds NaN or infinite values"),
                          (torch.ones(1, 32, dtype=torch.int64), "holds int64 values, not floating-point ones")):
        save_file({"S*": rows}, str(tmp_path / "learned.safetensors"))
        with pytest.raises(UserError, match=f"learned.safetensors: tensor S\\* {message}"):
            ti.read_learned_embeddings(tmp_path / "learned.safetensors")


def test_denoising_loss_feeds_the_unet_the_noised_latents():
    """The UNet is given add_noise(latents, noise, t), not the noise noised by the latents (mutation testing)."""
    from types import SimpleNamespace

    from vidbooth.engine.tiny import _scheduler_config

    scheduler = training_scheduler(_scheduler_config())
    seen = []
    model = SimpleNamespace(dtype=torch.float32,
                            unet_forward=lambda noisy, t, text: seen.append(noisy) or torch.zeros_like(noisy))
    latents = torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    denoising_loss(model, scheduler, latents, None, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)  # the draws denoising_loss makes, in its order
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (2,), generator=generator)
    assert torch.allclose(seen[0], scheduler.add_noise(latents, noise, timesteps))


def test_a_half_precision_base_is_noised_in_fp32_and_fed_in_its_own_precision(monkeypatch):
    """In bf16, 1 - alpha_bar of nano's schedule rounds to 0 at its first 10 timesteps: noised there, the latents
    had come out clean (and the target noise rounded to bf16)."""
    import json
    from types import SimpleNamespace

    from vidbooth.engine import objective
    from vidbooth.engine.backbone import NANO

    scheduler = training_scheduler(json.loads((NANO / "scheduler" / "scheduler_config.json").read_text()))
    monkeypatch.setattr(objective, "sample_timesteps", lambda count, *args: torch.arange(count))  # t = 0, 1, ...
    seen = []
    model = SimpleNamespace(dtype=torch.bfloat16,
                            unet_forward=lambda noisy, t, text: seen.append(noisy) or torch.zeros_like(noisy))
    latents = torch.zeros(10, 4, 1, 2, 2, dtype=torch.bfloat16)  # encoded by the bf16 base
    denoising_loss(model, scheduler, latents, None, torch.Generator().manual_seed(0))
    (noisy,) = seen
    assert noisy.dtype == torch.bfloat16
    assert (noisy.flatten(1).abs().amax(1) > 0).all()  # every timestep adds noise, the first too


def test_a_half_precision_bases_loss_is_against_the_fp32_noise(monkeypatch):
    """The target is the noise as drawn (fp32), not rounded to the base's bf16; the prediction is compared in fp32."""
    from types import SimpleNamespace

    from vidbooth.engine.tiny import _scheduler_config

    scheduler = training_scheduler(_scheduler_config())  # epsilon: the target is the noise
    model = SimpleNamespace(dtype=torch.bfloat16, unet_forward=lambda noisy, t, text: torch.zeros_like(noisy))
    latents = torch.zeros(3, 4, 1, 2, 2, dtype=torch.bfloat16)
    losses = denoising_loss(model, scheduler, latents, None, torch.Generator().manual_seed(0))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))  # its first draw
    assert losses.dtype == torch.float32
    assert torch.equal(losses, noise.pow(2).flatten(1).mean(1))
