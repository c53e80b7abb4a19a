"""`gres segment --ray`: the same run on a Ray cluster (docs/cluster.md).

The driver (the `gres segment` process) owns OUT exactly as a local run does: it holds the
lock, checks and writes settings.json, decides what is finished, refused or redone
(`RunFolder.prepare`) and is the only process that appends to records.jsonl. The cluster
computes: one row per task (a group and an expression, never single images: the group-wise
decision needs the whole group's pass 1) goes through `map_batches` into a pool of actors
(`SegmentActor`) that each load the model once and run the same `Segmenter` over the task,
writing its masks atomically into OUT (a shared folder) and handing back its records. Not
`groupby().map_groups()`: that is a full sort-based shuffle of every image row, with known
memory and speed problems (ray-project/ray #49133, #61016, #37194), for groups the run already
has.

Exactly once: an actor that dies (its node, kill -9) has its rows retried by Ray on another
actor; its files are rewritten with the same bytes, atomically, and its records reach the
driver once (the driver also drops a record it already appended). A killed driver takes its
actors with it; the same command resumes from records.jsonl.

This module imports ray inside its functions only: `gres --help` never loads it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import pickle
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gres_cli.errors import GresError
from gres_cli.inference.run import (
    OutputError,
    Progress,
    RunFolder,
    RunSummary,
    Task,
    image_key,
    load_segment_model,
    output_error,
    result_record,
)

RAY_EXTRA = 'pip install "gres[ray]"'

#: seconds a driver waits for a cluster's `host:port` to take a connection (a head node may
#: still be starting: docs/cluster.md's SLURM recipe gives it 10 s); GRES_RAY_CONNECT_TIMEOUT
#: overrides it
CONNECT_PATIENCE_S = 60.0


def import_ray() -> Any:
    """The ray module, or a GresError naming the extra that installs it."""
    try:
        import ray
        import ray.data  # Ray Data ships in the extra, not in bare ray
    except ImportError:
        raise GresError(f"--ray needs Ray Data: {RAY_EXTRA}") from None
    return ray


@dataclass
class RayPool:
    """Where and on how many actors a run goes: `address` of the cluster (None: RAY_ADDRESS,
    else a local cluster), `actors` (None: the cluster's GPUs / gpus_per_actor, or without GPUs
    its CPUs / cpus_per_actor), `gpus_per_actor` (None: 1 on a cluster with GPUs, else 0) and
    `cpus_per_actor` (also each actor's torch threads)."""

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0

    @contextlib.contextmanager
    def connected(self) -> Iterator[Any]:
        """ray, connected to the pool's cluster (`connect`) for one run, with stdout sent to
        stderr meanwhile: Ray prints its news (a worker that died, a task retried) on stdout,
        the records' stream when piped, from a thread of its own at any time until it
        disconnects (the records' sink holds stdout itself). A connection made here is closed
        at the end, a caller's own `ray.init` kept: Ray's own disconnect at interpreter exit
        made `gres` end 1.4 s after the run, against 0.7 s."""
        ray = import_ray()
        ours = not ray.is_initialized()
        with contextlib.redirect_stdout(sys.stderr):
            connect(self.address)
            try:
                yield ray
            finally:
                if ours:
                    ray.shutdown()

    def check(self) -> None:
        """GresError for a pool that cannot be (before any work). NaN and infinities too: the
        pool's size and each actor's threads are whole numbers made of them."""
        if self.actors is not None and self.actors < 1:
            raise GresError(f"--ray-actors {self.actors}: give at least 1")
        for option, value in (
            ("--ray-gpus-per-actor", self.gpus_per_actor),
            ("--ray-cpus-per-actor", self.cpus_per_actor),
        ):
            if value is not None and not math.isfinite(value):
                raise GresError(f"{option} {value}: give a finite number")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise GresError(f"--ray-gpus-per-actor {self.gpus_per_actor}: give 0 or more")
        if self.cpus_per_actor <= 0:
            raise GresError(f"--ray-cpus-per-actor {self.cpus_per_actor}: give more than 0")

    def runner(
        self, run: RunFolder, model: str | None, revision: str | None, group: bool, engine: Any
    ) -> Any:
        """`run.segment`'s twin for this pool: the actors load `model` as the driver did and
        build an engine of `engine`'s options (engine.EngineOptions)."""
        spec = ActorSpec.of(run, model, revision, group, engine)
        return functools.partial(segment_on_ray, run, spec=spec, pool=self)

    def results(
        self, jobs: list[Any], model: str | None, revision: str | None, group: bool, engine: Any
    ) -> Iterator[list[Any]]:
        """The engine's results of each job (engine.Job), job by job in order, computed by
        the pool's actors: `Segmenter(model, **engine).run(jobs)` on a cluster (`engine`: the
        Segmenter's keywords)."""
        self.check()
        if not jobs:
            return
        spec = ActorSpec(model, revision, group, dict(engine), os.getcwd())
        rows = [{"task": pickle.dumps((k, job))} for k, job in enumerate(jobs)]
        with self.connected() as ray:
            yield from _in_order(ray, rows, spec, self)

    def size(self, resources: dict[str, float], tasks: int) -> tuple[int, float]:
        """(actors, GPUs per actor) on a cluster of `resources`, never more actors than
        `tasks`."""
        gpus = resources.get("GPU", 0.0)
        per_gpu = self.gpus_per_actor if self.gpus_per_actor is not None else (1.0 if gpus else 0)
        actors = self.actors
        if actors is None:
            share = gpus / per_gpu if per_gpu else resources.get("CPU", 1.0) / self.cpus_per_actor
            actors = max(1, int(share))
        return max(1, min(actors, tasks)), per_gpu


@dataclass
class ActorSpec:
    """What every actor needs to compute the driver's answers: the model as the CLI loads it,
    the engine's options (`Segmenter` keywords), the driver's working folder (relative paths,
    and the records naming them, mean what they mean to the driver) and, for a segment run,
    OUT and its format (`out` None: the actor hands back the engine's results instead,
    `gres eval --ray`)."""

    model: str | None
    revision: str | None
    group: bool
    engine: dict[str, Any]
    cwd: str
    out: str | None = None
    fmt: str = "png"
    overlay: bool = False
    threads: int = 1

    @classmethod
    def of(
        cls, run: RunFolder, model: str | None, revision: str | None, group: bool, engine: Any
    ) -> ActorSpec:
        """The spec of a run into `run` (its OUT, format and overlay) from this process."""
        return cls(
            model, revision, group, asdict(engine), os.getcwd(), str(run.out), run.fmt, run.overlay
        )


class SegmentActor:
    """A Ray Data callable class: loads the model once, then answers one task per row with the
    local engine: writes the task's files into OUT and returns its records as JSON, or (no OUT)
    returns the engine's results, pickled. Each row also says why the actor could not start
    (`refused`: a model it cannot load, a working folder not on its node), for the driver to
    stop in the local run's one line: an actor that raised in `__init__` died, and Ray and Ray
    Data printed its traceback several times over on the driver's stderr."""

    def __init__(self, spec: dict[str, Any]) -> None:
        spec_ = ActorSpec(**spec)
        self.refused = ""
        self.writer: Any = None  # OutputWriter of a segment run (None: gres eval's results)
        try:
            self._start(spec_)
        except GresError as e:
            self.refused = str(e)
        self.columns = ("records", "error") if spec_.out is not None else ("results",)

    def _start(self, spec_: ActorSpec) -> None:
        if not os.path.isdir(spec_.cwd):
            raise GresError(
                f"the working folder {spec_.cwd} is not on this node: run gres from a folder "
                "every node mounts at the same path (docs/cluster.md)"
            )
        os.chdir(spec_.cwd)
        try:
            import torch

            torch.set_num_threads(max(1, spec_.threads))  # the CPUs Ray gave this actor
        except ImportError:  # an ONNX model on a node without torch
            pass
        from gres_cli.inference.engine import Segmenter
        from gres_cli.inference.writers import OutputWriter

        net = load_segment_model(spec_.model, spec_.revision, spec_.group)
        self.engine = Segmenter(net, **spec_.engine)
        # files only: the driver appends the records, once, after they come back
        if spec_.out is not None:
            self.writer = OutputWriter(Path(spec_.out), spec_.fmt, spec_.overlay, records=False)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        if self.refused:  # the columns of a row of this run, empty
            rows = len(batch["task"])
            empty = {"records": "", "error": "", "results": b""}
            return {c: [empty[c]] * rows for c in self.columns} | {"refused": [self.refused] * rows}
        if self.writer is None:  # one job per row: its results, for the driver to score
            results = [self._results(*pickle.loads(p)) for p in batch["task"]]
            return {"results": results, "refused": [""] * len(results)}
        records, errors = [], []
        for payload in batch["task"]:
            task, job, names = pickle.loads(payload)
            done: list[dict[str, Any]] = []
            try:
                for res in self.engine.run([job], self.writer.overlay):
                    rec, mask = result_record(task, res, self.engine.margin)
                    done += self.writer.submit(rec, names[res.index], mask, res.photo)
                done += self.writer.drain()
            except (OSError, GresError) as e:  # an output that cannot be written: the run stops
                errors.append(str(output_error(e)))
            records.append(json.dumps(done))
        error = [errors[0] if errors else ""] * len(records)
        return {"records": records, "error": error, "refused": [""] * len(records)}

    def _results(self, k: int, job: Any) -> bytes:
        return pickle.dumps((k, list(self.engine.run([job]))))


def check_reachable(address: str | None) -> None:
    """GresError when the cluster `address` (else RAY_ADDRESS) names, `host:port` or
    `ray://host:port`, takes no connection within CONNECT_PATIENCE_S: `ray.init` retried
    for about 12 minutes with nothing on stderr but Ray's warnings. `auto`, `local` and a new
    local cluster are Ray's to find."""
    given = address or os.environ.get("RAY_ADDRESS")
    name = "--ray-address" if address else "RAY_ADDRESS"
    if not given or given in ("auto", "local"):
        return
    host, colon, port = given.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return  # not host:port: ray.init's own refusal names it
    setting = os.environ.get("GRES_RAY_CONNECT_TIMEOUT", str(CONNECT_PATIENCE_S))
    try:
        patience = float(setting)
    except ValueError:
        raise GresError(f"GRES_RAY_CONNECT_TIMEOUT={setting!r}: give seconds") from None
    deadline = time.monotonic() + patience
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                why = e.strerror or type(e).__name__
                raise GresError(
                    f"{name} {given}: nothing takes a connection there ({why}, for "
                    f"{patience:g} s): is the cluster's head node up?"
                ) from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def connect(address: str | None) -> Any:
    """ray, connected: to `address`, else RAY_ADDRESS, else a new local cluster (a Python
    caller's own `ray.init` is kept)."""
    ray = import_ray()
    if not ray.is_initialized():
        check_reachable(address)
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise GresError(f"--ray-address {address}: cannot connect ({e})") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver draws one bar over images
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-run INFO lines: not for users
    return ray


def segment_on_ray(
    run: RunFolder,
    tasks: list[Task],
    failed_lines: Any = (),
    *,
    spec: ActorSpec,
    pool: RayPool,
    emit: Any = None,
    progress: Progress | None = None,
) -> RunSummary:
    """`RunFolder.segment` with the answers computed by a Ray actor pool (see the module):
    the same checks, records, files and summary."""
    pool.check()
    prepared = run.prepare(tasks, failed_lines)
    summary, progress = prepared.summary, progress or Progress()
    send = prepared.sender(emit, progress)
    # the largest groups first: a long task started last would hold the run's end back
    order = sorted(
        (k for k, job in enumerate(prepared.jobs) if len(job.skip) < len(job.group.images)),
        key=lambda k: -len(prepared.jobs[k].group.images),
    )
    rows = [
        {"task": pickle.dumps((prepared.tasks[k], prepared.jobs[k], prepared.names[k]))}
        for k in order
    ]
    if rows:
        with pool.connected() as ray:
            _run_rows(ray, run, rows, spec, pool, summary, send, progress)
    summary.seconds = time.perf_counter() - prepared.started
    return summary


def _in_order(
    ray: Any, rows: list[dict[str, bytes]], spec: ActorSpec, pool: RayPool
) -> Iterator[list[Any]]:
    """The engine's results of each job of `rows` (pickled (index, job)) through the pool, job
    by job in order. Ray Data's `preserve_order` keeps them in order (it is read when the
    dataset is made, so it is set first); a job that comes back early waits here all the same,
    and one that comes back twice (retried) is dropped."""
    options = ray.data.DataContext.get_current().execution_options
    kept, options.preserve_order = options.preserve_order, True  # score in job order
    waiting: dict[int, list[Any]] = {}
    next_job = 0
    try:
        for row in _map_rows(ray, rows, spec, pool)[0].iter_rows():
            if row["refused"]:  # the actor could not start: the local run's one line
                raise GresError(row["refused"])
            k, results = pickle.loads(row["results"])
            if k < next_job or k in waiting:  # a retried job handed back twice
                continue
            for r in results:
                r.job = k
            waiting[k] = results
            while next_job in waiting:
                yield waiting.pop(next_job)
                next_job += 1
    except ray.exceptions.RayError as e:
        raise GresError(f"the Ray run failed: {_last_line(e)}") from None
    finally:
        options.preserve_order = kept
    if next_job < len(rows):  # never silently short: the scorer zips jobs with answers
        raise GresError(f"the Ray run handed back {next_job} of {len(rows)} jobs")


def _last_line(error: BaseException) -> str:
    """The cause of a Ray error, in one line (Ray wraps it in a remote traceback)."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    return lines[-1] if lines else type(error).__name__


def _run_rows(
    ray: Any,
    run: RunFolder,
    rows: list[dict[str, bytes]],
    spec: ActorSpec,
    pool: RayPool,
    summary: RunSummary,
    send: Any,
    progress: Progress,
) -> None:
    """Send `rows` (pickled tasks) through the actor pool; append and send each record once.
    `progress` hears how many actors are busy: the tasks not yet back, at most the pool. Each
    actor holds up to two, the least loaded gets the next, so while as many are out as there
    are actors each is busy; of the last ones, two may wait on one actor (counted as two)."""
    data, actors = _map_rows(ray, rows, spec, pool)
    progress.status(f"{actors} actors starting")
    appended: set[tuple[str, str]] = set()
    try:
        for returned, row in enumerate(data.iter_rows(), 1):
            busy = min(actors, len(rows) - returned)
            progress.status(f"{actors} actors: {busy} busy, {actors - busy} idle")
            if row["refused"]:  # the actor could not start: the local run's one line
                raise GresError(row["refused"])
            if row["error"]:
                raise OutputError(row["error"])
            for rec in json.loads(row["records"]):
                key = (image_key(rec["image"]), rec["expression"])
                if key in appended:  # a retried task handed back twice
                    continue
                appended.add(key)
                run.append(rec)
                summary.count(rec)
                send(rec)
    except ray.exceptions.RayError as e:  # e.g. an actor that cannot load the model
        raise GresError(f"the Ray run failed: {_last_line(e)}") from None


def warn_unschedulable(ray: Any, cpus: float, gpus: float) -> None:
    """Say on stderr when no node of the cluster holds an actor's CPUs and GPUs: Ray waits,
    silently, for a node that does to join (a cluster that grows on demand gets one; else
    the run waits until stopped). Not refused: an autoscaling cluster is right to wait."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0.0) >= cpus and r.get("GPU", 0.0) >= gpus for r in nodes):
        return
    most = max(nodes, key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)), default={})
    print(
        f"gres: warning: an actor takes {cpus:g} CPUs and {gpus:g} GPUs, and no node of the "
        f"cluster has them (the largest: {most.get('CPU', 0.0):g} CPUs, {most.get('GPU', 0.0):g} "
        "GPUs); the run waits for such a node to join (Ctrl-C stops it; --ray-cpus-per-actor "
        "and --ray-gpus-per-actor ask for less)",
        file=sys.stderr,
        flush=True,
    )


