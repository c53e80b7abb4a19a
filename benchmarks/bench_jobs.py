"""Many expressions over one folder: one `gres segment` per expression against one `--jobs` run.

    python benchmarks/bench_jobs.py [--expressions 20] [--photos 32] [--model examples/demo-model]

Makes a folder of 640x480 JPEGs from skimage's photos, then times (wall clock, side by side in
one run) E separate `gres segment FOLDER EXPRESSION` commands, each paying Python's and torch's
start-up and the model's load, against one `gres segment --jobs FILE` holding the E lines (one
start-up; consecutive jobs on the same images share the decode). Checks that both give the same
decisions and distances, and prints the ratio. On a CPU that other jobs keep busy, torch's
worker threads wait on each other: `OMP_NUM_THREADS=1 python benchmarks/bench_jobs.py` shows
the same comparison on one thread per command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("square", "circle", "triangle", "cross")


def make_photos(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "camera")
    photos = [Image.fromarray(getattr(data, k)()).convert("RGB") for k in names]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = photos[i % len(photos)].resize((640, 480))
        if i >= len(photos):  # shift the pixels so no two files are the same photo
            img = Image.fromarray(np.roll(np.asarray(img), int(rng.integers(1, 600)), axis=1))
        img.save(folder / f"{i:03d}.jpg", quality=90)


def gres(args: list[str], stdin: str | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gres_cli", "segment", *args],
        capture_output=True,
        text=True,
        input=stdin,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"gres segment {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}")
    return seconds, proc.stdout


def answers(jsonl: str) -> dict[tuple[str, str], tuple]:
    recs = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    return {(r["image"], r["expression"]): (r["present"], r["d_pos"], r["d_neg"]) for r in recs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expressions", type=int, default=20)
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--model", default="examples/demo-model")
    args = parser.parse_args()
    expressions = [f"the {c} {s}" for s in SHAPES for c in COLOURS][: args.expressions]
    common = ["--model", args.model, "--device", "cpu"]
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        root = Path(tmp)
        photos = root / "photos"
        make_photos(photos, args.photos)
        separate_s, separate = 0.0, {}
        for k, expression in enumerate(expressions):
            s, out = gres([str(photos), expression, *common, "--out", str(root / f"one-{k}")])
            separate_s += s
            separate |= answers(out)
        jobs = "".join(
            json.dumps({"path": str(photos), "expression": e}) + "\n" for e in expressions
        )
        jobs_s, out = gres(["--jobs", "-", *common, "--out", str(root / "jobs")], stdin=jobs)
        joint = answers(out)
    same = joint.keys() == separate.keys()
    decisions = same and all(joint[k][0] == separate[k][0] for k in joint)
    worst = max((abs(joint[k][1] - separate[k][1]) for k in joint), default=0.0) if same else None
    print(f"{len(expressions)} expressions x {args.photos} JPEGs (640x480), {args.model}, CPU")
    print(f"  {len(expressions)} separate commands : {separate_s:7.1f} s")
    print(f"  one --jobs command     : {jobs_s:7.1f} s")
    print(f"  ratio                  : {separate_s / jobs_s:7.1f}x")
    print(f"  same records: {same}, same decisions: {decisions}, max |d_pos diff|: {worst}")


if __name__ == "__main__":
    main()
