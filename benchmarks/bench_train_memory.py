"""Memory and speed of `gres train` against the dataset's size: the streaming loader on
synthetic sets of 2,000 and 20,000 images, and the preloaded (in-memory) loader on the small
one, side by side in one run.

    python benchmarks/bench_train_memory.py [--steps 200] [--small 2000] [--large 20000]
        [--repeats 2] [--before OTHER_CHECKOUT] [--sets DIR] [--speed-only] [--workers 2]

Speed: the streaming and the preloaded loader on the small set alternate `--repeats` times;
those runs are timed without the memory polling (reading /proc/PID/smaps_rollup of every
process of the tree ten times a second costs CPU, and more for the streaming loader's three
processes than for the preloaded one's one). `--speed-only` runs only those pairs.
`--before` runs the streaming rows with another source tree too (PYTHONPATH), interleaved with
this one's: `git archive COMMIT | tar -x -C /tmp/before` gives one.

Each run is `gres train` (tiny-synth: grser-tiny at 64 px, 4 groups x 6 images a step, no
validation) in its own process. Memory: the peak of the process tree's PSS (workers share the
parent's pages; PSS counts each page once) and the peak RSS of the main process, polled from
/proc every 0.1 s. Speed: steps/s over the steps after the first 20 (log.jsonl's seconds per
step, data waits included); start-up: seconds from launch to the first step's log line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grd_tools.synth import generate


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _kib(pid: int, path: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kib(root: int) -> int:
    """Proportional set size of process `root` and all its descendants, in KiB."""
    return sum(_kib(pid, "smaps_rollup", "Pss:") for pid in _tree(root))


def run(
    data: Path,
    out: Path,
    steps: int,
    preload: bool,
    code: Path,
    memory: bool = True,
    workers: int = 2,
) -> dict[str, float]:
    """One `gres train`; `memory`: poll its tree's PSS and RSS (NaN otherwise); `workers`:
    the streaming loader's processes (preloading reads in the main process)."""
    config = out.with_suffix(".yaml")
    config.write_text(
        "preset: tiny-synth\nimages_per_group: 6\ngroups_per_step: 4\nval_split: null\n"
        f"steps: {steps}\ncheckpoint_every: {steps}\nlog_every: 1\nwarmup_steps: 10\n"
        f"preload: {str(preload).lower()}\nworkers: {0 if preload else workers}\n"
    )
    cmd = [sys.executable, "-m", "gres_cli", "train", str(data), "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "--config", str(config), "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=code,
    )
    peak_pss = peak_rss = 0 if memory else float("nan")
    first_step = None
    log = out / "log.jsonl"
    while proc.poll() is None:
        if memory:
            peak_pss = max(peak_pss, tree_pss_kib(proc.pid))
            peak_rss = max(peak_rss, _kib(proc.pid, "status", "VmRSS:"))
        if first_step is None and log.is_file() and log.stat().st_size:
            first_step = time.perf_counter() - start
        time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-2000:]}")
    secs = [json.loads(x)["sec"] for x in log.read_text().splitlines()][20:]
    return {
        "pss_mb": peak_pss / 1024,
        "rss_mb": peak_rss / 1024,
        "steps_per_s": len(secs) / sum(secs),
        "startup_s": first_step or float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--small", type=int, default=2000, help="images in the small set")
    parser.add_argument("--large", type=int, default=20000, help="images in the large set")
    parser.add_argument("--repeats", type=int, default=2, help="stream/preload speed pairs")
    parser.add_argument("--before", type=Path, help="another source tree to compare with")
    parser.add_argument("--sets", type=Path, help="keep the synthetic sets here (reused)")
    parser.add_argument("--speed-only", action="store_true", help="only the speed pairs")
    parser.add_argument("--workers", type=int, default=2, help="the streaming loader's workers")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees = [("this", here)] + ([("before", args.before.resolve())] if args.before else [])
    sizes = (args.small,) if args.speed_only else (args.small, args.large)
    plan = [] if args.speed_only else [
        (f"{t}: stream", code, images, False, True) for images in sizes for t, code in trees
    ]  # fmt: skip
    for _ in range(args.repeats):
        for name in ("preload", "stream"):
            plan.append((f"this: {name}", here, args.small, name == "preload", False))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for images in sizes:
            sets[images] = (args.sets or Path(tmp)) / f"s{images}"
            if not (sets[images] / "grd.json").is_file():
                t = time.perf_counter()
                generate(sets[images], groups=images // 8, size=64)
                print(f"generated {images} images in {time.perf_counter() - t:.0f} s", flush=True)
        for i, (name, code, images, preload, memory) in enumerate(plan):
            r = run(sets[images], Path(tmp) / f"run{i}", args.steps, preload, code, memory,
                    args.workers)  # fmt: skip
            rows.append((name, images, r, memory))
            print(f"{name}, {images} images: {r}", flush=True)
    print(f"\ngres train, tiny-synth, {args.steps} steps of 4 groups x 6 images at 64 px; "
          f"load average {os.getloadavg()[0]:.2f} at the end")  # fmt: skip
    print(f"{'run':<16} {'images':>7} {'peak PSS MB':>11} {'main RSS MB':>11} {'steps/s':>8} "
          f"{'start s':>8}")  # fmt: skip
    for name, images, r, _ in rows:
        print(
            f"{name:<16} {images:>7} {r['pss_mb']:>11.0f} {r['rss_mb']:>11.0f} "
            f"{r['steps_per_s']:>8.2f} {r['startup_s']:>8.1f}"
        )
    for t, _ in trees:
        pss: dict[int, float] = {}  # the first streaming run at each size (the memory rows)
        for name, im, r, memory in rows:
            if name == f"{t}: stream" and memory:
                pss.setdefault(im, r["pss_mb"])
        if len(pss) == 2:
            print(f"{t}: peak PSS {args.large} / {args.small} images: "
                  f"{pss[args.large] / pss[args.small]:.2f}x")  # fmt: skip
    for name in ("this: stream", "this: preload"):  # the speed pairs, not polled
        speeds = [r["steps_per_s"] for n, im, r, memory in rows
                  if n == name and im == args.small and not memory]  # fmt: skip
        print(f"{name} on {args.small} images: steps/s " + ", ".join(f"{v:.2f}" for v in speeds)
              + f" (mean {sum(speeds) / len(speeds):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
