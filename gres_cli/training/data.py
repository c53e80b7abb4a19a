"""Group batches from a GRD dataset: every step, B expressions x N images of their groups.

Images and masks are decoded once and kept at the model's input size (uint8), so a step costs
only the model. Sampling is a pure function of (seed, step): a resumed run draws exactly the
batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

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


class GroupData:
    """The images, masks and (group, expression) items of one split, decoded at `size`."""

    def __init__(self, dataset: GRDDataset, split: str | None, size: int) -> None:
        root = dataset.root
        if root is None:
            raise GresError("dataset has no root folder")
        groups = [g for g in dataset.groups if split is None or g.split == split]
        if not groups:
            raise GresError(f"{root}: no groups in split {split!r}")
        self.size = size
        self.images: list[Tensor] = []  # 3 x S x S uint8
        self.group_images: list[list[int]] = []
        self.items: list[tuple[int, str, list[Tensor | None]]] = []  # (group, text, masks)
        for gi, g in enumerate(groups):
            idx = []
            for img in g.images:
                pic = open_image(resolve_inside(root, img.file))
                self.images.append(image_to_pixels(pic, size))
                idx.append(len(self.images) - 1)
            self.group_images.append(idx)
            for e in g.expressions:
                masks: list[Tensor | None] = []
                for img in g.images:
                    rel = e.targets.get(img.id)
                    if rel is None:
                        masks.append(None)
                        continue
                    m = Image.fromarray(read_mask(resolve_inside(root, rel)))
                    m = m.resize((size, size), Image.NEAREST)
                    masks.append(torch.from_numpy(np.asarray(m) > 0))
                self.items.append((gi, e.text, masks))

    def __len__(self) -> int:
        return len(self.items)

    def batch(
        self,
        rng: np.random.Generator,
        groups: int,
        images: int,
        min_pos: int = 1,
        min_neg: int = 1,
        flip: bool = False,
    ) -> GroupBatch:
        """B random expressions, each with N of its group's images (positives and negatives)."""
        b, n, s = groups, images, self.size
        pix = torch.zeros(b, n, 3, s, s)
        masks = torch.zeros(b, n, s, s)
        present = torch.zeros(b, n, dtype=torch.bool)
        valid = torch.zeros(b, n, dtype=torch.bool)
        texts = []
        for bi, item in enumerate(rng.integers(len(self.items), size=b)):
            gi, text, item_masks = self.items[int(item)]
            chosen = self._choose(rng, item_masks, n, min_pos, min_neg)
            do_flip = flip and not _SIDE_WORDS.search(text) and rng.random() < 0.5
            for ni, k in enumerate(chosen):
                img = normalize(self.images[self.group_images[gi][k]])
                m = item_masks[k]
                mask = m.float() if m is not None else torch.zeros(s, s)
                if do_flip:
                    img, mask = img.flip(-1), mask.flip(-1)
                pix[bi, ni], masks[bi, ni] = img, mask
                present[bi, ni] = m is not None
                valid[bi, ni] = True
            texts.append(text)
        return GroupBatch(pix, masks, present, valid, texts)

    @staticmethod
    def _choose(
        rng: np.random.Generator, masks: list[Tensor | None], n: int, min_pos: int, min_neg: int
    ) -> list[int]:
        pos = [i for i, m in enumerate(masks) if m is not None]
        neg = [i for i, m in enumerate(masks) if m is None]
        rng.shuffle(pos)
        rng.shuffle(neg)
        take = pos[: min(min_pos, len(pos))] + neg[: min(min_neg, len(neg))]
        rest = [i for i in range(len(masks)) if i not in take]
        rng.shuffle(rest)
        chosen = (take + rest)[:n]
        rng.shuffle(chosen)
        return chosen


def load_split(path: str | Path, split: str | None, size: int) -> GroupData:
    """Validate-free fast path: the loop validates the dataset before calling this."""
    from grd_tools.format import load

    return GroupData(load(path), split, size)
