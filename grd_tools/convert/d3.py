"""D³ (`shikras/d-cube`, PyPI `ddd-dataset`) -> GRD, read only.

D³ is the grouped release of the GRES paper's authors (CC BY-NC 4.0). SRC is the folder its
three zips were extracted into:

- `d3_images/`: the photos; an image's `file_name` is relative to this folder;
- `d3_pkl/`: `sentences.pkl`, `annotations.pkl`, `images.pkl`, `groups.pkl`, each a dict keyed by
  integer id (fields in docs/formats.md), read with `grd_tools.safe_pickle` (plain data only);
- `d3_json/`: COCO-style JSON for D³'s box evaluation (not needed here).

Every sentence is annotated on every image of its group, so each (sentence, image) pair is
either a mask (the union of the sentence's instance masks on that image) or absent. With
`inter_group=False` (D³'s default "intra-group" setting) a group's expressions are its
`inner_sent_id` sentences; with `inter_group=True` every sentence is asked of every group, as D³
annotates every sentence on every image. D³'s `is_negative` marks *absence sentences* ("a dog
without a leash"), which is a property of the text, not "target absent": it is kept as
expression metadata.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grd_tools import safe_pickle
from grd_tools.convert import mark_absent, write_masks
from grd_tools.convert.coco import decode_segmentation
from grd_tools.errors import GRDError
from grd_tools.format import Expression, GRDDataset, Group, ImageRecord, save
from grd_tools.fsutil import link_or_copy
from grd_tools.paths import resolve_inside

IMAGES_DIR = "d3_images"
PICKLE_DIR = "d3_pkl"
TABLES = ("sentences", "annotations", "images", "groups")
LICENSE = "CC BY-NC 4.0 (D³, shikras/d-cube; images from Flickr under their own licences)"


def detect(src: Path) -> bool:
    return (src / PICKLE_DIR / "groups.pkl").is_file()


def _tables(src: Path) -> dict[str, dict[int, dict[str, Any]]]:
    tables = {}
    for name in TABLES:
        path = src / PICKLE_DIR / f"{name}.pkl"
        if not path.is_file():
            raise GRDError(f"{path}: missing (is SRC the folder the D³ zips were extracted into?)")
        table = safe_pickle.load(path)
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise GRDError(f"{path}: expected a dict of records keyed by id")
        tables[name] = table
    return tables


def read(
    src: Path,
    dst: Path,
    inter_group: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **_: Any,
) -> None:
    """`progress(done, total)` follows the masks being written."""
    t = _tables(src)
    field = "?"
    try:
        # (image id, sentence id) -> the segmentations of that sentence's instances there
        segments: dict[tuple[int, int], list[Any]] = defaultdict(list)
        field = "annotations.pkl"
        for ann in t["annotations"].values():
            for sid in ann["sent_id"]:
                segments[(int(ann["image_id"]), int(sid))].append(ann["segmentation"])
        every_sentence = sorted(int(s) for s in t["sentences"])
        groups = []
        masks: dict[str, tuple[Any, int, int, str]] = {}  # path -> (RLEs, height, width, where)
        for gid in sorted(t["groups"]):
            field = f"groups.pkl[{gid}]"
            g = t["groups"][gid]
            own = [int(s) for s in g["inner_sent_id"]]
            sids = every_sentence if inter_group else own
            images = []
            for iid in g["img_id"]:
                field = f"images.pkl[{iid}]"
                info = t["images"][iid]
                rel = f"images/{info['file_name']}"
                link_or_copy(resolve_inside(src / IMAGES_DIR, str(info["file_name"])), dst / rel)
                meta = {"d3_image_id": int(iid)}
                for key in ("flickr_url", "license"):
                    if info.get(key):
                        meta[key] = safe_pickle.plain(info[key])
                images.append(
                    ImageRecord(str(iid), rel, int(info["width"]), int(info["height"]), meta)
                )
            expressions = []
            for sid in sids:
                field = f"sentences.pkl[{sid}]"
                sent = t["sentences"][sid]
                targets: dict[str, str | None] = {}
                for img in images:
                    parts = segments.get((int(img.id), sid))
                    targets[img.id] = f"masks/{gid}/{sid}/{img.id}.png" if parts else None
                    if parts:  # written below, with every other mask, on every core
                        where = f"image {img.id}, sentence {sid}"
                        masks[targets[img.id]] = (_rles(parts), img.height, img.width, where)
                meta = {"d3_sent_id": sid, "is_negative": bool(sent.get("is_negative", False))}
                if sent.get("raw_sent_zh"):
                    meta["text_zh"] = safe_pickle.plain(sent["raw_sent_zh"])
                if inter_group and sid not in own:
                    meta["inter_group"] = True
                text = safe_pickle.plain(sent["raw_sent"])
                expressions.append(Expression(str(sid), text, targets, meta))
            gmeta = {"d3_group_id": int(gid)}
            for key, out in (
                ("group_name", "name"),
                ("group_name_zh", "name_zh"),
                ("scene", "scene"),
            ):
                if g.get(key):
                    gmeta[out] = safe_pickle.plain(g[key])
            groups.append(Group(str(gid), images, expressions, None, gmeta))
    except (KeyError, TypeError, ValueError) as e:
        raise GRDError(f"{src / PICKLE_DIR}: {field}: bad or missing field {e}") from None
    mark_absent(groups, write_masks(dst, masks, _merge, progress))  # empty union: absent
    save(
        GRDDataset(
            groups,
            name="D3 (inter-group)" if inter_group else "D3",
            license=LICENSE,
            meta={"source": "d3", "setting": "inter-group" if inter_group else "intra-group"},
        ),
        dst,
    )


def _rles(parts: list[Any]) -> Any:
    """One sentence's instance segmentations on one image (each an RLE or a list of RLEs) as
    one list of plain RLE parts, which `decode_segmentation` unions."""
    return _plain_rle(
        [r for seg in parts for r in (seg if isinstance(seg, (list, tuple)) else [seg])]
    )


def _merge(job: tuple[Any, int, int, str]) -> Any:
    """The union of one sentence's instance masks on one image (in a worker, `write_masks`)."""
    rles, height, width, where = job
    try:
        return decode_segmentation(rles, height, width)
    except (ValueError, TypeError, KeyError) as e:
        raise GRDError(f"{PICKLE_DIR}/annotations.pkl: {where}: {e}") from None


def _plain_rle(seg: Any) -> Any:
    """Plain RLE dict(s) for pycocotools: in D³ `size` may be a numpy array, `counts` bytes."""
    if isinstance(seg, dict):
        return {"size": [int(v) for v in seg["size"]], "counts": seg["counts"]}
    if isinstance(seg, (list, tuple)):
        return [_plain_rle(s) for s in seg]
    return seg
