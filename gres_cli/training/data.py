"""Group samples from a GRD dataset, streamed: images and masks are read when a sample is drawn.

The split is indexed by paths only (`SplitIndex`); `GroupSamples` turns a draw key into one
expression with N images of its group, reading and resizing them in the DataLoader's workers.
`DrawSampler` walks epoch after epoch through the expressions in the order of a
`DistributedSampler`, so each rank reads only its share; a sample's randomness (group size,
images, flip) is a pure function of (seed, epoch, expression), so a resumed run, any number of
workers and `preload` all draw exactly the same batches. Memory holds one prefetched batch per
worker, not the split (`preload: true` decodes the split once instead: faster on small sets).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from grd_tools.format import GRDDataset
from grd_tools.imageio import open_image, read_mask
from grd_tools.paths import resolve_inside
from gres_cli.errors import GresError
from gres_cli.model.preprocess import image_to_pixels, normalize

_SIDE_WORDS = re.compile(r"\b(left|right|leftmost|rightmost)\b", re.IGNORECASE)


@dataclass
class GroupBatch:
    pixel_values: Tensor  # B x N x 3 x S x S, normalised
    masks: Tensor  # B x N x S x S float {0, 1}
    present: Tensor  # B x N bool
    image_mask: Tensor  # B x N bool (False = padding)
    texts: list[str]
    items: list[int]  # the expressions' indices in the split (SplitIndex.items)


@dataclass(frozen=True)
class Item:
    """One (group, expression) pair: the expression's mask file per image, None = absent."""

    group: int
    text: str
    targets: tuple[Path | None, ...]


@dataclass(frozen=True)
class Sampling:
    """How a sample is drawn: N images (uniform in [min_images, max_images]) with at least
    `min_positives` / `min_negatives` when the group has them; flips unless left/right."""

    min_images: int
    max_images: int
    min_positives: int = 1
    min_negatives: int = 1
    flip: bool = False


class StringTable:
    """Many strings in one bytes object plus an array of end offsets.

    DataLoader workers are forked: a list of Path objects would be copied into every worker,
    page by page, as reference counts and the garbage collector touch each object. One bytes
    object and one numpy array are two objects whose contents nobody writes, so the workers
    share the parent's pages and the index costs the same whatever the number of workers.
    """

    def __init__(self, strings: list[str]) -> None:
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        self.blob = b"".join(encoded)
        self.ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        start, stop = _span(self.ends, i)
        return self.blob[start:stop].decode("utf-8", "surrogateescape")


def _span(ends: np.ndarray, i: int) -> tuple[int, int]:
    """(start, stop) of run i of consecutive runs whose end offsets are `ends`."""
    return (int(ends[i - 1]) if i > 0 else 0), int(ends[i])


class SplitIndex:
    """The files of one split: image paths per group and the (group, expression) items.

    Held as flat arrays (StringTable, numpy), not Python objects per file, so forked workers
    share it (see StringTable); `group_files` and `items` read it back as tuples of Paths and
    `Item`s.
    """

    def __init__(self, dataset: GRDDataset, split: str | None) -> None:
        root = dataset.root
        if root is None:
            raise GresError("dataset has no root folder")
        groups = [g for g in dataset.groups if split is None or g.split == split]
        if not groups:
            raise GresError(f"{root}: no groups in split {split!r}")
        images: list[str] = []
        group_ends: list[int] = []
        texts: list[str] = []
        item_groups: list[int] = []
        targets: list[str] = []
        target_ids: list[int] = []  # per item, per image of its group: a `targets` index, -1 absent
        real = os.path.realpath(root)
        for gi, g in enumerate(groups):
            images.extend(str(resolve_inside(root, img.file, root_real=real)) for img in g.images)
            group_ends.append(len(images))
            for e in g.expressions:
                texts.append(e.text)
                item_groups.append(gi)
                for img in g.images:
                    target = e.targets.get(img.id)
                    if target is None:
                        target_ids.append(-1)
                    else:
                        target_ids.append(len(targets))
                        targets.append(str(resolve_inside(root, target, root_real=real)))
        self._images = StringTable(images)
        self._group_ends = np.asarray(group_ends, dtype=np.int64)
        self._texts = StringTable(texts)
        self._item_groups = np.asarray(item_groups, dtype=np.int64)
        sizes = np.diff(self._group_ends, prepend=0)[self._item_groups]
        self._item_ends = np.cumsum(sizes, dtype=np.int64)  # into _target_ids
        self._target_ids = np.asarray(target_ids, dtype=np.int64)
        self._targets = StringTable(targets)
        self.group_files = _GroupFiles(self)
        self.items = _Items(self)

    def __len__(self) -> int:
        return len(self._item_groups)


