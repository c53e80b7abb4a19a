"""Which language gate trains better: the same short grser-tiny run with each `language_gate`
(random, lavt, lavt-open) on one synthetic set, validation figures side by side.

    python benchmarks/bench_language_gate.py [--steps 600] [--groups 200] [--gates random,lavt]

A from-scratch 64 px model, not a pretrained Swin-B: it shows whether the Swin stream needs
the language (a closed LAVT gate never lets it in), not what a pretrained encoder would do.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from grd_tools.synth import generate
from gres_cli.training.config import TrainConfig
from gres_cli.training.loop import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gates", default="random,lavt,lavt-open", help="comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "synth", groups=args.groups, images_per_group=8, size=64)
        rows = []
        for gate in args.gates.split(","):
            cfg = TrainConfig.preset("tiny-synth")
            cfg.model = {**cfg.model, "language_gate": gate}
            cfg.steps, cfg.val_every, cfg.checkpoint_every = args.steps, args.steps // 2, args.steps
            cfg.threads, cfg.log_every = args.threads, args.steps
            start = time.perf_counter()
            result = train(data, Path(tmp) / gate, cfg)
            best = result.best or {}
            rows.append((gate, best, time.perf_counter() - start))
            print(f"{gate}: {best.get('acc', float('nan')):.3f} acc", flush=True)
    print(f"\n{args.steps} steps, tiny-synth, {args.groups} synthetic groups of 8 (64 px)")
    print(f"{'gate':<10} {'val acc':>8} {'val mIoU(pos)':>14} {'best step':>10} {'minutes':>8}")
    for gate, best, sec in rows:
        print(
            f"{gate:<10} {best.get('acc', float('nan')):>8.3f} "
            f"{best.get('mIoU_pos', float('nan')):>14.3f} {best.get('step', 0):>10} "
            f"{sec / 60:>8.1f}"
        )


if __name__ == "__main__":
    main()
