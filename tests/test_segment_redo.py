"""A re-run redoes what failed (issue 19, "tests that catch bugs"): an image that could not be
read in the first run and was fixed since gets a fresh answer, not its old error again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_grser, gres_here, read_jsonl
from PIL import Image


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # margin -5: every readable image "present", so its mask file is written
    return build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny", margin=-5.0)


def _photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("via_jobs", [False, True], ids=["folder", "jobs"])
def test_an_image_fixed_after_a_failed_run_is_redone_by_the_rerun(
    model_dir: Path, tmp_path: Path, via_jobs: bool
):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "good.png", 0)
    (photos / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    if via_jobs:
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text(json.dumps({"path": str(photos), "expression": "the cat"}) + "\n")
        args = ["segment", "--jobs", str(jobs), "--model", str(model_dir), "--out", str(out)]
    else:
        args = ["segment", str(photos), "the cat", "--model", str(model_dir), "--out", str(out)]

    first = gres_here(*args)
    assert first.exit_code == 1, first.output
    by_name = {Path(r["image"]).name: r for r in read_jsonl(first.stdout)}
    assert by_name["broken.png"]["error"] and by_name["good.png"]["error"] is None

    _photo(photos / "broken.png", 1)  # the user fixes the file
    second = gres_here(*args)
    assert second.exit_code == 0, second.output
    by_name = {Path(r["image"]).name: r for r in read_jsonl(second.stdout)}
    fixed = by_name["broken.png"]
    assert fixed["error"] is None and fixed["present"] is True
    assert (fixed["width"], fixed["height"]) == (40, 30)
    assert Path(fixed["mask"]).is_file() and fixed["area"] > 0
    # and records.jsonl now holds its answer: a third run re-emits it, with no error
    third = gres_here(*args)
    assert third.exit_code == 0, third.output
    again = {Path(r["image"]).name: r for r in read_jsonl(third.stdout)}
    assert again["broken.png"] == fixed
