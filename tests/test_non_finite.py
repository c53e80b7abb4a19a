"""A model that gives non-finite distances (issue 19, item 12) answers nothing: its records
hold `null` and an error (strict JSON: no bare NaN), the run exits 1, a re-run redoes those
images, and `gres eval` leaves the pairs out instead of scoring them "absent". Was: `NaN` in
the JSONL (rejected by strict parsers) and the image silently called absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_grd, build_tiny_grser, gres_here, noise_image


def _strict(line: str) -> dict:
    def refuse(constant: str):
        raise ValueError(f"bare {constant} in a JSONL line")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GRSer whose weights are all NaN: every distance it gives is NaN."""
    from gres_cli.model.grser import GRSer

    folder = build_tiny_grser(tmp_path_factory.mktemp("model") / "nan")
    net = GRSer.from_pretrained(folder)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    net.save_pretrained(folder)
    return folder


def test_non_finite_distances_are_null_with_an_error_not_absent(nan_model: Path, tmp_path: Path):
    for i in range(2):
        noise_image(tmp_path / "photos" / f"{i}.png", i)
    args = ["segment", str(tmp_path / "photos"), "the cat", "--model", str(nan_model)]
    result = gres_here(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    saved = (tmp_path / "out" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(saved) == 2
    for line in lines + saved:
        rec = _strict(line)
        assert rec["present"] is None and rec["d_pos"] is None and rec["d_neg"] is None
        assert rec["score"] is None and rec["mask"] is None
        assert "non-finite" in rec["error"], rec
    again = gres_here(*args, "--out", str(tmp_path / "out"))  # redone, not re-emitted as done
    assert again.exit_code == 1 and len(again.stdout.splitlines()) == 2


def test_eval_leaves_non_finite_answers_out(nan_model: Path, tmp_path: Path):
    data = build_grd(tmp_path / "d", n_groups=1)
    report = tmp_path / "r.json"
    args = ["eval", str(data), "--model", str(nan_model), "--report", str(report)]
    result = gres_here(*args)
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    assert r["pairs"] == 0 and r["left_out"] == 6  # 2 expressions x 3 images, none scored
    assert all("non-finite" in m for m in r["missing"])
