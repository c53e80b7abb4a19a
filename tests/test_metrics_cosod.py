"""Co-SOD metrics against pysodmetrics (the community's reference) and against a per-threshold
transcription of the eval-co-sod conventions; the RES protocols on hand-worked cases; and
`gres eval --protocol/--cosod-reference/--plots/--strict` end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gres_cli.metrics import GRESMeter
from gres_cli.metrics.cosod import CoSODMeter, e_measure_curve, level_counts, s_measure

COSOD_KEYS = ("Sm", "Em_max", "Em_mean", "Fm_max", "Fm_mean", "MAE")


def random_cases(seed: int, n: int = 30) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random uint8 maps against boxes, including empty and full ground truth, constant maps."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(12, 70, 2))
        gt = np.zeros((h, w), np.uint8)
        if i % 6 == 1:
            gt[:] = 255
        elif i % 6 != 0:
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            gt[y : y + int(rng.integers(2, h // 2)), x : x + int(rng.integers(2, w // 2))] = 255
        if i % 3 == 0:  # a plausible map: the target plus noise
            pred = np.clip(gt * 0.8 + rng.normal(0, 40, (h, w)), 0, 255).astype(np.uint8)
        else:
            pred = rng.integers(0, 256, (h, w)).astype(np.uint8)
        if i % 7 == 0:
            pred[:] = 0  # the empty prediction GRES makes for "absent"
        if i % 11 == 0:
            pred[:] = 180  # a constant map
        cases.append((pred, gt))
    return cases


def real_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """Real shapes from scikit-image, each against a blurred, shifted guess of itself."""
    from scipy.ndimage import gaussian_filter, shift
    from skimage import data

    cases = []
    for gt in (~data.horse(), data.coins() > 120, data.camera() < 60):
        gt = np.asarray(gt, bool)[::2, ::2]
        guess = gaussian_filter(shift(gt.astype(float), (3, -5)), 4)
        cases.append(((guess / guess.max() * 255).astype(np.uint8), gt.astype(np.uint8) * 255))
    return cases


def pysod_results(cases: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    import py_sod_metrics as psm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # psm.Fmeasure announces its own deprecation
        sm, em, fm, mae = psm.Smeasure(), psm.Emeasure(), psm.Fmeasure(), psm.MAE()
        for pred, gt in cases:
            for m in (sm, em, fm, mae):
                m.step(pred, gt)
    e, f = em.get_results()["em"]["curve"], fm.get_results()["fm"]["curve"]
    return {
        "Sm": float(sm.get_results()["sm"]),
        "Em_max": float(e.max()),
        "Em_mean": float(e.mean()),
        "Fm_max": float(f.max()),
        "Fm_mean": float(f.mean()),
        "MAE": float(mae.get_results()["mae"]),
    }


@pytest.mark.parametrize("cases", ["random", "real"])
def test_cosod_metrics_agree_with_pysodmetrics(cases: str) -> None:
    data = random_cases(0) if cases == "random" else real_cases()
    meter = CoSODMeter()
    for pred, gt in data:
        meter.update(pred, gt)
    ours, reference = meter.compute(), pysod_results(data)
    for key in COSOD_KEYS:
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key


def test_cosod_hand_worked() -> None:
    gt = np.array([[0, 255], [0, 255]], np.uint8)
    perfect = CoSODMeter()
    perfect.update(gt, gt)
    r = perfect.compute()
    assert r["MAE"] == 0.0 and r["Sm"] == pytest.approx(1.0) and r["Fm_max"] == pytest.approx(1.0)
    # Eφ of a perfect map: every pixel aligned (φ = 1), sum 4 over HW - 1 = 3
    assert r["Em_max"] == pytest.approx(4 / 3)
    # an absent target, nothing predicted: S = 1 - mean(P) = 1; F = 0 (no recall possible)
    empty = np.zeros((2, 2), np.uint8)
    c = level_counts(empty, empty)
    assert s_measure(c) == 1.0
    curve = e_measure_curve(c)  # thresholds ascending: t = 0 calls every pixel salient
    assert curve[0] == 0.0 and np.allclose(curve[1:], 4 / 3)
    # the eval-co-sod toolbox gives an all-zero ground truth Eφ = 0.25 HW / (HW - 1) always
    c2 = level_counts(empty, empty, "eval-co-sod")
    assert np.allclose(e_measure_curve(c2, "eval-co-sod"), 0.25 * 4 / 3)
    # a constant non-zero map: pysodmetrics keeps it (S = 1 - 0.7), eval-co-sod zeroes it (S = 1)
    grey = np.full((2, 2), 179, np.uint8)
    assert s_measure(level_counts(grey, empty)) == pytest.approx(1 - 179 / 255)
    assert s_measure(level_counts(grey, empty, "eval-co-sod"), "eval-co-sod") == 1.0
    # bool and float maps are grey levels too: a bool mask is 0/255, a float map is rounded
    box = gt > 0
    assert s_measure(level_counts(box, box)) == s_measure(level_counts(gt, gt))
    assert s_measure(level_counts(box * 0.5, box)) == s_measure(level_counts(gt // 2 + 1, gt))


def eval_co_sod_reference(cases: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The eval-co-sod conventions written out per threshold in torch, as that toolbox computes
    them (normalisation, 255 thresholds, ε = 1e-20, no +1 on the centroid), in float64: the
    toolbox's float32 moves its own numbers by ~1e-4 where pixels tie with a threshold."""
    import torch

    def ssim(p: torch.Tensor, g: torch.Tensor) -> float:
        n = p.numel()
        x, y = p.mean(), g.mean()
        sx = ((p - x) ** 2).sum() / (n - 1 + 1e-20)
        sy = ((g - y) ** 2).sum() / (n - 1 + 1e-20)
        sxy = ((p - x) * (g - y)).sum() / (n - 1 + 1e-20)
        a, b = 4 * x * y * sxy, (x * x + y * y) * (sx + sy)
        return float(a / (b + 1e-20)) if a != 0 else (1.0 if b == 0 else 0.0)

    def obj(t: torch.Tensor) -> float:
        return float(2 * t.mean() / (t.mean() ** 2 + 1 + t.std() + 1e-20))

    th = torch.linspace(0, 1 - 1e-10, 255, dtype=torch.float64)
    zeros = torch.zeros(255, dtype=torch.float64)
    total = {"Sm": 0.0, "MAE": 0.0, "Em": zeros.clone(), "Fm": zeros.clone()}
    for pred_u8, gt_u8 in cases:
        raw = torch.from_numpy(pred_u8).double() / 255
        g = torch.from_numpy(gt_u8).double() / 255
        p = (raw - raw.min()) / (raw.max() - raw.min() + 1e-20)
        total["MAE"] += float((raw - g).abs().mean())
        for i in range(255):
            b = (p >= th[i]).float()
            tp = (b * g).sum()
            prec, rec = tp / (b.sum() + 1e-20), tp / (g.sum() + 1e-20)
            f = 1.3 * prec * rec / (0.3 * prec + rec)
            total["Fm"][i] += 0.0 if torch.isnan(f) else float(f)
            fm, gg = b - b.mean(), g - g.mean()
            align = 2 * gg * fm / (gg * gg + fm * fm + 1e-20)
            total["Em"][i] += float(((align + 1) ** 2 / 4).sum() / (g.numel() - 1 + 1e-20))
        y = float(g.mean())
        if y == 0:
            total["Sm"] += 1 - float(p.mean())
            continue
        if y == 1:
            total["Sm"] += float(p.mean())
            continue
        gb = g >= 0.5
        s_o = y * obj(p[gb]) + (1 - y) * obj((1 - p)[~gb])
        h, w = g.shape
        cx = int(torch.round((g.sum(0) * torch.arange(w)).sum() / g.sum() + 1e-20))
        cy = int(torch.round((g.sum(1) * torch.arange(h)).sum() / g.sum() + 1e-20))
        w1, w2, w3 = cx * cy / (h * w), (w - cx) * cy / (h * w), cx * (h - cy) / (h * w)
        s_r = (
            w1 * ssim(p[:cy, :cx], g[:cy, :cx])
            + w2 * ssim(p[:cy, cx:], g[:cy, cx:])
            + w3 * ssim(p[cy:, :cx], g[cy:, :cx])
            + (1 - w1 - w2 - w3) * ssim(p[cy:, cx:], g[cy:, cx:])
        )
        total["Sm"] += max(0.0, 0.5 * s_o + 0.5 * s_r)
    n = len(cases)
    em, fm = total["Em"] / n, total["Fm"] / n
    return {
        "Sm": total["Sm"] / n,
        "Em_max": float(em.max()),
        "Em_mean": float(em.mean()),
        "Fm_max": float(fm.max()),
        "Fm_mean": float(fm.mean()),
        "MAE": total["MAE"] / n,
    }


