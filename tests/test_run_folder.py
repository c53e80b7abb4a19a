"""The run layer (gres_cli.inference.run): one owner per output folder, answers identified by
what they are, not how they were typed (issue 19 items 2, 4, 5, 8, 11, 12; issue 20 item 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import build_tiny_grser, gres_here, noise_image, read_jsonl

HOLD = """
import sys, time
from pathlib import Path
from gres_cli.inference.lock import OutputLock
i, p = (int(x) for x in sys.argv[2].split("/"))
lock = OutputLock(Path(sys.argv[1]), (i, p)).acquire()  # held while referenced
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny", margin=-5.0)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    for k in range(3):
        noise_image(tmp_path / "photos" / f"p{k}.png", k)
    return tmp_path / "photos"


def _hold(out: Path, shard: str = "0/1") -> subprocess.Popen:
    """Another process holding OUT's lock as a run (or a shard of one) does, until killed."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out), shard], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _segment(photos: Path, model: Path, out: Path, *extra: str, expression: str = "x"):
    return gres_here(
        "segment", str(photos), expression, "--model", str(model), "--out", str(out), *extra
    )


def test_a_second_run_into_a_busy_out_is_refused_naming_the_pid(
    model_dir: Path, photos: Path, tmp_path: Path
):
    """Was: two runs into one --out both passed the settings check and mixed their answers."""
    out = tmp_path / "out"
    holder = _hold(out)
    try:
        result = _segment(photos, model_dir, out)
        assert result.exit_code == 2
        assert f"another gres run (pid {holder.pid}) is writing into it" in result.stderr
        assert result.stderr.count("\n") == 1 and result.stdout == ""
        assert not (out / "records.jsonl").exists() and not (out / "settings.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the OS drops the lock
        holder.wait()
    result = _segment(photos, model_dir, out)
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out / "records.jsonl")) == 3


def test_two_real_runs_started_together_never_mix_their_answers(model_dir: Path, tmp_path: Path):
    """Two `gres segment` processes with other expressions into one --out: one runs, the other
    is refused in one line; every record of OUT is the running one's, once."""
    for k in range(40):
        noise_image(tmp_path / "many" / f"p{k:02d}.png", k)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gres_cli", "segment", str(tmp_path / "many")]
    opts = ["--model", str(model_dir), "--out", str(out)]
    procs = [
        subprocess.Popen([*cmd, text, *opts], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for text in ("the cat", "the dog")
    ]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    if codes == [0, 0]:  # one finished before the other began: then the other resumed nothing
        records = read_jsonl(out / "records.jsonl")
        pytest.fail(f"both ran: {len(records)} records")
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is writing into it" in refused and "Traceback" not in refused
    records = read_jsonl(out / "records.jsonl")
    assert len(records) == 40 and len({r["expression"] for r in records}) == 1
    assert len({r["image"] for r in records}) == 40


def test_shards_share_an_out_and_everything_else_is_refused(model_dir: Path, tmp_path: Path):
    for g in range(2):
        for k in range(2):
            noise_image(tmp_path / "in" / f"g{g}" / f"p{k}.png", 2 * g + k)
    photos, out = tmp_path / "in", tmp_path / "out"
    holder = _hold(out, "0/2")
    try:
        same_share = _segment(photos, model_dir, out, "--recursive", "--shard", "0/2")
        assert same_share.exit_code == 2
        assert f"share 0/2 is already being written by pid {holder.pid}" in same_share.stderr
        other_split = _segment(photos, model_dir, out, "--recursive", "--shard", "1/3")
        assert other_split.exit_code == 2 and "--shard i/2" in other_split.stderr
        whole = _segment(photos, model_dir, out, "--recursive")
        assert whole.exit_code == 2
        assert f"sharded run (pid {holder.pid})" in whole.stderr
        other_share = _segment(photos, model_dir, out, "--recursive", "--shard", "1/2")
        assert other_share.exit_code == 0, other_share.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert {r["group"] for r in read_jsonl(out / "records.jsonl")} == {"g1"}  # share 1 of 2
    rest = _segment(photos, model_dir, out, "--recursive", "--shard", "0/2")  # share 0 later
    assert rest.exit_code == 0, rest.output
    records = read_jsonl(out / "records.jsonl")
    assert sorted(r["group"] for r in records) == ["g0", "g0", "g1", "g1"]


def test_a_rerun_after_the_weights_changed_is_refused_naming_them(
    model_dir: Path, photos: Path, tmp_path: Path
):
    """Was: settings.json hashed config.json only; a re-run after model.safetensors changed
    re-emitted the first run's records as its own, exit 0."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    out = tmp_path / "out"
    assert _segment(photos, model, out).exit_code == 0
    first = (out / "records.jsonl").read_text()
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: same size, same config
    weights.write_bytes(bytes(data))
    again = _segment(photos, model, out)
    assert again.exit_code == 2 and again.stdout == ""
    assert "the model's weights (its files changed)" in again.stderr
    assert (out / "records.jsonl").read_text() == first
    redo = _segment(photos, model, out, "--overwrite")
    assert redo.exit_code == 0 and len(read_jsonl(out / "records.jsonl")) == 3


def test_weight_digests_are_cached_by_size_and_mtime(tmp_path: Path, monkeypatch):
    from gres_cli.model import hub

    monkeypatch.setenv("GRES_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = hub.file_sha256(f)
    assert first == __import__("hashlib").sha256(b"a" * 1000).hexdigest()
    cached = json.loads((tmp_path / "cache" / "file-digests.json").read_text())
    assert cached[str(f)][2] == first
    cached[str(f)][2] = "from-the-cache"  # a hit is not re-read
    (tmp_path / "cache" / "file-digests.json").write_text(json.dumps(cached))
    assert hub.file_sha256(f) == "from-the-cache"
    f.write_bytes(b"b" * 1000)  # same size, new mtime: hashed again
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert hub.file_sha256(f) == __import__("hashlib").sha256(b"b" * 1000).hexdigest()


def test_a_model_an_image_and_a_group_are_identified_by_what_they_are(
    model_dir: Path, photos: Path, tmp_path: Path
):
    """Was: `--model m` then `--model ./m/` was refused as another model; `photos` then
    `$PWD/photos` redid every image and records.jsonl held each twice."""
    import shutil

    shutil.copytree(model_dir, tmp_path / "m")
    out = tmp_path / "out"
    first = gres_here("segment", "photos", "x", "--model", "m", "--out", "out", cwd=tmp_path)
    assert first.exit_code == 0, first.output
    again = gres_here(
        "segment", str(photos), "x", "--model", "./m/", "--out", str(out), cwd=tmp_path
    )
    assert again.exit_code == 0, again.output
    assert [r["image"] for r in read_jsonl(again.stdout)] == [
        f"photos/p{k}.png" for k in range(3)
    ]  # re-emitted as first written: nothing redone
    assert len(read_jsonl(out / "records.jsonl")) == 3


def test_a_missing_path_on_stdin_never_renames_the_other_groups(
    model_dir: Path, photos: Path, tmp_path: Path
):
    """Was: one mistyped path from another folder renamed every good image's group (`photos`
    became `tmp/photos`): the corrected re-run wrote each mask again under another folder."""
    good = "".join(f"photos/p{k}.png\n" for k in range(3))
    args = ("segment", "-", "x", "--model", str(model_dir), "--out", "out")
    typo = gres_here(*args, stdin=good + "b1/photos/p9.png\n", cwd=tmp_path)
    assert typo.exit_code == 1
    records = read_jsonl(typo.stdout)
    assert {r["group"] for r in records if not r["error"]} == {"photos"}
    fixed = gres_here(*args, stdin=good, cwd=tmp_path)
    assert fixed.exit_code == 0, fixed.output
    assert {r["group"] for r in read_jsonl(fixed.stdout)} == {"photos"}
    masks = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")
    )
    assert masks == [f"photos/p{k}.png" for k in range(3)]


@pytest.mark.parametrize(
    "name", ["settings.json", "records.jsonl", ".gres.lock", "records.jsonl/x"]
)
def test_a_jobs_line_whose_group_is_named_like_a_gres_file_fails_alone(
    model_dir: Path, photos: Path, tmp_path: Path, name: str
):
    """Was: the run stopped with "cannot write outputs", and the re-run again."""
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"path": "photos", "expression": "x"},
        {"path": "photos", "expression": "y", "group": name},
    ]
    jobs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    for _ in range(2):
        result = gres_here(
            "segment", "--jobs", str(jobs), "--model", str(model_dir), "--out", "out", cwd=tmp_path
        )
        assert result.exit_code == 1, result.output
        records = read_jsonl(result.stdout)
        errors = [r for r in records if r["error"]]
        assert [r["job"]["line"] for r in errors] == [2]
        assert "one of gres's own files" in errors[0]["error"]
        assert len([r for r in records if not r["error"]]) == 3
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["layout"]


def test_view_onto_a_folder_that_is_not_a_site_is_refused_before_any_work(
    model_dir: Path, photos: Path, tmp_path: Path
):
    (tmp_path / "out-view").mkdir()
    (tmp_path / "out-view" / "notes.txt").write_text("mine")
    result = _segment(photos, model_dir, tmp_path / "out", "--view")
    assert result.exit_code == 2 and "not a gres view site" in result.stderr
    assert not (tmp_path / "out" / "records.jsonl").exists()
    assert (tmp_path / "out-view" / "notes.txt").read_text() == "mine"


def test_jsonl_onto_an_input_or_the_runs_own_records_is_refused(
    model_dir: Path, photos: Path, tmp_path: Path
):
    out = tmp_path / "out"
    before = (photos / "p0.png").read_bytes()
    onto_input = _segment(photos, model_dir, out, "--jsonl", str(photos / "p0.png"))
    assert onto_input.exit_code == 2 and "is an input image" in onto_input.stderr
    assert (photos / "p0.png").read_bytes() == before
    onto_records = _segment(photos, model_dir, out, "--jsonl", str(out / "records.jsonl"))
    assert onto_records.exit_code == 2 and "run's own records.jsonl" in onto_records.stderr
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00junk")
    not_text = _segment(photos, model_dir, out, "--jsonl", str(binary))
    assert not_text.exit_code == 2 and "not UTF-8 text" in not_text.stderr


def test_overwrite_leaves_each_record_once(model_dir: Path, photos: Path, tmp_path: Path):
    """Was: --overwrite with the same settings appended every record a second time."""
    out = tmp_path / "out"
    assert _segment(photos, model_dir, out).exit_code == 0
    assert _segment(photos, model_dir, out, "--overwrite").exit_code == 0
    records = read_jsonl(out / "records.jsonl")
    assert sorted(r["image"] for r in records) == sorted(str(p) for p in photos.glob("*.png"))


def test_a_python_run_resumes_where_it_stopped(model_dir: Path, photos: Path, tmp_path: Path):
    """The README's "From Python" run: the same lines again skip what is done."""
    from gres_cli.backends import load_model
    from gres_cli.inference import RunFolder, Segmenter, tasks_for_path

    engine = Segmenter(load_model(model_dir))
    tasks = tasks_for_path(photos, "the cat")
    with RunFolder(tmp_path / "out").open(engine, str(model_dir)) as run:
        first = run.segment(tasks)
    assert first.counts == {"present": 3, "absent": 0, "failed": 0, "skipped": 0}
    with RunFolder(tmp_path / "out").open(engine, str(model_dir)) as run:
        again = run.segment(tasks)
    assert again.counts["skipped"] == 3 and again.exit_code == 0
    assert again.records == first.records
    with (
        pytest.raises(Exception, match="is writing into it"),
        RunFolder(tmp_path / "out").open(engine, str(model_dir)),
    ):
        RunFolder(tmp_path / "out").open(engine, str(model_dir))


