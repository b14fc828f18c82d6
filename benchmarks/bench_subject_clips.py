"""How fast `train-image-prompt --data` reads a folder of clips: one thread against several, in one process.

Writes `--clips` mp4 clips of nano's world (64 px, 8 frames) with a caption and a mask each (the path that decodes
the most) into a temporary folder, then reads them all as training does (`folder_examples`), alternating one
thread and `--threads` threads; prints clips per second and the ratio.

    python benchmarks/bench_subject_clips.py [--clips 96] [--threads 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def write_clips(folder: Path, count: int) -> Path:
    """`count` mp4 clips of nano's world, each with its caption and the exact mask of its sprite in frame 0."""
    import numpy as np
    from PIL import Image

    from vidbooth.data.video import write_video
    from vidbooth.nano.world import all_motions, all_sprites, render_clip, shape_mask

    folder.mkdir(parents=True)
    sprites, motions = all_sprites(), all_motions()
    ys, xs = np.mgrid[:64, :64].astype(np.float32)
    for index in range(count):
        sprite, motion = sprites[index % len(sprites)], motions[index % len(motions)]
        frames, truth = render_clip(sprite, motion, 8, 64, seed=index)
        write_video(frames, folder / f"clip{index}.mp4")
        (folder / f"clip{index}.txt").write_text(f"a subject {motion.phrase}")
        (x, y), radius = truth.centres[0], truth.radii[0]
        mask = shape_mask(sprite.shape, (xs - x) / radius, (ys - y) / radius)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"clip{index}.mask.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from vidbooth.config.image_prompt import ImagePromptConfig
    from vidbooth.data.subject_clips import find_subject_clips
    from vidbooth.engine.image_prompt import folder_examples

    os.environ["VIDBOOTH_QUIET"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        examples = find_subject_clips(write_clips(Path(tmp) / "clips", args.clips), "subject")
        cfg = ImagePromptConfig()

        def run(threads: int) -> float:
            started = time.perf_counter()
            read = list(folder_examples(examples, cfg, 64, threads=threads))
            assert len(read) == args.clips
            return time.perf_counter() - started

        run(1)  # warm-up
        times: dict[int, list[float]] = {1: [], args.threads: []}
        for _ in range(args.runs):
            for threads in times:
                times[threads].append(run(threads))
    serial = statistics.median(times[1])
    print(f"{args.clips} masked mp4 clips, 8 frames at 64 px, {os.cpu_count()} cores, {args.runs} runs each")
    for threads, values in times.items():
        median = statistics.median(values)
        print(f"{threads:>2} thread(s): {args.clips / median:.1f} clips/s, {serial / median:.2f} x one thread")


if __name__ == "__main__":
    main()
