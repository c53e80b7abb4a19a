"""`gres grd synth`: a procedural GRD dataset for tests, demos and training smoke runs.

Each group shares a background family; every image holds four objects, one per quadrant cell.
Objects have a colour, a shape, a size and a position (the cell's side). An expression singles
out one object by colour AND shape AND (size OR position): "the small red circle", "the blue
square on the left". In a positive image exactly one object matches; in a negative image none
does, but distractors sharing two of the three attributes are there (hard negatives). Every
expression is annotated on every image of its group. Images are PNG (exact pixels, so masks
are exactly the objects' pixels). Deterministic for a seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from grd_tools.errors import GRDError
from grd_tools.format import Expression, GRDDataset, Group, ImageRecord, save
from grd_tools.fsutil import atomic_output_dir
from grd_tools.imageio import write_mask

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom")
#: every word an expression can contain (for tokenizers of small models)
VOCABULARY = ["the", "on", *COLOURS, *SHAPES, *SIZES, *POSITIONS]

# quadrant cells: (column, row) -> which positions they satisfy
CELLS = ((0, 0), (1, 0), (0, 1), (1, 1))
_CELL_SIDES = {
    c: {"left" if c[0] == 0 else "right", "top" if c[1] == 0 else "bottom"} for c in CELLS
}


@dataclass(frozen=True)
class Referent:
    """What an expression describes: colour, shape and one of size or position."""

    colour: str
    shape: str
    size: str | None = None
    position: str | None = None

    @property
    def text(self) -> str:
        if self.size is not None:
            return f"the {self.size} {self.colour} {self.shape}"
        return f"the {self.colour} {self.shape} on the {self.position}"

    def matches(self, obj: dict) -> bool:
        if obj["colour"] != self.colour or obj["shape"] != self.shape:
            return False
        if self.size is not None:
            return obj["size"] == self.size
        return self.position in _CELL_SIDES[tuple(obj["cell"])]


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = r * 0.85
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "triangle":  # apex up
        t = (dy + r) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    if shape == "cross":
        arm = r / 3
        box = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        return box & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    raise ValueError(shape)


def _background(rng: np.random.Generator, size: int, theme: np.ndarray) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    img = theme[None, None] * (0.7 + 0.5 * ramp[..., None])
    img = img + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, 0, 255)


def _group_referents(rng: np.random.Generator, n: int) -> list[Referent]:
    """n referents with distinct (colour, shape), so an object matches at most one of them."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
    out = []
    for i in chosen:
        colour, shape = pairs[i]
        if rng.random() < 0.5:
            out.append(Referent(colour, shape, size=str(rng.choice(SIZES))))
        else:
            out.append(Referent(colour, shape, position=str(rng.choice(POSITIONS))))
    return out


def _distractor(rng: np.random.Generator, ref: Referent, cell: tuple[int, int]) -> dict:
    """An object sharing two of the referent's three attributes (colour, shape, size/position)."""
    obj = {"colour": ref.colour, "shape": ref.shape, "size": str(rng.choice(SIZES)), "cell": cell}
    change = rng.integers(3)
    if change == 0:
        obj["colour"] = str(rng.choice([c for c in COLOURS if c != ref.colour]))
    elif change == 1:
        obj["shape"] = str(rng.choice([s for s in SHAPES if s != ref.shape]))
    elif ref.size is not None:
        obj["size"] = "large" if ref.size == "small" else "small"
    # position referent: a cell on the other side makes the third attribute differ
    return obj


def _scene(
    rng: np.random.Generator, referents: list[Referent], positive_rate: float
) -> tuple[list[dict], list[bool]]:
    present = [bool(rng.random() < positive_rate) for _ in referents]
    free = list(CELLS)
    rng.shuffle(free)
    objects: list[dict] = []
    for ref, is_present in zip(referents, present, strict=True):
        if not is_present:
            continue
        fits = [c for c in free if ref.position is None or ref.position in _CELL_SIDES[c]]
        if not fits:  # no free cell on that side: make this referent absent here
            present[referents.index(ref)] = False
            continue
        cell = fits[0]
        free.remove(cell)
        size = ref.size or str(rng.choice(SIZES))
        objects.append({"colour": ref.colour, "shape": ref.shape, "size": size, "cell": cell})
    for cell in free:
        for _ in range(20):
            ref = referents[rng.integers(len(referents))]
            obj = _distractor(rng, ref, cell)
            if not any(r.matches(obj) for r in referents):
                break
        else:  # pragma: no cover - 20 failures in a row are vanishingly rare
            continue
        objects.append(obj)
    return objects, present


