"""A run of `gres segment`: the object that owns its output folder, under every front end.

`gres segment` (one job or `--jobs`), `gres eval --model ... --save-predictions`, `torchrun`
ranks, `--shard` processes and Python users all write through `RunFolder`, so they share one
set of guarantees (docs/guarantees.md):

- one owner at a time: OUT is locked for the whole run (`lock.py`; shards share it by design);
- `OUT/settings.json` names what made the answers (model, its config and weights, margin,
  threshold, format, ...): a run with other settings is refused naming the first difference,
  or with `overwrite` drops every old record;
- a finished answer (image, expression) is skipped and its record re-emitted, unless it was made
  in another group of images (`--jobs`) or `overwrite` redoes it (its old record is dropped);
- masks are named so that no answer overwrites another's file; a record is appended to
  `OUT/records.jsonl` once, after its files are in place, whenever the run stops;
- the summary counts present, absent, failed and skipped images and failed jobs, and gives the
  exit status (0 every image processed, 1 some failed).

From Python (a re-run of the same lines resumes where the first stopped)::

    from gres_cli.backends import load_model
    from gres_cli.inference import RunFolder, Segmenter, tasks_for_path

    engine = Segmenter(load_model("examples/demo-model"))
    tasks = tasks_for_path("examples/synth-demo/images", "the red cross", recursive=True)
    with RunFolder("gres-out").open(engine, "examples/demo-model") as run:
        summary = run.segment(tasks)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gres_cli.errors import GresError
from gres_cli.inference.inputs import ImageGroup, check_out, discover
from gres_cli.inference.jobs import LAYOUT, JobLine, expression_folder, group_digest, read_jobs
from gres_cli.inference.lock import OutputLock, locked
from gres_cli.inference.writers import (
    RECORDS,
    RECORDS_LOCK,
    SETTINGS,
    OutputWriter,
    segment_record,
    settings_difference,
)

# names gres itself uses at the top of OUT: no group may take them
RESERVED = (RECORDS, SETTINGS)


@dataclass
class Task:
    """One expression asked of one group of images, as the run sees it: `source` the path that
    named the group (OUT may not lie inside it), `line` the jobs file's line under --jobs (its
    label goes into the records; its masks go to a folder per expression)."""

    group: ImageGroup
    expression: str
    source: str
    line: JobLine | None = None

    def mask_name(self, stem: str) -> str:
        """Where the image's files go below OUT/<group>/."""
        return stem if self.line is None else f"{expression_folder(self.expression)}/{stem}"

    def label(self) -> dict[str, Any] | None:
        return None if self.line is None else self.line.label(self.group)


