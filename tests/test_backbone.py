import functools
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

from vidbooth.attention import VidboothAttnProcessor
from vidbooth.engine.backbone import load_backbone, resolve_base
from vidbooth.engine.tiny import motion_adapter_folder, save_tiny_backbone
from vidbooth.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_unet3d_layers(tiny_backbones):
    bb = tiny_backbones["unet3d"]
    assert bb.family == "unet3d"
    cross = bb.spatial_cross_attention_layers()
    assert len(cross) == 4 and all(m.is_cross_attention for m in cross.values())  # down 1 + mid 1 + up 2
    assert all(".attentions." in n for n in cross)  # spatial transformers, never temporal
    temporal = bb.temporal_layers()
    assert "transformer_in" in temporal and any(".temp_attentions." in n for n in temporal)


def test_animatediff_layers(tiny_backbones):
    bb = tiny_backbones["animatediff"]
    assert bb.family == "animatediff"
    assert all(".motion_modules." in n for n in bb.temporal_layers()) and bb.temporal_layers()
    # motion modules' attn2 is a second temporal self-attention: it must not count as cross-attention
    assert not any("motion_modules" in n for n in bb.spatial_cross_attention_layers())
    assert len(bb.spatial_cross_attention_layers()) == 4  # down 1 + mid 1 + up 2


def test_every_attention_uses_the_vidbooth_processor(tiny_backbones):
    from diffusers.models.attention_processor import Attention

    for bb in tiny_backbones.values():
        processors = [m.processor for m in bb.unet.modules() if isinstance(m, Attention)]
        assert processors and all(isinstance(p, VidboothAttnProcessor) for p in processors)


def test_fingerprint_is_stable_and_discriminating(tiny_base_dirs, tmp_path):
    a = load_backbone(str(tiny_base_dirs["unet3d"]), device="cpu")
    again = load_backbone(str(tiny_base_dirs["unet3d"]), device="cpu", precision="bf16")
    assert a.fingerprint == again.fingerprint  # precision does not change what model it is
    assert again.unet.dtype == torch.bfloat16
    other = load_backbone(str(save_tiny_backbone(tmp_path / "other", "unet3d", seed=1)), device="cpu")
    assert other.fingerprint != a.fingerprint


def test_encode_decode_shapes(tiny_backbones):
    bb = tiny_backbones["unet3d"]
    pixels = torch.rand(2, 3, 3, 32, 32) * 2 - 1  # (B, F, 3, H, W)
    latents = bb.encode_video(pixels)
    assert latents.shape == (2, 4, 3, 16, 16)
    assert bb.decode_latents(latents, chunk_size=2).shape == (2, 3, 3, 32, 32)
    assert bb.encode_prompt(["a dog", "a cat"]).shape == (2, 32, 32)


def test_a_prompt_longer_than_the_text_encoder_reads_is_cut_with_one_warning(tiny_backbones, capsys):
    bb = tiny_backbones["unet3d"]
    limit = bb.tokenizer.model_max_length
    long_prompt = "a red cat " + " ".join(["dog"] * limit)
    ids = bb.tokenize([long_prompt, long_prompt, "a dog"])
    assert ids.shape == (3, limit) and torch.equal(ids[0], ids[1])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings  # it quotes what is ignored (it had quoted the prompt's start)
    ignored = re.search(rf"reads {limit}: its end is ignored, from '(.+?)(\.\.\.)?'; shorten it", warnings[0])
    assert ignored and ignored[1] in long_prompt and long_prompt.index(ignored[1]) > 0, warnings
    bb.tokenize(["a dog"])
    assert "warning" not in capsys.readouterr().err


def test_a_long_negative_prompt_is_called_the_negative_prompt(tiny_backbones, monkeypatch):
    """generate's warning of a long --negative-prompt had called it 'the prompt', beside a three-word --prompt."""
    from badinputs import capture_warnings

    from vidbooth.engine.sampling import sample_video

    warned = capture_warnings(monkeypatch)
    bb = tiny_backbones["unet3d"]
    long_text = " ".join(["dog"] * (bb.tokenizer.model_max_length + 5))
    sample_video(bb, "a cat", negative_prompt=long_text, num_frames=1, num_inference_steps=1, guidance_scale=2.0,
                 height=32, width=32)
    assert len(warned) == 1 and warned[0].startswith("the negative prompt is ")
    assert f"tokens but the text encoder reads {bb.tokenizer.model_max_length}:" in warned[0]


def test_not_a_model_folder(tmp_path, tiny_base_dirs):
    (tmp_path / "unet").mkdir()
    with pytest.raises(UserError, match="is not a diffusers text-to-video model: missing tokenizer"):
        load_backbone(str(tmp_path), device="cpu")
    no_vae = shutil.copytree(tiny_base_dirs["animatediff"], tmp_path / "no-vae")
    shutil.rmtree(no_vae / "vae")  # had reached diffusers, which looked for it on the hub
    with pytest.raises(UserError, match=r"no-vae is not a diffusers text-to-video model: missing vae$"):
        load_backbone(str(no_vae), device="cpu")
    with pytest.raises(UserError, match="is an AnimateDiff motion adapter, not a base model: pass it with --motion-"):
        load_backbone(str(motion_adapter_folder(tiny_base_dirs["animatediff"])), device="cpu")


