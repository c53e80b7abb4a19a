"""The group-wise inference engine behind `gres segment` and `gres eval --model`.

It runs any model of the protocol in gres_cli.backends.protocol (GRSer, or an open-vocabulary
backend with the group rule). Two passes per group keep the cost per image flat however large
the folder, and memory bounded by the batch, not the folder:
  1. every image goes through the model once; what the group step needs is kept (GRSer: its
     prototype p_n and hierarchizer scores), and what pass 2 can reuse too while the cache
     budget lasts (GRSer: the encoder output, which does not depend on the experts);
  2. the top-K experts of the WHOLE folder are chosen, and each image is decided against them
     (run through the model again only when it did not fit in the cache).
For GRSer and a group of at most K images this equals GRSer's own all-pairs forward (tested;
both zero-pad the expert channels below K).
One loader streams the images of ALL jobs (group, expression) in order, decoding ahead of the
model: a folder of many small groups pays for one loader, not one per group; consecutive jobs on
the same images (a group's expressions in `gres eval`) read them once. Results come job by job,
in job order.

This module is the orchestration only, and imports no torch. What is torch's lives in the
model's runtime (`gres_cli.inference.runtimes`): for torch models a DataLoader (worker
processes, pinned memory on CUDA), the device and autocast; for the ONNX
model numpy arrays and a thread pool decoding ahead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gres_cli.backends import as_group_model
from gres_cli.backends.protocol import GroupModel, cat_summaries, nbytes, presence
from gres_cli.errors import GresError
from gres_cli.inference.inputs import ImageGroup
from gres_cli.inference.runtimes import make_runtime


@dataclass
class Job:
    """One expression asked of one group. Images in `skip` (done by an earlier run) still take
    part in pass 1, where the experts are chosen, but get no result."""

    group: ImageGroup
    expression: str
    skip: set[int] = field(default_factory=set)


@dataclass
class ImageResult:
    job: int  # position of its Job in the run
    index: int  # of the image in its group
    path: Path
    error: str | None
    present: bool = False
    d_pos: float = float("nan")
    d_neg: float = float("nan")
    # the decoder's mask (bool, original size, before presence); computed for present images
    # only, unless the Segmenter keeps all masks: upsampling is most of the work past the model
    mask: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)
    photo: Image.Image | None = None
    saliency: np.ndarray | None = None  # uint8 probability x 255, original size, with the mask
    # the model's own per-image values (`GroupModel.image_extras`), readable as attributes too
    # (an open-vocabulary backend's `r.backend_score`), and the fields they add to the record
    extras: dict[str, Any] = field(default_factory=dict)
    record_extras: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        """A model's extra value by name (called only for names that are not fields)."""
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__} has no {name!r} (nor an extra of that name)")


@dataclass(frozen=True)
class EngineOptions:
    """How a `Segmenter` runs a model: what `gres segment` and `gres eval` take as options, and
    what a Ray actor needs to build the driver's engine again (`Segmenter(model, **asdict(o))`)."""

    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 16
    workers: int = 0
    experts: int | None = None
    margin: float | None = None
    threshold: float = 0.5

    def resolved(self, model: Any) -> EngineOptions:
        """These options checked as a Segmenter of `model` (a GroupModel, or its
        registry.ModelFacts) checks them, with its K and m where none was given: what a Ray
        driver, which loads no model, writes to settings.json and hands its actors."""
        k, m = checked_options(
            model, self.batch_size, self.workers, self.experts, self.margin, self.threshold
        )
        return replace(self, experts=k, margin=m)


def check_cuts(margin: float | None, threshold: float = 0.5) -> None:
    """GresError for a margin that is not a finite number or a threshold outside [0, 1]: both
    go into every record and settings.json, where NaN and Infinity are not JSON (and NaN is
    not equal to itself: the same command's re-run was refused as other settings), and a
    probability cut past 1 left "present" images with empty masks."""
    if margin is not None and not math.isfinite(margin):
        raise GresError(f"--margin {margin}: give a finite number")
    if not 0.0 <= threshold <= 1.0:  # NaN included
        raise GresError(f"--threshold {threshold}: give a probability from 0 to 1")


