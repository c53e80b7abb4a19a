"""RES / GRES mask metrics over (image, expression) pairs, streaming (O(1) memory per pair).

Published numbers differ by convention, so a meter follows a named `Protocol` (PROTOCOLS):
- `gres` (default): original size; every metric below; negatives counted (rules below).
- `lisa`: original size; an empty prediction on an empty target has IoU 1 (LISA's
  `acc_iou[union == 0] = 1`); gIoU/cIoU.
- `lavt`: image and ground truth at 480x480 (ground truth resized nearest); IoU >= t; an empty
  union scores IoU 0 (LAVT's `if U == 0: this_iou = 0`).
- `rela`: the same 480x480; gIoU/cIoU/N-acc/T-acc (gIoU with the empty-target rule); Pr@0.7,
  0.8, 0.9 counted over the pairs that have a target.
- `cris`: original size; the mean IoU, which CRIS calls "IoU", with an empty union scoring 0
  (`inter / (union + 1e-6)`); precision counts IoU > t (strict).

Conventions of the default `gres` protocol (original resolution):
- per-pair IoU = |P ∩ G| / |P ∪ G|; an empty prediction on an absent target scores 1, any
  predicted pixel on an absent target scores 0 (negatives count, as in LISA/gRefCOCO);
- oIoU = cIoU = Σ|P ∩ G| / Σ|P ∪ G| over all pairs (cumulative);
- mIoU = gIoU = mean of per-pair IoU;
- prec@t = share of pairs with IoU >= t, t in 0.5 ... 0.9;
- N-acc = share of absent targets predicted empty; T-acc = share of present targets predicted
  non-empty (gRefCOCO's names);
- acc / precision / recall / f1 of the present/absent decision (positive class = present).
All values are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
#: bins of the streaming per-pair IoU histogram (for plots)
HISTOGRAM_BINS = 100


@dataclass(frozen=True)
class Protocol:
    """How one paper family scores masks (see the module docstring)."""

    name: str
    size: int | None  # masks resized (nearest) to size x size; None = original resolution
    empty_iou: float  # IoU of an empty prediction on an empty target
    strict: bool  # precision counts IoU > t instead of IoU >= t
    targeted_precision: bool  # precision only over pairs whose target is present
    thresholds: tuple[float, ...] = PRECISION_THRESHOLDS

    @property
    def resolution(self) -> str:
        return "original" if self.size is None else f"{self.size}x{self.size}"

    def resize(self, mask: np.ndarray) -> np.ndarray:
        """The mask at the protocol's resolution (nearest neighbour), bool."""
        mask = np.asarray(mask, dtype=bool)
        return mask if self.size is None else resize_nearest(mask, (self.size, self.size))


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A bool mask or uint8 grey map at (h, w), nearest neighbour, same dtype."""
    if mask.shape == shape:
        return mask
    from PIL import Image

    grey = mask.dtype == np.uint8
    img = Image.fromarray(mask if grey else mask.astype(np.uint8) * 255)
    out = np.asarray(img.resize(shape[::-1], Image.NEAREST))
    return out if grey else out > 127


PROTOCOLS = {
    "gres": Protocol("gres", None, 1.0, False, False),
    "lisa": Protocol("lisa", None, 1.0, False, False),
    "lavt": Protocol("lavt", 480, 0.0, False, False),
    "rela": Protocol("rela", 480, 1.0, False, True, (0.7, 0.8, 0.9)),
    "cris": Protocol("cris", None, 0.0, True, False),
}


def pair_iou(
    pred: np.ndarray, gt: np.ndarray | None, empty_iou: float = 1.0
) -> tuple[float, int, int]:
    """(IoU, |P ∩ G|, |P ∪ G|) of one pair; an empty union scores `empty_iou` (1: the
    empty-target rule of GRES/gRefCOCO/LISA; 0: LAVT and CRIS)."""
    p = np.asarray(pred, dtype=bool)
    g = np.zeros_like(p) if gt is None else np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in size")
    inter = int(np.count_nonzero(p & g))
    union = int(np.count_nonzero(p | g))
    return (empty_iou if union == 0 else inter / union), inter, union


@dataclass
class _Sums:
    protocol: Protocol = PROTOCOLS["gres"]
    pairs: int = 0
    iou_sum: float = 0.0
    inter: int = 0
    union: int = 0
    hits: dict[float, int] = field(default_factory=dict)
    targeted: int = 0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.int64))
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    pos_nonempty: int = 0
    neg_empty: int = 0

    def add(
        self,
        iou: float,
        inter: int,
        union: int,
        gt_present: bool,
        pred_present: bool,
        pred_nonempty: bool,
    ) -> None:
        self.pairs += 1
        self.iou_sum += iou
        self.inter += inter
        self.union += union
        self.histogram[min(int(iou * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
        proto = self.protocol
        if gt_present or not proto.targeted_precision:
            self.targeted += 1
            for t in proto.thresholds:
                self.hits[t] = self.hits.get(t, 0) + (iou > t if proto.strict else iou >= t)
        if gt_present:
            self.tp += pred_present
            self.fn += not pred_present
            self.pos_nonempty += pred_nonempty
        else:
            self.fp += pred_present
            self.tn += not pred_present
            self.neg_empty += not pred_nonempty

    def result(self) -> dict[str, float]:
        n = max(self.pairs, 1)
        pos, neg = self.tp + self.fn, self.tn + self.fp
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / pos if pos else 0.0
        out = {
            "oIoU": self.inter / self.union if self.union else 1.0,
            "mIoU": self.iou_sum / n,
        }
        counted = max(self.targeted, 1)
        out.update({f"prec@{t}": self.hits.get(t, 0) / counted for t in self.protocol.thresholds})
        out["gIoU"] = out["mIoU"]
        out["cIoU"] = out["oIoU"]
        out["N-acc"] = self.neg_empty / neg if neg else 1.0
        out["T-acc"] = self.pos_nonempty / pos if pos else 1.0
        out["acc"] = (self.tp + self.tn) / n
        out["precision"] = precision
        out["recall"] = recall
        out["f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if self.protocol.name == "cris":
            out["IoU"] = out["mIoU"]  # CRIS's name for the mean IoU
        return out


class GRESMeter:
    """Accumulates pairs one at a time; `compute()` gives the metrics, overall and per group.

    Masks must already be at the protocol's resolution (`protocol.resize`)."""

    def __init__(self, protocol: str | Protocol = "gres") -> None:
        if isinstance(protocol, str):
            if protocol not in PROTOCOLS:
                raise ValueError(f"protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
            protocol = PROTOCOLS[protocol]
        self.protocol = protocol
        self._all = _Sums(protocol)
        self._groups: dict[str, _Sums] = {}

    def update(
        self,
        pred: np.ndarray,
        gt: np.ndarray | None,
        pred_present: bool | None = None,
        group: str | None = None,
    ) -> float:
        """Add one pair. gt None (or empty) = target absent. pred_present defaults to
        "the predicted mask is non-empty". Returns the pair's IoU."""
        iou, inter, union = pair_iou(pred, gt, self.protocol.empty_iou)
        gt_present = gt is not None and bool(np.any(gt))
        nonempty = bool(np.any(pred))
        decided = nonempty if pred_present is None else bool(pred_present)
        self.add_measured(iou, inter, union, gt_present, decided, nonempty, group)
        return iou

    def add_measured(
        self,
        iou: float,
        inter: int,
        union: int,
        gt_present: bool,
        pred_present: bool,
        pred_nonempty: bool,
        group: str | None = None,
    ) -> None:
        """Add one pair already measured by `pair_iou` (replaying stored pairs, no masks)."""
        self._all.add(iou, inter, union, gt_present, pred_present, pred_nonempty)
        if group is not None:
            self._groups.setdefault(group, _Sums(self.protocol)).add(
                iou, inter, union, gt_present, pred_present, pred_nonempty
            )

    @property
    def pairs(self) -> int:
        return self._all.pairs

    def compute(self) -> dict[str, float]:
        return self._all.result()

    def iou_histogram(self) -> list[int]:
        """Pairs per IoU bin [k/100, (k+1)/100), IoU 1 in the last bin."""
        return self._all.histogram.tolist()

    def confusion(self) -> dict[str, int]:
        """Counts of the present/absent decision: tp, fp, tn, fn (positive = present)."""
        a = self._all
        return {"tp": a.tp, "fp": a.fp, "tn": a.tn, "fn": a.fn}

    def per_group(self) -> dict[str, dict[str, Any]]:
        return {g: {**s.result(), "pairs": s.pairs} for g, s in sorted(self._groups.items())}
