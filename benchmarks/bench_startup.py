"""How long the command line takes to answer when it needs no model: help, a mistyped flag, a path that is not
there. Each case runs as its own `python -m vidbooth` process (median wall time of --repeats runs), beside two
references measured in the same run: a bare Python start and `import torch` (what a command pays before its
engine can run). A case near a ratio of 1 or above imports torch, which it does not need.

Usage: python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {  # name: (arguments, the exit code it must end with)
    "vidbooth --help": (["--help"], 0),
    "generate --help": (["generate", "--help"], 0),
    "list": (["list"], 0),
    "generate --num-frames 0": (["generate", "--prompt", "x", "--num-frames", "0"], 2),
    "generate --scheduler euler": (["generate", "--prompt", "x", "--scheduler", "euler"], 2),
    "generate --subject unknown": (["generate", "--prompt", "x", "--subject", "nosuch"], 2),
    "generate --image-prompt missing": (["generate", "--prompt", "a sprite", "--image-prompt", "no-such.png"], 2),
    "train-subject missing photos": (["train-subject", "no-such-photos", "--name", "S*", "--class-noun", "dog"], 2),
    "train-motion missing clip": (["train-motion", "no-such-clip.mp4", "--name", "M"], 2),
    "evaluate --set typo": (["evaluate", "out.mp4", "--set", "bogus=1"], 2),
    "pretrain --set typo": (["pretrain", "--set", "bogus=1"], 2),
}


def median_seconds(argv: list[str], repeats: int, env: dict[str, str], code: int = 0) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if run.returncode != code:  # timing another path than the one named
            raise SystemExit(f"{' '.join(argv)} ended with {run.returncode}, not {code}: {run.stderr.strip()}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, VIDBOOTH_HOME=os.path.join(home, "library"), VIDBOOTH_CACHE=os.path.join(home, "cache"))
        bare = median_seconds([sys.executable, "-c", "pass"], args.repeats, env)
        torch_import = median_seconds([sys.executable, "-c", "import torch"], args.repeats, env)
        print(f"python start: {bare:.2f} s; import torch: {torch_import:.2f} s (median of {args.repeats})")
        print(f"{'case':32} {'seconds':>8} {'/ import torch':>15}")
        for name, (argv, code) in CASES.items():
            seconds = median_seconds([sys.executable, "-m", "vidbooth", *argv], args.repeats, env, code)
            print(f"{name:32} {seconds:8.2f} {seconds / torch_import:15.2f}")


if __name__ == "__main__":
    main()
