"""The real-scale dry run of `gres train --preset grser-base` on this machine: a RefCOCO-shaped
fixture in the REFER layout, `gres grd convert --from refcoco --group-by category`, then a
few steps of grser-base with random weights (nothing is downloaded).

    python benchmarks/bench_refcoco_dry_run.py [--images 5000] [--max-steps 2] [--keep DIR]
        (a DIR that already holds the converted set is reused: the training run alone)
    python benchmarks/bench_refcoco_dry_run.py --phases --keep DIR   # start-up, phase by phase

The fixture: `--images` photos of 640 x 480 (smooth colour fields with rectangles, JPEG, as
COCO's), 80 categories, two refs per image (one object each, a polygon) with 1-3 sentences,
RefCOCO's splits (train 85%, val 5%, testA 5%, testB 5%) by image: about 2.8 sentences per
ref as in RefCOCO. `gres train` runs with the `grser-base` preset and its model with
`swin_pretrained: null, text_model: null, text_config: {model_type: bert}` (Swin-B and
BERT-base shapes, random weights, the in-code tokenizer) and HF_HUB_OFFLINE=1; on a CPU one
group of 2 images a step (`--images-per-step`) instead of the preset's 2 groups of 2-16, and no
validation (a grser-base pass over the val split takes hours on a CPU).

Reported: seconds for each command, seconds from `gres train`'s launch until its first
training step starts (the first log line's time minus that step's own seconds), seconds per
step, and the peak PSS of its process tree (polled every 0.2 s). `--phases` (on the converted
set a `--keep` run left) times what `gres train` does before its first step, one phase at a
time in this process, in wall and CPU seconds (CPU: this process and its finished children,
so a loaded machine's wait is visible as the difference), then the CPU seconds of the schema
check of grd.json alone, `fits_schema` and jsonschema side by side. To compare two checkouts,
run the same file with PYTHONPATH set to each, alternating (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_train_memory import tree_pss_kib  # this folder: run as a script
from PIL import Image, ImageDraw

W, H = 640, 480
SPLITS = (("train", 0.85), ("val", 0.05), ("testA", 0.05), ("testB", 0.05))


def write_fixture(src: Path, images: int, seed: int = 0) -> int:
    """A REFER-layout folder: images/, instances.json, refs(unc).p. Returns the sentences."""
    rng = np.random.default_rng(seed)
    (src / "images").mkdir(parents=True)
    coco_images, annotations, refs = [], [], []
    sentences = 0
    bounds = np.cumsum([share for _, share in SPLITS]) * images
    for i in range(images):
        iid = 100_000 + i
        name = f"COCO_train2014_{iid:012d}.jpg"
        photo = Image.new("RGB", (W, H), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(photo)
        split = SPLITS[int(np.searchsorted(bounds, i, side="right"))][0]
        for r in range(2):
            x0, y0 = int(rng.integers(0, W - 120)), int(rng.integers(0, H - 120))
            x1, y1 = x0 + int(rng.integers(40, 120)), y0 + int(rng.integers(40, 120))
            draw.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            ann_id, cat = iid * 10 + r, int(rng.integers(1, 81))
            annotations.append(
                {"id": ann_id, "image_id": iid, "category_id": cat, "iscrowd": 0,
                 "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                 "area": float((x1 - x0) * (y1 - y0)), "bbox": [x0, y0, x1 - x0, y1 - y0]}
            )  # fmt: skip
            sents = [
                {"sent_id": sentences + s, "sent": f"the {'left' if s else 'big'} thing {cat}",
                 "raw": f"The thing {cat}.", "tokens": []}
                for s in range(int(rng.integers(1, 4)))
            ]  # fmt: skip
            sentences += len(sents)
            refs.append(
                {"ref_id": len(refs), "image_id": iid, "ann_id": ann_id, "category_id": cat,
                 "split": split, "file_name": f"COCO_train2014_{iid:012d}_{ann_id}.jpg",
                 "sent_ids": [s["sent_id"] for s in sents], "sentences": sents}
            )  # fmt: skip
        photo.save(src / "images" / name, quality=90)
        coco_images.append({"id": iid, "file_name": name, "height": H, "width": W})
    categories = [{"id": c, "name": f"category{c}", "supercategory": "x"} for c in range(1, 81)]
    instances = {"images": coco_images, "annotations": annotations, "categories": categories}
    (src / "instances.json").write_text(json.dumps(instances))
    (src / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return sentences


def gres(*args: str, log: Path | None = None) -> dict[str, float]:
    """Run `gres ARGS`; seconds, peak tree PSS, and (with `log`) when the first step started."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gres_cli", *args], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    peak, first_log = 0, None
    while proc.poll() is None:
        peak = max(peak, tree_pss_kib(proc.pid))
        if first_log is None and log is not None and log.is_file() and log.stat().st_size:
            first_log = time.perf_counter() - start
        time.sleep(0.2)
    stderr = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"gres {' '.join(args)} failed:\n{stderr[-3000:]}")
    result = {"seconds": time.perf_counter() - start, "peak_pss_mb": peak / 1024}
    if log is not None:
        steps = [json.loads(x) for x in log.read_text().splitlines() if '"sec"' in x]
        result["first_step_starts_s"] = (first_log or float("nan")) - steps[0]["sec"]
        result["seconds_per_step"] = [round(s["sec"], 1) for s in steps]
    return result