def test_the_readme_python_run_resumes_when_run_again(tmp_path: Path, monkeypatch):
    """The README's "From Python" block, as written, twice: the second run skips every image."""
    from conftest import REPO

    text = (REPO / "README.md").read_text().split("## From Python", 1)[1]
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    first: dict = {}
    exec(code, first)
    again: dict = {}
    exec(code, again)
    total = sum(first["summary"].counts.values())
    assert total == len(list((REPO / "examples/synth-demo/images").rglob("*.png")))
    assert again["summary"].counts["skipped"] == total
    assert again["summary"].records == first["summary"].records


def test_a_hub_model_is_named_by_its_id_and_the_commit_it_resolved_to(
    model_dir: Path, photos: Path, tmp_path: Path
):
    """A Hub model's weights are pinned by the commit its revision resolved to: after the
    branch moves, a re-run into the same --out is refused naming the commit."""
    import shutil

    from conftest import gres, populate_hub_cache

    cache = tmp_path / "hub"
    populate_hub_cache(cache, "gres-test/tiny", model_dir, commit="a" * 40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    args = ("segment", str(photos), "x", "--model", "gres-test/tiny", "--out", str(tmp_path / "o"))
    first = gres(*args, env=env)
    assert first.returncode == 0, first.stderr
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())
    assert (settings["model"], settings["commit"]) == ("gres-test/tiny", "a" * 40)
    assert "weights_sha256" not in settings
    repo = cache / "models--gres-test--tiny"
    shutil.copytree(repo / "snapshots" / ("a" * 40), repo / "snapshots" / ("b" * 40), symlinks=True)
    (repo / "refs" / "main").write_text("b" * 40)  # the branch moved
    again = gres(*args, env=env)
    assert again.returncode == 2 and "the model's Hub commit" in again.stderr, again.stderr


def test_a_reader_that_goes_away_stops_the_run_as_a_broken_pipe(
    model_dir: Path, photos: Path, tmp_path: Path
):
    """`gres segment ... | head -1`: the records' reader leaving is no output fault. Was: the
    local run turned it into "cannot write outputs (Broken pipe) ... fix it", where a Ray
    run (and click, for the CLI) stops quietly."""
    from gres_cli.backends import load_model
    from gres_cli.inference import RunFolder, Segmenter, tasks_for_path

    def emit(record: dict) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    engine = Segmenter(load_model(str(model_dir)), device="cpu")
    run = RunFolder(tmp_path / "out").open(engine, str(model_dir))
    with run, pytest.raises(BrokenPipeError):
        run.segment(tasks_for_path(photos, "x"), emit=emit)
    assert len(read_jsonl(tmp_path / "out" / "records.jsonl")) >= 1  # its files and record kept