def test_cosod_eval_co_sod_conventions() -> None:
    # boxes away from the last row/column (the toolbox takes the std of one pixel as NaN there)
    cases = [c for c in random_cases(1, 18) if c[1].any()] + real_cases()[:1]
    meter = CoSODMeter("eval-co-sod")
    for pred, gt in cases:
        meter.update(pred, gt)
    ours, reference = meter.compute(), eval_co_sod_reference(cases)
    for key in COSOD_KEYS:
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key
    # the two references differ on GRD's negatives: an all-zero ground truth
    neg = [(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))]
    a, b = CoSODMeter(), CoSODMeter("eval-co-sod")
    a.update(*neg[0])
    b.update(*neg[0])
    assert a.compute()["Em_max"] == pytest.approx(64 / 63)
    assert b.compute()["Em_max"] == pytest.approx(0.25 * 64 / 63)
    assert eval_co_sod_reference(neg)["Em_max"] == pytest.approx(0.25 * 64 / 63, abs=1e-6)


# --- RES protocols ----------------------------------------------------------------------


def _m(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


def test_protocols_empty_target_and_precision_rules() -> None:
    half = _m(["##..", "##.."])
    third = _m(["#...", "#..."]), _m(["###.", "###."])  # IoU 2/6 ... pred, gt
    fifty = _m(["##..", "...."]), _m(["##..", "##.."])  # IoU exactly 0.5
    empty = np.zeros((2, 4), bool)
    results = {}
    for name in ("gres", "lisa", "cris", "rela", "lavt"):
        meter = GRESMeter(name)
        proto = meter.protocol
        for pred, gt in ((half, half), (*third,), (*fifty,), (empty, None)):
            meter.update(proto.resize(pred), None if gt is None else proto.resize(gt))
        results[name] = meter.compute()
    # an empty prediction on an absent target: IoU 1 (gres, lisa, rela), 0 (lavt, cris)
    assert results["gres"]["mIoU"] == pytest.approx((1 + 1 / 3 + 0.5 + 1) / 4)
    assert results["lisa"]["mIoU"] == results["gres"]["mIoU"]
    assert results["cris"]["mIoU"] == pytest.approx((1 + 1 / 3 + 0.5 + 0) / 4)
    assert results["cris"]["IoU"] == results["cris"]["mIoU"]  # CRIS's name
    # IoU exactly 0.5: counted at prec@0.5 by gres (>=), not by cris (>)
    assert results["gres"]["prec@0.5"] == pytest.approx(3 / 4)
    assert results["cris"]["prec@0.5"] == pytest.approx(1 / 4)
    # rela: Pr@0.7-0.9 only, over the three pairs that have a target
    assert [k for k in results["rela"] if k.startswith("prec@")] == [
        "prec@0.7",
        "prec@0.8",
        "prec@0.9",
    ]
    assert results["rela"]["prec@0.7"] == pytest.approx(1 / 3)
    # lavt scores at 480x480: the masks are resized, the ratios stay
    assert results["lavt"]["oIoU"] == pytest.approx(results["gres"]["oIoU"])
    assert results["lavt"]["mIoU"] == pytest.approx((1 + 1 / 3 + 0.5 + 0) / 4)
    lavt = GRESMeter("lavt")
    lavt.update(lavt.protocol.resize(half), lavt.protocol.resize(half))
    assert lavt._all.union == 480 * 240
    with pytest.raises(ValueError, match="choose from"):
        GRESMeter("refcoco")


# --- gres eval ----------------------------------------------------------------------------


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gres_cli", "eval", *args], capture_output=True, text=True
    )


