"""`gres segment`: from a folder of photos to masks and JSON lines. The CLI parses options and
calls the engine (gres_cli.inference); torch is imported inside the command."""

from __future__ import annotations

import sys
import time
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
        str, typer.Argument(help="An image, a folder (one group), or - for paths on stdin.")
    ],
    expression: Annotated[str, typer.Argument(help='What to find, e.g. "the red umbrella".')],
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
    """
    from gres_cli.inference.inputs import check_out, discover, parse_shard
    from gres_cli.inference.writers import FORMATS

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if not expression.strip():
        fail("EXPRESSION is empty")
    with user_errors():
        shard_i, shard_p = parse_shard(shard)
        stdin = sys.stdin if path == "-" else None
        groups = discover(path, recursive, stdin)
    groups = [g for k, g in enumerate(groups) if k % shard_p == shard_i]
    with user_errors():
        check_out(out, path, groups)
    writable_folder(out, "--out")
    if jsonl not in (None, "-"):
        if Path(jsonl).is_dir():
            fail(f"--jsonl {jsonl}: is a folder; give a file name such as out.jsonl")
        writable_folder(Path(jsonl).parent, "--jsonl")
    if margin is not None and margin != margin:
        fail("--margin must be a number")

    from gres_cli.backends import DEFAULT_MODEL, load_default_model, load_model
    from gres_cli.inference.engine import Segmenter
    from gres_cli.inference.writers import OutputWriter

    with user_errors():
        if model is None:
            net = load_default_model(revision, group=not no_group)
        else:
            net = load_model(model, revision, group=not no_group)
        engine = Segmenter(net, device, precision, batch_size, workers, experts, margin, threshold)
        settings = run_settings(
            model or DEFAULT_MODEL, revision, engine, fmt, overlay, group=not no_group
        )
        writer = OutputWriter(out, fmt, overlay)
        try:
            writer.claim(settings, overwrite)
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
        run(groups, expression, engine, writer, sink, overwrite)


def run_settings(
    model: str, revision: str | None, engine: Any, fmt: str, overlay: bool, group: bool = True
) -> dict[str, Any]:
    """What makes a run's answers what they are, kept in OUT/settings.json: a re-run with
    other settings is refused instead of passing the old answers off as new ones."""
    from gres_cli.model.hub import model_identity

    return {
        **model_identity(model, revision),
        "margin": engine.margin,
        "threshold": engine.threshold,
        "experts": engine.experts,
        "format": fmt,
        "overlay": overlay,
        "group": group,
    }


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


def run(groups, expression, engine, writer, sink, overwrite: bool) -> None:
    """Load the model, run the engine over the groups, stream records, summarise."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gres_cli.inference.engine import Job

    done = {} if overwrite else writer.finished()
    counts = {"present": 0, "absent": 0, "failed": 0, "skipped": 0}
    total = sum(len(g.images) for g in groups)
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

    try:
        with progress:
            task = progress.add_task("segment", total=total)
            jobs = []
            names = [group.output_stems() for group in groups]
            for group in groups:
                skip = set()
                for i, p in enumerate(group.images):
                    rec = done.get((str(p), expression))
                    if rec is not None:
                        skip.add(i)
                        counts["skipped"] += 1
                        emit(rec)
                        progress.advance(task)
                jobs.append(Job(group, expression, skip))
            for res in engine.run(jobs, writer.overlay):
                rec, mask = _record(res, groups[res.job].name, expression, engine.margin)
                counts["failed" if res.error else "present" if res.present else "absent"] += 1
                name = names[res.job][res.index]
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

        table = Table(title=escape(f'"{expression}"'), show_header=False)
        for k, v in counts.items():
            table.add_row(k, str(v))
        processed = counts["present"] + counts["absent"]
        table.add_row("time", f"{seconds:.1f} s ({processed / max(seconds, 1e-9):.1f} images/s)")
        table.add_row("outputs", escape(str(writer.out)))
        err_console.print(table)
    raise typer.Exit(EXIT_FAULTS if counts["failed"] else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add `gres segment` to the top-level app."""
    app.command("segment")(segment)


def _record(res, group: str, expression: str, margin: float) -> tuple[dict, Any]:
    """An engine result -> its JSONL record (SPEC, "Output of gres segment") and final mask."""
    import numpy as np

    from gres_cli.inference.writers import mask_stats

    rec = {"image": str(res.path), "group": group, "expression": expression}
    if res.error is not None:
        rec |= {"present": None, "d_pos": None, "d_neg": None, "margin": margin, "score": None}
        rec |= {"mask": None, "area": 0, "bbox": None, "width": None, "height": None}
        return rec | {"error": res.error}, None
    mask = res.mask if res.present else np.zeros(res.size[::-1], bool)
    area, bbox = mask_stats(mask)
    rec |= {
        "present": res.present,
        "d_pos": round(res.d_pos, 6),
        "d_neg": round(res.d_neg, 6),
        "margin": margin,
        "score": round(res.d_neg - res.d_pos, 6),
        "mask": None,
        "area": area,
        "bbox": bbox,
        "width": res.size[0],
        "height": res.size[1],
    }
    if res.backend_score is not None:  # an open-vocabulary backend: what the group changed
        rec |= {
            "backend_score": round(res.backend_score, 6),
            "backend_present": res.backend_present,
        }
    return rec | {"error": None}, mask
