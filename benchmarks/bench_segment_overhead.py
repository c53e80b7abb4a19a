"""Pipeline overhead of `gres segment`'s engine: end-to-end time (decode JPEGs, two passes, masks
at original size) over pure model time (the same two passes on pre-decoded tensors), tiny model,
256 real-size JPEGs made from skimage photos.

    python benchmarks/bench_segment_overhead.py [--workers 0] [--size 96]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from gres_cli.inference.engine import Segmenter
from gres_cli.inference.inputs import ImageGroup
from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import ExpertScores, GRSer
from gres_cli.model.preprocess import preprocess


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GRSer(GRSerConfig.preset("grser-tiny")).eval()
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            img = Image.fromarray(photos[i % len(photos)]).resize((640, 480))
            img = img.rotate(float(rng.uniform(-10, 10)))
            p = Path(tmp) / f"{i:04d}.jpg"
            img.save(p, quality=90)
            paths.append(p)
        engine = Segmenter(model, "cpu", batch_size=args.batch_size, workers=args.workers)
        engine.run_group(ImageGroup("warm-up", paths[:8]), "the cat")
        t = time.perf_counter()
        engine.run_group(ImageGroup("g", paths), "the cat")
        end_to_end = time.perf_counter() - t

        pixels = preprocess([Image.open(p).convert("RGB") for p in paths], 96)
        text = model.encode_text(["the cat"])
        t = time.perf_counter()
        with torch.inference_mode():
            # the engine's algorithm on pre-decoded tensors: pass 1 keeps the encoder output,
            # pass 2 reuses it
            chunks = pixels.split(args.batch_size)
            encoded = [model.encode(c, text) for c in chunks]
            scores = ExpertScores.cat(
                [model.expert_scores(c, text, e) for c, e in zip(chunks, encoded, strict=True)]
            )
            experts = scores.prototypes[model.select_experts(scores)]
            for c, e in zip(chunks, encoded, strict=True):
                model.query(c, text, experts, e)
        pure = time.perf_counter() - t
    print(
        f"{args.images} JPEGs 640x480, workers={args.workers}: end-to-end {end_to_end:.2f} s, "
        f"pure model {pure:.2f} s, overhead ratio {end_to_end / pure:.2f} (target <= 1.2)"
    )


if __name__ == "__main__":
    main()
