"""`gres grd convert --from d3|refcoco`: readers of public releases, tested on small fixtures
laid out like the real downloads (D³'s `d3_images/` + `d3_pkl/*.pkl`; REFER's `instances.json`
+ `refs(unc).p` / gRefCOCO's `grefs(unc).json`), built here with the real pycocotools encoders."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from grd_tools import load, safe_pickle
from grd_tools.convert import convert
from grd_tools.errors import GRDError
from grd_tools.imageio import read_mask
from grd_tools.validate import validate
from gres_cli.cli import app

runner = CliRunner()
W, H = 24, 16


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def rle(m: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(m))  # counts: bytes, as pycocotools writes


def write_photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def mask_of(root: Path, group: str, expression: str, image: str) -> np.ndarray | None:
    ds = load(root)
    g = next(g for g in ds.groups if g.id == group)
    e = next(e for e in g.expressions if e.id == expression)
    rel = e.targets[image]
    return None if rel is None else read_mask(root / rel) > 127


# --- D³ -----------------------------------------------------------------------------------

#: the masks of the fixture's annotations
D3_MASKS = {
    1: rect(0, 0, 5, 5),
    2: rect(10, 8, 20, 14),
    3: rect(2, 2, 12, 12),
    4: rect(4, 4, 9, 9),
    5: rect(15, 1, 22, 6),
}


@pytest.fixture
def d3_release(tmp_path: Path) -> Path:
    return make_d3_release(tmp_path / "d3")


def make_d3_release(src: Path) -> Path:
    """Two groups: group 1 = images 1-3 with sentences 1, 2; group 2 = images 4-5 with sentence 3
    (an absence sentence). Sentence 2 also has an instance in image 4 (outer to group 2)."""
    images = {}
    for iid, gid in ((1, 1), (2, 1), (3, 1), (4, 2), (5, 2)):
        name = f"{iid:012d}.jpg"
        write_photo(src / "d3_images" / name, iid)
        images[iid] = {
            "id": iid,
            "file_name": name,
            "height": H,
            "width": W,
            "flickr_url": f"http://flickr.example/{iid}",
            "anno_id": [],
            "group_id": gid,
            "license": "CC BY 2.0",
        }
    # (annotation id, image id, sentence ids, segmentation as D³ stores it)
    spec = [
        (1, 1, [1], [rle(D3_MASKS[1])]),  # a list of RLEs (one per part)
        (2, 1, [1], rle(D3_MASKS[2])),  # a bare RLE; same sentence: merged with ann 1
        (3, 2, [1, 2], [rle(D3_MASKS[3])]),
        (4, 4, [2], [rle(D3_MASKS[4])]),
        (5, 5, [3], [rle(D3_MASKS[5])]),
    ]
    annotations = {}
    for aid, iid, sids, seg in spec:
        images[iid]["anno_id"].append(aid)
        m = D3_MASKS[aid]
        annotations[aid] = {
            "id": aid,
            "sent_id": sids,
            "segmentation": seg,
            "area": int(m.sum()),
            "iscrowd": 0,
            "image_id": iid,
            "bbox": np.array([mask_utils.toBbox(rle(m))]),  # numpy, as in the release
            "group_id": images[iid]["group_id"],
        }
    sentences = {
        1: {"id": 1, "anno_id": [1, 2, 3], "group_id": [1], "is_negative": False,
            "raw_sent": "a dog with a red collar", "raw_sent_zh": "戴红项圈的狗"},
        2: {"id": 2, "anno_id": [3, 4], "group_id": [1], "is_negative": False,
            "raw_sent": "a cat on a sofa", "raw_sent_zh": "沙发上的猫"},
        3: {"id": 3, "anno_id": [5], "group_id": [2], "is_negative": True,
            "raw_sent": "a person without a hat", "raw_sent_zh": "没戴帽子的人"},
    }  # fmt: skip
    groups = {
        1: {"id": 1, "pos_sent_id": [1, 2], "inner_sent_id": [1, 2], "outer_sent_id": [],
            "img_id": [1, 2, 3], "scene": ["home"], "group_name": "pets", "group_name_zh": "宠物"},
        2: {"id": 2, "pos_sent_id": [3], "inner_sent_id": [3], "outer_sent_id": [2],
            "img_id": [4, 5], "scene": ["street"], "group_name": "people", "group_name_zh": "人"},
    }  # fmt: skip
    (src / "d3_pkl").mkdir(parents=True)
    for name, table in (
        ("images", images),
        ("annotations", annotations),
        ("sentences", sentences),
        ("groups", groups),
    ):
        # protocol 2 spells bytes and numpy data through _codecs.encode: the oldest path
        (src / "d3_pkl" / f"{name}.pkl").write_bytes(pickle.dumps(table, protocol=2))
    return src


def masks_in_worker_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `convert.write_masks` use its pool of worker processes even for a few masks."""
    import grd_tools.validate

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: map_files works in-process")
    monkeypatch.setattr(grd_tools.validate, "PARALLEL_FROM", 1)


