import json
from pathlib import Path

import pytest

from grd_tools import GRDError, SchemaError, UnsafePathError, load, save
from grd_tools.fsutil import atomic_output_dir
from grd_tools.paths import resolve_inside


def test_load_save_round_trip_keeps_manifest(grd_dataset: Path, tmp_path: Path):
    ds = load(grd_dataset)
    assert [g.id for g in ds.groups] == ["group-00", "group-01"]
    out = tmp_path / "copy"
    save(ds, out)
    assert json.loads((out / "grd.json").read_text()) == json.loads(
        (grd_dataset / "grd.json").read_text()
    )


def test_pairs_cover_every_image_of_every_expression(grd_dataset: Path):
    ds = load(grd_dataset)
    pairs = list(ds.pairs())
    assert len(pairs) == 2 * 2 * 3
    assert sum(p.present for p in pairs) == 2 * (2 + 1)
    assert len(list(ds.pairs(split="test"))) == 6


def test_schema_error_names_the_json_path(grd_dataset: Path):
    data = json.loads((grd_dataset / "grd.json").read_text())
    data["groups"][1]["images"][0]["width"] = "wide"
    (grd_dataset / "grd.json").write_text(json.dumps(data))
    with pytest.raises(SchemaError) as info:
        load(grd_dataset)
    assert info.value.json_path == "$.groups[1].images[0].width"


def test_invalid_json_is_one_line_error(tmp_path: Path):
    (tmp_path / "grd.json").write_text("{not json")
    with pytest.raises(GRDError, match="invalid JSON at line 1"):
        load(tmp_path)


@pytest.mark.parametrize("rel", ["../outside.jpg", "/etc/passwd", "images/../../x.png", "C:/x"])
def test_paths_leaving_the_root_are_refused(tmp_path: Path, rel: str):
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, rel)


def test_symlink_out_of_root_is_refused(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(UnsafePathError, match="outside the dataset root"):
        resolve_inside(root, "link.png")
    assert resolve_inside(root, "inside/ok.png") == root / "inside/ok.png"


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path: Path):
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(dst) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_dir_refuses_existing_unless_overwrite(tmp_path: Path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    with pytest.raises(GRDError, match="already exists"), atomic_output_dir(dst):
        pass
    with atomic_output_dir(dst, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in dst.iterdir()) == ["new.txt"]


def test_atomic_outputs_get_the_usual_permissions(tmp_path: Path):
    import os

    from grd_tools.fsutil import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_output_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "command",
    [
        ["grd", "synth", "{dst}", "--groups", "1"],
        ["grd", "split", "{data}", "--out", "{dst}"],
        ["model", "init", "{dst}"],
        ["train", "{data}", "--out", "{dst}", "--steps", "1"],
    ],
)
def test_a_destination_under_a_file_is_one_line_before_any_work(
    command: list[str], grd_dataset: Path, tmp_path: Path
):
    import subprocess
    import sys

    blocker = tmp_path / "a file"
    blocker.write_text("")
    args = [a.format(dst=blocker / "out", data=grd_dataset) for a in command]
    proc = subprocess.run([sys.executable, "-m", "gres_cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("gres: error:") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == ""
