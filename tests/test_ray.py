"""`gres segment --ray` on a local Ray cluster (started once by this module, 2 CPUs): the same
answers as a local run, resume across local and Ray runs, an actor killed mid-run, a driver
killed mid-run (docs/cluster.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import build_grd, build_tiny_grser, gres_here, gres_reporting_imports
from PIL import Image

ray = pytest.importorskip("ray", reason='the Ray tests need pip install "gres[ray]"')

# torch's answers depend on its thread count in the last rounded digit (the order of float
# sums); each actor runs 1 thread (--ray-cpus-per-actor 1), so the local runs compared with
# it do too
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray cluster for the module; its address, for the `gres` processes."""
    # a local test cluster: no token (Ray 2.52+ makes one, which `gres` processes lack)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # margin -0.05: most images present, so masks get written and compared
    return build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny", margin=-0.05)


def _groups(root: Path, sizes: list[int]) -> Path:
    rng = np.random.default_rng(len(sizes))
    for g, n in enumerate(sizes):
        (root / f"g{g}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                root / f"g{g}" / f"{i}.png"
            )
    return root


def _gres(out: Path, *args: str, ray_address: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "gres_cli", "segment", *args, "--out", str(out)]
    if ray_address is not None:
        cmd += ["--ray", "--ray-address", ray_address, "--ray-actors", "2"]
    return cmd


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def _records(out: Path) -> list[str]:
    """OUT's records, OUT's name taken out of their paths, sorted: comparable across folders."""
    lines = (out / "records.jsonl").read_text().splitlines()
    return sorted(line.replace(str(out), "OUT") for line in lines)


def _skipped(stderr: str) -> int:
    """The summary table's count of skipped (finished earlier) images."""
    line = next(x for x in stderr.splitlines() if "skipped" in x)
    return int(re.findall(r"\d+", line)[-1])


def _masks(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def _same_outputs(out: Path, reference: Path) -> None:
    records = _records(out)
    assert records == _records(reference)
    answers = {(json.loads(r)["image"], json.loads(r)["expression"]) for r in records}
    assert len(answers) == len(records)  # each answer once
    masks = _masks(out)
    assert masks and masks == _masks(reference)
    assert (out / "settings.json").read_text() == (reference / "settings.json").read_text()


def test_a_ray_run_gives_the_local_runs_records_and_masks(
    cluster: str, model_dir: Path, tmp_path: Path
):
    # batch 2: most groups span batches. A local run's batches run on across groups (a batch
    # of g0's last image and g1's first), a Ray task's start at its group: the sizes keep
    # each group's batches the same both ways (other batches change d_pos and d_neg in the
    # 6th decimal, as another --batch-size does)
    photos = _groups(tmp_path / "in", [5, 1, 4, 9])
    args = (str(photos), "the thing", "--recursive", "--model", str(model_dir), "--batch-size", "2")
    _run(_gres(tmp_path / "local", *args))
    proc = _run(_gres(tmp_path / "ray", *args, ray_address=cluster))
    _same_outputs(tmp_path / "ray", tmp_path / "local")
    streamed = sorted(x.replace(str(tmp_path / "ray"), "OUT") for x in proc.stdout.splitlines())
    assert streamed == _records(tmp_path / "ray")  # stdout gets each record once too


def test_a_ray_driver_loads_no_model_and_claims_out_as_a_local_run(
    cluster: str, model_dir: Path, tmp_path: Path
):
    """The driver reads the model's K and m off its config (a head node need not hold torch,
    a GPU or the weights); the actors load it. settings.json, records and masks are a local
    run's."""
    photos = _groups(tmp_path / "in", [3, 2])
    args = (str(photos), "the thing", "--recursive", "--model", str(model_dir), "--batch-size", "3")
    _run(_gres(tmp_path / "local", *args))
    driver, heavy = gres_reporting_imports(
        *_gres(tmp_path / "ray", *args, ray_address=cluster)[3:], env=ONE_THREAD
    )
    assert driver.returncode == 0, driver.stderr
    assert heavy == []
    _same_outputs(tmp_path / "ray", tmp_path / "local")


def test_a_ray_run_refuses_an_option_the_model_does_not_take_before_claiming_out(
    cluster: str, model_dir: Path, tmp_path: Path
):
    photos = _groups(tmp_path / "in", [2])
    cmd = _gres(tmp_path / "out", str(photos), "x", "--recursive", "--model", str(model_dir),
                "--experts", "9", ray_address=cluster)  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "gres: error: --experts 9: this model takes 1 to 4"
    )
    assert not (tmp_path / "out" / "settings.json").exists()


