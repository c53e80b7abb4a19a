"""`gres grd stats`: how big a GRD dataset is and how its targets look, overall and per split.

Counts come from the manifest alone. Mask areas (the fraction of its image a present target
covers) need the mask pixels, read by worker processes on large datasets
(`grd_tools.validate.map_files`); pass `areas=False` to skip them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from grd_tools.errors import GRDError
from grd_tools.format import GRDDataset
from grd_tools.paths import resolve_inside
from grd_tools.validate import KNOWN_SPLITS, map_files, mask_histogram

#: the name a group without a split is listed under
UNASSIGNED = "unassigned"
#: mask-area quantiles reported (fractions of the image)
QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}


def _spread(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "mean": round(float(np.mean(values)), 3), "max": max(values)}


def _area_summary(areas: list[float]) -> dict[str, float] | None:
    if not areas:
        return None
    a = np.asarray(areas, dtype=np.float64)
    out = {"count": len(areas), "mean": float(a.mean()), "min": float(a.min())}
    out |= {name: float(np.quantile(a, q)) for name, q in QUANTILES.items()}
    out["max"] = float(a.max())
    return {k: (v if k == "count" else round(v, 6)) for k, v in out.items()}


def mask_areas(
    dataset: GRDDataset,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Foreground fraction of every mask the dataset names: `{relative path: area in [0, 1]}`.

    Raises GRDError naming the first mask that cannot be read (run `gres grd validate`).
    """
    if dataset.root is None:
        raise GRDError("mask areas need a dataset loaded from a folder")
    root = dataset.root
    paths = sorted(
        {m for g in dataset.groups for e in g.expressions for m in e.targets.values() if m}
    )

    area = functools.partial(_mask_area, root)
    out: dict[str, float] = {}
    for rel, value in zip(
        paths, map_files(area, paths, workers=workers, progress=progress), strict=True
    ):
        out[rel] = value
    return out


def _mask_area(root: Path, rel: str) -> float:
    """|M| / (W * H) of one mask file."""
    try:
        counts, w, h = mask_histogram(resolve_inside(root, rel))
    except GRDError as e:
        raise GRDError(f"{e} (run `gres grd validate {root}`)") from None
    return 1.0 - float(counts[0]) / float(w * h)


def split_stats(dataset: GRDDataset, areas: dict[str, float] | None = None) -> dict[str, Any]:
    """Counts for the groups of `dataset` (one split, or all of them)."""
    n_pos = n_neg = 0
    pair_areas: list[float] = []
    for pair in dataset.pairs():
        if pair.present:
            n_pos += 1
            if areas is not None:
                pair_areas.append(areas[pair.mask])
        else:
            n_neg += 1
    pairs = n_pos + n_neg
    groups = dataset.groups
    return {
        "groups": len(groups),
        "images": sum(len(g.images) for g in groups),
        "expressions": sum(len(g.expressions) for g in groups),
        "pairs": pairs,
        "positive": n_pos,
        "negative": n_neg,
        "negative_share": round(n_neg / pairs, 6) if pairs else None,
        "images_per_group": _spread([len(g.images) for g in groups]),
        "expressions_per_group": _spread([len(g.expressions) for g in groups]),
        "mask_area": _area_summary(pair_areas) if areas is not None else None,
    }


def _split_order(split: str | None) -> tuple[int, int, str]:
    """train, val, test first, then other names, then groups without a split."""
    if split is None:
        return (2, 0, "")
    if split in KNOWN_SPLITS:
        return (0, KNOWN_SPLITS.index(split), split)
    return (1, 0, split)


def dataset_stats(
    dataset: GRDDataset,
    *,
    areas: bool = True,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Stats of the whole dataset (`splits["all"]`) and of each split, as plain JSON data.

    Mask areas are per (expression, image) pair with a present target, as a fraction of the mask
    (= image) size: `|M| / (W * H)`.
    """
    area_map = mask_areas(dataset, workers=workers, progress=progress) if areas else None
    splits: dict[str, Any] = {"all": split_stats(dataset, area_map)}
    for split in sorted(dataset.splits(), key=_split_order):
        # not `dataset.select(split)`: select(None) means "all groups", here it means "no split"
        part = GRDDataset([g for g in dataset.groups if g.split == split], root=dataset.root)
        splits[split or UNASSIGNED] = split_stats(part, area_map)
    return {
        "dataset": str(dataset.root) if dataset.root else dataset.name,
        "name": dataset.name,
        "license": dataset.license,
        "splits": splits,
    }


def load_stats(root: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Load the GRD folder `root` (schema-checked) and return `dataset_stats` of it."""
    from grd_tools.format import load

    return dataset_stats(load(Path(root)), **options)
