"""No command writes its output folder over one of its inputs (issue 19, item 1): an output
folder that is, holds or lies inside a model folder or a dataset it reads is refused in one
line, exit 2, before any work, and nothing is written or deleted.

Was: `gres model export run/best run --format onnx --overwrite` replaced `run/` whole (the
source model with it), exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_grd, build_tiny_clipseg, build_tiny_grser
from typer.testing import CliRunner

from gres_cli.cli import app


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder holding every input: a GRSer, a CLIPSeg checkpoint and a GRD dataset."""
    root = tmp_path_factory.mktemp("world")
    build_tiny_grser(root / "runs" / "a" / "best")
    build_tiny_clipseg(root / "clip")
    build_grd(root / "data", n_groups=1)
    return root


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with a file's bytes (None for a folder)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def _export(src: str, out: str) -> list[str]:
    return ["model", "export", src, out, "--overwrite"]


def _init(backend: str, out: str) -> list[str]:
    return ["model", "init", out, "--backend", backend, "--overwrite"]


def _calibrate(extra: list[str]) -> list[str]:
    args = ["eval", "data", "--model", "clip", "--split", "train", "--margins", "0,0.1"]
    return [*args, "--calibrate", "acc", *extra]


def _train(out: str) -> list[str]:
    return ["train", "data", "--out", out, "--steps", "1"]


CASES = {
    # gres model export MODEL OUT --overwrite: OUT is, holds or lies inside MODEL
    "export-is-model": _export("runs/a/best", "runs/a/best"),
    "export-holds-model": _export("runs/a/best", "runs/a"),
    "export-inside-model": _export("runs/a/best", "runs/a/best/onnx"),
    "export-spelled-otherwise": _export("runs/a/best", "./runs/a/../a/best/"),
    # gres model init OUT --backend CKPT --overwrite
    "init-is-backend": _init("clip", "clip"),
    "init-holds-backend": _init("clip", "."),
    "init-inside-backend": _init("clip", "clip/settings"),
    "init-inside-text-model": ["model", "init", "clip/m", "--text-model", "clip", "--overwrite"],
    # gres eval: --save-calibrated, --save-predictions, --plots
    "calibrated-inside-model": _calibrate(["--save-calibrated", "clip/calibrated"]),
    "calibrated-inside-dataset": _calibrate(["--save-calibrated", "data/calibrated"]),
    "predictions-is-model": _calibrate(["--save-predictions", "clip"]),
    "predictions-holds-model": _calibrate(["--save-predictions", "."]),
    "predictions-inside-dataset": _calibrate(["--save-predictions", "data/p"]),
    "plots-inside-model": _calibrate(["--plots", "clip/plots"]),
    "plots-is-dataset": _calibrate(["--plots", "data"]),
    # gres view --out
    "view-is-dataset": ["view", "data", "--out", "data"],
    "view-holds-dataset": ["view", "data", "--out", "."],
    "view-inside-dataset": ["view", "data", "--out", "data/site"],
    # gres train --out
    "train-is-dataset": _train("data"),
    "train-inside-dataset": _train("data/run"),
}


@pytest.mark.parametrize("args", CASES.values(), ids=CASES.keys())
def test_an_output_over_an_input_is_refused_and_nothing_changes(
    world: Path, args: list[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(world)
    before = tree(world)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gres: error:") and "Traceback" not in result.output
    assert any(w in line for w in ("is never modified", "would delete", "inside", "holds")), line
    assert tree(world) == before  # nothing deleted, nothing written


def test_train_out_holding_its_starting_model_is_refused(world: Path, tmp_path: Path):
    """`init_from: runs/a/best` with `--out runs/a`: the run's own best/ would replace it."""
    config = tmp_path / "finetune.json"
    config.write_text(json.dumps({"init_from": str(world / "runs" / "a" / "best"), "steps": 1}))
    before = tree(world)
    args = ["train", str(world / "data"), "--out", str(world / "runs" / "a"), "--config"]
    result = CliRunner().invoke(app, [*args, str(config)])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "init_from" in line and "would delete" in line
    assert tree(world) == before
