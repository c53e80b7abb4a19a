"""`gres segment --jobs FILE|-`: many (path, expression) jobs in one process (issue 14). Runs
in-process (CliRunner): no interpreter start per command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_grser, gres_here, noise_image, read_jsonl

from gres_cli.inference.jobs import expression_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # margin -5: every image "present", masks written
    return build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny", margin=-5.0)


def _jobs_file(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


ANSWER = ("present", "d_pos", "d_neg", "area", "bbox", "width", "height")


def test_mixed_jobs_give_a_record_per_image_and_job_and_one_line_errors(
    model_dir: Path, tmp_path: Path
):
    batch = tmp_path / "batch"  # paths in the jobs file are relative to its folder
    for k, name in enumerate(("a", "b", "c")):
        noise_image(batch / "photos" / f"{name}.png", k)
    noise_image(batch / "other" / "d.png", 9)
    noise_image(batch / "copy" / "photos" / "a.png", 8)  # another photos/a.png
    _jobs_file(
        batch / "jobs.jsonl",
        [
            {"path": "photos", "expression": "x"},
            {"path": "photos", "expression": "y", "id": "q2"},
            {"path": "other/d.png", "expression": "x"},
            {"path": "photos/[ab].png", "expression": "z", "group": "ab"},
            {"path": "nowhere", "expression": "x"},
            "{not json",
            {"path": "photos"},
            "",
            {"path": "photos/a.png", "expression": "x"},  # line 1 already asks x of a.png
            {"path": "copy/photos", "expression": "x"},  # OUT/photos/<x>/a.png is line 1's
        ],
    )
    result = gres_here("segment", "--jobs", "batch/jobs.jsonl", "--model", str(model_dir),
                  "--out", "out", cwd=tmp_path)  # fmt: skip
    assert result.exit_code == 1, result.output
    recs = read_jsonl(result.stdout)
    errors = [r for r in recs if r["error"]]
    assert [(r["job"]["line"], r["image"]) for r in errors] == [(n, None) for n in (5, 6, 7, 9, 10)]
    assert "nowhere: no such file or folder" in errors[0]["error"]
    assert "not JSON" in errors[1]["error"] and '"expression"' in errors[2]["error"]
    assert "line 1 already asks 'x'" in errors[3]["error"]
    assert "would overwrite" in errors[4]["error"] and "its own" in errors[4]["error"]
    assert result.stderr.count("gres: job failed: line ") == 5
    answers = [r for r in recs if not r["error"]]
    assert [(r["job"]["line"], r["group"], Path(r["image"]).name) for r in answers] == [
        (1, "photos", "a.png"),
        (1, "photos", "b.png"),
        (1, "photos", "c.png"),
        (2, "photos", "a.png"),
        (2, "photos", "b.png"),
        (2, "photos", "c.png"),
        (3, "other", "d.png"),
        (4, "ab", "a.png"),
        (4, "ab", "b.png"),
    ]
    assert answers[0]["image"] == str(Path("batch/photos/a.png"))
    assert answers[3]["job"]["id"] == "q2" and answers[3]["expression"] == "y"
    for r in answers:  # one folder per expression: y never overwrites x's masks
        folder = expression_folder(r["expression"])
        assert r["mask"] == str(
            Path("out") / r["group"] / folder / Path(r["image"]).with_suffix(".png").name
        )
        assert (tmp_path / r["mask"]).is_file()
    assert len(read_jsonl((tmp_path / "out" / "records.jsonl").read_text())) == 9


def test_jobs_records_equal_separate_single_runs(model_dir: Path, tmp_path: Path):
    for k in range(5):
        noise_image(tmp_path / "photos" / f"{k}.png", k)
    common = ("--model", str(model_dir), "--batch-size", "3")
    jobs = _jobs_file(
        tmp_path / "jobs.jsonl",
        [{"path": "photos", "expression": e} for e in ("x", "the red one")]
        + [{"path": "photos/4.png", "expression": "y"}],
    )
    together = gres_here("segment", "--jobs", str(jobs), "--out", str(tmp_path / "j"), *common)
    assert together.exit_code == 0, together.output
    joint = read_jsonl(together.stdout)
    alone = []
    for k, (path, expression) in enumerate(
        [("photos", "x"), ("photos", "the red one"), ("photos/4.png", "y")]
    ):
        one = gres_here(
            "segment", str(tmp_path / path), expression, "--out", str(tmp_path / f"s{k}"), *common
        )
        assert one.exit_code == 0, one.output
        alone += read_jsonl(one.stdout)
    assert len(joint) == len(alone) == 11
    for j, s in zip(joint, alone, strict=True):
        assert (j["image"], j["group"], j["expression"]) == (
            s["image"],
            s["group"],
            s["expression"],
        )
        assert {k: j[k] for k in ANSWER} == {k: s[k] for k in ANSWER}
        assert Path(j["mask"]).read_bytes() == Path(s["mask"]).read_bytes()


def test_jobs_resume_and_a_changed_jobs_file_never_reuse_answers_of_another_group(
    model_dir: Path, tmp_path: Path
):
    for k in range(3):
        noise_image(tmp_path / "photos" / f"{k}.png", k)
    out = tmp_path / "out"
    lines = [{"path": "photos", "expression": "x"}, {"path": "photos", "expression": "y"}]
    jobs = _jobs_file(tmp_path / "jobs.jsonl", lines)
    args = ("segment", "--jobs", str(jobs), "--model", str(model_dir), "--out", str(out))
    first = gres_here(*args)
    assert first.exit_code == 0, first.output
    # a run killed after 4 records: the re-run redoes the other 2 and reaches the same records
    ledger = out / "records.jsonl"
    ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[:4]))
    again = gres_here(*args)
    assert again.exit_code == 0 and again.stdout == first.stdout
    assert len(read_jsonl(ledger.read_text())) == 6
    # lines reordered and one added: old answers re-emitted under their new line, y's kept
    _jobs_file(jobs, [lines[1], {"path": "photos/0.png", "expression": "z"}, lines[0]])
    moved = gres_here(*args)
    assert moved.exit_code == 0, moved.output
    recs = read_jsonl(moved.stdout)
    # finished images' records come first (as in a single run), the new job's after them
    assert [(r["job"]["line"], r["expression"]) for r in recs] == [(1, "y")] * 3 + [
        (3, "x")
    ] * 3 + [(2, "z")]
    old = {(r["image"], r["expression"]): r for r in read_jsonl(first.stdout)}
    for r in recs:
        if r["expression"] != "z":
            assert {k: r[k] for k in (*ANSWER, "mask")} == {
                k: old[(r["image"], r["expression"])][k] for k in (*ANSWER, "mask")
            }
    # the folder gained a photo: x's and y's answers came from other experts, so those jobs
    # fail in one line each instead of passing the old answers off; z (its own group) resumes
    noise_image(tmp_path / "photos" / "3.png", 3)
    grown = gres_here(*args)
    assert grown.exit_code == 1
    assert grown.stderr.count("made in another group of images") == 2, grown.stderr
    assert [r["expression"] for r in read_jsonl(grown.stdout) if not r["error"]] == ["z"]
    redone = gres_here(*args, "--overwrite")
    assert redone.exit_code == 0, redone.output
    assert len([r for r in read_jsonl(redone.stdout) if r["expression"] == "x"]) == 4


def test_jobs_from_stdin_and_usage_errors(model_dir: Path, tmp_path: Path):
    noise_image(tmp_path / "photos" / "a.png", 0)
    model = ("--model", str(model_dir))
    stdin = json.dumps({"path": "photos", "expression": "x"}) + "\n"  # relative to the cwd
    result = gres_here("segment", "--jobs", "-", *model, "--out", "o", stdin=stdin, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    (rec,) = read_jsonl(result.stdout)
    assert rec["image"] == str(Path("photos/a.png")) and rec["job"]["line"] == 1
    both = gres_here("segment", "photos", "x", "--jobs", "-", *model, stdin=stdin, cwd=tmp_path)
    assert both.exit_code == 2 and "--jobs replaces PATH and EXPRESSION" in both.stderr
    neither = gres_here("segment", *model, cwd=tmp_path)
    assert neither.exit_code == 2 and "or --jobs FILE" in neither.stderr
    # a single run's layout (OUT/<group>/<stem>.png) and a jobs run's never mix in one --out
    single = gres_here("segment", "photos", "x", *model, "--out", "o", cwd=tmp_path)
    assert single.exit_code == 2 and "expression folders" in single.stderr


def test_eval_and_view_read_a_jobs_stream_past_its_error_records(tmp_path: Path):
    """A --jobs stream holds error records with no image: eval and view skip them (eval once
    refused the whole file as "not a gres segment record")."""
    from gres_cli.evaluation.run import JsonlPredictions
    from gres_cli.view.run import read_records

    good = {"image": "p/a.png", "group": "p", "expression": "x", "present": False, "error": None}
    bad = {"image": None, "group": None, "expression": "y", "error": "line 2: nowhere: no such"}
    stream = tmp_path / "r.jsonl"
    stream.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    assert list(JsonlPredictions(stream).by_path) == [(str(Path("p/a.png").resolve()), "x")]
    assert read_records(stream) == ([good], 0)