def test_a_ray_run_resumes_a_local_run_and_the_other_way_round(
    cluster: str, model_dir: Path, tmp_path: Path
):
    photos = _groups(tmp_path / "in", [4, 2, 3])  # batches aligned with groups, as above
    opts = ("--model", str(model_dir), "--batch-size", "2")
    whole = (str(photos), "the thing", "--recursive", *opts)
    _run(_gres(tmp_path / "clean", *whole))
    # a local run answered g0 only; the Ray run skips its 4 images and answers the rest
    _run(_gres(tmp_path / "a", str(photos / "g0"), "the thing", *opts))
    proc = _run(
        _gres(tmp_path / "a", *whole, "--jsonl", str(tmp_path / "a.jsonl"), ray_address=cluster)
    )
    assert _skipped(proc.stderr) == 4
    _same_outputs(tmp_path / "a", tmp_path / "clean")
    # a Ray run answered g1 only; the local run skips its 2 images
    _run(_gres(tmp_path / "b", str(photos / "g1"), "the thing", *opts, ray_address=cluster))
    proc = _run(_gres(tmp_path / "b", *whole, "--jsonl", str(tmp_path / "b.jsonl")))
    assert _skipped(proc.stderr) == 2
    _same_outputs(tmp_path / "b", tmp_path / "clean")


def test_a_jobs_file_on_ray_gives_the_local_runs_records(
    cluster: str, model_dir: Path, tmp_path: Path
):
    _groups(tmp_path / "in", [3, 4])
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"path": "in/g0", "expression": "the thing"},
        {"path": "in/g1", "expression": "the other thing"},
        {"path": "in/g0", "expression": "the other thing"},
        {"path": "in/nowhere", "expression": "a thing"},  # fails: one error record, exit 1
    ]
    jobs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    # batch 1: a local run's batches would run on across the jobs (see above)
    args = ("--jobs", str(jobs), "--model", str(model_dir), "--batch-size", "1")
    runs = {}
    for name, address in (("local", None), ("ray", cluster)):
        proc = subprocess.run(
            _gres(tmp_path / name, *args, ray_address=address),
            capture_output=True,
            text=True,
            env=ONE_THREAD,
            timeout=600,
        )
        assert proc.returncode == 1, proc.stderr
        runs[name] = sorted(
            x.replace(str(tmp_path / name), "OUT") for x in proc.stdout.splitlines()
        )
    assert len(runs["ray"]) == 3 + 4 + 3 + 1
    assert runs["ray"] == runs["local"]
    _same_outputs(tmp_path / "ray", tmp_path / "local")


def _actor_pids() -> set[int]:
    """The pids of this cluster's Ray Data actors (workers of its raylet titled MapWorker)."""
    node = ray._private.worker._global_node
    raylet = node.all_processes["raylet"][0].process.pid
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes()
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == raylet and b"MapWorker" in title:
            pids.add(int(proc.name))
    return pids


def _wait_for_records(out: Path, proc: subprocess.Popen, n: int) -> int:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        records = out / "records.jsonl"
        if records.exists() and len(records.read_text().splitlines()) >= n:
            return len(records.read_text().splitlines())
        time.sleep(0.05)
    raise AssertionError(f"the run ended or stalled before {n} records: {proc.poll()}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actors in /proc")