def _perfect_predictions(dataset: Path, out: Path) -> None:
    from grd_tools import load

    for pair in load(dataset).pairs():
        target = out / pair.group.id / pair.expression.id / f"{Path(pair.image.file).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if pair.mask:
            shutil.copyfile(dataset / pair.mask, target)


def test_eval_protocols_reference_and_plots(grd_dataset: Path, tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    _perfect_predictions(grd_dataset, preds)
    report = tmp_path / "r.json"
    proc = _eval(
        str(grd_dataset),
        "--predictions",
        str(preds),
        "--protocol",
        "lavt",
        "--report",
        str(report),
        "--plots",
        str(tmp_path / "plots"),
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["settings"]["protocol"] == "lavt" and r["settings"]["resolution"] == "480x480"
    assert "protocol lavt" in proc.stderr and "480x480" in proc.stderr
    assert r["metrics"]["oIoU"] == 1.0
    assert r["metrics"]["mIoU"] == 0.5  # lavt: the 3 absent pairs of 6 score IoU 0
    assert "Sm" not in r["metrics"]  # co-SOD metrics belong to the gres protocol
    for name in ("iou_histogram", "precision_curve", "confusion"):
        with Image.open(tmp_path / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and im.width > 100
    proc = _eval(
        str(grd_dataset),
        "--predictions",
        str(preds),
        "--cosod-reference",
        "eval-co-sod",
        "--report",
        str(report),
    )
    r = json.loads(report.read_text())
    assert r["settings"]["cosod_reference"] == "eval-co-sod"
    assert r["metrics"]["Em_max"] < 0.7  # the 3 negatives score 0.25 each under eval-co-sod
    for bad, message in (
        (["--protocol", "refcoco"], "--protocol 'refcoco'"),
        (["--cosod-reference", "matlab"], "--cosod-reference 'matlab'"),
    ):
        proc = _eval(str(grd_dataset), "--predictions", str(preds), *bad)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_eval_size_mismatch_warns_or_refuses(grd_dataset: Path, tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    _perfect_predictions(grd_dataset, preds)
    from grd_tools import load

    pair = next(p for p in load(grd_dataset).pairs("test") if p.mask)
    one = preds / pair.group.id / pair.expression.id / f"{Path(pair.image.file).stem}.png"
    with Image.open(one) as im:
        im.resize((im.width * 2, im.height * 2), Image.NEAREST).save(one)
    report = tmp_path / "r.json"
    proc = _eval(str(grd_dataset), "--predictions", str(preds), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert len(r["warnings"]) == 1 and "resized, nearest" in r["warnings"][0]
    assert r["metrics"]["mIoU"] == 1.0  # nearest x2 then back: the same pixels
    assert "warning:" in proc.stderr
    proc = _eval(str(grd_dataset), "--predictions", str(preds), "--strict")
    assert proc.returncode == 2 and "--strict" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_warns_on_non_binary_ground_truth(grd_dataset: Path, tmp_path: Path) -> None:
    from grd_tools import load

    ds = load(grd_dataset)
    rel = next(p.mask for p in ds.pairs("test") if p.mask)
    mask = np.asarray(Image.open(grd_dataset / rel)).copy()
    mask[mask == 255] = 200
    Image.fromarray(mask).save(grd_dataset / rel)
    preds = tmp_path / "preds"
    preds.mkdir()
    report = tmp_path / "r.json"
    proc = _eval(str(grd_dataset), "--predictions", str(preds), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert any("not binary" in w for w in json.loads(report.read_text())["warnings"])


def test_eval_reads_a_cosod_folder_directly(grd_dataset: Path, tmp_path: Path) -> None:
    """A CoSOD benchmark folder is scored as is (converted on the fly), against grey-level
    predictions in its own layout: the ground truth itself scores perfectly."""
    from grd_tools.convert import convert

    cosod = convert(grd_dataset, tmp_path / "cosod", to="cosod")
    report = tmp_path / "r.json"
    proc = _eval(str(cosod), "--predictions", str(cosod / "GroundTruth"), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["settings"]["dataset_format"] == "cosod" and r["missing"] == []
    assert r["metrics"]["mIoU"] == 1.0 and r["metrics"]["MAE"] == 0.0
    assert r["pairs"] == sum(1 for _ in (cosod / "GroundTruth").rglob("*.png"))
