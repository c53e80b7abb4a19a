"""`gres segment`: from a folder of photos to masks and JSON lines. The CLI parses options and
calls the engine (gres_cli.inference); torch is imported inside the command."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from gres_cli.cli.common import (
    EXIT_FAULTS,
    EXIT_OK,
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
    revision: Annotated[str | None, typer.Option(help="Hub revision to pin.")] = None,
    margin: Annotated[
        float | None, typer.Option(help="m in d_pos + m < d_neg; larger = fewer, surer positives.")
    ] = None,
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
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, or bf16/fp16 autocast on CUDA.")] = "fp32",
    batch_size: Annotated[int, typer.Option(help="Images per model batch.")] = 16,
    workers: Annotated[
        int,
        typer.Option(
            help="Image-decoding worker processes, started once per run. Worth it beside a GPU; "
            "on a CPU the model already keeps every core busy."
        ),
    ] = 0,
    recursive: Annotated[bool, typer.Option(help="Each sub-folder is a group of its own.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Redo images finished by an earlier run.")
    ] = False,
    threshold: Annotated[float, typer.Option(help="Mask probability cut.")] = 0.5,
    shard: Annotated[
        str | None, typer.Option(help="i/P: process only the i-th of P shares of the groups.")
    ] = None,
    no_group: Annotated[
        bool,
        typer.Option(
            "--no-group",
            help="Turn the group-wise step off: each image alone (a backend's own answers), "
            "for comparison.",
        ),
    ] = False,
    view: Annotated[
        bool, typer.Option(help="At the end, write a report site (gres view) in OUT-view.")
    ] = False,
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

    Many jobs, one start-up: `gres segment --jobs jobs.jsonl`, a line per job such as
    {"path": "photos", "expression": "the red umbrella"} (path: an image, a folder or a glob,
    relative to the jobs file's folder; optional "group"). A bad line gets an error record and
    the other jobs run (exit 1).
    """
    from gres_cli.inference.inputs import check_out, discover, parse_shard
    from gres_cli.inference.writers import FORMATS

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if jobs is not None and (path is not None or expression is not None):
        fail("--jobs replaces PATH and EXPRESSION: give one or the other")
    if jobs is None and (path is None or expression is None):
        fail("give PATH and EXPRESSION, or --jobs FILE (see gres segment --help)")
    if expression is not None and not expression.strip():
        fail("EXPRESSION is empty")
    with user_errors():
        shard_i, shard_p = parse_shard(shard)
        if jobs is not None:
            units, failed_jobs = _read_jobs(jobs, recursive, shard_i, shard_p)
            for unit in units:
                check_out(out, unit.source, [unit.group])
        else:
            stdin = sys.stdin if path == "-" else None
            groups = discover(path, recursive, stdin)
            groups = [g for k, g in enumerate(groups) if k % shard_p == shard_i]
            check_out(out, path, groups)
            units, failed_jobs = [Unit(g, expression, path) for g in groups], []
    writable_folder(out, "--out")
    if jsonl not in (None, "-"):
        if Path(jsonl).is_dir():
            fail(f"--jsonl {jsonl}: is a folder; give a file name such as out.jsonl")
        writable_folder(Path(jsonl).parent, "--jsonl")
    if margin is not None and margin != margin:
        fail("--margin must be a number")

    from gres_cli.backends import DEFAULT_MODEL, load_default_model, load_model
    from gres_cli.inference.engine import Segmenter
    from gres_cli.inference.writers import OutputWriter, run_settings

    with user_errors():
        if model is None:
            net = load_default_model(revision, group=not no_group)
        else:
            net = load_model(model, revision, group=not no_group)
        engine = Segmenter(net, device, precision, batch_size, workers, experts, margin, threshold)
        settings = run_settings(
            model or DEFAULT_MODEL, revision, engine, fmt, overlay, group=not no_group
        )
        if jobs is not None:
            from gres_cli.inference.jobs import LAYOUT

            settings["layout"] = LAYOUT
        writer = OutputWriter(out, fmt, overlay)
        try:
            writer.claim(settings, overwrite)
            if jobs is None:
                writer.refuse_clash({str(p) for g in groups for p in g.images}, expression)
        except BaseException:
            writer.close()
            raise
    sink = None
    if jsonl == "-" or (jsonl is None and not sys.stdout.isatty()):
        sink = sys.stdout
    elif jsonl is not None:
        sink = JsonlFile(Path(jsonl), rewrite=overwrite and shard_p == 1)
    from gres_cli.cli.view import site_after_run

    with site_after_run(out if view else None):
        lines = {u.job.line for u in units if u.job is not None} | {j.line for j in failed_jobs}
        title = expression if jobs is None else f"{len(lines)} jobs"
        run(units, failed_jobs, title, engine, writer, sink, overwrite)


