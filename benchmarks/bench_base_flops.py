"""FLOPs of one grser-base training step per image (forward + backward, 480 px, random
weights: no download), and the time per epoch they imply at an assumed GPU throughput.

    python benchmarks/bench_base_flops.py [--images 2] [--tflops 300]

Counted with torch.utils.flop_counter (matrix multiplications and convolutions) on one group
of `--images` images; the cost is linear in the images (the N x K heatmaps are negligible).
The epoch estimate is FLOPs / throughput for RefCOCO's ~120k training expressions at the
preset's mean group size (9 images): an estimate, not a GPU measurement.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--tflops", type=float, default=300.0, help="sustained GPU TFLOP/s")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GRSerConfig.preset(
        "grser-base", swin_pretrained=None, text_model=None, text_config={"model_type": "bert"}
    )
    model = GRSer(config).train()
    pixels = torch.randn(1, args.images, 3, 480, 480)
    start = time.perf_counter()
    with FlopCounterMode(display=False) as counter:
        out = model(pixels, ["the man on the left in a red shirt"])
        (out.mask_logits.mean() + (out.d_pos - out.d_neg).mean()).backward()
    seconds = time.perf_counter() - start
    per_image = counter.get_total_flops() / args.images
    expressions, mean_group = 120_000, 9
    epoch_s = per_image * expressions * mean_group / (args.tflops * 1e12)
    print(f"grser-base training step: {per_image / 1e9:.0f} GFLOP per 480 px image")
    print(f"(CPU, {torch.get_num_threads()} threads: {seconds:.0f} s for {args.images} images)")
    print(
        f"one epoch of ~{expressions:,} expressions x {mean_group} images at "
        f"{args.tflops:.0f} TFLOP/s sustained: {epoch_s / 3600:.1f} h"
    )


if __name__ == "__main__":
    main()