def _render(
    rng: np.random.Generator, size: int, theme: np.ndarray, objects: list[dict]
) -> tuple[np.ndarray, list[np.ndarray]]:
    img = _background(rng, size, theme)
    masks = []
    half = size / 2
    for obj in objects:
        r = size * (0.09 if obj["size"] == "small" else 0.17)
        col, row = obj["cell"]
        jitter = max(half / 2 - r - 1, 0)
        cx = (col + 0.5) * half + rng.uniform(-jitter, jitter)
        cy = (row + 0.5) * half + rng.uniform(-jitter, jitter)
        mask = _shape_mask(obj["shape"], size, cx, cy, r)
        colour = np.array(COLOURS[obj["colour"]], np.float32) + rng.normal(0, 8, 3)
        img[mask] = np.clip(colour, 0, 255)
        masks.append(mask)
        obj["center"] = [round(float(cx), 3), round(float(cy), 3)]
        obj["radius"] = round(float(r), 3)
    return img.astype(np.uint8), masks


def generate(
    dst: str | os.PathLike[str],
    groups: int = 20,
    images_per_group: int = 8,
    size: int = 96,
    seed: int = 0,
    expressions_per_group: int = 3,
    positive_rate: float = 0.5,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a synthetic GRD dataset at `dst` (atomically) and return its path."""
    if size < 16:
        raise GRDError(f"--size {size}: too small (at least 16 px)")
    if groups < 1 or images_per_group < 1 or expressions_per_group < 1:
        raise GRDError("--groups, --images-per-group and expressions per group must be >= 1")
    if not 0.0 <= positive_rate <= 1.0:
        raise GRDError(f"--positive-rate {positive_rate}: must be within [0, 1]")
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise GRDError("--ratios: three non-negative numbers for train, val, test")
    rng = np.random.default_rng(seed)
    order = rng.permutation(groups)
    total = sum(ratios)
    n_train = round(groups * ratios[0] / total)
    n_val = round(groups * ratios[1] / total)
    split_of = {}
    for rank, gi in enumerate(order):
        split_of[int(gi)] = (
            "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        )
    out_groups = []
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        for gi in range(groups):
            grng = np.random.default_rng([seed, gi])
            gid = f"synth-{gi:04d}"
            theme = grng.uniform(60, 200, 3)
            referents = _group_referents(grng, expressions_per_group)
            images, targets = [], {i: {} for i in range(len(referents))}
            for ii in range(images_per_group):
                objects, present = _scene(grng, referents, positive_rate)
                pixels, masks = _render(grng, size, theme, objects)
                image_id = f"{ii:04d}"
                rel = f"images/{gid}/{image_id}.png"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(tmp / rel, compress_level=1)
                meta = {"objects": [{**o, "cell": list(o["cell"])} for o in objects]}
                images.append(ImageRecord(image_id, rel, size, size, meta))
                for ei, ref in enumerate(referents):
                    hit = [m for o, m in zip(objects, masks, strict=True) if ref.matches(o)]
                    if present[ei] and hit:
                        mrel = f"masks/{gid}/e{ei}/{image_id}.png"
                        write_mask(tmp / mrel, hit[0])
                        targets[ei][image_id] = mrel
                    else:
                        targets[ei][image_id] = None
                if progress is not None:
                    progress(1)
            exprs = [
                Expression(f"e{ei}", ref.text, targets[ei], {"referent": vars(ref)})
                for ei, ref in enumerate(referents)
            ]
            out_groups.append(Group(gid, images, exprs, split=split_of[gi]))
        dataset = GRDDataset(
            out_groups,
            name=f"gres-synth-seed{seed}",
            license="CC0-1.0",
            meta={"generator": "gres grd synth", "seed": seed, "size": size},
        )
        save(dataset, tmp)
    return Path(dst)