@dataclass
class Unit:
    """One engine job as the CLI sees it: a group, an expression, the path that named the group
    (for the check on --out) and, under --jobs, the jobs file's line (`job`, JobLine) whose
    label goes into the records and whose expression names the masks' folder."""

    group: Any  # ImageGroup
    expression: str
    source: str
    job: Any = None  # JobLine under --jobs

    def mask_name(self, stem: str) -> str:
        """Where the image's files go below OUT/<group>/."""
        if self.job is None:
            return stem
        from gres_cli.inference.jobs import expression_folder

        return f"{expression_folder(self.expression)}/{stem}"

    def label(self) -> dict[str, Any] | None:
        return None if self.job is None else self.job.label(self.group)


def _read_jobs(jobs: str, recursive: bool, shard_i: int, shard_p: int) -> tuple[list[Unit], list]:
    """--jobs FILE|-: the engine's units of this process's share, and the lines that cannot
    run (each reported by one process of a sharded run). A group goes to share k % P, k its
    name's rank of first appearance: every job on one group runs in one process, next to one
    another, so consecutive jobs share the decode."""
    from gres_cli.inference.jobs import read_jobs

    if jobs == "-":
        lines, base = sys.stdin.read().splitlines(), Path(".")
    else:
        try:
            lines = Path(jobs).read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            fail(f"--jobs {jobs}: cannot read ({getattr(e, 'strerror', None) or e})")
        base = Path(jobs).parent
    job_lines = read_jobs(lines, base, recursive)
    ranks: dict[str, int] = {}
    units, failed = [], []
    for job in job_lines:
        if job.error is not None:
            if (job.line - 1) % shard_p == shard_i:
                failed.append(job)
            continue
        source = job.fields["path"]
        source = str(Path(source) if Path(source).is_absolute() else base / source)
        for group in job.groups:
            rank = ranks.setdefault(group.name.casefold(), len(ranks))
            if rank % shard_p == shard_i:
                units.append(Unit(group, job.expression, source, job))
    return units, failed


class JsonlFile:
    """--jsonl FILE: records are appended, leaving out a line FILE already holds word for word
    (a resumed run re-emits its finished records: FILE gets each once). With --overwrite, one
    process rewrites FILE (processes sharing it under --shard/torchrun still append)."""

    def __init__(self, path: Path, rewrite: bool) -> None:
        self.known: set[str] = set()
        if not rewrite and path.is_file():
            self.known = set(path.read_text("utf-8").splitlines())
        self.file = path.open("w" if rewrite else "a", encoding="utf-8")
        if self.file.tell() and path.read_bytes()[-1:] != b"\n":
            self.file.write("\n")  # end a line a killed run cut, so the next stays whole

    def write(self, line: str) -> None:
        if line.rstrip("\n") not in self.known:
            self.file.write(line)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def run(units: list[Unit], failed_jobs: list, title: str, engine, writer, sink, overwrite: bool):
    """Run the engine over the units, stream records, summarise. `failed_jobs`: lines of a
    jobs file that cannot run, reported first (one line on stderr and one error record each)."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gres_cli.inference.engine import Job
    from gres_cli.inference.writers import segment_record

    done = {} if overwrite else writer.finished()
    counts = {"present": 0, "absent": 0, "failed": 0, "skipped": 0}
    jobs_mode = bool(failed_jobs) or any(u.job is not None for u in units)
    if jobs_mode:
        counts["jobs failed"] = 0
    started = time.perf_counter()
    show = err_console.is_terminal
    progress = Progress(
        TextColumn("[bold]segment"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        disable=not show,
    )

    def emit(record: dict) -> None:
        if sink is not None:
            sink.write(json.dumps(record) + "\n")
            sink.flush()

    def job_failed(job: Any, message: str, unit: Unit | None = None) -> None:
        counts["jobs failed"] += 1
        err_console.print(f"gres: job failed: {message}", markup=False, soft_wrap=True)
        emit(_job_error_record(job, message, unit))

    for job in failed_jobs:
        job_failed(job, job.error)
    runnable = []
    owners = _output_owners(writer.finished())  # output file -> the image it belongs to
    for unit in units:
        why = None if overwrite else _stale_answer(unit, done)
        if why is None and unit.job is not None:
            why = _overwrites(unit, writer, owners)
        if why is None:
            runnable.append(unit)
        else:
            job_failed(unit.job, why, unit)
    units = runnable
    total = sum(len(u.group.images) for u in units)

    try:
        with progress:
            task = progress.add_task("segment", total=total)
            jobs = []
            names = [u.group.output_stems() for u in units]
            for unit in units:
                skip = set()
                for i, p in enumerate(unit.group.images):
                    rec = done.get((str(p), unit.expression))
                    if rec is not None:
                        skip.add(i)
                        counts["skipped"] += 1
                        label = unit.label()  # the job as the jobs file has it now
                        emit(rec if label is None else rec | {"job": label})
                        progress.advance(task)
                jobs.append(Job(unit.group, unit.expression, skip))
            for res in engine.run(jobs, writer.overlay):
                unit = units[res.job]
                rec, mask = segment_record(res, unit.group.name, unit.expression, engine.margin)
                if unit.job is not None:
                    rec["job"] = unit.label()
                counts["failed" if res.error else "present" if res.present else "absent"] += 1
                name = unit.mask_name(names[res.job][res.index])
                for written in writer.submit(rec, name, mask, res.photo):
                    emit(written)
                    progress.advance(task)
            for written in writer.drain():
                emit(written)
                progress.advance(task)
    except KeyboardInterrupt:
        for written in writer.drain():  # images being written when interrupted are kept
            emit(written)
        err_console.print(
            "interrupted: finished images are saved; run the same command again to resume"
        )
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise  # the reader of stdout went away (`| head`): click stops quietly
    except OSError as e:  # an output could not be written: disk full, a file where a folder goes
        where = f"{e.filename}: " if e.filename else ""
        fail(
            f"cannot write outputs ({where}{e.strerror or e}); finished images are saved: "
            "fix it and run the same command again to resume",
            EXIT_FAULTS,
        )
    except user_errors_types() as e:  # e.g. a symlink in OUT that leads out of it
        fail(f"cannot write outputs ({e}); finished images are saved", EXIT_FAULTS)
    finally:
        writer.close()
        if sink is not None and sink is not sys.stdout:
            sink.close()
    seconds = time.perf_counter() - started
    if show or sink is not sys.stdout:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(title if jobs_mode else f'"{title}"'), show_header=False)
        for k, v in counts.items():
            table.add_row(k, str(v))
        processed = counts["present"] + counts["absent"]
        table.add_row("time", f"{seconds:.1f} s ({processed / max(seconds, 1e-9):.1f} images/s)")
        table.add_row("outputs", escape(str(writer.out)))
        err_console.print(table)
    raise typer.Exit(EXIT_FAULTS if counts["failed"] or counts.get("jobs failed") else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add `gres segment` to the top-level app."""
    app.command("segment")(segment)


