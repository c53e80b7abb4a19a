"""The ONNX runtime against the torch runtime, side by side in one run (issue 14):

1. time to the first record: one 640x480 JPEG, the demo model (examples/demo-model) and its ONNX
   export; the wall time of the whole `gres segment` call (a fresh interpreter each time, runs
   alternating torch / onnx), and when its first record reached stdout;
2. images/s on JPEGs of 640x480 for grser-tiny and grser-base (random weights, full size,
   exported by `gres model export --format onnx`): the engine over one group, onnxruntime vs
   torch, each in a process of its own, and whether they made the same decisions.

    python benchmarks/bench_onnx.py [--starts 5] [--images 256] [--base-images 16]
                                    [--presets grser-tiny,grser-base] [--threads N]
                                    [--skip-start]

--threads N pins both runtimes to N threads (torch.set_num_threads, onnxruntime's
intra_op_num_threads): on a loaded machine, each library's default thread count suffers from
the contention in its own way, and one thread each compares the work itself.

grser-base (Swin-B at 480 px, BERT-base) takes seconds per image on a small CPU: --base-images
sets how many of the JPEGs it runs on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo-model"
EXPRESSION = "the red circle"


def env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def gres(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gres_cli", *args], capture_output=True, text=True, env=env()
    )


def export(model: Path, out: Path) -> Path:
    proc = gres("model", "export", str(model), str(out), "--format", "onnx")
    if proc.returncode != 0:
        sys.exit(f"export of {model} failed: {proc.stderr.strip()}")
    return out


def jpegs(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        # smooth colour fields, so JPEG decoding costs what it costs on photos
        small = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)
        photo = Image.fromarray(small).resize((640, 480), Image.BICUBIC)
        paths.append(folder / f"{i:04d}.jpg")
        photo.save(paths[-1], quality=90)
    return paths


def first_record(model: Path, photo: Path, out: Path) -> tuple[float, float]:
    """(seconds to the first record on stdout, seconds of the whole call) of `gres segment`."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gres_cli", "segment", str(photo), EXPRESSION, "--model",
         str(model), "--out", str(out), "--jsonl", "-", "--overwrite"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env(),
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    first = time.perf_counter() - started
    proc.communicate()
    total = time.perf_counter() - started
    if proc.returncode != 0 or json.loads(line)["error"] is not None:
        sys.exit(f"gres segment --model {model} failed")
    return first, total


def throughput(model: Path, folder: Path, count: int, batch_size: int, threads: int) -> dict:
    """Images/s of the engine (model loaded and warmed up first), in a process of its own;
    `threads` > 0 pins torch's and onnxruntime's threads (0: each library's default)."""
    code = f"""
import json, time
from pathlib import Path
from gres_cli.backends import load_model
from gres_cli.inference.engine import Segmenter
from gres_cli.inference.inputs import ImageGroup
paths = sorted(Path({str(folder)!r}).glob("*.jpg"))[:{count}]
model = load_model({str(model)!r})
if {threads} and getattr(model, "runtime", "torch") == "numpy":
    from gres_cli.backends.grser_onnx import GRSerOnnxModel
    model = GRSerOnnxModel(Path({str(model)!r}), threads={threads})
elif {threads}:
    import torch
    torch.set_num_threads({threads})
engine = Segmenter(model, "cpu", batch_size={batch_size})
engine.run_group(ImageGroup("warm-up", paths[:2]), "warm up")
t = time.perf_counter()
results = sorted(engine.run_group(ImageGroup("g", paths), {EXPRESSION!r}), key=lambda r: r.index)
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "present": [r.present for r in results],
                  "d_pos": [r.d_pos for r in results], "d_neg": [r.d_neg for r in results]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        sys.exit(f"throughput of {model} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def random_model(preset: str, folder: Path) -> Path:
    """A GRSer of `preset` with random weights (no pretrained download), saved."""
    import torch

    from gres_cli.model.config import GRSerConfig
    from gres_cli.model.grser import GRSer

    overrides = {}
    if preset == "grser-base":  # BERT-base's shape, random; Swin-B random
        overrides = {
            "swin_pretrained": None,
            "text_model": None,
            "text_config": {
                "model_type": "bert",
                "hidden_size": 768,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "intermediate_size": 3072,
                "max_position_embeddings": 512,
            },
        }
    torch.manual_seed(0)
    GRSer(GRSerConfig.preset(preset, **overrides)).eval().save_pretrained(folder)
    return folder


def time_to_first_record(tmp: Path, starts: int) -> None:
    """Part 1: `gres segment` of one JPEG, torch and onnx alternating."""
    models = {"torch": DEMO, "onnx": export(DEMO, tmp / "demo-onnx")}
    (photo,) = jpegs(tmp / "one", 1)
    times: dict[str, list[tuple[float, float]]] = {"torch": [], "onnx": []}
    for _ in range(starts):  # alternating: the machine's load hits both alike
        for name, model in models.items():
            times[name].append(first_record(model, photo, tmp / f"out-{name}"))
    print("\n1. one 640x480 JPEG, demo model: `gres segment` wall time (median of "
          f"{starts}, best in brackets)")  # fmt: skip
    print(f"{'runtime':<8} {'first record s':>16} {'whole call s':>16}")
    median = {}
    for name, got in times.items():
        first, total = zip(*got, strict=True)
        median[name] = statistics.median(total)
        print(
            f"{name:<8} {statistics.median(first):>9.2f} ({min(first):.2f})"
            f" {median[name]:>9.2f} ({min(total):.2f})"
        )
    print(f"torch / onnx: {median['torch'] / median['onnx']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=5, help="gres segment calls per runtime")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--base-images", type=int, default=16)
    parser.add_argument("--presets", default="grser-tiny,grser-base", help='"": part 1 only')
    parser.add_argument("--skip-start", action="store_true", help="only the images/s part")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=0, help="pin both runtimes' threads (0: their defaults)"
    )
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_start:
            time_to_first_record(tmp, args.starts)

        presets = [p for p in args.presets.split(",") if p]  # --presets "": part 1 only
        if not presets:
            return
        threads = args.threads or "each runtime's default"
        print(
            f"\n2. images/s, 640x480 JPEGs, one group, batch {args.batch_size}, threads: {threads}"
        )
        print(f"{'preset':<11} {'images':>6} {'torch img/s':>12} {'onnx img/s':>11} "
              f"{'onnx/torch':>10} {'same decisions':>15} {'max |d| diff':>13}")  # fmt: skip
        for preset in presets:
            count = args.base_images if preset == "grser-base" else args.images
            folder = tmp / "photos"
            if not folder.exists():
                jpegs(folder, max(args.images, args.base_images))
            src = random_model(preset, tmp / preset)
            onnx = export(src, tmp / f"{preset}-onnx")
            runs = {
                "torch": throughput(src, folder, count, args.batch_size, args.threads),
                "onnx": throughput(onnx, folder, count, args.batch_size, args.threads),
            }
            rate = {k: count / v["seconds"] for k, v in runs.items()}
            same = sum(
                a == b
                for a, b in zip(runs["torch"]["present"], runs["onnx"]["present"], strict=True)
            )
            diff = max(
                abs(a - b)
                for key in ("d_pos", "d_neg")
                for a, b in zip(runs["torch"][key], runs["onnx"][key], strict=True)
            )
            print(
                f"{preset:<11} {count:>6} {rate['torch']:>12.2f} {rate['onnx']:>11.2f} "
                f"{rate['onnx'] / rate['torch']:>9.2f}x {same:>9}/{count:<5} {diff:>13.2e}"
            )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