def test_missing_base_and_offline_hub(tmp_path):
    with pytest.raises(UserError, match=r"base model not found: .*nope \(--base\): give a diffusers model folder, a "
                                        r"hub id like org/name, or a built-in model \(nano, tiny, tiny-animatediff\)$"):
        load_backbone(str(tmp_path / "nope"), device="cpu")
    single = tmp_path / "it's a model.safetensors"  # a single-file checkpoint: how to convert it, quotes and all
    single.write_bytes(b"")
    with pytest.raises(UserError, match=r"base model .*model.safetensors \(--base\) is a file: give a diffusers model "
                                        r"folder .* converts once into that folder .* with ") as refused:
        load_backbone(str(single), device="cpu")
    import shlex

    python, dash_c, code = shlex.split(str(refused.value).split("the file) with ", 1)[1])
    assert (python, dash_c) == (sys.executable, "-c") and compile(code, "hint", "exec")
    assert f"from_single_file({json.dumps(str(single))})" in code
    with pytest.raises(UserError, match=r"cannot fetch 'someone/model' from the hub \(offline, or no such model\): "
                       "download it where the network allows and pass its local folder with --base$"):
        load_backbone("someone/model", device="cpu")


def test_a_base_is_found_in_the_home_folder_and_a_recorded_one_names_no_flag(tmp_path, monkeypatch):
    """(mutation testing) `--base '~/models/m'` (quoted, so no shell expanded it) is a folder the loader finds; a
    name recorded in a file, which no option gives, is told without one."""
    from vidbooth.config.checks import base_found

    (tmp_path / "models" / "m").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    base_found("~/models/m")
    with pytest.raises(UserError, match=r"^base model not found: gone: give a diffusers"):
        base_found("gone", None)


def test_a_gated_model_a_missing_revision_and_a_full_disk_are_told_as_such(monkeypatch):
    """A download failing for a gated model, a revision the model lacks or a full disk had been told as 'offline, or
    no such model'."""
    import errno

    import huggingface_hub
    from huggingface_hub.utils import GatedRepoError, RevisionNotFoundError

    def failing(error):
        def snapshot_download(*args, **kwargs):
            raise error
        return snapshot_download

    def hub_error(kind):  # their constructors want an HTTP response
        error = kind.__new__(kind)
        Exception.__init__(error, "refused")
        return error

    for error, message in (
        (hub_error(GatedRepoError), r"^cannot fetch 'org/model' from the hub: it is gated; accept its terms .*hf auth "
                                    r"login\), and run again$"),
        (hub_error(RevisionNotFoundError), r"^cannot fetch 'org/model' at revision 'v9': the model has no such branch, "
                                           r"tag or commit; fix backbone.revision"),
    ):
        monkeypatch.setattr(huggingface_hub, "snapshot_download", failing(error))
        with pytest.raises(UserError, match=message):
            resolve_base("org/model", "v9")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError, match="No space left"):  # the command line's full-disk line, not 'offline'
        resolve_base("org/model")


def test_a_download_from_the_hub_is_said_and_shows_the_hubs_progress(tmp_path, monkeypatch):
    """The libraries' progress bars are off (vidbooth shows its own): a multi-gigabyte base downloaded without a
    word. A hub id already in the hub's cache says nothing."""
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

    from vidbooth.engine.backbone import _from_hub

    bars = []

    def snapshot_download(repo_id, local_files_only=False, **kwargs):
        if local_files_only and not cached:
            raise FileNotFoundError("not in the cache")
        bars.append(not are_progress_bars_disabled())
        return str(tmp_path)

    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # the tests' own setting: on
    infos = []
    monkeypatch.setattr("vidbooth.reporting.info", infos.append)
    disable_progress_bars()  # as the libraries' quieting leaves them
    for cached in (False, True):
        assert _from_hub("org/model", None) == tmp_path
    assert infos == ["downloading org/model from the Hugging Face hub (once: later runs read its cache)"]
    assert bars == [True, False] and are_progress_bars_disabled()
    cached = False
    monkeypatch.setenv("VIDBOOTH_QUIET", "1")  # no bars where no progress is shown
    assert _from_hub("org/model", None) == tmp_path and bars[-1] is False
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_PROGRESS_BARS", True)  # the user's choice stands
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enabling them had warned 'Cannot enable progress bars'
        assert _from_hub("org/model", None) == tmp_path and bars[-1] is False
    said = len(infos)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no download said where none can be
    assert _from_hub("org/model", None) == tmp_path and len(infos) == said


def test_an_image_model_without_a_motion_adapter_is_text2video_zero(tiny_base_dirs, tmp_path):
    from vidbooth.attention.cross_frame import CrossFrameAttnProcessor

    zero = load_backbone(str(tiny_base_dirs["animatediff"]), device="cpu")
    assert zero.family == "text2video-zero" and zero.temporal_layers() == {}
    assert zero.spatial_cross_attention_layers()  # where identity adapters go
    wrapped = {name for name, p in zero.unet.attn_processors.items() if isinstance(p, CrossFrameAttnProcessor)}
    assert wrapped and all(".attn1." in name for name in wrapped)  # self-attention only, every one of them
    assert not any(".attn2." in name for name in wrapped)
    assert len(wrapped) == sum(".attn1." in name for name in zero.unet.attn_processors)
    ok = load_backbone(str(tiny_base_dirs["animatediff"]), motion_adapter=str(motion_adapter_folder(tiny_base_dirs["animatediff"])), device="cpu")
    assert ok.family == "animatediff"
    # AnimateDiff's motion modules were trained on linear betas; the image model alone keeps its own schedule
    assert (ok.scheduler_config["beta_schedule"], zero.scheduler_config["beta_schedule"]) == ("linear", "scaled_linear")
    assert ok.image_fingerprint == zero.image_fingerprint == zero.fingerprint != ok.fingerprint


