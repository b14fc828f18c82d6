"""nano: build from config, training steps reduce each stage's loss, diffusers layout loads through `load_backbone`,
resume continues exactly, bad input is refused. Models are miniature (32 px, 4 frames, character tokenizer)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from dataclasses import asdict

import numpy as np
import pytest
import torch

from vidbooth import reporting
from vidbooth.config.pretrain import PathPhase, PretrainConfig
from vidbooth.errors import UserError
from vidbooth.nano import pretrain as nano
from vidbooth.nano.arch import ClipArch, NanoArch, UNetArch, VaeArch
from vidbooth.nano.model import build_clip, build_unet, build_vae
from vidbooth.nano.world import make_split, sample_pretraining_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_arch() -> NanoArch:
    return NanoArch(
        size=32,
        num_frames=4,
        vae=VaeArch(block_out_channels=[8, 8, 8], latent_channels=4),
        clip=ClipArch(hidden_size=16, intermediate_size=32, text_layers=1, vision_layers=1, heads=2, projection_dim=8,
                      max_length=32),
        unet=UNetArch(block_out_channels=[16, 16], attention_heads=2),
    )


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    from vidbooth.engine.tiny import tiny_tokenizer_files

    folder = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer_files(folder)
    return folder


def tiny_config(tmp_path, tokenizer_folder, unet_steps: int = 2, **kw) -> PretrainConfig:
    cfg = PretrainConfig(arch=tiny_arch(), tokenizer=str(tokenizer_folder), out=str(tmp_path / "run"), threads=1, **kw)
    cfg.autoencoder.steps, cfg.autoencoder.batch = 2, 2
    cfg.clip.steps, cfg.clip.batch = 2, 4
    cfg.unet.steps, cfg.unet.batch, cfg.unet.warmup_steps = unet_steps, 2, 1
    cfg.unet.eval_every, cfg.unet.eval_prompts, cfg.unet.eval_inference_steps = 0, 2, 1
    return cfg


def test_builds_from_config(char_tokenizer):
    arch = tiny_arch()
    tokenizer = nano.load_tokenizer(str(char_tokenizer), arch.clip.max_length)
    vae, clip, unet = build_vae(arch), build_clip(arch, tokenizer), build_unet(arch)
    latents = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    assert latents.shape == (1, 4, arch.latent_size, arch.latent_size) == (1, 4, 8, 8)
    assert clip.config.text_config.vocab_size == len(tokenizer)
    text = clip.text_model(torch.zeros(2, 5, dtype=torch.long))[0]
    out = unet(torch.zeros(2, 4, 4, 8, 8), 10, encoder_hidden_states=text).sample
    assert out.shape == (2, 4, 4, 8, 8)


def _fit(loss_fn, params, steps: int = 12, lr: float = 3e-3) -> tuple[float, float]:
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses = []
    for step in range(steps):
        loss = loss_fn(torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_training_steps_reduce_each_loss(char_tokenizer):
    from diffusers import DDPMScheduler

    from vidbooth.nano.model import scheduler_config

    torch.manual_seed(0)
    arch = tiny_arch()
    tokenizer = nano.load_tokenizer(str(char_tokenizer), arch.clip.max_length)
    vae, clip, unet = build_vae(arch), build_clip(arch, tokenizer), build_unet(arch)
    videos, captions = sample_pretraining_batch(np.random.default_rng(0), 4, arch.num_frames, arch.size, make_split(0))

    frames = nano.pixels(videos[:, 0])
    first, last = _fit(lambda g: nano.autoencoder_loss(vae, frames, g, 1e-6, 8.0), vae.parameters())
    assert last < 0.7 * first
    first, last = _fit(lambda g: nano.clip_loss(clip, tokenizer, frames, captions), clip.parameters())
    assert last < 0.7 * first

    with torch.no_grad():
        latents, text = nano.encode_clips(vae, clip.text_model, tokenizer, videos, captions)
    schedule = DDPMScheduler.from_config(scheduler_config())
    fixed = torch.Generator().manual_seed(0)  # the same noise and timesteps every step: a fit, not a lottery
    first, last = _fit(lambda g: nano.unet_loss(unet, schedule, latents, text, fixed.manual_seed(0), 3.0),
                       unet.parameters())
    assert last < 0.7 * first


def test_pretrain_writes_a_model_load_backbone_loads(tmp_path, char_tokenizer):
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.sampling import sample_video

    torch.set_num_threads(2)  # the caller's; pretrain runs on cfg.threads (1), then gives the caller's back
    result = nano.pretrain(tiny_config(tmp_path, char_tokenizer))
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert result.finished and result.steps == {"autoencoder": 2, "clip": 2, "unet": 2}
    folder = result.model_dir
    for part in ("tokenizer", "text_encoder", "vae", "unet", "scheduler", "image_encoder", "model_index.json"):
        assert (folder / part).exists(), part
    assert json.loads((folder / "nano.json").read_text())["split_seed"] == 0
    assert [row["unet_step"] for row in result.curve] == [2]
    assert (tmp_path / "run" / "curve.csv").read_text().splitlines()[0].startswith("unet_step,")
    saved = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())
    assert saved["padding"] is None and saved["truncation"] is None  # training's encoding state is not saved
    assert "local_files_only" not in json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())

    backbone = load_backbone(str(folder), device="cpu")
    assert backbone.family == "unet3d" and backbone.default_size == 32
    assert backbone.scheduler_config["prediction_type"] == "sample"
    video = sample_video(backbone, "a red solid circle moving left", num_frames=4, num_inference_steps=2)
    assert video.shape == (1, 4, 32, 32, 3)

    from vidbooth.engine.appearance import load_appearance_encoder

    encoder = load_appearance_encoder(str(folder / "image_encoder"), backbone)
    assert encoder.embed(video[0]).shape == (4, 8)


def test_resume_continues_exactly(tmp_path, char_tokenizer):
    from safetensors.torch import load_file

    straight = nano.pretrain(tiny_config(tmp_path / "a", char_tokenizer, unet_steps=4))
    nano.pretrain(tiny_config(tmp_path / "b", char_tokenizer, unet_steps=2))
    resumed = nano.pretrain(tiny_config(tmp_path / "b", char_tokenizer, unet_steps=4, resume=True))
    assert resumed.steps == straight.steps
    a = load_file(str(straight.run_dir / "unet.safetensors"))
    b = load_file(str(resumed.run_dir / "unet.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    cfg = tiny_config(tmp_path / "c", char_tokenizer, unet_steps=5, init_from=str(resumed.model_dir))
    continued = nano.pretrain(cfg)
    assert continued.finished and continued.steps["unet"] == 5
    assert [row["unet_step"] for row in continued.curve] == [2, 4, 5]  # run b was evaluated at 2, 4; then 5
    scale = [json.loads((r.model_dir / "nano.json").read_text())["logit_scale"] for r in (resumed, continued)]
    assert scale[1] == pytest.approx(scale[0], rel=1e-3) and scale[0] != pytest.approx(1 / 0.07)  # learned, kept


@pytest.mark.parametrize("call, where", [(6, "unet step 2"), (2, "autoencoder step 2")])
def test_a_signal_saves_a_checkpoint_that_resumes_exactly(call, where, tmp_path, char_tokenizer, monkeypatch):
    """Stopped in the UNet stage, or right after the autoencoder's last step (before its latent scale was
    measured): the resumed run ends with the same weights and the same scaling factor."""
    import os
    import signal

    from safetensors.torch import load_file

    from vidbooth.errors import Interrupted

    straight = nano.pretrain(tiny_config(tmp_path / "a", char_tokenizer, unet_steps=4))
    advance = reporting._Task.advance
    calls = []

    def signalled_at_unet_step_2(self, n=1, **fields):  # the 2 autoencoder and 2 CLIP steps come first
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)
        advance(self, n, **fields)

    def unhandled(signum, frame):  # what the signal does if pretraining does not take it over
        raise RuntimeError("SIGTERM reached the default handler")

    monkeypatch.setattr(reporting._Task, "advance", signalled_at_unet_step_2)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        said = f"stopped by SIGTERM at {where}; .*rerun the same command with --resume to continue"
        with pytest.raises(Interrupted, match=said) as caught:
            nano.pretrain(tiny_config(tmp_path / "b", char_tokenizer, unet_steps=4))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert caught.value.exit_code == 143
    monkeypatch.setattr(reporting._Task, "advance", advance)
    resumed = nano.pretrain(tiny_config(tmp_path / "b", char_tokenizer, unet_steps=4, resume=True))
    a = load_file(str(straight.run_dir / "unet.safetensors"))
    b = load_file(str(resumed.run_dir / "unet.safetensors"))
    assert resumed.steps == straight.steps and all(torch.equal(a[k], b[k]) for k in a)
    scales = [json.loads((r.run_dir / "state.json").read_text())["vae_scaling_factor"] for r in (straight, resumed)]
    assert scales[0] == scales[1] != 0.18215


def test_a_checkpoint_torn_by_a_stop_while_saving_is_refused_not_mixed(tmp_path, char_tokenizer):
    """Weights of one step beside the state of another (a kill between renames), or a missing file, stop the
    resume with one line instead of silently training from fresh weights or fresh moments."""
    from vidbooth.errors import UserError
    from vidbooth.nano import checkpoint as ckpt

    run = nano.pretrain(tiny_config(tmp_path / "r", char_tokenizer, unet_steps=2)).run_dir
    weights = ckpt.load_tensors(run / "unet.safetensors", 2)
    ckpt.save_tensors(run / "unet.safetensors", weights, step=1)
    with pytest.raises(UserError, match=r"unet.safetensors holds step 1 but state.json says 2 .*stopped while saving"):
        nano.pretrain(tiny_config(tmp_path / "r", char_tokenizer, unet_steps=4, resume=True))
    ckpt.save_tensors(run / "unet.safetensors", weights, step=2)
    (run / "unet.optim.safetensors").unlink()
    with pytest.raises(UserError, match=r"unet.optim.safetensors is missing"):
        nano.pretrain(tiny_config(tmp_path / "r", char_tokenizer, unet_steps=4, resume=True))


def test_a_run_folder_that_reads_but_is_damaged_is_refused_in_one_line(tmp_path, char_tokenizer):
    """A state.json, weights or moments that parse but hold other things (edited, or damaged in place) had been
    tracebacks (KeyError, AttributeError, size mismatch, a ValueError unpacking a key)."""
    import json

    from vidbooth.errors import UserError
    from vidbooth.nano import checkpoint as ckpt

    run = nano.pretrain(tiny_config(tmp_path / "r", char_tokenizer, unet_steps=2)).run_dir
    state_file, good = run / ckpt.STATE_FILE, (run / ckpt.STATE_FILE).read_text()
    state = json.loads(good)
    arch = "arch" if "arch" in state else "architecture"
    for damaged in ([], {k: v for k, v in state.items() if k != "steps"}, state | {"curve": "none"},
                    state | {"steps": {"autoencoder": 2, "clip": 2}}, state | {"vae_scaling_factor": "1"},
                    # (mutation testing: each of these checks could go unnoticed)
                    {k: v for k, v in state.items() if k != arch}, state | {"steps": state["steps"] | {"unet": True}},
                    state | {"curve": [1]}, state | {"fresh_moments": "clip"},
                    state | {"seconds": {k: v for k, v in state["seconds"].items() if k != "unet"}},
                    # the seeds, the UNet's shape or a probe's step missing had been a KeyError or AttributeError
                    {k: v for k, v in state.items() if k != "seed"}, state | {"split_seed": "0"},
                    state | {arch: {}}, state | {arch: state[arch] | {"unet": [16, 16]}},
                    state | {"curve": [{"loss": 1.0}]}, state | {"seed": True}, state | {"split_seed": False},
                    state | {"curve": [{"unet_step": True}]}, state | {"vae_scaling_factor": True}, None):
        state_file.write_text("[" * 100_000 + "]" * 100_000 if damaged is None else json.dumps(damaged))
        with pytest.raises(UserError, match=r"state.json is (damaged .*|not valid JSON): delete the run folder and "
                                            r"rerun$"):
            nano.pretrain(tiny_config(tmp_path / "r", char_tokenizer, unet_steps=4, resume=True))
    state_file.write_text(good)
    weights = ckpt.load_tensors(run / "unet.safetensors", 2)
    ckpt.save_tensors(run / "unet.safetensors", {k: v[:1] for k, v in weights.items()}, step=2)
    with pytest.raises(UserError, match=r"unet.safetensors does not fit this run \(damaged or edited: RuntimeError\)"):
        nano.pretrain(tiny_config(tmp_path / "r", char_tokenizer, unet_steps=4, resume=True))
    ckpt.save_tensors(run / "unet.safetensors", weights, step=2)
    for moments in ({"nodot": torch.zeros(1)}, {}):  # an empty file had restarted the moments without a word
        ckpt.save_tensors(run / "unet.optim.safetensors", moments, step=2)
        with pytest.raises(UserError, match=r"unet.optim.safetensors does not fit this run \(damaged or edited: "):
            nano.pretrain(tiny_config(tmp_path / "r", char_tokenizer, unet_steps=4, resume=True))


KILLED_WHILE_SAVING = """
import os, sys
from omegaconf import OmegaConf
from vidbooth import fileio
from vidbooth.config.pretrain import PretrainConfig
from vidbooth.nano import pretrain as nano

cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PretrainConfig), OmegaConf.load(sys.argv[1])))
publish, saves = fileio.publish, []

def publish_then_die(temporary, path):
    publish(temporary, path)
    saves.append(os.path.basename(path))
    if saves.count("unet.safetensors") == 2:  # the second UNet checkpoint: its weights in, its state not yet
        os._exit(137)

fileio.publish = publish_then_die
nano.pretrain(cfg)
"""


def test_a_run_killed_while_renaming_its_checkpoint_is_finished_by_resume(tmp_path, char_tokenizer, capsys,
                                                                          monkeypatch):
    """SIGKILL between a checkpoint's renames had left weights of step 2 beside the state of step 1, a run that
    only starting over could mend (after its autoencoder and CLIP stages too)."""
    import subprocess
    import sys

    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from vidbooth.nano import checkpoint as ckpt

    straight = nano.pretrain(tiny_config(tmp_path / "a", char_tokenizer, unet_steps=3, checkpoint_minutes=1e-9))
    killed = tiny_config(tmp_path / "b", char_tokenizer, unet_steps=3, checkpoint_minutes=1e-9)
    OmegaConf.save(OmegaConf.structured(killed), tmp_path / "killed.yaml")
    child = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(tmp_path / "killed.yaml")],
                           capture_output=True, text=True, timeout=300)
    run = tmp_path / "b" / "run"
    assert child.returncode == 137, child.stderr
    assert ckpt.read_state(run)["steps"]["unet"] == 1 and (run / ckpt.JOURNAL_FILE).is_file()
    # 3 new files not yet renamed (moments, state, curve) and the 4 old ones kept to be put back
    assert sorted(path.suffix for path in run.glob(".tmp-*")) == [".csv", ".json", ".safetensors"]
    assert sorted(path.suffix for path in run.glob(".old-*")) == [".csv", ".json", ".safetensors", ".safetensors"]
    capsys.readouterr()
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    resumed = nano.pretrain(tiny_config(tmp_path / "b", char_tokenizer, unet_steps=3, checkpoint_minutes=1e-9,
                                        resume=True))
    assert f"finished saving the checkpoint that a stopped run was writing in {run}" in capsys.readouterr().err
    a, b = (load_file(str(result.run_dir / "unet.safetensors")) for result in (straight, resumed))
    assert resumed.steps == straight.steps and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(run.glob(".tmp-*")) and not list(run.glob(".old-*")) and not (run / ckpt.JOURNAL_FILE).exists()


def test_an_export_replaces_the_folder_whole_or_not_at_all(tmp_path, char_tokenizer, monkeypatch, capsys):
    """A stop while exporting (as into vidbooth/assets/nano) leaves the earlier model as it was, not a mix of
    two; a folder holding anything but a nano model is refused before training, as an export replaces it whole."""
    from vidbooth.errors import UserError
    from vidbooth.nano import model as nano_model

    export = tmp_path / "export"
    first = nano.pretrain(tiny_config(tmp_path / "a", char_tokenizer, export=str(export)))
    before = {p.relative_to(export): p.read_bytes() for p in export.rglob("*") if p.is_file()}
    copies = []

    def stopped_at_the_third_part(model):  # the text and image towers are written, then Ctrl-C
        copies.append(model)
        if len(copies) == 3:
            raise KeyboardInterrupt
        return model.to(torch.float16)

    monkeypatch.setattr(nano_model, "_half_copy", stopped_at_the_third_part)
    arch = tiny_arch()
    tokenizer = nano.load_tokenizer(str(char_tokenizer), arch.clip.max_length)
    with pytest.raises(KeyboardInterrupt):
        nano_model.save_nano(export, arch, tokenizer, build_vae(arch), build_clip(arch, tokenizer), build_unet(arch), {})
    after = {p.relative_to(export): p.read_bytes() for p in export.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["a", "export"]
    assert first.model_dir.is_dir()

    other = tmp_path / "photos"
    other.mkdir()
    (other / "dog.jpg").write_bytes(b"a user's file")
    with pytest.raises(UserError, match="holds other files than a nano model.*replaces the whole folder"):
        nano.pretrain(tiny_config(tmp_path / "b", char_tokenizer, export=str(other)))
    assert not (tmp_path / "b").exists() and (other / "dog.jpg").read_bytes() == b"a user's file"


def test_a_stop_while_the_model_is_written_says_that_resume_writes_it(tmp_path, char_tokenizer, monkeypatch):
    """Ctrl-C after the last step, while the model was written, had said only 'interrupted'."""
    from vidbooth.errors import KeyboardInterrupted
    from vidbooth.nano import model as nano_model

    half_copy = nano_model._half_copy

    def stopped_while_writing(model):
        raise KeyboardInterrupt

    monkeypatch.setattr(nano_model, "_half_copy", stopped_while_writing)
    cfg = tiny_config(tmp_path, char_tokenizer)
    with pytest.raises(KeyboardInterrupted, match=rf"^pretraining stopped by SIGINT while writing its model; its "
                                                  rf"training is saved in {re.escape(cfg.out)}: rerun the same command "
                                                  "with --resume to continue$"):
        nano.pretrain(cfg)
    assert not (Path(cfg.out) / "model").exists()
    monkeypatch.setattr(nano_model, "_half_copy", half_copy)
    cfg.resume = True
    assert nano.pretrain(cfg).model_dir == Path(cfg.out) / "model" and (Path(cfg.out) / "model" / "nano.json").is_file()


def test_a_run_and_its_model_keep_the_world_they_were_trained_on(tmp_path, char_tokenizer):
    edge = nano.pretrain(tiny_config(tmp_path / "edge", char_tokenizer, linear_paths="edge"))
    assert json.loads((edge.model_dir / "nano.json").read_text())["linear_paths"] == "edge"
    with pytest.raises(UserError, match=r"with other settings \(linear_paths edge there, \w+ here\): use the same"):
        nano.pretrain(tiny_config(tmp_path / "edge", char_tokenizer, unet_steps=3, resume=True))
    with pytest.raises(UserError, match=r"other settings than this run's \(linear_paths edge there, \w+ here\)"):
        nano.pretrain(tiny_config(tmp_path / "new", char_tokenizer, init_from=str(edge.model_dir)))
    with pytest.raises(UserError, match="is not an exported nano model"):
        nano.pretrain(tiny_config(tmp_path / "new", char_tokenizer, init_from=str(tmp_path / "nowhere")))
    assert not (tmp_path / "new").exists()  # a refused --init-from leaves no run folder to --resume or clean up
    raised = tiny_config(tmp_path / "new", char_tokenizer, init_from=str(edge.model_dir), linear_paths="edge")
    raised.clip.steps = 3  # had said 'use a new --out', true of no --out, and left a run folder refusing the rerun
    with pytest.raises(UserError, match=r"with --init-from .*, clip.steps must be at most 2, where it stopped before "
                                        r"its later stages began, got 3"):
        nano.pretrain(raised)
    assert not (tmp_path / "new").exists()
    resumed = nano.pretrain(tiny_config(tmp_path / "edge", char_tokenizer, 3, resume=True, linear_paths="edge"))
    assert resumed.finished and resumed.steps["unet"] == 3


def test_a_unet_with_position_channels_trains_loads_and_samples(tmp_path, char_tokenizer):
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.objective import denoising_loss, training_scheduler
    from vidbooth.engine.sampling import sample_video

    cfg = tiny_config(tmp_path, char_tokenizer)
    cfg.arch.unet.position_channels = 3
    result = nano.pretrain(cfg)
    backbone = load_backbone(str(result.model_dir), device="cpu")
    assert backbone.unet.config.in_channels == 4 + 3 and backbone.latent_channels == 4
    assert backbone.position_channels == 3
    video = sample_video(backbone, "a red solid circle moving left", num_frames=4, num_inference_steps=2)
    assert video.shape == (1, 4, 32, 32, 3)
    latents = torch.zeros(2, 4, 4, 4, 4)
    text = backbone.encode_prompt(["a red solid circle moving left"] * 2)
    with torch.no_grad():  # the adapters' training objective goes through the same unet_forward
        loss = denoising_loss(backbone, training_scheduler(backbone.scheduler_config), latents, text,
                              torch.Generator().manual_seed(0))
    assert loss.shape == (2,) and torch.isfinite(loss).all()


def test_runs_from_before_the_world_and_position_options_are_the_default_world():
    record = {"architecture": asdict(NanoArch()), "seed": 0, "split_seed": 0}
    del record["architecture"]["unet"]["position_channels"]
    assert nano._identity(record) == nano._identity(
        {"arch": asdict(NanoArch()), "seed": 0, "split_seed": 0, "linear_paths": "random"}
    )


def test_unet_stage_trains_the_text_tower_unless_its_lr_is_zero(tmp_path, char_tokenizer):
    from safetensors.torch import load_file

    def text_weights(run_dir, stage):
        tensors = load_file(str(run_dir / f"{stage}.safetensors"))
        prefix = "text_encoder." if stage == "unet" else "text_model."
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    cfg = tiny_config(tmp_path / "a", char_tokenizer)
    cfg.unet.text_encoder_lr = 1e-3
    trained = nano.pretrain(cfg)
    before, after = text_weights(trained.run_dir, "clip"), text_weights(trained.run_dir, "unet")
    assert before.keys() == after.keys() and before
    assert not torch.equal(before["embeddings.token_embedding.weight"], after["embeddings.token_embedding.weight"])

    cfg = tiny_config(tmp_path / "b", char_tokenizer)
    cfg.unet.text_encoder_lr = 0.0
    frozen = nano.pretrain(cfg)
    before, after = text_weights(frozen.run_dir, "clip"), text_weights(frozen.run_dir, "unet")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_caption_word_loss_reads_every_caption_word_from_the_end_of_text_state(char_tokenizer):
    torch.manual_seed(0)
    arch = tiny_arch()
    tokenizer = nano.load_tokenizer(str(char_tokenizer), arch.clip.max_length)
    clip = build_clip(arch, tokenizer)
    text_model = clip.text_model
    ids = tokenizer(["ab", "abc"], padding="max_length", truncation=True, return_tensors="pt").input_ids
    expected = []
    for row in ids:
        end = row.tolist().index(tokenizer.eos_token_id)
        state = text_model(row[None]).last_hidden_state[0, end]
        log_probs = torch.log_softmax(state @ text_model.embeddings.token_embedding.weight.T, dim=0)
        expected.append(-log_probs[row[1:end]].mean())  # uniform over the tokens between start and end
    loss = nano.caption_word_loss(text_model, ids).item()
    assert loss == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    frames = torch.rand(2, 3, arch.size, arch.size) * 2 - 1  # the CLIP stage adds it from its own text forward pass
    captions = ["ab", "abc"]
    added = nano.clip_loss(clip, tokenizer, frames, captions, 0.5) - nano.clip_loss(clip, tokenizer, frames, captions)
    assert added.item() == pytest.approx(0.5 * loss, rel=1e-5)

    # Trained on it alone, the end-of-text state of "ab" comes to name b rather than c, and that of "ac" c.
    pair = tokenizer(["ab", "ac"], padding="max_length", truncation=True, return_tensors="pt").input_ids
    b, c = pair[0, 2].item(), pair[1, 2].item()

    def margin():
        with torch.no_grad():
            logits = text_model(pair).last_hidden_state[:, 3] @ text_model.embeddings.token_embedding.weight.T
        return float(logits[0, b] - logits[0, c] + logits[1, c] - logits[1, b])

    before = margin()
    optimizer = torch.optim.AdamW(text_model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        nano.caption_word_loss(text_model, pair).backward()
        optimizer.step()
    assert margin() > max(before, 0.0) + 2.0  # 4 to 11 over seeds 0-4; |before| < 0.2


def test_clip_stage_adds_the_caption_word_term_only_when_weighted(tmp_path, char_tokenizer):
    losses = {}
    for weight in (0.0, 1.0):
        cfg = tiny_config(tmp_path / f"w{weight}", char_tokenizer)
        cfg.clip.caption_word_weight = weight
        nano.pretrain(cfg)
        losses[weight] = json.loads((tmp_path / f"w{weight}" / "run" / "state.json").read_text())["last_loss"]["clip"]
    assert losses[1.0] > losses[0.0] + 1.0  # the word term starts near log(vocabulary size)


def test_high_noise_fraction_moves_timesteps_to_the_top_of_the_schedule():
    from vidbooth.engine.objective import sample_timesteps

    uniform = sample_timesteps(4000, 1000, torch.Generator().manual_seed(0))
    assert uniform.min() < 50 and uniform.max() > 950 and abs(uniform.float().mean().item() - 500) < 20
    biased = sample_timesteps(4000, 1000, torch.Generator().manual_seed(0), 0.8, 600)
    high = (biased >= 600).float().mean().item()
    assert abs(high - (0.8 + 0.2 * 0.4)) < 0.03 and biased.min() < 50
    assert (sample_timesteps(100, 1000, torch.Generator(), 1.0, 600) >= 600).all()


def test_path_phases_train_linear_motions_at_the_top_of_the_schedule(tmp_path, char_tokenizer, monkeypatch):
    from vidbooth.nano.world import LINEAR_MOTIONS, parse_caption

    seen = []  # (captions, timesteps) of each UNet step, in order
    captions_of_step = []
    encode, sample = nano.encode_clips, nano.sample_timesteps

    def recording_encode(vae, text_model, tokenizer, videos, captions):
        captions_of_step.append(list(captions))
        return encode(vae, text_model, tokenizer, videos, captions)

    def recording_sample(*args):
        timesteps = sample(*args)
        seen.append((captions_of_step[-1], timesteps.tolist()))
        return timesteps

    monkeypatch.setattr(nano, "encode_clips", recording_encode)
    monkeypatch.setattr(nano, "sample_timesteps", recording_sample)
    cfg = tiny_config(tmp_path, char_tokenizer, unet_steps=15)
    cfg.unet.batch, cfg.unet.caption_dropout, cfg.unet.path_from = 4, 0.0, 980
    cfg.unet.path_phases = [PathPhase(3, 4), PathPhase(10, 2)]
    nano.pretrain(cfg)
    assert len(seen) == 15
    first, rest = seen[3:7] + seen[10:12], seen[:3] + seen[7:10] + seen[12:]
    assert all(parse_caption(c)[1].name in LINEAR_MOTIONS for captions, _ in first for c in captions)
    assert all(t >= 980 for _, timesteps in first for t in timesteps)
    later_motions = {parse_caption(c)[1].name for captions, _ in rest for c in captions}
    assert later_motions - set(LINEAR_MOTIONS)  # 36 clips over all motions include others
    assert all(min(timesteps) < 980 for _, timesteps in rest)  # every step outside the phase: uniform timesteps


def test_path_replay_keeps_part_of_each_later_batch_on_the_path_phase(tmp_path, char_tokenizer, monkeypatch):
    from vidbooth.nano.world import LINEAR_MOTIONS, parse_caption

    seen = []  # (captions, timesteps) given to the UNet loss at each step, in order
    encode, loss = nano.encode_clips, nano.unet_loss

    def recording_encode(vae, text_model, tokenizer, videos, captions):
        seen.append([list(captions)])
        return encode(vae, text_model, tokenizer, videos, captions)

    def recording_loss(*args):
        seen[-1].append(args[-1].tolist())
        return loss(*args)

    monkeypatch.setattr(nano, "encode_clips", recording_encode)
    monkeypatch.setattr(nano, "unet_loss", recording_loss)
    cfg = tiny_config(tmp_path, char_tokenizer, unet_steps=14)
    cfg.unet.batch, cfg.unet.caption_dropout, cfg.unet.path_from = 4, 0.0, 980
    cfg.unet.path_phases, cfg.unet.path_replay = [PathPhase(2, 2)], 1
    nano.pretrain(cfg)
    assert len(seen) == 14
    before, after = seen[:2], seen[4:]
    assert all(min(timesteps) < 980 for _, timesteps in before)  # no replay before or without the phase
    for captions, timesteps in after:
        assert parse_caption(captions[-1])[1].name in LINEAR_MOTIONS and timesteps[-1] >= 980
    rest_motions = {parse_caption(c)[1].name for captions, _ in after for c in captions[:-1]}
    assert rest_motions - set(LINEAR_MOTIONS)  # the other 3 clips of a batch: every motion
    assert min(t for _, timesteps in after for t in timesteps[:-1]) < 980  # ... and uniform timesteps


def test_a_checkpoint_save_killed_midway_counts_as_a_run(tmp_path):
    """The first checkpoint's save killed before its renames leaves only the journal, which --resume finishes into
    a run: the settings check (before torch) counts it as one."""
    (tmp_path / "saving.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a pretraining run: pass --resume"):
        PretrainConfig(out=str(tmp_path)).check()
    PretrainConfig(out=str(tmp_path), resume=True).check()
    (tmp_path / "saving.json").unlink()
    with pytest.raises(UserError, match="nothing to resume"):
        PretrainConfig(out=str(tmp_path), resume=True).check()


def test_a_resume_of_a_journal_killed_while_written_is_refused_not_started_over(tmp_path, char_tokenizer):
    """A journal cut short names no rename: cleared under the run's lock, it leaves nothing, and the --resume that
    the early check let through had trained from step 0 without a word."""
    cfg = tiny_config(tmp_path, char_tokenizer, resume=True)
    Path(cfg.out).mkdir()
    (Path(cfg.out) / "saving.json").write_text('{"renames": [["/tmp/re')
    with pytest.raises(UserError, match="nothing to resume in .*run: run without --resume to start"):
        nano.pretrain(cfg)
    assert sorted(p.name for p in Path(cfg.out).iterdir() if not p.name.startswith(".")) == []


def test_refuses_bad_runs(tmp_path, char_tokenizer):
    with pytest.raises(UserError, match="nothing to resume"):
        nano.pretrain(tiny_config(tmp_path, char_tokenizer, resume=True))
    (tmp_path / "taken.gif").write_bytes(b"a file")
    taken = tiny_config(tmp_path, char_tokenizer)
    taken.out = str(tmp_path / "taken.gif")
    with pytest.raises(UserError, match="--out .*taken.gif is a file: give the run folder"):
        nano.pretrain(taken)
    with pytest.raises(UserError, match="tokenizer"):
        nano.pretrain(tiny_config(tmp_path, tmp_path / "missing"))
    bad = tiny_config(tmp_path, char_tokenizer)
    bad.unet.caption_dropout = 1.5
    with pytest.raises(UserError, match="caption_dropout"):
        nano.pretrain(bad)
    bad = tiny_config(tmp_path, char_tokenizer)
    bad.unet.text_encoder_lr = -1.0
    with pytest.raises(UserError, match="text_encoder_lr"):
        nano.pretrain(bad)
    bad = tiny_config(tmp_path, char_tokenizer)
    bad.clip.caption_word_weight = -1.0
    with pytest.raises(UserError, match="caption_word_weight"):
        nano.pretrain(bad)
    bad = tiny_config(tmp_path, char_tokenizer)
    bad.arch.unet.position_channels = 2
    with pytest.raises(UserError, match="arch.unet.position_channels must be 0 or 3, got 2"):
        nano.pretrain(bad)
    bad = tiny_config(tmp_path, char_tokenizer, linear_paths="diagonal")
    with pytest.raises(UserError, match="linear_paths must be one of random, edge, got 'diagonal'"):
        nano.pretrain(bad)
    bad = tiny_config(tmp_path, char_tokenizer)
    bad.clip.batch = 100000  # one forward pass of 100000 clips: it would exhaust memory
    with pytest.raises(UserError, match="clip.batch must be at most 1024, got 100000"):
        nano.pretrain(bad)
    bad = tiny_config(tmp_path, char_tokenizer)
    bad.unet.high_noise_fraction = 2.0
    with pytest.raises(UserError, match="high_noise_fraction"):
        nano.pretrain(bad)
    bad = tiny_config(tmp_path, char_tokenizer)
    bad.unet.path_from = 1000
    with pytest.raises(UserError, match=r"unet.path_from must be in \[0, 1000\), got 1000"):
        nano.pretrain(bad)
    bad = tiny_config(tmp_path, char_tokenizer)
    bad.unet.path_phases = [PathPhase(2, 5)]  # the tiny run has 2 UNet steps: 0 and 1
    with pytest.raises(UserError, match="starts at step 2, past the last UNet step"):
        nano.pretrain(bad)
    for phases in ([PathPhase(0, 0)], [PathPhase(0, 2), PathPhase(1, 1)], [PathPhase(-1, 1)]):  # empty, overlap
        bad = tiny_config(tmp_path, char_tokenizer)
        bad.unet.path_phases = phases
        with pytest.raises(UserError, match="each phase needs steps >= 1 and must start at or after"):
            nano.pretrain(bad)
    for phases, replay in (([], 1), ([PathPhase(0, 1)], 2), ([PathPhase(0, 1)], -1)):  # no phase; a whole batch
        bad = tiny_config(tmp_path, char_tokenizer)
        bad.unet.path_phases, bad.unet.path_replay = phases, replay
        with pytest.raises(UserError, match=f"unet.path_replay {replay} must be below unet.batch"):
            nano.pretrain(bad)
    unwritable = tiny_config(tmp_path, char_tokenizer, export="/proc/nano-export")  # refused only once trained
    with pytest.raises(UserError, match="output folder is not writable: /proc"):
        nano.pretrain(unwritable)
    assert not (tmp_path / "run").exists()


def test_packaged_nano_loads_offline():
    from vidbooth.engine.backbone import NANO, load_backbone, resolve_base

    assert resolve_base("nano") == NANO
    backbone = load_backbone("nano", device="cpu")
    assert backbone.family == "unet3d" and backbone.default_size == 64 and backbone.latent_channels == 16
    assert backbone.position_channels == 3  # the shipped UNet takes latents plus x, y and frame maps
    assert json.loads((NANO / "nano.json").read_text())["steps"]["unet"] > 0
    weights = sum(path.stat().st_size for path in NANO.rglob("*.safetensors"))
    assert weights <= 30 * 2**20, f"shipped weights are {weights / 2**20:.1f} MB, over the 30 MB budget"


def test_cli_runs_a_recipe_and_refuses_to_overwrite(tmp_path, char_tokenizer, capsys):
    from omegaconf import OmegaConf

    from vidbooth.cli.app import main

    cfg = tiny_config(tmp_path, char_tokenizer)
    recipe = tmp_path / "tiny.yaml"
    OmegaConf.save(OmegaConf.structured(cfg), recipe)
    out = str(tmp_path / "cli-run")
    assert main(["pretrain", "--recipe", str(recipe), "--out", out]) == 0
    assert (tmp_path / "cli-run" / "model" / "unet").is_dir()
    capsys.readouterr()
    assert main(["pretrain", "--recipe", str(recipe), "--out", out]) == 2  # a UserError: pass --resume
    assert "already holds a pretraining run: pass --resume" in " ".join(capsys.readouterr().err.split())
    assert main(["pretrain", "--recipe", str(recipe), "--out", out, "--resume"]) == 0  # nothing left to train


def test_a_run_stopped_by_max_minutes_says_once_how_to_continue(tmp_path, char_tokenizer, capsys, monkeypatch):
    from omegaconf import OmegaConf

    from vidbooth.cli.app import main

    monkeypatch.delenv("VIDBOOTH_QUIET", raising=False)
    recipe = tmp_path / "tiny.yaml"
    OmegaConf.save(OmegaConf.structured(tiny_config(tmp_path, char_tokenizer)), recipe)
    out = str(tmp_path / "stopped")
    assert main(["pretrain", "--recipe", str(recipe), "--out", out, "--max-minutes", "0.000001"]) == 0
    printed = " ".join("".join(capsys.readouterr()).split())
    assert "at autoencoder step 1: rerun the same command with --resume to continue" in printed
    assert printed.count("--resume") == 1 and "pretraining stopped: autoencoder 1," in printed


def test_a_second_pretrain_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, char_tokenizer):
    """Two runs into one --out had both 'succeeded', the later one's model replacing the earlier one's."""
    import os

    from vidbooth.fileio import exclusive_lock

    cfg = tiny_config(tmp_path, char_tokenizer)
    with exclusive_lock(tmp_path / "run.lock", lambda owner: "held"):
        with pytest.raises(UserError, match=rf"another pretrain \(pid {os.getpid()}\) is writing {tmp_path / 'run'}: "
                                            "wait for it to end, or give another --out"):
            nano.pretrain(cfg)
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # nor a run folder, nor the lock file


def test_a_full_disk_at_a_checkpoint_says_how_to_go_on(tmp_path, char_tokenizer, monkeypatch):
    """It had said 'free space and run the command again', which a run folder refuses without --resume."""
    import errno

    from vidbooth.nano import checkpoint as ckpt

    write = ckpt.write_safetensors

    def full_disk(path, tensors, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patched:
        patched.setattr(ckpt, "write_safetensors", full_disk)
        with pytest.raises(UserError, match=r"^the disk is full: the autoencoder checkpoint of step 2 was not saved; "
                                            rf"free space in {tmp_path / 'run'}, then run the same command \(it starts "
                                            r"over\)$"):
            nano.pretrain(tiny_config(tmp_path, char_tokenizer))
    nano.pretrain(tiny_config(tmp_path, char_tokenizer, unet_steps=2))
    monkeypatch.setattr(ckpt, "write_safetensors", lambda path, *args: (write if "unet" not in str(path) else
                                                                         full_disk)(path, *args))
    with pytest.raises(UserError, match=r"the unet checkpoint of step 3 was not saved and the one of step 2 is kept; "
                                        r"free space in .*, then run the same command with --resume to continue"):
        nano.pretrain(tiny_config(tmp_path, char_tokenizer, unet_steps=3, resume=True))
    fresh = tmp_path / "fresh"  # the unet's first checkpoint: it had said 'the one before is kept' of no unet one
    fresh.mkdir()
    with pytest.raises(UserError, match=r"the unet checkpoint of step \d+ was not saved; free space in .*, then run "
                                        r"the same command with --resume \(the unet stage starts over\)$"):
        nano.pretrain(tiny_config(fresh, char_tokenizer, unet_steps=3))


def test_an_export_keeps_the_image_prompt_model_of_an_unchanged_model_and_says_when_it_drops_it(
        tmp_path, char_tokenizer, monkeypatch):
    """An export replaces its folder whole: over vidbooth/assets/nano it had dropped image_prompt.safetensors
    without a word, even when the weights were the same."""
    from badinputs import capture_warnings

    from vidbooth.nano import model as nano_model

    arch = tiny_arch()
    tokenizer = nano.load_tokenizer(str(char_tokenizer), arch.clip.max_length)

    def models(seed):
        torch.manual_seed(seed)
        return build_vae(arch), build_clip(arch, tokenizer), build_unet(arch)

    export = tmp_path / "nano"
    nano_model.save_nano(export, arch, tokenizer, *models(0), {})
    (export / "image_prompt.safetensors").write_bytes(b"trained on seed 0's model")
    warnings = capture_warnings(monkeypatch)
    nano_model.save_nano(export, arch, tokenizer, *models(0), {"steps": "again"})  # the same weights
    assert (export / "image_prompt.safetensors").read_bytes() == b"trained on seed 0's model" and warnings == []
    nano_model.save_nano(export, arch, tokenizer, *models(1), {})  # other weights
    assert not (export / "image_prompt.safetensors").exists()
    assert warnings == [f"{export / 'image_prompt.safetensors'} was trained on the model this export replaces, so it "
                        "is left out: train one for the new model with `vidbooth train-image-prompt --recipe "
                        f"nano/image-prompt --base {export} --out {export / 'image_prompt.safetensors'}`"]


def test_nano_warmup_starts_above_zero():
    """(mutation testing: a first step at learning rate 0 had passed)"""
    assert [nano._lr_factor(s, 4) for s in (0, 1, 3, 10)] == [0.25, 0.5, 1.0, 1.0]


def test_nano_unet_loss_adds_the_weighted_motion_term():
    """(mutation testing: dropping the frame-difference term had passed)"""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler
    from torch import nn

    from vidbooth.nano.model import scheduler_config

    class Constant(nn.Module):  # predicts zeros whatever the input
        config = SimpleNamespace(in_channels=4, out_channels=4)

        def forward(self, x, t, encoder_hidden_states=None):
            return SimpleNamespace(sample=torch.zeros(x.shape[0], 4, *x.shape[2:]))

    latents = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    schedule = DDPMScheduler.from_config(scheduler_config())
    loss = nano.unet_loss(Constant(), schedule, latents, None, torch.Generator().manual_seed(0), 2.0)
    expected = latents.pow(2).mean() + 2.0 * latents.diff(dim=2).pow(2).mean()
    assert torch.allclose(loss, expected)


def test_nano_vae_scaling_factor_gives_unit_variance_latents():
    """(mutation testing: the standard deviation in place of its inverse had passed)"""
    from types import SimpleNamespace

    from torch import nn

    class Vae(nn.Module):
        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x * 4.0))

    videos = np.random.default_rng(0).integers(0, 256, (16, 2, 8, 8, 3), dtype=np.uint8)
    run = SimpleNamespace(cfg=SimpleNamespace(seed=0), world_batch=lambda rng, n: (videos, None))
    factor = nano._scaling_factor(run, Vae())
    latents = Vae().encode(nano.pixels(videos).flatten(0, 1)).latent_dist.mean
    assert float((latents * factor).std()) == pytest.approx(1.0, rel=1e-4)


def test_unet_stage_gives_the_temporal_layers_their_scaled_lr(tmp_path, char_tokenizer, monkeypatch):
    """(mutation testing: the temporal group at the plain learning rate had passed)"""
    groups_seen = []
    original = torch.optim.AdamW

    def recording(params, *args, **kwargs):
        params = list(params)
        groups_seen.append([dict(group) for group in params if isinstance(group, dict)])
        return original(params, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", recording)
    cfg = tiny_config(tmp_path, char_tokenizer, unet_steps=1)
    cfg.unet.lr, cfg.unet.temporal_lr_scale = 1e-4, 3.0
    nano.pretrain(cfg)
    unet_groups = groups_seen[-1]
    assert [group["lr"] for group in unet_groups[:2]] == pytest.approx([1e-4, 3e-4])
    assert len(unet_groups[1]["params"]) > 0


@pytest.fixture(scope="module")
def probed_every_step(tmp_path_factory, char_tokenizer, one_torch_thread):
    """A tiny pretraining run probed after each of its 2 UNet steps, and its exported model."""
    cfg = tiny_config(tmp_path_factory.mktemp("probed"), char_tokenizer)
    cfg.unet.eval_every = 1
    return nano.pretrain(cfg)


def test_curve_csv_has_a_row_per_probe_as_state_json_has(probed_every_step):
    """(mutation testing: curve.csv's rows had no test beyond its header)"""
    import csv

    run = probed_every_step.run_dir
    curve = json.loads((run / "state.json").read_text())["curve"]
    with open(run / "curve.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["unet_step"] for row in rows] == ["1", "2"] and [row["unet_step"] for row in curve] == [1, 2]
    assert rows == [{key: str(value) for key, value in row.items()} for row in curve]


def test_an_exported_model_stores_its_weights_in_half_precision(probed_every_step):
    """(mutation testing: an export in fp32, twice the size in the package, had passed)"""
    from safetensors import safe_open

    for part in ("text_encoder", "image_encoder", "vae", "unet"):
        files = list((probed_every_step.model_dir / part).glob("*.safetensors"))
        assert len(files) == 1, part
        with safe_open(str(files[0]), framework="pt") as weights:
            dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}
        assert dtypes == {"F16"}, part


class _FakePosterior:
    def __init__(self, latent: torch.Tensor):
        self.latent = latent

    def sample(self, generator=None) -> torch.Tensor:
        return self.latent

    def mode(self) -> torch.Tensor:
        return self.latent

    def kl(self) -> torch.Tensor:
        return torch.tensor([2.0])


class _FakeVae:
    """encode: a posterior whose KL is 2; decode: zeros of shape (1, 3, 1, 2), whatever the latent."""

    def encode(self, frames):
        from types import SimpleNamespace

        return SimpleNamespace(latent_dist=_FakePosterior(torch.zeros(1, 4, 1, 1)))

    def decode(self, latent):
        from types import SimpleNamespace

        return SimpleNamespace(sample=torch.zeros(1, 3, 1, 2))


@pytest.mark.parametrize("kl_weight, sprite_weight, expected", [
    (0.1, 1.0, 0.95),  # (0.75 + 3 * 2) / 6 / 1.5 + 0.1 * 2
    (0.0, 0.0, 0.625),  # plain MSE: (3 * 0.25 + 3 * 1) / 6
    (0.0, 1.0, 0.75),
    (0.0, 3.0, 0.85),  # the red pixel weighs 1 + 3 * chroma 1, normalised by the mean weight 2.5
])
def test_autoencoder_loss_weighs_colourful_pixels_by_chroma_and_adds_the_kl_term(kl_weight, sprite_weight, expected):
    """(mutation testing: the weight normalisation, the chroma weight and its halving, and the KL term were free)"""
    frames = torch.tensor([[[[0.5, 1.0]], [[0.5, -1.0]], [[0.5, -1.0]]]])  # a grey pixel, then a pure red one
    loss = nano.autoencoder_loss(_FakeVae(), frames, None, kl_weight, sprite_weight)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_autoencoder_loss_decodes_a_latent_sampled_with_the_generator():
    """(mutation testing: decoding the posterior's mode, not a sample, had passed)"""
    torch.manual_seed(0)
    vae = build_vae(tiny_arch())
    frames = torch.rand(2, 3, 32, 32) * 2 - 1

    def loss(seed: int) -> float:
        return nano.autoencoder_loss(vae, frames, torch.Generator().manual_seed(seed), 0.0, 8.0).item()

    assert loss(0) == loss(0)
    assert loss(0) != loss(1)


def test_step_seeds_differ_between_stages():
    """(mutation testing: a stage-blind step seed had passed)"""
    assert [nano.step_seed(0, stage, 3) for stage in nano.STAGES] == [198478470, 1680122868, 3842683572]


def test_a_stage_continued_from_an_export_saves_its_moments_from_then_on(tmp_path, char_tokenizer, probed_every_step):
    """After one more UNet step, the UNet's optimizer moments are in the checkpoint: a resume loads them.
    (mutation testing: leaving 'unet' in fresh_moments had passed)"""
    cfg = tiny_config(tmp_path, char_tokenizer, unet_steps=3, init_from=str(probed_every_step.model_dir))
    continued = nano.pretrain(cfg)
    assert continued.finished and continued.steps == {"autoencoder": 2, "clip": 2, "unet": 3}
    assert json.loads((continued.run_dir / "state.json").read_text())["fresh_moments"] == ["autoencoder", "clip"]


def test_a_time_limit_reached_at_each_stages_last_step_still_finishes_and_exports(tmp_path, char_tokenizer):
    """(mutation testing: stopping when out of time also after a stage's last step had passed)"""
    cfg = tiny_config(tmp_path, char_tokenizer, unet_steps=1, max_minutes=1e-9)
    cfg.autoencoder.steps = cfg.clip.steps = 1
    result = nano.pretrain(cfg)
    assert result.finished and result.steps == {"autoencoder": 1, "clip": 1, "unet": 1}
    assert result.model_dir is not None and (result.model_dir / "unet").is_dir()


def test_a_text_tower_with_lr_zero_gives_the_unet_stage_text_without_gradients(tmp_path, char_tokenizer, monkeypatch):
    """(mutation testing: a frozen text tower that still carried gradients, at their cost, had passed)"""
    seen = []
    encode = nano.encode_clips

    def recording(*args):
        latents, text = encode(*args)
        seen.append(text.requires_grad)
        return latents, text

    monkeypatch.setattr(nano, "encode_clips", recording)
    cfg = tiny_config(tmp_path / "frozen", char_tokenizer)
    cfg.unet.text_encoder_lr = 0.0
    nano.pretrain(cfg)
    assert seen == [False, False]
    seen.clear()
    cfg = tiny_config(tmp_path / "trained", char_tokenizer)
    cfg.unet.text_encoder_lr = 1e-3
    nano.pretrain(cfg)
    assert seen == [True, True]


def test_a_stage_that_diverges_before_its_first_checkpoint_says_to_run_it_again(tmp_path, char_tokenizer):
    """'rerun with --resume' had answered 'nothing to resume' when no checkpoint was saved yet (the usual case of a
    learning rate far too high)."""
    from vidbooth.errors import UserError

    cfg = tiny_config(tmp_path, char_tokenizer)
    cfg.autoencoder.lr, cfg.autoencoder.steps = 1e30, 4
    with pytest.raises(UserError, match=r"^autoencoder loss became nan at step \d: lower the learning rate \(--set "
                                        r"autoencoder.lr=N\) and run it again$"):
        nano.pretrain(cfg)


def test_nano_export_refused_while_another_exports_there(tmp_path, char_tokenizer):
    """Two exports to one folder at once had crossed their renames (ENOTEMPTY midway); the second is now told, and
    the folder is left as it was."""
    from vidbooth.fileio import exclusive_lock, lock_file_beside
    from vidbooth.nano import model as nano_model

    arch = tiny_arch()
    tokenizer = nano.load_tokenizer(str(char_tokenizer), arch.clip.max_length)
    export = tmp_path / "nano"
    nano_model.save_nano(export, arch, tokenizer, build_vae(arch), build_clip(arch, tokenizer), build_unet(arch), {})
    before = sorted(p.relative_to(export) for p in export.rglob("*"))
    with exclusive_lock(lock_file_beside(export), lambda pid: "unused"):
        with pytest.raises(UserError, match=rf"^{re.escape(str(export))} is being exported to by another process "
                                            rf"\(pid {os.getpid()}\): wait for it to end, or export elsewhere$"):
            nano_model.save_nano(export, arch, tokenizer, build_vae(arch), build_clip(arch, tokenizer),
                                 build_unet(arch), {"other": 1})
    assert sorted(p.relative_to(export) for p in export.rglob("*")) == before
    assert json.loads((export / "nano.json").read_text()).get("other") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nano"]  # no lock file or temporary folder left


def test_a_nano_export_follows_the_umask(tmp_path, char_tokenizer):
    """safetensors' writer makes its files 0600: an export to a shared folder had been unreadable by other users."""
    import stat

    from vidbooth.nano import model as nano_model

    arch = tiny_arch()
    tokenizer = nano.load_tokenizer(str(char_tokenizer), arch.clip.max_length)
    previous = os.umask(0o022)
    try:
        export = nano_model.save_nano(tmp_path / "nano", arch, tokenizer, build_vae(arch),
                                      build_clip(arch, tokenizer), build_unet(arch), {})
    finally:
        os.umask(previous)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in export.rglob("*") if p.is_file()}
    assert any(p.suffix == ".safetensors" for p in export.rglob("*")) and modes == {0o644}


