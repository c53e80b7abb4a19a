"""A `--jobs` glob that matches no image says what it did match (issue 19, item 12). Was:
"no image matches" for a glob that matched only folders, which reads like a typo in the
pattern."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_grser, gres_here, noise_image, read_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny")


def test_a_glob_matching_only_folders_or_other_files_says_what_it_matched(
    model_dir: Path, tmp_path: Path
):
    noise_image(tmp_path / "trips" / "day1" / "a.png", 0)
    noise_image(tmp_path / "trips" / "day2" / "b.png", 1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    lines = [
        {"path": "trips/*", "expression": "the cat"},  # two folders
        {"path": "notes/*", "expression": "the cat"},  # a text file
        {"path": "nowhere/*.png", "expression": "the cat"},  # nothing at all
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["segment", "--jobs", str(jobs), "--model", str(model_dir)]
    result = gres_here(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith("gres: job failed")]
    assert len(said) == 3, result.stderr
    folders, others, nothing = said
    assert "matches 2 folders (day1, day2) and no image" in folders, folders
    assert "trips/*/*" in folders  # the way out: name the images inside them
    assert "matches 1 file that is not an image (todo.txt)" in others, others
    assert "matches nothing" in nothing, nothing
    errors = [r["error"] for r in read_jsonl(result.stdout)]
    assert len(errors) == 3 and all(errors)
