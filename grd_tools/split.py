"""`gres grd split`: assign every group to train/val/test, group-aware and balanced.

Design of the output: DATASET is never modified, so the split dataset is a NEW GRD folder (`--out
DIR`) holding a `grd.json` with the new `split` of each group and the same relative paths as the
source. Its images and masks are hard links to the source files (no bytes copied, no extra disk
space) or, with `copy_files`, independent copies (needed across filesystems). Every GRD tool
then reads DIR as an ordinary dataset.

The assignment:
- Units, not groups, are assigned: groups that share an id or an image file are merged into one
  unit, so no image and no group id is ever seen in two splits.
- Units are visited in an order shuffled by `seed` (deterministic for a seed), and each goes to
  the split where it best closes the gap to the targets; of `TRIES` such passes the best wins,
  then swaps of two units between splits polish it while they lower the cost. With ``P_k``,
  ``N_k``, ``G_k`` the pairs, negative pairs and groups in split ``k``, ``r_k`` its ratio, and
  ``P, N, G`` the totals, both steps minimise

      J = sum_k ((P_k - r_k P) / r_k P)^2 + ((N_k - r_k N) / r_k N)^2
            + 1/2 ((G_k - r_k G) / r_k G)^2

  Matching both pairs and negatives to ``r_k`` keeps the negative share ``N_k / P_k`` of every
  split close to the dataset's ``N / P``; the group term spreads groups without pairs.
"""

from __future__ import annotations

import copy
import itertools
import os
import posixpath
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grd_tools.errors import GRDError
from grd_tools.format import GRDDataset, load, save
from grd_tools.fsutil import atomic_output_dir, refuse_overlap
from grd_tools.paths import resolve_inside

SPLIT_NAMES = ("train", "val", "test")
#: weight of the group-count term in the greedy cost (pairs and negatives weigh 1)
GROUP_WEIGHT = 0.5
#: greedy passes tried per split (different orders from one seed); the best is kept
TRIES = 24
#: at most this many units get the pairwise-swap polish (it costs O(units^2) per sweep)
SWAP_LIMIT = 400


