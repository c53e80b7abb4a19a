"""Scoring a GRD split, from saved predictions (JSONL of `gres segment`, or a mask folder) or
by running a model. The `gres` protocol: original resolution, negatives counted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from grd_tools.format import MANIFEST, GRDDataset, Pair
from grd_tools.imageio import read_mask
from grd_tools.paths import resolve_inside
from gres_cli.errors import GresError
from gres_cli.metrics.masks import GRESMeter


def dataset_hash(root: Path) -> str:
    return hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()


def _gt(dataset: GRDDataset, pair: Pair, shape: tuple[int, int]) -> np.ndarray | None:
    if pair.mask is None:
        return None
    mask = read_mask(resolve_inside(dataset.root, pair.mask)) > 0
    if mask.shape != shape:
        raise GresError(
            f"{pair.mask}: mask {mask.shape[::-1]} differs from its image {shape[::-1]}"
        )
    return mask


class JsonlPredictions:
    """Records of `gres segment`, matched to pairs by image path (or group + file stem)."""

    def __init__(self, path: Path) -> None:
        self.by_path: dict[tuple[str, str], dict] = {}
        self.by_stem: dict[tuple[str, str, str], dict] = {}
        try:
            lines = path.read_text("utf-8").splitlines()
        except OSError as e:
            raise GresError(f"{path}: cannot read ({e.strerror})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (str(Path(rec["image"]).resolve()), rec["expression"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise GresError(f"{path}:{n}: not a `gres segment` record") from None
            self.by_path[key] = rec
            self.by_stem[(rec.get("group", ""), Path(rec["image"]).stem, rec["expression"])] = rec

    def mask(self, dataset: GRDDataset, pair: Pair, shape: tuple[int, int]) -> tuple[Any, bool]:
        """(predicted bool mask or None if missing, present decision)."""
        image = str(resolve_inside(dataset.root, pair.image.file).resolve())
        text = pair.expression.text
        rec = self.by_path.get((image, text)) or self.by_stem.get(
            (pair.group.id, Path(pair.image.file).stem, text)
        )
        if rec is None or rec.get("error"):
            return None, False
        if rec.get("rle"):
            from pycocotools import mask as mask_utils

            rle = {"size": rec["rle"]["size"], "counts": rec["rle"]["counts"].encode()}
            pred = mask_utils.decode(rle).astype(bool)
        elif rec.get("mask"):
            pred = read_mask(rec["mask"]) > 0
        else:
            pred = np.zeros(shape, bool)
        return pred, bool(rec.get("present"))


class FolderPredictions:
    """Masks in the co-salient layout: DIR/<group>/<stem>.png or DIR/<group>/<expr>/<stem>.png
    (grey levels thresholded at 128; a missing file is a missing prediction)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mask(self, dataset: GRDDataset, pair: Pair, shape: tuple[int, int]) -> tuple[Any, bool]:
        stem = Path(pair.image.file).stem
        for rel in (
            f"{pair.group.id}/{pair.expression.id}/{stem}.png",
            f"{pair.group.id}/{stem}.png",
        ):
            path = self.root / rel
            if path.is_file():
                pred = read_mask(path) >= 128
                return pred, bool(pred.any())
        return None, False


def score_predictions(
    dataset: GRDDataset, source: JsonlPredictions | FolderPredictions, split: str | None
) -> tuple[GRESMeter, list[str]]:
    meter, missing = GRESMeter(), []
    for pair in _pairs(dataset, split):
        shape = (pair.image.height, pair.image.width)
        gt = _gt(dataset, pair, shape)
        pred, present = source.mask(dataset, pair, shape)
        if pred is None:
            missing.append(f"{pair.group.id}/{pair.image.id} | {pair.expression.text}")
            pred = np.zeros(shape, bool)
        if pred.shape != shape:  # resized with nearest, as the issue asks
            from PIL import Image

            pred = np.asarray(Image.fromarray(pred).resize(shape[::-1], Image.NEAREST))
        meter.update(pred, gt, present, group=pair.group.id)
    return meter, missing


def _pairs(dataset: GRDDataset, split: str | None) -> Iterator[Pair]:
    pairs = list(dataset.pairs(split))
    if not pairs:
        raise GresError(f"{dataset.root}: no (expression, image) pairs in split {split!r}")
    return iter(pairs)


def score_model(
    dataset: GRDDataset,
    model_id: str,
    split: str | None,
    margin: float | None,
    sweep: list[float] | None = None,
    **engine: Any,
) -> tuple[GRESMeter, float, dict[float, GRESMeter]]:
    """Run the model over every (group, expression) of the split and score it.

    One forward pass serves every margin of `sweep`: m only changes the decision
    d_pos + m < d_neg, so each margin gets its own streaming meter fed from the same outputs.
    """
    from gres_cli.inference.engine import Segmenter
    from gres_cli.inference.inputs import ImageGroup
    from gres_cli.model.grser import GRSer

    seg = Segmenter(GRSer.from_pretrained(model_id), margin=margin, **engine)
    meter = GRESMeter()
    sweeps = {m: GRESMeter() for m in sweep or []}
    list(_pairs(dataset, split))  # refuse an empty split up front
    for group in dataset.groups:
        if split is not None and group.split != split:
            continue
        paths = [resolve_inside(dataset.root, i.file) for i in group.images]
        for expr in group.expressions:
            results = {r.index: r for r in seg.run_group(ImageGroup(group.id, paths), expr.text)}
            for k, img in enumerate(group.images):
                shape = (img.height, img.width)
                gt = _gt(dataset, Pair(group, expr, img, expr.targets.get(img.id)), shape)
                r = results.get(k)
                for m, target in [(seg.margin, meter), *sweeps.items()]:
                    present = r is not None and not r.error and r.d_pos + m < r.d_neg
                    pred = r.mask if present else np.zeros(shape, bool)
                    target.update(pred, gt, present, group=group.id)
    return meter, seg.margin, sweeps