@pytest.mark.parametrize("processes", [False, True], ids=["in-process", "worker-processes"])
def test_d3_intra_group(
    d3_release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    if processes:
        masks_in_worker_processes(monkeypatch)
    out = convert(d3_release, tmp_path / "grd", to="grd")  # layout detected
    ds = load(out)
    assert [g.id for g in ds.groups] == ["1", "2"]
    g1, g2 = ds.groups
    assert [e.id for e in g1.expressions] == ["1", "2"]
    assert [e.id for e in g2.expressions] == ["3"]
    assert g1.meta["name"] == "pets" and g1.meta["scene"] == ["home"]
    # sentence 1 on image 1: the union of both annotations' pixels, exactly
    assert np.array_equal(mask_of(out, "1", "1", "1"), (D3_MASKS[1] | D3_MASKS[2]) > 0)
    assert np.array_equal(mask_of(out, "1", "2", "2"), D3_MASKS[3] > 0)
    assert mask_of(out, "1", "1", "3") is None  # annotated on every image: absent here
    assert mask_of(out, "1", "2", "1") is None
    e3 = g2.expressions[0]
    assert e3.text == "a person without a hat"
    assert e3.meta["is_negative"] is True and e3.meta["text_zh"] == "没戴帽子的人"
    assert e3.targets["4"] is None and e3.targets["5"] is not None
    assert g1.images[0].meta["flickr_url"] == "http://flickr.example/1"
    assert "CC BY-NC" in ds.license
    report = validate(out)
    assert report.ok(strict=True), report.issues


def test_d3_inter_group(d3_release: Path, tmp_path: Path) -> None:
    out = convert(d3_release, tmp_path / "grd", to="grd", from_="d3", inter_group=True)
    g2 = load(out).groups[1]
    assert [e.id for e in g2.expressions] == ["1", "2", "3"]
    e2 = g2.expressions[1]
    assert e2.meta["inter_group"] is True
    assert np.array_equal(mask_of(out, "2", "2", "4"), D3_MASKS[4] > 0)
    assert mask_of(out, "2", "1", "4") is None
    assert validate(out).ok()


def test_d3_refuses_code_in_pickles(d3_release: Path, tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (d3_release / "d3_pkl" / "groups.pkl").write_bytes(pickle.dumps({1: {"x": Exploit()}}))
    result = runner.invoke(app, ["grd", "convert", str(d3_release), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "refusing to unpickle" in result.output and "system" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "out").exists()


def test_d3_missing_table_and_bad_field(d3_release: Path, tmp_path: Path) -> None:
    (d3_release / "d3_pkl" / "sentences.pkl").unlink()
    with pytest.raises(GRDError, match=r"sentences\.pkl: missing"):
        convert(d3_release, tmp_path / "a", to="grd", from_="d3")
    (d3_release / "d3_pkl" / "sentences.pkl").write_bytes(pickle.dumps({1: {"id": 1}}))
    with pytest.raises(GRDError, match=r"sentences\.pkl\[1\].*raw_sent"):
        convert(d3_release, tmp_path / "b", to="grd", from_="d3")
    assert not (tmp_path / "b").exists()


def test_d3_image_path_cannot_leave_the_release(d3_release: Path, tmp_path: Path) -> None:
    table = safe_pickle.load(d3_release / "d3_pkl" / "images.pkl")
    table[1]["file_name"] = "../../etc/passwd"
    (d3_release / "d3_pkl" / "images.pkl").write_bytes(pickle.dumps(table))
    with pytest.raises(GRDError, match="leaves the dataset root"):
        convert(d3_release, tmp_path / "out", to="grd", from_="d3")


def test_safe_pickle_admits_data_only() -> None:
    data = {"a": [1, 2.5, None, True], "b": (b"x", "y"), "c": {3, 4}, "n": np.arange(3)}
    for protocol in (2, 4, 5):
        back = safe_pickle.loads(pickle.dumps(data, protocol=protocol))
        assert back["a"] == data["a"] and back["c"] == {3, 4}
        assert np.array_equal(back["n"], np.arange(3))
    assert safe_pickle.plain(back) == {
        "a": [1, 2.5, None, True],
        "b": ["x", "y"],
        "c": [3, 4],
        "n": [0, 1, 2],
    }
    for evil in (pickle.dumps(Path("x")), pickle.dumps(eval)):
        with pytest.raises(GRDError, match="refusing to unpickle"):
            safe_pickle.loads(evil)
    with pytest.raises(GRDError, match="not a readable pickle"):
        safe_pickle.loads(b"\x80\x04garbage")


# --- RefCOCO / gRefCOCO ---------------------------------------------------------------------


def polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def raster(seg: list[list[float]]) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, H, W))) > 0


