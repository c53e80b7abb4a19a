"""How fast `gres eval` scores masks, side by side with pysodmetrics and a naive loop.

    python benchmarks/bench_metrics.py [--pairs 400] [--size 480]

Builds N random (prediction, ground truth) pairs of size x size in memory (grey-level maps
around boxes, a third of them absent targets) and times, in one run:
- the GRES mask metrics (`GRESMeter`, protocol gres): IoU sums, histogram, decision counts;
- the co-SOD metrics (`CoSODMeter`): Sm, Em and Fm curves (256 thresholds), MAE;
- pysodmetrics' Smeasure + Emeasure + Fmeasure + MAE on the same pairs (the reference);
- a naive per-threshold loop: Fm and Em computed by binarising each map at every one of the
  256 thresholds (what a direct transcription of the formulas does).
It prints pairs/s for each, the time 10,000 pairs would take, and the ratios.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from gres_cli.metrics import CoSODMeter, GRESMeter


def make_pairs(n: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        gt = np.zeros((size, size), np.uint8)
        if i % 3:
            y, x = rng.integers(0, size // 2, 2)
            gt[y : y + size // 3, x : x + size // 4] = 255
        noise = rng.normal(0, 40, (size, size))
        pred = np.clip(gt * 0.7 + noise + 30, 0, 255).astype(np.uint8)
        pairs.append((pred, gt))
    return pairs


def naive_curves(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = pred / 255.0
    if p.max() != p.min():
        p = (p - p.min()) / (p.max() - p.min())
    g = gt > 128
    n, gt_fg = g.size, g.sum()
    fm, em = np.zeros(256), np.zeros(256)
    for t in range(256):
        b = p * 255 >= t
        tp = np.count_nonzero(b & g)
        prec = tp / max(b.sum(), 1)
        rec = tp / max(gt_fg, 1)
        fm[t] = 1.3 * prec * rec / (0.3 * prec + rec) if tp else 0.0
        bf, gf = b - b.mean(), g - g.mean()
        phi = 2 * gf * bf / (gf * gf + bf * bf + np.spacing(1))
        em[t] = ((phi + 1) ** 2 / 4).sum() / (n - 1 + np.spacing(1))
    return fm, em


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--naive-pairs", type=int, default=20, help="the naive loop is slow")
    args = parser.parse_args()
    pairs = make_pairs(args.pairs, args.size)

    def ours_masks() -> None:
        meter = GRESMeter()
        for pred, gt in pairs:
            meter.update(pred >= 128, gt > 0)
        meter.compute()

    def ours_cosod() -> None:
        meter = CoSODMeter()
        for pred, gt in pairs:
            meter.update(pred, gt)
        meter.compute()

    def reference() -> None:
        import py_sod_metrics as psm

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meters = (psm.Smeasure(), psm.Emeasure(), psm.Fmeasure(), psm.MAE())
            for pred, gt in pairs:
                for m in meters:
                    m.step(pred, gt)

    def naive() -> None:
        for pred, gt in pairs[: args.naive_pairs]:
            naive_curves(pred, gt)

    rows = {
        "GRES mask metrics (ours)": timed(ours_masks) / len(pairs),
        "co-SOD Sm/Em/Fm/MAE (ours)": timed(ours_cosod) / len(pairs),
        "pysodmetrics Sm/Em/Fm/MAE": timed(reference) / len(pairs),
        "naive per-threshold Em/Fm": timed(naive) / min(args.naive_pairs, len(pairs)),
    }
    print(f"{len(pairs)} pairs of {args.size}x{args.size} (naive loop: {args.naive_pairs})")
    for name, per in rows.items():
        print(f"  {name:30s} {1 / per:9.1f} pairs/s   10,000 pairs: {per * 1e4:7.1f} s")
    ours = rows["co-SOD Sm/Em/Fm/MAE (ours)"]
    print(f"co-SOD: ours vs pysodmetrics {rows['pysodmetrics Sm/Em/Fm/MAE'] / ours:.2f}x faster")
    print(f"co-SOD: ours vs naive loop   {rows['naive per-threshold Em/Fm'] / ours:.1f}x faster")


if __name__ == "__main__":
    main()
