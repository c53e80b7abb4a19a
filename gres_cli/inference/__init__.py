"""Inference: finding images, decoding them ahead of the model, the two-pass group engine,
the run that owns an output folder, and the writers of masks, overlays and JSONL records.

    from gres_cli.inference import RunFolder, Segmenter, tasks_for_path

The names below load on first use, so importing one part never imports the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Segmenter": "engine",
    "Job": "engine",
    "RunFolder": "run",
    "RunSummary": "run",
    "Task": "run",
    "tasks_for_path": "run",
    "tasks_from_jobs": "run",
    "tasks_from_jobs_file": "run",
    "discover": "inputs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
