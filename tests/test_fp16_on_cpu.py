"""The fp16 paths that otherwise run only on a GPU, here on the CPU: a base cast to fp16 (vidbooth refuses fp16 on a
CPU, where it is slow, so the test lets it through). fp16 has its own branches that bf16, tested on the CPU
elsewhere, never takes: the VAE kept in fp32 beside an fp16 UNet (`force_upcast`), the latents and embeddings
handed between the two, the adapters cast to the base's dtype. A tensor of the wrong dtype in any of them fails
here as it would on CUDA (mixed precision's autocast and loss scaler still need CUDA: tests/test_cuda.py)."""

from __future__ import annotations

import pytest
import torch

from vidbooth.adapters.base import load_tensors
from vidbooth.cli.app import main
from vidbooth.data.video import read_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def fp16_allowed(monkeypatch):
    import vidbooth.device

    real = vidbooth.device.resolve_dtype

    def resolve_dtype(precision, device):
        return torch.float16 if precision == "fp16" else real(precision, device)

    monkeypatch.setattr(vidbooth.device, "resolve_dtype", resolve_dtype)


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_train_and_generate_on_an_fp16_base(family, fp16_allowed, tiny_base_dirs, world_inputs, isolated_home,
                                            tmp_path):
    from vidbooth.engine.tiny import motion_adapter_folder

    photos, clip = world_inputs
    base = ["--base", str(tiny_base_dirs[family]), "--precision", "fp16", "--device", "cpu"]
    if family == "animatediff":
        base += ["--motion-adapter", str(motion_adapter_folder(tiny_base_dirs[family]))]
    preview = ["--set", "preview.num_frames=2", "--set", "preview.num_inference_steps=2"]
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "ball", *base, "--ti-steps", "1",
                 "--identity-steps", "1", "--prior-preservation", "--set", "prior.num_class_images=1",
                 "--set", "prior.num_inference_steps=1", "--set", "identity.guidance_scale=3", *preview]) == 0
    assert main(["train-motion", str(clip), "--name", "M", *base, "--steps", "1", "--num-frames", "4",
                 "--appearance-guidance", "--image-encoder", "vae", "--set", "preview.num_inference_steps=2"]) == 0
    for file in [isolated_home / "subjects" / "S%2A" / "identity_adapter.safetensors",
                 isolated_home / "motions" / "M" / "motion_adapter.safetensors"]:
        tensors, _ = load_tensors(file)
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())
    out = tmp_path / "video.mp4"
    assert main(["generate", *base, "--subject", "S*", "--motion", "M", "--prompt", "a S* ball rolling",
                 "--frames", "4", "--steps", "2", "--scheduler", "dpm++", "--out", str(out)]) == 0
    assert read_video(out).shape == (4, 32, 32, 3)


def test_an_fp16_image_model_animates_a_subject_zero_shot(fp16_allowed, tiny_base_dirs, world_inputs, tmp_path):
    """Text2Video-Zero: the first frame's latents translated (in fp32) and noised back, cross-frame attention."""
    photos, _ = world_inputs
    base = ["--base", str(tiny_base_dirs["animatediff"]), "--precision", "fp16", "--device", "cpu"]
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "ball", *base, "--ti-steps", "1",
                 "--identity-steps", "1", "--no-preview"]) == 0
    out = tmp_path / "video.mp4"
    assert main(["generate", *base, "--subject", "S*", "--prompt", "a S* ball", "--frames", "3", "--steps", "4",
                 "--out", str(out)]) == 0
    assert read_video(out).shape == (3, 32, 32, 3)


def test_nano_in_fp16_takes_an_image_prompt(fp16_allowed, world_inputs, tmp_path):
    """nano's own image-prompt model: the photo's latents noised at each step's timestep, its features injected."""
    photos, _ = world_inputs
    out = tmp_path / "video.mp4"
    assert main(["generate", "--precision", "fp16", "--device", "cpu", "--image-prompt", str(photos / "0.png"),
                 "--prompt", "a sprite moving right", "--frames", "2", "--steps", "2", "--out", str(out)]) == 0
    assert read_video(out).shape == (2, 64, 64, 3)


def test_an_image_prompt_model_trains_on_an_fp16_base(fp16_allowed, tiny_base_dirs, tmp_path):
    """Both stages: the mapper's tokens spliced into fp16 text embeddings, the photo captured, the clips noised in
    fp32 and handed to the UNet in fp16."""
    out = tmp_path / "ip.safetensors"
    assert main(["train-image-prompt", "--base", str(tiny_base_dirs["unet3d"]), "--out", str(out), "--precision",
                 "fp16", "--device", "cpu", "--coarse-steps", "1", "--fine-steps", "1", "--clips", "2",
                 "--set", "data.num_frames=2"]) == 0
    tensors, _ = load_tensors(out)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())