def _stale_answer(unit: Unit, done: dict) -> str | None:
    """Under --jobs, why OUT's answers for this unit cannot be reused, or None: an answer of
    group-wise segmentation depends on the whole group, so a finished record counts only if it
    was made in a group of the same name and the same images (a folder that gained or lost a
    photo, or a glob that now matches others, changes the experts)."""
    if unit.job is None:
        return None
    from gres_cli.inference.jobs import group_digest

    digest = group_digest(unit.group)
    for image in unit.group.images:
        rec = done.get((str(image), unit.expression))
        if rec is None:
            continue
        made = (rec.get("job") or {}).get("group_sha256")
        if rec.get("group") != unit.group.name or made != digest:
            return (
                f"line {unit.job.line}: --out holds answers of {unit.expression!r} on {image} "
                f"made in another group of images (group {rec.get('group')!r}, not the "
                f"{len(unit.group.images)} images of {unit.group.name!r} this line names now); "
                "pass --overwrite to redo them, or use another --out"
            )
    return None


def _output_owners(done: dict) -> dict[str, str]:
    """The mask and overlay files OUT's finished records point at, and whose they are."""
    owners = {}
    for rec in done.values():
        for key in ("mask", "overlay"):
            if isinstance(rec.get(key), str):
                owners[os.path.abspath(rec[key]).casefold()] = rec["image"]
    return owners


def _overwrites(unit: Unit, writer: Any, owners: dict[str, str]) -> str | None:
    """Under --jobs, why this unit's outputs would overwrite another image's (an earlier
    line's, or a finished record's: two folders named `photos`, one expression, a stem in
    both), or None; then its outputs are taken in `owners`. A file system that ignores case
    makes `A.png` and `a.png` one file, so names are compared casefolded."""
    suffixes = [f".{writer.fmt}"] if writer.fmt in ("png", "npy") else []
    suffixes += [".overlay.jpg"] if writer.overlay else []
    planned = {}
    for image, stem in zip(unit.group.images, unit.group.output_stems(), strict=True):
        for suffix in suffixes:
            path = writer.output_path(unit.group.name, unit.mask_name(stem), suffix)
            other = owners.get(os.path.abspath(path).casefold())
            if other is not None and other != str(image):
                return (
                    f"line {unit.job.line}: {image} would overwrite {path}, the output of "
                    f'{other}; give this line a "group" of its own'
                )
            planned[os.path.abspath(path).casefold()] = str(image)
    owners.update(planned)
    return None


def _job_error_record(job: Any, message: str, unit: Unit | None) -> dict[str, Any]:
    """The record of a job that could not run: no image, its error, and the job's label."""
    rec: dict[str, Any] = {"image": None, "group": None if unit is None else unit.group.name}
    rec["expression"] = job.expression
    rec |= {"present": None, "d_pos": None, "d_neg": None, "margin": None, "score": None}
    rec |= {"mask": None, "area": 0, "bbox": None, "width": None, "height": None}
    return rec | {"error": message, "job": job.label(None if unit is None else unit.group)}