def test_an_actor_killed_mid_run_is_retried_and_every_record_lands_once(
    cluster: str, model_dir: Path, tmp_path: Path
):
    photos = _groups(tmp_path / "in", [6] * 12)
    args = (str(photos), "the thing", "--recursive", "--model", str(model_dir), "--batch-size", "1")
    _run(_gres(tmp_path / "local", *args))
    out = tmp_path / "ray"
    proc = subprocess.Popen(
        _gres(out, *args, ray_address=cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ONE_THREAD,
    )
    at_kill = _wait_for_records(out, proc, 6)  # an actor finished a group: both are loaded
    victim = min(_actor_pids())
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert at_kill < 72  # killed mid-run
    assert victim not in _actor_pids()
    _same_outputs(out, tmp_path / "local")
    noise = [x for x in stdout.splitlines() if not x.startswith("{")]
    assert not noise  # stdout is the JSON lines stream, nothing else
    assert len(stdout.splitlines()) == 72


def test_a_killed_driver_leaves_a_folder_the_same_command_resumes(
    cluster: str, model_dir: Path, tmp_path: Path
):
    photos = _groups(tmp_path / "in", [5] * 8)
    args = (str(photos), "the thing", "--recursive", "--model", str(model_dir), "--batch-size", "1")
    _run(_gres(tmp_path / "local", *args))
    out = tmp_path / "ray"
    proc = subprocess.Popen(
        _gres(out, *args, ray_address=cluster),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ONE_THREAD,
    )
    at_kill = _wait_for_records(out, proc, 5)
    proc.kill()
    proc.wait(timeout=60)
    assert at_kill < 40
    again = _run(_gres(out, *args, "--jsonl", str(tmp_path / "again.jsonl"), ray_address=cluster))
    assert at_kill <= _skipped(again.stderr) < 40  # what the killed run recorded is kept
    _same_outputs(out, tmp_path / "local")


def test_eval_on_ray_runs_a_model_not_saved_predictions(tmp_path: Path):
    data = build_grd(tmp_path / "d", n_groups=2)
    (tmp_path / "p.jsonl").write_text("")
    argv = ["eval", str(data), "--predictions", str(tmp_path / "p.jsonl"), "--ray"]
    proc = subprocess.run(
        [sys.executable, "-m", "gres_cli", *argv],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "gres: error: --ray runs a --model; saved --predictions are scored here"
    )


def test_eval_on_ray_scores_as_a_local_eval(cluster: str, model_dir: Path, tmp_path: Path):
    """`gres eval --model M --ray`: the actors compute the answers, the driver scores them in
    the local order: the same report (metrics, margin sweep, calibration) and the same saved
    predictions as a local `gres eval`."""
    data = build_grd(tmp_path / "d", n_groups=4, n_images=3)
    args = ["--model", str(model_dir), "--batch-size", "1"]
    args += ["--margins", "-0.1,0,0.1", "--calibrate", "acc"]

    def evaluate(name: str, *extra: str) -> dict:
        cmd = [sys.executable, "-m", "gres_cli", "eval", str(data), *args, *extra]
        cmd += ["--report", str(tmp_path / f"{name}.json")]
        cmd += ["--save-predictions", str(tmp_path / f"{name}-predictions")]
        _run(cmd)
        return json.loads((tmp_path / f"{name}.json").read_text())

    local = evaluate("local")
    before = _segment_actors()
    on_ray = evaluate("ray", "--ray", "--ray-address", cluster, "--ray-actors", "2")
    assert _segment_actors() == before + 2  # the answers came from the cluster's actors
    assert local["pairs"] == 12  # the test split: 2 groups x 3 images x 2 expressions
    for key in ("metrics", "margin_sweep", "calibrated", "missing", "left_out"):
        assert on_ray[key] == local[key], key
    saved = {name: tmp_path / f"{name}-predictions" for name in ("local", "ray")}
    assert _records(saved["ray"]) == [
        r.replace(str(saved["local"]), str(saved["ray"])).replace(str(saved["ray"]), "OUT")
        for r in _records(saved["local"])
    ]
    assert _masks(saved["ray"]) == _masks(saved["local"])


def _segment_actors() -> int:
    """Actors of SegmentActor pools the cluster has started so far (its GCS's actor table)."""
    from ray._private import state

    names = (a.get("ActorClassName", "") for a in state.actors().values())
    return sum("SegmentActor" in name for name in names)


def test_a_ray_run_tells_its_front_end_how_many_actors_are_busy(
    cluster: str, model_dir: Path, tmp_path: Path
):
    """The progress hears the pool's state after each task that comes back: 5 tasks on 2
    actors keep both busy until the last two tasks are out, then one idles, then both."""
    from gres_cli.inference import RunFolder, tasks_for_path
    from gres_cli.inference.engine import EngineOptions
    from gres_cli.inference.ray_run import RayPool
    from gres_cli.inference.run import Progress

    class Heard(Progress):
        def __init__(self) -> None:
            self.said: list[str] = []
            self.images = 0

        def status(self, text: str) -> None:
            self.said.append(text)

        def advance(self, n: int = 1) -> None:
            self.images += n

    photos = _groups(tmp_path / "in", [2, 1, 3, 1, 2])
    tasks = tasks_for_path(photos, "the thing", recursive=True)
    run = RunFolder(tmp_path / "out")
    heard = Heard()
    try:
        segment = run.start(str(model_dir), None, True, EngineOptions("cpu"), RayPool(actors=2))
        summary = segment(tasks, progress=heard)
    finally:
        run.close()
    assert summary.processed == heard.images == 9
    assert heard.said == ["2 actors starting"] + ["2 actors: 2 busy, 0 idle"] * 3 + [
        "2 actors: 1 busy, 1 idle",
        "2 actors: 0 busy, 2 idle",
    ]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--ray-cpus-per-actor", "nan"),
        ("--ray-cpus-per-actor", "inf"),
        ("--ray-gpus-per-actor", "nan"),
        ("--ray-gpus-per-actor", "inf"),
    ],
)
def test_a_pool_size_that_is_not_a_finite_number_is_one_line(
    option: str, value: str, tmp_path: Path
):
    """Was: a ValueError or OverflowError traceback (int(nan)) once the driver had claimed OUT
    and connected."""
    photos = _groups(tmp_path / "in", [1])
    out = tmp_path / "out"
    result = gres_here(
        "segment", str(photos / "g0"), "x", "--model", "no/such-model", "--out", str(out),
        "--ray", option, value,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"gres: error: {option} {float(value)}: give a finite number"
    assert not out.exists()


@pytest.mark.parametrize("option", ["--ray-cpus-per-actor", "--ray-actors"])
def test_a_ray_option_without_ray_is_refused(option: str, tmp_path: Path):
    """Was: `--ray-cpus-per-actor 4` (or `--ray-actors 0`) without --ray ran a local run,
    silently; the other --ray-... options were refused."""
    photos = _groups(tmp_path / "in", [1])
    out = tmp_path / "out"
    result = gres_here(
        "segment", str(photos / "g0"), "x", "--model", "no/such-model", "--out", str(out),
        option, "4" if option == "--ray-cpus-per-actor" else "0",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith("gres: error: --ray-address, --ray-actors")
    assert option in result.stderr and "go with --ray" in result.stderr
    assert not out.exists()


def test_a_model_the_actors_cannot_load_is_one_line_not_rays_tracebacks(
    cluster: str, model_dir: Path, tmp_path: Path
):
    """A model folder whose config reads but whose weights do not (the driver loads no
    model: the actors find out). Was: Ray's and Ray Data's tracebacks of the dead actor,
    about 200 lines on stderr, before the driver's one line; now the local run's line."""
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    with (broken / "model.safetensors").open("r+b") as f:
        f.truncate(1000)
    photos = _groups(tmp_path / "in", [2])
    local = subprocess.run(
        _gres(tmp_path / "local", str(photos / "g0"), "x", "--model", str(broken)),
        capture_output=True, text=True, env=ONE_THREAD, timeout=600,
    )  # fmt: skip
    assert local.returncode == 2
    data = build_grd(tmp_path / "d", n_groups=1, n_images=2)
    commands = {
        "segment": _gres(
            tmp_path / "ray", str(photos / "g0"), "x", "--model", str(broken), ray_address=cluster
        ),
        "eval": [sys.executable, "-m", "gres_cli", "eval", str(data), "--model", str(broken),
                 "--ray", "--ray-address", cluster, "--ray-actors", "1"],
    }  # fmt: skip
    for name, cmd in commands.items():
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD, timeout=600)
        assert proc.returncode == 2, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1] == local.stderr.strip(), name
        assert proc.stdout == ""