def test_a_checkpoint_cut_short_is_refused_in_one_line_and_left_in_place(tmp_path, char_tokenizer):
    run = nano.pretrain(tiny_config(tmp_path, char_tokenizer, unet_steps=2)).run_dir
    weights = run / "unet.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    with pytest.raises(UserError, match=rf"^checkpoint {re.escape(str(weights))} cannot be read \(damaged or cut "
                                        r"short: \w+\): delete the run folder and start over$"):
        nano.pretrain(tiny_config(tmp_path, char_tokenizer, unet_steps=4, resume=True))
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_an_earlier_stage_raised_after_a_later_one_began_is_refused_and_the_run_kept(tmp_path, char_tokenizer):
    from vidbooth.nano import checkpoint as ckpt

    run = nano.pretrain(tiny_config(tmp_path, char_tokenizer, unet_steps=2)).run_dir
    state = (run / ckpt.STATE_FILE).read_text()
    raised = tiny_config(tmp_path, char_tokenizer, unet_steps=2, resume=True)
    raised.autoencoder.steps = 3
    with pytest.raises(UserError, match=r"^autoencoder.steps was raised to 3 after a later stage began: use a new "
                                        r"--out$"):
        nano.pretrain(raised)
    assert (run / ckpt.STATE_FILE).read_text() == state


