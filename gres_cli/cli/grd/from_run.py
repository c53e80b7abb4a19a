"""`gres grd from-run`: a GRD dataset from `gres segment` runs (the model's answers as labels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from gres_cli.cli.common import user_errors
from gres_cli.cli.grd import app
from gres_cli.cli.grd.validate import file_progress


@app.command("from-run")
def from_run(
    runs: Annotated[
        list[Path],
        typer.Argument(help="`gres segment --out` folders (never modified).", metavar="RUN"),
    ],
    dst: Annotated[Path, typer.Argument(help="The dataset folder to write.", metavar="DST")],
    corrections: Annotated[
        list[Path] | None,
        typer.Option(
            help="A corrections.json of one of the runs (the review page of `gres view` "
            "downloads it); repeat for several.",
        ),
    ] = None,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            help="Leave out the pairs nobody corrected whose |d_neg - (d_pos + m)| (distance "
            "from the model's decision, from each record's d_pos, d_neg and margin m) is below "
            "this.",
        ),
    ] = None,
    copy: Annotated[
        bool, typer.Option(help="Copy the images instead of hard-linking them.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace DST if it exists.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Turn `gres segment` runs into a GRD dataset to train on (pseudo-labels).

    Each answered (image, expression) pair becomes a target: the run's mask where the model
    said present, absent elsewhere; failed images are skipped. Groups are the runs' groups;
    runs over the same images (or one `--jobs` run) give a group several expressions.
    A person's corrections apply: "absent" makes the target absent; "rejected" leaves the pair
    out; "present" on a pair the model called absent leaves it out too (there is no mask to
    train on). Each is counted. Provenance (each run's settings and id, which pairs a person
    corrected, each pair's confidence) is kept in grd.json's `meta`.

    Images are hard-linked (copied across filesystems, or always with --copy); masks are
    written as 0/255 PNGs. DST is written atomically; the runs are never modified.

    Example: `gres grd from-run runs/photos labelled --corrections corrections.json`, then
    `gres grd split labelled --out labelled-split` and `gres train labelled-split --out student`.
    """
    from grd_tools.from_run import from_runs

    with user_errors(), file_progress("writing masks", enabled=not json_output) as update:
        summary = from_runs(
            runs,
            dst,
            corrections=corrections or [],
            min_confidence=min_confidence,
            copy=copy,
            overwrite=overwrite,
            progress=update,
        )
    if json_output:
        print(json.dumps(summary, indent=1))
    else:
        _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    out = Console(highlight=False, soft_wrap=True)
    out.print(
        escape(
            f"{summary['out']}: {summary['groups']} groups, {summary['images']} images, "
            f"{summary['expressions']} expressions, {summary['pairs']} pairs "
            f"({summary['present']} present, {summary['absent']} absent; "
            f"{summary['corrected']} corrected by a person)"
        )
    )
    left = [f"{n} {why}" for why, n in summary["left_out"].items() if n]
    if summary["failed_images"]:
        left.append(f"{summary['failed_images']} failed images")
    out.print(escape("left out: " + ("; ".join(left) if left else "nothing")))
    fixes = summary["corrections"]
    if fixes["files"]:
        unmatched = fixes["entries"] - fixes["applied"]
        out.print(
            escape(
                f"corrections: {fixes['applied']} of {fixes['entries']} applied"
                + (f" ({unmatched} name no answer of the runs)" if unmatched else "")
            )
        )
    out.print(
        escape(f"images: {summary['images_linked']} hard-linked, {summary['images_copied']} copied")
    )
