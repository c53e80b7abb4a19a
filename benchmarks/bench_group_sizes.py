"""Held-out accuracy and mIoU of a GRSer model by group size (2, 4, K, 2K, 4K) on synthetic
groups: does a group smaller or larger than the K expert channels cost accuracy?

    python benchmarks/bench_group_sizes.py MODEL [MODEL ...] [--groups 40]

Each expression of a held-out synthetic set (groups of 4K images, seed 1) is run on a random
subset of its group of each size (the same subsets for every model), through `GRSer.predict`
at the model's saved margin; pairs are scored with `gres eval`'s meter (protocol gres).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from grd_tools.format import load
from grd_tools.imageio import open_image, read_mask
from grd_tools.synth import generate
from gres_cli.metrics.masks import GRESMeter
from gres_cli.model.grser import GRSer


def by_size(model: GRSer, data: Path, sizes: list[int]) -> dict[int, dict[str, float]]:
    ds = load(data)
    meters = {n: GRESMeter() for n in sizes}
    for gi, group in enumerate(ds.groups):
        images = [open_image(data / img.file) for img in group.images]
        for ei, expr in enumerate(group.expressions):
            for n in sizes:
                rng = np.random.default_rng([gi, ei, n])
                chosen = rng.permutation(len(images))[:n]
                preds = model.predict([images[k] for k in chosen], expr.text)
                for k, pred in zip(chosen, preds, strict=True):
                    target = expr.targets.get(group.images[k].id)
                    gt = None if target is None else read_mask(data / target) > 0
                    meters[n].update(pred.mask, gt, pred.present)
    return {n: {**m.compute(), "pairs": m.pairs} for n, m in meters.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--groups", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = GRSer.from_pretrained(name).eval()
            k = model.config.experts
            sizes = sorted({2, 4, k, 2 * k, 4 * k})
            data = generate(
                Path(tmp) / f"held-out-{4 * k}", groups=args.groups, images_per_group=4 * k,
                size=model.config.image_size, seed=1, ratios=(0, 0, 1), overwrite=True,
            )  # fmt: skip
            table = by_size(model, data, sizes)
            ref = table[k]
            print(f"\n{name} (K = {k}, margin {model.config.margin}), {args.groups} groups")
            print(f"{'N':>4} {'pairs':>6} {'acc':>6} {'mIoU':>6} {'acc - acc(K)':>13}")
            for n in sizes:
                r = table[n]
                print(f"{n:>4} {r['pairs']:>6} {r['acc']:>6.3f} {r['mIoU']:>6.3f} "
                      f"{r['acc'] - ref['acc']:>+13.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
