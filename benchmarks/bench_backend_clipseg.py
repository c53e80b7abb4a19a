"""The CLIPSeg backend of `gres segment` against the loop a user writes with transformers
(processor + model per image, the expression encoded each time, masks at original size), on a
folder of real-size JPEGs. The full-size CLIPSeg architecture (CIDAS/clipseg-rd64-refined's
config: ViT-B/16 at 352 px, reduce dim 64) with random weights: it times the same as the real
checkpoint, which cannot be downloaded here. Prints both images/s, their ratio, and how far
the masks agree (ours decodes JPEGs at a reduced scale, so pixels on mask edges can differ).

    python benchmarks/bench_backend_clipseg.py [--images 64] [--width 4032 --height 3024]
                                   [--device cpu|cuda] [--batch-size 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gres_cli.backends import load_model
from gres_cli.inference.engine import Segmenter
from gres_cli.inference.inputs import ImageGroup

EXPRESSION = "the cat on the left"


def full_size_clipseg(folder: Path) -> Path:
    """CLIPSegConfig's defaults are the rd64 architecture; a character-level CLIP tokenizer
    (no download) and the checkpoint's 352 px image processor."""
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars])}
    vocab |= {"<|startoftext|>": 49406, "<|endoftext|>": 49407}
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(CLIPSegConfig()).save_pretrained(folder)
    images = ViTImageProcessor(size={"height": 352, "width": 352})
    CLIPSegProcessor(images, CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(folder)
    return folder


def photos(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """n JPEGs at phone size: scikit-image's photos, upscaled, with noise."""
    from skimage import data

    rng = np.random.default_rng(0)
    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    paths = []
    for i in range(n):
        base = Image.fromarray(sources[i % len(sources)]).resize(size, Image.BILINEAR)
        noisy = np.asarray(base, np.int16) + rng.integers(-8, 9, (size[1], size[0], 3))
        path = folder / f"{i:03d}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def naive_loop(model_dir: Path, paths: list[Path], device: str) -> list[np.ndarray]:
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    processor = CLIPSegProcessor.from_pretrained(model_dir)
    model = CLIPSegForImageSegmentation.from_pretrained(model_dir).to(device).eval()
    masks = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        inputs = processor(text=[EXPRESSION], images=[image], padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs.to(device)).logits.reshape(1, 1, 352, 352)
        prob = F.interpolate(
            torch.sigmoid(logits), size=image.size[::-1], mode="bilinear", align_corners=False
        )
        masks.append(np.packbits((prob[0, 0] > 0.5).cpu().numpy()))
    return masks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--width", type=int, default=4032)
    parser.add_argument("--height", type=int, default=3024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = full_size_clipseg(Path(tmp) / "clipseg")
        paths = photos(Path(tmp), args.images, (args.width, args.height))
        model = load_model(model_dir)
        n_params = sum(p.numel() for p in model.net.parameters())
        engine = Segmenter(
            model, args.device, batch_size=args.batch_size, workers=args.workers, all_masks=True
        )
        engine.run_group(ImageGroup("warm-up", paths[:2]), "warm up")
        naive_loop(model_dir, paths[:2], args.device)

        naive_s = ours_s = float("inf")
        for _ in range(args.repeats):  # alternated, best of each: fair on a busy machine
            start = time.perf_counter()
            want = naive_loop(model_dir, paths, args.device)
            naive_s = min(naive_s, time.perf_counter() - start)
            start = time.perf_counter()
            ours = {r.index: r for r in engine.run_group(ImageGroup("g", paths), EXPRESSION)}
            ours_s = min(ours_s, time.perf_counter() - start)

        ious, same = [], []
        for i, packed in enumerate(want):
            ref = np.unpackbits(packed)[: args.width * args.height].astype(bool)
            got = ours[i].mask.reshape(-1)
            union = np.count_nonzero(ref | got)
            ious.append(np.count_nonzero(ref & got) / union if union else 1.0)
            same.append(np.count_nonzero(ref == got) / ref.size)
    print(f"CLIPSeg rd64 ({n_params / 1e6:.0f} M parameters, random weights), {args.images} JPEGs")
    print(f"{args.width}x{args.height}, device {args.device}, batch {args.batch_size}:")
    print(f"  naive loop (processor + model per image): {args.images / naive_s:6.2f} images/s")
    print(f"  gres engine (two passes, group rule):     {args.images / ours_s:6.2f} images/s")
    print(f"  ratio: {naive_s / ours_s:.2f}x")
    print(
        f"  masks: mean IoU {np.mean(ious):.4f} (min {np.min(ious):.4f}), "
        f"pixels equal {np.mean(same):.5f}"
    )


if __name__ == "__main__":
    main()
