"""Pipeline overhead of `gres segment`'s engine: end-to-end time (decode JPEGs, two passes, masks
at original size) over pure model time (the same two passes on pre-decoded tensors), tiny model,
256 real-size JPEGs made from skimage photos. Best of --repeats runs for each.

Also prints the decode time alone (the engine's own loader, no model) and the serial floor
(pure + decode) / pure: where the model and the decoder share the same CPU cores, the ratio
cannot go below it; on a GPU machine the decode runs beside the model instead.

    python benchmarks/bench_segment_overhead.py [--workers 0] [--repeats 3]
    python benchmarks/bench_segment_overhead.py --device cuda --workers 8 [--precision bf16]
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
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
        engine = Segmenter(
            model, args.device, args.precision, batch_size=args.batch_size, workers=args.workers
        )
        device = engine.device
        engine.run_group(ImageGroup("warm-up", paths[:8]), "the cat")
        end_to_end, decode, pure = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            results = engine.run_group(ImageGroup("g", paths), "the cat")
            sync(device)
            end_to_end.append(time.perf_counter() - t)

            t = time.perf_counter()
            for _ in engine._batches(paths):
                pass
            decode.append(time.perf_counter() - t)

            pixels = preprocess([Image.open(p).convert("RGB") for p in paths], 96).to(device)
            text = model.encode_text(["the cat"])
            sync(device)
            t = time.perf_counter()
            with torch.inference_mode(), engine.runtime.autocast():
                # the engine's algorithm on pre-decoded tensors: pass 1 keeps the encoder
                # output, pass 2 reuses it
                chunks = pixels.split(args.batch_size)
                encoded = [model.encode(c, text) for c in chunks]
                scores = ExpertScores.cat(
                    [model.expert_scores(c, text, e) for c, e in zip(chunks, encoded, strict=True)]
                )
                experts = scores.prototypes[model.select_experts(scores)]
                for c, e in zip(chunks, encoded, strict=True):
                    model.query(c, text, experts.to(c.dtype), e)
            sync(device)
            pure.append(time.perf_counter() - t)
    e2e, dec, mod = min(end_to_end), min(decode), min(pure)
    present = sum(r.present for r in results)
    print(
        f"{args.images} JPEGs 640x480 ({present} called present, masks upsampled for those), "
        f"{device} {args.precision}, workers={args.workers}, {torch.get_num_threads()} torch "
        f"threads, best of "
        f"{args.repeats}:\n"
        f"  end-to-end {e2e:.2f} s, pure model {mod:.2f} s, decode alone {dec:.2f} s\n"
        f"  overhead ratio {e2e / mod:.2f} (target <= 1.2); serial floor (pure + decode) / pure "
        f"{(mod + dec) / mod:.2f}"
    )


if __name__ == "__main__":
    main()