def _map_rows(
    ray: Any, rows: list[dict[str, bytes]], spec: ActorSpec, pool: RayPool
) -> tuple[Any, int]:
    """`rows` (pickled tasks or jobs) through a pool of SegmentActor: a lazy Ray dataset, and
    the pool's number of actors."""
    actors, gpus = pool.size(ray.cluster_resources(), len(rows))
    warn_unschedulable(ray, pool.cpus_per_actor, gpus)
    spec = replace(spec, threads=max(1, int(pool.cpus_per_actor)))
    # a block per task: each goes to whichever actor is free
    data = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        SegmentActor,
        batch_size=1,
        # Ray Data restarts a dead actor and retries its rows (its actor pools default to
        # max_restarts=-1, max_task_retries=-1; tests/test_ray.py kills one)
        # two tasks in flight per actor: the next task waits at the actor, not in the driver
        # (with one, an actor idled about 0.17 s between tasks while Ray Data noticed: 4.5 s
        # over 27 small groups, benchmarks/bench_ray.py). A task queued behind a long one
        # waits for it while another actor may idle; the largest tasks go first, so that
        # costs at most one task queued behind the largest
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2),
        num_gpus=gpus,
        num_cpus=pool.cpus_per_actor,
        fn_constructor_kwargs={"spec": asdict(spec)},
    )
    return data, actors
