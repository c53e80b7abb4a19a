"""`gres grd pull` through a locally populated Hub cache (offline), push failing cleanly, cards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from grd_tools import load
from grd_tools.card import dataset_card


def _populate_dataset_cache(
    cache: Path, repo_id: str, folder: Path, commit: str = "b" * 40
) -> None:
    """Lay a dataset folder out as huggingface_hub's cache does (blobs, refs, snapshots)."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    for n, f in enumerate(p for p in sorted(folder.rglob("*")) if p.is_file()):
        blob = repo / "blobs" / f"blob{n:05d}"
        shutil.copyfile(f, blob)
        link = snapshot / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def _gres(args: list[str], cache: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "gres_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)


def test_pull_from_offline_cache_prints_folder_and_copies_out(grd_dataset: Path, tmp_path: Path):
    cache = tmp_path / "hub"
    _populate_dataset_cache(cache, "gres-test/tiny-grd", grd_dataset)
    work = tmp_path / "work"
    work.mkdir()
    proc = _gres(["grd", "pull", "gres-test/tiny-grd"], cache, cwd=work)
    assert proc.returncode == 0, proc.stderr
    pulled = work / proc.stdout.strip()
    assert pulled == work / "tiny-grd"
    assert load(pulled).to_dict() == load(grd_dataset).to_dict()
    assert not any(p.is_symlink() for p in pulled.rglob("*"))
    out = tmp_path / "copy"
    proc = _gres(["grd", "pull", "gres-test/tiny-grd", "--out", str(out)], cache)
    assert proc.returncode == 0, proc.stderr
    assert _gres(["grd", "validate", str(out)], cache).returncode == 0
    assert (out / "masks").is_dir() and not (out / "images").is_symlink()


def test_missing_repo_offline_is_one_line_exit_2(tmp_path: Path):
    proc = _gres(["grd", "pull", "nobody/nothing"], tmp_path)
    assert proc.returncode == 2
    assert "not in the local Hub cache" in proc.stderr and "Traceback" not in proc.stderr


def test_push_offline_fails_cleanly_and_leaves_the_dataset_alone(grd_dataset: Path, tmp_path: Path):
    before = sorted(p.relative_to(grd_dataset) for p in grd_dataset.rglob("*"))
    proc = _gres(["grd", "push", str(grd_dataset), "org/x"], tmp_path)
    assert proc.returncode == 2 and "push to org/x failed" in proc.stderr
    assert sorted(p.relative_to(grd_dataset) for p in grd_dataset.rglob("*")) == before


def test_card_states_licence_and_group_wise_meaning(grd_dataset: Path):
    card = dataset_card(load(grd_dataset))
    assert card.startswith("---\nlicense: CC0-1.0")
    assert "non-commercial" in card and "not the generalized RES of gRefCOCO" in card
    assert "| 2 | 6 | 4 | 12 | 6 | 6 |" in card
