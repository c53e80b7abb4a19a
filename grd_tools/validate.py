"""`gres grd validate`: find every fault of a GRD dataset, each named by its JSON path or file.

The checks run on the parsed JSON, not on `GRDDataset`, so a manifest that breaks the schema is
still checked as far as its shape allows (a bad node is skipped, never a crash). Image files are
checked from their headers (`imageio.image_size`); masks are decoded only when `check_pixels`,
because binariness and emptiness need pixels. Large datasets are checked in batches by a pool of
processes (one per core): header reads are mostly Python work, so threads would fight for the
GIL.

Every `Issue` has a stable `code` (the table lives in docs/grd-tools.md); errors make the
dataset invalid, warnings flag something unusual that tools still handle.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import posixpath
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from grd_tools.errors import UnsafePathError
from grd_tools.format import read_manifest, schema_errors
from grd_tools.imageio import ImageReadError, image_size, open_image, read_mask
from grd_tools.paths import check_relative, resolve_inside

Severity = Literal["error", "warning"]
T = TypeVar("T")
R = TypeVar("R")

#: files checked per task sent to a worker process (amortises the inter-process round trip)
BATCH = 256
#: below this many files, a pool costs more to start than it saves: check them in-process
PARALLEL_FROM = 2000
#: "fork" starts workers in milliseconds and, unlike "spawn", never re-runs the caller's main
#: script; the children only read files. Where there is no fork, files are checked in-process.
_FORK = (
    multiprocessing.get_context("fork")
    if "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"
    else None
)
#: split names every tool knows; others are allowed but flagged
KNOWN_SPLITS = ("train", "val", "test")

#: code -> (severity, what it means); docs/grd-tools.md shows this table
CODES: dict[str, tuple[Severity, str]] = {
    "schema": ("error", "grd.json breaks the JSON Schema"),
    "duplicate-id": ("error", "two groups, or two images/expressions of one group, share an id"),
    "incomplete-targets": ("error", "an expression does not name every image of its group"),
    "unknown-target-image": ("error", "an expression names an image id its group does not have"),
    "unsafe-path": ("error", "a path is absolute, uses '..', or is a symlink out of the dataset"),
    "missing-file": ("error", "an image or mask file does not exist"),
    "unreadable": ("error", "a file Pillow cannot read (corrupt, unknown format, bomb guard)"),
    "size-mismatch": ("error", "image header differs from width/height, or mask from its image"),
    "mask-not-binary": ("error", "a mask holds values other than 0/255 (or 0/1)"),
    "empty-mask-present": ("error", "a target marked present whose mask is all zero"),
    "split-leak": ("error", "a group id or an image file in two different splits"),
    "mask-0-1": ("warning", "a mask stored as 0/1 instead of 0/255 (read fine, displays black)"),
    "unknown-split": ("warning", "a split other than train/val/test/null"),
    "empty-group": ("warning", "a group without images or without expressions"),
    "duplicate-expression": ("warning", "two expressions of one group with the same text"),
}


@dataclass(frozen=True)
class Issue:
    """One fault. `where` is the JSON path of the manifest node (`$.groups[0].images[1]`)."""

    severity: Severity
    code: str
    message: str
    where: str


@dataclass
class Report:
    """The outcome of `validate`: every issue found and what was checked."""

    root: Path
    issues: list[Issue] = field(default_factory=list)
    groups: int = 0
    images: int = 0
    masks: int = 0
    pixels_checked: bool = True

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def ok(self, strict: bool = False) -> bool:
        """True when there is no error (and, when `strict`, no warning either)."""
        return not (self.issues if strict else self.errors)

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        return {
            "dataset": str(self.root),
            "ok": self.ok(strict),
            "strict": strict,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checked": {"groups": self.groups, "images": self.images, "masks": self.masks},
            "pixels_checked": self.pixels_checked,
            "issues": [asdict(i) for i in self.issues],
        }


def _issue(code: str, message: str, where: str) -> Issue:
    return Issue(CODES[code][0], code, message, where)


def _key(path: str, key: str) -> str:
    """Extend a JSON path the way jsonschema writes it: `.name` or `['0001']`."""
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class _FileJob:
    kind: Literal["image", "mask"]
    rel: str
    where: str
    expected: tuple[int, int] | None  # (width, height) the file should have


def _apply(fn: Callable[[T], R], batch: list[T]) -> list[R]:
    return [fn(item) for item in batch]


def map_files(
    fn: Callable[[T], R],
    items: list[T],
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[R]:
    """`fn(item)` for each item, in order: in worker processes (`workers`, default one per core)
    when there are many items, in this process otherwise. `fn` must be picklable (a module-level
    function or a `functools.partial` of one). `progress(done, total)` follows the batches."""
    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    apply = functools.partial(_apply, fn)
    workers = workers or os.cpu_count() or 1
    done = 0
    with contextlib.ExitStack() as stack:
        results: Iterable[list[R]] = map(apply, batches)
        if workers > 1 and len(items) >= PARALLEL_FROM and _FORK is not None:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=_FORK))
            results = pool.map(apply, batches)
        for batch, batch_results in zip(batches, results, strict=True):
            yield from batch_results
            done += len(batch)
            if progress is not None:
                progress(done, len(items))


def validate(
    root: str | os.PathLike[str],
    *,
    check_pixels: bool = True,
    decode_images: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check a GRD dataset folder and return every issue found.

    `check_pixels` decodes masks (binary values, empty masks); images are read from their header
    only unless `decode_images` (which also catches truncated files). `progress(done, total)` is
    called as files are checked. Raises GRDError only when `root/grd.json` is missing or not JSON.
    """
    root = Path(root)
    data = read_manifest(root)
    report = Report(root=root, pixels_checked=check_pixels)
    report.issues += [_issue("schema", e.reason, e.json_path) for e in schema_errors(data)]
    jobs = _check_structure(data, report)
    report.images = sum(j.kind == "image" for j in jobs)
    report.masks = sum(j.kind == "mask" for j in jobs)

    # a file named by several records (an image in several groups) is read once; its issues
    # are reported at each record, in manifest order
    unique = {(j.kind, j.rel, j.expected): j for j in jobs}
    check = functools.partial(
        _check_file, root, os.path.realpath(root), pixels=check_pixels, decode=decode_images
    )
    results = map_files(check, list(unique.values()), workers=workers, progress=progress)
    found = dict(zip(unique, results, strict=True))
    for j in jobs:
        report.issues += [replace(i, where=j.where) for i in found[(j.kind, j.rel, j.expected)]]
    return report


