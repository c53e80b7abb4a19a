"""`gres grd validate`: check a GRD dataset and report every fault (rich table or `--json`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gres_cli.cli.common import EXIT_FAULTS, EXIT_OK, err_console, user_errors
from gres_cli.cli.grd import app

if TYPE_CHECKING:  # grd_tools.validate is imported inside the command
    from grd_tools.validate import Report

#: a human report lists at most this many issues; `--json` always lists all of them
SHOWN_ISSUES = 200


@contextlib.contextmanager
def file_progress(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr, driven by `update(done, total)`; silent when disabled or
    when stderr is not a terminal, so scripts and logs stay clean."""
    if not enabled or not err_console.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command()
def validate(
    dataset: Annotated[Path, typer.Argument(help="GRD dataset folder (holds grd.json).")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout.")
    ] = False,
    strict: Annotated[bool, typer.Option(help="Warnings fail too (exit 1).")] = False,
    pixels: Annotated[
        bool,
        typer.Option(
            help="Decode masks to check 0/255 values and empty masks. --no-pixels reads "
            "headers only (sizes, readability)."
        ),
    ] = True,
    decode_images: Annotated[
        bool, typer.Option(help="Fully decode every image (also catches truncated files; slow).")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Worker processes for large datasets (default: one per CPU core)."
        ),
    ] = None,
) -> None:
    """Check a GRD dataset: schema, ids, files, sizes, masks, completeness, paths, splits.

    GRD's rule: every expression names EVERY image of its group in `targets` (a mask path when the
    target is present, null when absent). Also checked: missing or unreadable files, image sizes
    against grd.json, masks the size of their image and 0/255, no empty mask marked present, no
    path leaving the dataset, no group or image in two splits. Images are read from their headers
    only. Each issue has a stable code (see docs/grd-tools.md).

    Exit 0 when clean, 1 when errors were found (warnings too with --strict), 2 when DATASET
    cannot be read. The dataset is never modified.
    """
    from grd_tools.validate import validate as run_validate

    with user_errors(), file_progress("checking files", enabled=not json_output) as update:
        report = run_validate(
            dataset,
            check_pixels=pixels,
            decode_images=decode_images,
            workers=workers,
            progress=update,
        )
    if json_output:
        print(json.dumps(report.to_dict(strict), indent=1))
    else:
        _print_report(report, strict)
    raise typer.Exit(EXIT_OK if report.ok(strict) else EXIT_FAULTS)


def _print_report(report: Report, strict: bool) -> None:
    from grd_tools.validate import summarize

    out = Console(highlight=False)
    checked = f"{report.groups} groups, {report.images} images, {report.masks} masks" + (
        "" if report.pixels_checked else " (headers only)"
    )
    if report.issues:
        table = Table(show_header=True, header_style="bold", expand=False)
        table.add_column("severity")
        table.add_column("code")
        table.add_column("where", overflow="fold")
        table.add_column("problem", overflow="fold")
        for issue in report.issues[:SHOWN_ISSUES]:
            style = "red" if issue.severity == "error" else "yellow"
            table.add_row(
                f"[{style}]{issue.severity}[/]",
                issue.code,
                escape(issue.where),
                escape(issue.message),
            )
        out.print(table)
        if len(report.issues) > SHOWN_ISSUES:
            out.print(f"... and {len(report.issues) - SHOWN_ISSUES} more (use --json for all)")
        by_code = ", ".join(f"{code} x{n}" for code, n in summarize(report.issues).items())
        out.print(f"by code: {by_code}")
    n_err, n_warn = len(report.errors), len(report.warnings)
    if report.ok(strict):
        verdict = "[green]valid[/]" + (f" ({n_warn} warnings)" if n_warn else "")
    else:
        verdict = f"[red]invalid[/]: {n_err} errors, {n_warn} warnings" + (
            " (--strict: warnings fail)" if strict and not n_err else ""
        )
    out.print(f"{escape(str(report.root))}: {verdict}; checked {checked}")
