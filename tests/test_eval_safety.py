"""`gres eval` checks its options before the work and never scores an unreadable image as an
answer (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_grd, build_tiny_grser
from typer.testing import CliRunner

from gres_cli.cli import app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny")


def test_calibrate_names_a_metric_of_the_sweep_before_any_work(tmp_path: Path):
    """Was: `--calibrate Sm` ran the whole model, then died with a KeyError."""
    data = build_grd(tmp_path / "d")
    for name in ("Sm", "nope"):
        args = ["eval", str(data), "--model", "no/such-model", "--margins", "0,0.1"]
        result = CliRunner().invoke(app, [*args, "--calibrate", name])
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.strip().splitlines()
        assert f"--calibrate {name!r}" in line and "acc" in line and "Sm," not in line


def test_an_unreadable_image_is_left_out_with_its_reason_not_scored_absent(
    model_dir: Path, tmp_path: Path
):
    """Was: `gres eval --model` scored an unreadable image as a correct "absent" answer,
    listed neither in `missing` nor in `warnings` (N-acc inflated)."""
    data = build_grd(tmp_path / "d", n_groups=1)
    (data / "images" / "group-00" / "0002.jpg").write_bytes(b"not a jpeg")  # e1, e2: absent
    report = tmp_path / "r.json"
    args = ["eval", str(data), "--model", str(model_dir), "--report", str(report)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    assert r["pairs"] == 4 and r["left_out"] == 2  # 2 expressions x 3 images, 2 unreadable
    assert len(r["missing"]) == 2
    assert all("0002.jpg" in m and "cannot read" in m for m in r["missing"])
    assert "2 pairs left out" in result.stderr


def test_report_and_plots_never_land_on_an_input(tmp_path: Path):
    """`--report` onto the predictions file or the manifest, or `--plots` inside the dataset,
    would overwrite or litter an input: refused before any work."""
    data = build_grd(tmp_path / "d", n_groups=1)
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("")
    manifest = (data / "grd.json").read_bytes()
    for option, target in (
        ("--report", predictions),
        ("--report", data / "grd.json"),
        ("--plots", data / "plots"),
    ):
        args = ["eval", str(data), "--predictions", str(predictions), option, str(target)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.strip().splitlines()
        assert option in line
    assert predictions.read_text() == "" and (data / "grd.json").read_bytes() == manifest
    assert not (data / "plots").exists()


@pytest.mark.parametrize(
    "args",
    [("--margin", "nan"), ("--margin", "inf"), ("--margins", "nan,0"), ("--margins", "0,inf")],
)
def test_a_margin_that_is_not_a_finite_number_is_refused_before_any_work(
    model_dir: Path, tmp_path: Path, args: tuple[str, str]
):
    """Was: `gres eval --margin nan` called every image absent and wrote `"margin": NaN` (not
    JSON) into the report; `--margins nan,0` swept a NaN row."""
    data = build_grd(tmp_path / "d", n_groups=1)
    report = tmp_path / "r.json"
    cmd = ["eval", str(data), "--model", str(model_dir), *args, "--report", str(report)]
    result = CliRunner().invoke(app, cmd)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gres: error:") and args[0] in line and "finite" in line, line
    assert not report.exists()
