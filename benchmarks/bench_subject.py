"""train-subject's training steps vs a straightforward loop that re-encodes photos and prompts every step.

Both stages (textual inversion, identity adapter) on the same small UNet3D, the same photos, captions, batch
size, learning rate and seed:
- vidbooth: the stage's `Method` through the shared loop (`vidbooth.engine.train`): photo latents encoded once;
  captions tokenised once (textual inversion) or encoded once by the text encoder (identity adapter).
- straightforward: every step resizes the photos, VAE-encodes the batch, tokenises and encodes the captions.

Seconds per optimizer step are averaged over the steps after a warm-up: on CUDA wall time, on CPU the
process's CPU time (what the step costs, whatever else the shared cores run). Peak memory is CUDA's peak
allocation, or on CPU (Linux) the peak growth of the resident set over its level before training. Each
(loop, stage) runs in a fresh process, `--repeats` times, interleaved; medians are reported.
Prints both and the vidbooth / straightforward ratios (below 1 means vidbooth is better).

    python benchmarks/bench_subject.py [--resolution 64] [--batch-size 4] [--photos 4] [--steps 10] [--warmup 2]
                                       [--repeats 3] [--device cpu] [--threads N]
    --threads: torch CPU threads, default 1: with more, the CPU time includes OpenMP workers spinning idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import PeakMemory

LOOPS = ("vidbooth", "straightforward")
STAGES = ("textual_inversion", "identity")
CAPTIONS = ["a photo of {}", "a close-up photo of the {}", "a good photo of a {}", "a rendering of a {}"]
SUBJECT = "S* dog"


def _clock(device: torch.device) -> float:
    """CPU time of the process on CPU; wall time after the queued kernels on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def _add_placeholder(bb):
    from vidbooth.adapters import textual_inversion as ti

    init = ti.initial_rows(bb.text_encoder, ti.class_noun_ids(bb.tokenizer, "dog"), 1)
    ids = ti.add_placeholder_tokens(bb.tokenizer, bb.text_encoder, ["S*"], init)
    return ti.wrap_placeholder_embedding(bb.text_encoder, ids)


def _vidbooth_seconds(bb, stage: str, images, args) -> float:
    """Seconds per step of the stage's Method through the shared loop, frozen work done once up front."""
    from vidbooth.config.train import TrainConfig
    from vidbooth.data.images import photos_to_tensor
    from vidbooth.engine.subject_methods import IdentityAdapterMethod, TextualInversionMethod
    from vidbooth.engine.train import make_accelerator, train

    captions = [c.format(SUBJECT) for c in CAPTIONS]
    latents = bb.encode_video(photos_to_tensor(images, args.resolution).to(bb.device))  # (N, C, 1, h, w)
    if stage == "textual_inversion":
        method = TextualInversionMethod(bb, bb.tokenize(captions), _add_placeholder(bb))
    else:
        with torch.no_grad():
            caption_embeds = bb.encode_prompt(captions)
        method = IdentityAdapterMethod(bb, caption_embeds)
    data = [{"latents": x} for x in latents]
    accelerator = make_accelerator("no", args.device)
    run = Path(args.folder) / f"run-{stage}-{os.getpid()}"  # inside the parent's temporary folder

    def config(steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, lr=1e-4, batch_size=args.batch_size, checkpoint_every=0)

    train(method, data, config(args.warmup), run, accelerator)
    start = _clock(bb.device)
    train(method, data, config(args.steps), run, accelerator)
    return (_clock(bb.device) - start) / args.steps