def phases(grd: Path, config: Path) -> None:
    """Wall and CPU seconds of each thing `gres train` does before its first step."""

    def clock() -> tuple[float, float]:
        t = os.times()
        return time.perf_counter(), t.user + t.system + t.children_user + t.children_system

    def report(name: str, since: tuple[float, float]) -> tuple[float, float]:
        now = clock()
        print(f"{name:<44} {now[0] - since[0]:>7.1f} s wall {now[1] - since[1]:>7.1f} s CPU",
              flush=True)  # fmt: skip
        return now

    os.environ["HF_HUB_OFFLINE"] = "1"
    start = t = clock()
    from grd_tools.validate import validate

    t = report("import grd_tools.validate", t)
    validate(grd, check_pixels=False)
    t = report("gres grd validate (headers, as gres train)", t)
    import torch

    from grd_tools.format import load
    from gres_cli.training.config import TrainConfig
    from gres_cli.training.data import GroupSamples, SplitIndex, train_loader
    from gres_cli.training.loop import build_model

    t = report("import torch, gres_cli.training", t)
    cfg = TrainConfig.load(config)
    torch.manual_seed(0)
    model = build_model(cfg)
    t = report(f"build grser-base ({sum(p.numel() for p in model.parameters()):,} params)", t)
    dataset = load(grd)  # as _split_indexes does (the config has no val_split)
    t = report("load grd.json (parse, schema check)", t)
    train_index = SplitIndex(dataset, cfg.train_split)
    del dataset
    t = report(f"index the train split ({len(train_index)} expressions)", t)
    samples = GroupSamples(train_index, model.config.image_size, cfg.sampling(), cfg.seed)
    next(iter(train_loader(samples, cfg.groups_per_step, cfg.workers)))
    t = report("start the loader, first batch", t)
    report("total before the first step", start)
    schema_check_alone(grd)


def schema_check_alone(grd: Path) -> None:
    """CPU seconds of the two schema checks of grd.json, side by side (after the phases)."""
    import jsonschema

    from grd_tools import format as grd_format

    if not hasattr(grd_format, "fits_schema"):
        return  # a checkout from before the direct check
    data = grd_format.read_manifest(grd)
    full = jsonschema.Draft202012Validator(grd_format.schema())
    cpu = []
    for check in (grd_format.fits_schema, full.is_valid):
        t = time.process_time()
        assert check(data)
        cpu.append(time.process_time() - t)
    print(f"schema check alone: fits_schema {cpu[0]:.3f} CPU s, jsonschema {cpu[1]:.2f} CPU s "
          f"({cpu[1] / cpu[0]:.0f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--images-per-step", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    parser.add_argument("--phases", action="store_true", help="time the start-up's phases")
    args = parser.parse_args()
    if args.phases:
        phases(args.keep / "rc-grd", args.keep / "dry-run.yaml")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        src, grd = root / "refcoco", root / "rc-grd"
        run = root / time.strftime("run-%Y%m%d-%H%M%S")
        if (grd / "grd.json").is_file():  # a --keep folder of an earlier run: train only
            print(f"reusing the converted fixture at {grd}", flush=True)
        else:
            t = time.perf_counter()
            sentences = write_fixture(src, args.images)
            print(f"fixture: {args.images} images, {2 * args.images} refs, {sentences} "
                  f"sentences in {time.perf_counter() - t:.0f} s", flush=True)  # fmt: skip
            convert = gres("grd", "convert", str(src), str(grd), "--from", "refcoco",
                           "--group-by", "category", "--group-size", "16")  # fmt: skip
            print(f"gres grd convert: {convert}", flush=True)
        config = root / "dry-run.yaml"
        config.write_text(
            "preset: grser-base\n"
            "model: {preset: grser-base, swin_pretrained: null, text_model: null, "
            "text_config: {model_type: bert}}\n"
            f"groups_per_step: 1\nimages_per_group: {args.images_per_step}\n"
            "val_split: null\nlog_every: 1\nworkers: 2\n"
        )
        train = gres("train", str(grd), "--out", str(run), "--config", str(config),
                     "--max-steps", str(args.max_steps), log=run / "log.jsonl")  # fmt: skip
        print(f"gres train --preset grser-base (random weights): {train}", flush=True)
    print(f"\nload average at the end: {os.getloadavg()}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
