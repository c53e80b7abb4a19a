"""Exceptions of the dataset toolkit. Each carries a one-line, user-facing message."""

from __future__ import annotations


class GRDError(Exception):
    """A fault in a dataset or a request, reported to the user as one line (never a traceback)."""


class SchemaError(GRDError):
    """`grd.json` breaks the schema; `json_path` names the faulty node (`$.groups[0].id`)."""

    def __init__(self, message: str, json_path: str = "$") -> None:
        super().__init__(f"{json_path}: {message}")
        self.json_path = json_path
        self.reason = message


class UnsafePathError(GRDError):
    """A dataset path that is absolute, climbs out with `..`, or is a symlink out of the root."""
