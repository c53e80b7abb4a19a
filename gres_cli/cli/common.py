"""What every command shares: the stderr console, one-line errors, exit codes.

Exit codes: 0 success, 1 the work ran but found faults (failed images, validation errors),
2 a usage error (bad arguments, unreadable input) reported before any work.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

err_console = Console(stderr=True, highlight=False)

EXIT_OK = 0
EXIT_FAULTS = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print `gres: error: <message>` on stderr (one line, `message` printed literally: a path
    holding `[draft]` is no markup) and exit with `code`."""
    err_console.print(f"[bold red]gres: error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def user_errors_types() -> tuple[type[BaseException], ...]:
    """The exception types that are the user's input faults, reported as one line."""
    from grd_tools.errors import GRDError

    types: list[type[BaseException]] = [GRDError]
    errors_mod = sys.modules.get("gres_cli.errors")
    if errors_mod is not None:
        types.append(errors_mod.GresError)
    return tuple(types)


def writable_folder(folder: Path, option: str) -> None:
    """Fail in one line, before any work, when `folder` cannot be created or written to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".gres-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        fail(f"{option} {folder}: not writable ({e.strerror})")


def refuse_sources(out: Path, out_name: str, sources: dict[str, str | Path | None]) -> None:
    """Fail in one line, before any work, when the output folder `out` is, holds or lies
    inside one of `sources` (option name -> value) that is a local path: writing it would
    modify an input and replacing it would delete one. A value that is no local path (a Hub
    id, None) is skipped."""
    from grd_tools.fsutil import refuse_overlap

    for name, source in sources.items():
        if source is not None and Path(source).exists():
            with user_errors():
                refuse_overlap(source, out, out_name, name)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a GRDError/GresError raised inside the block into a one-line message and exit 2."""
    try:
        yield
    except user_errors_types() as e:
        fail(str(e))


class ProgressBar:
    """A long job's progress as a rich bar on stderr (drawn in a terminal only), and its
    failures as lines: what a run (gres_cli.inference.run.Progress) tells a front end."""

    def __init__(self, label: str, failed: str = "failed") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.failed = failed
        self.bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            console=err_console,
            disable=not err_console.is_terminal,
        )
        self.label = label
        self.task: Any = None  # added at start(): a bar that never starts draws nothing

    def __enter__(self) -> ProgressBar:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def start(self, total: int) -> None:
        self.task = self.bar.add_task(self.label, total=total, status="")

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)

    def job_failed(self, message: str) -> None:
        err_console.print(f"gres: {self.failed}: {message}", markup=False, soft_wrap=True)

    def status(self, text: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, status=text)
