"""Motion adapter vs full fine-tuning of the temporal layers, on the same small UNet3D, in one run.

For each method: seconds per optimizer step through the shared training loop (`vidbooth.engine.train`, after a
2-step warm-up), peak memory of training, warm-up included (CUDA: peak allocated; CPU: peak resident-set
growth over the level before training, Linux's VmHWM), and trainable parameters as a fraction of the
UNet's. Each method runs in its own fresh process so that neither inherits the other's allocator state; both
use the same saved model, the same latents, caption and appearance embeddings, and the same seed.

    python benchmarks/bench_motion.py [--width 64] [--frames 8] [--latent 16] [--steps 10] [--repeats 3] [--device cpu]
                                     [--threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _common import PeakMemory

METHODS = ("motion-adapter", "full-temporal")
COND_DIM = 16


def save_model(folder: Path, width: int, latent: int) -> Path:
    """The tiny text encoder and VAE with a UNet3D whose channels are (width, 2 width, 2 width)."""
    from diffusers import UNet3DConditionModel

    from vidbooth.engine.backbone import quiet_libraries
    from vidbooth.engine.tiny import save_tiny_backbone

    quiet_libraries()
    save_tiny_backbone(folder, "unet3d")
    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(width, 2 * width, 2 * width),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    unet.save_pretrained(folder / "unet")
    return folder


class TemporalFineTune:
    """The baseline: every weight of the temporal transformers trains; same objective as the adapter."""

    def __init__(self, backbone):
        from vidbooth.engine.objective import training_scheduler

        self.backbone = backbone
        self.noise_scheduler = training_scheduler(backbone.scheduler_config)
        self.params = [p for layer in backbone.temporal_layers().values() for p in layer.parameters()]
        for p in self.params:
            p.requires_grad_(True)

    def trainable_parameters(self):
        return self.params

    def loss(self, batch, generator):
        from vidbooth.engine.objective import denoising_loss

        bb = self.backbone
        return denoising_loss(bb, self.noise_scheduler, batch["latents"], batch["text"], generator).mean()

    def state_dict(self):
        return {str(i): p.detach().clone() for i, p in enumerate(self.params)}

    def load_state_dict(self, state):
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(state[str(i)])


def run_method(method_name: str, folder: Path, args, gradient_checkpointing: bool = False) -> dict:
    """Train `method_name` for args.steps steps in this process and return its figures."""
    from vidbooth.adapters.motion import MotionAdapterSpec
    from vidbooth.config.train import TrainConfig
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.motion import MotionAdapterMethod
    from vidbooth.engine.train import make_accelerator, seed_everything, train

    accelerator = make_accelerator("no", device=args.device)
    bb = load_backbone(str(folder), device=str(accelerator.device), precision="fp32")
    g = torch.Generator().manual_seed(0)
    size = bb.default_size
    pixels = torch.rand(1, args.frames, 3, size, size, generator=g) * 2 - 1  # (B, F, 3, H, W)
    item = {
        "latents": bb.encode_video(pixels)[0].cpu(),  # (C, F, h, w)
        "text": bb.encode_prompt(["a person waving"])[0].cpu(),
        "appearance": torch.randn(args.frames, COND_DIM, generator=g),
    }
    seed_everything(0)
    if method_name == "motion-adapter":
        method = MotionAdapterMethod(bb, MotionAdapterSpec(("attn1", "attn2", "ff"), 0.5, COND_DIM), 0.5)
    else:
        method = TemporalFineTune(bb)
    unet_params = sum(p.numel() for n, p in bb.unet.named_parameters() if ".adapters." not in n)
    trainable = sum(p.numel() for p in method.trainable_parameters())
    with tempfile.TemporaryDirectory() as run_dir, PeakMemory(bb.device) as memory:
        for steps in (2, args.steps):  # a warm-up, then the steps measured
            settings = TrainConfig(steps=steps, lr=1e-5, checkpoint_every=0,
                                   gradient_checkpointing=gradient_checkpointing)
            result = train(method, [item], settings, run_dir, accelerator, unet=bb.unet)
    peak_mb = memory.peak / 2**20
    digest = hashlib.sha256()
    for key, tensor in sorted(method.state_dict().items()):
        digest.update(key.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return {
        "method": method_name,
        "unet_parameters": unet_params,
        "trainable_parameters": trainable,
        "seconds_per_step": result.step_seconds,  # checkpoint writes excluded
        "peak_training_mb": peak_mb,
        "memory": "CUDA peak allocated" if bb.device.type == "cuda" else "CPU peak RSS growth",
        "weights": digest.hexdigest()[:16],  # of the trained weights
    }


def median_row(runs: list[dict]) -> dict:
    """The first run's fields with the median step time and peak memory over all runs."""
    return runs[0] | {
        key: statistics.median(run[key] for run in runs) for key in ("seconds_per_step", "peak_training_mb")
    }


def parse_arguments(description: str, workers: tuple[str, ...], frames: int, latent: int, steps: int):
    """The command line of a benchmark that trains on `save_model`'s UNet in fresh processes, one per worker."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--width", type=int, default=64, help="UNet channels of the first block")
    parser.add_argument("--frames", type=int, default=frames)
    parser.add_argument("--latent", type=int, default=latent, help="latent side (pixels = 2x with the tiny VAE)")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes for each; medians are shown")
    parser.add_argument("--worker", choices=workers, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], METHODS, frames=8, latent=16, steps=10)
    torch.set_num_threads(args.threads)
    os.environ["VIDBOOTH_QUIET"] = "1"

    if args.worker:
        print(json.dumps(run_method(args.worker, Path(args.folder), args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(Path(tmp) / "model", args.width, args.latent)
        runs = {method: [] for method in METHODS}
        for _ in range(args.repeats):  # interleaved, so that load from other processes hits both alike
            for method in METHODS:
                command = [sys.executable, __file__, "--worker", method, "--folder", str(folder)] + sys.argv[1:]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                runs[method].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = [median_row(runs[method]) for method in METHODS]
    unet = rows[0]["unet_parameters"]
    print(
        f"UNet3D width {args.width} ({unet / 1e6:.2f}M parameters), {args.frames} frames, latent {args.latent}x"
        f"{args.latent}, batch 1, fp32 on {args.device}, {args.steps} steps after a 2-step warm-up, median of "
        f"{args.repeats} interleaved runs; torch threads {torch.get_num_threads()}"
    )
    print(f"{'method':<16} {'trainable':>11} {'% of UNet':>9} {'s/step':>8} {'peak MB':>8}  ({rows[0]['memory']})")
    for row in rows:
        share = 100 * row["trainable_parameters"] / unet
        print(
            f"{row['method']:<16} {row['trainable_parameters']:>11,} {share:>8.2f}% "
            f"{row['seconds_per_step']:>8.3f} {row['peak_training_mb']:>8.1f}"
        )
    adapter, full = rows
    print(
        f"adapter / full: {adapter['trainable_parameters'] / full['trainable_parameters']:.3f}x parameters, "
        f"{adapter['seconds_per_step'] / full['seconds_per_step']:.2f}x step time, "
        f"{adapter['peak_training_mb'] / max(full['peak_training_mb'], 1e-9):.2f}x peak memory"
    )


if __name__ == "__main__":
    main()
