"""kill -9 at random moments (issue 11): `gres grd convert --overwrite` leaves the old DST or the
new one, never neither nor a mix; `gres segment` leaves only whole records whose files exist, and
re-runs reach exactly the records and masks of an uninterrupted run.

Bounded: a fixed number of tries at seeded random delays within one measured run's duration."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from conftest import build_grd
from PIL import Image

from grd_tools.convert import convert
from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer

CONVERT_TRIES = 16
SEGMENT_TRIES = 4


def _gres(*args: str) -> list[str]:
    return [sys.executable, "-m", "gres_cli", *args]


def _timed(cmd: list[str]) -> float:
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - started


def _kill_after(cmd: list[str], seconds: float) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_kill_9_during_convert_overwrite_leaves_the_old_or_the_new_dst(tmp_path: Path):
    src = build_grd(tmp_path / "src", n_groups=6, n_images=6, size=(160, 120), seed=0)
    source = _snapshot(src)
    old_src = build_grd(tmp_path / "old-src", n_groups=2, seed=1)
    reference = convert(src, tmp_path / "reference", to="coco")
    new = _snapshot(reference)
    dst = tmp_path / "dst"
    convert(old_src, dst, to="coco")
    old = _snapshot(dst)
    cmd = _gres("grd", "convert", str(src), str(dst), "--to", "coco", "--overwrite")
    duration = _timed(cmd)
    assert _snapshot(dst) == new
    convert(old_src, dst, to="coco", overwrite=True)
    rng = random.Random(0)
    seen = set()
    for _ in range(CONVERT_TRIES):
        _kill_after(cmd, rng.uniform(0, duration))
        now = _snapshot(dst)
        assert now in (old, new), "DST is neither the old conversion nor the new one"
        seen.add("new" if now == new else "old")
        if now == new:  # start the next try from the old one again
            convert(old_src, dst, to="coco", overwrite=True)
    assert _snapshot(src) == source
    assert "old" in seen  # some kills landed before the swap


def test_kill_9_during_segment_then_rerun_gives_the_uninterrupted_records(tmp_path: Path):
    torch.manual_seed(0)
    model = tmp_path / "model"
    config = GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4, margin=-5.0)
    GRSer(config).save_pretrained(model)  # every image present: a mask file for each
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        pixels = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i:03d}.png")

    def cmd(out: Path) -> list[str]:
        args = ("segment", str(photos), "the thing", "--model", str(model), "--out", str(out))
        return _gres(*args, "--batch-size", "2", "--jsonl", str(out.parent / f"{out.name}.jsonl"))

    duration = _timed(cmd(tmp_path / "reference"))
    reference = _records(tmp_path / "reference")
    assert len(reference) == 24
    out = tmp_path / "out"
    delays = random.Random(0)
    for _ in range(SEGMENT_TRIES):
        _kill_after(cmd(out), delays.uniform(0.3 * duration, duration))
        for record in _records(out).values():  # every record's mask is on disk, whole
            with Image.open(record["mask"]) as mask:
                assert mask.size == (record["width"], record["height"])
    proc = subprocess.run(cmd(out), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    final = _records(out)
    assert final.keys() == reference.keys()
    for image, record in final.items():
        want = reference[image]
        assert {**record, "mask": None} == {**want, "mask": None}
        assert Path(record["mask"]).read_bytes() == Path(want["mask"]).read_bytes()
    jsonl = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in jsonl) == sorted(reference)  # each image once


def _records(out: Path) -> dict[str, dict]:
    """Each image's last record in records.jsonl, as a re-run reads them (a kill may cut the
    line being written; a re-run redoes that image)."""
    path = out / "records.jsonl"
    records = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[record["image"]] = record
    return records
