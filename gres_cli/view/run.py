"""The page data of a `gres segment` run: its records, each with a picture of the mask on the
photo. Records from an open-vocabulary backend also carry that model's own call
(`backend_present`, `backend_score`), so the page can show what the group-wise step changed.
The page's review (a person's corrections, downloaded as corrections.json) names the run by its
id, `grd_tools.corrections.run_id` of the run's settings.json, computed here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grd_tools.corrections import run_id
from grd_tools.run_records import latest_records
from gres_cli.inference.writers import RECORDS, SETTINGS
from gres_cli.view.site import MaskSource, Picture, ViewError

#: record fields shown in a card's details, in this order (others follow)
FIELDS = ("image", "group", "expression", "present", "score", "margin", "d_pos", "d_neg")
BACKEND_FIELDS = ("backend_present", "backend_score")


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, lines that are not records). A run folder's `records.jsonl` or a JSONL file.
    A re-run with --overwrite appends a newer record for the same image: the last one wins."""
    file = path / RECORDS if path.is_dir() else path
    try:
        lines = file.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ViewError(f"{file}: cannot read ({e})") from None
    return latest_records(lines)


def _existing(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def record_picture(rec: dict[str, Any], run: Path) -> Picture | None:
    """The photo of a record with its mask, or None when the photo cannot be found.

    Paths in records are as `gres segment` was given them (relative to where it ran), so they
    are looked for as written, then beside the run folder, never inside it (OUT holds no
    input, and a mask there is named like its photo); a mask also in the run folder."""
    image = Path(str(rec["image"]))
    base = run if run.is_dir() else run.parent
    photo = _existing([image, base.parent / image])
    if photo is None:
        return None
    mask = None
    if rec.get("present") and isinstance(rec.get("rle"), dict):
        mask = MaskSource(rle=rec["rle"])
    elif rec.get("present") and isinstance(rec.get("mask"), str):
        written = Path(rec["mask"])
        found = _existing([written, base / str(rec.get("group", "")) / written.name])
        mask = MaskSource(path=found) if found is not None else None
    return Picture(photo, mask, "prediction")


def run_data(
    source: Path, records: list[dict[str, Any]], bad_lines: int
) -> tuple[dict[str, Any], list[Picture | None]]:
    """The page's data and each item's picture (None: no photo found), in record order."""
    groups: dict[str, int] = {}
    expressions: dict[str, int] = {}
    items, pictures = [], []
    counts = {"present": 0, "absent": 0, "error": 0, "changed": 0}
    for rec in records:
        group = str(rec.get("group", ""))
        expression = str(rec.get("expression", ""))
        error = rec.get("error")
        present = None if error else bool(rec.get("present"))
        item: dict[str, Any] = {
            "group": groups.setdefault(group, len(groups)),
            "expression": expressions.setdefault(expression, len(expressions)),
            "image": str(rec["image"]),  # as written: corrections name the record by it
            "name": Path(str(rec["image"])).name,
            "present": present,
            "score": _number(rec.get("score")),
            "margin": _number(rec.get("margin")),
            "error": None if not error else str(error),
            "fields": _fields(rec),
        }
        if "backend_present" in rec and present is not None:
            item["backend_present"] = bool(rec["backend_present"])
            item["backend_score"] = _number(rec.get("backend_score"))
            if item["backend_present"] != present:
                counts["changed"] += 1
        counts["error" if error else "present" if present else "absent"] += 1
        items.append(item)
        pictures.append(record_picture(rec, source))
    data = {
        "kind": "run",
        "title": f"gres segment: {source.name}",
        "source": str(source),
        "groups": list(groups),
        "expressions": list(expressions),
        "items": items,
        "counts": counts,
        "has_backend": any("backend_present" in item for item in items),
        "unreadable_lines": bad_lines,
        "review": review_of(source),
    }
    return data, pictures


def review_of(source: Path) -> dict[str, str | None]:
    """{"run": the run's id, "off": None}, or {"run": None, "off": why the page cannot review}.

    Corrections name their run by its settings.json, so review needs the run folder (or its own
    records.jsonl, whose folder holds settings.json). A records file elsewhere (`--jsonl FILE`)
    names no run: its page shows the answers without review controls, and says why."""
    folder = source if source.is_dir() else source.parent if source.name == RECORDS else None
    if folder is None:
        return {
            "run": None,
            "off": f"{source.name} is a records file outside its run folder, so the page "
            "cannot name the run in corrections.json; build the page from the run folder "
            "(gres view OUT) to review it",
        }
    settings = folder / SETTINGS
    if not settings.is_file():
        return {
            "run": None,
            "off": f"{folder} has no {SETTINGS} (made by an older gres?), which names the run "
            "in corrections.json; re-run gres segment into it to review it",
        }
    try:
        content = json.loads(settings.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        return {"run": None, "off": f"{settings}: cannot read ({e})"}
    return {"run": run_id(content), "off": None}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fields(rec: dict[str, Any]) -> list[list[str]]:
    """The record as (name, text) rows for the details view; large values (RLE) left out."""
    names = [k for k in FIELDS if k in rec]
    names += [k for k in rec if k not in FIELDS and k != "rle"]
    return [[k, json.dumps(rec[k]) if not isinstance(rec[k], str) else rec[k]] for k in names]


def is_run(path: Path) -> bool:
    return (path.is_dir() and (path / RECORDS).is_file()) or (
        path.is_file() and path.suffix == ".jsonl"
    )
