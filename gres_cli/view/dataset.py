"""The page data of a GRD dataset: its groups, their expressions, and for each expression the
ground-truth mask on every image of the group (absent targets marked), with the findings of
`grd validate` beside the group, image, expression or target they concern."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from grd_tools.errors import GRDError
from grd_tools.format import MANIFEST, load
from grd_tools.paths import resolve_inside
from grd_tools.validate import validate
from gres_cli.view.site import MaskSource, Picture

#: a finding's JSON path: group, then an image, or an expression and maybe one of its targets
#: (`$.groups[0].expressions[1].targets['0001']`, or `.targets.a1` for identifier-like ids)
WHERE = re.compile(
    r"^\$\.groups\[(?P<group>\d+)\]"
    r"(?:\.images\[(?P<image>\d+)\]"
    r"|\.expressions\[(?P<expr>\d+)\](?:\.targets(?:\.(?P<id>\w+)|\[(?P<q>['\"])(?P<qid>.*)(?P=q)\])?)?)?"
)


def is_dataset(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def dataset_data(root: Path) -> tuple[dict[str, Any], list[tuple[dict[str, Any], Picture | None]]]:
    """The page's data and the pictures to draw, as (slot, picture) pairs."""
    report = validate(root)
    findings = [
        {"severity": i.severity, "code": i.code, "message": i.message, "where": i.where}
        for i in report.issues
    ]
    try:
        ds = load(root)
    except GRDError as e:  # a manifest that breaks the schema: the page lists the findings only
        ds = None
        findings.insert(0, {"severity": "error", "code": "load", "message": str(e), "where": "$"})
    slots: list[tuple[dict[str, Any], Picture | None]] = []
    groups = []
    for group in ds.groups if ds is not None else []:
        images = []
        photos: dict[str, Path | None] = {}
        for img in group.images:
            entry = {"id": img.id, "name": Path(img.file).name, "findings": []}
            photos[img.id] = _inside(root, img.file)
            slots.append((entry, _picture(photos[img.id], None)))
            images.append(entry)
        expressions = []
        for expr in group.expressions:
            targets = []
            for img in group.images:
                mask = expr.targets.get(img.id)
                target = {"image": img.id, "present": mask is not None, "findings": []}
                if mask is not None:
                    mask_path = _inside(root, mask)
                    if mask_path is None:
                        target["picture_error"] = "mask not found"
                        slots.append((target, None))
                    else:
                        slots.append((target, _picture(photos[img.id], MaskSource(mask_path))))
                targets.append(target)
            expressions.append(
                {"id": expr.id, "text": expr.text, "targets": targets, "findings": []}
            )
        groups.append(
            {
                "id": group.id,
                "split": group.split,
                "images": images,
                "expressions": expressions,
                "findings": [],
            }
        )
    unplaced = [f for f in findings if not _place(f, groups)]
    data = {
        "kind": "dataset",
        "title": f"GRD dataset: {ds.name if ds is not None and ds.name else root.name}",
        "source": str(root),
        "name": ds.name if ds is not None else "",
        "license": ds.license if ds is not None else "",
        "groups": groups,
        "findings": unplaced,
        "counts": {
            "groups": len(groups),
            "images": sum(len(g["images"]) for g in groups),
            "pairs": sum(len(g["images"]) * len(g["expressions"]) for g in groups),
            "errors": len(report.errors) + (ds is None),
            "warnings": len(report.warnings),
        },
    }
    return data, slots


def _inside(root: Path, rel: str) -> Path | None:
    """`rel` under `root`, or None when it leaves the dataset or does not exist."""
    try:
        path = resolve_inside(root, rel)
    except GRDError:
        return None
    return path if path.is_file() else None


def _picture(photo: Path | None, mask: MaskSource | None) -> Picture | None:
    return Picture(photo, mask, "truth") if photo is not None else None


def _place(finding: dict[str, Any], groups: list[dict[str, Any]]) -> bool:
    """Attach a finding to the item its JSON path names; False when it names none of them
    (the page lists those at the top)."""
    m = WHERE.match(finding["where"])
    if m is None or int(m["group"]) >= len(groups):
        return False
    group = groups[int(m["group"])]
    target: dict[str, Any] = group
    if m["image"] is not None and int(m["image"]) < len(group["images"]):
        target = group["images"][int(m["image"])]
    elif m["expr"] is not None and int(m["expr"]) < len(group["expressions"]):
        target = group["expressions"][int(m["expr"])]
        image_id = m["id"] or m["qid"]
        for t in target["targets"] if image_id is not None else []:
            if t["image"] == image_id:
                target = t
                break
    target["findings"].append(finding)
    return True