@pytest.mark.parametrize("how", ["option", "RAY_ADDRESS"])
def test_an_address_where_nothing_listens_is_one_line_before_any_work(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Was: `--ray-address 127.0.0.1:1` (a typo, a head node that is down) left ray.init
    retrying for about 12 minutes, with OUT claimed and only Ray's warnings on stderr."""
    photos = _groups(tmp_path / "in", [1])
    out = tmp_path / "out"
    monkeypatch.setenv("GRES_RAY_CONNECT_TIMEOUT", "1")
    address = ["--ray-address", "127.0.0.1:1"]
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
        address = []
    started = time.monotonic()
    result = gres_here(
        "segment", str(photos / "g0"), "x", "--model", "no/such-model", "--out", str(out),
        "--ray", *address,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    name = "--ray-address" if how == "option" else "RAY_ADDRESS"
    assert result.stderr.strip() == (
        f"gres: error: {name} 127.0.0.1:1: nothing takes a connection there (Connection "
        "refused, for 1 s): is the cluster's head node up?"
    )
    assert time.monotonic() - started < 30  # patience 1 s, and a try or two
    assert not out.exists()


def test_an_actor_no_node_can_hold_is_said_and_ctrl_c_stops_the_wait(
    cluster: str, model_dir: Path, tmp_path: Path
):
    """Was: `--ray-cpus-per-actor 3` on a cluster of 2-CPU nodes waited forever, silently
    (Ray waits for a node that can hold the actor to join). Now stderr says so at once, and
    Ctrl-C ends the run as it ends any run (exit 130, finished images kept)."""
    photos = _groups(tmp_path / "in", [2])
    cmd = _gres(tmp_path / "out", str(photos / "g0"), "x", "--model", str(model_dir))
    cmd += ["--ray", "--ray-address", cluster, "--ray-cpus-per-actor", "3"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("gres: warning: an actor takes"):
            break
    else:
        pytest.fail("".join(lines))
    assert line.strip() == (
        "gres: warning: an actor takes 3 CPUs and 0 GPUs, and no node of the cluster has them "
        "(the largest: 2 CPUs, 0 GPUs); the run waits for such a node to join (Ctrl-C stops "
        "it; --ray-cpus-per-actor and --ray-gpus-per-actor ask for less)"
    )
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "interrupted: finished images are saved" in rest
