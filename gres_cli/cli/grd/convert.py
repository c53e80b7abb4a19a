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
    inter_group: Annotated[
        bool,
        typer.Option(
            help="d3: ask every sentence of the dataset in every group (D³'s inter-group "
            "setting) instead of each group's own sentences."
        ),
    ] = False,
    group_by: Annotated[
        str,
        typer.Option(
            help="refcoco: one group per **image** (single-image RES as is) or per **category** "
            "(chunks of --group-size images sharing a COCO category)."
        ),
    ] = "image",
    group_size: Annotated[
        int, typer.Option(min=1, help="refcoco with --group-by category: images per group.")
    ] = 10,
    refs: Annotated[
        str | None,
        typer.Option(
            help="refcoco: the refs file inside SRC, e.g. 'refs(google).p' "
            "(needed when SRC holds several)."
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="refcoco: folder of the COCO train2014 images (default SRC/images)."),
    ] = None,
) -> None:
    """Convert a dataset between GRD and another format, through the GRD layout.

    Formats: **coco** (instances JSON, RLE masks, plus a `refs` list), **hf** (a `datasets`
    folder), **cosod** (`Image/<group>/`, `GroundTruth/<group>/`); read only: **d3** (the D³
    release: `d3_images/` + `d3_pkl/`) and **refcoco** (RefCOCO/+/g or gRefCOCO: `instances.json`
    + a refs file). GRES here is *group-wise* RES, not the generalized RES of gRefCOCO.
    See docs/formats.md.

    Examples: `gres grd convert my-grd my-coco --to coco`;
    `gres grd convert d3/ d3-grd --from d3`;
    `gres grd convert refcoco/ refcoco-grd --from refcoco --images coco/train2014`
    """
    import contextlib

    from rich.markup import escape

    from grd_tools.convert import convert as run

    # a spinner on stderr while the work runs, counting the masks a release's reader writes
    # (most of its time); silent when stderr is not a terminal
    what = escape(f"converting {src} -> {dst} ({to})")
    status = err_console.status(what)

    def masks_written(done: int, total: int) -> None:
        status.update(f"{what}: {done:,} of {total:,} masks")

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
            group_size=group_size,
            refs=refs,
            images=images,
            progress=masks_written,
        )
    typer.echo(str(out))
