"""How fast `gres grd validate` checks a large dataset, side by side with a naive full decode.

    python benchmarks/bench_validate.py [--images 10000] [--group-size 10] [--workers N]

Writes a GRD dataset of N real-size JPEGs (640x480, a few photo templates from scikit-image,
copied byte for byte) with one expression per group and a 0/255 PNG mask in ~60% of the images,
into a temporary folder. Then it times, in one run:
- validate, headers only (`--no-pixels`): image and mask headers, every manifest check;
- validate, full (default): the same plus every mask decoded (0/255, empty masks);
- a naive loop that fully decodes every image with Pillow (what a checker without header reads
  costs), sequentially.
It prints images/s for each and the ratios against the naive loop.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from grd_tools import Expression, GRDDataset, Group, ImageRecord, save
from grd_tools.validate import validate

SIZE = (640, 480)


def _templates() -> list[bytes]:
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = []
    for arr in photos:
        buf = io.BytesIO()
        Image.fromarray(arr).convert("RGB").resize(SIZE).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _mask_templates() -> list[bytes]:
    out = []
    for k in range(4):
        mask = np.zeros(SIZE[::-1], dtype=np.uint8)
        mask[60 + 20 * k : 300 + 20 * k, 100 + 30 * k : 400 + 30 * k] = 255
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def build(root: Path, n_images: int, group_size: int) -> int:
    """Write the benchmark dataset; returns the number of masks."""
    images, masks = _templates(), _mask_templates()
    rng = np.random.default_rng(0)
    groups, n_masks = [], 0
    for gi in range(0, n_images, group_size):
        gid = f"g{gi // group_size:05d}"
        (root / "images" / gid).mkdir(parents=True)
        (root / "masks" / gid / "e1").mkdir(parents=True)
        records, targets = [], {}
        for ii in range(min(group_size, n_images - gi)):
            rel = f"images/{gid}/{ii:03d}.jpg"
            (root / rel).write_bytes(images[(gi + ii) % len(images)])
            records.append(ImageRecord(f"{ii:03d}", rel, *SIZE))
            if rng.random() < 0.6:
                mask_rel = f"masks/{gid}/e1/{ii:03d}.png"
                (root / mask_rel).write_bytes(masks[ii % len(masks)])
                targets[f"{ii:03d}"] = mask_rel
                n_masks += 1
            else:
                targets[f"{ii:03d}"] = None
        expr = Expression("e1", f"the object of {gid}", targets)
        groups.append(Group(gid, records, [expr], split="train"))
    save(GRDDataset(groups, name="bench"), root)
    return n_masks


def naive_decode(root: Path) -> None:
    for path in sorted((root / "images").rglob("*.jpg")):
        with Image.open(path) as img:
            img.convert("RGB").load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        root = Path(tmp) / "ds"
        t0 = time.perf_counter()
        n_masks = build(root, args.images, args.group_size)
        print(
            f"dataset: {args.images} images 640x480 JPEG, {n_masks} masks, "
            f"written in {time.perf_counter() - t0:.1f} s"
        )

        timings = {}
        for name, run in (
            (
                "validate --no-pixels",
                lambda: validate(root, check_pixels=False, workers=args.workers),
            ),
            ("validate (full)", lambda: validate(root, workers=args.workers)),
            ("naive full decode", lambda: naive_decode(root)),
        ):
            t0 = time.perf_counter()
            result = run()
            timings[name] = time.perf_counter() - t0
            if result is not None:
                assert not result.issues, result.issues[:3]

        naive = timings["naive full decode"]
        print(f"{'method':<24}{'seconds':>10}{'images/s':>12}{'x naive':>10}")
        for name, seconds in timings.items():
            print(
                f"{name:<24}{seconds:>10.2f}{args.images / seconds:>12,.0f}{naive / seconds:>10.1f}"
            )


if __name__ == "__main__":
    main()