def test_an_sdxl_style_image_model_is_refused_before_its_weights_load(tiny_base_dirs, tmp_path, monkeypatch):
    import diffusers

    sdxl = tmp_path / "sdxl"
    shutil.copytree(tiny_base_dirs["animatediff"], sdxl)
    config = json.loads((sdxl / "unet" / "config.json").read_text())
    (sdxl / "unet" / "config.json").write_text(json.dumps(config | {"addition_embed_type": "text_time"}))
    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", None)  # never reached
    with pytest.raises(UserError, match="is an SDXL-style model .*'text_time'.* supports SD1.5-family image models"):
        load_backbone(str(sdxl), device="cpu")


def test_corrupt_config_is_a_user_error(tiny_base_dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_base_dirs["unet3d"], broken)
    (broken / "unet" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid diffusers config"):
        load_backbone(str(broken), device="cpu")
    cfg = json.loads((tiny_base_dirs["unet3d"] / "unet" / "config.json").read_text())
    (broken / "unet" / "config.json").write_text(json.dumps(cfg))
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot load the model"):
        load_backbone(str(broken), device="cpu")


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(UserError, match="CUDA is not available"):
        load_backbone("tiny", device="cuda")
    with pytest.raises(UserError, match="fp16 is not supported on CPU"):
        load_backbone("tiny", device="cpu", precision="fp16")


def test_a_builtin_model_built_on_a_process_other_than_rank_0_is_complete(tmp_path, monkeypatch):
    """Under `accelerate launch` every process may build a missing built-in model and the first to finish
    publishes it; transformers 5's `save_pretrained` writes weights on rank 0 only, so rank 1's copy had no text
    encoder weights and broke the cache for every later run."""
    import torch.distributed

    from vidbooth.engine.appearance import build_tiny_clip_vision
    from vidbooth.engine.tiny import save_transformers_model

    with monkeypatch.context() as rank_one:  # not monkeypatch.undo(), which would undo the isolated library too
        rank_one.setattr(torch.distributed, "is_initialized", lambda: True)
        rank_one.setattr(torch.distributed, "get_rank", lambda *args, **kwargs: 1)
        folder = save_tiny_backbone(tmp_path / "tiny", "unet3d")
        save_transformers_model(build_tiny_clip_vision(), tmp_path / "clip")
    assert (folder / "text_encoder" / "model.safetensors").is_file()
    assert load_backbone(str(folder), device="cpu").text_encoder is not None
    from transformers import CLIPVisionModelWithProjection

    CLIPVisionModelWithProjection.from_pretrained(tmp_path / "clip")


@pytest.mark.parametrize(
    "family, component", [("unet3d", "unet"), ("unet3d", "text_encoder"), ("animatediff", "motion")]
)
def test_pickled_weights_in_a_model_folder_are_refused_not_loaded(family, component, tiny_base_dirs, tmp_path, capsys):
    """A base or motion-adapter folder whose weights are a pickle (.bin) is refused in one line: loading it would
    unpickle a user's file, and the same model from the hub (safetensors only) would not load either."""
    from safetensors.torch import load_file

    folder = shutil.copytree(tiny_base_dirs[family], tmp_path / "base")
    adapter = None
    if family == "animatediff":
        adapter = shutil.copytree(motion_adapter_folder(tiny_base_dirs[family]), tmp_path / "adapter")
    weights_folder = adapter if component == "motion" else folder / component
    (weights,) = list(weights_folder.glob("*.safetensors"))
    torch.save(load_file(str(weights)), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(UserError, match=r"holds only pickled weights, which vidbooth never loads: convert them once "
                       r"with \S*python\S* -c .*(DiffusionPipeline|MotionAdapter)\.from_pretrained") as error:
        load_backbone(str(folder), motion_adapter=str(adapter) if adapter else None, device="cpu")
    assert "\n" not in str(error.value) and capsys.readouterr().err == ""
    where = "it" if component == "motion" else f"{component}/"
    assert f"({where} holds only pickled" in str(error.value)  # the component named, not the first diffusers met
    if component == "unet":  # the command as printed converts them (the text encoder's safetensors beside them)
        import subprocess

        command = str(error.value).split("convert them once with ", 1)[1].rsplit(")", 1)[0]
        subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=300)
        assert load_backbone(str(folder), device="cpu").fingerprint


def test_weights_that_do_not_load_are_explained_for_every_part(tiny_base_dirs, tmp_path):
    """Only a variant's files (a download of the fp16 variant) had been called pickled weights to convert; a folder
    with no weights at all (an unfinished download) too; and only the first part diffusers met was named."""
    folder = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "base")
    for part in ("text_encoder", "vae", "unet"):
        (weights,) = list((folder / part).glob("*.safetensors"))
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    with pytest.raises(UserError, match=r"\(text_encoder/ holds only fp16 weights; vae/ holds only fp16 weights; unet/ "
                       r"holds only fp16 weights: add --set backbone.variant=fp16\)"):
        load_backbone(str(folder), device="cpu")
    assert load_backbone(str(folder), device="cpu", variant="fp16").fingerprint  # the fix works
    with pytest.raises(UserError, match=r"\(text_encoder/ has no fp17 weights; vae/ has no fp17 weights;"):
        load_backbone(str(folder), device="cpu", variant="fp17")
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(UserError, match=r"unet/ holds no weights \(an unfinished download\? download it again\)"):
        load_backbone(str(folder), device="cpu", variant="fp16")


def test_a_folder_beside_the_model_is_named_in_the_error(tiny_base_dirs, tmp_path, monkeypatch):
    """The hub cache entry of a model, a part of a model, and a mistyped relative folder (which reads as a hub id)
    each say which folder to pass."""
    entry = tmp_path / "models--org--name"
    snapshot = shutil.copytree(tiny_base_dirs["unet3d"], entry / "snapshots" / "0123abc")
    with pytest.raises(UserError, match=rf"it is a hub cache entry: pass its snapshot folder, {snapshot}\)$"):
        load_backbone(str(entry), device="cpu")
    with pytest.raises(UserError, match=rf"it is a part of one: pass the folder holding model_index.json, {snapshot}"):
        load_backbone(str(snapshot / "unet"), device="cpu")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(UserError, match=r"from the hub \(offline, or no such model\), and there is no folder "
                       rf"{tmp_path}/models/nmae: download it"):
        load_backbone("models/nmae", device="cpu")


