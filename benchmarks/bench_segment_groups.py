"""Many small groups (a `--recursive` folder set, a co-SOD benchmark, `gres eval` over a
dataset): one engine run streaming every group through one loader, side by side with one run
per group (a loader, and its worker processes, per group). Same results; time per group.

Then several expressions per group, as `gres eval` asks them: each group's jobs in a row (the
group is decoded once and replayed) against the same jobs interleaved across groups (each job
decodes its group again).

    python benchmarks/bench_segment_groups.py [--groups 40] [--images 6] [--workers 0,2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from skimage import data

from gres_cli.inference.engine import Job, Segmenter
from gres_cli.inference.inputs import ImageGroup
from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=40)
    parser.add_argument("--images", type=int, default=6, help="images per group")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GRSer(GRSerConfig.preset("grser-tiny")).eval()
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for g in range(args.groups):
            paths = []
            for i in range(args.images):
                paths.append(Path(tmp) / f"{g:03d}-{i}.jpg")
                photo = Image.fromarray(photos[(g + i) % len(photos)]).resize((640, 480))
                photo.save(paths[-1], quality=90)
            jobs.append(Job(ImageGroup(f"g{g}", paths), "the cat"))
        print(f"{args.groups} groups of {args.images} JPEGs 640x480, grser-tiny, {args.device}")
        for workers in (int(w) for w in args.workers.split(",")):
            engine = Segmenter(model, args.device, batch_size=32, workers=workers)
            engine.run_group(jobs[0].group, "warm-up")
            t = time.perf_counter()
            one = list(engine.run(jobs))
            streamed = time.perf_counter() - t
            t = time.perf_counter()
            per = [r for job in jobs for r in engine.run_group(job.group, job.expression)]
            per_group = time.perf_counter() - t
            # batches differ (a run's batches span groups), so floats may differ in the last bits
            same = [r.present for r in one] == [r.present for r in per]
            gap = max(abs(a.d_pos - b.d_pos) for a, b in zip(one, per, strict=True))
            print(
                f"  workers={workers}: one run {1000 * streamed / args.groups:.1f} ms/group, "
                f"one run per group {1000 * per_group / args.groups:.1f} ms/group: "
                f"{per_group / streamed:.2f}x (same decisions: {same}, max |d_pos gap| {gap:.1e})"
            )
        texts = ["the cat", "a rocket", "the astronaut", "a cup of coffee"]
        asked = [Job(job.group, t) for job in jobs for t in texts]
        interleaved = [Job(job.group, t) for t in texts for job in jobs]
        engine = Segmenter(model, args.device, batch_size=32)
        t = time.perf_counter()
        in_a_row = list(engine.run(asked))
        replayed = time.perf_counter() - t
        t = time.perf_counter()
        again = list(engine.run(interleaved))
        decoded = time.perf_counter() - t
        same = sorted((r.job % len(texts), str(r.path), r.present) for r in in_a_row) == sorted(
            (r.job // len(jobs), str(r.path), r.present) for r in again
        )
        print(
            f"  {len(texts)} expressions per group, workers=0: in a row (one decode) "
            f"{1000 * replayed / len(asked):.1f} ms/job, interleaved (a decode per job) "
            f"{1000 * decoded / len(asked):.1f} ms/job: {decoded / replayed:.2f}x "
            f"(same decisions: {same})"
        )


if __name__ == "__main__":
    main()