def test_a_run_started_from_a_model_and_stopped_by_max_minutes_says_to_resume_in_place_of_init_from(
    tmp_path, char_tokenizer, capsys, monkeypatch
):
    model = nano.pretrain(tiny_config(tmp_path / "first", char_tokenizer, unet_steps=2)).model_dir
    monkeypatch.delenv("VIDBOOTH_QUIET", raising=False)
    capsys.readouterr()
    cfg = tiny_config(tmp_path / "next", char_tokenizer, unet_steps=5, init_from=str(model), max_minutes=1e-9)
    assert not nano.pretrain(cfg).finished
    printed = " ".join("".join(capsys.readouterr()).split())
    assert "at unet step 3: rerun the same command with --resume in place of --init-from to continue" in printed


def test_a_checkpoint_it_may_not_write_is_one_line_naming_the_file_not_a_full_disk(
    tmp_path, char_tokenizer, capsys, monkeypatch
):
    import errno

    from omegaconf import OmegaConf

    from vidbooth.cli.app import main
    from vidbooth.nano import checkpoint as ckpt

    def denied(path, tensors, metadata=None):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(ckpt, "write_safetensors", denied)
    recipe = tmp_path / "tiny.yaml"
    OmegaConf.save(OmegaConf.structured(tiny_config(tmp_path, char_tokenizer)), recipe)
    assert main(["pretrain", "--recipe", str(recipe), "--out", str(tmp_path / "run")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "permission denied: " in errors[0] and "autoencoder" in errors[0], errors
    assert "disk is full" not in errors[0]
    assert not (tmp_path / "run" / ckpt.STATE_FILE).exists()


@pytest.mark.parametrize("damage", ["no seed", "no minutes", "steps of another kind", "logit scale of true",
                                    "no text_encoder", "unet cut short", "unet lacks a tensor"])
def test_a_damaged_model_to_start_from_is_refused_in_one_line_and_leaves_no_run(
    damage, tmp_path, char_tokenizer, probed_every_step
):
    """A nano.json without a key had been a KeyError traceback after some stage weights were written (a folder the
    next run took for none); a part missing had asked the hub for it, a part cut short been an OSError traceback."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(probed_every_step.model_dir, model)
    provenance = json.loads((model / "nano.json").read_text())
    if damage == "no seed":
        del provenance["seed"]
    elif damage == "no minutes":
        del provenance["minutes"]
    elif damage == "steps of another kind":
        provenance["steps"]["clip"] = "2"
    elif damage == "logit scale of true":  # Python's 1: had been taken as the CLIP stage's scale
        provenance["logit_scale"] = True
    elif damage == "no text_encoder":
        shutil.rmtree(model / "text_encoder")
    elif damage == "unet cut short":
        weights = next((model / "unet").glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:100])
    else:  # diffusers leaves it empty ('meta'), which failed only once the stage weights before it were written
        from safetensors.torch import load_file, save_file

        weights = next((model / "unet").glob("*.safetensors"))
        tensors = load_file(weights)
        save_file({k: v for k, v in tensors.items() if k != sorted(tensors)[0]}, weights, {"format": "pt"})
    (model / "nano.json").write_text(json.dumps(provenance))
    cfg = tiny_config(tmp_path / "new", char_tokenizer, unet_steps=3, init_from=str(model))
    refused = rf"^{re.escape(str(model))}(/nano.json is damaged| is not a complete| cannot be loaded)"
    with pytest.raises(UserError, match=refused + r".*: check --init-from, or export the model again$"):
        nano.pretrain(cfg)
    assert not (tmp_path / "new" / "run").exists()


def test_a_tokenizer_folder_without_a_readable_tokenizer_is_refused_before_training(tmp_path, char_tokenizer):
    """An empty folder had loaded as a tokenizer of 2 tokens: the autoencoder trained, then the CLIP stage failed
    with an IndexError traceback; a damaged tokenizer.json had been a JSONDecodeError traceback."""
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    damaged = tmp_path / "damaged"
    shutil.copytree(char_tokenizer, damaged)
    tokenizer_json = damaged / "tokenizer.json"
    (tokenizer_json if tokenizer_json.is_file() else damaged / "vocab.json").write_text('{"version": ')
    for folder, said in ((empty, "not found"), (damaged, "cannot be read")):
        with pytest.raises(UserError, match=rf"^tokenizer '{re.escape(str(folder))}' {said}.*: give 'nano', a "
                                            r"CLIPTokenizer folder or an open-clip-torch wheel \(.whl\)$"):
            nano.pretrain(tiny_config(tmp_path, folder))
        assert not (tmp_path / "run").exists()


def test_a_run_folder_that_lost_its_state_is_refused_not_started_over(tmp_path, char_tokenizer):
    """Without state.json, --resume had said 'run without --resume to start', and that run overwrote every
    checkpoint in the folder without a word."""
    from vidbooth.nano import checkpoint as ckpt

    run = nano.pretrain(tiny_config(tmp_path, char_tokenizer, unet_steps=2)).run_dir
    (run / ckpt.STATE_FILE).unlink()
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    for resume in (True, False):
        with pytest.raises(UserError, match=rf"^{re.escape(str(run))} holds checkpoints but no state.json: put it "
                                            r"back and pass --resume, or delete the run folder .*to start over$"):
            nano.pretrain(tiny_config(tmp_path, char_tokenizer, unet_steps=4, resume=resume))
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_a_folder_with_other_safetensors_files_is_no_run_that_lost_its_state(tmp_path):
    """Only the stages' checkpoints make a run folder: `--out` a folder that keeps an image-prompt model had been
    refused as a run without its state.json ('put it back and pass --resume')."""
    from vidbooth.config.pretrain import check_run_folder

    (tmp_path / "image_prompt.safetensors").write_bytes(b"not a run's")
    check_run_folder(tmp_path, False, False)
    (tmp_path / "unet.optim.safetensors").write_bytes(b"a run's")
    with pytest.raises(UserError, match="holds checkpoints but no state.json"):
        check_run_folder(tmp_path, False, False)


def test_a_run_or_model_continued_with_another_tokenizer_is_refused_naming_it(tmp_path, char_tokenizer,
                                                                             probed_every_step):
    """Its token table did not fit: --resume had said the checkpoint was damaged, to delete the run folder (a good
    run lost to a wrong setting), and --init-from had been a traceback."""
    import shutil

    run = tmp_path / "copied"  # the module's run stays as it is, whatever this test finds
    shutil.copytree(probed_every_step.run_dir, run)
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    said = r"was trained with a tokenizer of \d+ tokens, but tokenizer 'nano' has 49408: give the one it was trained"
    resumed = tiny_config(tmp_path, char_tokenizer, unet_steps=3, resume=True)
    resumed.out, resumed.tokenizer = str(run), "nano"
    with pytest.raises(UserError, match=rf"^{re.escape(str(run / 'clip.safetensors'))} {said}"):
        nano.pretrain(resumed)
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    started = tiny_config(tmp_path, "nano", unet_steps=3, init_from=str(probed_every_step.model_dir))
    with pytest.raises(UserError, match=rf"^{re.escape(str(probed_every_step.model_dir))} {said}"):
        nano.pretrain(started)
    assert not (tmp_path / "run").exists()