@pytest.mark.parametrize(("family", "motion_adapter"),
                         [("unet3d", False), ("animatediff", False), ("animatediff", True)],
                         ids=["unet3d", "image-model", "animatediff"])
def test_an_fp16_base_loads_as_fp16_with_the_weights_and_fingerprint_of_fp32_cast(
        family, motion_adapter, fp16_allowed, tiny_base_dirs, monkeypatch):
    """The text encoder and the UNet come out of `from_pretrained` in fp16 (a real base had been loaded in fp32 first,
    twice its fp16 size in host memory at the peak, then cast), an image model's and its motion adapter's too, with
    the values and fingerprint of that cast."""
    import diffusers
    import transformers

    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.tiny import motion_adapter_folder

    folder = tiny_base_dirs[family]
    options = {"device": "cpu"} | ({"motion_adapter": str(motion_adapter_folder(folder))} if motion_adapter else {})
    loaded_as = {}

    def recording(cls, method="from_pretrained"):
        real = getattr(cls, method).__func__

        def made(klass, *args, **kwargs):
            model = real(klass, *args, **kwargs)
            loaded_as[klass.__name__] = model.dtype
            return model

        monkeypatch.setattr(cls, method, classmethod(made))

    for cls in (transformers.CLIPTextModel, diffusers.AutoencoderKL, diffusers.UNet3DConditionModel,
                diffusers.UNet2DConditionModel, diffusers.MotionAdapter):
        recording(cls)
    half = load_backbone(str(folder), precision="fp16", **options)
    unet_class = "UNet3DConditionModel" if family == "unet3d" else "UNet2DConditionModel"
    with_motion = {"MotionAdapter": torch.float16} if motion_adapter else {}  # the UNet then made of the two's
    assert loaded_as == {"CLIPTextModel": torch.float16, "AutoencoderKL": torch.float32, unet_class: torch.float16,
                         **with_motion}
    full = load_backbone(str(folder), precision="fp32", **options)
    assert (half.fingerprint, half.image_fingerprint) == (full.fingerprint, full.image_fingerprint)
    for module in ("text_encoder", "unet", "vae"):
        cast = {k: v.to(torch.float16) for k, v in getattr(full, module).state_dict().items()}
        if module == "vae":  # the tiny VAE asks for upcasting: it stays fp32 beside an fp16 UNet
            cast = getattr(full, module).state_dict()
        loaded = getattr(half, module).state_dict()
        assert loaded.keys() == cast.keys()
        assert all(torch.equal(loaded[k], cast[k]) for k in cast), module


def test_a_motion_adapter_whose_files_lack_its_frame_position_tables_loads_in_fp32(fp16_allowed, tiny_base_dirs,
                                                                                   tmp_path, monkeypatch):
    """diffusers computes the tables that some AnimateDiff ports' files lack in the dtype it loads in: in fp16 they
    would not be fp32's, cast. An adapter whose files hold every tensor loads as fp16 (above)."""
    import shutil

    import diffusers
    from safetensors.torch import load_file, save_file

    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.tiny import motion_adapter_folder

    folder = tiny_base_dirs["animatediff"]
    adapter = shutil.copytree(motion_adapter_folder(folder), tmp_path / "adapter")
    (weights,) = adapter.glob("*.safetensors")
    save_file({k: v for k, v in load_file(weights).items() if not k.endswith(".pe")}, weights, {"format": "pt"})
    loaded_as = []

    def made(klass, *args, real=diffusers.MotionAdapter.from_pretrained.__func__, **kwargs):
        adapter = real(klass, *args, **kwargs)
        loaded_as.append(adapter.dtype)
        return adapter

    monkeypatch.setattr(diffusers.MotionAdapter, "from_pretrained", classmethod(made))
    half = load_backbone(str(folder), precision="fp16", motion_adapter=str(adapter), device="cpu").unet.state_dict()
    assert loaded_as == [torch.float32]
    full = load_backbone(str(folder), precision="fp32", motion_adapter=str(adapter), device="cpu").unet.state_dict()
    tables = [key for key in full if key.endswith(".pe")]
    assert tables and all(torch.equal(half[key], full[key].half()) for key in tables)
