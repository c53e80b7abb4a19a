"""The files of a `gres segment` run folder that the dataset toolkit reads (`gres grd from-run`)
as well as gres's run layer (which writes them: gres_cli.inference.writers and run)."""

from __future__ import annotations

import json
from typing import Any

RECORDS = "records.jsonl"
SETTINGS = "settings.json"


def read_record(line: str) -> dict[str, Any] | None:
    """One line of a records.jsonl as the record of an image, or None for a line that answers
    no image (blank, or a `--jobs` line that could not run: image null, error set). ValueError
    for a line that is not a record (cut by a crash, or another file's)."""
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
        if rec["image"] is None and rec["error"]:
            return None
        # every record names its image and expression as text (readers build paths and keys
        # from them: a null image was a TypeError traceback in `gres eval`, issue 24)
        named = isinstance(rec["image"], str) and isinstance(rec["expression"], str)
    except (json.JSONDecodeError, RecursionError, KeyError, TypeError):
        named = False
    if not named:
        raise ValueError("not a `gres segment` record")
    return rec


def latest_records(lines: list[str]) -> tuple[list[dict[str, Any]], int]:
    """(records, lines that are not records) of a records.jsonl's lines. A re-run with
    --overwrite appends a newer record for the same (image, expression): the last one wins,
    in the place of the newest."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    unreadable = 0
    for line in lines:
        try:
            rec = read_record(line)
        except ValueError:
            unreadable += 1  # a line cut by a crash, or not a record
            continue
        if rec is not None:
            key = (rec["image"], rec["expression"])
            latest.pop(key, None)  # re-inserted: keeps the order of the newest records
            latest[key] = rec
    return list(latest.values()), unreadable
