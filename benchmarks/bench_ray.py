"""What `gres segment --ray` costs and what it wins, end to end (`gres` commands, wall time),
on a local Ray cluster this script starts (docs/cluster.md):

1. the cost of Ray itself: one actor (given every CPU) against the local engine on the same
   images (goal: at most 1.15x);
2. skewed groups (one group of 512 images and 32 groups of 16): `--ray` with 2 actors (1 CPU
   each) against two static `--shard i/2` processes in parallel (1 thread each) on the same
   cores (goal: Ray at least 1.3x faster: the big group's share holds the shards' run back,
   while Ray's free actor takes the small groups).

    python benchmarks/bench_ray.py [--images 256] [--big 512] [--small 32x16] [--cpus 2]
                                   [--repeat 3]

Each figure is the median of --repeat runs, the two sides alternating (a Ray run's start-up
varies by seconds from one run to the next on this machine); every run's time is printed too.

The model is a random grser-tiny at --image-size px (224: the cost per image of a small real
model, no download); images are random 160x120 PNGs. The cluster is started before the clock: each
figure includes the driver connecting and the actors loading the model, as a user sees it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def photos(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(
            folder / f"{i:04d}.png"
        )


def gres(*args: str, threads: int | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "gres_cli", "segment", *args, "--jsonl", os.devnull]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)


def wall(*procs: subprocess.Popen) -> float:
    """Seconds until every process of `procs` (started just now) has ended."""
    start = time.perf_counter()
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"gres failed: {err}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--big", type=int, default=512)
    parser.add_argument("--small", default="32x16", help="GROUPSxIMAGES")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224, help="the model's input side")
    parser.add_argument("--case", choices=("1", "2", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import ray
    import torch

    from gres_cli.model.config import GRSerConfig
    from gres_cli.model.grser import GRSer

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster, this machine only
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    groups, size = (int(x) for x in args.small.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        config = GRSerConfig.preset("grser-tiny", image_size=args.image_size)
        GRSer(config).save_pretrained(root / "model")
        model = ("--model", str(root / "model"), "--batch-size", "16")
        photos(root / "one", args.images, 0)
        photos(root / "skewed" / "big", args.big, 1)
        for g in range(groups):
            photos(root / "skewed" / f"small{g:02d}", size, 2 + g)
        on_ray = ("--ray", "--ray-address", address)
        # warm-up off the clock: the file cache holds torch, the model and the photos
        photos(root / "warm-in", 8, 99)
        warm = (str(root / "warm-in"), "the thing", *model, "--out")
        wall(gres(*warm, str(root / "warm")))
        wall(gres(*warm, str(root / "warm-ray"), *on_ray))

        def median(runs: list[float]) -> str:
            return f"{statistics.median(runs):.1f} s ({', '.join(f'{t:.1f}' for t in runs)})"

        def timed(*commands: tuple[str, ...], threads: int | None = None) -> float:
            """Wall time of the commands run side by side, each into a fresh OUT."""
            for command in commands:
                shutil.rmtree(command[command.index("--out") + 1], ignore_errors=True)
            return wall(*(gres(*command, threads=threads) for command in commands))

        # 1. one actor with every CPU against the local engine (torch's default threads)
        one = (str(root / "one"), "the thing", *model)
        if args.case in ("1", "both"):
            local, ray_one = [], []
            for _ in range(args.repeat):
                local.append(timed((*one, "--out", str(root / "o1"))))
                ray_one.append(timed((*one, "--out", str(root / "o2"), *on_ray, "--ray-actors",
                                      "1", "--ray-cpus-per-actor", str(args.cpus))))  # fmt: skip
            ratio = statistics.median(ray_one) / statistics.median(local)
            print(f"1. {args.images} images, one group: local {median(local)}, --ray 1 actor "
                  f"{median(ray_one)}, ratio {ratio:.2f}x (goal <= 1.15x)")  # fmt: skip

        # 2. skewed groups: two static shards against two Ray actors, 1 thread each
        skewed = (str(root / "skewed"), "the thing", "--recursive", *model)
        if args.case == "1":
            return
        shards, ray_two = [], []
        for _ in range(args.repeat):
            shards.append(timed(*((*skewed, "--out", str(root / "o3"), "--shard", f"{i}/2")
                                  for i in range(2)), threads=1))  # fmt: skip
            ray_two.append(timed((*skewed, "--out", str(root / "o4"), *on_ray, "--ray-actors",
                                  "2"), threads=1))  # fmt: skip
        total = args.big + groups * size
        gain = statistics.median(shards) / statistics.median(ray_two)
        print(f"2. {total} images (1x{args.big} + {groups}x{size}): 2 shards "
              f"{median(shards)}, --ray 2 actors {median(ray_two)}, Ray {gain:.2f}x faster "
              "(goal >= 1.3x)")  # fmt: skip
    ray.shutdown()
    print(f"load: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip


if __name__ == "__main__":
    main()
