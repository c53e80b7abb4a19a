"""CLIPSeg's ONNX export against the torch backend (issue 22), on a CLIPSeg of the default
model's architecture (CIDAS/clipseg-rd64-refined: ViT-B/16 at 352 px, CLIP's 12-layer text
model, rd64 decoder with the refined transposed convolution; about 150 M parameters) built
locally with random weights: the Hub is not needed (nor reachable from the machines this ran
on). The tokenizer is the tests' character-level CLIP tokenizer (BPE merges need a download);
the text model's ids all lie in its vocabulary.

1. export: `gres model export` of that checkpoint, wall time and the self-check's errors;
2. time to the first record: `gres segment PHOTO "..." --model M` of one JPEG (640x480, and a
   4032x3024 phone photo), a fresh interpreter each time, torch and onnx alternating: when the
   first record reached stdout, the whole call, and the call's peak memory (max RSS);
3. images/s: the engine over one group of 640x480 JPEGs, model loaded and warmed up first,
   each runtime in a process of its own (its peak RSS too), and whether the decisions agree;
   then the ONNX export with --no-group, which skips region.onnx.

    python benchmarks/bench_onnx_clipseg.py [--starts 3] [--images 32] [--threads N]

The goal of issue 22: the first record of one photo in under 1.0 s on the ONNX path.
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
EXPRESSION = "the red umbrella"
sys.path.insert(0, str(ROOT / "tests"))


def env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def rd64(folder: Path) -> Path:
    """A random CLIPSeg of CIDAS/clipseg-rd64-refined's architecture, with its processor."""
    import torch
    from conftest import tiny_clip_tokenizer
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    config = CLIPSegConfig(
        text_config={"vocab_size": 49408, "bos_token_id": 512, "eos_token_id": 513,
                     "pad_token_id": 513},
        vision_config={"patch_size": 16, "image_size": 224},
        projection_dim=512, extract_layers=[3, 6, 9], reduce_dim=64,
        decoder_num_attention_heads=4, decoder_intermediate_size=2048,
        use_complex_transposed_convolution=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPSegForImageSegmentation(config).eval()
    images = ViTImageProcessor(
        size={"height": 352, "width": 352},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    CLIPSegProcessor(image_processor=images, tokenizer=tiny_clip_tokenizer()).save_pretrained(
        folder
    )
    model.save_pretrained(folder)
    return folder


def jpeg(path: Path, size: tuple[int, int], seed: int) -> Path:
    """Smooth colour fields, so decoding costs what it costs on photos."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.BICUBIC).save(path, quality=90)
    return path


#: run in the measured process: its peak RSS (VmHWM of its own memory map; ru_maxrss would
#: carry over the RSS of this benchmark, which forked it after building a model) on stderr
PEAK = (
    "import atexit, sys\n"
    "def _peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM'):\n"
    "            print('PEAK_KIB', line.split()[1], file=sys.stderr)\n"
    "atexit.register(_peak)\n"
)


def first_record(model: Path, photo: Path, out: Path) -> tuple[float, float, float]:
    """(s to the first record on stdout, s of the whole call, peak RSS MiB) of gres segment."""
    argv = ["gres", "segment", str(photo), EXPRESSION, "--model", str(model), "--out", str(out),
            "--jsonl", "-", "--overwrite"]  # fmt: skip
    code = (
        PEAK
        + f"import runpy; sys.argv = {argv!r}\nrunpy.run_module('gres_cli', run_name='__main__')\n"
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    first = time.perf_counter() - started
    rest, err = proc.communicate()
    total = time.perf_counter() - started
    if proc.returncode != 0 or not line or json.loads(line)["error"] is not None:
        sys.exit(f"gres segment --model {model} failed: {line}{rest}{err[-2000:]}")
    return first, total, _peak_mib(err)


def _peak_mib(stderr: str) -> float:
    return next(int(x.split()[1]) for x in stderr.splitlines() if x.startswith("PEAK_KIB")) / 1024


def throughput(
    model: Path, paths: list[Path], batch_size: int, threads: int, group: bool = True
) -> dict:
    """Images/s of the engine over one group (the group step on, or off as --no-group), in a
    process of its own; its peak RSS."""
    code = (
        PEAK
        + f"""
import json, time
from pathlib import Path
from gres_cli.backends import load_model
from gres_cli.inference.engine import Segmenter
from gres_cli.inference.inputs import ImageGroup
paths = [Path(p) for p in {[str(p) for p in paths]!r}]
model = load_model({str(model)!r})
if {threads} and model.runtime == "numpy":
    from gres_cli.backends.clipseg_onnx import CLIPSegOnnxModel
    model = CLIPSegOnnxModel(Path({str(model)!r}), threads={threads})
elif {threads}:
    import torch
    torch.set_num_threads({threads})
model.group = {group}
engine = Segmenter(model, "cpu", batch_size={batch_size})
engine.run_group(ImageGroup("warm-up", paths[:2]), "warm up")
t = time.perf_counter()
results = sorted(engine.run_group(ImageGroup("g", paths), {EXPRESSION!r}), key=lambda r: r.index)
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "present": [r.present for r in results],
                  "d_pos": [r.d_pos for r in results], "d_neg": [r.d_neg for r in results]}}))
