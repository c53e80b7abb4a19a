"""`gres view`: a static report site for a segment run, an eval report, or a GRD dataset.
No torch is imported: the site is built from the files those commands wrote."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from gres_cli.cli.common import EXIT_FAULTS, EXIT_OK, err_console, user_errors


def view(
    path: Annotated[
        Path,
        typer.Argument(
            help="A gres segment --out folder (or its JSONL), a gres eval --report file, "
            "or a GRD dataset folder."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Site folder (default: PATH-view beside PATH). Replaced only when empty or an "
            "earlier gres view site."
        ),
    ] = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the page in the default web browser.")
    ] = False,
) -> None:
    """Write a self-contained report site (index.html, thumbnails) that opens from file://
    with no server and no network.

    A run: per group, thumbnails with the mask on the photo, the verdict and the score against
    the margin; sort, filter, search, click for the full-size overlay; review it (flip
    answers, reject masks, by keyboard or mouse) and download corrections.json for
    `gres grd from-run --corrections`. A report: metrics,
    plots, per-group figures, galleries of false positives, misses and worst IoUs. A dataset:
    every expression's ground truth on every image, with `grd validate`'s findings.

    Example: `gres view gres-out --open`
    """
    from gres_cli.view import build_site

    with user_errors():
        summary = build_site(path, out)
    _tell(summary)
    if open_browser:
        open_in_browser(summary.out / "index.html")


@contextlib.contextmanager
def site_after_run(out: Path | None) -> Iterator[None]:
    """`gres segment --view`: once the run in the block ends (all images done, or some
    failed), build the site of its --out folder `out` (None: no site)."""
    try:
        yield
    except typer.Exit as e:
        if out is not None and e.exit_code in (EXIT_OK, EXIT_FAULTS):
            if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
                # each process ends on its own: none knows when the whole run is done
                err_console.print(f"--view: once every process has finished, run gres view {out}")
                raise
            from gres_cli.view import build_site

            with user_errors():
                _tell(build_site(out))
        raise


def check_site_after_run(out: Path) -> None:
    """`gres segment --view`: refuse, before any work, a site folder (OUT-view) that cannot
    take the site (a file, or a folder that is not a gres site)."""
    from gres_cli.view import default_out
    from gres_cli.view.site import check_site_folder

    with user_errors():
        check_site_folder(default_out(out), out)


def site_of_evaluation(result: dict[str, Any], report: Path | None, plots: Path | None) -> None:
    """`gres eval --view`: the site of the evaluation just made, beside --report (REPORT-view)
    or, without --report, in ./gres-eval-view; `plots` the --plots folder to show."""
    from gres_cli.view import default_out, view_evaluation

    out = default_out(report) if report is not None else Path("gres-eval-view")
    with user_errors():
        _tell(view_evaluation(result, out, report, plots))


def _tell(summary: Any) -> None:
    err_console.print(
        f"{summary.kind} view: {summary.out / 'index.html'} ({summary.items} pictures: "
        f"{summary.drawn} drawn, {summary.reused} reused, {summary.failed} failed; "
        f"{summary.seconds:.1f} s)",
        soft_wrap=True,
    )
    if summary.missing:
        err_console.print(
            f"[yellow]warning:[/] {summary.missing} items have no picture (photo or mask not "
            "found); records name photos as gres segment was given them: run gres view from "
            "the folder it ran in",
            soft_wrap=True,
        )


def open_in_browser(page: Path) -> None:
    """Open `page` with Python's webbrowser; without a browser, say where the page is.

    On Linux without a display (a server, a container) webbrowser would start a text browser
    such as lynx inside this terminal, so there it is not asked unless $BROWSER names one."""
    import webbrowser

    headless = sys.platform.startswith("linux") and not any(
        os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")
    )
    try:
        opened = not headless and webbrowser.open(page.absolute().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        err_console.print(f"no web browser found: open {page} yourself")


def register(app: typer.Typer) -> None:
    """Add `gres view` to the top-level app."""
    app.command("view")(view)
