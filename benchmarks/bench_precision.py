"""Half precision against fp32, component by component, on one device: where a base's videos start to differ.

Usage: python benchmarks/bench_precision.py [--base nano] [--device cuda] [--steps 10] [--guidance 2] [--diagnose]
                                              [--threads 1]

For each precision (fp32 on the CPU as the reference; fp32, fp16 and bf16 on `--device`) it loads the base and
prints, against the CPU's fp32: the text encoder's output, one UNet prediction from the same inputs, the VAE's
decoding of the same latents (all as mean |difference| / mean |reference|), the sampled videos from the same noise
(mean |difference| in 0-255 pixel levels) and the seconds per video. On nano the world probe also reads each
video's colour and motion, and the line says in how many the reads agree with the prompt.

`--diagnose` adds rows that each change one thing: on the CPU, fp16 (vidbooth refuses fp16 on the CPU, where it is
slow; here the fp32 model is cast); on CUDA, fp16 with cuBLAS's reduced-precision reductions off, with cuDNN off,
and with `math` attention.

Measured on an H200 (twentieth session, sampling only): fp32 0.00-0.03 of 255 from the CPU, fp16 8.2-8.3 and bf16
6.0-6.4 on nano (CPU bf16: 0.15-0.29); the per-component figures are for the next session with a GPU to find why.
On 2 CPU cores (twenty-first session), nano in fp16 strays 0.05 of 255 (UNet prediction 0.1%), less than bf16
(0.18, 0.9%), as fp16's longer mantissa predicts: fp16 arithmetic itself does not explain CUDA's 8 of 255.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

NANO_PROMPTS = ["a red solid square moving right", "a blue striped circle moving up",
                "a green dotted cross moving left", "a yellow checkered triangle moving down"]
OTHER_PROMPTS = ["a dog running", "a cat jumping", "a car driving", "a tree swaying"]  # short: tiny reads 32 tokens


def relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.float().cpu(), reference.float().cpu()
    return ((value - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12)).item()


def measure(base: str, device: str, precision: str, steps: int, guidance: float, attention: str = "auto",
            cast: torch.dtype | None = None) -> dict:
    """`cast`: load in fp32 and cast the text encoder and UNet to this dtype (and the VAE, as load_backbone does)."""
    from dataclasses import replace

    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.sampling import sample_video

    bb = load_backbone(base, device=device, precision=precision, attention=attention)
    if cast is not None:
        keep_vae = cast == torch.float16 and getattr(bb.vae.config, "force_upcast", False)
        bb.text_encoder.to(cast), bb.unet.to(cast), bb.vae.to(torch.float32 if keep_vae else cast)
        bb = replace(bb, dtype=cast)
    prompts = NANO_PROMPTS if base == "nano" else OTHER_PROMPTS
    generator = torch.Generator().manual_seed(0)
    frames = 8 if base == "nano" else 4
    latents = torch.randn((len(prompts), bb.latent_channels, frames, bb.default_size // bb.vae_scale_factor,
                           bb.default_size // bb.vae_scale_factor), generator=generator)
    with torch.no_grad():
        text = bb.encode_prompt(prompts)
        prediction = bb.unet_forward(latents.to(bb.device, bb.dtype), 500, text)
        decoded = bb.decode_latents(latents.to(bb.device, bb.dtype))
    def sample() -> np.ndarray:
        return sample_video(bb, prompts, num_frames=frames, num_inference_steps=steps, guidance_scale=guidance,
                            generator=torch.Generator().manual_seed(1))

    sample()  # warm-up (kernels, allocator)
    if bb.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    videos = sample()
    if bb.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / len(prompts)
    return {"text": text, "prediction": prediction, "decoded": decoded, "videos": videos, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="nano")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--diagnose", action="store_true", help="add rows that each change one thing (above)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import os

    from vidbooth.device import resolve_device
    from vidbooth.engine.backbone import quiet_libraries
    from vidbooth.errors import UserError

    try:
        resolve_device(args.device)  # before the CPU reference's minutes, not after
    except UserError as exc:
        parser.exit(2, f"error: {exc}\n")

    os.environ.setdefault("VIDBOOTH_QUIET", "1")
    quiet_libraries()
    reference = measure(args.base, "cpu", "fp32", args.steps, args.guidance)
    cuda = args.device.startswith("cuda")
    rows = [(precision, {"precision": precision}, contextlib.nullcontext)
            for precision in (["fp32", "fp16", "bf16"] if cuda else ["bf16"])]
    if args.diagnose and cuda:
        rows += [
            ("fp16, no reduced-precision reductions", {"precision": "fp16"}, _full_precision_reductions),
            ("fp16, cuDNN off", {"precision": "fp16"}, lambda: torch.backends.cudnn.flags(enabled=False)),
            ("fp16, math attention", {"precision": "fp16", "attention": "math"}, contextlib.nullcontext),
        ]
    elif args.diagnose:
        rows.append(("fp16 (cast)", {"precision": "fp32", "cast": torch.float16}, contextlib.nullcontext))
    print(f"{args.base}, {args.steps} steps, guidance {args.guidance}, {args.threads} CPU threads; against fp32 on "
          f"the CPU ({reference['seconds']:.3f} s/video)")
    print("device precision | text enc. | UNet pred. | VAE decode | videos /255 | s/video | time / CPU fp32 | "
          "probe agrees")
    runs = [("cpu", "fp32", reference)]
    for label, settings, context in rows:
        with context():
            runs.append((args.device, label, measure(args.base, args.device, steps=args.steps,
                                                     guidance=args.guidance, **settings)))
    for device, precision, run in runs:
        pixels = np.abs(run["videos"].astype(np.float32) - reference["videos"]).mean()
        agrees = ""
        if args.base == "nano":
            from vidbooth.nano.probe import probe_accuracy

            scores = probe_accuracy(list(run["videos"]), NANO_PROMPTS)
            agrees = f"colour {scores['colour']:.0%}, motion {scores['motion']:.0%}"
        print(f"{device} {precision} | {relative(run['text'], reference['text']):.4f} | "
              f"{relative(run['prediction'], reference['prediction']):.4f} | "
              f"{relative(run['decoded'], reference['decoded']):.4f} | {pixels:.2f} | {run['seconds']:.3f} | "
              f"{run['seconds'] / reference['seconds']:.2f} | {agrees}")


@contextlib.contextmanager
def _full_precision_reductions():
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_fp16_reduced_precision_reduction = matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction = saved


if __name__ == "__main__":
    main()