@pytest.mark.parametrize("value, expected", [("", ".cache/vidbooth"), ("~/vbc", "vbc")])
def test_the_cache_variable_empty_is_the_default_and_a_tilde_is_home(value, expected, monkeypatch, tmp_path):
    from vidbooth.engine.backbone import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("VIDBOOTH_CACHE", value)
    assert cache_dir() == tmp_path / expected  # had been the current folder, or a folder named '~'


def test_a_damaged_built_in_model_in_the_cache_says_to_delete_it(tmp_path, tiny_base_dirs, monkeypatch):
    """A truncated vocab.json had been a tokenizers traceback; a truncated weights file had been told to convert
    pickled weights. Either way the cure is to delete vidbooth's own build."""
    import shutil

    monkeypatch.setenv("VIDBOOTH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "builtin" / "tiny"
    shutil.copytree(tiny_base_dirs["unet3d"], folder)
    vocab = folder / "tokenizer" / "vocab.json"
    vocab.write_text(vocab.read_text()[:20])
    with pytest.raises(UserError, match=rf"cannot load the model in {folder}: its tokenizer cannot be read \(.*\); "
                                        rf"it is vidbooth's own build: delete {folder} and it is built again$"):
        load_backbone("tiny", device="cpu")
    shutil.copy(tiny_base_dirs["unet3d"] / "tokenizer" / "vocab.json", vocab)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match=rf"cannot load the model in {folder}: .*it is vidbooth's own build") as caught:
        load_backbone("tiny", device="cpu")
    assert "pickled" not in str(caught.value)
    shutil.rmtree(folder)
    assert load_backbone("tiny", device="cpu").family == "unet3d"  # built again
    with pytest.raises(UserError, match=r"backbone.variant") as caught:  # no variant's files: building it again
        load_backbone("tiny", device="cpu", variant="fp16")  # would give none either
    assert "built again" not in str(caught.value)


def test_a_cache_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("VIDBOOTH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=rf"^the cache {tmp_path / 'cache'} is a file: point \$VIDBOOTH_CACHE at a "
                                        "folder$"):
        load_backbone("tiny", device="cpu")


def _wider_motion_adapter(folder: Path) -> Path:
    from diffusers import MotionAdapter

    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=False)
    adapter.save_pretrained(folder)
    return folder


def _without_tensors(weights_folder: Path, prefix: str) -> None:
    from safetensors.torch import load_file, save_file

    (weights,) = list(weights_folder.glob("*.safetensors"))
    tensors = load_file(str(weights))
    save_file({key: value for key, value in tensors.items() if not key.startswith(prefix)}, str(weights))


@pytest.mark.parametrize("case, expected", [
    ("not there", "motion adapter not found: {tmp}/nope (give an AnimateDiff MotionAdapter folder or a hub id"),
    ("empty folder", "--motion-adapter {tmp}/empty is no AnimateDiff MotionAdapter folder (it has no config.json)"),
    ("hub id offline", "cannot fetch 'someone/adapter' from the hub (offline, or no such model): download it where "
                       "the network allows and pass its local folder with --motion-adapter"),
    ("other widths", "motion adapter {tmp}/wide does not fit the image model in {base}: Error(s) in loading"),
    ("tensors missing", "motion adapter {tmp}/partial does not fit the image model in {base}: its weights lack 2 "
                        "tensor(s), such as down_blocks.0.motion_modules.0."),
])
def test_a_motion_adapter_that_cannot_animate_the_image_model_is_one_error_naming_it(case, expected, tiny_base_dirs,
                                                                                   tmp_path):
    """They had been tracebacks (other widths, missing tensors) or errors about --base."""
    base = tiny_base_dirs["animatediff"]
    (tmp_path / "empty").mkdir()
    adapter = {"not there": str(tmp_path / "nope"), "empty folder": str(tmp_path / "empty"),
               "hub id offline": "someone/adapter", "other widths": str(_wider_motion_adapter(tmp_path / "wide")),
               "tensors missing": str(shutil.copytree(motion_adapter_folder(base), tmp_path / "partial"))}[case]
    if case == "tensors missing":
        _without_tensors(tmp_path / "partial", "down_blocks.0.motion_modules.0.proj_in")
    with pytest.raises(UserError) as error:
        load_backbone(str(base), motion_adapter=adapter, device="cpu")
    assert str(error.value).startswith(expected.format(tmp=tmp_path, base=base)) and "\n" not in str(error.value)


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_a_base_whose_weights_lack_tensors_is_one_error(family, tiny_base_dirs, tmp_path):
    """diffusers leaves missing weights empty ('meta') and only logs it: the fingerprint then failed with 'Cannot copy
    out of meta tensor', a traceback."""
    folder = shutil.copytree(tiny_base_dirs[family], tmp_path / "base")
    _without_tensors(folder / "unet", "down_blocks.0.")
    with pytest.raises(UserError, match=rf"cannot load the model in {folder}: its UNet's weights lack \d+ tensor"):
        load_backbone(str(folder), device="cpu")


def test_a_motion_adapter_on_a_video_model_is_warned_of(tiny_base_dirs, monkeypatch):
    from badinputs import capture_warnings

    warnings = capture_warnings(monkeypatch)
    backbone = load_backbone(str(tiny_base_dirs["unet3d"]), motion_adapter="/no/such/adapter", device="cpu")
    assert backbone.family == "unet3d" and backbone.extras["motion_adapter"] is None
    assert warnings == [f"--motion-adapter /no/such/adapter has no effect on {tiny_base_dirs['unet3d']}: its UNet "
                        "(UNet3DConditionModel) has temporal layers of its own; a motion adapter animates an image "
                        "model"]


