"""`gres eval` (to be written). Import torch inside the command, never at module level."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's command to the top-level app."""