def tasks_for_path(
    path: str | os.PathLike[str],
    expression: str,
    recursive: bool = False,
    stdin_lines: Iterable[str] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[Task]:
    """`gres segment PATH EXPRESSION`: a task per group of PATH (an image, a folder, or `-` for
    `stdin_lines`), this shard's share of them (group k goes to share k % P)."""
    if not expression.strip():
        raise GresError("EXPRESSION is empty")
    path = str(path)
    groups = discover(path, recursive, stdin_lines)
    index, shares = shard
    return [Task(g, expression, path) for k, g in enumerate(groups) if k % shares == index]


def tasks_from_jobs(
    lines: Iterable[str], base: Path, recursive: bool = False, shard: tuple[int, int] = (0, 1)
) -> tuple[list[Task], list[JobLine]]:
    """`--jobs`: the tasks of this shard's share and the lines that cannot run (each reported
    by one process of a sharded run). A group goes to share k % P, k its name's rank of first
    appearance: every task on one group runs in one process, next to one another, so
    consecutive tasks share the decode."""
    index, shares = shard
    ranks: dict[str, int] = {}
    tasks, failed = [], []
    for line in read_jobs(lines, base, recursive):
        if line.error is not None:
            if (line.line - 1) % shares == index:
                failed.append(line)
            continue
        source = line.fields["path"]
        source = str(Path(source) if Path(source).is_absolute() else base / source)
        for group in line.groups:
            rank = ranks.setdefault(group.name.casefold(), len(ranks))
            if rank % shares == index:
                tasks.append(Task(group, line.expression, source, line))
    return tasks, failed


def read_tasks(
    path: str | None,
    expression: str | None,
    jobs: str | None,
    recursive: bool = False,
    shard: tuple[int, int] = (0, 1),
    stdin: Any = None,
) -> tuple[list[Task], list[JobLine]]:
    """`gres segment`'s tasks: of PATH EXPRESSION (`tasks_for_path`, PATH `-`: paths on
    `stdin`), or of a --jobs file (`tasks_from_jobs_file`) with its lines that failed."""
    if jobs is not None:
        return tasks_from_jobs_file(jobs, recursive, shard, stdin)
    assert path is not None and expression is not None
    lines = stdin if path == "-" else None
    return tasks_for_path(path, expression, recursive, lines, shard), []


def tasks_from_jobs_file(
    jobs: str, recursive: bool = False, shard: tuple[int, int] = (0, 1), stdin: Any = None
) -> tuple[list[Task], list[JobLine]]:
    """`--jobs FILE|-`: `tasks_from_jobs` of the file's lines (`-`: of `stdin`'s), relative
    paths taken from the file's folder (the working folder for `-`)."""
    if jobs == "-":
        return tasks_from_jobs(
            (stdin.read() if stdin else "").splitlines(), Path("."), recursive, shard
        )
    try:
        lines = Path(jobs).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GresError(
            f"--jobs {jobs}: cannot read ({getattr(e, 'strerror', None) or e})"
        ) from None
    return tasks_from_jobs(lines, Path(jobs).parent, recursive, shard)


def load_segment_model(model: str | None, revision: str | None, group: bool = True) -> Any:
    """The model `gres segment --model` names (None: the default model), as the CLI and each
    Ray actor load it."""
    from gres_cli.backends import load_default_model, load_model

    if model is None:
        return load_default_model(revision, group=group)
    return load_model(model, revision, group=group)


def segment_model_facts(model: str | None, revision: str | None, group: bool = True) -> Any:
    """`load_segment_model`'s facts (registry.ModelFacts), its weights left unread where the
    model's kind can."""
    from gres_cli.backends import default_model_facts, model_facts

    if model is None:
        return default_model_facts(revision, group=group)
    return model_facts(model, revision, group=group)


def check_jsonl(jsonl: Path, out: Path, tasks: list[Task]) -> None:
    """--jsonl FILE: a file, never an input image nor a file of OUT that gres writes itself
    (GresError otherwise)."""
    if jsonl.is_dir():
        raise GresError(f"--jsonl {jsonl}: is a folder; give a file name such as out.jsonl")
    target = os.path.abspath(jsonl)
    if target in {os.path.abspath(out / RECORDS), os.path.abspath(out / SETTINGS)}:
        raise GresError(f"--jsonl {jsonl}: is the run's own {jsonl.name}; give another file")
    if any(image_key(p) == target for t in tasks for p in t.group.images):
        raise GresError(f"--jsonl {jsonl}: is an input image; give another file")


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


@dataclass
class RunSummary:
    """What a run did. `exit_code`: 0 every image processed, 1 some images or jobs failed."""

    counts: dict[str, int]
    seconds: float
    out: Path
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def processed(self) -> int:
        return self.counts["present"] + self.counts["absent"]

    @property
    def exit_code(self) -> int:
        return 1 if self.counts["failed"] or self.counts.get("jobs failed") else 0

    def count(self, record: dict[str, Any]) -> None:
        """Count a new answer's record as failed, present or absent."""
        kind = "failed" if record["error"] else "present" if record["present"] else "absent"
        self.counts[kind] += 1


class Progress:
    """What a run tells its front end as it goes (a rich bar, a Ray driver, nothing)."""

    def start(self, total: int) -> None:
        """`total` images will be answered (skipped ones included)."""

    def advance(self, n: int = 1) -> None:
        """`n` more images are answered."""

    def job_failed(self, message: str) -> None:
        """A task or jobs-file line cannot run (one line, for stderr)."""

    def status(self, text: str) -> None:
        """What the workers are doing, in a few words (a Ray pool's busy and idle actors)."""


@dataclass
class Prepared:
    """A run decided before any work (RunFolder.prepare): the tasks that run, the engine's job
    of each and its images' file names below OUT/<group>/, the jobs that cannot run (message,
    error record), the finished records a resumed run re-emits, and the summary so far."""

    tasks: list[Task]
    jobs: list[Any]  # engine.Job, one per task
    names: list[list[str]]
    failed: list[tuple[str, dict[str, Any]]]
    skipped: list[dict[str, Any]]
    summary: RunSummary
    started: float

    @property
    def images(self) -> int:
        """Images the run answers, skipped ones included (the progress bar's total)."""
        return sum(len(t.group.images) for t in self.tasks)

    def fail(self, line: JobLine, message: str, task: Task | None = None) -> None:
        self.summary.counts["jobs failed"] += 1
        self.failed.append((message, job_error_record(line, message, task)))

    def sender(
        self, emit: Callable[[dict[str, Any]], None] | None, progress: Progress
    ) -> Callable[..., None]:
        """Send the failed jobs' and re-emitted records to `emit` (else keep them in the
        summary), start `progress`; returns the function that sends each new record."""

        def send(record: dict[str, Any], advance: bool = True) -> None:
            self.summary.records.append(record) if emit is None else emit(record)
            if advance:
                progress.advance()

        for message, rec in self.failed:
            progress.job_failed(message)
            send(rec, advance=False)
        progress.start(self.images)
        for rec in self.skipped:
            send(rec)
        return send


def result_record(task: Task, res: Any, margin: float) -> tuple[dict[str, Any], Any]:
    """An engine result of `task` -> its record (files not written yet) and final mask."""
    rec, mask = segment_record(res, task.group.name, task.expression, margin)
    if task.line is not None:
        rec["job"] = task.label()
    return rec, mask


def output_error(e: OSError | GresError) -> OutputError:
    """An error writing outputs (disk full, a file where a folder goes, a symlink in OUT that
    leads out of it) as the run's OutputError."""
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return OutputError(f"{where}{e.strerror or e}")
    return OutputError(str(e))


class RunFolder:
    """Owns the output folder `out` for one run: its lock, settings.json, which answers are
    done or stale, the mask names, records.jsonl (see the module).

    `shard` (i, P): this process is share i of P processes writing into `out` together (--shard,
    torchrun). `shown_as`: the folder records name, when `out` is a temporary folder that
    replaces it at the end (`gres eval --save-predictions`)."""

    def __init__(
        self,
        out: str | os.PathLike[str],
        fmt: str = "png",
        overlay: bool = False,
        *,
        shard: tuple[int, int] = (0, 1),
        threads: int | None = None,
        shown_as: Path | None = None,
    ) -> None:
        self.out = Path(out)
        self.fmt, self.overlay, self.shard = fmt, overlay, shard
        self._threads, self._shown_as = threads, shown_as
        self.engine: Any = None
        self.writer: OutputWriter | None = None
        self._lock: OutputLock | None = None
        self.overwrite = False

    # --- owning the folder ---------------------------------------------------------------

    def open(
        self,
        engine: Any,
        model: str,
        revision: str | None = None,
        *,
        overwrite: bool = False,
        jobs_layout: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> RunFolder:
        """Lock OUT and claim it for `engine` (a Segmenter) running `model` (the id or folder
        it was loaded from): GresError when another process owns OUT, or OUT holds answers
        of other settings (unless `overwrite`). `extra`: more settings (`gres eval`'s
        dataset)."""
        self.engine = engine
        settings = self._settings(model, revision, engine, engine.model.group, jobs_layout)
        return self.claim(settings | (extra or {}), overwrite)

    def _settings(
        self, model: str, revision: str | None, engine: Any, group: bool, jobs_layout: bool
    ) -> dict[str, Any]:
        """OUT/settings.json of this folder's run of `model` with `engine`'s K, m and threshold
        (a Segmenter, or resolved EngineOptions)."""
        settings = run_settings(model, revision, engine, self.fmt, self.overlay, group=group)
        if jobs_layout:
            settings["layout"] = LAYOUT
        return settings

    def start(
        self,
        model: str | None,
        revision: str | None,
        group: bool,
        options: Any,
        pool: Any = None,
        *,
        overwrite: bool = False,
        jobs_layout: bool = False,
    ) -> Callable[..., RunSummary]:
        """Load `model` (None: the default model) as `gres segment` does, claim OUT for it
        (`open`) and return how to segment tasks: `self.segment`, or with a Ray `pool`
        (ray_run.RayPool) the same run computed by the pool's actors. `options`: the
        engine's (engine.EngineOptions). A Ray run loads no model here: the actors do, and
        OUT is claimed with the model's facts (registry.ModelFacts), read off its config
        where its kind can: a head node need not hold torch, a GPU or the weights."""
        from gres_cli.backends import DEFAULT_MODEL
        from gres_cli.inference.engine import Segmenter

        name = model or DEFAULT_MODEL
        if pool is not None:
            facts = segment_model_facts(model, revision, group)
            options = options.resolved(facts)  # the actors run the K and m claimed here
            settings = self._settings(name, revision, options, facts.group, jobs_layout)
            self.claim(settings, overwrite)
            return pool.runner(self, model, revision, group, options)
        engine = Segmenter(load_segment_model(model, revision, group), **asdict(options))
        self.open(engine, name, revision, overwrite=overwrite, jobs_layout=jobs_layout)
        return self.segment

    def claim(self, settings: dict[str, Any], overwrite: bool = False) -> RunFolder:
        """Lock OUT and make it the output of `settings` (JSON-ready, OUT/settings.json).

        OUT made with other settings (or by a gres that wrote none) is refused with a GresError
        naming the first difference, unless `overwrite`: then its records are dropped, so no
        old answer survives next to the new ones. Shards of one run check and switch under one
        lock: only the first drops the records."""
        self.acquire()
        try:
            self.writer = OutputWriter(
                self.out, self.fmt, self.overlay, self._threads, self._shown_as
            )
            with locked(self.out / RECORDS_LOCK):
                self._claim(settings, overwrite)
        except BaseException:
            self.close()
            raise
        self.settings, self.overwrite = settings, overwrite
        return self

    def acquire(self) -> RunFolder:
        """Make OUT and take its lock (GresError naming the pid of the run that holds it).
        `claim` does it too; a front end calls it first to refuse a second run before it loads
        a model."""
        if self._lock is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = OutputLock(self.out, self.shard).acquire()
        return self

    def _claim(self, settings: dict[str, Any], overwrite: bool) -> None:
        path = self.out / SETTINGS
        try:
            old = json.loads(path.read_text("utf-8")) if path.exists() else None
        except (OSError, json.JSONDecodeError, RecursionError):
            old = {}
        if old == settings:
            return
        records = self.out / RECORDS
        if old is None and not (records.exists() and records.stat().st_size):
            difference = None  # a fresh OUT
        elif old is None:
            difference = "records but no settings.json (made by an older gres)"
        else:
            difference = settings_difference(old, settings)
        if difference is not None and not overwrite:
            raise GresError(
                f"--out {self.out}: holds outputs made with {difference}; pass --overwrite "
                "to redo them, or pick another --out"
            )
        if records.exists():  # no old answer survives next to the new ones
            with records.open("r+b") as f:
                f.truncate(0)
        from grd_tools.fsutil import atomic_write_text

        atomic_write_text(path, json.dumps(settings, indent=1) + "\n")

    def close(self) -> None:
        """Finish the files being written (records of failed writes are left out), let OUT go."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what is done --------------------------------------------------------------------

    def finished(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Records of answers already in OUT, keyed by (image, expression), the image as its
        absolute path: `photos/a.png` and `$PWD/photos/a.png` are one image."""
        done = {}
        path = self.out / RECORDS
        for line in path.read_text("utf-8").splitlines() if path.exists() else []:
            try:
                rec = json.loads(line)
                key = (image_key(rec["image"]), rec["expression"])
            except (json.JSONDecodeError, RecursionError, KeyError, TypeError):  # cut: redone
                continue
            if rec.get("error") is None:
                done[key] = rec
        return done

    def check_inputs(self, tasks: list[Task]) -> None:
        """Refuse (GresError) an OUT that is, holds or lies inside an input, and a group named
        like one of OUT's own files. Reads no output: call it before OUT is made."""
        for task in tasks:
            check_out(self.out, task.source, [task.group])
            reserved = reserved_group(task.group.name)
            if reserved is not None and task.line is None:
                raise GresError(reserved)

    def check_clash(
        self, tasks: list[Task], done: dict[tuple[str, str], dict[str, Any]] | None = None
    ) -> None:
        """Refuse (GresError) another expression's files on these images in OUT (one job per
        image names its files after the image alone), which this run would overwrite. `done`:
        OUT's finished records when the caller has read them already."""
        if self.fmt not in ("png", "npy") and not self.overlay:
            return  # this run writes no per-image file
        asked = {
            image_key(p): t.expression for t in tasks if t.line is None for p in t.group.images
        }
        for (image, text), rec in (self.finished() if done is None else done).items():
            clash = image in asked and asked[image] != text
            if clash and (rec.get("mask") or rec.get("overlay")):
                raise GresError(
                    f"--out {self.out}: holds the outputs of {rec['image']} for {text!r}, "
                    f"which {asked[image]!r} would overwrite; pick another --out"
                )

    # --- running -------------------------------------------------------------------------

    def segment(
        self,
        tasks: list[Task],
        failed_lines: Iterable[JobLine] = (),
        *,
        emit: Callable[[dict[str, Any]], None] | None = None,
        progress: Progress | None = None,
    ) -> RunSummary:
        """Run the engine over `tasks` into OUT; every record (new, re-emitted or of a failed
        job) goes to `emit` as it is final. A KeyboardInterrupt keeps every finished answer
        (the same call resumes); an output that cannot be written raises OutputError."""
        prepared = self.prepare(tasks, failed_lines)
        summary, progress = prepared.summary, progress or Progress()
        send = prepared.sender(emit, progress)
        writer = self.writer
        assert writer is not None
        try:
            for res in self.engine.run(prepared.jobs, writer.overlay):
                task = prepared.tasks[res.job]
                rec, mask = result_record(task, res, self.engine.margin)
                summary.count(rec)
                name = prepared.names[res.job][res.index]
                for written in writer.submit(rec, name, mask, res.photo):
                    send(written)
            for written in writer.drain():
                send(written)
        except KeyboardInterrupt:
            for written in writer.drain():  # images being written when interrupted are kept
                send(written, advance=False)
            raise
        except BrokenPipeError:  # the records' reader went away (`| head`): no output fault
            raise
        except (OSError, GresError) as e:
            raise output_error(e) from None
        summary.seconds = time.perf_counter() - prepared.started
        return summary

    def prepare(self, tasks: list[Task], failed_lines: Iterable[JobLine] = ()) -> Prepared:
        """Everything a run decides before any work, whoever computes the answers (this
        process, or a Ray cluster: gres_cli.inference.ray_run): the checks and refusals, the
        tasks that run and the engine's job for each (finished images in its skip set), the
        records to re-emit. With `overwrite`, the old records of what is redone are dropped."""
        if self.writer is None:
            raise GresError("open the RunFolder (RunFolder.open or claim) before segment")
        summary = RunSummary({"present": 0, "absent": 0, "failed": 0, "skipped": 0}, 0.0, self.out)
        failed_lines = list(failed_lines)
        if failed_lines or any(t.line is not None for t in tasks):
            summary.counts["jobs failed"] = 0
        prepared = Prepared([], [], [], [], [], summary, time.perf_counter())
        for line in failed_lines:
            prepared.fail(line, line.error or "cannot run")
        self.check_inputs(tasks)
        done = self.finished()
        self.check_clash(tasks, done)
        plan = plan_tasks(tasks, done, self.overwrite, self._output_path_of, self.fmt, self.overlay)
        for task, why in plan.refused:
            if task.line is None:
                raise GresError(why)
            prepared.fail(task.line, why, task)
        if self.overwrite:
            self._drop(plan.redo)
            done = {}
        from gres_cli.inference.engine import Job

        for task in plan.runnable:
            skip = set()
            for i, p in enumerate(task.group.images):
                rec = done.get((image_key(p), task.expression))
                if rec is not None:
                    skip.add(i)
                    summary.counts["skipped"] += 1
                    label = task.label()  # the job as the jobs file has it now
                    prepared.skipped.append(rec if label is None else rec | {"job": label})
            prepared.tasks.append(task)
            prepared.jobs.append(Job(task.group, task.expression, skip))
            prepared.names.append([task.mask_name(s) for s in task.group.output_stems()])
        return prepared

    def append(self, record: dict[str, Any]) -> None:
        """Append the record of an answer computed elsewhere (a Ray actor), whose files are
        already in OUT, to records.jsonl (once: the caller appends each record once)."""
        assert self.writer is not None, "open the RunFolder first"
        self.writer.append(record)

    def _output_path_of(self, task: Task, stem: str, suffix: str) -> Path:
        assert self.writer is not None
        return self.writer.output_path(task.group.name, task.mask_name(stem), suffix)

    def _drop(self, pairs: set[tuple[str, str]]) -> None:
        """--overwrite: drop the old records of the answers this run redoes (records.jsonl is
        rewritten in place under the records lock, so shards appending meanwhile lose nothing)."""
        with locked(self.out / RECORDS_LOCK):
            _rewrite_records(self.out / RECORDS, keep=lambda rec: _pair(rec) not in pairs)


class OutputError(GresError):
    """An output could not be written; finished answers are kept, and a re-run resumes."""


def image_key(image: str | os.PathLike[str]) -> str:
    """What identifies an image across runs: its absolute path (not resolved through symlinks:
    a linked image stays in the folder it was listed in). A relative path is taken from the
    working folder, as the run that wrote it did."""
    return os.path.abspath(image)


def _pair(rec: dict[str, Any]) -> tuple[str, str] | None:
    try:
        return image_key(rec["image"]), rec["expression"]
    except (KeyError, TypeError):
        return None


def reserved_group(name: str) -> str | None:
    """Why a group may not be named `name` (its folder would be one of OUT's own files), or
    None."""
    top = name.replace("\\", "/").split("/")[0]
    if top.casefold() in {r.casefold() for r in RESERVED} or top.startswith(".gres"):
        return f"group {name!r}: OUT/{top} is one of gres's own files; give the group another name"
    return None


def _rewrite_records(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep the records of `path` that `keep` accepts, rewriting it in place (writers holding
    it open in append mode go on appending to the same file)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text("utf-8").splitlines():
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(rec, dict) and keep(rec):
            kept.append(line + "\n")
    with path.open("r+", encoding="utf-8") as f:
        f.truncate(0)
        f.writelines(kept)


@dataclass
class Plan:
    """Which tasks run, which are refused (with why), and the answers `overwrite` redoes."""

    runnable: list[Task]
    refused: list[tuple[Task, str]]
    redo: set[tuple[str, str]]


def plan_tasks(
    tasks: list[Task],
    done: dict[tuple[str, str], dict[str, Any]],
    overwrite: bool,
    output_path: Callable[[Task, str, str], Path],
    fmt: str,
    overlay: bool,
) -> Plan:
    """Sort the tasks before any work: under --jobs a task is refused when OUT's answers for it
    were made in another group of images (`stale_answer`, unless `overwrite`), or when its
    files would overwrite another image's (`overwrites`); a group named like one of OUT's own
    files is refused too."""
    plan = Plan([], [], set())
    owners = output_owners(done)  # output file -> the image it belongs to
    suffixes = [f".{fmt}"] if fmt in ("png", "npy") else []
    suffixes += [".overlay.jpg"] if overlay else []
    for task in tasks:
        why = None
        if task.line is not None:
            why = reserved_group(task.group.name)
            if why is not None:
                why = f"line {task.line.line}: {why}"
        if why is None and not overwrite:
            why = stale_answer(task, done)
        if why is None and task.line is not None:
            why = overwrites(task, owners, suffixes, output_path)
        if why is None:
            plan.runnable.append(task)
            plan.redo |= {(image_key(p), task.expression) for p in task.group.images}
        else:
            plan.refused.append((task, why))
    return plan


def stale_answer(task: Task, done: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    """Under --jobs, why OUT's answers for this task cannot be reused, or None: an answer of
    group-wise segmentation depends on the whole group, so a finished record counts only if it
    was made in a group of the same name and the same images (a folder that gained or lost a
    photo, or a glob that now matches others, changes the experts)."""
    if task.line is None:
        return None
    digest = group_digest(task.group)
    for image in task.group.images:
        rec = done.get((image_key(image), task.expression))
        if rec is None:
            continue
        made = (rec.get("job") or {}).get("group_sha256")
        if rec.get("group") != task.group.name or made != digest:
            return (
                f"line {task.line.line}: --out holds answers of {task.expression!r} on {image} "
                f"made in another group of images (group {rec.get('group')!r}, not the "
                f"{len(task.group.images)} images of {task.group.name!r} this line names now); "
                "pass --overwrite to redo them, or use another --out"
            )
    return None


def output_owners(done: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The mask and overlay files OUT's finished records point at, and whose they are."""
    owners = {}
    for rec in done.values():
        for key in ("mask", "overlay"):
            if isinstance(rec.get(key), str):
                owners[os.path.abspath(rec[key]).casefold()] = image_key(rec["image"])
    return owners


def overwrites(
    task: Task,
    owners: dict[str, str],
    suffixes: list[str],
    output_path: Callable[[Task, str, str], Path],
) -> str | None:
    """Under --jobs, why this task's outputs would overwrite another image's (an earlier
    line's, or a finished record's: two folders named `photos`, one expression, a stem in
    both), or None; then its outputs are taken in `owners`. A file system that ignores case
    makes `A.png` and `a.png` one file, so names are compared casefolded."""
    assert task.line is not None
    planned = {}
    for image, stem in zip(task.group.images, task.group.output_stems(), strict=True):
        for suffix in suffixes:
            path = output_path(task, stem, suffix)
            other = owners.get(os.path.abspath(path).casefold())
            if other is not None and other != image_key(image):
                return (
                    f"line {task.line.line}: {image} would overwrite {path}, the output of "
                    f'{other}; give this line a "group" of its own'
                )
            planned[os.path.abspath(path).casefold()] = image_key(image)
    owners.update(planned)
    return None


def job_error_record(line: JobLine, message: str, task: Task | None = None) -> dict[str, Any]:
    """The record of a job that could not run: no image, its error, and the job's label."""
    group = None if task is None else task.group
    rec: dict[str, Any] = {"image": None, "group": None if group is None else group.name}
    rec["expression"] = line.expression
    rec |= {"present": None, "d_pos": None, "d_neg": None, "margin": None, "score": None}
    rec |= {"mask": None, "area": 0, "bbox": None, "width": None, "height": None}
    return rec | {"error": message, "job": line.label(group)}


class JsonlSink:
    """--jsonl FILE: records are appended, leaving out a line FILE already holds word for word
    (a resumed run re-emits its finished records: FILE gets each once). With `rewrite`, FILE
    starts empty (processes sharing it under --shard/torchrun append instead)."""

    @staticmethod
    def of(jsonl: str | None, rewrite: bool, stdout: TextIO) -> TextIO | JsonlSink | None:
        """Where `gres segment --jsonl` sends records: `stdout` for `-` (or, without --jsonl,
        when stdout is no terminal: piped), FILE, or nowhere."""
        if jsonl == "-" or (jsonl is None and not stdout.isatty()):
            return stdout
        return None if jsonl is None else JsonlSink(Path(jsonl), rewrite)

    def __init__(self, path: Path, rewrite: bool) -> None:
        self.known: set[str] = set()
        if not rewrite and path.is_file():
            try:
                self.known = set(path.read_text("utf-8").splitlines())
            except UnicodeDecodeError:
                raise GresError(
                    f"--jsonl {path}: holds something other than JSON lines (not UTF-8 text); "
                    "give a new file or a JSON lines file of gres"
                ) from None
        self.file: TextIO = path.open("w" if rewrite else "a", encoding="utf-8")
        if self.file.tell() and path.read_bytes()[-1:] != b"\n":
            self.file.write("\n")  # end a line a killed run cut, so the next stays whole

    def write(self, line: str) -> None:
        if line.rstrip("\n") not in self.known:
            self.file.write(line)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
