"""`vidbooth demo`'s wall time per stage and its scores, for one or more seeds.

Usage: python benchmarks/bench_demo.py [--seeds 0 1 2] [--fast] [--num-videos 8] [--threads N]
                                    [--out /tmp/vidbooth-bench-demo]
Each seed runs the whole demo (held-out subject and motion, train-subject, train-motion, seven generated
variants, eight with nano's image-prompt model, scored with the world probe) on the shipped nano model, as
`vidbooth demo --seed N` does.
The "each step better" columns compare class noun -> pseudo-word -> + identity (image similarity) and
base -> + motion adapter (motion fidelity); below each seed, each step video by video (mean difference, its
standard error, and in how many of the paired videos the step scored higher). Each stage's time is also given as
a share of the seed's total, and the total as a share of the 10 minutes the demo may take on 2 cores. The demo's
own progress and info lines are quiet; its table still shows for each seed, and this summary comes at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


BUDGET_SECONDS = 600  # issue #7: the demo finishes in at most 10 minutes on 2 CPU cores
STAGES = ("train-subject", "train-motion", "generate+evaluate")


def main() -> None:
    from vidbooth.config.demo import DemoConfig
    from vidbooth.engine.demo import run_demo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--num-videos", type=int, default=8,
                        help="videos per variant (--fast halves them, to at least 2)")
    parser.add_argument("--out", help="folder for the demo runs (default: a new temporary folder)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's; 1 is faster beside other jobs on 2 cores)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="vidbooth-bench-demo-"))
    os.environ.setdefault("VIDBOOTH_QUIET", "1")

    lines = [f"{'seed':>4} {'total s':>12} {'inputs':>7} {'subject':>10} {'motion':>10} {'gen+eval':>10}   "
             f"image sim. noun -> S* -> +id (photos through the autoencoder)    motion fid. base -> +adapter"]
    for seed in args.seeds:
        started = time.perf_counter()
        config = DemoConfig(out=str(out / f"seed{seed}"), seed=seed, fast=args.fast, num_videos=args.num_videos)
        report = run_demo(config)
        total = time.perf_counter() - started
        s = report.seconds
        v = {variant.key: variant.scores for variant in report.variants}
        sims = [v[k]["image_similarity"] for k in ("class_noun", "textual_inversion", "identity")]
        fids = [v[k]["motion_fidelity"] for k in ("base_motion", "motion_adapter")]
        subject_ok = sims[0] < sims[1] < sims[2]
        motion_ok = fids[0] < fids[1]
        stages = " ".join(f"{s[key]:>4.0f} ({s[key] / total:3.0%})" for key in STAGES)
        lines.append(f"{seed:>4} {total:>5.0f} ({total / BUDGET_SECONDS:4.0%}) {s['inputs']:>7.1f} {stages}   "
                     f"{sims[0]:.3f} -> {sims[1]:.3f} -> "
                     f"{sims[2]:.3f} ({report.photos_through_autoencoder:.3f}) "
                     f"({'better each step' if subject_ok else 'NOT better each step'})    "
                     f"{fids[0]:.3f} -> {fids[1]:.3f} ({'better' if motion_ok else 'NOT better'})")
        for step in report.steps:  # video by video: the variants share their noise
            error = "-" if step.standard_error is None else f"{step.standard_error:.3f}"
            lines.append(f"{'':>4}   {step.label}: {step.difference:+.3f} ± {error} (s.e.), better in "
                         f"{step.better_in} of {step.videos} videos")
    print("\n".join(lines))
    print(f"demo folders (videos, contact sheets, metrics.json): {out}/seed<N>")


if __name__ == "__main__":
    main()
