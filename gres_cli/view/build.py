"""Which kind of input PATH is, and building its site: the kind's page data, its pictures
(drawn in parallel, reused from the previous site), the static page."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gres_cli.view.dataset import dataset_data, is_dataset
from gres_cli.view.evaluation import evaluation_data, is_report, read_report
from gres_cli.view.run import is_run, read_records, run_data
from gres_cli.view.site import (
    Picture,
    ViewError,
    default_out,
    open_site,
    write_data,
    write_pictures,
)

KINDS = ("run", "evaluation", "dataset")


@dataclass
class SiteSummary:
    """What `build_site` wrote: the site folder, the input's kind and the picture counts."""

    out: Path
    kind: str
    items: int
    drawn: int
    reused: int
    failed: int
    missing: int  # items whose photo (or mask) was not found
    seconds: float


def detect_kind(path: Path) -> str:
    """`run` (a `gres segment` --out folder, or its JSONL), `evaluation` (a `gres eval
    --report` file) or `dataset` (a GRD folder). Raises ViewError for anything else."""
    if is_dataset(path):
        return "dataset"
    if is_run(path):
        return "run"
    if path.is_file() and path.suffix == ".json":
        try:
            if is_report(json.loads(path.read_text("utf-8"))):
                return "evaluation"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            pass
    what = "no such file or folder" if not path.exists() else "not a view input"
    raise ViewError(
        f"{path}: {what}; expected a gres segment --out folder (records.jsonl), "
        "a gres eval --report file, or a GRD dataset (grd.json)"
    )


def build_site(path: Path, out: Path | None = None, plots_dir: Path | None = None) -> SiteSummary:
    """Write the site for `path` into `out` (default: `default_out(path)`), replacing a
    previous site there. `plots_dir`: an evaluation's `--plots` folder to show."""
    kind = detect_kind(path)
    if kind == "evaluation":
        return view_evaluation(read_report(path), out or default_out(path), path, plots_dir)
    started = time.perf_counter()
    out = out or default_out(path)
    with open_site(out, path) as (site, previous):
        if kind == "run":
            records, bad = read_records(path)
            data, pictures = run_data(path, records, bad)
            slots = list(zip(data["items"], pictures, strict=True))
        else:
            data, slots = dataset_data(path)
        summary = _finish(site, previous, data, slots)
    return SiteSummary(out, kind, len(slots), *summary, time.perf_counter() - started)


def view_evaluation(
    report: dict[str, Any],
    out: Path,
    report_path: Path | None = None,
    plots_dir: Path | None = None,
) -> SiteSummary:
    """The site of an evaluation report (a file, or the result `gres eval --view` holds)."""
    started = time.perf_counter()
    with open_site(out, report_path) as (site, previous):
        data, slots = evaluation_data(report, site, report_path, plots_dir)
        summary = _finish(site, previous, data, slots)
    return SiteSummary(out, "evaluation", len(slots), *summary, time.perf_counter() - started)


def _finish(
    site: Path,
    previous: Path | None,
    data: dict[str, Any],
    slots: list[tuple[dict[str, Any], Picture | None]],
) -> tuple[int, int, int, int]:
    """Draw the pictures, name each slot's files (or why it has none), write data.js.
    Returns (drawn, reused, failed, missing) counts."""
    result = write_pictures(site, [p for _, p in slots if p is not None], previous)
    for slot, picture in slots:
        if picture is None:
            slot.setdefault("picture_error", "photo not found")
        elif picture.key in result.failed:
            slot["picture_error"] = result.failed[picture.key]
        else:
            slot["thumb"], slot["large"] = picture.files()
    data["created"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write_data(site, data)
    missing = sum(picture is None for _, picture in slots)
    return result.drawn, result.reused, len(result.failed), missing
