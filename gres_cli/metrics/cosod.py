"""Co-salient object detection metrics on grey-level maps: S-measure, E-measure, F-measure, MAE.

Two references, because published co-SOD numbers come from two codebases that disagree exactly
on GRD's negatives (an all-zero ground truth) and on constant predictions:

- `pysodmetrics` (default; the community's reference, also used by most SOD papers):
  P = pred/255, min-max normalised unless constant; G = gt > 128. Curves over the 256 grey
  levels t = 0..255 (P >= t/255, from a histogram of uint8(255 P)); ε = 2.2e-16 (np.spacing(1)).
  An all-zero G scores E-measure by the background agreement |P < t| / (HW - 1) and
  S-measure 1 - mean(P).
- `eval-co-sod` (the toolbox of CoCA's authors, `zzhanghub/eval-co-sod`): P min-max normalised
  with (max - min + 1e-20), so a constant map becomes all zeros; 255 thresholds
  linspace(0, 1 - 1e-10, 255); G = gt/255 not binarised; MAE on the un-normalised P; ε = 1e-20;
  no special case for an all-zero G in the E-measure (every pixel's alignment is 0, so
  Eφ = 0.25 HW / (HW - 1) whatever the prediction); the S-measure's centroid split is not
  shifted by MATLAB's +1. Computed here in float64; the toolbox runs in float32 (torch), which
  moves its own F/E curves by up to ~3e-4 where pixel values tie with a threshold.

Formulas (Fan et al. 2017, 2018; Achanta et al. 2009), per image, then averaged over images:
- MAE = mean |P - G|.
- Fβ(t) = (1 + β²) prec(t) rec(t) / (β² prec(t) + rec(t)), β² = 0.3; Fm_max / Fm_mean = max /
  mean over t of the image-averaged curve.
- Eφ(t) = Σ_pixels ((φ + 1)² / 4) / (HW - 1), φ = 2 ĝ b̂ / (ĝ² + b̂² + ε) with ĝ, b̂ the demeaned
  G and binarised P; Em_max / Em_mean as for F.
- Sα = α S_o + (1 - α) S_r, α = 0.5: S_o = μ O_fg + (1 - μ) O_bg with O = 2x̄ / (x̄² + 1 + σ_x + ε)
  (μ = mean G); S_r = Σ_k w_k SSIM_k over the four blocks split at G's centroid; clipped at 0.
  G all zero: 1 - mean(P); all one: mean(P).
Known divergence: when G's centroid falls on the last row/column, pysodmetrics takes the mean of
an empty block (NaN); an empty block here contributes 0 (its weight is 0).

Speed: a map has at most 256 grey levels, so every statistic above (the curves, the means and
variances of S_o, the four blocks' SSIM terms, MAE) is computed from counts of pixels per (grey
level, G) pair, one `bincount` per block: O(HW) integer work and O(256) float work per map, the
same numbers as a per-pixel evaluation up to float rounding (~1e-12). Maps are uint8 grey
levels; bool maps count as 0/255 and float maps in [0, 1] are rounded to 1/255 steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REFERENCES = ("pysodmetrics", "eval-co-sod")
BETA2 = 0.3
ALPHA = 0.5
LEVELS = 256


@dataclass(frozen=True)
class _Convention:
    eps: float
    centroid_shift: int  # pysodmetrics adds 1 to the centroid to match the MATLAB code
    special_empty_gt: bool  # E-measure special case for an all-zero / all-one ground truth


_CONVENTIONS = {
    "pysodmetrics": _Convention(float(np.spacing(1)), 1, True),
    "eval-co-sod": _Convention(1e-20, 0, False),
}


def as_levels(pred: np.ndarray) -> np.ndarray:
    """A map as uint8 grey levels: uint8 as is, bool as 0/255, float [0, 1] rounded."""
    a = np.asarray(pred)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    raise TypeError(f"saliency map of dtype {a.dtype}: expected uint8, bool or float in [0, 1]")


def as_mask(gt: np.ndarray) -> np.ndarray:
    """Ground truth as bool: uint8 > 128 (pysodmetrics' rule); a 0/1 uint8 mask (maximum 1),
    which that rule would read as empty, as > 0."""
    g = np.asarray(gt)
    if g.dtype == bool:
        return g
    if g.dtype == np.uint8 and g.max(initial=0) > 1:
        return g > 128
    return g > 0


@dataclass
class LevelCounts:
    """One map against its ground truth, as pixel counts per (grey level, G) pair.

    `values[k]`: the normalised value P of grey level k; `total[k, j]`: pixels of level k with
    G == j; `blocks`: the same counts in the S-measure's four blocks (None when G is constant),
    with their `weights`."""

    values: np.ndarray
    total: np.ndarray
    blocks: list[np.ndarray] | None
    weights: tuple[float, float, float, float]

    @property
    def pixels(self) -> int:
        return int(self.total.sum())

    @property
    def foreground(self) -> int:
        return int(self.total[:, 1].sum())


def level_counts(pred: np.ndarray, gt: np.ndarray, reference: str = "pysodmetrics") -> LevelCounts:
    """Count one map's pixels per (grey level, G), overall and in the four S-measure blocks."""
    levels, g = as_levels(pred), as_mask(gt)
    if levels.shape != g.shape:
        raise ValueError(f"prediction {levels.shape} and ground truth {g.shape} differ in size")
    lo, hi = int(levels.min()), int(levels.max())
    unit = np.arange(LEVELS) / 255  # the same float ops as normalising each pixel
    if reference == "eval-co-sod":
        values = (unit - lo / 255) / (hi / 255 - lo / 255 + 1e-20)
    elif hi != lo:
        values = (unit - lo / 255) / (hi / 255 - lo / 255)
    else:
        values = unit
    # level in 0..255, +256 on the foreground; uint16 keeps bincount's input small and fast
    code = levels.astype(np.uint16) | (g.view(np.uint8).astype(np.uint16) << 8)
    h, w = g.shape
    fg = int(np.count_nonzero(g))
    if fg in (0, g.size):
        total = _joint(code)
        return LevelCounts(values, total, None, (0.0, 0.0, 0.0, 0.0))
    shift = _CONVENTIONS[reference].centroid_shift
    rows, cols = np.arange(h), np.arange(w)
    mean_row = float((g.sum(axis=1) * rows).sum()) / fg
    mean_col = float((g.sum(axis=0) * cols).sum()) / fg
    if reference == "eval-co-sod":
        cy, cx = int(np.round(mean_row + 1e-20)), int(np.round(mean_col + 1e-20))
    else:
        cy, cx = int(np.round(mean_row)) + shift, int(np.round(mean_col)) + shift
    blocks = [_joint(code[:cy, :cx]), _joint(code[:cy, cx:]), _joint(code[cy:, :cx])]
    total = _joint(code)
    blocks.append(total - blocks[0] - blocks[1] - blocks[2])
    area = h * w
    w_lt, w_rt, w_lb = cx * cy / area, cy * (w - cx) / area, (h - cy) * cx / area
    return LevelCounts(values, total, blocks, (w_lt, w_rt, w_lb, 1 - w_lt - w_rt - w_lb))


def _joint(code: np.ndarray) -> np.ndarray:
    return np.bincount(code.ravel(), minlength=2 * LEVELS).reshape(2, LEVELS).T.astype(np.float64)


def mae(c: LevelCounts, values: np.ndarray | None = None) -> float:
    """Mean absolute error |P - G| (over `values`, default the normalised map)."""
    v = c.values if values is None else values
    return float((c.total[:, 0] * v + c.total[:, 1] * np.abs(1 - v)).sum() / c.pixels)


def _object_score(counts: np.ndarray, values: np.ndarray, eps: float) -> float:
    """O = 2 x̄ / (x̄² + 1 + σ_x + ε) over the pixels counted, σ with ddof 1 (0 for one)."""
    n = counts.sum()
    if n == 0:
        return 0.0
    mean = float((counts * values).sum() / n)
    std = float(np.sqrt((counts * (values - mean) ** 2).sum() / (n - 1))) if n > 1 else 0.0
    return 2 * mean / (mean * mean + 1 + std + eps)


def _ssim(counts: np.ndarray, values: np.ndarray, eps: float) -> float:
    n = counts.sum()
    if n == 0:
        return 0.0
    per_level = counts.sum(axis=1)
    x = float((per_level * values).sum() / n)
    y = float(counts[:, 1].sum() / n)
    dx = values - x
    sx = float((per_level * dx * dx).sum()) / (n - 1 + eps)
    sy = float(counts[:, 0].sum() * y * y + counts[:, 1].sum() * (1 - y) ** 2) / (n - 1 + eps)
    sxy = float((counts[:, 0] * dx * -y + counts[:, 1] * dx * (1 - y)).sum()) / (n - 1 + eps)
    a = 4 * x * y * sxy
    b = (x * x + y * y) * (sx + sy)
    if a != 0:
        return a / (b + eps)
    return 1.0 if b == 0 else 0.0


def s_measure(c: LevelCounts, reference: str = "pysodmetrics") -> float:
    """Structure measure Sα (α = 0.5)."""
    eps = _CONVENTIONS[reference].eps
    y = c.foreground / c.pixels
    mean_p = float((c.total.sum(axis=1) * c.values).sum() / c.pixels)
    if y == 0:
        return 1.0 - mean_p
    if y == 1:
        return mean_p
    assert c.blocks is not None
    s_o = y * _object_score(c.total[:, 1], c.values, eps) + (1 - y) * _object_score(
        c.total[:, 0], 1 - c.values, eps
    )
    s_r = sum(wk * _ssim(b, c.values, eps) for b, wk in zip(c.blocks, c.weights, strict=True))
    return max(0.0, ALPHA * s_o + (1 - ALPHA) * s_r)


def _curve_counts(c: LevelCounts, reference: str) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, predicted positives) at each threshold, thresholds ascending."""
    if reference == "eval-co-sod":
        thresholds = np.linspace(0, 1 - 1e-10, 255)
        # values rise with the level, so "P >= t" is a suffix of the levels
        first = np.searchsorted(c.values, thresholds, side="left")
        tp_suffix = np.concatenate([np.cumsum(c.total[::-1, 1])[::-1], [0.0]])
        all_suffix = np.concatenate([np.cumsum(c.total.sum(axis=1)[::-1])[::-1], [0.0]])
        return tp_suffix[first], all_suffix[first]
    # pysodmetrics bins uint8(255 P); levels outside [lo, hi] have no pixels, clip them
    binned = (np.clip(c.values, 0, 1) * 255).astype(np.uint8)
    fg = np.bincount(binned, weights=c.total[:, 1], minlength=LEVELS)
    bg = np.bincount(binned, weights=c.total[:, 0], minlength=LEVELS)
    tp = np.cumsum(fg[::-1])[::-1]  # pixels >= t for t = 0..255
    return tp, tp + np.cumsum(bg[::-1])[::-1]


def f_measure_curve(c: LevelCounts, reference: str = "pysodmetrics") -> np.ndarray:
    """Fβ (β² = 0.3) at each threshold, ascending."""
    tp, predicted = _curve_counts(c, reference)
    if reference == "eval-co-sod":
        prec = tp / (predicted + 1e-20)
        rec = tp / (c.foreground + 1e-20)
        with np.errstate(invalid="ignore"):
            f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
        return np.nan_to_num(f, nan=0.0)
    prec = tp / np.where(predicted == 0, 1, predicted)
    rec = tp / max(c.foreground, 1)
    num = (1 + BETA2) * prec * rec
    return num / np.where(num == 0, 1, BETA2 * prec + rec)


def e_measure_curve(c: LevelCounts, reference: str = "pysodmetrics") -> np.ndarray:
    """Eφ at each threshold, ascending, counted over the four (pred, gt) pixel classes."""
    conv = _CONVENTIONS[reference]
    tp, predicted = _curve_counts(c, reference)
    n, gt_fg = c.pixels, c.foreground
    if conv.special_empty_gt and gt_fg == 0:
        total = n - predicted
    elif conv.special_empty_gt and gt_fg == n:
        total = predicted
    else:
        fp = predicted - tp
        fn = gt_fg - tp
        tn = (n - predicted) - fn
        mean_p, mean_g = predicted / n, gt_fg / n
        total = np.zeros_like(tp)
        for count, a, b in (
            (tp, 1 - mean_p, 1 - mean_g),
            (fp, 1 - mean_p, -mean_g),
            (fn, -mean_p, 1 - mean_g),
            (tn, -mean_p, -mean_g),
        ):
            phi = 2 * a * b / (a * a + b * b + conv.eps)
            total = total + count * (phi + 1) ** 2 / 4
    return total / (n - 1 + conv.eps)


@dataclass
class CoSODMeter:
    """Streaming co-SOD metrics: per-image scores summed, curves summed (memory O(256))."""

    reference: str = "pysodmetrics"
    images: int = 0
    _sm: float = 0.0
    _mae: float = 0.0
    _em: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _fm: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"co-SOD reference {self.reference!r}: choose from {REFERENCES}")

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one map: `pred` grey levels (uint8 0-255, bool or float in [0, 1]), `gt` a mask."""
        c = level_counts(pred, gt, self.reference)
        em, fm = e_measure_curve(c, self.reference), f_measure_curve(c, self.reference)
        if self.images == 0:
            self._em, self._fm = np.zeros_like(em), np.zeros_like(fm)
        self.images += 1
        self._sm += s_measure(c, self.reference)
        # eval-co-sod takes MAE on the map before min-max normalisation
        self._mae += mae(c, np.arange(LEVELS) / 255 if self.reference == "eval-co-sod" else None)
        self._em += em
        self._fm += fm

    def curves(self) -> dict[str, list[float]]:
        """Image-averaged E and F curves, thresholds ascending."""
        n = max(self.images, 1)
        return {"Em": (self._em / n).tolist(), "Fm": (self._fm / n).tolist()}

    def compute(self) -> dict[str, float]:
        if self.images == 0:
            return {}
        n = self.images
        em, fm = self._em / n, self._fm / n
        return {
            "Sm": self._sm / n,
            "Em_max": float(em.max()),
            "Em_mean": float(em.mean()),
            "Fm_max": float(fm.max()),
            "Fm_mean": float(fm.mean()),
            "MAE": self._mae / n,
        }
