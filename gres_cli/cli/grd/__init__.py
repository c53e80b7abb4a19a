"""`gres grd ...`: the dataset toolkit (grd_tools) on the command line. Never imports torch."""

from __future__ import annotations

import typer

app = typer.Typer(
    help=(
        "Work with GRD (Group Referring Dataset) folders: validate, split, convert, stats, "
        "synth, pull, push, from-run."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

# Each module registers its commands on `app`.
from gres_cli.cli.grd import (  # noqa: E402, F401
    convert,
    from_run,
    hub,
    split,
    stats,
    synth,
    validate,
)