def _straightforward_seconds(bb, stage: str, images, args) -> float:
    """Seconds per step of a plain loop that redoes the frozen work (resize, VAE, tokenizer, text encoder) each step."""
    from vidbooth.adapters.identity import identity_parameters
    from vidbooth.data.images import photos_to_tensor
    from vidbooth.engine.objective import denoising_loss, training_scheduler

    params = [_add_placeholder(bb).rows] if stage == "textual_inversion" else identity_parameters(bb.unet)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    scheduler = training_scheduler(bb.scheduler_config)
    generator = torch.Generator().manual_seed(0)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = _clock(bb.device)
        pick = torch.randint(len(images), (args.batch_size,), generator=generator).tolist()
        pixels = photos_to_tensor([images[i] for i in pick], args.resolution).to(bb.device)  # (B, 1, 3, H, W)
        latents = bb.encode_video(pixels)
        captions = [CAPTIONS[i % len(CAPTIONS)].format(SUBJECT) for i in pick]
        loss = denoising_loss(bb, scheduler, latents, bb.encode_prompt(captions), generator).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (_clock(bb.device) - start) / args.steps


def child(loop: str, stage: str, args) -> None:
    from vidbooth.adapters.identity import inject_identity_adapter
    from vidbooth.data.images import load_photo_folder
    from vidbooth.engine.backbone import load_backbone

    torch.set_num_threads(args.threads)
    bb = load_backbone(str(args.folder / "model"), device=args.device)
    images = [image for _, image in load_photo_folder(args.folder / "photos")]
    torch.manual_seed(0)
    if stage == "identity":
        inject_identity_adapter(bb.unet, bb.spatial_cross_attention_layers(), 0.5)
    measure = _vidbooth_seconds if loop == "vidbooth" else _straightforward_seconds
    with PeakMemory(bb.device) as memory:
        seconds = measure(bb, stage, images, args)
    print(json.dumps({"seconds": seconds, "peak_mb": memory.peak / 2**20}))


def prepare(folder: Path, photos: int) -> None:
    import numpy as np
    from PIL import Image

    from vidbooth.engine.tiny import save_tiny_backbone

    save_tiny_backbone(folder / "model", "unet3d")
    (folder / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(photos):
        Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(folder / "photos" / f"{i}.jpg")


def _run_child(loop: str, stage: str, args) -> dict:
    command = [sys.executable, __file__, "--child", loop, stage, "--folder", str(args.folder)]
    for flag in ("resolution", "batch_size", "steps", "warmup", "device", "threads"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("LOOP", "STAGE"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["VIDBOOTH_QUIET"] = "1"
    if args.child:
        child(*args.child, args)
        return

    from vidbooth.engine.backbone import quiet_libraries

    quiet_libraries()
    runs = {(loop, stage): [] for stage in STAGES for loop in LOOPS}
    with tempfile.TemporaryDirectory() as folder:
        args.folder = Path(folder)
        prepare(args.folder, args.photos)
        for _ in range(args.repeats):
            for loop, stage in runs:
                runs[loop, stage].append(_run_child(loop, stage, args))
    results = {
        key: {field: statistics.median(r[field] for r in measured) for field in ("seconds", "peak_mb")}
        for key, measured in runs.items()
    }

    print(
        f"tiny UNet3D, {args.resolution}px photos, batch {args.batch_size}, {args.steps} steps, {args.device}, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    unit = "s/step" if args.device.startswith("cuda") else "CPU s/step"
    print(f"{'stage':<18} {'loop':<16} {unit:>10} {'peak MB':>8}")
    for stage in STAGES:
        for loop in LOOPS:
            r = results[loop, stage]
            print(f"{stage:<18} {loop:<16} {r['seconds']:>10.3f} {r['peak_mb']:>8.1f}")
    for stage in STAGES:
        ours, plain = results["vidbooth", stage], results["straightforward", stage]
        time_ratio = ours["seconds"] / plain["seconds"]
        memory_ratio = ours["peak_mb"] / plain["peak_mb"] if plain["peak_mb"] > 0 else float("nan")
        print(f"{stage}: time ratio {time_ratio:.2f}, peak memory ratio {memory_ratio:.2f} (vidbooth / plain)")


if __name__ == "__main__":
    main()
