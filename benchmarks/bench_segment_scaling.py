"""Seconds per image of the two-pass engine as the folder grows, side by side with the naive
all-pairs forward (every image's heatmaps against every other image: O(N^2)). The engine's
figure includes reading the PNG files; the all-pairs one is the model alone on tensors.

    python benchmarks/bench_segment_scaling.py [--sizes 16,64,256,1024] [--repeats 3]

Each figure is the best of --repeats runs (this box's timings move by 10-20% run to run).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gres_cli.inference.engine import Segmenter
from gres_cli.inference.inputs import ImageGroup
from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer
from gres_cli.model.preprocess import preprocess


def best_of(repeats: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        work()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="16,64,256,1024")
    parser.add_argument("--naive-max", type=int, default=256, help="largest N for all-pairs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    model = GRSer(GRSerConfig.preset("grser-tiny")).eval()
    engine = Segmenter(model, device="cpu", batch_size=32)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(max(sizes)):
            p = Path(tmp) / f"{i:05d}.png"
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(p)
            paths.append(p)
        engine.run_group(ImageGroup("warm-up", paths[:8]), "the small red circle")
        with torch.inference_mode():
            model(preprocess([Image.open(p).convert("RGB") for p in paths[:8]], 96), "warm-up")
        print(f"{'N':>6} {'two-pass s/img':>15} {'all-pairs s/img':>16} {'ratio':>7}")
        base = None
        text = "the small red circle"
        for n in sizes:
            ours = best_of(
                args.repeats, partial(engine.run_group, ImageGroup("g", paths[:n]), text)
            )
            ours /= n
            base = base or ours
            naive = float("nan")
            if n <= args.naive_max:
                pixels = preprocess([Image.open(p).convert("RGB") for p in paths[:n]], 96)
                with torch.inference_mode():
                    naive = best_of(args.repeats, partial(model, pixels, text)) / n
            print(
                f"{n:>6} {ours:>15.4f} {naive:>16.4f} {naive / ours:>7.2f}"
                f"   (two-pass vs N={sizes[0]}: {ours / base:.2f}x)"
            )


if __name__ == "__main__":
    main()
