"""The labelling loop of docs/labelling.md, small: teacher run -> from-run (with simulated
corrections) -> split -> train -> export -> eval, every step a real `gres` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from grd_tools import load
from grd_tools.corrections import read_corrections, run_id
from grd_tools.validate import validate


@pytest.mark.slow
def test_labelling_loop_runs_end_to_end_and_applies_the_corrections(tmp_path):
    work, figures_file = tmp_path / "loop", tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "labelling_loop.py"), str(work),
         "--groups", "5", "--steps", "2", "--groups-per-step", "2", "--correct", "0.5",
         "--json", str(figures_file)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(figures_file.read_text())
    # the teacher on the held-out group (seed 7's test split: 1 group, 24 pairs); CPU inference
    # is deterministic
    assert figures["teacher"] == {"acc": 0.875, "mIoU": 0.7211, "N-acc": 0.75, "T-acc": 1.0}
    for name in ("student", "student_corrected"):
        assert 0 <= figures[name]["metrics"]["acc"] <= 1
    assert (work / "plain-onnx" / "config.json").is_file()
    assert (work / "corrected-onnx" / "config.json").is_file()
    assert "student, 50% of wrong answers corrected" in done.stdout

    truth = load(work / "truth")
    answers = [
        json.loads(x) for x in (work / "teacher-run" / "records.jsonl").read_text().splitlines()
    ]
    assert len(answers) == figures["teacher_pairs"] == 4 * 3 * 8  # train groups x expr x images
    gt = {
        (g.id, Path(i.file).stem, e.text): e.targets[i.id]
        for g in truth.groups
        for e in g.expressions
        for i in g.images
    }
    fixes = read_corrections(work / "corrections.json")
    settings = json.loads((work / "teacher-run" / "settings.json").read_text())
    assert fixes.run == run_id(settings)
    assert len(fixes.items) == round(0.5 * sum(figures["teacher_wrong"].values())) > 0
    for fix in fixes.items.values():  # every correction fixes a real mistake, as the truth says
        target = gt[(fix.group, Path(fix.image).stem, fix.expression)]
        if fix.answer == "absent":
            assert target is None and fix.was == "present"
        elif fix.answer == "present":
            assert target is not None and fix.was == "absent"
        else:
            assert target is not None and fix.was == "present"

    plain, corrected = load(work / "plain-labels"), load(work / "corrected-labels")
    for labels in ("plain-labels", "corrected-labels", "plain-split", "corrected-split"):
        assert validate(work / labels).ok(strict=True), labels
    assert sum(1 for _ in plain.pairs()) == len(answers)
    dropped = sum(f.answer != "absent" for f in fixes.items.values())
    assert sum(1 for _ in corrected.pairs()) == len(answers) - dropped
    flipped = {
        (e.meta["run_group"], image, e.text)
        for g in corrected.groups
        for e in g.expressions
        for image, fix in e.meta.get("corrected", {}).items()
    }
    expected = {
        (f.group, Path(f.image).stem, f.expression)
        for f in fixes.items.values()
        if f.answer == "absent"
    }
    assert flipped == expected
    for g in corrected.groups:
        for e in g.expressions:
            for image in e.meta.get("corrected", {}):
                assert e.targets[image] is None
