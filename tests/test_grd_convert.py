"""`gres grd convert`: round trips grd -> coco/hf/cosod -> grd lose nothing; bad input fails
in one line; SRC is never modified; DST is atomic."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from grd_tools import load
from grd_tools.convert import convert
from grd_tools.errors import GRDError
from grd_tools.imageio import read_mask
from gres_cli.cli import app

runner = CliRunner()


def tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def pairs(root: Path) -> dict[tuple[str, str, str], np.ndarray | None]:
    """(group, expression, image) -> mask pixels (bool) or None when absent."""
    ds = load(root)
    out = {}
    for g in ds.groups:
        for e in g.expressions:
            for img in g.images:
                rel = e.targets[img.id]
                out[(g.id, e.id, img.id)] = None if rel is None else read_mask(root / rel) > 127
    return out


def assert_same_pairs(a: Path, b: Path) -> None:
    pa, pb = pairs(a), pairs(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        if pa[k] is None:
            assert pb[k] is None, k
        else:
            assert pb[k] is not None and np.array_equal(pa[k], pb[k]), k


@pytest.mark.parametrize("fmt", ["coco", "hf"])
def test_round_trip_keeps_everything(grd_dataset: Path, tmp_path: Path, fmt: str) -> None:
    before = tree_hash(grd_dataset)
    convert(grd_dataset, tmp_path / fmt, to=fmt)
    convert(tmp_path / fmt, tmp_path / "back", to="grd")  # format detected
    assert tree_hash(grd_dataset) == before  # SRC untouched
    src, back = load(grd_dataset), load(tmp_path / "back")
    assert (back.name, back.license) == (src.name, src.license)
    for g, h in zip(src.groups, back.groups, strict=True):
        assert (g.id, g.split) == (h.id, h.split)
        assert [(e.id, e.text) for e in g.expressions] == [(e.id, e.text) for e in h.expressions]
        for i, j in zip(g.images, h.images, strict=True):
            assert (i.id, i.width, i.height) == (j.id, j.width, j.height)
            # image bytes come back unchanged
            assert (grd_dataset / i.file).read_bytes() == (tmp_path / "back" / j.file).read_bytes()
    assert_same_pairs(grd_dataset, tmp_path / "back")


def test_coco_masks_decode_with_pycocotools(grd_dataset: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    convert(grd_dataset, tmp_path / "coco", to="coco")
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    images = {i["id"]: i for i in doc["images"]}
    src = pairs(grd_dataset)
    n_present = 0
    for r in doc["refs"]:
        key = (r["group"], r["expression_id"], images[r["image_id"]]["grd_image_id"])
        if r["ann_id"] is None:
            assert src[key] is None
        else:
            n_present += 1
            decoded = coco.annToMask(coco.anns[r["ann_id"]]).astype(bool)
            assert np.array_equal(decoded, src[key])
    assert n_present == sum(v is not None for v in src.values()) == 6


def test_hf_loads_with_datasets(grd_dataset: Path, tmp_path: Path) -> None:
    import datasets

    convert(grd_dataset, tmp_path / "hf", to="hf")
    ds = datasets.load_dataset(str(tmp_path / "hf"), split="train")
    assert len(ds) == 12  # 2 groups x 2 expressions x 3 images
    src = pairs(grd_dataset)
    for row in ds:
        mask = src[(row["group"], row["expression_id"], row["image_id"])]
        assert row["present"] == (mask is not None)
        assert row["image"].size == (40, 30)
        if mask is not None:
            assert np.array_equal(np.asarray(row["mask"]) > 127, mask)


def test_cosod_round_trip_one_group_per_expression(grd_dataset: Path, tmp_path: Path) -> None:
    convert(grd_dataset, tmp_path / "cosod", to="cosod")
    names = sorted(p.name for p in (tmp_path / "cosod" / "Image").iterdir())
    assert names == [f"group-0{g}__e{e}" for g in (0, 1) for e in (1, 2)]
    gt = read_mask(tmp_path / "cosod" / "GroundTruth" / "group-00__e1" / "0002.png")
    assert gt.max() == 0  # absent -> all zero
    convert(tmp_path / "cosod", tmp_path / "back", to="grd", expression="the thing")
    back = load(tmp_path / "back")
    src = pairs(grd_dataset)
    for g in back.groups:
        gid, eid = g.id.split("__")
        assert [e.text for e in g.expressions] == ["the thing"]
        for img in g.images:
            rel = g.expressions[0].targets[img.id]
            want = src[(gid, eid, img.id)]
            got = None if rel is None else read_mask(tmp_path / "back" / rel) > 127
            assert (want is None and got is None) or np.array_equal(want, got)


def test_existing_dst_refused_unless_overwrite(grd_dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    r = runner.invoke(
        app, ["grd", "convert", str(grd_dataset), str(tmp_path / "out"), "--to", "coco"]
    )
    assert r.exit_code == 2 and "exists" in r.output.lower()
    assert (tmp_path / "out" / "keep.txt").exists()
    r = runner.invoke(
        app,
        ["grd", "convert", str(grd_dataset), str(tmp_path / "out"), "--to", "coco", "--overwrite"],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "annotations.json").is_file()


def test_failure_midway_leaves_no_dst(grd_dataset: Path, tmp_path: Path) -> None:
    ds = load(grd_dataset)
    (grd_dataset / ds.groups[1].images[0].file).unlink()  # an image goes missing
    r = runner.invoke(
        app, ["grd", "convert", str(grd_dataset), str(tmp_path / "out"), "--to", "hf"]
    )
    assert r.exit_code == 2
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-grd"]  # no temp leftovers


def test_bad_coco_inputs_fail_in_one_line(grd_dataset: Path, tmp_path: Path) -> None:
    convert(grd_dataset, tmp_path / "coco", to="coco")
    path = tmp_path / "coco" / "annotations.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["segmentation"]["counts"] = "not an rle!!"
    doc["annotations"][0]["segmentation"]["size"] = [5, 5]
    path.write_text(json.dumps(doc))
    with pytest.raises(GRDError, match="annotation 1"):
        convert(tmp_path / "coco", tmp_path / "a", to="grd")
    doc["images"][0]["file_name"] = "../../etc/passwd"
    path.write_text(json.dumps(doc))
    with pytest.raises(GRDError):
        convert(tmp_path / "coco", tmp_path / "b", to="grd")
    path.write_text("{")
    with pytest.raises(GRDError, match=r"annotations\.json"):
        convert(tmp_path / "coco", tmp_path / "c", to="grd")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_cosod_missing_ground_truth(grd_dataset: Path, tmp_path: Path) -> None:
    convert(grd_dataset, tmp_path / "cosod", to="cosod")
    (tmp_path / "cosod" / "GroundTruth" / "group-00__e1" / "0001.png").unlink()
    with pytest.raises(GRDError, match=r"0001\.png: ground truth missing"):
        convert(tmp_path / "cosod", tmp_path / "back", to="grd")


def test_grd_tools_convert_never_imports_torch() -> None:
    code = "import grd_tools.convert.coco, grd_tools.convert.hf, grd_tools.convert.cosod"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    ).stderr
    assert not [ln for ln in out.splitlines() if ln.split("|")[-1].strip() == "torch"]


def test_cosod_default_expression_is_group_name(tmp_path: Path) -> None:
    from PIL import Image

    for name, value in (("a", 255), ("b", 0)):
        img_dir = tmp_path / "src" / "Image" / "red_car"
        gt_dir = tmp_path / "src" / "GroundTruth" / "red_car"
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (10, 20, 30)).save(img_dir / f"{name}.jpg")
        gt = np.zeros((6, 8), np.uint8)
        gt[1:3, 2:5] = value
        Image.fromarray(gt).save(gt_dir / f"{name}.png")
    convert(tmp_path / "src", tmp_path / "grd", to="grd")
    (g,) = load(tmp_path / "grd").groups
    (e,) = g.expressions
    assert e.text == "red car"
    assert e.targets["b"] is None  # all-zero ground truth: absent
    want = np.zeros((6, 8), bool)
    want[1:3, 2:5] = True
    assert np.array_equal(read_mask(tmp_path / "grd" / e.targets["a"]) > 127, want)


def test_bad_hf_shard_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "hf" / "data").mkdir(parents=True)
    (tmp_path / "hf" / "data" / "train-0.parquet").write_bytes(b"not parquet")
    r = runner.invoke(app, ["grd", "convert", str(tmp_path / "hf"), str(tmp_path / "o")])
    assert r.exit_code == 2 and "unreadable parquet" in r.output
    assert not (tmp_path / "o").exists()