def parse_ratios(text: str) -> dict[str, float]:
    """`"0.8,0.1,0.1"` -> train/val/test; `"0.8,0.2"` -> train/test. They must sum to 1."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise GRDError(f"--ratios {text}: not a list of numbers (e.g. 0.8,0.1,0.1)") from None
    if len(values) == 3:
        names = SPLIT_NAMES
    elif len(values) == 2:
        names = ("train", "test")
    else:
        raise GRDError(f"--ratios {text}: give 3 numbers (train,val,test) or 2 (train,test)")
    if any(not (0.0 <= v <= 1.0) for v in values):
        raise GRDError(f"--ratios {text}: each ratio must be between 0 and 1")
    if abs(sum(values) - 1.0) > 1e-6:
        raise GRDError(f"--ratios {text}: must sum to 1 (they sum to {sum(values):g})")
    return dict(zip(names, values, strict=True))


@dataclass
class _Unit:
    """Groups that must share a split (same id or a shared image file)."""

    groups: list[int] = field(default_factory=list)
    pairs: int = 0
    negatives: int = 0


def _units(dataset: GRDDataset) -> list[_Unit]:
    parent = list(range(len(dataset.groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}  # group id or image file -> first group index holding it
    for gi, g in enumerate(dataset.groups):
        keys = [f"id:{g.id}"] + [f"file:{posixpath.normpath(i.file)}" for i in g.images]
        for key in keys:
            if key in owner:
                parent[find(gi)] = find(owner[key])
            else:
                owner[key] = gi
    units: dict[int, _Unit] = {}
    for gi, g in enumerate(dataset.groups):
        unit = units.setdefault(find(gi), _Unit())
        unit.groups.append(gi)
        for e in g.expressions:
            unit.pairs += len(g.images)
            unit.negatives += sum(e.targets.get(i.id) is None for i in g.images)
    return list(units.values())


def assign_splits(
    dataset: GRDDataset, ratios: dict[str, float], seed: int = 0, tries: int = TRIES
) -> list[str]:
    """The split of each group of `dataset` (same order as `dataset.groups`).

    The greedy pass runs on `tries` orders drawn from `seed`; the one with the lowest cost J is
    polished by swapping units between splits while J drops.
    """
    active = [s for s, r in ratios.items() if r > 0]
    units = _units(dataset)
    if len(units) < len(active):
        raise GRDError(
            f"{len(units)} independent group(s) cannot fill {len(active)} splits "
            f"({', '.join(active)}); give fewer non-zero ratios"
        )
    # a canonical order first, so the result depends on the seed only, not on manifest order
    units.sort(key=lambda u: min(dataset.groups[i].id for i in u.groups))
    rng = random.Random(seed)
    best: _Assignment | None = None
    for _ in range(max(1, tries)):
        order = list(range(len(units)))
        rng.shuffle(order)
        candidate = _Assignment(units, {s: ratios[s] for s in active})
        candidate.greedy(order)
        if best is None or candidate.cost() < best.cost():
            best = candidate
    assert best is not None
    if len(units) <= SWAP_LIMIT:
        best.polish()
    result = [""] * len(dataset.groups)
    for split, members in best.members.items():
        for u in members:
            for gi in units[u].groups:
                result[gi] = split
    return result


class _Assignment:
    """Units placed in splits, with the running sums (pairs, negatives, groups) of each split."""

    def __init__(self, units: list[_Unit], ratios: dict[str, float]) -> None:
        self.units = units
        self.ratios = ratios
        self.size = [(u.pairs, u.negatives, len(u.groups)) for u in units]
        totals = [max(sum(v[k] for v in self.size), 1) for k in range(3)]
        # targets r_k * (P, N, G); relative gaps make a small split count as much as a big one
        self.target = {s: [r * t for t in totals] for s, r in ratios.items()}
        self.filled = {s: [0, 0, 0] for s in ratios}
        self.members: dict[str, list[int]] = {s: [] for s in ratios}

    def _split_cost(self, split: str, delta: tuple[int, ...] = (0, 0, 0)) -> float:
        filled, target = self.filled[split], self.target[split]
        return sum(
            w * ((filled[k] + delta[k] - target[k]) / target[k]) ** 2
            for k, w in enumerate((1.0, 1.0, GROUP_WEIGHT))
        )

    def cost(self) -> float:
        """J over all splits (module docstring)."""
        return sum(self._split_cost(s) for s in self.ratios)

    def _move(self, u: int, split: str, sign: int) -> None:
        for k in range(3):
            self.filled[split][k] += sign * self.size[u][k]
        if sign > 0:
            self.members[split].append(u)
        else:
            self.members[split].remove(u)

    def greedy(self, order: list[int]) -> None:
        for u in order:
            best = min(
                self.ratios,
                key=lambda s: self._split_cost(s, self.size[u]) - self._split_cost(s),
            )
            self._move(u, best, +1)
        # a small ratio over few large units can leave a split empty: give it the smallest unit
        # of the split holding the most units
        for split in self.ratios:
            if not self.members[split]:
                donor = max(self.ratios, key=lambda s: len(self.members[s]))
                u = min(self.members[donor], key=lambda i: self.size[i])
                self._move(u, donor, -1)
                self._move(u, split, +1)

    def polish(self) -> None:
        """Swap two units of different splits while that lowers J (O(units^2) per sweep)."""
        improved = True
        while improved:
            improved = False
            for a_split, b_split in itertools.combinations(self.ratios, 2):
                for a in list(self.members[a_split]):
                    for b in list(self.members[b_split]):
                        d = tuple(self.size[b][k] - self.size[a][k] for k in range(3))
                        if d == (0, 0, 0):
                            continue
                        minus = tuple(-v for v in d)
                        before = self._split_cost(a_split) + self._split_cost(b_split)
                        after = self._split_cost(a_split, d) + self._split_cost(b_split, minus)
                        if after < before - 1e-12:
                            self._move(a, a_split, -1), self._move(b, b_split, -1)
                            self._move(b, a_split, +1), self._move(a, b_split, +1)
                            improved = True
                            break  # `a` left a_split: go on with its next unit


def split_summary(dataset: GRDDataset) -> dict[str, dict[str, Any]]:
    """Groups, images, pairs and negative share of each split of `dataset`."""
    out: dict[str, dict[str, Any]] = {}
    for g in dataset.groups:
        row = out.setdefault(str(g.split), {"groups": 0, "images": 0, "pairs": 0, "negative": 0})
        row["groups"] += 1
        row["images"] += len(g.images)
        for e in g.expressions:
            row["pairs"] += len(g.images)
            row["negative"] += sum(e.targets.get(i.id) is None for i in g.images)
    for row in out.values():
        row["negative_share"] = round(row["negative"] / row["pairs"], 6) if row["pairs"] else None
    order = {name: i for i, name in enumerate(SPLIT_NAMES)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def _place_file(src: Path, dst: Path, copy_files: bool, out: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if copy_files:
            shutil.copyfile(src, dst)
        else:
            os.link(src, dst)
    except FileNotFoundError:
        raise GRDError(f"{src}: missing (run `gres grd validate` on the dataset)") from None
    except OSError as e:
        if copy_files:
            raise GRDError(f"{src}: cannot copy to {out} ({e.strerror})") from None
        raise GRDError(
            f"{src}: cannot hard-link into {out} ({e.strerror}); pass --copy-files "
            "(e.g. when --out is on another filesystem)"
        ) from None


def split_dataset(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    ratios: dict[str, float],
    *,
    seed: int = 0,
    copy_files: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the split dataset `out` from the GRD folder `root` (never modified).

    Files are hard-linked (or copied when `copy_files`) at their relative paths; `out` appears
    atomically. Returns a JSON-ready summary: the ratios, the seed and `split_summary`.
    """
    root, out = Path(root), Path(out)
    dataset = load(root)
    refuse_overlap(root, out, "--out")
    splits = assign_splits(dataset, ratios, seed)
    result = GRDDataset(
        copy.deepcopy(dataset.groups), dataset.name, dataset.license, copy.deepcopy(dataset.meta)
    )
    for group, split in zip(result.groups, splits, strict=True):
        group.split = split
    result.meta["split"] = {"ratios": ratios, "seed": seed}

    files = sorted(
        {i.file for g in dataset.groups for i in g.images}
        | {m for g in dataset.groups for e in g.expressions for m in e.targets.values() if m}
    )
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        for rel in files:
            _place_file(resolve_inside(root, rel), resolve_inside(tmp, rel), copy_files, out)
        save(result, tmp)
    return {
        "dataset": str(root),
        "out": str(out),
        "ratios": ratios,
        "seed": seed,
        "files": len(files),
        "files_mode": "copied" if copy_files else "hard-linked",
        "splits": split_summary(result),
    }
