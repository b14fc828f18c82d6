"""Host memory and time to load a base, by precision: fp16 loads as fp16, bf16 loads in fp32 and is cast.

Usage: python benchmarks/bench_load.py [--base FOLDER] [--width 512]

Without `--base` it saves a UNet3D base with fp16 weights (as real bases ship them; `--width` is its first block's
channels; 512 gives 0.57 B parameters) beside the tiny test text encoder and VAE, in a temporary folder. Each
row loads the base in a fresh process on the CPU and touches every weight; it prints the growth of the resident set
at its peak (Linux's VmHWM) and the seconds. The reference row is the way every half precision loaded before:
fp32, then cast to fp16. A GPU run copies the same host-side weights to the device, so the host peak is the same.
vidbooth refuses fp16 on the CPU, where it is slow; here the rows let it through.

Measured on 2 CPU cores (forty-third session), the default 0.57 B-parameter UNet (1.1 GB of fp16 weights): fp32
then cast to fp16 +3.58 GB, 6.7 s; fp16 +1.46 GB (0.41 of the reference), 4.5 s; bf16 as the reference (it loads
the same way: loading it as bf16 would change the base's fingerprint, taken from the weights rounded to fp16).
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
    bb = load_backbone({base!r}, device="cpu", precision=precision)
    if cast:
        bb.text_encoder.to(torch.float16), bb.unet.to(torch.float16)
    total = sum(float(p.float().sum()) for m in (bb.text_encoder, bb.unet, bb.vae) for p in m.parameters())
    seconds = time.perf_counter() - start
print(peak.peak, seconds, bb.unet.dtype, bb.fingerprint)
"""


def save_base(folder: Path, width: int) -> Path:
    import torch
    from diffusers import UNet3DConditionModel

    from vidbooth.engine.tiny import save_tiny_backbone

    save_tiny_backbone(folder)
    torch.manual_seed(0)
    unet = UNet3DConditionModel(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(width // 2, width, width * 3 // 2, width * 3 // 2),
                                norm_num_groups=32, cross_attention_dim=32, attention_head_dim=64)
    parameters = sum(p.numel() for p in unet.parameters())
    unet.half().save_pretrained(folder / "unet")
    print(f"saved a UNet3D of {parameters / 1e9:.2f} B parameters in fp16 to {folder}")
    return folder


def row(base: str, precision: str, cast: bool) -> tuple[float, float, str, str]:
    code = ROW.format(benchmarks=str(Path(__file__).parent), base=base, precision=precision, cast=cast)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, seconds, dtype, fingerprint = done.stdout.split()[-4:]
    return float(peak), float(seconds), dtype, fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="a base model folder (default: one saved here)")
    parser.add_argument("--width", type=int, default=512, help="the saved UNet's first block's channels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = args.base or str(save_base(Path(scratch) / "base", args.width))
        reference = row(base, "fp32", cast=True)
        print(f"{'load':<28}{'host peak':>12}{'ratio':>8}{'seconds':>10}  dtype, fingerprint")
        for label, precision, cast in (("fp32 then cast to fp16", "fp32", True), ("fp32", "fp32", False),
                                       ("fp16", "fp16", False), ("bf16", "bf16", False)):
            peak, seconds, dtype, fingerprint = reference if cast else row(base, precision, cast)
            ratio = peak / reference[0]
            print(f"{label:<28}{peak / 1e9:>10.2f}GB{ratio:>8.2f}{seconds:>10.1f}  {dtype}, {fingerprint}")


if __name__ == "__main__":
    main()