def _check_structure(data: Any, report: Report) -> list[_FileJob]:
    """Manifest-level checks (ids, completeness, paths, splits); returns the file checks to run."""
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list):
        return []
    jobs: list[_FileJob] = []
    add = report.issues.append
    group_seen: dict[str, tuple[str, Any]] = {}  # group id -> (where, split)
    file_split: dict[str, tuple[str, Any]] = {}  # normalised image file -> (where, split)
    for gi, g in enumerate(groups):
        gw = f"$.groups[{gi}]"
        if not isinstance(g, dict):
            continue
        report.groups += 1
        gid, split = g.get("id"), g.get("split")
        if isinstance(split, str) and split not in KNOWN_SPLITS:
            add(_issue("unknown-split", f"split {split!r} is not one of train/val/test", gw))
        if _is_id(gid):
            if gid in group_seen:
                first_where, first_split = group_seen[gid]
                add(_issue("duplicate-id", f"group id {gid!r} already used at {first_where}", gw))
                if split != first_split:
                    add(
                        _issue(
                            "split-leak",
                            f"group {gid!r} is in split {split!r} here and {first_split!r} "
                            f"at {first_where}",
                            gw,
                        )
                    )
            else:
                group_seen[gid] = (gw, split)
        images = g.get("images") if isinstance(g.get("images"), list) else []
        exprs = g.get("expressions") if isinstance(g.get("expressions"), list) else []
        if not images or not exprs:
            missing = "images" if not images else "expressions"
            add(_issue("empty-group", f"group {gid!r} has no {missing}", gw))

        sizes: dict[str, tuple[int, int] | None] = {}
        for ii, img in enumerate(images):
            iw = f"{gw}.images[{ii}]"
            if not isinstance(img, dict):
                continue
            iid, rel = img.get("id"), img.get("file")
            size = None
            if _is_size(img.get("width")) and _is_size(img.get("height")):
                size = (img["width"], img["height"])
            if _is_id(iid):
                if iid in sizes:
                    add(_issue("duplicate-id", f"image id {iid!r} repeated in group {gid!r}", iw))
                else:
                    sizes[iid] = size
            if isinstance(rel, str) and rel:
                job = _path_job("image", rel, f"{iw}.file", size, report)
                if job is not None:
                    jobs.append(job)
                    _check_leak(posixpath.normpath(rel), iw, split, file_split, report)

        texts: dict[str, str] = {}
        expr_ids: set[str] = set()
        for ei, e in enumerate(exprs):
            ew = f"{gw}.expressions[{ei}]"
            if not isinstance(e, dict):
                continue
            eid, text, targets = e.get("id"), e.get("text"), e.get("targets")
            if _is_id(eid):
                if eid in expr_ids:
                    add(_issue("duplicate-id", f"expression id {eid!r} repeated in {gid!r}", ew))
                expr_ids.add(eid)
            if isinstance(text, str) and text.strip():
                norm = " ".join(text.lower().split())
                if norm in texts:
                    add(
                        _issue(
                            "duplicate-expression",
                            f"text {text!r} also used by expression {texts[norm]!r}",
                            ew,
                        )
                    )
                else:
                    texts[norm] = str(eid)
            if not isinstance(targets, dict):
                continue
            tw = f"{ew}.targets"
            missing_ids = [i for i in sizes if i not in targets]
            if missing_ids:
                shown = ", ".join(map(repr, missing_ids[:5]))
                more = f" and {len(missing_ids) - 5} more" if len(missing_ids) > 5 else ""
                add(
                    _issue(
                        "incomplete-targets",
                        f"expression {eid!r} does not name image(s) {shown}{more} of its group "
                        "(give a mask path, or null when the target is absent)",
                        tw,
                    )
                )
            for key, mask in targets.items():
                kw = _key(tw, key)
                if key not in sizes:
                    add(
                        _issue(
                            "unknown-target-image",
                            f"expression {eid!r} names image {key!r}, not in group {gid!r}",
                            kw,
                        )
                    )
                if isinstance(mask, str) and mask:
                    job = _path_job("mask", mask, kw, sizes.get(key), report)
                    if job is not None:
                        jobs.append(job)
    return jobs


