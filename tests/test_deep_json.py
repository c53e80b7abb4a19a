"""Deeply nested JSON (issue 19, item 7) is a bad input like any other: a `--jobs` line gets
its own error record and the other lines run; a JSONL of predictions, a grd.json or an eval
report nested past Python's recursion limit is one line, exit 2. Was: a RecursionError
traceback ended the whole run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_grd, build_tiny_grser, gres_here, noise_image, read_jsonl
from typer.testing import CliRunner

from gres_cli.cli import app

DEEP_LINE = "[" * 3000 + "]" * 3000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny")


def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gres: error:"), line
    return line


def test_a_deeply_nested_jobs_line_gets_its_error_record_and_the_others_run(
    model_dir: Path, tmp_path: Path
):
    noise_image(tmp_path / "photos" / "a.png", 0)
    noise_image(tmp_path / "photos" / "b.png", 1)
    jobs = tmp_path / "jobs.jsonl"
    good = json.dumps({"path": str(tmp_path / "photos"), "expression": "the cat"})
    jobs.write_text(f"{DEEP_LINE}\n{good}\n")
    args = ["segment", "--jobs", str(jobs), "--model", str(model_dir)]
    result = gres_here(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    records = read_jsonl(result.stdout)
    errors = [r for r in records if r["image"] is None]
    assert len(errors) == 1 and "line 1" in errors[0]["error"], errors
    assert "nested" in errors[0]["error"]
    answered = sorted(Path(r["image"]).name for r in records if r["image"] is not None)
    assert answered == ["a.png", "b.png"]
    assert all(r["error"] is None for r in records if r["image"] is not None)


def test_eval_predictions_with_a_deeply_nested_line_is_one_line(tmp_path: Path):
    data = build_grd(tmp_path / "d", n_groups=1)
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(DEEP_LINE + "\n")
    args = ["eval", str(data), "--predictions", str(predictions)]
    line = _one_line_exit_2(CliRunner().invoke(app, args))
    assert f"{predictions}:1" in line


@pytest.mark.parametrize("where", ["whole", "inside"])
def test_a_deeply_nested_manifest_is_one_line_in_validate_stats_and_view(
    tmp_path: Path, where: str
):
    data = build_grd(tmp_path / "d", n_groups=1)
    if where == "whole":
        text = "[" * 2000 + "]" * 2000
    else:  # a valid manifest whose dataset meta holds the deep value
        manifest = (data / "grd.json").read_text()
        text = manifest.replace(
            '"name":', '"meta": {"x": ' + "[" * 2000 + "]" * 2000 + '}, "name":', 1
        )
    (data / "grd.json").write_text(text)
    for args in (["grd", "validate", str(data)], ["grd", "stats", str(data)], ["view", str(data)]):
        line = _one_line_exit_2(CliRunner().invoke(app, args))
        assert "grd.json" in line and "nested" in line, (args, line)
    assert not (tmp_path / "d-view").exists()


def test_a_deeply_nested_eval_report_is_one_line_in_view(tmp_path: Path):
    report = tmp_path / "report.json"
    report.write_text("[" * 2000 + "]" * 2000)
    line = _one_line_exit_2(CliRunner().invoke(app, ["view", str(report)]))
    assert "report.json" in line


def test_a_deeply_nested_records_line_in_a_run_is_a_bad_line_in_view(tmp_path: Path):
    """`gres view` of a run folder counts a line that is not a record and goes on."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "records.jsonl").write_text(DEEP_LINE + "\n")
    (out / "settings.json").write_text("{}")
    result = CliRunner().invoke(app, ["view", str(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
