"""`gres view`: a static report site for a segment run, an eval report, or a GRD dataset.
No torch is imported: the site is built from the files those commands wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gres_cli.cli.common import err_console, user_errors


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
    the margin; sort, filter, search, click for the full-size overlay. A report: metrics,
    plots, per-group figures, galleries of false positives, misses and worst IoUs. A dataset:
    every expression's ground truth on every image, with `grd validate`'s findings.

    Example: `gres view gres-out --open`
    """
    with user_errors():
        summary = show(path, out, open_browser)
    err_console.print(
        f"{summary.kind} view: {summary.out / 'index.html'} ({summary.items} pictures: "
        f"{summary.drawn} drawn, {summary.reused} reused, {summary.failed} failed; "
        f"{summary.seconds:.1f} s)",
        soft_wrap=True,
    )


def show(path: Path, out: Path | None, open_browser: bool, plots: Path | None = None):
    """Build the site of `path` (see gres_cli.view.build_site) and open it when asked."""
    from gres_cli.view import build_site

    summary = build_site(path, out, plots)
    if open_browser:
        open_in_browser(summary.out / "index.html")
    return summary


def open_in_browser(page: Path) -> None:
    """Open `page` with Python's webbrowser; without a browser, say where the page is."""
    import webbrowser

    try:
        opened = webbrowser.open(page.absolute().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        err_console.print(f"no web browser found: open {page} yourself")


def register(app: typer.Typer) -> None:
    """Add `gres view` to the top-level app."""
    app.command("view")(view)
