"""`gres grd from-run`: a segment run's answers become a GRD dataset, corrections applied, the
run left as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_MODEL, REPO, gres_here, read_jsonl

from grd_tools import load
from grd_tools.corrections import Correction, corrections_document, run_id
from grd_tools.errors import GRDError
from grd_tools.from_run import confidence
from grd_tools.imageio import read_mask
from grd_tools.split import split_dataset
from grd_tools.validate import validate

GROUP = REPO / "examples" / "synth-demo" / "images" / "synth-0003"
FIRST = "the yellow circle on the left"
OTHERS = ("the yellow square on the bottom", "the small purple circle")


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORK/photos (8 synthetic photos), WORK/run1 (one expression, png masks), WORK/run2 (a
    --jobs run of the two others), WORK/rle and WORK/npy (run1 in those formats): made by the
    demo model with paths relative to WORK, as a user in WORK types them."""
    root = tmp_path_factory.mktemp("from-run")
    shutil.copytree(GROUP, root / "photos")
    model = str(DEMO_MODEL)
    for out, fmt in (("run1", "png"), ("rle", "rle"), ("npy", "npy")):
        done = gres_here(
            "segment", "photos", FIRST, "--model", model, "--out", out, "--format", fmt, cwd=root
        )
        assert done.exit_code == 0, done.output
    jobs = "".join(json.dumps({"path": "photos", "expression": e}) + "\n" for e in OTHERS)
    (root / "jobs.jsonl").write_text(jobs)
    done = gres_here("segment", "--jobs", "jobs.jsonl", "--model", model, "--out", "run2", cwd=root)
    assert done.exit_code == 0, done.output
    return root


def _records(run: Path) -> dict[tuple[str, str], dict]:
    return {(Path(r["image"]).name, r["expression"]): r for r in read_jsonl(run / "records.jsonl")}


def _pairs(dataset_root: Path) -> dict[tuple[str, str], str | None]:
    """(image file name, expression) -> mask path (None: absent), over the whole dataset."""
    ds = load(dataset_root)
    return {(Path(p.image.file).name, p.expression.text): p.mask for p in ds.pairs()}


def test_from_run_keeps_every_answer_and_mask_and_leaves_the_runs_alone(work, tmp_path):
    before = {name: _tree_hash(work / name) for name in ("run1", "run2", "photos")}
    # run from another folder than `gres segment` was: the records' relative paths still resolve
    done = gres_here("grd", "from-run", str(work / "run1"), str(work / "run2"), "ds", cwd=tmp_path)
    assert done.exit_code == 0, done.output
    dst = tmp_path / "ds"
    report = validate(dst)
    assert report.ok(strict=True), report.issues
    ds = load(dst)
    # the three expressions were asked of the same 8 photos: one group
    assert [len(g.images) for g in ds.groups] == [8]
    assert sorted(e.text for e in ds.groups[0].expressions) == sorted((FIRST, *OTHERS))
    answers = _records(work / "run1") | _records(work / "run2")
    pairs = _pairs(dst)
    assert len(pairs) == 24 == len(answers)
    for key, rec in answers.items():
        assert (pairs[key] is not None) == rec["present"], key
        if rec["present"]:
            expected = read_mask(work / rec["mask"]) > 0
            assert np.array_equal(read_mask(dst / pairs[key]) > 0, expected), key
    for image in ds.groups[0].images:  # hard links: the same file, no bytes copied
        assert (dst / image.file).stat().st_ino == (
            work / "photos" / Path(image.file).name
        ).stat().st_ino
    settings = json.loads((work / "run1" / "settings.json").read_text())
    runs = ds.meta["runs"]
    assert [r["run"] for r in runs] == [
        run_id(settings),
        run_id(json.loads((work / "run2" / "settings.json").read_text())),
    ]
    assert runs[0]["settings"]["model"] == str(DEMO_MODEL) and runs[0]["settings"]["margin"] == 0.25
    assert {name: _tree_hash(work / name) for name in before} == before
    assert "24 pairs" in done.stdout and "8 hard-linked, 0 copied" in done.stdout