@pytest.fixture
def refcoco_release(tmp_path: Path) -> Path:
    return make_refcoco_release(tmp_path / "refcoco")


def make_refcoco_release(src: Path) -> Path:
    """REFER layout: images 10, 11 (person refs) and 12 (dog); train and val splits."""
    coco_images = []
    for iid in (10, 11, 12):
        name = f"COCO_train2014_{iid:012d}.jpg"
        write_photo(src / "images" / name, iid)
        coco_images.append({"id": iid, "file_name": name, "height": H, "width": W})
    dog = rect(3, 3, 11, 9)
    uncompressed = {"size": [H, W], "counts": _uncompressed_counts(dog)}
    person11 = rle(rect(12, 2, 20, 15))
    annotations = [
        {"id": 100, "image_id": 10, "category_id": 1, "iscrowd": 0,
         "segmentation": polygon(1, 1, 8, 12)},
        {"id": 101, "image_id": 10, "category_id": 18, "iscrowd": 0, "segmentation": uncompressed},
        {"id": 102, "image_id": 11, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": person11["size"], "counts": person11["counts"].decode()}},
        {"id": 103, "image_id": 11, "category_id": 1, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": _uncompressed_counts(rect(0, 0, 3, 3))}},
        {"id": 104, "image_id": 12, "category_id": 18, "iscrowd": 0,
         "segmentation": polygon(10, 5, 22, 14)},
    ]  # fmt: skip
    instances = {
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    (src / "instances.json").write_text(json.dumps(instances))

    def ref(ref_id, image_id, ann_id, cat, split, *sents):
        return {
            "ref_id": ref_id,
            "image_id": image_id,
            "ann_id": ann_id,
            "category_id": cat,
            "split": split,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",  # names no real file
            "sent_ids": [s[0] for s in sents],
            "sentences": [
                {"sent_id": sid, "sent": text, "raw": text.capitalize() + ".", "tokens": []}
                for sid, text in sents
            ],
        }

    refs = [
        ref(1, 10, 100, 1, "train", (1, "man on left"), (2, "guy in red")),
        ref(2, 10, 101, 18, "train", (3, "brown dog")),
        ref(3, 11, 102, 1, "val", (4, "woman standing")),
        ref(4, 12, 104, 18, "train", (5, "dog on right")),
    ]
    (src / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return src


def _uncompressed_counts(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return counts


def test_refcoco_group_by_image(refcoco_release: Path, tmp_path: Path) -> None:
    out = convert(refcoco_release, tmp_path / "grd", to="grd")  # layout detected
    ds = load(out)
    assert {(g.id, g.split) for g in ds.groups} == {("10", "train"), ("11", "val"), ("12", "train")}
    g10 = next(g for g in ds.groups if g.id == "10")
    assert [(e.id, e.text) for e in g10.expressions] == [
        ("1", "man on left"),
        ("2", "guy in red"),
        ("3", "brown dog"),
    ]
    assert g10.expressions[0].meta["raw"] == "Man on left."
    assert np.array_equal(mask_of(out, "10", "1", "10"), raster(polygon(1, 1, 8, 12)))
    assert np.array_equal(mask_of(out, "10", "3", "10"), rect(3, 3, 11, 9) > 0)  # uncompressed RLE
    assert np.array_equal(mask_of(out, "11", "4", "11"), rect(12, 2, 20, 15) > 0)  # crowd skipped
    assert load(out).groups[0].images[0].file == "images/COCO_train2014_000000000010.jpg"
    assert validate(out).ok(strict=True)


def test_refcoco_group_by_category(refcoco_release: Path, tmp_path: Path) -> None:
    out = convert(refcoco_release, tmp_path / "grd", to="grd", from_="refcoco", group_by="category")
    ds = load(out)
    assert sorted((g.id, g.split) for g in ds.groups) == [
        ("dog-0000", "train"),
        ("person-0000", "train"),
        ("person-0000-val", "val"),
    ]
    dogs = next(g for g in ds.groups if g.id == "dog-0000")
    assert [i.id for i in dogs.images] == ["10", "12"]
    assert [e.id for e in dogs.expressions] == ["3", "5"]
    brown = dogs.expressions[0]
    assert brown.meta["source_image"] == "10"
    assert brown.targets["12"] is None  # written for image 10: recorded absent on image 12
    assert np.array_equal(mask_of(out, "dog-0000", "5", "12"), raster(polygon(10, 5, 22, 14)))
    assert validate(out).ok()
    small = convert(
        refcoco_release, tmp_path / "g1", to="grd", from_="refcoco", group_by="category",
        group_size=1,
    )  # fmt: skip
    assert sorted(g.id for g in load(small).groups) == [
        "dog-0000",
        "dog-0001",
        "person-0000",
        "person-0000-val",
    ]


def test_refcoco_sentences_of_one_ref_share_one_mask_file(
    refcoco_release: Path, tmp_path: Path
) -> None:
    """Was: one PNG per sentence, the ref's mask rasterised and encoded again for each."""
    counted: list[tuple[int, int]] = []  # what `gres grd convert`'s spinner counts
    out = convert(
        refcoco_release, tmp_path / "grd", to="grd", from_="refcoco",
        progress=lambda done, total: counted.append((done, total)),
    )  # fmt: skip
    assert counted[-1] == (4, 4)  # 4 refs with a target, 5 sentences
    g10 = next(g for g in load(out).groups if g.id == "10")
    man, guy, dog = g10.expressions
    assert man.targets["10"] == guy.targets["10"] == "masks/10/ref-1.png"
    assert dog.targets["10"] == "masks/10/ref-2.png"
    assert sorted(p.name for p in (out / "masks" / "10").iterdir()) == ["ref-1.png", "ref-2.png"]


@pytest.mark.parametrize("processes", [False, True], ids=["in-process", "worker-processes"])
def test_refcoco_masks_from_worker_processes(
    refcoco_release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    """The masks are rasterised on every core once there are many (`convert.write_masks`):
    the same files either way; a ref whose annotations fall outside its image is absent; a
    segmentation that does not decode is one line naming it, and DST never appears."""
    if processes:
        masks_in_worker_processes(monkeypatch)
    instances = json.loads((refcoco_release / "instances.json").read_text())
    instances["annotations"][4]["segmentation"] = [[W + 5, H + 5, W + 9, H + 5, W + 9, H + 9]]
    (refcoco_release / "instances.json").write_text(json.dumps(instances))
    out = convert(refcoco_release, tmp_path / "grd", to="grd", from_="refcoco")
    assert mask_of(out, "12", "5", "12") is None  # outside image 12: absent, no file
    assert not (out / "masks" / "12").exists()
    assert np.array_equal(mask_of(out, "10", "1", "10"), raster(polygon(1, 1, 8, 12)))
    assert np.array_equal(mask_of(out, "10", "3", "10"), rect(3, 3, 11, 9) > 0)
    assert validate(out).ok(strict=True)
    instances["annotations"][1]["segmentation"] = {"size": [2 * H, W], "counts": [2 * H * W]}
    (refcoco_release / "instances.json").write_text(json.dumps(instances))
    with pytest.raises(GRDError, match="annotation 101") as caught:
        convert(refcoco_release, tmp_path / "bad", to="grd", from_="refcoco")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "bad").exists()


def test_grefcoco_no_target_and_multi_target(refcoco_release: Path, tmp_path: Path) -> None:
    (refcoco_release / "refs(unc).p").unlink()
    grefs = [
        {"ref_id": 7, "image_id": 10, "ann_id": [100, 101], "category_id": [1, 18],
         "split": "train", "no_target": False,
         "sentences": [{"sent_id": 70, "sent": "man and his dog", "raw": "man and his dog"}]},
        {"ref_id": 8, "image_id": 10, "ann_id": [-1], "category_id": [-1], "split": "train",
         "no_target": True,
         "sentences": [{"sent_id": 80, "sent": "the cat", "raw": "the cat"}]},
    ]  # fmt: skip
    (refcoco_release / "grefs(unc).json").write_text(json.dumps(grefs))
    out = convert(refcoco_release, tmp_path / "grd", to="grd", from_="refcoco")
    both = raster(polygon(1, 1, 8, 12)) | (rect(3, 3, 11, 9) > 0)
    assert np.array_equal(mask_of(out, "10", "70", "10"), both)
    assert mask_of(out, "10", "80", "10") is None
    by_cat = convert(
        refcoco_release, tmp_path / "cat", to="grd", from_="refcoco", group_by="category"
    )
    assert "no-target-0000" in {g.id for g in load(by_cat).groups}


def test_refcoco_bad_input_is_one_line(refcoco_release: Path, tmp_path: Path) -> None:
    (refcoco_release / "refs(google).p").write_bytes((refcoco_release / "refs(unc).p").read_bytes())
    result = runner.invoke(
        app, ["grd", "convert", str(refcoco_release), str(tmp_path / "a"), "--from", "refcoco"]
    )
    assert result.exit_code == 2 and "name one with --refs" in result.output
    assert "Traceback" not in result.output
    ok = runner.invoke(
        app,
        ["grd", "convert", str(refcoco_release), str(tmp_path / "b"), "--from", "refcoco",
         "--refs", "refs(google).p", "--group-by", "category", "--group-size", "2"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(
        app,
        ["grd", "convert", str(refcoco_release), str(tmp_path / "c"), "--from", "refcoco",
         "--refs", "refs(unc).p", "--group-by", "colour"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "--group-by colour" in bad.output
    missing = runner.invoke(
        app,
        ["grd", "convert", str(refcoco_release), str(tmp_path / "d"), "--from", "refcoco",
         "--refs", "refs(unc).p", "--images", str(tmp_path / "nowhere")],
    )  # fmt: skip
    assert missing.exit_code == 2 and "no such folder of COCO images" in missing.output
    assert not any((tmp_path / n).exists() for n in "acd")