def test_the_tokenizer_files_of_real_models_leave_stdout_clean(tiny_base_dirs, tmp_path, capfd):
    """SD1.5's and ModelScope's tokenizer files mark special tokens '"__type": "AddedToken"': the tokenizers library
    printed 'Ignored unknown kwarg option __type' on stdout for each, where `--json` keeps its results."""
    import json

    from transformers import CLIPTokenizer

    from vidbooth.engine.backbone import load_tokenizer

    folder = shutil.copytree(tiny_base_dirs["unet3d"] / "tokenizer", tmp_path / "tokenizer")
    token = {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False,
             "__type": "AddedToken"}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps(config | {"unk_token": token, "eos_token": token}))
    CLIPTokenizer.from_pretrained(folder)
    assert "Ignored unknown kwarg option __type" in capfd.readouterr().out  # why the filter is there
    print("a line of our own")
    tokenizer = load_tokenizer(folder)
    out, err = capfd.readouterr()
    assert out == "a line of our own\n" and err == "" and tokenizer.unk_token == "<|endoftext|>"
    import tempfile

    from vidbooth.reporting import native_lines_dropped

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patched:  # no room for the filter's file: nothing filtered, nothing lost
        patched.setattr(tempfile, "TemporaryFile", no_room)
        with native_lines_dropped("noise"):
            print("kept", flush=True)
    print("after", flush=True)
    assert capfd.readouterr().out == "kept\nafter\n"


def test_the_conversion_command_survives_quotes_in_the_path_and_keeps_a_variant(tmp_path):
    """The folder was pasted inside '...': a path with a quote (or a Windows backslash) broke the command; and
    fp16-only pickles were converted without their variant, which found nothing."""
    import shlex

    from vidbooth.engine.backbone import _variant_of, _weights_hint

    folder = tmp_path / "it's a model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.fp16.bin").write_bytes(b"")
    hint = _weights_hint(folder, ["unet"], None, "DiffusionPipeline")
    command = shlex.split(hint.split("convert them once with ", 1)[1].rstrip(")"))
    assert command[0] == sys.executable and command[1] == "-c"  # the Python that has diffusers
    code = command[2]
    compile(code, "<hint>", "exec")  # valid Python
    assert json.dumps(str(folder)) in code and 'variant="fp16"' in code
    assert [_variant_of(name) for name in ("model.fp16.safetensors", "x.fp16-00001-of-00002.safetensors",
                                           "model-00001-of-00002.safetensors", "unet_v1.5.safetensors")] == [
        "fp16", "fp16", None, None]


def test_encode_video_scales_the_vae_latents(tiny_backbones):
    """(mutation testing: latents left unscaled had passed 114 tests)"""
    bb = tiny_backbones["unet3d"]
    assert bb.vae.config.scaling_factor != 1
    pixels = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean = bb.vae.encode(pixels[0]).latent_dist.mean  # (F, C, h, w)
    expected = (mean * bb.vae.config.scaling_factor).transpose(0, 1)[None]
    assert torch.allclose(bb.encode_video(pixels), expected, atol=1e-6)


