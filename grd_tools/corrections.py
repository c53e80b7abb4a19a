"""A person's corrections of a `gres segment` run: what the review page of `gres view` downloads
and `gres grd from-run --corrections` applies.

`corrections.json`::

    {"format": "gres-corrections", "version": 1,
     "run": "<run id: run_id() of the run's settings.json>",
     "corrections": [
        {"image": "<the record's image, as written>", "expression": "...", "group": "...",
         "was": "present" | "absent", "answer": "present" | "absent" | "rejected"}]}

`answer` is the person's: "present" or "absent" flips the model's answer, "rejected" marks the
model's mask as wrong (the pair is left out of any dataset made from the run). One entry per
(image, expression); the last one wins.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grd_tools.errors import GRDError

FORMAT = "gres-corrections"
VERSION = 1
ANSWERS = ("present", "absent", "rejected")


def run_id(settings: dict[str, Any]) -> str:
    """A run's id: the SHA-256 of its settings.json content in canonical JSON (sorted keys, no
    spaces), so the same settings give the same id whatever the file's formatting."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Correction:
    image: str
    expression: str
    group: str
    was: str
    answer: str


@dataclass(frozen=True)
class Corrections:
    run: str
    items: dict[tuple[str, str], Correction]  # (image, expression) -> the person's answer


def parse_corrections(data: Any, source: str = "corrections") -> Corrections:
    """Check a corrections document; GRDError (one line naming the entry) when it is not one."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GRDError(f'{source}: not a gres corrections file (no "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise GRDError(f"{source}: corrections version {data.get('version')!r}, expected {VERSION}")
    run = data.get("run")
    if not isinstance(run, str) or not run:
        raise GRDError(f'{source}: "run" must name the run (its id)')
    entries = data.get("corrections")
    if not isinstance(entries, list):
        raise GRDError(f'{source}: "corrections" must be a list')
    items: dict[tuple[str, str], Correction] = {}
    for i, entry in enumerate(entries):
        where = f"{source}: corrections[{i}]"
        if not isinstance(entry, dict):
            raise GRDError(f"{where}: not an object")
        fields = {}
        for key in ("image", "expression", "group", "was", "answer"):
            value = entry.get(key)
            if not isinstance(value, str):
                raise GRDError(f'{where}: "{key}" must be a string')
            fields[key] = value
        if fields["answer"] not in ANSWERS:
            raise GRDError(
                f"{where}: answer {fields['answer']!r} is not one of {', '.join(ANSWERS)}"
            )
        if fields["was"] not in ("present", "absent"):
            raise GRDError(f"{where}: was {fields['was']!r} is not present or absent")
        items[(fields["image"], fields["expression"])] = Correction(**fields)
    return Corrections(run=run, items=items)


def read_corrections(path: str | os.PathLike[str]) -> Corrections:
    """Read and check a corrections.json."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GRDError(f"{path}: cannot read corrections ({e})") from None
    return parse_corrections(data, str(path))


def corrections_document(run: str, items: list[Correction]) -> dict[str, Any]:
    """The JSON document for `items` (what the review page writes, built here for tests/tools)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "run": run,
        "corrections": [vars(c) for c in items],
    }
