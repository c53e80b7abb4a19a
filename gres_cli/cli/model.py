"""`gres model info|pull|push` (to be written)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect, download and publish GRSer models.", no_args_is_help=True)