def test_encode_video_takes_a_few_frames_at_a_time(tiny_backbones, monkeypatch):
    """An image-prompt model's batch (16 clips of 8 frames) had gone through the VAE at once: tens of GB at 512x512.
    In parts, the same latents, and sampled ones drawn as in one batch."""
    bb = tiny_backbones["unet3d"]
    pixels = torch.rand(3, 7, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1  # 21 frames
    with torch.no_grad():
        whole = bb.vae.encode(pixels.flatten(0, 1)).latent_dist
        sampled_whole = whole.sample(torch.Generator().manual_seed(5))
    sizes, encode = [], bb.vae.encode
    monkeypatch.setattr(bb.vae, "encode", lambda x: sizes.append(len(x)) or encode(x))
    scale = bb.vae.config.scaling_factor
    with torch.no_grad():
        assert torch.allclose(bb.encode_video(pixels, chunk_size=8), (whole.mean * scale).unflatten(0, (3, 7))
                              .transpose(1, 2), atol=1e-5)
        sampled = bb.encode_video(pixels, sample=True, generator=torch.Generator().manual_seed(5))
    assert sizes == [8, 8, 5] * 2
    assert torch.allclose(sampled, (sampled_whole * scale).unflatten(0, (3, 7)).transpose(1, 2), atol=1e-5)


def test_fp16_keeps_a_vae_that_asks_for_upcasting_in_fp32(tiny_base_dirs, monkeypatch):
    """A VAE with force_upcast (SD's, the tiny one) decodes to NaN in fp16: it stays fp32 while the rest is fp16
    (mutation testing). fp16 needs CUDA, so the resolved precision is patched here."""
    import vidbooth.device

    monkeypatch.setattr(vidbooth.device, "resolve_dtype", lambda precision, device: torch.float16)
    bb = load_backbone(str(tiny_base_dirs["unet3d"]), device="cpu")
    assert bb.vae.config.force_upcast is True
    assert (bb.vae.dtype, bb.unet.dtype, bb.text_encoder.dtype) == (torch.float32, torch.float16, torch.float16)


def _batch_independence(bb, timestep, frames: int = 3) -> None:
    """Sample 1's noise prediction is the same in a batch of two as alone: each video meets its own prompt (and
    noise level) on every one of its frames."""
    size = bb.default_size // bb.vae_scale_factor
    latents = torch.randn(2, bb.latent_channels, frames, size, size, generator=torch.Generator().manual_seed(0))
    text = bb.encode_prompt(["a cat", "a red dog on a beach"])
    alone = timestep[1:] if torch.is_tensor(timestep) else timestep
    with torch.no_grad():
        both = bb.unet_forward(latents, timestep, text)
        one = bb.unet_forward(latents[1:], alone, text[1:])
    assert both.shape == latents.shape
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_an_animatediff_batch_gives_each_videos_frames_its_own_prompt(tiny_backbones):
    """(mutation testing: the prompts repeated batch-wise, frame f of video 1 meeting video f % 2's prompt, had
    passed)"""
    _batch_independence(tiny_backbones["animatediff"], 10)


def test_a_zero_shot_batch_gives_each_videos_frames_its_own_prompt_and_noise_level(tiny_base_dirs):
    """(mutation testing: the per-video timesteps repeated batch-wise had passed)"""
    zero = load_backbone(str(tiny_base_dirs["animatediff"]), device="cpu")
    assert zero.family == "text2video-zero"
    _batch_independence(zero, torch.tensor([10, 500]))


def test_a_model_folder_replaced_while_it_loads_is_refused(tiny_base_dirs, tmp_path, monkeypatch):
    """`pretrain --export` replaces its folder whole; a generate loading that folder meanwhile had taken some parts
    from each version without a word. An export under way is refused at once; one that happens during the
    loading, after it."""
    from vidbooth.engine import backbone
    from vidbooth.fileio import exclusive_lock, lock_file_beside, replace_folder

    folder = tmp_path / "model"
    shutil.copytree(tiny_base_dirs["unet3d"], folder)
    with exclusive_lock(lock_file_beside(folder), lambda pid: "unused"):
        with pytest.raises(UserError, match=rf"^the model in {re.escape(str(folder))} is being replaced by another "
                                            rf"process \(pid {os.getpid()}\): run again once it ends$"):
            load_backbone(str(folder), device="cpu")
    load_tokenizer = backbone._load_tokenizer

    def exported_meanwhile(path):
        shutil.copytree(folder, tmp_path / "new")
        replace_folder(tmp_path / "new", folder)
        return load_tokenizer(path)

    monkeypatch.setattr(backbone, "_load_tokenizer", exported_meanwhile)
    with pytest.raises(UserError, match=rf"^the model in {re.escape(str(folder))} was replaced while it loaded "
                                        r"\(exported again\?\): run again$"):
        load_backbone(str(folder), device="cpu")
    monkeypatch.setattr(backbone, "_load_tokenizer", load_tokenizer)
    assert load_backbone(str(folder), device="cpu").family == "unet3d"


def test_an_animatediff_unet_is_made_of_its_sources_tensors_with_the_values_diffusers_gives_it(tiny_base_dirs,
                                                                                              monkeypatch):
    """Built as diffusers builds it, it drew random weights and then copied the image model's and the adapter's in:
    the two and the copy held at once (an AnimateDiff base in fp32 peaked at twice its size), and random numbers
    drawn for nothing. It now holds their tensors themselves, with the values and dtype diffusers gives it. A PIA
    adapter, whose conv_in diffusers makes of the two, is left to diffusers."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from vidbooth.engine import backbone

    folder = tiny_base_dirs["animatediff"]
    sources, drawn = [], []
    for cls in (UNet2DConditionModel, MotionAdapter):
        def kept(klass, *args, real=cls.from_pretrained.__func__, **kwargs):
            sources.append(real(klass, *args, **kwargs))
            return sources[-1]

        monkeypatch.setattr(cls, "from_pretrained", classmethod(kept))

    def made_of(unet2d, adapter, real=backbone._made_of):
        rng = torch.get_rng_state()
        unet = real(unet2d, adapter)
        drawn.append(not torch.equal(rng, torch.get_rng_state()))
        return unet

    monkeypatch.setattr(backbone, "_made_of", made_of)
    unet = load_backbone(str(folder), motion_adapter=str(motion_adapter_folder(folder)), device="cpu").unet
    assert drawn == [False]
    expected = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(folder / "unet"),
                                           MotionAdapter.from_pretrained(motion_adapter_folder(folder)))
    state, expected_state = unet.state_dict(), expected.state_dict()
    assert state.keys() == expected_state.keys()
    assert all(torch.equal(state[k], expected_state[k]) and state[k].dtype == expected_state[k].dtype for k in state)
    theirs = sources[0].state_dict() | sources[1].state_dict()
    assert all(tensor.data_ptr() == theirs[key].data_ptr() for key, tensor in state.items())  # not copies
    pia = MotionAdapter.from_config(dict(sources[1].config, conv_in_channels=9))
    assert backbone._made_of(sources[0], pia) is None
    built = UNetMotionModel.__init__

    @functools.wraps(built)  # its signature, which diffusers reads its settings by
    def with_a_table_of_its_own(self, *args, **kwargs):  # computed as it is built, not saved: none to give it
        built(self, *args, **kwargs)
        self.register_buffer("table", torch.arange(4.0), persistent=False)

    monkeypatch.setattr(UNetMotionModel, "__init__", with_a_table_of_its_own)
    assert backbone._made_of(*sources[:2]) is None
    monkeypatch.setattr(UNetMotionModel, "__init__", built)
    gated = UNet2DConditionModel.from_config(dict(sources[0].config, attention_type="gated"))  # GLIGEN's fusers
    assert backbone._made_of(gated, sources[1]) is None  # diffusers has no place for them: refused, not dropped


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_bf16_loads_weights_stored_in_16_bits_as_stored_with_the_values_and_fingerprint_of_fp32_cast(
        family, tiny_base_dirs, tmp_path, monkeypatch):
    """A bf16 run loaded the text encoder and UNet in fp32 and then cast them: twice the host memory of weights stored
    in fp16 (as real bases ship them), which become the same bf16 weights from fp16 as from fp32. Weights stored in
    fp32 still load in fp32: the fingerprint rounds them to fp16, and bf16's would give another."""
    import diffusers
    import transformers
    from safetensors.torch import load_file, save_file

    from vidbooth.engine import backbone

    folder = shutil.copytree(tiny_base_dirs[family], tmp_path / "base")
    options = {"device": "cpu"}
    if family == "animatediff":
        options["motion_adapter"] = str(shutil.copytree(motion_adapter_folder(tiny_base_dirs[family]),
                                                        motion_adapter_folder(folder)))
    loaded_as = {}
    for cls in (transformers.CLIPTextModel, diffusers.UNet3DConditionModel, diffusers.UNet2DConditionModel):
        def made(klass, *args, real=cls.from_pretrained.__func__, **kwargs):
            model = real(klass, *args, **kwargs)
            loaded_as["UNet" if "UNet" in klass.__name__ else "text encoder"] = model.dtype
            return model

        monkeypatch.setattr(cls, "from_pretrained", classmethod(made))
    load_backbone(str(folder), precision="bf16", **options)
    assert loaded_as == {"text encoder": torch.float32, "UNet": torch.float32}  # stored in fp32
    for part in ("text_encoder", "unet", "vae"):
        (weights,) = (folder / part).glob("*.safetensors")
        tensors = load_file(weights)
        halved = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(halved, weights.with_suffix(".fp16.safetensors"), {"format": "pt"})  # a variant beside them
    load_backbone(str(folder), precision="bf16", **options)
    assert loaded_as == {"text encoder": torch.float32, "UNet": torch.float32}  # the fp32 files, as asked
    stored_in_fp16 = load_backbone(str(folder), precision="bf16", variant="fp16", **options)
    assert loaded_as == {"text encoder": torch.float16, "UNet": torch.float16}
    full = load_backbone(str(folder), precision="fp32", variant="fp16", **options)
    assert (stored_in_fp16.fingerprint, stored_in_fp16.image_fingerprint) == (full.fingerprint, full.image_fingerprint)
    assert all(p.dtype == torch.bfloat16 for p in stored_in_fp16.unet.parameters())
    for module in ("text_encoder", "unet", "vae"):
        loaded, cast = getattr(stored_in_fp16, module).state_dict(), getattr(full, module).state_dict()
        assert loaded.keys() == cast.keys()
        assert all(torch.equal(loaded[k], cast[k].to(loaded[k].dtype)) for k in cast), module
    if family == "animatediff":  # built by diffusers (a PIA adapter), which casts the adapter to the UNet's dtype:
        monkeypatch.setattr(backbone, "_made_of", lambda unet2d, adapter: None)  # fp16 had rounded it twice
        built = load_backbone(str(folder), precision="bf16", variant="fp16", **options).unet.state_dict()
        cast = full.unet.state_dict()
        assert all(torch.equal(built[k], cast[k].to(torch.bfloat16)) for k in cast)


def test_the_dtype_weights_are_stored_in_is_read_from_their_files_of_the_variant_asked_for(tmp_path):
    from safetensors.torch import save_file

    from vidbooth.engine.backbone import _stored_dtype

    def stored(*dtypes, name="model.safetensors"):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        save_file({f"w{i}": torch.zeros(2, dtype=dtype) for i, dtype in enumerate(dtypes)}, folder / name)
        return folder

    assert _stored_dtype(stored(torch.float16, torch.int64), None) == torch.float16  # an old CLIP's position ids
    assert _stored_dtype(stored(torch.bfloat16), None) == torch.bfloat16
    assert _stored_dtype(stored(torch.float16, torch.float32), None) is None  # some weights in fp32: loaded so
    assert _stored_dtype(stored(torch.float16, torch.bfloat16), None) is None
    assert _stored_dtype(stored(torch.float32), None) is None
    assert _stored_dtype(tmp_path, None) is None  # no weights: the load says so
    variant = stored(torch.float16, name="model.fp16.safetensors")
    save_file({"w": torch.zeros(2)}, variant / "model.safetensors")
    assert (_stored_dtype(variant, "fp16"), _stored_dtype(variant, None)) == (torch.float16, None)


def test_a_missing_packaged_nano_model_says_to_reinstall(tmp_path, monkeypatch):
    from vidbooth.engine import backbone

    monkeypatch.setattr(backbone, "NANO", tmp_path / "nano")
    with pytest.raises(UserError, match=rf"^the packaged nano model is missing from {tmp_path / 'nano'}: reinstall "
                                        "vidbooth$"):
        load_backbone("nano", device="cpu")


def test_a_hub_cache_snapshot_without_safetensors_weights_says_to_convert_a_whole_download(tiny_base_dirs, tmp_path):
    snapshot = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "models--org--name" / "snapshots" / "0123abc")
    for weights in (snapshot / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(UserError, match=r"\(unet/ holds no \.safetensors weights \(if the model ships only pickled "
                                        r"\.bin weights, download it whole, convert them and pass its folder\)\)$"):
        load_backbone(str(snapshot), device="cpu")


def test_a_weights_file_under_another_name_is_told_by_the_library_alone(tiny_base_dirs, tmp_path):
    folder = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "base")
    (folder / "text_encoder" / "model.safetensors").rename(folder / "text_encoder" / "weights.safetensors")
    with pytest.raises(UserError, match=rf"^cannot load the model in {folder}: .*no file named model\.safetensors"
                                        r"[^()]*$"):
        load_backbone(str(folder), device="cpu")


