"""Scoring a GRD split, from saved predictions (JSONL of `gres segment`, or a mask folder) or
by running a model, under a named protocol (gres_cli.metrics.masks.PROTOCOLS). Under the
default `gres` protocol the co-salient metrics are scored too, on grey levels where the
predictions have them (a folder of grey PNGs, or the model's probabilities)."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from grd_tools.format import MANIFEST, GRDDataset, Pair
from grd_tools.imageio import MAX_IMAGE_PIXELS, read_mask
from grd_tools.paths import resolve_inside
from gres_cli.errors import GresError
from gres_cli.inference.writers import read_record
from gres_cli.metrics.cosod import CoSODMeter
from gres_cli.metrics.masks import GRESMeter, resize_nearest

if TYPE_CHECKING:
    from gres_cli.evaluation.saved import SavedPredictions


def sweep_metrics(protocol: str) -> list[str]:
    """The metric names a margin sweep reports under `protocol` (what --calibrate may name):
    the mask and decision metrics, not the co-SOD ones, which need grey levels."""
    meter = GRESMeter(protocol)
    meter.update(np.zeros((1, 1), bool), None, False)
    return list(meter.compute())


def dataset_hash(root: Path) -> str:
    return hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()


@contextlib.contextmanager
def open_dataset(path: Path) -> Iterator[tuple[GRDDataset, str]]:
    """Yield (dataset, source format). A folder in another format `gres grd convert` reads
    (coco, hf, cosod, d3, refcoco) is converted into a temporary GRD folder first (images
    hard-linked where possible), removed afterwards."""
    from grd_tools.convert import convert, detect_format
    from grd_tools.format import load

    if (path / MANIFEST).is_file() or not path.is_dir():
        yield load(path), "grd"
        return
    fmt = detect_format(path)
    with tempfile.TemporaryDirectory(prefix="gres-eval-") as tmp:
        out = convert(path, Path(tmp) / "grd", to="grd", from_=fmt)
        yield load(out), fmt


class Scorer:
    """One pair at a time into the protocol's mask meter and, under `gres`, the co-SOD meter.

    Also collects the warnings a user must see: non-binary ground truth, predictions of the
    wrong size (resized nearest, or refused when `strict`)."""

    def __init__(
        self, protocol: str = "gres", cosod_reference: str = "pysodmetrics", strict: bool = False
    ) -> None:
        try:
            self.masks = GRESMeter(protocol)
            self.cosod = CoSODMeter(cosod_reference) if protocol == "gres" else None
        except ValueError as e:
            raise GresError(str(e)) from None
        self.strict = strict
        self.warnings: list[str] = []
        # pairs whose image or prediction could not be read, with the reason: never scored
        self.left_out: list[str] = []

    def ground_truth(self, dataset: GRDDataset, pair: Pair) -> np.ndarray | None:
        """The pair's target mask (bool, image size) or None when absent."""
        if pair.mask is None:
            return None
        raw = read_mask(resolve_inside(dataset.root, pair.mask))
        shape = (pair.image.height, pair.image.width)
        if raw.shape != shape:
            raise GresError(
                f"{pair.mask}: mask {raw.shape[::-1]} differs from its image {shape[::-1]}"
            )
        if np.any((raw != 0) & (raw != 255) & (raw != 1)):
            self._warn(f"{pair.mask}: ground truth is not binary (thresholded at 128)")
            return raw >= 128
        return raw > 0

    def fit(self, pred: np.ndarray, shape: tuple[int, int], where: str) -> np.ndarray:
        """`pred` at the ground truth's (h, w): resized nearest with a warning, or refused."""
        if pred.shape == shape:
            return pred
        message = f"{where}: prediction {pred.shape[::-1]} differs from its image {shape[::-1]}"
        if self.strict:
            raise GresError(message + " (--strict)")
        self._warn(message + " (resized, nearest)")
        return resize_nearest(pred, shape)

    def update(
        self,
        pred: np.ndarray,
        gt: np.ndarray | None,
        present: bool,
        group: str,
        saliency: np.ndarray | None = None,
    ) -> None:
        """Add one pair: bool `pred` and `gt` (None = absent) at image size; `saliency` the
        grey-level map (uint8) when the predictions have one."""
        proto = self.masks.protocol
        self.masks.update(
            proto.resize(pred), None if gt is None else proto.resize(gt), present, group
        )
        if self.cosod is not None:
            grey = saliency if saliency is not None else pred.astype(np.uint8) * 255
            self.cosod.update(grey, np.zeros(pred.shape, bool) if gt is None else gt)

    def metrics(self) -> dict[str, float]:
        out = self.masks.compute()
        if self.cosod is not None:
            out.update(self.cosod.compute())
        return out

    def _warn(self, message: str) -> None:
        if len(self.warnings) < 1000:  # enough to see the pattern; memory stays bounded
            self.warnings.append(message)


