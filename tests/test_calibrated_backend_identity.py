"""A settings folder names its backend so that it loads from anywhere (issue 19, item 6):
`--save-calibrated` (and `model init --backend`) store a local checkpoint by its absolute path
and a Hub id as the id with the commit it resolved to, and the card says which. Was: the path
as typed (`"backend": "clip"`), which loads the wrong model, or none, from another folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import build_grd, build_tiny_clipseg, gres, populate_hub_cache

from gres_cli.backends import load_model


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("work")
    build_tiny_clipseg(root / "clip")
    build_grd(root / "data", n_groups=1)
    return root


def _calibrate(model: str, saved: str, cwd: Path, env: dict | None = None):
    return gres(
        "eval", "data", "--model", model, "--split", "train", "--margins=-0.5,0,0.5",
        "--calibrate", "acc", "--save-calibrated", saved, cwd=cwd, env=env,
    )  # fmt: skip


def test_a_local_backend_is_stored_by_its_absolute_path(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    saved = work / "calibrated-local"
    proc = _calibrate("./clip/", saved.name, cwd=work)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((saved / "config.json").read_text())
    assert config["backend"] == str(work / "clip")  # absolute, normalised
    card = (saved / "README.md").read_text()
    assert str(work / "clip") in card and "absolute path" in card
    init = work / "init-local"
    proc = gres("model", "init", init.name, "--backend", "clip", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((init / "config.json").read_text())["backend"] == str(work / "clip")
    monkeypatch.chdir(tmp_path)  # another working folder, where `clip` is nothing
    for folder in (saved, init):
        assert load_model(folder).kind == "clipseg"


def test_a_hub_backend_is_stored_as_its_id_and_resolved_commit(work: Path, tmp_path: Path):
    cache = tmp_path / "hub"
    commit = "c0ffee" + "0" * 34
    populate_hub_cache(cache, "gres-test/tiny-clipseg", work / "clip", commit=commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    saved = tmp_path / "calibrated-hub"
    proc = _calibrate("gres-test/tiny-clipseg", str(saved), cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((saved / "config.json").read_text())
    assert (config["backend"], config["revision"]) == ("gres-test/tiny-clipseg", commit)
    card = (saved / "README.md").read_text()
    assert "Hub" in card and commit in card
