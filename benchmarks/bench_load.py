"""Host memory and time to load a base, by precision: fp16 loads as fp16, bf16 as the 16-bit floats the files hold.

Usage: python benchmarks/bench_load.py [--family unet3d|animatediff] [--base FOLDER [--motion-adapter FOLDER]]
                                       [--width N]

Without `--base` it saves a base with fp16 weights (as real bases ship them; `--width` is its UNet's first block's
channels) beside the tiny test text encoder and VAE, in a temporary folder: a UNet3D (512 gives 0.57 B parameters),
or an image model's UNet and an AnimateDiff motion adapter (384 gives 1.17 B parameters built together). Each row
loads the base in a fresh process on the CPU and touches every weight; it prints the growth of the resident set at
its peak (Linux's VmHWM) and the seconds. The reference row is the way every half precision loaded before: fp32,
then cast to fp16. A GPU run copies the same host-side weights to the device, so the host peak is the same.
vidbooth refuses fp16 on the CPU, where it is slow; here the rows let it through.

Measured on 2 CPU cores (forty-third session; the seconds vary by a quarter from run to run):
- UNet3D, 0.57 B parameters (1.1 GB of fp16 weights): fp32 then cast to fp16 +3.58 GB, 5.8 s; fp16 +1.40 GB (0.39
  of the reference), 4.4 s.
- AnimateDiff, 1.17 B parameters (2.3 GB of fp16 weights): fp32 then cast +9.60 GB, 19.9 s; fp16 +5.70 GB (0.59),
  6.4 s; fp32 13.7 s. Before this session (run with the older vidbooth first on PYTHONPATH, from another folder
  than the repository's), fp16 peaked as fp32 did, at 9.57 GB, in 19.6 s, and fp32 took 22.2 s: the UNet was built
  in fp32 from the two, drawing random weights that it then replaced.
- AnimateDiff again (forty-fourth session), its UNet now made of the image model's and the adapter's own tensors
  rather than a copy of them: fp32 +5.68 GB, 6.2 s; fp16 +3.00 GB, 3.9 s; bf16 +5.78 GB. The previous commit
  (12f3ceb), run just after on the same base: fp32 +9.57 GB, 10.0 s; fp16 +5.68 GB, 5.4 s; bf16 +9.57 GB. Same
  fingerprint in every row of both.
- bf16, which loaded in fp32 and was cast, now loads weights stored in fp16 as fp16 before the cast (forty-fourth
  session): UNet3D +2.44 GB, 3.4 s, against +3.58 GB, 4.0 s at 12f3ceb run just after; AnimateDiff +4.26 GB
  (+9.57 GB before that session's changes). Same fingerprint in every row.
- The peaks count the weight files' pages mapped into the process (weights loaded as stored stay mapped; the kernel
  can drop such pages and read them again). Sampled every 10 ms on the UNet3D (forty-fifth session): in bf16 the
  process's own memory peaked at 1.32 GB and the fp16 files' pages at 1.12 GB, at different moments (the resident
  set at 2.36 GB); the cast lets the pages go, and at the end it holds 1.30 GB, 1.27 GB of it its own. fp16 holds
  1.37 GB, 1.13 GB of it the files' pages.
- AnimateDiff in fp16 with the motion adapter loaded as fp16 too (its files hold every tensor): +2.61 GB, 3.8 s
  (+3.00 GB with it in fp32). Loading it as fp16 in bf16 runs too peaked at +4.87 GB: bf16 loads it in fp32.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROW = """
import sys, time, torch
import vidbooth.device
sys.path.insert(0, {benchmarks!r})
from _common import PeakMemory
vidbooth.device.resolve_dtype = lambda precision, device: {{"fp16": torch.float16, "bf16": torch.bfloat16}}.get(
    precision, torch.float32)
from vidbooth.engine.backbone import load_backbone
precision, cast = {precision!r}, {cast!r}
with PeakMemory(torch.device("cpu")) as peak:
    start = time.perf_counter()
    bb = load_backbone({base!r}, device="cpu", precision=precision, motion_adapter={motion_adapter!r})
    if cast:
        bb.text_encoder.to(torch.float16), bb.unet.to(torch.float16)
    total = sum(float(p.float().sum()) for m in (bb.text_encoder, bb.unet, bb.vae) for p in m.parameters())
    seconds = time.perf_counter() - start
print(peak.peak, seconds, bb.unet.dtype, bb.fingerprint)
"""


def save_base(folder: Path, family: str, width: int) -> Path:
    import torch
    from diffusers import MotionAdapter, UNet2DConditionModel, UNet3DConditionModel

    from vidbooth.engine.tiny import motion_adapter_folder, save_tiny_backbone

    save_tiny_backbone(folder, family)
    torch.manual_seed(0)
    blocks = {"block_out_channels": (width // 2, width, width * 3 // 2, width * 3 // 2)} if family == "unet3d" else {
        "block_out_channels": (width, width * 2, width * 3, width * 3)}
    unet_class = UNet3DConditionModel if family == "unet3d" else UNet2DConditionModel
    unet = unet_class(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
                      cross_attention_dim=32, attention_head_dim=64, **blocks)
    parameters = sum(p.numel() for p in unet.parameters())
    unet.half().save_pretrained(folder / "unet")
    if family == "animatediff":
        adapter = MotionAdapter(motion_layers_per_block=2, motion_num_attention_heads=8, motion_max_seq_length=32,
                                **blocks)
        parameters += sum(p.numel() for p in adapter.parameters())
        adapter.half().save_pretrained(motion_adapter_folder(folder))
    print(f"saved a {family} base of {parameters / 1e9:.2f} B parameters in fp16 to {folder}")
    return folder


def row(base: str, motion_adapter: str | None, precision: str, cast: bool) -> tuple[float, float, str, str]:
    code = ROW.format(benchmarks=str(Path(__file__).parent), base=base, precision=precision, cast=cast,
                      motion_adapter=motion_adapter)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, seconds, dtype, fingerprint = done.stdout.split()[-4:]
    return float(peak), float(seconds), dtype, fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["unet3d", "animatediff"], default="unet3d")
    parser.add_argument("--base", help="a base model folder (default: one saved here)")
    parser.add_argument("--motion-adapter", help="with --base: an AnimateDiff motion adapter folder")
    parser.add_argument("--width", type=int, help="the saved UNet's first block's channels (default 512, or 384)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        width = args.width or (512 if args.family == "unet3d" else 384)
        base = args.base or str(save_base(Path(scratch) / "base", args.family, width))
        motion_adapter = args.motion_adapter
        if not args.base and args.family == "animatediff":
            from vidbooth.engine.tiny import motion_adapter_folder

            motion_adapter = str(motion_adapter_folder(Path(base)))
        reference = row(base, motion_adapter, "fp32", cast=True)
        print(f"{'load':<28}{'host peak':>12}{'ratio':>8}{'seconds':>10}  dtype, fingerprint")
        for label, precision, cast in (("fp32 then cast to fp16", "fp32", True), ("fp32", "fp32", False),
                                       ("fp16", "fp16", False), ("bf16", "bf16", False)):
            peak, seconds, dtype, fingerprint = reference if cast else row(base, motion_adapter, precision, cast)
            ratio = peak / reference[0]
            print(f"{label:<28}{peak / 1e9:>10.2f}GB{ratio:>8.2f}{seconds:>10.1f}  {dtype}, {fingerprint}")


if __name__ == "__main__":
    main()
