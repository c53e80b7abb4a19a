"""Hugging Face `datasets` folder <-> GRD.

Layout: `data/train-00000-of-00001.parquet`, one row per (expression, image) pair with columns
`group, split, expression_id, expression, image_id, image, mask, present, file, mask_file` and
JSON-string meta columns; `image` and `mask` are `datasets.Image` features (the image's original
bytes; the mask a 0/255 PNG, None where `present` is False). `datasets.load_dataset(DST)` loads
it as-is (the GRD split is a column, the whole set is the `train` split). `datasets` is imported
lazily and does not import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grd_tools.errors import GRDError
from grd_tools.format import Expression, GRDDataset, Group, ImageRecord, save
from grd_tools.fsutil import atomic_write_bytes
from grd_tools.imageio import read_mask, write_mask
from grd_tools.paths import resolve_inside

SHARD = "data/train-00000-of-00001.parquet"
_STR = ("group", "split", "expression_id", "expression", "image_id", "file", "mask_file")


def detect(src: Path) -> bool:
    return any((src / "data").glob("*.parquet")) if (src / "data").is_dir() else False


def write(dataset: GRDDataset, dst: Path, **_: Any) -> None:
    import datasets

    assert dataset.root is not None
    rows: dict[str, list[Any]] = {
        k: [] for k in (*_STR, "image", "mask", "present", "width", "height", "meta")
    }
    for g in dataset.groups:
        for e in g.expressions:
            for img in g.images:
                rel = e.targets.get(img.id)
                raw = resolve_inside(dataset.root, img.file).read_bytes()
                mask = None
                if rel is not None:
                    mask = {"bytes": resolve_inside(dataset.root, rel).read_bytes(), "path": rel}
                meta = {"group": g.meta, "image": img.meta, "expression": e.meta}
                if not rows["meta"]:
                    meta["dataset"] = {
                        "name": dataset.name,
                        "license": dataset.license,
                        "meta": dataset.meta,
                    }
                for k, v in zip(
                    _STR, (g.id, g.split, e.id, e.text, img.id, img.file, rel), strict=True
                ):
                    rows[k].append(v)
                rows["image"].append({"bytes": raw, "path": img.file})
                rows["mask"].append(mask)
                rows["present"].append(rel is not None)
                rows["width"].append(img.width)
                rows["height"].append(img.height)
                rows["meta"].append(json.dumps(meta))
    features = datasets.Features(
        {
            **{k: datasets.Value("string") for k in _STR},
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "present": datasets.Value("bool"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "meta": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_dict(rows, features=features)
    (dst / SHARD).parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(dst / SHARD))


def read(src: Path, dst: Path, **_: Any) -> None:
    import pyarrow.parquet as pq

    shards = sorted((src / "data").glob("*.parquet")) if (src / "data").is_dir() else []
    if not shards:
        raise GRDError(f"{src}: no data/*.parquet shards (not a gres hf dataset)")
    groups: dict[str, Group] = {}
    exprs: dict[tuple[str, str], Expression] = {}
    seen: set[tuple[str, str]] = set()
    info: dict[str, Any] = {}
    for shard in shards:
        try:
            table = pq.read_table(shard).to_pylist()
        except Exception as e:  # pyarrow raises many types for broken files
            raise GRDError(f"{shard}: unreadable parquet ({e})") from None
        for i, r in enumerate(table):
            try:
                meta = json.loads(r.get("meta") or "{}")
                info = meta.get("dataset", info)
                gid, eid, iid = str(r["group"]), str(r["expression_id"]), str(r["image_id"])
                rel_img = r.get("file") or f"images/{gid}/{iid}.png"
                g = groups.setdefault(
                    gid, Group(gid, [], [], r.get("split"), meta.get("group") or {})
                )
                if (gid, iid) not in seen:
                    seen.add((gid, iid))
                    atomic_write_bytes(resolve_inside(dst, rel_img), r["image"]["bytes"])
                    g.images.append(
                        ImageRecord(
                            iid, rel_img, int(r["width"]), int(r["height"]), meta.get("image") or {}
                        )
                    )
                if (gid, eid) not in exprs:
                    exprs[(gid, eid)] = Expression(
                        eid, str(r["expression"]), {}, meta.get("expression") or {}
                    )
                    g.expressions.append(exprs[(gid, eid)])
                rel = None
                if r.get("present") and r.get("mask") is not None:
                    rel = r.get("mask_file") or f"masks/{gid}/{eid}/{iid}.png"
                    path = resolve_inside(dst, rel)
                    atomic_write_bytes(path, r["mask"]["bytes"])
                    mask = read_mask(path) > 127
                    if mask.any():
                        write_mask(path, mask)  # normalise to 0/255
                    else:  # an empty mask marks the target absent, as in every other reader
                        path.unlink()
                        rel = None
                exprs[(gid, eid)].targets[iid] = rel
            except GRDError as e:
                raise GRDError(f"{shard}: row {i}: {e}") from None
            except (KeyError, TypeError, ValueError) as e:
                raise GRDError(f"{shard}: row {i}: bad row ({type(e).__name__}: {e})") from None
    save(
        GRDDataset(
            list(groups.values()),
            name=info.get("name", ""),
            license=info.get("license", ""),
            meta=info.get("meta") or {},
        ),
        dst,
    )