def test_a_unet_class_vidbooth_does_not_support_is_one_error(tiny_base_dirs, tmp_path):
    folder = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "base")
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["_class_name"] = "UNetSpatioTemporalConditionModel"
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=rf"^unsupported UNet class 'UNetSpatioTemporalConditionModel' in {folder}: "
                                        "vidbooth supports UNet3D, AnimateDiff and image models "
                                        r"\(UNet2DConditionModel\)$"):
        load_backbone(str(folder), device="cpu")


def test_a_model_whose_scheduler_config_is_missing_or_unreadable_has_the_schedulers_default_noise_levels(tmp_path):
    from vidbooth.engine.backbone import noise_levels

    assert noise_levels(tmp_path) == 1000
    (tmp_path / "scheduler").mkdir()
    for text in ("{not json", "[]"):
        (tmp_path / "scheduler" / "scheduler_config.json").write_text(text)
        assert noise_levels(tmp_path) == 1000
    (tmp_path / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": 500}')
    assert noise_levels(tmp_path) == 500


def test_a_damaged_weights_file_has_no_stored_dtype_so_its_load_in_fp32_tells_the_damage(tmp_path):
    from vidbooth.engine.backbone import _stored_dtype

    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    assert _stored_dtype(tmp_path, None) is None


@pytest.mark.parametrize("removed", [("vocab.json",), ("merges.txt",), ("vocab.json", "merges.txt")])
def test_a_tokenizer_lacking_its_vocabulary_is_one_error_naming_the_files(removed, tiny_base_dirs, tmp_path):
    """Without both, the tokenizer had loaded empty, and every prompt became no tokens at all (videos of nothing,
    with no word); without one, the error had been the tokenizers library's ('`vocab` and `merges` must be both')."""
    folder = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "model")
    for name in removed:
        (folder / "tokenizer" / name).unlink()
    with pytest.raises(UserError, match=rf"^{re.escape(str(folder))}/tokenizer lacks {', '.join(removed)} \(or a "
                                        r"tokenizer.json\): the model's tokenizer is incomplete; .* again$"):
        load_backbone(str(folder), device="cpu")


