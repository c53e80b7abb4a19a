"""`gres grd convert`: GRD <-> coco, hf, cosod (and d3, refcoco read-only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gres_cli.cli.common import err_console, user_errors
from gres_cli.cli.grd import app


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Source dataset (file or folder). Never modified.")],
    dst: Annotated[Path, typer.Argument(help="Output folder, written atomically.")],
    to: Annotated[str, typer.Option(help="Output format: grd, coco, hf or cosod.")] = "grd",
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Source format (grd, coco, hf, cosod, d3, refcoco); "
            "detected from the layout when left out.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing DST.")] = False,
    expression: Annotated[
        str | None, typer.Option(help="cosod: the expression text (default: the group name).")
    ] = None,
    inter_group: Annotated[bool, typer.Option(help="d3: inter-group expressions.")] = False,
    group_by: Annotated[str, typer.Option(help="refcoco: group by image or category.")] = "image",
    refs: Annotated[str | None, typer.Option(help="refcoco: which refs file to read.")] = None,
) -> None:
    """Convert a dataset between GRD and another format, through the GRD layout.

    Formats: **coco** (instances JSON, RLE masks, plus a `refs` list), **hf** (a `datasets`
    folder), **cosod** (`Image/<group>/`, `GroundTruth/<group>/`). GRES here is *group-wise*
    RES, not the generalized RES of gRefCOCO. See docs/formats.md.

    Example: `gres grd convert my-grd my-coco --to coco`
    """
    import contextlib

    from grd_tools.convert import convert as run

    # a spinner on stderr while the work runs; silent when stderr is not a terminal
    status = err_console.status(f"converting {src} -> {dst} ({to})")
    with user_errors(), status if err_console.is_terminal else contextlib.nullcontext():
        out = run(
            src,
            dst,
            to=to,
            from_=from_,
            overwrite=overwrite,
            expression=expression,
            inter_group=inter_group,
            group_by=group_by,
            refs=refs,
        )
    typer.echo(str(out))