class _GroupFiles(Sequence[tuple[Path, ...]]):
    """`SplitIndex.group_files[g]`: the image files of group g."""

    def __init__(self, index: SplitIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index._group_ends)

    def __getitem__(self, group: int) -> tuple[Path, ...]:  # type: ignore[override]
        if not 0 <= group < len(self):
            raise IndexError(group)
        files = range(*_span(self.index._group_ends, group))
        return tuple(Path(self.index._images[i]) for i in files)


class _Items(Sequence[Item]):
    """`SplitIndex.items[i]`: expression i of the split as an `Item`."""

    def __init__(self, index: SplitIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Item:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        x = self.index
        start, stop = _span(x._item_ends, i)
        ids = x._target_ids[start:stop].tolist()
        targets = tuple(None if t < 0 else Path(x._targets[t]) for t in ids)
        return Item(int(x._item_groups[i]), x._texts[i], targets)


def read_pixels(path: Path, size: int) -> Tensor:
    """An image file -> 3 x S x S uint8 (the model's plain resize)."""
    return image_to_pixels(open_image(path), size)


def read_target(path: Path, size: int) -> Tensor:
    """A mask file -> S x S bool (nearest resize, so the mask stays binary)."""
    mask = Image.fromarray(read_mask(path)).resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.asarray(mask) > 0)


def choose_images(
    rng: np.random.Generator, present: list[bool], n: int, min_pos: int, min_neg: int
) -> list[int]:
    """N of the group's images in random order: at least min_pos positives and min_neg
    negatives when the group has them, the rest at random (fewer when the group is smaller)."""
    pos = [i for i, p in enumerate(present) if p]
    neg = [i for i, p in enumerate(present) if not p]
    rng.shuffle(pos)
    rng.shuffle(neg)
    take = pos[: min(min_pos, len(pos))] + neg[: min(min_neg, len(neg))]
    rest = [i for i in range(len(present)) if i not in take]
    rng.shuffle(rest)
    chosen = (take + rest)[:n]
    rng.shuffle(chosen)
    return chosen


class GroupSamples(Dataset):
    """Draw key (epoch * len(index) + expression) -> one sample, read from disk in the worker.

    A sample is a dict: pixels N x 3 x S x S uint8, masks N x S x S bool, present N bool, text,
    item (the expression's index) and images (its group's image indices, in sample order).
    With `preload`, every image and mask is decoded once here instead (today's small-set path).
    """

    def __init__(
        self, index: SplitIndex, size: int, sampling: Sampling, seed: int, preload: bool = False
    ) -> None:
        self.index, self.size, self.sampling, self.seed = index, size, sampling, seed
        self.images: dict[Path, Tensor] | None = None
        self.masks: dict[Path, Tensor] | None = None
        if preload:
            self.images = {p: read_pixels(p, size) for f in index.group_files for p in f}
            targets = {t for item in index.items for t in item.targets if t is not None}
            self.masks = {t: read_target(t, size) for t in targets}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int) -> dict:
        epoch, item_index = divmod(int(key), len(self.index))
        item = self.index.items[item_index]
        rng = np.random.default_rng([self.seed, epoch, item_index])
        s = self.sampling
        n = int(rng.integers(s.min_images, s.max_images + 1))
        present = [t is not None for t in item.targets]
        chosen = choose_images(rng, present, n, s.min_positives, s.min_negatives)
        flip = s.flip and not _SIDE_WORDS.search(item.text) and rng.random() < 0.5
        files = self.index.group_files[item.group]
        pixels = torch.stack([self._pixels(files[k]) for k in chosen])
        empty = torch.zeros(self.size, self.size, dtype=torch.bool)
        masks = torch.stack(
            [empty if item.targets[k] is None else self._target(item.targets[k]) for k in chosen]
        )
        if flip:
            pixels, masks = pixels.flip(-1), masks.flip(-1)
        return {
            "pixels": pixels,
            "masks": masks,
            "present": torch.tensor([present[k] for k in chosen]),
            "text": item.text,
            "item": item_index,
            "images": chosen,
        }

    def _pixels(self, path: Path) -> Tensor:
        return self.images[path] if self.images is not None else read_pixels(path, self.size)

    def _target(self, path: Path) -> Tensor:
        return self.masks[path] if self.masks is not None else read_target(path, self.size)