def test_rle_and_npy_runs_give_the_png_runs_masks(work, tmp_path):
    for fmt in ("rle", "npy"):
        done = gres_here("grd", "from-run", fmt, str(tmp_path / fmt), cwd=work)
        assert done.exit_code == 0, done.output
    done = gres_here("grd", "from-run", "run1", str(tmp_path / "png"), cwd=work)
    assert done.exit_code == 0, done.output
    png = _pairs(tmp_path / "png")
    assert sum(m is not None for m in png.values()) == 5  # the demo model says present 5 times
    for fmt in ("rle", "npy"):
        other = _pairs(tmp_path / fmt)
        assert other.keys() == png.keys()
        for key, mask in png.items():
            assert (other[key] is None) == (mask is None)
            if mask is not None:
                a = read_mask(tmp_path / "png" / mask)
                assert np.array_equal(read_mask(tmp_path / fmt / other[key]), a)


def test_corrections_flip_reject_and_are_recorded(work, tmp_path):
    records = _records(work / "run1")
    present = sorted(k for k, r in records.items() if r["present"])
    absent = sorted(k for k, r in records.items() if not r["present"])
    image = {k: r["image"] for k, r in records.items()}

    def fix(key, was, answer):
        return Correction(image[key], FIRST, "photos", was, answer)

    settings = json.loads((work / "run1" / "settings.json").read_text())
    items = [
        fix(present[0], "present", "absent"),  # the model was wrong: absent
        fix(present[1], "present", "rejected"),  # wrong mask: left out
        fix(absent[0], "absent", "present"),  # present, but no mask to learn: left out
    ]
    file = tmp_path / "corrections.json"
    file.write_text(json.dumps(corrections_document(run_id(settings), items)))
    done = gres_here(
        "grd", "from-run", "run1", "run2", str(tmp_path / "ds"), "--corrections", str(file),
        "--json", cwd=work,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["pairs"] == 22 and summary["corrected"] == 1
    assert summary["left_out"]["a person rejected the mask"] == 1
    assert summary["left_out"]["flipped to present: no mask to train on"] == 1
    assert summary["corrections"] == {"files": 1, "entries": 3, "applied": 3}
    assert validate(tmp_path / "ds").ok(strict=True)
    ds = load(tmp_path / "ds")
    pairs = _pairs(tmp_path / "ds")
    assert pairs[present[0]] is None
    assert present[1] not in pairs and absent[0] not in pairs
    # FIRST kept 6 photos, the others 8: two groups, sharing 6 photos
    assert sorted(len(g.images) for g in ds.groups) == [6, 8]
    first = next(e for g in ds.groups for e in g.expressions if e.text == FIRST)
    assert first.meta["corrected"] == {
        Path(image[present[0]]).stem: {"was": "present", "answer": "absent"}
    }
    # `gres grd split` keeps groups sharing a photo in one split: the two are one unit
    with pytest.raises(GRDError, match="1 independent group"):
        split_dataset(tmp_path / "ds", tmp_path / "split", {"train": 0.5, "test": 0.5})


def test_min_confidence_leaves_out_pairs_near_the_margin(work, tmp_path):
    records = list(_records(work / "run1").values())
    # the plain definition: distance of d_neg from d_pos + m
    near = [r for r in records if abs(r["d_neg"] - (r["d_pos"] + r["margin"])) < 0.3]
    assert 0 < len(near) < len(records)
    assert all(
        confidence(r) == pytest.approx(abs(r["score"] - r["margin"]), abs=2e-6) for r in records
    )
    done = gres_here(
        "grd", "from-run", "run1", str(tmp_path / "ds"), "--min-confidence", "0.3", "--json",
        cwd=work,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["left_out"]["closer to the margin than --min-confidence"] == len(near)
    assert summary["pairs"] == len(records) - len(near)
    kept = _pairs(tmp_path / "ds")
    assert all((Path(r["image"]).name, FIRST) not in kept for r in near)


def test_copy_copies_and_last_record_wins(work, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(work / "run1", run)
    lines = (run / "records.jsonl").read_text().splitlines()
    flipped = json.loads(lines[0]) | {"present": False, "mask": None, "area": 0}
    failed = json.loads(lines[1]) | {"present": None, "error": "cannot read image"}
    (run / "records.jsonl").write_text(
        "\n".join([*lines, json.dumps(flipped), json.dumps(failed), '{"ima']) + "\n"
    )
    done = gres_here(
        "grd", "from-run", str(run), str(tmp_path / "ds"), "--copy", "--json", cwd=work
    )
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["failed_images"] == 1 and summary["pairs"] == 7
    assert summary["runs"][0]["unreadable"] == 1
    assert summary["images_copied"] == 7 and summary["images_linked"] == 0
    ds = load(tmp_path / "ds")
    name = Path(flipped["image"]).name
    assert _pairs(tmp_path / "ds")[(name, FIRST)] is None
    image = next(i for i in ds.groups[0].images if Path(i.file).name == name)
    copy = tmp_path / "ds" / image.file
    assert copy.read_bytes() == (work / "photos" / name).read_bytes()
    assert copy.stat().st_ino != (work / "photos" / name).stat().st_ino


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["photos", "x"], "photos: not a `gres segment` run folder (no settings.json)"),
        (None, ["run1", "run1/x"], "DST may not be RUN"),
        (None, ["run1", "photos"], "photos: already exists (pass --overwrite to replace it)"),
        (
            None,
            ["run1", "x", "--min-confidence", "-1"],
            "--min-confidence -1.0: must be a number >= 0",
        ),
        (
            None,
            ["run1", "x", "--min-confidence", "9"],
            "no answered pair to write (0 failed images",
        ),
        (None, ["run1", "x", "--corrections", "run2/settings.json"], "not a gres corrections file"),
        ("other-run", ["run1", "x", "--corrections", "c.json"], "c.json: corrections of run "),
        (
            "moved-photo",
            ["moved", "x"],
            "moved: image 'photos/0003.png' of its records is not found",
        ),
        ("none-format", ["none", "x"], "none: made with --format none"),
        ("same-pair", ["run1", "copy", "x"], "copy: asks 'the yellow circle on the left' of"),
    ],
)
def test_bad_input_is_one_line_exit_2(work, tmp_path, setup, args, message):
    here = tmp_path / "here"
    shutil.copytree(work, here, symlinks=True)
    if setup == "other-run":
        (here / "c.json").write_text(json.dumps(corrections_document("f" * 64, [])))
    elif setup == "moved-photo":
        shutil.copytree(here / "run1", here / "moved")
        (here / "photos" / "0003.png").rename(here / "0003.png")
    elif setup == "none-format":
        shutil.copytree(here / "run1", here / "none")
        settings = json.loads((here / "none" / "settings.json").read_text())
        (here / "none" / "settings.json").write_text(json.dumps(settings | {"format": "none"}))
    elif setup == "same-pair":
        shutil.copytree(here / "run1", here / "copy")
    done = gres_here("grd", "from-run", *args, cwd=here)
    assert done.exit_code == 2, done.output
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("gres: error: ") and message in line, line
    assert not (here / "x").exists()


def test_from_run_imports_no_torch(work, tmp_path):
    """`gres grd` stays light: a whole from-run (an rle run: pycocotools decodes) without torch."""
    argv = ["gres", "grd", "from-run", "rle", str(tmp_path / "ds")]
    code = f"import sys; sys.argv={argv}\nfrom gres_cli.cli import main\nmain()"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=work, capture_output=True, text=True
    )
    assert (tmp_path / "ds" / "grd.json").is_file(), done.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert not imported & {"torch", "transformers", "timm"}
