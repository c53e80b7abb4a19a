"""`gres grd synth`: generate a procedural GRD dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gres_cli.cli.common import err_console, fail, user_errors
from gres_cli.cli.grd import app


@app.command()
def synth(
    dst: Annotated[Path, typer.Argument(help="Folder to create (refused if it exists).")],
    groups: Annotated[int, typer.Option(help="Number of groups.")] = 20,
    images_per_group: Annotated[int, typer.Option(help="Images in each group.")] = 8,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 96,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    expressions: Annotated[int, typer.Option(help="Expressions per group.")] = 3,
    positive_rate: Annotated[
        float, typer.Option(help="Chance that an expression's target is in an image.")
    ] = 0.5,
    ratios: Annotated[
        str, typer.Option(help="train,val,test shares of the groups.")
    ] = "0.8,0.1,0.1",
    overwrite: Annotated[bool, typer.Option(help="Replace DST if it exists.")] = False,
) -> None:
    """Generate a synthetic GRD dataset: coloured shapes on themed backgrounds.

    Expressions need colour AND shape AND (size OR position) to resolve ("the small red
    circle", "the blue square on the left"); negatives hold distractors sharing two of the
    three attributes. Every expression is annotated on every image of its group.

    Example: `gres grd synth data/synth --groups 200 --images-per-group 8 --size 96 --seed 0`
    """
    try:
        shares = tuple(float(x) for x in ratios.split(","))
    except ValueError:
        fail(f"--ratios {ratios!r}: expected three numbers like 0.8,0.1,0.1")
    from rich.progress import Progress

    from grd_tools.synth import generate

    with user_errors(), Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("generating", total=groups * images_per_group)
        generate(
            dst,
            groups=groups,
            images_per_group=images_per_group,
            size=size,
            seed=seed,
            expressions_per_group=expressions,
            positive_rate=positive_rate,
            ratios=shares,  # type: ignore[arg-type]
            overwrite=overwrite,
            progress=lambda n: bar.advance(task, n),
        )
    err_console.print(escape(f"wrote {groups} groups x {images_per_group} images to {dst}"))