@dataclass(frozen=True)
class StoredMask:
    """Where a saved prediction's mask is kept (what `gres view` draws): a file whose grey
    levels at or above `threshold` are the mask, or a record's COCO RLE."""

    path: Path | None = None
    rle: dict[str, Any] | None = None
    threshold: int = 1


class JsonlPredictions:
    """Records of `gres segment`, matched to pairs by image path (or group + file stem)."""

    def __init__(self, path: Path) -> None:
        self.folder = path.parent
        self.by_path: dict[tuple[str, str], dict] = {}
        self.by_stem: dict[tuple[str, str, str], dict] = {}
        try:
            lines = path.read_text("utf-8").splitlines()
        except OSError as e:
            raise GresError(f"{path}: cannot read ({e.strerror})") from None
        for n, line in enumerate(lines, 1):
            try:
                rec = read_record(line)
            except ValueError as e:
                raise GresError(f"{path}:{n}: {e}") from None
            if rec is None:
                continue
            fault = _mask_fault(rec)
            if fault is not None:
                raise GresError(f"{path}:{n}: {fault}")
            self.by_path[(str(Path(rec["image"]).resolve()), rec["expression"])] = rec
            group = str(rec.get("group", ""))
            self.by_stem[(group, Path(rec["image"]).stem, rec["expression"])] = rec

    def _record(self, dataset: GRDDataset, pair: Pair) -> dict | None:
        image = str(resolve_inside(dataset.root, pair.image.file).resolve())
        text = pair.expression.text
        return self.by_path.get((image, text)) or self.by_stem.get(
            (pair.group.id, Path(pair.image.file).stem, text)
        )

    def error(self, dataset: GRDDataset, pair: Pair) -> str | None:
        """Why `gres segment` could not answer this pair (its record's error), or None."""
        rec = self._record(dataset, pair)
        return None if rec is None else rec.get("error")

    def mask(
        self, dataset: GRDDataset, pair: Pair, shape: tuple[int, int]
    ) -> tuple[Any, bool, Any]:
        """(predicted bool mask or None if missing, present decision, grey levels or None)."""
        rec = self._record(dataset, pair)
        if rec is None or rec.get("error"):
            return None, False, None
        if rec.get("rle"):
            from pycocotools import mask as mask_utils

            rle = {"size": rec["rle"]["size"], "counts": rec["rle"]["counts"].encode()}
            try:
                pred = mask_utils.decode(rle).astype(bool)
            except Exception as e:  # pycocotools raises bare Exceptions
                raise GresError(f"{rec['image']}: its rle does not decode ({e})") from None
        elif rec.get("mask"):
            pred = read_mask(self.mask_file(rec["mask"])) > 0
        else:
            pred = np.zeros(shape, bool)
        return pred, bool(rec.get("present")), None

    def stored(self, dataset: GRDDataset, pair: Pair) -> StoredMask | None:
        """Where the mask of `pair` is kept (None: no answer, or answered absent)."""
        rec = self._record(dataset, pair)
        if rec is None or rec.get("error") or not rec.get("present"):
            return None
        if rec.get("rle"):
            return StoredMask(rle=rec["rle"])
        return StoredMask(path=self.mask_file(rec["mask"])) if rec.get("mask") else None

    def mask_file(self, written: str) -> Path:
        """A record's mask file: as written (relative to where `gres segment` or `gres eval`
        ran), else from the folder above the records' folder (where it ran, when it was given
        that folder by name: `--save-predictions r-predictions`)."""
        path = Path(written)
        beside = self.folder.parent / path
        return beside if not path.is_file() and beside.is_file() else path


