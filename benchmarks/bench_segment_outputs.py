"""What `gres segment` does per image after the model, at phone-photo size (4000x3000): the mask's
area and box, its PNG, and the overlay, side by side with the straightforward numpy versions
they replaced (same outputs, checked here). Then the writer: 8 such images (mask PNG + overlay
JPEG) written by one thread against the default pool of writer threads.

    python benchmarks/bench_segment_outputs.py [--width 4000 --height 3000]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from grd_tools.imageio import mask_png
from gres_cli.inference.writers import OutputWriter, draw_overlay, mask_stats


def naive_stats(mask: np.ndarray) -> tuple[int, list[int] | None]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0, None
    x0, y0 = int(xs.min()), int(ys.min())
    return int(mask.sum()), [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def naive_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def naive_overlay(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    base = np.asarray(photo, dtype=np.float32).copy()
    base[mask] = 0.5 * base[mask] + 0.5 * np.array([255, 40, 40], np.float32)
    return Image.fromarray(base.astype(np.uint8))


def best(work: Callable[[], object], repeats: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = work()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    w, h = args.width, args.height
    y, x = np.mgrid[0:h, 0:w]
    mask = (x - 0.6 * w) ** 2 / (0.2 * w) ** 2 + (y - 0.5 * h) ** 2 / (0.3 * h) ** 2 < 1
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    record = {"expression": "the red umbrella", "present": True, "score": 0.31}
    print(f"one {w}x{h} image, mask area {int(mask.sum())}:")
    rows = [
        ("area and box", lambda: mask_stats(mask), lambda: naive_stats(mask)),
        ("mask PNG", lambda: mask_png(mask), lambda: naive_png(mask)),
        ("overlay", lambda: draw_overlay(photo, mask, record), lambda: naive_overlay(photo, mask)),
    ]
    for name, ours, naive in rows:
        t_ours, a = best(ours)
        t_naive, b = best(naive)
        if name == "overlay":  # ours also writes the verdict on a band at the top
            a, b = np.asarray(a)[20:].astype(int), np.asarray(b)[20:].astype(int)
            same = f"max pixel difference {np.abs(a - b).max()}"
        else:
            same = f"same output: {a == b}"
        print(
            f"  {name:13s} ours {1000 * t_ours:7.1f} ms, naive {1000 * t_naive:7.1f} ms: "
            f"{t_naive / t_ours:5.1f}x ({same})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        probe = OutputWriter(Path(tmp) / "probe", "png", overlay=False)
        probe.close()
        one = write_all(1, photo, mask, Path(tmp) / "one")
        many = write_all(None, photo, mask, Path(tmp) / "many")
    print(
        f"  writer, 8 images: 1 thread {1000 * one / 8:.0f} ms/image, {probe.threads} threads "
        f"{1000 * many / 8:.0f} ms/image: {one / many:.2f}x"
    )


def write_all(threads: int | None, photo: Image.Image, mask: np.ndarray, out: Path) -> float:
    writer = OutputWriter(out, "png", overlay=True, threads=threads)
    t = time.perf_counter()
    for i in range(8):
        record = {"group": "g", "expression": "the red umbrella", "present": True, "score": 0.3}
        writer.submit(record, f"{i}", mask, photo)
    writer.drain()
    seconds = time.perf_counter() - t
    writer.close()
    return seconds


if __name__ == "__main__":
    main()
