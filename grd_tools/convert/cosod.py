"""CoSOD folders (`Image/<group>/*`, `GroundTruth/<group>/<stem>.png`) <-> GRD.

CoSOD (co-salient object detection) has no text: reading, the expression is the group name
(with `_` as spaces) or `--expression TEXT`; an all-zero ground truth means the target is absent
there. Writing, a GRD group with several expressions becomes one CoSOD group per
(group, expression), named `<group>__<expression id>`; an absent target is an all-zero PNG.
Writing keeps image bytes (file copied as-is) and mask pixels; texts, splits and ids beyond the
folder names are not in the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from grd_tools.errors import GRDError
from grd_tools.format import Expression, GRDDataset, Group, ImageRecord, save
from grd_tools.fsutil import link_or_copy
from grd_tools.imageio import image_size, read_mask, write_mask
from grd_tools.paths import resolve_inside

IMAGE_DIR, GT_DIR = "Image", "GroundTruth"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def detect(src: Path) -> bool:
    return (src / IMAGE_DIR).is_dir() and (src / GT_DIR).is_dir()


def write(dataset: GRDDataset, dst: Path, **_: Any) -> None:
    assert dataset.root is not None
    for g in dataset.groups:
        for e in g.expressions:
            name = g.id if len(g.expressions) == 1 else f"{g.id}__{e.id}"
            for img in g.images:
                stem = Path(img.id).name
                suffix = Path(img.file).suffix.lower()
                link_or_copy(
                    resolve_inside(dataset.root, img.file),
                    resolve_inside(dst, f"{IMAGE_DIR}/{name}/{stem}{suffix}"),
                )
                rel = e.targets.get(img.id)
                if rel is None:
                    mask = np.zeros((img.height, img.width), dtype=np.uint8)
                else:
                    mask = read_mask(resolve_inside(dataset.root, rel))
                write_mask(resolve_inside(dst, f"{GT_DIR}/{name}/{stem}.png"), mask)


def read(src: Path, dst: Path, *, expression: str | None = None, **_: Any) -> None:
    if not detect(src):
        raise GRDError(f"{src}: not a CoSOD folder (needs {IMAGE_DIR}/ and {GT_DIR}/)")
    groups = []
    for gdir in sorted(p for p in (src / IMAGE_DIR).iterdir() if p.is_dir()):
        gid = gdir.name
        images, targets = [], {}
        for f in sorted(p for p in gdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            rel_img = f"{IMAGE_DIR}/{gid}/{f.name}"
            rel_gt = f"{GT_DIR}/{gid}/{f.stem}.png"
            gt_path = resolve_inside(src, rel_gt)
            if not gt_path.is_file():
                raise GRDError(f"{gt_path}: ground truth missing for {rel_img}")
            w, h = image_size(resolve_inside(src, rel_img))
            out_img = f"images/{gid}/{f.name}"
            link_or_copy(resolve_inside(src, rel_img), resolve_inside(dst, out_img))
            images.append(ImageRecord(f.stem, out_img, w, h))
            mask = read_mask(gt_path)
            if mask.shape != (h, w):
                raise GRDError(f"{gt_path}: size {mask.shape[::-1]} != image size {(w, h)}")
            if mask.max(initial=0) > 127:
                write_mask(resolve_inside(dst, f"masks/{gid}/{f.stem}.png"), mask > 127)
                targets[f.stem] = f"masks/{gid}/{f.stem}.png"
            else:
                targets[f.stem] = None  # all-zero ground truth: target absent
        if images:
            text = expression or gid.replace("_", " ")
            groups.append(Group(gid, images, [Expression("e0", text, targets)]))
    if not groups:
        raise GRDError(f"{src / IMAGE_DIR}: no group folders with images")
    save(GRDDataset(groups, name=src.name), dst)