def _mask_fault(rec: dict) -> str | None:
    """Why a record's mask fields cannot be read (None when they can): `rle` a COCO RLE with a
    [height, width] size and string counts, `mask` a file name."""
    rle, mask = rec.get("rle"), rec.get("mask")
    if rle:
        size = rle.get("size") if isinstance(rle, dict) else None
        sized = (
            isinstance(size, list)
            and len(size) == 2
            and all(type(v) is int and v >= 0 for v in size)
        )
        if not sized or not isinstance(rle.get("counts"), str):
            return '"rle" is not a COCO RLE ({"size": [height, width], "counts": "..."})'
        if size[0] * size[1] > MAX_IMAGE_PIXELS:  # decoding it would take the memory first
            return f'"rle" of {size[1]}x{size[0]} pixels: more than any image gres reads'
    elif mask and not isinstance(mask, str):
        return '"mask" is not a file name'
    return None


class FolderPredictions:
    """Maps in the co-salient layout: DIR/<group>/<stem>.png or DIR/<group>/<expr>/<stem>.png
    (grey levels kept for the co-SOD metrics, thresholded at 128 for the masks; a missing file
    is a missing prediction)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def error(self, dataset: GRDDataset, pair: Pair) -> str | None:
        return None  # a mask file is there or missing; missing ones count as empty

    def mask(
        self, dataset: GRDDataset, pair: Pair, shape: tuple[int, int]
    ) -> tuple[Any, bool, Any]:
        stored = self.stored(dataset, pair)
        if stored is None or stored.path is None:
            return None, False, None
        grey = read_mask(stored.path)
        pred = grey >= stored.threshold
        return pred, bool(pred.any()), grey

    def stored(self, dataset: GRDDataset, pair: Pair) -> StoredMask | None:
        """The map of `pair` (None: no file), its grey levels cut at 128."""
        stem = Path(pair.image.file).stem
        for rel in (
            f"{pair.group.id}/{pair.expression.id}/{stem}.png",
            f"{pair.group.id}/{stem}.png",
        ):
            if (self.root / rel).is_file():
                return StoredMask(path=self.root / rel, threshold=128)
        return None


def score_predictions(
    dataset: GRDDataset,
    source: JsonlPredictions | FolderPredictions,
    split: str | None,
    scorer: Scorer | None = None,
) -> tuple[Scorer, list[str]]:
    """Score saved predictions; returns the scorer and the pairs that had no prediction."""
    scorer = scorer or Scorer()
    missing: list[str] = []
    for pair in _pairs(dataset, split):
        shape = (pair.image.height, pair.image.width)
        gt = scorer.ground_truth(dataset, pair)
        pred, present, grey = source.mask(dataset, pair, shape)
        where = f"{pair.group.id}/{Path(pair.image.file).name} | {pair.expression.text}"
        error = source.error(dataset, pair)
        if error:  # no answer was made: scoring it as "absent" would flatter N-acc
            scorer.left_out.append(f"{where}: {error}")
            continue
        if pred is None:
            missing.append(where)
            pred, grey = np.zeros(shape, bool), None
        if grey is not None:  # a grey map: resize it, threshold again
            grey = scorer.fit(grey, shape, where)
            pred = grey >= 128
        else:
            pred = scorer.fit(pred, shape, where)
        scorer.update(pred, gt, present, pair.group.id, grey)
    return scorer, missing


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
    scorer: Scorer | None = None,
    revision: str | None = None,
    on_scored: Callable[[int], None] | None = None,
    group: bool = True,
    group_weights: list[float] | None = None,
    saved: SavedPredictions | None = None,
    pool: Any = None,
    **engine: Any,
) -> tuple[Scorer, float, dict[float, GRESMeter], dict[tuple[float, float], GRESMeter]]:
    """Run the model over every (group, expression) of the split and score it; `on_scored(n)`
    hears of each expression's n pairs as they are scored (a progress bar).

    One forward pass serves every margin of `sweep`: m only changes the decision
    d_pos + m < d_neg, so each margin gets its own streaming meter fed from the same outputs.
    Any model gres runs (GRSer, an open-vocabulary backend); `group=False` scores it without
    the group-wise step. `group_weights` (backends) also scores every (gamma, m) of those
    weights and the sweep's margins, from the same pass (the group term is linear in gamma).
    `saved` (inside its `writing()` block) gets every answer as `gres segment` records it.
    `pool` (inference.ray_run.RayPool): the answers are computed by its actors on a Ray
    cluster, the same as here, and scored here in the same order.
    """
    from gres_cli.backends import load_model, model_facts
    from gres_cli.inference.engine import EngineOptions, Job, Segmenter
    from gres_cli.inference.inputs import ImageGroup
    from gres_cli.model.decision import presence

    scorer = scorer or Scorer()
    options = {
        "margin": margin,
        "keep_saliency": scorer.cosod is not None,
        "all_masks": bool(sweep),  # another margin may call present what this one calls absent
        **engine,
    }
    if pool is None:
        seg = Segmenter(load_model(model_id, revision, group=group), **options)
        engine, weight = seg, seg.model.group_weight
    else:  # the actors load the model; this process checks the options against its facts
        facts = model_facts(model_id, revision, group=group)
        known = {f.name for f in fields(EngineOptions)}
        engine = EngineOptions(**{k: v for k, v in options.items() if k in known}).resolved(facts)
        options |= {"experts": engine.experts, "margin": engine.margin}
        weight = facts.group_weight
    if group_weights and (not group or not weight):
        raise GresError(
            "--group-weights needs an open-vocabulary backend run with its group step "
            "(a group weight other than 0)"
        )
    if saved is not None:
        saved.begin(engine, model_id, revision, group)
    protocol = scorer.masks.protocol
    sweeps = {m: GRESMeter(protocol) for m in sweep or []}
    weighed = {(w, m): GRESMeter(protocol) for w in group_weights or [] for m in sweep or []}
    if weighed:  # an open-vocabulary backend (torch); an ONNX model never gets here
        from gres_cli.backends.group_rule import reweighted_score
    list(_pairs(dataset, split))  # refuse an empty split up front
    asked, jobs = [], []
    for grd_group in dataset.groups:
        if split is None or grd_group.split == split:
            paths = [resolve_inside(dataset.root, i.file) for i in grd_group.images]
            for expr in grd_group.expressions:
                asked.append((grd_group, expr))
                jobs.append(Job(ImageGroup(grd_group.id, paths), expr.text))
    if pool is None:
        answers = _job_by_job(seg.run(jobs), len(jobs))
    else:
        answers = (
            {r.index: r for r in results}
            for results in pool.results(jobs, model_id, revision, group, options)
        )
    for (grd_group, expr), job, results in zip(asked, jobs, answers, strict=True):
        names = job.group.output_stems() if saved is not None else []
        for k, img in enumerate(grd_group.images):
            shape = (img.height, img.width)
            gt = scorer.ground_truth(dataset, Pair(grd_group, expr, img, expr.targets.get(img.id)))
            r = results.get(k)
            if saved is not None and r is not None:
                saved.add(grd_group.id, expr, names[k], r)
            if r is None or r.error:  # unreadable: no answer, so not scored as "absent"
                reason = "no result" if r is None else r.error
                scorer.left_out.append(
                    f"{grd_group.id}/{Path(img.file).name} | {expr.text}: {reason}"
                )
                continue
            present = r.present
            empty = np.zeros(shape, bool)
            scorer.update(
                r.mask if present else empty,
                gt,
                present,
                grd_group.id,
                r.saliency if present else None,
            )
            gt_r = None if gt is None or not sweeps else protocol.resize(gt)
            for m, meter in sweeps.items():
                present = presence(r.d_pos, r.d_neg, m)
                pred = protocol.resize(r.mask if present else empty)
                meter.update(pred, gt_r, present, group=grd_group.id)
            for (w, m), meter in weighed.items():
                present = reweighted_score(r.d_pos, r.d_neg, r.alone, weight, w) > m
                pred = protocol.resize(r.mask if present else empty)
                meter.update(pred, gt_r, present, group=grd_group.id)
        if on_scored:
            on_scored(len(grd_group.images))
    return scorer, engine.margin, sweeps, weighed


def _job_by_job(results: Iterator[Any], jobs: int) -> Iterator[dict[int, Any]]:
    """The engine's results (which come job by job) as one {image index: result} per job."""
    current: dict[int, Any] = {}
    job = 0
    for r in results:
        while r.job > job:
            yield current
            current, job = {}, job + 1
        current[r.index] = r
    while job < jobs:
        yield current
        current, job = {}, job + 1