def checked_options(
    model: Any,
    batch_size: int,
    workers: int,
    experts: int | None,
    margin: float | None,
    threshold: float = 0.5,
) -> tuple[int, float]:
    """(K, m): the options', else `model`'s defaults (a GroupModel or its ModelFacts); a
    GresError for an option the engine or the model does not take."""
    check_cuts(margin, threshold)
    if batch_size < 1:
        raise GresError("--batch-size must be >= 1")
    if workers < 0:
        raise GresError("--workers must be >= 0")
    k = model.experts if experts is None else experts
    if k < 1 or (model.max_experts and k > model.max_experts):
        most = model.max_experts or "any number"
        raise GresError(f"--experts {k}: this model takes 1 to {most}")
    return k, model.margin if margin is None else margin


class Segmenter:
    """Runs a model (a GroupModel, or a bare GRSer) over groups of image files with the
    two-pass group-wise step."""

    def __init__(
        self,
        model: GroupModel | Any,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 16,
        workers: int = 0,
        experts: int | None = None,
        margin: float | None = None,
        threshold: float = 0.5,
        cache_bytes: int = 1 << 30,
        keep_saliency: bool = False,
        all_masks: bool = False,
    ) -> None:
        model = as_group_model(model)
        # the model's arrays, device, precision and loader (torch's, or numpy's for ONNX)
        self.runtime = make_runtime(model.runtime, device, precision)
        self.device = self.runtime.device
        # pass 1 keeps each image's bytes, encoder output (and photo) for pass 2 up to this many
        # bytes per job; past it, pass 2 decodes again, so memory stays bounded however large
        # the folder (twice this while a job replays the previous job's decoded pixels)
        self.cache_bytes = cache_bytes
        self.experts, self.margin = checked_options(
            model, batch_size, workers, experts, margin, threshold
        )
        self.model = model.to(self.device)
        self.precision = precision
        self.batch_size, self.workers = batch_size, workers
        self.threshold = threshold
        # what one decoded image costs in memory once the model's preparer made it its input
        side = model.input_size
        self.prepared_bytes = nbytes(model.preparer()(Image.new("RGB", (side, side))))
        self.keep_saliency = keep_saliency  # grey-level maps for the co-SOD metrics
        self.all_masks = all_masks  # masks of absent images too (a margin sweep needs them)

    def _batches(self, paths: list[Path], keep_photo: bool = False) -> Iterator[tuple]:
        """(image indices, prepared pixels on the device, original sizes, errors, photos) per
        batch of `paths`, decoded ahead of the model by the runtime's loader."""
        return self.runtime.batches(
            paths,
            self.model.input_size,
            self.model.preparer(),
            self.batch_size,
            self.workers,
            keep_photo,
        )

    def run(self, jobs: list[Job], keep_photo: bool = False) -> Iterator[ImageResult]:
        """Segment each job's expression in every image of its group (photos kept on the
        results when `keep_photo`, for overlays). Yields results job by job, in job order."""
        return self.runtime.without_gradients(self._run)(jobs, keep_photo)

    def _run(self, jobs: list[Job], keep_photo: bool) -> Iterator[ImageResult]:
        texts: dict[str, Any] = {}

        def open_job(j: int) -> JobInProgress:
            expression = jobs[j].expression
            if expression not in texts:
                texts[expression] = self.model.encode_text(expression)
            return JobInProgress(j, jobs[j], texts[expression], self.cache_bytes)

        replays = replaying_jobs(jobs, keep_photo, self.prepared_bytes, self.cache_bytes)
        owners = decode_order(jobs, replays)
        paths = [jobs[j].group.images[i] for j, i in owners]
        current: JobInProgress | None = None
        decoded: list[tuple] = []  # the current job's pixels, while the next one replays them
        for flat, raw, sizes, errors, photos in self._batches(paths, keep_photo):
            # a batch may span jobs: each run of one job's images goes through pass 1 together
            for j, part in runs_of_one_job([owners[f][0] for f in flat]):
                current = current or open_job(j)
                if j + 1 < len(jobs) and replays[j + 1]:
                    decoded += zip(raw[part], sizes[part], errors[part], strict=True)
                images = [owners[f][1] for f in flat[part]]
                yield from self._pass1(
                    current, images, raw[part], sizes[part], errors[part], photos[part]
                )
                if current.seen == len(jobs[j].group.images):
                    yield from self._pass2(current, keep_photo)
                    current = None
                    while j + 1 < len(jobs) and replays[j + 1]:
                        j += 1
                        yield from self._replay(open_job(j), decoded)
                    decoded = []

    def _replay(self, job: JobInProgress, decoded: list[tuple]) -> Iterator[ImageResult]:
        """Both passes of a job whose images are already decoded (in group order)."""
        for start in range(0, len(decoded), self.batch_size):
            raw, sizes, errors = zip(*decoded[start : start + self.batch_size], strict=True)
            images = list(range(start, start + len(raw)))
            yield from self._pass1(
                job,
                images,
                self.runtime.stack([None if e else r for r, e in zip(raw, errors, strict=True)]),
                list(sizes),
                list(errors),
                [None] * len(raw),
            )
        yield from self._pass2(job, keep_photo=False)

    def _pass1(
        self, job: JobInProgress, images: list[int], raw: Any, sizes, errors, photos
    ) -> Iterator[ImageResult]:
        """What the group step needs of these images; cache what pass 2 reuses."""
        job.seen += len(images)
        good = [k for k, e in enumerate(errors) if not e]
        for k, err in enumerate(errors):
            if err and images[k] not in job.job.skip:
                yield ImageResult(job.number, images[k], job.job.group.images[images[k]], err)
        if not good:
            return
        alone = not self.model.group or self.experts < 2 or len(job.job.group.images) < 2
        with self.runtime.autocast():
            first = self.model.first_pass(self.model.model_input(raw[good]), job.text, alone)
        job.summaries.append(first.summary)
        for j, k in enumerate(good):
            job.passed(images[k], sizes[k], first.items[j], photos[k])

    def _pass2(self, job: JobInProgress, keep_photo: bool) -> Iterator[ImageResult]:
        """Every image of the job against the group's top-K experts: cached images first, then
        the ones that did not fit, decoded and run through the model again."""
        if not job.ok:
            return
        experts = self.model.choose_experts(cat_summaries(job.summaries), self.experts)
        todo = [i for i in job.ok if i not in job.job.skip]
        cached = [i for i in todo if i in job.cache]
        for start in range(0, len(cached), self.batch_size):
            chunk = cached[start : start + self.batch_size]
            sizes, items, photos = zip(*(job.cache.pop(i) for i in chunk), strict=True)
            yield from self._query(job, experts, chunk, sizes, photos, None, list(items))
        rest = [i for i in todo if i not in cached]
        if not rest:  # a loader costs its worker processes' start, even over nothing
            return
        paths = [job.job.group.images[i] for i in rest]
        for idx, raw, sizes, errors, photos in self._batches(paths, keep_photo):
            images = [rest[x] for x in idx]
            for k in (k for k, e in enumerate(errors) if e):  # unreadable since pass 1
                yield ImageResult(job.number, images[k], paths[idx[k]], errors[k])
            good = [k for k, e in enumerate(errors) if not e]
            if good:
                yield from self._query(
                    job,
                    experts,
                    [images[k] for k in good],
                    [sizes[k] for k in good],
                    [photos[k] for k in good],
                    raw[good],
                    None,
                )

    def _query(self, job, experts, images, sizes, photos, raw, items) -> Iterator[ImageResult]:
        """Pass 2 on one batch (from cached items, or from pixels): presence, and masks at
        original size where wanted."""
        with self.runtime.autocast():
            pixels = None if raw is None else self.model.model_input(raw)
            out = self.model.second_pass(pixels, job.text, experts, items)
        # float32 numpy on the host, whatever the model's arrays
        floats = self.runtime.to_host_floats
        d_pos, d_neg = floats(out.d_pos), floats(out.d_neg)
        decided = presence(d_pos, d_neg, self.margin).tolist()
        extras = {name: floats(values) for name, values in out.extras.items()}
        for k, (dp, dn) in enumerate(zip(d_pos.tolist(), d_neg.tolist(), strict=True)):
            image = images[k]
            mine = self.model.image_extras({n: v[k] for n, v in extras.items()}, self.margin)
            # NaN or inf is no answer: NaN < NaN would call the image absent, silently
            broken = not (math.isfinite(dp) and math.isfinite(dn))
            res = ImageResult(
                job.number,
                image,
                job.job.group.images[image],
                f"the model gave non-finite distances (d_pos {dp}, d_neg {dn})" if broken else None,
                decided[k] and not broken,
                dp,
                dn,
                size=sizes[k],
                photo=photos[k],
                extras=mine,
                record_extras=self.model.record_extras(mine),
            )
            if not broken and (decided[k] or self.all_masks):
                prob = self.model.probability_at(out.mask_logits[k], sizes[k])
                res.mask, res.saliency = self.runtime.mask_and_grey(
                    prob, self.threshold, self.keep_saliency
                )
            yield res

    def run_group(
        self,
        group: ImageGroup,
        expression: str,
        skip: set[int] | None = None,
        keep_photo: bool = False,
    ) -> list[ImageResult]:
        """One group, one expression: `run` of a single job, as a list."""
        return list(self.run([Job(group, expression, skip or set())], keep_photo))