def collate(samples: list[dict]) -> GroupBatch:
    """Samples of different group sizes -> one batch padded to the largest (image_mask)."""
    b, n = len(samples), max(len(x["pixels"]) for x in samples)
    s = samples[0]["pixels"].shape[-1]
    pixels = torch.zeros(b, n, 3, s, s, dtype=torch.uint8)
    masks = torch.zeros(b, n, s, s)
    present = torch.zeros(b, n, dtype=torch.bool)
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i, x in enumerate(samples):
        k = len(x["pixels"])
        pixels[i, :k], masks[i, :k], present[i, :k] = x["pixels"], x["masks"], x["present"]
        valid[i, :k] = True
    # padded slots hold zero bytes, which normalise to a constant image the model never uses
    texts, items = [x["text"] for x in samples], [x["item"] for x in samples]
    return GroupBatch(normalize(pixels), masks, present, valid, texts, items)


class DrawSampler(Sampler[int]):
    """Endless draw keys for one rank: epoch after epoch, this rank's share of a
    DistributedSampler's shuffled order of the expressions (disjoint across ranks: the tail
    that does not divide evenly is dropped), as epoch * n + expression. `start` skips the
    draws a resumed run has already consumed, without reading anything."""

    def __init__(self, n: int, world: int = 1, rank: int = 0, seed: int = 0, start: int = 0):
        if n < world:
            raise GresError(f"{n} expressions cannot be shared by {world} processes")
        self.n, self.start = n, start
        self.order = DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )

    def __iter__(self) -> Iterator[int]:
        epoch, skip = divmod(self.start, len(self.order))
        while True:
            self.order.set_epoch(epoch)
            for position, i in enumerate(self.order):
                if position >= skip:
                    yield epoch * self.n + i
            epoch, skip = epoch + 1, 0


def train_loader(
    samples: GroupSamples,
    batch_size: int,
    workers: int,
    world: int = 1,
    rank: int = 0,
    start: int = 0,
) -> DataLoader:
    """Batches of `batch_size` samples for this rank, from draw `start` of its stream on."""
    sampler = DrawSampler(len(samples), world, rank, samples.seed, start)
    return DataLoader(
        samples,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
    )


class GroupReader:
    """Validation's view of a split: every expression on its whole group, read lazily, one
    group's images at a time (the items of a group are consecutive)."""

    def __init__(self, index: SplitIndex, size: int) -> None:
        self.index, self.size = index, size

    def __iter__(self) -> Iterator[tuple[Tensor, str, list[Tensor | None]]]:
        """(pixels M x 3 x S x S uint8, text, per-image target S x S bool or None)."""
        group, pixels = -1, torch.empty(0)
        for item in self.index.items:
            if item.group != group:
                group = item.group
                files = self.index.group_files[group]
                pixels = torch.stack([read_pixels(p, self.size) for p in files])
            masks = [None if t is None else read_target(t, self.size) for t in item.targets]
            yield pixels, item.text, masks
