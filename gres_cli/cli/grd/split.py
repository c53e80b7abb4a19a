"""`gres grd split`: write a group-aware train/val/test split of a GRD dataset as a new folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gres_cli.cli.common import user_errors
from gres_cli.cli.grd import app


@app.command()
def split(
    dataset: Annotated[Path, typer.Argument(help="GRD dataset folder (holds grd.json).")],
    out: Annotated[
        Path, typer.Option(help="New dataset folder to write (grd.json + linked files).")
    ],
    ratios: Annotated[
        str, typer.Option(help="train,val,test shares of the pairs (or train,test); sum 1.")
    ] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the shuffle; same seed, same split.")] = 0,
    copy_files: Annotated[
        bool, typer.Option(help="Copy images and masks instead of hard-linking them.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Assign every group to train/val/test and write the result as a new dataset folder.

    Group-aware: a group, and every group sharing an image with it, lands in exactly one split.
    Ratios are shares of (expression, image) pairs, and each split keeps about the dataset's
    share of negative pairs (target absent). Deterministic for a given --seed.

    DATASET is never modified: --out gets a grd.json with the new splits and the same relative
    paths, its images and masks hard-linked to DATASET's (no extra disk space), or copied with
    --copy-files (needed when --out is on another filesystem).
    """
    from grd_tools.split import parse_ratios, split_dataset

    with user_errors():
        summary = split_dataset(
            dataset,
            out,
            parse_ratios(ratios),
            seed=seed,
            copy_files=copy_files,
            overwrite=overwrite,
        )
    if json_output:
        print(json.dumps(summary, indent=1))
        return
    table = Table(title=escape(f"{summary['out']} (seed {seed})"), title_justify="left")
    for column in ("split", "groups", "images", "pairs", "negative share"):
        table.add_column(column, justify="left" if column == "split" else "right")
    total_pairs = sum(row["pairs"] for row in summary["splits"].values()) or 1
    for name, row in summary["splits"].items():
        share = "-" if row["negative_share"] is None else f"{100 * row['negative_share']:.1f}%"
        pairs = f"{row['pairs']:,} ({100 * row['pairs'] / total_pairs:.1f}%)"
        table.add_row(name, str(row["groups"]), f"{row['images']:,}", pairs, share)
    console = Console(highlight=False)
    console.print(table)
    files = f"{summary['files']:,} files {summary['files_mode']} from {summary['dataset']}"
    console.print(escape(files))