def test_a_tokenizer_of_unknown_length_reads_what_the_text_encoder_does(tiny_base_dirs, tmp_path):
    """A tokenizer folder without tokenizer_config.json (or one with no model_max_length) is as long as transformers'
    'very large integer': the first prompt had ended in OverflowError's traceback."""
    folder = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "model")
    (folder / "tokenizer" / "tokenizer_config.json").unlink()
    bb = load_backbone(str(folder), device="cpu")
    assert bb.tokenizer.model_max_length == bb.text_encoder.config.max_position_embeddings == 32
    assert bb.encode_prompt(["a dog"]).shape == (1, 32, 32)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", None])
def test_a_damaged_or_missing_scheduler_config_is_one_error_naming_it(text, tiny_base_dirs, tmp_path):
    """Its JSON error had been told without the file ('Expecting property name ...: line 1 column 2'), a config
    that is no JSON object had ended in AttributeError's traceback when sampling began, and a missing one had been
    '[Errno 2] No such file or directory' with nothing to do."""
    folder = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "model")
    config = folder / "scheduler" / "scheduler_config.json"
    config.unlink() if text is None else config.write_text(text)
    problem = "is missing" if text is None else "is not a valid diffusers config"
    with pytest.raises(UserError, match=rf"^{re.escape(str(config))} {problem}: copy or download the model's "
                                        r"scheduler/ folder again$"):
        load_backbone(str(folder), device="cpu")


def test_a_tiny_model_saved_again_by_its_libraries_keeps_its_fingerprint(tiny_base_dirs, tmp_path):
    """The tiny text encoder's config had lacked the 'architectures' that transformers' save_pretrained writes: a
    tiny base saved again (the conversion command the loader prints, an fp16 variant) was another base, and every
    subject and motion learned on it was refused."""
    from transformers import CLIPTextModel

    folder = shutil.copytree(tiny_base_dirs["unet3d"], tmp_path / "model")
    CLIPTextModel.from_pretrained(folder / "text_encoder").save_pretrained(folder / "text_encoder")
    fingerprint = load_backbone(str(tiny_base_dirs["unet3d"]), device="cpu").fingerprint
    assert load_backbone(str(folder), device="cpu").fingerprint == fingerprint


def test_a_revision_for_a_local_folder_is_warned_of(tiny_base_dirs, monkeypatch):
    """backbone.revision picks a hub id's version: given with a folder, it had been dropped without a word (and
    recorded in the run's config.yaml as if it had been used)."""
    from badinputs import capture_warnings

    warnings = capture_warnings(monkeypatch)
    load_backbone(str(tiny_base_dirs["unet3d"]), device="cpu", revision="v2")
    assert warnings == [f"backbone.revision v2 has no effect on {tiny_base_dirs['unet3d']}: a revision picks a version "
                        "of a hub id's model, and a local folder holds one; leave it out"]


def test_a_motion_adapter_downloaded_as_its_fp16_variant_alone_loads(tiny_base_dirs, tmp_path):
    """Its error had said 'add --set backbone.variant=fp16', which the motion adapter's load never took (and the image
    model's then failed for): its weights are in the one variant its folder holds."""
    base = tiny_base_dirs["animatediff"]
    adapter = shutil.copytree(motion_adapter_folder(base), tmp_path / "adapter")
    (adapter / "diffusion_pytorch_model.safetensors").rename(adapter / "diffusion_pytorch_model.fp16.safetensors")
    loaded = load_backbone(str(base), motion_adapter=str(adapter), device="cpu")
    assert loaded.fingerprint == load_backbone(str(base), motion_adapter=str(motion_adapter_folder(base)),
                                               device="cpu").fingerprint