def _path_job(
    kind: Literal["image", "mask"],
    rel: str,
    where: str,
    expected: tuple[int, int] | None,
    report: Report,
) -> _FileJob | None:
    """A file check for `rel`, or None after recording an `unsafe-path` issue for its text.

    Only the text is checked here (absolute, `..`); symlinks out are found by the file check,
    which resolves the path in a worker.
    """
    try:
        check_relative(rel)
    except UnsafePathError as e:
        report.issues.append(_issue("unsafe-path", f"{kind} {e}", where))
        return None
    return _FileJob(kind, rel, where, expected)


def _check_leak(
    file: str, where: str, split: Any, seen: dict[str, tuple[str, Any]], report: Report
) -> None:
    """The same image file in two splits leaks test data into training."""
    if file not in seen:
        seen[file] = (where, split)
        return
    first_where, first_split = seen[file]
    if split is not None and first_split is not None and split != first_split:
        report.issues.append(
            _issue(
                "split-leak",
                f"image file {file!r} is in split {split!r} here and {first_split!r} at "
                f"{first_where}",
                where,
            )
        )


def mask_histogram(path: str | os.PathLike[str]) -> tuple[np.ndarray, int, int]:
    """(counts of each uint8 value, width, height) of a mask file, as stored. Raises
    ImageReadError. A bincount is one pass over the pixels, cheaper than `np.unique`."""
    arr = read_mask(path)
    h, w = arr.shape[:2]
    return np.bincount(arr.ravel(), minlength=256), w, h


def mask_value_issue(counts: np.ndarray) -> tuple[str, str] | None:
    """(code, message) when a mask's value histogram is not 0/255, else None."""
    values = np.flatnonzero(counts)
    if set(values.tolist()) <= {0, 255}:
        return None
    if set(values.tolist()) <= {0, 1}:
        return "mask-0-1", "stored as 0/1 (expected 0/255)"
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    return "mask-not-binary", f"holds {len(values)} distinct values ({shown}); expected 0 and 255"


def _check_file(
    root: Path, root_real: str, job: _FileJob, *, pixels: bool, decode: bool
) -> list[Issue]:
    label = f"{job.kind} {job.rel}"
    try:
        full = resolve_inside(root, job.rel, root_real=root_real)
    except UnsafePathError as e:
        return [_issue("unsafe-path", f"{job.kind} {e}", job.where)]
    if not full.is_file():
        what = "is not a file" if full.exists() else "does not exist"
        return [_issue("missing-file", f"{label} {what}", job.where)]
    issues = []
    try:
        if job.kind == "mask" and pixels:
            counts, w, h = mask_histogram(full)
        elif job.kind == "image" and decode:
            w, h = open_image(full).size
        else:
            w, h = image_size(full)
    except ImageReadError as e:
        reason = str(e).split(": ", 1)[-1]
        return [_issue("unreadable", f"{label}: {reason}", job.where)]
    if job.expected is not None and (w, h) != job.expected:
        against = "width/height in grd.json" if job.kind == "image" else "its image"
        issues.append(
            _issue(
                "size-mismatch",
                f"{label} is {w}x{h}, {against} says {job.expected[0]}x{job.expected[1]}",
                job.where,
            )
        )
    if job.kind == "mask" and pixels:
        bad = mask_value_issue(counts)
        if bad is not None:
            issues.append(_issue(bad[0], f"{label}: {bad[1]}", job.where))
        if counts[0] == w * h:
            issues.append(
                _issue(
                    "empty-mask-present",
                    f"{label} is all zero but marks the target present (use null for absent)",
                    job.where,
                )
            )
    return issues


def summarize(issues: Iterable[Issue]) -> dict[str, int]:
    """Number of issues per code, most frequent first."""
    counts: dict[str, int] = {}
    for i in issues:
        counts[i.code] = counts.get(i.code, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


__all__ = [
    "CODES",
    "Issue",
    "Report",
    "map_files",
    "mask_histogram",
    "mask_value_issue",
    "summarize",
    "validate",
]
