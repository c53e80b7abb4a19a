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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REFERENCES = ("pysodmetrics", "eval-co-sod")
BETA2 = 0.3
ALPHA = 0.5


@dataclass(frozen=True)
class _Convention:
    eps: float
    centroid_shift: int  # pysodmetrics adds 1 to the centroid to match the MATLAB code
    special_empty_gt: bool  # E-measure special case for an all-zero / all-one ground truth


_CONVENTIONS = {
    "pysodmetrics": _Convention(float(np.spacing(1)), 1, True),
    "eval-co-sod": _Convention(1e-20, 0, False),
}


def prepare(
    pred: np.ndarray, gt: np.ndarray, reference: str = "pysodmetrics"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised P in [0, 1], binary G, raw P/255) from uint8 grey levels or bools."""
    raw = _unit(pred)
    g = np.asarray(gt)
    g = g > 128 if g.dtype == np.uint8 else g.astype(bool)
    if raw.shape != g.shape:
        raise ValueError(f"prediction {raw.shape} and ground truth {g.shape} differ in size")
    lo, hi = float(raw.min()), float(raw.max())
    if reference == "eval-co-sod":
        p = (raw - lo) / (hi - lo + 1e-20)
    else:
        p = (raw - lo) / (hi - lo) if hi != lo else raw
    return p, g, raw


def _unit(pred: np.ndarray) -> np.ndarray:
    a = np.asarray(pred)
    if a.dtype == bool:
        return a.astype(np.float64)
    if a.dtype == np.uint8:
        return a / 255.0
    return a.astype(np.float64)


def mae(p: np.ndarray, g: np.ndarray) -> float:
    """Mean absolute error between the map and the binary ground truth."""
    return float(np.mean(np.abs(p - g)))


def _object_score(x: np.ndarray, eps: float) -> float:
    """O = 2 x̄ / (x̄² + 1 + σ_x + ε), σ with ddof 1 (0 for a single pixel)."""
    if x.size == 0:
        return 0.0
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return 2 * mean / (mean * mean + 1 + std + eps)


def _ssim(p: np.ndarray, g: np.ndarray, eps: float) -> float:
    n = p.size
    if n == 0:
        return 0.0
    x, y = float(p.mean()), float(g.mean())
    dp, dg = p - x, g - y
    sx = float((dp * dp).sum()) / (n - 1 + eps)
    sy = float((dg * dg).sum()) / (n - 1 + eps)
    sxy = float((dp * dg).sum()) / (n - 1 + eps)
    a = 4 * x * y * sxy
    b = (x * x + y * y) * (sx + sy)
    if a != 0:
        return a / (b + eps)
    return 1.0 if b == 0 else 0.0


def s_measure(p: np.ndarray, g: np.ndarray, reference: str = "pysodmetrics") -> float:
    """Structure measure Sα (α = 0.5) of a normalised map P against binary G."""
    c = _CONVENTIONS[reference]
    y = float(g.mean())
    if y == 0:
        return 1.0 - float(p.mean())
    if y == 1:
        return float(p.mean())
    s_o = y * _object_score(p[g], c.eps) + (1 - y) * _object_score(1 - p[~g], c.eps)
    h, w = g.shape
    rows, cols = np.nonzero(g)
    if reference == "eval-co-sod":
        cy, cx = int(np.round(rows.mean() + 1e-20)), int(np.round(cols.mean() + 1e-20))
    else:
        cy, cx = (int(v) + c.centroid_shift for v in np.round([rows.mean(), cols.mean()]))
    gf = g.astype(np.float64)
    area = h * w
    w_lt, w_rt, w_lb = cx * cy / area, cy * (w - cx) / area, (h - cy) * cx / area
    s_r = (
        _ssim(p[:cy, :cx], gf[:cy, :cx], c.eps) * w_lt
        + _ssim(p[:cy, cx:], gf[:cy, cx:], c.eps) * w_rt
        + _ssim(p[cy:, :cx], gf[cy:, :cx], c.eps) * w_lb
        + _ssim(p[cy:, cx:], gf[cy:, cx:], c.eps) * (1 - w_lt - w_rt - w_lb)
    )
    return max(0.0, ALPHA * s_o + (1 - ALPHA) * s_r)


def _counts(p: np.ndarray, g: np.ndarray, reference: str) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, predicted positives) at each threshold, thresholds ascending."""
    if reference == "eval-co-sod":
        thresholds = np.linspace(0, 1 - 1e-10, 255)
        ordered, ordered_fg = np.sort(p, axis=None), np.sort(p[g], axis=None)
        predicted = p.size - np.searchsorted(ordered, thresholds, side="left")
        tp = ordered_fg.size - np.searchsorted(ordered_fg, thresholds, side="left")
        return tp.astype(np.float64), predicted.astype(np.float64)
    levels = (p * 255).astype(np.uint8)
    fg = np.bincount(levels[g], minlength=256)
    bg = np.bincount(levels[~g], minlength=256)
    # count of pixels >= t for t = 0..255: reversed cumulative sum
    tp = np.cumsum(fg[::-1])[::-1].astype(np.float64)
    predicted = tp + np.cumsum(bg[::-1])[::-1]
    return tp, predicted


def f_measure_curve(p: np.ndarray, g: np.ndarray, reference: str = "pysodmetrics") -> np.ndarray:
    """Fβ (β² = 0.3) at each threshold, ascending."""
    tp, predicted = _counts(p, g, reference)
    if reference == "eval-co-sod":
        prec = tp / (predicted + 1e-20)
        rec = tp / (np.count_nonzero(g) + 1e-20)
        with np.errstate(invalid="ignore"):
            f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
        return np.nan_to_num(f, nan=0.0)
    prec = tp / np.where(predicted == 0, 1, predicted)
    rec = tp / max(np.count_nonzero(g), 1)
    num = (1 + BETA2) * prec * rec
    return num / np.where(num == 0, 1, BETA2 * prec + rec)


def e_measure_curve(p: np.ndarray, g: np.ndarray, reference: str = "pysodmetrics") -> np.ndarray:
    """Eφ at each threshold, ascending, counted over the four (pred, gt) pixel classes."""
    c = _CONVENTIONS[reference]
    tp, predicted = _counts(p, g, reference)
    n = g.size
    gt_fg = np.count_nonzero(g)
    if c.special_empty_gt and gt_fg == 0:
        total = n - predicted
    elif c.special_empty_gt and gt_fg == n:
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
            phi = 2 * a * b / (a * a + b * b + c.eps)
            total = total + count * (phi + 1) ** 2 / 4
    return total / (n - 1 + c.eps)


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
        p, g, raw = prepare(pred, gt, self.reference)
        em, fm = e_measure_curve(p, g, self.reference), f_measure_curve(p, g, self.reference)
        if self.images == 0:
            self._em, self._fm = np.zeros_like(em), np.zeros_like(fm)
        self.images += 1
        self._sm += s_measure(p, g, self.reference)
        self._mae += mae(raw if self.reference == "eval-co-sod" else p, g)
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
