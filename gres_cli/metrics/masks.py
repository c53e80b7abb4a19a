"""RES / GRES mask metrics over (image, expression) pairs, streaming (O(1) memory per pair).

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


def pair_iou(pred: np.ndarray, gt: np.ndarray | None) -> tuple[float, int, int]:
    """(IoU with the empty-target rule, |P ∩ G|, |P ∪ G|) of one pair."""
    p = np.asarray(pred, dtype=bool)
    g = np.zeros_like(p) if gt is None else np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in size")
    inter = int(np.count_nonzero(p & g))
    union = int(np.count_nonzero(p | g))
    return (1.0 if union == 0 else inter / union), inter, union


@dataclass
class _Sums:
    pairs: int = 0
    iou_sum: float = 0.0
    inter: int = 0
    union: int = 0
    hits: dict[float, int] = field(default_factory=lambda: dict.fromkeys(PRECISION_THRESHOLDS, 0))
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
        for t in self.hits:
            self.hits[t] += iou >= t
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
        out.update({f"prec@{t}": self.hits[t] / n for t in PRECISION_THRESHOLDS})
        out["gIoU"] = out["mIoU"]
        out["cIoU"] = out["oIoU"]
        out["N-acc"] = self.neg_empty / neg if neg else 1.0
        out["T-acc"] = self.pos_nonempty / pos if pos else 1.0
        out["acc"] = (self.tp + self.tn) / n
        out["precision"] = precision
        out["recall"] = recall
        out["f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return out


class GRESMeter:
    """Accumulates pairs one at a time; `compute()` gives the metrics, overall and per group."""

    def __init__(self) -> None:
        self._all = _Sums()
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
        iou, inter, union = pair_iou(pred, gt)
        gt_present = gt is not None and bool(np.any(gt))
        nonempty = bool(np.any(pred))
        decided = nonempty if pred_present is None else bool(pred_present)
        self._all.add(iou, inter, union, gt_present, decided, nonempty)
        if group is not None:
            self._groups.setdefault(group, _Sums()).add(
                iou, inter, union, gt_present, decided, nonempty
            )
        return iou

    @property
    def pairs(self) -> int:
        return self._all.pairs

    def compute(self) -> dict[str, float]:
        return self._all.result()

    def per_group(self) -> dict[str, dict[str, Any]]:
        return {g: {**s.result(), "pairs": s.pairs} for g, s in sorted(self._groups.items())}
