"""`gres grd stats`: sizes, positive/negative pairs and mask areas of a GRD dataset, per split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gres_cli.cli.common import user_errors
from gres_cli.cli.grd import app
from gres_cli.cli.grd.validate import file_progress

ROWS = ("groups", "images", "expressions", "pairs", "positive", "negative", "negative_share")


@app.command()
def stats(
    dataset: Annotated[Path, typer.Argument(help="GRD dataset folder (holds grd.json).")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the stats as JSON on stdout.")
    ] = False,
    areas: Annotated[
        bool, typer.Option(help="Read every mask to report its area (--no-areas: counts only).")
    ] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Worker processes for large datasets (default: one per CPU core)."
        ),
    ] = None,
) -> None:
    """Count groups, images, expressions and (expression, image) pairs, overall and per split.

    A pair is positive when the expression's target is in the image (a mask) and negative when it
    is absent (null): GRES (group-wise RES) models must say "absent" for negatives. Also shown:
    images and expressions per group (min/mean/max) and the area of present masks as a fraction of
    their image (quantiles). The manifest must pass the schema (see `gres grd validate`).
    """
    from grd_tools.stats import load_stats

    with user_errors(), file_progress("reading masks", enabled=not json_output) as update:
        result = load_stats(dataset, areas=areas, workers=workers, progress=update)
    if json_output:
        print(json.dumps(result, indent=1))
    else:
        _print_table(result)


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.1f}%"
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _print_table(result: dict[str, Any]) -> None:
    splits = result["splits"]
    table = Table(title=escape(f"{result['name'] or result['dataset']}"), title_justify="left")
    table.add_column("")
    for name in splits:
        table.add_column(escape(name), justify="right")
    for row in ROWS:
        label = row.replace("_", " ")
        table.add_row(
            label, *(_fmt(s[row], percent=row.endswith("share")) for s in splits.values())
        )
    for row in ("images_per_group", "expressions_per_group"):
        cells = [
            "-" if s[row] is None else f"{s[row]['min']} / {s[row]['mean']:g} / {s[row]['max']}"
            for s in splits.values()
        ]
        table.add_row(row.replace("_", " ") + " (min/mean/max)", *cells)
    if any(s["mask_area"] for s in splits.values()):
        for key in ("min", "q05", "q25", "median", "q75", "q95", "max", "mean"):
            cells = [
                _fmt(s["mask_area"][key] if s["mask_area"] else None, percent=True)
                for s in splits.values()
            ]
            table.add_row(f"mask area {key}", *cells)
    Console(highlight=False).print(table)
