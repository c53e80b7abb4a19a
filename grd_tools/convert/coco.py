"""COCO instances JSON + a `refs` list <-> GRD.

Layout: `annotations.json` (COCO `images`, `annotations` with uncompressed-string RLE masks that
`pycocotools.mask.decode` turns back into the exact source pixels, one `categories` entry) and
the image files under their GRD relative paths. `refs` holds one row per (expression, image)
pair: `{"group", "expression_id", "expression", "image_id", "ann_id"}`; `ann_id` is None where
the target is absent from that image. `groups` keeps group ids, splits and meta, so
grd -> coco -> grd gives back every id, text, split, image byte and mask pixel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from grd_tools.errors import GRDError
from grd_tools.format import Expression, GRDDataset, Group, ImageRecord, save
from grd_tools.fsutil import atomic_write_text, link_or_copy
from grd_tools.imageio import read_mask, write_mask
from grd_tools.paths import resolve_inside

ANNOTATIONS = "annotations.json"


def detect(src: Path) -> bool:
    return (src / ANNOTATIONS).is_file()


def write(dataset: GRDDataset, dst: Path, **_: Any) -> None:
    from pycocotools import mask as mask_utils  # pycocotools does not import torch

    assert dataset.root is not None
    images, anns, refs, groups = [], [], [], []
    for g in dataset.groups:
        ids: dict[str, int] = {}
        for img in g.images:
            ids[img.id] = len(images) + 1
            link_or_copy(resolve_inside(dataset.root, img.file), resolve_inside(dst, img.file))
            images.append(
                {
                    "id": ids[img.id],
                    "file_name": img.file,
                    "width": img.width,
                    "height": img.height,
                    "group": g.id,
                    "grd_image_id": img.id,
                    "meta": img.meta,
                }
            )
        for e in g.expressions:
            for img in g.images:
                rel = e.targets.get(img.id)
                ann_id = None
                if rel is not None:
                    m = np.asfortranarray(read_mask(resolve_inside(dataset.root, rel)) > 127)
                    rle = mask_utils.encode(m.astype(np.uint8))
                    ann_id = len(anns) + 1
                    anns.append(
                        {
                            "id": ann_id,
                            "image_id": ids[img.id],
                            "category_id": 1,
                            "iscrowd": 0,
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                            "area": float(mask_utils.area(rle)),
                            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                            "mask_file": rel,
                        }
                    )
                refs.append(
                    {
                        "group": g.id,
                        "expression_id": e.id,
                        "expression": e.text,
                        "image_id": ids[img.id],
                        "ann_id": ann_id,
                        "expression_meta": e.meta,
                    }
                )
        groups.append(
            {
                "id": g.id,
                "split": g.split,
                "meta": g.meta,
                "expressions": [e.id for e in g.expressions],
            }
        )
    doc = {
        "info": {"description": dataset.name, "license": dataset.license, "meta": dataset.meta},
        "images": images,
        "annotations": anns,
        "refs": refs,
        "groups": groups,
        "categories": [{"id": 1, "name": "referent", "supercategory": "referent"}],
    }
    atomic_write_text(dst / ANNOTATIONS, json.dumps(doc))


def read(src: Path, dst: Path, **_: Any) -> None:
    path = src / ANNOTATIONS
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        images = {int(i["id"]): i for i in doc["images"]}
        anns = {int(a["id"]): a for a in doc["annotations"]}
        refs = doc["refs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GRDError(f"{path}: not a COCO+refs file ({type(e).__name__}: {e})") from None
    group_info = {g["id"]: g for g in doc.get("groups", [])}
    groups: dict[str, Group] = {}
    exprs: dict[tuple[str, str], Expression] = {}

    def group_of(gid: str) -> Group:
        if gid not in groups:
            info = group_info.get(gid, {})
            groups[gid] = Group(gid, [], [], info.get("split"), info.get("meta") or {})
        return groups[gid]

    for i in images.values():
        g = group_of(str(i.get("group", "all")))
        gid_img = str(i.get("grd_image_id", i["id"]))
        rel = str(i["file_name"])
        link_or_copy(resolve_inside(src, rel), resolve_inside(dst, rel))
        g.images.append(
            ImageRecord(gid_img, rel, int(i["width"]), int(i["height"]), i.get("meta") or {})
        )
    img_key = {k: str(i.get("grd_image_id", k)) for k, i in images.items()}
    for r in refs:
        try:
            img = images[int(r["image_id"])]
            gid = str(r.get("group", img.get("group", "all")))
            eid = str(r.get("expression_id", r["expression"]))
        except (KeyError, ValueError, TypeError) as e:
            raise GRDError(f"{path}: bad ref {r!r} ({e})") from None
        g = group_of(gid)
        if (gid, eid) not in exprs:
            exprs[(gid, eid)] = Expression(
                eid,
                str(r["expression"]),
                {im.id: None for im in g.images},
                r.get("expression_meta") or {},
            )
            g.expressions.append(exprs[(gid, eid)])
        e = exprs[(gid, eid)]
        if r.get("ann_id") is None:
            continue
        ann = anns.get(int(r["ann_id"]))
        if ann is None:
            raise GRDError(f"{path}: ref names annotation {r['ann_id']}, which does not exist")
        try:
            m = decode_segmentation(ann["segmentation"], int(img["height"]), int(img["width"]))
        except (ValueError, KeyError, TypeError) as err:
            raise GRDError(f"{path}: annotation {ann['id']}: {err}") from None
        if not m.any():  # an empty mask marks the target absent, as in every other reader
            continue
        key = img_key[int(r["image_id"])]
        rel = ann.get("mask_file") or f"masks/{gid}/{eid}/{key}.png"
        write_mask(resolve_inside(dst, rel), m)
        e.targets[key] = rel
    meta = doc.get("info", {})
    save(
        GRDDataset(
            list(groups.values()),
            name=meta.get("description", ""),
            license=meta.get("license", ""),
            meta=meta.get("meta") or {},
        ),
        dst,
    )


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO `segmentation` to a bool (height, width) mask; a list of parts is unioned.

    Accepts polygons (`[[x1, y1, ...], ...]`), an RLE dict whose `counts` is compressed
    (str or bytes) or uncompressed (a list of run lengths), and a list of RLE dicts (D³ stores
    one per instance part). Raises ValueError when it does not decode or has another size.
    """
    from pycocotools import mask as mask_utils  # pycocotools does not import torch

    def rle_of(part: Any) -> Any:
        counts = part["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            return mask_utils.frPyObjects(part, *part["size"])
        return {
            "size": list(part["size"]),
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }

    try:
        if isinstance(seg, dict):
            rles = [rle_of(seg)]
        elif seg and all(isinstance(p, dict) for p in seg):
            rles = [rle_of(p) for p in seg]
        else:  # polygons; parts with fewer than 3 points cannot be drawn
            polys = [list(map(float, p)) for p in seg if len(p) >= 6 and len(p) % 2 == 0]
            if not polys:
                raise ValueError("no polygon with 3 or more points")
            rles = mask_utils.frPyObjects(polys, height, width)
        m = mask_utils.decode(rles)
    except (ValueError, KeyError, TypeError):
        raise
    except Exception as err:  # pycocotools raises bare Exceptions
        raise ValueError(f"mask does not decode ({err})") from None
    if m.ndim == 3:
        m = m.any(axis=2)
    if m.shape != (height, width):
        raise ValueError(f"mask size {m.shape[1]}x{m.shape[0]} != image size {width}x{height}")
    return m.astype(bool)
