"""The shipped demo model runs the README's main job and beats chance on held-out groups."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo-model"
DATA = ROOT / "examples" / "synth-demo"

pytestmark = pytest.mark.skipif(not DEMO.is_dir(), reason="examples/demo-model not shipped")


def test_readme_main_job_runs_on_the_demo_model(tmp_path: Path):
    group = DATA / "images" / "synth-0000"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gres_cli",
            "segment",
            str(group),
            "the red cross on the bottom",
            "--model",
            str(DEMO),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(records) == 8 and all(r["error"] is None for r in records)


def test_demo_model_scores_its_measured_figures_on_synth_demo(tmp_path: Path):
    report = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gres_cli",
            "eval",
            str(DATA),
            "--model",
            str(DEMO),
            "--device",
            "cpu",
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(report.read_text())["metrics"]
    # measured when the model was shipped (README); CPU inference is deterministic. A model
    # that always says "absent" scores acc 0.5, mIoU 0.5 here: thresholds would not tell.
    assert metrics["acc"] == pytest.approx(0.9375, abs=1e-4)
    assert metrics["mIoU"] == pytest.approx(0.8702, abs=1e-4)
    assert metrics["N-acc"] == pytest.approx(0.875, abs=1e-4)


def test_margin_sweep_reuses_one_pass_and_calibrates(tmp_path: Path):
    report = tmp_path / "r.json"
    own = json.loads((DEMO / "config.json").read_text())["margin"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gres_cli",
            "eval",
            str(DATA),
            "--model",
            str(DEMO),
            "--device",
            "cpu",
            "--margins",
            f"-0.5,0,{own},5",
            "--calibrate",
            "acc",
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    sweep = r["margin_sweep"]
    # the model's own m, scored both ways (the sweep holds the mask metrics, not co-SOD)
    own_row = sweep[str(float(own))]
    assert own_row == {k: v for k, v in r["metrics"].items() if k in own_row}
    assert set(r["metrics"]) - set(own_row) == {
        "Sm",
        "Em_max",
        "Em_mean",
        "Fm_max",
        "Fm_mean",
        "MAE",
    }
    assert sweep["5.0"]["recall"] == 0.0  # a huge margin calls everything absent
    best = max(sweep, key=lambda m: sweep[m]["acc"])
    assert r["calibrated"]["acc"] == sweep[best]["acc"]