def replaying_jobs(
    jobs: list[Job], keep_photo: bool, prepared_bytes: int, cache_bytes: int
) -> list[bool]:
    """Which jobs replay the previous job's decoded pixels from memory instead of decoding
    again: consecutive jobs on the same images (gres eval: a group's expressions) whose
    pixels fit the cache budget; never when photos are kept (they are not cached)."""
    return [
        j > 0
        and not keep_photo
        and bool(job.group.images)
        and job.group.images == jobs[j - 1].group.images
        and len(job.group.images) * prepared_bytes <= cache_bytes
        for j, job in enumerate(jobs)
    ]


def decode_order(jobs: list[Job], replays: list[bool]) -> list[tuple[int, int]]:
    """(job, image index) of each image the loader decodes, in order: every image of every
    job but those that replay."""
    return [
        (j, i) for j, job in enumerate(jobs) if not replays[j] for i in range(len(job.group.images))
    ]


def runs_of_one_job(job_of: list[int]) -> Iterator[tuple[int, slice]]:
    """A batch's items (the job of each) as consecutive runs of one job: (job, its slice)."""
    start = 0
    while start < len(job_of):
        stop = start
        while stop < len(job_of) and job_of[stop] == job_of[start]:
            stop += 1
        yield job_of[start], slice(start, stop)
        start = stop


class JobInProgress:
    """A job between its two passes: what pass 2 will need of it. Pass 1's items (and photos)
    are cached for pass 2 while the job's byte budget lasts; the rest are decoded again."""

    def __init__(self, number: int, job: Job, text: Any, budget: int) -> None:
        self.number, self.job, self.text = number, job, text
        self.seen = 0  # images through pass 1
        self.summaries: list[dict[str, Any]] = []
        self.ok: list[int] = []  # readable images, in pass-1 order
        self.cache: dict[int, tuple[tuple[int, int], Any, Any]] = {}  # size, item, photo
        self.budget = budget

    def passed(self, image: int, size: tuple[int, int], item: Any, photo: Any) -> None:
        """Image `image` went through pass 1: count it readable, and cache what pass 2 reuses
        of it if it is to be answered and fits the budget (bytes of its arrays and photo)."""
        self.ok.append(image)
        if image in self.job.skip:
            return
        cost = nbytes(item) + (photo.width * photo.height * 3 if photo else 0)
        if self.budget >= cost:
            self.budget -= cost
            self.cache[image] = (size, item, photo)