"""
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        sys.exit(f"throughput of {model} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1]) | {"rss_mib": _peak_mib(proc.stderr)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=3, help="gres segment calls per runtime")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="0: each runtime's default")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the models in this folder")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        src, onnx = tmp / "clipseg-rd64-random", tmp / "clipseg-rd64-random-onnx"
        if not (src / "config.json").is_file():
            rd64(src)
        if not (onnx / "config.json").is_file():
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "gres_cli", "model", "export", str(src), str(onnx)],
                capture_output=True, text=True, env=env(),
            )  # fmt: skip
            if proc.returncode != 0:
                sys.exit(f"export failed: {proc.stderr.strip()[-2000:]}")
            print(f"\n1. export: {time.perf_counter() - started:.0f} s")
            print("   " + proc.stderr.strip().splitlines()[-1])
        sizes = {
            name: sum(p.stat().st_size for p in folder.iterdir()) / 2**20
            for name, folder in (("torch", src), ("onnx", onnx))
        }
        print(f"   folder sizes: torch {sizes['torch']:.0f} MiB, onnx {sizes['onnx']:.0f} MiB")
        models = {"torch": src, "onnx": onnx}

        print(f"\n2. one photo, `gres segment` (median of {args.starts}, best in brackets)")
        print(f"{'photo':<10} {'runtime':<8} {'first record s':>16} {'whole call s':>14} "
              f"{'peak RSS MiB':>13}")  # fmt: skip
        for w, h in ((640, 480), (4032, 3024)):
            photo = jpeg(tmp / f"one-{w}x{h}.jpg", (w, h), 1)
            times: dict[str, list] = {"torch": [], "onnx": []}
            for _ in range(args.starts):  # alternating: the machine's load hits both alike
                for name, model in models.items():
                    times[name].append(first_record(model, photo, tmp / f"out-{name}"))
            for name, got in times.items():
                first, total, rss = zip(*got, strict=True)
                print(
                    f"{w}x{h:<5} {name:<8} {statistics.median(first):>9.2f} ({min(first):.2f})"
                    f" {statistics.median(total):>7.2f} ({min(total):.2f})"
                    f" {statistics.median(rss):>13.0f}"
                )

        folder = tmp / "photos"
        folder.mkdir(exist_ok=True)
        paths = [jpeg(folder / f"{i:04d}.jpg", (640, 480), i) for i in range(args.images)]
        threads = args.threads or "each runtime's default"
        print(f"\n3. images/s, {args.images} JPEGs 640x480, one group, batch {args.batch_size}, "
              f"threads: {threads}")  # fmt: skip
        runs = {
            name: throughput(m, paths, args.batch_size, args.threads) for name, m in models.items()
        }
        rate = {k: args.images / v["seconds"] for k, v in runs.items()}
        same = sum(
            a == b for a, b in zip(runs["torch"]["present"], runs["onnx"]["present"], strict=True)
        )
        diff = max(
            abs(a - b)
            for key in ("d_pos", "d_neg")
            for a, b in zip(runs["torch"][key], runs["onnx"][key], strict=True)
        )
        for name in models:
            print(f"{name:<6} {rate[name]:>7.2f} img/s, peak RSS {runs[name]['rss_mib']:.0f} MiB")
        print(
            f"onnx/torch {rate['onnx'] / rate['torch']:.2f}x; same decisions {same}/{args.images};"
            f" max |d_pos, d_neg| difference {diff:.2e}"
        )
        # each image alone: the ONNX export skips region.onnx (the vision transformer's last
        # layers), which only the group step reads
        alone = throughput(onnx, paths, args.batch_size, args.threads, group=False)
        alone_rate = args.images / alone["seconds"]
        print(
            f"onnx --no-group {alone_rate:.2f} img/s, {alone_rate / rate['onnx']:.2f}x the "
            f"grouped run (region.onnx skipped), peak RSS {alone['rss_mib']:.0f} MiB"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
