"""GRES metrics on hand-worked cases, and `gres eval` end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gres_cli.metrics import GRESMeter, pair_iou


def _m(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


def test_pair_iou_rules_for_absent_targets():
    empty = np.zeros((2, 2), bool)
    assert pair_iou(empty, None)[0] == 1.0  # nothing predicted, nothing there: right
    assert pair_iou(_m(["#.", ".."]), None)[0] == 0.0  # a pixel on an absent target: wrong
    assert pair_iou(_m(["##", ".."]), _m(["#.", "#."]))[:3] == (1 / 3, 1, 3)


def test_meter_on_a_hand_worked_example():
    meter = GRESMeter()
    # pair 1: present, IoU 1/3 (I=1, U=3);  pair 2: present, IoU 1 (I=U=2)
    meter.update(_m(["##", ".."]), _m(["#.", "#."]), group="a")
    meter.update(_m(["#.", "#."]), _m(["#.", "#."]), group="a")
    # pair 3: absent, predicted empty (IoU 1, U=0);  pair 4: absent, 1 pixel predicted (IoU 0, U=1)
    meter.update(np.zeros((2, 2), bool), None, group="b")
    meter.update(_m([".#", ".."]), None, group="b")
    r = meter.compute()
    assert r["mIoU"] == pytest.approx((1 / 3 + 1 + 1 + 0) / 4) == r["gIoU"]
    assert r["oIoU"] == pytest.approx((1 + 2 + 0 + 0) / (3 + 2 + 0 + 1)) == r["cIoU"]
    assert r["prec@0.5"] == pytest.approx(2 / 4) and r["prec@0.9"] == pytest.approx(2 / 4)
    assert r["N-acc"] == pytest.approx(1 / 2) and r["T-acc"] == pytest.approx(1.0)
    # decision = non-empty mask: TP 2, FP 1, TN 1
    assert r["acc"] == pytest.approx(3 / 4)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(1.0)
    assert r["f1"] == pytest.approx(0.8)
    groups = meter.per_group()
    assert groups["a"]["pairs"] == 2 and groups["b"]["N-acc"] == pytest.approx(0.5)


def test_n_acc_and_t_acc_count_empty_masks_not_the_decision():
    """gRefCOCO (Liu et al., GRES, CVPR 2023, sec. 6): a no-target sample is a true positive
    of N-acc when the output has no foreground pixel; T-acc is the share of target samples
    whose output has some. The present/absent decision is scored by acc/precision/recall.
    Here the two differ on every pair, so counting the decision would give the opposite."""
    meter = GRESMeter()
    empty, pixel = np.zeros((2, 2), bool), _m(["#.", ".."])
    meter.update(empty, None, pred_present=True)  # absent target, called present, mask empty
    meter.update(pixel, None, pred_present=False)  # absent target, called absent, a pixel
    meter.update(pixel, None, pred_present=False)
    meter.update(empty, pixel, pred_present=True)  # present target, called present, mask empty
    r = meter.compute()
    assert r["N-acc"] == pytest.approx(1 / 3)  # by masks; by decision it would be 2/3
    assert r["T-acc"] == pytest.approx(0.0)  # by masks; by decision it would be 1
    assert meter.confusion() == {"tp": 1, "fp": 1, "tn": 2, "fn": 0}
    assert r["acc"] == pytest.approx(3 / 4) and r["recall"] == pytest.approx(1.0)


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        pair_iou(np.zeros((2, 2), bool), np.zeros((3, 2), bool))


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gres_cli", "eval", *args], capture_output=True, text=True
    )


def test_eval_perfect_and_empty_prediction_folders(grd_dataset: Path, tmp_path: Path):
    from grd_tools import load

    ds = load(grd_dataset)
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    empty.mkdir()
    for pair in ds.pairs():
        target = perfect / pair.group.id / pair.expression.id / f"{Path(pair.image.file).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if pair.mask:
            shutil.copyfile(grd_dataset / pair.mask, target)
    report = tmp_path / "r.json"
    proc = _eval(str(grd_dataset), "--predictions", str(perfect), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["settings"]["protocol"] == "gres" and r["settings"]["split"] == "test"
    cosod = {"Sm", "Em_max", "Em_mean", "Fm_max", "Fm_mean", "MAE"}
    assert all(v == pytest.approx(1.0) for k, v in r["metrics"].items() if k not in cosod)
    assert r["metrics"]["Sm"] == pytest.approx(1.0) and r["metrics"]["MAE"] == 0.0
    # pysodmetrics scores an empty map on an empty ground truth Em = HW / (HW - 1), just over 1
    assert r["metrics"]["Em_max"] == pytest.approx(1.0, abs=1e-2)
    # nothing predicted: every absent pair right (IoU 1), every present pair wrong (IoU 0)
    proc = _eval(str(grd_dataset), "--predictions", str(empty), "--report", str(report))
    r = json.loads(report.read_text())
    assert r["metrics"]["N-acc"] == 1.0 and r["metrics"]["T-acc"] == 0.0
    assert r["metrics"]["mIoU"] == pytest.approx(3 / 6)  # test group: 3 absent of 6 pairs
    assert len(r["missing"]) == 6


def test_eval_needs_exactly_one_source(grd_dataset: Path):
    proc = _eval(str(grd_dataset))
    assert proc.returncode == 2 and "exactly one of --model or --predictions" in proc.stderr


def test_eval_refuses_unwritable_report_and_plots_before_any_work(
    grd_dataset: Path, tmp_path: Path
):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    for option, value, says in (
        ("--report", str(blocker / "r.json"), "not writable"),
        ("--report", str(tmp_path), "is a folder"),
        ("--plots", str(blocker / "plots"), "not writable"),
    ):
        # --model no/such-model: had the check come after the work, this would fail on the model
        proc = _eval(str(grd_dataset), "--model", "no/such-model", option, value)
        assert proc.returncode == 2 and f"{option} " in proc.stderr and says in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_eval_runs_a_model_and_agrees_with_its_segment_jsonl(tmp_path: Path):
    import torch

    from grd_tools.synth import generate
    from gres_cli.model.config import GRSerConfig
    from gres_cli.model.grser import GRSer

    data = generate(
        tmp_path / "d",
        groups=2,
        images_per_group=4,
        size=64,
        expressions_per_group=1,
        ratios=(0, 0, 1),
    )
    torch.manual_seed(0)
    GRSer(GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4)).save_pretrained(
        tmp_path / "m"
    )
    report = tmp_path / "model.json"
    proc = _eval(
        str(data),
        "--model",
        str(tmp_path / "m"),
        "--device",
        "cpu",
        "--margin",
        "-0.05",
        "--report",
        str(report),
    )
    assert proc.returncode == 0, proc.stderr
    by_model = json.loads(report.read_text())
    assert by_model["pairs"] == 8 and by_model["settings"]["margin"] == -0.05
    # one run streams both groups: batches of 3 span them, 2 worker processes decode; same scores
    streamed = tmp_path / "streamed.json"
    args = ("--device", "cpu", "--margin", "-0.05", "--batch-size", "3", "--workers", "2")
    proc = _eval(str(data), "--model", str(tmp_path / "m"), *args, "--report", str(streamed))
    assert proc.returncode == 0, proc.stderr
    for k, v in by_model["metrics"].items():
        assert json.loads(streamed.read_text())["metrics"][k] == pytest.approx(v, abs=1e-4), k
    # the same model through `gres segment`, then scored from its JSONL: the same numbers
    from grd_tools import load

    jsonl = tmp_path / "seg.jsonl"
    for g in load(data).groups:
        seg = subprocess.run(
            [
                sys.executable,
                "-m",
                "gres_cli",
                "segment",
                str(data / "images" / g.id),
                g.expressions[0].text,
                "--model",
                str(tmp_path / "m"),
                "--margin",
                "-0.05",
                "--out",
                str(tmp_path / "o"),
                "--jsonl",
                str(jsonl),
            ],
            capture_output=True,
            text=True,
        )
        assert seg.returncode == 0, seg.stderr
    proc = _eval(str(data), "--predictions", str(jsonl), "--report", str(report))
    by_jsonl = json.loads(report.read_text())
    assert by_jsonl["missing"] == []
    # the mask metrics agree exactly; the co-SOD ones differ by design (the model run scores
    # its grey-level probabilities, the JSONL holds binary masks)
    for k, v in by_model["metrics"].items():
        if k not in {"Sm", "Em_max", "Em_mean", "Fm_max", "Fm_mean", "MAE"}:
            assert by_jsonl["metrics"][k] == pytest.approx(v, abs=1e-9), k
    assert by_jsonl["metrics"]["Sm"] != by_model["metrics"]["Sm"]


def test_score_model_reports_progress_per_expression(tmp_path: Path):
    import torch

    from grd_tools import load
    from grd_tools.synth import generate
    from gres_cli.evaluation.run import score_model
    from gres_cli.model.config import GRSerConfig
    from gres_cli.model.grser import GRSer

    data = generate(tmp_path / "d", groups=3, images_per_group=3, size=64, ratios=(0, 0, 1))
    torch.manual_seed(0)
    config = GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4)
    GRSer(config).save_pretrained(tmp_path / "m")
    heard: list[int] = []
    ds = load(data)
    scorer, margin, _, _ = score_model(
        ds, str(tmp_path / "m"), "test", None, on_scored=heard.append, device="cpu"
    )
    expressions = sum(len(g.expressions) for g in ds.groups)
    assert heard == [3] * expressions  # one call per expression, its group's 3 pairs
    assert scorer.masks.pairs == sum(heard) and margin == config.margin
