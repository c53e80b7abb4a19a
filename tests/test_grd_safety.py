"""The dataset commands never lose a source or a destination (issue 11): DST may not hold SRC,
and replacing a destination leaves the old one or the new one whatever the moment of a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import build_grd
from typer.testing import CliRunner

from grd_tools.errors import GRDError
from grd_tools.fsutil import atomic_output_dir, recover_output_dir
from gres_cli.cli import app


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("to", ["grd", "coco"])
def test_convert_refuses_a_dst_that_holds_the_source(tmp_path: Path, to: str):
    """Was: `gres grd convert outer/src outer --overwrite` deleted the source."""
    src = build_grd(tmp_path / "outer" / "src")
    before = _snapshot(tmp_path / "outer")
    result = CliRunner().invoke(
        app, ["grd", "convert", str(src), str(tmp_path / "outer"), "--to", to, "--overwrite"]
    )
    assert result.exit_code == 2, result.output
    assert "contains SRC" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert _snapshot(tmp_path / "outer") == before


def test_split_and_pull_refuse_the_same_overlaps(tmp_path: Path):
    src = build_grd(tmp_path / "outer" / "src")
    runner = CliRunner()
    for out in (tmp_path / "outer", src, src / "x"):
        args = ["grd", "split", str(src), "--out", str(out), "--overwrite"]
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "gres: error:" in result.stderr, result.output
    assert (src / "grd.json").is_file()


def test_a_crash_between_the_two_renames_is_recovered(tmp_path: Path):
    """Was: a crash after moving the old destination aside and before moving the new one in
    left no destination at all (a training checkpoint then could not be resumed). The next
    atomic_output_dir on that path puts the old one back first."""
    dst = tmp_path / "checkpoint"
    leftover = tmp_path / ".checkpoint.old-4242"  # what such a crash leaves
    leftover.mkdir()
    (leftover / "weights").write_text("old")
    with pytest.raises(GRDError, match="already exists"), atomic_output_dir(dst):
        pass
    assert (dst / "weights").read_text() == "old" and not leftover.exists()


def test_replacing_a_destination_never_leaves_neither(tmp_path: Path, monkeypatch):
    """Killed while the new folder is put in place (at any rename): the old folder or the new
    one is there, at once or after recover_output_dir (which `gres train --resume` runs)."""
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "f").write_text("old")
    real_replace = os.replace
    for dying_call in (1, 2):
        calls = []

        def dying_replace(a, b, calls=calls, dying_call=dying_call):
            calls.append((a, b))
            if len(calls) == dying_call:
                raise KeyboardInterrupt  # killed at this rename
            return real_replace(a, b)

        monkeypatch.setattr(os, "replace", dying_replace)
        with pytest.raises(KeyboardInterrupt), atomic_output_dir(dst, overwrite=True) as tmp:
            (tmp / "f").write_text("new")
            raise KeyboardInterrupt  # and once more while the new folder is being written
        monkeypatch.undo()
        recover_output_dir(dst)
        assert (dst / "f").read_text() == "old"
        monkeypatch.setattr(os, "replace", dying_replace)
        calls.clear()
        try:
            with atomic_output_dir(dst, overwrite=True) as tmp:
                (tmp / "f").write_text("new")
        except KeyboardInterrupt:
            pass
        monkeypatch.undo()
        recover_output_dir(dst)
        assert (dst / "f").read_text() in ("old", "new")
        (dst / "f").write_text("old")


_DIE_AT_RENAME = """
import os, sys
from grd_tools import fsutil

fsutil._exchange = lambda a, b: False  # a platform without renameat2: the two-rename path
real_replace, calls = os.replace, []

def dying_replace(a, b):
    calls.append((a, b))
    if len(calls) == int(sys.argv[2]):
        os._exit(137)  # like kill -9: no finally, no clean-up
    real_replace(a, b)

os.replace = dying_replace
with fsutil.atomic_output_dir(sys.argv[1], overwrite=True) as tmp:
    (tmp / "f").write_text("new")
print(len(calls))
"""


def test_the_fallback_without_an_atomic_exchange_survives_a_kill_at_each_rename(
    tmp_path: Path,
):
    """Where renameat2 is missing, atomic_output_dir moves the old DST aside, then moves the
    new one in. Killed at the first rename: the old DST is untouched; at the second: DST is
    missing until recover_output_dir (or the next atomic_output_dir) puts the old one back.
    Never neither, never a mix; recovery leaves no `.DST.old-*` behind."""
    import subprocess
    import sys

    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "f").write_text("old")
    run = [sys.executable, "-c", _DIE_AT_RENAME, str(dst)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([*run, "0"], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "2"  # the fallback path ran: two renames, no exchange
    assert (dst / "f").read_text() == "new"
    (dst / "f").write_text("old")
    for rename in (1, 2):
        killed = subprocess.run([*run, str(rename)], env=env, capture_output=True)
        assert killed.returncode == 137, killed.stderr
        moved_aside = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
        assert dst.exists() == (rename == 1) and len(moved_aside) == (rename == 2)
        recover_output_dir(dst)
        assert (dst / "f").read_text() == "old"
        assert not any(p.name.startswith(".out.old-") for p in tmp_path.iterdir())
    with atomic_output_dir(dst, overwrite=True) as tmp:  # and the next run goes through
        (tmp / "f").write_text("new")
    assert (dst / "f").read_text() == "new"


def test_atomic_output_dir_refuses_an_existing_dst_without_overwrite(tmp_path: Path):
    (tmp_path / "d").mkdir()
    with pytest.raises(GRDError, match="already exists"), atomic_output_dir(tmp_path / "d"):
        pass


def test_markup_in_dataset_paths_and_texts_prints_literally(tmp_path: Path):
    """Was: a path holding `[/draft]` raised rich's MarkupError instead of the message."""
    runner = CliRunner()
    missing = runner.invoke(app, ["grd", "validate", str(tmp_path / "[/draft]")])
    assert missing.exit_code == 2 and "[/draft]" in missing.stderr, missing.output
    assert len(missing.stderr.strip().splitlines()) == 1
    data = build_grd(tmp_path / "[/data]")
    (data / "images" / "group-00" / "0000.jpg").unlink()
    report = runner.invoke(app, ["grd", "validate", str(data)])
    assert report.exception is None or isinstance(report.exception, SystemExit)
    assert report.exit_code == 1 and "[/data]" in report.stdout
