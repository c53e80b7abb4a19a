"""`gres segment`: from a folder of photos to masks and JSON lines. The CLI parses options and
calls the engine (gres_cli.inference); torch is imported inside the command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gres_cli.cli import options
from gres_cli.cli.common import (
    EXIT_FAULTS,
    ProgressBar,
    err_console,
    fail,
    user_errors,
    user_errors_types,
    writable_folder,
)


def segment(
    path: Annotated[
        str | None,
        typer.Argument(
            help="An image, a folder (one group), or - for paths on stdin.",
            metavar="PATH",
            show_default=False,
        ),
    ] = None,
    expression: Annotated[
        str | None,
        typer.Argument(
            help='What to find, e.g. "the red umbrella".', metavar="EXPRESSION", show_default=False
        ),
    ] = None,
    jobs: Annotated[
        str | None,
        typer.Option(
            help='Many jobs in one process instead of PATH EXPRESSION: JSON lines {"path": ..., '
            '"expression": ...} in FILE, or - for stdin. Masks go to OUT/GROUP/EXPRESSION/.',
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Hub repo id or local folder: a GRSer, an open-vocabulary backend (CLIPSeg, "
            "...), or a gres-backend settings folder. Default: CIDAS/clipseg-rd64-refined.",
            envvar="GRES_MODEL",
        ),
    ] = None,
    revision: options.Revision = None,
    margin: options.Margin = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for masks, overlays, records.jsonl and settings.json; never an input's."
        ),
    ] = Path("gres-out"),
    fmt: Annotated[
        str, typer.Option("--format", help="Masks as png, npy, rle (in JSONL) or none.")
    ] = "png",
    overlay: Annotated[
        bool, typer.Option(help="Also write the photo with the mask tinted.")
    ] = False,
    jsonl: Annotated[
        str | None, typer.Option(help="Write JSON lines to FILE or - (default: stdout when piped).")
    ] = None,
    experts: Annotated[int | None, typer.Option(help="K experts from the whole folder.")] = None,
    device: options.Device = "auto",
    precision: Annotated[str, typer.Option(help="fp32, or bf16/fp16 autocast on CUDA.")] = "fp32",
    batch_size: options.BatchSize = 16,
    workers: options.Workers = 0,
    recursive: Annotated[bool, typer.Option(help="Each sub-folder is a group of its own.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Redo images finished by an earlier run.")
    ] = False,
    threshold: Annotated[float, typer.Option(help="Mask probability cut.")] = 0.5,
    shard: Annotated[
        str | None, typer.Option(help="i/P: process only the i-th of P shares of the groups.")
    ] = None,
    no_group: options.NoGroup = False,
    view: Annotated[
        bool, typer.Option(help="At the end, write a report site (gres view) in OUT-view.")
    ] = False,
    ray: options.Ray = False,
    ray_address: options.RayAddress = None,
    ray_actors: options.RayActors = None,
    ray_gpus_per_actor: options.RayGpusPerActor = None,
    ray_cpus_per_actor: options.RayCpusPerActor = None,
) -> None:
    """Segment EXPRESSION in every image of PATH; say "absent" where it is not there.

    GRES here is GROUP-wise referring segmentation (Wu et al., ICCV 2023): the images of a
    folder are compared with one another to find the target. One JSON record per image goes to
    stdout when piped (or --jsonl); masks are written at each image's original size under
    --out. A re-run skips finished images (--overwrite redoes them); a re-run with other
    settings (model, margin, threshold, format, experts) is refused.

    Exit codes: 0 all images processed, 1 some images failed, 2 usage error.

    The default model is CIDAS/clipseg-rd64-refined (an open-vocabulary backend; the Hub is
    needed once to cache it) with gres's group-wise decision on top; --no-group shows the
    backend alone. Offline: --model examples/demo-model (the demo knows coloured shapes only).

    Example: `gres segment ./photos "the red umbrella" --jsonl umbrella.jsonl`

    On a Ray cluster: `gres segment ./photos "the red umbrella" --ray --ray-address auto`
    (the batch size per model call is --batch-size; docs/cluster.md).

    Many jobs, one start-up: `gres segment --jobs jobs.jsonl`, a line per job such as
    {"path": "photos", "expression": "the red umbrella"} (path: an image, a folder or a glob,
    relative to the jobs file's folder; optional "group"). A bad line gets an error record and
    the other jobs run (exit 1).
    """
    from gres_cli.inference.engine import EngineOptions, check_cuts
    from gres_cli.inference.inputs import parse_shard
    from gres_cli.inference.run import JsonlSink, RunFolder, check_jsonl, read_tasks
    from gres_cli.inference.writers import FORMATS

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if jobs is not None and (path is not None or expression is not None):
        fail("--jobs replaces PATH and EXPRESSION: give one or the other")
    if jobs is None and (path is None or expression is None):
        fail("give PATH and EXPRESSION, or --jobs FILE (see gres segment --help)")
    with user_errors():
        check_cuts(margin, threshold)  # before OUT is made
    if ray and shard is not None:
        fail("--shard splits a run by hand; --ray schedules the groups itself: give one")
    pool = options.ray_pool(ray, ray_address, ray_actors, ray_gpus_per_actor, ray_cpus_per_actor)
    with user_errors():
        shards = parse_shard(shard)
        tasks, failed_lines = read_tasks(path, expression, jobs, recursive, shards, sys.stdin)
        run = RunFolder(out, fmt, overlay, shard=shards)
        run.check_inputs(tasks)  # before OUT is made
    writable_folder(out, "--out")
    if jsonl not in (None, "-"):
        with user_errors():
            check_jsonl(Path(jsonl), out, tasks)
        writable_folder(Path(jsonl).parent, "--jsonl")
    if view:
        from gres_cli.cli.view import check_site_after_run

        check_site_after_run(out)
    with user_errors():
        run.acquire()  # one owner at a time: a second run is refused before it loads a model

    engine = EngineOptions(device, precision, batch_size, workers, experts, margin, threshold)
    try:
        with user_errors():
            segment_tasks = run.start(
                model, revision, not no_group, engine, pool,
                overwrite=overwrite, jobs_layout=jobs is not None,
            )  # fmt: skip
            run.check_clash(tasks)
            sink = JsonlSink.of(jsonl, overwrite and shards[1] == 1, sys.stdout)
        from gres_cli.cli.view import site_after_run

        with site_after_run(out if view else None):
            lines = {t.line.line for t in tasks if t.line is not None}
            lines |= {j.line for j in failed_lines}
            title = f'"{expression}"' if jobs is None else f"{len(lines)} jobs"
            _segment(segment_tasks, tasks, failed_lines, title, sink)
    finally:
        run.close()


def _segment(runner: Any, tasks: list, failed_lines: list, title: str, sink: Any) -> None:
    """Run, stream the records to `sink`, print the summary; exit with the run's status."""
    from gres_cli.inference.run import OutputError

    def emit(record: dict) -> None:
        if sink is not None:
            sink.write(json.dumps(record) + "\n")
            sink.flush()

    bar = ProgressBar("segment", failed="job failed")
    try:
        with bar:
            summary = runner(tasks, failed_lines, emit=emit, progress=bar)
    except KeyboardInterrupt:
        err_console.print(
            "interrupted: finished images are saved; run the same command again to resume"
        )
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise  # the reader of stdout went away (`| head`): click stops quietly
    except OutputError as e:  # disk full, a file where a folder goes, a symlink out of OUT
        fail(
            f"cannot write outputs ({e}); finished images are saved: fix it and run the same "
            "command again to resume",
            EXIT_FAULTS,
        )
    except user_errors_types() as e:
        fail(str(e))
    finally:
        if sink is not None and sink is not sys.stdout:
            sink.close()
    if err_console.is_terminal or sink is not sys.stdout:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(title), show_header=False)
        for k, v in summary.counts.items():
            table.add_row(k, str(v))
        rate = summary.processed / max(summary.seconds, 1e-9)
        table.add_row("time", f"{summary.seconds:.1f} s ({rate:.1f} images/s)")
        table.add_row("outputs", escape(str(summary.out)))
        err_console.print(table)
    raise typer.Exit(summary.exit_code)


def register(app: typer.Typer) -> None:
    """Add `gres segment` to the top-level app."""
    app.command("segment")(segment)
